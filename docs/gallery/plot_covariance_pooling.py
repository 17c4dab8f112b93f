"""
Covariance pooling (iSQRT-COV) when the class is in the correlations
=====================================================================

A first-order head sees the mean feature; a second-order head sees how channels vary together.
Here every class has the same mean feature and differs only in which channels are correlated
across positions, so mean pooling cannot beat chance. :class:`~lowrank_pool.nn.CovariancePool`
pools the centred covariance Σ = (1/n) Xᵀ(I − 11ᵀ/n)X, takes iSQRT-COV's Newton–Schulz square root
(trace pre-normalisation, post-compensation) and classifies its upper triangle
(:func:`~lowrank_pool.triu_vec`): the numbers of fast-MPN-COV's ``CovpoolLayer``, ``SqrtmLayer`` and
``TriuvecLayer`` (docs: :doc:`/family`).
"""

import matplotlib.pyplot as plt
import torch

import lowrank_pool as lp
from lowrank_pool.nn import BilinearPool, CovariancePool, FirstOrderPool

torch.manual_seed(0)
torch.set_num_threads(2)
f, n, k = 12, 49, 4


def sample(count, generator):
    """Feature maps (count, f, 7, 7): ReLU(1 + z) with every channel of z N(0, 1) at every position, for every
    class; the class decides which three channels share a common factor (are correlated)."""
    labels = torch.randint(0, k, (count,), generator=generator)
    z = torch.randn(count, n, f, generator=generator)
    shared = torch.randn(count, n, k, generator=generator)
    for c in range(k):  # class c couples channels 3c, 3c+1, 3c+2 through one shared factor
        rows = labels == c
        z[rows, :, 3 * c : 3 * c + 3] = (z[rows, :, 3 * c : 3 * c + 3] + 1.5 * shared[rows, :, c : c + 1]) / (
            1 + 1.5**2
        ) ** 0.5  # still N(0, 1)
    x = torch.relu(1.0 + z)
    return x.transpose(1, 2).reshape(count, f, 7, 7), labels


g = torch.Generator().manual_seed(1)
x_train, y_train = sample(1024, g)
x_test, y_test = sample(512, g)
means = torch.stack([x_train[y_train == c].mean((0, 2, 3)) for c in range(k)])
print("largest difference between two classes' mean features:", float((means[:, None] - means[None]).abs().max()))

# %%
# Train three heads with the same optimiser and learning rate.
heads = {
    "mean pooling": FirstOrderPool(f, k),
    "bilinear (uncentred M, signed sqrt + l2)": BilinearPool(f, k),
    "CovariancePool (iSQRT-COV)": CovariancePool(f, k),
}
curves = {}
for name, head in heads.items():
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    acc = []
    for _epoch in range(30):
        for i in range(0, 1024, 128):
            loss = torch.nn.functional.cross_entropy(head(x_train[i : i + 128]), y_train[i : i + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc.append(float((head(x_test).argmax(1) == y_test).float().mean()))
    curves[name] = acc
    print(f"{name:45s} test accuracy {100 * acc[-1]:.1f} %")

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, acc in curves.items():
    ax.plot(range(1, 31), [100 * a for a in acc], label=name)
ax.axhline(100 / k, color="grey", ls="--", lw=0.8, label="chance")
ax.set_xlabel("epoch")
ax.set_ylabel("test accuracy %")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# The descriptor itself: centring matters
# ---------------------------------------
# On these ReLU features the uncentred root and iSQRT-COV's descriptor are far apart: the mean
# feature dominates the uncentred second moment.
sigma = lp.triu_vec(lp.matrix_sqrt(lp.gram(x_test, center=True), method="newton_schulz"))
plain = lp.triu_vec(lp.matrix_sqrt(lp.gram(x_test), method="newton_schulz"))
print("relative distance:", float(((plain - sigma).norm(dim=1) / sigma.norm(dim=1)).mean()))
print("descriptor size:", sigma.shape[1], "features for f =", f, "(f(f+1)/2 instead of f² =", f * f, ")")
