"""PyTorch pooling heads over the functional core (needs ``pip install 'lowrank_pool[torch]'``).

Every head holds parameters and calls one public function of :mod:`lowrank_pool`, and
all follow one set of conventions (scale M = XᵀX / n, ``bias=True``, the functions'
dtype and ``channel_axis`` rules, O(1) initial scores): see :class:`PoolingHead`.
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "lowrank_pool.nn needs PyTorch, which is not installed: pip install 'lowrank_pool[torch]' "
        "(the functional API, import lowrank_pool, works without it)"
    ) from err

from ._base import PoolingHead
from ._compress import MatchReport, compress, match_scores
from ._fusion import MCB, MFB, MLB, Block, CovariancePool, Mutan
from ._head import FeatureMapClassifier, head_maps, replace_head
from ._layers import AttentionalPool, BilinearPool, CompactBilinearPool, CPPool, EigPool, FirstOrderPool, TuckerPool
from ._pose import PoseAttentionalPool, PoseOutput, keypoint_heatmaps, pose_loss

__all__ = [
    "MCB",
    "MFB",
    "MLB",
    "AttentionalPool",
    "BilinearPool",
    "Block",
    "CPPool",
    "CompactBilinearPool",
    "CovariancePool",
    "EigPool",
    "FeatureMapClassifier",
    "FirstOrderPool",
    "MatchReport",
    "Mutan",
    "PoolingHead",
    "PoseAttentionalPool",
    "PoseOutput",
    "TuckerPool",
    "compress",
    "head_maps",
    "keypoint_heatmaps",
    "match_scores",
    "pose_loss",
    "replace_head",
]
