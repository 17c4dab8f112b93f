"""
Training a head with DistributedDataParallel
============================================

The heads are ordinary ``torch.nn.Module`` s: DistributedDataParallel averages their
gradients like any other layer's. This example writes a small training script, runs it as two
processes (the gloo backend on the CPU; NCCL on GPUs is the same code with ``backend="nccl"``
and one device per rank), and checks that the two ranks, each on half of every batch, end with
the same parameters as one process trained on the whole batches.
"""

import os
import subprocess
import sys
import tempfile
import textwrap

import matplotlib.pyplot as plt
import torch

SCRIPT = textwrap.dedent(
    '''
    import os, sys, torch, torch.distributed as dist
    from lowrank_pool.nn import AttentionalPool

    rank, world, out = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), sys.argv[1]
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    torch.manual_seed(0)                                   # the same initial parameters on every rank
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), AttentionalPool(16, 5, rank=2))
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)                   # the same data stream on every rank
    losses = []
    for step in range(30):
        x, y = torch.randn(16, 3, 10, 10, generator=g), torch.randint(0, 5, (16,), generator=g)
        x, y = x + y[:, None, None, None] * 0.3, y          # a learnable signal
        shard = slice(rank * 16 // world, (rank + 1) * 16 // world)
        loss = torch.nn.functional.cross_entropy(model(x[shard]), y[shard])
        opt.zero_grad()
        loss.backward()                                     # DDP averages the gradients here
        opt.step()
        losses.append(loss.item())
    state = {k.removeprefix("module."): v for k, v in model.state_dict().items()}
    torch.save({"state": state, "losses": losses}, f"{out}/world{world}_rank{rank}.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    '''
)

out = tempfile.mkdtemp()
script = os.path.join(out, "train.py")
with open(script, "w") as f:
    f.write(SCRIPT)


def launch(world: int) -> None:
    procs = [
        subprocess.Popen([sys.executable, script, out], env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(world)})
        for r in range(world)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * world, codes


launch(2)  # two ranks, half a batch each
launch(1)  # one process, the whole batch
ranks = [torch.load(os.path.join(out, f"world2_rank{r}.pt")) for r in range(2)]
single = torch.load(os.path.join(out, "world1_rank0.pt"))

# %%
# The ranks agree with each other and with one process on the whole batches.
for name, value in single["state"].items():
    diff = max((ranks[r]["state"][name] - value).abs().max().item() for r in range(2))
    print(f"{name:>10}: max |DDP rank - single process| = {diff:.1e}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(single["losses"], label="one process, batch 16")
for r in range(2):
    ax.plot(ranks[r]["losses"], alpha=0.7, label=f"DDP rank {r}, its half batch")
ax.set(xlabel="step", ylabel="training loss")
ax.legend(fontsize=8)
fig.tight_layout()
