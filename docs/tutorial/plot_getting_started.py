"""
From a feature map to a trained head to its attention maps
===========================================================

A complete worked example on real images that ship inside scikit-learn (the 1,797 8×8
handwritten digits; nothing is downloaded): a small CNN backbone yields a feature map
X (B, f, H, W); an :class:`~lowrank_pool.nn.AttentionalPool` head turns it into class
scores s_k = (X a_k)ᵀ(X b) / n; we train both end to end, compare with average pooling,
and draw the head's top-down (class-specific) and bottom-up (saliency) maps.
"""

# %%
# The data and a backbone
# -----------------------
# Digits are upsampled to 16×16 so the feature map has 8×8 = 64 positions after one
# max-pool. Any backbone that ends in a (B, f, H, W) map works the same way.
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import lowrank_pool as lp
from lowrank_pool.nn import AttentionalPool, FirstOrderPool

torch.manual_seed(0)
torch.set_num_threads(2)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
x = nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
y = torch.tensor(digits.target)
idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25, stratify=digits.target, random_state=0)
x_train, y_train, x_test, y_test = x[idx_train], y[idx_train], x[idx_test], y[idx_test]
print(f"train {tuple(x_train.shape)}, test {tuple(x_test.shape)}")


def backbone() -> nn.Module:
    """Two 3×3 conv blocks: (B, 1, 16, 16) -> (B, 32, 8, 8)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
    )


# %%
# A head on the backbone, trained end to end
# ------------------------------------------
# The head holds A (f, K, P) and B (f, P) and calls :func:`lowrank_pool.rankp_pool`;
# its initial scores are O(1), so the first loss is near ln K.


def train(head: nn.Module, epochs: int = 6) -> tuple[nn.Module, list[float]]:
    model = nn.Sequential(backbone(), head)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y_train)).split(64):
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return model.eval(), losses


def accuracy(model: nn.Module) -> float:
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


results = {}
for name, head in {
    "average pooling": FirstOrderPool(32, 10),
    "attentional, rank 1": AttentionalPool(32, 10, rank=1),
}.items():
    start = time.perf_counter()
    model, losses = train(head)
    results[name] = (model, losses)
    print(f"{name:>20}: first loss {losses[0]:.2f} (ln 10 = {np.log(10):.2f}), "
          f"test accuracy {accuracy(model):.1%}, {time.perf_counter() - start:.1f} s")

fig, ax = plt.subplots(figsize=(6, 3))
for name, (_, losses) in results.items():
    ax.plot(np.convolve(losses, np.ones(10) / 10, mode="valid"), label=name)
ax.set(xlabel="step", ylabel="training loss (running mean)", yscale="log")
ax.legend()
fig.tight_layout()

# %%
# The same scores from the function
# ---------------------------------
# A layer is a holder of parameters around one function: here the trained head's scores
# equal :func:`lowrank_pool.rank1_pool` on the backbone's feature map (plus the bias).
model = results["attentional, rank 1"][0]
features, head = model[0], model[1]
with torch.no_grad():
    X = features(x_test[:8])  # (8, 32, 8, 8)
    by_layer = head(X)
    by_function = lp.rank1_pool(X, head.A[:, :, 0], head.B[:, 0]) + head.bias
print("layer == function:", torch.allclose(by_layer, by_function, atol=1e-5))

# %%
# The attention maps
# ------------------
# :func:`lowrank_pool.attention_maps` returns the top-down map X a_k of every class and
# the class-agnostic bottom-up map X b; the score is the mean over positions of their
# product. Below: each image, its bottom-up saliency, and the top-down map of the
# predicted class.
with torch.no_grad():
    maps = lp.attention_maps(X, head.A[:, :, 0], head.B[:, 0], keep_spatial=True)
    predicted = by_layer.argmax(1)
print("top_down", tuple(maps.top_down.shape), "bottom_up", tuple(maps.bottom_up.shape))

fig, axes = plt.subplots(3, 8, figsize=(10, 4))
for i in range(8):
    k = int(predicted[i])
    axes[0, i].imshow(x_test[i, 0], cmap="gray")
    axes[0, i].set_title(f"true {int(y_test[i])}, pred {k}", fontsize=8)
    axes[1, i].imshow(maps.bottom_up[i], cmap="magma")
    axes[2, i].imshow(maps.top_down[i, k], cmap="RdBu_r")
for row, label in enumerate(["image", "bottom-up X b", "top-down X a_k"]):
    axes[row, 0].set_ylabel(label, fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
