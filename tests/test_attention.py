"""Tests of lowrank_pool.attention's public names, one class each: rank1_pool, rankp_pool, attention_maps
(and AttentionMaps), attention_weights: identities, layouts, dtypes, errors, gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

torch = pytest.importorskip("torch")
tl = pytest.importorskip("tensorly")
from cases.autodiff import FIRST, _grad_forms, _grad_inputs, _node_names  # noqa: E402
from cases.errors import ERRORS  # noqa: E402
from cases.identities import (  # noqa: E402
    _data,
)
from cases.nn import F_IN, K, _close, gen  # noqa: E402
from cases.official_code import _softmax, official_scores  # noqa: E402
from contracts import (  # noqa: E402
    AttentionDerivativesContract,
    IdentityContract,
    NamedErrorsContract,
    PoolingFunctionContract,
)
from helpers import (  # noqa: E402
    absolute,
    oracle_rank1_trace,
    oracle_rankp,
    sizes,
)

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import (  # noqa: E402
    AttentionalPool,
)
from lowrank_pool.testing import (  # noqa: E402
    assert_close,
)


class TestRankpPool(PoolingFunctionContract, AttentionDerivativesContract, NamedErrorsContract, IdentityContract):
    """lowrank_pool.rankp_pool: rank-P attention, shared or per-class bottom-up, and its fused kernel Function."""

    form = "rankp"

    bad_calls = tuple(ERRORS["rankp_pool"])

    variants = (
        "rankp_shared",
        "rankp_shared_softmax",
        "rankp_perclass",
    )

    permutation_cases = ("rankp",)
    homogeneous_cases = ("rankp",)

    @pytest.mark.parametrize("path", ["torch", "native"])
    def test_first_order_backward_does_not_recompute(self, path, monkeypatch):
        """A plain backward (no create_graph) keeps the single-pass kernel: X is read by two GEMMs, not four
        (torch path), or by the compiled kernel's passes, which also take the (small) products with A (native)."""
        from lowrank_pool import _native

        if path == "torch":
            monkeypatch.setattr(_native, "kernel", lambda: None)
        else:
            _native.build(verbose=False)
        x, A, B = (t.requires_grad_() for t in _grad_inputs("bnf"))
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

    @pytest.mark.parametrize("name", ["rank1", "rankp", "gram"])
    def test_eager_calls_skip_the_signature_binding_that_transforms_need(self, name, monkeypatch):
        """Outside torch.func's transforms the Functions (attentional, Gram) run in their ctx-first form: no
        ``Signature.bind`` per call (a quarter of the Python time of a forward on the torch path, which every GPU
        call takes); inside them the setup_context form, whose numbers (and per-sample gradients under vmap) are
        the same."""
        import inspect

        x, A, B = (t.requires_grad_() for t in _grad_inputs("nchw"))
        if name == "gram":
            fn, node = (lambda x, A, B: lp.gram(x)), "_GramEager"
        else:
            fn, node = _grad_forms("softmax")[name], "_SharedBottomUpEager"
        binds = []
        orig = inspect.Signature.bind
        monkeypatch.setattr(inspect.Signature, "bind", lambda self, *a, **k: binds.append(1) or orig(self, *a, **k))
        s = fn(x, A, B)
        (gx,) = torch.autograd.grad(s.square().sum(), x)
        assert binds == [] and node in _node_names(s.grad_fn)
        per_sample = torch.func.vmap(torch.func.grad(lambda xi: fn(xi[None], A, B).square().sum()))(x.detach())
        assert binds, "torch.func's transforms run the setup_context form"
        assert_close(per_sample, gx, terms=FIRST, scale="max")

    @given(s=sizes())
    def test_rankp_is_bilinear_of_sum_of_outer_products(self, bk, dtype, s):
        """Σ_p (X a_kp)ᵀ(X b_kp) / n = ⟨M, Σ_p a_kp b_kpᵀ⟩, per-class and shared bottom-up."""
        d = _data(s)
        X = bk(d["X"], dtype)
        terms = 2 * s["f"] + s["n"] + s["P"] + 2
        for Bm in (d["BP"], d["Bs"]):
            A, B = bk(d["AP"], dtype), bk(Bm, dtype)
            W = np.einsum("ikp,jkp->kij", d["AP"], Bm if Bm.ndim == 3 else np.broadcast_to(Bm[:, None], d["AP"].shape))
            got = lp.rankp_pool(X, A, B)
            scale = oracle_rankp(*absolute(X, A, B))
            assert_close(got, oracle_rankp(X, A, B), terms=terms, scale=scale, like=got)
            # the library's own bilinear_pool on the dense W agrees as well
            dense = lp.bilinear_pool(X, bk(W, dtype))
            assert_close(got, dense, terms=2 * terms + 2 * s["f"], scale=scale)

    # ----------------------------------------------------------------------------- the fused kernel
    @pytest.mark.parametrize("attention", ["linear", "softmax", "relu"])
    @pytest.mark.parametrize("nchw", [False, True])
    def test_fused_kernel_gradients(self, attention, nchw):
        """gradcheck of the custom autograd Function, and equality with plain autograd of the einsum form."""
        g = gen(2)
        x = (
            torch.randn(2, F_IN, 2, 3, generator=g, dtype=torch.float64)
            if nchw
            else torch.randn(2, 6, F_IN, generator=g, dtype=torch.float64)
        )
        x.requires_grad_()
        A = torch.randn(F_IN, K, 2, generator=g, dtype=torch.float64, requires_grad=True)
        B = torch.randn(F_IN, 2, generator=g, dtype=torch.float64, requires_grad=True)
        fn = lambda x, A, B: lp.rankp_pool(x, A, B, attention=attention)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, A, B))
        xb = x.flatten(2).mT if nchw else x
        n = xb.shape[1]
        z = torch.einsum("bnf,fp->bnp", xb, B)
        u = {"linear": z, "relu": torch.relu(z), "softmax": n * torch.softmax(z, dim=1)}[attention]
        plain = torch.einsum("bnf,fkp,bnp->bk", xb, A, u) / n
        w = torch.randn(2, K, dtype=torch.float64)
        grads = torch.autograd.grad((fn(x, A, B) * w).sum(), (x, A, B))
        plain_grads = torch.autograd.grad((plain * w).sum(), (x, A, B))
        for a, b in zip(grads, plain_grads, strict=True):
            _close(a, b)

    def test_torch_func_grad_and_vmap(self):
        A = torch.randn(F_IN, K, 1, dtype=torch.float64)
        B = torch.randn(F_IN, 1, dtype=torch.float64, requires_grad=True)
        x = torch.randn(3, 5, F_IN, dtype=torch.float64)
        gA = torch.func.grad(lambda a: lp.rankp_pool(x, a, B).sum())(A.requires_grad_())
        ref = torch.autograd.grad(lp.rankp_pool(x, A, B).sum(), A)[0]
        _close(gA, ref)
        # vmap over samples, one (1, n, f) batch each, through the fused kernel and through a layer
        per_sample = torch.func.vmap(lambda xi: lp.rankp_pool(xi[None], A, B)[0])(x)
        _close(per_sample, lp.rankp_pool(x, A, B))
        layer = AttentionalPool(F_IN, K, 2, attention="softmax", generator=gen(), dtype=torch.float64)
        xn = torch.randn(3, F_IN, 2, 3, dtype=torch.float64)
        _close(torch.func.vmap(lambda xi: layer(xi[None])[0])(xn), layer(xn))
        # per-sample gradients of the loss with respect to A (vmap of grad)
        grads = torch.func.vmap(torch.func.grad(lambda a, xi: lp.rankp_pool(xi[None], a, B).sum()), in_dims=(None, 0))(
            A, x
        )
        _close(grads.sum(0), ref)

    @pytest.mark.parametrize("attention", ["linear", "relu"])
    def test_official_biases_and_chained_rank_are_rankp_on_a_channel_of_ones(self, attention):
        """The official convolutions' biases and its chained rank-P maps are reproduced exactly by rankp_pool on X with
        a constant channel appended: a'_kp = [a_kp; β_kp], b'_1 = [b; b0], b'_p = α_p b'_{p-1} + [0; c_p]."""
        rng = np.random.default_rng(1)
        B, n, f, K, P = 2, 49, 6, 4, 3
        X = rng.standard_normal((B, n, f))
        A, beta = rng.standard_normal((f, K, P)), rng.standard_normal((K, P))
        b, b0 = rng.standard_normal(f), 0.3
        chain = [(0.7, -0.2), (-1.3, 0.5)]
        official = official_scores(X, A, beta, b, b0, attention, chain)
        x1 = np.concatenate([X, np.ones((B, n, 1))], axis=2)
        a1 = np.concatenate([A, beta[None]], axis=0)  # (f + 1, K, P)
        cols = [np.append(b, b0)]
        for alpha, c in chain:
            cols.append(alpha * cols[-1] + np.append(np.zeros(f), c))
        b1 = np.stack(cols, axis=1)  # (f + 1, P): every map is affine in the first one
        # n = 49 positions, f + 1 = 7 channels, P = 3 maps: the same sums in another order
        assert_close(lp.rankp_pool(x1, a1, b1, attention=attention), official, terms=2 * (49 + 2 * 7 + 3), scale="max")
        # the chained maps span only {X b, 1}: with the constant channel the rank-P bottom-up is of rank 2 at most
        assert np.linalg.matrix_rank(b1) <= 2


class TestRank1Pool(PoolingFunctionContract, AttentionDerivativesContract, NamedErrorsContract, IdentityContract):
    """lowrank_pool.rank1_pool: s_bk = (1/n)(X_b a_k)ᵀ σ(X_b b)."""

    form = "rank1"

    bad_calls = tuple(ERRORS["rank1_pool"])

    variants = (
        "rank1",
        "rank1_softmax",
        "rank1_relu",
    )

    permutation_cases = ("rank1", "rank1_softmax")
    homogeneous_cases = ("rank1",)

    # ----------------------------------------------------------------------------- dtypes at the edges
    def test_wide_and_foreign_byte_order_floats(self):
        rng = np.random.default_rng(3)
        X, A, b = rng.standard_normal((2, 5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(4)
        ref = lp.rank1_pool(X, A, b)
        wide = lp.rank1_pool(*(a.astype(np.longdouble) for a in (X, A, b)))
        terms = 2 * (2 * 4 + 5 + 2)  # rank-1 scores: two f-term products and an n-term mean, both sides
        scale = oracle_rank1_trace(*absolute(X, A, b))
        assert_close(wide, ref, terms=terms, scale=scale)  # float64: never silently float32
        big = lp.rank1_pool(*(a.astype(">f8") for a in (X, A, b)))
        assert_close(big, ref, terms=terms, scale=scale)
        big32 = lp.rank1_pool(*(a.astype(">f4") for a in (X, A, b)))
        # float32, native byte order; the inputs' own rounding to float32 adds three steps
        assert_close(big32, ref, terms=terms + 3, scale=scale, like=X.astype(np.float32))

    @pytest.mark.parametrize("attention", ["linear", "softmax", "relu"])
    @pytest.mark.parametrize("grad", [False, True])
    def test_nan_propagates_on_every_attention_path(self, attention, grad):
        x = torch.randn(2, 5, 4, dtype=torch.float64)
        x[0, 2, 1] = float("nan")
        A = torch.randn(4, 3, dtype=torch.float64, requires_grad=grad)
        b = torch.randn(4, dtype=torch.float64, requires_grad=grad)
        s = lp.rank1_pool(x, A, b, attention=attention)
        assert torch.isnan(s[0]).all() and torch.isfinite(s[1]).all()
        with pytest.raises(lp.ArgumentError, match="X: expected finite values, got 1 NaN/inf"):
            lp.rank1_pool(x, A, b, attention=attention, check_finite=True)

    @given(s=sizes())
    def test_rank1_is_trace_identity(self, bk, dtype, s):
        """Tr(M b a_kᵀ) = (X a_k)ᵀ(X b) / n with M = XᵀX / n."""
        d = _data(s)
        X, A, b = bk(d["X"], dtype), bk(d["A"], dtype), bk(d["b"], dtype)
        got = lp.rank1_pool(X, A, b)
        terms = 2 * s["f"] + s["n"] + 2
        assert_close(
            got, oracle_rank1_trace(X, A, b), terms=terms, scale=oracle_rank1_trace(*absolute(X, A, b)), like=got
        )
        assert got.dtype == X.dtype and type(got) is type(X)

    @given(s=sizes())
    def test_rank1_is_rankp_with_p1(self, bk, dtype, s):
        d = _data(s)
        X, A, b = bk(d["X"], dtype), bk(d["A"], dtype), bk(d["b"], dtype)
        one = lp.rankp_pool(X, bk(d["A"][:, :, None], dtype), bk(d["b"][:, None], dtype))
        scale = oracle_rank1_trace(*absolute(X, A, b))
        assert_close(one, lp.rank1_pool(X, A, b), terms=2 * (2 * s["f"] + s["n"] + 2), scale=scale)

    def test_mixed_float_dtypes_promote(self):
        x = np.ones((1, 2, 3), np.float32)
        assert lp.rank1_pool(x, np.ones((3, 2)), np.ones(3)).dtype == np.float64
        xt = torch.ones(1, 2, 3)
        assert lp.rank1_pool(xt, torch.ones(3, 2, dtype=torch.float64), torch.ones(3)).dtype == torch.float64

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    def test_cuda_results_stay_on_the_device(self):  # pragma: no cover - needs a GPU
        x = torch.randn(2, 5, 3, device="cuda")
        A, b = torch.randn(3, 4, device="cuda"), torch.randn(3, device="cuda")
        s = lp.rank1_pool(x, A, b)
        assert s.device == x.device
        assert_close(s, lp.rank1_pool(x.cpu(), A.cpu(), b.cpu()), terms=16, scale=s.abs().max().item() + 1)

    @pytest.mark.parametrize("attention", ["linear", "relu", "softmax"])
    def test_rank1_against_the_official_block(self, attention):
        """Without the convolutions' biases: linear and ReLU scores equal the official ones; the package's softmax
        scores are n times the official ones (its softmax averages 1 over the positions, the official one sums
        to 1)."""
        rng = np.random.default_rng(0)
        X, A, b = rng.standard_normal((3, 196, 8)), rng.standard_normal((8, 5, 1)), rng.standard_normal(8)
        official = official_scores(X, A, np.zeros((5, 1)), b, 0.0, attention)
        ours = lp.rank1_pool(X, A[:, :, 0], b, attention=attention)
        factor = X.shape[1] if attention == "softmax" else 1
        # float64, n = 196 positions, f = 8 channels: the same sums in another order (the softmax's exp and division)
        terms = 2 * (196 + 2 * 8 + 8)
        assert_close(ours, factor * official, terms=terms, scale="max")
        maps = lp.attention_maps(X, A[:, :, 0], b, attention=attention)
        assert_close(maps.bottom_up, factor * {"linear": lambda u: u, "relu": lambda u: np.maximum(u, 0),
                     "softmax": _softmax}[attention](X @ b), terms=terms, scale="max")  # fmt: skip


class TestAttentionMaps(PoolingFunctionContract, NamedErrorsContract):
    """lowrank_pool.attention_maps and AttentionMaps: the top-down and bottom-up maps."""

    variants = (
        "maps",
        "maps_relu",
        "maps_rankp",
    )

    bad_calls = tuple(ERRORS["attention_maps"])

    @given(s=sizes())
    def test_attention_maps_inner_product_is_rank1(self, bk, dtype, s):
        d = _data(s)
        X, A, b = bk(d["X"], dtype), bk(d["A"], dtype), bk(d["b"], dtype)
        maps = lp.attention_maps(X, A, b)
        top, bottom = maps
        assert isinstance(maps, lp.AttentionMaps) and maps.top_down is top and maps.bottom_up is bottom
        assert tuple(top.shape) == (s["B"], s["n"], s["K"]) and tuple(bottom.shape) == (s["B"], s["n"])
        inner = bk.xp.sum(top * bottom[..., None], axis=1) / s["n"]
        terms = 2 * s["f"] + s["n"] + 2
        scale = oracle_rank1_trace(*absolute(X, A, b))
        assert_close(inner, oracle_rank1_trace(X, A, b), terms=terms, scale=scale, like=X)
        assert_close(lp.rank1_pool(X, A, b), inner, terms=2 * terms, scale=scale)

    def test_keep_spatial_maps_follow_the_grid(self):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((2, 3, 4, 5))  # NCHW: f=3, H=4, W=5
        A, b = rng.standard_normal((3, 6)), rng.standard_normal(3)
        top, bottom = lp.attention_maps(x, A, b, channel_axis=1, keep_spatial=True)
        assert top.shape == (2, 6, 4, 5) and bottom.shape == (2, 4, 5)
        # f = 3 products each way
        assert_close(
            top, np.einsum("bfhw,fk->bkhw", x, A), terms=2 * 3, scale=np.einsum("bfhw,fk->bkhw", abs(x), abs(A))
        )
        assert_close(
            bottom, np.einsum("bfhw,f->bhw", x, b), terms=2 * 3, scale=np.einsum("bfhw,f->bhw", abs(x), abs(b))
        )


class TestAttentionWeights(NamedErrorsContract):
    """lowrank_pool.attention_weights: the attention transforms of a bottom-up map."""

    bad_calls = tuple(ERRORS["attention_weights"])

    def test_attention_transforms(self):
        rng = np.random.default_rng(1)
        x, A, b = rng.standard_normal((2, 7, 3)), rng.standard_normal((3, 4)), rng.standard_normal(3)
        _, soft = lp.attention_maps(x, A, b, attention="softmax")
        # softmax weights average 1 over the n = 7 positions: uniform logits give mean pooling
        # float64, n = 7 positions, f = 3 channels: exp, a 7-term sum and a division, each side
        terms = 2 * (3 + 7 + 4)
        assert (soft > 0).all()
        assert_close(soft.mean(1), np.ones((2,)), terms=terms)
        assert_close(lp.attention_weights(x @ b, attention="softmax"), soft, terms=terms)
        e = np.exp(x @ b - (x @ b).max(1, keepdims=True))
        assert_close(soft, 7 * e / e.sum(1, keepdims=True), terms=terms)
        _, relu = lp.attention_maps(x, A, b, attention="relu")
        assert np.array_equal(relu, np.maximum(x @ b, 0))
        for att in ("softmax", "relu"):
            top, bottom = lp.attention_maps(x, A, b, attention=att)
            assert_close(
                lp.rank1_pool(x, A, b, attention=att), (top * bottom[..., None]).mean(1), terms=terms, scale="max"
            )
        # softmax is exactly weighted-average pooling: shifting X b by a constant changes nothing
        x1 = np.concatenate([x, np.ones((2, 7, 1))], axis=2)
        A1 = np.concatenate([A, np.zeros((1, 4))])
        s0 = lp.rank1_pool(x1, A1, np.append(b, 0.0), attention="softmax")
        s1 = lp.rank1_pool(x1, A1, np.append(b, 5.0), attention="softmax")
        assert_close(s0, s1, terms=terms, scale="max")
