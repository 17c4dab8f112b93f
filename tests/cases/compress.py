"""Heads and data of the compression tests."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from lowrank_pool.nn import BilinearPool  # noqa: E402

F, K, D = 12, 4, 3


def _subspace_head(seed=0):
    """Features in a D-dim subspace S of the F channels; W = (a rank-D part on S) + (a large part ⟂ S).

    The part orthogonal to S never changes a score on these features but holds most of W's norm, so
    the Frobenius-optimal rank-D factors spend their rank on it; the score-optimal ones are exact.
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(F, F, generator=g, dtype=torch.float64))
    on, off = q[:, :D], q[:, D:]
    m = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    n = torch.randn(K, F - D, F - D, generator=g, dtype=torch.float64)
    w = on @ (m + m.mT) @ on.T + 20 * off @ (n + n.mT) @ off.T
    head = BilinearPool(F, K, normalize=None, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(w / head.weight_scale)
        head.bias.copy_(torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64))
    z = torch.randn(64, 5, D, generator=g, dtype=torch.float64)
    return head, z @ on.T, on  # features (64, n=5, F) in S


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / (b - b.mean(0)).norm())
