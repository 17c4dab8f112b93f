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
            epochs = np.concatenate([r.epoch_s for r in rs])
            forwards = np.concatenate([r.forward_ms for r in rs])
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
                    # timings: medians and quartiles of every measurement (every epoch of every seed; 15 forwards
                    # per seed), never a single number: the machine may be shared
                    "epoch_s": float(np.median(epochs)),
                    "epoch_s_quartiles": [float(q) for q in np.percentile(epochs, [25, 75])],
                    "epoch_count": int(epochs.size),
                    "forward_ms": float(np.median(forwards)),
                    "forward_ms_quartiles": [float(q) for q in np.percentile(forwards, [25, 75])],
                    "forward_count": int(forwards.size),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Accuracy over seeds (± the sample std; "1 seed" where there is no spread to give) and head size."""
    lines = ["| dataset | head | accuracy % (mean ± std over seeds) | head params |", "|---|---|---|---|"]
    for r in rows:
        n = len(r["accuracies"])
        acc = f"{r['accuracy_mean']:.1f} ± {r['accuracy_std']:.1f}" if n > 1 else f"{r['accuracy_mean']:.1f} (1 seed)"
        lines.append(f"| {r['dataset']} | {r['label']} | {acc} | {r['params']} |")
    return "\n".join(lines)


def timing_table(rows: list[dict[str, Any]]) -> str:
    """Training epoch and head forward times: median [first–third quartile] of every measurement."""
    lines = [
        "| dataset | head | s / training epoch: median [quartiles] (n) "
        "| head forward ms, batch of 64: median [quartiles] (n) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        (e1, e3), (f1, f3) = r["epoch_s_quartiles"], r["forward_ms_quartiles"]
        lines.append(
            f"| {r['dataset']} | {r['label']} | {r['epoch_s']:.2f} [{e1:.2f}–{e3:.2f}] ({r['epoch_count']}) | "
            f"{r['forward_ms']:.2f} [{f1:.2f}–{f3:.2f}] ({r['forward_count']}) |"
        )
    return "\n".join(lines)


def sweep_table(runs: list[Run], rows: list[dict[str, Any]], shares: dict[str, float]) -> str:
    """Per canvas: each head's accuracy (mean ± std over seeds) and the paired per-seed differences rank-1 − mean
    and rank-P − rank-1 (mean difference, two-sided paired t-test p)."""
    from .experiment import _paired

    heads = [h for h in HEADS if any(r["head"] == h and r["dataset"] in shares for r in rows)]
    lines = [
        "| image (digit's share) | " + " | ".join(HEADS[h][0] for h in heads) + " | rank-1 − mean | rank-5 − rank-1 |",
        "|---|" + "---|" * (len(heads) + 2),
    ]
    for ds in sorted(shares, key=lambda d: -shares[d]):
        cells = []
        for h in heads:
            r = next((r for r in rows if r["dataset"] == ds and r["head"] == h), None)
            cells.append("" if r is None else f"{r['accuracy_mean']:.1f} ± {r['accuracy_std']:.1f}")
        pairs = []
        for a, b in (("rank1", "mean"), ("rank5", "rank1")):
            diff, p = _paired([r for r in runs if r.dataset == ds], a, b)
            pairs.append("" if not diff.size else f"{diff.mean():+.1f} (p = {'n/a' if np.isnan(p) else f'{p:.3f}'})")
        lines.append(f"| {ds} ({100 * shares[ds]:.1f} %) | " + " | ".join(cells + pairs) + " |")
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
    figures = _figures(out, rows, compression, maps, meta.get("shares", {}))
    smoke = (
        [
            f"> **Smoke run** (`--quick`: {len(meta['seeds'])} seed(s), {meta['epochs']} epochs, smaller data). It",
            "> shows that the pipeline works; its accuracies are not those of a full run, and no claim is",
            "> judged from fewer than 3 seeds. `make demo` (5 seeds, 20 epochs) gives the numbers to read.",
            "",
        ]
        if meta.get("quick")
        else []
    )
    lines = [
        "# lowrank_pool demo: pooling heads on real images",
        "",
        *smoke,
        f"{meta['command']} — {meta['seconds']:.0f} s on {meta['machine']}.",
        "",
        *[f"- {d}" for d in meta["datasets"]],
        "",
        f"{meta.get('model', 'Each head trained with the same optimiser, schedule and epochs')}"
        f" ({meta['epochs']}), seeds {meta['seeds']}. Scores use the package's",
        "conventions (second moment M = XᵀX / n, bias on).",
        "",
        "## Heads",
        "",
        table(rows),
        "",
        "Timings (this machine, possibly shared: read the spread before comparing two heads):",
        "",
        timing_table(rows),
        "",
        *_sweep_section(runs, rows, meta.get("shares", {})),
        "## The paper's claims on these data (paired per-seed differences)",
        "",
        *[f"- **{c['claim']}** ({c['dataset']}): {c['verdict']}. {c['evidence']}." for c in claims],
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


def _sweep_section(runs: list[Run], rows: list[dict[str, Any]], shares: dict[str, float]) -> list[str]:
    if len(shares) < 2:
        return []
    return [
        "## Cluttered digits: the object's share of the image",
        "",
        "Each digit (16×16) sits at a random place of a larger canvas among fragments of other digits; the heads",
        "pool the frozen digit backbone's feature maps of the canvas, so they differ only in how they pool. Accuracy",
        "% (mean ± std over seeds) and the paired per-seed differences (two-sided paired t-test p); figure share.png.",
        "",
        sweep_table(runs, rows, shares),
        "",
    ]


def _verdict(claims: list[dict[str, Any]]) -> str:
    """One sentence: do the paper's claims hold on these data, all, none, or some (mixed)?"""
    if not claims:
        return "No claim could be judged (run the heads it compares: mean, rank1, rank5, bilinear_sqrt_l2)."
    if all(c["holds"] is None for c in claims):
        return "No claim is judged: a verdict needs paired differences over at least 3 seeds (`--seeds 3` or more)."
    claims = [c for c in claims if c["holds"] is not None]
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
    out: str,
    rows: list[dict[str, Any]],
    compression: list[dict[str, Any]],
    maps: dict[str, dict[str, Any]],
    shares: dict[str, float] | None = None,
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    from matplotlib.ticker import FuncFormatter, NullFormatter

    colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    markers = "osD^vP*Xh<>"
    # 1. heads: accuracy against parameters, error bars over seeds; the legend beside the axes hides nothing
    # (the sweep's data sets have their own figure, share.png; a head keeps its colour and marker everywhere)
    datasets = [d for d in dict.fromkeys(r["dataset"] for r in rows) if d not in (shares or {})]
    style = {h: (colours[i % len(colours)], markers[i % len(markers)]) for i, h in enumerate(HEADS)}
    if not datasets:
        datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for r in (x for x in rows if x["dataset"] == ds):
            colour, marker = style[r["head"]]
            ax.errorbar(
                r["params"], r["accuracy_mean"], yerr=r["accuracy_std"], fmt=marker, color=colour,
                label=r["label"], capsize=3,
            )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("head parameters (log scale)")
        ax.set_ylabel("test accuracy % (mean ± std over seeds)")
        ax.set_title(ds)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "heads.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append("heads.png")
    # 2. accuracy against rank: attentional heads, and compression (solid: score matching, dotted: Frobenius);
    # the attentional heads' parameter count on a second axis, dash-dot
    if compression:
        fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
        for ax, ds in zip(axes[0], datasets, strict=True):
            lines = []
            att = [r for r in rows if r["dataset"] == ds and r["head"] in ("rank1", "rank2", "rank5")]
            if att:
                ranks = [int(r["head"][-1]) for r in att]
                means, stds = [r["accuracy_mean"] for r in att], [r["accuracy_std"] for r in att]
                label = "attentional head, trained at that rank"
                lines.append(ax.errorbar(ranks, means, yerr=stds, fmt="k-o", capsize=3, label=label))
                twin = ax.twinx()
                (p,) = twin.plot(ranks, [r["params"] for r in att], "k-.", alpha=0.5,
                                 label="attentional head parameters (right axis)")  # fmt: skip
                lines.append(p)
                twin.set_ylabel("attentional head parameters")
            for i, form in enumerate(("eig", "cp", "tucker")):
                pts = [c for c in compression if c["dataset"] == ds and c["method"] == form]
                if not pts:
                    continue
                (a,) = ax.plot([c["rank"] for c in pts], [100 * c["accuracy"] for c in pts], "-s", color=f"C{i}",
                               label=f"{form}: compressed by score matching")  # fmt: skip
                (b,) = ax.plot([c["rank"] for c in pts], [100 * c["accuracy_frobenius"] for c in pts], ":x",
                               color=f"C{i}", label=f"{form}: Frobenius fit only")  # fmt: skip
                lines += [a, b]
            dense = [c for c in compression if c["dataset"] == ds]
            if dense:
                lines.append(ax.axhline(100 * dense[0]["dense_accuracy"], color="grey", lw=0.8, ls="--",
                                        label="dense bilinear head"))  # fmt: skip
            ax.set_xlabel("rank")
            ax.set_xticks(sorted({c["rank"] for c in dense} | ({int(r["head"][-1]) for r in att} if att else set())))
            ax.set_ylabel("test accuracy %")
            ax.set_title(ds)
            ax.grid(alpha=0.3)
        fig.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "rank.png"), dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append("rank.png")
    # 3. a sweep over the object's share of the image (cluttered digits at several canvas sizes)
    if shares and len(shares) >= 2:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        heads = list(dict.fromkeys(r["head"] for r in rows if r["dataset"] in shares))
        for i, head in enumerate(heads):  # (tab10: distinct hues for the few sweep heads)
            sweep = sorted((r for r in rows if r["head"] == head and r["dataset"] in shares),
                           key=lambda r: shares[r["dataset"]])  # fmt: skip
            ax.errorbar([100 * shares[r["dataset"]] for r in sweep], [r["accuracy_mean"] for r in sweep],
                        yerr=[r["accuracy_std"] for r in sweep], fmt="-" + markers[i % len(markers)],
                        color=f"C{i % 10}", capsize=3, label=sweep[0]["label"])  # fmt: skip
        ax.set_xscale("log")
        ticks = sorted(100 * v for v in shares.values())
        ax.set_xticks(ticks, [f"{v:.1f} %" for v in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("the digit's share of the image (log scale; smaller = more clutter around it)")
        ax.set_ylabel("test accuracy % (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "share.png"), dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append("share.png")
    # 4. maps of the rank-1 head: top-down of the predicted class, bottom-up, their product, each with its
    # colour bar; the row says the true and the predicted class
    for ds, m in maps.items():
        n = len(m["images"])
        fig, axes = plt.subplots(n, 4, figsize=(11, 2.4 * n), squeeze=False)
        for i in range(n):
            img = m["images"][i]
            extent = (0, img.shape[1], img.shape[0], 0)
            ok = m["true"][i] == m["pred"][i]
            panels = [
                (None, f"true {m['true'][i]}, predicted {m['pred'][i]}" + ("" if ok else " (wrong)")),
                (m["top_down"][i], f"top-down X a_k, k = {m['pred'][i]}"),
                (m["bottom_up"][i], "bottom-up X b"),
                (m["top_down"][i] * m["bottom_up"][i], "product (what the score sums)"),
            ]
            for ax, (overlay, title) in zip(axes[i], panels, strict=True):
                ax.imshow(img, cmap="gray", extent=extent)
                if overlay is not None:
                    im = ax.imshow(overlay, cmap="magma", alpha=0.6, extent=extent, interpolation="bilinear")
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
                ax.set_title(title, fontsize=8, color="black" if ok or overlay is not None else "firebrick")
                ax.axis("off")
        fig.suptitle(f"{ds}: maps of the rank-1 attentional head (overlays on the input; colour bars in map units)",
                     fontsize=9)  # fmt: skip
        fig.tight_layout()
        name = f"maps_{ds.replace(' ', '_')}.png"  # (a file name without spaces: "cluttered 32" → maps_cluttered_32)
        fig.savefig(os.path.join(out, name), dpi=100)
        plt.close(fig)
        written.append(name)
    return written
