"""Feature-map layouts: the one channel-axis rule of every function and layer, and the views it takes.

A batch of feature maps is read as (B, n, f) or (B, f, n) without copying (``features``); the rule
that decides which (``plan``, pure Python on shapes) is also what the torch fast path applies, so the
two cannot disagree.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from ._backend import Array, Namespace, check_floating, is_numpy, is_torch
from ._errors import ArgumentTypeError, ShapeError, shape_of

__all__ = ["Features", "Plan", "features", "plan", "resolve_channel_axis"]


class Features(NamedTuple):
    """A feature-map batch seen as a matrix per sample, without copying.

    ``data`` is (B, n, f) when ``layout == "bnf"`` and (B, f, n) when ``layout == "bfn"``.
    ``shape`` and ``axis`` are the input's shape and the (non-negative) channel axis,
    kept for error messages.
    """

    data: Array
    layout: Literal["bnf", "bfn"]
    batch: int
    spatial: tuple[int, ...]
    channels: int
    shape: tuple[int, ...]
    axis: int

    @property
    def positions(self) -> int:
        return math.prod(self.spatial)

    def describe(self) -> str:
        """E.g. ``"(B, f, H, W) input of shape (2, 16, 7, 7), channels on axis 1"``."""
        names = {3: "(B, f, H, W)", 4: "(B, f, T, H, W)"}
        if self.axis == len(self.shape) - 1:
            layout = "(B, n, f)" if len(self.shape) == 3 else "channels-last (B, ..., f)"
        elif self.axis == 1:
            layout = names.get(len(self.spatial) + 1, "channels-first (B, f, ...)")
        else:
            layout = f"channels-on-axis-{self.axis}"
        return f"{layout} input of shape {self.shape}, channels on axis {self.axis}"


def _channels_last_memory(xp: Namespace, x: Array) -> bool:
    """True when channel-first ``x`` (B, f, ...) is stored channels-last in memory."""
    if x.ndim < 3:
        return False
    if is_torch(xp):
        if x.is_contiguous() or x.stride(1) != 1:
            return False
        return bool(x.permute(0, *range(2, x.ndim), 1).is_contiguous())
    if is_numpy(xp):
        if x.flags.c_contiguous or x.strides[1] != x.itemsize:
            return False
        return bool(xp.moveaxis(x, 1, -1).flags.c_contiguous)
    return False


def resolve_channel_axis(ndim: int, channel_axis: int | None) -> int:
    """The channel axis rule shared by every function and layer (see :func:`features`)."""
    if channel_axis is None:
        return ndim - 1 if ndim == 3 else 1
    if not isinstance(channel_axis, int) or isinstance(channel_axis, bool):
        raise ArgumentTypeError(
            f"channel_axis: expected an int, got {type(channel_axis).__name__} (None selects the default rule)"
        )
    return channel_axis


class Plan(NamedTuple):
    """Where the channels of an input of a given shape are, by the channel-axis rule (see :func:`features`)."""

    axis: int  # the channel axis, non-negative
    batch: int
    spatial: tuple[int, ...]
    channels: int

    @property
    def positions(self) -> int:
        return math.prod(self.spatial)


def plan(shape: tuple[int, ...], channel_axis: int | None, name: str = "X") -> Plan:
    """The channel-axis rule on a shape: ``None`` reads 3-D input as (B, n, f) and 4-D/5-D as (B, f, H, W) /
    (B, f, T, H, W); an explicit axis overrides it. Raises, naming ``name`` or ``channel_axis``, for fewer than 3
    dimensions, an axis out of range, the batch axis, or an empty map."""
    if len(shape) < 3:
        raise ShapeError(
            f"{name}: expected a batch of feature maps with at least 3 dimensions, "
            f"(B, n, f) or (B, f, H, W), got shape {shape}"
        )
    channel_axis = resolve_channel_axis(len(shape), channel_axis)
    if not -len(shape) <= channel_axis < len(shape):
        raise ShapeError(f"channel_axis: expected an axis of {name} with shape {shape}, got {channel_axis}")
    ax = channel_axis % len(shape)
    if ax == 0:
        raise ShapeError(
            f"channel_axis: axis 0 is the batch axis of {name} with shape {shape}; channels cannot be there"
        )
    spatial = shape[1:ax] + shape[ax + 1 :]
    f, n = shape[ax], math.prod(spatial)
    if f == 0 or n == 0:
        raise ShapeError(
            f"{name}: expected at least one channel and one position, got shape {shape} "
            f"(f = {f} channels, n = {n} positions)"
        )
    return Plan(ax, shape[0], spatial, f)


def features(xp: Namespace, x: Array, channel_axis: int | None, name: str = "X") -> Features:
    """Validate a feature-map batch and view it as (B, n, f) or (B, f, n).

    The channel axis rule (every function and layer): ``channel_axis=None`` reads 3-D
    input as (B, n, f) and 4-D/5-D input as (B, f, H, W) / (B, f, T, H, W), PyTorch's
    convention; an explicit axis overrides it (``-1`` for (B, H, W, f) images).
    Channel-first input is read as a (B, f, n) view, or as (B, n, f) when the memory is
    channels-last (torch ``channels_last`` format). Any other axis is moved last.
    """
    check_floating(xp, x, name)
    shape = shape_of(x)
    p = plan(shape, channel_axis, name)
    ax, batch, spatial, f, n = p.axis, p.batch, p.spatial, p.channels, p.positions
    if ax == len(shape) - 1:
        return Features(xp.reshape(x, (batch, n, f)), "bnf", batch, spatial, f, shape, ax)
    if ax == 1 and not _channels_last_memory(xp, x):
        return Features(xp.reshape(x, (batch, f, n)), "bfn", batch, spatial, f, shape, ax)
    moved = xp.moveaxis(x, ax, -1)  # a view when the memory is channels-last
    return Features(xp.reshape(moved, (batch, n, f)), "bnf", batch, spatial, f, shape, ax)
