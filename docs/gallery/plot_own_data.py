"""
The main job on your own images and backbone
============================================

``python -m lowrank_pool.demo --data FOLDER --backbone MODEL_DIR`` trains every head on your images with
a backbone you saved, and writes the same report, paired claims, compression table and attention maps
as the built-in run. Nothing is downloaded:

- ``--data`` takes torchvision's ``ImageFolder`` layout: one sub-folder per class, with ``train/`` and
  ``test/`` sub-folders for a fixed split or a seeded 20 % hold-out per class otherwise. Images are
  resized and centre-cropped to ``--image-size`` and standardised with ImageNet's statistics.
- ``--backbone`` takes a Hugging Face model saved with ``save_pretrained`` to a local directory (on a
  machine with network access: ``AutoModel.from_pretrained("microsoft/resnet-50").save_pretrained("resnet-50")``,
  then copy the directory). By default it is frozen and its feature maps are computed once per image,
  so every head and seed reads the cache; ``--finetune`` trains it with each head (``--device cuda``).

Here the folder is generated (three classes of coloured stripes) and the backbone is a small, randomly
initialised Hugging Face ResNet saved to a temporary directory: the real loading code on small data.
"""

import json
import pathlib
import tempfile

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import transformers
from PIL import Image

from lowrank_pool.demo.__main__ import main

work = pathlib.Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
for c, name in enumerate(["red", "green", "blue"]):
    for i in range(24):
        split = "train" if i < 18 else "test"
        folder = work / "images" / split / name
        folder.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 60, (40, 40, 3)).astype(np.uint8)
        img[:, :, c] += 120
        img[:: 3 + c] = 255  # stripes whose spacing depends on the class
        Image.fromarray(img).save(folder / f"{i}.png")

config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
transformers.ResNetModel(config).save_pretrained(work / "resnet")
print(sorted(p.name for p in (work / "resnet").iterdir()))

# %%
# Run the main job (a smoke run: one seed, few epochs) on the folder with the frozen backbone.
main(["--data", str(work / "images"), "--backbone", str(work / "resnet"), "--image-size", "32",
      "--heads", "mean,rank1,bilinear", "--epochs", "4", "--seeds", "1", "--quick", "--no-progress",
      "--out", str(work / "out")])  # fmt: skip

# %%
# What it wrote: the report (here its head table), results.json and the figures.
doc = json.loads((work / "out" / "results.json").read_text())
for row in doc["heads"]:
    print(f"{row['label']:22s} {row['accuracy_mean']:5.1f} %   {row['params']} head parameters")
fig, ax = plt.subplots(figsize=(9, 7))
ax.imshow(mpimg.imread(work / "out" / "maps_images.png"))
ax.axis("off")
fig.tight_layout()
