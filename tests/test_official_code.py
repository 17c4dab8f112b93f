"""The numbers docs/paper.md states about the paper's official code ("Comparing with the official code"), each
checked: the official TensorFlow block written out in numpy from its operations (1×1 convolutions with biases,
``reduce_mean`` over the positions, a spatial softmax that sums to 1, and the rank > 1 loop that applies each
bottom-up convolution to the previous map), against this package's functions."""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_pool as lp
from lowrank_pool.testing import assert_close


def _softmax(u):
    e = np.exp(u - u.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def official_scores(X, A, beta, b, b0, attention="linear", chain=None):
    """The official attention head on maps X (B, n, f): top-down 1×1 conv (A (f, K, P), biases beta (K, P)),
    bottom-up 1×1 conv b (f,) with bias b0, and for rank P > 1 the chain map_p = alpha_p map_{p-1} + c_p
    (``chain`` = [(alpha_2, c_2), ...]); scores reduce_mean over positions of map × top-down, summed over p."""
    maps = [X @ b + b0]  # (B, n)
    for alpha, c in chain or []:
        maps.append(alpha * maps[-1] + c)  # the next 1×1 conv reads the previous map, not X
    out = 0.0
    for p, u in enumerate(maps):
        if attention == "softmax":
            u = _softmax(u)  # over the positions: sums to 1
        elif attention == "relu":
            u = np.maximum(u, 0)
        top = X @ A[:, :, p] + beta[:, p]  # (B, n, K)
        out = out + np.mean(top * u[:, :, None], axis=1)
    return out


@pytest.mark.parametrize("attention", ["linear", "relu", "softmax"])
def test_rank1_against_the_official_block(attention):
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


@pytest.mark.parametrize("attention", ["linear", "relu"])
def test_official_biases_and_chained_rank_are_rankp_on_a_channel_of_ones(attention):
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
