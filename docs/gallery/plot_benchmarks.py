"""
Benchmarks: the re-associated kernel against its baselines
==========================================================

Two parts. First, a small benchmark that runs *while this page is built*: rank-1 attentional
pooling computed the package's way, aᵀ(Xᵀ(X b)), against (a) the literal broadcasting form
and (b) projecting X on [A | b], with the machine's float32 GEMM rate measured in the same run;
only ratios from one run are compared, because absolute times on a shared machine are noisy.
Second, the plots of the last full ``make bench`` run (its figures and machine are on the
:doc:`/benchmarks` page).
"""

import json
import pathlib
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import lowrank_pool as lp

torch.set_num_threads(1)  # one thread: no oversubscription if the machine is shared
torch.manual_seed(0)


def best_s(fn, rounds=7):
    """The fastest of ``rounds`` calls after a warm-up: on a shared machine the minimum is the
    least disturbed estimate of what the code itself costs."""
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


a = torch.randn(1024, 1024)
gemm_gflops = 2 * 1024**3 / best_s(lambda: a @ a) / 1e9
print(f"this machine: float32 GEMM {gemm_gflops:.0f} GFLOP/s (1 thread)")

B = 8


def measure(n: int, f: int, K: int) -> tuple[float, float, float]:
    """Seconds of rank1_pool, the literal broadcast and the projection on [A | b]."""
    X, A, b = torch.rand(B, n, f), torch.randn(f, K), torch.randn(f)
    AB = torch.cat([A, b[:, None]], 1)
    ours = best_s(lambda: lp.rank1_pool(X, A, b))
    broadcast = best_s(lambda: ((X[:, None] * A.T[None, :, None]).sum(-1) * (X @ b)[:, None]).mean(-1), rounds=3)
    projection = best_s(lambda: (lambda P: (P[..., :K] * P[..., K:]).mean(1))(X @ AB))
    return ours, broadcast, projection


rows = []
for n, f, K in ((49, 512, 100), (196, 512, 100), (196, 1024, 400)):
    ours, broadcast, projection = measure(n, f, K)
    rows.append(((n, f, K), ours, broadcast, projection))
    gflops = 2 * B * (2 * n * f + f * K) / ours / 1e9
    print(f"n={n:>3} f={f:>4} K={K:>3}: {ours * 1e3:6.2f} ms ({gflops / gemm_gflops:.0%} of the GEMM rate: it is bandwidth-bound), "
          f"broadcast {broadcast / ours:6.0f}× slower, projection on [A|b] {projection / ours:5.1f}× slower")

fig, ax = plt.subplots(figsize=(7, 3))
labels = [f"n={s[0]}, f={s[1]}, K={s[2]}" for s, *_ in rows]
pos = np.arange(len(rows))
ax.bar(pos - 0.2, [r[2] / r[1] for r in rows], 0.4, label="(a) literal broadcast")
ax.bar(pos + 0.2, [r[3] / r[1] for r in rows], 0.4, label="(b) projection on [A | b]")
ax.set(xticks=pos, xticklabels=labels, yscale="log", ylabel="time / rank1_pool time")
ax.axhline(1, color="k", lw=0.8)
ax.legend(fontsize=8)
ax.set_title(f"torch float32, B={B}, 1 thread, measured while building this page", fontsize=9)
fig.tight_layout()

# %%
# The last full run
# -----------------
# ``make bench`` measures every primitive at four reference shapes, numpy and torch, forward
# and backward, with the roofline efficiency of each: the time the cheapest known algorithm
# needs at the machine's GEMM peak and memory bandwidth, divided by the measured median.
here = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
full = json.loads((here.parent / "benchmarks" / "results.json").read_text())
print("machine:", full["meta"]["machine"], "| limits:", {k: round(v, 1) for k, v in full["limits"].items()})
methods = ["first_order", "rank1", "rankp", "bilinear", "cp16", "cp64", "tucker16", "tucker64"]
fig, ax = plt.subplots(figsize=(8, 3.2))
for offset, (mode, colour) in enumerate((("fwd", "C0"), ("fwd+bwd", "C1"))):
    effs = []
    for m in methods:
        sel = [r["efficiency"] for r in full["results"] if r["backend"] == "torch" and r["dtype"] == "float32"
               and r["mode"] == mode and r["method"] == m and not r["baseline_of"] and r.get("efficiency")
               and r["variant"] in ("nchw", "nchw auto")]
        effs.append(np.median(sel) if sel else np.nan)
    ax.bar(np.arange(len(methods)) + (offset - 0.5) * 0.4, effs, 0.4, color=colour, label=mode)
ax.set(xticks=np.arange(len(methods)), xticklabels=methods, ylabel="roofline efficiency (median over shapes)")
ax.legend(fontsize=8)
ax.set_title("torch float32, NCHW input, path='auto' (last full make bench run)", fontsize=9)
fig.tight_layout()
