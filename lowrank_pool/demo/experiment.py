"""Training the heads on a small CNN, compressing the bilinear head, and testing the paper's claims."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import lowrank_pool as lp
from lowrank_pool.nn import (
    AttentionalPool,
    BilinearPool,
    CompactBilinearPool,
    CPPool,
    FirstOrderPool,
    PoolingHead,
    TuckerPool,
    compress,
)

from .data import Dataset

__all__ = ["HEADS", "Run", "claims", "compression", "digit_backbone", "frozen_features", "load_backbone", "train"]

WIDTH = 32  # channels of the backbone's feature map

# name -> (label for the report, constructor (f, K) -> head)
HEADS: dict[str, tuple[str, Callable[[int, int], PoolingHead]]] = {
    "mean": ("first-order mean", lambda f, k: FirstOrderPool(f, k, reduce="mean")),
    "max": ("first-order max", lambda f, k: FirstOrderPool(f, k, reduce="max")),
    "bilinear": ("bilinear (plain)", lambda f, k: BilinearPool(f, k, normalize=None)),
    "bilinear_sqrt_l2": ("bilinear + signed sqrt + l2", lambda f, k: BilinearPool(f, k)),
    "rank1": ("attentional rank 1", lambda f, k: AttentionalPool(f, k, 1)),
    "rank2": ("attentional rank 2", lambda f, k: AttentionalPool(f, k, 2)),
    "rank5": ("attentional rank 5", lambda f, k: AttentionalPool(f, k, 5)),
    "cp": ("CP rank 8", lambda f, k: CPPool(f, k, 8)),
    "tucker": ("Tucker rank 8", lambda f, k: TuckerPool(f, k, 8)),
    "compact": ("compact bilinear (d = 512) + sqrt/l2", lambda f, k: CompactBilinearPool(f, k, 512)),
}


class Net(nn.Module):
    """A backbone and a pooling head. By default a small CPU-friendly CNN (two 3×3 conv + BN + ReLU blocks, with
    2×2 max pooling after each where ``pool``) trained with the head; ``backbone=`` any module that maps the
    inputs to feature maps (``nn.Identity()`` for cached frozen features, a wrapped Hugging Face model to
    fine-tune)."""

    def __init__(
        self, head: PoolingHead, pool: bool = False, *, in_channels: int = 1, backbone: nn.Module | None = None
    ) -> None:
        super().__init__()
        if backbone is None:
            layers: list[nn.Module] = []
            for c_in, c_out in ((in_channels, 16), (16, WIDTH)):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
                if pool:
                    layers.append(nn.MaxPool2d(2))
            backbone = nn.Sequential(*layers)
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """The backbone's feature maps (N, f, H, W) in eval mode."""
        self.eval()
        return torch.cat([self.backbone(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


@dataclass
class Run:
    dataset: str
    head: str
    seed: int
    accuracy: float
    params: int
    epoch_s: list[float]  # seconds of each training epoch
    forward_ms: list[float]  # milliseconds of each of 15 timed head forwards (a batch of 64 test maps)
    model: Net = field(repr=False)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, x.shape[0], batch)])
    return float((pred.cpu() == y).float().mean())


def head_accuracy(head: nn.Module, feats: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(feats).argmax(1).cpu() == y).float().mean())


def train(
    ds: Dataset,
    head_name: str,
    seed: int,
    *,
    epochs: int,
    device: torch.device,
    progress: bool = True,
    backbone: Callable[[], nn.Module] | None = None,
) -> Run:
    """Train backbone and head together (Adam, one-cycle schedule, batch 64) with one seed.

    ``ds`` holds images (the small CNN, or ``backbone()`` to fine-tune, is trained with the head) or, where
    ``ds.display`` is set, a frozen backbone's cached feature maps (only the head is trained)."""
    torch.manual_seed(seed)
    k = len(ds.classes)
    if ds.display is not None:  # cached frozen features: the head alone
        model = Net(HEADS[head_name][1](ds.x_train.shape[1], k), backbone=nn.Identity()).to(device)
    elif backbone is not None:
        net = backbone()
        with torch.no_grad():
            width = net(ds.x_train[:1]).shape[1]
        model = Net(HEADS[head_name][1](width, k), backbone=net).to(device)
    else:
        model = Net(HEADS[head_name][1](WIDTH, k), pool=ds.x_train.shape[-1] > 16, in_channels=ds.x_train.shape[1])
        model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(ds.x_train.shape[0] / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    bar = _bar(epochs, f"{ds.name} {head_name} seed {seed}", progress)
    epoch_s = []
    for _ in range(epochs):
        start = time.perf_counter()
        loss = _epoch(model, opt, x, y, gen, sched)
        epoch_s.append(time.perf_counter() - start)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    acc = accuracy(model, ds.x_test.to(device), ds.y_test)
    feats = model.features(ds.x_test[:64].to(device))
    params = sum(p.numel() for p in model.head.parameters())
    return Run(ds.name, head_name, seed, acc, params, epoch_s, _forward_ms(model.head, feats), model)


def _epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    sched: Any = None,
) -> torch.Tensor:
    """One epoch of batches of 64 in a seeded order (a scheduler step after each, where given); the last loss."""
    model.train()
    order = torch.randperm(x.shape[0], generator=gen).to(x.device)
    for i in range(0, x.shape[0], 64):
        idx = order[i : i + 64]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return loss


def _forward_ms(head: nn.Module, feats: torch.Tensor) -> list[float]:
    """Fifteen timed forwards after a warm-up (the report gives their median and quartiles)."""
    head.eval()
    with torch.no_grad():
        head(feats)
        times = []
        for _ in range(15):
            t = time.perf_counter()
            head(feats)
            times.append(1e3 * (time.perf_counter() - t))
    return times


def _bar(total: int, desc: str, progress: bool) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="epoch", leave=False)


def compression(
    run: Run, ds: Dataset, ranks: list[int], *, device: torch.device, epochs: int = 20
) -> list[dict[str, Any]]:
    """Compress a trained plain-bilinear head at each rank, by the Frobenius fit and by score matching."""
    head = run.model.head
    assert isinstance(head, BilinearPool) and head.normalize is None
    f_train = run.model.features(ds.x_train.to(device))
    f_test = run.model.features(ds.x_test.to(device))
    dense = head_accuracy(head, f_test, ds.y_test)
    k = len(ds.classes)
    rows = []
    for form in ("eig", "cp", "tucker"):
        for r in ranks:
            rank: Any = (min(r, k), r, r) if form == "tucker" else r
            frob = compress(head, rank, form=form)
            matched = compress(head, rank, form=form, features=f_train, epochs=epochs, progress=False)
            rows.append(
                {
                    "dataset": ds.name,
                    "method": form,
                    "rank": r,
                    "params": sum(p.numel() for p in matched.parameters()),
                    "accuracy": head_accuracy(matched, f_test, ds.y_test),
                    "accuracy_frobenius": head_accuracy(frob, f_test, ds.y_test),
                    "dense_accuracy": dense,
                    "dense_params": sum(p.numel() for p in head.parameters()),
                }
            )
    return rows


def _paired(runs: list[Run], a: str, b: str) -> tuple[np.ndarray, float]:
    """Per-seed differences a − b (accuracy points) and the two-sided paired t-test p-value."""
    from scipy import stats

    acc = {(r.head, r.seed): 100 * r.accuracy for r in runs}
    seeds = sorted({r.seed for r in runs if (a, r.seed) in acc and (b, r.seed) in acc})
    diff = np.array([acc[(a, s)] - acc[(b, s)] for s in seeds])
    if len(diff) < 2 or np.allclose(diff, diff[0]):
        return diff, float("nan")
    return diff, float(stats.ttest_rel([acc[(a, s)] for s in seeds], [acc[(b, s)] for s in seeds]).pvalue)


# (claim, head a, head b, label a, label b, rule on the per-seed differences a − b and the paired p-value)
_CLAIMS: tuple[tuple[str, str, str, str, str, Callable[[np.ndarray, float], bool]], ...] = (
    (
        "rank-1 attention beats average pooling",
        "rank1", "mean", "rank-1", "mean",
        lambda d, p: bool(d.mean() > 0 and (d > 0).all() and (math.isnan(p) or p < 0.05)),
    ),
    (
        "rank barely matters (rank 5 within 2 points of rank 1)",
        "rank5", "rank1", "rank-5", "rank-1",
        lambda d, p: bool(abs(d.mean()) < 2.0),
    ),
    (
        "full bilinear is no better than the low-rank head",
        "bilinear_sqrt_l2", "rank5", "bilinear + sqrt/l2", "rank-5",
        lambda d, p: bool(d.mean() <= 1.0 or (not math.isnan(p) and p >= 0.05)),
    ),
)  # fmt: skip


MIN_SEEDS = 3  # a claim is judged from paired per-seed differences of at least this many seeds


def claims(dataset: str, runs: list[Run]) -> list[dict[str, Any]]:
    """The paper's three claims, judged from paired per-seed differences on one dataset: ``holds`` is True or
    False with at least :data:`MIN_SEEDS` seeds, None ("not judged") with fewer."""
    have = {r.head for r in runs}
    out = []

    def describe(diff: np.ndarray, p: float, a: str, b: str) -> str:
        per_seed = ", ".join(f"{d:+.1f}" for d in diff)
        pv = "n/a" if math.isnan(p) else f"{p:.3f}"
        return f"{dataset}: {a} − {b} = {diff.mean():+.2f} points (per seed {per_seed}; paired t-test p = {pv})"

    for claim, a, b, label_a, label_b, rule in _CLAIMS:
        if {a, b} <= have:
            diff, p = _paired(runs, a, b)
            judged = diff.size >= MIN_SEEDS
            holds = bool(rule(diff, p)) if judged else None
            verdict = (
                ("holds" if holds else "does not hold")
                if judged
                else f"not judged ({diff.size} seed{'s' * (diff.size != 1)}; a verdict needs at least {MIN_SEEDS})"
            )
            out.append(
                {
                    "claim": claim,
                    "dataset": dataset,
                    "holds": holds,
                    "verdict": verdict,
                    "evidence": describe(diff, p, label_a, label_b),
                }
            )
    return out


def maps_for(run: Run, ds: Dataset, count: int, device: torch.device) -> dict[str, Any]:
    """Images, predicted classes and the rank-1 head's maps (from the functional attention_maps)."""
    head = run.model.head
    assert isinstance(head, AttentionalPool) and head.rank == 1
    step = max(1, ds.x_test.shape[0] // count)
    x = ds.x_test[::step][:count].to(device)
    feats = run.model.features(x)
    with torch.no_grad():
        pred = head(feats).argmax(1)
        top, bottom = lp.attention_maps(feats, head.A[:, :, 0], head.B[:, 0], keep_spatial=True)
    top = top[torch.arange(x.shape[0]), pred]  # the predicted class's top-down map (B, H, W)
    return {
        "images": ds.images[::step][:count].mean(1).cpu().numpy(),  # (grey: the channels' mean)
        "pred": [ds.classes[i] for i in pred.cpu().tolist()],
        "true": [ds.classes[i] for i in ds.y_test[::step][:count].tolist()],
        "top_down": top.cpu().numpy(),
        "bottom_up": bottom.cpu().numpy(),
    }


class HuggingFaceBackbone(nn.Module):
    """A Hugging Face vision model's last feature map: ``model(pixel_values=x).last_hidden_state`` ((B, C, h, w) for
    ResNet / ConvNeXt, (B, tokens, C) for a ViT)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).last_hidden_state


def load_backbone(path: str) -> nn.Module:
    """A Hugging Face model from a local directory (config + weights), offline; the run stops with how to get one."""
    from pathlib import Path

    root = Path(path).expanduser()
    how = (
        "save one to a local directory on a machine with network access, e.g. "
        'python -c "from transformers import AutoModel; '
        "AutoModel.from_pretrained('microsoft/resnet-50').save_pretrained('resnet-50')\", then copy the directory here "
        "and pass --backbone resnet-50 (this demo never downloads)"
    )
    if not (root / "config.json").is_file():
        raise SystemExit(f"--backbone {path}: expected a directory with a Hugging Face config.json and weights; {how}")
    try:
        import transformers
    except ImportError as err:
        raise SystemExit(f"--backbone needs transformers ({err}): pip install transformers") from err
    try:
        model = transformers.AutoModel.from_pretrained(root, local_files_only=True)
    except Exception as err:
        raise SystemExit(f"--backbone {path}: could not load it offline ({type(err).__name__}: {err}); {how}") from err
    return HuggingFaceBackbone(model)


@torch.no_grad()
def frozen_features(ds: Dataset, backbone: nn.Module, device: torch.device, batch: int = 64) -> Dataset:
    """The data set as the frozen backbone's feature maps, computed once per image (every head and seed then reads
    the cache), with the test images kept for drawing the maps."""
    backbone = backbone.to(device).eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([backbone(x[i : i + batch].to(device)).float().cpu() for i in range(0, x.shape[0], batch)])

    ftr, fte = run(ds.x_train), run(ds.x_test)
    note = f"{ds.note}; " if ds.note else ""  # (the maps are drawn over ds.x_test, kept as display)
    return Dataset(
        ds.name, ftr, ds.y_train, fte, ds.y_test, ds.classes, display=ds.x_test, note=f"{note}frozen features",
        share=ds.share,
    )  # fmt: skip


def digit_backbone(device: torch.device, *, epochs: int = 10, seed: int = 0) -> tuple[nn.Module, float]:
    """The small CNN (with its 2×2 poolings) trained once on uncluttered digits at the cluttered set's scale (the
    8×8 digits enlarged to 16×16, a mean-pooling head), then frozen: a digit detector whose feature maps of a
    cluttered canvas the heads pool (the sweep's heads then differ only in how they pool). Returns the backbone
    and its test accuracy on the uncluttered digits."""
    from .data import cluttered_digits

    plain = cluttered_digits(16, clutter=0)  # (a canvas the size of the digit: the digits alone, 16×16)
    torch.manual_seed(seed)
    net = Net(FirstOrderPool(WIDTH, len(plain.classes)), pool=True).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    x, y = plain.x_train.to(device), plain.y_train.to(device)
    for _ in range(epochs):
        _epoch(net, opt, x, y, gen)
    acc = accuracy(net, plain.x_test.to(device), plain.y_test)
    backbone = net.backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone, acc
