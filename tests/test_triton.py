"""The Triton kernel of the attentional heads, checked without a GPU: tests/triton_cases.py runs in a subprocess
under Triton's interpreter (TRITON_INTERPRET=1) with the kernels routed to CPU tensors; on a GPU machine the same
cases run on CUDA tensors (``pytest tests/triton_cases.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is in the test extra (pip install '.[test]')")


def test_triton_kernel_under_the_interpreter():
    here = Path(__file__).resolve().parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "LOWRANK_POOL_TRITON_ON_CPU": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "triton_cases.py")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=here.parent, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout.splitlines()[-1], out.stdout[-1000:]
