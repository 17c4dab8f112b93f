"""The paper's method 2: pose-regularised attention, and Gaussian keypoint targets."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import nn

import lowrank_pool as lp
from lowrank_pool.validation import ATTENTIONS, check_choice, check_flag, check_number, check_positive_int

from ._base import PoolingHead, fan_std

__all__ = ["PoseAttentionalPool", "PoseOutput", "keypoint_heatmaps", "pose_loss"]


class PoseOutput(NamedTuple):
    """What :class:`PoseAttentionalPool` returns.

    Parameters
    ----------
    scores : tensor, (B, K)
        Class scores.
    keypoint_maps : tensor, ``(B, J, *grid)``
        Logits of the J keypoint heat maps (the input of :func:`pose_loss`).
    top_down : tensor, ``(B, K, *grid)``, or None
        X a_k, with ``return_maps=True``.
    bottom_up : tensor, ``(B, *grid)``, or None
        σ(u) of the bottom-up map (averaging 1 for softmax), with ``return_maps=True``.

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import PoseAttentionalPool
    >>> out = PoseAttentionalPool(8, 5, num_keypoints=3)(torch.randn(2, 8, 6, 6))
    >>> out.scores.shape, out.keypoint_maps.shape, out.top_down
    (torch.Size([2, 5]), torch.Size([2, 3, 6, 6]), None)
    """

    scores: torch.Tensor  # (B, K)
    keypoint_maps: torch.Tensor  # (B, J, *grid): logits of the J keypoint heat maps
    top_down: torch.Tensor | None  # (B, K, *grid) with return_maps
    bottom_up: torch.Tensor | None  # (B, *grid) with return_maps: σ(u), averaging 1 for softmax


class PoseAttentionalPool(PoolingHead):
    r"""Pose-regularised attentional pooling (Girdhar & Ramanan 2017, method 2).

    A 1×1-convolution head h (one layer, or two with a ReLU between when ``hidden``
    is given) maps X to J + 1 channels: J keypoint heat maps, trained with an auxiliary
    loss against :func:`keypoint_heatmaps`, and one bottom-up saliency map u. The class
    scores combine σ(u) with the top-down maps X a_k, on the package's mean scale:

    .. math:: s_k = \tfrac1n (X a_k)^\top \sigma(u) + c_k, \qquad [P_1, \dots, P_J, u] = h(X)

    computed as first-order pooling weighted by σ(u) (:func:`lowrank_pool.first_order_pool`
    with ``weights``; no (B, n, K) map is formed). Without ``hidden``, u = X b + c₀ is
    exactly the rank-1 bottom-up map. The projections are
    :func:`lowrank_pool.project_channels`, σ is :func:`lowrank_pool.attention_weights`.

    Parameters
    ----------
    in_channels, num_classes : int
    num_keypoints : int
        J.
    hidden : int, optional
        Width of a hidden 1×1 layer of the keypoint head.
    attention : {"linear", "softmax", "relu"}
    return_maps : bool
        Default of ``forward``'s ``return_maps``: also return the top-down maps and σ(u).
    bias : bool
        A class bias c_k (the keypoint head always has its own).
    channel_axis : int, optional
    generator : torch.Generator, optional
        Weights ~ N(0, 1/fan_in), biases 0.
    device, dtype

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import PoseAttentionalPool
    >>> out = PoseAttentionalPool(64, 10, num_keypoints=16)(torch.randn(2, 64, 7, 7))
    >>> out.scores.shape, out.keypoint_maps.shape
    (torch.Size([2, 10]), torch.Size([2, 16, 7, 7]))
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_keypoints: int = 16,
        *,
        hidden: int | None = None,
        attention: Literal["linear", "softmax", "relu"] = "linear",
        return_maps: bool = False,
        bias: bool = True,
        channel_axis: int | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=bias, channel_axis=channel_axis, device=device, dtype=dtype)
        self.num_keypoints = check_positive_int(num_keypoints, "num_keypoints")
        self.hidden = None if hidden is None else check_positive_int(hidden, "hidden")
        self.attention = check_choice(attention, "attention", ATTENTIONS)
        self.return_maps = check_flag(return_maps, "return_maps")
        width = self.hidden or in_channels
        extra = {"hidden": (in_channels, width)} if hidden else {}
        self._reserve(head=(width, self.num_keypoints + 1), A=(self.in_channels, self.num_classes), **extra)
        self.hidden_weight = self._param(in_channels, width) if hidden else None
        self.hidden_bias = self._param(width) if hidden else None
        self.head_weight = self._param(width, self.num_keypoints + 1)  # (d, J + 1)
        self.head_bias = self._param(self.num_keypoints + 1)
        self.A = self._param(in_channels, num_classes)  # top-down a_k
        self.reset_parameters(generator)

    def factors(self) -> lp.HeadForm:
        raise lp.ArgumentTypeError(
            "PoseAttentionalPool: its bottom-up map comes from the pose head (a 1×1 convolution with a bias, and a "
            "hidden layer where set), not from a factor of W: it has no factor form"
        )

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        if self.hidden_weight is not None and self.hidden_bias is not None:
            self._init_(self.hidden_weight, fan_std(self.in_channels), generator)
            nn.init.zeros_(self.hidden_bias)
        self._init_(self.head_weight, fan_std(self.head_weight.shape[0]), generator)
        nn.init.zeros_(self.head_bias)
        self._init_(self.A, fan_std(self.in_channels), generator)
        self._reset_bias()

    def forward(self, x: torch.Tensor, return_maps: bool | None = None) -> PoseOutput:
        r"""Scores :math:`s_k = \tfrac1n (X a_k)^\top \sigma(u) + c_k` and the keypoint maps of the pose head.

        Parameters
        ----------
        x : tensor, (B, f, H, W), (B, f, T, H, W) or (B, n, f)
            Feature maps, read by the head's ``channel_axis`` rule (docs: conventions, "Layout").
        return_maps : bool, optional
            Also return the top-down maps X a_k and σ(u) (default: the layer's ``return_maps``).

        Returns
        -------
        PoseOutput
            ``(scores (B, K), keypoint_maps (B, J, *grid), top_down, bottom_up)``; the last two are None
            without ``return_maps``.
        """
        self._check_input(x)
        axis = self.channel_axis
        if self.hidden_weight is not None and self.hidden_bias is not None:
            h = lp.project_channels(x, self.hidden_weight, bias=self.hidden_bias, channel_axis=axis, keep_spatial=True)
            out = lp.project_channels(
                torch.relu(h), self.head_weight, bias=self.head_bias, channel_axis=1, keep_spatial=True
            )
        else:  # (B, J + 1, *grid)
            out = lp.project_channels(x, self.head_weight, bias=self.head_bias, channel_axis=axis, keep_spatial=True)
        j = self.num_keypoints
        saliency = out[:, j]  # (B, *grid)
        u = lp.attention_weights(saliency.flatten(1), attention=self.attention, axis=1)  # (B, n)
        scores = self._add_bias(lp.first_order_pool(x, self.A, weights=u, reduce="mean", channel_axis=axis))
        if not (self.return_maps if return_maps is None else check_flag(return_maps, "return_maps")):
            return PoseOutput(scores, out[:, :j], None, None)
        top = lp.project_channels(x, self.A, channel_axis=axis, keep_spatial=True)  # (B, K, *grid)
        return PoseOutput(scores, out[:, :j], top, u.reshape(saliency.shape))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, num_keypoints={self.num_keypoints}, hidden={self.hidden}, "
            f"attention={self.attention!r}, {self._common_repr()}"
        )


def keypoint_heatmaps(
    keypoints: torch.Tensor,
    size: tuple[int, int],
    *,
    visible: torch.Tensor | None = None,
    sigma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Gaussian target heat maps :math:`\exp(-\lVert p - k_j\rVert^2 / 2\sigma^2)` on an H×W grid.

    Parameters
    ----------
    keypoints : tensor, (B, J, 2)
        (x, y) positions in feature-map cells (0 ≤ x ≤ W − 1, 0 ≤ y ≤ H − 1) of the
        visible keypoints; invisible ones may hold anything (e.g. −1).
    size : (H, W)
    visible : bool tensor, (B, J), optional
        Which keypoints are annotated (default: all).
    sigma : float
        Standard deviation in cells.

    Returns
    -------
    targets : tensor, (B, J, H, W)
        Zero for invisible keypoints.
    mask : tensor, (B, J)
        1.0 for visible keypoints: weights of :func:`pose_loss`.

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import keypoint_heatmaps
    >>> maps, mask = keypoint_heatmaps(torch.tensor([[[1.0, 2.0], [-1.0, -1.0]]]), (4, 5),
    ...                                visible=torch.tensor([[True, False]]))
    >>> maps.shape, mask.tolist(), float(maps[0, 0, 2, 1])
    (torch.Size([1, 2, 4, 5]), [[1.0, 0.0]], 1.0)
    """
    if not isinstance(keypoints, torch.Tensor):
        raise lp.BackendError(f"keypoints: expected a torch.Tensor (B, J, 2), got {type(keypoints).__name__}")
    if not isinstance(size, tuple | list) or len(size) != 2:
        raise lp.ArgumentTypeError(f"size: expected (H, W), got {size!r}")
    sigma = check_number(sigma, "sigma", positive=True)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise lp.ShapeError(f"keypoints: expected shape (B, J, 2), got {tuple(keypoints.shape)}")
    h, w = (check_positive_int(s, "size") for s in size)
    if visible is None:
        visible = torch.ones(keypoints.shape[:2], dtype=torch.bool, device=keypoints.device)
    if tuple(visible.shape) != tuple(keypoints.shape[:2]):
        raise lp.ShapeError(f"visible: expected shape {tuple(keypoints.shape[:2])} (B, J), got {tuple(visible.shape)}")
    visible = visible.bool()
    kx, ky = keypoints[..., 0], keypoints[..., 1]
    outside = visible & ((kx < 0) | (kx > w - 1) | (ky < 0) | (ky > h - 1) | ~torch.isfinite(keypoints).all(-1))
    if bool(outside.any()):
        b, j = (int(i) for i in outside.nonzero()[0])
        raise lp.ArgumentError(
            f"keypoints: visible keypoint ({b}, {j}) at (x, y) = ({float(kx[b, j])}, {float(ky[b, j])}) is outside "
            f"the {h}x{w} grid (0 <= x <= {w - 1}, 0 <= y <= {h - 1}); mark it invisible or clip it"
        )
    dtype = keypoints.dtype if keypoints.is_floating_point() else torch.float32
    ys = torch.arange(h, dtype=dtype, device=keypoints.device)
    xs = torch.arange(w, dtype=dtype, device=keypoints.device)
    dy = (ys[None, None, :] - ky[..., None].to(dtype)) ** 2  # (B, J, H)
    dx = (xs[None, None, :] - kx[..., None].to(dtype)) ** 2  # (B, J, W)
    maps = torch.exp(-(dy[..., :, None] + dx[..., None, :]) / (2 * sigma**2))
    mask = visible.to(dtype)
    return maps * mask[..., None, None], mask


def pose_loss(keypoint_maps: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the visible keypoints' heat maps (0 when none is visible).

    Parameters
    ----------
    keypoint_maps : tensor, (B, J, H, W)
        The head's keypoint logits (:attr:`PoseOutput.keypoint_maps`).
    targets : tensor, (B, J, H, W)
        Target heat maps (:func:`keypoint_heatmaps`).
    mask : tensor, (B, J)
        1 for a visible keypoint, 0 otherwise.

    Returns
    -------
    tensor, ()
        Σ_bj mask_bj · mean_hw (m − t)² / max(1, Σ mask).

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import keypoint_heatmaps, pose_loss
    >>> targets, mask = keypoint_heatmaps(torch.tensor([[[1.0, 2.0]]]), (4, 4))
    >>> float(pose_loss(targets, targets, mask))
    0.0
    """
    for name, t in (("keypoint_maps", keypoint_maps), ("targets", targets), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise lp.BackendError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if mask.shape != keypoint_maps.shape[:2]:
        raise lp.ShapeError(f"mask: expected shape {tuple(keypoint_maps.shape[:2])} (B, J), got {tuple(mask.shape)}")
    if keypoint_maps.shape != targets.shape:
        raise lp.ShapeError(f"targets: expected shape {tuple(keypoint_maps.shape)}, got {tuple(targets.shape)}")
    per_map = ((keypoint_maps - targets) ** 2).flatten(2).mean(-1)  # (B, J)
    return (per_map * mask).sum() / mask.sum().clamp_min(1.0)
