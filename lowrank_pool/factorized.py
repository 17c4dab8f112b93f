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
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import array_api_compat as aac

from ._checks import ShapeError, check_choice, check_shape, shape_of
from ._xp import Array, Namespace, namespace, prepare, project
from .second_order import bilinear_scores

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

# Cost-model constants: float32 GEMM throughput and DRAM bandwidth of the 2-core machines
# this was measured on (DESIGN.md section 3: 180-430 GF/s, 26-33 GB/s). Only their ratio
# matters for the choice of path; GEMMs whose output has fewer than ~SKINNY columns run
# far below peak, which is what makes the dense path win at n=4096, f=128.
PEAK_FLOPS = 250e9
BANDWIDTH = 25e9
SKINNY = 96


class EigTensor(NamedTuple):
    """Per-class eigen form W_k = Σ_p μ_kp v_kp v_kpᵀ of the symmetric part of W."""

    eigenvalues: Array  # (K, P)
    eigenvectors: Array  # (f, K, P)


class RankP(NamedTuple):
    """Rank-P factors W_k = Σ_p a_kp b_kpᵀ (B shared by the classes when 2-D)."""

    A: Array  # (f, K, P)
    B: Array  # (f, K, P) or (f, P)


# ---------------------------------------------------------------------------- parsing
def cp_parts(cp: Any) -> tuple[Array | None, list[Array]]:
    """(weights, [U, A, C]) of a tensorly CPTensor or a plain (weights, factors) pair."""
    weights, factors = (cp.weights, cp.factors) if hasattr(cp, "weights") else cp
    return weights, list(factors)


def tucker_parts(tucker: Any) -> tuple[Array, list[Array]]:
    """(core, [U, A, C]) of a tensorly TuckerTensor or a plain (core, factors) pair."""
    core, factors = (tucker.core, tucker.factors) if hasattr(tucker, "core") else tucker
    return core, list(factors)


def _is_cp(obj: Any) -> bool:
    if type(obj).__name__ == "CPTensor":
        return True
    if type(obj).__name__ == "TuckerTensor" or isinstance(obj, EigTensor | RankP):
        return False
    return isinstance(obj, tuple | list) and len(obj) == 2 and (obj[0] is None or getattr(obj[0], "ndim", 0) == 1)


def _is_tucker(obj: Any) -> bool:
    if type(obj).__name__ == "TuckerTensor":
        return True
    if isinstance(obj, EigTensor | RankP) or type(obj).__name__ == "CPTensor":
        return False
    return isinstance(obj, tuple | list) and len(obj) == 2 and getattr(obj[0], "ndim", 0) == 3


def _check_factors(factors: list[Array], name: str, ranks: tuple[str, str, str]) -> dict[str, int]:
    if len(factors) != 3:
        raise ShapeError(f"{name}: expected 3 factor matrices [U (K, R), A (f, R), C (f, R)], got {len(factors)}")
    sizes = check_shape(f"{name} factor U", factors[0], ("K", ranks[0]))
    sizes = check_shape(f"{name} factor A", factors[1], ("f", ranks[1]), **sizes)
    return check_shape(f"{name} factor C", factors[2], ("f", ranks[2]), **sizes)


def parse_cp(cp: Any, name: str = "cp") -> tuple[Namespace, Array, list[Array], dict[str, int]]:
    """Validated (xp, weights, [U, A, C], sizes) of a CP form; weights None become ones."""
    try:
        weights, factors = cp_parts(cp)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name}: expected a CPTensor or a (weights, [U, A, C]) tuple, got {type(cp).__name__}"
        ) from err
    sizes = _check_factors(factors, name, ("R", "R", "R"))
    xp = namespace(**{f"{name} factor {k}": v for k, v in zip("UAC", factors, strict=True)})
    if weights is None:
        weights = xp.ones(sizes["R"], dtype=factors[0].dtype, device=aac.device(factors[0]))
    else:
        namespace(**{f"{name} factor U": factors[0], f"{name} weights": weights})
        check_shape(f"{name} weights", weights, ("R",), R=sizes["R"])
    return xp, weights, factors, sizes


def parse_tucker(tk: Any, name: str = "tucker") -> tuple[Namespace, Array, list[Array], dict[str, int]]:
    try:
        core, factors = tucker_parts(tk)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name}: expected a TuckerTensor or a (core, [U, A, C]) tuple, got {type(tk).__name__}"
        ) from err
    sizes = _check_factors(factors, name, ("R_K", "R_a", "R_c"))
    check_shape(f"{name} core", core, ("R_K", "R_a", "R_c"), R_K=sizes["R_K"], R_a=sizes["R_a"], R_c=sizes["R_c"])
    xp = namespace(**{f"{name} core": core, **{f"{name} factor {k}": v for k, v in zip("UAC", factors, strict=True)}})
    return xp, core, factors, sizes


# ---------------------------------------------------------------------------- cost model
def pool_cost(
    kind: Literal["cp", "tucker"],
    *,
    batch: int,
    positions: int,
    channels: int,
    classes: int,
    ranks: tuple[int, int, int],
    itemsize: int = 4,
) -> dict[str, float]:
    """Estimated seconds of the factorised and the dense path, by FLOPs and bytes.

    ``ranks`` is (R, R, R) for CP and (R_K, R_a, R_c) for Tucker. The estimate of each
    step is max(FLOPs / (PEAK·efficiency), bytes / BANDWIDTH), where a GEMM that writes
    m < SKINNY columns runs at efficiency m / SKINNY. Used by ``path="auto"``.
    """
    b, n, f, k = batch, positions, channels, classes
    rk, ra, rc = ranks

    def step(flops: float, nbytes: float, width: float = SKINNY) -> float:
        eff = min(1.0, width / SKINNY)
        return max(flops / (PEAK_FLOPS * eff), nbytes * itemsize / BANDWIDTH)

    width = ra + rc
    fact = step(2 * b * n * f * width, b * n * f + 2 * b * n * width, width)  # X [A | C]
    if kind == "cp":
        fact += step(2 * b * n * ra + 2 * b * ra * k, 2 * b * n * width)
        dense_build = step(2 * k * f * f * ra, 2 * k * f * f)
    else:
        fact += step(2 * b * n * ra * rc + 2 * b * ra * rc * rk + 2 * b * rk * k, 2 * b * n * width)
        dense_build = step(2 * k * f * ra * rc + 2 * k * f * f * ra, 2 * k * f * f)
    dense = dense_build + step(2 * b * n * f * f, b * n * f + b * f * f, f)  # Gram
    dense += step(2 * b * k * f * f, b * f * f + k * f * f, k)  # <G, W_k>
    return {"factorized": fact, "dense": dense}


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
def cp_pool(
    X: Array,
    cp: Any,
    /,
    *,
    path: Path = "auto",
    channel_axis: int = -1,
    check_finite: bool = False,
) -> Array:
    r"""Class scores of bilinear pooling with a CP-factorised weight tensor.

    .. math:: s_{bk} = \langle X_b^\top X_b, W_k \rangle
              = \sum_r \lambda_r U_{kr}\, (X_b a_r)^\top (X_b c_r),\qquad
              W = \textstyle\sum_r \lambda_r\, u_r \circ a_r \circ c_r

    ``path="factorized"``: one GEMM of X on [A | C] (width 2R), a product and a sum
    over positions, then (B, R) @ (R, K); neither W nor the f×f Gram matrix is formed.
    ``path="dense"``: W_k = A diag(λ ⊙ U_k) Cᵀ, then :func:`bilinear_pool`.
    ``path="auto"`` picks the cheaper one by :func:`pool_cost`.

    Parameters
    ----------
    X : array, (B, n, f) or, with ``channel_axis=1``, (B, f, H, W) / (B, f, T, H, W)
    cp : tensorly CPTensor or (weights, [U, A, C])
        U (K, R), A (f, R), C (f, R), weights (R,) or None.
    path : {"auto", "factorized", "dense"}
    channel_axis : int
    check_finite : bool

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> cp = (np.array([1.0]), [np.ones((3, 1)), np.ones((2, 1)), np.ones((2, 1))])
    >>> lp.cp_pool(X, cp)        # 3 classes, each W_k = 1 1ᵀ: (X1)ᵀ(X1) = 1 + 4
    array([[5., 5., 5.]])
    """
    _, weights, factors, sizes = parse_cp(cp)
    u, a, c = factors
    xp, feats, fac = prepare(X, channel_axis, check_finite, U=u, A=a, C=c, weights=weights)
    check_shape("cp factor A", fac["A"], ("f", "R"), f=feats.channels)
    u, a, c, w = fac["U"], fac["A"], fac["C"], fac["weights"]
    k, r = sizes["K"], sizes["R"]
    cost = pool_cost(
        "cp", batch=feats.batch, positions=feats.positions, channels=feats.channels, classes=k, ranks=(r, r, r)
    )
    if _choose(path, cost) == "dense":
        return bilinear_scores(xp, feats, _cp_dense(xp, w, [u, a, c]))
    z = project(xp, feats, xp.concat([a, c], axis=1))  # (B, n, 2R)
    s = xp.sum(z[:, :, :r] * z[:, :, r:], axis=1)  # (B, R): (X a_r)ᵀ (X c_r)
    return xp.matmul(s, xp.matrix_transpose(u * w[None, :]))


def tucker_pool(
    X: Array,
    tucker: Any,
    /,
    *,
    path: Path = "auto",
    channel_axis: int = -1,
    check_finite: bool = False,
) -> Array:
    r"""Class scores of bilinear pooling with a Tucker-factorised weight tensor.

    .. math:: s_{bk} = \sum_{q} U_{kq} \sum_{r,s} G_{qrs}\, \big[(X_b A)^\top (X_b C)\big]_{rs},
              \qquad W = G \times_1 U \times_2 A \times_3 C

    ``path="factorized"``: one GEMM of X on [A | C], the small (R_a, R_c) matrix
    (XA)ᵀ(XC) per sample, then two small products with the core and U.
    ``path="dense"``: W = A (G ×₁ U)_k Cᵀ, then :func:`bilinear_pool`.
    ``path="auto"`` picks by :func:`pool_cost`.

    Parameters
    ----------
    X : array, (B, n, f) or, with ``channel_axis=1``, (B, f, H, W) / (B, f, T, H, W)
    tucker : tensorly TuckerTensor or (core, [U, A, C])
        core (R_K, R_a, R_c), U (K, R_K), A (f, R_a), C (f, R_c).
    path : {"auto", "factorized", "dense"}
    channel_axis : int
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
    array([[ 5., 10.]])
    """
    _, core, factors, sizes = parse_tucker(tucker)
    u, a, c = factors
    xp, feats, fac = prepare(X, channel_axis, check_finite, U=u, A=a, C=c, core=core)
    check_shape("tucker factor A", fac["A"], ("f", "R_a"), f=feats.channels)
    u, a, c, g = fac["U"], fac["A"], fac["C"], fac["core"]
    k, rk, ra, rc = sizes["K"], sizes["R_K"], sizes["R_a"], sizes["R_c"]
    cost = pool_cost(
        "tucker", batch=feats.batch, positions=feats.positions, channels=feats.channels, classes=k, ranks=(rk, ra, rc)
    )
    if _choose(path, cost) == "dense":
        return bilinear_scores(xp, feats, _tucker_dense(xp, g, [u, a, c]))
    z = project(xp, feats, xp.concat([a, c], axis=1))  # (B, n, R_a + R_c)
    m = xp.matmul(xp.matrix_transpose(z[:, :, :ra]), z[:, :, ra:])  # (B, R_a, R_c)
    s = xp.matmul(xp.reshape(m, (feats.batch, ra * rc)), xp.matrix_transpose(xp.reshape(g, (rk, ra * rc))))
    return xp.matmul(s, xp.matrix_transpose(u))


def eig_pool(
    X: Array,
    eig: EigTensor | tuple[Array, Array],
    /,
    *,
    channel_axis: int = -1,
    check_finite: bool = False,
) -> Array:
    r"""Class scores from the eigen form: :math:`s_{bk} = \sum_p \mu_{kp} \lVert X_b v_{kp}\rVert^2`.

    One GEMM of X on the K·P eigenvectors (width K·P, half of the 2·K·P of the
    equivalent :func:`rankp_pool`), squares and a sum over positions.

    Parameters
    ----------
    X : array, (B, n, f) or, with ``channel_axis=1``, (B, f, H, W) / (B, f, T, H, W)
    eig : EigTensor or (eigenvalues (K, P), eigenvectors (f, K, P))

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> eig = lp.EigTensor(np.array([[1.0, -1.0]]), np.eye(2)[:, None, :])   # W = diag(1, -1)
    >>> lp.eig_pool(X, eig)
    array([[-3.]])
    """
    mu, v = eig
    xp, feats, fac = prepare(X, channel_axis, check_finite, eigenvalues=mu, eigenvectors=v)
    sizes = check_shape("eigenvectors", fac["eigenvectors"], ("f", "K", "P"), f=feats.channels)
    k, p = sizes["K"], sizes["P"]
    check_shape("eigenvalues", fac["eigenvalues"], ("K", "P"), K=k, P=p)
    z = project(xp, feats, xp.reshape(fac["eigenvectors"], (feats.channels, k * p)))  # (B, n, K·P)
    sq = xp.reshape(xp.sum(z * z, axis=1), (feats.batch, k, p))
    return xp.sum(sq * fac["eigenvalues"][None, :, :], axis=2)


# ---------------------------------------------------------------------------- conversions
def to_dense(obj: Any, /) -> Array:
    """W (K, f, f) from a CP, Tucker, :class:`EigTensor` or :class:`RankP` form.

    Built by batched matrix products (K·f² memory), never through a (f², R)
    Khatri-Rao product as ``tensorly.cp_to_tensor`` does.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> lp.to_dense((None, [np.ones((1, 1)), np.array([[1.0], [2.0]]), np.ones((2, 1))]))
    array([[[1., 1.],
            [2., 2.]]])
    """
    if isinstance(obj, EigTensor):
        mu, v = obj
        xp = namespace(eigenvalues=mu, eigenvectors=v)
        sizes = check_shape("eigenvectors", v, ("f", "K", "P"))
        check_shape("eigenvalues", mu, ("K", "P"), K=sizes["K"], P=sizes["P"])
        vk = xp.permute_dims(v, (1, 0, 2))  # (K, f, P)
        return xp.matmul(vk * mu[:, None, :], xp.matrix_transpose(vk))
    if isinstance(obj, RankP):
        a, b = obj
        xp = namespace(A=a, B=b)
        sizes = check_shape("A", a, ("f", "K", "P"))
        if b.ndim == 2:
            check_shape("B", b, ("f", "P"), f=sizes["f"], P=sizes["P"])
            bk = xp.broadcast_to(xp.permute_dims(b, (1, 0))[None, :, :], (sizes["K"], sizes["P"], sizes["f"]))
        else:
            check_shape("B", b, ("f", "K", "P"), **sizes)
            bk = xp.permute_dims(b, (1, 2, 0))  # (K, P, f)
        return xp.matmul(xp.permute_dims(a, (1, 0, 2)), bk)
    if _is_tucker(obj):
        xp, core, factors, _ = parse_tucker(obj)
        return _tucker_dense(xp, core, factors)
    if _is_cp(obj):
        xp, weights, factors, _ = parse_cp(obj)
        return _cp_dense(xp, weights, factors)
    raise TypeError(
        "obj: expected a CPTensor, TuckerTensor, EigTensor, RankP or a (weights, factors) / (core, factors) "
        f"tuple, got {type(obj).__name__}"
    )


def rankp_to_cp(A: Array, B: Array, /) -> Any:
    """Rank-P factors as a CP tensor of rank K·P (component (k, p) is e_k ∘ a_kp ∘ b_kp).

    Returns a tensorly ``CPTensor`` whose :func:`cp_pool` scores equal
    ``rankp_pool(X, A, B)``.
    """
    from tensorly.cp_tensor import CPTensor

    xp = namespace(A=A, B=B)
    sizes = check_shape("A", A, ("f", "K", "P"))
    f, k, p = sizes["f"], sizes["K"], sizes["P"]
    if B.ndim == 2:
        check_shape("B", B, ("f", "P"), f=f, P=p)
        B = xp.broadcast_to(B[:, None, :], (f, k, p))
    else:
        check_shape("B", B, ("f", "K", "P"), f=f, K=k, P=p)
    eye = xp.eye(k, dtype=A.dtype, device=aac.device(A))
    u = xp.reshape(xp.broadcast_to(eye[:, :, None], (k, k, p)), (k, k * p))
    weights = xp.ones(k * p, dtype=A.dtype, device=aac.device(A))
    return CPTensor((weights, [u, xp.reshape(A, (f, k * p)), xp.reshape(B, (f, k * p))]))


def cp_to_rankp(cp: Any, /) -> RankP:
    """A CP tensor of rank R as rank-R factors with a *shared* bottom-up B = C (f, R).

    W_k = Σ_r (λ_r U_kr a_r) c_rᵀ, so A[:, k, r] = λ_r U_kr a_r and B = C; the result
    plugs into :func:`rankp_pool` (or an attentional layer) with the same scores.
    """
    _xp, weights, (u, a, c), _ = parse_cp(cp)
    return RankP(a[:, None, :] * (u * weights[None, :])[None, :, :], c)
