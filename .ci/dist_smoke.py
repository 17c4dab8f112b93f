"""Smoke test of an installed lowrank_pool (run by `make dist` in a fresh venv, outside the checkout).

Checks that the installed copy (not the source tree) imports, computes the trace identity on numpy,
carries its package data; with torch, that a layer runs and the kernel's status is reported; without
it, that `import lowrank_pool.nn` names the extra to install.
"""

import importlib.util
import pathlib
import sys

import numpy as np

import lowrank_pool as lp

here = pathlib.Path(lp.__file__).resolve()
assert "site-packages" in here.parts, f"imported from the checkout, not the install: {here}"
rng = np.random.default_rng(0)
X, A, b = rng.random((2, 9, 5)), rng.random((5, 3)), rng.random(5)
got = lp.rank1_pool(X, A, b, channel_axis=-1)
want = np.einsum("bnf,fk,bng,g->bk", X, A, X, b) / 9  # (Xa_k)ᵀ(Xb) / n
assert np.allclose(got, want), (got, want)
assert (here.parent / "py.typed").exists(), "py.typed is missing from the wheel"
sources = here.parent / "_native" / "src"
assert (sources / "bindings.cpp").exists() and (sources / "vec.h").exists(), "the kernel's sources are missing"
if importlib.util.find_spec("torch") is not None:  # the [torch] install: the layers, and the kernel's status
    import torch

    import lowrank_pool.nn as lpnn

    head = lpnn.AttentionalPool(5, 3)
    assert head(torch.randn(2, 5, 4, 4)).shape == (2, 3)
    status = lp.kernel_status()
    assert isinstance(status.available, bool) and status.reason, status
    print(f"kernel: {status.reason}")
if importlib.util.find_spec("torch") is None:
    try:
        import lowrank_pool.nn
    except ImportError as err:
        assert "lowrank_pool[torch]" in str(err), err
    else:
        sys.exit("import lowrank_pool.nn without torch did not raise")
print(f"installed lowrank_pool {lp.__version__} from {here.parent}: ok")
