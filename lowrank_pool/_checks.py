"""Up-front validation shared by every public function, layer and the file loader.

Every message names the argument, what was expected and what was received, so a
user sees ``A: expected shape (f, K) with f = 512 (the channels of X), got (256, 10)``
instead of a BLAS error three frames deep. The factor forms (CP, Tucker, eigen,
rank-P) each have one validator here, used by the pooling functions, the layers'
``from_factors`` and :func:`lowrank_pool.load_factors` alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._backend import Array, Namespace, acc_dtype, check_floating, device_of, namespace, result_dtype
from ._errors import (
    ArgumentError,
    ArgumentTypeError,
    BackendError,
    DTypeError,
    LowRankPoolError,
    ShapeError,
    shape_of,
)
from ._forms import form_kind
from ._layout import Features, features

__all__ = [
    "MAX_ITERATIONS",
    "ArgumentError",
    "ArgumentTypeError",
    "BackendError",
    "DTypeError",
    "LowRankPoolError",
    "ShapeError",
    "check_channels",
    "check_choice",
    "check_factor",
    "check_finite",
    "check_number",
    "check_positive_int",
    "check_progress",
    "check_shape",
    "check_tucker_ranks",
    "describe",
    "parse_cp",
    "parse_eig",
    "parse_rankp",
    "parse_tucker",
    "prepare",
    "shape_of",
]


# ----------------------------------------------------------------------------- scalars
def check_positive_int(value: Any, name: str, most: int | None = None) -> int:
    """Return ``value`` as an int, or raise if it is not a positive integer (at most ``most``).

    Parameters
    ----------
    value : Any
        The argument to check (a bool is refused).
    name : str
        Its name, for the error.
    most : int, optional
        The largest value accepted (an iteration count whose loop would never end, say).

    Examples
    --------
    >>> from lowrank_pool.validation import check_positive_int
    >>> check_positive_int(3, "rank")
    3
    >>> check_positive_int(0, "rank")
    Traceback (most recent call last):
    ...
    lowrank_pool._errors.ArgumentError: rank: expected a positive int, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ArgumentTypeError(f"{name}: expected a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ArgumentError(f"{name}: expected a positive int, got {value}")
    if most is not None and value > most:
        raise ArgumentError(f"{name}: expected a positive int of at most {most}, got {value}")
    return int(value)


MAX_ITERATIONS = 1000  # Newton–Schulz converges quadratically within tens of steps; more is a mistake, not a wish


def check_int(value: Any, name: str) -> int:
    """Return ``value`` as a Python int (numpy integers included), or raise if it is not an integer.

    Parameters
    ----------
    value : Any
        The argument (a bool is refused).
    name : str
        Its name, for the error.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_pool.validation import check_int
    >>> check_int(np.int64(7), "seed")
    7
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ArgumentTypeError(f"{name}: expected an int, got {type(value).__name__}")
    return int(value)


def check_progress(value: Any, name: str = "progress") -> bool | None:
    """Raise unless ``value`` is True, False or None (show a bar, never, when tqdm and a terminal are there)."""
    if value is not None and not isinstance(value, bool):
        raise ArgumentTypeError(f"{name}: expected True, False or None, got {type(value).__name__}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """Raise unless ``value`` is one of ``choices``; return it.

    Parameters
    ----------
    value : Any
        The argument (only plain scalars can match).
    name : str
        Its name, for the error.
    choices : sequence
        The allowed values.

    Examples
    --------
    >>> from lowrank_pool.validation import check_choice
    >>> check_choice("max", "reduce", ("mean", "sum", "max"))
    'max'
    """
    # only plain scalars can be a choice: an array's `in` would be ambiguous, a list unhashable
    ok = isinstance(value, str | int | float | type(None)) and value in choices
    if not ok or (isinstance(value, bool) and not any(c is value for c in choices)):
        raise ArgumentError(f"{name}: expected one of {list(choices)!r}, got {value!r}")
    return value


def check_number(value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as a float if it is a finite real number >= 0 (> 0 with ``positive``), else a named error.

    Parameters
    ----------
    value : Any
        The argument (a bool, NaN or inf is refused).
    name : str
        Its name, for the error.
    positive : bool, default False
        Require > 0 instead of >= 0.

    Examples
    --------
    >>> from lowrank_pool.validation import check_number
    >>> check_number(1e-6, "eps", positive=True)
    1e-06
    """
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if not ok or not (value > 0 if positive else value >= 0) or not math.isfinite(value):
        expected = "a number > 0 (finite)" if positive else "a finite number >= 0"
        raise ArgumentError(f"{name}: expected {expected}, got {value!r}")
    return float(value)


def check_flag(value: Any, name: str) -> bool:
    """Raise unless ``value`` is a bool (numpy's included); return it as a Python bool.

    Parameters
    ----------
    value : Any
        The argument.
    name : str
        Its name, for the error.

    Examples
    --------
    >>> from lowrank_pool.validation import check_flag
    >>> check_flag(True, "bias")
    True
    """
    if not isinstance(value, bool | np.bool_):
        raise ArgumentTypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_finite(xp: Namespace, x: Array, name: str) -> None:
    """Raise if ``x`` contains NaN or infinity (forces a device sync on GPUs; meta tensors have no values)."""
    if str(getattr(x, "device", "")) == "meta":
        return
    try:
        finite = bool(xp.all(xp.isfinite(x)))
    except Exception as err:  # a traced value (jax.jit) has no truth value to check
        raise ArgumentError(
            f"check_finite: the values of {name} cannot be checked inside a traced function (jax.jit, vmap); "
            "check them outside it, or pass check_finite=False"
        ) from err
    if not finite:
        bad = int(xp.sum(xp.astype(~xp.isfinite(x), xp.int64)))
        raise ArgumentError(f"{name}: expected finite values, got {bad} NaN/inf entries of {math.prod(shape_of(x))}")


# ----------------------------------------------------------------------------- shapes
def check_shape(name: str, x: Any, dims: Sequence[str], **known: int) -> dict[str, int]:
    """Match the shape of ``x`` against named dimensions and return their sizes.

    ``check_shape("A", A, ("f", "K"), f=512)`` checks that A is 2-D with 512 rows and
    at least one column, and returns ``{"f": 512, "K": A.shape[1]}``. A size that is
    already known must match; every size must be positive.
    """
    if not hasattr(x, "shape"):
        raise BackendError(f"{name}: expected an array, got {type(x).__name__}")
    shape = shape_of(x)

    def expected() -> str:  # the message is built only for an error (this runs on every call)
        pattern = "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")
        fixed = ", ".join(f"{d} = {known[d]}" for d in dict.fromkeys(dims) if d in known)
        return pattern + (f" with {fixed}" if fixed else "")

    if len(shape) != len(dims):
        plural = "s" if len(dims) != 1 else ""
        raise ShapeError(f"{name}: expected {len(dims)} dimension{plural} {expected()}, got shape {shape}")
    sizes = dict(known)
    for d, s in zip(dims, shape, strict=True):
        if d in sizes and sizes[d] != s:
            raise ShapeError(f"{name}: expected shape {expected()}, got {shape} ({d} = {s} does not match {sizes[d]})")
        if s <= 0:
            raise ShapeError(f"{name}: expected shape {expected()} with every size positive, got {shape}")
        sizes[d] = s
    return sizes


def check_channels(
    feats: Features, name: str, x: Any, dims: Sequence[str], channel_axis: int | None, f_axis: int = 0
) -> None:
    """Check that factor ``name`` (shape ``dims``) has X's channel count on ``f_axis``, naming X's layout if not."""
    shape = shape_of(x)
    if shape[f_axis] == feats.channels:
        return
    hint = (
        "pass channel_axis=-1 if the channels are last"
        if feats.axis != len(feats.shape) - 1
        else "pass channel_axis=1 if the channels come first"
    )
    how = "by the default rule (channel_axis=None)" if channel_axis is None else f"with channel_axis={channel_axis}"
    pattern = "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")
    raise ShapeError(
        f"{name}: expected shape {pattern} with f = {feats.channels}, got {shape}; f is the channel count of X, "
        f"read {how} as a {feats.describe()}; {hint}"
    )


def check_factor(
    feats: Features, name: str, x: Any, dims: Sequence[str], channel_axis: int | None, f_axis: int = 0
) -> dict[str, int]:
    """check_shape of a factor whose ``dims`` hold f, with a layout-naming error when only f differs."""
    if hasattr(x, "shape") and len(shape_of(x)) == len(dims):
        check_channels(feats, name, x, dims, channel_axis, f_axis)
    return check_shape(name, x, dims, f=feats.channels)


def check_tucker_ranks(rank: Any, k: int, f: int, name: str = "rank", g: int | None = None) -> tuple[int, int, int]:
    """Multilinear ranks (R_K, R_a, R_c) of a Tucker form of W (K, f, f) (or (K, f, g)).

    An int r means (min(r, K), r, r) (for W (K, f, g): (min(r, K), min(r, f), min(r, g))). Each rank must
    fit its dimension and be at most the product of the other two (otherwise no tensor has those multilinear
    ranks).

    Parameters
    ----------
    rank : int or (int, int, int)
        The requested ranks.
    k, f : int
        K and f of W.
    name : str, default "rank"
        The argument's name, for the error.
    g : int, optional
        W's last dimension where it differs from f (two inputs).

    Examples
    --------
    >>> from lowrank_pool.validation import check_tucker_ranks
    >>> check_tucker_ranks(8, 5, 16)
    (5, 8, 8)
    >>> check_tucker_ranks(8, 5, 16, g=4)
    (5, 8, 4)
    """
    g = f if g is None else g
    shape = (k, f, g)
    if isinstance(rank, int | np.integer) and not isinstance(rank, bool):
        r = check_positive_int(rank, name)
        if g == f:
            if r > f:
                raise ArgumentError(f"{name}: expected at most f = {f} for W of shape {shape}, got {r}")
            return (min(r, k), r, r)
        out = (min(r, k), min(r, f), min(r, g))
    else:
        if not isinstance(rank, Sequence) or isinstance(rank, str):
            raise ArgumentTypeError(f"{name}: expected an int or a tuple (R_K, R_a, R_c), got {type(rank).__name__}")
        if len(rank) != 3:
            raise ArgumentError(f"{name}: expected an int or a tuple (R_K, R_a, R_c), got {rank!r}")
        out = tuple(check_positive_int(r, name) for r in rank)  # type: ignore[assignment]
        if out[0] > k or out[1] > f or out[2] > g:
            names = "(R_K, R_f, R_f)" if g == f else "(R_K, R_f, R_g)"
            raise ArgumentError(f"{name}: expected {names} <= {shape} for W of shape {shape}, got {out}")
    for i in range(3):
        others = math.prod(out) // out[i]
        if out[i] > others:
            raise ArgumentError(
                f"{name}: multilinear ranks must each be at most the product of the other two, got {out} "
                f"({out[i]} > {others})"
            )
    return out


# ----------------------------------------------------------------------------- preamble
def prepare(
    x: Array,
    channel_axis: int | None,
    finite: bool,
    **factors: Array,
) -> tuple[Namespace, Features, dict[str, Array]]:
    """Common preamble of the pooling functions.

    Infers the namespace from X and the factors, views X as a (B, n, f)/(B, f, n)
    matrix batch, checks dtypes (and finiteness when ``finite``), and casts
    everything to one dtype by the package's rule: mixed float32/float64 promote,
    float16/bfloat16 compute (and return) float32.
    """
    xp = namespace(X=x, **factors)
    feats = features(xp, x, channel_axis)
    for name, a in factors.items():
        check_floating(xp, a, name)
    if check_flag(finite, "check_finite"):
        check_finite(xp, x, "X")
        for name, a in factors.items():
            check_finite(xp, a, name)
    dt = acc_dtype(xp, result_dtype(xp, feats.data, *factors.values()))
    if feats.data.dtype != dt:
        feats = feats._replace(data=xp.astype(feats.data, dt))
    cast = {n: (a if a.dtype == dt else xp.astype(a, dt)) for n, a in factors.items()}
    return xp, feats, cast


def pair_features(xp: Namespace, feats: Features, y: Array, channel_axis: int | None) -> Features:
    """The second input Y (B, n, g) of a two-input function, beside X's validated features: read by the same
    channel-axis rule, with X's batch and number of positions (Y's channel count g may differ from f). ``y`` is
    already cast to the compute dtype by :func:`prepare` (pass it there as a factor named Y)."""
    fy = features(xp, y, channel_axis, name="Y")
    if fy.batch != feats.batch or fy.positions != feats.positions:
        raise ShapeError(
            f"Y: expected {feats.batch} samples of n = {feats.positions} positions (those of X, a "
            f"{feats.describe()}), got a {fy.describe()}: {fy.batch} samples of n = {fy.positions}"
        )
    return fy


def center_features(xp: Namespace, feats: Features) -> Features:
    """X − 1 x̄ᵀ: every sample's features minus their mean over the positions (the same layout)."""
    axis = 1 if feats.layout == "bnf" else 2
    return feats._replace(data=feats.data - xp.mean(feats.data, axis=axis, keepdims=True))


# ----------------------------------------------------------------------------- factor forms
_FORM_NAMES = {
    "cp": "a CP form (CPTensor or (weights, [U, A, C]))",
    "tucker": "a Tucker form (TuckerTensor or (core, [U, A, C]))",
    "eig": "an eigen form (EigTensor: eigenvalues (K, P), eigenvectors (f, K, P))",
    "rankp": "a rank-P form (RankP: A (f, K, P), B)",
    "dense": "a dense W (K, f, f)",
}
_FORM_USE = {
    "cp": "cp_pool",
    "tucker": "tucker_pool",
    "eig": "eig_pool",
    "rankp": "rankp_pool",
    "dense": "bilinear_pool",
}


def describe(obj: Any) -> str:
    """What ``obj`` is, for error messages: its factor form, or its type (and shape)."""
    kind = form_kind(obj)
    if kind is not None:
        return f"{_FORM_NAMES[kind]} (use {_FORM_USE[kind]})"
    if hasattr(obj, "shape"):
        return f"{type(obj).__name__} of shape {shape_of(obj)}"
    if isinstance(obj, tuple | list):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return type(obj).__name__


def _factor_list(factors: Any, name: str, expected: str) -> list[Array]:
    """The three factor matrices [U, A, C] of a CP/Tucker form, each an array."""
    if not isinstance(factors, tuple | list) or len(factors) != 3:
        got = f"{len(factors)} items" if isinstance(factors, tuple | list) else type(factors).__name__
        raise ShapeError(f"{name}: expected 3 factor matrices {expected}, got {got}")
    for k, v in zip("UAC", factors, strict=True):
        if not hasattr(v, "shape"):
            raise BackendError(f"{name} factor {k}: expected an array, got {type(v).__name__}")
    return list(factors)


def _check_factors(factors: list[Array], name: str, ranks: tuple[str, str, str], c_rows: str = "f") -> dict[str, int]:
    sizes = check_shape(f"{name} factor U", factors[0], ("K", ranks[0]))
    sizes = check_shape(f"{name} factor A", factors[1], ("f", ranks[1]), **sizes)
    return check_shape(f"{name} factor C", factors[2], (c_rows, ranks[2]), **sizes)


def _factor_namespace(name: str, **arrays: Array) -> Namespace:
    xp = namespace(**{f"{name} {k}": v for k, v in arrays.items()})
    for k, v in arrays.items():
        check_floating(xp, v, f"{name} {k}")
    return xp


def parse_cp(cp: Any, name: str = "cp", two: bool = False) -> tuple[Namespace, Array, list[Array], dict[str, int]]:
    """Validated (xp, weights, [U, A, C], sizes) of a CP form; weights None become ones. ``two``: a form of
    W (K, f, g) for two inputs (C (g, R))."""
    if form_kind(cp) != "cp":
        raise ArgumentTypeError(f"{name}: expected a CPTensor or a (weights, [U, A, C]) tuple, got {describe(cp)}")
    weights, factors = (cp.weights, cp.factors) if hasattr(cp, "weights") else cp
    factors = _factor_list(factors, name, f"[U (K, R), A (f, R), C ({'g' if two else 'f'}, R)]")
    sizes = _check_factors(factors, name, ("R", "R", "R"), "g" if two else "f")
    arrays = dict(zip(("factor U", "factor A", "factor C"), factors, strict=True))
    if weights is not None:
        arrays["weights"] = weights
    xp = _factor_namespace(name, **arrays)
    if weights is None:
        weights = xp.ones(sizes["R"], dtype=factors[0].dtype, device=device_of(factors[0]))
    else:
        check_shape(f"{name} weights", weights, ("R",), R=sizes["R"])
    return xp, weights, factors, sizes


def parse_tucker(
    tk: Any, name: str = "tucker", two: bool = False
) -> tuple[Namespace, Array, list[Array], dict[str, int]]:
    """Validated (xp, core, [U, A, C], sizes) of a Tucker form.

    Any ranks that multiply out are accepted here (a redundant form still defines W);
    :func:`check_tucker_ranks` is what a fit or a layer of given ranks must pass.
    """
    if form_kind(tk) != "tucker":
        raise ArgumentTypeError(f"{name}: expected a TuckerTensor or a (core, [U, A, C]) tuple, got {describe(tk)}")
    core, factors = (tk.core, tk.factors) if hasattr(tk, "core") else tk
    factors = _factor_list(factors, name, f"[U (K, R_K), A (f, R_a), C ({'g' if two else 'f'}, R_c)]")
    sizes = _check_factors(factors, name, ("R_K", "R_a", "R_c"), "g" if two else "f")
    check_shape(f"{name} core", core, ("R_K", "R_a", "R_c"), R_K=sizes["R_K"], R_a=sizes["R_a"], R_c=sizes["R_c"])
    xp = _factor_namespace(name, core=core, **{f"factor {k}": v for k, v in zip("UAC", factors, strict=True)})
    return xp, core, factors, sizes


def parse_eig(eig: Any, name: str = "eig") -> tuple[Namespace, Array, Array, dict[str, int]]:
    """Validated (xp, eigenvalues (K, P), eigenvectors (f, K, P), sizes) of an eigen form."""
    if form_kind(eig) != "eig":
        raise ArgumentTypeError(
            f"{name}: expected an EigTensor or an (eigenvalues (K, P), eigenvectors (f, K, P)) pair, "
            f"got {describe(eig)}"
        )
    mu, v = eig
    xp = _factor_namespace(name, eigenvalues=mu, eigenvectors=v)
    sizes = check_shape(f"{name} eigenvectors", v, ("f", "K", "P"))
    check_shape(f"{name} eigenvalues", mu, ("K", "P"), K=sizes["K"], P=sizes["P"])
    return xp, mu, v, sizes


def parse_rankp(A: Any, B: Any) -> tuple[Namespace, dict[str, int], bool]:
    """Validated (xp, sizes {f, K, P}, shared) of rank-P factors A (f, K, P) and B (f, P) or (f, K, P)."""
    xp = namespace(A=A, B=B)
    check_floating(xp, A, "A")
    check_floating(xp, B, "B")
    sizes = check_shape("A", A, ("f", "K", "P"))
    if getattr(B, "ndim", 0) == 2:
        check_shape("B", B, ("f", "P"), f=sizes["f"], P=sizes["P"])
        return xp, sizes, True
    check_shape("B", B, ("f", "K", "P"), **sizes)
    return xp, sizes, False
