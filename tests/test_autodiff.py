"""Higher-order and forward-mode derivatives through the fused attentional kernel and the Gram matrix's
autograd Function (second-order pooling).

The kernel (a custom autograd Function) must agree with plain autograd of the literal formula
s_k = (1/n) Σ_p (X a_kp)ᵀ σ(X b_p) for second derivatives (gradient penalties, Hessian-vector
products) and in forward mode (jvp, jacfwd, hessian), on every attention and layout.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import AttentionalPool  # noqa: E402
from lowrank_pool.testing import assert_close  # noqa: E402

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
# Rounding steps that can accumulate when two float64 programs compute the same derivative (compared normwise,
# against the largest entry): a first derivative chains at most two contractions over n ≤ 20 positions, f ≤ 16
# channels and the K·P class factors, both sides rounding; a second derivative chains one more.
FIRST = 2 * 2 * (20 + 16 + K * P)
SECOND = 2 * 3 * (20 + 16 + K * P)


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
            assert_close(got, ref, terms=SECOND, scale="max", label=name)


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
        assert_close(got, ref, terms=FIRST, scale="max", label=name)
        # torch.func.jacfwd and hessian (forward over reverse)
        xr = x.clone().requires_grad_()
        jac = torch.func.jacfwd(lambda x, fn=fn: fn(x, A, B))(xr)
        ref_jac = torch.func.jacfwd(lambda x, f=ref_fn: f(x, A, B))(x)
        assert_close(jac, ref_jac, terms=FIRST, scale="max", label=name)
        hess = torch.func.hessian(lambda x, fn=fn: fn(x, A, B).sum())(xr)
        ref_hess = torch.func.hessian(lambda x, f=ref_fn: f(x, A, B).sum())(x)
        assert_close(hess, ref_hess, terms=SECOND, scale="max", label=name)


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
        assert_close(got, ref, terms=SECOND, scale="max")


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
    shape = (3, 5, F) if layout == "bnf" else (3, F, 2, 3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) + 0.5  # (positive Gram entries: sqrt is smooth)
    W = torch.randn(K, F, F, generator=g, dtype=torch.float64)
    return x.to(device), W.to(device)


@pytest.fixture(params=[True, False], ids=["X(G+Gt)", "XG+XGt"])
def gram_calls(request, monkeypatch):
    """Count the Function's backward and jvp calls, to prove the forms run through it; each test runs with
    both forms of the backward (G + Gᵀ formed first, or two GEMMs accumulated)."""
    from lowrank_pool import _torch_kernels as tk

    monkeypatch.setattr(tk, "_symmetrize_first", lambda n, f, cpu: request.param)

    calls = {"backward": 0, "jvp": 0}
    backward, jvp = tk._Gram.backward, tk._GramForwardMode.jvp

    def counted_backward(ctx, g):
        calls["backward"] += 1
        return backward(ctx, g)

    def counted_jvp(ctx, dx, dcf):
        calls["jvp"] += 1
        return jvp(ctx, dx, dcf)

    monkeypatch.setattr(tk._Gram, "backward", staticmethod(counted_backward))
    monkeypatch.setattr(tk._GramForwardMode, "jvp", staticmethod(counted_jvp))
    return calls


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device", DEVICES)
def test_gram_function_gradients_to_second_order(layout, device, gram_calls):
    """First derivatives, gradgradcheck and a gradient penalty of every second-order form equal plain autograd."""
    x, W = _gram_inputs(layout, device=device)
    for name, fn in _second_order_forms().items():
        ref_fn = _plain_second_order(name)
        weights = torch.linspace(-1, 1, fn(x, W).numel(), dtype=x.dtype, device=device).reshape(fn(x, W).shape)
        xr, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
        before = gram_calls["backward"]
        (g,) = torch.autograd.grad((fn(xr, W) * weights).sum(), xr, create_graph=True)
        (ref,) = torch.autograd.grad((ref_fn(xp, W) * weights).sum(), xp, create_graph=True)
        assert gram_calls["backward"] == before + 1, name
        assert_close(g, ref, terms=FIRST, scale="max", label=name)
        (pen,) = torch.autograd.grad(g.square().sum(), xr)
        (ref_pen,) = torch.autograd.grad(ref.square().sum(), xp)
        assert_close(pen, ref_pen, terms=SECOND, scale="max", label=name)
        assert torch.autograd.gradgradcheck(lambda x, fn=fn: fn(x, W), (x.clone().requires_grad_(),)), name


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # (as above)
def test_gram_function_forward_mode(layout, device, gram_calls):
    """jvp, jacfwd and hessian through the Function's jvp equal those of plain autograd."""
    x, W = _gram_inputs(layout, device=device)
    tangent, _ = _gram_inputs(layout, seed=1, device=device)
    for name, fn in _second_order_forms().items():
        ref_fn = _plain_second_order(name)
        before = gram_calls["jvp"]
        _, got = torch.func.jvp(lambda x, fn=fn: fn(x, W), (x,), (tangent,))
        assert gram_calls["jvp"] > before, name
        _, ref = torch.func.jvp(lambda x, f=ref_fn: f(x, W), (x,), (tangent,))
        assert_close(got, ref, terms=FIRST, scale="max", label=name)
        hess = torch.func.hessian(lambda x, fn=fn: fn(x, W).sum())(x.clone().requires_grad_())
        ref_hess = torch.func.hessian(lambda x, f=ref_fn: f(x, W).sum())(x)
        assert_close(hess, ref_hess, terms=SECOND, scale="max", label=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gram_function_per_sample_gradients_by_vmap(layout, gram_calls):
    """torch.func.vmap of torch.func.grad (per-sample gradients) through the Function."""
    x, W = _gram_inputs(layout)
    fn = lambda xi: lp.bilinear_pool(xi[None], W, normalize=None).square().sum()  # noqa: E731
    ref_fn = lambda xi: torch.einsum("bfg,kfg->bk", _plain_gram(xi[None]), W).square().sum()  # noqa: E731
    got = torch.func.vmap(torch.func.grad(fn))(x)
    ref = torch.func.vmap(torch.func.grad(ref_fn))(x)
    assert_close(got, ref, terms=SECOND, scale="max")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gram_function_backward_products(layout, monkeypatch):
    """Many positions: ∂X = X (G + Gᵀ), one batched GEMM (plain autograd: two, and a pass adding them), one per
    chunk of samples where the batch is cut to bound the G + Gᵀ buffer. Few positions: X G, then X Gᵀ added into
    it by baddbmm. The same ∂X every way."""
    from lowrank_pool import _torch_kernels as tk

    assert tk._symmetrize_first(4096, 128, True) and tk._symmetrize_first(300, 2048, True)
    assert not tk._symmetrize_first(49, 2048, True) and not tk._symmetrize_first(3, 16, True)
    assert tk._symmetrize_first(196, 2048, False) and not tk._symmetrize_first(49, 512, False)  # (a GPU's rule)
    for n, f, chunk, products in (
        (12, 8, 1 << 24, ["matmul"]),  # the whole batch at once
        (12, 8, 2 * 8 * 8, ["matmul", "matmul"]),  # chunks of 2 samples (3 in all)
        (3, 16, 1 << 24, ["matmul", "baddbmm"]),  # few positions
    ):
        g = torch.Generator().manual_seed(n)
        shape = (3, n, f) if layout == "bnf" else (3, f, n, 1)
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        weights = torch.randn(3, f, f, generator=g, dtype=torch.float64)
        xp = x.clone().requires_grad_()
        (want,) = torch.autograd.grad((_plain_gram(xp) * weights).sum(), xp)
        monkeypatch.setattr(tk, "_GRAM_CHUNK", chunk)
        xr = x.clone().requires_grad_()
        m = lp.gram(xr)
        with _RecordedProducts() as calls:
            (got,) = torch.autograd.grad((m * weights).sum(), xr)
        assert [name for name, _ in calls] == products, (n, f, calls)
        assert_close(got, want, terms=FIRST, scale="max")


def test_gram_function_under_autocast_follows_autograd(gram_calls):
    """Under autocast M = XᵀX is a bfloat16 product; the backward's products run in bfloat16 too (as autograd's
    of an autocast matmul), ∂X comes back in X's dtype and close to plain autograd's (both backward forms: the
    fixture's parameter)."""

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 20, 8, generator=g)
    w = torch.randn(3, 8, 8, generator=g)

    def grad_of(fn):
        xr = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m = fn(xr)
        assert m.dtype == torch.bfloat16
        return torch.autograd.grad((m.float() * w).sum(), xr)[0]

    want = grad_of(lambda x: torch.matmul(x.mT, x) / x.shape[1])
    xr = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = lp.gram(xr)
    with _RecordedProducts() as calls:
        (got,) = torch.autograd.grad((m.float() * w).sum(), xr)
    assert calls and all(set(dtypes) == {torch.bfloat16} for _, dtypes in calls), calls
    assert got.dtype == torch.float32
    assert_close(got, want, terms=32, scale="max", dtype=torch.bfloat16)


def _node_names(fn, depth=4):
    """The class names of the autograd graph's nodes up to ``depth`` steps from ``fn`` ("…Backward" cut)."""
    names, frontier = set(), [fn]
    for _ in range(depth):
        names |= {type(f).__name__.removesuffix("Backward") for f in frontier}
        frontier = [g for f in frontier for g, _ in f.next_functions if g is not None]
    return names


@pytest.mark.parametrize("name", ["rank1", "rankp", "gram"])
def test_eager_calls_skip_the_signature_binding_that_transforms_need(name, monkeypatch):
    """Outside torch.func's transforms the Functions (attentional, Gram) run in their ctx-first form: no
    ``Signature.bind`` per call (a quarter of the Python time of a forward on the torch path, which every GPU
    call takes); inside them the setup_context form, whose numbers (and per-sample gradients under vmap) are
    the same."""
    import inspect

    x, A, B = (t.requires_grad_() for t in _inputs("nchw"))
    if name == "gram":
        fn, node = (lambda x, A, B: lp.gram(x)), "_GramEager"
    else:
        fn, node = _forms("softmax")[name], "_SharedBottomUpEager"
    binds = []
    orig = inspect.Signature.bind
    monkeypatch.setattr(inspect.Signature, "bind", lambda self, *a, **k: binds.append(1) or orig(self, *a, **k))
    s = fn(x, A, B)
    (gx,) = torch.autograd.grad(s.square().sum(), x)
    assert binds == [] and node in _node_names(s.grad_fn)
    per_sample = torch.func.vmap(torch.func.grad(lambda xi: fn(xi[None], A, B).square().sum()))(x.detach())
    assert binds, "torch.func's transforms run the setup_context form"
    assert_close(per_sample, gx, terms=FIRST, scale="max")
