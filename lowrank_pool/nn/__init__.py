"""PyTorch pooling heads over the functional core (needs ``pip install 'lowrank_pool[torch]'``)."""

from ._base import PoolingHead
from ._head import replace_head
from ._layers import AttentionalPool, BilinearPool, CPPool, FirstOrderPool, TuckerPool
from ._pose import PoseAttentionalPool, PoseOutput, keypoint_heatmaps, pose_loss

__all__ = [
    "AttentionalPool",
    "BilinearPool",
    "CPPool",
    "FirstOrderPool",
    "PoolingHead",
    "PoseAttentionalPool",
    "PoseOutput",
    "TuckerPool",
    "keypoint_heatmaps",
    "pose_loss",
    "replace_head",
]
