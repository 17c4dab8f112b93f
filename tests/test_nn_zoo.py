"""Tests of lowrank_pool.nn's model-zoo adapters, one class each: replace_head, FeatureMapClassifier, head_maps
(Hugging Face models built from a config, offline; torchvision and timm where they import)."""

from __future__ import annotations

import pytest
from cases.nn import CONFIGS, K

torch = pytest.importorskip("torch")
from cases.nn import (  # noqa: E402
    LAYER_ERRORS,
    _TimmLike,
    gen,
)
from cases.zoo import (  # noqa: E402
    MAP_HEADS,
    SCORE_HEADS,
    WIDTH,
    _batch,
    _head,
    _hf_convnext,
    _hf_resnet,
    _scores,
    _TimmConvNet,
    _TokenNet,
    _train_step,
)
from contracts import NamedErrorsContract  # noqa: E402
from helpers import expect_errors  # noqa: E402

import lowrank_pool as lp  # noqa: E402
import lowrank_pool.nn  # noqa: E402
from lowrank_pool.nn import (  # noqa: E402
    AttentionalPool,
    CPPool,
    FeatureMapClassifier,
    PoolingHead,
    PoseAttentionalPool,
    replace_head,
)
from lowrank_pool.testing import assert_close  # noqa: E402


class TestReplaceHead(NamedErrorsContract):
    """lowrank_pool.nn.replace_head."""

    bad_calls = tuple(LAYER_ERRORS["replace_head"])

    def test_replace_head_timm_convention_trains(self):
        model = replace_head(_TimmLike(), CPPool(8, 5, 4, generator=gen()))
        x = torch.randn(4, 3, 6, 6)
        out = model(x)
        assert out.shape == (4, 5) and isinstance(model.global_pool, PoolingHead)
        torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
        assert model.stem.weight.grad is not None and model.global_pool.U.grad is not None

    @pytest.mark.parametrize("name", SCORE_HEADS)
    def test_hf_resnet_replace_head_trains(self, name):
        model = _hf_resnet()
        head = _head(name)
        assert replace_head(model, head) is model
        assert model.resnet.pooler is head and isinstance(model.classifier, torch.nn.Identity)
        assert model.num_labels == K == model.config.num_labels
        _train_step(model, head)
        # the model's own loss, reshaped by num_labels, works with the new class count
        x, y = _batch()
        out = model(pixel_values=x, labels=y)
        assert out.logits.shape == (4, K) and torch.isfinite(out.loss)

    def test_convnext_cannot_be_swapped_and_the_error_points_to_the_wrapper(self):
        with pytest.raises(lp.ArgumentError, match=r"FeatureMapClassifier\(model, pool\)"):
            replace_head(_hf_convnext(), _head("cp"))

    def test_replace_head_refuses_heads_that_return_named_tuples(self):
        with pytest.raises(lp.ArgumentError, match="pool: expected a head that returns scores only"):
            replace_head(_hf_resnet(), _head("pose"))
        cls, kw = CONFIGS["attn1"]
        with pytest.raises(lp.ArgumentError, match="FeatureMapClassifier"):
            replace_head(_hf_resnet(), cls(WIDTH, K, **kw, return_maps=True))

    def test_replace_head_checks_the_classifier_width_inside_a_sequential(self):
        with pytest.raises(lp.ArgumentError, match=r"in_channels = 12 \(the in_features of model.classifier"):
            replace_head(_hf_resnet(), _head("cp", in_channels=5))

    def test_torchvision_resnet18_where_it_imports(self):
        try:
            import torchvision
        except Exception as err:
            pytest.skip(f"torchvision does not import beside torch {torch.__version__}: {err}")
        model = torchvision.models.resnet18(weights=None, num_classes=7)
        head = _head("cp", in_channels=512)
        replace_head(model, head)
        _train_step(model, head)


class TestFeatureMapClassifier:
    """lowrank_pool.nn.FeatureMapClassifier."""

    @pytest.mark.parametrize("name", list(CONFIGS))
    def test_hf_convnext_feature_map_classifier_trains(self, name):
        full = _hf_convnext()
        head = _head(name)
        model = FeatureMapClassifier(full, head)
        assert model.backbone is full.convnext  # the unused classifier is not carried
        assert not any(n.startswith("classifier") for n, _ in model.named_parameters())
        with torch.no_grad():
            fmap = model.feature_map(_batch()[0])
        assert fmap.shape == (4, WIDTH, 4, 4)  # ConvNeXt's stem patchifies by 4, its second stage by 2
        _train_step(model, head)

    @pytest.mark.parametrize("name", ["attn1", "cp", "pose"])
    def test_hf_resnet_feature_map_classifier_trains(self, name):
        head = _head(name)
        _train_step(FeatureMapClassifier(_hf_resnet(), head, features="last_hidden_state"), head)

    @pytest.mark.parametrize(
        ("backbone", "features", "shape"),
        [
            (_TimmConvNet, "auto", (4, WIDTH, 15, 15)),
            (_TimmConvNet, "forward_features", (4, WIDTH, 15, 15)),
            (_TimmConvNet, "stem", (4, WIDTH, 15, 15)),
            (_TokenNet, "auto", (4, 16, WIDTH)),
            (_TokenNet, "output", (4, 16, WIDTH)),
            (_TokenNet, lambda net, x: net.patch(x), (4, WIDTH, 4, 4)),
        ],
    )
    def test_feature_map_classifier_conventions(self, backbone, features, shape):
        net = backbone()
        head = _head("attn3_softmax")
        model = FeatureMapClassifier(net, head, features=features)
        x = _batch()[0]
        assert model.feature_map(x).shape == shape
        assert torch.equal(model(x), head(model.feature_map(x)))

    def test_named_submodule_stops_the_forward_there(self):
        net = _TimmConvNet()
        calls = []
        net.fc.register_forward_hook(lambda *a: calls.append(1))
        model = FeatureMapClassifier(torch.nn.Sequential(net.stem, torch.nn.ReLU(), net.fc), _head("cp"), features="1")
        model(_batch()[0])
        assert calls == []

    @pytest.mark.parametrize(
        ("features", "message"),
        [
            ("nope", r"features: expected 'auto', .* the name of a submodule of _TokenNet, got 'nope'"),
            ("forward_features", "features: 'forward_features' needs backbone.forward_features"),
            (3, "features: expected a string or a callable, got int"),
        ],
    )
    def test_feature_map_classifier_errors(self, features, message):
        with pytest.raises(lp.LowRankPoolError, match=message):
            FeatureMapClassifier(_TokenNet(), _head("cp"), features=features)

    def test_feature_map_classifier_rejects_a_non_tensor_map(self):
        model = FeatureMapClassifier(_TokenNet(), _head("cp"), features=lambda net, x: [x])
        with pytest.raises(
            lp.ArgumentTypeError, match=r"features: expected the feature map as a torch.Tensor, got list"
        ):
            model(_batch()[0])
        with pytest.raises(lp.ArgumentTypeError, match=r"head: expected a lowrank_pool.nn pooling layer"):
            FeatureMapClassifier(_TokenNet(), torch.nn.Linear(3, 3))

    def test_timm_model_where_it_imports(self):
        try:
            import timm
        except Exception as err:
            pytest.skip(f"timm does not import here (it needs torchvision): {err}")
        net = timm.create_model("resnet18", pretrained=False, num_classes=7)
        head = _head("attn1", in_channels=net.num_features)
        _train_step(FeatureMapClassifier(net, head), head)


class TestHeadMaps:
    """lowrank_pool.nn.head_maps."""

    @pytest.mark.parametrize("name", MAP_HEADS)
    def test_head_maps_after_replace_head_and_in_a_wrapper(self, name):
        """head_maps reads the maps of the head inside any model: after replace_head (a Hugging Face ResNet) and in a
        FeatureMapClassifier (also through its forward's return_maps); the scores are the model's own."""
        from lowrank_pool.nn import head_maps

        x, _ = _batch()
        wrapped = FeatureMapClassifier(_hf_convnext(), _head(name))
        fmap = wrapped.feature_map(x)
        direct = wrapped.head(fmap, return_maps=True)
        got = head_maps(wrapped, x)

        def scores_of(out):
            return out.scores if isinstance(out, lp.nn.PoseOutput) else out[0]

        assert torch.equal(scores_of(got), scores_of(direct)) and torch.equal(scores_of(got), _scores(wrapped(x)))
        via_forward = wrapped(x, return_maps=True)
        for a, b in zip(got, via_forward, strict=True):
            if isinstance(a, tuple):
                assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
            elif a is not None:
                assert torch.equal(a, b)
        top_down = got.top_down if isinstance(got, lp.nn.PoseOutput) else got[1].top_down
        assert top_down.shape[0] == 4 and top_down.shape[1] == K and top_down.shape[-2:] == fmap.shape[-2:]
        if CONFIGS[name][0] is PoseAttentionalPool:
            return  # (replace_head refuses heads that return named tuples)
        model = replace_head(_hf_resnet(), _head(name))
        scores, maps = head_maps(model, x)
        assert_close(scores, model(x).logits, terms=0)
        ref = model.resnet.pooler.maps(model.resnet(x, output_hidden_states=True).hidden_states[-1])
        for a, b in zip(maps, ref, strict=True):
            assert_close(a, b, terms=0)

    def test_head_maps_errors_name_the_argument(self):
        from lowrank_pool.nn import CPPool, head_maps

        x, _ = _batch()
        two = torch.nn.ModuleDict({"a": AttentionalPool(WIDTH, K), "b": AttentionalPool(WIDTH, K)})
        outside = AttentionalPool(WIDTH, K)

        class Idle(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.unused = AttentionalPool(WIDTH, K)

            def forward(self, x):
                return x

        cp_classifier = FeatureMapClassifier(_hf_convnext(), CPPool(WIDTH, K, rank=2))
        expect_errors(
            [
                (
                    lambda: head_maps(replace_head(_hf_resnet(), CPPool(WIDTH, K, rank=2)), x),
                    lp.ArgumentError,
                    r"^model: expected exactly one head with attention maps .* found 0",
                ),
                (lambda: head_maps(two, x), lp.ArgumentError, r"found 2: 'a', 'b'; pass head="),
                (
                    lambda: head_maps(replace_head(_hf_resnet(), AttentionalPool(WIDTH, K)), x, head=outside),
                    lp.ArgumentError,
                    r"^head: .* that is not a submodule of model",
                ),
                (lambda: head_maps(Idle(), x), lp.ArgumentError, r"^model: its forward never called the head \(Att"),
                (
                    lambda: cp_classifier(x, return_maps=True),
                    lp.ArgumentError,
                    r"^return_maps: CPPool has no attention",
                ),
                (lambda: head_maps("resnet", x), lp.ArgumentTypeError, r"^model: expected a torch.nn.Module, got str"),
            ]
        )
