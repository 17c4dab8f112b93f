"""The main job: ``python -m lowrank_pool.demo --quick`` runs and writes what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn", reason="the demo's digits come from scikit-learn (the demo extra)")
pytest.importorskip("skimage", reason="the demo's textures come from scikit-image (the demo extra)")

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *extra: str, env_code: str = "") -> subprocess.CompletedProcess[str]:
    code = env_code + "import sys; from lowrank_pool.demo.__main__ import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "--quick", "--no-progress", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, timeout=600)


def test_quick_demo_writes_report_results_and_figures(tmp_path):
    out = _run(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    heads = {(h["dataset"], h["head"]) for h in doc["heads"]}
    assert {("digits", "mean"), ("digits", "rank1"), ("textures", "bilinear_sqrt_l2"), ("textures", "compact")} <= heads
    for h in doc["heads"]:
        assert {"dataset", "head", "accuracy_mean", "accuracy_std", "params", "seeds"} <= set(h)
        assert 0 <= h["accuracy_mean"] <= 100 and h["params"] > 0 and h["seeds"] == [0]
    for c in doc["compression"]:
        assert {"dataset", "method", "rank", "params", "accuracy", "accuracy_frobenius", "dense_accuracy"} <= set(c)
    assert {c["method"] for c in doc["compression"]} == {"eig", "cp", "tucker"}
    assert {c["dataset"] for c in doc["claims"]} == {"digits", "textures"}
    for c in doc["claims"]:  # one seed: no verdict
        assert {"claim", "holds", "verdict", "evidence"} <= set(c) and c["holds"] is None
        assert c["verdict"].startswith("not judged (1 seed; a verdict needs at least 3)")
    for h in doc["heads"]:  # timings: medians with quartiles of every measurement
        assert (
            h["forward_count"] == 15 and h["forward_ms_quartiles"][0] <= h["forward_ms"] <= h["forward_ms_quartiles"][1]
        )
        assert h["epoch_count"] == 3 and h["epoch_s_quartiles"][0] <= h["epoch_s"] <= h["epoch_s_quartiles"][1]
    report = (tmp_path / "report.md").read_text()
    assert "## The paper's claims" in report and "| digits | attentional rank 1 |" in report
    assert "**Smoke run**" in report and "No claim is judged" in report and "holds." not in report
    assert doc["meta"]["quick"] is True and doc["meta"]["seconds"] < 120
    for png in ("heads.png", "rank.png", "maps_digits.png", "maps_textures.png"):
        assert (tmp_path / png).stat().st_size > 5000, png
    assert "wrote" in out.stdout and "accuracy % (mean ± std over seeds)" in out.stdout


def test_demo_without_matplotlib_says_so(tmp_path):
    block = "import sys; sys.modules['matplotlib'] = None\n"  # import matplotlib now raises ImportError
    out = _run(tmp_path, "--dataset", "digits", "--heads", "mean,rank1", "--epochs", "1", env_code=block)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "No figures: matplotlib is not installed" in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob("*.png"))


def test_demo_refuses_unknown_heads(tmp_path):
    out = _run(tmp_path, "--heads", "mean,fancy")
    assert out.returncode == 2 and "--heads: unknown ['fancy']" in out.stderr


def test_claims_are_judged_only_from_three_seeds_or_more():
    """A verdict needs paired differences over at least 3 seeds; with fewer the claim is "not judged"."""
    from lowrank_pool.demo.experiment import MIN_SEEDS, Run, claims

    def runs(seeds):
        acc = {"mean": 0.80, "rank1": 0.90, "rank5": 0.905, "bilinear_sqrt_l2": 0.91}
        return [Run("d", h, s, a + 0.001 * s, 1, [0.1], [1.0], None) for h, a in acc.items() for s in range(seeds)]

    assert MIN_SEEDS == 3
    for c in claims("d", runs(2)):
        assert c["holds"] is None and c["verdict"].startswith("not judged (2 seeds"), c
    judged = claims("d", runs(3))
    assert [c["holds"] for c in judged] == [True, True, True]
    assert all(c["verdict"] == "holds" for c in judged)
