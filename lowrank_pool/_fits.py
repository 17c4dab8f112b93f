"""CP (ALS) and Tucker (HOOI) fits of a three-way tensor T (K, f, g), every mode product a GEMM.

A three-way tensor's mode products need no unfolding and no Khatri–Rao product: T ×₃ C is one GEMM
on T's (K·f, g) view and T ×₂ A one batched GEMM on its transposed slices (or the same GEMM as ×₃
when every slice is symmetric), and what ALS and HOOI need next are sums over an (K, f, R) array.
A CP sweep costs two GEMMs of K·f·g·R, a HOOI sweep two, plus small SVDs; the fit error comes from
R×R Gram matrices (exact to the dtype's resolution; recomputed from the dense residual where
cancellation would hide it). tensorly's ``parafac``/``tucker`` unfold T and form the (f·g, R)
Khatri–Rao product in every mode of every sweep, and its Tucker fit takes an SVD of an (f, K·f)
unfolding per mode: docs/performance.md, "Fitting", has the same-run comparison.

Plain array-API code: numpy, torch (CPU or GPU), JAX, CuPy and array_api_strict alike; inputs are
detached, fits are not differentiable. Validation is the caller's (``lowrank_pool.approx``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._backend import Array, Namespace
from ._errors import shape_of
from ._progress import Progress

__all__ = ["Collapsed", "ThreeWay", "cp_als", "hooi"]


class Collapsed(ArithmeticError):
    """ALS's normal equations turned singular (a component collapsed: T has a lower rank than asked)."""


def _eps(dtype: Any) -> float:
    import numpy as np

    try:
        return float(np.finfo(np.dtype(str(dtype).rsplit(".", 1)[-1])).eps)
    except TypeError:
        return float(np.finfo(np.float32).eps)


class ThreeWay:
    """T (K, f, g) with the mode products ALS and HOOI need, and its squared norm.

    ``symmetric`` says every slice T_k is symmetric (f = g): T ×₂ A is then T ×₃ A.
    """

    def __init__(self, xp: Namespace, T: Array, *, symmetric: bool) -> None:
        self.xp, self.T = xp, T
        self.K, self.f, self.g = shape_of(T)
        self.symmetric = symmetric and self.f == self.g
        self.flat = xp.reshape(T, (self.K * self.f, self.g))
        self.norm2 = float(xp.sum(T * T))
        self.eps = _eps(T.dtype)

    def times_last(self, C: Array) -> Array:
        """T ×₃ C: (K, f, R) from C (g, R)."""
        return self.xp.reshape(self.xp.matmul(self.flat, C), (self.K, self.f, shape_of(C)[1]))

    def times_middle(self, A: Array) -> Array:
        """T ×₂ A: (K, g, R) from A (f, R)."""
        if self.symmetric:
            return self.times_last(A)
        return self.xp.matmul(self.xp.matrix_transpose(self.T), A)

    def residual(self, U: Array, A: Array, C: Array) -> float:
        """‖T − Σ_r u_r ∘ a_r ∘ c_r‖ from the dense CP tensor (one GEMM; K·f·g memory)."""
        xp = self.xp
        ua = xp.reshape(U[:, None, :] * A[None, :, :], (self.K * self.f, shape_of(A)[1]))
        diff = self.flat - xp.matmul(ua, xp.matrix_transpose(C))
        return math.sqrt(float(xp.sum(diff * diff)))


def _solve(xp: Namespace, gram: Array, rhs: Array) -> Array:
    """rhs · gram⁻¹ (rhs (n, R), gram (R, R) symmetric); :class:`Collapsed` where gram is singular."""
    try:
        out = xp.matrix_transpose(xp.linalg.solve(gram, xp.matrix_transpose(rhs)))
    except Exception as failure:  # numpy's LinAlgError, torch's torch.linalg.LinAlgError, ...
        if "singular" in str(failure).lower() or type(failure).__name__ == "LinAlgError":
            raise Collapsed(str(failure)) from failure
        raise
    if not bool(xp.all(xp.isfinite(out))):
        raise Collapsed("the normal equations of ALS are singular to working precision")
    return out


@dataclass
class CPFit:
    U: Array  # (K, R), carrying the weights
    A: Array  # (f, R)
    C: Array  # (g, R)
    error: float  # relative error ‖T − T̂‖ / ‖T‖
    sweeps: int


def _cp_error(xp: Namespace, t: ThreeWay, U: Array, A: Array, C: Array, tc: Array) -> float:
    """Relative error from Gram matrices: ‖T̂‖² = Σ (UᵀU ∘ AᵀA ∘ CᵀC), ⟨T, T̂⟩ = Σ_kir (T ×₃ C)_kir U_kr A_ir."""
    gram = xp.matmul(xp.matrix_transpose(U), U) * xp.matmul(xp.matrix_transpose(A), A)
    gram = gram * xp.matmul(xp.matrix_transpose(C), C)
    inner = float(xp.sum(xp.sum(tc * U[:, None, :], axis=0) * A))
    e2 = t.norm2 - 2.0 * inner + float(xp.sum(gram))
    # where e² is within rounding of ‖T‖² · eps the estimate has cancelled: take the dense residual
    if e2 <= 1e4 * t.eps * t.norm2:
        return t.residual(U, A, C) / math.sqrt(t.norm2)
    return math.sqrt(e2 / t.norm2)


def cp_als(
    t: ThreeWay,
    start: Sequence[Array],
    *,
    n_iter_max: int,
    tol: float,
    stall: float,
    linesearch: bool,
    progress: Progress,
) -> CPFit:
    """ALS from ``start`` = [U, A, C] until the relative error is <= ``tol``, a sweep improves it by less
    than ``stall`` times itself, or ``n_iter_max`` sweeps. With ``linesearch``, every other sweep from the
    sixth extrapolates the factors by sweep^(1/p) of their last change and keeps the extrapolation where
    it fits better (Bro's acceleration; p grows after repeated failures)."""
    xp = t.xp
    U, A, C = start
    tc = t.times_last(C)
    err = _cp_error(xp, t, U, A, C, tc)
    history = [err]
    power, fails, sweeps = 2.0, 0, 0
    for sweep in range(1, n_iter_max + 1):
        if err <= tol:
            break
        last = (U, A, C)
        aa, cc = xp.matmul(xp.matrix_transpose(A), A), xp.matmul(xp.matrix_transpose(C), C)
        U = _solve(xp, aa * cc, xp.sum(tc * A[None, :, :], axis=1))
        uu = xp.matmul(xp.matrix_transpose(U), U)
        A = _solve(xp, uu * cc, xp.sum(tc * U[:, None, :], axis=0))
        ta = t.times_middle(A)
        aa = xp.matmul(xp.matrix_transpose(A), A)
        C = _solve(xp, uu * aa, xp.sum(ta * U[:, None, :], axis=0))
        tc = t.times_last(C)
        err = _cp_error(xp, t, U, A, C, tc)
        if linesearch and sweep > 5 and sweep % 2 == 0:
            jump = sweep ** (1.0 / power)
            trial = [old + (new - old) * jump for old, new in zip(last, (U, A, C), strict=True)]
            trial_tc = t.times_last(trial[2])
            trial_err = _cp_error(xp, t, trial[0], trial[1], trial[2], trial_tc)
            if trial_err < err:
                (U, A, C), tc, err, fails = trial, trial_tc, trial_err, 0
            else:
                fails += 1
                if fails == 4:
                    power, fails = power + 1.0, 0
        sweeps = sweep
        history.append(err)
        progress.step(error=err)
        if err <= tol or history[-2] - err <= stall * err:
            break
    return CPFit(U, A, C, err, sweeps)


@dataclass
class TuckerFit:
    core: Array  # (R0, R1, R2)
    factors: list[Array]  # U (K, R0), A (f, R1), C (g, R2), orthonormal columns
    error: float
    sweeps: int


def _leading(xp: Namespace, m: Array, r: int) -> Array:
    """The r leading left singular vectors of m (rows, cols), r <= rows."""
    rows, cols = shape_of(m)
    if rows <= cols:
        _, vecs = xp.linalg.eigh(xp.matmul(m, xp.matrix_transpose(m)))
        return xp.flip(vecs[:, rows - r :], axis=1)
    u, _, _ = xp.linalg.svd(m, full_matrices=False)
    if shape_of(u)[1] >= r:
        return u[:, :r]
    # fewer columns than r: complete to an orthonormal basis from the eigenvectors of m mᵀ
    _, vecs = xp.linalg.eigh(xp.matmul(m, xp.matrix_transpose(m)))
    return xp.flip(vecs[:, rows - r :], axis=1)


def hooi(
    t: ThreeWay, start: Sequence[Array], ranks: Sequence[int], *, n_iter_max: int, tol: float, progress: Progress
) -> TuckerFit:
    """HOOI from ``start`` = [U, A, C] (their column spaces are what matters): each sweep sets a factor to
    the leading left singular vectors of T multiplied by the other two, until the relative error
    √(‖T‖² − ‖G‖²)/‖T‖ changes by less than ``tol`` (or by less than the dtype's resolution of it)."""
    xp = t.xp
    r0, r1, r2 = ranks
    U, A, C = (_orthonormal(xp, m) for m in start)
    floor = 16 * t.eps
    err, sweeps = math.inf, 0
    core = None
    for sweep in range(1, n_iter_max + 1):
        tc = t.times_last(C)  # (K, f, r2)
        y0 = xp.matmul(xp.matrix_transpose(A)[None, ...], tc)  # (K, r1, r2): T ×₂ Aᵀ ×₃ Cᵀ
        U = _leading(xp, xp.reshape(y0, (t.K, r1 * r2)), r0)
        y1 = xp.reshape(xp.matmul(xp.matrix_transpose(U), xp.reshape(tc, (t.K, t.f * r2))), (r0, t.f, r2))
        A = _leading(xp, xp.reshape(xp.permute_dims(y1, (1, 0, 2)), (t.f, r0 * r2)), r1)
        ta = t.times_middle(A)  # (K, g, r1)
        y2 = xp.reshape(xp.matmul(xp.matrix_transpose(U), xp.reshape(ta, (t.K, t.g * r1))), (r0, t.g, r1))
        C = _leading(xp, xp.reshape(xp.permute_dims(y2, (1, 0, 2)), (t.g, r0 * r1)), r2)
        core = xp.permute_dims(xp.matmul(xp.matrix_transpose(C)[None, ...], y2), (0, 2, 1))  # (r0, r1, r2)
        new = math.sqrt(abs(t.norm2 - float(xp.sum(core * core))) / t.norm2)
        sweeps = sweep
        progress.step(error=new)
        done = abs(err - new) <= max(tol, floor)
        err = new
        if done:
            break
    assert core is not None
    return TuckerFit(core, [U, A, C], err, sweeps)


def _orthonormal(xp: Namespace, m: Array) -> Array:
    q, _ = xp.linalg.qr(m)
    return q
