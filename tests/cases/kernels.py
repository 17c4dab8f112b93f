"""The scores and gradients of rankp_pool that the kernel tests compare path against path (the compiled CPU
kernel in test_native, the Triton kernels in triton_cases) with the torch path."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402


def leaf(t, negated=False):
    """A fresh leaf with t's values; ``negated``: stored negated behind torch's negative bit (a lazily negated view,
    as ``x.conj().imag`` or a parametrization gives)."""
    t = t.detach().clone()
    return (torch._neg_view(t.neg()) if negated else t).requires_grad_()


def scores_and_gradients(X, A, B, attention, channel_axis, negated=()):
    X, A, B = (leaf(t, name in negated) for name, t in zip("XAB", (X, A, B), strict=True))
    s = lp.rankp_pool(X, A, B, attention=attention, channel_axis=channel_axis)
    weights = torch.linspace(-1, 1, s.numel(), dtype=s.dtype, device=s.device).reshape(s.shape)
    grads = torch.autograd.grad((s * weights).sum(), (X, A, B))
    return s.detach(), grads
