"""
Converting and compressing a trained bilinear head
==================================================

A trained :class:`~lowrank_pool.nn.BilinearPool` converts exactly to a factored head at full
rank (``from_dense``: bias, scale and layout carried over). At low rank the Frobenius-optimal
factors lose accuracy, because they spend rank on directions of W that the features never
excite; :func:`lowrank_pool.nn.compress` given the training features fits W weighted by the
features' second moment and then matches the dense head's scores, and keeps the accuracy.
"""

import time

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from torch import nn

from lowrank_pool.nn import BilinearPool, CPPool, EigPool, compress

torch.manual_seed(0)
torch.set_num_threads(2)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
y = torch.tensor(digits.target)
perm = torch.randperm(len(y))
train, test = perm[:1300], perm[1300:]
net = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
)
head = BilinearPool(24, 10, normalize=None)
model = nn.Sequential(net, head)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for _epoch in range(6):
    model.train()
    for batch in train[torch.randperm(len(train))].split(64):
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
model.eval()
with torch.no_grad():
    f_train, f_test = net(x[train]), net(x[test])


def accuracy(h: nn.Module) -> float:
    with torch.no_grad():
        return (h(f_test).argmax(1) == y[test]).float().mean().item()


print(f"dense head: {head.weight.numel()} weights, accuracy {accuracy(head):.1%}")

# %%
# Exact conversion at full rank
# -----------------------------
full = EigPool.from_dense(head, rank=24)
with torch.no_grad():
    gap = (full(f_test) - head(f_test)).abs().max().item()
print(f"EigPool.from_dense at full rank: max score difference {gap:.1e}")

# %%
# Low rank: the Frobenius fit against compress
# --------------------------------------------
# compress fits W weighted by the features' second moment, then matches the dense scores.
# With the whole training set's feature maps and the default matching (up to 50 L-BFGS epochs,
# early stopping); the printed times are this page's build machine's.
rows = []
for form, cls, ranks in (("eig", EigPool, [1, 2]), ("cp", CPPool, [4, 8])):
    for rank in ranks:
        frob = cls.from_dense(head, rank=rank)
        start = time.perf_counter()
        small = compress(head, rank, form=form, features=f_train, progress=False)
        seconds = time.perf_counter() - start
        params = sum(p.numel() for p in small.parameters())
        rows.append((form, rank, params, accuracy(frob), accuracy(small), seconds))
        print(f"{form:>3} rank {rank:>2} ({params:>4} params): Frobenius {accuracy(frob):.1%}, "
              f"compress {accuracy(small):.1%} ({seconds:.1f} s)")

fig, ax = plt.subplots(figsize=(6, 3.5))
for form, marker in (("eig", "o"), ("cp", "s")):
    sel = [r for r in rows if r[0] == form]
    ax.plot([r[2] for r in sel], [100 * r[3] for r in sel], marker + "--", label=f"{form}: Frobenius fit")
    ax.plot([r[2] for r in sel], [100 * r[4] for r in sel], marker + "-", label=f"{form}: compress")
ax.axhline(100 * accuracy(head), color="k", ls=":", label="dense head")
ax.set(xlabel="head parameters", ylabel="test accuracy %", xscale="log")
ax.legend(fontsize=8)
fig.tight_layout()
