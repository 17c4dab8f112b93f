"""Recognising the factor forms of a weight tensor W: CP, Tucker, eigen, rank-P, or W itself."""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["FormKind", "form_kind"]


FormKind = Literal["cp", "tucker", "eig", "rankp", "dense"]


def form_kind(obj: Any) -> FormKind | None:
    """Which factor form ``obj`` is, from its type or, for plain tuples, its array ranks.

    tensorly's ``CPTensor`` / ``TuckerTensor`` and the package's ``EigTensor`` / ``RankP``
    are recognised by type; a plain pair by the rank of its arrays: ``(weights (R,) or
    None, [3 matrices])`` is CP, ``(core (R_K, R_a, R_c), [3 matrices])`` Tucker,
    ``(eigenvalues (K, P), eigenvectors (f, K, P))`` eigen, ``(A (f, K, P), B)`` rank-P;
    a single 3-D array is a dense W. None for anything else.
    """
    kind = type(obj).__name__
    if kind in ("CPTensor", "TuckerTensor", "EigTensor", "RankP"):
        return {"CPTensor": "cp", "TuckerTensor": "tucker", "EigTensor": "eig", "RankP": "rankp"}[kind]  # type: ignore[return-value]
    if not isinstance(obj, tuple | list):  # (tuples first: no array-api type checks under torch.compile)
        is_array = hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, int | float | complex)
        return "dense" if is_array and getattr(obj, "ndim", 0) == 3 else None
    if len(obj) != 2:
        return None
    first, second = obj
    first_ndim = getattr(first, "ndim", None)
    if isinstance(second, tuple | list):
        if first is None or first_ndim == 1:
            return "cp"
        if first_ndim == 3:
            return "tucker"
        return None
    second_ndim = getattr(second, "ndim", None)
    if first_ndim == 2 and second_ndim == 3:
        return "eig"
    if first_ndim == 3 and second_ndim in (2, 3):
        return "rankp"
    return None
