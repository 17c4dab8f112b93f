"""
Two-input fusion: MLB, MFB, MUTAN, BLOCK and MCB as decompositions of one W
===========================================================================

Visual question answering fuses an image vector x (f) and a question vector y (g) through
z_k = xᵀ W_k y with W (K, f, g): the fusion layers of :mod:`lowrank_pool.nn` store W as a CP form
(:class:`~lowrank_pool.nn.MLB`, :class:`~lowrank_pool.nn.MFB`), a Tucker form
(:class:`~lowrank_pool.nn.Mutan`), a sum of small Tuckers (:class:`~lowrank_pool.nn.Block`) or a
Tensor Sketch (:class:`~lowrank_pool.nn.MCB`), and call the two-input functions
(:func:`~lowrank_pool.cp_pool`, :func:`~lowrank_pool.tucker_pool`,
:func:`~lowrank_pool.compact_bilinear_pool` with ``Y``). Here the answer depends on the *product* of
the two inputs (a bilinear rule of rank 3), which no classifier of the concatenation [x, y] can
read: the fusions learn it with a few hundred parameters (docs: :doc:`/family`).
"""

import matplotlib.pyplot as plt
import torch

import lowrank_pool as lp
from lowrank_pool.nn import MCB, MFB, MLB, Block, Mutan

torch.manual_seed(0)
torch.set_num_threads(2)
f, g, k = 16, 12, 5
gen = torch.Generator().manual_seed(0)
w_true = torch.einsum("kr,fr,gr->kfg", *(torch.randn(m, 3, generator=gen) for m in (k, f, g)))  # rank-3 CP


def sample(count):
    x, y = torch.randn(count, f, generator=gen), torch.randn(count, g, generator=gen)
    return x, y, torch.einsum("bf,kfg,bg->bk", x, w_true, y).argmax(1)


x_train, y_train, t_train = sample(4096)
x_test, y_test, t_test = sample(1024)


class Concat(torch.nn.Module):
    """The first-order baseline: a linear classifier of [x, y]."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(f + g, k)

    def forward(self, x, y):
        return self.linear(torch.cat([x, y], dim=1))


models = {
    "concat + linear": Concat(),
    "MLB (CP, R = 8)": MLB(f, g, k, rank=8),
    "MFB (CP, o = 16, k = 4)": MFB(f, g, k, dim=16, factor=4),
    "MUTAN (Tucker 5×6×6)": Mutan(f, g, k, rank=(5, 6, 6)),
    "BLOCK (4 blocks 2×3×3)": Block(f, g, k, blocks=4, rank=(2, 3, 3)),
    "MCB (d = 256)": MCB(f, g, k, dim=256),
}
results = {}
for name, model in models.items():
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _epoch in range(25):
        for i in range(0, 4096, 256):
            loss = torch.nn.functional.cross_entropy(
                model(x_train[i : i + 256], y_train[i : i + 256]), t_train[i : i + 256]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((model(x_test, y_test).argmax(1) == t_test).float().mean())
    params = sum(p.numel() for p in model.parameters())
    results[name] = (params, acc)
    print(f"{name:26s} {params:6d} parameters   test accuracy {100 * acc:5.1f} %")

fig, ax = plt.subplots(figsize=(6.5, 3.8))
for i, (name, (params, acc)) in enumerate(results.items()):
    ax.scatter(params, 100 * acc, color=f"C{i}", label=name, s=40)
ax.axhline(100 / k, color="grey", ls="--", lw=0.8, label="chance")
ax.set_xscale("log")
ax.set_xlabel("parameters (log scale)")
ax.set_ylabel("test accuracy %")
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
fig.tight_layout()

# %%
# The same scores as bilinear pooling of the dense W
# --------------------------------------------------
# Without the papers' tanh, MLB, MUTAN and BLOCK are exactly ⟨x yᵀ, W_k⟩ for the W their factors
# make: here MLB's, checked against :func:`~lowrank_pool.bilinear_pool` with ``Y``.
mlb = models["MLB (CP, R = 8)"]
w = torch.einsum("kr,fr,gr->kfg", mlb.P, mlb.U, mlb.V)
dense = lp.bilinear_pool(x_test[:, None, :], w, Y=y_test[:, None, :]) + mlb.bias
print("MLB equals bilinear_pool of its W:", torch.allclose(mlb(x_test, y_test), dense, atol=1e-5))

# %%
# A trained dense fusion, compressed into each decomposition
# ----------------------------------------------------------
# Train the full W (K, f, g) with :func:`~lowrank_pool.bilinear_pool` (``Y=``: two inputs, n = 1), then fit
# its CP, Tucker and block-term forms (:func:`~lowrank_pool.cp_approx`, :func:`~lowrank_pool.tucker_approx`,
# :func:`~lowrank_pool.block_term_approx`) into the layers with ``from_dense``: no retraining.
w_dense = torch.zeros(k, f, g, requires_grad=True)
opt = torch.optim.AdamW([w_dense], lr=1e-2)
for _ in range(25):
    for i in range(0, 4096, 256):
        xb, yb = x_train[i : i + 256, None, :], y_train[i : i + 256, None, :]
        loss = torch.nn.functional.cross_entropy(lp.bilinear_pool(xb, w_dense, Y=yb), t_train[i : i + 256])
        opt.zero_grad()
        loss.backward()
        opt.step()


def accuracy(model):
    with torch.no_grad():
        return float((model(x_test, y_test).argmax(1) == t_test).float().mean())


dense_acc = accuracy(lambda x, y: lp.bilinear_pool(x[:, None, :], w_dense, Y=y[:, None, :]))
print(f"dense W: {k * f * g} parameters, test accuracy {100 * dense_acc:.1f} %")
w_fit = w_dense.detach()
for name, layer in {
    "MLB.from_dense (CP, R = 3)": MLB.from_dense(w_fit, 3, fit={"n_restarts": 3}),
    "Mutan.from_dense (Tucker 3×3×3)": Mutan.from_dense(w_fit, (3, 3, 3)),
    "Block.from_dense (2 blocks 2×2×2)": Block.from_dense(w_fit, (2, 2, 2), blocks=2),
}.items():
    print(f"{name:34s} {sum(p.numel() for p in layer.parameters()):5d} parameters, accuracy {100 * accuracy(layer):.1f} %")

# %%
# The functions behind the layers take the second input too, on feature maps as well as vectors:
# the bottom-up map of attentional pooling from another layer's map, and the two-input sketch.
maps_x, maps_y = torch.randn(2, f, 7, 7), torch.randn(2, g, 7, 7)
print("rank1_pool with Y:", tuple(lp.rank1_pool(maps_x, torch.randn(f, k), torch.randn(g), Y=maps_y).shape))
print("compact_bilinear_pool with Y:", tuple(lp.compact_bilinear_pool(maps_x, 64, Y=maps_y).shape))
