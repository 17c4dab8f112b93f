"""Autograd kernel for attention-weighted pooling with a shared bottom-up basis (torch only).

Forward (the same three steps as :func:`lowrank_pool.rankp_pool` with a shared B, on the
(B, f, n) view of X; for (B, n, f) input that view is a transpose, not a copy):

    Z = Bᵀ X      (B, P, n)   bottom-up maps
    U = σ(Z)      (B, P, n)   over positions: identity / ReLU / n · spatial softmax
    V = U Xᵀ      (B, P, f)   attention-weighted pooling
    s = vec(V) A  (B, K)      with A (P·f, K)   (the caller divides by n)

Backward, with g = ∂L/∂s:

    ∂V = g Aᵀ,  ∂A = vec(V)ᵀ g,  ∂U = ∂V X,  ∂Z = σ'(Z)ᵀ ∂U,  ∂B = Σ_b X ∂Zᵀ,
    ∂X = [∂Vᵀ | B] · [U ; ∂Z]     (one batched GEMM of width 2P)

Only U and V (B·P·(n + f) numbers) are saved besides the inputs, and ∂X is written once
in X's own layout: plain autograd of the same graph accumulates ∂X from two products,
and that of the one-GEMM form saves the (B, n, K+1) projection.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as xp
import torch

from .attention import activate

__all__ = ["shared_bottom_up_scores"]


class _SharedBottomUp(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: torch.Tensor, bm: torch.Tensor, a_pf: torch.Tensor, channels_first: bool, attention: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xt = x if channels_first else x.mT  # (B, f, n)
        u = activate(xp, torch.matmul(bm.mT, xt), attention, axis=-1)  # (B, P, n)
        v = torch.matmul(u, xt.mT)  # (B, P, f)
        s = torch.matmul(v.flatten(1), a_pf)  # (B, K)
        return s, u, v

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        x, bm, a_pf, channels_first, attention = inputs
        _, u, v = output
        ctx.save_for_backward(x, bm, a_pf, u, v)
        ctx.channels_first, ctx.attention = channels_first, attention
        ctx.mark_non_differentiable(u, v)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, _gu: Any, _gv: Any) -> tuple[Any, ...]:
        x, bm, a_pf, u, v = ctx.saved_tensors
        xt = x if ctx.channels_first else x.mT
        batch, p, f = v.shape
        gx = gbm = ga = None
        gv = torch.matmul(g, a_pf.mT).view(batch, p, f)
        if ctx.needs_input_grad[2]:
            ga = torch.matmul(v.flatten(1).mT, g)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gu = torch.matmul(gv, xt)  # (B, P, n)
            if ctx.attention == "linear":
                gz = gu
            elif ctx.attention == "relu":
                gz = gu * (u > 0)
            else:  # u = n · softmax(z): ∂z = u ⊙ (∂u − Σ_i ∂u_i u_i / n)
                gz = u * (gu - (gu * u).sum(-1, keepdim=True) / u.shape[-1])
            if ctx.needs_input_grad[1]:
                gbm = torch.matmul(xt, gz.mT).sum(0)
            if ctx.needs_input_grad[0]:
                left = torch.cat([gv.mT, bm.expand(batch, f, p)], dim=2)  # (B, f, 2P)
                right = torch.cat([u, gz], dim=1)  # (B, 2P, n)
                gx = torch.matmul(left, right) if ctx.channels_first else torch.matmul(right.mT, left.mT)
        return gx, gbm, ga, None, None


def shared_bottom_up_scores(
    x: torch.Tensor, bm: torch.Tensor, a_pf: torch.Tensor, *, channels_first: bool, attention: str
) -> torch.Tensor:
    """Scores (B, K) of :class:`_SharedBottomUp`; x is (B, f, n) if ``channels_first`` else (B, n, f)."""
    s, _, _ = _SharedBottomUp.apply(x, bm, a_pf, channels_first, attention)
    return s
