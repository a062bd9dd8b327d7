"""The job runner (core.jobs): work in a capped worker process; what reaches the caller is a value or one line."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from core import jobs
from core.errors import InputError

GIB = 1024**3


# Calls run in the workers: module-level, so they pickle by reference.

def add(a, b, progress=None):
    for i in range(3):
        if progress is not None:
            progress(i + 1, 3)
    return a + b


def refuse():
    raise InputError("mpp is missing: enter the scanner's microns per pixel")


def allocate(n_bytes: int):
    return np.ones(n_bytes // 8).sum()


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def crash():
    return {}["no such key"]


def sleep(seconds: float):
    time.sleep(seconds)
    return seconds


def torch_conv():
    """A small network pass: torch (its allocator, its threads) under the worker's memory cap."""
    import torch

    x = torch.rand(1, 3, 512, 512)
    conv = torch.nn.Conv2d(3, 32, 3, padding=1)
    with torch.inference_mode():
        y = conv(x).relu().mean().item()
    import resource

    return y, resource.getrlimit(resource.RLIMIT_DATA)[0]


def test_a_job_returns_its_value_and_reports_progress():
    job = jobs.submit(add, 2, 3, kind="test", progress_kwarg="progress")
    seen = []
    assert jobs.wait(job, on_progress=seen.append, poll_s=0.05) == 5
    final = jobs.status(job)
    assert final.state == "done" and (final.done, final.total) == (3, 3) and final.fraction == 1.0
    assert final.kind == "test" and final.memory_bytes == jobs.job_memory_bytes()
    assert seen[-1].state == "done"


def test_errors_come_back_as_one_line():
    with pytest.raises(jobs.JobFailed, match="^mpp is missing: enter the scanner's microns per pixel$"):
        jobs.wait(jobs.submit(refuse))
    job = jobs.submit(crash)
    with pytest.raises(jobs.JobFailed) as info:
        jobs.wait(job)
    message = str(info.value)
    assert message == "it failed unexpectedly; the details are in the server log"
    assert "KeyError" in (jobs.jobs_dir() / job / "traceback.txt").read_text()  # for the log, not the page


def test_running_out_of_memory_ends_the_worker_not_the_caller():
    """A 3 GiB allocation in a worker capped at 1 GiB: a MemoryError there, one line here."""
    start = time.monotonic()
    with pytest.raises(jobs.JobFailed, match=r"more memory than a job may use \(1.0 GiB, TILSCOPE_JOB_MEMORY_MB\)"):
        jobs.wait(jobs.submit(allocate, 3 * GIB, memory_bytes=GIB))
    assert time.monotonic() - start < 60
    assert jobs.wait(jobs.submit(add, 1, 1, memory_bytes=GIB)) == 2  # the next job runs as usual


def test_a_worker_killed_by_the_system_says_so():
    job = jobs.submit(die)
    with pytest.raises(jobs.JobFailed, match=r"killed \(SIGKILL\), most often by the system for lack of memory"):
        jobs.wait(job)
    assert jobs.status(job).state == "failed"


def test_torch_runs_under_the_memory_cap():
    value, cap = jobs.wait(jobs.submit(torch_conv, memory_bytes=2 * GIB))
    assert np.isfinite(value) and cap == 2 * GIB
    value, cap = jobs.wait(jobs.submit(torch_conv))  # the default cap
    assert np.isfinite(value) and cap == jobs.job_memory_bytes()


def test_a_job_is_found_by_id_after_its_page_is_gone_and_can_be_cancelled():
    job = jobs.submit(sleep, 30)
    deadline = time.monotonic() + 60
    while jobs.status(job).state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    # What a reloaded page has: the id only; everything else is read from the job folder.
    state = jobs.status(job)
    assert state.state == "running" and not state.finished
    with pytest.raises(jobs.JobNotDone):
        jobs.result(job)
    jobs.cancel(job)
    assert jobs.status(job).state == "failed" and jobs.status(job).error == "it was cancelled"
    with pytest.raises(jobs.JobFailed, match="does not exist"):
        jobs.status("20260101-000000-000000000000")
    with pytest.raises(jobs.JobFailed, match="not a job id"):
        jobs.status("../../etc")


def test_a_job_whose_worker_vanished_is_failed_and_cleaned_up():
    job = jobs.submit(sleep, 30)
    deadline = time.monotonic() + 60
    while jobs.status(job).state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    folder = jobs.jobs_dir() / job
    state = jobs._read_json(folder / "state.json")
    # As after a server restart: the worker is gone and the state on disk still says "running".
    os.kill(state["pid"], signal.SIGKILL)
    time.sleep(1.0)
    jobs._set_state(folder, state="running", error=None)
    st = jobs.status(job)
    assert st.state == "failed" and "gone" in st.error
    leftover = jobs.jobs_dir() / "half-made"
    leftover.mkdir()
    old = time.time() - 3600
    os.utime(leftover, (old, old))
    done = jobs.submit(add, 1, 2)
    jobs.wait(done)
    staged = jobs.stage_input(b"\x89PNG", "x.png")
    assert jobs.cleanup(max_age_s=3600) == ["half-made"]  # recent jobs and uploads stay
    removed = jobs.cleanup(max_age_s=0)
    assert set(removed) == {job, done} and not staged.exists()


def test_the_memory_cap_follows_the_limits_and_the_environment(monkeypatch):
    from core.io import MAX_PIXELS

    monkeypatch.delenv(jobs.MEMORY_ENV, raising=False)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert jobs.job_memory_bytes() == int(min(jobs.JOB_BASE_BYTES + jobs.JOB_BYTES_PER_PIXEL * MAX_PIXELS,
                                              jobs.MAX_SHARE_OF_RAM * ram))
    monkeypatch.setenv(jobs.MEMORY_ENV, "4096")
    assert jobs.job_memory_bytes() == 4 * GIB
    monkeypatch.setenv(jobs.MEMORY_ENV, "0")
    assert jobs.job_memory_bytes() is None
    for bad in ("lots", "12"):
        monkeypatch.setenv(jobs.MEMORY_ENV, bad)
        with pytest.raises(InputError, match=jobs.MEMORY_ENV):
            jobs.job_memory_bytes()
