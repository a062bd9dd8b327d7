"""The malloc tuning for CPU inference: what it reports, and that `make run` uses the same settings."""

import re
from pathlib import Path

import numpy as np

from core import allocator


def test_tune_allocator_reports_what_it_did_and_is_idempotent():
    first = allocator.tune_allocator()
    assert first == allocator.tune_allocator()
    if allocator._libc() is not None:
        assert first.startswith("glibc") or first.startswith("default (TILSCOPE_DEFAULT_ALLOCATOR")
    else:
        assert first.startswith("default (C library")
    # large blocks are still allocated and freed correctly with the thresholds raised
    for _ in range(3):
        a = np.ones((4096, 4096), np.float32)
        assert float(a[::512, ::512].sum()) == 64
        del a


def test_make_run_starts_the_app_with_the_allocator_environment():
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    line = re.search(r"^MALLOC_ENV := (.*)$", makefile, re.M)
    assert line, "Makefile has no MALLOC_ENV"
    assert dict(kv.split("=", 1) for kv in line.group(1).split()) == allocator.ENVIRONMENT
    run = re.search(r"^run:.*\n\t(.*)$", makefile, re.M).group(1)
    assert run.startswith("$(MALLOC_ENV) ") and "streamlit run app.py" in run
