"""Timing a call the way a training step meets it: untimed preparation before each call (X rewritten as the
layer that produces it would leave it, gradients unset), the median over repetitions, on the host clock or
on CUDA events."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def best_seconds(fn: Callable[[], Any], rounds: int) -> float:
    """The fastest of ``rounds`` calls (after one warm-up): a machine's limit, not a call's typical time."""
    fn()
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def median_ms(fn: Callable[[], Any], before: Callable[[], Any], reps: int = 25) -> float:
    """Median host time of fn() in ms, ``before()`` run (untimed) ahead of each call, after one warm-up."""
    before()
    fn()
    times = []
    for _ in range(reps):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def device_ms(fn: Callable[[], Any], before: Callable[[], Any], reps: int) -> float:
    """Median CUDA-event time of fn() in ms, ``before()`` run (untimed) ahead of each call, after 3 warm-ups."""
    for _ in range(3):
        before()
        fn()
    times = []
    for _ in range(reps):
        before()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)
