"""Jobs: heavy work in a worker process with a memory cap, so that no input can take the app server down.

A job is one picklable call, ``fn(*args, **kwargs)``, run in its own process. The processes
are forked by a small helper, ``python -m core.jobs`` (started by the first :func:`submit` of
a server process, fed job folders on its standard input), that has imported the pipeline
once: a job starts in a fraction of a second instead of the seconds an import of torch takes,
and never from the server itself (a fork of a threaded server is unsafe), so it shares
nothing with the server but the job folder. In the job's process the memory it may use is
capped (``RLIMIT_DATA``, :func:`job_memory_bytes`): a decode bomb, a runaway allocation or
the kernel's out-of-memory killer ends the worker, never the server, and the job's status
says in one line what happened. A job's state lives on disk, in its own folder under
``<data folder>/jobs/<id>/`` (``state.json``, ``progress.json``, ``result.pkl``), so a page
that is reloaded, or another session of the same server, finds a running job by its id.

API
---
>>> job_id = submit(sum, [1, 2, 3])                       # doctest: +SKIP
>>> wait(job_id, on_progress=lambda s: print(s.fraction))  # doctest: +SKIP
6

- :func:`submit` a call, with an optional ``memory_bytes`` cap and the keyword through which
  the call receives a ``progress(done, total)`` callable (``progress_kwarg``);
- :func:`status` (a :class:`JobStatus`: state, progress, error), :func:`result` (the value,
  or :class:`JobFailed` with the one-line message), :func:`wait` (poll until done);
- :func:`cancel` a running job; :func:`cleanup` old and orphaned job folders;
- :func:`report_progress` from inside a job.

What the one-line messages say: a :class:`core.errors.TILscopeError` raised by the call is
passed on as it is; running out of the capped memory (``MemoryError``, torch's "can't
allocate memory") and a worker killed by a signal (the out-of-memory killer) say so and how
to get round it; any other exception is "failed unexpectedly", its traceback in the server
log and in the job folder's ``traceback.txt``, never in the message.

The job folder holds pickles: it lives in the data folder, which only the TILscope server
writes (created with mode 0700).
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import subprocess
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from core.errors import TILscopeError

__all__ = ["submit", "status", "result", "wait", "cancel", "cleanup", "warm", "report_progress", "jobs_dir", "job_memory_bytes",
           "stage_input", "JobStatus", "JobFailed", "JobNotDone", "JOB_BYTES_PER_PIXEL", "JOB_BASE_BYTES", "MEMORY_ENV"]

log = logging.getLogger("tilscope.jobs")

#: Memory an analysis needs per pixel of its image, measured: he-til 9 MP peaked 3.7 GB above the
#: loaded model (about 400 bytes/pixel: dense class maps, blocks, statistics, exports); cd3-ihc about 110.
JOB_BYTES_PER_PIXEL = 400
#: Memory a worker holds before any image: the interpreter, torch, the model.
JOB_BASE_BYTES = 2 * 1024**3
#: Environment variable overriding the cap, in MiB (0: no cap).
MEMORY_ENV = "TILSCOPE_JOB_MEMORY_MB"
#: Share of the machine's memory a worker may use at most (the rest for the server and others).
MAX_SHARE_OF_RAM = 0.75
#: Finished jobs and uploads older than this are removed by :func:`cleanup` (seconds).
KEEP_S = 24 * 3600
#: Modules the fork server imports once, so each job starts with them loaded.
PRELOAD = ["core.pipeline", "core.fitness", "core.io", "core.outputs.exports"]

_lock = threading.Lock()
_helper: subprocess.Popen | None = None  # this process's fork helper (python -m core.jobs)
_current_dir: Path | None = None  # inside a worker: its job folder
_last_progress = 0.0


class JobFailed(TILscopeError):
    """A job ended without a result; the message says why in one line."""


class JobNotDone(TILscopeError):
    """The job is still queued or running."""


@dataclass
class JobStatus:
    """Where a job stands.

    Attributes
    ----------
    id, kind : str
        The job's id and what it is (free text given to :func:`submit`, e.g. ``"analysis"``).
    state : str
        ``"queued"``, ``"running"``, ``"done"`` or ``"failed"``.
    done, total : int
        Progress reported by the call (0 and 0 until it reports any).
    text : str
        The progress text it gave, if any.
    error : str or None
        For a failed job, one line saying what happened and how to get round it.
    memory_bytes : int or None
        The worker's memory cap (None: none).
    submitted_at, finished_at : float or None
        Unix times.
    """

    id: str
    kind: str
    state: str
    done: int = 0
    total: int = 0
    text: str = ""
    error: str | None = None
    memory_bytes: int | None = None
    submitted_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] (0 until the call reports any)."""
        return min(1.0, self.done / self.total) if self.total else 0.0


# --------------------------------------------------------------------------- where and how much


def jobs_dir() -> Path:
    """``<data folder>/jobs`` (``TILSCOPE_DATA_DIR``), created with mode 0700."""
    from core.outputs.store import data_dir

    path = data_dir() / "jobs"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def job_memory_bytes() -> int | None:
    """The default memory cap of a worker, in bytes (None: no cap).

    ``TILSCOPE_JOB_MEMORY_MB`` when set (0: no cap); else what the largest accepted image
    needs, :data:`JOB_BASE_BYTES` + :data:`JOB_BYTES_PER_PIXEL` x :data:`core.io.MAX_PIXELS`
    (42 GB at 100 megapixels), but at most :data:`MAX_SHARE_OF_RAM` of the machine's memory.

    Raises
    ------
    core.errors.InputError
        If ``TILSCOPE_JOB_MEMORY_MB`` is not a whole number of MiB of at least 256 (or 0).
    """
    from core.errors import InputError
    from core.io import MAX_PIXELS

    value = os.environ.get(MEMORY_ENV)
    if value is not None and value.strip():
        try:
            mb = int(value)
        except ValueError as err:
            raise InputError(f"{MEMORY_ENV}={value!r} is not a whole number of MiB (e.g. 8192; 0 for no cap)") from err
        if mb == 0:
            return None
        if mb < 256:
            raise InputError(f"{MEMORY_ENV}={mb} MiB is too little for a worker (torch alone needs about 300); use "
                             "at least 256, or 0 for no cap")
        return mb * 1024**2
    need = JOB_BASE_BYTES + JOB_BYTES_PER_PIXEL * MAX_PIXELS
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return need
    return int(min(need, MAX_SHARE_OF_RAM * ram))


def _gib(n: int | None) -> str:
    return "no cap" if n is None else f"{n / 1024**3:.1f} GiB"


# --------------------------------------------------------------------------- files of a job


def _dir(job_id: str) -> Path:
    if not job_id or not all(c.isalnum() or c == "-" for c in job_id):
        raise JobFailed(f"{job_id!r} is not a job id")
    return jobs_dir() / job_id


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _set_state(folder: Path, **changes) -> dict:
    state = _read_json(folder / "state.json")
    state.update(changes)
    _write_json(folder / "state.json", state)
    return state


def _process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), to tell it from a later process with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int | None, started: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start_time(pid)
    return started is None or now is None or now == started


# --------------------------------------------------------------------------- the worker


def _cap_memory(memory_bytes: int | None) -> None:
    if memory_bytes is None:
        return
    import resource

    # RLIMIT_DATA (Linux 4.7+) counts the heap and private writable mappings: numpy and torch
    # buffers, but not the shared libraries (torch maps gigabytes of code), so the cap measures data.
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text
                                              or "std::bad_alloc" in text)


def _worker(folder: str, memory_bytes: int | None) -> None:
    """The job process: cap the memory, run the call, leave its result or one-line error in the folder."""
    global _current_dir
    path = Path(folder)
    _current_dir = path
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the server's terminal is the server's
    try:
        _cap_memory(memory_bytes)
        _set_state(path, state="running", pid=os.getpid(), pid_started=_process_start_time(os.getpid()),
                   started_at=time.time())
        with open(path / "call.pkl", "rb") as fh:
            fn, args, kwargs, progress_kwarg = pickle.load(fh)
        if progress_kwarg:
            kwargs = {**kwargs, progress_kwarg: report_progress}
        value = fn(*args, **kwargs)
        with open(path / "result.pkl.partial", "wb") as fh:
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(path / "result.pkl.partial", path / "result.pkl")
        _set_state(path, state="done", finished_at=time.time())
    except TILscopeError as err:
        _set_state(path, state="failed", finished_at=time.time(), error=" ".join(str(err).split()))
    except BaseException as err:  # noqa: BLE001 - every way out of the call ends as one line
        if _is_out_of_memory(err):
            message = (f"it needed more memory than a job may use ({_gib(memory_bytes)}, {MEMORY_ENV}): analyse a "
                       "smaller field or a lower-resolution export of the image")
        else:
            message = "it failed unexpectedly; the details are in the server log"
            detail = traceback.format_exc()
            with contextlib.suppress(OSError):
                (path / "traceback.txt").write_text(detail, encoding="utf-8")
            print(f"TILscope job {path.name} failed:\n{detail}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            _set_state(path, state="failed", finished_at=time.time(), error=message)


def report_progress(done: int, total: int, text: str = "") -> None:
    """From inside a job: record its progress (``done`` of ``total``); a no-op outside one.

    Written at most ten times a second (and always when ``done == total``).
    """
    global _last_progress
    if _current_dir is None:
        return
    now = time.monotonic()
    if done < total and now - _last_progress < 0.1:
        return
    _last_progress = now
    with contextlib.suppress(OSError):
        _write_json(_current_dir / "progress.json", {"done": int(done), "total": int(total), "text": str(text)})


# --------------------------------------------------------------------------- the server's side


def submit(fn: Callable, *args, memory_bytes: int | None | str = "default", kind: str = "job",
           progress_kwarg: str | None = None, **kwargs) -> str:
    """Start ``fn(*args, **kwargs)`` in a worker process; return the job's id at once.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled by reference); ``args`` and ``kwargs`` must pickle.
    memory_bytes : int, None or "default"
        The worker's memory cap in bytes; ``"default"``: :func:`job_memory_bytes`; None: no cap.
    kind : str
        What the job is, kept in its status (e.g. ``"analysis"``, ``"slide"``).
    progress_kwarg : str, optional
        Keyword through which ``fn`` receives a ``progress(done, total)`` callable that
        reports to :func:`status`.

    Returns
    -------
    str
        The job id (a folder name under :func:`jobs_dir`).

    Raises
    ------
    JobFailed
        If the call cannot be pickled or the worker cannot be started.
    """
    if memory_bytes == "default":
        memory_bytes = job_memory_bytes()
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}"
    folder = jobs_dir() / job_id
    folder.mkdir(mode=0o700)
    try:
        with open(folder / "call.pkl", "wb") as fh:
            pickle.dump((fn, args, kwargs, progress_kwarg), fh, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise JobFailed(f"the job cannot be sent to a worker: {err}") from err
    _write_json(folder / "state.json", {"id": job_id, "kind": kind, "state": "queued", "submitted_at": time.time(),
                                        "memory_bytes": memory_bytes})
    try:
        helper = _ensure_helper()
        _set_state(folder, helper_pid=helper.pid)
        with _lock:
            helper.stdin.write(json.dumps({"folder": str(folder), "memory_bytes": memory_bytes}) + "\n")
            helper.stdin.flush()
    except (OSError, ValueError) as err:
        _set_state(folder, state="failed", finished_at=time.time(), error=f"no worker could be started ({err})")
        raise JobFailed(f"no worker could be started for the job ({err}); check the server's memory and process limits") from err
    return job_id


def status(job_id: str) -> JobStatus:
    """Where the job stands (read from its folder; a worker that died without a word is marked failed here).

    Raises
    ------
    JobFailed
        If there is no such job (never submitted, or removed by :func:`cleanup`).
    """
    folder = _dir(job_id)
    state = _read_json(folder / "state.json")
    if not state:
        raise JobFailed(f"job {job_id} does not exist (it may have been cleaned up); run it again")
    if state.get("state") not in ("done", "failed"):
        dead = _dead_reason(job_id, state)
        if dead is not None:
            state = _read_json(folder / "state.json")  # it may have finished between the two reads
            if state.get("state") not in ("done", "failed"):
                state = _set_state(folder, state="failed", finished_at=time.time(), error=dead)
    progress = _read_json(folder / "progress.json")
    return JobStatus(id=job_id, kind=str(state.get("kind", "job")), state=str(state.get("state")),
                     done=int(progress.get("done", 0)), total=int(progress.get("total", 0)),
                     text=str(progress.get("text", "")), error=state.get("error"),
                     memory_bytes=state.get("memory_bytes"), submitted_at=state.get("submitted_at"),
                     finished_at=state.get("finished_at"))


def _dead_reason(job_id: str, state: dict) -> str | None:
    """Why an unfinished job's worker is gone, or None while it may still run.

    The helper records a worker's death itself (:func:`_serve`); this covers the helper
    being gone too (the server restarted, or everything was killed).
    """
    if state.get("state") == "running":
        if _alive(state.get("pid"), state.get("pid_started")):
            return None
        time.sleep(0.2)  # the helper may be writing the reason right now
        if _read_json(_dir(job_id) / "state.json").get("state") in ("done", "failed"):
            return None
        return "its worker is gone (the server was restarted or the worker was killed); run it again"
    if _alive(state.get("helper_pid"), None) or time.time() - float(state.get("submitted_at") or 0) < 10:
        return None
    return "it never started (the server that took it stopped); run it again"


def result(job_id: str) -> Any:
    """The value the job's call returned.

    Raises
    ------
    JobNotDone
        If it is still queued or running.
    JobFailed
        If it failed: the message is :attr:`JobStatus.error`.
    """
    st = status(job_id)
    if st.state == "failed":
        raise JobFailed(st.error or "it failed")
    if st.state != "done":
        raise JobNotDone(f"job {job_id} is still {st.state}")
    try:
        with open(_dir(job_id) / "result.pkl", "rb") as fh:
            return pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise JobFailed(f"the job's result cannot be read ({err}); run it again") from err


def wait(job_id: str, on_progress: Callable[[JobStatus], None] | None = None, poll_s: float = 0.2,
         timeout_s: float | None = None) -> Any:
    """Poll the job until it ends; return its value (see :func:`result`).

    Parameters
    ----------
    on_progress : callable(JobStatus), optional
        Called at each poll (e.g. to move a progress bar).
    poll_s : float
        Seconds between polls.
    timeout_s : float, optional
        Give up waiting after this long (the job goes on).

    Raises
    ------
    JobFailed
        If the job failed.
    JobNotDone
        If ``timeout_s`` passed first.
    """
    start = time.monotonic()
    while True:
        st = status(job_id)
        if on_progress is not None:
            on_progress(st)
        if st.finished:
            return result(job_id)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise JobNotDone(f"job {job_id} is still {st.state} after {timeout_s:g} s")
        time.sleep(poll_s)


def cancel(job_id: str) -> None:
    """Stop a queued or running job (its worker is killed); a finished job is left as it is."""
    folder = _dir(job_id)
    state = _read_json(folder / "state.json")
    if state.get("state") in ("done", "failed", None):
        return
    pid = state.get("pid")
    if pid and _alive(pid, state.get("pid_started")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _set_state(folder, state="failed", finished_at=time.time(), error="it was cancelled")


def cleanup(max_age_s: float = KEEP_S) -> list[str]:
    """Remove job folders that ended more than ``max_age_s`` ago, and leftovers.

    A job whose worker is gone (the server restarted, the worker was killed) counts as ended
    when that is found; a folder without a readable state (a submit cut short) is removed
    once a minute old. Uploads under ``jobs/inputs`` older than ``max_age_s`` go too.

    Returns
    -------
    list of str
        The job ids removed.
    """
    removed = []
    now = time.time()
    root = jobs_dir()
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name == "inputs":
            continue
        try:
            age = now - folder.stat().st_mtime
            if not (folder / "state.json").is_file():
                if age > 60:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder.name)
                continue
            st = status(folder.name)
        except (JobFailed, OSError):
            continue
        if st.finished and now - float(st.finished_at or st.submitted_at or 0) > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    inputs = root / "inputs"
    if inputs.is_dir():
        for item in inputs.iterdir():
            with contextlib.suppress(OSError):
                if now - item.stat().st_mtime > max_age_s:
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
    return removed


def stage_input(data: bytes, name: str) -> Path:
    """Keep uploaded bytes in a file a worker can read (``jobs/inputs/<random>/<name>``); return its path.

    Removed by :func:`cleanup` after :data:`KEEP_S`.
    """
    folder = jobs_dir() / "inputs" / uuid.uuid4().hex
    folder.mkdir(parents=True, mode=0o700)
    path = folder / (Path(str(name)).name or "upload")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def status_dict(st: JobStatus) -> dict:
    """A JobStatus as a plain dict (for logs and JSON)."""
    return asdict(st)


# --------------------------------------------------------------------------- the fork helper


def warm() -> None:
    """Start this process's fork helper now (it imports the pipeline: seconds), so the first job starts at once."""
    _ensure_helper()


def _ensure_helper() -> subprocess.Popen:
    """This process's fork helper, started (or restarted, if it died) as ``python -m core.jobs``."""
    global _helper
    with _lock:
        if _helper is None or _helper.poll() is not None:
            _helper = subprocess.Popen([sys.executable, "-m", "core.jobs"], stdin=subprocess.PIPE, text=True,
                                       cwd=str(Path(__file__).resolve().parents[1]), start_new_session=True)
        return _helper


def _serve() -> None:
    """The helper's loop: fork one worker per job folder read from standard input; record how each ended.

    Single-threaded, and it never runs torch itself, so forking it is safe. It ends when its
    standard input closes (the server stopped); workers still running finish on their own.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    children: dict[int, Path] = {}
    stdin_open = True
    fd = sys.stdin.fileno()
    pending = b""
    while stdin_open or children:
        ready = select.select([fd], [], [], 0.2)[0] if stdin_open else (time.sleep(0.2) or [])
        lines: list[bytes] = []
        if ready:
            # os.read, not sys.stdin.readline: a buffered reader takes in every line sent so far, and
            # those after the first would wait, unseen by select(), until the next job arrived.
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                stdin_open = False
            else:
                *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            try:
                job = json.loads(line)
                folder, memory = Path(job["folder"]), job.get("memory_bytes")
            except (ValueError, KeyError, TypeError):
                continue
            pid = os.fork()
            if pid == 0:  # the worker
                code = 0
                try:
                    _worker(str(folder), memory)
                except BaseException:  # noqa: BLE001 - _worker records its own errors; never return into the loop
                    code = 1
                finally:
                    with contextlib.suppress(Exception):
                        sys.stdout.flush()
                        sys.stderr.flush()
                    os._exit(code)
            children[pid] = folder
        while children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            folder = children.pop(pid, None)
            if folder is not None:
                _record_end(folder, wait_status)


def _record_end(folder: Path, wait_status: int) -> None:
    """After a worker ended: if it left no result or error (killed, crashed), say why."""
    state = _read_json(folder / "state.json")
    if not state or state.get("state") in ("done", "failed"):
        return
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        if sig == signal.SIGKILL:
            error = (f"its worker was killed ({name}), most often by the system for lack of memory: analyse a "
                     "smaller field or a lower-resolution export of the image")
        else:
            error = f"its worker was stopped ({name}); the details are in the server log"
    else:
        error = f"its worker stopped unexpectedly (exit status {os.WEXITSTATUS(wait_status)}); the details are in the server log"
    with contextlib.suppress(OSError):
        _set_state(folder, state="failed", finished_at=time.time(), error=error)


if __name__ == "__main__":
    _serve()
