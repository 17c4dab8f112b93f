"""Swap a backbone's global pooling + linear classifier for a pooling head."""

from __future__ import annotations

from torch import nn

import lowrank_pool as lp

from ._base import PoolingHead

__all__ = ["replace_head"]

# (pooling attribute, classifier attribute): torchvision ResNet/RegNet/..., timm ResNet-style models
_CONVENTIONS = (("avgpool", "fc"), ("global_pool", "fc"), ("global_pool", "head"), ("avgpool", "head"))


def replace_head(model: nn.Module, pool: PoolingHead) -> nn.Module:
    """Replace ``model``'s global pooling and classifier by ``pool`` (in place; returns the model).

    The pooling module (``avgpool`` / ``global_pool``) becomes ``pool``, which maps the
    feature map (B, f, H, W) straight to class scores (B, K), and the classifier
    (``fc`` / ``head``) becomes ``nn.Identity``, so the backbone's own forward (pool,
    flatten, classify) yields the new scores unchanged. The classifier's
    ``in_features`` must equal ``pool.in_channels``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from lowrank_pool.nn import AttentionalPool, replace_head
    >>> class Net(nn.Module):  # the torchvision convention
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.avgpool, self.fc = nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)
    ...     def forward(self, x):
    ...         return self.fc(torch.flatten(self.avgpool(self.conv(x)), 1))
    >>> net = replace_head(Net(), AttentionalPool(8, 5))
    >>> net(torch.randn(2, 3, 9, 9)).shape
    torch.Size([2, 5])
    """
    if not isinstance(pool, PoolingHead):
        raise lp.ArgumentTypeError(f"pool: expected a lowrank_pool.nn pooling layer, got {type(pool).__name__}")
    for pool_name, fc_name in _CONVENTIONS:
        old_pool, old_fc = getattr(model, pool_name, None), getattr(model, fc_name, None)
        if isinstance(old_pool, nn.Module) and isinstance(old_fc, nn.Module):
            in_features = getattr(old_fc, "in_features", None)
            if in_features is not None and in_features != pool.in_channels:
                raise lp.ArgumentError(
                    f"pool: expected in_channels = {in_features} (the in_features of model.{fc_name}), "
                    f"got {pool.in_channels}"
                )
            setattr(model, pool_name, pool)
            setattr(model, fc_name, nn.Identity())
            return model
    names = ", ".join(f"{p}/{f}" for p, f in _CONVENTIONS)
    raise lp.ArgumentError(f"model: found no global-pool + classifier pair ({names}) on {type(model).__name__}")
