"""First-order, bilinear, attentional, CP, Tucker and eigen pooling heads.

Each layer holds parameters and calls one public function of :mod:`lowrank_pool`; the
math exists once, in the functional core.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import torch

import lowrank_pool as lp
from lowrank_pool.validation import (
    ATTENTIONS,
    MAX_ITERATIONS,
    NORMALIZATIONS,
    PATHS,
    as_cp,
    as_eig,
    as_tucker,
    check_choice,
    check_flag,
    check_number,
    check_positive_int,
    check_sketch,
    check_tucker_ranks,
)

from ._base import PoolingHead, ScaledWeight, as_tensors, fan_std

Normalize = Literal["signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2"]

__all__ = [
    "AttentionalPool",
    "BilinearPool",
    "CPPool",
    "CompactBilinearPool",
    "EigPool",
    "FirstOrderPool",
    "TuckerPool",
]


class FirstOrderPool(PoolingHead):
    r"""Global mean/sum/max pooling followed by a linear classifier, :math:`s_k = \tfrac1n \mathbf{1}^\top X w_k + c_k`.

    The drop-in equivalent of ``AdaptiveAvgPool2d(1) + Linear`` (``reduce="mean"``).
    Scores by :func:`lowrank_pool.first_order_pool`.

    Parameters
    ----------
    in_channels : int
        f, the channels of the feature map.
    num_classes : int
        K.
    reduce : {"mean", "sum", "max"}
        How the positions are pooled.
    bias : bool
        A learnable offset per class (initialised to 0).
    channel_axis : int, optional
        Axis of the input that holds the channels; by default 3-D input is (B, n, f)
        and 4-D/5-D input (B, f, H, W) / (B, f, T, H, W).
    generator : torch.Generator, optional
        Makes the initialisation deterministic: w ~ N(0, 1/f).
    device, dtype
        Where and in which floating dtype the parameters are created.

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import FirstOrderPool
    >>> FirstOrderPool(8, 3)(torch.randn(2, 8, 4, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        reduce: Literal["mean", "sum", "max"] = "mean",
        bias: bool = True,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device, dtype=dtype)
        self.reduce = check_choice(reduce, "reduce", ("mean", "sum", "max"))
        self._reserve(weight=(self.in_channels, self.num_classes))
        self.weight = self._param(in_channels, num_classes)  # (f, K)
        self.reset_parameters(generator)

    form_kind = "first_order"

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.weight, fan_std(self.in_channels), generator)
        self._reset_bias()

    def factors(self) -> lp.HeadForm:
        return lp.HeadForm(self.weight, self.bias, reduce=self.reduce)

    @classmethod
    def _from_form(cls, head: lp.HeadForm, kwargs: dict[str, Any]) -> FirstOrderPool:
        if head.projection is not None and head.reduce == "max":
            raise lp.ArgumentError(
                "form: the max over positions of X R is not R applied to the max of X: a first-order head with "
                "reduce='max' cannot fold a projection in"
            )
        form = head.form if head.projection is None else lp.project_factors(head.form, head.projection)
        (w,) = as_tensors(form, like=_options(form, kwargs))
        layer = cls(w.shape[0], w.shape[1], **{"reduce": head.reduce, **_options(head.form, kwargs)})
        with torch.no_grad():
            layer.weight.copy_(w)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`s_k = \mathrm{reduce}_i\, x_i^\top w_k + c_k` (:func:`lowrank_pool.first_order_pool`).

        Parameters
        ----------
        x : tensor, (B, f, H, W), (B, f, T, H, W) or (B, n, f)
            Feature maps, read by the head's ``channel_axis`` rule (docs: conventions, "Layout").

        Returns
        -------
        tensor, (B, K)
            Class scores.
        """
        self._check_input(x)
        return self._add_bias(lp.first_order_pool(x, self.weight, reduce=self.reduce, channel_axis=self.channel_axis))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.num_classes}, reduce={self.reduce!r}, {self._common_repr()}"


class BilinearPool(ScaledWeight, PoolingHead):
    r"""Full bilinear (second-order) pooling: :math:`s_k = \langle N(M), W_k\rangle + c_k`, :math:`M = X^\top X / n`.

    Scores by :func:`lowrank_pool.bilinear_pool` (after
    :func:`lowrank_pool.project_channels` when ``reduce_dim`` is set). With
    ``normalize=None`` the head converts exactly, bias included, into factorised heads
    (``CPPool.from_dense(head, ...)`` and the like).

    ``weight`` holds W at unit scale: W = ``weight_scale`` · ``weight``, with ``weight_scale`` 1/d for
    ``None`` and ``"signed_sqrt"`` (‖N(M)‖ up to d for unit-scale features), 1/√d for ``"matrix_sqrt"``
    (‖M^½‖ = √Tr M) and 1 after an l2 normalisation (each rounded to a power of two), so that initial
    scores are O(1) and an optimiser's step moves them as much as it moves a first-order head's: the head
    trains at the learning rates the other heads use (docs: conventions, "Initialisation and training
    scale"). ``factors()``, ``to_dense()``
    and ``from_factors``/``from_dense`` speak of W itself.

    Parameters
    ----------
    in_channels, num_classes : int
    normalize : None or {"signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2"}
        Normalisation N of M, as in bilinear CNNs (signed sqrt + l2, the default) and
        iSQRT-COV (matrix square root by Newton–Schulz iterations).
    reduce_dim : int, optional
        Project the f channels to ``reduce_dim`` first (a 1×1 convolution without bias,
        ``reduction`` (f, d)), as users do to keep W (K, d, d) small.
    bias : bool
    eps : float
        ε of :func:`lowrank_pool.signed_sqrt`.
    num_iters : int
        Newton–Schulz iterations for "matrix_sqrt".
    channel_axis : int, optional
    generator : torch.Generator, optional
        ``weight`` ~ N(0, 1) (W ~ N(0, ``weight_scale``²), d = ``reduce_dim`` or f), the reduction ~ N(0, 1/f).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import BilinearPool
    >>> BilinearPool(16, 5, reduce_dim=8)(torch.randn(2, 16, 3, 3)).shape
    torch.Size([2, 5])
    >>> head = BilinearPool(16, 5, normalize=None)
    >>> head.weight_scale, torch.equal(head.to_dense(), head.weight_scale * head.weight)
    (0.0625, True)
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        normalize: Literal["signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2"]
        | None = "signed_sqrt+l2",
        reduce_dim: int | None = None,
        bias: bool = True,
        eps: float = 1e-6,
        num_iters: int = 5,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device, dtype=dtype)
        self.normalize = check_choice(normalize, "normalize", NORMALIZATIONS)
        reduce_dim = None if reduce_dim is None else check_positive_int(reduce_dim, "reduce_dim")
        self.eps, self.num_iters = check_number(eps, "eps"), check_positive_int(num_iters, "num_iters", MAX_ITERATIONS)
        d = reduce_dim or in_channels
        self._reserve(weight=(num_classes, d, d), **({"reduction": (in_channels, d)} if reduce_dim else {}))
        self.reduction = self._param(in_channels, d) if reduce_dim else None  # (f, d)
        self.weight = self._param(num_classes, d, d)  # (K, d, d): W / weight_scale
        # c = 1 after l2 (‖D‖ = 1, ‖D‖₁ up to d), 1/√d for M^½ (‖D‖ = √Tr M), else 1/d (‖D‖ up to d, ‖D‖₁ up to d²)
        l2, root = (self.normalize or "").endswith("l2"), self.normalize == "matrix_sqrt"
        self._register_scale(1.0 if l2 else fan_std(d) if root else 1.0 / d)
        self.reset_parameters(generator)

    form_kind = "dense"

    def factors(self) -> lp.HeadForm:
        return lp.HeadForm(
            self.weight * self.weight_scale,
            self.bias,
            projection=self.reduction,
            normalize=self.normalize,
            eps=self.eps,
            num_iters=self.num_iters,
        )

    @classmethod
    def _from_form(cls, head: lp.HeadForm, kwargs: dict[str, Any]) -> BilinearPool:
        w = lp.convert_form(head.form, "dense")
        opts = _options(w, kwargs)
        (w,) = as_tensors(w, like=opts)
        red = None if head.projection is None else as_tensors(head.projection, like=opts)[0]
        f = w.shape[1] if red is None else red.shape[0]
        extra = {
            "normalize": head.normalize,
            "reduce_dim": None if red is None else red.shape[1],
            "eps": head.eps,
            "num_iters": head.num_iters,
        }
        layer = cls(f, w.shape[0], **{**extra, **opts})
        with torch.no_grad():
            layer.weight.copy_(w / layer.weight_scale)
            if red is not None and layer.reduction is not None:
                layer.reduction.copy_(red)
        return layer

    @property
    def reduce_dim(self) -> int | None:
        """d of the 1×1 reduction (None without one), read from its parameter (facts about a head follow its
        parameters, also when they are replaced)."""
        return None if self.reduction is None else int(self.reduction.shape[1])

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        if self.reduction is not None:
            self._init_(self.reduction, fan_std(self.in_channels), generator)
        self._init_(self.weight, 1.0, generator)
        self._reset_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`s_k = c\,\langle N(M), \mathrm{weight}_k\rangle + c_k`, M of X (after the reduction
        :math:`X R`), by :func:`lowrank_pool.bilinear_pool`.

        Parameters
        ----------
        x : tensor, (B, f, H, W), (B, f, T, H, W) or (B, n, f)
            Feature maps, read by the head's ``channel_axis`` rule (docs: conventions, "Layout").

        Returns
        -------
        tensor, (B, K)
            Class scores.
        """
        self._check_input(x)
        axis = self.channel_axis
        if self.reduction is not None:
            x, axis = lp.project_channels(x, self.reduction, channel_axis=axis), -1
        s = lp.bilinear_pool(
            x, self.weight, normalize=self.normalize, eps=self.eps, num_iters=self.num_iters, channel_axis=axis
        )  # linear in W: the scale goes on the (B, K) scores, never on a (K, d, d) copy of the weight
        return self._add_bias(s * self.weight_scale)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, normalize={self.normalize!r}, reduce_dim={self.reduce_dim}, "
            f"{self._common_repr()}"
        )


class AttentionalPool(PoolingHead):
    r"""Low-rank attentional pooling (Girdhar & Ramanan, NIPS 2017).

    .. math::

       s_k = \frac1n \sum_{p=1}^{P} (X a_{kp})^\top \sigma(X b_{p}) + c_k \quad \text{(shared bottom-up)}

       s_k = \frac1n \sum_{p=1}^{P} (X a_{kp})^\top \sigma(X b_{kp}) + c_k \quad \text{(per class)}

    ``A`` (f, K, P) holds the top-down vectors a_kp, ``B`` (f, P) or (f, K, P) the
    bottom-up ones (the paper's a_k and b for rank 1). Scores by
    :func:`lowrank_pool.rankp_pool` (the shared form runs through a fused autograd
    kernel that keeps almost nothing for backward); ``return_maps=True`` also returns
    :func:`lowrank_pool.attention_maps` on the input's grid: top-down ``(B, K, *grid)`` and
    bottom-up ``(B, *grid)`` at rank 1, ``(B, K, P, *grid)`` and ``(B, P, *grid)`` / ``(B, K, P, *grid)``
    at rank P.

    Parameters
    ----------
    in_channels, num_classes : int
    rank : int
        P.
    bottom_up : {"shared", "per_class"}
        One set of P bottom-up vectors for all classes (the paper), or P per class.
    attention : {"linear", "softmax", "relu"}
        σ of the bottom-up maps (see :func:`lowrank_pool.attention_weights`).
    return_maps : bool
        Default of ``forward``'s ``return_maps``.
    bias : bool
    channel_axis : int, optional
    generator : torch.Generator, optional
        A ~ N(0, 1/(f·P)), B ~ N(0, 1/f): initial scores of the same O(1) size at every rank.
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import AttentionalPool
    >>> pool = AttentionalPool(512, 100, generator=torch.Generator().manual_seed(0))
    >>> scores, (top_down, bottom_up) = pool(torch.randn(2, 512, 14, 14), return_maps=True)
    >>> scores.shape, top_down.shape, bottom_up.shape
    (torch.Size([2, 100]), torch.Size([2, 100, 14, 14]), torch.Size([2, 14, 14]))
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rank: int = 1,
        *,
        bottom_up: Literal["shared", "per_class"] = "shared",
        attention: Literal["linear", "softmax", "relu"] = "linear",
        return_maps: bool = False,
        bias: bool = True,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device, dtype=dtype)
        rank = check_positive_int(rank, "rank")
        bottom_up = check_choice(bottom_up, "bottom_up", ("shared", "per_class"))
        self.attention = check_choice(attention, "attention", ATTENTIONS)
        self.return_maps = check_flag(return_maps, "return_maps")
        b_shape = (in_channels, rank) if bottom_up == "shared" else (in_channels, num_classes, rank)
        self._reserve(A=(in_channels, num_classes, rank), B=b_shape)
        self.A = self._param(in_channels, num_classes, rank)
        self.B = self._param(*b_shape)
        self.reset_parameters(generator)

    form_kind = "rankp"

    @property
    def rank(self) -> int:
        """P, read from A (facts about a head follow its parameters, also when they are replaced)."""
        return int(self.A.shape[-1])

    def factors(self) -> lp.HeadForm:
        return lp.HeadForm(lp.RankP(self.A, self.B), self.bias, attention=self.attention)

    @classmethod
    def _from_form(cls, head: lp.HeadForm, kwargs: dict[str, Any]) -> AttentionalPool:
        rp = lp.convert_form(head.form, "rankp")
        if head.projection is not None:
            rp = lp.project_factors(rp, head.projection)
        opts = _options(rp[0], kwargs)
        a, b = as_tensors(*rp, like=opts)
        extra = {"attention": head.attention, "bottom_up": "shared" if b.ndim == 2 else "per_class"}
        layer = cls(a.shape[0], a.shape[1], a.shape[2], **{**extra, **opts})
        with torch.no_grad():
            layer.A.copy_(a), layer.B.copy_(b)
        return layer

    @property
    def bottom_up(self) -> str:
        """``"shared"`` (B (f, P)) or ``"per_class"`` (B (f, K, P)), read from B."""
        return "shared" if self.B.dim() == 2 else "per_class"

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.A, fan_std(self.in_channels * self.rank), generator)
        self._init_(self.B, fan_std(self.in_channels), generator)
        self._reset_bias()

    def forward(self, x: torch.Tensor, return_maps: bool | None = None) -> Any:
        r"""Scores :math:`s_k = \frac1n \sum_p (X a_{kp})^\top \sigma(X b_{kp}) + c_k`
        (:func:`lowrank_pool.rankp_pool`), and the maps on request.

        Parameters
        ----------
        x : tensor, (B, f, H, W), (B, f, T, H, W) or (B, n, f)
            Feature maps, read by the head's ``channel_axis`` rule (docs: conventions, "Layout").
        return_maps : bool, optional
            Also return the attention maps (default: the layer's ``return_maps``).

        Returns
        -------
        tensor (B, K), or (tensor (B, K), AttentionMaps)
            The scores; with ``return_maps``, also ``(top_down, bottom_up)`` on the input's grid: rank 1 with a
            shared bottom-up, ``(B, K, *grid)`` and ``(B, *grid)``; otherwise ``(B, K, P, *grid)`` and
            ``(B, [K,] P, *grid)`` (:meth:`maps`).
        """
        self._check_input(x)
        s = self._add_bias(lp.rankp_pool(x, self.A, self.B, attention=self.attention, channel_axis=self.channel_axis))
        if not (self.return_maps if return_maps is None else check_flag(return_maps, "return_maps")):
            return s
        return s, self.maps(x)

    def maps(self, x: torch.Tensor) -> lp.AttentionMaps:
        """:func:`lowrank_pool.attention_maps` of this head on the input's grid (rank 1: P squeezed)."""
        a, b = (self.A[:, :, 0], self.B[..., 0]) if self.rank == 1 and self.bottom_up == "shared" else (self.A, self.B)
        return lp.attention_maps(x, a, b, attention=self.attention, channel_axis=self.channel_axis, keep_spatial=True)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, rank={self.rank}, bottom_up={self.bottom_up!r}, "
            f"attention={self.attention!r}, return_maps={self.return_maps}, {self._common_repr()}"
        )


# ----------------------------------------------------------------------------- factorised heads
def _options(like: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor options: the dtype and device of a form's array (numpy arrays: torch's equivalents), then
    ``kwargs``."""
    t = torch.as_tensor(like)
    dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
    return {"dtype": dtype, "device": t.device, **kwargs}


class _FactorizedHead(PoolingHead):
    """The constructor shared by the factorised heads: sizes, rank, ``path``, then ``_build`` and the init."""

    path: Literal["auto", "factorized", "dense"]

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rank: Any,
        *,
        path: Literal["auto", "factorized", "dense"] = "auto",
        bias: bool = True,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device, dtype=dtype)
        self.path = check_choice(path, "path", PATHS)
        self._build(rank)
        self.reset_parameters(generator)

    def _build(self, rank: Any) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:  # pragma: no cover
        raise NotImplementedError


class CPPool(_FactorizedHead):
    r"""Bilinear pooling with a CP-factorised weight, :math:`W = \sum_r u_r \circ a_r \circ c_r`.

    Parameters ``U`` (K, R) (λ folded in), ``A`` and ``C`` (f, R). Scores by
    :func:`lowrank_pool.cp_pool` (``path`` chooses factorised or dense evaluation).
    Build from a trained dense W or :class:`BilinearPool` with :meth:`from_dense`, or
    from factors with :meth:`from_factors`.

    Parameters
    ----------
    in_channels, num_classes : int
    rank : int
        R.
    path : {"auto", "factorized", "dense"}
    bias : bool
    channel_axis : int, optional
    generator : torch.Generator, optional
        U ~ N(0, 1/R), A, C ~ N(0, 1/f).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import CPPool
    >>> CPPool(32, 10, rank=8)(torch.randn(2, 32, 7, 7)).shape
    torch.Size([2, 10])
    """

    def _build(self, rank: Any) -> None:
        rank = check_positive_int(rank, "rank")
        self._reserve(U=(self.num_classes, rank), A=(self.in_channels, rank), C=(self.in_channels, rank))
        self.U = self._param(self.num_classes, rank)
        self.A = self._param(self.in_channels, rank)
        self.C = self._param(self.in_channels, rank)

    @property
    def rank(self) -> int:
        """R, read from the factors (facts about a head follow its parameters, also when they are replaced)."""
        return int(self.U.shape[1])

    form_kind = "cp"

    def factors(self) -> lp.HeadForm:
        return lp.HeadForm((None, [self.U, self.A, self.C]), self.bias)

    @classmethod
    def _from_form(cls, head: lp.HeadForm, kwargs: dict[str, Any]) -> CPPool:
        cp = lp.convert_form(head.form, "cp")
        if head.projection is not None:
            cp = lp.project_factors(cp, head.projection)
        weights, factors = as_cp(cp)
        opts = _options(factors[0], kwargs)
        w, u, a, c = as_tensors(weights, *factors, like=opts)
        layer = cls(a.shape[0], u.shape[0], u.shape[1], **opts)
        with torch.no_grad():  # (λ folded into U)
            layer.U.copy_(u * w[None, :]), layer.A.copy_(a), layer.C.copy_(c)
        return layer

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.U, fan_std(self.rank), generator)
        self._init_(self.A, fan_std(self.in_channels), generator)
        self._init_(self.C, fan_std(self.in_channels), generator)
        self._reset_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`s_k = \frac1n \sum_r U_{kr} (X a_r)^\top (X c_r) + c_k` (:func:`lowrank_pool.cp_pool`), W
        never formed on the factorised path.

        Parameters
        ----------
        x : tensor, (B, f, H, W), (B, f, T, H, W) or (B, n, f)
            Feature maps, read by the head's ``channel_axis`` rule (docs: conventions, "Layout").

        Returns
        -------
        tensor, (B, K)
            Class scores.
        """
        self._check_input(x)
        s = lp.cp_pool(x, (None, [self.U, self.A, self.C]), path=self.path, channel_axis=self.channel_axis)
        return self._add_bias(s)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.num_classes}, rank={self.rank}, path={self.path!r}, {self._common_repr()}"


class TuckerPool(_FactorizedHead):
    r"""Bilinear pooling with a Tucker-factorised weight, :math:`W = G \times_1 U \times_2 A \times_3 C`.

    Scores by :func:`lowrank_pool.tucker_pool`.

    Parameters
    ----------
    in_channels, num_classes : int
    rank : int or (R_K, R_a, R_c)
        An int r means (min(r, K), r, r); validated like :func:`lowrank_pool.tucker_approx`'s.
    path : {"auto", "factorized", "dense"}
    bias : bool
    channel_axis : int, optional
    generator : torch.Generator, optional
        core ~ N(0, 1/(R_a·R_c)), U ~ N(0, 1/R_K), A, C ~ N(0, 1/f).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import TuckerPool
    >>> TuckerPool(32, 10, rank=(4, 8, 8))(torch.randn(2, 32, 7, 7)).shape
    torch.Size([2, 10])
    """

    def _build(self, rank: Any) -> None:
        ranks = check_tucker_ranks(rank, self.num_classes, self.in_channels)
        k, f, (rk, ra, rc) = self.num_classes, self.in_channels, ranks
        self._reserve(core=ranks, U=(k, rk), A=(f, ra), C=(f, rc))
        self.core = self._param(*ranks)
        self.U = self._param(self.num_classes, rk)
        self.A = self._param(self.in_channels, ra)
        self.C = self._param(self.in_channels, rc)

    @property
    def ranks(self) -> tuple[int, int, int]:
        """(R_K, R_a, R_c), read from the core (facts about a head follow its parameters)."""
        return tuple(int(r) for r in self.core.shape)  # type: ignore[return-value]

    form_kind = "tucker"

    def factors(self) -> lp.HeadForm:
        return lp.HeadForm((self.core, [self.U, self.A, self.C]), self.bias)

    @classmethod
    def _from_form(cls, head: lp.HeadForm, kwargs: dict[str, Any]) -> TuckerPool:
        tk = lp.convert_form(head.form, "tucker")
        if head.projection is not None:
            tk = lp.project_factors(tk, head.projection)
        core, factors = as_tucker(tk)
        opts = _options(core, kwargs)
        core, u, a, c = as_tensors(core, *factors, like=opts)
        layer = cls(a.shape[0], u.shape[0], tuple(int(r) for r in core.shape), **opts)
        with torch.no_grad():
            layer.core.copy_(core), layer.U.copy_(u), layer.A.copy_(a), layer.C.copy_(c)
        return layer

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.core, fan_std(self.ranks[1] * self.ranks[2]), generator)
        self._init_(self.U, fan_std(self.ranks[0]), generator)
        self._init_(self.A, fan_std(self.in_channels), generator)
        self._init_(self.C, fan_std(self.in_channels), generator)
        self._reset_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`s_k = \langle M, G \times_1 U \times_2 A \times_3 C\rangle_k + c_k`
        (:func:`lowrank_pool.tucker_pool`).

        Parameters
        ----------
        x : tensor, (B, f, H, W), (B, f, T, H, W) or (B, n, f)
            Feature maps, read by the head's ``channel_axis`` rule (docs: conventions, "Layout").

        Returns
        -------
        tensor, (B, K)
            Class scores.
        """
        self._check_input(x)
        tk = (self.core, [self.U, self.A, self.C])
        return self._add_bias(lp.tucker_pool(x, tk, path=self.path, channel_axis=self.channel_axis))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.num_classes}, rank={self.ranks}, path={self.path!r}, {self._common_repr()}"


class EigPool(_FactorizedHead):
    r"""Bilinear pooling with the eigen form of W: :math:`s_k = \frac1n \sum_p \mu_{kp} \lVert X v_{kp}\rVert^2 + c_k`.

    ``eigenvalues`` (K, P) and ``eigenvectors`` (f, K, P) (columns need not stay
    orthonormal while training: the score is that of W_k = Σ_p μ_kp v_kp v_kpᵀ). The
    Frobenius-optimal rank-P head of a trained W is :meth:`from_dense`. Scores by
    :func:`lowrank_pool.eig_pool`: one GEMM of width K·P, half of a rank-P head's.

    Parameters
    ----------
    in_channels, num_classes : int
    rank : int
        P, eigenpairs per class.
    path : {"auto", "factorized", "dense"}
    bias : bool
    channel_axis : int, optional
    generator : torch.Generator, optional
        μ ~ N(0, 1/P), v ~ N(0, 1/f).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import EigPool
    >>> EigPool(32, 10, rank=4)(torch.randn(2, 32, 7, 7)).shape
    torch.Size([2, 10])
    """

    def _build(self, rank: Any) -> None:
        rank = check_positive_int(rank, "rank")
        if rank > self.in_channels:
            raise lp.ArgumentError(f"rank: expected at most f = {self.in_channels} eigenpairs per class, got {rank}")
        self._reserve(eigenvalues=(self.num_classes, rank), eigenvectors=(self.in_channels, self.num_classes, rank))
        self.eigenvalues = self._param(self.num_classes, rank)
        self.eigenvectors = self._param(self.in_channels, self.num_classes, rank)

    @property
    def rank(self) -> int:
        """P, read from the eigenvalues (facts about a head follow its parameters)."""
        return int(self.eigenvalues.shape[1])

    form_kind = "eig"

    def factors(self) -> lp.HeadForm:
        return lp.HeadForm(lp.EigTensor(self.eigenvalues, self.eigenvectors), self.bias)

    @classmethod
    def _from_form(cls, head: lp.HeadForm, kwargs: dict[str, Any]) -> EigPool:
        eig = lp.convert_form(head.form, "eig")
        if head.projection is not None:
            eig = lp.project_factors(eig, head.projection)
        mu, v = as_eig(eig)
        opts = _options(v, kwargs)
        mu, v = as_tensors(mu, v, like=opts)
        layer = cls(v.shape[0], v.shape[1], v.shape[2], **opts)
        with torch.no_grad():
            layer.eigenvalues.copy_(mu), layer.eigenvectors.copy_(v)
        return layer

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.eigenvalues, fan_std(self.rank), generator)
        self._init_(self.eigenvectors, fan_std(self.in_channels), generator)
        self._reset_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`s_k = \frac1n \sum_p \mu_{kp} \lVert X v_{kp}\rVert^2 + c_k` (:func:`lowrank_pool.eig_pool`).

        Parameters
        ----------
        x : tensor, (B, f, H, W), (B, f, T, H, W) or (B, n, f)
            Feature maps, read by the head's ``channel_axis`` rule (docs: conventions, "Layout").

        Returns
        -------
        tensor, (B, K)
            Class scores.
        """
        self._check_input(x)
        eig = lp.EigTensor(self.eigenvalues, self.eigenvectors)
        return self._add_bias(lp.eig_pool(x, eig, path=self.path, channel_axis=self.channel_axis))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.num_classes}, rank={self.rank}, path={self.path!r}, {self._common_repr()}"


class CompactBilinearPool(ScaledWeight, PoolingHead):
    r"""Compact bilinear pooling: a linear classifier on the Tensor Sketch of :math:`M = X^\top X / n`.

    .. math:: s_k = N(\psi(M))^\top w_k + c_k

    with ψ from :func:`lowrank_pool.compact_bilinear_pool` (a fixed random sketch of size ``dim``,
    chosen by ``seed``; not trained) and N the optional signed square root and l2 normalisation of
    the (B, dim) sketch (Gao et al., CVPR 2016). The linear map is :func:`lowrank_pool.first_order_pool`
    on the sketch as a one-position feature map.

    Parameters
    ----------
    in_channels, num_classes : int
    dim : int
        Sketch size d (the paper: 8192 at f = 512; a few thousand is usual).
    normalize : None or {"signed_sqrt", "l2", "signed_sqrt+l2"}
    seed : int
        The sketch's hashes and signs (part of the model: saved in the layer, the same on every device).
    bias : bool
    eps : float
        ε of :func:`lowrank_pool.signed_sqrt`.
    channel_axis : int, optional
    generator : torch.Generator, optional
        The head's w is ``weight_scale`` · ``weight`` with c = f/√d on an l2-normalised sketch (unit
        norm) and 1/√d on the raw or signed-sqrt sketch, whose norm grows like that of M (each rounded to
        a power of two); ``weight`` is drawn so that w ~ N(0, 1) and N(0, 1/f²) respectively (the rule of
        :class:`BilinearPool`: initial scores O(1), and optimiser steps that move them as much as a
        first-order head's).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import CompactBilinearPool
    >>> CompactBilinearPool(32, 10, dim=256)(torch.randn(2, 32, 7, 7)).shape
    torch.Size([2, 10])
    """

    sketch_seed: torch.Tensor
    sketch_bins: torch.Tensor
    sketch_signs: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dim: int = 2048,
        *,
        normalize: Literal["signed_sqrt", "l2", "signed_sqrt+l2"] | None = "signed_sqrt+l2",
        seed: int = 0,
        bias: bool = True,
        eps: float = 1e-6,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device, dtype=dtype)
        dim, seed = check_sketch(dim, seed)
        # the raw (or signed-sqrt) sketch's norm grows like ‖M‖ (up to f): c = 1/√d and w ~ N(0, 1/f²)
        self._descriptor_classifier(dim, num_classes, normalize=normalize, eps=eps, width=in_channels)
        # The sketch is part of the model's state (saved and loaded with it: a state dict from a layer of another
        # seed brings its own sketch), kept on the layer's device so that a step on a GPU copies nothing to it.
        self.register_buffer("sketch_seed", torch.tensor(seed, dtype=torch.int64, device=self.weight.device))
        self.register_buffer("sketch_bins", torch.empty(2, in_channels, dtype=torch.int64, device=self.weight.device))
        self.register_buffer(
            "sketch_signs", torch.empty(2, in_channels, dtype=self.weight.dtype, device=self.weight.device)
        )
        self._hash(seed)
        self.reset_parameters(generator)

    @property
    def dim(self) -> int:
        """d, read from the weight (facts about a head follow its parameters)."""
        return int(self.weight.shape[0])

    @property
    def seed(self) -> int:
        """The seed of the sketch this layer holds (loading a state dict brings that state's seed and sketch)."""
        return int(self.sketch_seed)

    @seed.setter
    def seed(self, value: int) -> None:
        self._hash(check_sketch(self.dim, value)[1])

    def _hash(self, seed: int) -> None:
        pairs = lp.sketch_hashes(self.in_channels, self.dim, seed)
        self._hashed_dim = self.dim
        with torch.no_grad():
            self.sketch_seed.fill_(seed)
            self.sketch_bins.copy_(torch.as_tensor(np.stack([b for b, _ in pairs])))  # (2, f) in [0, d)
            self.sketch_signs.copy_(torch.as_tensor(np.stack([s for _, s in pairs])))  # (2, f) of ±1

    def factors(self) -> lp.HeadForm:
        raise lp.ArgumentTypeError(
            "CompactBilinearPool: its scores are a linear map of a random sketch of M, an estimate of ⟨M, W⟩ whose W "
            "is never formed: it has no factor form"
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        keys = [prefix + name for name in ("sketch_seed", "sketch_bins", "sketch_signs")]
        if not any(k in state_dict for k in keys):  # a state saved before the sketch was part of it
            warnings.warn(
                f"{type(self).__name__}: the state dict holds no sketch (saved by an earlier lowrank_pool); this "
                f"layer keeps its own (seed {self.seed}), which must be the one the weights were trained with",
                UserWarning,
                stacklevel=2,
            )
            state_dict = {**state_dict, **{k: getattr(self, k[len(prefix) :]) for k in keys}}
        super()._load_from_state_dict(state_dict, prefix, *args)  # (ScaledWeight's: the weight's scale)
        self._hashed_dim = self.dim  # (the loaded sketch goes with the loaded weight)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._reset_classifier(1.0 / self.in_channels, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`s_k = c\, N(\psi(M))^\top \mathrm{weight}_k + c_k`, ψ the layer's Tensor Sketch
        (:func:`lowrank_pool.compact_bilinear_pool`).

        Parameters
        ----------
        x : tensor, (B, f, H, W), (B, f, T, H, W) or (B, n, f)
            Feature maps, read by the head's ``channel_axis`` rule (docs: conventions, "Layout").

        Returns
        -------
        tensor, (B, K)
            Class scores.
        """
        self._check_input(x)
        if self._hashed_dim != self.dim:  # the weight was replaced by one of another sketch size
            self._hash(self.seed)
        pairs = [(self.sketch_bins[i], self.sketch_signs[i]) for i in range(2)]
        psi = lp.compact_bilinear_pool(x, self.dim, hashes=pairs, channel_axis=self.channel_axis)
        return self._classify(psi, self.normalize, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, dim={self.dim}, normalize={self.normalize!r}, seed={self.seed}, "
            f"{self._common_repr()}"
        )
