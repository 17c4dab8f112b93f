"""First-order, bilinear, attentional, CP and Tucker pooling heads (parameters only; math in the functional core)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

import lowrank_pool as lp

from .._checks import check_choice, check_positive_int
from .._xp import features, namespace
from ..attention import ATTENTIONS, rankp_maps
from ..factorized import parse_cp, parse_tucker
from ._base import PoolingHead

__all__ = ["AttentionalPool", "BilinearPool", "CPPool", "FirstOrderPool", "TuckerPool"]


class FirstOrderPool(PoolingHead):
    r"""Global sum/mean/max pooling followed by a linear classifier, :math:`s_k = \mathbf{1}^\top X w_k`.

    The drop-in equivalent of ``AdaptiveAvgPool2d(1) + Linear`` (``reduce="mean"``).

    Parameters
    ----------
    in_channels, num_classes : int
    reduce : {"mean", "sum", "max"}
    bias : bool
    generator : torch.Generator, optional
        Makes the initialisation deterministic.

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
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, device=device, dtype=dtype)
        self.reduce = check_choice(reduce, "reduce", ("mean", "sum", "max"))
        self.weight = self._param(in_channels, num_classes)  # (f, K)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.weight, self.in_channels, generator)
        self._reset_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = lp.first_order_pool(x, self.weight, reduce=self.reduce, channel_axis=self._channel_axis(x))
        return self._add_bias(s)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.num_classes}, reduce={self.reduce!r}, bias={self.bias is not None}"


Normalize = Literal["signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2"]


class BilinearPool(PoolingHead):
    r"""Full bilinear (second-order) pooling: :math:`s_k = \langle N(X^\top X / n), W_k\rangle + c_k`.

    Parameters
    ----------
    in_channels, num_classes : int
    normalize : None or {"signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2"}
        Normalisation N of the mean Gram matrix, as in bilinear CNNs (signed sqrt + l2)
        and iSQRT-COV (matrix square root by Newton–Schulz iterations).
    reduce_dim : int, optional
        Project the f channels to ``reduce_dim`` first (a 1×1 convolution without bias),
        as users do to keep W (K, d, d) small.
    eps : float
        ε of :func:`lowrank_pool.signed_sqrt`.
    num_iters : int
        Newton–Schulz iterations for "matrix_sqrt".

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import BilinearPool
    >>> BilinearPool(16, 5, reduce_dim=8)(torch.randn(2, 16, 3, 3)).shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        normalize: Normalize | None = "signed_sqrt+l2",
        reduce_dim: int | None = None,
        bias: bool = True,
        eps: float = 1e-6,
        num_iters: int = 5,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, device=device, dtype=dtype)
        self.normalize = check_choice(
            normalize, "normalize", (None, "signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2")
        )
        self.reduce_dim = None if reduce_dim is None else check_positive_int(reduce_dim, "reduce_dim")
        self.eps, self.num_iters = eps, check_positive_int(num_iters, "num_iters")
        d = self.reduce_dim or in_channels
        self.reduction = self._param(in_channels, d) if reduce_dim else None  # (f, d)
        self.weight = self._param(num_classes, d, d)  # (K, d, d)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        if self.reduction is not None:
            self._init_(self.reduction, self.in_channels, generator)
        d = self.weight.shape[1]
        self._init_(self.weight, d * d, generator)
        self._reset_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self._channel_axis(x)
        if self.reduction is not None:  # 1x1 conv: (B, n, f) @ (f, d), or (d, f) @ (B, f, n)
            x = torch.matmul(x, self.reduction) if axis == -1 else torch.matmul(self.reduction.mT, x.flatten(2))
        g = lp.gram(x, normalize="mean", channel_axis=axis)
        norm = self.normalize or ""
        if norm.startswith("matrix_sqrt"):
            g = lp.matrix_sqrt(g, method="newton_schulz", num_iters=self.num_iters)
        if norm.startswith("signed_sqrt"):
            g = lp.signed_sqrt(g, eps=self.eps)
        if norm.endswith("l2"):
            g = lp.l2_normalize(g, axis=(-2, -1))
        d = g.shape[-1]
        s = torch.matmul(g.reshape(g.shape[0], d * d), self.weight.reshape(self.num_classes, d * d).mT)
        return self._add_bias(s)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, normalize={self.normalize!r}, reduce_dim={self.reduce_dim}, "
            f"bias={self.bias is not None}"
        )


class AttentionalPool(PoolingHead):
    r"""Low-rank attentional pooling (Girdhar & Ramanan, NIPS 2017).

    .. math:: s_k = \sum_{p=1}^{P} (X a_{kp})^\top \sigma(X b_{p})\quad\text{(shared)},\qquad
              \sum_p (X a_{kp})^\top \sigma(X b_{kp})\quad\text{(per class)}

    ``A`` (f, K, P) holds the top-down vectors a_kp, ``B`` (f, P) or (f, K, P) the
    bottom-up ones (the paper's a_k and b for rank 1). The shared form runs through a
    fused autograd kernel (memory of ∂X only); ``return_maps=True`` also returns the
    top-down maps (B, K, P, *grid) (P squeezed when 1) and the bottom-up maps (B, *grid)
    / (B, P, *grid) on the input's spatial grid.

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
        bias: bool = False,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, device=device, dtype=dtype)
        self.rank = check_positive_int(rank, "rank")
        self.bottom_up = check_choice(bottom_up, "bottom_up", ("shared", "per_class"))
        self.attention = check_choice(attention, "attention", ATTENTIONS)
        self.return_maps = bool(return_maps)
        self.A = self._param(in_channels, num_classes, rank)
        b_shape = (in_channels, rank) if bottom_up == "shared" else (in_channels, num_classes, rank)
        self.B = self._param(*b_shape)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.A, self.in_channels, generator)
        self._init_(self.B, self.in_channels, generator)
        self._reset_bias()

    def forward(self, x: torch.Tensor, return_maps: bool | None = None) -> Any:
        axis = self._channel_axis(x)
        maps = self.return_maps if return_maps is None else return_maps
        if not maps:
            s = lp.rankp_pool(x, self.A, self.B, attention=self.attention, channel_axis=axis)
            return self._add_bias(s)
        xp = namespace(X=x)

        feats = features(xp, x, axis)
        top, bottom = rankp_maps(xp, feats, self.A, self.B, self.attention)  # (B, n, K, P), (B, n, [K,] P)
        s = (top * (bottom if bottom.ndim == 4 else bottom[:, :, None, :])).sum(dim=(1, 3))
        s = self._add_bias(s)
        grid = self._spatial(x, axis)
        top = top.permute(0, 2, 3, 1).reshape(x.shape[0], self.num_classes, self.rank, *grid)
        bottom = bottom.movedim(1, -1).reshape(x.shape[0], *bottom.shape[2:], *grid)
        if self.rank == 1:
            top, bottom = top.squeeze(2), bottom.squeeze(-len(grid) - 1)
        return s, (top, bottom)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, rank={self.rank}, bottom_up={self.bottom_up!r}, "
            f"attention={self.attention!r}, return_maps={self.return_maps}"
        )


class CPPool(PoolingHead):
    r"""Bilinear pooling with a CP-factorised weight, :math:`W = \sum_r u_r \circ a_r \circ c_r`.

    Parameters ``U`` (K, R) (λ folded in), ``A`` and ``C`` (f, R). Scores by
    :func:`lowrank_pool.cp_pool` (``path`` chooses factorised or dense evaluation).
    Build from a trained dense W with :meth:`from_dense` or from factors with
    :meth:`from_factors`.

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import CPPool
    >>> CPPool(32, 10, rank=8)(torch.randn(2, 32, 7, 7)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rank: int,
        *,
        path: Literal["auto", "factorized", "dense"] = "auto",
        bias: bool = False,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, device=device, dtype=dtype)
        self.rank = check_positive_int(rank, "rank")
        self.path = check_choice(path, "path", ("auto", "factorized", "dense"))
        self.U = self._param(num_classes, rank)
        self.A = self._param(in_channels, rank)
        self.C = self._param(in_channels, rank)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.U, self.rank, generator)
        self._init_(self.A, self.in_channels, generator)
        self._init_(self.C, self.in_channels, generator)
        self._reset_bias()

    @classmethod
    def from_factors(cls, cp: Any, **kwargs: Any) -> CPPool:
        """A layer holding the factors of a CPTensor / (weights, [U, A, C]) (weights folded into U).

        The factors are validated like :func:`lowrank_pool.cp_pool`'s (shapes named in errors).
        """
        _, weights, factors, _ = parse_cp(cp)
        u, a, c = (torch.as_tensor(t).detach() for t in factors)
        u = u * torch.as_tensor(weights).to(u)[None, :]
        layer = cls(a.shape[0], u.shape[0], u.shape[1], dtype=u.dtype, device=u.device, **kwargs)
        with torch.no_grad():
            layer.U.copy_(u), layer.A.copy_(a), layer.C.copy_(c)
        return layer

    @classmethod
    def from_dense(cls, W: torch.Tensor, rank: int, *, fit: dict[str, Any] | None = None, **kwargs: Any) -> CPPool:
        """Fit :func:`lowrank_pool.cp_approx` (options in ``fit``) to W (K, f, f); ``kwargs`` go to the layer."""
        return cls.from_factors(lp.cp_approx(torch.as_tensor(W).detach(), rank, **(fit or {})), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = lp.cp_pool(x, (None, [self.U, self.A, self.C]), path=self.path, channel_axis=self._channel_axis(x))
        return self._add_bias(s)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.num_classes}, rank={self.rank}, path={self.path!r}"


class TuckerPool(PoolingHead):
    r"""Bilinear pooling with a Tucker-factorised weight, :math:`W = G \times_1 U \times_2 A \times_3 C`.

    ``rank`` is an int r, meaning (min(r, K), r, r), or (R_K, R_a, R_c).

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import TuckerPool
    >>> TuckerPool(32, 10, rank=(4, 8, 8))(torch.randn(2, 32, 7, 7)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rank: int | tuple[int, int, int],
        *,
        path: Literal["auto", "factorized", "dense"] = "auto",
        bias: bool = False,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, device=device, dtype=dtype)
        if isinstance(rank, int):
            r = check_positive_int(rank, "rank")
            ranks = (min(r, num_classes), r, r)
        else:
            ranks = tuple(check_positive_int(v, "rank") for v in rank)  # type: ignore[assignment]
            if len(ranks) != 3:
                raise ValueError(f"rank: expected an int or (R_K, R_a, R_c), got {rank!r}")
        self.ranks = ranks
        self.path = check_choice(path, "path", ("auto", "factorized", "dense"))
        self.core = self._param(*ranks)
        self.U = self._param(num_classes, ranks[0])
        self.A = self._param(in_channels, ranks[1])
        self.C = self._param(in_channels, ranks[2])
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.core, math.prod(self.ranks[1:]), generator)
        self._init_(self.U, self.ranks[0], generator)
        self._init_(self.A, self.in_channels, generator)
        self._init_(self.C, self.in_channels, generator)
        self._reset_bias()

    @classmethod
    def from_factors(cls, tucker: Any, **kwargs: Any) -> TuckerPool:
        """A layer holding a TuckerTensor / (core, [U, A, C]), validated like :func:`lowrank_pool.tucker_pool`'s."""
        _, core, factors, _ = parse_tucker(tucker)
        core, u, a, c = (torch.as_tensor(t).detach() for t in (core, *factors))
        ranks = (int(core.shape[0]), int(core.shape[1]), int(core.shape[2]))
        layer = cls(a.shape[0], u.shape[0], ranks, dtype=u.dtype, device=u.device, **kwargs)
        with torch.no_grad():
            layer.core.copy_(core), layer.U.copy_(u), layer.A.copy_(a), layer.C.copy_(c)
        return layer

    @classmethod
    def from_dense(
        cls, W: torch.Tensor, rank: int | tuple[int, int, int], *, fit: dict[str, Any] | None = None, **kwargs: Any
    ) -> TuckerPool:
        """Fit :func:`lowrank_pool.tucker_approx` (options in ``fit``) to W (K, f, f); ``kwargs`` go to the layer."""
        return cls.from_factors(lp.tucker_approx(torch.as_tensor(W).detach(), rank, **(fit or {})), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tk = (self.core, [self.U, self.A, self.C])
        s = lp.tucker_pool(x, tk, path=self.path, channel_axis=self._channel_axis(x))
        return self._add_bias(s)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.num_classes}, rank={self.ranks}, path={self.path!r}"
