"""The demo's two datasets, both shipped inside packages (no download): digits and textures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Dataset", "digits", "textures"]


@dataclass
class Dataset:
    """Images (N, 1, H, W) float32, integer labels, and the class names."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]

    def describe(self) -> str:
        h, w = self.x_train.shape[-2:]
        return (
            f"{self.name}: {len(self.classes)} classes, {h}×{w} images, "
            f"{self.x_train.shape[0]} train / {self.x_test.shape[0]} test"
        )


def _require(module: str, extra: str = "demo") -> None:
    try:
        __import__(module)
    except ImportError as err:
        raise SystemExit(
            f"the demo needs {module} ({err}); install it with pip install 'lowrank_pool[{extra}]' (make demo does)"
        ) from err


def digits(*, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8×8 digits, a stratified 80/20 split (fixed seed), standardised by the train set."""
    _require("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), values 0..16
    xtr, xte, ytr, yte = train_test_split(x, data.target, test_size=0.2, stratify=data.target, random_state=seed)
    mean, std = xtr.mean(), xtr.std()
    return Dataset(
        "digits",
        torch.from_numpy((xtr - mean) / std),
        torch.from_numpy(ytr).long(),
        torch.from_numpy((xte - mean) / std),
        torch.from_numpy(yte).long(),
        [str(i) for i in range(10)],
    )


TEXTURES = ("brick", "grass", "gravel", "moon", "immunohistochemistry", "cell")


def textures(*, train_per_class: int = 160, test_per_class: int = 60, size: int = 32, seed: int = 0) -> Dataset:
    """Random size×size patches of six of scikit-image's bundled grey images; class = source image.

    Train patches come from the left half of each image and test patches from the right half,
    so the task measures texture, not memorised positions. Each patch is standardised on its
    own (zero mean, unit variance), so brightness alone does not give the class away.
    """
    _require("skimage")
    import skimage.data
    from skimage.color import rgb2gray

    rng = np.random.default_rng(seed)

    def patches(img: np.ndarray, count: int) -> np.ndarray:
        h, w = img.shape
        ys, xs = rng.integers(0, h - size, count), rng.integers(0, w - size, count)
        out = np.stack([img[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)])
        out = out - out.mean(axis=(1, 2), keepdims=True)
        return (out / (out.std(axis=(1, 2), keepdims=True) + 1e-6)).astype(np.float32)

    xtr, ytr, xte, yte = [], [], [], []
    for label, name in enumerate(TEXTURES):
        img = getattr(skimage.data, name)()
        img = rgb2gray(img) if img.ndim == 3 else img.astype(np.float64) / 255.0
        half = img.shape[1] // 2
        xtr.append(patches(img[:, :half], train_per_class))
        xte.append(patches(img[:, half:], test_per_class))
        ytr += [label] * train_per_class
        yte += [label] * test_per_class
    return Dataset(
        "textures",
        torch.from_numpy(np.concatenate(xtr)[:, None]),
        torch.tensor(ytr),
        torch.from_numpy(np.concatenate(xte)[:, None]),
        torch.tensor(yte),
        list(TEXTURES),
    )
