"""Compressing a trained bilinear head by matching its scores, not its weights.

The Frobenius-optimal factors of W (eigen, CP, Tucker) minimise ‖W − Ŵ‖, but a head's scores
are ⟨M, W_k⟩ on the second moments M of the features it actually sees; the directions of W
that those features never excite cost rank without changing a score, and the ones they do
excite may carry little of W's norm. :func:`compress` starts from the Frobenius fit and, given
feature maps, refines the factors so that the compressed head's scores (bias included) match
the dense head's on them; :func:`match_scores` is that refinement for any student layer.

The argument, and what each step buys on real features: docs/math.md, "Why compression needs
score matching", and the compression example of the docs gallery.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

import lowrank_pool as lp
from lowrank_pool.validation import Progress, check_choice, check_number, check_positive_int

from ._base import PoolingHead
from ._layers import BilinearPool, CPPool, EigPool, TuckerPool

__all__ = ["MatchReport", "compress", "match_scores"]


class MatchReport(dict[str, Any]):
    """What :func:`match_scores` did: ``epochs``, ``history`` (relative score error per epoch),
    ``initial`` and ``final`` relative errors, ``stopped`` ("converged", "max_epochs", "diverged").

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import BilinearPool, EigPool, match_scores
    >>> x = torch.randn(16, 6, 4, 4, dtype=torch.float64)
    >>> dense = BilinearPool(6, 3, normalize=None, dtype=torch.float64)
    >>> report = match_scores(EigPool.from_dense(dense, 6), x, dense(x).detach(), epochs=2)
    >>> sorted(report), report["final"] < 1e-6
    (['epochs', 'final', 'history', 'initial', 'stopped'], True)
    """


def _relative_error(student: torch.nn.Module, features: torch.Tensor, targets: torch.Tensor, batch: int) -> float:
    """‖s − t‖ / ‖t − mean(t)‖ over the whole set (t centred per class: a constant offset is the bias's job)."""
    err = norm = 0.0
    centre = targets.mean(0, keepdim=True)
    with torch.no_grad():
        for i in range(0, features.shape[0], batch):
            s = _scores(student, features[i : i + batch])
            t = targets[i : i + batch]
            err += float(((s - t) ** 2).sum())
            norm += float(((t - centre) ** 2).sum())
    return math.sqrt(err / norm) if norm > 0 else math.sqrt(err)


def _scores(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = layer(x)
    return out.scores if hasattr(out, "scores") else out


def match_scores(
    student: PoolingHead,
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int = 50,
    batch_size: int = 256,
    lr: float = 1.0,
    tol: float = 1e-4,
    patience: int = 3,
    progress: bool | None = None,
) -> MatchReport:
    r"""Train ``student``'s parameters so that its scores match ``targets`` on ``features``.

    Minimises the mean squared score difference :math:`\frac1{NK}\sum_{b,k}(s_{bk} - t_{bk})^2` over
    all cached feature maps with L-BFGS (strong-Wolfe line search, up to 20 iterations an
    epoch; the loss and gradient are accumulated over mini-batches of ``batch_size`` maps).
    Stops when the relative error ‖s − t‖ / ‖t − t̄‖ (measured after each epoch) improves by
    less than ``tol`` (relative) for ``patience`` epochs, or after ``epochs``; the best
    parameters seen are kept.

    Parameters
    ----------
    student : a lowrank_pool.nn head
        Its parameters are updated in place (e.g. a :class:`CPPool` from ``from_dense``).
    features : tensor, (N, ...) feature maps in the student's layout
    targets : tensor, (N, K)
        The scores to match (a dense head's, computed once).
    epochs, batch_size, lr, tol, patience
        Optimisation and stopping rule.
    progress : bool, optional
        A tqdm bar over the epochs (default: when tqdm is installed and stderr is a terminal). Each
        epoch's error is logged at DEBUG, the start and the outcome at INFO, on the ``"lowrank_pool"`` logger.

    Returns
    -------
    MatchReport

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import BilinearPool, CPPool, match_scores
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(64, 6, 4, 4, generator=g)
    >>> dense = BilinearPool(6, 3, normalize=None, generator=g)
    >>> student = CPPool.from_dense(dense, rank=4)
    >>> report = match_scores(student, x, dense(x).detach(), epochs=5)
    >>> report["final"] < report["initial"]
    True
    """
    if not isinstance(student, PoolingHead):
        raise lp.ArgumentTypeError(f"student: expected a lowrank_pool.nn pooling layer, got {type(student).__name__}")
    for name, t in (("features", features), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise lp.BackendError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if targets.ndim != 2 or targets.shape[0] != features.shape[0] or targets.shape[1] != student.num_classes:
        raise lp.ShapeError(
            f"targets: expected shape (N, K) = ({features.shape[0]}, {student.num_classes}), got {tuple(targets.shape)}"
        )
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    patience = check_positive_int(patience, "patience")
    check_number(lr, "lr")
    check_number(tol, "tol")
    targets = targets.detach()
    params = [p for p in student.parameters() if p.requires_grad]
    # full-set L-BFGS (strong Wolfe line search); the loss and its gradient are accumulated over
    # mini-batches, so memory stays at one batch of features whatever N is
    opt = torch.optim.LBFGS(params, lr=lr, max_iter=20, history_size=20, line_search_fn="strong_wolfe")
    n_total = features.shape[0] * targets.shape[1]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = torch.zeros((), dtype=targets.dtype, device=targets.device)
        for i in range(0, features.shape[0], batch_size):
            loss = ((_scores(student, features[i : i + batch_size]) - targets[i : i + batch_size]) ** 2).sum() / n_total
            loss.backward()
            total = total + loss.detach()
        return total

    best = _relative_error(student, features, targets, batch_size)
    report = MatchReport(initial=best, history=[best], epochs=0, stopped="max_epochs")
    best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    stale = 0
    with Progress(f"match_scores {type(student).__name__}", epochs, unit="epoch", bar=progress) as bar:
        for epoch in range(epochs):
            opt.step(closure)
            err = _relative_error(student, features, targets, batch_size)
            if not math.isfinite(err):
                report["stopped"] = "diverged"
                break
            report["history"].append(err)
            report["epochs"] = epoch + 1
            bar.step(rel_error=err)
            if err < best * (1 - tol):
                best, stale = err, 0
                best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
            else:
                stale += 1
                if stale >= patience:
                    report["stopped"] = "converged"
                    break
        bar.done(rel_error=best, initial=report["initial"], stopped=report["stopped"])
    student.load_state_dict(best_state)
    report["final"] = best
    return report


_FORMS: dict[str, type[PoolingHead]] = {"eig": EigPool, "cp": CPPool, "tucker": TuckerPool}


def compress(
    head: BilinearPool,
    rank: Any,
    *,
    form: Literal["eig", "cp", "tucker"] = "eig",
    features: torch.Tensor | None = None,
    fit: dict[str, Any] | None = None,
    batch_size: int = 256,
    progress: bool | None = None,
    **match: Any,
) -> PoolingHead:
    r"""A low-rank head (:class:`EigPool`, :class:`CPPool` or :class:`TuckerPool`) that scores like ``head``.

    Without ``features``: the Frobenius fit of W (``from_dense``: bias, channel layout and 1×1
    reduction carried over). With ``features`` (e.g. the training set's feature maps): the fit
    of W weighted by the features' mean second moment M̄ = C² (factors of C W C mapped back
    through C⁺, so that no rank is spent on directions the features never excite), then
    :func:`match_scores` refines the factors and the bias so that the compressed head's
    scores match the dense head's on those features.

    A normalised head (``normalize`` set) has no exact low-rank equivalent; it can still be
    compressed by matching (``features`` required): the factors start from W and learn the
    normalised scores as well as their rank allows.

    Parameters
    ----------
    head : BilinearPool
        The trained dense head.
    rank : int (or (R_K, R_a, R_c) for Tucker)
    form : {"eig", "cp", "tucker"}
    features : tensor, optional
        Feature maps (N, f, H, W) (or the head's layout) to match the scores on.
    fit : dict, optional
        Options of the Frobenius fit (``cp_approx`` / ``tucker_approx``).
    batch_size : int
        Batch size for computing the dense scores and for matching.
    progress : bool, optional
        tqdm bars over the fit's sweeps and the matching's epochs (default: when tqdm is installed and
        stderr is a terminal); both are logged on the ``"lowrank_pool"`` logger (INFO: start and outcome).
    **match
        Options of :func:`match_scores` (``epochs``, ``lr``, ``tol``, ``patience``).

    Returns
    -------
    EigPool, CPPool or TuckerPool

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import BilinearPool, compress
    >>> head = BilinearPool(16, 5, normalize=None, generator=torch.Generator().manual_seed(0))
    >>> small = compress(head, 4, form="eig")   # Frobenius fit only: no features given
    >>> type(small).__name__, tuple(small.eigenvectors.shape)
    ('EigPool', (16, 5, 4))
    """
    if not isinstance(head, BilinearPool):
        raise lp.ArgumentTypeError(f"head: expected a lowrank_pool.nn.BilinearPool, got {type(head).__name__}")
    form = check_choice(form, "form", tuple(_FORMS))
    cls = _FORMS[form]
    batch_size = check_positive_int(batch_size, "batch_size")
    if features is None:
        if head.normalize is not None:
            raise lp.ArgumentError(
                f"features: a head with normalize={head.normalize!r} has no exact low-rank form; pass the feature "
                "maps to compress it by matching its scores"
            )
        return cls.from_dense(head, rank, fit={"progress": progress, **(fit or {})})
    if not isinstance(features, torch.Tensor):
        raise lp.BackendError(f"features: expected a torch.Tensor, got {type(features).__name__}")
    student = _whitened_fit(cls, head, rank, features, {"progress": progress, **(fit or {})}, batch_size)
    with torch.no_grad():
        targets = torch.cat(
            [_scores(head, features[i : i + batch_size]) for i in range(0, features.shape[0], batch_size)]
        )
    match_scores(student, features, targets, batch_size=batch_size, progress=progress, **match)
    return student


def _whitened_fit(
    cls: Any, head: BilinearPool, rank: Any, features: torch.Tensor, fit: dict[str, Any] | None, batch: int
) -> Any:
    """The low-rank head fitted to W weighted by the features' mean second moment M̄ (the start of matching):
    :func:`lowrank_pool.moment_weighted_approx` of the head's W on its f input channels, bias carried over."""
    # W on the input's f channels (the reduction folded in); a normalised head's W too, read as a plain one's
    w = lp.to_dense(head.factors()._replace(normalize=None, bias=None)).detach()
    m = torch.zeros(w.shape[1], w.shape[1], dtype=w.dtype, device=w.device)
    for i in range(0, features.shape[0], batch):
        m += lp.gram(features[i : i + batch], channel_axis=head.channel_axis).sum(0).to(w.dtype)
    m /= max(features.shape[0], 1)
    form = lp.moment_weighted_approx(w, rank, m, kind=cls.form_kind, **(fit or {}))
    bias = _detached(head.bias)
    opts: dict[str, Any] = {"dtype": w.dtype, "device": w.device, "channel_axis": head.channel_axis}
    return cls.from_factors(lp.HeadForm(form, bias=bias), bias=head.bias is not None, **opts)


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()
