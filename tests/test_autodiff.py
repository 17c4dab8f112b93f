"""Higher-order and forward-mode derivatives through the fused attentional kernel.

The kernel (a custom autograd Function) must agree with plain autograd of the literal formula
s_k = (1/n) Σ_p (X a_kp)ᵀ σ(X b_p) for second derivatives (gradient penalties, Hessian-vector
products) and in forward mode (jvp, jacfwd, hessian), on every attention and layout.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import AttentionalPool  # noqa: E402

ATTENTIONS = ["linear", "softmax", "relu"]
LAYOUTS = ["bnf", "nchw"]
# the CPU runs the compiled kernel where it is built; a GPU runs the same autograd Function's torch path
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    ),
]
F, K, P = 4, 3, 2


def _inputs(layout, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 5, F) if layout == "bnf" else (2, F, 2, 3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    A = torch.randn(F, K, P, generator=g, dtype=torch.float64)
    B = torch.randn(F, P, generator=g, dtype=torch.float64)
    return x.to(device), A.to(device), B.to(device)


def _plain(x, A, B, attention):
    """The literal formula with stock torch operations only."""
    xb = x if x.ndim == 3 else x.flatten(2).mT  # (B, n, f)
    n = xb.shape[1]
    z = torch.einsum("bnf,fp->bnp", xb, B)
    u = {"linear": z, "relu": torch.relu(z), "softmax": n * torch.softmax(z, dim=1)}[attention]
    return torch.einsum("bnf,fkp,bnp->bk", xb, A, u) / n


def _forms(attention):
    """name -> f(x, A, B) running through the fused kernel."""
    return {
        "rankp": lambda x, A, B: lp.rankp_pool(x, A, B, attention=attention),
        "rank1": lambda x, A, B: lp.rank1_pool(x, A[:, :, 0], B[:, 0], attention=attention),
    }


def _plain_form(name, attention):
    if name == "rank1":
        return lambda x, A, B: _plain(x, A[:, :, :1], B[:, :1], attention)
    return lambda x, A, B: _plain(x, A, B, attention)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device", DEVICES)
def test_gradgradcheck(attention, layout, device):
    x, A, B = (t.requires_grad_() for t in _inputs(layout, device=device))
    for name, fn in _forms(attention).items():
        assert torch.autograd.gradgradcheck(fn, (x, A, B)), name


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device", DEVICES)
def test_gradient_penalty_matches_plain_autograd(attention, layout, device):
    """g = ∇_X Σ s², then ∇ of Σ g² with respect to X, A and B, as a gradient penalty computes it."""
    for name, fn in _forms(attention).items():
        ref_fn = _plain_form(name, attention)
        results = []
        for f in (fn, ref_fn):
            x, A, B = (t.requires_grad_() for t in _inputs(layout, device=device))
            s = f(x, A, B)
            (g,) = torch.autograd.grad(s.square().sum(), x, create_graph=True)
            results.append(torch.autograd.grad(g.square().sum(), (x, A, B)))
        for got, ref in zip(*results, strict=True):
            assert torch.allclose(got, ref, rtol=1e-9, atol=1e-11), (name, (got - ref).abs().max())


# torch's forward_ad module scripts a helper with torch.jit.script, which torch 2.13 deprecates
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device", DEVICES)
def test_forward_mode_matches_plain(attention, layout, device):
    x, A, B = _inputs(layout, device=device)
    tangents = _inputs(layout, seed=1, device=device)
    for name, fn in _forms(attention).items():
        ref_fn = _plain_form(name, attention)
        # the dual-tensor API, with inputs that require grad (the fused kernel runs, through its jvp)
        fwd = torch.autograd.forward_ad
        with fwd.dual_level():
            duals = [fwd.make_dual(t.clone().requires_grad_(), d) for t, d in zip((x, A, B), tangents, strict=True)]
            got = fwd.unpack_dual(fn(*duals)).tangent
        _, ref = torch.func.jvp(ref_fn, (x, A, B), tangents)
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12), name
        # torch.func.jacfwd and hessian (forward over reverse)
        xr = x.clone().requires_grad_()
        jac = torch.func.jacfwd(lambda x, fn=fn: fn(x, A, B))(xr)
        ref_jac = torch.func.jacfwd(lambda x, f=ref_fn: f(x, A, B))(x)
        assert torch.allclose(jac, ref_jac, rtol=1e-10, atol=1e-12), name
        hess = torch.func.hessian(lambda x, fn=fn: fn(x, A, B).sum())(xr)
        ref_hess = torch.func.hessian(lambda x, f=ref_fn: f(x, A, B).sum())(x)
        assert torch.allclose(hess, ref_hess, rtol=1e-9, atol=1e-11), name


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_layer_hessian_vector_product(attention, device):
    """A Hessian-vector product through AttentionalPool's parameters equals that of the plain formula."""
    layer = AttentionalPool(F, K, P, attention=attention, bias=False, dtype=torch.float64).to(device)
    x, _, _ = _inputs("nchw", device=device)
    params = (layer.A, layer.B)
    vec = tuple(torch.randn_like(p) for p in params)
    s = layer(x)
    grads = torch.autograd.grad(s.square().sum(), params, create_graph=True)
    hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vec, strict=True)), params)
    A, B = (p.detach().clone().requires_grad_() for p in params)
    ref_s = _plain(x, A, B, attention)
    ref_grads = torch.autograd.grad(ref_s.square().sum(), (A, B), create_graph=True)
    ref_hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(ref_grads, vec, strict=True)), (A, B))
    for got, ref in zip(hvp, ref_hvp, strict=True):
        assert torch.allclose(got, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("path", ["torch", "native"])
def test_first_order_backward_does_not_recompute(path, monkeypatch):
    """A plain backward (no create_graph) keeps the single-pass kernel: X is read by two GEMMs, not four
    (torch path), or by the compiled kernel's passes, which also take the (small) products with A (native)."""
    from lowrank_pool import _native

    if path == "torch":
        monkeypatch.setattr(_native, "kernel", lambda: None)
    else:
        _native.build(verbose=False)
    x, A, B = (t.requires_grad_() for t in _inputs("bnf"))
    calls = []
    orig = torch.matmul

    def counting(a, b, *args, **kwargs):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return orig(a, b, *args, **kwargs)

    s = lp.rankp_pool(x, A, B)
    torch.matmul = counting
    try:
        s.sum().backward()
    finally:
        torch.matmul = orig
    # ∂V, ∂A, ∂U, ∂B, ∂X: five products, none of them the forward's Bᵀ X again; natively none in torch
    assert len(calls) == (5 if path == "torch" else 0), calls
