"""Shared input handling of the pooling layers."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._checks import ShapeError, check_positive_int


class PoolingHead(nn.Module):
    """Base of the layers: resolves the input layout and checks the channel count.

    Inputs: (B, n, f) (channels last, 3-D), (B, f, H, W) or (B, f, T, H, W) (channels
    first, also in torch's channels_last memory formats, read without a copy).
    """

    in_channels: int
    num_classes: int
    bias: nn.Parameter | None

    def __init__(
        self, in_channels: int, num_classes: int, *, bias: bool, device: Any = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.factory = {"device": device, "dtype": dtype}
        self.bias = nn.Parameter(torch.empty(num_classes, **self.factory)) if bias else None

    def _param(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(*shape, **self.factory))

    def _reset_bias(self) -> None:
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _add_bias(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.bias is None else s + self.bias

    def _channel_axis(self, x: torch.Tensor) -> int:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 3:
            axis = -1
        elif x.ndim in (4, 5):
            axis = 1
        else:
            raise ShapeError(
                f"x: expected (B, n, f), (B, f, H, W) or (B, f, T, H, W) with f = {self.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[axis] != self.in_channels:
            layout = "(B, n, f)" if axis == -1 else "(B, f, ...)"
            raise ShapeError(
                f"x: expected {self.in_channels} channels on axis {axis} of a {layout} input, "
                f"got shape {tuple(x.shape)}"
            )
        return axis

    @staticmethod
    def _spatial(x: torch.Tensor, axis: int) -> tuple[int, ...]:
        return tuple(x.shape[1:-1]) if axis == -1 else tuple(x.shape[2:])

    @staticmethod
    def _init_(t: torch.Tensor, fan_in: int, generator: torch.Generator | None) -> None:
        nn.init.normal_(t, 0.0, 1.0 / math.sqrt(fan_in), generator=generator)
