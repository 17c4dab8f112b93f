"""The demo's outputs: results.json, report.md and the PNG figures."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .experiment import HEADS, Run

__all__ = ["head_rows", "write"]


def head_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (dataset, head): accuracy mean ± std over seeds, params, time per epoch and per batch."""
    rows = []
    for dataset in dict.fromkeys(r.dataset for r in runs):
        for head in HEADS:
            rs = [r for r in runs if r.dataset == dataset and r.head == head]
            if not rs:
                continue
            acc = np.array([100 * r.accuracy for r in rs])
            rows.append(
                {
                    "dataset": dataset,
                    "head": head,
                    "label": HEADS[head][0],
                    "accuracy_mean": float(acc.mean()),
                    "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    "accuracies": acc.tolist(),
                    "params": rs[0].params,
                    "seeds": [r.seed for r in rs],
                    "epoch_s": float(np.mean([r.epoch_s for r in rs])),
                    "forward_ms": float(np.median([r.forward_ms for r in rs])),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | head | accuracy % (mean ± std) | head params | s / epoch | head fwd ms / batch of 64 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['label']} | {r['accuracy_mean']:.1f} ± {r['accuracy_std']:.1f} | {r['params']} | "
            f"{r['epoch_s']:.2f} | {r['forward_ms']:.2f} |"
        )
    return "\n".join(lines)


def compression_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | form | rank | params (dense) | accuracy %: score matching | Frobenius fit only | dense head |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['rank']} | {r['params']} ({r['dense_params']}) | "
            f"{100 * r['accuracy']:.1f} | {100 * r['accuracy_frobenius']:.1f} | {100 * r['dense_accuracy']:.1f} |"
        )
    return "\n".join(lines)


def write(
    out: str,
    runs: list[Run],
    compression: list[dict[str, Any]],
    claims: list[dict[str, Any]],
    maps: dict[str, dict[str, Any]],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write results.json, report.md and (with matplotlib) the figures; return the JSON document."""
    os.makedirs(out, exist_ok=True)
    rows = head_rows(runs)
    doc = {"heads": rows, "compression": compression, "claims": claims, "meta": meta}
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(doc, fh, indent=2)
    figures = _figures(out, rows, compression, maps)
    lines = [
        "# lowrank_pool demo: pooling heads on real images",
        "",
        f"{meta['command']} — {meta['seconds']:.0f} s on {meta['machine']}.",
        "",
        *[f"- {d}" for d in meta["datasets"]],
        "",
        "A small CNN (two 3×3 conv + BN + ReLU blocks, 32 channels) with each head, trained end to end with",
        f"the same optimiser, schedule and epochs ({meta['epochs']}), seeds {meta['seeds']}. Scores use the package's",
        "conventions (second moment M = XᵀX / n, bias on).",
        "",
        "## Heads",
        "",
        table(rows),
        "",
        "## The paper's claims on these data (paired per-seed differences)",
        "",
        *[
            f"- **{c['claim']}** ({c['dataset']}): {'holds' if c['holds'] else 'does not hold'}. {c['evidence']}."
            for c in claims
        ],
        "",
        _verdict(claims),
        "",
        "## Compressing the trained plain-bilinear head",
        "",
        "The Frobenius-optimal factors of W (`CPPool/TuckerPool/EigPool.from_dense`) against",
        "`lowrank_pool.nn.compress`",
        "with the training set's feature maps (the fit weighted by their second moment, then score matching),",
        f"on the seed-{meta['compression_seed']} model:",
        "",
        compression_table(compression),
        "",
        *_compression_summary(compression),
    ]
    if figures:
        lines += ["## Figures", "", *[f"![{name}]({name})" for name in figures], ""]
    else:
        lines += ["(No figures: matplotlib is not installed; `pip install 'lowrank_pool[plot]'`.)", ""]
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write("\n".join(lines))
    return doc


def _verdict(claims: list[dict[str, Any]]) -> str:
    """One sentence: do the paper's claims hold on these data, all, none, or some (mixed)?"""
    if not claims:
        return "No claim could be judged (run the heads it compares: mean, rank1, rank5, bilinear_sqrt_l2)."
    held = [c for c in claims if c["holds"]]
    failed = sorted({f"{c['claim']} ({c['dataset']})" for c in claims if not c["holds"]})
    if len(held) == len(claims):
        return f"All {len(claims)} claim checks hold on these data (each judged from the per-seed differences)."
    if not held:
        return f"None of the {len(claims)} claim checks holds on these data."
    return (
        f"The answer is mixed: {len(held)} of {len(claims)} claim checks hold; not: {'; '.join(failed)}. A claim "
        "holds here only where the per-seed differences say so, not where the means alone would suggest it."
    )


def _compression_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per rank: how many (dataset, form) pairs stay within 2 points of the dense head, matched vs Frobenius."""
    out = []
    for r in sorted({c["rank"] for c in rows}):
        at = [c for c in rows if c["rank"] == r]
        matched = sum(c["dense_accuracy"] - c["accuracy"] <= 0.02 for c in at)
        frob = sum(c["dense_accuracy"] - c["accuracy_frobenius"] <= 0.02 for c in at)
        out.append(
            f"- rank {r}: {matched} of {len(at)} compressed heads keep the dense accuracy within 2 points with score "
            f"matching, {frob} of {len(at)} with the Frobenius fit alone."
        )
    return [*out, ""] if out else []


def _figures(
    out: str, rows: list[dict[str, Any]], compression: list[dict[str, Any]], maps: dict[str, dict[str, Any]]
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    # 1. heads: accuracy against parameters, error bars over seeds
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for i, r in enumerate(x for x in rows if x["dataset"] == ds):
            ax.errorbar(
                r["params"], r["accuracy_mean"], yerr=r["accuracy_std"], fmt="o", color=f"C{i}", label=r["label"]
            )
        ax.set_xscale("log")
        ax.set_xlabel("head parameters")
        ax.set_ylabel("test accuracy %")
        ax.set_title(ds)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "heads.png"), dpi=110)
    plt.close(fig)
    written.append("heads.png")
    # 2. accuracy against rank: attentional heads, and compression (matched vs Frobenius)
    if compression:
        fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
        for ax, ds in zip(axes[0], datasets, strict=True):
            att = [r for r in rows if r["dataset"] == ds and r["head"] in ("rank1", "rank2", "rank5")]
            if att:
                ranks = [int(r["head"][-1]) for r in att]
                ax.errorbar(ranks, [r["accuracy_mean"] for r in att], yerr=[r["accuracy_std"] for r in att],
                            fmt="k-o", label="attentional, trained")  # fmt: skip
                twin = ax.twinx()
                twin.plot(ranks, [r["params"] for r in att], "k:", alpha=0.5)
                twin.set_ylabel("attentional head parameters (dotted)")
            for i, form in enumerate(("eig", "cp", "tucker")):
                pts = [c for c in compression if c["dataset"] == ds and c["method"] == form]
                if not pts:
                    continue
                ax.plot([c["rank"] for c in pts], [100 * c["accuracy"] for c in pts], "-s", color=f"C{i}",
                        label=f"{form}: score matching")  # fmt: skip
                ax.plot([c["rank"] for c in pts], [100 * c["accuracy_frobenius"] for c in pts], ":x", color=f"C{i}",
                        label=f"{form}: Frobenius")  # fmt: skip
                ax.axhline(100 * pts[0]["dense_accuracy"], color="grey", lw=0.8, ls="--")
            ax.set_xlabel("rank")
            ax.set_ylabel("test accuracy % (dashed: dense bilinear head)")
            ax.set_title(ds)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "rank.png"), dpi=110)
        plt.close(fig)
        written.append("rank.png")
    # 3. maps of the rank-1 head: top-down of the predicted class, bottom-up, their product
    for ds, m in maps.items():
        n = len(m["images"])
        fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n), squeeze=False)
        for i in range(n):
            img = m["images"][i]
            extent = (0, img.shape[1], img.shape[0], 0)
            panels = [
                (None, f"predicted {m['pred'][i]}"),
                (m["top_down"][i], "top-down X a_k"),
                (m["bottom_up"][i], "bottom-up X b"),
                (m["top_down"][i] * m["bottom_up"][i], "product"),
            ]
            for ax, (overlay, title) in zip(axes[i], panels, strict=True):
                ax.imshow(img, cmap="gray", extent=extent)
                if overlay is not None:
                    ax.imshow(overlay, cmap="magma", alpha=0.6, extent=extent, interpolation="bilinear")
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.tight_layout()
        name = f"maps_{ds}.png"
        fig.savefig(os.path.join(out, name), dpi=100)
        plt.close(fig)
        written.append(name)
    return written
