"""The GPU kernel of the shared-bottom-up attentional path, in Triton: the counterpart of the compiled CPU kernel.

Forward, one launch: for every sample the bottom-up maps Z = X B (n × P), σ over the positions (linear, ReLU,
or the softmax scaled to average 1), and the attention-weighted pooling V = σ(Z)ᵀ X (P × f), X read in its own
layout (any strides: (B, n, f) or channels-first (B, f, n)); the scores s = vec(V) A / n are then one GEMM.
Backward, two launches: dZ = (∂V) X ᵀ per position (the activation's derivative applied after it; softmax's
needs a sum over the positions, a (B, P) reduction in torch), then ∂X = σ(Z) ᵀ∂V + ∂Z Bᵀ written once, in X's
layout; ∂B = Σ_b Xᵀ ∂Z and ∂A = vec(V)ᵀ g are GEMMs. Every product accumulates in float32 (float16 and bfloat16
inputs included).

``scores_forward`` / ``scores_backward`` have the signatures of the CPU kernel's, so the autograd Function of
:mod:`lowrank_pool._torch_kernels` calls either through the same seam (chosen by the tensors' device). The
kernels run on CUDA tensors, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before
triton is imported): that is how the tests check them on machines without a GPU (docs/kernel.md).
"""

from __future__ import annotations

import os

import torch

__all__ = ["available", "interpreting", "scores_backward", "scores_forward"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """Whether Triton runs its interpreter (kernels on CPU tensors): ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


try:  # (imported only by the torch kernels' seam, on a GPU's first call or in the tests)
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a triton that fails to initialise on this machine
    triton = None


def available(x: torch.Tensor) -> bool:
    """Whether the Triton kernels serve tensors like ``x``: CUDA (or CPU under the interpreter), a float32/float16/
    bfloat16 dtype, triton importable."""
    if x.dtype not in _DTYPES or not (x.is_cuda or (x.is_cpu and interpreting())):
        return False
    return triton is not None


if triton is not None:

    @triton.jit
    def _bottom_up(
        x_b, b_ptr, offs_n, offs_p, n, f, p, sxn, sxf, sbf, sbp,
        BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """Z (BLOCK_N, BLOCK_P) = X B for the positions ``offs_n`` of one sample, over all f channels."""
        z = tl.zeros([BLOCK_N, BLOCK_P], tl.float32)
        for f0 in range(0, f, BLOCK_F):
            offs_f = f0 + tl.arange(0, BLOCK_F)
            mask_x = (offs_n[:, None] < n) & (offs_f[None, :] < f)
            xt = tl.load(x_b + offs_n[:, None] * sxn + offs_f[None, :] * sxf, mask=mask_x, other=0.0)
            mask_b = (offs_f[:, None] < f) & (offs_p[None, :] < p)
            bt = tl.load(b_ptr + offs_f[:, None] * sbf + offs_p[None, :] * sbp, mask=mask_b, other=0.0)
            z += tl.sum(xt.to(tl.float32)[:, :, None] * bt.to(tl.float32)[None, :, :], axis=1)
        return z

    @triton.jit
    def pool_forward(
        x_ptr, b_ptr, u_ptr, v_ptr,
        n, f, p,
        sxb, sxn, sxf, sbf, sbp,
        ATTENTION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """Program (b, f-chunk): V[b, :, chunk] = Σ_i σ(z_i) x_i[chunk], z_i = Bᵀ x_i over all f; chunk 0 writes U."""
        b = tl.program_id(0)
        fc = tl.program_id(1)
        offs_p = tl.arange(0, BLOCK_P)
        offs_c = fc * BLOCK_F + tl.arange(0, BLOCK_F)
        x_b = x_ptr + b * sxb
        nf = n.to(tl.float32)
        # softmax: the maximum and the normaliser of every map over all positions first (a pass over X)
        m = tl.full([BLOCK_P], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_P], tl.float32)
        if ATTENTION == 2:
            for start in range(0, n, BLOCK_N):
                offs_n = start + tl.arange(0, BLOCK_N)
                z = _bottom_up(x_b, b_ptr, offs_n, offs_p, n, f, p, sxn, sxf, sbf, sbp, BLOCK_N, BLOCK_F, BLOCK_P)
                z = tl.where(offs_n[:, None] < n, z, float("-inf"))
                new = tl.maximum(m, tl.max(z, axis=0))
                total = total * tl.exp(m - new) + tl.sum(tl.exp(z - new[None, :]), axis=0)
                m = new
        acc = tl.zeros([BLOCK_P, BLOCK_F], tl.float32)
        for start in range(0, n, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            z = _bottom_up(x_b, b_ptr, offs_n, offs_p, n, f, p, sxn, sxf, sbf, sbp, BLOCK_N, BLOCK_F, BLOCK_P)
            if ATTENTION == 1:
                u = tl.maximum(z, 0.0)
            elif ATTENTION == 2:
                u = tl.exp(z - m[None, :]) * (nf / total[None, :])
            else:
                u = z
            u = tl.where((offs_n[:, None] < n) & (offs_p[None, :] < p), u, 0.0)
            if fc == 0:
                tl.store(u_ptr + b * p * n + offs_p[None, :] * n + offs_n[:, None], u,
                         mask=(offs_n[:, None] < n) & (offs_p[None, :] < p))  # fmt: skip
            xc = tl.load(x_b + offs_n[:, None] * sxn + offs_c[None, :] * sxf,
                         mask=(offs_n[:, None] < n) & (offs_c[None, :] < f), other=0.0).to(tl.float32)  # fmt: skip
            acc += tl.sum(u[:, :, None] * xc[:, None, :], axis=0)  # (P, chunk)
        tl.store(v_ptr + b * p * f + offs_p[:, None] * f + offs_c[None, :], acc,
                 mask=(offs_p[:, None] < p) & (offs_c[None, :] < f))  # fmt: skip

    @triton.jit
    def pool_backward_dz(
        x_ptr, gv_ptr, dz_ptr,
        n, f, p,
        sxb, sxn, sxf,
        BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """Program (b, n-block): dZ[b, :, block] = ∂V[b] x_iᵀ for the block's positions."""
        b = tl.program_id(0)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_p = tl.arange(0, BLOCK_P)
        dz = tl.zeros([BLOCK_N, BLOCK_P], tl.float32)
        for f0 in range(0, f, BLOCK_F):
            offs_f = f0 + tl.arange(0, BLOCK_F)
            xt = tl.load(x_ptr + b * sxb + offs_n[:, None] * sxn + offs_f[None, :] * sxf,
                         mask=(offs_n[:, None] < n) & (offs_f[None, :] < f), other=0.0).to(tl.float32)  # fmt: skip
            gv = tl.load(gv_ptr + b * p * f + offs_p[None, :] * f + offs_f[:, None],
                         mask=(offs_f[:, None] < f) & (offs_p[None, :] < p), other=0.0)  # fmt: skip
            dz += tl.sum(xt[:, :, None] * gv[None, :, :], axis=1)
        tl.store(dz_ptr + b * p * n + offs_p[None, :] * n + offs_n[:, None], dz,
                 mask=(offs_n[:, None] < n) & (offs_p[None, :] < p))  # fmt: skip

    @triton.jit
    def pool_backward_dx(
        u_ptr, gv_ptr, gz_ptr, b_ptr, gx_ptr,
        n, f, p,
        sgb, sgn, sgf, sbf, sbp,
        BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """Program (b, n-block, f-block): ∂X = σ(Z)ᵀ ∂V + ∂Z Bᵀ, stored once with ∂X's strides (X's layout)."""
        b = tl.program_id(0)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_f = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)
        offs_p = tl.arange(0, BLOCK_P)
        mask_np = (offs_n[:, None] < n) & (offs_p[None, :] < p)
        mask_pf = (offs_p[:, None] < p) & (offs_f[None, :] < f)
        u = tl.load(u_ptr + b * p * n + offs_p[None, :] * n + offs_n[:, None], mask=mask_np, other=0.0)
        gz = tl.load(gz_ptr + b * p * n + offs_p[None, :] * n + offs_n[:, None], mask=mask_np, other=0.0)
        gv = tl.load(gv_ptr + b * p * f + offs_p[:, None] * f + offs_f[None, :], mask=mask_pf, other=0.0)
        bt = tl.load(b_ptr + offs_f[None, :] * sbf + offs_p[:, None] * sbp, mask=mask_pf, other=0.0).to(tl.float32)
        gx = tl.sum(u[:, :, None] * gv[None, :, :], axis=1) + tl.sum(gz[:, :, None] * bt[None, :, :], axis=1)
        tl.store(gx_ptr + b * sgb + offs_n[:, None] * sgn + offs_f[None, :] * sgf, gx,
                 mask=(offs_n[:, None] < n) & (offs_f[None, :] < f))  # fmt: skip

    _KERNELS = {"forward": pool_forward, "dz": pool_backward_dz, "dx": pool_backward_dx}
else:
    _KERNELS = {}


def _blocks(p: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_F, BLOCK_P): P padded to a power of two; the tiles shrink as P grows (registers)."""
    import triton

    block_p = max(1, triton.next_power_of_2(p))
    return (32, 64, block_p) if block_p <= 4 else (16, 32, block_p)


def _xt_strides(x: torch.Tensor, channels_first: bool) -> tuple[int, int, int]:
    """(batch, position, channel) strides of X in either layout."""
    return (x.stride(0), x.stride(2), x.stride(1)) if channels_first else (x.stride(0), x.stride(1), x.stride(2))


def scores_forward(
    x: torch.Tensor, bm: torch.Tensor, a3: torch.Tensor, channels_first: bool, attention: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(s (B, K), U = σ(Z) (B, P, n), V (B, P, f), None): the CPU kernel's ``scores_forward`` (A as (P, f, K);
    ``attention`` in the CPU kernel's codes: 0 linear, 1 relu, 2 softmax)."""
    kernels = _KERNELS
    batch = x.shape[0]
    f, n = (x.shape[1], x.shape[2]) if channels_first else (x.shape[2], x.shape[1])
    p = bm.shape[1]
    u = torch.empty(batch, p, n, dtype=torch.float32, device=x.device)
    v = torch.empty(batch, p, f, dtype=torch.float32, device=x.device)
    block_n, block_f, block_p = _blocks(p)
    if batch and n and f:
        grid = (batch, -(-f // block_f))
        kernels["forward"][grid](
            x, bm, u, v, n, f, p, *_xt_strides(x, channels_first), bm.stride(0), bm.stride(1),
            ATTENTION=attention, BLOCK_N=block_n, BLOCK_F=block_f, BLOCK_P=block_p,
        )  # fmt: skip
    else:
        u.zero_(), v.zero_()
    a2 = a3.reshape(p * f, a3.shape[-1])
    s = torch.matmul(v.flatten(1), a2.to(torch.float32)) * scale
    dtype = torch.promote_types(x.dtype, bm.dtype)
    return s.to(dtype), u.to(dtype), v.to(dtype), None


def scores_backward(
    x: torch.Tensor,
    bm: torch.Tensor,
    a3: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    channels_first: bool,
    attention: int,
    scale: float,
    need_x: bool,
    need_b: bool,
    need_a: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(∂X, ∂B, ∂A): the CPU kernel's ``scores_backward``; ∂X in X's layout (its strides), the others GEMMs."""
    kernels = _KERNELS
    batch, p, f = v.shape
    n = u.shape[2]
    g = g.to(torch.float32) * scale
    a2 = a3.reshape(p * f, a3.shape[-1]).to(torch.float32)
    ga = torch.matmul(v.flatten(1).to(torch.float32).mT, g).view(a3.shape).to(a3.dtype) if need_a else None
    if not (need_x or need_b):
        return None, None, ga
    gv = torch.matmul(g, a2.mT).view(batch, p, f).contiguous()
    uf = u.to(torch.float32).contiguous()
    block_n, block_f, block_p = _blocks(p)
    dz = torch.empty(batch, p, n, dtype=torch.float32, device=x.device)
    if batch and n and f:
        kernels["dz"][(batch, -(-n // block_n))](
            x, gv, dz, n, f, p, *_xt_strides(x, channels_first),
            BLOCK_N=block_n, BLOCK_F=block_f, BLOCK_P=block_p,
        )  # fmt: skip
    else:
        dz.zero_()
    if attention == 1:
        gz = dz * (uf > 0)
    elif attention == 2:  # u = n·softmax(z): ∂z = u ⊙ (∂u − Σ_i ∂u_i u_i / n)
        gz = uf * (dz - (dz * uf).sum(-1, keepdim=True) / max(n, 1))
    else:
        gz = dz
    gbm = None
    if need_b:
        xt = (x if channels_first else x.mT).to(torch.float32)  # (B, f, n)
        gbm = torch.matmul(xt, gz.mT).sum(0).to(bm.dtype)
    gx = None
    if need_x:
        gx = torch.empty_like(x, dtype=torch.float32)  # (the same layout as X: channels-last stays so)
        if batch and n and f:
            kernels["dx"][(batch, -(-n // block_n), -(-f // block_f))](
                uf, gv, gz.contiguous(), bm, gx, n, f, p, *_xt_strides(gx, channels_first), bm.stride(0), bm.stride(1),
                BLOCK_N=block_n, BLOCK_F=block_f, BLOCK_P=block_p,
            )  # fmt: skip
        else:
            gx.zero_()
        gx = gx.to(x.dtype)
    return gx, gbm, ga
