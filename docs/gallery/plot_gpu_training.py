"""
Training on a GPU: capture the step in a CUDA graph
===================================================

A pooling head is a few small products. On a GPU, run eagerly, its training step costs what Python
and the kernel launches cost, not what the device does: about 1–1.5 ms per step on an H100 at batch
32 whatever the shape, where the device needs 0.01–0.2 ms (see :doc:`/benchmarks`, "On a GPU").
Capturing the step once in a CUDA graph and replaying it removes the host's share. Every head's step
is tested under capture (replayed on new batches it gives the eager step's loss and gradients).

This page trains an :class:`~lowrank_pool.nn.AttentionalPool` head on synthetic features, eagerly
and, where a CUDA device answers, through a captured graph, and checks that both give the same
losses. It was built on a machine without a GPU: the code below then runs the eager loop on the CPU,
and the last plot shows the stored H100 measurements of ``benchmarks/gpu.py``. Run on an H100
(torch 2.11), this page printed: eager 1.569 ms per training step (forward, cross-entropy, backward,
SGD step), graphed 0.091 ms, and the two loss curves of 100 steps equal to the last digit.
"""

import copy
import json
import pathlib
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from lowrank_pool.nn import AttentionalPool

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
B, C, H, W, K = 32, 256, 7, 7, 10
centres = torch.randn(K, C, device=device)  # each class shifts the features by its own direction


def batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone-like features (B, C, H, W) with a class signal, and their labels."""
    y = torch.randint(0, K, (B,), generator=g).to(device)
    x = torch.randn(B, C, H, W, generator=g).to(device) + 0.2 * centres[y][:, :, None, None]
    return x, y


head = AttentionalPool(C, K, rank=2).to(device)
start = copy.deepcopy(head.state_dict())


def train_eager(steps: int) -> list[float]:
    """The usual loop: forward, backward and optimizer step, one Python call after another."""
    head.load_state_dict(start)
    opt = torch.optim.SGD(head.parameters(), lr=0.03, momentum=0.9)
    g, losses = torch.Generator().manual_seed(1), []
    for _ in range(steps):
        x, y = batch(g)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


eager = train_eager(40)
print(f"eager, {device}: loss {eager[0]:.3f} -> {eager[-1]:.3f} in {len(eager)} steps")

# %%
# The captured step
# -----------------
# The recipe of ``torch.cuda.graph`` for a whole step: static input tensors, a few warm-up steps on
# a side stream (they let cuBLAS and the optimizer allocate their state outside the capture), then
# one captured forward, backward and optimizer step. Each training step copies its batch into the
# static tensors and replays the graph. (``torch.compile(model, mode="reduce-overhead")`` builds such
# graphs itself.) The warm-up steps train the head too, so the comparison with the eager loop starts
# both from the state the warm-up left.


def capture(opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, warmup: int = 3):
    """Capture one training step on static copies of (x, y); returns step(x, y) -> loss (a device tensor)."""
    static_x, static_y = x.clone(), y.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(head(static_x), static_y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = F.cross_entropy(head(static_x), static_y)
        static_loss.backward()
        opt.step()

    static_loss = static_loss.detach()  # (the same memory; no reference left to the captured autograd graph)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return static_loss

    return step


def train_graphed(steps: int) -> tuple[list[float], list[float], float, float]:
    """Losses of the eager and the graphed loop from the same state, and their times per step (ms)."""
    head.load_state_dict(start)
    opt = torch.optim.SGD(head.parameters(), lr=0.03, momentum=0.9)
    step = capture(opt, *batch(torch.Generator().manual_seed(2)))
    params = list(head.parameters())
    saved = [t.detach().clone() for p in params for t in (p, opt.state[p]["momentum_buffer"])]
    g = torch.Generator().manual_seed(1)
    batches = [batch(g) for _ in range(steps)]  # on the device before the clock starts
    results = []
    for graphed in (False, True):
        with torch.no_grad():  # back to the state the warm-up left, in place: the graph holds these very tensors
            live = [t for p in params for t in (p, opt.state[p]["momentum_buffer"])]
            for t, v in zip(live, saved, strict=True):
                t.copy_(v)
        losses = []
        torch.cuda.synchronize()
        t = time.perf_counter()
        for x, y in batches:
            if graphed:
                losses.append(step(x, y).detach().clone())
            else:
                opt.zero_grad(set_to_none=False)  # the graph's gradient tensors stay where they are
                loss = F.cross_entropy(head(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
        torch.cuda.synchronize()
        results.append(([v.item() for v in losses], (time.perf_counter() - t) / steps * 1e3))
    (eager_l, eager_ms), (graph_l, graph_ms) = results
    return eager_l, graph_l, eager_ms, graph_ms


if device == "cuda":
    eager_l, graph_l, eager_ms, graph_ms = train_graphed(100)
    gap = max(abs(a - b) for a, b in zip(eager_l, graph_l, strict=True))
    print(f"eager {eager_ms:.3f} ms/step, graphed {graph_ms:.3f} ms/step (batch {B}, the head alone)")
    print(f"largest difference between the two loss curves: {gap:.2e}")
    assert gap < 1e-3, gap
else:
    print("no CUDA device here: the captured loop is shown, not run (its test runs on GPUs)")

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(eager, label=f"eager ({device})")
ax.set(xlabel="step", ylabel="cross-entropy", title="AttentionalPool (rank 2) on synthetic features")
ax.legend()
fig.tight_layout()

# %%
# What capture buys on an H100
# ----------------------------
# ``benchmarks/gpu.py`` (batch 32, NCHW float32) times each head's forward+backward eagerly and
# replayed from a graph, and the hand-written re-associated form of rank-1 attention for reference.

root = pathlib.Path.cwd()
while not (root / "docs" / "benchmarks").is_dir() and root.parent != root:
    root = root.parent
stored = json.loads((root / "docs" / "benchmarks" / "gpu_b32.json").read_text())
rows = {(tuple(r["shape"]), r["method"]): r for r in stored["rows"]}
shapes = sorted({s for s, _ in rows}, key=lambda s: [r["shape"] for r in stored["rows"]].index(list(s)))
methods = ["rank1_pool", "rankp_pool (P = 4)", "cp_pool (R = 64)", "hand: re-associated"]
fig, axes = plt.subplots(1, len(methods), figsize=(12, 3), sharey=True)
for ax, m in zip(axes, methods, strict=True):
    pos = range(len(shapes))
    ax.bar([p - 0.2 for p in pos], [rows[(s, m)]["fwd+bwd"] for s in shapes], 0.4, label="eager")
    ax.bar([p + 0.2 for p in pos], [rows[(s, m + ", CUDA graph")]["fwd+bwd"] for s in shapes], 0.4, label="graph")
    ax.set(title=m, xticks=list(pos), xticklabels=[f"{s[0]},{s[1]},{s[2]}" for s in shapes])
    ax.tick_params(axis="x", labelsize=7)
axes[0].set(ylabel="forward+backward, ms")
axes[0].legend(fontsize=8)
fig.suptitle(f"{stored['device']}, torch {stored['torch']}, batch {stored['batch']} (n, f, K)", fontsize=9)
fig.tight_layout()
for s in shapes:
    ours, hand = rows[(s, "rank1_pool, CUDA graph")]["fwd+bwd"], rows[(s, "hand: re-associated, CUDA graph")]["fwd+bwd"]
    eager_ours = rows[(s, "rank1_pool")]["fwd+bwd"]
    print(f"{s}: rank1_pool eager {eager_ours:.3f} ms, graphed {ours:.3f} ms; hand-written form graphed {hand:.3f} ms")
