"""
A model-zoo backbone with a new head
====================================

Two ways to put a pooling head on a network from a model zoo, shown on Hugging Face
``transformers`` models built from a config (random weights, nothing downloaded):

- :func:`~lowrank_pool.nn.replace_head` swaps a backbone's pooling module and classifier
  (torchvision ``avgpool``/``fc``, timm ``global_pool``/``fc``/``head``, Hugging Face
  ``resnet.pooler``/``classifier``); the model's own forward then returns the new scores.
- :class:`~lowrank_pool.nn.FeatureMapClassifier` wraps any backbone that yields a feature map,
  read by the zoo's convention (timm's ``forward_features``, Hugging Face's
  ``last_hidden_state``, a named submodule, or a function). ConvNeXt pools inline, with no
  module to swap, so it takes this path.

With pretrained weights the code is the same: ``ResNetForImageClassification.from_pretrained``,
``torchvision.models.resnet50(weights=...)`` or ``timm.create_model(..., pretrained=True)``.
"""

import torch
import transformers

from lowrank_pool.nn import AttentionalPool, CPPool, FeatureMapClassifier, head_maps, replace_head

torch.manual_seed(0)
torch.set_num_threads(2)
images = torch.randn(4, 3, 64, 64)
labels = torch.tensor([0, 1, 2, 3])

# %%
# Hugging Face ResNet: swap the pooler and the classifier
# -------------------------------------------------------
config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
resnet = transformers.ResNetForImageClassification(config)
print("before:", type(resnet.resnet.pooler).__name__, "+", resnet.classifier)
head = AttentionalPool(128, 5, rank=2)
replace_head(resnet, head)
print("after: ", type(resnet.resnet.pooler).__name__, "+", resnet.classifier)
out = resnet(pixel_values=images, labels=labels)  # the model's own loss, now over 5 classes
print("logits", tuple(out.logits.shape), "loss", round(out.loss.item(), 3))
out.loss.backward()
print("gradient reaches the stem:", resnet.resnet.embedder.embedder.convolution.weight.grad is not None)

# %%
# The attention maps of the swapped-in head
# -----------------------------------------
# The model's forward returns scores only (its flatten and identity classifier carry nothing
# else). :func:`~lowrank_pool.nn.head_maps` runs the model up to the head, takes the feature map
# it receives and returns ``head(feature_map, return_maps=True)``: the same scores, and the maps
# on the feature map's grid (here rank 2: one top-down and one bottom-up map per rank).
with torch.no_grad():
    scores, (top_down, bottom_up) = head_maps(resnet, images)
    print("scores equal the model's:", torch.equal(scores, resnet(pixel_values=images).logits))
print("top-down", tuple(top_down.shape), "(B, K, P, H, W); bottom-up", tuple(bottom_up.shape), "(B, P, H, W)")

# %%
# Hugging Face ConvNeXt: wrap the backbone, take its last feature map
# -------------------------------------------------------------------
config = transformers.ConvNextConfig(hidden_sizes=[16, 32, 64, 96], depths=[1, 1, 1, 1])
convnext = transformers.ConvNextForImageClassification(config)
try:
    replace_head(convnext, CPPool(96, 5, rank=8))
except ValueError as err:
    print("replace_head:", err)
model = FeatureMapClassifier(convnext, CPPool(96, 5, rank=8))  # keeps convnext.convnext, drops its classifier
print("feature map", tuple(model.feature_map(images).shape))
scores = model(images)
loss = torch.nn.functional.cross_entropy(scores, labels)
loss.backward()
print("scores", tuple(scores.shape), "loss", round(loss.item(), 3))

# %%
# A wrapper passes ``return_maps`` to a head that has maps:
wrapped = FeatureMapClassifier(convnext, AttentionalPool(96, 5))
with torch.no_grad():
    scores, (top_down, bottom_up) = wrapped(images, return_maps=True)
print("top-down", tuple(top_down.shape), "bottom-up", tuple(bottom_up.shape))

# %%
# Stopping at an earlier stage
# ----------------------------
# A named submodule's output is the map, and the forward stops there: the later stages cost
# nothing.
early = FeatureMapClassifier(convnext, CPPool(32, 5, rank=8), features="encoder.stages.1")
print("stage-1 map", tuple(early.feature_map(images).shape), "scores", tuple(early(images).shape))
