"""The heads registry and data of the head-protocol and HeadForm tests."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lowrank_pool as lp  # noqa: E402
import lowrank_pool.nn as lnn  # noqa: E402
from lowrank_pool.testing import assert_close  # noqa: E402

F_HEAD, K_HEAD = 5, 3
DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with_bias(head: lnn.PoolingHead, seed: int) -> lnn.PoolingHead:
    if head.bias is not None:
        with torch.no_grad():
            head.bias.normal_(generator=_gen(seed + 100))
    return head


# the heads whose scores are a bilinear form ⟨M, W⟩ + c (they convert into each other)
BILINEAR = {
    "dense": lambda g: lnn.BilinearPool(F_HEAD, K_HEAD, normalize=None, generator=g, dtype=DT),
    "dense reduced": lambda g: lnn.BilinearPool(F_HEAD, K_HEAD, normalize=None, reduce_dim=3, generator=g, dtype=DT),
    "cp": lambda g: lnn.CPPool(F_HEAD, K_HEAD, 4, generator=g, dtype=DT),
    "tucker": lambda g: lnn.TuckerPool(F_HEAD, K_HEAD, (2, 3, 4), generator=g, dtype=DT),
    "eig": lambda g: lnn.EigPool(F_HEAD, K_HEAD, 3, generator=g, dtype=DT),
    "rank-P shared": lambda g: lnn.AttentionalPool(F_HEAD, K_HEAD, 2, generator=g, dtype=DT),
    "rank-P per class": lambda g: lnn.AttentionalPool(F_HEAD, K_HEAD, 2, bottom_up="per_class", generator=g, dtype=DT),
}
# every head with a factor form, whatever its function
ALL = {
    **BILINEAR,
    "first-order mean": lambda g: lnn.FirstOrderPool(F_HEAD, K_HEAD, generator=g, dtype=DT),
    "first-order max": lambda g: lnn.FirstOrderPool(F_HEAD, K_HEAD, reduce="max", generator=g, dtype=DT),
    "normalised": lambda g: lnn.BilinearPool(
        F_HEAD, K_HEAD, normalize="matrix_sqrt+l2", eps=1e-3, generator=g, dtype=DT
    ),
    "softmax attention": lambda g: lnn.AttentionalPool(F_HEAD, K_HEAD, 2, attention="softmax", generator=g, dtype=DT),
    "relu per class": lambda g: lnn.AttentionalPool(
        F_HEAD, K_HEAD, 2, attention="relu", bottom_up="per_class", dtype=DT
    ),
}
NO_FORM = {
    "compact": lambda g: lnn.CompactBilinearPool(F_HEAD, K_HEAD, dim=16, generator=g, dtype=DT),
    "pose": lambda g: lnn.PoseAttentionalPool(F_HEAD, K_HEAD, 2, generator=g, dtype=DT),
}
CLASSES = {
    "dense": lnn.BilinearPool,
    "cp": lnn.CPPool,
    "tucker": lnn.TuckerPool,
    "eig": lnn.EigPool,
    "rankp": lnn.AttentionalPool,
}


def _head_x(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, F_HEAD, 3, 2, generator=_gen(seed), dtype=DT).relu()


def _head_close(got: torch.Tensor, want: torch.Tensor, label: str) -> None:
    got, want = got.detach(), want.detach()
    assert_close(got, want, terms=F_HEAD * F_HEAD * K_HEAD, scale=float(want.abs().max()) + 1.0, like=want, label=label)


# ----------------------------------------------------------------------------- the functional core
def _head_forms(xp: str, seed: int, k: int, f: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, f, f))
    out = {"dense": w}
    out.update({kind: lp.convert_form(w, kind) for kind in ("cp", "tucker", "eig", "rankp")})
    if xp == "torch":
        out = {kind: _to_torch(form) for kind, form in out.items()}
    return out


def _to_torch(form: object) -> object:
    if isinstance(form, np.ndarray):
        return torch.from_numpy(np.array(form))  # (a copy: some factors are read-only broadcast views)
    if isinstance(form, tuple | list):
        parts = [_to_torch(p) for p in form]
        return type(form)(*parts) if hasattr(form, "_fields") else type(form)(parts)
    if hasattr(form, "factors") and hasattr(form, "weights"):  # CPTensor
        return (_to_torch(form.weights), [_to_torch(f) for f in form.factors])
    if hasattr(form, "core"):
        return (_to_torch(form.core), [_to_torch(f) for f in form.factors])
    return form
