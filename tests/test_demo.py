"""The main job: ``python -m lowrank_pool.demo --quick`` runs and writes what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
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
    assert {c["dataset"] for c in doc["claims"]} == {"digits", "textures", "cluttered 32", "cluttered 64"}
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
    assert doc["meta"]["quick"] is True  # (its time is in the report, not a test: these machines are shared)
    assert "## Cluttered digits: the object's share of the image" in report and "| cluttered 64 (6.2 %) |" in report
    assert {c["dataset"] for c in doc["compression"]} == {"digits", "textures"}  # (not the frozen sweep)
    assert {h["head"] for h in doc["heads"] if h["dataset"] == "cluttered 32"} == {
        "mean",
        "max",
        "rank1",
        "rank5",
        "bilinear_sqrt_l2",
    }
    for png in ("heads.png", "rank.png", "maps_digits.png", "maps_textures.png", "share.png", "maps_cluttered_32.png"):
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


def _image_folder(root: Path, split: bool) -> Path:
    """Three classes of small RGB PNGs that differ in colour and stripe direction (learnable in one epoch)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "green", "blue"]):
        for i in range(8):
            part = ("train" if i < 6 else "test") if split else ""
            d = root / part / name
            d.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 60, (24 + c, 20, 3)).astype(np.uint8)
            img[:, :, c] += 150
            img[:: 2 + c] = 255
            Image.fromarray(img).save(d / f"{i}.png")
    (root / ("train" if split else "") / "red" / "notes.txt").write_text("not an image")
    return root


def _hf_resnet_dir(path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic")
    transformers.ResNetModel(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("finetune", [False, True])
def test_demo_on_an_image_folder_with_a_local_hugging_face_backbone(tmp_path, finetune):
    """--data reads an ImageFolder layout (train/ test/), --backbone a randomly initialised Hugging Face ResNet saved
    to a directory (the real loading code, offline), frozen with cached features or fine-tuned; the report, the
    results and the maps over the images are written."""
    data_dir = _image_folder(tmp_path / "data", split=True)
    model_dir = _hf_resnet_dir(tmp_path / "resnet")
    out = tmp_path / "out"
    extra = ["--data", str(data_dir), "--backbone", str(model_dir), "--image-size", "32", "--heads",
             "mean,rank1,bilinear", "--epochs", "2", "--seeds", "1", *(["--finetune"] if finetune else [])]  # fmt: skip
    run = _run(out, *extra, env_code="import os; os.environ['HF_HUB_OFFLINE'] = '1'\n")
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert {h["head"] for h in doc["heads"]} == {"mean", "rank1", "bilinear"}
    assert all(h["dataset"] == "data" for h in doc["heads"])
    assert ("fine-tuned" if finetune else "frozen") in doc["meta"]["model"]
    assert "3 classes" in doc["meta"]["datasets"][0] and "18 train / 6 test" in doc["meta"]["datasets"][0]
    assert (out / "maps_data.png").stat().st_size > 5000
    assert "**Smoke run**" in (out / "report.md").read_text()


def test_demo_data_and_backbone_errors_say_what_to_do(tmp_path):
    data_dir = _image_folder(tmp_path / "flat", split=False)
    run = _run(tmp_path / "o1", "--data", str(data_dir), "--backbone", str(tmp_path / "nowhere"), "--seeds", "1")
    assert run.returncode == 1 and "expected a directory with a Hugging Face config.json" in run.stderr
    assert "save_pretrained" in run.stderr and "never downloads" in run.stderr
    run = _run(tmp_path / "o2", "--data", str(tmp_path / "missing"))
    assert run.returncode == 1 and "expected a folder with one sub-folder per class" in run.stderr
    run = _run(tmp_path / "o3", "--finetune")
    assert run.returncode == 2 and "--finetune: pass --backbone DIR" in run.stderr


def test_image_folder_without_a_split_holds_out_a_seeded_share_of_each_class(tmp_path):
    from lowrank_pool.demo import data

    root = _image_folder(tmp_path / "flat", split=False)
    ds = data.image_folder(root, size=16)
    again = data.image_folder(root, size=16)
    assert ds.classes == ["blue", "green", "red"] and ds.x_train.shape[1:] == (3, 16, 16)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    counts = torch.bincount(ds.y_test, minlength=3).tolist()
    assert counts == [2, 2, 2] and ds.x_train.shape[0] == 18  # round(8 · 0.2) = 2 per class


def test_cluttered_digits_are_seeded_and_shrink_the_object(tmp_path):
    from lowrank_pool.demo import data

    small, big = data.cluttered_digits(32, per_class=5), data.cluttered_digits(96, per_class=5)
    assert small.x_train.shape == (50, 1, 32, 32) and big.x_test.shape[-2:] == (96, 96)
    assert small.share == pytest.approx((16 / 32) ** 2) and big.share == pytest.approx((16 / 96) ** 2)
    assert torch.equal(data.cluttered_digits(32, per_class=5).x_train, small.x_train)
    assert not torch.equal(data.cluttered_digits(32, per_class=5, seed=1).x_train, small.x_train)
    assert "% of the image" in small.describe()
