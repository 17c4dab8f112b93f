"""Data and references (iSQRT-COV's descriptor) of the two-input tests."""

from __future__ import annotations

import numpy as np
from helpers import sizes
from hypothesis import strategies as st

from lowrank_pool.testing import to_numpy


@st.composite
def pairs(draw):
    s = draw(sizes())
    s["g"] = draw(st.integers(1, 7))
    return s


def _pair_data(s):
    rng = np.random.default_rng(s["seed"])
    B, n, f, g, K = s["B"], s["n"], s["f"], s["g"], s["K"]
    return {
        "X": rng.standard_normal((B, n, f)) + 2.0,  # a mean far from 0: centring matters
        "Y": rng.standard_normal((B, n, g)) - 1.0,
        "W": rng.standard_normal((K, f, g)),
        "A": rng.standard_normal((f, K)),
        "b": rng.standard_normal(g),
        "U": rng.standard_normal((K, 3)),
        "Af": rng.standard_normal((f, 3)),
        "Cg": rng.standard_normal((g, 3)),
        "core": rng.standard_normal((2, 3, 2)),
        "Ut": rng.standard_normal((K, 2)),
        "Ct": rng.standard_normal((g, 2)),
    }


def _cross(X, Y, center=False):
    X, Y = to_numpy(X), to_numpy(Y)
    if center and X.shape[1]:
        X, Y = X - X.mean(1, keepdims=True), Y - Y.mean(1, keepdims=True)
    return np.einsum("bnf,bng->bfg", X, Y) / max(X.shape[1], 1)


def _isqrt_reference(X, num_iters):
    """iSQRT-COV in float64, from the paper's equations (Li et al., CVPR 2018): the covariance
    Σ = (1/n) Xᵀ Ī X with Ī = I − 11ᵀ/n; A = Σ / tr Σ; Y_0 = A, Z_0 = I; T = (3I − Z Y)/2, Y ← Y T, Z ← T Z for
    N iterations; the root √(tr Σ) Y_N; the upper triangle row by row."""
    n = X.shape[1]
    ibar = np.eye(n) - np.ones((n, n)) / n
    sigma = np.einsum("bnf,nm,bmg->bfg", X, ibar, X) / n
    tr = np.trace(sigma, axis1=1, axis2=2)[:, None, None]
    y, z, eye = sigma / tr, np.broadcast_to(np.eye(X.shape[2]), sigma.shape), np.eye(X.shape[2])
    for _ in range(num_iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    root = y * np.sqrt(tr)
    rows, cols = np.triu_indices(X.shape[2])
    return root[:, rows, cols]
