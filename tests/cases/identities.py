"""The random data of the identity tests, and the identities that several functions share (invariance to the order
of the positions, homogeneity in X), each as a check a function's test class runs on its own cases."""

from __future__ import annotations

import numpy as np
from helpers import absolute, oracle_bilinear, oracle_rank1_trace, oracle_rankp
from hypothesis import strategies as st

import lowrank_pool as lp
from lowrank_pool.testing import assert_close, to_numpy


def _data(s: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(s["seed"])
    B, n, f, K, P = s["B"], s["n"], s["f"], s["K"], s["P"]
    return {
        "X": rng.standard_normal((B, n, f)),
        "A": rng.standard_normal((f, K)),
        "b": rng.standard_normal(f),
        "AP": rng.standard_normal((f, K, P)),
        "BP": rng.standard_normal((f, K, P)),
        "Bs": rng.standard_normal((f, P)),
        "W": rng.standard_normal((K, f, f)),
    }


def position_cases(bk, dtype, d):
    """name -> (fn(X), Σ|terms| of its scores) for the functions whose scores do not depend on the order of the
    positions, on the data ``d`` of ``_data``."""
    X = bk(d["X"], dtype)
    A, b, W = bk(d["A"], dtype), bk(d["b"], dtype), bk(d["W"], dtype)
    AP, BP = bk(d["AP"], dtype), bk(d["BP"], dtype)
    absx = np.abs(d["X"])
    top_max = (absx @ np.abs(d["A"])).max(1, initial=0.0)
    # a softmax-weighted average of X a: bounded by max_i |X||A|, its weights off by ~|X b|·eps
    softmax_scale = top_max * (1 + (absx @ np.abs(d["b"])).max(1, initial=0.0))[:, None]
    return {
        "rank1": (lambda x: lp.rank1_pool(x, A, b), oracle_rank1_trace(*absolute(X, A, b))),
        "rank1_softmax": (lambda x: lp.rank1_pool(x, A, b, attention="softmax"), softmax_scale),
        "rankp": (lambda x: lp.rankp_pool(x, AP, BP), oracle_rankp(*absolute(X, AP, BP))),
        "bilinear": (lambda x: lp.bilinear_pool(x, W), oracle_bilinear(*absolute(X, W))),
        "first_max": (lambda x: lp.first_order_pool(x, A, reduce="max"), absx.max(1) @ np.abs(d["A"]) + 1),
        "first_mean": (lambda x: lp.first_order_pool(x, A, reduce="mean"), absx.mean(1) @ np.abs(d["A"])),
        "first_sum": (lambda x: lp.first_order_pool(x, A, reduce="sum"), absx.sum(1) @ np.abs(d["A"])),
    }


def check_invariant_to_permutation_of_positions(bk, dtype, s, data, names):
    """score(X P) = score(X) for a permutation P of the positions, for each named case of ``position_cases``."""
    d = _data(s)
    perm = np.array(data.draw(st.permutations(range(s["n"]))), dtype=np.intp)
    X, Xp = bk(d["X"], dtype), bk(d["X"][:, perm], dtype)
    terms = 4 * (2 * s["f"] + s["n"] + s["P"] + s["f"] ** 2 + 2)
    cases = position_cases(bk, dtype, d)
    for name in names:
        fn, scale = cases[name]
        assert_close(fn(Xp), fn(X), terms=terms, scale=scale, label=name)


def homogeneous_cases(bk, dtype, d):
    """name -> (fn(X), Σ|terms| of its scores, degree): score(cX) = c^degree · score(X)."""
    X = bk(d["X"], dtype)
    A, b, W = bk(d["A"], dtype), bk(d["b"], dtype), bk(d["W"], dtype)
    AP, Bs = bk(d["AP"], dtype), bk(d["Bs"], dtype)
    return {
        "rank1": (lambda x: lp.rank1_pool(x, A, b), oracle_rank1_trace(*absolute(X, A, b)), 2),
        "rankp": (lambda x: lp.rankp_pool(x, AP, Bs), oracle_rankp(*absolute(X, AP, Bs)), 2),
        "bilinear": (lambda x: lp.bilinear_pool(x, W), oracle_bilinear(*absolute(X, W)), 2),
        "first_mean": (lambda x: lp.first_order_pool(x, A), np.abs(d["X"]).mean(1) @ np.abs(d["A"]), 1),
    }


def check_homogeneous(bk, dtype, s, c, names):
    """score(cX) = c²·score(X) for the second-order forms, c·score(X) for first order."""
    d = _data(s)
    X, Xc = bk(d["X"], dtype), bk(c * d["X"], dtype)
    terms = 4 * (2 * s["f"] + s["n"] + s["P"] + s["f"] ** 2 + 4)
    cases = homogeneous_cases(bk, dtype, d)
    for name in names:
        fn, scale, degree = cases[name]
        want = c**degree * to_numpy(fn(X))
        assert_close(fn(Xc), want, terms=terms, scale=c**degree * scale, like=X, label=name)
