"""Every pooling function's call forms: ``POOLS[variant](X, channel_axis, A, b, AP, BP, Bs, W)``, and the factors
they take (``pool_factors``). The contracts in tests/contracts.py run each public function's variants."""

from __future__ import annotations

from typing import Any

import numpy as np

import lowrank_pool as lp

POOLS: dict[str, Any] = {
    "first_mean": lambda x, ax, A, b, AP, BP, Bs, W: lp.first_order_pool(x, A, channel_axis=ax),
    "first_sum": lambda x, ax, A, b, AP, BP, Bs, W: lp.first_order_pool(x, A, reduce="sum", channel_axis=ax),
    "first_max": lambda x, ax, A, b, AP, BP, Bs, W: lp.first_order_pool(x, A, reduce="max", channel_axis=ax),
    "projection": lambda x, ax, A, b, AP, BP, Bs, W: lp.project_channels(x, AP[:, 0, :], channel_axis=ax),
    "gram": lambda x, ax, A, b, AP, BP, Bs, W: lp.gram(x, channel_axis=ax),
    "bilinear": lambda x, ax, A, b, AP, BP, Bs, W: lp.bilinear_pool(x, W, channel_axis=ax),
    "rank1": lambda x, ax, A, b, AP, BP, Bs, W: lp.rank1_pool(x, A, b, channel_axis=ax),
    "rank1_softmax": lambda x, ax, A, b, AP, BP, Bs, W: lp.rank1_pool(x, A, b, attention="softmax", channel_axis=ax),
    "rank1_relu": lambda x, ax, A, b, AP, BP, Bs, W: lp.rank1_pool(x, A, b, attention="relu", channel_axis=ax),
    "rankp_shared": lambda x, ax, A, b, AP, BP, Bs, W: lp.rankp_pool(x, AP, Bs, channel_axis=ax),
    "rankp_shared_softmax": lambda x, ax, A, b, AP, BP, Bs, W: lp.rankp_pool(
        x, AP, Bs, attention="softmax", channel_axis=ax
    ),
    "rankp_perclass": lambda x, ax, A, b, AP, BP, Bs, W: lp.rankp_pool(x, AP, BP, attention="relu", channel_axis=ax),
    "maps": lambda x, ax, A, b, AP, BP, Bs, W: lp.attention_maps(x, A, b, channel_axis=ax)[0],
    "maps_relu": lambda x, ax, A, b, AP, BP, Bs, W: lp.attention_maps(x, A, b, attention="relu", channel_axis=ax)[1],
    "maps_rankp": lambda x, ax, A, b, AP, BP, Bs, W: (
        lp.attention_maps(x, AP, Bs, attention="softmax", channel_axis=ax).bottom_up
    ),
    "cp": lambda x, ax, A, b, AP, BP, Bs, W: lp.cp_pool(x, (None, [AP[0, ...], AP[:, 0, :], Bs]), channel_axis=ax),
    "tucker": lambda x, ax, A, b, AP, BP, Bs, W: lp.tucker_pool(  # core (P, P, P), U (K, P), A (f, P), C (f, P)
        x, (AP[0, :2, :][:, :, None] * Bs[0, :][None, None, :], [AP[0, ...], AP[:, 0, :], Bs]), channel_axis=ax
    ),
    "compact": lambda x, ax, A, b, AP, BP, Bs, W: lp.compact_bilinear_pool(x, 7, seed=1, channel_axis=ax),
    "eig": lambda x, ax, A, b, AP, BP, Bs, W: lp.eig_pool(x, (AP[0, ...], AP), path="factorized", channel_axis=ax),
}


def pool_factors(rng: np.random.Generator, f: int, K: int = 3, P: int = 2) -> list[np.ndarray]:
    """A (f, K), b (f,), AP (f, K, P), BP (f, K, P), Bs (f, P), W (K, f, f): standard normal."""
    return [rng.standard_normal(s) for s in [(f, K), (f,), (f, K, P), (f, K, P), (f, P), (K, f, f)]]
