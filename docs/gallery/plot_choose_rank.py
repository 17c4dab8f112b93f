"""
Choosing a rank for a compressed head
=====================================

A dense bilinear head holds K·f² weights. :func:`lowrank_pool.rank_profile` fits the eigen,
CP and Tucker forms of its W at several ranks and reports, per rank, the relative error on the
symmetric part of W (the only part that changes a score), the parameter count and — given
feature maps and labels — the accuracy of the head with W replaced by the approximation.
The accuracy curve, not the error curve, is what to choose a rank from.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import lowrank_pool as lp
from lowrank_pool.nn import BilinearPool

torch.manual_seed(0)
torch.set_num_threads(2)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
y = torch.tensor(digits.target)
perm = torch.randperm(len(y))
train, test = perm[:1300], perm[1300:]

# %%
# Train a dense bilinear head (f = 24, K = 10: 5,760 weights) on a small CNN.
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
    feats = net(x[test])  # (N, 24, 8, 8): the features the accuracy is measured on

# %%
# The profile of each form. The head brings its own W and bias.
profiles = {
    "eig": lp.rank_profile(head, [1, 2, 3, 4, 6, 8], method="eig", features=feats, labels=y[test], progress=False),
    "cp": lp.rank_profile(head, [2, 4, 8, 16], method="cp", features=feats, labels=y[test], progress=False),
    "tucker": lp.rank_profile(head, [2, 4, 8], method="tucker", features=feats, labels=y[test], progress=False),
}
print(f"dense head: {profiles['eig'].dense_params} weights, accuracy {profiles['eig'].dense_accuracy:.1%}")
for name, prof in profiles.items():
    print(f"--- {name}\n{prof}")

fig, (ax_err, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
for name, prof in profiles.items():
    ax_err.plot(prof.params, prof.errors, "o-", label=name)
    ax_acc.plot(prof.params, np.array(prof.accuracy) * 100, "o-", label=name)
ax_acc.axhline(profiles["eig"].dense_accuracy * 100, color="k", ls="--", label="dense head")
ax_err.set(xscale="log", xlabel="parameters", ylabel="relative error on sym(W)")
ax_acc.set(xscale="log", xlabel="parameters", ylabel="test accuracy %")
ax_acc.legend()
fig.tight_layout()

# %%
# Reading it: the error falls smoothly, but the accuracy reaches the dense head's at a
# rank where much of W's norm is still missing — the features excite only a few
# directions. Past that rank, extra parameters buy nothing. For a head that must stay
# small, :func:`lowrank_pool.nn.compress` with the training features recovers more
# accuracy at a given rank (see the compression example).
