"""The bilinear family's new forms against what a user writes by hand in PyTorch, measured in one run.

For each form (covariance + iSQRT + triu, two-input bilinear / CP / Tucker / rank-1 with Y, two-input compact
sketch) the package's call and a hand-written PyTorch form of the same numbers (checked equal in the run) are
timed forward and forward+backward at one shape, float32, on this machine; reported: medians of repeated
calls and the ratio hand-written / package (> 1: the package is faster), with the machine's GEMM peak.
Shapes: B = 32, 14×14 maps (n = 196), f = 256, g = 128, K = 100, rank 32.

    python benchmarks/family.py            # ~1 minute on 2 cores
    python benchmarks/family.py --smoke    # tiny shapes: the command works
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lpbench.machine import cpu_limits
from lpbench.timing import median_ms

import lowrank_pool as lp


def hand_isqrt(x: torch.Tensor, iters: int) -> torch.Tensor:
    """fast-MPN-COV's three layers as a user writes them: centring matrix, Newton–Schulz, upper triangle."""
    b, f, h, w = x.shape
    n = h * w
    m = x.reshape(b, f, n)
    ibar = (torch.eye(n) - 1.0 / n) / n
    sigma = m @ ibar @ m.transpose(1, 2)
    tr = sigma.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
    y, z, eye = sigma / tr, torch.eye(f).expand(b, f, f), torch.eye(f)
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    rows, cols = torch.triu_indices(f, f)
    return (y * tr.sqrt())[:, rows, cols]


def cases(
    b: int, n_side: int, f: int, g: int, k: int, r: int
) -> list[tuple[str, Callable[..., Any], Callable[..., Any], tuple]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(b, f, n_side, n_side, generator=gen))
    y = torch.relu(torch.randn(b, g, n_side, n_side, generator=gen))
    w = torch.randn(k, f, g, generator=gen) / (f * g) ** 0.5
    u, a, c = torch.randn(k, r, generator=gen), torch.randn(f, r, generator=gen), torch.randn(g, r, generator=gen)
    core = torch.randn(r // 2, r, r, generator=gen)
    ut = torch.randn(k, r // 2, generator=gen)
    av, bv = torch.randn(f, k, generator=gen), torch.randn(g, generator=gen)
    fl = lambda t: t.flatten(2)  # noqa: E731 - (B, c, n)
    wt = torch.randn(f * (f + 1) // 2, k, generator=gen) / f
    d = 1024
    (hx, sx), _ = lp.sketch_hashes(f, d, 0)
    _, (hy, sy) = lp.sketch_hashes(g, d, 0)
    dense_x, dense_y = torch.zeros(f, d), torch.zeros(g, d)  # the count sketches as (c, d) matrices
    dense_x[torch.arange(f), torch.as_tensor(hx)] = torch.as_tensor(sx, dtype=torch.float32)
    dense_y[torch.arange(g), torch.as_tensor(hy)] = torch.as_tensor(sy, dtype=torch.float32)

    def hand_mcb(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cx, cy = fl(x).transpose(1, 2) @ dense_x, fl(y).transpose(1, 2) @ dense_y  # (B, n, d)
        return torch.fft.irfft(torch.fft.rfft(cx, dim=-1) * torch.fft.rfft(cy, dim=-1), n=d, dim=-1).mean(1)

    return [
        (
            "covariance + isqrt + triu (CovariancePool's descriptor)",
            lambda x: lp.triu_vec(lp.matrix_sqrt(lp.gram(x, center=True), method="newton_schulz")) @ wt,
            lambda x: hand_isqrt(x, 5) @ wt,
            (x,),
        ),
        (
            "bilinear_pool(X, W, Y=Y)",
            lambda x, y: lp.bilinear_pool(x, w, Y=y),
            lambda x, y: torch.einsum("bfn,kfg,bgn->bk", fl(x), w, fl(y)) / fl(x).shape[-1],
            (x, y),
        ),
        (
            "cp_pool(X, cp, Y=Y) (MLB)",
            lambda x, y: lp.cp_pool(x, (None, [u, a, c]), Y=y),
            lambda x, y: ((fl(x).transpose(1, 2) @ a) * (fl(y).transpose(1, 2) @ c)).mean(1) @ u.T,
            (x, y),
        ),
        (
            "tucker_pool(X, tk, Y=Y) (MUTAN)",
            lambda x, y: lp.tucker_pool(x, (core, [ut, a, c]), Y=y),
            lambda x, y: (
                torch.einsum("bnr,bns,qrs,kq->bk", fl(x).transpose(1, 2) @ a, fl(y).transpose(1, 2) @ c, core, ut)
                / fl(x).shape[-1]
            ),
            (x, y),
        ),
        (
            f"compact_bilinear_pool(X, {d}, Y=Y) (MCB)",
            lambda x, y: lp.compact_bilinear_pool(x, d, Y=y),
            hand_mcb,
            (x, y),
        ),
        (
            "rank1_pool(X, A, b, Y=Y)",
            lambda x, y: lp.rank1_pool(x, av, bv, Y=y),
            lambda x, y: (
                torch.einsum("bfn,fk,bn->bk", fl(x), av, torch.einsum("bgn,g->bn", fl(y), bv)) / fl(x).shape[-1]
            ),
            (x, y),
        ),
    ]


def _forward_ms(fn: Callable[..., Any], inputs: tuple, reps: int) -> float:
    with torch.no_grad():
        return median_ms(lambda: fn(*inputs), lambda: None, reps)


def _step_ms(fn: Callable[..., Any], leaves: list[torch.Tensor], reps: int) -> float:
    def clear() -> None:
        for t in leaves:
            t.grad = None

    return median_ms(lambda: fn(*leaves).sum().backward(), clear, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: the command works")
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    shape = (4, 4, 16, 8, 5, 4) if args.smoke else (32, 14, 256, 128, 100, 32)  # (MCB: d = 1024)
    reps = 3 if args.smoke else 15
    peak = cpu_limits(small=args.smoke)["torch_float32_gflops"]
    b, side, f, g, k, r = shape
    print(f"B = {b}, {side}×{side} maps, f = {f}, g = {g}, K = {k}, rank {r}; float32, {torch.get_num_threads()} "
          f"threads; torch float32 GEMM peak {peak:.0f} GF/s (this run)\n")  # fmt: skip
    print("| form | ours fwd ms | hand-written fwd ms | ratio | ours fwd+bwd ms | hand-written fwd+bwd ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, ours, hand, inputs in cases(*shape):
        with torch.no_grad():
            torch.testing.assert_close(ours(*inputs), hand(*inputs), rtol=2e-3, atol=2e-3)
        leaves = [t.detach().requires_grad_() for t in inputs]
        fo, fh = (_forward_ms(fn, inputs, reps) for fn in (ours, hand))
        bo, bh = (_step_ms(fn, leaves, reps) for fn in (ours, hand))
        print(f"| {name} | {fo:.2f} | {fh:.2f} | {fh / fo:.2f} | {bo:.2f} | {bh:.2f} | {bh / bo:.2f} |", flush=True)


if __name__ == "__main__":
    main()
