"""CP, Tucker and eigen approximations of the class weight tensor W (K, f, f).

Only the symmetric part of each W_k changes a bilinear score (XᵀX is symmetric), so
by default every approximation fits S_k = (W_k + W_kᵀ)/2 and spends no rank on the
antisymmetric part. CP and Tucker use tensorly's ALS / HOOI with tensorly's backend
matched to the input's library inside ``tensorly.backend_context`` (never the global
backend), on detached inputs: fitting is not differentiable.

Why the symmetric part, and the Eckart–Young argument for the eigen form: docs/math.md,
"The symmetric part".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from ._backend import (
    Array,
    Namespace,
    acc_dtype,
    check_floating,
    check_has_values,
    detach,
    device_of,
    is_linalg_error,
    namespace,
    random_normal,
)
from ._checks import (
    ArgumentError,
    ArgumentTypeError,
    ShapeError,
    check_choice,
    check_finite,
    check_number,
    check_positive_int,
    check_shape,
    check_tucker_ranks,
    shape_of,
)
from ._ops import top_eigh
from ._tensorly import tensorly_context
from .factorized import EigTensor, _cp_dense

__all__ = ["cp_approx", "eig_approx", "tucker_approx"]


def _check_w(W: Any, name: str = "W") -> tuple[Namespace, Array, dict[str, int]]:
    """(xp, W detached in its compute dtype, sizes): float16/bfloat16 fit in float32 (no half eigh)."""
    xp = namespace(**{name: W})
    check_floating(xp, W, name)
    check_has_values(W, name)
    sizes = check_shape(name, W, ("K", "f", "f"))
    check_finite(xp, W, name)
    W = detach(W)
    dt = acc_dtype(xp, W.dtype)
    return xp, (W if W.dtype == dt else xp.astype(W, dt)), sizes


def _check_fit_options(n_iter_max: Any, tol: Any, random_state: Any, stall: Any = 0.0) -> None:
    check_positive_int(n_iter_max, "n_iter_max")
    check_number(tol, "tol")
    check_number(stall, "stall")
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, int)):
        raise ArgumentTypeError(f"random_state: expected an int or None, got {type(random_state).__name__}")


def _zero_cp(xp: Namespace, like: Array, k: int, f: int, rank: int) -> Any:
    """The exact CP form of W = 0: zero weights on unit-norm (seeded) factors."""
    from tensorly.cp_tensor import CPTensor

    factors = []
    for i, rows in enumerate((k, f, f)):
        m = random_normal(xp, (rows, rank), like, i)
        factors.append(m / xp.linalg.vector_norm(m, axis=0, keepdims=True))
    with tensorly_context(xp):
        return CPTensor((xp.zeros(rank, dtype=like.dtype, device=device_of(like)), factors))


def _zero_tucker(xp: Namespace, like: Array, ranks: tuple[int, int, int]) -> Any:
    """The exact Tucker form of W = 0: a zero core on orthonormal (identity) factors."""
    from tensorly.tucker_tensor import TuckerTensor

    k, f = shape_of(like)[0], shape_of(like)[1]
    dev = device_of(like)
    factors = [xp.eye(rows, r, dtype=like.dtype, device=dev) for rows, r in zip((k, f, f), ranks, strict=True)]
    with tensorly_context(xp):
        return TuckerTensor((xp.zeros(ranks, dtype=like.dtype, device=dev), factors))


def _leading_subspaces(xp: Namespace, T: Array, ranks: Sequence[int], seed: int | None) -> list[Array]:
    """Leading left singular vectors of the three unfoldings of T (K, f, f), from their Gram matrices.

    The subspaces tensorly's ``init="svd"`` uses, without an SVD of an (f, K·f) unfolding: these Gram
    matrices cost K·f³ work and f² memory, one class at a time (docs/performance.md). Columns beyond a mode's size are
    filled with seeded normal numbers, as tensorly does.
    """
    k, f = shape_of(T)[0], shape_of(T)[1]
    flat = xp.reshape(T, (k, f * f))
    # mode 0 (classes): the K×K Gram matrix when K <= f², else its f²×f² twin, never more
    # memory than T itself (W (20000, 3, 3) would otherwise ask for a 3 GiB K×K matrix)
    grams = [xp.matmul(flat, xp.matrix_transpose(flat)) if k <= f * f else None]
    rows = xp.zeros((f, f), dtype=T.dtype, device=device_of(T))
    cols = xp.zeros((f, f), dtype=T.dtype, device=device_of(T))
    for i in range(k):
        rows = rows + xp.matmul(T[i, ...], xp.matrix_transpose(T[i, ...]))
        cols = cols + xp.matmul(xp.matrix_transpose(T[i, ...]), T[i, ...])
    grams += [rows, cols]
    out = []
    for mode, (g, r) in enumerate(zip(grams, ranks, strict=True)):
        if g is None:
            lead, dim = _left_singular_vectors(xp, flat, r), k
        else:
            dim = shape_of(g)[0]
            _, vecs = xp.linalg.eigh(g)
            lead = xp.flip(vecs[:, max(dim - r, 0) :], axis=1)  # largest eigenvalues first
        if r > dim:
            extra = random_normal(xp, (dim, r - dim), T, None if seed is None else seed + mode)
            lead = xp.concat([lead, extra], axis=1)
        out.append(lead)
    return out


def _left_singular_vectors(xp: Namespace, m: Array, r: int) -> Array:
    """The min(r, cols) leading left singular vectors of a tall m (rows > cols), by eigh of mᵀm.

    u_i = m v_i / σ_i; a zero singular value's u_i is left 0 (only the subspace matters to ALS).
    """
    cols = shape_of(m)[1]
    mu, v = xp.linalg.eigh(xp.matmul(xp.matrix_transpose(m), m))
    keep = min(r, cols)
    v, mu = xp.flip(v[:, cols - keep :], axis=1), xp.flip(mu[cols - keep :], axis=0)
    sigma = xp.sqrt(xp.clip(mu, min=0.0))
    safe = xp.where(sigma > 0, sigma, xp.ones_like(sigma))
    return xp.where(sigma > 0, xp.matmul(m, v) / safe, xp.zeros_like(xp.matmul(m, v)))


def symmetric_part(xp: Namespace, W: Array) -> Array:
    return (W + xp.matrix_transpose(W)) / 2


def _unit_scale(xp: Namespace, T: Array) -> tuple[Array, float]:
    """(T / s, s) with s a power of two within a factor 2 of max|T| (0 for T = 0): the fits run on numbers of
    size about 1 whatever W's scale (its norm neither underflows at 1e-170 nor overflows float32 at 1e20), and
    dividing by a power of two changes only exponents. The caller scales the fit back by s."""
    peak = float(xp.max(xp.abs(T)))
    if peak == 0.0:
        return T, 0.0
    s = math.ldexp(1.0, math.frexp(peak)[1] - 1)  # peak = m·2^e, 1/2 <= m < 1: s = 2^(e-1), peak / s in [1, 2)
    return T / s, s


def _scaled_back(xp: Namespace, values: Array, s: float, what: str) -> Array:
    """values · s, refused where that leaves the dtype's range (a W near its dtype's largest numbers)."""
    out = values * s
    if not bool(xp.all(xp.isfinite(out))):
        raise ArgumentError(
            f"W: the fit's {what} exceed the range of {values.dtype} at W's scale (max |W| ~ {s:.3g}); "
            "fit W in float64, or divide it by a constant first"
        )
    return out


def cp_approx(
    W: Array,
    rank: int,
    /,
    *,
    symmetric: bool = True,
    n_iter_max: int = 1000,
    tol: float = 1e-12,
    stall: float = 1e-7,
    n_restarts: int = 1,
    init: Literal["svd", "random"] = "svd",
    random_state: int | None = 0,
) -> Any:
    r"""Rank-R CP approximation :math:`W \approx \sum_r \lambda_r u_r \circ a_r \circ c_r`.

    Parameters
    ----------
    W : array, (K, f, f)
        Class weight tensor (numpy, torch, jax or cupy).
    rank : int
        Number of components R, at most min(K·f, f²) (the largest CP rank a K×f×f
        tensor can have).
    symmetric : bool
        Fit the symmetric part (W_k + W_kᵀ)/2 only; it gives the same scores.
    n_iter_max, init, random_state
        Passed to ``tensorly.decomposition.parafac`` (ALS, normalised factors). The
        SVD initialisation with a fixed seed makes fits reproducible.
    tol, stall : float
        ALS stops when the exact relative error e = ‖T − T̂‖/‖T‖ falls below ``tol``
        or one sweep improves it by less than ``stall``·e.
    n_restarts : int
        ALS can stall in a "swamp" (nearly collinear factors) far from an exact fit.
        With ``n_restarts > 1``, a fit whose error stays above ``tol`` is followed by
        fits from seeded random starts with line search, and the best is returned.

    Returns
    -------
    tensorly.cp_tensor.CPTensor
        ``(weights (R,), [U (K, R), A (f, R), C (f, R)])`` in W's library and dtype;
        pass it to :func:`cp_pool`. Where every fit's normal equations turn singular (W of a
        lower rank than R, e.g. rank 1 asked at rank 2), it is the best rank R − 1 fit with a
        component of weight 0 added.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal((6, 2))
    >>> W = np.einsum("kr,ir,jr->kij", rng.standard_normal((3, 2)), a, a)  # exact rank 2
    >>> cp = lp.cp_approx(W, 2)
    >>> bool(np.linalg.norm(lp.to_dense(cp) - W) < 1e-6 * np.linalg.norm(W))
    True
    """
    xp, W, sizes = _check_w(W)
    k, f = sizes["K"], sizes["f"]
    rank = check_positive_int(rank, "rank")
    _check_fit_options(n_iter_max, tol, random_state, stall)
    if rank > min(k * f, f * f):
        raise ArgumentError(
            f"rank: expected at most min(K·f, f²) = {min(k * f, f * f)} for W of shape {(k, f, f)}, got {rank}"
        )
    check_choice(init, "init", ("svd", "random"))
    restarts = check_positive_int(n_restarts, "n_restarts")
    target, scale = _unit_scale(xp, detach(symmetric_part(xp, W) if symmetric else W))
    if scale == 0.0:  # W = 0 (or antisymmetric with symmetric=True): ALS would divide by zero
        return _zero_cp(xp, target, k, f, rank)
    cp = _cp_fit(xp, target, rank, n_iter_max, tol, stall, restarts, init, random_state)
    from tensorly.cp_tensor import CPTensor

    with tensorly_context(xp):
        return CPTensor((_scaled_back(xp, cp.weights, scale, "weights"), list(cp.factors)))


def _cp_fit(
    xp: Namespace,
    target: Array,
    rank: int,
    n_iter_max: int,
    tol: float,
    stall: float,
    restarts: int,
    init: str,
    random_state: int | None,
) -> Any:
    """The best of ``restarts`` ALS fits of the nonzero ``target`` (max |target| about 1), normalised."""
    from tensorly.cp_tensor import cp_normalize
    from tensorly.decomposition import parafac

    norm = float(xp.linalg.vector_norm(target))
    best: tuple[float, Any] = (math.inf, None)
    for attempt in range(restarts):
        history: list[float] = []

        def converged(cp: Any, _estimate: float, history: list[float] = history) -> bool:
            # tensorly's own error estimate sqrt(|‖T‖² - 2<T, T̂> + ‖T̂‖²|) cancels below
            # ~1e-8, so an exactly low-rank W would stop there; the residual is computed
            # exactly instead (K·f² memory, the cost of one ALS sweep).
            weights, factors = cp
            err = float(xp.linalg.vector_norm(_cp_dense(xp, weights, list(factors)) - target)) / norm
            history.append(err)
            return err <= tol or (len(history) > 1 and history[-2] - err <= stall * err)

        seed = None if random_state is None else random_state + attempt
        start: Any = init if attempt == 0 else "random"
        with tensorly_context(xp):
            if start == "svd":
                from tensorly.cp_tensor import CPTensor

                factors = _leading_subspaces(xp, target, (rank, rank, rank), random_state)
                start = CPTensor((xp.ones(rank, dtype=target.dtype, device=device_of(target)), factors))
            try:
                cp = parafac(
                    target,
                    rank,
                    n_iter_max=n_iter_max,
                    tol=-math.inf,  # tensorly computes its estimate (for the callback) but never stops on it
                    cvg_criterion="rec_error",
                    init=start,
                    normalize_factors=False,  # tensorly warns when a given init is normalised; done below
                    random_state=seed,
                    linesearch=attempt > 0,
                    callback=converged,
                )
            except Exception as failure:
                if not is_linalg_error(failure) or rank == 1:
                    raise
                continue  # singular normal equations: a component collapsed (W has a lower rank)
            cp = cp_normalize(cp)
        err = float(xp.linalg.vector_norm(_cp_dense(xp, cp.weights, list(cp.factors)) - target)) / norm
        if err < best[0]:
            best = (err, cp)
        if err <= tol:
            break
    if best[1] is None:  # every fit collapsed: the best rank - 1 fit, with a zero-weight component added
        fewer = _cp_fit(xp, target, rank - 1, n_iter_max, tol, stall, restarts, init, random_state)
        return _padded_cp(xp, fewer, rank)
    return best[1]


def _padded_cp(xp: Namespace, cp: Any, rank: int) -> Any:
    """``cp`` with zero-weight components (unit-norm factors) appended up to ``rank``."""
    from tensorly.cp_tensor import CPTensor

    weights, factors = cp
    k, f = shape_of(factors[0])[0], shape_of(factors[1])[0]
    zero = _zero_cp(xp, weights, k, f, rank - shape_of(weights)[0])
    with tensorly_context(xp):
        return CPTensor(
            (
                xp.concat([weights, zero.weights]),
                [xp.concat([a, b], axis=1) for a, b in zip(factors, zero.factors, strict=True)],
            )
        )


def tucker_approx(
    W: Array,
    rank: int | Sequence[int],
    /,
    *,
    symmetric: bool = True,
    n_iter_max: int = 100,
    tol: float = 1e-10,
    init: Literal["svd", "random"] = "svd",
    random_state: int | None = 0,
) -> Any:
    r"""Tucker approximation :math:`W \approx G \times_1 U \times_2 A \times_3 C` (HOOI).

    Parameters
    ----------
    W : array, (K, f, f)
    rank : int or (R_K, R_f, R_f)
        An int r means (min(r, K), r, r); every rank must fit its dimension.
    symmetric : bool
        Fit the symmetric part only (then A and C span the same subspace).
    n_iter_max, tol, init, random_state
        Passed to ``tensorly.decomposition.tucker``.

    Returns
    -------
    tensorly.tucker_tensor.TuckerTensor
        ``(core (R_K, R_f, R_f), [U (K, R_K), A (f, R_f), C (f, R_f)])``; pass it to
        :func:`tucker_pool`.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> W = np.random.default_rng(0).standard_normal((4, 5, 5))
    >>> core, (U, A, C) = lp.tucker_approx(W, (4, 5, 5))   # full ranks: exact
    >>> bool(np.allclose(lp.to_dense((core, [U, A, C])), (W + W.transpose(0, 2, 1)) / 2))
    True
    """
    from tensorly.decomposition import tucker
    from tensorly.tucker_tensor import TuckerTensor

    xp, W, sizes = _check_w(W)
    ranks = check_tucker_ranks(rank, sizes["K"], sizes["f"])
    _check_fit_options(n_iter_max, tol, random_state)
    check_choice(init, "init", ("svd", "random"))
    target, scale = _unit_scale(xp, detach(symmetric_part(xp, W) if symmetric else W))
    if scale == 0.0:  # W = 0 (or antisymmetric): the exact form is 0
        return _zero_tucker(xp, target, ranks)
    start: Any = _leading_subspaces(xp, target, ranks, random_state) if init == "svd" else init
    with tensorly_context(xp):
        core, factors = tucker(
            target, list(ranks), n_iter_max=n_iter_max, tol=tol, init=start, random_state=random_state
        )
        return TuckerTensor((_scaled_back(xp, core, scale, "core"), list(factors)))


def _class_matrices(W: Any) -> tuple[Namespace, int, int, Iterable[Array]]:
    """(xp, K, f, iterator over W_k): W as a (K, f, f) array (memmaps too) or a sequence of (f, f)."""
    if isinstance(W, Sequence) and not hasattr(W, "shape"):
        if not W:
            raise ShapeError("W: expected (K, f, f) or a non-empty sequence of (f, f) matrices, got an empty sequence")
        xp = namespace(**{"W[0]": W[0]})
        check_has_values(W[0], "W[0]")
        f = check_shape("W[0]", W[0], ("f", "f"))["f"]
        return xp, len(W), f, iter(W)
    xp = namespace(W=W)
    check_has_values(W, "W")
    sizes = check_shape("W", W, ("K", "f", "f"))
    return xp, sizes["K"], sizes["f"], (W[i, ...] for i in range(sizes["K"]))


def eig_stream(W: Any, rank: int) -> tuple[Namespace, list[Array], list[Array], list[float]]:
    """Per class: the ``rank`` eigenpairs of S_k of largest |μ| (sorted by |μ| descending), and ‖S_k‖_F².

    ``‖S_k‖² − Σ_p μ_kp²`` is the squared error of the truncation (Eckart–Young), so the
    rest of the spectrum is never needed.
    """
    xp, _, f, mats = _class_matrices(W)
    if rank > f:
        raise ArgumentError(f"rank: expected at most f = {f} eigenpairs per class, got {rank}")
    mus, vecs, energies = [], [], []
    for i, wk in enumerate(mats):
        check_shape(f"W[{i}]", wk, ("f", "f"), f=f)
        check_floating(xp, wk, f"W[{i}]")
        check_finite(xp, wk, f"W[{i}]")
        wk = detach(wk)
        dt = acc_dtype(xp, wk.dtype)  # no half (or longdouble) eigh: float32 / float64
        wk = wk if wk.dtype == dt else xp.astype(wk, dt)
        sk = (wk + xp.matrix_transpose(wk)) / 2
        mu, v = top_eigh(xp, sk, rank)
        mus.append(mu)
        vecs.append(v)
        energies.append(float(xp.sum(sk * sk)))
    return xp, mus, vecs, energies


def eig_approx(W: Any, rank: int, /) -> EigTensor:
    r"""Per class, the optimal rank-P approximation of the symmetric part of W_k.

    .. math:: S_k = \tfrac12(W_k + W_k^\top) = \sum_i \mu_{ki} v_{ki} v_{ki}^\top,
              \qquad W_k \approx \sum_{p \le P} \mu_{kp} v_{kp} v_{kp}^\top

    keeping the P eigenvalues of largest magnitude: by Eckart–Young the best rank-P
    approximation of S_k in Frobenius norm, and the scores are
    Σ_p μ_kp ‖X v_kp‖² (:func:`eig_pool`). One class is decomposed at a time, so the
    working memory is O(f²) beyond the result (pass a ``np.load(..., mmap_mode="r")``
    array or a sequence of (f, f) matrices to keep W itself out of memory).

    Parameters
    ----------
    W : array (K, f, f) or a sequence of K arrays (f, f)
    rank : int
        P, at most f.

    Returns
    -------
    EigTensor
        ``eigenvalues`` (K, P) sorted by decreasing magnitude, ``eigenvectors`` (f, K, P).

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> W = np.diag([3.0, -2.0, 1.0])[None]
    >>> lp.eig_approx(W, 2).eigenvalues
    array([[ 3., -2.]])
    """
    rank = check_positive_int(rank, "rank")
    xp, mus, vecs, _ = eig_stream(W, rank)
    return EigTensor(xp.stack(mus, axis=0), xp.stack(vecs, axis=1))
