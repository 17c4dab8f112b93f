"""The demo's data sets: two that ship inside packages (digits, textures), cluttered digits built from the
first (the object small in the map), and any image folder on disk. Nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Dataset", "cluttered_digits", "digits", "image_folder", "textures"]


@dataclass
class Dataset:
    """Images (N, C, H, W) float32 (or a frozen backbone's cached feature maps), integer labels, the class names.

    ``display``: the test images to draw the maps over, where ``x_test`` holds feature maps; ``note``: one
    line on how the set was built (for the report); ``share``: the object's share of the image, where known.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    display: torch.Tensor | None = None
    note: str = ""
    share: float | None = None

    def describe(self) -> str:
        h, w = self.x_train.shape[-2:]
        kind = "feature maps" if self.display is not None else "images"
        extra = f"; {self.note}" if self.note else ""
        return (
            f"{self.name}: {len(self.classes)} classes, {self.x_train.shape[1]}×{h}×{w} {kind}, "
            f"{self.x_train.shape[0]} train / {self.x_test.shape[0]} test{extra}"
        )

    @property
    def images(self) -> torch.Tensor:
        """The test images (what the maps are drawn over)."""
        return self.x_test if self.display is None else self.display


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


def cluttered_digits(
    canvas: int = 48,
    *,
    clutter: int = 8,
    fragment: int = 6,
    scale: int = 2,
    per_class: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Digits placed at random in a larger canvas with fragments of other digits as clutter.

    The cluttered-MNIST construction of Jaderberg et al. (NIPS 2015) on scikit-learn's 8×8 digits: each digit
    is enlarged ``scale`` times (16×16 by default, nearest neighbour) and pasted at a uniformly random position
    of a ``canvas``×``canvas`` black image; ``clutter`` square fragments of ``fragment``×``fragment`` pixels,
    cut at random from other (enlarged) digits of the same split, are pasted at random positions first (the
    digit is drawn last, over them). The digit covers (8·scale / canvas)² of the image: 11 % at 48, 1.6 % at
    128. Train and test come from the stratified 80/20 split of :func:`digits` (fragments only from their own
    split); pixel values are standardised by the train set. Seeded: the same arguments give the same images.

    Parameters
    ----------
    canvas : int
        Side of the square image, at least 8·scale.
    clutter, fragment, scale : int
        Number of fragments, their side in pixels, and the digits' enlargement.
    per_class : int, optional
        Keep at most this many train images per class (the test split stays whole).
    seed : int
    """
    _require("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    side = 8 * scale
    if canvas < side or fragment > side or min(clutter, fragment, scale) < 0 or scale < 1:
        raise SystemExit(
            f"--canvas {canvas}: the canvas must hold a {side}×{side} digit and fragments of at most {side}"
        )
    data = load_digits()
    big = np.kron(data.images, np.ones((scale, scale))).astype(np.float32)  # (N, 8s, 8s), values 0..16
    itr, ite = train_test_split(np.arange(len(big)), test_size=0.2, stratify=data.target, random_state=0)
    rng = np.random.default_rng(seed)
    if per_class is not None:
        itr = np.concatenate([rng.permutation(itr[data.target[itr] == c])[:per_class] for c in range(10)])

    def place(index: np.ndarray) -> np.ndarray:
        out = np.zeros((len(index), canvas, canvas), dtype=np.float32)
        for row, i in enumerate(index):
            for _ in range(clutter):
                src = big[rng.choice(index)]
                y0, x0 = rng.integers(0, side - fragment + 1, 2)
                y1, x1 = rng.integers(0, canvas - fragment + 1, 2)
                patch = src[y0 : y0 + fragment, x0 : x0 + fragment]
                out[row, y1 : y1 + fragment, x1 : x1 + fragment] = np.maximum(
                    out[row, y1 : y1 + fragment, x1 : x1 + fragment], patch
                )
            y, x = rng.integers(0, canvas - side + 1, 2)
            out[row, y : y + side, x : x + side] = np.maximum(out[row, y : y + side, x : x + side], big[i])
        return out

    xtr, xte = place(itr), place(ite)
    mean, std = xtr.mean(), xtr.std()
    share = (side / canvas) ** 2
    return Dataset(
        f"cluttered {canvas}",
        torch.from_numpy((xtr - mean) / std)[:, None],
        torch.from_numpy(data.target[itr]).long(),
        torch.from_numpy((xte - mean) / std)[:, None],
        torch.from_numpy(data.target[ite]).long(),
        [str(i) for i in range(10)],
        note=f"a {side}×{side} digit ({100 * share:.1f} % of the image), {clutter} fragments of {fragment}×{fragment}",
        share=share,
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _class_files(root: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {
        d.name: sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) for d in classes
    }


def _load_image(path: Path, size: int) -> np.ndarray:
    """RGB (3, size, size) float32 in [0, 1]: the shorter side resized to ``size``, then the centre crop."""
    from PIL import Image

    with Image.open(path) as src:
        rgb = src.convert("RGB")
    w, h = rgb.size
    s = size / min(w, h)
    rgb = rgb.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
    w, h = rgb.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return arr.transpose(2, 0, 1)


def image_folder(path: str | Path, *, size: int = 64, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Images from a folder with one sub-folder per class (torchvision's ``ImageFolder`` layout).

    ``path/train/<class>/...`` and ``path/test/<class>/...`` give the split; otherwise ``path/<class>/...``
    is split by a seeded, stratified hold-out of ``test_fraction``. Every image is read as RGB, its shorter
    side resized to ``size`` and centre-cropped to size×size, and standardised with ImageNet's channel means
    and deviations (what pretrained backbones expect). Files with other suffixes are skipped; an unreadable
    image stops the run with its path.

    Parameters
    ----------
    path : str or Path
    size : int
        Side of the square images.
    test_fraction : float
        The hold-out share per class where the folder has no train/test split.
    seed : int
    """
    _require("PIL")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SystemExit(f"--data {path}: expected a folder with one sub-folder per class, found no folder there")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    if split:
        train_files, test_files = _class_files(root / "train"), _class_files(root / "test")
        if sorted(train_files) != sorted(test_files):
            raise SystemExit(
                f"--data {path}: train/ and test/ hold different classes: {sorted(train_files)} vs {sorted(test_files)}"
            )
    else:
        files = _class_files(root)
        rng = np.random.default_rng(seed)
        train_files, test_files = {}, {}
        for name, paths in files.items():
            order = rng.permutation(len(paths))
            cut = max(1, round(len(paths) * test_fraction)) if len(paths) > 1 else 0
            test_files[name] = [paths[i] for i in order[:cut]]
            train_files[name] = [paths[i] for i in order[cut:]]
    classes = sorted(train_files)
    empty = [c for c in classes if not train_files[c] or not test_files[c]]
    if len(classes) < 2 or empty:
        why = f"classes without images in a split: {', '.join(empty)}" if empty else f"found {len(classes)} classes"
        raise SystemExit(f"--data {path}: expected at least 2 classes, each with train and test images ({why})")

    def load(files: dict[str, list[Path]]) -> tuple[torch.Tensor, torch.Tensor]:
        arrays, labels = [], []
        for label, name in enumerate(classes):
            for p in files[name]:
                try:
                    arrays.append(_load_image(p, size))
                except Exception as err:
                    raise SystemExit(f"--data: cannot read {p}: {type(err).__name__}: {err}") from err
                labels.append(label)
        x = (np.stack(arrays) - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
        return torch.from_numpy(x.astype(np.float32)), torch.tensor(labels)

    xtr, ytr = load(train_files)
    xte, yte = load(test_files)
    how = "train/ and test/ folders" if split else f"a seeded {100 * test_fraction:.0f} % hold-out per class"
    return Dataset(root.name or str(root), xtr, ytr, xte, yte, classes, note=f"from {root}, split by {how}")


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
