"""Saving and loading factorised weights as ``.npz`` files, without pickle."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from ._checks import ArgumentTypeError, LowRankPoolError, describe, parse_cp, parse_eig, parse_rankp, parse_tucker
from ._xp import form_kind, host_copy, tensorly_context
from .factorized import EigTensor, RankP

__all__ = ["FactorFileError", "load_factors", "save_factors"]

FORMAT = "lowrank_pool.factors"
VERSION = 1


class FactorFileError(LowRankPoolError, ValueError):
    """A file is not a lowrank_pool factor file, or is corrupt or of an unknown version."""


class FactorFileNotFoundError(FactorFileError, FileNotFoundError):
    """No file at the path (nor at the path with ``.npz`` appended); also a FileNotFoundError."""


def _npz_path(path: str | os.PathLike[str], name: str = "path") -> str:
    if not isinstance(path, str | os.PathLike):
        raise ArgumentTypeError(f"{name}: expected a file path (str or os.PathLike), got {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return text if text.endswith(".npz") else text + ".npz"


def save_factors(path: str | os.PathLike[str], obj: Any, /) -> str:
    """Save a CP, Tucker, :class:`EigTensor`, :class:`RankP` form or a dense W to ``.npz``.

    The file holds plain numeric arrays plus a format tag and version; it is read back
    with ``allow_pickle=False``, so loading it can never execute code. ``.npz`` is
    appended to a path without it (as numpy does), and :func:`load_factors` finds the
    file under either name. The form is validated first (the shapes must fit together).

    Returns
    -------
    str
        The path written.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp, tempfile, os
    >>> eig = lp.eig_approx(np.eye(3)[None], 1)
    >>> path = lp.save_factors(os.path.join(tempfile.mkdtemp(), "head"), eig)
    >>> os.path.basename(path)
    'head.npz'
    >>> lp.load_factors(path).eigenvalues
    array([[1.]])
    """
    target = _npz_path(path)
    kind = form_kind(obj)
    arrays: dict[str, np.ndarray]
    if kind == "eig":
        _, mu, v, _ = parse_eig(obj)
        arrays = {"eigenvalues": host_copy(mu), "eigenvectors": host_copy(v)}
    elif kind == "rankp":
        parse_rankp(*obj)
        arrays = {"A": host_copy(obj[0]), "B": host_copy(obj[1])}
    elif kind == "tucker":
        _, core, factors, _ = parse_tucker(obj)
        arrays = {"core": host_copy(core), **{f"factor_{i}": host_copy(f) for i, f in enumerate(factors)}}
    elif kind == "cp":
        _, weights, factors, _ = parse_cp(obj)
        arrays = {"weights": host_copy(weights), **{f"factor_{i}": host_copy(f) for i, f in enumerate(factors)}}
    elif kind == "dense":
        arrays = {"W": host_copy(obj)}
    else:
        raise ArgumentTypeError(
            "obj: expected a CPTensor, TuckerTensor, EigTensor, RankP, (weights, factors) / (core, factors) tuple "
            f"or a dense W (K, f, f), got {describe(obj)}"
        )
    for name, a in arrays.items():
        if a.dtype.kind != "f":
            raise ArgumentTypeError(f"obj: array {name!r} has dtype {a.dtype}; only numeric arrays can be saved")
    tags = {"__format__": np.array(FORMAT), "__version__": np.array(VERSION), "kind": np.array(kind)}
    np.savez(target, **tags, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds too narrowly
    return target


def load_factors(path: str | os.PathLike[str], /) -> Any:
    """Load what :func:`save_factors` wrote, as numpy arrays in the same form.

    CP and Tucker forms come back as tensorly ``CPTensor`` / ``TuckerTensor``; the
    shapes inside the file are validated like the pooling functions' arguments.
    Anything else — a pickle, an object array, a foreign ``.npz``, a newer format
    version, a truncated or inconsistent file — raises :class:`FactorFileError` naming
    the path (:class:`FactorFileNotFoundError`, also a FileNotFoundError, when there is
    no file at ``path`` nor at ``path + ".npz"``).
    """
    if not isinstance(path, str | os.PathLike):
        raise ArgumentTypeError(f"path: expected a file path (str or os.PathLike), got {type(path).__name__}")
    if not os.path.exists(path) and os.path.exists(_npz_path(path)):
        path = _npz_path(path)
    try:
        # our own handle: np.load leaks its file when a truncated zip fails to open
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError as err:
        raise FactorFileNotFoundError(
            err.errno, f"{os.fspath(path)}: no such factor file (nor {_npz_path(path)})"
        ) from err
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise FactorFileError(f"{os.fspath(path)}: not a readable lowrank_pool factor file ({err})") from err
    if not isinstance(data, dict) or str(data.get("__format__", "")) != FORMAT:
        raise FactorFileError(f"{os.fspath(path)}: not a lowrank_pool factor file (no {FORMAT!r} tag)")
    tag = data.get("__version__")
    version = tag.item() if tag is not None and tag.shape == () and tag.dtype.kind in "iu" else repr(tag)
    if version != VERSION:
        raise FactorFileError(f"{os.fspath(path)}: format version {version}, this lowrank_pool reads {VERSION}")
    kind = str(data.get("kind", ""))
    try:
        return _validated(kind, data)
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise FactorFileError(f"{os.fspath(path)}: {kind} factor file is incomplete or inconsistent ({err})") from err


def _validated(kind: str, data: dict[str, np.ndarray]) -> Any:
    """The form stored in ``data``, checked by the same validators as the pooling functions'."""
    for name, a in data.items():
        if name not in ("__format__", "__version__", "kind") and a.dtype.kind != "f":
            raise TypeError(f"array {name!r} has dtype {a.dtype}, expected a real floating dtype")
    if kind == "eig":
        eig = EigTensor(data["eigenvalues"], data["eigenvectors"])
        parse_eig(eig)
        return eig
    if kind == "rankp":
        parse_rankp(data["A"], data["B"])
        return RankP(data["A"], data["B"])
    if kind == "dense":
        w = data["W"]
        if w.ndim != 3 or w.shape[1] != w.shape[2]:
            raise ValueError(f"W: expected shape (K, f, f), got {w.shape}")
        return w
    factors = [data[f"factor_{i}"] for i in range(3)]
    if kind == "cp":
        from tensorly.cp_tensor import CPTensor

        weights = data.get("weights")
        if weights is None:
            weights = np.ones(factors[0].shape[1], dtype=factors[0].dtype)
        xp, *_ = parse_cp((weights, factors))
        with tensorly_context(xp):
            return CPTensor((weights, factors))
    if kind == "tucker":
        from tensorly.tucker_tensor import TuckerTensor

        xp, *_ = parse_tucker((data["core"], factors))
        with tensorly_context(xp):
            return TuckerTensor((data["core"], factors))
    raise ValueError(f"unknown factor kind {kind!r}")
