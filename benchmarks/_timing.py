"""Shared timing for the benchmarks: best wall time of a call, GPU work included."""

from __future__ import annotations

import time

import torch


def best_seconds(fn, repeat: int) -> float:
    """Best of ``repeat`` timed calls of ``fn()`` after one untimed warm-up call, in seconds.

    Waits for queued CUDA work before stopping the clock, so GPU timings are complete.
    """
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best
