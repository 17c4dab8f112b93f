"""The attentional and CP heads on a CUDA device, against the forms users write by hand, with a roofline.

The GPU runs the torch path of every function (the compiled kernel is CPU-only). For the four
reference shapes of ``make bench`` (NCHW input, float32, TF32 off), this times the forward under
``no_grad`` and a forward+backward with CUDA events (median of ``--reps`` calls, X rewritten before
each, as a backbone would have just written it), and reports each time against a roofline measured in
the same run: max(FLOPs of the cheapest algorithm / the device's float32 GEMM rate, bytes that must
move / the device's read bandwidth). The hand-written baselines are those of ``make bench``: the GEMM
form ``((X @ [A | b]) ...)`` and the re-associated form, in plain autograd and under torch.compile
(inductor). ``rank1_pool``, the re-associated form, ``rankp_pool`` and ``cp_pool`` are also timed
captured in a CUDA graph (forward and training step, each captured once and replayed), which removes
the host's per-kernel cost that dominates an eager step at these sizes. Peak device memory of a
training step is reported in units of X.
Run: ``python benchmarks/gpu.py [--batch 32] [--out DIR]`` on a machine with a CUDA device;
``python benchmarks/gpu.py --rescore DIR/gpu.json --out DIR2`` rebuilds a stored run's table with this
version's roofline (anywhere: nothing is run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from lpbench.machine import gpu_limits  # the suite's shared parts (benchmarks/lpbench/, beside this script)
from lpbench.roofline import SHAPES, gemm_form, reassociated_form, roofline_costs
from lpbench.timing import device_ms

import lowrank_pool as lp

P, R = 4, 64  # as make bench: rank-P attention with P = 4 maps, CP of rank 64


def _roofline_of(label: str) -> str:
    """The roofline method of a row (:func:`lpbench.roofline.roofline_costs`), from its label."""
    if label.startswith("rankp"):
        return "rankp"
    return "cp64" if label.startswith("cp_pool") else "rank1"


def _forms(f: int, k: int) -> dict[str, tuple[Callable[..., Any], tuple[torch.Tensor, ...]]]:
    """label -> (callable(x, *params), params), all on the device."""

    def param(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, device="cuda") / f**0.5).requires_grad_()

    a, b = param(f, k), param(f)
    ap = (torch.randn(P, f, k, device="cuda") / f**0.5).permute(1, 2, 0).requires_grad_()  # read in place
    bp = param(f, P)
    cp = (None, [param(k, R), param(f, R), param(f, R)])
    compiled_gemm = torch.compile(gemm_form, dynamic=False)
    compiled_re = torch.compile(reassociated_form, dynamic=False)
    compiled_ours = torch.compile(lp.rank1_pool, dynamic=False, fullgraph=True)
    return {
        "rank1_pool": (lp.rank1_pool, (a, b)),
        "hand: GEMM form": (gemm_form, (a, b)),
        "hand: re-associated": (reassociated_form, (a, b)),
        "hand: GEMM form, compiled": (compiled_gemm, (a, b)),
        "hand: re-associated, compiled": (compiled_re, (a, b)),
        "rank1_pool, compiled": (compiled_ours, (a, b)),
        "rankp_pool (P = 4)": (lp.rankp_pool, (ap, bp)),
        "cp_pool (R = 64)": (lambda x, *fs: lp.cp_pool(x, (None, list(fs))), tuple(cp[1])),
    }


def _measure(fn: Callable[..., Any], x: torch.Tensor, params: tuple[torch.Tensor, ...], reps: int) -> dict[str, float]:
    leaves = [x, *params]

    def prepare() -> None:
        for t in leaves:
            t.grad = None
        with torch.no_grad():
            x.mul_(1.0)

    def forward() -> None:
        with torch.no_grad():
            fn(x, *params)

    def step() -> None:
        fn(x, *params).sum().backward()

    out = {"fwd": device_ms(forward, prepare, reps), "fwd+bwd": device_ms(step, prepare, reps)}
    prepare()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    out["peak_x"] = (torch.cuda.max_memory_allocated() - base) / (x.numel() * x.element_size())
    return out


def _measure_graphed(
    fn: Callable[..., Any], x: torch.Tensor, params: tuple[torch.Tensor, ...], reps: int
) -> dict[str, float]:
    """The forward and the training step captured once each in a CUDA graph, timed by replay.

    This is what ``torch.compile(mode="reduce-overhead")`` or a hand-written ``torch.cuda.graph`` of a
    whole step does: the host's per-kernel cost (Python, dispatch, launches) is paid once at capture.
    """
    leaves = [x, *params]

    def step() -> None:
        fn(x, *params).sum().backward()

    def forward() -> None:
        with torch.no_grad():
            fn(x, *params)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture (cuBLAS workspaces, lazy initialisation)
        for _ in range(3):
            for t in leaves:
                t.grad = None
            step()
            forward()
    torch.cuda.current_stream().wait_stream(side)
    for t in leaves:
        t.grad = None
    graphs = {"fwd": torch.cuda.CUDAGraph(), "fwd+bwd": torch.cuda.CUDAGraph()}
    with torch.cuda.graph(graphs["fwd"]):
        forward()
    with torch.cuda.graph(graphs["fwd+bwd"]):
        step()

    def rewrite() -> None:
        with torch.no_grad():
            x.mul_(1.0)

    out = {mode: device_ms(g.replay, rewrite, reps) for mode, g in graphs.items()}
    out["peak_x"] = float("nan")  # the graph's memory pool is held for its lifetime: not a step's peak
    for t in leaves:
        t.grad = None
    return out


GRAPHED = ("rank1_pool", "hand: re-associated", "rankp_pool (P = 4)", "cp_pool (R = 64)")


def report(rows: list[dict[str, Any]], limits: dict[str, float], meta: dict[str, Any], out: str) -> str:
    """The table (``gpu.md``) and ``gpu.json`` of measured rows, each against the roofline of this version."""
    batch = meta["batch"]
    lines = [
        f"# GPU benchmark, batch {batch}",
        "",
        f"{meta['device']}; torch {meta['torch']}; batch {batch}, float32 (TF32 off), NCHW input; "
        f"float32 GEMM {limits['gflops']:.0f} GF/s, read bandwidth {limits['read_gbps']:.0f} GB/s (measured now)",
        "",
        "| (n, f, K) | method | fwd ms (eff) | fwd+bwd ms (eff) | fwd+bwd: rank1_pool's lead | peak of a step |",
        "|---|---|---|---|---|---|",
    ]
    steps = {(tuple(r["shape"]), r["method"]): r["fwd+bwd"] for r in rows}
    for r in rows:
        n, f, k = shape = tuple(r["shape"])
        label = r["method"]
        for mode in ("fwd", "fwd+bwd"):
            flops, nbytes = roofline_costs(_roofline_of(label), batch, n, f, k, R, 4, mode == "fwd+bwd")
            r[f"roof_{mode}"] = max(flops / limits["gflops"] / 1e6, nbytes / limits["read_gbps"] / 1e6)
        if label.startswith("hand") and label.endswith("CUDA graph"):
            lead = f"{r['fwd+bwd'] / steps[(shape, 'rank1_pool, CUDA graph')]:.2f}x (graphs)"
        elif label.startswith(("hand", "rank1_pool, compiled")):
            lead = f"{r['fwd+bwd'] / steps[(shape, 'rank1_pool')]:.2f}x"
        else:
            lead = ""
        peak = "(graph pool)" if math.isnan(r["peak_x"]) else f"{r['peak_x']:.2f} X"
        lines.append(
            f"| {shape} | {label} | {r['fwd']:.3f} ({r['roof_fwd'] / r['fwd']:.2f}) | "
            f"{r['fwd+bwd']:.3f} ({r['roof_fwd+bwd'] / r['fwd+bwd']:.2f}) | {lead} | {peak} |"
        )
    text = "\n".join(lines) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(out, "gpu.json"), "w") as fh:
        json.dump({**meta, "limits": limits, "rows": rows}, fh, indent=1)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument(
        "--rescore",
        metavar="GPU_JSON",
        help="rewrite a stored run's table in --out with this version's roofline (times kept, nothing run)",
    )
    args = p.parse_args(argv)
    if args.rescore:
        with open(args.rescore) as fh:
            stored = json.load(fh)
        rows, limits = stored.pop("rows"), stored.pop("limits")
        print(report(rows, limits, stored, args.out))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (make bench measures the CPU)", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here, as on the CPU
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    limits = gpu_limits()
    torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch}
    rows = []
    for n, f, k in SHAPES:
        side = round(n**0.5)
        hw = (side, side) if side * side == n else (n, 1)
        x = torch.randn(args.batch, f, *hw, device="cuda", requires_grad=True)
        for label, (fn, params) in _forms(f, k).items():
            measured = [(label, _measure(fn, x, params, args.reps))]
            if label in GRAPHED:
                measured.append((f"{label}, CUDA graph", _measure_graphed(fn, x, params, args.reps)))
            for name, m in measured:
                rows.append({"shape": [n, f, k], "method": name, **m})
                print(f"{(n, f, k)} {name}: fwd {m['fwd']:.3f} ms, fwd+bwd {m['fwd+bwd']:.3f} ms", flush=True)
        del x
        torch.cuda.empty_cache()
    print(report(rows, limits, meta, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
