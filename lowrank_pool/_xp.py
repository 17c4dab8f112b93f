"""The one dispatch module: everything that depends on *which* library the caller uses.

Array namespaces, feature-map layouts, the GEMM forms, the autograd-kernel switch,
tensorly's backend name and the recognition of factor objects live here, so the math
modules read as plain array-API code. The GEMM choices were measured (torch 2.13
CPU/MKL and numpy/OpenBLAS, float32, B=32; see the performance page of the docs):

- torch: the transposed product ``M.mT @ X.mT`` (Zᵀ = Mᵀ Xᵀ) is 1.2-2.7x faster than
  ``X @ M`` on a (B, n, f) input;
- numpy: the flat ``X.reshape(-1, f) @ M`` is fastest;
- a (B, f, n) view of NCHW/NCDHW input is multiplied as it is, ``Mᵀ @ X``, without
  the ``permute(...).contiguous()`` copy that costs up to 3.4x the whole pooling.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import array_api_compat as aac
import numpy as np

from ._errors import ArgumentTypeError, BackendError, DTypeError, ShapeError, shape_of

Array = Any
Namespace = Any

__all__ = [
    "Features",
    "acc_dtype",
    "channels_first_product",
    "device_of",
    "features",
    "form_kind",
    "full_precision",
    "gram_product",
    "host_copy",
    "is_linalg_error",
    "is_numpy",
    "is_numpy_array",
    "is_torch",
    "namespace",
    "project",
    "random_normal",
    "result_dtype",
    "tensorly_backend",
    "tensorly_context",
    "top_eigh",
    "torch_fast_scores",
    "torch_shared_scores",
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


_TORCH_XP: list[Namespace] = []


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
    if not _TORCH_XP:
        import array_api_compat.torch

        _TORCH_XP.append(array_api_compat.torch)
    return _TORCH_XP[0]


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


# ----------------------------------------------------------------------------- layouts
class Features(NamedTuple):
    """A feature-map batch seen as a matrix per sample, without copying.

    ``data`` is (B, n, f) when ``layout == "bnf"`` and (B, f, n) when ``layout == "bfn"``.
    ``shape`` and ``axis`` are the input's shape and the (non-negative) channel axis,
    kept for error messages.
    """

    data: Array
    layout: Literal["bnf", "bfn"]
    batch: int
    spatial: tuple[int, ...]
    channels: int
    shape: tuple[int, ...]
    axis: int

    @property
    def positions(self) -> int:
        return math.prod(self.spatial)

    def describe(self) -> str:
        """E.g. ``"(B, f, H, W) input of shape (2, 16, 7, 7), channels on axis 1"``."""
        names = {3: "(B, f, H, W)", 4: "(B, f, T, H, W)"}
        if self.axis == len(self.shape) - 1:
            layout = "(B, n, f)" if len(self.shape) == 3 else "channels-last (B, ..., f)"
        elif self.axis == 1:
            layout = names.get(len(self.spatial) + 1, "channels-first (B, f, ...)")
        else:
            layout = f"channels-on-axis-{self.axis}"
        return f"{layout} input of shape {self.shape}, channels on axis {self.axis}"


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


def resolve_channel_axis(ndim: int, channel_axis: int | None) -> int:
    """The channel axis rule shared by every function and layer (see :func:`features`)."""
    if channel_axis is None:
        return ndim - 1 if ndim == 3 else 1
    if not isinstance(channel_axis, int) or isinstance(channel_axis, bool):
        raise ArgumentTypeError(
            f"channel_axis: expected an int, got {type(channel_axis).__name__} (None selects the default rule)"
        )
    return channel_axis


def features(xp: Namespace, x: Array, channel_axis: int | None, name: str = "X") -> Features:
    """Validate a feature-map batch and view it as (B, n, f) or (B, f, n).

    The channel axis rule (every function and layer): ``channel_axis=None`` reads 3-D
    input as (B, n, f) and 4-D/5-D input as (B, f, H, W) / (B, f, T, H, W), PyTorch's
    convention; an explicit axis overrides it (``-1`` for (B, H, W, f) images).
    Channel-first input is read as a (B, f, n) view, or as (B, n, f) when the memory is
    channels-last (torch ``channels_last`` format). Any other axis is moved last.
    """
    check_floating(xp, x, name)
    shape = shape_of(x)
    if len(shape) < 3:
        raise ShapeError(
            f"{name}: expected a batch of feature maps with at least 3 dimensions, "
            f"(B, n, f) or (B, f, H, W), got shape {shape}"
        )
    channel_axis = resolve_channel_axis(len(shape), channel_axis)
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
        return Features(xp.reshape(x, (batch, n, f)), "bnf", batch, spatial, f, shape, ax)
    if ax == 1 and not _channels_last_memory(xp, x):
        return Features(xp.reshape(x, (batch, f, n)), "bfn", batch, spatial, f, shape, ax)
    moved = xp.moveaxis(x, ax, -1)  # a view when the memory is channels-last
    return Features(xp.reshape(moved, (batch, n, f)), "bnf", batch, spatial, f, shape, ax)


def channels_first_product(xp: Namespace, mt: Array, x: Array) -> Array:
    """Mᵀ X_b (B, k, n) of every channels-first sample X_b (f, n), from Mᵀ (k, f), X read in place.

    torch.matmul folds (k, f) @ (B, f, n) into one GEMM on a (B·n, f) copy of X when M has
    requires_grad set (inside no_grad too, for a parameter handed as it is: rank-1 inference at
    (32, 49, 2048) 7.7 -> 0.68 ms), and hands back ∂X in that layout: two transposing copies of X
    per training step (55 of 141 ms of a CP head's fwd+bwd at (32, 196, 2048), R = 64). The
    batched form with Mᵀ broadcast reads X in place, writes ∂X in X's layout, and pays a (B, k, f)
    ∂M buffer instead, at most twice X for k <= 2n (measured 1.2-3x faster up to k = 1.3n, even at
    2n; the fold won from k = 2.6n). ``xp`` may be ``torch`` itself (the autograd Functions' hot path).
    """
    b, f, n = shape_of(x)
    k = shape_of(mt)[0]
    if is_torch(xp) and k <= 2 * n:
        mt = xp.broadcast_to(mt, (b, k, f))
    return xp.matmul(mt, x)


def project(xp: Namespace, feats: Features, m: Array) -> Array:
    """Z = X M for every sample: (B, n, k) from M (f, k), by one GEMM.

    With NCHW input the result is a transposed view of a (B, k, n) buffer, which is what
    the fastest GEMM form writes there.
    """
    x = feats.data
    if feats.layout == "bfn":
        return xp.matrix_transpose(channels_first_product(xp, xp.matrix_transpose(m), x))
    if is_torch(xp):  # one GEMM on the (B·n, f) view; writing Z as (B, k, n) measured up to 1.35x slower
        return xp.matmul(x, m)
    b, n, f = shape_of(x)
    return xp.reshape(xp.matmul(xp.reshape(x, (b * n, f)), m), (b, n, shape_of(m)[1]))


def scatter_sum(xp: Namespace, y: Array, index: Any, size: int, axis: int) -> Array:
    """Z (``size`` long on ``axis``) with Z[..., j, ...] = Σ over c with index[c] = j of y[..., c, ...].

    ``index`` is an integer array (len = y's length on ``axis``), numpy or of y's library on its
    device; repeated bins add up (a count sketch). Each library's own scatter-add: O(y.size) work,
    where the generic form (a product with the dense one-hot (len, size) matrix, kept for the other
    libraries) costs O(y.size · size): 2.4 s instead of 0.1 s for a (32, 49, 2048) sketch of size 8192.
    """
    shape = list(shape_of(y))
    shape[axis] = size
    where = (slice(None),) * axis + (index,)
    if is_torch(xp):
        torch = sys.modules["torch"]
        bins = torch.as_tensor(index, device=y.device)
        return y.new_zeros(shape).index_add_(axis, bins, y)  # in place: the out-of-place form copies the zeros
    if is_numpy(xp):
        z = xp.zeros(shape, dtype=y.dtype)
        np.add.at(z, where, y)
        return z
    if aac.is_jax_namespace(xp):
        return xp.zeros(shape, dtype=y.dtype).at[where].add(y)
    if is_numpy_array(index):
        index = xp.asarray(index, device=device_of(y))
    onehot = xp.astype(index[:, None] == xp.arange(size, dtype=index.dtype, device=device_of(y))[None, :], y.dtype)
    moved = xp.moveaxis(y, axis, -1)
    return xp.moveaxis(xp.matmul(moved, onehot), -1, axis)


def fft_of(xp: Namespace) -> Any:
    """The FFT functions for ``xp``'s arrays: ``scipy.fft`` for numpy (numpy 2's own float32 rfft measured
    13x slower: 1.6 s against 0.12 s for 6 272 transforms of length 8192), else ``xp.fft``."""
    if is_numpy(xp):
        import scipy.fft

        return scipy.fft
    return xp.fft


def weighted_sum(xp: Namespace, feats: Features, u: Array) -> Array:
    """V = Uᵀ X for every sample: (B, k, f) from position weights U (B, n, k).

    This is attention-weighted pooling: row k of V is Σ_i U_ik x_i.
    """
    x = feats.data
    if feats.layout == "bfn":
        return xp.matrix_transpose(xp.matmul(x, u))
    return xp.matmul(xp.matrix_transpose(u), x)


def gram_product(xp: Namespace, feats: Features) -> Array:
    """XᵀX (B, f, f) for every sample, by the faster batched GEMM form of the library.

    Both forms hand BLAS one transposed operand and no copy, except with numpy when
    n < f: OpenBLAS runs the batched product with a transposed (strided) operand 3-6x
    slower than on C-contiguous data there (497 vs 80 ms at B=32, n=49, f=2048,
    float32); the copy costs B·n·f, small next to the B·f² output. A symmetric rank-k
    update (scipy's ?syrk, one call per sample) was measured 1.3-5x *slower* than the
    batched GEMM with numpy/OpenBLAS, and torch has none.
    """
    x = feats.data
    if is_torch(xp):  # ∂X in one batched GEMM where X is differentiated (see _torch_kernels._Gram)
        from ._torch_kernels import gram

        return gram(x, feats.layout != "bnf")
    xt = xp.matrix_transpose(x)
    if is_numpy(xp) and feats.positions < feats.channels:
        xt = xp.asarray(xt, copy=True)
    return xp.matmul(xt, x) if feats.layout == "bnf" else xp.matmul(x, xt)


def torch_shared_scores(
    xp: Namespace, x: Array, bm: Array, a3: Array, *, channels_first: bool, attention: str, positions: int
) -> Array | None:
    """Scores of attention-weighted pooling with a shared B for torch arrays (None for other libraries).

    Training runs the torch kernel's autograd Function (∂X written once, in X's layout); inference the
    compiled CPU kernel where it serves the inputs (it reads X once per pass in its own layout:
    measured 1.2-5x faster than the stock batched products), else the same stock products as the
    Function's torch path. One call, one set of checks: with cold caches each check costs tens of
    microseconds.
    """
    if not is_torch(xp):
        return None
    from ._torch_kernels import shared_bottom_up_scores

    return shared_bottom_up_scores(x, bm, a3, channels_first=channels_first, attention=attention, positions=positions)


def torch_fast_scores(
    x: Array, a: Array, bm: Array, attention: Any, channel_axis: Any, check_finite: Any, *, rank1: bool
) -> Array | None:
    """Scores of rank-1 / shared-B rank-P pooling for plain torch tensors, computed without the general
    path's validation; None otherwise (see ``_torch_kernels.fast_shared_scores``)."""
    torch = sys.modules.get("torch")
    if torch is None or type(x) is not torch.Tensor or check_finite is not False:
        return None
    if channel_axis is not None and type(channel_axis) is not int:  # (a bool, a numpy integer: the general path)
        return None
    if not _FAST:  # imported once: an import statement per call costs ~10 µs once caches are cold
        from . import _torch_kernels

        _FAST.append(_torch_kernels)
    return _FAST[0].fast_shared_scores(x, a, bm, attention, rank1=rank1, channel_axis=channel_axis)


_FAST: list[Any] = []


def top_eigh(xp: Namespace, s: Array, p: int) -> tuple[Array, Array]:
    """The p eigenpairs of the symmetric matrix s (f, f) of largest |μ|, sorted by |μ| descending.

    numpy, when p is small next to f (32·p <= f): scipy's partial ``eigh`` (MRRR driver)
    of the p largest and the p smallest eigenvalues, which hold the p of largest |μ|;
    measured 1.3-1.5x faster than the full ``eigh`` at f = 512-1024, p <= 16, and slower
    beyond p ≈ f/16. Otherwise (and for every other library) the full ``eigh``.
    """
    f = shape_of(s)[0]
    if is_numpy(xp) and 32 * p <= f:
        import scipy.linalg

        low = scipy.linalg.eigh(s, subset_by_index=[0, p - 1], driver="evr")
        high = scipy.linalg.eigh(s, subset_by_index=[f - p, f - 1], driver="evr")
        mu, v = np.concatenate([low[0], high[0]]), np.concatenate([low[1], high[1]], axis=1)
    else:
        mu, v = xp.linalg.eigh(s)
    order = xp.argsort(-xp.abs(mu), stable=True)[:p]
    return xp.take(mu, order), xp.take(v, order, axis=1)


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


# ----------------------------------------------------------------------------- tensorly
@contextmanager
def tensorly_context(xp: Namespace, name: str = "W", *, fit: bool = True) -> Iterator[None]:
    """tensorly's backend set to ``xp``'s for this thread only, and restored on exit.

    tensorly's own ``backend_context`` writes the *global* default backend on exit, so
    two fits in two threads (numpy and torch) could swap each other's backend, and a
    user's ``tl.set_backend`` would be overwritten. This sets the thread-local backend
    alone and puts back exactly what the thread had (nothing, or its own choice).
    ``fit=False`` (only building a ``CPTensor``/``TuckerTensor``, which reads shapes)
    falls back to tensorly's numpy backend for libraries tensorly has no backend for.
    """
    import tensorly as tl

    try:
        backend = tensorly_backend(xp, name)
    except BackendError:
        if fit:
            raise
        backend = "numpy"
    local = getattr(sys.modules.get("tensorly.backend"), "_THREAD_LOCAL_DATA", None)
    had = local is not None and "backend" in vars(local)
    old = vars(local).get("backend") if local is not None else tl.get_backend()
    tl.set_backend(backend, local_threadsafe=True)
    try:
        yield
    finally:
        if local is None:  # another tensorly layout: restore by name, thread-locally
            tl.set_backend(old, local_threadsafe=True)
        elif had:
            local.backend = old
        else:
            vars(local).pop("backend", None)


def tensorly_backend(xp: Namespace, name: str = "W") -> str:
    """tensorly's backend name for arrays of ``xp`` (used inside ``tl.backend_context``)."""
    if aac.is_numpy_namespace(xp):
        return "numpy"
    if aac.is_torch_namespace(xp):
        return "pytorch"
    if aac.is_jax_namespace(xp):
        return "jax"
    if aac.is_cupy_namespace(xp):
        return "cupy"
    raise BackendError(
        f"{name}: tensorly has no backend for {xp.__name__} arrays; pass numpy, torch, jax or cupy arrays"
    )


def is_linalg_error(err: BaseException) -> bool:
    """Whether ``err`` is a library's linear-algebra failure (a singular matrix): numpy's, torch's and
    CuPy's all name their class ``LinAlgError`` (torch's C class ``_LinAlgError``)."""
    return any(c.__name__.lstrip("_") == "LinAlgError" for c in type(err).__mro__)


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


# ----------------------------------------------------------------------------- factor objects
FormKind = Literal["cp", "tucker", "eig", "rankp", "dense"]


def form_kind(obj: Any) -> FormKind | None:
    """Which factor form ``obj`` is, from its type or, for plain tuples, its array ranks.

    tensorly's ``CPTensor`` / ``TuckerTensor`` and the package's ``EigTensor`` / ``RankP``
    are recognised by type; a plain pair by the rank of its arrays: ``(weights (R,) or
    None, [3 matrices])`` is CP, ``(core (R_K, R_a, R_c), [3 matrices])`` Tucker,
    ``(eigenvalues (K, P), eigenvectors (f, K, P))`` eigen, ``(A (f, K, P), B)`` rank-P;
    a single 3-D array is a dense W. None for anything else.
    """
    kind = type(obj).__name__
    if kind in ("CPTensor", "TuckerTensor", "EigTensor", "RankP"):
        return {"CPTensor": "cp", "TuckerTensor": "tucker", "EigTensor": "eig", "RankP": "rankp"}[kind]  # type: ignore[return-value]
    if not isinstance(obj, tuple | list):  # (tuples first: no array-api type checks under torch.compile)
        is_array = hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, int | float | complex)
        return "dense" if is_array and getattr(obj, "ndim", 0) == 3 else None
    if len(obj) != 2:
        return None
    first, second = obj
    first_ndim = getattr(first, "ndim", None)
    if isinstance(second, tuple | list):
        if first is None or first_ndim == 1:
            return "cp"
        if first_ndim == 3:
            return "tucker"
        return None
    second_ndim = getattr(second, "ndim", None)
    if first_ndim == 2 and second_ndim == 3:
        return "eig"
    if first_ndim == 3 and second_ndim in (2, 3):
        return "rankp"
    return None
