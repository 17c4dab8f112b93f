"""Tests of lowrank_pool.normalize's public names, one class each: signed_sqrt, l2_normalize, matrix_sqrt, triu_vec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
tl = pytest.importorskip("tensorly")
from cases.errors import ERRORS  # noqa: E402
from cases.normalize import _spd  # noqa: E402
from contracts import NamedErrorsContract  # noqa: E402

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.testing import (  # noqa: E402
    assert_close,
    to_numpy,
)


class TestL2Normalize(NamedErrorsContract):
    """lowrank_pool.l2_normalize."""

    bad_calls = tuple(ERRORS["l2_normalize"])

    @pytest.mark.parametrize("lib", ["numpy", "torch"])
    def test_normalisations_of_long_float16_vectors(self, lib):
        x = np.full((2, 100_000), 1000.0, np.float16)
        x = torch.from_numpy(x) if lib == "torch" else x
        out = lp.l2_normalize(x)
        assert out.dtype == x.dtype
        # accumulated in float32 (in float16 the norm overflows: zeros), rounded once to float16
        assert_close(out, np.full(x.shape, 1 / np.sqrt(100_000)), terms=2, like=x)
        root = lp.signed_sqrt(x)
        assert_close(root, np.full(x.shape, np.sqrt(1000.0)), terms=2, like=x)

    @given(seed=st.integers(0, 999))
    def test_l2_normalize(self, bk, dtype, seed):
        x = np.random.default_rng(seed).standard_normal((3, 5, 4))
        x[1] = 0.0
        y = to_numpy(lp.l2_normalize(bk(x, dtype)))
        norms = np.linalg.norm(y, axis=-1)
        # a norm of 4 entries, a square root and a division per entry
        assert_close(norms[0], np.ones(5), terms=10, dtype=dtype)
        assert (norms[1] == 0).all()
        yf = to_numpy(lp.l2_normalize(bk(x, dtype), axis=(-2, -1)))
        assert_close(np.linalg.norm(yf[0]), np.float64(1.0), terms=40, dtype=dtype)  # 20 entries

    def test_l2_normalize_gradient_at_zero_is_finite(self):
        torch = pytest.importorskip("torch")
        x = torch.zeros(2, 3, requires_grad=True)
        lp.l2_normalize(x).sum().backward()
        assert torch.isfinite(x.grad).all()


class TestSignedSqrt(NamedErrorsContract):
    """lowrank_pool.signed_sqrt."""

    bad_calls = tuple(ERRORS["signed_sqrt"])

    @given(seed=st.integers(0, 999), eps=st.sampled_from([0.0, 1e-6, 1e-2]))
    def test_signed_sqrt_squares_back(self, bk, dtype, seed, eps):
        """s(x)·(|s(x)| + 2√ε) = x: the inverse of the ε-shifted signed root; odd; sqrt at ε=0."""
        x = np.random.default_rng(seed).standard_normal((3, 4, 4)) * 10.0
        x[0, 0, 0] = 0.0
        y = lp.signed_sqrt(bk(x, dtype), eps=eps)
        yn = to_numpy(y)
        assert y.dtype == bk(x, dtype).dtype and yn[0, 0, 0] == 0.0
        xr = bk(x, dtype)
        assert_close(
            yn * (np.abs(yn) + 2 * np.sqrt(eps)), to_numpy(xr), terms=8, scale=np.abs(to_numpy(xr)), dtype=dtype
        )
        assert_close(lp.signed_sqrt(bk(-x, dtype), eps=eps), -yn, terms=1, scale=np.abs(yn), like=xr)
        if eps == 0.0:
            assert_close(y, np.sign(to_numpy(xr)) * np.sqrt(np.abs(to_numpy(xr))), terms=2, like=xr)

    def test_signed_sqrt_gradient_is_bounded_at_zero(self):
        torch = pytest.importorskip("torch")
        for eps in (1e-6, 1e-2):
            x = torch.tensor([0.0, 1e-12, -1e-12, 4.0], dtype=torch.float64, requires_grad=True)
            lp.signed_sqrt(x, eps=eps).sum().backward()
            assert torch.isfinite(x.grad).all()
            assert x.grad.max().item() <= 1 / (2 * eps**0.5) * (1 + 1e-12)
            assert abs(x.grad[3].item() - 1 / (2 * (4 + eps) ** 0.5)) < 1e-12


class TestMatrixSqrt(NamedErrorsContract):
    """lowrank_pool.matrix_sqrt: eigh and Newton-Schulz."""

    bad_calls = tuple(ERRORS["matrix_sqrt"])

    @given(seed=st.integers(0, 999), f=st.integers(1, 6))
    def test_matrix_sqrt_eigh_squares_back(self, bk, dtype, seed, f):
        g, mu = _spd(np.random.default_rng(seed), 2, f, cond=100.0)
        G = bk(g, dtype)
        R = lp.matrix_sqrt(G)
        assert R.dtype == G.dtype
        r = to_numpy(R)
        assert_close(r, np.swapaxes(r, 1, 2), terms=4 * f, scale=np.abs(r).max(), dtype=dtype)
        # eigh's error is relative to the largest eigenvalue: backward-stable, not element-wise
        assert_close(r @ r, to_numpy(G), terms=200 * f, scale=mu.max(), dtype=dtype)

    @given(seed=st.integers(0, 999), f=st.integers(1, 6))
    def test_matrix_sqrt_newton_schulz_converges_to_eigh(self, bk, seed, f):
        g, mu = _spd(np.random.default_rng(seed), 3, f, cond=10.0)
        G = bk(g, "float64")
        ns = lp.matrix_sqrt(G, method="newton_schulz", num_iters=25)
        assert_close(ns, lp.matrix_sqrt(G), terms=1000 * f, scale=np.sqrt(mu.max()))
        # the default 5 iterations are a partial normalisation: close, not equal
        ns5 = to_numpy(lp.matrix_sqrt(G, method="newton_schulz"))
        assert np.abs(ns5 - to_numpy(lp.matrix_sqrt(G))).max() < 0.5 * np.sqrt(mu.max())

    def test_matrix_sqrt_of_zero_is_zero(self):
        z = np.zeros((2, 3, 3))
        assert (lp.matrix_sqrt(z, method="newton_schulz") == 0).all() and (lp.matrix_sqrt(z) == 0).all()

    def test_matrix_sqrt_of_a_gram_batch_in_low_precision(self):
        torch = pytest.importorskip("torch")
        x = torch.randn(2, 30, 4).to(torch.bfloat16)
        for method in ("eigh", "newton_schulz"):
            r = lp.matrix_sqrt(lp.gram(x), method=method, num_iters=20)
            assert r.dtype == torch.float32 and torch.isfinite(r).all()

    def test_the_uncentred_root_is_far_from_isqrt_cov_as_documented(self):
        """docs/conventions.md ("Centring"): on ReLU(N(0, 1)) features, f = 64, n = 196, the uncentred root's upper
        triangle is 56 % (relative l2) away from iSQRT-COV's descriptor."""
        X = np.maximum(np.random.default_rng(0).standard_normal((8, 196, 64)), 0)
        plain = lp.triu_vec(lp.matrix_sqrt(lp.gram(X), method="newton_schulz"))
        cov = lp.triu_vec(lp.matrix_sqrt(lp.gram(X, center=True), method="newton_schulz"))
        rel = float(np.mean(np.linalg.norm(plain - cov, axis=1) / np.linalg.norm(cov, axis=1)))
        assert round(rel, 2) == 0.56, rel


class TestTriuVec:
    """lowrank_pool.triu_vec."""

    @given(f=st.integers(1, 7), lead=st.lists(st.integers(0, 3), max_size=2), seed=st.integers(0, 99))
    def test_triu_vec_is_the_upper_triangle_row_by_row(self, bk, dtype, f, lead, seed):
        """triu_vec keeps G_ij for i <= j in row-major order (iSQRT-COV's Triuvec), exactly, in G's library and dtype;
        ⟨triu(G), w⟩ = ⟨G, W⟩ for the upper-triangular W holding w."""
        rng = np.random.default_rng(seed)
        g = rng.standard_normal((*lead, f, f))
        got = lp.triu_vec(bk(g, dtype))
        rows, cols = np.triu_indices(f)
        want = to_numpy(bk(g, dtype))[..., rows, cols]
        assert type(got) is type(bk(g, dtype)) and got.dtype == bk(g, dtype).dtype
        assert tuple(got.shape) == (*lead, f * (f + 1) // 2)
        assert_close(got, want, terms=0, like=bk(g, dtype))
        w = rng.standard_normal(f * (f + 1) // 2)
        upper = np.zeros((f, f))
        upper[rows, cols] = w
        # f(f+1)/2 products against f² (the zeros add nothing exactly)
        assert_close(lp.triu_vec(g) @ w, np.einsum("...ij,ij->...", g, upper), terms=2 * f * f, scale="max")
