"""Saving and loading factorised weights as ``.npz`` files, without pickle."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from ._checks import LowRankPoolError
from ._xp import host_copy
from .factorized import EigTensor, RankP, _is_cp, _is_tucker, cp_parts, tucker_parts

__all__ = ["FactorFileError", "load_factors", "save_factors"]

FORMAT = "lowrank_pool.factors"
VERSION = 1


class FactorFileError(LowRankPoolError, ValueError):
    """A file is not a lowrank_pool factor file, or is corrupt or of an unknown version."""


def save_factors(path: str | os.PathLike[str], obj: Any, /) -> None:
    """Save a CP, Tucker, :class:`EigTensor`, :class:`RankP` form or a dense W to ``.npz``.

    The file holds plain numeric arrays plus a format tag and version; it is read back
    with ``allow_pickle=False``, so loading it can never execute code.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp, tempfile, os
    >>> eig = lp.eig_approx(np.eye(3)[None], 1)
    >>> path = os.path.join(tempfile.mkdtemp(), "head.npz")
    >>> lp.save_factors(path, eig)
    >>> lp.load_factors(path).eigenvalues
    array([[1.]])
    """
    arrays: dict[str, np.ndarray]
    if isinstance(obj, EigTensor):
        kind, arrays = "eig", {"eigenvalues": host_copy(obj.eigenvalues), "eigenvectors": host_copy(obj.eigenvectors)}
    elif isinstance(obj, RankP):
        kind, arrays = "rankp", {"A": host_copy(obj.A), "B": host_copy(obj.B)}
    elif _is_tucker(obj):
        core, factors = tucker_parts(obj)
        kind, arrays = (
            "tucker",
            {"core": host_copy(core), **{f"factor_{i}": host_copy(f) for i, f in enumerate(factors)}},
        )
    elif _is_cp(obj):
        weights, factors = cp_parts(obj)
        arrays = {f"factor_{i}": host_copy(f) for i, f in enumerate(factors)}
        if weights is not None:
            arrays["weights"] = host_copy(weights)
        kind = "cp"
    elif hasattr(obj, "shape") and len(obj.shape) == 3:
        kind, arrays = "dense", {"W": host_copy(obj)}
    else:
        raise TypeError(
            f"obj: expected a CPTensor, TuckerTensor, EigTensor, RankP, (weights, factors) / (core, factors) tuple "
            f"or a dense W (K, f, f), got {type(obj).__name__}"
        )
    for name, a in arrays.items():
        if a.dtype.kind not in "fiu":
            raise TypeError(f"obj: array {name!r} has dtype {a.dtype}; only numeric arrays can be saved")
    tags = {"__format__": np.array(FORMAT), "__version__": np.array(VERSION), "kind": np.array(kind)}
    np.savez(path, **tags, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds too narrowly


def load_factors(path: str | os.PathLike[str], /) -> Any:
    """Load what :func:`save_factors` wrote, as numpy arrays in the same form.

    CP and Tucker forms come back as tensorly ``CPTensor`` / ``TuckerTensor``.
    Anything else — a pickle, an object array, a foreign ``.npz``, a newer format
    version, a truncated file — raises :class:`FactorFileError` naming the path.
    """
    try:
        # our own handle: np.load leaks its file when a truncated zip fails to open
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise FactorFileError(f"{os.fspath(path)}: not a readable lowrank_pool factor file ({err})") from err
    if not isinstance(data, dict) or str(data.get("__format__", "")) != FORMAT:
        raise FactorFileError(f"{os.fspath(path)}: not a lowrank_pool factor file (no {FORMAT!r} tag)")
    version = int(data["__version__"]) if "__version__" in data else -1
    if version != VERSION:
        raise FactorFileError(f"{os.fspath(path)}: format version {version}, this lowrank_pool reads {VERSION}")
    kind = str(data.get("kind", ""))
    try:
        if kind == "eig":
            return EigTensor(data["eigenvalues"], data["eigenvectors"])
        if kind == "rankp":
            return RankP(data["A"], data["B"])
        if kind == "dense":
            return data["W"]
        factors = [data[f"factor_{i}"] for i in range(3)]
        if kind == "cp":
            from tensorly.cp_tensor import CPTensor

            weights = data.get("weights")
            if weights is None:
                weights = np.ones(factors[0].shape[1], dtype=factors[0].dtype)
            return CPTensor((weights, factors))
        if kind == "tucker":
            from tensorly.tucker_tensor import TuckerTensor

            return TuckerTensor((data["core"], factors))
    except (KeyError, ValueError, IndexError) as err:
        raise FactorFileError(f"{os.fspath(path)}: {kind} factor file is incomplete or inconsistent ({err})") from err
    raise FactorFileError(f"{os.fspath(path)}: unknown factor kind {kind!r}")
