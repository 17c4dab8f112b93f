"""Inputs and plain-autograd references of the derivative tests: the fused attentional Function and the Gram
Function."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import lowrank_pool as lp  # noqa: E402

ATTENTIONS = ["linear", "softmax", "relu"]
LAYOUTS = ["bnf", "nchw"]
# the CPU runs the compiled kernel where it is built; a GPU runs the same autograd Function's torch path
GRAD_DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    ),
]
F_GRAD, K_GRAD, P_GRAD = 4, 3, 2
# Rounding steps that can accumulate when two float64 programs compute the same derivative (compared normwise,
# against the largest entry): a first derivative chains at most two contractions over n ≤ 20 positions, f ≤ 16
# channels and the K·P class factors, both sides rounding; a second derivative chains one more.
FIRST = 2 * 2 * (20 + 16 + K_GRAD * P_GRAD)
SECOND = 2 * 3 * (20 + 16 + K_GRAD * P_GRAD)


def _grad_inputs(layout, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 5, F_GRAD) if layout == "bnf" else (2, F_GRAD, 2, 3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    A = torch.randn(F_GRAD, K_GRAD, P_GRAD, generator=g, dtype=torch.float64)
    B = torch.randn(F_GRAD, P_GRAD, generator=g, dtype=torch.float64)
    return x.to(device), A.to(device), B.to(device)


def _plain(x, A, B, attention):
    """The literal formula with stock torch operations only."""
    xb = x if x.ndim == 3 else x.flatten(2).mT  # (B, n, f)
    n = xb.shape[1]
    z = torch.einsum("bnf,fp->bnp", xb, B)
    u = {"linear": z, "relu": torch.relu(z), "softmax": n * torch.softmax(z, dim=1)}[attention]
    return torch.einsum("bnf,fkp,bnp->bk", xb, A, u) / n


def _grad_forms(attention):
    """name -> f(x, A, B) running through the fused kernel."""
    return {
        "rankp": lambda x, A, B: lp.rankp_pool(x, A, B, attention=attention),
        "rank1": lambda x, A, B: lp.rank1_pool(x, A[:, :, 0], B[:, 0], attention=attention),
    }


def _plain_form(name, attention):
    if name == "rank1":
        return lambda x, A, B: _plain(x, A[:, :, :1], B[:, :1], attention)
    return lambda x, A, B: _plain(x, A, B, attention)


# --------------------------------------------------------------------------- the Gram matrix's Function
# M = XᵀX per sample (gram, bilinear_pool and the dense paths of the factorised heads) is differentiated by
# its own autograd Function: ∂X = X (G + Gᵀ) in one batched GEMM. It must agree with plain autograd of the
# product to every order and in forward mode.


def _second_order_forms():
    """name -> f(x, W) through the package (W: (K, F, F), a dense bilinear classifier)."""
    cp = lambda W: (None, [W[:, 0, :2], W[0, :, :2], W[1, :, :2]])  # noqa: E731 (U, A, C)
    return {
        "gram": lambda x, W: lp.gram(x),
        "bilinear": lambda x, W: lp.bilinear_pool(x, W),
        "bilinear_ssqrt_l2": lambda x, W: lp.bilinear_pool(x, W, normalize="signed_sqrt+l2"),
        "cp_dense": lambda x, W: lp.cp_pool(x, cp(W), path="dense"),
    }


def _plain_gram(x):
    xb = x if x.ndim == 3 else x.flatten(2).mT  # (B, n, f)
    return torch.einsum("bnf,bng->bfg", xb, xb) / xb.shape[1]


def _plain_second_order(name):
    """The same form with the Gram matrix by plain autograd of stock products (the Function switched off)."""
    from lowrank_pool import _torch_kernels as tk

    fn = _second_order_forms()[name]

    def plain(x, W):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tk, "gram", lambda x, channels_first: tk._gram_of(x, channels_first))
            return fn(x, W)

    return plain


class _RecordedProducts:
    """Within the block, each torch.matmul / torch.baddbmm call is recorded as (name, operand dtypes)."""

    def __init__(self):
        self.monkeypatch, self.calls = pytest.MonkeyPatch(), []

    def __enter__(self):
        for name in ("matmul", "baddbmm"):
            fn = getattr(torch, name)

            def recorded(*args, _name=name, _fn=fn, **kwargs):
                self.calls.append((_name, tuple(a.dtype for a in args if isinstance(a, torch.Tensor))))
                return _fn(*args, **kwargs)

            self.monkeypatch.setattr(torch, name, recorded)
        return self.calls

    def __exit__(self, *exc):
        self.monkeypatch.undo()


def _gram_inputs(layout, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 5, F_GRAD) if layout == "bnf" else (3, F_GRAD, 2, 3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) + 0.5  # (positive Gram entries: sqrt is smooth)
    W = torch.randn(K_GRAD, F_GRAD, F_GRAD, generator=g, dtype=torch.float64)
    return x.to(device), W.to(device)


def _node_names(fn, depth=4):
    """The class names of the autograd graph's nodes up to ``depth`` steps from ``fn`` ("…Backward" cut)."""
    names, frontier = set(), [fn]
    for _ in range(depth):
        names |= {type(f).__name__.removesuffix("Backward") for f in frontier}
        frontier = [g for f in frontier for g, _ in f.next_functions if g is not None]
    return names
