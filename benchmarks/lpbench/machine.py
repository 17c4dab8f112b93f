"""The machine's limits, measured in the run that uses them: GEMM peak and memory read bandwidth.

Efficiencies are ratios to these (docs/benchmarks.md): never an absolute time alone. The CPU's GEMM rate is
timed by ``torch.utils.benchmark`` (warm-up and blocked repetitions); the read bandwidth is the best of a
few passes over 1 GiB (larger than any last-level cache here: DRAM, so inputs that fit in cache can beat it).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.utils.benchmark as tb

from .timing import best_seconds, device_ms


def _gemm_gflops(a: Any, size: int) -> float:
    seconds = tb.Timer("a @ a", globals={"a": a}).blocked_autorange(min_run_time=0.2).median
    return 2 * size**3 / seconds / 1e9


def cpu_limits(small: bool = False, rounds: int = 5) -> dict[str, float]:
    """GEMM peak (GF/s) of numpy and torch in float32 and float64, and the read bandwidth (GB/s).

    ``small``: 256² matrices and an 8 MiB array (a smoke run: the command works, the numbers mean little).
    """
    size = 256 if small else 2048
    out: dict[str, float] = {}
    for dt in ("float32", "float64"):
        a = np.random.default_rng(0).standard_normal((size, size)).astype(dt)
        out[f"numpy_{dt}_gflops"] = _gemm_gflops(a, size)
        out[f"torch_{dt}_gflops"] = _gemm_gflops(torch.from_numpy(a), size)
    big = np.ones((8 if small else 1024) * 2**20 // 8)  # float64, 8 MiB / 1 GiB
    t = torch.from_numpy(big)
    seconds = min(best_seconds(big.sum, rounds), best_seconds(t.sum, rounds))
    out["read_gbps"] = big.nbytes / seconds / 1e9
    return out


def gpu_limits() -> dict[str, float]:
    """float32 GEMM rate (GF/s, TF32 off) and read bandwidth (GB/s) of the CUDA device."""
    a = torch.randn(8192, 8192, device="cuda")
    gemm_ms = min(device_ms(functools.partial(torch.matmul, a, a), lambda: None, 5) for _ in range(3))
    big = torch.ones(2**29, device="cuda")  # 2 GiB
    read_ms = min(device_ms(big.sum, lambda: None, 5) for _ in range(3))
    return {"gflops": 2 * 8192**3 / gemm_ms / 1e6, "read_gbps": 2**31 / read_ms / 1e6}
