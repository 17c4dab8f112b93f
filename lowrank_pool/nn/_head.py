"""Put a pooling head on a backbone: swap its pooling + classifier, or wrap its last feature map."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import lowrank_pool as lp

from ._base import PoolingHead
from ._pose import PoseAttentionalPool

__all__ = ["FeatureMapClassifier", "replace_head"]

# (pooling attribute, classifier attribute), dotted paths from the model: torchvision ResNet/RegNet/...,
# timm ResNet-style models, and Hugging Face models whose base model holds a ``pooler`` module
# (``ResNetForImageClassification``: ``resnet.pooler`` + ``classifier``, the base found by ``base_model_prefix``).
_CONVENTIONS = (("avgpool", "fc"), ("global_pool", "fc"), ("global_pool", "head"), ("avgpool", "head"))


def _get(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _set(model: nn.Module, path: str, value: nn.Module) -> None:
    *parents, last = path.split(".")
    owner: Any = model
    for part in parents:
        owner = getattr(owner, part)
    setattr(owner, last, value)


def _conventions(model: nn.Module) -> list[tuple[str, str]]:
    pairs = list(_CONVENTIONS)
    prefix = getattr(model, "base_model_prefix", None)
    if isinstance(prefix, str) and prefix:
        pairs.append((f"{prefix}.pooler", "classifier"))
    return pairs


def _in_features(classifier: nn.Module) -> int | None:
    """The input width of a classifier: a Linear, or the first Linear of a Sequential (Flatten, Linear)."""
    linear = classifier
    if isinstance(classifier, nn.Sequential):
        linear = next((m for m in classifier if isinstance(m, nn.Linear)), classifier)
    value = getattr(linear, "in_features", None)
    return value if isinstance(value, int) else None


def replace_head(model: nn.Module, pool: PoolingHead) -> nn.Module:
    """Replace ``model``'s global pooling and classifier by ``pool`` (in place; returns the model).

    The pooling module becomes ``pool``, which maps the feature map (B, f, H, W)
    straight to class scores (B, K), and the classifier becomes ``nn.Identity``, so the
    backbone's own forward (pool, flatten, classify) yields the new scores unchanged.
    The classifier's ``in_features`` must equal ``pool.in_channels``.

    Conventions found (pooling / classifier attribute):

    - torchvision (ResNet, RegNet, ...): ``avgpool`` / ``fc``;
    - timm ResNet-style models: ``global_pool`` / ``fc`` or ``head``;
    - Hugging Face ``transformers`` models whose base model has a ``pooler`` module
      (``ResNetForImageClassification``: ``resnet.pooler`` / ``classifier``, a
      ``Sequential(Flatten, Linear)``); the model's ``num_labels`` becomes
      ``pool.num_classes`` so that its own loss still applies.

    A model that pools inline, with no pooling module to swap (Hugging Face ConvNeXt,
    ViT, timm's ConvNeXt head with a norm after the pooling), is refused: wrap it with
    :class:`FeatureMapClassifier` instead, which takes the backbone's last feature map.

    Parameters
    ----------
    model : torch.nn.Module
        The backbone with its pooling and classifier, changed in place.
    pool : PoolingHead
        The new head; ``pool.in_channels`` must be the classifier's ``in_features``.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

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
    if not isinstance(model, nn.Module):
        raise lp.ArgumentTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(pool, PoseAttentionalPool) or getattr(pool, "return_maps", False):
        raise lp.ArgumentError(
            f"pool: expected a head that returns scores only, got {type(pool).__name__} returning a named tuple, "
            "which the backbone's flatten + classifier cannot carry; use FeatureMapClassifier(model, pool)"
        )
    pairs = _conventions(model)
    for pool_name, fc_name in pairs:
        old_pool, old_fc = _get(model, pool_name), _get(model, fc_name)
        if isinstance(old_pool, nn.Module) and isinstance(old_fc, nn.Module):
            in_features = _in_features(old_fc)
            if in_features is not None and in_features != pool.in_channels:
                raise lp.ArgumentError(
                    f"pool: expected in_channels = {in_features} (the in_features of model.{fc_name}), "
                    f"got {pool.in_channels}"
                )
            _set(model, pool_name, pool)
            _set(model, fc_name, nn.Identity())
            if isinstance(getattr(model, "num_labels", None), int):  # Hugging Face: its loss reshapes by num_labels
                setattr(model, "num_labels", pool.num_classes)  # noqa: B010 - an attribute nn.Module does not declare
                config = getattr(model, "config", None)
                if config is not None and getattr(config, "num_labels", None) != pool.num_classes:
                    config.num_labels = pool.num_classes
            return model
    names = ", ".join(f"{p} + {f}" for p, f in pairs)
    raise lp.ArgumentError(
        f"model: found no global-pool + classifier pair ({names}) on {type(model).__name__}; for a model that "
        "pools inline, wrap it instead: FeatureMapClassifier(model, pool)"
    )


class _Stop(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


_FeatureSpec = str | Callable[[nn.Module, torch.Tensor], torch.Tensor]


class FeatureMapClassifier(nn.Module):
    """A backbone's last feature map, pooled into class scores by a head: ``head(features(x))``.

    The general path for any backbone that yields a feature map, whatever its zoo: the
    map is taken by the zoo's own convention, the backbone's pooling and classifier (if
    any) are never run, and the head applies its usual layout rule to the map
    (4-D/5-D channels-first, 3-D token sequences (B, n, f); pass the head a
    ``channel_axis`` for channels-last maps).

    Parameters
    ----------
    backbone : torch.nn.Module
        The network. A Hugging Face ``*ForImageClassification`` model is replaced by its
        base model (``model.base_model``), so its unused classifier holds no parameters
        here.
    head : PoolingHead
        Any layer of :mod:`lowrank_pool.nn`; its ``in_channels`` must be the map's channel
        count.
    features : str or callable, default "auto"
        How the map is read:

        - ``"forward_features"``: ``backbone.forward_features(x)`` (timm);
        - ``"last_hidden_state"``: ``backbone(x).last_hidden_state`` (Hugging Face);
        - ``"output"``: ``backbone(x)`` is the map (a truncated torchvision network,
          ``nn.Sequential(*list(resnet.children())[:-2])``);
        - any other string: the output of the submodule of that (dotted) name; the
          forward stops there, so the layers after it cost nothing;
        - a callable ``(backbone, x) -> map``;
        - ``"auto"``: ``forward_features`` if the backbone has it, else its output's
          ``last_hidden_state`` if that exists, else its output.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from lowrank_pool.nn import CPPool, FeatureMapClassifier
    >>> backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU())
    >>> model = FeatureMapClassifier(backbone, CPPool(16, 5, rank=4))  # the output is the map
    >>> model(torch.randn(2, 3, 12, 12)).shape
    torch.Size([2, 5])
    >>> early = FeatureMapClassifier(backbone, CPPool(8, 5, rank=4), features="1")  # stop at the first ReLU
    >>> early.feature_map(torch.randn(2, 3, 12, 12)).shape
    torch.Size([2, 8, 10, 10])
    """

    def __init__(self, backbone: nn.Module, head: PoolingHead, *, features: _FeatureSpec = "auto") -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise lp.ArgumentTypeError(f"backbone: expected a torch.nn.Module, got {type(backbone).__name__}")
        if not isinstance(head, PoolingHead):
            raise lp.ArgumentTypeError(f"head: expected a lowrank_pool.nn pooling layer, got {type(head).__name__}")
        base = getattr(backbone, "base_model", None)
        if isinstance(base, nn.Module) and base is not backbone:
            backbone = base
        if not (callable(features) or isinstance(features, str)):
            raise lp.ArgumentTypeError(f"features: expected a string or a callable, got {type(features).__name__}")
        if isinstance(features, str) and features not in ("auto", "forward_features", "last_hidden_state", "output"):
            module = _get(backbone, features)
            if not isinstance(module, nn.Module):
                raise lp.ArgumentError(
                    f"features: expected 'auto', 'forward_features', 'last_hidden_state', 'output', a callable or "
                    f"the name of a submodule of {type(backbone).__name__}, got {features!r}"
                )
        if features == "forward_features" and not callable(getattr(backbone, "forward_features", None)):
            raise lp.ArgumentError(
                f"features: 'forward_features' needs backbone.forward_features, which "
                f"{type(backbone).__name__} does not have"
            )
        self.backbone = backbone
        self.head = head
        self.features = features

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map for input ``x``, read by the ``features`` rule."""
        spec, backbone = self.features, self.backbone
        if callable(spec):
            out = spec(backbone, x)
        elif spec == "forward_features" or (spec == "auto" and callable(getattr(backbone, "forward_features", None))):
            out = backbone.forward_features(x)  # type: ignore[operator]
        elif spec in ("auto", "last_hidden_state", "output"):
            out = backbone(x)
            if spec != "output" and not isinstance(out, torch.Tensor):
                if getattr(out, "last_hidden_state", None) is None:
                    raise lp.ArgumentError(
                        f"features: the backbone's output ({type(out).__name__}) has no last_hidden_state; "
                        "pass features= the name of the submodule whose output is the map, or a callable"
                    )
                out = out.last_hidden_state
        else:
            module = _get(backbone, spec)

            def stop(_module: nn.Module, _inputs: Any, output: Any) -> None:
                raise _Stop(output)

            handle = module.register_forward_hook(stop)
            try:
                backbone(x)
            except _Stop as done:
                out = done.value
            else:  # pragma: no cover - a submodule that the forward never calls
                raise lp.ArgumentError(f"features: the backbone's forward never called the submodule {spec!r}")
            finally:
                handle.remove()
        if not isinstance(out, torch.Tensor):
            raise lp.ArgumentTypeError(
                f"features: expected the feature map as a torch.Tensor, got {type(out).__name__}"
            )
        return out

    def forward(self, x: torch.Tensor, return_maps: bool | None = None) -> Any:
        """Class scores ``head(feature_map(x))`` (or the head's named tuple where it returns one).

        Parameters
        ----------
        x : tensor
            The backbone's input (images: (B, 3, H, W)).
        return_maps : bool, optional
            Passed to the head (:class:`AttentionalPool`, :class:`PoseAttentionalPool`): ``True`` also
            returns its attention maps on the feature map's grid; None keeps the head's default. A head
            without maps refuses it.

        Returns
        -------
        tensor (B, K), or what the head returns with ``return_maps``
        """
        fmap = self.feature_map(x)
        if return_maps is None:
            return self.head(fmap)
        if not _has_maps(self.head):
            raise lp.ArgumentError(
                f"return_maps: {type(self.head).__name__} has no attention maps (AttentionalPool and "
                "PoseAttentionalPool have)"
            )
        return self.head(fmap, return_maps=return_maps)


def _has_maps(module: nn.Module) -> bool:
    return isinstance(module, PoolingHead) and "return_maps" in inspect.signature(module.forward).parameters


def head_maps(model: nn.Module, x: torch.Tensor, *, head: nn.Module | None = None) -> Any:
    """The class scores and attention maps of the pooling head inside ``model``, for input ``x``.

    For a model whose head was swapped in by :func:`replace_head`, a :class:`FeatureMapClassifier`, or
    any network that calls a head of this package on a feature map: the model runs up to the head (a
    forward pre-hook takes the head's input and stops the forward there), and the head runs on that map
    with ``return_maps=True``. The scores are those the model returns (the replaced classifier is the
    identity); the maps lie on the feature map's grid.

    Parameters
    ----------
    model : torch.nn.Module
        The network holding exactly one head with maps (:class:`AttentionalPool`,
        :class:`PoseAttentionalPool`), or ``head=`` to choose among several.
    x : tensor
        The model's input.
    head : torch.nn.Module, optional
        The head to read, a submodule of ``model``.

    Returns
    -------
    (scores, AttentionMaps) for :class:`AttentionalPool`; :class:`PoseOutput` for
    :class:`PoseAttentionalPool`
        As ``head(feature_map, return_maps=True)``: scores (B, K), top-down maps (B, K, H, W) and the
        bottom-up map (B, H, W) at rank 1.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from lowrank_pool.nn import AttentionalPool, head_maps, replace_head
    >>> class Net(nn.Module):  # the torchvision convention
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.avgpool, self.fc = nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)
    ...     def forward(self, x):
    ...         return self.fc(torch.flatten(self.avgpool(self.conv(x)), 1))
    >>> net = replace_head(Net(), AttentionalPool(8, 5))
    >>> x = torch.randn(2, 3, 9, 9)
    >>> scores, (top_down, bottom_up) = head_maps(net, x)
    >>> top_down.shape, bottom_up.shape, torch.allclose(scores, net(x))
    (torch.Size([2, 5, 7, 7]), torch.Size([2, 7, 7]), True)
    """
    if not isinstance(model, nn.Module):
        raise lp.ArgumentTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if head is None:
        found = [m for m in model.modules() if _has_maps(m)]
        if len(found) != 1:
            names = [name for name, m in model.named_modules() if _has_maps(m)]
            raise lp.ArgumentError(
                f"model: expected exactly one head with attention maps (AttentionalPool, PoseAttentionalPool), "
                f"found {len(found)}{': ' + ', '.join(repr(n) for n in names) if names else ''}; pass head="
            )
        head = found[0]
    elif not _has_maps(head) or not any(m is head for m in model.modules()):
        raise lp.ArgumentError(
            f"head: expected an AttentionalPool or PoseAttentionalPool inside model, got {type(head).__name__}"
            + ("" if _has_maps(head) else " (it has no maps)")
            + ("" if any(m is head for m in model.modules()) else " that is not a submodule of model")
        )

    def stop(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise _Stop(args[0] if args else kwargs["x"])

    handle = head.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(x)
    except _Stop as done:
        fmap = done.value
    else:
        raise lp.ArgumentError(f"model: its forward never called the head ({type(head).__name__})")
    finally:
        handle.remove()
    return head(fmap, return_maps=True)
