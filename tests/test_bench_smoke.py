"""The benchmark command keeps working: a tiny-shape run (no timing assertions; CI is noisy)."""

from __future__ import annotations

import json
import math
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

    # --rescore: the stored times with this version's roofline (here the same one: the same costs back)
    tampered = dict(data, results=[dict(r, flops=1.0, nbytes=1.0, efficiency=0.0) for r in rows])
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    again = tmp_path / "again"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--rescore", str(tmp_path / "tampered.json")]
    out = subprocess.run(
        [*cmd, "--out", str(again)], capture_output=True, text=True, check=False, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rescored = json.loads((again / "results.json").read_text())["results"]
    assert [(r["flops"], r["nbytes"], r["times"]) for r in rescored] == [
        (r["flops"], r["nbytes"], r["times"]) for r in rows
    ]
    assert [r["efficiency"] for r in rescored] == pytest.approx([r["efficiency"] for r in rows], nan_ok=True)


def test_forward_backward_roofline_counts_the_gram_matrix_twice():
    """A step does three times the forward's FLOPs, except the Gram matrix XᵀX (one GEMM for its ∂X)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import roofline_costs

    batch, item = 32, 4
    for n, f, k in [(49, 2048, 10), (4096, 128, 10)]:
        gram, contraction = 2 * batch * n * f * f, 2 * batch * k * f * f
        fwd = roofline_costs("bilinear", batch, n, f, k, 0, item, False)
        step = roofline_costs("bilinear", batch, n, f, k, 0, item, True)
        assert fwd[0] == gram + contraction
        assert step[0] == 2 * gram + 3 * contraction
        assert step[1] == 2 * fwd[1] + batch * n * f * item  # X and W read twice, ∂X written once
    for method in ("rank1", "rankp", "first_order"):
        fwd, step = (roofline_costs(method, batch, 196, 512, 100, 0, item, g) for g in (False, True))
        assert step[0] == 3 * fwd[0]
    # CP: the dense path (auto's choice at (4096, 128, 10)) has the Gram matrix, the factorised one not
    dense = [roofline_costs("cp64", batch, 4096, 128, 10, 64, item, g)[0] for g in (False, True)]
    assert dense[1] == 3 * dense[0] - 2 * batch * 4096 * 128 * 128
    factorized = [roofline_costs("cp64", batch, 196, 2048, 600, 64, item, g)[0] for g in (False, True)]
    assert factorized[1] == 3 * factorized[0]


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


def test_gpu_report_rescores_a_stored_run_without_a_gpu(tmp_path):
    """``benchmarks/gpu.py --rescore`` rebuilds the table from stored times: efficiency = roofline / time."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import roofline_costs

    shape, batch = [4096, 128, 10], 32
    times = {
        "rank1_pool": (0.2, 1.0, 1.03),
        "rank1_pool, CUDA graph": (0.05, 0.2, math.nan),
        "hand: re-associated": (0.2, 0.9, 3.0),
        "hand: re-associated, CUDA graph": (0.1, 0.5, math.nan),
        "rankp_pool (P = 4)": (0.3, 1.2, 1.1),
        "cp_pool (R = 64)": (0.5, 1.5, 1.08),
    }
    rows = [{"shape": shape, "method": m, "fwd": a, "fwd+bwd": b, "peak_x": c} for m, (a, b, c) in times.items()]
    limits = {"gflops": 50_000.0, "read_gbps": 3_000.0}
    stored = {"device": "a GPU", "torch": "2.x", "batch": batch, "limits": limits, "rows": rows}
    (tmp_path / "gpu.json").write_text(json.dumps(stored))
    cmd = [sys.executable, "gpu.py", "--rescore", str(tmp_path / "gpu.json"), "--out", str(tmp_path / "out")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT / "benchmarks", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "out" / "gpu.md").read_text()
    got = {r["method"]: r for r in json.loads((tmp_path / "out" / "gpu.json").read_text())["rows"]}
    for label, method in [("rank1_pool", "rank1"), ("rankp_pool (P = 4)", "rankp"), ("cp_pool (R = 64)", "cp64")]:
        flops, nbytes = roofline_costs(method, batch, *shape, 64, 4, True)
        roof = max(flops / limits["gflops"] / 1e6, nbytes / limits["read_gbps"] / 1e6)
        assert got[label]["roof_fwd+bwd"] == pytest.approx(roof)
        eff = f"{times[label][1]:.3f} ({roof / times[label][1]:.2f})"
        assert f"| {tuple(shape)} | {label} |" in table and eff in table
    assert "| 0.90x |" in table and "| 2.50x (graphs) |" in table  # leads against rank1_pool, eager and graphed
    assert "(graph pool)" in table and "1.03 X" in table


def test_fit_benchmark_smoke_run_compares_with_tensorly(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fits.py"), "--smoke", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "fits.json").read_text())["rows"]
    assert {r["fit"].split()[0] for r in rows} == {"cp", "tucker", "eig"}
    for r in rows:
        assert r["ours_s"] > 0 and r["ours_sweeps"] >= 1 and 0 <= r["ours_error"] <= 1
        if r["tensorly_s"] is not None:  # the same rank and tolerance: the errors agree
            assert abs(r["ours_error"] - r["tensorly_error"]) < 1e-3, r
    assert "| W | dtype | fit |" in (tmp_path / "fits.md").read_text()


def test_init_scale_benchmark_smoke_run_lists_every_head():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "init_scale.py"), "--smoke"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    import lowrank_pool.nn as lpnn

    heads = {name for name in lpnn.__all__ if name.endswith("Pool") and name != "PoolingHead"}
    assert {row.split("|")[1].split()[0] for row in rows} == heads
    for row in rows:
        std, first, train = (cell.strip() for cell in row.split("|")[2:5])
        assert float(std) > 0 and math.isfinite(float(first)), row
        assert all(math.isfinite(float(v)) for v in train.split(" / ")), row


def test_family_benchmark_smoke_run_checks_and_times_every_form():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "family.py"), "--smoke"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 6 and any("MCB" in r for r in rows) and any("isqrt" in r for r in rows)
    for row in rows:
        cells = [c.strip() for c in row.split("|")[2:8]]
        assert all(float(c) > 0 for c in cells), row
