"""Shared data of the normalisation tests."""

from __future__ import annotations

import numpy as np


def _spd(rng, batch, f, cond):
    q, _ = np.linalg.qr(rng.standard_normal((batch, f, f)))
    mu = np.geomspace(1.0, 1.0 / cond, f) * rng.uniform(0.5, 2.0, (batch, 1))
    return np.einsum("bij,bj,bkj->bik", q, mu, q), mu
