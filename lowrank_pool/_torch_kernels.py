"""Autograd Functions of the torch path: attention-weighted pooling with a shared bottom-up basis, and
the Gram matrix XᵀX of second-order pooling (:func:`gram`, below; torch only).

Forward (the same three steps as :func:`lowrank_pool.rankp_pool` with a shared B, on the
(B, f, n) view of X; for (B, n, f) input that view is a transpose, not a copy):

    Z = Bᵀ X      (B, P, n)   bottom-up maps
    U = σ(Z)      (B, P, n)   over positions: identity / ReLU / n · spatial softmax
    V = U Xᵀ      (B, P, f)   attention-weighted pooling
    s = c vec(V) A  (B, K)    with A seen as (P, f, K) and the scale c = 1/n

Backward, with g = ∂L/∂s:

    ∂V = c g Aᵀ,  ∂A = c vec(V)ᵀ g,  ∂U = ∂V X,  ∂Z = σ'(Z)ᵀ ∂U,  ∂B = Σ_b X ∂Zᵀ,
    ∂X = [∂Vᵀ | B] · [U ; ∂Z]     (one batched GEMM of width 2P)

Only U and V (B·P·(n + f) numbers) are saved besides the inputs, and ∂X is written once
in X's own layout: plain autograd of the same graph accumulates ∂X from two products,
and that of the one-GEMM form saves the (B, n, K+1) projection. A is taken as a
(P, f, K) view (rank-P's (f, K, P) parameter permuted), so that the compiled kernel reads
it without a copy.

Higher derivatives. The backward is written in differentiable torch operations; when it
runs under ``create_graph=True`` (a gradient penalty, a Hessian-vector product,
``torch.func.grad`` of a gradient) it recomputes U and V from X and B, so that the second
derivative sees their dependence on the inputs (the saved U and V are constants to
autograd). Forward mode (``torch.func.jvp``, ``jacfwd``, ``hessian``) uses :meth:`jvp`:

    ∂Z = ∂Bᵀ X + Bᵀ ∂X,  ∂U = σ'(Z)[∂Z],  ∂V = ∂U Xᵀ + U ∂Xᵀ,  ∂s = c vec(∂V) A + c vec(V) ∂A
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import array_api_compat.torch as xp
import torch

from . import _native
from ._backend import result_dtype
from ._errors import LowRankPoolError
from ._layout import plan
from ._ops import activate, channels_first_product

__all__ = ["fast_shared_scores", "gram", "shared_bottom_up_scores"]

_ATTENTION_CODES = {"linear": 0, "relu": 1, "softmax": 2}


def _native_kernel(
    x: torch.Tensor, bm: torch.Tensor, *others: torch.Tensor, saved: tuple[torch.Tensor, ...] = ()
) -> Any:
    """The compiled kernel when it serves these tensors (CPU, one float32/float64 dtype, plain tensors without the
    negative or conjugate bit, outside autocast, vmap, torch.compile and torch.jit tracing; X and B contiguous);
    None sends the call down the torch path.

    The kernel reads raw storage: a lazily negated view (the negative bit of ``t.conj().imag`` or ``torch._neg_view``)
    would reach it with the opposite sign, and a tracer records only the operations it sees, not the kernel's
    writes. Every test here runs on every call, so the cheap ones come first (see docs/performance.md).
    """
    if not x.is_cpu:  # a GPU's calls stop here
        return None
    kernel = _ready_kernel(x, bm)
    # (torch._C._is_tracing once the compiling test has passed: dynamo folds torch.jit.is_tracing, not the C call)
    if kernel is None or _C_IS_TRACING():
        return None
    for t in saved:  # U and V of a forward that ran on the torch path; else made by the forward: nothing more to ask
        if not t.is_contiguous():
            return None
    tensors = (x, bm, *others)
    dtype = x.dtype
    if dtype not in _KERNEL_DTYPES:
        return None
    for t in tensors:  # (the conjugate bit exists only on complex tensors, which the dtype test already sent away)
        if t.dtype != dtype or t.is_neg() or not t.is_cpu:
            return None
        if type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            return None  # a tensor subclass: the kernel needs plain storage
    return None if _wrapped(tensors) else kernel


def _native_kernel_for_plain(x: torch.Tensor, bm: torch.Tensor, a: torch.Tensor) -> Any:
    """:func:`_native_kernel` for the fast path's inference call, whose own tests have established the per-tensor
    facts it asks first (plain tensors or parameters of one float32/float64 dtype, all on the CPU, no tracing): the
    context and the negative bit are asked here."""
    kernel = _ready_kernel(x, bm)
    if kernel is None or x.is_neg() or bm.is_neg() or a.is_neg():
        return None
    return None if _wrapped((x, bm, a)) else kernel


def _ready_kernel(x: torch.Tensor, bm: torch.Tensor) -> Any:
    """The compiled kernel unless the call's context rules it out: torch.compile tracing, CPU autocast, no binary
    loaded, or X or B not contiguous."""
    if _is_compiling() or torch.is_autocast_enabled("cpu"):
        return None
    kernel = _native.kernel()  # (after the compiling test: dynamo warns about cached functions)
    if kernel is None or not (x.is_contiguous() and bm.is_contiguous()):
        return None
    return kernel


def _wrapped(tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether one of the tensors is a vmap/grad transform's wrapper (only looked for inside a transform)."""
    return _in_functorch_transform() and any(_FUNCTORCH.is_functorch_wrapped_tensor(t) for t in tensors)


# Triton's kernels serve CUDA tensors; on CPU tensors only under Triton's interpreter and when asked (the tests,
# with LOWRANK_POOL_TRITON_ON_CPU=1, read once: a CPU call's path never looks at the environment)
_TRITON_ON_CPU = os.environ.get("LOWRANK_POOL_TRITON_ON_CPU") == "1"
_TRITON: Any = None  # the module, imported on first use (it imports triton)


def _gpu_kernel(x: torch.Tensor, bm: torch.Tensor, *others: torch.Tensor, saved: tuple[torch.Tensor, ...] = ()) -> Any:
    """The Triton kernels (:mod:`lowrank_pool._triton`) when they serve these tensors: CUDA (or CPU under the
    interpreter, when asked), one float32/float16/bfloat16 dtype, plain tensors without the negative or conjugate
    bit, outside autocast, vmap, torch.compile (inductor writes its own kernels) and torch.jit tracing; else None.
    The same entry points as the CPU kernel's (``scores_forward``, ``scores_backward``)."""
    global _TRITON
    if not (x.is_cuda or (_TRITON_ON_CPU and x.is_cpu)) or _is_compiling() or _IS_TRACING():
        return None
    if torch.is_autocast_enabled(x.device.type):
        return None
    if _TRITON is None:
        from . import _triton

        _TRITON = _triton
    if not _TRITON.available(x):
        return None
    dtype, device = x.dtype, x.device
    tensors = (x, bm, *others, *saved)
    for t in tensors:
        if (type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter)) or t.device != device:
            return None
        if t.dtype != dtype or t.is_neg():  # (no conjugate bit: the dtypes it serves are real)
            return None
    if _wrapped(tensors):
        return None
    return _TRITON


def _kernel(x: torch.Tensor, bm: torch.Tensor, *others: torch.Tensor, saved: tuple[torch.Tensor, ...] = ()) -> Any:
    """The kernel that serves these tensors (Triton on a GPU, the compiled one on the CPU), or None: the torch
    path."""
    if x.is_cpu and not _TRITON_ON_CPU:
        return _native_kernel(x, bm, *others, saved=saved)
    return _gpu_kernel(x, bm, *others, saved=saved) or _native_kernel(x, bm, *others, saved=saved)


_IS_TRACING: Any = torch.jit.is_tracing  # (dynamo folds it to False; torch._C._is_tracing breaks its graph)
_C_IS_TRACING: Any = getattr(torch._C, "_is_tracing", _IS_TRACING)  # (only where dynamo cannot be tracing)
_FUNCTORCH: Any = getattr(torch._C, "_functorch", None)
_PEEK: Any = getattr(_FUNCTORCH, "peek_interpreter_stack", None)


def _in_functorch_transform() -> bool:
    """Whether a vmap/grad transform is active (only then can a tensor be one of its wrappers)."""
    if _FUNCTORCH is None:
        return False
    return _PEEK is None or _PEEK() is not None


def _bottom_up(xt: torch.Tensor, m: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """Mᵀ X_bᵀ (B, P, n) of every sample, X read in place: channels-first X by the batched product of
    :func:`~lowrank_pool._ops.channels_first_product` (a plain ``torch.matmul`` copies it whenever M
    requires grad), (B, n, f) X by one GEMM on its (B·n, f) view."""
    if channels_first:
        return channels_first_product(torch, m.mT, xt)
    return torch.matmul(xt.mT, m).mT


def _maps(x: torch.Tensor, bm: torch.Tensor, channels_first: bool, attention: str) -> tuple[torch.Tensor, ...]:
    """(X as (B, f, n), Z, U, V) of the forward pass."""
    xt = x if channels_first else x.mT  # (B, f, n)
    z = _bottom_up(xt, bm, channels_first)  # (B, P, n)
    u = activate(xp, z, attention, axis=-1)
    return xt, z, u, torch.matmul(u, xt.mT)  # V (B, P, f)


def _scores(v: torch.Tensor, a3: torch.Tensor, scale: float) -> torch.Tensor:
    """s = scale · vec(V) A (B, K), A seen as (P, f, K) (or already as (P·f, K))."""
    return torch.matmul(v.flatten(1), a3.reshape(-1, a3.shape[-1])) * scale


def _activation_derivative(u: torch.Tensor, dz: torch.Tensor, attention: str) -> torch.Tensor:
    """σ'(Z) applied to dZ (the same operator is its own transpose: ReLU masks, softmax is symmetric)."""
    if attention == "linear":
        return dz
    if attention == "relu":
        return dz * (u > 0)
    # u = n · softmax(z): ∂u = u ⊙ (∂z − Σ_i ∂z_i u_i / n)
    return u * (dz - (dz * u).sum(-1, keepdim=True) / u.shape[-1])


def _common_dtype(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors in their promoted dtype.

    Under ``torch.autocast`` the forward's products run in bfloat16/float16 (U and V are
    saved so) while ``backward()`` usually runs after the autocast block, on float32 X and
    parameters: the backward computes in the promoted dtype, and autograd casts each
    gradient back to its input's dtype.
    """
    dtype = result_dtype(xp, *tensors)
    return [t if t.dtype == dtype else t.to(dtype) for t in tensors]


class _SharedBottomUp(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: torch.Tensor, bm: torch.Tensor, a3: torch.Tensor, channels_first: bool, attention: str, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """s, U, V and A as a contiguous (P·f, K) copy where one was made (saved for the backward)."""
        native = _kernel(x, bm, a3)
        if native is not None:  # X read once per pass, in its own layout; the products with A in the kernel
            s, u, v, copy = native.scores_forward(x, bm, a3, channels_first, _ATTENTION_CODES[attention], scale)
            return s, u, v, copy
        _, _, u, v = _maps(x, bm, channels_first, attention)
        a2 = a3.reshape(-1, a3.shape[-1])
        return _scores(v, a2, scale), u, v, None if a3.is_contiguous() else a2

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        x, bm, a3, channels_first, attention, scale = inputs
        _, u, v, copy = output
        ctx.save_for_backward(x, bm, a3, u, v, copy)
        ctx.save_for_forward(x, bm, a3, u, v)
        ctx.channels_first, ctx.attention, ctx.scale = channels_first, attention, scale
        ctx.mark_non_differentiable(*(t for t in (u, v, copy) if t is not None))
        ctx.set_materialize_grads(False)  # U, V and the copy get no gradient: no zero tensors made for them

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None, *_unused: Any) -> tuple[Any, ...]:
        need_x, need_b, need_a = ctx.needs_input_grad[:3]
        if g is None:
            return None, None, None, None, None, None
        x, bm, a3, u, v, copy = ctx.saved_tensors
        if copy is not None and not torch.is_grad_enabled():  # the forward's contiguous A: not copied again
            a3 = copy.view(a3.shape)
        g, x, bm, a3, u, v = _common_dtype(g, x, bm, a3, u, v)
        native = None if torch.is_grad_enabled() else _kernel(x, bm, a3, g, saved=(u, v))
        if native is not None:
            code = _ATTENTION_CODES[ctx.attention]
            gx, gbm, ga = native.scores_backward(
                x, bm, a3, u, v, g, ctx.channels_first, code, ctx.scale, need_x, need_b, need_a
            )
            return gx if need_x else None, gbm if need_b else None, ga if need_a else None, None, None, None
        xt = x if ctx.channels_first else x.mT
        if torch.is_grad_enabled():  # create_graph: U and V must carry their dependence on X and B
            xt, _, u, v = _maps(x, bm, ctx.channels_first, ctx.attention)
        batch, p, f = v.shape
        a2 = a3.reshape(p * f, a3.shape[-1])
        gx = gbm = ga = None
        g = g * ctx.scale  # on g (B × K), once for both products (one kernel fewer on a GPU)
        if need_a:
            ga = torch.matmul(v.flatten(1).mT, g).view(a3.shape)
        if need_x or need_b:
            gv = torch.matmul(g, a2.mT).view(batch, p, f)
            gz = _activation_derivative(u, torch.matmul(gv, xt), ctx.attention)  # (B, P, n)
            if need_b:
                gbm = torch.matmul(xt, gz.mT).sum(0)
            if need_x:
                left = torch.cat([gv.mT, bm.expand(batch, f, p)], dim=2)  # (B, f, 2P)
                right = torch.cat([u, gz], dim=1)  # (B, 2P, n)
                gx = torch.matmul(left, right) if ctx.channels_first else torch.matmul(right.mT, left.mT)
        return gx, gbm, ga, None, None, None


# Function.apply binds its arguments to forward's signature on every call (for setup_context), and
# inspect.signature() rebuilds it unless the function carries one: it does (docs/performance.md).
_SharedBottomUp.forward.__signature__ = inspect.signature(_SharedBottomUp.forward)  # type: ignore[attr-defined]


class _SharedBottomUpForwardMode(_SharedBottomUp):
    """The same Function with forward-mode AD (a ``jvp``), outside ``torch.compile``.

    Dynamo cannot trace an autograd Function that defines ``jvp`` (torch 2.13 refuses with
    "Unsupported custom jvp"), so compiled code runs :class:`_SharedBottomUp`; forward-mode
    AD through *compiled* code then raises torch's own NotImplementedError.
    """

    @staticmethod
    def jvp(ctx: Any, dx: Any, dbm: Any, da: Any, _dc: Any, _datt: Any, _dscale: Any) -> tuple[Any, ...]:
        x, bm, a3, u, v = _common_dtype(*ctx.saved_tensors)
        dx, dbm, da = (None if t is None else t.to(x.dtype) for t in (dx, dbm, da))
        xt = x if ctx.channels_first else x.mT
        dxt = None if dx is None else (dx if ctx.channels_first else dx.mT)
        ds = None if da is None else _scores(v, da, ctx.scale)
        if dxt is not None or dbm is not None:
            dz = torch.zeros_like(u)
            if dbm is not None:
                dz = dz + _bottom_up(xt, dbm, ctx.channels_first)
            if dxt is not None:
                dz = dz + _bottom_up(dxt, bm, ctx.channels_first)
            dv = torch.matmul(_activation_derivative(u, dz, ctx.attention), xt.mT)
            if dxt is not None:
                dv = dv + torch.matmul(u, dxt.mT)
            term = _scores(dv, a3, ctx.scale)
            ds = term if ds is None else ds + term
        if ds is None:
            ds = torch.zeros(x.shape[0], a3.shape[-1], dtype=v.dtype, device=v.device)
        return ds, None, None, None


def _ctx_first(fn: Any, forward_mode: Any) -> Any:
    """The ctx-first form of the setup_context Function ``fn``, for calls outside functorch's transforms
    and torch.compile: the same forward, saved tensors, backward (any order) and ``jvp`` (that of
    ``forward_mode``, for ``torch.autograd.forward_ad``).

    ``Function.apply`` binds its arguments to ``forward``'s signature (``inspect.Signature.bind``) on
    every call of a Function that defines ``setup_context``, the form functorch's transforms need:
    about a quarter of the Python time of a forward on the torch path, which is every GPU call and
    there the cost of a small step. This form skips the binding; ``torch.func``'s transforms (vmap,
    grad, jvp, jacfwd) run ``forward_mode`` (see :func:`_apply`).
    """

    def forward(ctx: Any, *inputs: Any) -> Any:
        output = fn.forward(*inputs)
        fn.setup_context(ctx, inputs, output)
        return output

    def backward(ctx: Any, *grads: Any) -> Any:  # looked up per call: one definition of each derivative
        return fn.backward(ctx, *grads)

    def jvp(ctx: Any, *tangents: Any) -> Any:
        return forward_mode.jvp(ctx, *tangents)

    body = {"forward": staticmethod(forward), "backward": staticmethod(backward), "jvp": staticmethod(jvp)}
    return type(f"{fn.__name__}Eager", (torch.autograd.Function,), {**body, "__doc__": _ctx_first.__doc__})


_SharedBottomUpEager = _ctx_first(_SharedBottomUp, _SharedBottomUpForwardMode)
_TRANSFORMS_ACTIVE: Any = getattr(torch._C, "_are_functorch_transforms_active", None)


def shared_bottom_up_scores(
    x: torch.Tensor, bm: torch.Tensor, a3: torch.Tensor, *, channels_first: bool, attention: str, positions: int
) -> torch.Tensor:
    """Scores (B, K), divided by ``positions``; x is (B, f, n) if ``channels_first`` else (B, n, f), a3 is A as
    (P, f, K) (any strides).

    Training runs the autograd Function (∂X written once, in X's layout). Inference runs without it:
    the compiled kernel where it serves the call, else the Function's stock products.
    """
    if _IS_TRACING():  # torch.jit.trace records the stock products (whatever the grad mode): one graph, replayable
        return _scores(_maps(x, bm, channels_first, attention)[3], a3, 1.0) / positions
    scale = 1.0 / positions
    if _differentiated(x, bm, a3):
        return _function_scores(x, bm, a3, channels_first, attention, scale)
    native = _kernel(x, bm, a3)
    if native is not None:
        return native.scores_forward(x, bm, a3, channels_first, _ATTENTION_CODES[attention], scale)[0]
    return _scores(_maps(x, bm, channels_first, attention)[3], a3, scale)


def _function_scores(
    x: torch.Tensor, bm: torch.Tensor, a3: torch.Tensor, channels_first: bool, attention: str, scale: float
) -> torch.Tensor:
    forms = (_SharedBottomUp, _SharedBottomUpForwardMode, _SharedBottomUpEager)
    return _apply(forms, x, bm, a3, channels_first, attention, scale)[0]


def _apply(forms: tuple[Any, Any, Any], *inputs: Any) -> Any:
    """``apply`` of a Function in the form the context needs: (compiled, under torch.func's transforms, eager).

    Dynamo cannot trace a Function that defines ``jvp``; functorch's transforms need ``setup_context``;
    the eager form (:func:`_ctx_first`) has both derivatives and no per-call signature binding.
    """
    if _is_compiling():
        return forms[0].apply(*inputs)
    if _TRANSFORMS_ACTIVE is None or _TRANSFORMS_ACTIVE():
        return forms[1].apply(*inputs)
    return forms[2].apply(*inputs)


def fast_shared_scores(
    x: Any, a: Any, bm: Any, attention: Any, *, rank1: bool, channel_axis: int | None = None
) -> torch.Tensor | None:
    """Scores of ``rank1_pool(x, a, bm)`` / shared-B ``rankp_pool(x, a, bm)`` for the common case, or None.

    The common case: plain tensors (or parameters) of one float32/float64 dtype on one device, X as
    (B, n, f) or contiguous channels-first (B, f, H, W) / (B, f, T, H, W) (``channel_axis`` None, or
    the axis that rule gives), as a contiguous (B, f, n) (``channel_axis=1``) or a contiguous
    channels-last (B, H, W, f) / (B, T, H, W, f) (``channel_axis=-1``), factors of matching shapes,
    the default ``check_finite`` (the caller tests it). What the general path's
    validation would then do is only to take these same views, so they go straight to
    the computation of :func:`shared_bottom_up_scores`, skipping checks whose Python and dispatcher calls
    are most of a small call's time (docs/performance.md). Anything else returns None: the general path
    validates (and names a bad argument) and computes.
    """
    code = _ATTENTION_CODES.get(attention) if type(attention) is str else None
    if code is None or type(a) not in _PLAIN or type(bm) not in _PLAIN or _IS_TRACING():
        return None
    if x.layout != torch.strided or a.layout != torch.strided or bm.layout != torch.strided:
        return None
    if x.is_nested or a.is_nested or bm.is_nested:  # (a strided nested tensor: the general path names it)
        return None
    dtype, nd = x.dtype, x.dim()
    if dtype not in _KERNEL_DTYPES or a.dtype != dtype or bm.dtype != dtype or not 3 <= nd <= 5:
        return None
    if not (x.is_cpu and a.is_cpu and bm.is_cpu) and (a.device != x.device or bm.device != x.device):
        return None
    shape = x.shape
    try:  # the layout rule of the general path (cached per shape): anything it refuses, the general path names
        where = plan(shape, channel_axis)
    except LowRankPoolError:
        return None
    ax, f, n = where.axis, where.channels, where.positions
    if ax != 1 and ax != nd - 1:  # a middle axis (moved last by the general path)
        return None
    cf = ax == 1
    if (cf or nd > 3) and not x.is_contiguous():  # channels_last memory or a strided view: the general path's views
        return None
    if rank1:
        if a.dim() != 2 or bm.dim() != 1 or a.shape[0] != f or bm.shape[0] != f:
            return None
        if shape[0] == 0 or a.shape[1] == 0:
            return None
    else:
        if a.dim() != 3 or bm.dim() != 2 or a.shape[0] != f or bm.shape[0] != f or a.shape[2] != bm.shape[1]:
            return None
        if shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
            return None
    if not cf and nd > 3:  # channels-last maps: their (B, n, f) rows
        x = x.view(shape[0], n, f)
    grad = (torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or bm.requires_grad)) or _forward_ad()
    if not grad:  # inference: one call into the kernel, which takes the channels-first views itself
        kernel = _native_kernel_for_plain(x, bm, a) if x.is_cpu else None
        if kernel is not None:
            return kernel.scores_inference(x, bm, a, cf, code, 1.0 / n)
    a3, bm = (a.unsqueeze(0), bm.view(f, 1)) if rank1 else (a.permute(2, 0, 1), bm)
    x = x.view(shape[0], f, n) if cf else x
    if grad:
        return _function_scores(x, bm, a3, cf, attention, 1.0 / n)
    gpu = None if x.is_cpu and not _TRITON_ON_CPU else _gpu_kernel(x, bm, a3)
    if gpu is not None:  # a GPU's inference: the Triton kernel
        return gpu.scores_forward(x, bm, a3, cf, code, 1.0 / n)[0]
    return _scores(_maps(x, bm, cf, attention)[3], a3, 1.0 / n)  # inference no kernel serves


# ------------------------------------------------------------------------------------------- Gram matrices
def _gram_of(x: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """X_b X_bᵀ of (B, f, n) X, X_bᵀ X_b of (B, n, f) X: (B, f, f)."""
    return torch.matmul(x, x.mT) if channels_first else torch.matmul(x.mT, x)


# The backward's S = G + Gᵀ buffer holds at most this many numbers (chunks of samples)
_GRAM_CHUNK = 1 << 24


def _symmetrize_first(n: int, f: int, cpu: bool) -> bool:
    """Whether ∂X = X (G + Gᵀ) (one GEMM, after a pass forming G + Gᵀ) beats X G + X Gᵀ (two GEMMs, the second
    accumulating into the first's result) at n positions and f channels.

    Rule (measured: docs/performance.md): on the CPU from n = min(256, f / 2) positions, on a GPU from
    n = 128: forming G + Gᵀ reads Gᵀ a column at a time, which costs more than a GEMM below those sizes.
    """
    return n >= (min(256, f // 2) if cpu else 128)


class _Gram(torch.autograd.Function):
    """M = XᵀX per sample, with a backward of one GEMM where that pays.

    Plain autograd of ``X.mT @ X`` differentiates each operand apart: ∂X = X G + X Gᵀ, two batched
    GEMMs of 2·B·n·f² FLOPs each, and a pass adding their (B, n, f) results into a third buffer. Here,
    with many positions, ∂X = X (G + Gᵀ): one pass over G (in chunks of samples, so that the extra
    buffer stays under 2²⁴ numbers) and one GEMM; with few positions (where forming G + Gᵀ costs more
    than a GEMM: :func:`_symmetrize_first`), X G, then X Gᵀ accumulated into it (``baddbmm``, no
    third buffer). (For (B, f, n) X: ∂X = (G + Gᵀ) X, or G X + Gᵀ X.) The backward is differentiable
    operations on the saved input X, so higher derivatives are those of the formula; forward mode
    (:class:`_GramForwardMode`): ∂M = ∂Xᵀ X + (∂Xᵀ X)ᵀ.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, channels_first: bool) -> torch.Tensor:
        return _gram_of(x, channels_first)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, channels_first = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        ctx.channels_first, ctx.dtype = channels_first, output.dtype

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        (x,) = ctx.saved_tensors
        # in M's dtype (g's): under autocast the forward's product ran in bfloat16/float16, and so do the
        # backward's, as in autograd of an autocast matmul (autograd casts ∂X back to X's dtype)
        x = x if x.dtype == g.dtype else x.to(g.dtype)
        cf = ctx.channels_first
        batch, f = x.shape[0], g.shape[-1]
        if not _symmetrize_first(x.shape[2 if cf else 1], f, x.is_cpu):
            if cf:
                return torch.baddbmm(torch.matmul(g, x), g.mT, x), None
            return torch.baddbmm(torch.matmul(x, g), x, g.mT), None
        if torch.is_grad_enabled():  # create_graph: one differentiable expression
            sym = g + g.mT
            return (torch.matmul(sym, x) if cf else torch.matmul(x, sym)), None
        per = max(1, _GRAM_CHUNK // max(1, f * f))
        gx = torch.empty_like(x, memory_format=torch.contiguous_format)
        for b0 in range(0, batch, per):
            b1 = min(batch, b0 + per)
            sym = g[b0:b1] + g[b0:b1].mT
            if cf:
                torch.matmul(sym, x[b0:b1], out=gx[b0:b1])
            else:
                torch.matmul(x[b0:b1], sym, out=gx[b0:b1])
        return gx, None


_Gram.forward.__signature__ = inspect.signature(_Gram.forward)  # type: ignore[attr-defined]


class _GramForwardMode(_Gram):
    """:class:`_Gram` with a ``jvp``, outside ``torch.compile`` (dynamo does not trace custom jvps)."""

    @staticmethod
    def jvp(ctx: Any, dx: Any, _dcf: Any) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        dx, x = (t if t.dtype == ctx.dtype else t.to(ctx.dtype) for t in (dx, x))  # (M's dtype, as backward)
        t = torch.matmul(dx, x.mT) if ctx.channels_first else torch.matmul(dx.mT, x)
        return t + t.mT


_GramEager = _ctx_first(_Gram, _GramForwardMode)


def gram(x: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """X_bᵀX_b (B, f, f) of (B, n, f) X, or X_b X_bᵀ of (B, f, n) X; differentiated through :class:`_Gram`
    where X needs derivatives (real floating dtypes), plain products otherwise."""
    if not (x.is_floating_point() and _differentiated(x)):
        return _gram_of(x, channels_first)
    return _apply((_Gram, _GramForwardMode, _GramEager), x, channels_first)


_PLAIN = (torch.Tensor, torch.nn.Parameter)
_KERNEL_DTYPES = (torch.float32, torch.float64)


def _differentiated(*tensors: torch.Tensor) -> bool:
    """Whether autograd may need this call's derivatives: a tensor that requires grad (with grad mode
    on) or an active forward-AD level (dual tensors do not set ``requires_grad``)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return _forward_ad()


def _forward_ad() -> bool:
    """Whether a forward-AD level is active."""
    return getattr(torch.autograd.forward_ad, "_current_level", 0) >= 0


_COMPILING = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling  # < 2.3


def _is_compiling() -> bool:
    return bool(_COMPILING())
