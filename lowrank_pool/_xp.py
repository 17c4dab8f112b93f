"""The one dispatch module: array namespaces, feature-map layouts and the two GEMM forms.

Everything that depends on *which* array library the caller uses lives here, so the
math modules read as plain array-API code. The choices below were measured
(DESIGN.md section 3, torch 2.13 CPU/MKL and numpy/OpenBLAS, float32, B=32):

- torch: the transposed product ``M.mT @ X.mT`` (Zᵀ = Mᵀ Xᵀ) is 1.2-2.7x faster than
  ``X @ M`` on a (B, n, f) input;
- numpy: the flat ``X.reshape(-1, f) @ M`` is fastest;
- a (B, f, n) view of NCHW/NCDHW input is multiplied as it is, ``Mᵀ @ X``, without
  the ``permute(...).contiguous()`` copy that costs up to 3.4x the whole pooling.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Literal, NamedTuple

import array_api_compat as aac

from ._checks import BackendError, DTypeError, ShapeError, check_finite, shape_of

Array = Any
Namespace = Any

__all__ = [
    "Features",
    "acc_dtype",
    "features",
    "is_torch",
    "namespace",
    "prepare",
    "project",
    "weighted_sum",
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
    try:
        xp = aac.array_namespace(*arrays.values())
    except TypeError as err:
        kinds = ", ".join(f"{n}: {type(a).__module__}.{type(a).__name__}" for n, a in arrays.items())
        raise BackendError(f"arrays of different libraries cannot be mixed ({kinds})") from err
    _check_one_device({n: aac.device(a) for n, a in arrays.items()})
    return xp


def _check_one_device(devices: dict[str, Any]) -> None:
    if len({str(d) for d in devices.values()}) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise BackendError(f"arrays must be on one device, got {listed}")


_TORCH_XP: list[Namespace] = []


def _torch_namespace(arrays: dict[str, Array]) -> Namespace | None:
    """array_api_compat.torch when every array is a tensor on one device, else None.

    A plain isinstance test that torch.compile traces without a graph break (the
    generic path goes through array_api_compat's lru_cache-d type checks).
    """
    torch = sys.modules.get("torch")
    if torch is None or not all(isinstance(a, torch.Tensor) for a in arrays.values()):
        return None
    _check_one_device({n: a.device for n, a in arrays.items()})
    if not _TORCH_XP:
        import array_api_compat.torch

        _TORCH_XP.append(array_api_compat.torch)
    return _TORCH_XP[0]


def host_copy(x: Array) -> Any:
    """A numpy array with the values of ``x`` (any library, any device), for I/O and tests.

    Never used on a compute path: torch tensors are detached and copied to the host
    (bfloat16, which numpy lacks, becomes float32).
    """
    import numpy as np

    if aac.is_torch_array(x):
        x = x.detach().to("cpu")
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
    return np.asarray(x if isinstance(x, np.ndarray) else np.from_dlpack(x))


def is_torch(xp: Namespace) -> bool:
    # a name test, not aac.is_torch_namespace: torch.compile traces it without a break
    return getattr(xp, "__name__", "") in ("array_api_compat.torch", "torch")


def is_numpy(xp: Namespace) -> bool:
    return getattr(xp, "__name__", "") in ("array_api_compat.numpy", "numpy")


def check_floating(xp: Namespace, x: Array, name: str) -> None:
    """Raise :class:`DTypeError` unless ``x`` has a real floating dtype."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise DTypeError(f"{name}: expected a real floating dtype (float32, float64, ...), got {x.dtype}")


def acc_dtype(xp: Namespace, dtype: Any) -> Any:
    """The dtype sums are accumulated in: float32 for float16/bfloat16, else ``dtype``."""
    if dtype == xp.float32 or dtype == xp.float64:
        return dtype
    return xp.float32


def common_dtype(xp: Namespace, *arrays: Array) -> Any:
    """Promote the floating dtypes of ``arrays`` by the array-API rules."""
    return xp.result_type(*arrays)


class Features(NamedTuple):
    """A feature-map batch seen as a matrix per sample, without copying.

    ``data`` is (B, n, f) when ``layout == "bnf"`` and (B, f, n) when ``layout == "bfn"``.
    """

    data: Array
    layout: Literal["bnf", "bfn"]
    batch: int
    spatial: tuple[int, ...]
    channels: int

    @property
    def positions(self) -> int:
        return math.prod(self.spatial)


def _channels_last_memory(xp: Namespace, x: Array) -> bool:
    """True when channel-first ``x`` (B, f, ...) is stored channels-last in memory."""
    if x.ndim < 3:
        return False
    if is_torch(xp):
        if x.is_contiguous() or x.stride(1) != 1:
            return False
        return bool(x.permute(0, *range(2, x.ndim), 1).is_contiguous())
    if is_numpy(xp):
        if x.flags.c_contiguous or x.strides[1] != x.itemsize:
            return False
        return bool(xp.moveaxis(x, 1, -1).flags.c_contiguous)
    return False


def features(xp: Namespace, x: Array, channel_axis: int, name: str = "X") -> Features:
    """Validate a feature-map batch and view it as (B, n, f) or (B, f, n).

    ``channel_axis=-1``: (B, n, f) or (B, H, W, f) ... (channels last).
    ``channel_axis=1``: (B, f, H, W) or (B, f, T, H, W); read as a (B, f, n) view, or as
    (B, n, f) when the memory is channels-last (torch ``channels_last`` format).
    Any other axis is moved last (one copy).
    """
    check_floating(xp, x, name)
    shape = shape_of(x)
    if len(shape) < 3:
        raise ShapeError(
            f"{name}: expected a batch of feature maps with at least 3 dimensions, "
            f"(B, n, f) or (B, f, H, W), got shape {shape}"
        )
    if not isinstance(channel_axis, int) or isinstance(channel_axis, bool):
        raise TypeError(f"channel_axis: expected an int, got {type(channel_axis).__name__}")
    if not -len(shape) <= channel_axis < len(shape):
        raise ShapeError(f"channel_axis: expected an axis of {name} with shape {shape}, got {channel_axis}")
    ax = channel_axis % len(shape)
    if ax == 0:
        raise ShapeError(
            f"channel_axis: axis 0 is the batch axis of {name} with shape {shape}; channels cannot be there"
        )
    batch, f = shape[0], shape[ax]
    spatial = shape[1:ax] + shape[ax + 1 :]
    n = math.prod(spatial)
    if f == 0 or n == 0:
        raise ShapeError(
            f"{name}: expected at least one channel and one position, got shape {shape} "
            f"(f = {f} channels, n = {n} positions)"
        )
    if ax == len(shape) - 1:
        return Features(xp.reshape(x, (batch, n, f)), "bnf", batch, spatial, f)
    if ax == 1 and not _channels_last_memory(xp, x):
        return Features(xp.reshape(x, (batch, f, n)), "bfn", batch, spatial, f)
    moved = xp.moveaxis(x, ax, -1)  # a view when the memory is channels-last
    return Features(xp.reshape(moved, (batch, n, f)), "bnf", batch, spatial, f)


def upcast(xp: Namespace, feats: Features) -> Features:
    """Features in their accumulation dtype (float16/bfloat16 become float32)."""
    dt = acc_dtype(xp, feats.data.dtype)
    if dt == feats.data.dtype:
        return feats
    return feats._replace(data=xp.astype(feats.data, dt))


def project(xp: Namespace, feats: Features, m: Array) -> Array:
    """Z = X M for every sample: (B, n, k) from M (f, k), by one GEMM.

    The result may be a transposed view of a (B, k, n) buffer (torch, and NCHW input),
    which is what the fastest GEMM form writes.
    """
    x = feats.data
    if feats.layout == "bfn":
        return xp.matrix_transpose(xp.matmul(xp.matrix_transpose(m), x))
    if is_torch(xp):
        return xp.matrix_transpose(xp.matmul(m.mT, x.mT))
    b, n, f = shape_of(x)
    return xp.reshape(xp.matmul(xp.reshape(x, (b * n, f)), m), (b, n, shape_of(m)[1]))


def weighted_sum(xp: Namespace, feats: Features, u: Array) -> Array:
    """V = Uᵀ X for every sample: (B, k, f) from position weights U (B, n, k).

    This is attention-weighted pooling: row k of V is Σ_i U_ik x_i.
    """
    x = feats.data
    if feats.layout == "bfn":
        return xp.matrix_transpose(xp.matmul(x, u))
    return xp.matmul(xp.matrix_transpose(u), x)


def prepare(
    x: Array,
    channel_axis: int,
    finite: bool,
    **factors: Array,
) -> tuple[Namespace, Features, dict[str, Array]]:
    """Common preamble of the pooling functions.

    Infers the namespace from X and the factors, views X as a (B, n, f)/(B, f, n)
    matrix batch, checks dtypes (and finiteness when ``finite``), and casts
    everything to one accumulation dtype (float16/bfloat16 compute in float32).
    """
    xp = namespace(X=x, **factors)
    feats = features(xp, x, channel_axis)
    for name, a in factors.items():
        check_floating(xp, a, name)
    if finite:
        check_finite(xp, x, "X")
        for name, a in factors.items():
            check_finite(xp, a, name)
    dt = acc_dtype(xp, xp.result_type(feats.data, *factors.values()))
    if feats.data.dtype != dt:
        feats = feats._replace(data=xp.astype(feats.data, dt))
    cast = {n: (a if a.dtype == dt else xp.astype(a, dt)) for n, a in factors.items()}
    return xp, feats, cast
