"""ruff's lint rules and formatter (configured in pyproject.toml) hold for the whole repository."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args):
    try:
        import ruff  # noqa: F401  (installed by the test extra)
    except ImportError:
        pytest.skip("ruff is not installed (pip install '.[test]')")
    exe = shutil.which("ruff") or sys.executable
    cmd = [exe, *args] if exe != sys.executable else [exe, "-m", "ruff", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_lint():
    res = _ruff("check", "--no-cache", ".")
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format():
    res = _ruff("format", "--check", "--no-cache", ".")
    assert res.returncode == 0, "run `ruff format .`:\n" + res.stdout + res.stderr
