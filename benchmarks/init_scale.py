"""Initial scores and training scale of every head, measured in one run.

For each head of :mod:`lowrank_pool.nn` (f channels, K = 10 classes, 7×7 maps of ReLU(N(0, 1))
features, batch 64): the standard deviation of the initial scores and the first loss (ln K = 2.30 for
scores that carry no information), then 25 AdamW steps at a first-order head's learning rate (1e-3)
on a noisy task with the same K classes (class means 0.3 apart, 30 % of the labels drawn at random): the largest loss
on the way and the last one. A head whose optimiser steps move its scores too far shows a largest loss
above its first. Prints a Markdown table (docs/conventions.md, "Initialisation and training scale").

    python benchmarks/init_scale.py             # f = 256, ~1 minute on 2 cores
    python benchmarks/init_scale.py --smoke     # f = 32
"""

from __future__ import annotations

import argparse
import math

import torch

from lowrank_pool.nn import (
    AttentionalPool,
    BilinearPool,
    CompactBilinearPool,
    CovariancePool,
    CPPool,
    EigPool,
    FirstOrderPool,
    PoseAttentionalPool,
    TuckerPool,
)


def heads(f: int) -> dict[str, tuple[type, dict]]:
    return {
        "FirstOrderPool (mean)": (FirstOrderPool, {}),
        "FirstOrderPool (max)": (FirstOrderPool, {"reduce": "max"}),
        "BilinearPool (no normalisation)": (BilinearPool, {"normalize": None}),
        "BilinearPool (signed_sqrt)": (BilinearPool, {"normalize": "signed_sqrt"}),
        "BilinearPool (signed_sqrt+l2)": (BilinearPool, {"normalize": "signed_sqrt+l2"}),
        "BilinearPool (matrix_sqrt)": (BilinearPool, {"normalize": "matrix_sqrt"}),
        f"BilinearPool (matrix_sqrt+l2, d = {f // 4})": (
            BilinearPool,
            {"normalize": "matrix_sqrt+l2", "reduce_dim": f // 4},
        ),
        "AttentionalPool rank 1": (AttentionalPool, {}),
        "AttentionalPool rank 4": (AttentionalPool, {"rank": 4}),
        "AttentionalPool rank 4, softmax": (AttentionalPool, {"rank": 4, "attention": "softmax"}),
        "AttentionalPool rank 2, per class, relu": (
            AttentionalPool,
            {"rank": 2, "bottom_up": "per_class", "attention": "relu"},
        ),
        "CPPool R = 32": (CPPool, {"rank": 32}),
        f"TuckerPool (8, {f // 8}, {f // 8})": (TuckerPool, {"rank": (8, f // 8, f // 8)}),
        "EigPool P = 4": (EigPool, {"rank": 4}),
        "CompactBilinearPool (signed_sqrt+l2)": (CompactBilinearPool, {"dim": 4 * f}),
        "CompactBilinearPool (no normalisation)": (CompactBilinearPool, {"dim": 4 * f, "normalize": None}),
        "PoseAttentionalPool": (PoseAttentionalPool, {"num_keypoints": 3}),
        f"CovariancePool (iSQRT-COV, d = {f // 4})": (CovariancePool, {"reduce_dim": f // 4}),
    }


def logits(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = head(x)
    return out.scores if hasattr(out, "scores") else out  # (PoseAttentionalPool returns its maps too)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="32 channels, 3 steps: the command works")
    args = parser.parse_args()
    f, k, b, steps = (32, 10, 64, 3) if args.smoke else (256, 10, 64, 25)
    g = torch.Generator().manual_seed(0)
    x0 = torch.relu(torch.randn(b, f, 7, 7, generator=g))
    y0 = torch.arange(b) % k
    y = torch.arange(b) % k
    centres = torch.randn(k, f, generator=g)
    x = torch.relu(torch.randn(b, f, 7, 7, generator=g) + 0.3 * centres[y][:, :, None, None])
    y = torch.where(torch.rand(b, generator=g) < 0.3, torch.randint(0, k, (b,), generator=g), y)
    print(f"f = {f}, K = {k}, 7×7 maps, batch {b}; ln K = {math.log(k):.2f}; AdamW 1e-3, {steps} steps\n")
    print("| head | initial score std | first loss | largest / last loss in training |")
    print("|---|---|---|---|")
    for name, (cls, opts) in heads(f).items():
        head = cls(f, k, generator=torch.Generator().manual_seed(1), **opts)
        with torch.no_grad():
            s = logits(head, x0)
        first = torch.nn.functional.cross_entropy(s, y0).item()
        head = cls(f, k, generator=torch.Generator().manual_seed(1), **opts)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
        losses = []
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(logits(head, x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        print(f"| {name} | {s.std().item():.3f} | {first:.2f} | {max(losses):.2f} / {losses[-1]:.2f} |")


if __name__ == "__main__":
    main()
