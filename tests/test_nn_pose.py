"""Tests of lowrank_pool.nn's pose-regularised attention: PoseAttentionalPool, PoseOutput, keypoint_heatmaps,
pose_loss."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from cases.nn import (  # noqa: E402
    F_IN,
    LAYER_ERRORS,
    K,
    _close,
    gen,
)
from contracts import (  # noqa: E402
    MapsLayerContract,
    NamedErrorsContract,
    configs_of,
)

import lowrank_pool as lp  # noqa: E402
from lowrank_pool.nn import (  # noqa: E402
    PoseAttentionalPool,
    keypoint_heatmaps,
    pose_loss,
)


class TestPoseAttentionalPool(MapsLayerContract):
    """lowrank_pool.nn.PoseAttentionalPool and PoseOutput."""

    configs = configs_of(PoseAttentionalPool)

    def test_pose_head_is_rank1_attention_without_hidden_layer(self):
        layer = PoseAttentionalPool(F_IN, K, num_keypoints=3, bias=False, generator=gen(), dtype=torch.float64)
        x = torch.randn(2, F_IN, 4, 4, dtype=torch.float64)
        out = layer(x, return_maps=True)
        b = layer.head_weight[:, 3]
        _close(out.scores, lp.rank1_pool(x, layer.A, b))
        assert out.keypoint_maps.shape == (2, 3, 4, 4) and out.top_down.shape == (2, K, 4, 4)
        _close((out.top_down * out.bottom_up[:, None]).mean((2, 3)), out.scores)
        # the J keypoint maps are 1x1 convolutions of X
        _close(out.keypoint_maps, torch.einsum("bfhw,fj->bjhw", x, layer.head_weight[:, :3]))


class TestKeypointHeatmaps(NamedErrorsContract):
    """lowrank_pool.nn.keypoint_heatmaps and pose_loss."""

    bad_calls = tuple(LAYER_ERRORS["keypoint_heatmaps"])

    def test_keypoint_heatmaps_and_loss(self):
        kp = torch.tensor([[[1.0, 2.0], [-1.0, -1.0]]])  # (B=1, J=2): second is not annotated
        vis = torch.tensor([[True, False]])
        maps, mask = keypoint_heatmaps(kp, (4, 5), visible=vis, sigma=1.0)
        assert maps.shape == (1, 2, 4, 5) and mask.tolist() == [[1.0, 0.0]]
        assert maps[0, 0, 2, 1] == 1.0 and maps[0, 0].argmax() == 2 * 5 + 1 and (maps[0, 1] == 0).all()
        assert torch.isclose(maps[0, 0, 2, 2], torch.exp(torch.tensor(-0.5)))
        pred = maps.clone().requires_grad_()
        assert pose_loss(pred, maps, mask) == 0
        other = torch.zeros_like(maps)
        other[0, 1] = 5.0  # the invisible keypoint's prediction does not count
        assert pose_loss(other, maps, mask) == (maps[0, 0] ** 2).mean()
