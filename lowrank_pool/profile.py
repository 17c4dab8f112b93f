"""Reporting: how error, size and accuracy of an approximation of W change with the rank.

:func:`rank_profile` fits (or, for the eigen form, reads off one decomposition) every
requested rank and reports the relative error, the parameter count, the compression
and, given features and labels, the top-1 accuracy of the head with the approximated
weight: bias and normalisation included, so it is the head's accuracy, beside the
dense head's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._backend import Array, check_floating, detach, namespace
from ._checks import (
    ArgumentError,
    DTypeError,
    ShapeError,
    check_choice,
    check_finite,
    check_positive_int,
    check_progress,
    check_shape,
    check_tucker_ranks,
    shape_of,
)
from ._progress import Progress
from .approx import cp_approx, eig_stream, symmetric_part, tucker_approx
from .factorized import EigTensor, cp_pool, eig_pool, to_dense, tucker_pool
from .first_order import project_channels
from .heads import to_dense as head_to_dense
from .second_order import NORMALIZATIONS, bilinear_pool

__all__ = ["RankProfile", "rank_profile"]


def _params(method: str, rank: Any, k: int, f: int) -> int:
    if method == "cp":
        return int(rank * (k + 2 * f + 1))
    if method == "eig":
        return int(rank * k * (f + 1))
    rk, ra, rc = rank
    return int(k * rk + f * (ra + rc) + rk * ra * rc)


@dataclass
class RankProfile:
    """Error, size and (optionally) accuracy of an approximation across ranks.

    ``errors[i]`` is ‖S − Ŝ‖_F / ‖S‖_F for ``ranks[i]`` (S the symmetric part of W,
    or W itself for CP/Tucker with ``symmetric=False``); ``compression`` is K·f² over
    the parameter count; ``accuracy`` is top-1 accuracy of the approximated
    classifier on the given features (None without them), beside ``dense_accuracy``.

    Parameters
    ----------
    method : str
        "cp", "tucker" or "eig".
    ranks : list
        The ranks tried.
    errors : list of float
        Relative Frobenius error per rank.
    params : list of int
        Parameter count per rank.
    compression : list of float
        K·f² / params per rank.
    accuracy : list of float, optional
        Top-1 accuracy per rank on the given features.
    dense_accuracy : float, optional
        Top-1 accuracy of W itself.
    dense_params : int
        K·f².

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> W = np.random.default_rng(0).standard_normal((3, 4, 4))
    >>> prof = lp.rank_profile(W, [1, 4], method="eig", progress=False)
    >>> prof.params, round(prof.errors[-1], 12)
    ([15, 60], 0.0)
    """

    method: str
    ranks: list[Any]
    errors: list[float]
    params: list[int]
    compression: list[float]
    accuracy: list[float] | None = None
    dense_accuracy: float | None = None
    dense_params: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """One dict per rank (e.g. for ``pandas.DataFrame(profile.rows())``)."""
        acc: list[float | None] = list(self.accuracy) if self.accuracy else [None] * len(self.ranks)
        return [
            {"rank": r, "rel_error": e, "params": p, "compression": c, "accuracy": a}
            for r, e, p, c, a in zip(self.ranks, self.errors, self.params, self.compression, acc, strict=True)
        ]

    def __str__(self) -> str:
        lines = [f"{'rank':>14} {'rel. error':>11} {'params':>12} {'compress':>9} {'accuracy':>9}"]
        for row in self.rows():
            acc = "" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            lines.append(
                f"{row['rank']!s:>14} {row['rel_error']:11.3e} {row['params']:12d} {row['compression']:8.3g}x {acc:>9}"
            )
        if self.dense_accuracy is not None:
            lines.append(f"{'dense W':>14} {0.0:11.3e} {self.dense_params:12d} {1.0:8.3g}x {self.dense_accuracy:9.4f}")
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """Relative error (left axis, log) and parameter count (right axis) against rank.

        Needs matplotlib (``pip install 'lowrank_pool[plot]'``). Returns the axes.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:  # pragma: no cover - matplotlib is in the test set-up
            raise ImportError("RankProfile.plot needs matplotlib: pip install 'lowrank_pool[plot]'") from err
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        x = [r if isinstance(r, int) else math.prod(r) ** (1 / 3) for r in self.ranks]
        ax.semilogy(x, self.errors, "o-", color="C0", label="relative error")
        ax.set_xlabel("rank" if all(isinstance(r, int) for r in self.ranks) else "rank (geometric mean)")
        ax.set_ylabel("relative error ‖S − Ŝ‖ / ‖S‖", color="C0")
        ax2 = ax.twinx()
        ax2.plot(x, self.params, "s--", color="C1", label="parameters")
        ax2.axhline(self.dense_params, color="C1", lw=0.8, ls=":")
        ax2.set_ylabel("parameters (dotted: dense W)", color="C1")
        ax.set_title(f"{self.method} approximation of W")
        return ax


def _head_parts(head: Any) -> dict[str, Any]:
    """W, bias, normalisation and channel projection of a head, through its factors() (a HeadForm)."""
    form = head.factors()
    w = head_to_dense(form._replace(projection=None, normalize=None, bias=None))
    return {
        "W": detach(w),
        "bias": None if form.bias is None else detach(form.bias),
        "normalize": form.normalize,
        "eps": form.eps,
        "num_iters": form.num_iters,
        "projection": None if form.projection is None else detach(form.projection),
        "channel_axis": getattr(head, "channel_axis", None),
    }


def rank_profile(
    W: Any,
    ranks: Sequence[Any],
    /,
    *,
    method: Literal["cp", "tucker", "eig"] = "eig",
    features: Array | None = None,
    labels: Array | None = None,
    bias: Array | None = None,
    normalize: str | None = None,
    channel_axis: int | None = None,
    progress: bool | None = None,
    **fit_kwargs: Any,
) -> RankProfile:
    """Relative error, parameters, compression and accuracy of an approximation per rank.

    Parameters
    ----------
    W : array (K, f, f), or a trained head with a W (anything whose ``factors()`` has one: a
        ``BilinearPool``, a factorised head, a linear attentional head)
        A head brings its own W, bias, normalisation and channel reduction: the
        accuracy reported is then exactly that head's, with W replaced by each
        approximation (and its ``channel_axis`` unless one is given here).
    ranks : sequence of int (or of (R_K, R_a, R_c) for Tucker)
    method : {"cp", "tucker", "eig"}
        For "eig" the top max(ranks) eigenpairs are computed once and every rank is read off them.
    features, labels : arrays, optional
        Feature maps (B, n, f) / (B, f, H, W) and integer class labels (B,): adds the
        top-1 accuracy of each approximation and of the dense W.
    bias : array (K,), optional
        Added to every score (a head's bias; taken from the head when W is one).
    normalize : str, optional
        The normalisation of :func:`bilinear_pool` the head applies; a normalised head
        is evaluated with the dense form of each approximation (its score is not
        linear in M, so the factorised paths do not apply).
    channel_axis : int, optional
    progress : bool, optional
        tqdm progress bar over the ranks (default: shown when tqdm is installed, stderr is a terminal
        and more than one CP or Tucker rank is fitted); each rank is logged at DEBUG, the start and end
        at INFO, on the ``"lowrank_pool"`` logger.
    **fit_kwargs
        Passed to :func:`cp_approx` / :func:`tucker_approx`.

    Returns
    -------
    RankProfile

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> W = np.random.default_rng(0).standard_normal((3, 8, 8))
    >>> prof = lp.rank_profile(W, [2, 4, 8], method="eig", progress=False)
    >>> [round(e, 3) for e in prof.errors][-1], prof.compression[0]
    (0.0, 3.5555555555555554)
    """
    check_choice(method, "method", ("cp", "tucker", "eig"))
    parts: dict[str, Any] = {"W": W, "bias": bias, "normalize": normalize, "eps": 1e-6, "num_iters": 5}
    parts.update(projection=None, channel_axis=channel_axis)
    if callable(getattr(W, "factors", None)) and not hasattr(W, "shape"):  # a head: the HeadForm protocol
        head = _head_parts(W)
        if bias is not None or normalize is not None:
            raise ArgumentError("bias, normalize: taken from the head; pass them only with a W array")
        parts.update(head, channel_axis=channel_axis if channel_axis is not None else head["channel_axis"])
    check_choice(parts["normalize"], "normalize", NORMALIZATIONS)
    W = parts["W"]
    xp = namespace(W=W)
    check_floating(xp, W, "W")
    sizes = check_shape("W", W, ("K", "f", "f"))
    check_finite(xp, W, "W")
    k, f = sizes["K"], sizes["f"]
    if isinstance(ranks, str | bytes) or not isinstance(ranks, Sequence) or not len(ranks):
        raise ArgumentError(f"ranks: expected at least one rank (a non-empty sequence), got {ranks!r}")
    if (features is None) != (labels is None):
        raise ArgumentError("features, labels: pass both to measure accuracy, or neither")
    if parts["bias"] is not None:
        namespace(W=W, bias=parts["bias"])
        check_shape("bias", parts["bias"], ("K",), K=k)
    if labels is not None:
        fx = namespace(features=features, labels=labels)
        check_floating(fx, features, "features")
        check_finite(fx, features, "features")  # a NaN feature would report a meaningless accuracy
        if not xp.isdtype(labels.dtype, "integral"):
            raise DTypeError(f"labels: expected integer class indices, got dtype {labels.dtype}")
        if shape_of(labels) != (shape_of(features)[0],):
            raise ShapeError(
                f"labels: expected shape ({shape_of(features)[0]},) (one per sample), got {shape_of(labels)}"
            )
        if shape_of(labels)[0] and not bool(xp.all((labels >= 0) & (labels < k))):
            low, high = int(xp.min(labels)), int(xp.max(labels))
            raise ArgumentError(f"labels: expected class indices in [0, {k}) (K = {k} classes), got {low} to {high}")
        if parts["projection"] is not None:
            features = project_channels(features, parts["projection"], channel_axis=parts["channel_axis"])
            parts["channel_axis"] = -1

    def head_scores(form: Any) -> Array:
        """Scores of the head with W replaced by ``form`` (None: the dense W itself)."""
        ax = parts["channel_axis"]
        if parts["normalize"] is not None or form is None:
            dense = W if form is None else to_dense(form)
            s = bilinear_pool(
                features,
                dense,
                normalize=parts["normalize"],
                eps=parts["eps"],
                num_iters=parts["num_iters"],
                channel_axis=ax,
            )
        else:
            s = {"cp": cp_pool, "tucker": tucker_pool, "eig": eig_pool}[method](features, form, channel_axis=ax)
        return s if parts["bias"] is None else s + parts["bias"]

    def accuracy(scores: Array) -> float:
        return float(xp.mean(xp.astype(xp.argmax(scores, axis=1) == labels, xp.float64)))

    check_progress(progress)
    show = progress if progress is not None else (None if len(ranks) > 1 and method != "eig" else False)
    dense_params = k * f * f
    errors, params, accs = [], [], []
    if method == "eig":
        # one streamed eigendecomposition for every rank: errors from the spectra, and the
        # top max(ranks) eigenpairs sliced per rank for the accuracy column
        top = max(check_positive_int(r, "rank") for r in ranks)
        _, mus, vecs, energies = eig_stream(W, top, progress=show)
        sq = xp.stack(mus, axis=0) ** 2  # (K, top), by |μ| descending
        total = sum(energies)
        # energy beyond the top eigenpairs: ‖S‖² − Σ_{p<=top} μ² (exactly 0 when top = f, where the
        # subtraction would only leave rounding of ‖S‖²)
        beyond = 0.0 if top == f else max(total - float(xp.sum(sq)), 0.0)
        largest = EigTensor(xp.stack(mus, axis=0), xp.stack(vecs, axis=1))
    else:
        target = symmetric_part(xp, detach(W)) if fit_kwargs.get("symmetric", True) else detach(W)
        norm = float(xp.linalg.vector_norm(target))
    with Progress(f"rank_profile {method}", len(ranks), unit="rank", bar=show) as report:
        for r in ranks:
            if method == "eig":
                tail = float(xp.sum(sq[:, r:])) + beyond  # ‖S − Ŝ_r‖² = Σ_{p>r} μ²
                errors.append(math.sqrt(tail / total) if total > 0 else 0.0)
                approx: Any = EigTensor(largest.eigenvalues[:, :r], largest.eigenvectors[:, :, :r])
            else:
                fit = cp_approx if method == "cp" else tucker_approx
                approx = fit(W, r, **{"progress": False, **fit_kwargs})
                diff = float(xp.linalg.vector_norm(to_dense(approx) - target))
                errors.append(diff / norm if norm > 0 else 0.0)
                if method == "tucker":
                    r = tuple(int(v) for v in shape_of(approx.core))
            params.append(_params(method, r, k, f))
            if features is not None:
                accs.append(accuracy(head_scores(approx)))
            report.step(rank=str(r), error=errors[-1])
    dense_acc = accuracy(head_scores(None)) if features is not None else None
    return RankProfile(
        method=method,
        ranks=list(ranks) if method != "tucker" else [check_tucker_ranks(r, k, f) for r in ranks],
        errors=errors,
        params=params,
        compression=[dense_params / p for p in params],
        accuracy=accs if features is not None else None,
        dense_accuracy=dense_acc,
        dense_params=dense_params,
    )
