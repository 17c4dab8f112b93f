"""Hugging Face backbones built from a config (offline) and the models the adapter tests wrap."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import lowrank_pool as lp  # noqa: E402
import lowrank_pool.nn  # noqa: E402
from cases.nn import CONFIGS, K  # noqa: E402
from lowrank_pool.nn import PoseAttentionalPool  # noqa: E402

WIDTH = 12  # the backbones' last channel count


def _head(name, in_channels=WIDTH):
    cls, kw = CONFIGS[name]
    return cls(in_channels, K, **kw, generator=torch.Generator().manual_seed(0))


def _transformers():
    return pytest.importorskip("transformers", reason="transformers is in the test extra (pip install '.[test]')")


def _hf_resnet():
    transformers = _transformers()
    cfg = transformers.ResNetConfig(
        num_labels=7, embedding_size=8, hidden_sizes=[8, WIDTH], depths=[1, 1], layer_type="basic"
    )
    torch.manual_seed(0)
    return transformers.ResNetForImageClassification(cfg)


def _hf_convnext():
    transformers = _transformers()
    cfg = transformers.ConvNextConfig(num_labels=7, hidden_sizes=[8, WIDTH], depths=[1, 1], num_stages=2)
    torch.manual_seed(0)
    return transformers.ConvNextForImageClassification(cfg)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, K, (4,), generator=g)


def _scores(out):
    for name in ("logits", "scores"):
        if hasattr(out, name):
            return getattr(out, name)
    return out


def _train_step(model, head):
    """One SGD step: finite loss, gradients in the head and the backbone, and the loss falls on a repeat."""
    x, y = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # a small step: descent holds for every head
    losses = []
    for _ in range(2):
        opt.zero_grad()
        out = model(x)
        logits = _scores(out)
        assert logits.shape == (4, K)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if isinstance(out, lp.nn.PoseOutput):
            maps = out.keypoint_maps
            loss = loss + lp.nn.pose_loss(maps, torch.full_like(maps, 0.5), torch.ones(maps.shape[:2]))
        loss.backward()
        assert torch.isfinite(loss)
        head_grads = [p.grad for p in head.parameters() if p.requires_grad]
        assert head_grads and all(g is not None and torch.isfinite(g).all() for g in head_grads)
        backbone_grads = [
            p.grad for n, p in model.named_parameters() if not n.startswith("head") and p.grad is not None
        ]
        assert backbone_grads and any(g.abs().sum() > 0 for g in backbone_grads)
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]


SCORE_HEADS = [n for n in CONFIGS if CONFIGS[n][0] is not PoseAttentionalPool]


class _TimmConvNet(torch.nn.Module):
    """timm's convention: forward_features gives the map, forward_head pools and classifies."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, WIDTH, 3, stride=2)
        self.fc = torch.nn.Linear(WIDTH, 10)

    def forward_features(self, x):
        return torch.relu(self.stem(x))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean((2, 3)))


class _TokenNet(torch.nn.Module):
    """A ViT-like backbone whose map is a token sequence (B, n, f)."""

    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, WIDTH, 8, stride=8)
        self.mix = torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        return self.mix(self.patch(x).flatten(2).transpose(1, 2))


MAP_HEADS = [n for n in CONFIGS if n.startswith(("attn", "pose"))]
