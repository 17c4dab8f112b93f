"""The reference shapes, the roofline model every report uses, and the forms users write by hand."""

from __future__ import annotations

import math
from typing import Any

import torch

import lowrank_pool as lp

SHAPES = [(49, 2048, 10), (196, 512, 100), (196, 2048, 600), (4096, 128, 10)]  # (n, f, K)
SMOKE_SHAPES = [(16, 24, 5), (64, 8, 3)]


def costs(method: str, batch: int, n: int, f: int, k: int, r: int, item: int) -> tuple[float, float, float]:
    """(FLOPs, bytes, FLOPs of the Gram matrix XᵀX among them) of the cheapest known algorithm, for the roofline.

    CP and Tucker take the first two from the package's own cost model (:func:`lowrank_pool.pool_cost`,
    the path ``path="auto"`` picks), so the benchmark and the library share one model; their dense path
    forms the Gram matrix, as bilinear pooling does.
    """
    x = batch * n * f * item  # X is read once; the parameters are read once too
    gram = 2 * batch * n * f * f
    if method == "first_order":
        return 2 * batch * n * f + 2 * batch * f * k, x + f * k * item, 0
    if method == "bilinear":
        return gram + 2 * batch * k * f * f, x + k * f * f * item, gram
    if method == "rank1":
        return 4 * batch * n * f + 2 * batch * f * k, x + f * (k + 1) * item, 0
    if method == "rankp":
        return 4 * batch * n * f * 4 + 2 * batch * 4 * f * k, x + 4 * f * (k + 1) * item, 0
    if method == "compact":  # two count sketches (scatter-adds), two real FFTs of length d per position
        d = 8192  # (2.5 d log2 d FLOPs each), the spectra's product, one inverse FFT per sample
        fft = 2.5 * d * math.log2(d)
        return 2 * batch * n * f + batch * n * (2 * fft + 3 * d) + batch * fft, x + batch * d * item, 0
    kind = "cp" if method.startswith("cp") else "tucker"
    kw: dict[str, Any] = {"batch": batch, "positions": n, "channels": f, "classes": k, "itemsize": item}
    kw["ranks"] = r if kind == "cp" else (min(r, k), r, r)
    seconds = lp.pool_cost(kind, **kw)
    path = "factorized" if seconds["factorized"] <= seconds["dense"] else "dense"
    flops, nbytes = lp.pool_cost(kind, measure="flops", **kw)[path], lp.pool_cost(kind, measure="bytes", **kw)[path]
    return flops, nbytes, gram if path == "dense" else 0


def roofline_costs(
    method: str, batch: int, n: int, f: int, k: int, r: int, item: int, grad: bool
) -> tuple[float, float]:
    """(FLOPs, bytes) of the roofline: :func:`costs` for the forward; forward+backward reads X and the
    parameters twice (forward and backward), writes ∂X once and does three times the forward's FLOPs
    (the forward, and a product of the same size for each of the two gradients), except the Gram
    matrix XᵀX of the dense paths (bilinear pooling, CP and Tucker where ``auto`` takes the dense
    path): its backward is one GEMM, ∂X = X (G + Gᵀ), so its 2 B n f² FLOPs count twice, not three
    times."""
    flops, nbytes, gram = costs(method, batch, n, f, k, r, item)
    return (3 * flops - gram, 2 * nbytes + batch * n * f * item) if grad else (flops, nbytes)


def efficiency(flops: float, nbytes: float, seconds: float, gflops: float, read_gbps: float) -> float:
    """The roofline time max(FLOPs / GEMM peak, bytes / read bandwidth) over the measured time."""
    roof = max(flops / (gflops * 1e9), nbytes / (read_gbps * 1e9))
    return roof / seconds if seconds > 0 else math.nan


# ---------------------------------------------------------------------------- what a user writes by hand
def gemm_form(X: Any, A: Any, b: Any) -> Any:
    """What a user writes first: project X on [A | b], multiply the maps, average (plain autograd)."""
    k = A.shape[1]
    z = torch.cat([A, b[:, None]], 1).T @ X.reshape(X.shape[0], X.shape[1], -1)
    return (z[:, :k] * z[:, k:]).mean(-1)


def reassociated_form(X: Any, A: Any, b: Any) -> Any:
    """The re-associated form aᵀ(Xᵀ(X b)) / n by hand, with plain autograd (no fused backward)."""
    xt = X.reshape(X.shape[0], X.shape[1], -1)  # (B, f, n)
    u = (b @ xt)[:, :, None]  # (B, n, 1): the bottom-up map
    return (xt @ u)[..., 0] @ A / xt.shape[-1]
