"""Two-input heads: covariance pooling of one map, and the bilinear fusion models of two inputs.

A bilinear model of two inputs scores z_k = (1/n) Σ_i x_iᵀ W_k y_i with W (K, f, g); the fusion models
of visual question answering are decompositions of that W (docs: "The bilinear family"):

- :class:`MLB` (Kim et al., ICLR 2017) and :class:`MFB` (Yu et al., ICCV 2017): CP, with a Hadamard
  product of the two projections (MFB sums the products over groups of k and normalises);
- :class:`Mutan` (Ben-younes et al., ICCV 2017): Tucker;
- :class:`Block` (Ben-younes et al., AAAI 2019): block-term, a sum of small Tuckers;
- :class:`MCB` (Fukui et al., EMNLP 2016): the Tensor Sketch of x yᵀ.

Each layer holds parameters and calls the functions (:func:`lowrank_pool.cp_pool`,
:func:`lowrank_pool.tucker_pool`, :func:`lowrank_pool.compact_bilinear_pool` with ``Y``). Inputs are two
vectors x (B, f) and y (B, g) (n = 1), or two feature maps at the same positions, read by the layer's
``channel_axis`` rule.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

import lowrank_pool as lp
from lowrank_pool.validation import check_choice, check_positive_int, check_sketch

from ._base import PoolingHead, ScaledWeight, fan_std

Activation = Literal["tanh"] | None


class _Fusion(PoolingHead):
    """Base of the two-input heads: x's channel count f (``in_channels``), y's (``y_channels``), K outputs."""

    def __init__(
        self,
        in_channels: int,
        y_channels: int,
        num_classes: int,
        *,
        bias: bool,
        channel_axis: int | None,
        device: Any,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device, dtype=dtype)
        self.y_channels = check_positive_int(y_channels, "y_channels")

    def _inputs(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """Vectors (B, f), (B, g) as one-position maps (B, 1, f), (B, 1, g); maps as they are."""
        self._check_input(x)
        if not isinstance(y, torch.Tensor):
            raise lp.BackendError(f"y: expected a torch.Tensor, got {type(y).__name__}")
        if x.ndim == 2 and y.ndim == 2:
            return x[:, None, :], y[:, None, :], -1
        if (x.ndim == 2) != (y.ndim == 2):
            raise lp.ShapeError(
                f"y: expected a vector batch (B, g) like x or a feature map like x, got x of shape "
                f"{tuple(x.shape)} and y of shape {tuple(y.shape)}"
            )
        return x, y, self.channel_axis

    def _project(self, x: torch.Tensor, y: torch.Tensor, axis: int | None, a: torch.Tensor, c: torch.Tensor) -> Any:
        """tanh(X A), tanh(Y C) as (B, n, R) maps (the papers' nonlinearity on the projections)."""
        za = torch.tanh(lp.project_channels(x, a, channel_axis=axis))
        zc = torch.tanh(lp.project_channels(y, c, channel_axis=axis))
        return za, zc

    def _common_repr(self) -> str:
        return f"y_channels={self.y_channels}, {super()._common_repr()}"

    def factors(self) -> lp.HeadForm:
        """A two-input head has no one-input :class:`lowrank_pool.HeadForm`: its bilinear form (with
        ``activation=None``) is W (K, f, g), :meth:`to_dense`. Raises ArgumentTypeError saying so.

        Returns
        -------
        lowrank_pool.HeadForm
            Never: two-input heads raise.

        Examples
        --------
        >>> from lowrank_pool.nn import MLB
        >>> MLB(6, 5, 3, rank=2).factors()
        Traceback (most recent call last):
        ...
        lowrank_pool._errors.ArgumentTypeError: MLB: a two-input head has no one-input factor form; ...
        """
        raise lp.ArgumentTypeError(
            f"{type(self).__name__}: a two-input head has no one-input factor form; its bilinear form x^T W_k y "
            "(activation=None) is to_dense(), W of shape (K, f, g)"
        )

    def _bilinear_forms(self) -> list[Any]:
        """The CP/Tucker forms whose two-input scores add up to this head's (activation=None); none by default."""
        raise lp.ArgumentTypeError(f"{type(self).__name__}: its scores are not bilinear in x and y, so it has no W")

    def to_dense(self) -> torch.Tensor:
        """W (K, f, g) of the bilinear form :math:`z_k = x^\top W_k y` this head computes (with
        ``activation=None``; :func:`lowrank_pool.to_dense` of its factors, differentiable in them).

        Returns
        -------
        torch.Tensor, (K, f, g)
            ``lp.bilinear_pool(x, head.to_dense(), Y=y)`` plus the bias equals ``head(x, y)``. A head with
            ``activation="tanh"``, or whose scores are not bilinear (MFB's and MCB's normalisations), raises
            ArgumentTypeError saying so.

        Examples
        --------
        >>> import torch
        >>> from lowrank_pool.nn import MLB
        >>> MLB(6, 5, 3, rank=2).to_dense().shape
        torch.Size([3, 6, 5])
        """
        if getattr(self, "activation", None) is not None:
            raise lp.ArgumentTypeError(
                f"{type(self).__name__}: with activation={self.activation!r} its scores are not bilinear in x and y, "
                "so it has no W; build it with activation=None"
            )
        forms = self._bilinear_forms()
        dense = lp.to_dense(forms[0])
        for form in forms[1:]:
            dense = dense + lp.to_dense(form)
        return dense


def _eye(r: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(r, dtype=like.dtype, device=like.device)


class MLB(_Fusion):
    r"""Multimodal low-rank bilinear pooling (Kim et al., ICLR 2017): the CP form of W (K, f, g).

    .. math:: z_k = \frac1n \sum_i \sum_r P_{kr}\, \phi(u_r^\top x_i)\, \phi(v_r^\top y_i) + c_k,
              \qquad W = \textstyle\sum_r p_r \circ u_r \circ v_r \ (\phi = \text{identity})

    With ``activation=None`` this is :func:`lowrank_pool.cp_pool` of X and Y with the factors [P, U, V]:
    exactly the bilinear score of the CP-form W, which :func:`lowrank_pool.cp_approx` fits and ``from_dense``
    reads. The paper applies tanh to both projections (``activation="tanh"``), which keeps the Hadamard
    structure but is no longer bilinear in (x, y).

    Parameters
    ----------
    in_channels, y_channels : int
        f and g, the channel counts of x and y.
    num_classes : int
        K, the output size.
    rank : int
        R, the joint embedding size (the paper: 1200).
    activation : {None, "tanh"}
    bias : bool
    channel_axis : int, optional
        The channel axis of feature-map inputs (vectors (B, f) need none).
    generator : torch.Generator, optional
        U ~ N(0, 1/f), V ~ N(0, 1/g), P ~ N(0, 1/R): scores O(1) for unit-scale inputs.
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import MLB
    >>> MLB(16, 8, 5, rank=32)(torch.randn(4, 16), torch.randn(4, 8)).shape
    torch.Size([4, 5])
    """

    def __init__(
        self,
        in_channels: int,
        y_channels: int,
        num_classes: int,
        rank: int = 64,
        *,
        activation: Activation = None,
        bias: bool = True,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, y_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device,
                         dtype=dtype)  # fmt: skip
        self.rank = check_positive_int(rank, "rank")
        self.activation = check_choice(activation, "activation", (None, "tanh"))
        self._reserve(P=(num_classes, rank), U=(in_channels, rank), V=(y_channels, rank))
        self.P = self._param(num_classes, self.rank)
        self.U = self._param(in_channels, self.rank)
        self.V = self._param(y_channels, self.rank)
        self.reset_parameters(generator)

    @classmethod
    def from_dense(cls, W: Any, rank: Any = None, *, fit: dict[str, Any] | None = None, **kwargs: Any) -> MLB:
        """An MLB whose CP form is :func:`lowrank_pool.cp_approx` of a trained two-input W (K, f, g).

        Parameters
        ----------
        W : tensor, (K, f, g)
            The dense weights of a bilinear fusion z_k = xᵀ W_k y (e.g. trained with
            ``lowrank_pool.bilinear_pool(x, W, Y=y)``).
        rank : int
            R.
        fit : dict, optional
            Options of :func:`lowrank_pool.cp_approx` (``n_restarts``, ``n_iter_max``, ...).
        **kwargs
            The layer's options (``bias``, ``channel_axis``, ``device``, ``dtype``); ``activation`` must stay
            None (the fitted form is bilinear).

        Returns
        -------
        MLB

        Examples
        --------
        >>> import torch
        >>> from lowrank_pool.nn import MLB
        >>> W = torch.einsum("kr,fr,gr->kfg", torch.randn(3, 2), torch.randn(6, 2), torch.randn(4, 2))
        >>> MLB.from_dense(W, 2, fit={"n_restarts": 3}, bias=False).rank
        2
        """
        w, rank = _dense_two_input(W, rank, kwargs, "CP")
        weights, (u, a, c) = lp.cp_approx(w, rank, **(fit or {}))
        layer = _holding(cls, w, rank, kwargs=kwargs)
        with torch.no_grad():
            layer.P.copy_(u * weights[None, :]), layer.U.copy_(a), layer.V.copy_(c)
        return layer

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.P, fan_std(self.rank), generator)
        self._init_(self.U, fan_std(self.in_channels), generator)
        self._init_(self.V, fan_std(self.y_channels), generator)
        self._reset_bias()

    def _bilinear_forms(self) -> list[Any]:
        return [(None, [self.P, self.U, self.V])]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`z_k` of the two inputs.

        Parameters
        ----------
        x : tensor, (B, f) or a feature map (B, f, H, W), (B, n, f)
        y : tensor, (B, g), or a feature map at x's positions

        Returns
        -------
        tensor, (B, K)
        """
        x, y, axis = self._inputs(x, y)
        if self.activation is None:
            return self._add_bias(lp.cp_pool(x, self._bilinear_forms()[0], Y=y, channel_axis=axis))
        za, zc = self._project(x, y, axis, self.U, self.V)
        eye = _eye(self.rank, za)
        return self._add_bias(lp.cp_pool(za, (None, [self.P, eye, eye]), Y=zc, channel_axis=-1))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, rank={self.rank}, activation={self.activation!r}, "
            f"{self._common_repr()}"
        )


class MFB(ScaledWeight, _Fusion):
    r"""Multimodal factorised bilinear pooling (Yu et al., ICCV 2017), then a linear classifier.

    .. math:: z_j = \frac1n \sum_i \sum_{r \in G_j} (u_r^\top x_i)(v_r^\top y_i), \qquad
              s_k = N(z)^\top w_k + c_k

    The fused vector z (o = ``dim`` entries) is the CP form of a (o, f, g) tensor whose first factor is the
    indicator of the groups G_j of ``factor`` consecutive components (the paper's sum pooling over windows
    of k, :func:`lowrank_pool.cp_pool` with that indicator), then the power (signed square root) and l2
    normalisation N, then the classifier w (o, K).

    Parameters
    ----------
    in_channels, y_channels : int
    num_classes : int
    dim : int
        o, the fused size (the paper: 1000).
    factor : int
        k, the components summed per output (the paper: 5).
    normalize : None or {"signed_sqrt", "l2", "signed_sqrt+l2"}
    bias : bool
    eps : float
    channel_axis : int, optional
    generator : torch.Generator, optional
        U ~ N(0, 1/f), V ~ N(0, 1/g); the classifier as :class:`CompactBilinearPool`'s (``weight_scale``).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import MFB
    >>> MFB(16, 8, 5, dim=20, factor=3)(torch.randn(4, 16), torch.randn(4, 8)).shape
    torch.Size([4, 5])
    """

    groups: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        y_channels: int,
        num_classes: int,
        dim: int = 1000,
        factor: int = 5,
        *,
        normalize: Literal["signed_sqrt", "l2", "signed_sqrt+l2"] | None = "signed_sqrt+l2",
        bias: bool = True,
        eps: float = 1e-6,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, y_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device,
                         dtype=dtype)  # fmt: skip
        self.dim = check_positive_int(dim, "dim")
        self.factor = check_positive_int(factor, "factor")
        r = self.dim * self.factor
        self._reserve(U=(in_channels, r), V=(y_channels, r))
        self.U = self._param(in_channels, r)
        self.V = self._param(y_channels, r)
        self._descriptor_classifier(
            self.dim, num_classes, normalize=normalize, eps=eps, width=math.sqrt(in_channels * y_channels)
        )
        # the sum pooling over windows of k: the CP form's first factor, fixed (o, o·k)
        groups = torch.repeat_interleave(torch.eye(self.dim, **self.factory), self.factor, dim=1)
        self.register_buffer("groups", groups, persistent=False)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._init_(self.U, fan_std(self.in_channels), generator)
        self._init_(self.V, fan_std(self.y_channels), generator)
        # z has o entries, each a sum of k products of unit-scale projections: w ~ N(0, 1/(o·k)) on the raw z
        self._reset_classifier(1.0 / math.sqrt(self.dim * self.factor), generator)

    def fused(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z (B, o) before the normalisation (:func:`lowrank_pool.cp_pool` with the group indicator)."""
        x, y, axis = self._inputs(x, y)
        return lp.cp_pool(x, (None, [self.groups.to(self.U.dtype), self.U, self.V]), Y=y, channel_axis=axis)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`s_k = c\, N(z)^\top \mathrm{weight}_k + c_k`.

        Parameters
        ----------
        x : tensor, (B, f) or a feature map (B, f, H, W), (B, n, f)
        y : tensor, (B, g), or a feature map at x's positions

        Returns
        -------
        tensor, (B, K)
        """
        return self._classify(self.fused(x, y), self.normalize, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, dim={self.dim}, factor={self.factor}, "
            f"normalize={self.normalize!r}, {self._common_repr()}"
        )


class Mutan(_Fusion):
    r"""MUTAN fusion (Ben-younes et al., ICCV 2017): the Tucker form of W (K, f, g).

    .. math:: z_k = \frac1n \sum_i \sum_{q,r,s} U_{kq}\, G_{qrs}\, \phi(a_r^\top x_i)\, \phi(c_s^\top y_i) + c_k,
              \qquad W = G \times_1 U \times_2 A \times_3 C \ (\phi = \text{identity})

    With ``activation=None``, :func:`lowrank_pool.tucker_pool` of X and Y; the paper's tanh on both
    projections is ``activation="tanh"``. (MUTAN further constrains the core's slices to rank R; a full core
    is the general case.)

    Parameters
    ----------
    in_channels, y_channels : int
    num_classes : int
    rank : tuple of int
        (R_K, R_x, R_y): the core's size (the paper: (510, 310, 310) before the classifier).
    activation : {None, "tanh"}
    bias : bool
    channel_axis : int, optional
    generator : torch.Generator, optional
        U ~ N(0, 1/R_K), core ~ N(0, 1/(R_x·R_y)), A ~ N(0, 1/f), C ~ N(0, 1/g).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import Mutan
    >>> Mutan(16, 8, 5, rank=(4, 6, 6))(torch.randn(4, 16), torch.randn(4, 8)).shape
    torch.Size([4, 5])
    """

    def __init__(
        self,
        in_channels: int,
        y_channels: int,
        num_classes: int,
        rank: tuple[int, int, int] = (16, 16, 16),
        *,
        activation: Activation = None,
        bias: bool = True,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, y_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device,
                         dtype=dtype)  # fmt: skip
        self.ranks = _three_ranks(rank)
        self.activation = check_choice(activation, "activation", (None, "tanh"))
        rk, rx, ry = self.ranks
        self._reserve(U=(num_classes, rk), core=(rk, rx, ry), A=(in_channels, rx), C=(y_channels, ry))
        self.U = self._param(num_classes, rk)
        self.core = self._param(rk, rx, ry)
        self.A = self._param(in_channels, rx)
        self.C = self._param(y_channels, ry)
        self.reset_parameters(generator)

    @classmethod
    def from_dense(cls, W: Any, rank: Any = None, *, fit: dict[str, Any] | None = None, **kwargs: Any) -> Mutan:
        """A Mutan whose Tucker form is :func:`lowrank_pool.tucker_approx` of a trained two-input W (K, f, g).

        Parameters
        ----------
        W : tensor, (K, f, g)
            The dense weights of a bilinear fusion z_k = xᵀ W_k y.
        rank : int or (R_K, R_x, R_y)
            The core's size (an int r: (min(r, K), min(r, f), min(r, g))).
        fit : dict, optional
            Options of :func:`lowrank_pool.tucker_approx`.
        **kwargs
            The layer's options (``bias``, ``channel_axis``, ``device``, ``dtype``); ``activation`` must stay
            None.

        Returns
        -------
        Mutan

        Examples
        --------
        >>> import torch
        >>> from lowrank_pool.nn import Mutan
        >>> Mutan.from_dense(torch.randn(3, 6, 4), (3, 6, 4), bias=False).ranks
        (3, 6, 4)
        """
        w, rank = _dense_two_input(W, rank, kwargs, "Tucker")
        core, (u, a, c) = lp.tucker_approx(w, rank, **(fit or {}))
        layer = _holding(cls, w, tuple(core.shape), kwargs=kwargs)
        with torch.no_grad():
            layer.core.copy_(core), layer.U.copy_(u), layer.A.copy_(a), layer.C.copy_(c)
        return layer

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        rk, rx, ry = self.ranks
        self._init_(self.U, fan_std(rk), generator)
        self._init_(self.core, fan_std(rx * ry), generator)
        self._init_(self.A, fan_std(self.in_channels), generator)
        self._init_(self.C, fan_std(self.y_channels), generator)
        self._reset_bias()

    def _bilinear_forms(self) -> list[Any]:
        return [(self.core, [self.U, self.A, self.C])]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`z_k` of the two inputs.

        Parameters
        ----------
        x : tensor, (B, f) or a feature map (B, f, H, W), (B, n, f)
        y : tensor, (B, g), or a feature map at x's positions

        Returns
        -------
        tensor, (B, K)
        """
        x, y, axis = self._inputs(x, y)
        if self.activation is None:
            return self._add_bias(lp.tucker_pool(x, self._bilinear_forms()[0], Y=y, channel_axis=axis))
        za, zc = self._project(x, y, axis, self.A, self.C)
        tk = (self.core, [self.U, _eye(self.ranks[1], za), _eye(self.ranks[2], za)])
        return self._add_bias(lp.tucker_pool(za, tk, Y=zc, channel_axis=-1))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, rank={self.ranks}, activation={self.activation!r}, "
            f"{self._common_repr()}"
        )


class Block(_Fusion):
    r"""BLOCK fusion (Ben-younes et al., AAAI 2019): the block-term form of W (K, f, g), a sum of small Tuckers.

    .. math::

       z_k = \sum_{c=1}^{C} \frac1n \sum_i \big[G_c \times_1 U_c \times_2 \phi(X A_c)_i
       \times_3 \phi(Y C_c)_i\big]_k + c_k

       W = \textstyle\sum_c G_c \times_1 U_c \times_2 A_c \times_3 C_c \quad (\phi = \text{identity})

    Each block is :func:`lowrank_pool.tucker_pool` of X and Y with its own (small) core and factors; the
    projections of all blocks are one 1×1 product each for x and y.

    Parameters
    ----------
    in_channels, y_channels : int
    num_classes : int
    blocks : int
        C, the number of blocks (the paper: 20).
    rank : tuple of int
        (R_K, R_x, R_y) of each block's core.
    activation : {None, "tanh"}
    bias : bool
    channel_axis : int, optional
    generator : torch.Generator, optional
        U_c ~ N(0, 1/(C·R_K)), cores ~ N(0, 1/(R_x·R_y)), A ~ N(0, 1/f), C ~ N(0, 1/g).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import Block
    >>> Block(16, 8, 5, blocks=3, rank=(2, 4, 4))(torch.randn(4, 16), torch.randn(4, 8)).shape
    torch.Size([4, 5])
    """

    def __init__(
        self,
        in_channels: int,
        y_channels: int,
        num_classes: int,
        blocks: int = 4,
        rank: tuple[int, int, int] = (8, 8, 8),
        *,
        activation: Activation = None,
        bias: bool = True,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, y_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device,
                         dtype=dtype)  # fmt: skip
        self.blocks = check_positive_int(blocks, "blocks")
        self.ranks = _three_ranks(rank)
        self.activation = check_choice(activation, "activation", (None, "tanh"))
        c, (rk, rx, ry) = self.blocks, self.ranks
        self._reserve(U=(c, num_classes, rk), core=(c, rk, rx, ry), A=(in_channels, c * rx), C=(y_channels, c * ry))
        self.U = self._param(c, num_classes, rk)
        self.core = self._param(c, rk, rx, ry)
        self.A = self._param(in_channels, c * rx)  # [A_1 | ... | A_C]
        self.C = self._param(y_channels, c * ry)
        self.reset_parameters(generator)

    @classmethod
    def from_dense(
        cls, W: Any, rank: Any = (8, 8, 8), *, blocks: int = 4, fit: dict[str, Any] | None = None, **kwargs: Any
    ) -> Block:
        """A Block whose blocks are :func:`lowrank_pool.block_term_approx` of a trained two-input W (K, f, g).

        Parameters
        ----------
        W : tensor, (K, f, g)
            The dense weights of a bilinear fusion z_k = xᵀ W_k y.
        rank : int or (R_K, R_x, R_y)
            Every block's core size.
        blocks : int
            C.
        fit : dict, optional
            Options of :func:`lowrank_pool.block_term_approx` (``n_iter_max``, ``tol``).
        **kwargs
            The layer's options (``bias``, ``channel_axis``, ``device``, ``dtype``); ``activation`` must stay
            None.

        Returns
        -------
        Block

        Examples
        --------
        >>> import torch
        >>> from lowrank_pool.nn import Block
        >>> Block.from_dense(torch.randn(3, 6, 4), (2, 3, 2), blocks=2, bias=False).ranks
        (2, 3, 2)
        """
        w, rank = _dense_two_input(W, rank, kwargs, "block-term")
        parts = lp.block_term_approx(w, blocks, rank, **(fit or {}))
        layer = _holding(cls, w, len(parts), tuple(parts[0][0].shape), kwargs=kwargs)
        _, rx, ry = layer.ranks
        with torch.no_grad():
            for i, (core, (u, a, c)) in enumerate(parts):
                layer.core[i].copy_(core), layer.U[i].copy_(u)
                layer.A[:, i * rx : (i + 1) * rx].copy_(a), layer.C[:, i * ry : (i + 1) * ry].copy_(c)
        return layer

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        rk, rx, ry = self.ranks
        self._init_(self.U, fan_std(self.blocks * rk), generator)
        self._init_(self.core, fan_std(rx * ry), generator)
        self._init_(self.A, fan_std(self.in_channels), generator)
        self._init_(self.C, fan_std(self.y_channels), generator)
        self._reset_bias()

    def _bilinear_forms(self) -> list[Any]:
        _, rx, ry = self.ranks
        return [
            (self.core[i], [self.U[i], self.A[:, i * rx : (i + 1) * rx], self.C[:, i * ry : (i + 1) * ry]])
            for i in range(self.blocks)
        ]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`z_k` of the two inputs: the sum of the blocks' Tucker scores.

        Parameters
        ----------
        x : tensor, (B, f) or a feature map (B, f, H, W), (B, n, f)
        y : tensor, (B, g), or a feature map at x's positions

        Returns
        -------
        tensor, (B, K)
        """
        x, y, axis = self._inputs(x, y)
        if self.activation is None:
            za = lp.project_channels(x, self.A, channel_axis=axis)  # (B, n, C·R_x): every block's X A_c
            zc = lp.project_channels(y, self.C, channel_axis=axis)
        else:
            za, zc = self._project(x, y, axis, self.A, self.C)
        _, rx, ry = self.ranks
        ex, ey = _eye(rx, za), _eye(ry, za)
        s = sum(
            lp.tucker_pool(za[..., i * rx : (i + 1) * rx], (self.core[i], [self.U[i], ex, ey]),
                           Y=zc[..., i * ry : (i + 1) * ry], channel_axis=-1)
            for i in range(self.blocks)
        )  # fmt: skip
        return self._add_bias(s)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, blocks={self.blocks}, rank={self.ranks}, "
            f"activation={self.activation!r}, {self._common_repr()}"
        )


class MCB(ScaledWeight, _Fusion):
    r"""Multimodal compact bilinear pooling (Fukui et al., EMNLP 2016): a classifier on the Tensor Sketch of x yᵀ.

    .. math:: s_k = c\, N(\psi(X^\top Y / n))^\top \mathrm{weight}_k + c_k

    ψ is :func:`lowrank_pool.compact_bilinear_pool` of X and Y (two fixed count sketches, of f and g entries,
    chosen by ``seed`` and saved as buffers), N the signed square root and l2 normalisation.

    Parameters
    ----------
    in_channels, y_channels : int
    num_classes : int
    dim : int
        d, the sketch size (the paper: 16000).
    normalize : None or {"signed_sqrt", "l2", "signed_sqrt+l2"}
    seed : int
    bias : bool
    eps : float
    channel_axis : int, optional
    generator : torch.Generator, optional
        The rule of :class:`CompactBilinearPool` with f replaced by √(f·g).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import MCB
    >>> MCB(16, 8, 5, dim=64)(torch.randn(4, 16), torch.randn(4, 8)).shape
    torch.Size([4, 5])
    """

    sketch_bins_x: torch.Tensor
    sketch_signs_x: torch.Tensor
    sketch_bins_y: torch.Tensor
    sketch_signs_y: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        y_channels: int,
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
        super().__init__(in_channels, y_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device,
                         dtype=dtype)  # fmt: skip
        self.dim, self.seed = check_sketch(dim, seed)
        width = math.sqrt(in_channels * y_channels)
        self._descriptor_classifier(self.dim, num_classes, normalize=normalize, eps=eps, width=width)
        (bx, sx), _ = lp.sketch_hashes(in_channels, self.dim, self.seed)
        _, (by, sy) = lp.sketch_hashes(y_channels, self.dim, self.seed)
        dev = self.weight.device
        self.register_buffer("sketch_bins_x", torch.as_tensor(bx, dtype=torch.int64, device=dev))
        self.register_buffer("sketch_signs_x", torch.as_tensor(sx, dtype=self.weight.dtype, device=dev))
        self.register_buffer("sketch_bins_y", torch.as_tensor(by, dtype=torch.int64, device=dev))
        self.register_buffer("sketch_signs_y", torch.as_tensor(sy, dtype=self.weight.dtype, device=dev))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self._reset_classifier(1.0 / math.sqrt(self.in_channels * self.y_channels), generator)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`s_k = c\, N(\psi)^\top \mathrm{weight}_k + c_k` of the normalised sketch ψ of the two inputs.

        Parameters
        ----------
        x : tensor, (B, f) or a feature map (B, f, H, W), (B, n, f)
        y : tensor, (B, g), or a feature map at x's positions

        Returns
        -------
        tensor, (B, K)
        """
        x, y, axis = self._inputs(x, y)
        pairs = [(self.sketch_bins_x, self.sketch_signs_x), (self.sketch_bins_y, self.sketch_signs_y)]
        psi = lp.compact_bilinear_pool(x, self.dim, Y=y, hashes=pairs, channel_axis=axis)
        return self._classify(psi, self.normalize, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, dim={self.dim}, normalize={self.normalize!r}, "
            f"seed={self.seed}, {self._common_repr()}"
        )


class CovariancePool(ScaledWeight, PoolingHead):
    r"""Covariance pooling with the iSQRT-COV normalisation (Li et al., CVPR 2018), then a linear classifier.

    .. math:: \Sigma = \frac1n X^\top \big(I - \tfrac1n \mathbf 1\mathbf 1^\top\big) X, \qquad
              s_k = c\, \operatorname{triu}\big(\Sigma^{1/2}\big)^\top \mathrm{weight}_k + c_k

    Σ^½ by ``num_iters`` Newton–Schulz iterations after a pre-normalisation by the trace, with the
    post-compensation √Tr Σ (:func:`lowrank_pool.gram` with ``center=True``, :func:`lowrank_pool.matrix_sqrt`
    ``method="newton_schulz"``), and the upper triangle (:func:`lowrank_pool.triu_vec`: d(d+1)/2 features, half
    of the f² a full bilinear head classifies). The same numbers as fast-MPN-COV's ``CovpoolLayer``,
    ``SqrtmLayer`` and ``TriuvecLayer`` (docs: "The bilinear family"). An optional 1×1 reduction to d
    channels first (the paper: 2048 → 256).

    Parameters
    ----------
    in_channels, num_classes : int
    reduce_dim : int, optional
        d: a learnt 1×1 projection to d channels before the covariance.
    num_iters : int
        Newton–Schulz iterations (the paper: 5).
    bias : bool
    channel_axis : int, optional
    generator : torch.Generator, optional
        ``weight`` ~ N(0, 1) with c = 1/√d: initial scores O(1) (‖triu(Σ^½)‖ ≈ √Tr Σ); reduction ~ N(0, 1/f).
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import CovariancePool
    >>> CovariancePool(16, 5, reduce_dim=8)(torch.randn(2, 16, 7, 7)).shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        reduce_dim: int | None = None,
        num_iters: int = 5,
        bias: bool = True,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device, dtype=dtype)
        self.reduce_dim = None if reduce_dim is None else check_positive_int(reduce_dim, "reduce_dim")
        self.num_iters = check_positive_int(num_iters, "num_iters", 1000)
        d = self.reduce_dim or in_channels
        features = d * (d + 1) // 2
        self._reserve(weight=(features, num_classes), **({"reduction": (in_channels, d)} if reduce_dim else {}))
        self.reduction = self._param(in_channels, d) if reduce_dim else None
        self.weight = self._param(features, num_classes)
        self._register_scale(fan_std(d))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        if self.reduction is not None:
            self._init_(self.reduction, fan_std(self.in_channels), generator)
        self._init_(self.weight, 1.0, generator)
        self._reset_bias()

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """triu(Σ^½) (B, d(d+1)/2), the features the classifier reads."""
        self._check_input(x)
        axis = self.channel_axis
        if self.reduction is not None:
            x, axis = lp.project_channels(x, self.reduction, channel_axis=axis), -1
        sigma = lp.gram(x, center=True, channel_axis=axis)
        return lp.triu_vec(lp.matrix_sqrt(sigma, method="newton_schulz", num_iters=self.num_iters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`s_k = c\, \operatorname{triu}(\Sigma^{1/2})^\top \mathrm{weight}_k + c_k`.

        Parameters
        ----------
        x : tensor, (B, f, H, W), (B, f, T, H, W) or (B, n, f)
            Feature maps, read by the head's ``channel_axis`` rule (docs: conventions, "Layout").

        Returns
        -------
        tensor, (B, K)
            Class scores.
        """
        return self._classify(self.descriptor(x), None, 0.0)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, reduce_dim={self.reduce_dim}, num_iters={self.num_iters}, "
            f"{self._common_repr()}"
        )


def _dense_two_input(W: Any, rank: Any, kwargs: dict[str, Any], kind: str) -> tuple[torch.Tensor, Any]:
    """W as a detached (K, f, g) tensor, and the rank that was asked for; the layer's options checked first (a
    fitted ``kind`` form is bilinear: ``activation`` must stay None)."""
    if kwargs.get("activation") is not None:
        raise lp.ArgumentError(f"activation: a fitted {kind} form is bilinear; from_dense builds activation=None")
    if not isinstance(W, torch.Tensor):
        raise lp.ArgumentTypeError(f"W: expected a torch.Tensor (K, f, g), got {type(W).__name__}")
    if W.ndim != 3:
        raise lp.ShapeError(f"W: expected shape (K, f, g), got {tuple(W.shape)}")
    if rank is None:
        raise lp.ArgumentError("rank: expected the rank of the fitted form, got None")
    return W.detach(), rank


def _holding(cls: Any, w: torch.Tensor, *sizes: Any, kwargs: dict[str, Any]) -> Any:
    """A ``cls`` layer for W (K, f, g) (its ``sizes`` after f, g and K; W's dtype and device unless ``kwargs``
    say otherwise), bias zero: the caller copies the fitted factors in."""
    k, f, g = w.shape
    layer = cls(f, g, k, *sizes, **{"dtype": w.dtype, "device": w.device, **kwargs})
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.zero_()
    return layer


def _three_ranks(rank: Any) -> tuple[int, int, int]:
    if not (isinstance(rank, tuple | list) and len(rank) == 3):
        raise lp.ArgumentTypeError(f"rank: expected three positive ints (R_K, R_x, R_y), got {rank!r}")
    out = tuple(check_positive_int(r, "rank") for r in rank)
    return out  # type: ignore[return-value]
