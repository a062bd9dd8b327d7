"""Memory-allocator settings that make CPU inference on large tiles about twice as fast.

PyTorch takes every activation tensor of a forward pass from ``malloc``. glibc serves
blocks above its mmap threshold (dynamic, at most 32 MiB by default) with a fresh ``mmap``
and unmaps them on ``free``. An H&E block of 1216 x 1216 px has activations of 100-200 MiB,
so every layer of every block faults its output pages in again from the kernel; on 2 CPU
cores that was about half of the network's time (``benchmarks/bench_he_til.py
--default-allocator`` shows the difference).

:func:`tune_allocator` raises glibc's mmap and trim thresholds to 1 GiB, so freed
activations stay in the heap and the next layer reuses them. glibc still hands the top of
the heap back to the operating system once more than 1 GiB of it is free, so a long-running
app keeps at most about that much beyond what it uses. (Trimming the heap after every
analysis as well was measured: it costs 0.3-0.4 s per analysis in faulting the heap in
again, so it is not done.) Threads that allocated before the call keep glibc's per-thread
arenas, which still use mmap for large blocks: the app's server therefore starts with the
same settings in its environment (:data:`ENVIRONMENT`, set by ``make run``).

On other C libraries (macOS, musl, Windows) it does nothing and says so; setting
the environment variable ``TILSCOPE_DEFAULT_ALLOCATOR=1`` leaves glibc as it is too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

#: Bytes: freed blocks below this stay in the heap; allocations below it never use mmap.
THRESHOLD_BYTES = 1 << 30

#: The same settings as environment variables, for a process started with them (``make run``):
#: one malloc arena, so the app's worker threads allocate from the tuned heap too.
ENVIRONMENT = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(THRESHOLD_BYTES),
    "MALLOC_TRIM_THRESHOLD_": str(THRESHOLD_BYTES),
}

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@functools.cache
def tune_allocator() -> str:
    """Raise glibc's mmap and trim thresholds to :data:`THRESHOLD_BYTES` (once per process).

    Returns
    -------
    str
        What was done, for logs and benchmarks: ``"glibc, mmap/trim thresholds 1 GiB"``, or
        ``"default (...)"`` with the reason: ``TILSCOPE_DEFAULT_ALLOCATOR`` set, a C library
        other than glibc, or glibc refused.
    """
    if os.environ.get("TILSCOPE_DEFAULT_ALLOCATOR"):
        return "default (TILSCOPE_DEFAULT_ALLOCATOR is set)"
    libc = _libc()
    if libc is None:
        return f"default (C library {platform.libc_ver()[0] or platform.system()} is not glibc)"
    ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(THRESHOLD_BYTES)) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(THRESHOLD_BYTES)) == 1 and ok
    return "glibc, mmap/trim thresholds 1 GiB" if ok else "default (glibc refused the mmap/trim thresholds)"


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the operating system (glibc ``malloc_trim(0)``).

    With :func:`tune_allocator`'s thresholds, up to 1 GiB of freed activations stays resident
    for reuse; between the tiles of a whole slide, pieces of the heap freed around the cell
    tables can no longer hold the next window's large activations, and resident memory crept
    up with the slide's size. A whole-slide run calls this between windows so its peak is that
    of one window; it costs the next window faulting its pages in again (a few per cent of a
    he-til window on 2 CPU cores, ``benchmarks/bench_slides.py``).

    Returns
    -------
    bool
        True when memory was handed back, False when nothing was done (not glibc, or
        ``TILSCOPE_DEFAULT_ALLOCATOR`` set, where glibc's own trimming applies).
    """
    if os.environ.get("TILSCOPE_DEFAULT_ALLOCATOR"):
        return False
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(ctypes.c_size_t(0)))
