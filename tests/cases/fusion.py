"""The two-input heads' registry, inputs and float64 references of their documented formulas."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import MCB, MFB, MLB, Block, Mutan  # noqa: E402

F, G, K = 5, 4, 3
# float64 scores of these heads computed two ways (n ≤ 6 positions, f·g = 20 channel pairs, ranks ≤ 6, a few
# chained contractions): compared normwise
TERMS = 4 * (6 + F * G + 6 + 8)
CONFIGS = {
    "mlb": (MLB, {"rank": 6}),
    "mlb_tanh": (MLB, {"rank": 6, "activation": "tanh"}),
    "mfb": (MFB, {"dim": 4, "factor": 3}),
    "mfb_plain": (MFB, {"dim": 4, "factor": 2, "normalize": None}),
    "mutan": (Mutan, {"rank": (2, 3, 3)}),
    "mutan_tanh": (Mutan, {"rank": (2, 3, 2), "activation": "tanh"}),
    "block": (Block, {"blocks": 3, "rank": (2, 2, 3)}),
    "mcb": (MCB, {"dim": 16, "seed": 2}),
    "mcb_plain": (MCB, {"dim": 16, "normalize": None}),
}


def make(name, seed=0, **extra):
    cls, kw = CONFIGS[name]
    layer = cls(F, G, K, **kw, **extra, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.copy_(torch.arange(K, dtype=torch.float64) / 4)
    return layer


def _rows(t, layout):
    """(B, n, c) float64 numpy rows of x for the reference formulas."""
    t = t.detach().numpy()
    if t.ndim == 2:
        return t[:, None, :]
    if layout == "nchw":
        return t.reshape(t.shape[0], t.shape[1], -1).transpose(0, 2, 1)
    return t


def _normalise(z, normalize, eps=1e-6):
    if (normalize or "").startswith("signed_sqrt"):
        z = np.sign(z) * np.abs(z) / (np.sqrt(np.abs(z) + eps) + np.sqrt(eps))
    if (normalize or "").endswith("l2"):
        z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return z


def reference(name, layer, x, y, layout):
    """The documented formula of each head, in float64 numpy."""
    X, Y = _rows(x, layout), _rows(y, layout)
    p = {k: v.detach().numpy() for k, v in layer.named_parameters()}
    c = p.get("bias", 0.0)
    act = np.tanh if getattr(layer, "activation", None) == "tanh" else (lambda v: v)
    if name.startswith("mlb"):
        za, zc = act(X @ p["U"]), act(Y @ p["V"])
        return np.mean(za * zc, axis=1) @ p["P"].T + c
    if name.startswith("mfb"):
        prod = np.mean((X @ p["U"]) * (Y @ p["V"]), axis=1)  # (B, o·k)
        z = prod.reshape(prod.shape[0], layer.dim, layer.factor).sum(-1)
        return _normalised_scores(layer, z, p["weight"], c)
    if name.startswith("mutan"):
        za, zc = act(X @ p["A"]), act(Y @ p["C"])
        m = np.einsum("bnr,bns->brs", za, zc) / X.shape[1]
        return np.einsum("brs,qrs,kq->bk", m, p["core"], p["U"]) + c
    if name == "block":
        _, rx, ry = layer.ranks
        out = 0.0
        for i in range(layer.blocks):
            w = np.einsum("qrs,kq,fr,gs->kfg", p["core"][i], p["U"][i], p["A"][:, i * rx : (i + 1) * rx],
                          p["C"][:, i * ry : (i + 1) * ry])  # fmt: skip
            out = out + np.einsum("bnf,kfg,bng->bk", X, w, Y) / X.shape[1]
        return out + c
    if name.startswith("mcb"):
        (h1, s1), _ = lp.sketch_hashes(F, layer.dim, layer.seed)
        _, (h2, s2) = lp.sketch_hashes(G, layer.dim, layer.seed)
        onehot = np.zeros((F, G, layer.dim))
        for a in range(F):
            for b in range(G):
                onehot[a, b, (h1[a] + h2[b]) % layer.dim] = s1[a] * s2[b]
        psi = np.einsum("bnf,bng,fgt->bt", X, Y, onehot) / X.shape[1]
        return _normalised_scores(layer, psi, p["weight"], c)
    raise AssertionError(name)


def _normalised_scores(layer, z, weight, bias, eps=1e-6):
    """Scores of a descriptor z (B, D) through the head's normalisation and classifier, and each score's rounding
    scale: z carries ~TERMS roundings of max|z|; the ε-shifted root multiplies a perturbation by its slope
    1 / (2√(|z| + ε)) at most, the l2 step by 2 / ‖d‖, the classifier by |w|."""
    d = _normalise(z, layer.normalize, eps)
    scores = layer.weight_scale * d @ weight + bias
    dz, rooted = np.abs(z).max(axis=-1, keepdims=True) * np.ones_like(z), z
    if (layer.normalize or "").startswith("signed_sqrt"):
        dz, rooted = dz / (2 * np.sqrt(np.abs(z) + eps)), _normalise(z, "signed_sqrt", eps)
    if (layer.normalize or "").endswith("l2"):
        dz = 2 * dz / np.maximum(np.linalg.norm(rooted, axis=-1, keepdims=True), 1e-12)
    scale = np.abs(layer.weight_scale) * dz @ np.abs(weight) + np.abs(scores)
    return scores, scale


def _inputs(kind, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "vectors":
        return torch.randn(4, F, generator=g, dtype=torch.float64), torch.randn(4, G, generator=g, dtype=torch.float64)
    x = torch.randn(4, F, 3, 2, generator=g, dtype=torch.float64)
    y = torch.randn(4, G, 3, 2, generator=g, dtype=torch.float64)
    if kind == "bnf":
        return x.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)
    return x, y


def _within_the_fit(layer, w, x, y):
    """A head fitted to W scores like W within what the fit left: |Δs_bk| = |x_bᵀ ΔW_k y_b| ≤ ‖ΔW_k‖₂‖x_b‖‖y_b‖
    (and the rounding of either side)."""
    want = lp.bilinear_pool(x[:, None, :], w, Y=y[:, None, :])
    gap = (layer(x, y) - want).abs()
    fit = torch.linalg.matrix_norm(layer.to_dense() - w, ord=2)  # (K,)
    bound = fit[None, :] * (x.norm(dim=1) * y.norm(dim=1))[:, None] + TERMS * 2.0**-52 * want.abs().max()
    assert (gap <= bound).all(), (gap - bound).max()
