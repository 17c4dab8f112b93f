"""Compact bilinear pooling (Tensor Sketch): unbiased inner products, variance falling as 1/dim, seeds, layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowrank_pool as lp
from lowrank_pool.testing import to_numpy


def _pair(seed: int, f: int = 5, n: int = 4) -> tuple[np.ndarray, float]:
    x = np.random.default_rng(seed).standard_normal((2, n, f))
    m = lp.gram(x)
    return x, float((m[0] * m[1]).sum())


def _estimates(x: np.ndarray, dim: int, seeds: range) -> np.ndarray:
    out = []
    for s in seeds:
        psi = lp.compact_bilinear_pool(x, dim, seed=s)
        out.append(float(psi[0] @ psi[1]))
    return np.array(out)


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_inner_products_are_unbiased(data_seed):
    """Over the sketch's random hashes, the mean of ⟨ψ(M₁), ψ(M₂)⟩ is ⟨M₁, M₂⟩ (within 4 standard errors)."""
    x, exact = _pair(data_seed)
    est = _estimates(x, 16, range(1500))
    stderr = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - exact) < 4 * stderr + 1e-12, (est.mean(), exact, stderr)


def test_variance_falls_as_one_over_dim():
    x, _ = _pair(7, f=8)
    var = {d: _estimates(x, d, range(600)).var() for d in (16, 64)}
    ratio = var[16] / var[64]
    assert 2.0 < ratio < 8.0, ratio  # 4 expected


@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 40))
def test_same_seed_same_sketch_on_every_backend_and_layout(bk, dtype, seed, dim):
    x = np.random.default_rng(seed % 1000).standard_normal((2, 3, 2, 5))  # NCHW: f = 3
    ref = lp.compact_bilinear_pool(x, dim, seed=seed)
    got = lp.compact_bilinear_pool(bk(x, dtype), dim, seed=seed)
    bnf = lp.compact_bilinear_pool(
        bk(np.ascontiguousarray(x.reshape(2, 3, 10).transpose(0, 2, 1)), dtype), dim, seed=seed
    )
    tol = 1e-9 if dtype == "float64" else 1e-4
    scale = np.abs(ref).max(initial=0.0) + 1
    assert np.abs(to_numpy(got) - ref).max() <= tol * scale and np.abs(to_numpy(bnf) - ref).max() <= tol * scale
    assert got.dtype == bk(x, dtype).dtype
    other = lp.compact_bilinear_pool(x, dim, seed=seed + 1)
    assert dim < 2 or not np.allclose(other, ref)  # another seed, another sketch


def test_sketch_is_linear_in_the_second_moment():
    """ψ(M) depends on X only through M = XᵀX/n: duplicating every position leaves it unchanged."""
    x = np.random.default_rng(3).standard_normal((2, 5, 4))
    np.testing.assert_allclose(
        lp.compact_bilinear_pool(np.concatenate([x, x], axis=1), 32), lp.compact_bilinear_pool(x, 32), atol=1e-12
    )


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"dim": 0}, lp.ArgumentError, r"dim: expected a positive int, got 0"),
        ({"dim": 2.0}, lp.ArgumentTypeError, r"dim: expected a positive int, got float"),
        ({"dim": 8, "seed": "a"}, lp.ArgumentTypeError, r"seed: expected an int, got str"),
    ],
)
def test_bad_input_is_named(kwargs, exc, pattern):
    dim = kwargs.pop("dim")
    with pytest.raises(exc, match=pattern):
        lp.compact_bilinear_pool(np.ones((1, 2, 3)), dim, **kwargs)


def test_function_and_layer_take_the_same_seeds():
    """One validator for the seed: numpy integers work in both, bools and floats are refused by both."""
    pytest.importorskip("torch")
    from lowrank_pool.nn import CompactBilinearPool

    X = np.random.default_rng(0).random((2, 5, 3))
    assert np.array_equal(lp.compact_bilinear_pool(X, 8, seed=np.int64(3)), lp.compact_bilinear_pool(X, 8, seed=3))
    assert CompactBilinearPool(3, 2, dim=8, seed=np.int64(3)).seed == 3
    for bad in (True, 1.5):
        with pytest.raises(lp.ArgumentTypeError, match="seed: expected an int"):
            lp.compact_bilinear_pool(X, 8, seed=bad)
        with pytest.raises(lp.ArgumentTypeError, match="seed: expected an int"):
            CompactBilinearPool(3, 2, dim=8, seed=bad)
