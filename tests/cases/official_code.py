"""The official TensorFlow block of the paper written out from its operations, in numpy."""

from __future__ import annotations

import numpy as np


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
