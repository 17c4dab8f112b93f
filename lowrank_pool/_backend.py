"""Which library the caller uses: array namespaces and devices, dtype rules, host copies, seeded randoms.

The bottom of the package's core (above only the errors): every other module asks here which library,
device and dtype it is computing in. Backend selection is by the inputs, never by global state.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import array_api_compat as aac
import numpy as np

from ._errors import BackendError, DTypeError

Array = Any
Namespace = Any

__all__ = [
    "Array",
    "Namespace",
    "acc_dtype",
    "check_floating",
    "check_has_values",
    "detach",
    "device_of",
    "full_precision",
    "host_copy",
    "is_linalg_error",
    "is_numpy",
    "is_numpy_array",
    "is_torch",
    "namespace",
    "random_normal",
    "result_dtype",
]


def namespace(**arrays: Array) -> Namespace:
    """Array-API namespace of the named arrays; all must share a library and a device.

    Raises :class:`BackendError` (a TypeError) naming the offending argument for
    Python lists/scalars, a mix of libraries (numpy with torch) or of devices.
    """
    xp = _torch_namespace(arrays)
    if xp is not None:
        return xp
    for name, a in arrays.items():
        if not aac.is_array_api_obj(a) or isinstance(a, int | float | complex):
            raise BackendError(f"{name}: expected an array (numpy, torch, ...), got {type(a).__name__}")
        if isinstance(a, np.ma.MaskedArray):  # its mask would be dropped by some operations and not others
            raise BackendError(
                f"{name}: expected a plain array, got a numpy masked array; pass {name}.filled(0) to count masked "
                f"entries as zeros, or {name}.data to ignore the mask"
            )
    try:
        xp = aac.array_namespace(*arrays.values())
    except TypeError as err:
        kinds = ", ".join(f"{n}: {type(a).__module__}.{type(a).__name__}" for n, a in arrays.items())
        raise BackendError(f"arrays of different libraries cannot be mixed ({kinds})") from err
    _check_one_device({n: aac.device(a) for n, a in arrays.items()})
    return xp


def _check_one_device(devices: dict[str, Any]) -> None:
    # a traced array (jax.jit / vmap / grad) has no device (None): it follows the others
    if len({str(d) for d in devices.values() if d is not None}) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise BackendError(f"arrays must be on one device, got {listed}")


_TORCH_XP: Namespace = None  # array_api_compat.torch, imported on first use


def _torch_xp() -> Namespace:
    # (a global, not functools.cache: torch.compile warns about every cache-wrapped call it traces)
    global _TORCH_XP
    if _TORCH_XP is None:
        import array_api_compat.torch

        _TORCH_XP = array_api_compat.torch
    return _TORCH_XP


def _torch_namespace(arrays: dict[str, Array]) -> Namespace | None:
    """array_api_compat.torch when every array is a tensor on one device, else None.

    A plain isinstance test that torch.compile traces without a graph break (the
    generic path goes through array_api_compat's lru_cache-d type checks).
    """
    torch = sys.modules.get("torch")
    if torch is None or not all(isinstance(a, torch.Tensor) for a in arrays.values()):
        return None
    for name, a in arrays.items():
        if a.layout != torch.strided or a.is_nested:
            kind = "nested" if a.is_nested else str(a.layout).removeprefix("torch.")
            raise BackendError(
                f"{name}: expected a dense (strided) tensor, got a {kind} tensor; convert it with .to_dense()"
            )
    _check_one_device({n: a.device for n, a in arrays.items()})
    return _torch_xp()


def device_of(x: Array) -> Any:
    """The device of an array; torch's by attribute, so that torch.compile traces it without
    array-api-compat's lru_cache-wrapped type checks (dynamo warns about each of them)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.device
    return aac.device(x)


def host_copy(x: Array) -> Any:
    """A numpy array with the values of ``x`` (any library, any device), for I/O and tests.

    Never used on a compute path: torch tensors are detached and copied to the host
    (bfloat16, which numpy lacks, becomes float32).
    """

    if aac.is_torch_array(x):
        x = x.detach().to("cpu")
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
    elif aac.is_cupy_array(x):  # device memory: numpy's from_dlpack cannot read it
        return x.get()
    if isinstance(x, np.ndarray | np.generic) or not hasattr(x, "__dlpack__"):  # numpy, Python scalars, lists
        return np.asarray(x)
    return np.from_dlpack(x)


def check_has_values(x: Array, name: str) -> None:
    """Raise for arrays without values (torch's meta device): a fit or a decomposition needs them."""
    if str(getattr(x, "device", "")) == "meta":
        raise BackendError(f"{name}: expected an array with values, got a tensor on the meta device")


def is_torch(xp: Namespace) -> bool:
    # a name test, not aac.is_torch_namespace: torch.compile traces it without a break
    return getattr(xp, "__name__", "") in ("array_api_compat.torch", "torch")


def is_numpy_array(x: Any) -> bool:
    """Whether ``x`` is a numpy array (host data that any library's call may copy to its device)."""
    return isinstance(x, np.ndarray)


def is_numpy(xp: Namespace) -> bool:
    return getattr(xp, "__name__", "") in ("array_api_compat.numpy", "numpy")


def check_floating(xp: Namespace, x: Array, name: str) -> None:
    """Raise :class:`DTypeError` unless ``x`` has a real floating dtype."""
    # torch's own flag (false for complex): array-api-compat's isdtype is a Python function per call
    floating = x.dtype.is_floating_point if is_torch(xp) else xp.isdtype(x.dtype, "real floating")
    if not floating:
        raise DTypeError(f"{name}: expected a real floating dtype (float32, float64, ...), got {x.dtype}")


def result_dtype(xp: Namespace, *arrays: Array) -> Any:
    """The promoted dtype of ``arrays`` (torch's promote_types directly: array-api-compat's result_type
    loops in Python over pairs)."""
    if is_torch(xp):
        import torch

        dtype = arrays[0].dtype
        for a in arrays[1:]:
            dtype = torch.promote_types(dtype, a.dtype)
        return dtype
    return xp.result_type(*arrays)


def acc_dtype(xp: Namespace, dtype: Any) -> Any:
    """The dtype results are computed in: float32 for float16/bfloat16, float64 for wider floats.

    float32/float64 stay as they are (in native byte order: a big-endian numpy array is
    computed in the native dtype of its width). numpy's longdouble (80/128-bit) is
    computed in float64: the BLAS products the package relies on exist in 32 and 64 bits
    only, so float64 is the most precision available, and it is not silently float32.
    """
    if dtype == xp.float32 or dtype == xp.float64:
        return dtype
    if is_numpy(xp):
        width = np.dtype(dtype).itemsize
        return xp.float64 if width >= 8 else xp.float32
    return xp.float32


def detach(x: Array) -> Array:
    """``x`` cut from autograd (torch); other arrays as they are."""
    return x.detach() if hasattr(x, "detach") else x


def random_normal(xp: Namespace, shape: tuple[int, ...], like: Array, seed: int | None) -> Array:
    """Seeded standard normal numbers in ``like``'s library, dtype and device."""
    if aac.is_torch_namespace(xp):
        import torch

        gen = torch.Generator(device=like.device)
        if seed is not None:
            gen.manual_seed(seed)
        return torch.randn(shape, generator=gen, dtype=like.dtype, device=like.device)
    values = np.random.default_rng(seed).standard_normal(shape)
    return xp.asarray(values, dtype=like.dtype, device=aac.device(like))


def is_linalg_error(err: BaseException) -> bool:
    """Whether ``err`` is a library's linear-algebra failure (a singular matrix): numpy's, torch's and
    CuPy's all name their class ``LinAlgError`` (torch's C class ``_LinAlgError``)."""
    return any(c.__name__.lstrip("_") == "LinAlgError" for c in type(err).__mro__)


@contextmanager
def full_precision(xp: Namespace, x: Array) -> Iterator[None]:
    """Products inside run in the inputs' own dtype even under ``torch.autocast``.

    For computations whose result magnifies rounding: the compact sketch's signed square root
    has the derivative 1/(2√|ψ|), so a bfloat16 count sketch (8 significant bits) put ~30 % errors
    into ∂X where ψ is near zero. Other libraries: nothing to do.
    """
    torch = sys.modules.get("torch") if is_torch(xp) else None
    device = getattr(getattr(x, "device", None), "type", "")
    available = getattr(getattr(torch, "amp", None), "is_autocast_available", None)  # torch >= 2.4
    compiler = getattr(torch, "compiler", None)
    if available is None or getattr(compiler, "is_compiling", bool)():  # torch 2.11's dynamo cannot trace it
        available = ("cpu", "cuda", "xpu", "mps", "hpu").__contains__
    if torch is None or not available(device):
        yield  # not torch, or a device without autocast (meta): nothing to turn off
        return
    with torch.autocast(device_type=device, enabled=False):
        yield
