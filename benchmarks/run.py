"""Speed and memory of every lowrank_pool primitive, as ratios measured in one run.

``make bench`` (or ``python benchmarks/run.py``) times each primitive at the reference
shapes (docs/benchmarks.md), against (a) the literal broadcasting form, (b) plain autograd of
the one-GEMM form, (c) tensorly reconstruction then the dense contraction, (d)
``tltorch.TRL`` on the Gram matrix, (e)-(g) what a user writes by hand (plain and compiled), and
this machine's own GEMM throughput and memory bandwidth, measured in the same run. Callables of
one case are timed round-robin so that ratios survive a noisy machine; before each call X is
rewritten, as the layer that produces a feature map leaves it (``--x-state cold`` leaves it as the
other calls left it), and gradients start unset, as after ``zero_grad()``. Writes ``results.md``,
``results.json`` and ``efficiency.png`` to ``--out``. ``--smoke`` runs tiny shapes in seconds (CI);
``--methods`` and ``--shapes`` run a subset.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

# the suite's shared parts (benchmarks/lpbench/, beside this script)
from lpbench.machine import cpu_limits
from lpbench.roofline import SHAPES, SMOKE_SHAPES, gemm_form, reassociated_form, roofline_costs
from lpbench.roofline import efficiency as roofline_efficiency

import lowrank_pool as lp

MEMORY_BUDGET = 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # skip beyond half the RAM


# --------------------------------------------------------------------------- cases
@dataclass
class Result:
    backend: str
    dtype: str
    shape: tuple[int, int, int]
    method: str
    variant: str
    mode: str  # "fwd" or "fwd+bwd"
    flops: float
    nbytes: float
    times: list[float] = field(default_factory=list)
    skipped: str = ""
    baseline_of: str = ""  # for baselines: the method they compete with
    memory_mib: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan


def _data(backend: str, dtype: str, batch: int, n: int, f: int, k: int, nchw: bool, grad: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    side = math.isqrt(n)
    grid = (side, n // side) if side * (n // side) == n else (n, 1)

    def arr(*shape: int, scale: float = 1.0, axes: tuple[int, ...] | None = None) -> Any:
        a = (rng.standard_normal(shape) * scale).astype(dtype)
        if axes is not None:  # a transposed view: this layout in memory, the transposed shape
            a = a.transpose(axes)
        if backend == "numpy":
            return a
        t = torch.from_numpy(a)
        return t.requires_grad_() if grad else t

    x = arr(batch, f, *grid) if nchw else arr(batch, n, f)
    return {
        "X": x,
        "axis": 1 if nchw else -1,
        "A": arr(f, k, scale=f**-0.5),
        "b": arr(f, scale=f**-0.5),
        "AP": arr(4, f, k, scale=f**-0.5, axes=(1, 2, 0)),  # (f, K, P) in a (P, f, K) layout: read in place
        "BP": arr(f, 4, scale=f**-0.5),
        "W": arr(k, f, f, scale=1 / f) if k * f * f * np.dtype(dtype).itemsize < MEMORY_BUDGET / 4 else None,
        "cp": {r: (arr(r), [arr(k, r), arr(f, r, scale=f**-0.5), arr(f, r, scale=f**-0.5)]) for r in (16, 64)},
        "tucker": {
            r: (
                arr(min(r, k), r, r, scale=r**-1),
                [arr(k, min(r, k)), arr(f, r, scale=f**-0.5), arr(f, r, scale=f**-0.5)],
            )
            for r in (16, 64)
        },
    }


@dataclass(frozen=True)
class Ctx:
    """The sizes of one (backend, dtype, shape, mode) group, and whether this is a smoke run."""

    backend: str
    batch: int
    n: int
    f: int
    k: int
    item: int
    grad: bool
    smoke: bool = False


Maker = Callable[[dict[str, Any], str], Callable[[], Any]]


@dataclass(frozen=True)
class Case:
    """One family of rows: what to run (``make(data, path)`` returns the timed callable), where, and its roofline.

    ``needs(ctx)`` gives the bytes a call needs and what for: the row is reported as skipped
    when they exceed ``limit`` times the memory budget. ``unavailable(ctx)`` names a missing
    optional library (or a row a smoke run leaves out). Baselines carry the method they compete with (``baseline_of``).
    """

    method: str
    make: Maker
    roofline: str
    rank: int = 0
    paths: tuple[str, ...] = ("",)
    layouts: tuple[str, ...] = ("bnf", "nchw")
    backends: tuple[str, ...] = ("numpy", "torch")
    baseline_of: str = ""
    needs: Callable[[Ctx, str], tuple[float, str]] | None = None
    limit: float = 1.0
    unavailable: Callable[[Ctx], str] | None = None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def _dense_w(c: Ctx, path: str) -> tuple[float, str]:
    nbytes = c.k * c.f * c.f * c.item if path == "dense" else 0.0
    return nbytes * 2, f"dense W needs {_gib(nbytes)}"


def _bilinear_needs(c: Ctx, _path: str) -> tuple[float, str]:
    total = (c.k * c.f * c.f + c.batch * c.f * c.f) * c.item
    return max(4 * c.k * c.f * c.f * c.item, c.batch * c.f * c.f * c.item * (3 if c.grad else 1)), (
        f"W and Gram need {_gib(total)}"
    )


def _broadcast(d: dict[str, Any], _path: str) -> Callable[[], Any]:
    X, A, b = d["X"], d["A"], d["b"]
    batch, f = X.shape[:2]
    n, k = X[0, 0].numel(), A.shape[1]

    def seed() -> Any:
        xb = X.permute(0, 2, 3, 1).reshape(batch, 1, n, f)
        top = (xb @ A.T.reshape(1, k, f, 1))[..., 0]  # (B, K, n): the (B·K, n, f) broadcast
        return (top * (xb[:, 0] @ b)[:, None, :]).mean(-1)

    return seed


def _autograd_gemm(d: dict[str, Any], _path: str) -> Callable[[], Any]:
    X, A, b = d["X"], d["A"], d["b"]
    return lambda: gemm_form(X, A, b)


_COMPILED: dict[str, Any] = {}


def _compiled(form: Callable[..., Any]) -> Maker:
    """``form`` under torch.compile (inductor), one compiled function per form for every shape and mode."""

    def make(d: dict[str, Any], _path: str) -> Callable[[], Any]:
        if form.__name__ not in _COMPILED:
            # every (shape, dtype, mode) of the run is one more specialisation of the same function
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            _COMPILED[form.__name__] = torch.compile(form, dynamic=False)
        fn = _COMPILED[form.__name__]
        X, A, b = d["X"], d["A"], d["b"]
        return lambda: fn(X, A, b)

    return make


def _compile_unavailable(ctx: Ctx) -> str:
    if ctx.smoke:
        return "torch.compile baselines are left out of --smoke (they measure compile time there)"
    return ""


def _tensorly_cp(r: int) -> Maker:
    def make(d: dict[str, Any], _path: str) -> Callable[[], Any]:
        import tensorly as tl

        X, cp, backend = d["X"], d["cp"][r], "pytorch" if isinstance(d["X"], torch.Tensor) else "numpy"

        def tl_cp() -> Any:
            with tl.backend_context(backend):
                W = tl.cp_to_tensor(cp)
            return lp.bilinear_pool(X, W)

        return tl_cp

    return make


def _trl(r: int) -> Maker:
    def make(d: dict[str, Any], _path: str) -> Callable[[], Any]:
        import tltorch

        X, (k, f) = d["X"], (d["A"].shape[1], d["A"].shape[0])
        trl = tltorch.TRL(input_shape=(f, f), output_shape=(k,), rank=r, factorization="cp", dtype=X.dtype)
        return lambda: trl(lp.gram(X))

    return make


def _tltorch_missing(_ctx: Ctx) -> str:
    try:
        import tltorch  # noqa: F401
    except ImportError as err:
        return f"tensorly-torch not installed ({err})"
    return ""


PATHS = ("auto", "factorized", "dense")
CASES: list[Case] = [
    Case("first_order", lambda d, _: lambda: lp.first_order_pool(d["X"], d["A"]), "first_order"),
    Case("bilinear", lambda d, _: lambda: lp.bilinear_pool(d["X"], d["W"]), "bilinear", needs=_bilinear_needs),
    Case("rank1", lambda d, _: lambda: lp.rank1_pool(d["X"], d["A"], d["b"]), "rank1"),
    Case("rankp", lambda d, _: lambda: lp.rankp_pool(d["X"], d["AP"], d["BP"]), "rankp"),
    Case(
        "compact8192",
        lambda d, _: lambda: lp.compact_bilinear_pool(d["X"], 8192),
        "compact",
        needs=lambda c, _: (c.batch * c.n * 8192 * c.item * 6 * (3 if c.grad else 1), "needs {size}"),
    ),
    *(
        Case(f"{kind}{r}", make, kind, r, PATHS, needs=_dense_w, limit=0.5)
        for r in (16, 64)
        for kind, make in (
            ("cp", lambda d, p, r=r: lambda: lp.cp_pool(d["X"], d["cp"][r], path=p)),
            ("tucker", lambda d, p, r=r: lambda: lp.tucker_pool(d["X"], d["tucker"][r], path=p)),
        )
    ),
    # ---------------------------------------------------------------- baselines (NCHW input)
    Case(
        "(a) broadcast",
        _broadcast,
        "rank1",
        layouts=("nchw",),
        backends=("torch",),
        baseline_of="rank1",
        needs=lambda c, _: (c.batch * c.k * c.n * c.f * c.item * (3 if c.grad else 1), "needs {size}"),
    ),
    Case("(b) autograd GEMM", _autograd_gemm, "rank1", layouts=("nchw",), backends=("torch",), baseline_of="rank1"),
    Case(
        "(e) autograd re-associated",
        lambda d, _: lambda: reassociated_form(d["X"], d["A"], d["b"]),
        "rank1",
        layouts=("nchw",),
        backends=("torch",),
        baseline_of="rank1",
    ),
    *(
        Case(
            name,
            _compiled(form),
            "rank1",
            layouts=("nchw",),
            backends=("torch",),
            baseline_of="rank1",
            unavailable=_compile_unavailable,
        )
        for name, form in (("(f) compiled GEMM", gemm_form), ("(g) compiled re-associated", reassociated_form))
    ),
    *(
        Case(
            f"(c) tensorly cp{r}",
            _tensorly_cp(r),
            "cp",
            r,
            layouts=("nchw",),
            baseline_of=f"cp{r}",
            needs=lambda c, _, r=r: ((c.f * c.f * r + c.k * c.f * c.f) * c.item, "cp_to_tensor needs {size}"),
            limit=0.5,
        )
        for r in (16, 64)
    ),
    *(
        Case(
            f"(d) tltorch.TRL cp{r}",
            _trl(r),
            "cp",
            r,
            layouts=("nchw",),
            backends=("torch",),
            baseline_of=f"cp{r}",
            needs=lambda c, _: (
                (c.batch * c.f * c.f + c.k * c.f * c.f) * c.item * (3 if c.grad else 1),
                "needs {size}",
            ),
            unavailable=_tltorch_missing,
        )
        for r in (16, 64)
    ),
]


def build(
    backend: str,
    dtype: str,
    batch: int,
    shape: tuple[int, int, int],
    mode: str,
    methods: set[str] | None = None,
    smoke: bool = False,
) -> list[tuple[Result, Callable[[], Any] | None]]:
    """Every (result slot, callable) of one (backend, dtype, shape, mode) group, from :data:`CASES`.

    ``methods`` keeps only those methods and the baselines that compete with them.
    """
    n, f, k = shape
    ctx = Ctx(backend, batch, n, f, k, np.dtype(dtype).itemsize, mode == "fwd+bwd", smoke)
    groups: list[tuple[Result, Callable[[], Any] | None]] = []
    for layout in ("bnf", "nchw"):
        d = _data(backend, dtype, batch, n, f, k, layout == "nchw", ctx.grad)
        leaves = _leaves(d)
        for case in CASES:
            if layout not in case.layouts or backend not in case.backends:
                continue
            if methods is not None and case.method not in methods and case.baseline_of not in methods:
                continue
            for path in case.paths:
                flops, nbytes = roofline_costs(
                    case.baseline_of or case.roofline, batch, n, f, k, case.rank, ctx.item, ctx.grad
                )
                variant = f"{layout} {path}".strip()
                res = Result(
                    backend, dtype, shape, case.method, variant, mode, flops, nbytes, baseline_of=case.baseline_of
                )
                res.skipped = _skip(case, ctx, path, d)
                timed = None if res.skipped else _timed(case.make(d, path), ctx.grad)
                if timed is not None:
                    timed.prepare = functools.partial(_prepare, d["X"], leaves)  # type: ignore[attr-defined]
                groups.append((res, timed))
    return groups


def _skip(case: Case, ctx: Ctx, path: str, d: dict[str, Any]) -> str:
    if case.unavailable is not None and (why := case.unavailable(ctx)):
        return why
    if case.method == "bilinear" and d["W"] is None:
        return _bilinear_needs(ctx, path)[1]
    if case.needs is None:
        return ""
    nbytes, why = case.needs(ctx, path)
    return why.format(size=_gib(nbytes)) if nbytes > case.limit * MEMORY_BUDGET else ""


def _prepare(x: Any, leaves: list[Any], produce: bool) -> None:
    """Before a timed call, untimed: unset the gradients (as ``zero_grad(set_to_none=True)`` does; freeing
    another case's large gradient must not land in this call's time) and, with ``produce``, rewrite X in
    place, as the layer that produces it would just before the head reads it."""
    for t in leaves:
        t.grad = None
    if not produce:
        return
    if isinstance(x, torch.Tensor):
        with torch.no_grad():
            x.mul_(1.0)
    else:
        x *= 1.0


def _leaves(d: Any) -> list[Any]:
    """The tensors of a case's data that collect gradients."""
    if isinstance(d, dict):
        return [t for v in d.values() for t in _leaves(v)]
    if isinstance(d, list | tuple):
        return [t for v in d for t in _leaves(v)]
    return [d] if isinstance(d, torch.Tensor) and d.requires_grad else []


def _timed(fn: Callable[[], Any], grad: bool) -> Callable[[], Any]:
    if not grad:
        return fn

    def fwd_bwd() -> None:  # one training step's share: the gradients were unset before (see _prepare)
        fn().sum().backward()

    return fwd_bwd


def time_group(
    group: list[tuple[Result, Callable[[], Any] | None]], rounds: int, budget_s: float, x_state: str = "produced"
) -> None:
    """Round-robin timing; each callable gets at least 3 rounds, fewer than ``rounds`` when slow.

    ``x_state="produced"``: X is rewritten just before each timed call (outside the timing), as the
    layer that produces a feature map leaves it: in the cache when it fits, in memory when it does not.
    ``"cold"``: X is left as the previous callables of the round left it (usually evicted by them).
    """
    live = []
    for res, fn in group:  # warm-up (and the cost estimate), and drop what fails
        if fn is None:
            continue
        try:
            t = time.perf_counter()
            fn()
            live.append((res, fn, time.perf_counter() - t))
        except Exception as err:  # a baseline library may fail: report it, keep going
            res.skipped = f"failed: {type(err).__name__}: {err}"[:160]
    per_round = sum(t for *_, t in live)
    n_rounds = max(3, min(rounds, int(budget_s / max(per_round, 1e-9))))
    # No garbage collection inside the rounds: a training loop does not collect before every step, and a
    # collection before each call made every small call pay ~0.7 ms of re-faulted interpreter memory here.
    gc.collect()
    gc.disable()
    try:
        for _ in range(n_rounds):
            for res, fn, _ in live:
                fn.prepare(x_state == "produced")  # type: ignore[attr-defined]
                t = time.perf_counter()
                fn()
                res.times.append(time.perf_counter() - t)
    finally:
        gc.enable()


# --------------------------------------------------------------------------- memory
MEMORY_METHODS = ("rank1", "rankp", "cp16", "cp64", "tucker16", "tucker64", "(b) autograd GEMM", "(a) broadcast")


# A fixed mmap threshold: every buffer above it is a fresh mapping returned to the system when
# freed. glibc's default threshold grows after the first large free, after which the measured
# call reuses the warm-up's heap pages and its peak RSS no longer shows its own buffers.
MEMORY_CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(spec: dict[str, Any]) -> None:
    """Run one case once in this fresh process and print its peak RSS beyond the set-up (MiB).

    Linux only: writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current
    RSS after the inputs exist and one warm-up call has run (one-time MKL/autograd-engine
    buffers, ~5-7 MiB, are not the call's), so the peak that follows is the call's own.
    """
    torch.set_num_threads(2)
    groups = build("torch", spec["dtype"], spec["batch"], tuple(spec["shape"]), spec["mode"])
    fn = next((fn for res, fn in groups if res.method == spec["method"] and res.variant == spec["variant"]), None)
    groups = [(res, f) for res, f in groups if f is fn]  # drop the other cases' data
    gc.collect()
    if fn is None:
        print(json.dumps({"mib": None}))
        return
    fn()  # warm-up
    fn.prepare(False)  # type: ignore[attr-defined]  # the warm-up's gradients are not the measured call's memory,
    lp.empty_cache()  # and neither is a ∂X buffer the kernel kept from it: the measured call allocates its own
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        print(json.dumps({"mib": None}))
        return
    base = _status_kib("VmRSS")
    fn()
    print(json.dumps({"mib": (_status_kib("VmHWM") - base) / 1024}))


def measure_memory(results: list[Result], batch: int) -> None:
    for res in results:
        if res.backend != "torch" or res.dtype != "float32" or res.skipped or res.variant not in ("nchw", "nchw auto"):
            continue
        if res.method not in MEMORY_METHODS:
            continue
        spec = {"dtype": res.dtype, "batch": batch, "shape": res.shape, "mode": res.mode, "method": res.method,
                "variant": res.variant}  # fmt: skip
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
            env=MEMORY_CHILD_ENV,
        )
        try:
            res.memory_mib = json.loads(out.stdout.strip().splitlines()[-1])["mib"]
        except (IndexError, json.JSONDecodeError, KeyError):
            res.memory_mib = None


# --------------------------------------------------------------------------- report
def efficiency(res: Result, limits: dict[str, float]) -> float:
    gflops = limits[f"{res.backend}_{res.dtype}_gflops"]
    return (
        roofline_efficiency(res.flops, res.nbytes, res.median, gflops, limits["read_gbps"]) if res.times else math.nan
    )


def report(results: list[Result], limits: dict[str, float], out: str, meta: dict[str, Any]) -> str:
    os.makedirs(out, exist_ok=True)
    by_key = {(r.backend, r.dtype, r.shape, r.mode, r.method, r.variant): r for r in results}
    lines = [
        "# lowrank_pool benchmark",
        "",
        f"{meta['machine']}; torch {torch.__version__}, numpy {np.__version__}, {meta['threads']} threads, "
        f"batch {meta['batch']}, {meta['rounds']} round-robin rounds, X {meta.get('x_state', 'cold')} before each call "
        "(produced: rewritten just before it, as by the layer that computes it; cold: as the previous calls left it).",
        "",
        "Machine limits measured in this run: " + ", ".join(f"{k} {v:.1f}" for k, v in limits.items()),
        "",
        "`eff` = roofline time (max of FLOPs / GEMM peak and bytes / bandwidth, for the cheapest known",
        "algorithm) over the median time. `vs` columns: baseline time / our time (>1 means we are faster).",
        "",
        "| backend | dtype | (n, f, K) | mode | method | input/path | median ms | min–max ms | GF/s | GB/s | eff | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(
                f"| {r.backend} | {r.dtype} | {r.shape} | {r.mode} | {r.method} | {r.variant} | – | – | – | – | – | skipped: {r.skipped} |"
            )
            continue
        med = r.median
        notes = []
        if r.variant.startswith("nchw") and not r.baseline_of and not r.variant.endswith(("factorized", "dense")):
            other = by_key.get((r.backend, r.dtype, r.shape, r.mode, r.method, r.variant.replace("nchw", "bnf")))
            if other and other.times:
                notes.append(f"NCHW/bnf {med / other.median:.2f}")
        if r.variant.endswith("auto"):
            layout = r.variant.split()[0]
            forced = [
                by_key.get((r.backend, r.dtype, r.shape, r.mode, r.method, f"{layout} {p}"))
                for p in ("factorized", "dense")
            ]
            best = min((x.median for x in forced if x and x.times), default=math.nan)
            notes.append(f"auto/best forced {med / best:.2f}")
        if r.baseline_of:
            ours = by_key.get(
                (
                    r.backend,
                    r.dtype,
                    r.shape,
                    r.mode,
                    r.baseline_of,
                    "nchw auto" if r.baseline_of.startswith("cp") else "nchw",
                )
            )
            if ours and ours.times:
                notes.append(f"ours is {med / ours.median:.1f}x faster")
        if r.memory_mib is not None:
            notes.append(f"peak +{r.memory_mib:.1f} MiB")
            fwd = by_key.get((r.backend, r.dtype, r.shape, "fwd", r.method, r.variant))
            if r.mode == "fwd+bwd" and fwd is not None and fwd.memory_mib:
                notes.append(f"fwd+bwd/fwd memory {r.memory_mib / fwd.memory_mib:.1f}")
        lines.append(
            f"| {r.backend} | {r.dtype} | {r.shape} | {r.mode} | {r.method} | {r.variant} | {med * 1e3:.2f} | "
            f"{min(r.times) * 1e3:.2f}–{max(r.times) * 1e3:.2f} | {r.flops / med / 1e9:.1f} | {r.nbytes / med / 1e9:.1f} | "
            f"{efficiency(r, limits):.0%} | {'; '.join(notes)} |"
        )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(text)
    payload = {
        "meta": meta,
        "limits": limits,
        "results": [dict(asdict(r), median=r.median, efficiency=efficiency(r, limits)) for r in results],
    }
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(payload, fh, indent=1, default=str)
    _plot(results, limits, os.path.join(out, "efficiency.png"))
    return text


def _plot(results: list[Result], limits: dict[str, float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["first_order", "bilinear", "rank1", "rankp", "cp16", "cp64", "tucker16", "tucker64"]
    shapes = sorted({r.shape for r in results})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, mode in zip(axes, ("fwd", "fwd+bwd"), strict=True):
        width = 0.8 / max(len(shapes), 1)
        for i, shape in enumerate(shapes):
            vals = []
            for m in methods:
                variant = "nchw auto" if m.startswith(("cp", "tucker")) else "nchw"
                r = next(
                    (
                        r
                        for r in results
                        if (r.backend, r.dtype, r.shape, r.mode, r.method, r.variant)
                        == ("torch", "float32", shape, mode, m, variant)
                    ),
                    None,
                )
                vals.append(efficiency(r, limits) if r and r.times else 0.0)
            ax.bar([j + i * width for j in range(len(methods))], vals, width, label=str(shape))
        ax.axhline(0.7 if mode == "fwd" else 0.5, color="k", lw=0.8, ls=":")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(methods))], methods, rotation=30)
        ax.set_title(f"torch float32 {mode}, NCHW input: roofline efficiency")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("roofline efficiency")
    axes[1].legend(title="(n, f, K)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rescore(path: str, out: str) -> str:
    """A stored run's report (``results.json``) rewritten in ``out`` with this version's roofline: the
    measured times, memory and machine limits are kept; each row's FLOPs and bytes, and so its efficiency,
    are recomputed by :func:`roofline_costs` (for when the roofline model changes after a run)."""
    with open(path) as fh:
        payload = json.load(fh)
    meta, batch = payload["meta"], payload["meta"]["batch"]
    cases = {(c.method, c.baseline_of): c for c in CASES}
    results = []
    for row in payload["results"]:
        row = {k: v for k, v in row.items() if k not in ("median", "efficiency")}
        row["shape"] = tuple(row["shape"])
        res = Result(**row)
        case = cases[(res.method, res.baseline_of)]
        n, f, k = res.shape
        res.flops, res.nbytes = roofline_costs(
            case.baseline_of or case.roofline, batch, n, f, k, case.rank, np.dtype(res.dtype).itemsize,
            res.mode == "fwd+bwd",
        )  # fmt: skip
        results.append(res)
    return report(results, payload["limits"], out, meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 2 rounds: checks the command works")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--backends", default="numpy,torch")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--methods", help="only these methods (comma-separated, e.g. rank1,rankp,cp64) and their baselines")
    p.add_argument(
        "--x-state",
        choices=("produced", "cold"),
        default="produced",
        help="X rewritten just before each call, as its producing layer leaves it (default), or left cold",
    )
    p.add_argument("--shapes", help="only these reference shapes, by position (comma-separated, e.g. 0,2)")
    p.add_argument("--group-seconds", type=float, default=20.0, help="time budget of one group's rounds")
    p.add_argument(
        "--rescore",
        metavar="RESULTS_JSON",
        help="rewrite a stored run's report in --out with this version's roofline (times kept, nothing run)",
    )
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rescore:
        print(rescore(args.rescore, args.out))
        return 0
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return 0
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.smoke else 7)
    batch = 4 if args.smoke else 32
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    if args.shapes:
        shapes = [shapes[int(i)] for i in args.shapes.split(",")]
    methods = set(args.methods.split(",")) if args.methods else None
    limits = cpu_limits(args.smoke, 3 if args.smoke else 5)
    print("machine:", ", ".join(f"{k} {v:.1f}" for k, v in limits.items()), flush=True)
    results: list[Result] = []
    for shape in shapes:
        for backend in args.backends.split(","):
            for dtype in args.dtypes.split(","):
                for mode in ("fwd", "fwd+bwd") if backend == "torch" else ("fwd",):
                    group = build(backend, dtype, batch, shape, mode, methods, args.smoke)
                    time_group(group, rounds, args.group_seconds, args.x_state)
                    results.extend(res for res, _ in group)
                    print(f"  {backend} {dtype} {shape} {mode}: {len(group)} cases", flush=True)
                    del group
                    gc.collect()
    if not args.no_memory:
        measure_memory(results, batch)
    meta = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
            "threads": args.threads, "batch": batch, "rounds": rounds, "smoke": args.smoke,
            "x_state": args.x_state}  # fmt: skip
    text = report(results, limits, args.out, meta)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
