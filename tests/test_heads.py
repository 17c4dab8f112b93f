"""Tests of lowrank_pool.heads' public names, one class each: HeadForm, head_scores, convert_form, approx_form,
project_factors, moment_weighted_approx."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from cases.heads import ALL, F_HEAD, K_HEAD, _gen, _head_close, _head_forms, _head_x, _with_bias  # noqa: E402
from helpers import expect_errors  # noqa: E402

import lowrank_pool as lp  # noqa: E402
import lowrank_pool.nn as lnn  # noqa: E402
from lowrank_pool.testing import assert_close  # noqa: E402


class TestHeadScores:
    """lowrank_pool.head_scores."""

    @pytest.mark.parametrize("name", sorted(ALL))
    def test_factors_compute_the_heads_scores(self, name):
        """head_scores(x, head.factors()) is head(x), values and gradients (the factors are the live parameters)."""
        head = _with_bias(ALL[name](_gen(1)), 1)
        x = _head_x()
        form = head.factors()
        assert isinstance(form, lp.HeadForm)
        got = lp.head_scores(x, form, channel_axis=head.channel_axis)
        want = head(x)
        _head_close(got, want, name)
        params = [p for p in head.parameters()]
        g1 = torch.autograd.grad(got.square().sum(), params, allow_unused=True)
        g2 = torch.autograd.grad(want.square().sum(), params, allow_unused=True)
        for a, b in zip(g1, g2, strict=True):
            if b is not None:
                _head_close(a, b, f"{name} gradient")


class TestHeadForm:
    """lowrank_pool.HeadForm."""

    def test_heads_load_forms_of_any_library(self):
        """A HeadForm of numpy arrays (what load_factors returns) builds a torch head of float64."""
        rng = np.random.default_rng(0)
        w = rng.standard_normal((K_HEAD, F_HEAD, F_HEAD))
        form = lp.HeadForm(lp.convert_form(w, "eig"), bias=rng.standard_normal(K_HEAD))
        head = lnn.EigPool.from_factors(form)
        x = _head_x(5)
        want = lp.bilinear_pool(x.numpy(), w) + form.bias
        # float64 both ways: f² products, n positions, the eigen form's K·f terms
        assert_close(
            head(x),
            want,
            terms=4 * (F_HEAD * F_HEAD + x.shape[-1] * x.shape[-2] + K_HEAD * F_HEAD),
            scale="max",
            like=x,
        )

    def test_head_form_arguments_are_checked(self):
        w = np.ones((K_HEAD, F_HEAD, F_HEAD))
        cases = [
            (
                lambda: lp.head_scores(np.ones((2, 3, F_HEAD)), lp.HeadForm(w, normalize="power")),
                lp.ArgumentError,
                "normalize",
            ),
            (
                lambda: lp.head_scores(np.ones((2, 3, F_HEAD)), lp.HeadForm(w, attention="softmax")),
                lp.ArgumentError,
                "attention",
            ),
            (
                lambda: lp.head_scores(np.ones((2, 3, F_HEAD)), lp.HeadForm(w, bias=np.ones(K_HEAD + 1))),
                lp.ShapeError,
                "bias",
            ),
            (lambda: lp.head_scores(np.ones((2, 3, F_HEAD)), lp.HeadForm("W")), lp.ArgumentTypeError, "form"),
            (lambda: lp.convert_form(w, "sketch"), lp.ArgumentError, "kind"),
            (lambda: lp.convert_form(np.ones((F_HEAD, K_HEAD)), "cp"), lp.ArgumentTypeError, "form"),
            (lambda: lp.project_factors(w, np.ones(F_HEAD)), lp.ShapeError, "projection"),
            (lambda: lp.project_factors(w, np.ones((F_HEAD, F_HEAD + 1))), lp.ShapeError, "form"),
            (lambda: lp.approx_form(w, 2, kind="eig", n_iter_max=3), lp.ArgumentError, "options"),
            (lambda: lp.moment_weighted_approx(w, 2, np.ones((F_HEAD + 1, F_HEAD + 1))), lp.ShapeError, "moment"),
        ]
        for call, error, name in cases:
            with pytest.raises(error, match=f"^{name}"):
                call()


class TestConvertForm:
    """lowrank_pool.convert_form."""

    @settings(max_examples=25, deadline=None)
    @given(
        xp=st.sampled_from(["numpy", "torch"]),
        k=st.integers(1, 3),
        f=st.integers(1, 5),
        source=st.sampled_from(["dense", "cp", "tucker", "eig", "rankp"]),
        target=st.sampled_from(["dense", "cp", "tucker", "eig", "rankp"]),
        seed=st.integers(0, 99),
    )
    @example(xp="numpy", k=1, f=3, source="dense", target="eig", seed=33)  # eigh's backward error (found in CI)
    def test_convert_form_keeps_the_scores(self, xp, k, f, source, target, seed):
        forms = _head_forms(xp, seed, k, f)
        x = np.random.default_rng(seed + 1).standard_normal((3, 4, f))
        x = torch.from_numpy(x) if xp == "torch" else x
        want = lp.head_scores(x, forms["dense"])
        got = lp.head_scores(x, lp.convert_form(forms[source], target))
        assert type(got) is type(want)
        # An exact conversion (eigh, SVD, unfolding) is backward stable: the W it stands for is off by
        # about f·eps·‖W_k‖₂, which moves a score by at most that times the mean ‖x‖²; each side then
        # rounds along its own chain of f² products and n = 4 positions.
        w = np.asarray(forms["dense"])
        x64 = np.asarray(x)
        scale = np.linalg.norm(w, ord=2, axis=(1, 2))[None, :] * np.mean(np.sum(x64 * x64, axis=-1), axis=1)[:, None]
        assert_close(got, want, terms=2 * (f * f + x64.shape[1] + 3), scale=scale + 1.0, label=f"{source}->{target}")


class TestProjectFactors:
    """lowrank_pool.project_factors."""

    @settings(max_examples=25, deadline=None)
    @example(kind="dense", d=1, f=1, seed=38)  # the two chains' roundings add (found in CI)
    @given(
        kind=st.sampled_from(["dense", "cp", "tucker", "eig", "rankp"]),
        d=st.integers(1, 4),
        f=st.integers(1, 5),
        seed=st.integers(0, 99),
    )
    def test_project_factors_is_r_w_rt(self, kind, d, f, seed):
        """Scores of a form on d channels after X R equal those of the projected form on X, whatever the kind."""
        rng = np.random.default_rng(seed)
        form = _head_forms("numpy", seed, 2, d)[kind]
        r = rng.standard_normal((f, d))
        x = rng.standard_normal((3, 4, f))
        want = lp.head_scores(x, lp.HeadForm(form, projection=r))
        got = lp.head_scores(x, lp.project_factors(form, r))
        # Each side rounds along a chain of f·d² products, the n = 4 positions' mean and a few
        # scalings; the two chains differ, so their errors add.
        terms = 2 * (f * d * d + x.shape[1] + 3)
        assert_close(got, want, terms=terms, scale=float(abs(want).max()) + 1.0, label=kind)
        dense = lp.to_dense(lp.HeadForm(form, projection=r))
        assert_close(dense, r @ lp.convert_form(form, "dense") @ r.T, terms=terms, scale="max", label=kind)


class TestMomentWeightedApprox:
    """lowrank_pool.moment_weighted_approx and approx_form."""

    @pytest.mark.parametrize("kind", ["eig", "cp", "tucker", "rankp"])
    def test_moment_weighted_approx_spends_rank_where_the_features_are(self, kind):
        """Channels the features never excite get no part of the fit, and on the features the weighted fit scores
        closer to W than the Frobenius fit of the same rank."""
        rng = np.random.default_rng(1)
        f, k = 6, 2
        w = rng.standard_normal((k, f, f))
        scale = np.array([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])
        x = rng.standard_normal((64, 10, f)) * scale
        moment = np.mean(lp.gram(x), axis=0)
        rank = {"eig": 2, "cp": 3, "tucker": (2, 2, 2), "rankp": 2}[kind]
        options = {"n_restarts": 2} if kind == "cp" else {}
        weighted = lp.moment_weighted_approx(w, rank, moment, kind=kind, **options)
        frobenius = lp.approx_form(w, rank, kind=kind, **options)
        dense = lp.to_dense(weighted)
        assert np.abs(dense[:, 3:, :]).max() < 1e-9 and np.abs(dense[:, :, 3:]).max() < 1e-9
        want = lp.bilinear_pool(x, w)
        err_w = np.linalg.norm(lp.bilinear_pool(x, dense) - want)
        err_f = np.linalg.norm(lp.bilinear_pool(x, lp.to_dense(frobenius)) - want)
        assert err_w <= err_f * (1 + 1e-9)


class TestApproxForm:
    """lowrank_pool.approx_form: the table of fits every head's from_dense uses."""

    def test_each_kind_is_its_fit(self):
        rng = np.random.default_rng(0)
        w, x = rng.standard_normal((3, 5, 5)), rng.standard_normal((2, 4, 5))
        assert lp.approx_form(w, 2, kind="dense") is w  # the rank is ignored
        eig, ref = lp.approx_form(w, 2, kind="eig"), lp.eig_approx(w, 2)
        assert_close(eig.eigenvalues, ref.eigenvalues, terms=0)
        assert_close(eig.eigenvectors, ref.eigenvectors, terms=0)
        # per-class rank-P factors a = μ v, b = v: the eigen form's scores (n = 4 positions, f = 5, P = 2)
        rankp = lp.approx_form(w, 2, kind="rankp")
        assert isinstance(rankp, lp.RankP)
        assert_close(lp.rankp_pool(x, *rankp), lp.eig_pool(x, ref), terms=4 * (4 + 25 + 2), scale="max")
        # the ALS fits are deterministic: the same fit as the function's
        assert_close(lp.to_dense(lp.approx_form(w, 2, kind="cp")), lp.to_dense(lp.cp_approx(w, 2)), terms=0)
        tucker = lp.approx_form(w, (3, 2, 2), kind="tucker")
        assert_close(lp.to_dense(tucker), lp.to_dense(lp.tucker_approx(w, (3, 2, 2))), terms=0)

    def test_bad_input_raises_a_named_error(self):
        w = np.ones((2, 3, 3))
        expect_errors(
            [
                (lambda: lp.approx_form(w, 2, kind="svd"), lp.ArgumentError, r"^kind: expected one of \['dense'"),
                (lambda: lp.approx_form(w, 2, kind="eig", n_iter_max=3), lp.ArgumentError, "options"),
            ]
        )
