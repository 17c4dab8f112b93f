"""``python -m lowrank_pool.demo``: train every head on real images, compress the bilinear head, show the maps.

By default two datasets that ship inside packages (scikit-learn's digits, textures cut from scikit-image's
bundled images), a small CNN with each head, several seeds; writes ``report.md``, ``results.json`` and PNG
figures to ``--out`` and prints the table. ``--quick`` is a two-minute smoke run. ``--dataset cluttered
--canvas 32,48,64,96,128`` sweeps digits cluttered in ever larger canvases (the object's share of the map
falling); ``--data PATH`` reads your own image folder (one sub-folder per class) and ``--backbone DIR`` a
Hugging Face model saved in a local directory (frozen, its features computed once, or ``--finetune``).
Needs ``pip install 'lowrank_pool[demo]'`` (``make demo`` installs it); ``--backbone`` needs transformers.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from . import data
from .experiment import (
    HEADS,
    Run,
    claims,
    compression,
    digit_backbone,
    frozen_features,
    load_backbone,
    maps_for,
    train,
)
from .report import table, write


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lowrank_pool.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="folder for report.md, results.json and figures")
    p.add_argument("--dataset", choices=["digits", "textures", "cluttered", "all"], default="all",
                   help="built-in data (all: digits, textures and the cluttered-digits sweep)")  # fmt: skip
    p.add_argument("--canvas", default=None,
                   help="cluttered digits: canvas sides (default 32,48,64,96,128; quick 32,64)")  # fmt: skip
    p.add_argument("--data", default=None, help="your image folder: one sub-folder per class (train/ test/ optional)")
    p.add_argument("--image-size", type=int, default=64, help="--data: images resized and centre-cropped to this")
    p.add_argument("--backbone", default="small",
                   help="'small' (a CNN trained with each head) or a local Hugging Face model directory")  # fmt: skip
    p.add_argument("--finetune", action="store_true", help="--backbone DIR: train it with each head (default frozen)")
    p.add_argument("--heads", default="all", help=f"comma-separated subset of {','.join(HEADS)}")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per run (default 20, quick 3)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per head (default 5, quick 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--quick", action="store_true", help="a smoke run in under two minutes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    heads = list(HEADS) if args.heads == "all" else [h.strip() for h in args.heads.split(",") if h.strip()]
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        p.error(f"--heads: unknown {unknown}; choose from {list(HEADS)}")
    args.heads = heads
    args.epochs = args.epochs if args.epochs is not None else (3 if args.quick else 20)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 5)
    if args.epochs < 1 or args.seeds < 1:
        p.error("--epochs and --seeds must be at least 1")
    if args.canvas is None:
        args.canvas = "32,64" if args.quick else "32,48,64,96,128"
    try:
        args.canvas = [int(c) for c in str(args.canvas).split(",") if c.strip()]
    except ValueError:
        p.error(f"--canvas: expected comma-separated integers, got {args.canvas!r}")
    if args.finetune and args.backbone == "small":
        p.error("--finetune: pass --backbone DIR (the small CNN is always trained with the head)")
    args.device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                               ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    return args


SWEEP_HEADS = ("mean", "max", "rank1", "rank5", "bilinear_sqrt_l2")  # the heads the cluttered sweep compares


def load_datasets(args: argparse.Namespace) -> list[data.Dataset]:
    """The data sets a run trains on: --data, or the built-in ones (cluttered: one per canvas)."""
    if args.data is not None:
        return [data.image_folder(args.data, size=args.image_size)]
    names = ["digits", "textures", "cluttered"] if args.dataset == "all" else [args.dataset]
    out = []
    for name in names:
        if name == "digits":
            out.append(data.digits())
        elif name == "textures":
            quick = args.quick
            out.append(data.textures(train_per_class=80 if quick else 160, test_per_class=40 if quick else 60))
        else:
            out += [data.cluttered_digits(c, per_class=60 if args.quick else None) for c in args.canvas]
    return out


def describe_model(args: argparse.Namespace) -> str:
    if args.backbone == "small":
        return (
            "A small CNN (two 3×3 conv + BN + ReLU blocks, 32 channels) with each head, trained end to end (the "
            "cluttered sweep: the same CNN trained once on uncluttered 16×16 digits and frozen, each head trained on "
            "its cached feature maps), with the same optimiser, schedule and epochs"
        )
    how = "fine-tuned with each head" if args.finetune else "frozen (its feature maps computed once), each head trained"
    return f"The Hugging Face model in {args.backbone}, {how}, with the same optimiser, schedule and epochs"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    start = time.perf_counter()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    datasets = load_datasets(args)
    backbone = None
    if args.backbone == "small" and any(d.share is not None for d in datasets):
        # the cluttered sweep: one digit detector, frozen; its feature maps computed once per canvas
        detector, detector_acc = digit_backbone(args.device, epochs=3 if args.quick else 10)
        print(f"digit backbone for the cluttered sweep: {100 * detector_acc:.1f} % on uncluttered digits", flush=True)
        datasets = [frozen_features(d, detector, args.device) if d.share is not None else d for d in datasets]
    if args.backbone != "small":
        if args.finetune:
            load_backbone(args.backbone)  # (fails early, with how to get the weights, if the directory is not one)
            backbone = functools.partial(load_backbone, args.backbone)
        else:
            net = load_backbone(args.backbone)
            datasets = [frozen_features(ds, net, args.device) for ds in datasets]
    runs: list[Run] = []
    rows, found, maps = [], [], {}
    ranks = [2, 8] if args.quick else [2, 4, 8]
    for ds in datasets:
        print(ds.describe(), flush=True)
        ds_runs = []
        heads = [h for h in args.heads if ds.share is None or h in SWEEP_HEADS]  # (the sweep: the heads it compares)
        for head in heads:
            for seed in range(args.seeds):
                run = train(ds, head, seed, epochs=args.epochs, device=args.device, progress=not args.no_progress,
                            backbone=backbone)  # fmt: skip
                ds_runs.append(run)
                per_epoch = float(np.median(run.epoch_s))
                print(f"  {head:<18} seed {seed}: {100 * run.accuracy:5.1f} %  ({per_epoch:.2f} s/epoch)", flush=True)
        runs += ds_runs
        found += claims(ds.name, ds_runs)
        bil = next((r for r in ds_runs if r.head == "bilinear" and r.seed == 0), None)
        if bil is not None and ds.share is None:  # (compression: on the data sets the heads are trained end to end)
            rows += compression(bil, ds, ranks, device=args.device, epochs=8 if args.quick else 20)
        r1 = next((r for r in ds_runs if r.head == "rank1" and r.seed == 0), None)
        if r1 is not None:
            maps[ds.name] = maps_for(r1, ds, 4, args.device)
        for r in ds_runs:  # keep the memory of one dataset's models only
            r.model = None  # type: ignore[assignment]
    meta = {
        "command": "python -m lowrank_pool.demo " + " ".join(sys.argv[1:] if argv is None else list(argv)),
        "seconds": time.perf_counter() - start,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.device}",
        "datasets": [d.describe() for d in datasets],
        "model": describe_model(args),
        "shares": {d.name: d.share for d in datasets if d.share is not None},
        "epochs": args.epochs,
        "quick": bool(args.quick),
        "seeds": list(range(args.seeds)),
        "compression_seed": 0,
    }
    doc = write(args.out, runs, rows, found, maps, meta)
    print()
    print(table(doc["heads"]))
    print()
    for c in found:
        print(f"{c['verdict']}: {c['claim']} — {c['evidence']}")
    for c in rows:
        print(
            f"compress {c['dataset']} {c['method']} rank {c['rank']}: {100 * c['accuracy']:.1f} % (Frobenius "
            f"{100 * c['accuracy_frobenius']:.1f} %, dense {100 * c['dense_accuracy']:.1f} %)"
        )  # fmt: skip
    print(f"\nwrote {args.out}/report.md, results.json and figures in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
