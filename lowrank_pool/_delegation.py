"""The one seam between the array-API core and the torch kernels (as array-api-extra's ``_delegation``).

Each function tries the native path where the inputs allow it (torch tensors: the autograd Functions of
``_torch_kernels``, which call the compiled CPU kernel where it serves the call), else the array-API
implementation of ``_ops``. No other module imports ``_torch_kernels``.
"""

from __future__ import annotations

import sys
from typing import Any

from ._backend import Array, Namespace, is_torch
from ._layout import Features
from ._ops import gram_generic

__all__ = ["gram_product", "shared_scores", "torch_fast_scores"]


_KERNELS: Any = None  # the torch kernels' module, imported on first use (it imports torch)


def _kernels() -> Any:
    # (a global, not functools.cache: torch.compile warns about every cache-wrapped call it traces)
    global _KERNELS
    if _KERNELS is None:
        from . import _torch_kernels

        _KERNELS = _torch_kernels
    return _KERNELS


def gram_product(xp: Namespace, feats: Features) -> Array:
    """XᵀX (B, f, f) of every sample: torch through its autograd Function (∂X in one GEMM where that pays), other
    libraries by :func:`~lowrank_pool._ops.gram_generic`."""
    if is_torch(xp):
        return _kernels().gram(feats.data, feats.layout != "bnf")
    return gram_generic(xp, feats)


def shared_scores(
    xp: Namespace, x: Array, bm: Array, a3: Array, *, channels_first: bool, attention: str, positions: int
) -> Array | None:
    """Scores of attention-weighted pooling with a shared B for torch arrays (None for other libraries: the caller
    computes them with the array-API products). Training runs the autograd Function (∂X written once, in X's
    layout); inference the compiled CPU kernel where it serves the inputs, else the same stock products."""
    if not is_torch(xp):
        return None
    return _kernels().shared_bottom_up_scores(
        x, bm, a3, channels_first=channels_first, attention=attention, positions=positions
    )


def torch_fast_scores(
    x: Array, a: Array, bm: Array, attention: Any, channel_axis: Any, check_finite: Any, *, rank1: bool
) -> Array | None:
    """Scores of rank-1 / shared-B rank-P pooling for plain torch tensors, computed without the general path's
    validation (the same layout rule, :func:`~lowrank_pool._layout.plan`); None for anything else, which the
    general path validates and computes."""
    torch = sys.modules.get("torch")
    if torch is None or type(x) is not torch.Tensor or check_finite is not False:
        return None
    if channel_axis is not None and type(channel_axis) is not int:  # (a bool, a numpy integer: the general path)
        return None
    return _kernels().fast_shared_scores(x, a, bm, attention, rank1=rank1, channel_axis=channel_axis)
