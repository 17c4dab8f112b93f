"""Pooling straight from a factorised class-weight tensor W (K, f, f), and conversions.

Forms (all plain containers of arrays, any backend):

- CP: tensorly ``CPTensor`` or ``(weights, [U, A, C])`` with U (K, R), A, C (f, R),
  weights (R,) or None: W = Σ_r λ_r u_r ∘ a_r ∘ c_r.
- Tucker: tensorly ``TuckerTensor`` or ``(core, [U, A, C])`` with core (R_K, R_a, R_c),
  U (K, R_K), A (f, R_a), C (f, R_c): W = core ×₁ U ×₂ A ×₃ C.
- :class:`EigTensor` ``(eigenvalues (K, P), eigenvectors (f, K, P))``:
  W_k = Σ_p μ_kp v_kp v_kpᵀ (what :func:`eig_approx` returns).
- :class:`RankP` ``(A (f, K, P), B (f, K, P) or (f, P))``: W_k = Σ_p a_kp b_kpᵀ
  (the parameters of :func:`rankp_pool`).

Every score is ⟨M_b, W_k⟩ with the package's scale M = XᵀX / n, the same as
:func:`bilinear_pool` of the dense W.

Each form's score and cost per sample: docs/math.md, "CP and Tucker forms of W".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from ._backend import Array, Namespace, device_of
from ._checks import (
    ArgumentError,
    ArgumentTypeError,
    ShapeError,
    check_channels,
    check_choice,
    check_positive_int,
    describe,
    pair_features,
    parse_cp,
    parse_eig,
    parse_rankp,
    parse_tucker,
    prepare,
    shape_of,
)
from ._forms import form_kind
from ._ops import project
from ._tensorly import tensorly_context
from .second_order import bilinear_scores, descriptor_scores, second_moment

__all__ = [
    "EigTensor",
    "RankP",
    "cp_pool",
    "cp_to_rankp",
    "eig_pool",
    "pool_cost",
    "rankp_to_cp",
    "to_dense",
    "tucker_pool",
]

Path = Literal["auto", "factorized", "dense"]

# Cost-model constants: a GEMM throughput and a memory bandwidth in the ratio of a CPU's (the values and where
# they come from: docs/performance.md). Only their ratio chooses the path; GEMMs whose output has fewer than
# ~SKINNY columns run far below peak, which is what makes the dense path win at n=4096, f=128.
PEAK_FLOPS = 250e9
BANDWIDTH = 25e9
SKINNY = 96


class EigTensor(NamedTuple):
    """Per-class eigen form W_k = Σ_p μ_kp v_kp v_kpᵀ of the symmetric part of W.

    Parameters
    ----------
    eigenvalues : array, (K, P)
        μ_kp, largest magnitude first.
    eigenvectors : array, (f, K, P)
        v_kp, orthonormal for each class.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> eig = lp.eig_approx(np.eye(3)[None], 2)
    >>> eig.eigenvalues.shape, eig.eigenvectors.shape
    ((1, 2), (3, 1, 2))
    """

    eigenvalues: Array  # (K, P)
    eigenvectors: Array  # (f, K, P)


class RankP(NamedTuple):
    """Rank-P factors W_k = Σ_p a_kp b_kpᵀ (B shared by the classes when 2-D).

    Parameters
    ----------
    A : array, (f, K, P)
        Top-down factors a_kp.
    B : array, (f, P) or (f, K, P)
        Bottom-up factors b_p (shared) or b_kp (per class).

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> rp = lp.RankP(np.ones((4, 3, 2)), np.ones((4, 2)))
    >>> lp.to_dense(rp).shape
    (3, 4, 4)
    """

    A: Array  # (f, K, P)
    B: Array  # (f, K, P) or (f, P)


# ---------------------------------------------------------------------------- cost model
def pool_cost(
    kind: Literal["cp", "tucker", "eig"],
    *,
    batch: int,
    positions: int,
    channels: int,
    classes: int,
    ranks: int | tuple[int, ...],
    itemsize: int = 4,
    measure: Literal["seconds", "flops", "bytes"] = "seconds",
) -> dict[str, float]:
    """Estimated seconds (or FLOPs, or bytes moved) of the factorised and the dense path.

    ``ranks`` is R (or (R, R, R)) for CP, (R_K, R_a, R_c) for Tucker and P for the
    eigen form. The estimate of each step is max(FLOPs / (PEAK·efficiency), bytes /
    BANDWIDTH), where a GEMM that writes m < SKINNY columns runs at efficiency
    m / SKINNY. Used by ``path="auto"``; ``measure="flops"`` / ``"bytes"`` return the
    sums the estimate is made of (the benchmarks' roofline uses them).

    Parameters
    ----------
    kind : {"cp", "tucker", "eig"}
        The factored form.
    batch, positions, channels, classes : int
        B, n, f and K of the problem.
    ranks : int or tuple of int
        The form's ranks (see above).
    itemsize : int, default 4
        Bytes per number (4 for float32).
    measure : {"seconds", "flops", "bytes"}, default "seconds"
        What to return.

    Returns
    -------
    dict
        ``{"factorized": ..., "dense": ...}`` in the unit of ``measure``.

    Examples
    --------
    >>> import lowrank_pool as lp
    >>> cost = lp.pool_cost("cp", batch=32, positions=196, channels=2048, classes=600, ranks=64)
    >>> cost["factorized"] < cost["dense"]
    True
    """
    check_choice(kind, "kind", ("cp", "tucker", "eig"))
    check_choice(measure, "measure", ("seconds", "flops", "bytes"))
    b, n, f, k = (
        check_positive_int(v, name)
        for v, name in ((batch, "batch"), (positions, "positions"), (channels, "channels"), (classes, "classes"))
    )
    itemsize = check_positive_int(itemsize, "itemsize")
    rk, ra, rc = _cost_ranks(kind, ranks)

    # each path is a list of steps (FLOPs, elements moved, output width of its GEMM)
    if kind == "eig":  # X V (width K·P), squares and a sum over positions
        width = k * ra
        fact = [(2 * b * n * f * width, b * n * f + b * n * width, width), (2 * b * n * width, b * n * width, SKINNY)]
        build = [(2 * k * f * f * ra, 2 * k * f * f, SKINNY)]
    elif kind == "cp":  # X [A | C] (width 2R), products, a sum over positions, then U
        width = ra + rc
        fact = [
            (2 * b * n * f * width, b * n * f + 2 * b * n * width, width),
            (2 * b * n * ra + 2 * b * ra * k, 2 * b * n * width, SKINNY),
        ]
        build = [(2 * k * f * f * ra, 2 * k * f * f, SKINNY)]
    else:  # X [A | C], (XA)ᵀ(XC), core, U
        width = ra + rc
        fact = [
            (2 * b * n * f * width, b * n * f + 2 * b * n * width, width),
            (2 * b * n * ra * rc + 2 * b * ra * rc * rk + 2 * b * rk * k, 2 * b * n * width, SKINNY),
        ]
        build = [(2 * k * f * ra * rc + 2 * k * f * f * ra, 2 * k * f * f, SKINNY)]
    dense = [
        *build,
        (2 * b * n * f * f, b * n * f + b * f * f, f),  # second moments
        (2 * b * k * f * f, b * f * f + k * f * f, k),  # <M, W_k>
    ]

    def total(steps: Sequence[tuple[float, float, float]]) -> float:
        if measure == "flops":
            return float(sum(fl for fl, _, _ in steps))
        if measure == "bytes":
            return float(sum(nb * itemsize for _, nb, _ in steps))
        return sum(max(fl / (PEAK_FLOPS * min(1.0, w / SKINNY)), nb * itemsize / BANDWIDTH) for fl, nb, w in steps)

    return {"factorized": total(fact), "dense": total(dense)}


def _cost_ranks(kind: str, ranks: Any) -> tuple[int, int, int]:
    if isinstance(ranks, tuple | list):
        values = [check_positive_int(r, "ranks") for r in ranks]
        if kind == "tucker" and len(values) == 3:
            return values[0], values[1], values[2]
        if kind != "tucker" and len(values) in (1, 3) and len(set(values)) == 1:
            return values[0], values[0], values[0]
        raise ArgumentError(f"ranks: expected {_RANKS_OF[kind]} for kind={kind!r}, got {ranks!r}")
    if kind == "tucker":
        raise ArgumentTypeError(f"ranks: expected {_RANKS_OF[kind]} for kind={kind!r}, got {ranks!r}")
    r = check_positive_int(ranks, "ranks")
    return r, r, r


_RANKS_OF = {"cp": "an int R", "eig": "an int P", "tucker": "a tuple (R_K, R_a, R_c)"}


def _choose(path: str, cost: dict[str, float]) -> str:
    check_choice(path, "path", ("auto", "factorized", "dense"))
    if path != "auto":
        return path
    return "factorized" if cost["factorized"] <= cost["dense"] else "dense"


# ---------------------------------------------------------------------------- dense
def _cp_dense(xp: Namespace, weights: Array, factors: list[Array]) -> Array:
    """W_k = A diag(λ ⊙ U_k) Cᵀ: K·f²·R work, K·f² memory (no (f², R) Khatri-Rao)."""
    u, a, c = factors
    scaled = a[None, :, :] * (u * weights[None, :])[:, None, :]  # (K, f, R)
    return xp.matmul(scaled, xp.matrix_transpose(c)[None, :, :])


def _tucker_dense(xp: Namespace, core: Array, factors: list[Array]) -> Array:
    u, a, c = factors
    rk, ra, rc = shape_of(core)
    t = xp.reshape(xp.matmul(u, xp.reshape(core, (rk, ra * rc))), (shape_of(u)[0], ra, rc))  # core ×₁ U
    return xp.matmul(xp.matmul(a[None, :, :], t), xp.matrix_transpose(c)[None, :, :])  # A T_k Cᵀ


# ---------------------------------------------------------------------------- pooling
def _second(xp: Namespace, feats: Any, y: Array, name: str, c: Array, channel_axis: int | None) -> Any:
    """Y's features beside X's, with the factor C (g, R) checked against Y's channel count g."""
    fy = pair_features(xp, feats, y, channel_axis)
    if shape_of(c)[0] != fy.channels:
        raise ShapeError(
            f"{name}: expected shape (g, R) with g = {fy.channels}, the channel count of Y "
            f"(a {fy.describe()}), got {shape_of(c)}"
        )
    return fy


def _cost(kind: str, feats: Any, classes: int, ranks: Any, dtype: Any) -> dict[str, float]:
    itemsize = 8 if "64" in str(dtype) else 4
    return pool_cost(
        kind,  # type: ignore[arg-type]
        batch=max(feats.batch, 1),
        positions=feats.positions,
        channels=feats.channels,
        classes=classes,
        ranks=ranks,
        itemsize=itemsize,
    )


def _halves(xp: Namespace, z: Array, ra: int, rc: int) -> tuple[Array, Array]:
    """Z (B, n, R_a + R_c) as its two blocks of columns. For equal widths by ``unstack`` of a
    (B, n, 2, R) view, whose backward writes both gradients into one buffer (torch: a stack);
    two slices have a backward that zero-fills a full-size buffer for each half and adds them
    (docs/performance.md)."""
    if ra != rc:
        return z[:, :, :ra], z[:, :, ra:]
    b, n, _ = shape_of(z)
    za, zc = xp.unstack(xp.reshape(z, (b, n, 2, ra)), axis=2)
    return za, zc


def cp_pool(
    X: Array,
    cp: Any,
    /,
    *,
    Y: Array | None = None,
    path: Path = "auto",
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""Class scores of bilinear pooling with a CP-factorised weight tensor.

    .. math:: s_{bk} = \langle M_b, W_k \rangle
              = \frac1n \sum_r \lambda_r U_{kr}\, (X_b a_r)^\top (X_b c_r),\qquad
              W = \textstyle\sum_r \lambda_r\, u_r \circ a_r \circ c_r

    ``path="factorized"``: one GEMM of X on [A | C] (width 2R), a product and a sum
    over positions, then (B, R) @ (R, K); neither W nor the f×f second moment is formed.
    ``path="dense"``: W_k = A diag(λ ⊙ U_k) Cᵀ, then :func:`bilinear_pool`.
    ``path="auto"`` picks the cheaper one by :func:`pool_cost`.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
    cp : tensorly CPTensor or (weights, [U, A, C])
        U (K, R), A (f, R), C (f, R) (C (g, R) with ``Y``), weights (R,) or None.
    Y : array, (B, n, g), (B, g, H, W) or (B, g, T, H, W), optional
        A second input at the same positions: :math:`s_{bk} = \frac1n \sum_r \lambda_r U_{kr} (X_b a_r)^\top
        (Y_b c_r)`, the CP form of W (K, f, g) (MLB / MFB fusion; n = 1 for two vectors). ``path="auto"`` is
        then the factorised path.
    path : {"auto", "factorized", "dense"}
    channel_axis : int, optional
    check_finite : bool

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> cp = (np.array([1.0]), [np.ones((3, 1)), np.ones((2, 1)), np.ones((2, 1))])
    >>> lp.cp_pool(X, cp)        # 3 classes, each W_k = 1 1ᵀ: (X1)ᵀ(X1) / n = (1 + 4) / 2
    array([[2.5, 2.5, 2.5]])
    """
    check_choice(path, "path", ("auto", "factorized", "dense"))
    _, weights, factors, sizes = parse_cp(cp, two=Y is not None)
    u, a, c = factors
    extra = {} if Y is None else {"Y": Y}
    xp, feats, fac = prepare(X, channel_axis, check_finite, U=u, A=a, C=c, weights=weights, **extra)
    check_channels(feats, "cp factor A", a, ("f", "R"), channel_axis)
    u, a, c, w = fac["U"], fac["A"], fac["C"], fac["weights"]
    k, r = sizes["K"], sizes["R"]
    if Y is not None:
        fy = _second(xp, feats, fac["Y"], "cp factor C", c, channel_axis)
        if path == "dense":
            return descriptor_scores(xp, second_moment(xp, feats, fy), _cp_dense(xp, w, [u, a, c]))
        s = xp.sum(project(xp, feats, a) * project(xp, fy, c), axis=1)  # (B, R): (X a_r)ᵀ (Y c_r)
        return xp.matmul(s, xp.matrix_transpose(u * w[None, :])) / feats.positions
    if _choose(path, _cost("cp", feats, k, r, feats.data.dtype)) == "dense":
        return bilinear_scores(xp, feats, _cp_dense(xp, w, [u, a, c]))
    za, zc = _halves(xp, project(xp, feats, xp.concat([a, c], axis=1)), r, r)  # X A, X C: (B, n, R) each
    s = xp.sum(za * zc, axis=1)  # (B, R): (X a_r)ᵀ (X c_r)
    return xp.matmul(s, xp.matrix_transpose(u * w[None, :])) / feats.positions


def tucker_pool(
    X: Array,
    tucker: Any,
    /,
    *,
    Y: Array | None = None,
    path: Path = "auto",
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""Class scores of bilinear pooling with a Tucker-factorised weight tensor.

    .. math:: s_{bk} = \frac1n \sum_{q} U_{kq} \sum_{r,s} G_{qrs}\, \big[(X_b A)^\top (X_b C)\big]_{rs},
              \qquad W = G \times_1 U \times_2 A \times_3 C

    ``path="factorized"``: one GEMM of X on [A | C], the small (R_a, R_c) matrix
    (XA)ᵀ(XC) per sample, then two small products with the core and U.
    ``path="dense"``: W = A (G ×₁ U)_k Cᵀ, then :func:`bilinear_pool`.
    ``path="auto"`` picks by :func:`pool_cost`.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
    tucker : tensorly TuckerTensor or (core, [U, A, C])
        core (R_K, R_a, R_c), U (K, R_K), A (f, R_a), C (f, R_c); the multilinear ranks
        must be valid (each at most its dimension and the product of the other two). C is (g, R_c) with ``Y``.
    Y : array, (B, n, g), (B, g, H, W) or (B, g, T, H, W), optional
        A second input at the same positions: the Tucker form of W (K, f, g) on M = XᵀY / n (MUTAN fusion;
        n = 1 for two vectors). ``path="auto"`` is then the factorised path.
    path : {"auto", "factorized", "dense"}
    channel_axis : int, optional
    check_finite : bool

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> tk = (np.ones((1, 1, 1)), [np.array([[1.0], [2.0]]), np.ones((2, 1)), np.ones((2, 1))])
    >>> lp.tucker_pool(X, tk)    # W_1 = 1 1ᵀ, W_2 = 2·1 1ᵀ
    array([[2.5, 5. ]])
    """
    check_choice(path, "path", ("auto", "factorized", "dense"))
    _, core, factors, sizes = parse_tucker(tucker, two=Y is not None)
    u, a, c = factors
    extra = {} if Y is None else {"Y": Y}
    xp, feats, fac = prepare(X, channel_axis, check_finite, U=u, A=a, C=c, core=core, **extra)
    check_channels(feats, "tucker factor A", a, ("f", "R_a"), channel_axis)
    u, a, c, g = fac["U"], fac["A"], fac["C"], fac["core"]
    k, rk, ra, rc = sizes["K"], sizes["R_K"], sizes["R_a"], sizes["R_c"]
    if Y is not None:
        fy = _second(xp, feats, fac["Y"], "tucker factor C", c, channel_axis)
        if path == "dense":
            return descriptor_scores(xp, second_moment(xp, feats, fy), _tucker_dense(xp, g, [u, a, c]))
        za, zc = project(xp, feats, a), project(xp, fy, c)  # X A, Y C
    elif _choose(path, _cost("tucker", feats, k, (rk, ra, rc), feats.data.dtype)) == "dense":
        return bilinear_scores(xp, feats, _tucker_dense(xp, g, [u, a, c]))
    else:
        za, zc = _halves(xp, project(xp, feats, xp.concat([a, c], axis=1)), ra, rc)  # X A, X C
    m = xp.matmul(xp.matrix_transpose(za), zc)  # (B, R_a, R_c)
    s = xp.matmul(xp.reshape(m, (feats.batch, ra * rc)), xp.matrix_transpose(xp.reshape(g, (rk, ra * rc))))
    return xp.matmul(s, xp.matrix_transpose(u)) / feats.positions


def eig_pool(
    X: Array,
    eig: EigTensor | tuple[Array, Array],
    /,
    *,
    path: Path = "auto",
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""Class scores from the eigen form: :math:`s_{bk} = \frac1n \sum_p \mu_{kp} \lVert X_b v_{kp}\rVert^2`.

    ``path="factorized"``: one GEMM of X on the K·P eigenvectors (width K·P, half of
    the 2·K·P of the equivalent :func:`rankp_pool`), squares and a sum over positions.
    ``path="dense"``: W_k = V_k diag(μ_k) V_kᵀ, then :func:`bilinear_pool`.
    ``path="auto"`` picks by :func:`pool_cost`.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
    eig : EigTensor or (eigenvalues (K, P), eigenvectors (f, K, P))
    path : {"auto", "factorized", "dense"}
    channel_axis : int, optional
    check_finite : bool

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> eig = lp.EigTensor(np.array([[1.0, -1.0]]), np.eye(2)[:, None, :])   # W = diag(1, -1)
    >>> lp.eig_pool(X, eig)      # (1 - 4) / 2
    array([[-1.5]])
    """
    check_choice(path, "path", ("auto", "factorized", "dense"))
    _, mu, v, sizes = parse_eig(eig)
    xp, feats, fac = prepare(X, channel_axis, check_finite, eigenvalues=mu, eigenvectors=v)
    check_channels(feats, "eigenvectors", v, ("f", "K", "P"), channel_axis)
    mu, v = fac["eigenvalues"], fac["eigenvectors"]
    k, p = sizes["K"], sizes["P"]
    if _choose(path, _cost("eig", feats, k, p, feats.data.dtype)) == "dense":
        return bilinear_scores(xp, feats, _eig_dense(xp, mu, v))
    z = project(xp, feats, xp.reshape(v, (feats.channels, k * p)))  # (B, n, K·P)
    sq = xp.reshape(xp.sum(z * z, axis=1), (feats.batch, k, p))
    return xp.sum(sq * mu[None, :, :], axis=2) / feats.positions


# ---------------------------------------------------------------------------- conversions
def _eig_dense(xp: Namespace, mu: Array, v: Array) -> Array:
    vk = xp.permute_dims(v, (1, 0, 2))  # (K, f, P)
    return xp.matmul(vk * mu[:, None, :], xp.matrix_transpose(vk))


def _rankp_dense(xp: Namespace, a: Array, b: Array, sizes: dict[str, int], shared: bool) -> Array:
    if shared:
        bk = xp.broadcast_to(xp.permute_dims(b, (1, 0))[None, :, :], (sizes["K"], sizes["P"], sizes["f"]))
    else:
        bk = xp.permute_dims(b, (1, 2, 0))  # (K, P, f)
    return xp.matmul(xp.permute_dims(a, (1, 0, 2)), bk)


def to_dense(obj: Any, /) -> Array:
    """W (K, f, f) from a CP, Tucker, :class:`EigTensor` or :class:`RankP` form.

    Built by batched matrix products (K·f² memory), never through a (f², R)
    Khatri-Rao product as ``tensorly.cp_to_tensor`` does. ``bilinear_pool(X, to_dense(form))``
    equals the form's own pooling function.

    Parameters
    ----------
    obj : CPTensor, TuckerTensor, EigTensor, RankP or their tuples
        The factored form, on any backend.

    Returns
    -------
    array, (K, f, f)
        W, in the factors' library, device and dtype.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> lp.to_dense((None, [np.ones((1, 1)), np.array([[1.0], [2.0]]), np.ones((2, 1))]))
    array([[[1., 1.],
            [2., 2.]]])
    """
    kind = form_kind(obj)
    if kind == "eig":
        xp, mu, v, _ = parse_eig(obj)
        return _eig_dense(xp, mu, v)
    if kind == "rankp":
        a, b = obj
        xp, sizes, shared = parse_rankp(a, b)
        return _rankp_dense(xp, a, b, sizes, shared)
    if kind == "tucker":  # (W (K, f, f), or (K, f, g) of two inputs)
        xp, core, factors, _ = parse_tucker(obj, two=True)
        return _tucker_dense(xp, core, factors)
    if kind == "cp":
        xp, weights, factors, _ = parse_cp(obj, two=True)
        return _cp_dense(xp, weights, factors)
    raise ArgumentTypeError(
        "obj: expected a CPTensor, TuckerTensor, EigTensor, RankP or a (weights, factors) / (core, factors) "
        f"tuple, got {describe(obj)}"
    )


def rankp_to_cp(A: Array | RankP, B: Array | None = None, /) -> Any:
    """Rank-P factors as a CP tensor of rank K·P (component (k, p) is e_k ∘ a_kp ∘ b_kp).

    Takes ``(A, B)`` or one :class:`RankP` (what :func:`cp_to_rankp` returns), and
    returns a tensorly ``CPTensor`` whose :func:`cp_pool` scores equal
    ``rankp_pool(X, A, B)`` (σ the identity).

    Parameters
    ----------
    A : array, (f, K, P), or RankP
        Top-down factors a_kp (or the whole form, with ``B`` omitted).
    B : array, (f, P) or (f, K, P), optional
        Bottom-up factors, shared by the classes (2-D) or per class (3-D).

    Returns
    -------
    CPTensor
        Rank K·P, factors (K, KP), (f, KP), (f, KP), unit weights.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> cp = lp.rankp_to_cp(np.ones((3, 2, 1)), np.ones((3, 1)))
    >>> cp.rank, [f.shape for f in cp.factors]
    (2, [(2, 2), (3, 2), (3, 2)])
    """
    from tensorly.cp_tensor import CPTensor

    if B is None:
        if form_kind(A) != "rankp":
            raise ArgumentTypeError(f"A: expected a RankP (A, B) pair when B is omitted, got {describe(A)}")
        A, B = A
    xp, sizes, shared = parse_rankp(A, B)
    f, k, p = sizes["f"], sizes["K"], sizes["P"]
    if shared:
        B = xp.broadcast_to(B[:, None, :], (f, k, p))
    eye = xp.eye(k, dtype=A.dtype, device=device_of(A))  # type: ignore[union-attr]
    u = xp.reshape(xp.broadcast_to(eye[:, :, None], (k, k, p)), (k, k * p))
    weights = xp.ones(k * p, dtype=A.dtype, device=device_of(A))  # type: ignore[union-attr]
    with tensorly_context(xp, "A", fit=False):
        return CPTensor((weights, [u, xp.reshape(A, (f, k * p)), xp.reshape(B, (f, k * p))]))


def cp_to_rankp(cp: Any, /) -> RankP:
    """A CP tensor of rank R as rank-R factors with a *shared* bottom-up B = C (f, R).

    W_k = Σ_r (λ_r U_kr a_r) c_rᵀ, so A[:, k, r] = λ_r U_kr a_r and B = C; the result
    plugs into :func:`rankp_pool` (or an attentional layer) with the same scores, and
    :func:`rankp_to_cp` takes it back.

    Parameters
    ----------
    cp : CPTensor or (weights, [U (K, R), A (f, R), C (f, R)])
        A CP form of W (K, f, f); ``weights`` may be None (all ones).

    Returns
    -------
    RankP
        ``A`` (f, K, R) and the shared ``B`` (f, R).

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> rp = lp.cp_to_rankp((None, [np.ones((2, 1)), np.ones((3, 1)), np.ones((3, 1))]))
    >>> rp.A.shape, rp.B.shape
    ((3, 2, 1), (3, 1))
    """
    _xp, weights, (u, a, c), _ = parse_cp(cp)
    return RankP(a[:, None, :] * (u * weights[None, :])[None, :, :], c)
