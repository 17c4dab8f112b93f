"""
numpy, PyTorch and JAX from the same call
=========================================

Every pooling function takes arrays of any array-API library and returns an array of the
same library, device and dtype: the math is written once. Here one call runs on numpy,
torch and JAX, the results agree to float64 rounding, and JAX's ``jit``, ``grad`` and
``vmap`` and torch's autograd go through it.
"""

import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch

import lowrank_pool as lp

jax.config.update("jax_enable_x64", True)
rng = np.random.default_rng(0)
X = rng.random((16, 49, 256))  # (B, n, f): 7×7 maps, 256 channels
A, b = rng.standard_normal((256, 40)), rng.standard_normal(256)

results = {
    "numpy": lp.rank1_pool(X, A, b),
    "torch": lp.rank1_pool(torch.from_numpy(X), torch.from_numpy(A), torch.from_numpy(b)),
    "jax": lp.rank1_pool(jnp.asarray(X), jnp.asarray(A), jnp.asarray(b)),
}
for name, s in results.items():
    print(f"{name:>5}: {type(s).__module__}.{type(s).__name__} {tuple(s.shape)} {s.dtype}")
reference = results["numpy"]
for name in ("torch", "jax"):
    print(f"max |{name} - numpy| = {np.max(np.abs(np.asarray(results[name]) - reference)):.2e}")

# %%
# Transformations
# ---------------
# ``jax.jit`` compiles the call (no Python branching on traced values inside), ``jax.grad``
# differentiates it, ``jax.vmap`` maps it over a leading axis; torch autograd gives the
# same gradient.
f = jax.jit(lambda X, A, b: lp.rank1_pool(X, A, b).sum())
g_jax = jax.grad(f, argnums=2)(jnp.asarray(X), jnp.asarray(A), jnp.asarray(b))
bt = torch.from_numpy(b).requires_grad_()
lp.rank1_pool(torch.from_numpy(X), torch.from_numpy(A), bt).sum().backward()
print(f"max |grad_b jax - grad_b torch| = {np.max(np.abs(np.asarray(g_jax) - bt.grad.numpy())):.2e}")
per_group = jax.vmap(lambda Xg: lp.rank1_pool(Xg, jnp.asarray(A), jnp.asarray(b)))(jnp.asarray(X).reshape(4, 4, 49, 256))
print("vmap over 4 groups:", per_group.shape, np.allclose(np.asarray(per_group).reshape(16, 40), reference))

# %%
# Time per call on this machine
# -----------------------------
# Median of 20 calls, float32, after a warm-up (JAX: the jitted function).


def median_ms(fn, *args):
    fn(*args)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        out = fn(*args)
        if hasattr(out, "block_until_ready"):
            out.block_until_ready()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


X32, A32, b32 = (v.astype(np.float32) for v in (X, A, b))
timings = {
    "numpy": median_ms(lp.rank1_pool, X32, A32, b32),
    "torch": median_ms(lp.rank1_pool, *(torch.from_numpy(v) for v in (X32, A32, b32))),
    "jax (jit)": median_ms(jax.jit(lp.rank1_pool), *(jnp.asarray(v) for v in (X32, A32, b32))),
}
for name, ms in timings.items():
    print(f"{name:>9}: {ms:.3f} ms")
fig, ax = plt.subplots(figsize=(5, 2.5))
ax.barh(list(timings), list(timings.values()))
ax.set_xlabel("ms per call (B=16, n=49, f=256, K=40, float32)")
fig.tight_layout()
