"""The benchmark command keeps working: a tiny-shape run (no timing assertions; CI is noisy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_run_writes_its_reports(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--smoke",
        "--no-memory",
        "--dtypes",
        "float32",
        "--out",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["limits"]["read_gbps"] > 0 and data["limits"]["torch_float32_gflops"] > 0
    methods = {r["method"] for r in data["results"] if r["times"]}
    assert {
        "first_order",
        "bilinear",
        "rank1",
        "rankp",
        "cp16",
        "tucker64",
        "(a) broadcast",
        "(b) autograd GEMM",
        "(c) tensorly cp16",
    } <= methods
    # every case of the table appears, for both backends where it applies, with a roofline
    rows = data["results"]
    assert {r["backend"] for r in rows} == {"numpy", "torch"}
    assert {r["variant"] for r in rows if r["method"] == "cp64"} >= {"bnf auto", "nchw factorized", "nchw dense"}
    assert all(r["flops"] > 0 and r["nbytes"] > 0 for r in rows)
    assert all(len(r["times"]) >= 3 for r in data["results"] if not r["skipped"])
    assert "| backend |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "efficiency.png").stat().st_size > 1000


def test_benchmark_memory_child_reports_a_peak():
    """Rank-1 forward+backward on (8, 512, 14, 14) float32 peaks at about one ∂X (3.06 MiB), no more."""
    spec = {
        "dtype": "float32",
        "batch": 8,
        "shape": [196, 512, 10],
        "mode": "fwd+bwd",
        "method": "rank1",
        "variant": "nchw",
    }
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import MEMORY_CHILD_ENV  # the environment make bench measures in

    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--memory-child", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, timeout=300, env=MEMORY_CHILD_ENV)
    mib = json.loads(out.stdout.strip().splitlines()[-1])["mib"]
    dx_mib = 8 * 196 * 512 * 4 / 2**20
    assert 0.5 * dx_mib <= mib <= 3 * dx_mib + 2, (mib, dx_mib)
