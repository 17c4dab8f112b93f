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
    namespace,
    random_normal,
)
from ._checks import (
    ArgumentError,
    ArgumentTypeError,
    ShapeError,
    check_choice,
    check_finite,
    check_flag,
    check_number,
    check_positive_int,
    check_progress,
    check_shape,
    check_tucker_ranks,
    shape_of,
)
from ._fits import Collapsed, CPFit, ThreeWay, cp_als, hooi
from ._ops import top_eigh
from ._progress import Progress
from ._tensorly import tensorly_context
from .factorized import EigTensor, to_dense

__all__ = ["block_term_approx", "cp_approx", "eig_approx", "tucker_approx"]


def _check_w(W: Any, name: str = "W", two: bool = False) -> tuple[Namespace, Array, dict[str, int]]:
    """(xp, W detached in its compute dtype, sizes): float16/bfloat16 fit in float32 (no half eigh). ``two``:
    W (K, f, g) of two inputs is accepted too (sizes then has g; g = f for a square W)."""
    xp = namespace(**{name: W})
    check_floating(xp, W, name)
    check_has_values(W, name)
    sizes = check_shape(name, W, ("K", "f", "g") if two else ("K", "f", "f"))
    sizes.setdefault("g", sizes["f"])
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


def _zero_cp(xp: Namespace, like: Array, k: int, f: int, rank: int, g: int | None = None) -> Any:
    """The exact CP form of W = 0: zero weights on unit-norm (seeded) factors."""
    from tensorly.cp_tensor import CPTensor

    factors = []
    for i, rows in enumerate((k, f, f if g is None else g)):
        m = random_normal(xp, (rows, rank), like, i)
        factors.append(m / xp.linalg.vector_norm(m, axis=0, keepdims=True))
    with tensorly_context(xp, fit=False):
        return CPTensor((xp.zeros(rank, dtype=like.dtype, device=device_of(like)), factors))


def _zero_tucker(xp: Namespace, like: Array, ranks: tuple[int, int, int]) -> Any:
    """The exact Tucker form of W = 0: a zero core on orthonormal (identity) factors."""
    from tensorly.tucker_tensor import TuckerTensor

    dev = device_of(like)
    factors = [xp.eye(rows, r, dtype=like.dtype, device=dev) for rows, r in zip(shape_of(like), ranks, strict=True)]
    with tensorly_context(xp, fit=False):
        return TuckerTensor((xp.zeros(ranks, dtype=like.dtype, device=dev), factors))


def _leading_subspaces(
    xp: Namespace, T: Array, ranks: Sequence[int], seed: int | None, *, symmetric: bool = False
) -> list[Array]:
    """Leading left singular vectors of the three unfoldings of T (K, f, g), from their Gram matrices.

    The subspaces tensorly's ``init="svd"`` uses, without an SVD of an (f, K·g) unfolding: the Gram
    matrices cost K·f·g·max(f, g) work and (f² + g²) memory (docs/performance.md, "Fitting"); with
    symmetric slices the two are one. Columns beyond a mode's size are filled with seeded normal numbers,
    as tensorly does.
    """
    k, f, g = shape_of(T)
    flat = xp.reshape(T, (k, f * g))
    # mode 0 (classes): the K×K Gram matrix when K <= f·g, else its (f·g)² twin, never more
    # memory than T itself (W (20000, 3, 3) would otherwise ask for a 3 GiB K×K matrix)
    grams = [xp.matmul(flat, xp.matrix_transpose(flat)) if k <= f * g else None]
    lines = xp.reshape(T, (k * f, g))
    cols = xp.matmul(xp.matrix_transpose(lines), lines)  # Σ_k T_kᵀ T_k: one GEMM on T's (K·f, g) view
    if symmetric and f == g:
        rows = cols
    else:
        rows = xp.zeros((f, f), dtype=T.dtype, device=device_of(T))
        for i in range(k):
            rows = rows + xp.matmul(T[i, ...], xp.matrix_transpose(T[i, ...]))
    grams += [rows, cols]
    out = []
    for mode, (gram, r) in enumerate(zip(grams, ranks, strict=True)):
        if gram is None:
            lead, dim = _left_singular_vectors(xp, flat, r), k
        else:
            dim = shape_of(gram)[0]
            _, vecs = xp.linalg.eigh(gram)
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
    progress: bool | None = None,
) -> Any:
    r"""Rank-R CP approximation :math:`W \approx \sum_r \lambda_r u_r \circ a_r \circ c_r`.

    Alternating least squares whose every step is a GEMM with W's (K·f, f) view (no unfolding, no
    Khatri–Rao product), accelerated by extrapolation (line search) from the sixth sweep, from the
    leading singular subspaces of W's three unfoldings: seconds for W (100, 512, 512) at rank 64 where
    tensorly's ``parafac`` takes minutes to the same error (docs/performance.md, "Fitting").

    Parameters
    ----------
    W : array, (K, f, f), or (K, f, g) of a two-input head (``cp_pool(X, cp, Y=Y)``, MLB)
        Class weight tensor (numpy, torch on any device, jax, cupy or another array-API library); fitted
        in its own dtype (float16/bfloat16 in float32).
    rank : int
        Number of components R, at most min(K·f, f²) (the largest CP rank a K×f×f
        tensor can have; min(K·f, f·g, K·g) for K×f×g).
    symmetric : bool
        Fit the symmetric part (W_k + W_kᵀ)/2 only; it gives the same scores. A W (K, f, g) with g ≠ f
        is fitted whole.
    n_iter_max : int
        At most this many ALS sweeps per start.
    tol, stall : float
        ALS stops when the relative error e = ‖T − T̂‖/‖T‖ falls below ``tol``
        or one sweep improves it by less than ``stall``·e. e comes from R×R Gram matrices and,
        where that would cancel (e² within rounding of ‖T‖²), from the dense residual.
    n_restarts : int
        ALS can stall in a "swamp" (nearly collinear factors) far from an exact fit.
        With ``n_restarts > 1``, a fit whose error stays above ``tol`` is followed by
        fits from seeded random starts, and the best is returned.
    init : {"svd", "random"}
        The first start: the leading left singular vectors of W's unfoldings, or seeded normal factors.
    random_state : int or None
        Seed of the random starts (and of the columns "svd" has to fill): fits are reproducible.
    progress : bool, optional
        A tqdm bar over the sweeps (default: when tqdm is installed and stderr is a terminal). Each
        sweep's error is logged at DEBUG and each fit's summary at INFO on the ``"lowrank_pool"`` logger.

    Returns
    -------
    tensorly.cp_tensor.CPTensor
        ``(weights (R,), [U (K, R), A (f, R), C (f, R)])`` in W's library and dtype, with unit-norm factor
        columns; pass it to :func:`cp_pool`. Where every fit's normal equations turn singular (W of a
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
    xp, W, sizes = _check_w(W, two=True)
    k, f, g = sizes["K"], sizes["f"], sizes["g"]
    rank = check_positive_int(rank, "rank")
    _check_fit_options(n_iter_max, tol, random_state, stall)
    most = min(k * f, f * g, k * g) if g != f else min(k * f, f * f)
    if rank > most:
        bound = "min(K·f, f²)" if g == f else "min(K·f, f·g, K·g)"
        raise ArgumentError(f"rank: expected at most {bound} = {most} for W of shape {(k, f, g)}, got {rank}")
    check_choice(init, "init", ("svd", "random"))
    restarts = check_positive_int(n_restarts, "n_restarts")
    check_progress(progress)
    symmetric = check_flag(symmetric, "symmetric") and f == g  # (a W of two inputs is fitted whole)
    target, scale = _unit_scale(xp, detach(symmetric_part(xp, W) if symmetric else W))
    if scale == 0.0:  # W = 0 (or antisymmetric with symmetric=True): ALS would divide by zero
        return _zero_cp(xp, target, k, f, rank, g)
    t = ThreeWay(xp, target, symmetric=symmetric)
    with Progress(f"cp_approx rank {rank}", n_iter_max * restarts, unit="sweep", bar=progress) as report:
        weights, factors = _cp_fit(xp, t, rank, n_iter_max, tol, stall, restarts, init, random_state, report)
    from tensorly.cp_tensor import CPTensor

    with tensorly_context(xp, fit=False):
        return CPTensor((_scaled_back(xp, weights, scale, "weights"), factors))


def _cp_fit(
    xp: Namespace,
    t: ThreeWay,
    rank: int,
    n_iter_max: int,
    tol: float,
    stall: float,
    restarts: int,
    init: str,
    random_state: int | None,
    report: Progress,
) -> tuple[Array, list[Array]]:
    """The best of ``restarts`` ALS fits of the nonzero ``t`` (max |T| about 1): weights, unit-norm factors."""
    best: CPFit | None = None
    for attempt in range(restarts):
        seed = None if random_state is None else random_state + attempt
        if attempt == 0 and init == "svd":
            start = _leading_subspaces(xp, t.T, (rank, rank, rank), random_state, symmetric=t.symmetric)
        else:
            start = [
                random_normal(xp, (rows, rank), t.T, None if seed is None else seed + 7919 * i)
                for i, rows in enumerate((t.K, t.f, t.g))
            ]
        try:
            fit = cp_als(t, start, n_iter_max=n_iter_max, tol=tol, stall=stall, linesearch=True, progress=report)
        except Collapsed:
            if rank == 1:
                raise
            continue  # singular normal equations: a component collapsed (W has a lower rank)
        if best is None or fit.error < best.error:
            best = fit
        if fit.error <= tol:
            break
    if best is None:  # every fit collapsed: the best rank - 1 fit, with a zero-weight component added
        weights, factors = _cp_fit(xp, t, rank - 1, n_iter_max, tol, stall, restarts, init, random_state, report)
        return _padded_cp(xp, weights, factors, rank)
    report.done(error=best.error, sweeps=best.sweeps)
    return _normalized(xp, [best.U, best.A, best.C])


def _normalized(xp: Namespace, factors: list[Array]) -> tuple[Array, list[Array]]:
    """(weights, factors) with unit-norm columns; a zero column keeps weight 0 and stays as it is."""
    weights = None
    out = []
    for m in factors:
        norms = xp.linalg.vector_norm(m, axis=0)
        safe = xp.where(norms > 0, norms, xp.ones_like(norms))
        out.append(m / safe)
        weights = norms if weights is None else weights * norms
    assert weights is not None
    return weights, out


def _padded_cp(xp: Namespace, weights: Array, factors: list[Array], rank: int) -> tuple[Array, list[Array]]:
    """``(weights, factors)`` with zero-weight components (unit-norm factors) appended up to ``rank``."""
    k, f, g = (shape_of(m)[0] for m in factors)
    zero = _zero_cp(xp, weights, k, f, rank - shape_of(weights)[0], g)
    return xp.concat([weights, zero.weights]), [
        xp.concat([a, b], axis=1) for a, b in zip(factors, zero.factors, strict=True)
    ]


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
    progress: bool | None = None,
) -> Any:
    r"""Tucker approximation :math:`W \approx G \times_1 U \times_2 A \times_3 C` (HOOI).

    Higher-order orthogonal iteration whose mode products are GEMMs with W's (K·f, f) view and whose
    SVDs are of (mode size × product of the other two ranks) matrices, never of an (f, K·f) unfolding
    (docs/performance.md, "Fitting").

    Parameters
    ----------
    W : array, (K, f, f), or (K, f, g) of a two-input head (``tucker_pool(X, tk, Y=Y)``, MUTAN)
    rank : int or (R_K, R_f, R_f)
        An int r means (min(r, K), r, r) ((min(r, K), min(r, f), min(r, g)) for W (K, f, g)); every rank
        must fit its dimension.
    symmetric : bool
        Fit the symmetric part only (then A and C span the same subspace); a W (K, f, g) with g ≠ f is
        fitted whole.
    n_iter_max : int
        At most this many HOOI sweeps.
    tol : float
        HOOI stops when a sweep changes the relative error √(‖T‖² − ‖G‖²)/‖T‖ by less than ``tol``
        (or by less than 16 rounding units of W's dtype, the resolution of that error).
    init : {"svd", "random"}
        Start from the leading left singular vectors of W's unfoldings, or from seeded normal factors.
    random_state : int or None
    progress : bool, optional
        A tqdm bar over the sweeps (default: when tqdm is installed and stderr is a terminal); logging as
        in :func:`cp_approx`.

    Returns
    -------
    tensorly.tucker_tensor.TuckerTensor
        ``(core (R_K, R_f, R_f), [U (K, R_K), A (f, R_f), C (f, R_f)])`` with orthonormal factor columns;
        pass it to :func:`tucker_pool`.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> W = np.random.default_rng(0).standard_normal((4, 5, 5))
    >>> core, (U, A, C) = lp.tucker_approx(W, (4, 5, 5))   # full ranks: exact
    >>> bool(np.allclose(lp.to_dense((core, [U, A, C])), (W + W.transpose(0, 2, 1)) / 2))
    True
    """
    xp, W, sizes = _check_w(W, two=True)
    ranks = check_tucker_ranks(rank, sizes["K"], sizes["f"], g=sizes["g"])
    _check_fit_options(n_iter_max, tol, random_state)
    check_choice(init, "init", ("svd", "random"))
    check_progress(progress)
    symmetric = check_flag(symmetric, "symmetric") and sizes["f"] == sizes["g"]  # (two inputs: W whole)
    target, scale = _unit_scale(xp, detach(symmetric_part(xp, W) if symmetric else W))
    if scale == 0.0:  # W = 0 (or antisymmetric): the exact form is 0
        return _zero_tucker(xp, target, ranks)
    t = ThreeWay(xp, target, symmetric=symmetric)
    if init == "svd":
        start = _leading_subspaces(xp, target, ranks, random_state, symmetric=t.symmetric)
    else:
        start = [
            random_normal(xp, (rows, r), target, None if random_state is None else random_state + i)
            for i, (rows, r) in enumerate(zip((t.K, t.f, t.g), ranks, strict=True))
        ]
    with Progress(f"tucker_approx ranks {ranks}", n_iter_max, unit="sweep", bar=progress) as report:
        fit = hooi(t, start, ranks, n_iter_max=n_iter_max, tol=tol, progress=report)
        report.done(error=fit.error, sweeps=fit.sweeps)
    from tensorly.tucker_tensor import TuckerTensor

    with tensorly_context(xp, fit=False):
        return TuckerTensor((_scaled_back(xp, fit.core, scale, "core"), fit.factors))


def block_term_approx(
    W: Array,
    blocks: int,
    rank: int | Sequence[int],
    /,
    *,
    n_iter_max: int = 20,
    tol: float = 1e-8,
    random_state: int | None = 0,
) -> list[Any]:
    r"""Block-term approximation :math:`W \approx \sum_{c=1}^{C} G_c \times_1 U_c \times_2 A_c \times_3 C_c`.

    A sum of ``blocks`` small Tucker forms (BLOCK's decomposition of a two-input W (K, f, g); one input:
    W (K, f, f)), fitted by backfitting: each sweep refits every block by :func:`tucker_approx` (HOOI) to
    the residual of the others, until the relative error ‖W − Ŵ‖/‖W‖ improves by less than ``tol``. A
    single block is :func:`tucker_approx`. Backfitting converges slowly where the blocks' subspaces
    overlap (thousands of sweeps to rounding on the example below; each sweep is C HOOI fits): for a
    trained BLOCK layer's W the first sweeps do most of the work. C blocks of ranks (R_K, R_f, R_g) hold
    C·(R_K·R_f·R_g + K·R_K + f·R_f + g·R_g) numbers, fewer than one Tucker of ranks (C·R_K, C·R_f, C·R_g)
    that contains them.

    Parameters
    ----------
    W : array, (K, f, g)
    blocks : int
        C.
    rank : int or (R_K, R_f, R_g)
        The multilinear ranks of every block (see :func:`tucker_approx`).
    n_iter_max : int
        At most this many backfitting sweeps.
    tol : float
        Stop when a sweep improves the relative error by less than this.
    random_state : int or None
        Seed of the HOOI fits' columns beyond a mode's size (fits are reproducible).

    Returns
    -------
    list of tensorly.tucker_tensor.TuckerTensor
        The C blocks ``(core, [U, A, C])`` in W's library and dtype; ``sum(to_dense(b) for b in blocks)``
        is the approximation, and :class:`lowrank_pool.nn.Block` holds them.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> rng = np.random.default_rng(0)
    >>> parts = [lp.to_dense((rng.standard_normal((1, 2, 2)), [rng.standard_normal((m, r)) for m, r in
    ...          ((3, 1), (6, 2), (5, 2))])) for _ in range(2)]
    >>> W = parts[0] + parts[1]                        # two blocks of ranks (1, 2, 2)
    >>> def error(fit):
    ...     return np.linalg.norm(sum(lp.to_dense(b) for b in fit) - W) / np.linalg.norm(W)
    >>> one_sweep = lp.block_term_approx(W, 2, (1, 2, 2), n_iter_max=1)
    >>> fit = lp.block_term_approx(W, 2, (1, 2, 2), n_iter_max=3000, tol=1e-15)
    >>> bool(error(fit) < 1e-6 < error(one_sweep))
    True
    """
    xp, W, sizes = _check_w(W, two=True)
    blocks = check_positive_int(blocks, "blocks")
    ranks = check_tucker_ranks(rank, sizes["K"], sizes["f"], g=sizes["g"])
    _check_fit_options(n_iter_max, tol, random_state)
    norm = float(xp.linalg.vector_norm(xp.reshape(W, (-1,))))
    # the first block fits W; the others start at zero and take the residual from the first sweep on
    fits = [tucker_approx(W if c == 0 else W * 0.0, ranks, symmetric=False) for c in range(blocks)]
    if norm == 0.0 or blocks == 1:
        return fits
    dense = [to_dense(b) for b in fits]
    error = math.inf
    for _ in range(n_iter_max):
        for c in range(blocks):
            residual = W - sum((dense[j] for j in range(blocks) if j != c), xp.zeros_like(W))
            fits[c] = tucker_approx(residual, ranks, symmetric=False, random_state=random_state)
            dense[c] = to_dense(fits[c])
        total = sum(dense, xp.zeros_like(W))
        new = float(xp.linalg.vector_norm(xp.reshape(W - total, (-1,)))) / norm
        if error - new < tol:
            error = new
            break
        error = new
    return fits


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


def eig_stream(
    W: Any, rank: int, *, progress: bool | None = False
) -> tuple[Namespace, list[Array], list[Array], list[float]]:
    """Per class: the ``rank`` eigenpairs of S_k of largest |μ| (sorted by |μ| descending), and ‖S_k‖_F².

    ``‖S_k‖² − Σ_p μ_kp²`` is the squared error of the truncation (Eckart–Young), so the
    rest of the spectrum is never needed.
    """
    xp, k, f, mats = _class_matrices(W)
    if rank > f:
        raise ArgumentError(f"rank: expected at most f = {f} eigenpairs per class, got {rank}")
    mus, vecs, energies = [], [], []
    with Progress(f"eig_approx rank {rank}", k, unit="class", bar=progress) as report:
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
            report.step(**{"class": i})
    return xp, mus, vecs, energies


def eig_approx(W: Any, rank: int, /, *, progress: bool | None = None) -> EigTensor:
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
    progress : bool, optional
        A tqdm bar over the classes (default: when tqdm is installed and stderr is a terminal); the
        start and end are logged at INFO, each class at DEBUG, on the ``"lowrank_pool"`` logger.

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
    check_progress(progress)
    xp, mus, vecs, _ = eig_stream(W, rank, progress=progress)
    return EigTensor(xp.stack(mus, axis=0), xp.stack(vecs, axis=1))
