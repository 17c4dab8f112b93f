"""
Attention maps of a rank-2 head on texture images
=================================================

Six grey images bundled with scikit-image (brick, grass, gravel, moon, immunohistochemistry,
cell) are cut into 32×32 patches, the class being the source image. A small CNN with an
:class:`~lowrank_pool.nn.AttentionalPool` head of rank P = 2 and softmax bottom-up attention
is trained for a few epochs; then :meth:`~lowrank_pool.nn.AttentionalPool.maps` returns, for
every rank component p, the bottom-up saliency σ(X b_p) and the top-down map X a_kp of each
class k. The score is their product averaged over the positions and summed over p.
"""

import time

import matplotlib.pyplot as plt
import torch
from torch import nn

from lowrank_pool.demo.data import textures
from lowrank_pool.nn import AttentionalPool

torch.manual_seed(0)
torch.set_num_threads(2)
data = textures(train_per_class=80, test_per_class=30)
print(data.describe())

net = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
)
head = AttentionalPool(32, len(data.classes), rank=2, attention="softmax")
model = nn.Sequential(net, head)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
start = time.perf_counter()
for _epoch in range(8):
    model.train()
    for batch in torch.randperm(len(data.y_train)).split(32):
        loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
model.eval()
with torch.no_grad():
    acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
print(f"test accuracy {acc:.1%} after 8 epochs ({time.perf_counter() - start:.1f} s)")

# %%
# The maps of one test patch per class
# ------------------------------------
# With P = 2 and a shared bottom-up, ``maps`` gives top_down (B, K, P, H, W) and
# bottom_up (B, P, H, W); softmax maps average 1 over the positions.
picks = torch.stack([torch.nonzero(data.y_test == k)[0, 0] for k in range(len(data.classes))])
with torch.no_grad():
    X = net(data.x_test[picks])
    maps = head.maps(X)
    scores = head(X)
print("top_down", tuple(maps.top_down.shape), "bottom_up", tuple(maps.bottom_up.shape))
print("bottom-up maps average 1:", torch.allclose(maps.bottom_up.mean((-1, -2)), torch.ones(1), atol=1e-5))

fig, axes = plt.subplots(5, len(picks), figsize=(11, 9))
for i, k in enumerate(data.y_test[picks].tolist()):
    axes[0, i].imshow(data.x_test[picks[i], 0], cmap="gray")
    axes[0, i].set_title(f"{data.classes[k]}\npred {data.classes[int(scores[i].argmax())]}", fontsize=8)
    for p in range(2):
        axes[1 + p, i].imshow(maps.bottom_up[i, p], cmap="magma")
        axes[3 + p, i].imshow(maps.top_down[i, k, p], cmap="RdBu_r")
labels = ["patch", "bottom-up σ(X b₁)", "bottom-up σ(X b₂)", "top-down X a_k1", "top-down X a_k2"]
for row, label in enumerate(labels):
    axes[row, 0].set_ylabel(label, fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
