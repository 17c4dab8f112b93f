"""Data of the compact bilinear (Tensor Sketch) tests."""

from __future__ import annotations

import numpy as np

import lowrank_pool as lp


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
