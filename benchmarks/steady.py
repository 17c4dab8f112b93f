"""The attentional kernel in a tight loop: the regime where the interpreter and torch's dispatcher are warm.

``make bench`` times every call after other, unrelated calls (round-robin), so each call also pays for
cold instruction and data caches in Python and torch — with tiny inputs after evicting the caches, about
0.2 ms for a forward and 0.6-0.7 ms for a forward+backward of ``rank1_pool`` on this machine (plain
autograd of four tensor operations: 0.45-0.65 ms). This script times the same calls
back-to-back (X rewritten before each, gradients unset, as in ``make bench``) against the same
roofline (X, A and b read once forward; X read twice and ∂X written once forward+backward), with the
read bandwidth of a 1 GiB array measured in the same run. Run: ``.venv/bin/python benchmarks/steady.py``.
"""

from __future__ import annotations

import torch
from lpbench.roofline import SHAPES, roofline_costs  # the suite's shared parts (benchmarks/lpbench/)
from lpbench.timing import median_ms

import lowrank_pool as lp

BATCH, P = 32, 4  # as make bench (its rank-P roofline counts P = 4)


def _measure(pool, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Median ms of inference and of forward+backward, X rewritten and gradients unset before each (untimed)."""

    def prepare() -> None:
        x.grad = a.grad = b.grad = None
        with torch.no_grad():
            x.mul_(1.0)

    def forward() -> None:
        with torch.no_grad():
            pool(x, a, b)

    def step() -> None:
        pool(x, a, b).sum().backward()

    return median_ms(forward, prepare), median_ms(step, prepare)


def main() -> None:
    torch.set_num_threads(2)
    big = torch.ones(2**28)  # 1 GiB
    read_gbps = big.nbytes / min(median_ms(big.sum, lambda: None, 5) for _ in range(3)) / 1e6
    print(f"read bandwidth {read_gbps:.1f} GB/s (1 GiB); batch {BATCH}, 2 threads, float32, NCHW input")
    print("| (n, f, K) | method | forward ms (eff) | forward+backward ms (eff) |")
    print("|---|---|---|---|")
    for n, f, k in SHAPES:
        x = torch.randn(BATCH, f, n, 1, requires_grad=True)
        params = {
            "rank1": ((torch.randn(f, k) / f**0.5).requires_grad_(), (torch.randn(f) / f**0.5).requires_grad_()),
            "rankp": (  # A (f, K, P) in a (P, f, K) layout: read in place
                (torch.randn(P, f, k) / f**0.5).permute(1, 2, 0).requires_grad_(),
                (torch.randn(f, P) / f**0.5).requires_grad_(),
            ),
        }
        for method, (a, b) in params.items():
            pool = lp.rank1_pool if method == "rank1" else lp.rankp_pool
            fwd, fb = _measure(pool, x, a, b)
            # the same roofline as make bench (memory-bound here: bytes / bandwidth)
            roof_fwd, roof_fb = (
                roofline_costs(method, BATCH, n, f, k, 0, 4, grad)[1] / read_gbps / 1e6 for grad in (False, True)
            )
            print(f"| {(n, f, k)} | {method} | {fwd:.2f} ({roof_fwd / fwd:.2f}) | {fb:.2f} ({roof_fb / fb:.2f}) |")
        lp.empty_cache()


if __name__ == "__main__":
    main()
