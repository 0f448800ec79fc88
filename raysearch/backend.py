"""Array backends: NumPy, CuPy, and a strict CPU stand-in that behaves like CuPy.

This is the **only** module of raysearch that imports CuPy, and it does so lazily: ``import
raysearch`` and ``get_backend("numpy")`` never need it. Every numeric function of the package is
written once against a :class:`Backend`::

    bk = get_backend("auto")            # CuPy if a CUDA device is visible, else NumPy
    xp = bk.xp                          # the array module (numpy / cupy / strict namespace)
    I = bk.asarray(host_array)          # host -> backend (float32 by default)
    h = drelu_sample(I, ..., bk, bk.rng(seed, STREAM, update))
    out = bk.to_numpy(h)                # backend -> host: the only way back

Backends
--------
``"numpy"``
    NumPy arrays, special functions from :mod:`scipy.special`.
``"cupy"``
    CuPy arrays on the current CUDA device, special functions from :mod:`cupyx.scipy.special`.
``"strict"``
    A CPU test stand-in for CuPy. Its arrays (:class:`StrictArray`) are their own type and refuse
    implicit conversion to NumPy exactly where CuPy does (and a little more): ``np.asarray(x)``,
    arithmetic or comparison with a plain ``np.ndarray``, any ``np.*`` function or ufunc applied to
    them, assigning a ``np.ndarray`` into them, all raise :class:`TypeError`. Its ``xp`` namespace
    mirrors NumPy's and works on them; ``Backend.to_numpy`` is the only way back. Scalar
    conversions (``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``) are allowed, as in CuPy (where
    they synchronise). Random numbers equal the NumPy backend's for the same ``(seed, *keys)``, so a
    computation gives the same result on "numpy" and "strict".

Random numbers
--------------
``bk.rng(seed, *keys)`` returns a :class:`BackendRNG`, an independent deterministic stream for the
integer tuple ``(seed, *keys)`` (e.g. ``rng(seed, STREAM, update)``: one fresh generator per
update, so a resumed fit draws exactly the numbers an uninterrupted one would).

* numpy / strict: ``np.random.default_rng(np.random.SeedSequence([seed, *keys]))`` (PCG64);
  creating one costs a few microseconds.
* cupy: ``cupy.random.RandomState(s, method=CURAND_RNG_PSEUDO_PHILOX4_32_10)`` with the 63-bit
  seed ``s`` drawn from the same ``SeedSequence([seed, *keys])`` on the host. Philox is a
  counter-based generator, so seeding it sets a key and launches no state-setup kernel (unlike
  cuRAND's default XORWOW, whose seeding runs a setup kernel); this makes "one generator per update"
  cheap on the GPU. CuPy streams differ from NumPy streams: results are reproducible per backend,
  not across backends.

All floating-point output is float32.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.special as _sps

from raysearch.errors import ConfigError

__all__ = [
    "Backend",
    "BackendRNG",
    "StrictArray",
    "get_backend",
    "available_backends",
    "cupy_available",
]

_FLOAT = np.float32


# --------------------------------------------------------------------------------------------
# Random generators
# --------------------------------------------------------------------------------------------
def _seed_sequence(seed: int, keys: tuple[int, ...]) -> np.random.SeedSequence:
    entropy = [int(seed)] + [int(k) for k in keys]
    if any(e < 0 for e in entropy):
        raise ConfigError(
            f"random seed and stream keys must be non-negative integers, got {entropy}"
        )
    return np.random.SeedSequence(entropy)


class BackendRNG:
    """A seeded random stream that returns backend arrays.

    The same small API on every backend (float outputs are float32 unless ``dtype`` says otherwise):

    * ``random(shape)``: uniform on [0, 1)
    * ``standard_normal(shape)``: N(0, 1)
    * ``integers(low, high, size)``: int64 uniform on [low, high)
    * ``permutation(n)``: a random permutation of ``arange(n)`` (int64)
    * ``random_bytes(shape)``: uint8 uniform on 0..255
    """

    def __init__(self, name: str, gen: Any, wrap: Callable[[Any], Any]):
        self.name = name
        self._gen = gen
        self._wrap = wrap

    def random(self, shape, dtype=_FLOAT):
        if self.name == "cupy":
            return self._gen.random_sample(size=shape, dtype=dtype)
        return self._wrap(self._gen.random(shape, dtype=dtype))

    def standard_normal(self, shape, dtype=_FLOAT):
        if self.name == "cupy":
            return self._gen.standard_normal(size=shape, dtype=dtype)
        return self._wrap(self._gen.standard_normal(shape, dtype=dtype))

    def integers(self, low, high=None, size=None):
        if high is None:
            low, high = 0, low
        if self.name == "cupy":
            return self._gen.randint(low, high, size=size, dtype=np.int64)
        return self._wrap(self._gen.integers(low, high, size=size, dtype=np.int64))

    def random_bytes(self, shape):
        """Uniform random uint8 array of ``shape`` (8 random bits per entry).

        On numpy / strict these are the raw 64-bit outputs of the PCG64 stream cut into bytes, a
        quarter of the generator work of ``random`` for the same number of entries.
        """
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        n = int(np.prod(shape, dtype=np.int64))
        if self.name == "cupy":
            return self._gen.randint(0, 256, size=shape, dtype=np.uint8)
        raw = self._gen.bit_generator.random_raw((n + 7) // 8)
        return self._wrap(raw.view(np.uint8)[:n].reshape(shape))

    def key64(self) -> int:
        """One uniform 64-bit integer as a Python int (a host value on every backend): the key
        of a counter-based stream such as :func:`raysearch.crbm.cpu_kernels.bernoulli_draw`'s."""
        if self.name == "cupy":
            hi, lo = (int(x) for x in self._gen.randint(0, 2**32, size=2, dtype=np.int64).get())
            return (hi << 32) | lo
        return int(self._gen.bit_generator.random_raw())

    def permutation(self, n: int):
        if self.name == "cupy":
            return self._gen.permutation(int(n)).astype(np.int64)
        return self._wrap(self._gen.permutation(int(n)).astype(np.int64))

    def __repr__(self):
        return f"BackendRNG({self.name})"


# --------------------------------------------------------------------------------------------
# Strict backend: a CuPy-like array type on the CPU
# --------------------------------------------------------------------------------------------
_NO_CONVERSION = (
    "Implicit conversion to a NumPy array is not allowed (strict backend, like CuPy): "
    "use Backend.to_numpy(x) to move data to the host, Backend.asarray(a) to move it in"
)


def _wrap(x):
    if isinstance(x, np.ndarray):
        return StrictArray(x)
    if isinstance(x, np.generic) and not isinstance(x, (np.str_, np.bytes_, np.void)):
        return StrictArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(i) for i in x)
    if isinstance(x, list):
        return [_wrap(i) for i in x]
    return x


def _unwrap(x, allow_host: bool = False):
    if isinstance(x, StrictArray):
        return x._a
    if isinstance(x, np.ndarray):
        if allow_host:
            return x
        raise TypeError(
            f"Unsupported type {type(x)}: a NumPy array cannot be mixed with strict-backend "
            "arrays (CuPy would refuse it too); move it with Backend.asarray first"
        )
    if isinstance(x, tuple):
        return tuple(_unwrap(i, allow_host) for i in x)
    if isinstance(x, list):
        return [_unwrap(i, allow_host) for i in x]
    if isinstance(x, dict):
        return {k: _unwrap(v, allow_host) for k, v in x.items()}
    return x


def _operand(x):
    """Unwrap a binary-operator operand, refusing host arrays like CuPy does."""
    if isinstance(x, StrictArray):
        return x._a
    if isinstance(x, (bool, int, float, complex, np.generic)):
        return x
    if isinstance(x, np.ndarray):
        raise TypeError(
            "Unsupported operand: a NumPy array cannot be combined with a strict-backend "
            "array (CuPy raises TypeError here too); move it with Backend.asarray first"
        )
    return NotImplemented


def _index(key):
    # CuPy accepts host index arrays (it copies them to the device); so do we.
    return _unwrap(key, allow_host=True)


class StrictArray:
    """A CuPy-like array wrapping a private ``np.ndarray``; see the module docstring."""

    __slots__ = ("_a",)
    __array_ufunc__ = None  # np.ufunc(x) and ndarray <op> x raise TypeError
    __array_priority__ = 1000

    def __init__(self, a: np.ndarray):
        if not isinstance(a, np.ndarray):
            raise TypeError("StrictArray wraps an np.ndarray")
        self._a = a

    # -- conversions ------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_NO_CONVERSION)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(
            f"np.{getattr(func, '__name__', func)} cannot be applied to a strict-backend "
            "array (like CuPy without explicit transfer); use Backend.xp."
            f"{getattr(func, '__name__', '...')} or Backend.to_numpy"
        )

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __complex__(self):
        return complex(self._a)

    def item(self, *args):
        return self._a.item(*args)

    def tolist(self):
        return self._a.tolist()

    def __repr__(self):
        return "Strict" + repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):  # f"{x:.3f}" on a 0-d array, as CuPy allows
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    # -- attributes -------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: StrictArray(self._a.T))
    flags = property(lambda self: self._a.flags)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for row in self._a:
            yield _wrap(row)

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        v = _operand(value)
        if v is NotImplemented:
            v = _unwrap(value)
        self._a[_index(key)] = v

    def __getattr__(self, name):
        # Methods (sum, mean, astype, reshape, copy, clip, ...): unwrap arguments, wrap results.
        # Dunders (__array_interface__, __array_struct__, __dlpack__, buffer hooks) are not
        # forwarded: they are how NumPy would convert us implicitly.
        if name.startswith("__") or name in (
            "ctypes",
            "data",
            "base",
            "view",
            "tofile",
            "tobytes",
            "dump",
            "dumps",
            "getfield",
            "setfield",
        ):
            raise AttributeError(f"strict-backend arrays have no attribute {name!r}")
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)

        @functools.wraps(attr)
        def method(*args, **kwargs):
            return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))

        return method

    def __copy__(self):
        return StrictArray(self._a.copy())

    def __deepcopy__(self, memo):
        return StrictArray(self._a.copy())

    def __reduce__(self):
        raise TypeError("strict-backend arrays cannot be pickled (nor can raysearch models)")

    # -- operators --------------------------------------------------------------------------
    def _binary(op, reflected=False):
        def f(self, other):
            o = _operand(other)
            if o is NotImplemented:
                return NotImplemented
            return _wrap(op(o, self._a) if reflected else op(self._a, o))

        f.__name__ = op.__name__
        return f

    def _inplace(op):
        def f(self, other):
            o = _operand(other)
            if o is NotImplemented:
                return NotImplemented
            op(self._a, o)
            return self

        return f

    __add__, __radd__, __iadd__ = (
        _binary(operator.add),
        _binary(operator.add, True),
        _inplace(operator.iadd),
    )
    __sub__, __rsub__, __isub__ = (
        _binary(operator.sub),
        _binary(operator.sub, True),
        _inplace(operator.isub),
    )
    __mul__, __rmul__, __imul__ = (
        _binary(operator.mul),
        _binary(operator.mul, True),
        _inplace(operator.imul),
    )
    __truediv__, __rtruediv__, __itruediv__ = (
        _binary(operator.truediv),
        _binary(operator.truediv, True),
        _inplace(operator.itruediv),
    )
    __floordiv__, __rfloordiv__, __ifloordiv__ = (
        _binary(operator.floordiv),
        _binary(operator.floordiv, True),
        _inplace(operator.ifloordiv),
    )
    __mod__, __rmod__, __imod__ = (
        _binary(operator.mod),
        _binary(operator.mod, True),
        _inplace(operator.imod),
    )
    __pow__, __rpow__, __ipow__ = (
        _binary(operator.pow),
        _binary(operator.pow, True),
        _inplace(operator.ipow),
    )
    __matmul__, __rmatmul__ = _binary(operator.matmul), _binary(operator.matmul, True)
    __and__, __rand__, __iand__ = (
        _binary(operator.and_),
        _binary(operator.and_, True),
        _inplace(operator.iand),
    )
    __or__, __ror__, __ior__ = (
        _binary(operator.or_),
        _binary(operator.or_, True),
        _inplace(operator.ior),
    )
    __xor__, __rxor__, __ixor__ = (
        _binary(operator.xor),
        _binary(operator.xor, True),
        _inplace(operator.ixor),
    )
    __lt__, __le__ = _binary(operator.lt), _binary(operator.le)
    __gt__, __ge__ = _binary(operator.gt), _binary(operator.ge)
    __eq__, __ne__ = _binary(operator.eq), _binary(operator.ne)
    __hash__ = None
    del _binary, _inplace

    def __neg__(self):
        return StrictArray(-self._a)

    def __pos__(self):
        return StrictArray(+self._a)

    def __abs__(self):
        return StrictArray(abs(self._a))

    def __invert__(self):
        return StrictArray(~self._a)


class _StrictCallable:
    """A NumPy/SciPy function or ufunc applied to strict arrays (host arrays refused)."""

    def __init__(self, fn, allow_host: bool = False):
        self._fn = fn
        self._allow_host = allow_host
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args, **kwargs):
        return _wrap(
            self._fn(*_unwrap(args, self._allow_host), **_unwrap(kwargs, self._allow_host))
        )

    def __getattr__(self, name):  # ufunc methods: reduce, accumulate, outer, at
        attr = getattr(self._fn, name)
        return _StrictCallable(attr) if callable(attr) else attr


class _StrictNamespace:
    """``xp`` of the strict backend: mirrors a NumPy (sub)module, on strict arrays."""

    # Functions through which host data may enter explicitly (as with cupy.asarray / cupy.array).
    _HOST_ENTRY = {"asarray", "array", "ascontiguousarray", "asanyarray", "copy"}

    def __init__(self, module, name: str = "numpy"):
        self._module = module
        self.__name__ = f"raysearch.strict.{name}"

    def __getattr__(self, name):
        if name == "ndarray":
            return StrictArray
        obj = getattr(self._module, name)
        if isinstance(obj, type) or not callable(obj):
            if type(obj).__name__ == "module":
                return _StrictNamespace(obj, name)
            return obj  # dtypes, constants (float32, pi, inf, newaxis, ...)
        return _StrictCallable(obj, allow_host=name in self._HOST_ENTRY)

    def __repr__(self):
        return f"<strict namespace mirroring {self._module.__name__}>"


# --------------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """An array module, its special functions, host transfers, RNG and synchronisation.

    Attributes
    ----------
    name : {"numpy", "cupy", "strict"}
    xp : module
        The array module (``numpy``, ``cupy``, or the strict namespace).
    erfcx, log_ndtr, ndtri, ndtr, expit, logaddexp : callable
        Elementwise special functions for that module (``scipy.special`` / ``cupyx.scipy.special``;
        ``logaddexp`` is ``xp.logaddexp``). They accept ``out=``.
    is_device : bool
        True when arrays live on an accelerator (host checks then cost a synchronisation).
    use_cpu_kernels : bool
        Whether :attr:`cpu_kernels` is offered (the NumPy backend; see there).
    """

    name: str
    xp: Any
    erfcx: Callable
    log_ndtr: Callable
    ndtri: Callable
    ndtr: Callable
    expit: Callable
    logaddexp: Callable
    is_device: bool = False
    use_cpu_kernels: bool = False
    _asarray: Callable = field(repr=False, default=None)
    _to_numpy: Callable = field(repr=False, default=None)
    _make_rng: Callable = field(repr=False, default=None)
    _sync: Callable = field(repr=False, default=None)

    def asarray(self, a, dtype=_FLOAT):
        """Host (or backend) data -> backend array; ``dtype=None`` keeps the dtype.

        Parameters
        ----------
        a : array_like
        dtype : numpy dtype or None, default float32
        """
        return self._asarray(a, dtype)

    def to_numpy(self, a) -> np.ndarray:
        """Backend array -> ``np.ndarray`` on the host (the only way back). Non-arrays
        (Python or NumPy scalars) are returned as 0-d arrays."""
        return self._to_numpy(a)

    def rng(self, seed: int, *keys: int) -> BackendRNG:
        """An independent, deterministic random stream for ``(seed, *keys)``.

        Parameters
        ----------
        seed : int >= 0
        *keys : int >= 0
            Stream identifiers, e.g. ``(STREAM_ID, update_index)``.
        """
        return self._make_rng(int(seed), tuple(int(k) for k in keys))

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on the CPU backends)."""
        if self._sync is not None:
            self._sync()

    @property
    def cpu_kernels(self):
        """The compiled CPU kernels (module :mod:`raysearch.crbm.cpu_kernels`) or None.

        Offered on the NumPy backend when numba imports and the environment variable
        ``RAYSEARCH_CPU_KERNELS`` is not ``0``; None on CuPy and on the strict stand-in (which
        checks the generic array code that CuPy runs). Numeric code must work either way.
        """
        return _load_cpu_kernels() if self.use_cpu_kernels else None

    def without_cpu_kernels(self) -> Backend:
        """The same backend with :attr:`cpu_kernels` None (the plain NumPy code path)."""
        return replace(self, use_cpu_kernels=False)

    def __repr__(self):
        kern = ", cpu_kernels" if self.cpu_kernels is not None else ""
        return f"Backend({self.name!r}{kern})"


def _load_cpu_kernels():
    if os.environ.get("RAYSEARCH_CPU_KERNELS", "1").strip() == "0":
        return None
    return _import_cpu_kernels()


@functools.cache
def _import_cpu_kernels():
    try:
        from raysearch.crbm import cpu_kernels  # noqa: PLC0415 (numba is imported on first use only)
    except ImportError:
        return None
    return cpu_kernels


def _numpy_backend() -> Backend:
    def make_rng(seed, keys):
        return BackendRNG("numpy", np.random.default_rng(_seed_sequence(seed, keys)), lambda x: x)

    return Backend(
        name="numpy",
        xp=np,
        erfcx=_sps.erfcx,
        log_ndtr=_sps.log_ndtr,
        ndtri=_sps.ndtri,
        ndtr=_sps.ndtr,
        expit=_sps.expit,
        logaddexp=np.logaddexp,
        is_device=False,
        use_cpu_kernels=True,
        _asarray=lambda a, dtype: np.asarray(a, dtype=dtype),
        _to_numpy=lambda a: np.asarray(a),
        _make_rng=make_rng,
        _sync=None,
    )


def _strict_backend() -> Backend:
    def asarray(a, dtype):
        if isinstance(a, StrictArray):
            return a if dtype is None or a.dtype == dtype else StrictArray(a._a.astype(dtype))
        return StrictArray(np.array(a, dtype=dtype, copy=True))  # a "transfer": never aliases

    def to_numpy(a):
        if isinstance(a, StrictArray):
            return a._a.copy()
        if isinstance(a, np.ndarray):
            raise TypeError(
                "to_numpy got a NumPy array, not a strict-backend array: it was never "
                "moved to the backend (CuPy's asnumpy would hide this)"
            )
        return np.asarray(a)

    def make_rng(seed, keys):
        return BackendRNG("strict", np.random.default_rng(_seed_sequence(seed, keys)), _wrap)

    sc = _StrictCallable
    return Backend(
        name="strict",
        xp=_StrictNamespace(np),
        erfcx=sc(_sps.erfcx),
        log_ndtr=sc(_sps.log_ndtr),
        ndtri=sc(_sps.ndtri),
        ndtr=sc(_sps.ndtr),
        expit=sc(_sps.expit),
        logaddexp=sc(np.logaddexp),
        is_device=False,
        _asarray=asarray,
        _to_numpy=to_numpy,
        _make_rng=make_rng,
        _sync=None,
    )


def _import_cupy():
    """Import CuPy and check for a visible CUDA device; return (cupy, reason-if-unusable)."""
    try:
        import cupy  # noqa: PLC0415  (lazy on purpose: the only CuPy import of raysearch)
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return None, f"CuPy is not installed or cannot be imported ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"no CUDA device is visible ({type(exc).__name__}: {exc})"
    if n < 1:
        return None, "no CUDA device is visible"
    return cupy, None


def _cupy_backend() -> Backend:
    cupy, reason = _import_cupy()
    if cupy is None:
        raise ConfigError(
            f"backend 'cupy' is not available: {reason}. Install the 'gpu' extra "
            "(pip install 'raysearch[gpu]') on a machine with a CUDA device, or use "
            "backend='numpy' / 'auto'."
        )
    import cupyx.scipy.special as csp  # noqa: PLC0415
    from cupy.cuda import curand  # noqa: PLC0415

    def make_rng(seed, keys):
        # 63-bit seed from the same SeedSequence as on the CPU; Philox: seeding is key setting only.
        s = int(_seed_sequence(seed, keys).generate_state(1, np.uint64)[0] >> np.uint64(1))
        gen = cupy.random.RandomState(s, method=curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
        return BackendRNG("cupy", gen, lambda x: x)

    def sync():
        cupy.cuda.get_current_stream().synchronize()

    return Backend(
        name="cupy",
        xp=cupy,
        erfcx=csp.erfcx,
        log_ndtr=csp.log_ndtr,
        ndtri=csp.ndtri,
        ndtr=csp.ndtr,
        expit=csp.expit,
        logaddexp=cupy.logaddexp,
        is_device=True,
        _asarray=lambda a, dtype: cupy.asarray(a, dtype=dtype),
        _to_numpy=lambda a: cupy.asnumpy(a),
        _make_rng=make_rng,
        _sync=sync,
    )


_FACTORIES = {"numpy": _numpy_backend, "strict": _strict_backend, "cupy": _cupy_backend}


@functools.cache
def cupy_available() -> bool:
    """True when CuPy imports and a CUDA device is visible to this process."""
    return _import_cupy()[0] is not None


@functools.cache
def _get(name: str) -> Backend:
    return _FACTORIES[name]()


def get_backend(name: str | Backend = "auto") -> Backend:
    """Return the backend called ``name`` (cached: the same object on every call).

    Parameters
    ----------
    name : {"auto", "numpy", "cupy", "strict"} or Backend
        ``"auto"``: CuPy when it is installed and a CUDA device is visible (this is how Ray hands a
        trial its GPU, via ``CUDA_VISIBLE_DEVICES``), else NumPy. A :class:`Backend` is returned
        unchanged.

    Raises
    ------
    ConfigError
        Unknown name, or ``"cupy"`` asked for where CuPy or a device is missing.
    """
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str) or name.lower() not in (*_FACTORIES, "auto"):
        raise ConfigError(f"unknown backend {name!r}: use one of 'auto', 'numpy', 'cupy', 'strict'")
    name = name.lower()
    if name == "auto":
        name = "cupy" if cupy_available() else "numpy"
    return _get(name)


def available_backends() -> list[str]:
    """Names of the backends usable in this process (``"cupy"`` only with a CUDA device)."""
    return ["numpy", "strict"] + (["cupy"] if cupy_available() else [])
