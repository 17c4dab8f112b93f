"""What a pooling head computes, as a value: its form, and the conversions between forms.

Every head of :mod:`lowrank_pool.nn` answers ``head.factors()`` with a :class:`HeadForm` — the factor form
of its weights (a dense W, CP, Tucker, eigen or rank-P form, or first-order weights) with its bias, its
1×1 channel projection and its normalisation or attention — and :func:`head_scores` computes the head's
scores from that value alone. The conversions between forms (:func:`convert_form` exactly,
:func:`approx_form` at a rank, :func:`project_factors` through a projection, :func:`moment_weighted_approx`
weighted by the features' second moment) live here, once, for every head and every array library.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

from ._backend import Array, Namespace, check_floating, device_of, namespace
from ._checks import (
    MAX_ITERATIONS,
    ArgumentError,
    ArgumentTypeError,
    ShapeError,
    check_choice,
    check_number,
    check_positive_int,
    check_shape,
    describe,
    parse_cp,
    parse_eig,
    parse_rankp,
    parse_tucker,
    shape_of,
)
from ._forms import form_kind
from ._tensorly import tensorly_context
from .approx import cp_approx, eig_approx, tucker_approx
from .attention import ATTENTIONS, rankp_pool
from .factorized import EigTensor, RankP, cp_pool, cp_to_rankp, eig_pool, rankp_to_cp, tucker_pool
from .factorized import to_dense as _form_to_dense
from .first_order import first_order_pool, project_channels
from .second_order import NORMALIZATIONS, bilinear_pool

__all__ = [
    "HeadForm",
    "approx_form",
    "convert_form",
    "head_scores",
    "moment_weighted_approx",
    "project_factors",
    "to_dense",
]

KINDS = ("dense", "cp", "tucker", "eig", "rankp")
REDUCTIONS = ("mean", "sum", "max")


class HeadForm(NamedTuple):
    r"""The function a pooling head computes, as a value: :math:`s = \mathrm{pool}(X R, \text{form}) + c`.

    What ``head.factors()`` returns for every head of :mod:`lowrank_pool.nn`, what :func:`head_scores`
    evaluates, what ``from_factors`` builds a head from and what :func:`lowrank_pool.save_factors` stores.

    Parameters
    ----------
    form : array or factor form
        W (K, f, f) (bilinear: :func:`bilinear_pool`), a CP / Tucker / :class:`EigTensor` / :class:`RankP`
        form of W, or first-order weights (f, K) (:func:`first_order_pool`).
    bias : array (K,), optional
        c, added to every score.
    projection : array (f_in, f), optional
        R, a 1×1 channel projection applied to X first (a head's ``reduce_dim``).
    normalize : str, optional
        A bilinear normalisation of M (a dense W only; see :func:`bilinear_pool`).
    attention : {"linear", "softmax", "relu"}
        σ of a rank-P form's bottom-up maps (see :func:`rankp_pool`); ``"linear"`` for every other form.
    reduce : {"mean", "sum", "max"}
        A first-order form's reduction over positions.
    eps, num_iters
        The normalisation's options (see :func:`bilinear_pool`).

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> head = lp.HeadForm(np.eye(3)[None], bias=np.array([0.5]))
    >>> lp.head_scores(np.ones((2, 4, 3)), head)
    array([[3.5],
           [3.5]])
    """

    form: Any
    bias: Array | None = None
    projection: Array | None = None
    normalize: str | None = None
    attention: str = "linear"
    reduce: str = "mean"
    eps: float = 1e-6
    num_iters: int = 5


def _kind(form: Any, name: str = "form") -> str:
    """The kind of a head's form: one of KINDS, or "first_order" for a 2-D weight (f, K)."""
    if getattr(form, "ndim", None) == 2 and form_kind(form) is None and hasattr(form, "dtype"):
        return "first_order"
    kind = form_kind(form)
    if kind is None:
        raise ArgumentTypeError(
            f"{name}: expected W (K, f, f), a CPTensor, TuckerTensor, EigTensor or RankP, or first-order weights "
            f"(f, K), got {describe(form)}"
        )
    return kind


def _checked(head: Any) -> tuple[HeadForm, str]:
    """The head as a HeadForm (a bare form is one with no bias), validated; and its form's kind."""
    if not isinstance(head, HeadForm):
        head = HeadForm(head)
    kind = _kind(head.form)
    check_choice(head.normalize, "normalize", NORMALIZATIONS)
    check_choice(head.attention, "attention", ATTENTIONS)
    check_choice(head.reduce, "reduce", REDUCTIONS)
    if head.normalize is not None and kind != "dense":
        raise ArgumentError(
            f"normalize: only a dense W is normalised, got normalize={head.normalize!r} with a {kind} form"
        )
    if head.attention != "linear" and kind != "rankp":
        raise ArgumentError(f"attention: only a rank-P form has bottom-up maps, got attention={head.attention!r}")
    return head, kind


def check_head(head: Any, /) -> HeadForm:
    """``head`` as a validated :class:`HeadForm`: its form, options, and a bias (K,) and projection (f_in, f)
    that fit the form's K classes and f channels (the package's errors name the field otherwise)."""
    head, kind = _checked(head)
    form = head.form
    if kind == "first_order":
        sizes = check_shape("form", form, ("f", "K"))
    elif kind == "dense":
        sizes = check_shape("form", form, ("K", "f", "f"))
    elif kind == "cp":
        factors = parse_cp(form, "form")[2]
        sizes = {"K": shape_of(factors[0])[0], "f": shape_of(factors[1])[0]}
    elif kind == "tucker":
        factors = parse_tucker(form, "form")[2]
        sizes = {"K": shape_of(factors[0])[0], "f": shape_of(factors[1])[0]}
    elif kind == "eig":
        sizes = parse_eig(form, "form")[3]
    else:
        sizes = parse_rankp(form[0], form[1])[1]
    if head.bias is not None:
        check_shape("bias", head.bias, ("K",), K=sizes["K"])
    if head.projection is not None:
        check_shape("projection", head.projection, ("f_in", "f"), f=sizes["f"])
    check_number(head.eps, "eps")
    check_positive_int(head.num_iters, "num_iters", MAX_ITERATIONS)
    return head


def head_scores(X: Array, head: HeadForm | Any, /, *, channel_axis: int | None = None) -> Array:
    r"""The scores of a head, from its :class:`HeadForm` alone: :math:`s = \mathrm{pool}(X R, \text{form}) + c`.

    The form picks the pooling function (:func:`bilinear_pool` with ``normalize``, :func:`cp_pool`,
    :func:`tucker_pool`, :func:`eig_pool`, :func:`rankp_pool` with ``attention``, :func:`first_order_pool`
    with ``reduce``); a ``projection`` R maps X's channels first (:func:`project_channels`); the bias is added.
    ``head_scores(x, head.factors())`` equals ``head(x)`` for every head of :mod:`lowrank_pool.nn`.

    Parameters
    ----------
    X : array, (B, n, f_in), (B, f_in, H, W) or (B, f_in, T, H, W)
    head : HeadForm or a bare form
    channel_axis : int, optional
        The layout rule of every function (:doc:`/conventions`).

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.random.default_rng(0).standard_normal((2, 5, 3))
    >>> eig = lp.eig_approx(np.eye(3)[None], 3)
    >>> bool(np.allclose(lp.head_scores(X, lp.HeadForm(eig)), lp.bilinear_pool(X, np.eye(3)[None])))
    True
    """
    head, kind = _checked(head)
    form = head.form
    if head.projection is not None:
        X = project_channels(X, head.projection, channel_axis=channel_axis)
        channel_axis = -1
    if kind == "first_order":
        s = first_order_pool(X, form, reduce=cast(Any, head.reduce), channel_axis=channel_axis)
    elif kind == "dense":
        s = bilinear_pool(
            X,
            form,
            normalize=cast(Any, head.normalize),
            eps=head.eps,
            num_iters=head.num_iters,
            channel_axis=channel_axis,
        )
    elif kind == "cp":
        s = cp_pool(X, form, channel_axis=channel_axis)
    elif kind == "tucker":
        s = tucker_pool(X, form, channel_axis=channel_axis)
    elif kind == "eig":
        s = eig_pool(X, form, channel_axis=channel_axis)
    else:
        s = rankp_pool(X, form[0], form[1], attention=cast(Any, head.attention), channel_axis=channel_axis)
    if head.bias is None:
        return s
    xp = namespace(X=X, bias=head.bias)
    check_shape("bias", head.bias, ("K",), K=shape_of(s)[1])
    return s + xp.astype(head.bias, s.dtype)


def to_dense(obj: Any, /) -> Array:
    """W (K, f, f) of a CP, Tucker, :class:`EigTensor` or :class:`RankP` form, or of a :class:`HeadForm`.

    Built by batched matrix products (K·f² memory), never through a (f², R) Khatri-Rao product as
    ``tensorly.cp_to_tensor`` does; ``bilinear_pool(X, to_dense(form))`` equals the form's own pooling
    function. A head's projection R is folded in (W' = R W Rᵀ); a head whose score is not linear in
    M = XᵀX / n (a normalisation, softmax or ReLU attention, first-order weights) has no W, and says so.

    Parameters
    ----------
    obj : CPTensor, TuckerTensor, EigTensor, RankP, their tuples, or HeadForm
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
    if not isinstance(obj, HeadForm):
        return _form_to_dense(obj)
    head, kind = _checked(obj)
    if kind == "first_order":
        raise ArgumentError("obj: a first-order head's score is linear in X, not a bilinear form ⟨M, W⟩: it has no W")
    if head.normalize is not None:
        raise ArgumentError(
            f"obj: a head with normalize={head.normalize!r} scores a normalised M, not ⟨M, W⟩: it has no W"
        )
    if head.attention != "linear":
        raise ArgumentError(f"obj: a head with attention={head.attention!r} weighs positions non-linearly: it has no W")
    w = head.form if kind == "dense" else _form_to_dense(head.form)
    return w if head.projection is None else project_factors(w, head.projection)


def project_factors(form: Any, projection: Array, /) -> Any:
    """The form of W' = R W Rᵀ: a form on d channels mapped to f channels through R (f, d).

    A head with a 1×1 reduction R scores ⟨(XR)ᵀ(XR)/n, W⟩ = ⟨XᵀX/n, R W Rᵀ⟩: its form on the f input
    channels has every channel factor multiplied by R (CP and Tucker's A and C, the eigenvectors, rank-P's
    A and B; a dense W becomes R W Rᵀ; first-order weights W (d, K) become R W). The kind of form is kept.

    Parameters
    ----------
    form : array (K, d, d), CPTensor, TuckerTensor, EigTensor, RankP, or first-order weights (d, K)
    projection : array, (f, d)
        R.

    Returns
    -------
    the same kind of form, on f channels

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> R = np.array([[1.0], [2.0]])                       # f = 2 channels reduced to d = 1
    >>> lp.project_factors(np.ones((1, 1, 1)), R)[0]
    array([[1., 2.],
           [2., 4.]])
    """
    kind = _kind(form)
    xp = namespace(projection=projection)
    r = projection
    if getattr(r, "ndim", None) != 2:
        raise ShapeError(f"projection: expected a matrix (f, d), got shape {shape_of(r)}")
    d = shape_of(r)[1]
    if kind == "dense":
        check_shape("form", form, ("K", "d", "d"), d=d)
        return xp.matmul(xp.matmul(r, form), xp.matrix_transpose(r))
    if kind == "cp":
        _, weights, (u, a, c), _ = parse_cp(form, "form")
        check_shape("form factor A", a, ("d", "R"), d=d)
        with tensorly_context(xp, "form", fit=False):
            from tensorly.cp_tensor import CPTensor

            return CPTensor((weights, [u, xp.matmul(r, a), xp.matmul(r, c)]))
    if kind == "tucker":
        _, core, (u, a, c), _ = parse_tucker(form, "form")
        check_shape("form factor A", a, ("d", "R_a"), d=d)
        with tensorly_context(xp, "form", fit=False):
            from tensorly.tucker_tensor import TuckerTensor

            return TuckerTensor((core, [u, xp.matmul(r, a), xp.matmul(r, c)]))
    if kind == "eig":
        _, mu, v, sizes = parse_eig(form, "form")
        check_shape("form eigenvectors", v, ("d", "K", "P"), d=d)
        flat = xp.reshape(v, (d, sizes["K"] * sizes["P"]))
        return EigTensor(mu, xp.reshape(xp.matmul(r, flat), (shape_of(r)[0], sizes["K"], sizes["P"])))
    if kind == "rankp":
        a, b = form
        _, sizes, _ = parse_rankp(a, b)
        check_shape("A", a, ("d", "K", "P"), d=d)
        f = shape_of(r)[0]

        def mapped(m: Array) -> Array:
            rest = shape_of(m)[1:]
            flat = xp.reshape(m, (d, -1))
            return xp.reshape(xp.matmul(r, flat), (f, *rest))

        return RankP(mapped(a), mapped(b))
    check_shape("form", form, ("d", "K"), d=d)  # first-order weights: the mean of X R, then W, is that of X, then R W
    return xp.matmul(r, form)


def _eye(xp: Namespace, n: int, like: Array) -> Array:
    return xp.eye(n, dtype=like.dtype, device=device_of(like))


def convert_form(form: Any, kind: str, /) -> Any:
    """The same scores as another kind of form, exactly: ``kind`` in ``"dense"``, ``"cp"``, ``"tucker"``,
    ``"eig"``, ``"rankp"``.

    Direct where a formula exists (CP ↔ rank-P, any form → W); otherwise through W: W as a Tucker form with
    identity factors (core W), or its eigen form at full rank (P = f per class), from which the CP form
    (rank K·P: component (k, p) is e_k ∘ μ v ∘ v) and the per-class rank-P form (a = μ v, b = v) follow. The
    eigen form holds the symmetric part of W, which is all a score ⟨M, W⟩ sees (M is symmetric); every result
    scores like the input, to rounding. Sizes grow to full rank where the input had a smaller one of another
    kind: use :func:`approx_form` for a form of a given rank.

    Parameters
    ----------
    form : array (K, f, f), CPTensor, TuckerTensor, EigTensor or RankP
    kind : {"dense", "cp", "tucker", "eig", "rankp"}

    Returns
    -------
    W, CPTensor, TuckerTensor, EigTensor or RankP

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> W = np.random.default_rng(0).standard_normal((2, 3, 3))
    >>> cp = lp.convert_form(W, "cp")
    >>> X = np.random.default_rng(1).standard_normal((4, 5, 3))
    >>> bool(np.allclose(lp.cp_pool(X, cp), lp.bilinear_pool(X, W)))
    True
    """
    kind = check_choice(kind, "kind", KINDS)
    have = _kind(form)
    if have == "first_order":
        raise ArgumentTypeError("form: first-order weights are not a form of W: they convert to no other kind")
    if have == "dense":
        xp = namespace(form=form)
        check_floating(xp, form, "form")
        check_shape("form", form, ("K", "f", "f"))
    if have == kind:
        return form
    if kind == "dense":
        return _form_to_dense(form)
    if have == "cp" and kind == "rankp":
        return cp_to_rankp(form)
    if have == "rankp" and kind == "cp":
        return rankp_to_cp(form)
    w = form if have == "dense" else _form_to_dense(form)
    xp = namespace(form=w)
    k, f = shape_of(w)[0], shape_of(w)[1]
    if kind == "tucker":
        from tensorly.tucker_tensor import TuckerTensor

        with tensorly_context(xp, "form", fit=False):
            return TuckerTensor((w, [_eye(xp, k, w), _eye(xp, f, w), _eye(xp, f, w)]))
    eig = eig_approx(w, f)
    if kind == "eig":
        return eig
    mu, v = eig
    if kind == "rankp":
        return RankP(v * mu[None, :, :], v)
    # CP: component (k, p) = e_k ∘ μ_kp v_kp ∘ v_kp
    from tensorly.cp_tensor import CPTensor

    u = xp.reshape(xp.broadcast_to(_eye(xp, k, w)[:, :, None], (k, k, f)), (k, k * f))
    flat = xp.reshape(v, (f, k * f))
    with tensorly_context(xp, "form", fit=False):
        return CPTensor((xp.reshape(mu, (k * f,)), [u, flat, flat]))


def approx_form(W: Array, rank: Any, /, *, kind: str, **options: Any) -> Any:
    """The Frobenius-optimal (or ALS) form of W at a rank, of a given kind: the table every head's
    ``from_dense`` uses.

    ``"cp"``: :func:`cp_approx`; ``"tucker"``: :func:`tucker_approx`; ``"eig"``: :func:`eig_approx`;
    ``"rankp"``: the eigen form at rank P as per-class rank-P factors (a = μ v, b = v), its score
    Σ_p μ_kp ‖X v_kp‖² / n unchanged; ``"dense"``: W itself (rank ignored). ``options`` go to the fit.

    Parameters
    ----------
    W : array, (K, f, f)
    rank : int (or Tucker's ranks)
    kind : {"dense", "cp", "tucker", "eig", "rankp"}
    **options
        Options of :func:`cp_approx` / :func:`tucker_approx` (only ``progress`` for the eigen forms).

    Returns
    -------
    W, CPTensor, TuckerTensor, EigTensor or RankP

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> W = np.diag([3.0, -2.0, 1.0])[None]
    >>> lp.approx_form(W, 2, kind="rankp").A.shape
    (3, 1, 2)
    """
    kind = check_choice(kind, "kind", KINDS)
    if kind == "dense":
        return W
    if kind in ("eig", "rankp") and set(options) - {"progress"}:
        raise ArgumentError(
            f"options: the eigen forms take no fit options but progress, got {sorted(set(options) - {'progress'})}"
        )
    if kind == "cp":
        return cp_approx(W, rank, **options)
    if kind == "tucker":
        return tucker_approx(W, rank, **options)
    mu, v = eig_approx(W, rank, **options)
    return EigTensor(mu, v) if kind == "eig" else RankP(v * mu[None, :, :], v)


def moment_weighted_approx(W: Array, rank: Any, moment: Array, /, *, kind: str = "eig", **options: Any) -> Any:
    """The form of W at a rank fitted where the features are: factors of C W C mapped back through C⁺.

    A head's score error on a sample is ⟨M, W − Ŵ⟩; on average over the features, with M̄ = C² their mean
    second moment, it is governed by ‖C (W − Ŵ) C‖ rather than ‖W − Ŵ‖. Fitting C W C (by
    :func:`approx_form`) spends the rank on the directions the features excite; the channel factors are
    mapped back by the pseudo-inverse C⁺ (:func:`project_factors`; eigenvalues of M̄ below 1e-10 of the
    largest are dropped). The start of score matching in :func:`lowrank_pool.nn.compress`.

    Parameters
    ----------
    W : array, (K, f, f)
    rank : int (or Tucker's ranks)
    moment : array, (f, f)
        M̄, e.g. the mean of :func:`gram` over the training set's feature maps.
    kind : {"eig", "cp", "tucker", "rankp"}
    **options
        Options of the fit (see :func:`approx_form`).

    Returns
    -------
    EigTensor, CPTensor, TuckerTensor or RankP
        On W's f channels.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> W = np.random.default_rng(0).standard_normal((2, 4, 4))
    >>> M = np.diag([1.0, 1.0, 0.0, 0.0])                  # the features never excite channels 2 and 3
    >>> eig = lp.moment_weighted_approx(W, 2, M)
    >>> bool(np.abs(eig.eigenvectors[2:]).max() < 1e-12)
    True
    """
    kind = check_choice(kind, "kind", ("eig", "cp", "tucker", "rankp"))
    xp = namespace(W=W, moment=moment)
    f = check_shape("W", W, ("K", "f", "f"))["f"]
    check_shape("moment", moment, ("f", "f"), f=f)
    m = moment if moment.dtype == W.dtype else xp.astype(moment, W.dtype)
    lam, e = xp.linalg.eigh((m + xp.matrix_transpose(m)) / 2)
    peak = xp.max(lam)
    keep = lam > xp.maximum(peak, xp.zeros_like(peak)) * 1e-10
    root = xp.where(keep, xp.sqrt(xp.maximum(lam, xp.zeros_like(lam))), xp.zeros_like(lam))
    inv = xp.where(keep, 1 / xp.where(keep, root, xp.ones_like(root)), xp.zeros_like(root))
    c = xp.matmul(e * root[None, :], xp.matrix_transpose(e))
    c_pinv = xp.matmul(e * inv[None, :], xp.matrix_transpose(e))
    fitted = approx_form(xp.matmul(xp.matmul(c, W), c), rank, kind=kind, **options)
    return project_factors(fitted, c_pinv)
