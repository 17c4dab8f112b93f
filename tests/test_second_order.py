"""Tests of lowrank_pool.second_order's public names, one class each: gram and bilinear_pool (one and two inputs,
centring, normalisations): identities, layouts, dtypes, errors, gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from cases.autodiff import (  # noqa: E402
    FIRST,
    GRAD_DEVICES,
    LAYOUTS,
    SECOND,
    _gram_inputs,
    _plain_gram,
    _plain_second_order,
    _RecordedProducts,
    _second_order_forms,
)
from cases.errors import ERRORS  # noqa: E402
from cases.identities import (  # noqa: E402
    _data,
)
from cases.two_inputs import _cross, _isqrt_reference, _pair_data, pairs  # noqa: E402
from contracts import (  # noqa: E402
    IdentityContract,
    NamedErrorsContract,
    PoolingFunctionContract,
)
from helpers import (  # noqa: E402
    absolute,
    expect_errors,
    oracle_bilinear,
    sizes,
)

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.testing import (  # noqa: E402
    assert_close,
    to_numpy,
)


class TestGram(PoolingFunctionContract, NamedErrorsContract):
    """lowrank_pool.gram: M = XᵀX / n (or XᵀY / n, centred), through its autograd Function."""

    variants = ("gram",)

    bad_calls = tuple(ERRORS["gram"])

    @pytest.fixture(params=[True, False], ids=["X(G+Gt)", "XG+XGt"])
    def gram_calls(self, request, monkeypatch):
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
    @pytest.mark.parametrize("device", GRAD_DEVICES)
    def test_gram_function_gradients_to_second_order(self, layout, device, gram_calls):
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
    @pytest.mark.parametrize("device", GRAD_DEVICES)
    @pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # (as above)
    def test_gram_function_forward_mode(self, layout, device, gram_calls):
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
    def test_gram_function_per_sample_gradients_by_vmap(self, layout, gram_calls):
        """torch.func.vmap of torch.func.grad (per-sample gradients) through the Function."""
        x, W = _gram_inputs(layout)
        fn = lambda xi: lp.bilinear_pool(xi[None], W, normalize=None).square().sum()  # noqa: E731
        ref_fn = lambda xi: torch.einsum("bfg,kfg->bk", _plain_gram(xi[None]), W).square().sum()  # noqa: E731
        got = torch.func.vmap(torch.func.grad(fn))(x)
        ref = torch.func.vmap(torch.func.grad(ref_fn))(x)
        assert_close(got, ref, terms=SECOND, scale="max")

    @pytest.mark.parametrize("layout", LAYOUTS)
    def test_gram_function_backward_products(self, layout, monkeypatch):
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

    def test_gram_function_under_autocast_follows_autograd(self, gram_calls):
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

    @given(s=sizes())
    def test_gram_is_symmetric_psd_and_matches_oracle(self, bk, dtype, s):
        d = _data(s)
        X = bk(d["X"], dtype)
        G = lp.gram(X, normalize=None)
        Xa = np.abs(d["X"])
        scale = np.einsum("bni,bnj->bij", Xa, Xa)
        assert_close(G, np.einsum("bni,bnj->bij", d["X"], d["X"]), terms=s["n"] + 1, scale=scale, like=G)
        Gm = lp.gram(X)  # normalize="mean", the package's scale
        assert_close(Gm, lp.testing.to_numpy(G) / s["n"], terms=s["n"] + 2, scale=scale / s["n"], like=G)
        Gn = lp.testing.to_numpy(G)
        if Gn.size:
            assert np.linalg.eigvalsh((Gn + Gn.transpose(0, 2, 1)) / 2).min() >= -(s["n"] + 1) * 1e-6 * scale.max()

    @pytest.mark.parametrize("half", ["float16", "bfloat16"])
    def test_low_precision_accumulates_in_float32(self, half):
        """XᵀX of float16 data overflows float16 (max 65504); results come back in float32."""
        dt = getattr(torch, half)
        x = torch.full((1, 400, 4), 20.0, dtype=dt)  # Gram entries 400·400 = 160000 > 65504
        g = lp.gram(x, normalize=None)
        assert g.dtype == torch.float32 and torch.isfinite(g).all() and g[0, 0, 0].item() == 160000.0
        assert lp.gram(x).dtype == torch.float32 and lp.gram(x)[0, 0, 0].item() == 400.0
        s = lp.rank1_pool(x, torch.ones(4, 2, dtype=dt), torch.ones(4, dtype=dt))  # mean of (X a)(X b) = 80 · 80
        assert_close(s, torch.full((1, 2), 80.0 * 80.0), terms=0)  # float32, and exact: every term is an integer

    @given(s=pairs(), center=st.booleans())
    def test_gram_of_two_inputs_and_the_covariance(self, bk, dtype, s, center):
        """gram(X, Y) = XᵀY / n; centred: (1/n) Xᵀ(I − 11ᵀ/n)Y = (1/n) Σ (x_i − x̄)(y_i − ȳ)ᵀ; gram(X, X) = gram(X)."""
        d = _pair_data(s)
        X, Y = bk(d["X"], dtype), bk(d["Y"], dtype)
        got = lp.gram(X, Y, center=center)
        want = _cross(X, Y, center)
        xs, ys = (np.abs(to_numpy(v) - (to_numpy(v).mean(1, keepdims=True) if center else 0)) for v in (X, Y))
        terms = s["n"] + 4
        assert_close(got, want, terms=terms, scale=_cross(xs, ys) + 4.0 * center, like=got)
        plain = lp.gram(X, Y, center=center, normalize=None)
        assert_close(plain, want * s["n"], terms=terms, scale=s["n"] * (_cross(xs, ys) + 4.0 * center), like=plain)
        one = lp.gram(X, center=center)
        assert_close(lp.gram(X, X, center=center), one, terms=2 * terms, scale=_cross(xs, xs) + 8.0 * center)
        if center and s["B"]:  # the covariance is symmetric PSD
            m = to_numpy(one)
            assert_close(m, np.swapaxes(m, 1, 2), terms=2 * terms, scale=_cross(xs, xs) + 8.0)

    @pytest.mark.parametrize("layout", ["bnf", "nchw"])
    def test_two_inputs_follow_the_layout_rule_and_differentiate(self, layout):
        torch = pytest.importorskip("torch")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
        y = torch.randn(2, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
        if layout == "bnf":
            x, y = (t.detach().flatten(2).transpose(1, 2).requires_grad_() for t in (x, y))
        w = torch.randn(4, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
        a, b = torch.randn(3, 4, dtype=torch.float64, generator=g), torch.randn(2, dtype=torch.float64, generator=g)
        cp = (None, [torch.randn(4, 2, dtype=torch.float64, generator=g), torch.randn(3, 2, dtype=torch.float64),
                     torch.randn(2, 2, dtype=torch.float64)])  # fmt: skip
        funcs = {
            "gram": lambda x, y: lp.gram(x, y, center=True),
            "bilinear": lambda x, y: lp.bilinear_pool(x, w, Y=y, normalize="signed_sqrt+l2"),
            "rank1": lambda x, y: lp.rank1_pool(x, a, b, Y=y, attention="softmax"),
            "cp": lambda x, y: lp.cp_pool(x, cp, Y=y),
            "compact": lambda x, y: lp.compact_bilinear_pool(x, 8, Y=y),
        }
        for name, fn in funcs.items():
            assert torch.autograd.gradcheck(fn, (x, y)), name
        xn = to_numpy(x.detach()).reshape(2, 3, 20).transpose(0, 2, 1) if layout == "nchw" else to_numpy(x.detach())
        yn = to_numpy(y.detach()).reshape(2, 2, 20).transpose(0, 2, 1) if layout == "nchw" else to_numpy(y.detach())
        assert_close(lp.gram(x, y), _cross(xn, yn), terms=20 + 2, scale=_cross(np.abs(xn), np.abs(yn)), like=x)


class TestBilinearPool(PoolingFunctionContract, NamedErrorsContract, IdentityContract):
    """lowrank_pool.bilinear_pool: ⟨M, W_k⟩ with every normalisation, one or two inputs."""

    variants = ("bilinear",)

    bad_calls = tuple(ERRORS["bilinear_pool"])

    permutation_cases = ("bilinear",)
    homogeneous_cases = ("bilinear",)

    @given(s=sizes())
    def test_only_symmetric_part_of_w_matters(self, bk, dtype, s):
        d = _data(s)
        X, W = bk(d["X"], dtype), d["W"]
        Ws = (W + W.transpose(0, 2, 1)) / 2
        got, sym = lp.bilinear_pool(X, bk(W, dtype)), lp.bilinear_pool(X, bk(Ws, dtype))
        scale = oracle_bilinear(*absolute(d["X"], W))
        terms = s["n"] + s["f"] ** 2 + 2
        assert_close(got, oracle_bilinear(X, W), terms=terms, scale=scale, like=got)
        assert_close(sym, got, terms=2 * terms, scale=scale)

    @given(s=pairs())
    def test_two_input_trace_identity(self, bk, dtype, s):
        """Tr(XᵀY W_kᵀ) / n with W_k = a_k bᵀ (K, f, g) equals (X a_k)ᵀ(Y b) / n: rank1_pool with Y, bilinear_pool
        with Y, cp_pool with Y and tucker_pool with Y agree with the literal trace."""
        d = _pair_data(s)
        X, Y, A, b = (bk(d[k], dtype) for k in ("X", "Y", "A", "b"))
        M = _cross(X, Y)
        W = np.einsum("fk,g->kfg", d["A"], d["b"])
        trace = np.einsum("bfg,kfg->bk", M, W)
        scale = np.einsum("bfg,kfg->bk", _cross(np.abs(d["X"]), np.abs(d["Y"])), np.abs(W)) + 1.0
        terms = 2 * (s["f"] + s["g"]) + s["n"] + 4
        got = lp.rank1_pool(X, A, b, Y=Y)
        assert_close(got, trace, terms=terms, scale=scale, like=got, label="rank1_pool(Y=)")
        got = lp.bilinear_pool(X, bk(W, dtype), Y=Y)
        assert_close(got, trace, terms=terms + s["f"] * s["g"], scale=scale, like=got, label="bilinear_pool(Y=)")
        u, a, c = d["U"], d["Af"], d["Cg"]
        Wcp = np.einsum("kr,fr,gr->kfg", u, a, c)
        want = np.einsum("bfg,kfg->bk", M, Wcp)
        cscale = np.einsum(
            "bfg,kfg->bk", _cross(np.abs(d["X"]), np.abs(d["Y"])), np.einsum("kr,fr,gr->kfg", *map(np.abs, (u, a, c)))
        )
        for path in ("factorized", "dense"):
            got = lp.cp_pool(X, (None, [bk(u, dtype), bk(a, dtype), bk(c, dtype)]), Y=Y, path=path)
            assert_close(got, want, terms=terms + 3 * s["f"] * s["g"], scale=cscale + 1.0, like=got, label=f"cp {path}")
        core, ut, ct = d["core"], d["Ut"], d["Ct"]
        a3 = d["Af"]
        Wt = np.einsum("qrs,kq,fr,gs->kfg", core, ut, a3, ct)
        want = np.einsum("bfg,kfg->bk", M, Wt)
        tscale = np.einsum(
            "bfg,kfg->bk",
            _cross(np.abs(d["X"]), np.abs(d["Y"])),
            np.einsum("qrs,kq,fr,gs->kfg", *map(np.abs, (core, ut, a3, ct))),
        )
        for path in ("factorized", "dense"):
            tk = (bk(core, dtype), [bk(ut, dtype), bk(a3, dtype), bk(ct, dtype)])
            got = lp.tucker_pool(X, tk, Y=Y, path=path)
            assert_close(
                got, want, terms=terms + 20 * s["f"] * s["g"], scale=tscale + 1.0, like=got, label=f"tucker {path}"
            )

    @given(s=pairs())
    def test_centred_bilinear_pool_is_the_covariance_contracted(self, bk, dtype, s):
        d = _pair_data(s)
        X, Y = bk(d["X"], dtype), bk(d["Y"], dtype)
        square = np.random.default_rng(s["seed"]).standard_normal((s["K"], s["f"], s["f"]))
        xs = np.abs(d["X"] - d["X"].mean(1, keepdims=True)) if s["n"] else np.abs(d["X"])
        ys = np.abs(d["Y"] - d["Y"].mean(1, keepdims=True)) if s["n"] else np.abs(d["Y"])
        for y, W, yabs in ((None, square, xs), (Y, d["W"], ys)):
            got = lp.bilinear_pool(X, bk(W, dtype), Y=y, center=True)
            want = np.einsum("bfg,kfg->bk", _cross(X, X if y is None else y, center=True), W)
            scale = np.einsum("bfg,kfg->bk", _cross(xs, yabs), np.abs(W)) + 8.0
            assert_close(got, want, terms=s["n"] + s["f"] * W.shape[2] + 8, scale=scale, like=got)

    @pytest.mark.parametrize("num_iters", [1, 3, 5])
    def test_isqrt_cov_descriptor_equals_the_paper_to_rounding(self, num_iters):
        """triu_vec(N_isqrt(gram(X, center=True))) equals iSQRT-COV's descriptor in float64, values and gradients."""
        torch = pytest.importorskip("torch")
        rng = np.random.default_rng(num_iters)
        X = np.maximum(rng.standard_normal((3, 20, 6)), 0)  # ReLU features
        want = _isqrt_reference(X, num_iters)
        xt = torch.tensor(X, requires_grad=True)
        m = lp.gram(xt, center=True)
        got = lp.triu_vec(lp.matrix_sqrt(m, method="newton_schulz", num_iters=num_iters))
        # float64: the centred Gram matrix (n = 20), then num_iters Newton-Schulz steps of two 6×6 products each,
        # the same operations in the same order up to the GEMMs' summation order
        terms = 2 * (20 + 6 + 2 * 6 * (num_iters + 1))
        assert_close(got, want, terms=terms, scale="max", like=xt)
        # the same chain as a head's scores: ⟨N(Σ), W_k⟩ with W upper triangular = triu(N(Σ)) @ w
        w = rng.standard_normal((21, 4))
        wfull = np.zeros((4, 6, 6))
        rows, cols = np.triu_indices(6)
        wfull[:, rows, cols] = w.T
        scores = lp.bilinear_pool(xt, torch.tensor(wfull), center=True, normalize="isqrt", num_iters=num_iters)
        assert_close(scores, want @ w, terms=terms + 2 * 21, scale=np.abs(want) @ np.abs(w), like=xt)
        # gradients: autograd of the reference chain written in torch, against ours
        (g_ours,) = torch.autograd.grad(scores.sum(), xt)
        xr = torch.tensor(X, requires_grad=True)
        n = X.shape[1]
        ibar = torch.eye(n, dtype=torch.float64) - 1.0 / n
        sigma = torch.einsum("bnf,nm,bmg->bfg", xr, ibar, xr) / n
        tr = torch.diagonal(sigma, dim1=1, dim2=2).sum(-1)[:, None, None]
        y, z, eye = sigma / tr, torch.eye(6, dtype=torch.float64).expand(3, 6, 6), torch.eye(6, dtype=torch.float64)
        for _ in range(num_iters):
            t = 0.5 * (3.0 * eye - z @ y)
            y, z = y @ t, t @ z
        ref = (y * tr.sqrt())[:, rows, cols] @ torch.tensor(w)
        (g_ref,) = torch.autograd.grad(ref.sum(), xr)
        assert_close(g_ours, g_ref, terms=2 * terms, scale="max")  # the backward walks the chain once more

    def test_two_input_errors_name_the_argument(self):
        X, Y = np.ones((2, 5, 3)), np.ones((2, 5, 4))
        W = np.ones((6, 3, 4))
        cases = [
            (lambda: lp.gram(X, np.ones((3, 5, 4))), lp.ShapeError, r"^Y: expected 2 samples of n = 5 positions"),
            (lambda: lp.gram(X, np.ones((2, 6, 4))), lp.ShapeError, r"^Y: expected 2 samples of n = 5 .* n = 6"),
            (
                lambda: lp.bilinear_pool(X, np.ones((6, 3, 3)), Y=Y),
                lp.ShapeError,
                r"^W: expected shape \(K, f, g\) with g = 4",
            ),
            (
                lambda: lp.bilinear_pool(X, W, Y=Y, normalize="isqrt"),
                lp.ArgumentError,
                r"^normalize: 'isqrt' .* needs one input",
            ),
            (lambda: lp.bilinear_pool(X, W[:, :, :3], center="yes"), lp.ArgumentTypeError, r"^center"),
            (lambda: lp.rank1_pool(X, np.ones((3, 2)), np.ones(3), Y=Y), lp.ShapeError, r"^b: expected shape \(g,\)"),
            (
                lambda: lp.cp_pool(X, (None, [np.ones((6, 2)), np.ones((3, 2)), np.ones((3, 2))]), Y=Y),
                lp.ShapeError,
                r"^cp factor C: expected shape \(g, R\) with g = 4",
            ),
            (
                lambda: lp.tucker_pool(
                    X, (np.ones((1, 1, 1)), [np.ones((6, 1)), np.ones((3, 1)), np.ones((5, 1))]), Y=Y
                ),
                lp.ShapeError,
                r"^tucker factor C: expected shape \(g, R\) with g = 4",
            ),
            (lambda: lp.compact_bilinear_pool(X, 8, Y="y"), lp.LowRankPoolError, r"Y"),
            (lambda: lp.triu_vec(np.ones((2, 3))), lp.ShapeError, r"^G: expected square matrices"),
        ]
        expect_errors(cases)
