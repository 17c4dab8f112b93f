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


def save_factors(path: str | os.PathLike[str] | Any, obj: Any, /) -> Any:
    """Save a CP, Tucker, :class:`EigTensor`, :class:`RankP` form or a dense W to ``.npz``.

    The file holds plain numeric arrays plus a format tag and version; it is read back
    with ``allow_pickle=False``, so loading it can never execute code. ``.npz`` is
    appended to a path without it (as numpy does), and :func:`load_factors` finds the
    file under either name; an open binary file object is written as it is. The form is
    validated first (the shapes must fit together).

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        Where to write (``.npz`` appended to a path without it).
    obj : CPTensor, TuckerTensor, EigTensor, RankP or array (K, f, f)
        The form to save, on any backend (copied to the host).

    Returns
    -------
    str or file object
        The path written (or the file object).

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
    target = path if _is_file_object(path) else _npz_path(path)
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


_MEMBERS = {
    "eig": ({"eigenvalues", "eigenvectors"}, set()),
    "rankp": ({"A", "B"}, set()),
    "dense": ({"W"}, set()),
    "cp": ({"factor_0", "factor_1", "factor_2"}, {"weights"}),
    "tucker": ({"core", "factor_0", "factor_1", "factor_2"}, set()),
}
_TAGS = ("__format__", "__version__", "kind")
_TAG_BYTES = 4096  # a tag member is a 0-d string or int: a few hundred bytes


def _is_file_object(obj: Any) -> bool:
    return hasattr(obj, "read") and hasattr(obj, "seek")


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(shape, dtype, header length) of an .npy member, read without loading its data."""
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"member {info.filename!r}: unsupported .npy version {version}")
        del fortran
        return tuple(int(d) for d in shape), dtype, fh.tell()


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with zf.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _read(zf: zipfile.ZipFile) -> tuple[str, dict[str, np.ndarray]]:
    """The kind and arrays of a factor file, every member checked before any is read.

    Tags first (each a few bytes), then every data member's header: the member must be
    expected for the kind, hold a real floating dtype, and its stored size must be exactly
    what its header declares (a 1 KB file declaring 20000×20000 is refused before any
    allocation); the declared shapes are validated as a form (zero-stride views stand in
    for the data). Only then are the arrays read.
    """
    infos = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
    if len(infos) != len(zf.infolist()):
        raise ValueError("duplicate members")
    tags: dict[str, Any] = {}
    for tag in _TAGS:
        info = infos.get(tag)
        if info is None:
            if tag == "__format__":
                raise _NotOurs(f"no {FORMAT!r} tag")
            continue
        if info.file_size > _TAG_BYTES:
            raise ValueError(f"tag {tag!r} is {info.file_size} bytes, expected a small scalar")
        shape, dtype, _ = _header(zf, info)
        if shape != () or dtype.hasobject:  # read_array would allocate a declared shape first
            raise ValueError(f"tag {tag!r} has shape {shape} and dtype {dtype}, expected a scalar")
        tags[tag] = _member(zf, info)
    if str(tags.get("__format__", "")) != FORMAT:
        raise _NotOurs(f"no {FORMAT!r} tag")
    raw = tags.get("__version__")
    ok = raw is not None and raw.shape == () and raw.dtype.kind in "iu"
    version = int(raw.item()) if ok and raw is not None else repr(raw)
    if version != VERSION:
        raise _VersionError(f"format version {version}, this lowrank_pool reads {VERSION}")
    kind = str(tags.get("kind", ""))
    if kind not in _MEMBERS:
        raise ValueError(f"unknown factor kind {kind!r}")
    try:
        return kind, _read_members(zf, infos, kind)
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise _Inconsistent(f"{kind} factor file is incomplete or inconsistent ({err})") from err


def _read_members(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], kind: str) -> dict[str, np.ndarray]:
    required, optional = _MEMBERS[kind]
    names = set(infos) - set(_TAGS)
    if names - required - optional:
        raise ValueError(f"unexpected members {sorted(names - required - optional)} in a {kind} file")
    if required - names:
        raise KeyError(f"missing members {sorted(required - names)}")
    stand_ins = {}
    for name in sorted(names):
        shape, dtype, header = _header(zf, infos[name])
        if dtype.kind != "f" or dtype.hasobject or dtype.fields is not None:
            raise TypeError(f"array {name!r} has dtype {dtype}, expected a real floating dtype")
        declared = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if declared != infos[name].file_size:
            raise ValueError(
                f"array {name!r} declares shape {shape} ({declared} bytes) but holds {infos[name].file_size} bytes"
            )
        stand_ins[name] = np.broadcast_to(np.zeros((), dtype), shape)
    _validated(kind, stand_ins)  # the shapes fit together, before any data is read
    return {name: _member(zf, infos[name]) for name in sorted(names)}


class _VersionError(ValueError):
    pass


class _NotOurs(ValueError):
    """The archive has no lowrank_pool format tag (a foreign .npz)."""


class _Inconsistent(ValueError):
    pass


def load_factors(path: str | os.PathLike[str] | Any, /) -> Any:
    """Load what :func:`save_factors` wrote, as numpy arrays in the same form.

    ``path`` is a file path (``.npz`` is appended when the path itself does not exist) or
    an open binary file object. CP and Tucker forms come back as tensorly ``CPTensor`` /
    ``TuckerTensor``. Nothing is allocated before the file's headers are validated: the
    members must be those of the form (no others), each a real floating array whose
    stored size matches its declared shape, the shapes must fit together as the pooling
    functions require, and nothing in the file is unpickled. Anything else — a pickle, an
    object array, a foreign ``.npz``, a newer format version, a truncated, inconsistent or
    oversized file — raises :class:`FactorFileError` naming the path
    (:class:`FactorFileNotFoundError`, also a FileNotFoundError, when there is no file at
    ``path`` nor at ``path + ".npz"``).

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        The file :func:`save_factors` wrote.

    Returns
    -------
    CPTensor, TuckerTensor, EigTensor, RankP or numpy array
        The saved form, as numpy arrays.

    Examples
    --------
    >>> import io, numpy as np, lowrank_pool as lp
    >>> buf = io.BytesIO()
    >>> _ = lp.save_factors(buf, np.zeros((2, 3, 3)))
    >>> _ = buf.seek(0)
    >>> lp.load_factors(buf).shape
    (2, 3, 3)
    """
    if _is_file_object(path):
        where, source = repr(getattr(path, "name", path)), path
    else:
        if not isinstance(path, str | os.PathLike):
            raise ArgumentTypeError(
                f"path: expected a file path (str or os.PathLike) or a binary file object, got {type(path).__name__}"
            )
        if not os.path.exists(path) and os.path.exists(_npz_path(path)):
            path = _npz_path(path)
        where, source = os.fspath(path), path
        if not os.path.exists(path):
            raise FactorFileNotFoundError(2, f"{where}: no such factor file (nor {_npz_path(path)})")
    try:
        with zipfile.ZipFile(source) as zf:
            kind, data = _read(zf)
    except (_VersionError, _Inconsistent) as err:
        raise FactorFileError(f"{where}: {err}") from err
    except _NotOurs as err:
        raise FactorFileError(f"{where}: not a lowrank_pool factor file ({err})") from err
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise FactorFileError(f"{where}: factor file is incomplete or inconsistent ({err})") from err
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as err:
        raise FactorFileError(f"{where}: not a readable lowrank_pool factor file ({err})") from err
    try:
        return _validated(kind, data)
    except (KeyError, ValueError, IndexError, TypeError) as err:  # pragma: no cover - checked on the headers
        raise FactorFileError(f"{where}: {kind} factor file is incomplete or inconsistent ({err})") from err


def _validated(kind: str, data: dict[str, np.ndarray]) -> Any:
    """The form stored in ``data``, checked by the same validators as the pooling functions'."""
    for name, a in data.items():
        if a.dtype.kind != "f":
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
        if w.ndim != 3 or w.shape[1] != w.shape[2] or 0 in w.shape:
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
    from tensorly.tucker_tensor import TuckerTensor

    xp, *_ = parse_tucker((data["core"], factors))
    with tensorly_context(xp):
        return TuckerTensor((data["core"], factors))
