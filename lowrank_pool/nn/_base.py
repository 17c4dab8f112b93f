"""What every pooling layer shares: the constructor preamble, the bias, the init rule.

The conventions (the same for every head, and the same as the functions'; the reasons are in
docs/conventions.md):

- scale: second-order scores use M = XᵀX / n (first-order heads the mean feature);
- bias: ``bias=True`` by default, one learnable offset per class, initialised to 0;
- dtype: float32/float64 mixed promote like torch; float16/bfloat16 compute and return
  float32 (the functions' rule: Gram-like sums overflow float16);
- layout: ``channel_axis=None`` reads 3-D input as (B, n, f) and 4-D/5-D input as
  (B, f, H, W) / (B, f, T, H, W); an int overrides it;
- init: parameters are drawn so that the initial scores are O(1) (std ≈ 0.05-1) on
  features of unit scale such as ReLU outputs of a normalised backbone; the documented
  rule per head is in the docs' math page ("Scale and initialisation").
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

import lowrank_pool as lp
from lowrank_pool.validation import check_flag, check_positive_int


class PoolingHead(nn.Module):
    """Base of the layers: input/output sizes, the bias, the layout rule and the init helpers.

    Every head maps a feature map to class scores (B, K) with the conventions of
    :doc:`/conventions`: the second moment M = XᵀX / n, a bias on by default (zero at
    init), the functions' dtype and ``channel_axis`` rules, O(1) initial scores.

    Parameters
    ----------
    in_channels : int
        f, the feature map's channel count.
    num_classes : int
        K.
    bias : bool, default True
        Learn a per-class bias (zero at init).
    channel_axis : int, optional
        The channel axis of the input; None applies the default rule (3-D: (B, n, f);
        4-D/5-D: channels-first).
    device, dtype
        Where and in which floating dtype the parameters are created.

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import CPPool, PoolingHead
    >>> head = CPPool(8, 5, rank=4)
    >>> isinstance(head, PoolingHead), head.in_channels, head.num_classes, head.bias.shape
    (True, 8, 5, torch.Size([5]))
    """

    in_channels: int
    num_classes: int
    bias: nn.Parameter | None
    channel_axis: int | None

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        bias: bool = True,
        channel_axis: int | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        if channel_axis is not None and (isinstance(channel_axis, bool) or not isinstance(channel_axis, int)):
            raise lp.ArgumentTypeError(f"channel_axis: expected an int or None, got {type(channel_axis).__name__}")
        self.channel_axis = channel_axis
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise lp.DTypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
        self.factory = {"device": _check_device(device), "dtype": dtype}
        if check_flag(bias, "bias"):
            self._reserve(bias=(self.num_classes,))
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(self.num_classes, **self.factory))
        else:
            self.bias = None

    def _param(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(*(int(d) for d in shape), **self.factory))

    def _reserve(self, **shapes: tuple[int, ...]) -> None:
        """Refuse, before allocating anything, parameters that cannot fit in the device's memory.

        ``CPPool(8, 3, rank=10**9)`` would otherwise start allocating tens of GB; the error
        states what the parameters need and what the device has.
        """
        dtype = self.factory["dtype"] or torch.get_default_dtype()
        itemsize = torch.empty((), dtype=dtype).element_size()
        need = sum(math.prod(int(d) for d in s) for s in shapes.values()) * itemsize  # (Python ints: no overflow)
        device = torch.device(self.factory["device"] or "cpu")
        have = _device_memory(device)
        if need > have:
            listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
            raise lp.ArgumentError(
                f"{type(self).__name__}: its parameters ({listed}, {dtype}) need {need / 2**30:.3g} GiB, more than "
                f"the {have / 2**30:.3g} GiB of memory available on {device}"
            )

    def _reset_bias(self) -> None:
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _add_bias(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.bias is None else s + self.bias

    @staticmethod
    def _check_input(x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise lp.BackendError(f"x: expected a torch.Tensor, got {type(x).__name__}")

    @staticmethod
    def _init_(t: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise lp.ArgumentTypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        nn.init.normal_(t, 0.0, std, generator=generator)

    def _common_repr(self) -> str:
        axis = "" if self.channel_axis is None else f", channel_axis={self.channel_axis}"
        return f"bias={self.bias is not None}{axis}"


def _check_device(device: Any) -> Any:
    """``device`` if torch can allocate there, else an ArgumentError naming it."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise lp.ArgumentError(
            f"device: expected a torch device (e.g. 'cpu', 'cuda:0'), got {device!r} ({err})"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise lp.ArgumentError(f"device: {device!r} asks for CUDA, but torch sees no CUDA device on this machine")
    return device


def _device_memory(device: torch.device) -> float:
    """Bytes of memory a new allocation can use on ``device`` (inf where unknown, e.g. meta)."""
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return float(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return math.inf
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return float(free)
    return math.inf


def fan_std(fan_in: int) -> float:
    """1/√fan_in: a dot product with a unit-scale input keeps unit scale."""
    return 1.0 / math.sqrt(fan_in)
