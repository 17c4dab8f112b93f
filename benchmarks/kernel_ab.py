"""Two builds of the compiled CPU kernel side by side in one process: the paired speed ratio at the reference cases.

Each case (the benchmark's four reference shapes, rank 1 and rank P = 4, (B, n, f) and NCHW input, forward and
forward+backward, B = 32, float32) runs the public ``rank1_pool`` / ``rankp_pool`` through each binary in turn,
X rewritten and gradients unset before every call (as ``make bench`` does), for ``--reps`` rounds; the reported
ratio is the median over rounds of time(A) / time(B) (> 1: B is faster), with the quartiles, so that a noisy,
shared machine moves both sides of a pair alike.

    python benchmarks/kernel_ab.py --a OLD.so --b NEW.so [--reps 15] [--dtype float32] [--tune-b field=value,...]

Either side may be ``torch`` (the pure-torch path) or a path to a built binary (``python -m lowrank_pool
kernel-status`` prints the current one; an older commit's binary can be built from a second worktree).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lpbench.roofline import SHAPES  # the suite's shared parts (benchmarks/lpbench/, beside this script)

import lowrank_pool as lp
from lowrank_pool import _native

BATCH, P = 32, 4


def load(spec: str) -> Any:
    """A kernel module from a binary's path, or None for ``torch``."""
    if spec == "torch":
        return None
    path = Path(spec)
    try:
        return _native.load_binary(path)
    except ImportError:  # a kernel of an older version
        pass
    name = path.name.split(".")[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None, spec
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def cases(dtype: torch.dtype, shapes: list[tuple[int, int, int]]) -> list[tuple[str, Any, tuple[Any, ...], bool]]:
    out = []
    for n, f, k in shapes:
        for layout in ("bnf", "nchw"):
            x = torch.randn(BATCH, n, f, dtype=dtype) if layout == "bnf" else torch.randn(BATCH, f, n, 1, dtype=dtype)
            x.requires_grad_()
            a1 = (torch.randn(f, k, dtype=dtype) / f**0.5).requires_grad_()
            b1 = (torch.randn(f, dtype=dtype) / f**0.5).requires_grad_()
            ap = (torch.randn(P, f, k, dtype=dtype) / f**0.5).permute(1, 2, 0).requires_grad_()  # (P, f, K) memory
            bp = (torch.randn(f, P, dtype=dtype) / f**0.5).requires_grad_()
            for method, pool, a, b in (("rank1", lp.rank1_pool, a1, b1), ("rankP", lp.rankp_pool, ap, bp)):
                for grad in (False, True):
                    label = f"{(n, f, k)} {method} {layout} {'fwd+bwd' if grad else 'fwd'}"
                    out.append((label, pool, (x, a, b), grad))
    return out


def run(pool: Any, tensors: tuple[Any, ...], grad: bool) -> float:
    x, a, b = tensors
    for t in tensors:
        t.grad = None
    with torch.no_grad():
        x.mul_(1.0)  # X rewritten, as the layer before leaves it
    start = time.perf_counter()
    if grad:
        pool(x, a, b).sum().backward()
    else:
        with torch.no_grad():
            pool(x, a, b)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="binary path or 'torch'")
    parser.add_argument("--b", required=True, help="binary path or 'torch'")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument(
        "--shapes", default="0,1,2,3", help="indices into the reference shapes, or shapes as NxFxK (e.g. 196x512x40)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tune-b", default="", help="tuning fields set while B runs (B may be the same binary as A): name=value,..."
    )
    args = parser.parse_args(argv)
    tune_b = {k: int(v) for k, v in (item.split("=") for item in args.tune_b.split(",") if item)}
    torch.set_num_threads(args.threads)
    sides = {"A": load(args.a), "B": load(args.b)}
    shapes = [
        tuple(int(v) for v in item.split("x")) if "x" in item else SHAPES[int(item)] for item in args.shapes.split(",")
    ]
    print(
        f"A = {args.a}\nB = {args.b}\n{args.dtype}, batch {BATCH}, P = {P}, {args.threads} threads, {args.reps} rounds"
    )
    print("| case | A ms | B ms | A/B median [quartiles] |\n|---|---|---|---|")
    original = _native.kernel
    ratios = []
    try:
        for label, pool, tensors, grad in cases(getattr(torch, args.dtype), shapes):
            times: dict[str, list[float]] = {"A": [], "B": []}
            for module in sides.values():  # warm-up: the first call of each side maps its buffers
                _native.kernel = lambda m=module: m  # type: ignore[assignment]
                run(pool, tensors, grad)
            for rep in range(args.reps):
                for side in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                    module = sides[side]
                    _native.kernel = lambda m=module: m  # type: ignore[assignment]
                    if side == "B" and tune_b and module is not None:
                        with _native.tuned(module, **tune_b):
                            times[side].append(run(pool, tensors, grad))
                    else:
                        times[side].append(run(pool, tensors, grad))
            pair = [ta / tb for ta, tb in zip(times["A"], times["B"], strict=True)]
            q = statistics.quantiles(pair, n=4)
            ratios.append(statistics.median(pair))
            print(
                f"| {label} | {statistics.median(times['A']) * 1e3:.2f} | {statistics.median(times['B']) * 1e3:.2f} "
                f"| {statistics.median(pair):.3f} [{q[0]:.2f}, {q[2]:.2f}] |",
                flush=True,
            )
    finally:
        _native.kernel = original  # type: ignore[assignment]
    geo = statistics.geometric_mean(ratios)
    print(f"\ngeometric mean of the medians: {geo:.3f}; range {min(ratios):.3f} to {max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
