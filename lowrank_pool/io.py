"""Saving and loading factorised weights as ``.npz`` files, without pickle.

Saving writes a temporary file in the target's directory and renames it over the target, so a reader sees the
old file or the new one, never half of one, and a crash leaves the old file. Loading opens regular files only
(never a device, FIFO, socket or directory, which could block or never end), reads every header before any
data, and bounds what it allocates (see :func:`load_factors`).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
import zipfile
from typing import Any

import numpy as np

from ._backend import host_copy
from ._checks import (
    ArgumentError,
    ArgumentTypeError,
    LowRankPoolError,
    ShapeError,
    describe,
    parse_cp,
    parse_eig,
    parse_rankp,
    parse_tucker,
)
from ._forms import form_kind
from ._tensorly import tensorly_context
from .factorized import EigTensor, RankP
from .heads import HeadForm, check_head

__all__ = ["FactorFileError", "load_factors", "save_factors"]

FORMAT = "lowrank_pool.factors"
VERSION = 1  # a bare form (what every version reads)
HEAD_VERSION = 2  # a head: the form with its bias, projection and head_scores options


class FactorFileError(LowRankPoolError, ValueError):
    """A file is not a lowrank_pool factor file, or is corrupt or of an unknown version."""


class FactorFileNotFoundError(FactorFileError, FileNotFoundError):
    """No file at the path (nor at the path with ``.npz`` appended); also a FileNotFoundError."""


# What load_factors allocates: the members' declared (uncompressed) sizes, at most this many times the file's size
# (np.savez stores members uncompressed: a factor file's ratio is 1) and at most the machine's memory.
MAX_EXPANSION = 64
_MIN_BUDGET = 1 << 20  # a tiny file may still hold a few small members


def _text_path(path: Any, name: str = "path") -> str:
    if not isinstance(path, str | os.PathLike):
        raise ArgumentTypeError(f"{name}: expected a file path (str or os.PathLike), got {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\0" in text:
        raise ArgumentError(f"{name}: a file path cannot contain a NUL character, got {text!r}")
    if not text:
        raise ArgumentError(f"{name}: expected a file path, got an empty string")
    return text


def _npz_path(path: str | os.PathLike[str], name: str = "path") -> str:
    text = _text_path(path, name)
    return text if text.endswith(".npz") else text + ".npz"


def _kind_of(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return kind
    return "special file"


def _binary_file(obj: Any, mode: str) -> None:
    """A file object opened in binary mode, readable (mode "r") or writable ("w"); else the package's error."""
    if isinstance(obj, io.TextIOBase) or "b" not in getattr(obj, "mode", "b"):
        raise ArgumentTypeError(
            f"path: expected a binary file object (opened with '{mode}b') or a path, got a text-mode file object"
        )
    able = getattr(obj, "readable" if mode == "r" else "writable", None)
    try:
        ok = able is None or bool(able())
    except ValueError as err:  # a closed file
        raise ArgumentError(f"path: the file object cannot be used ({err})") from err
    if not ok:
        what = "readable" if mode == "r" else "writable (opened for reading only)"
        raise ArgumentError(f"path: the file object is not {what}")


def save_factors(path: str | os.PathLike[str] | Any, obj: Any, /) -> Any:
    """Save a head (its :class:`HeadForm`: form, bias, projection, normalisation), or a bare CP, Tucker,
    :class:`EigTensor`, :class:`RankP` form or dense W, to ``.npz``.

    ``obj`` may be a :mod:`lowrank_pool.nn` head (anything with a ``factors()`` method), what its
    ``factors()`` returns, or a bare form. A head's file holds what determines its scores — the form, the
    bias c, the 1×1 projection R and the options of :func:`head_scores` (normalisation with ``eps`` and
    ``num_iters``, attention, reduction) — so ``Head.from_factors(load_factors(path))`` scores exactly as
    the saved head did. The file holds plain numeric arrays plus a format tag and version; it is read back
    with ``allow_pickle=False``, so loading it can never execute code. ``.npz`` is appended to a path
    without it (as numpy does), and :func:`load_factors` finds the file under either name; an open binary
    file object is written as it is. The form is validated first, as :func:`load_factors` will validate it
    (the shapes must fit together; no zero sizes). A path is written atomically: into a temporary file in
    the same directory, flushed, then renamed over the target, so a concurrent reader sees the old file or
    the new one and a crash leaves the old one.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        Where to write (``.npz`` appended to a path without it).
    obj : head, HeadForm, CPTensor, TuckerTensor, EigTensor, RankP or array (K, f, f)
        What to save, on any backend (copied to the host; a head's parameters are detached).

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
    >>> head = lp.HeadForm(eig, bias=np.array([0.5]))       # a head: its bias travels with the form
    >>> lp.load_factors(lp.save_factors(path, head)).bias
    array([0.5])
    """
    if _is_file_object(path) or hasattr(path, "write"):
        _binary_file(path, "w")
        target: Any = path
    else:
        target = _npz_path(path)
    if not isinstance(obj, HeadForm) and callable(getattr(obj, "factors", None)) and not isinstance(obj, tuple):
        obj = obj.factors()  # a head of lowrank_pool.nn (its factors() raises where it has no factor form)
    head = obj if isinstance(obj, HeadForm) else None
    form = head.form if head is not None else obj
    kind = "first_order" if head is not None and _is_first_order(form) else form_kind(form)
    arrays = _form_arrays(kind, form)
    assert kind is not None  # _form_arrays refuses anything else
    tags: dict[str, np.ndarray] = {"__format__": np.array(FORMAT), "kind": np.array(kind)}
    if head is not None:
        try:
            check_head(head)
        except LowRankPoolError as err:
            raise type(err)(f"obj: {err}") from None
        for name, value in (("bias", head.bias), ("projection", head.projection)):
            if value is not None:
                arrays[f"head_{name}"] = host_copy(value)
        tags.update(
            head=np.array(True),
            normalize=np.array(head.normalize or ""),
            attention=np.array(head.attention),
            reduce=np.array(head.reduce),
            eps=np.array(float(head.eps)),
            num_iters=np.array(int(head.num_iters)),
        )
    tags["__version__"] = np.array(HEAD_VERSION if head is not None else VERSION)
    for name, a in arrays.items():
        if a.dtype.kind != "f":
            raise ArgumentTypeError(f"obj: array {name!r} has dtype {a.dtype}; only numeric arrays can be saved")
    try:  # what load_factors would refuse is refused now, before anything is written
        _validated(kind, arrays, {k: v for k, v in tags.items() if k in _HEAD_TAGS} if head is not None else None)
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise ShapeError(f"obj: not a form load_factors could read back ({err})") from err
    if not isinstance(target, str):
        np.savez(target, **tags, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds too narrowly
        return target
    _write_atomically(target, lambda fh: np.savez(fh, **tags, **arrays))  # type: ignore[arg-type]
    return target


def _is_first_order(form: Any) -> bool:
    return getattr(form, "ndim", None) == 2 and hasattr(form, "dtype") and form_kind(form) is None


def _form_arrays(kind: str | None, obj: Any) -> dict[str, np.ndarray]:
    if kind == "eig":
        _, mu, v, _ = parse_eig(obj)
        return {"eigenvalues": host_copy(mu), "eigenvectors": host_copy(v)}
    if kind == "rankp":
        parse_rankp(*obj)
        return {"A": host_copy(obj[0]), "B": host_copy(obj[1])}
    if kind == "tucker":
        _, core, factors, _ = parse_tucker(obj)
        return {"core": host_copy(core), **{f"factor_{i}": host_copy(f) for i, f in enumerate(factors)}}
    if kind == "cp":
        _, weights, factors, _ = parse_cp(obj)
        return {"weights": host_copy(weights), **{f"factor_{i}": host_copy(f) for i, f in enumerate(factors)}}
    if kind == "dense":
        return {"W": host_copy(obj)}
    if kind == "first_order":
        return {"weights": host_copy(obj)}
    raise ArgumentTypeError(
        "obj: expected a lowrank_pool.nn head, a HeadForm, a CPTensor, TuckerTensor, EigTensor, RankP, "
        f"(weights, factors) / (core, factors) tuple or a dense W (K, f, f), got {describe(obj)}"
    )


def _write_atomically(target: str, write: Any) -> None:
    """write(file) into a temporary file beside ``target``, flushed to disk, then renamed over it."""
    directory = os.path.dirname(os.path.abspath(target))
    if os.path.isdir(target):
        raise ArgumentError(f"path: {target} is a directory, not a file to write")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:  # the permissions a new file would get (or the replaced file's)
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread, for a moment)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_MEMBERS = {
    "first_order": ({"weights"}, set()),
    "eig": ({"eigenvalues", "eigenvectors"}, set()),
    "rankp": ({"A", "B"}, set()),
    "dense": ({"W"}, set()),
    "cp": ({"factor_0", "factor_1", "factor_2"}, {"weights"}),
    "tucker": ({"core", "factor_0", "factor_1", "factor_2"}, set()),
}
_TAGS = ("__format__", "__version__", "kind", "head", "normalize", "attention", "reduce", "eps", "num_iters")
_HEAD_TAGS = ("head", "normalize", "attention", "reduce", "eps", "num_iters")
_HEAD_MEMBERS = {"head_bias", "head_projection"}
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


def _read(zf: zipfile.ZipFile) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
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
    if version not in (VERSION, HEAD_VERSION):
        raise _VersionError(f"format version {version}, this lowrank_pool reads {VERSION} and {HEAD_VERSION}")
    kind = str(tags.get("kind", ""))
    if kind not in _MEMBERS:
        raise ValueError(f"unknown factor kind {kind!r}")
    head = {k: tags[k] for k in _HEAD_TAGS if k in tags}
    if (version == HEAD_VERSION) != bool(head) or (head and set(head) != set(_HEAD_TAGS)):
        raise _Inconsistent(f"format version {version} with head fields {sorted(head)}")
    if kind == "first_order" and not head:
        raise _Inconsistent("first-order weights are saved as a head only")
    try:
        return kind, _read_members(zf, infos, kind, bool(head)), head
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise _Inconsistent(f"{kind} factor file is incomplete or inconsistent ({err})") from err


def _read_members(
    zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], kind: str, head: bool
) -> dict[str, np.ndarray]:
    required, optional = _MEMBERS[kind]
    optional = optional | (_HEAD_MEMBERS if head else set())
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
    _validated(kind, stand_ins, {"head": np.array(True)} if head else None)  # the shapes fit, before any read
    return {name: _member(zf, infos[name]) for name in sorted(names)}


class _VersionError(ValueError):
    pass


class _NotOurs(ValueError):
    """The archive has no lowrank_pool format tag (a foreign .npz)."""


class _Inconsistent(ValueError):
    pass


def load_factors(path: str | os.PathLike[str] | Any, /) -> Any:
    """Load what :func:`save_factors` wrote, as numpy arrays: a head's :class:`HeadForm`, or a bare form.

    ``path`` is a file path (``path`` itself if it is a regular file, else ``path + ".npz"``)
    or an open binary file object. CP and Tucker forms come back as tensorly ``CPTensor`` /
    ``TuckerTensor``. Only regular files are opened (links are followed): a directory,
    FIFO, socket or device is refused before it is read, so a call never blocks or reads
    without end. Nothing is allocated before the file's headers are validated: the
    members must be those of the form (no others), each a real floating array whose
    stored size matches its declared shape, the shapes must fit together as the pooling
    functions require, and nothing in the file is unpickled. What it allocates is bounded:
    the members' declared sizes may add up to at most 64 times the file's size
    (:func:`save_factors` stores arrays uncompressed, about once their size; a
    compressed "bomb" is refused before it is decompressed) and at most the machine's
    memory. Anything else — a pickle, an object array, a foreign ``.npz``, a newer format
    version, a truncated, inconsistent or oversized file — raises :class:`FactorFileError`
    naming the path (:class:`FactorFileNotFoundError`, also a FileNotFoundError, when
    there is no file at ``path`` nor at ``path + ".npz"``).

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        The file :func:`save_factors` wrote.

    Returns
    -------
    HeadForm, or CPTensor, TuckerTensor, EigTensor, RankP or numpy array
        What was saved, as numpy arrays: a head's :class:`HeadForm` (pass it to the head class's
        ``from_factors`` or to :func:`head_scores`), or the bare form (files of earlier versions too).

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
        _binary_file(path, "r")
        where, source, size = repr(getattr(path, "name", path)), path, _stream_size(path)
        opened = None
    else:
        if not isinstance(path, str | os.PathLike):
            raise ArgumentTypeError(
                f"path: expected a file path (str or os.PathLike) or a binary file object, got {type(path).__name__}"
            )
        where = _regular_file(_text_path(path))
        opened = source = _open_regular(where)
        size = os.fstat(opened.fileno()).st_size
    try:
        with zipfile.ZipFile(source) as zf:
            _check_budget(zf, size)
            kind, data, head = _read(zf)
    except (_VersionError, _Inconsistent, _TooLarge) as err:
        raise FactorFileError(f"{where}: {err}") from err
    except _NotOurs as err:
        raise FactorFileError(f"{where}: not a lowrank_pool factor file ({err})") from err
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise FactorFileError(f"{where}: factor file is incomplete or inconsistent ({err})") from err
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, MemoryError) as err:
        raise FactorFileError(f"{where}: not a readable lowrank_pool factor file ({err})") from err
    finally:
        if opened is not None:
            opened.close()
    try:
        return _validated(kind, data, head or None)
    except (KeyError, ValueError, IndexError, TypeError) as err:  # the head's options: checked on reading them
        raise FactorFileError(f"{where}: {kind} factor file is incomplete or inconsistent ({err})") from err


def _regular_file(text: str) -> str:
    """The file to read: ``text`` itself, else ``text + ".npz"``, whichever is a regular file (after links)."""
    candidates = [text] if text.endswith(".npz") else [text, text + ".npz"]
    special = []
    for candidate in candidates:
        try:
            mode = os.stat(candidate).st_mode
        except FileNotFoundError:
            continue
        except OSError as err:
            raise FactorFileError(f"{candidate}: cannot be read ({err.strerror or err})") from err
        if stat.S_ISREG(mode):
            return candidate
        special.append(f"{candidate} is a {_kind_of(mode)}")
    if special:
        raise FactorFileError(f"path: expected a regular file, but {' and '.join(special)}")
    raise FactorFileNotFoundError(2, f"{text}: no such factor file (nor {_npz_path(text)})")


def _open_regular(path: str) -> Any:
    """``path`` opened for reading, refused unless it is a regular file when opened (a FIFO or a device swapped in
    after the first look is not read: O_NONBLOCK keeps the open itself from waiting on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise FactorFileError(f"{path}: cannot be read ({err.strerror or err})") from err
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FactorFileError(f"path: expected a regular file, but {path} is a {_kind_of(mode)}")
    return os.fdopen(fd, "rb")


def _stream_size(fh: Any) -> int | None:
    """The bytes of a seekable file object (None where it cannot say)."""
    try:
        here = fh.tell()
        end = fh.seek(0, os.SEEK_END)
        fh.seek(here)
        return int(end) - int(here)
    except (OSError, ValueError, AttributeError):
        return None


class _TooLarge(ValueError):
    pass


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_budget(zf: zipfile.ZipFile, size: int | None) -> None:
    """Refuse an archive whose members would expand beyond MAX_EXPANSION × its size, or the machine's memory."""
    declared = sum(info.file_size for info in zf.infolist())
    if size is not None and declared > max(MAX_EXPANSION * size, _MIN_BUDGET):
        raise _TooLarge(
            f"its members would expand to {declared} bytes from a {size}-byte file (more than {MAX_EXPANSION} times "
            "its size: a factor file stores its arrays uncompressed)"
        )
    memory = _memory_bytes()
    if memory is not None and declared > memory:
        raise _TooLarge(f"its members would expand to {declared} bytes, more than this machine's memory ({memory})")


def _validated(kind: str, data: dict[str, np.ndarray], head: dict[str, np.ndarray] | None = None) -> Any:
    """The form (or, with ``head`` tags, the HeadForm) stored in ``data``, checked by the same validators as
    the pooling functions'. Only the ``head`` tag present: shapes only (the options are checked once read)."""
    for name, a in data.items():
        if a.dtype.kind != "f":
            raise TypeError(f"array {name!r} has dtype {a.dtype}, expected a real floating dtype")
    form = _form(kind, data)
    if head is None:
        return form
    opts: dict[str, Any] = {}
    if "normalize" in head:
        normalize = str(head["normalize"])
        opts = {
            "normalize": normalize or None,
            "attention": str(head["attention"]),
            "reduce": str(head["reduce"]),
            "eps": _scalar(head["eps"], "f", "eps"),
            "num_iters": int(_scalar(head["num_iters"], "iu", "num_iters")),
        }
    out = HeadForm(form, data.get("head_bias"), data.get("head_projection"), **opts)
    try:
        return check_head(out)
    except LowRankPoolError as err:
        raise ValueError(f"head {err}") from None


def _scalar(a: np.ndarray, kinds: str, name: str) -> Any:
    if a.shape != () or a.dtype.kind not in kinds:
        raise TypeError(f"tag {name!r} has shape {a.shape} and dtype {a.dtype}, expected a scalar")
    return a.item()


def _form(kind: str, data: dict[str, np.ndarray]) -> Any:
    if kind == "first_order":
        w = data["weights"]
        if w.ndim != 2 or 0 in w.shape:
            raise ValueError(f"weights: expected first-order weights (f, K), got shape {w.shape}")
        return w
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
