"""Fitting speed: cp_approx / tucker_approx / eig_approx against tensorly's parafac / tucker, same run.

Each case fits the symmetric part S of a class weight tensor W (K, f, f) at one rank with both
libraries, the same start (the leading singular subspaces of the unfoldings), the same sweep limit
and the same stopping tolerance (tensorly: change of the relative error below ``tol``; here a sweep
improving it by less than ``stall`` times itself, the same number at errors near 1). Reported: seconds,
sweeps, the exact relative error ‖S − Ŝ‖/‖S‖ each reached, the time ratio, and the fraction of the
machine's GEMM peak (measured in this run) the sweeps' GEMMs reach (a CP or Tucker sweep here is two
GEMMs of 2·K·f²·R flops).

    python benchmarks/fits.py            # the README's W (100, 512, 512) and a structured W, ~6 minutes
    python benchmarks/fits.py --smoke    # tiny shapes: the command works
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lpbench.machine import cpu_limits

import lowrank_pool as lp


def _weights(kind: str, k: int, f: int, dtype: str, seed: int = 0) -> np.ndarray:
    """'random': the README's W (every entry N(0, 1)); 'structured': rank-f/8 CP signal plus 10 % noise,
    closer to a trained head, whose energy sits in a few directions."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, f, f))
    if kind == "structured":
        r = max(f // 8, 1)
        u, a = rng.standard_normal((k, r)), rng.standard_normal((f, r))
        signal = np.einsum("kr,ir,jr->kij", u, a, a)
        w = signal / np.linalg.norm(signal) + 0.1 * w / np.linalg.norm(w)
    return w.astype(dtype)


class _Sweeps(logging.Handler):
    """Counts the DEBUG records of one fit (a record per sweep)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if re.search(r": sweep \d+", record.getMessage()):
            self.count += 1


def _ours(fn: Any) -> tuple[Any, float, int]:
    log = logging.getLogger("lowrank_pool")
    handler, level = _Sweeps(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start, handler.count
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _theirs(fn: Any) -> tuple[Any, float, int]:
    start = time.perf_counter()
    out, errors = fn()
    return out, time.perf_counter() - start, len(errors)


def _error(form: Any, S: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(lp.to_dense(form), dtype=np.float64) - S) / np.linalg.norm(S))


def run_case(case: dict[str, Any], peak: float) -> list[dict[str, Any]]:
    from tensorly.decomposition import parafac, tucker

    W = _weights(case["kind"], case["K"], case["f"], case["dtype"])
    S64 = (W.astype(np.float64) + W.transpose(0, 2, 1)) / 2
    S = ((W + W.transpose(0, 2, 1)) / 2).astype(W.dtype)
    k, f, r = case["K"], case["f"], case["rank"]
    rows = []
    eps = float(np.finfo(W.dtype).eps)

    stall = 1e-7
    ours, t_ours, s_ours = _ours(lambda: lp.cp_approx(W, r, stall=stall, n_iter_max=1000, progress=False))
    theirs, t_theirs, s_theirs = _theirs(
        lambda: parafac(S, r, init="svd", n_iter_max=1000, tol=stall, return_errors=True, random_state=0)
    )
    flops = 4.0 * k * f * f * r  # two GEMMs of 2·K·f²·R per sweep
    rows.append(_row(case, f"cp rank {r}", ours, theirs, t_ours, t_theirs, s_ours, s_theirs, S64, flops, peak))

    ranks = (min(r, k), r, r)
    tol = max(1e-10, 16 * eps)
    ours, t_ours, s_ours = _ours(lambda: lp.tucker_approx(W, ranks, tol=tol, progress=False))
    theirs, t_theirs, s_theirs = _theirs(
        lambda: tucker(S, list(ranks), init="svd", n_iter_max=100, tol=tol, return_errors=True, random_state=0)
    )
    flops = 2.0 * k * f * f * (ranks[1] + ranks[2])
    rows.append(_row(case, f"tucker {ranks}", ours, theirs, t_ours, t_theirs, s_ours, s_theirs, S64, flops, peak))

    p = max(r // 8, 1)
    start = time.perf_counter()
    eig = lp.eig_approx(W, p, progress=False)
    t_eig = time.perf_counter() - start
    rows.append(
        {
            **case,
            "fit": f"eig rank {p}",
            "ours_s": t_eig,
            "ours_sweeps": 1,
            "ours_error": _error(eig, S64),
            "tensorly_s": None,
            "tensorly_sweeps": None,
            "tensorly_error": None,
            "speedup": None,
            "gemm_fraction": None,
        }
    )
    return rows


def _row(case, fit, ours, theirs, t_ours, t_theirs, s_ours, s_theirs, S, flops, peak) -> dict[str, Any]:
    return {
        **case,
        "fit": fit,
        "ours_s": t_ours,
        "ours_sweeps": s_ours,
        "ours_error": _error(ours, S),
        "tensorly_s": t_theirs,
        "tensorly_sweeps": s_theirs,
        "tensorly_error": _error(theirs, S),
        "speedup": t_theirs / t_ours,
        "gemm_fraction": s_ours * flops / t_ours / (peak * 1e9) if s_ours else None,
    }


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Fitting: lowrank_pool against tensorly, same run",
        "",
        f"Machine: {meta['machine']}, {meta['threads']} threads; GEMM peak measured in this run: "
        + ", ".join(f"{k} {v:.0f}" for k, v in meta["limits"].items() if k.endswith("gflops"))
        + " GF/s.",
        "",
        "| W | dtype | fit | lowrank_pool s (sweeps) | error | tensorly s (sweeps) | error | speed-up | GEMM share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        theirs = "—" if r["tensorly_s"] is None else f"{r['tensorly_s']:.2f} ({r['tensorly_sweeps']})"
        lines.append(
            f"| {r['kind']} ({r['K']}, {r['f']}, {r['f']}) | {r['dtype']} | {r['fit']} "
            f"| {r['ours_s']:.2f} ({r['ours_sweeps']}) | {r['ours_error']:.5f} | {theirs} "
            f"| {'—' if r['tensorly_error'] is None else format(r['tensorly_error'], '.5f')} "
            f"| {'—' if r['speedup'] is None else format(r['speedup'], '.1f') + '×'} "
            f"| {'—' if r['gemm_fraction'] is None else format(r['gemm_fraction'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes: checks the command works")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--threads", type=int, default=2)
    args, _ = p.parse_known_args(argv)  # make bench passes run.py's options too
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.smoke:
        cases = [{"kind": "random", "K": 6, "f": 24, "rank": 4, "dtype": "float64"}]
    else:
        cases = [
            {"kind": "random", "K": 100, "f": 512, "rank": 64, "dtype": "float32"},
            {"kind": "structured", "K": 100, "f": 256, "rank": 32, "dtype": "float64"},
        ]
    limits = cpu_limits(args.smoke, 3)
    peaks = {"float32": limits["numpy_float32_gflops"], "float64": limits["numpy_float64_gflops"]}
    rows = []
    for case in cases:
        rows.extend(run_case(case, peaks[case["dtype"]]))
        print(f"  {case}: done", flush=True)
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "threads": args.threads,
        "limits": limits,
        "smoke": args.smoke,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fits.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = report(rows, meta)
    (out / "fits.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
