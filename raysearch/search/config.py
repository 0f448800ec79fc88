"""The study file: a pydantic schema for the YAML that describes one λ search.

A study names the recording(s) and their preprocessing, the cRBM settings, the search space and
mode, the evaluation settings, the resources per trial and where results go. :func:`load_study`
reads and validates it; every problem (unknown key, wrong type, value out of range) becomes one line
of a single :class:`~raysearch.errors.ConfigError` that names the file and the key.

Example (``experiments/quickstart.yaml`` is the shipped default)::

    name: quickstart
    recordings:
      - synthetic: {n_neurons: 200, n_frames: 1200, seed: 0}
    model: {n_hidden: 10, n_updates: 300, batch_size: 100}
    search:
      mode: optuna
      lam: {low: 1.0e-5, high: 1.0e-1}
      num_samples: 6
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from raysearch.errors import ConfigError
from raysearch.verdicts import DEFAULT_OBJECTIVE

__all__ = [
    "Study",
    "load_study",
    "study_from_dict",
    "default_study_path",
    "SearchSpec",
    "RecordingSpec",
    "EvalSettings",
]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

#: A finite number > 0 (``.inf`` and ``.nan`` are refused when the study is read).
FinitePositive = Annotated[float, Field(gt=0, allow_inf_nan=False)]

#: The most trials one study may ask for (``search.num_samples``, or the grid's size): each trial
#: is a cRBM fit of minutes to hours, so more than this is a typo, not a plan.
MAX_TRIALS = 10_000


class _Strict(BaseModel):
    """Base: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticSpec(_Strict):
    """A synthetic fish made on the fly (see :func:`raysearch.make_synthetic_recording`)."""

    n_neurons: int = Field(1000, ge=10)
    n_frames: int = Field(2000, ge=100)
    n_assemblies: PositiveInt | None = None
    seed: int = Field(0, ge=0)


class RecordingSpec(_Strict):
    """One recording: a file (``path``) or a synthetic fish (``synthetic``), never both."""

    name: str | None = Field(None, pattern=_NAME_PATTERN)
    path: str | None = None
    synthetic: SyntheticSpec | None = None
    drop_unlabelled: bool = True
    on_nonfinite: Literal["error", "drop"] = "error"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of 'path' (a recording file) or 'synthetic'")
        return self

    @property
    def key(self) -> str:
        """The name trials use for this recording (``name``, the file stem, or synthetic-<seed>)."""
        if self.name:
            return self.name
        if self.path is not None:
            return Path(self.path).stem
        return f"synthetic-{self.synthetic.seed}"


class PreprocessingSpec(_Strict):
    """Arguments of :func:`raysearch.preprocess` (same names, same defaults)."""

    signal: Literal["spikes", "dff"] = "spikes"
    voxel_um: FinitePositive | None = None
    transform: str = "auto"
    threshold: float = Field(0.5, allow_inf_nan=False)
    visible: Literal["bernoulli", "gaussian"] | None = None
    n_segments: int = Field(10, ge=2)
    n_test_segments: int = Field(3, ge=1)
    test_segments: list[int] | Literal["percentile"] = [2, 6, 7]
    min_neurons_per_voxel: PositiveInt = 1
    on_constant: Literal["drop", "error"] = "drop"
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _segments(self):
        if self.n_test_segments >= self.n_segments:
            raise ValueError("n_test_segments must be smaller than n_segments")
        if isinstance(self.test_segments, list):
            if len(self.test_segments) != self.n_test_segments:
                raise ValueError(
                    f"test_segments has {len(self.test_segments)} entries but "
                    f"n_test_segments is {self.n_test_segments}"
                )
            bad = [s for s in self.test_segments if not 0 <= s < self.n_segments]
            if bad:
                raise ValueError(f"test_segments {bad} outside 0..{self.n_segments - 1}")
        return self


class ModelSpec(_Strict):
    """cRBM settings (:class:`raysearch.CRBM` arguments). Unset ones keep the estimator's default."""

    n_hidden: PositiveInt = 50
    n_updates: PositiveInt = 2000
    batch_size: PositiveInt | None = None
    n_chains: PositiveInt | None = None
    n_gibbs: PositiveInt | None = None
    learning_rate: FinitePositive | None = None
    lr_final_ratio: FinitePositive | None = None
    decay_after: float | None = Field(None, ge=0, le=1)
    beta2: float | None = Field(None, gt=0, lt=1)
    epsilon: FinitePositive | None = None

    def crbm_kwargs(self) -> dict[str, Any]:
        """Settings to pass to :class:`raysearch.CRBM` (n_hidden and the unset ones left out)."""
        return self.model_dump(exclude={"n_hidden"}, exclude_none=True)


class LamRange(_Strict):
    """A log-uniform λ range for the optuna and multi modes."""

    low: FinitePositive
    high: FinitePositive

    @model_validator(mode="after")
    def _order(self):
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) must be larger than low ({self.low})")
        return self


class AshaSpec(_Strict):
    """Early stopping of hopeless fits (Tune's ASHA on the intermediate objective)."""

    grace_updates: PositiveInt = 200
    reduction_factor: float = Field(3.0, gt=1)


class SearchSpec(_Strict):
    """What is searched and how.

    ``mode``: ``optuna`` (seeded TPE over ``lam`` in a log range), ``grid`` (``lam`` is a list;
    every λ x seed x recording x n_hidden is one trial) or ``multi`` (two objectives, the chosen
    objective and the weight density, seeded NSGA-II; the Pareto front is in the results).
    """

    mode: Literal["optuna", "grid", "multi"] = "optuna"
    penalty: Literal["l2l1", "l1"] = "l2l1"
    lam: LamRange | list[FinitePositive]
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    n_hidden: list[PositiveInt] | None = Field(None, min_length=1)
    num_samples: PositiveInt = 8
    max_concurrent: PositiveInt = 2
    sampler_seed: int = 0
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    objective: Literal["mean_nrmse", "max_nrmse", "max_criteria"] = DEFAULT_OBJECTIVE
    asha: AshaSpec | None = None
    optuna_storage: str | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        if any(s < 0 for s in v):
            raise ValueError("seeds must be >= 0")
        return v

    @field_validator("num_samples")
    @classmethod
    def _num_samples(cls, v):
        if v > MAX_TRIALS:
            raise ValueError(
                f"at most {MAX_TRIALS} trials per study (each trial is one cRBM "
                "fit); split a larger search into several studies"
            )
        return v

    @model_validator(mode="after")
    def _mode(self):
        if self.mode == "grid":
            if not isinstance(self.lam, list) or not self.lam:
                raise ValueError("mode 'grid' needs lam as a list of values, e.g. lam: [0.01, 0.1]")
            if self.points_to_evaluate:
                raise ValueError("points_to_evaluate is for the optuna and multi modes")
            size = len(self.lam) * len(self.seeds) * len(self.n_hidden or [0])
            if size > MAX_TRIALS:
                raise ValueError(
                    f"the grid has {size} lambda x seed x n_hidden points; at most "
                    f"{MAX_TRIALS} trials per study (split the grid)"
                )
        else:
            if not isinstance(self.lam, LamRange):
                raise ValueError(
                    f"mode '{self.mode}' needs lam as a range, e.g. lam: {{low: 1.0e-4, high: 1.0}}"
                )
            allowed = {"lam", "seed", "n_hidden", "recording"}
            for i, p in enumerate(self.points_to_evaluate):
                extra = set(p) - allowed
                if extra:
                    raise ValueError(
                        f"points_to_evaluate[{i}] has unknown keys {sorted(extra)}; "
                        f"allowed: {sorted(allowed)}"
                    )
                lam = p.get("lam")
                if (
                    not isinstance(lam, (int, float))
                    or isinstance(lam, bool)
                    or not self.lam.low <= lam <= self.lam.high
                ):
                    raise ValueError(
                        f"points_to_evaluate[{i}].lam={lam!r} must be a number in "
                        f"[{self.lam.low}, {self.lam.high}]"
                    )
        if self.mode == "multi" and self.asha is not None:
            raise ValueError("asha is not available in mode 'multi' (two objectives)")
        return self


class EvalSettings(_Strict):
    """Arguments of :func:`raysearch.evaluate` (sampling budget of the model statistics)."""

    n_chains: PositiveInt = 300
    n_burnin: int = Field(2000, ge=0)
    n_samples: PositiveInt = 50
    n_between: PositiveInt = 20
    max_pairs: PositiveInt = 1_000_000


class EvaluationSpec(_Strict):
    """When and how trials are evaluated.

    ``report_every`` updates the trial evaluates with the cheap ``during`` settings and reports with
    a checkpoint; at the end it evaluates once with the fuller ``final`` settings.
    """

    report_every: PositiveInt = 200
    during: EvalSettings = EvalSettings(
        n_chains=50, n_burnin=200, n_samples=10, n_between=10, max_pairs=100_000
    )
    final: EvalSettings = EvalSettings()
    seed: int = Field(0, ge=0)


class ResourcesSpec(_Strict):
    """Resources of one trial; ``gpu`` may be a fraction (e.g. 0.25: four trials share a GPU).

    ``custom``: Ray custom resources (``ray start --resources``), e.g. to keep trials on some nodes.
    """

    cpu: float = Field(1.0, gt=0, allow_inf_nan=False)
    gpu: float = Field(0.0, ge=0, allow_inf_nan=False)
    custom: dict[str, PositiveFloat] = Field(default_factory=dict)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v):
        if v > 1 and not float(v).is_integer():
            raise ValueError("gpu above 1 must be a whole number")
        return v


class RunSpec(_Strict):
    """Where results go and how Tune handles failures."""

    storage_path: str = "./ray_results"
    max_failures: int = Field(3, ge=-1)
    reuse_actors: bool = True
    checkpoint_num_to_keep: PositiveInt = 1
    verbose: int = Field(1, ge=0, le=3)


JOINT_KEY = "joint"
"""The dataset key (trial ``recording``) of a joint study."""


class Study(_Strict):
    """One λ search, as written in a study YAML file."""

    name: str = Field(pattern=_NAME_PATTERN)
    description: str = ""
    recordings: list[RecordingSpec] = Field(min_length=1)
    preprocessing: PreprocessingSpec = PreprocessingSpec()
    model: ModelSpec = ModelSpec()
    search: SearchSpec
    evaluation: EvaluationSpec = EvaluationSpec()
    resources: ResourcesSpec = ResourcesSpec()
    run: RunSpec = RunSpec()
    joint: bool = False
    joint_min_fish: PositiveInt | None = None

    @model_validator(mode="after")
    def _joint(self):
        """joint: true fits one cRBM per trial on the joint dataset of all recordings
        (:func:`raysearch.data.cohort.joint_dataset`; ``joint_min_fish`` is its ``min_fish``)."""
        if not self.joint:
            if self.joint_min_fish is not None:
                raise ValueError("joint_min_fish needs joint: true")
            return self
        if len(self.recordings) < 2:
            raise ValueError("joint: true needs at least 2 recordings (the fish of the cohort)")
        if self.preprocessing.voxel_um is None:
            raise ValueError("joint: true needs preprocessing.voxel_um (the common voxel grid)")
        if self.joint_min_fish is not None and self.joint_min_fish > len(self.recordings):
            raise ValueError(
                f"joint_min_fish ({self.joint_min_fish}) is larger than the "
                f"{len(self.recordings)} recordings"
            )
        return self

    @model_validator(mode="after")
    def _recording_names(self):
        keys = [r.key for r in self.recordings]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"recording names {dup} occur twice; give each a distinct 'name'")
        if self.evaluation.report_every > self.model.n_updates:
            raise ValueError(
                f"evaluation.report_every ({self.evaluation.report_every}) is larger "
                f"than model.n_updates ({self.model.n_updates})"
            )
        known = set(keys)
        for i, p in enumerate(self.search.points_to_evaluate):
            if "recording" in p and p["recording"] not in known:
                raise ValueError(
                    f"search.points_to_evaluate[{i}].recording={p['recording']!r} is "
                    f"not one of {sorted(known)}"
                )
        return self

    @property
    def recording_keys(self) -> list[str]:
        if self.joint:
            return [JOINT_KEY]
        return [r.key for r in self.recordings]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict of the study (round-trips through :func:`study_from_dict`)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _format_errors(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        inp = e.get("input")
        # a union (e.g. lam: range | list) reports one error per branch: keep the branch that
        # matches what was written
        if (e["type"] == "list_type" and isinstance(inp, dict)) or (
            e["type"] in ("model_type", "dict_type", "model_attributes_type")
            and isinstance(inp, list)
        ):
            continue
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        loc = loc.replace(".LamRange", "").replace(".list[constrained-float]", "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see experiments/quickstart.yaml)"
        shown = (
            ""
            if e["type"] in ("extra_forbidden", "missing") or isinstance(inp, dict)
            else f" (got {inp!r})"
        )
        lines.append(f"  - {loc or '<top level>'}: {msg}{shown}")
    # pydantic reports one error per union branch; keep each line once
    lines = list(dict.fromkeys(lines))
    return f"invalid study {where}: {len(lines)} problem(s)\n" + "\n".join(lines)


def study_from_dict(
    data: Any, source: str = "<dict>", base_dir: str | os.PathLike | None = None
) -> Study:
    """Validate a study given as a dict.

    Parameters
    ----------
    data : dict
        The parsed YAML.
    source : str
        Where it came from, used in error messages.
    base_dir : path, optional
        Relative recording paths are resolved against this directory.

    Raises
    ------
    ConfigError
        One message listing every problem, each with its key.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid study {source}: the file must hold a mapping "
            f"(name:, recordings:, search:, ...), got {type(data).__name__}"
        )
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    if base_dir is not None:
        for rec in study.recordings:
            if rec.path is not None and "://" not in rec.path and not os.path.isabs(rec.path):
                rec.path = str((Path(base_dir) / rec.path).resolve())
    return study


def load_study(path: str | os.PathLike | None = None) -> Study:
    """Read and validate a study YAML file.

    Parameters
    ----------
    path : path, optional
        The study file. None: the packaged quickstart study.

    Returns
    -------
    Study
    """
    path = Path(path) if path is not None else default_study_path()
    if not path.is_file():
        raise ConfigError(
            f"study file {path} does not exist (give a study YAML file, e.g. "
            "experiments/quickstart.yaml)"
        )
    data = _read_yaml(path, "study file")
    return study_from_dict(data, source=str(path), base_dir=path.parent)


def _read_yaml(path: Path, what: str) -> Any:
    """``yaml.safe_load`` of a UTF-8 text file; ConfigError naming the file on any problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line "
            f"{line}); save it as UTF-8"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{what} {path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}"
        ) from None


def load_experiment_study(path: str | os.PathLike) -> Study:
    """The ``study.yaml`` that :func:`raysearch.search.run_study` wrote into an experiment
    directory, validated; ConfigError naming the file when it is corrupt or not a study."""
    path = Path(path)
    data = _read_yaml(path, "the experiment's study file")
    try:
        return study_from_dict(data, source=str(path))
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}\n(the experiment's study.yaml is corrupt or was edited; "
            "restore it from the study file the experiment was started with)"
        ) from None


def default_study_path() -> Path:
    """The packaged quickstart study (same file as ``experiments/quickstart.yaml``)."""
    return Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"


def is_finite_number(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
