"""Batch runs: many slides or field images, one task each, on a Dask cluster (``python -m core batch``).

A batch analyses every input with one scenario and writes, under the output folder ``DIR``:

- ``DIR/<input id>/``: that input's files, as one analysis writes them (field images:
  :func:`core.outputs.exports.build_exports`, the files the case store keeps, i.e. ``cells.csv``,
  ``cells.parquet``, ``summary.json``, ``overlay.png``, one PNG per map, ``cells.geojson``,
  ``report.pdf``; slides: what :func:`core.slides.analyze_slide` writes, resumed tile by tile
  from ``DIR/.<id>.slide-work/`` after a lost attempt), ``_store/`` (the analysis record and,
  for fields, the analysed image for the case store), and the completion marker
  :data:`COMPLETE_MARKER`;
- ``DIR/cohort.csv``: one row per input (:data:`COHORT_COLUMNS`): status, counts and densities
  by role, tissue area and the key spatial figures (:func:`core.outputs.key_figures.key_figures`).

With ``--compartments KEY`` (a tissue-compartment scenario, ``tissue-compartments``) each field
is also analysed with that scenario, as ``python -m core analyze --compartments`` does
(:func:`core.pipeline.run_analysis`): its folder gets ``compartments.png`` and
``regions.geojson``, the densities are per mm² of predicted tumour and stroma, and the
statistics (so ``cohort.csv``'s intratumoral and stromal densities, and the stromal TILs by the
TILs Working Group's definition) are computed on the predicted compartments. Each worker loads
the compartment model once, as it loads the cell model. Whole slides cannot be analysed with
compartments yet: a batch with ``--compartments`` and a slide among its inputs is refused before
anything runs (:func:`check_compartments`).

How it runs
-----------
One Dask task per input (:func:`analyse_input`) on a ``distributed`` cluster: by default a
``LocalCluster`` of worker processes with one thread each and a memory limit each
(:func:`open_client`), or the scheduler at ``--scheduler ADDRESS`` (its workers must import
this TILscope and see ``DIR`` and the inputs at the same paths, e.g. a shared file system).
A slide (:func:`core.slides.is_slide`) goes to :func:`core.slides.analyze_slide`, any other
image through the field pipeline (:func:`core.pipeline.run_analysis`).

Each result is written idempotently: into a temporary folder ``DIR/.<id>.partial-*``, with the
completion marker written last, then renamed to ``DIR/<id>`` in one step. A worker that dies
mid-task (killed, out of memory) leaves only a temporary folder; the scheduler gives the task
to another worker (``distributed.scheduler.allowed-failures`` deaths, default 3), and a task
that raises is retried :data:`TASK_RETRIES` times. A task that finds its input complete
(marker present, same file, size, modification time, scenario and mpp) returns at once, so a
retried task or a second run computes nothing twice; a rerun of the batch skips complete
inputs before any task is sent. Temporary folders of dead attempts are removed at the start
of the next run. Two batches must not write into one ``DIR`` at the same time.

The case store (:mod:`core.outputs.store`) receives every analysis from the client process,
one at a time, as each task returns (workers never open the database, so one SQLite file is
never written by many processes); the marker :data:`STORED_MARKER` and a token in the
analysis's parameters make sure an analysis is saved once, even across reruns. The store
gets the folder's files up to :data:`STORE_MAX_FILE_BYTES` each (larger ones stay in the
folder only), and for a slide not its ``cells.csv``: the Review page reviews fields, and a
slide's cells are in ``cells.parquet``.

Input ids: the file's stem with characters other than letters, digits, ``.``, ``_`` and
``-`` replaced by ``_``; inputs of one batch whose stems collide get ``-`` and 8 hex digits of
the SHA-1 of their absolute path appended (stable as long as the files do not move).

Exit status of ``python -m core batch``: 0 when every input is done (or was done by an
earlier run), 3 when the batch finished but at least one input failed (see ``cohort.csv``),
2 for bad invocation (nothing analysed), 1 for an unexpected error, 130 when interrupted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import InputError, TILscopeError

__all__ = ["BatchInput", "InputOutcome", "BatchResult", "collect_inputs", "read_manifest", "input_ids", "open_client",
           "run_batch", "analyse_input", "completed", "cohort_row", "write_cohort_csv", "default_n_workers",
           "batch_command", "check_compartments", "COHORT_COLUMNS",
           "COMPLETE_MARKER", "STORED_MARKER", "TASK_RETRIES", "EXIT_SOME_FAILED", "FAULT_ENV"]

#: Written last into an input's folder: the folder is complete.
COMPLETE_MARKER = "batch-complete.json"
#: Written by the client once the analysis is in the case store.
STORED_MARKER = "batch-stored.json"
#: Sub-folder holding what the case store needs besides the exports (record, analysed image).
STORE_FOLDER = "_store"
#: Schema of the completion marker.
MARKER_SCHEMA = "tilscope.batch/1"
#: Retries of a task that raised (a worker death is rescheduled by the scheduler itself).
TASK_RETRIES = 2
#: Exit status of ``python -m core batch`` when some inputs failed.
EXIT_SOME_FAILED = 3
#: Files larger than this are written to the folder but not copied into the case store.
STORE_MAX_FILE_BYTES = 64 * 1024**2
#: Gibibytes of memory a default worker should have (sets the default number of workers).
DEFAULT_WORKER_MEMORY_GIB = 4
#: Longest input id (folder name), characters.
MAX_ID_CHARS = 100
#: Test-only fault injection: ``crash-once:<input id>`` makes the first attempt of that input's
#: task kill its own worker process after writing part of its files (see tests/test_batch.py).
FAULT_ENV = "TILSCOPE_BATCH_FAULT"
#: File suffixes taken from a folder given as an input (field images and whole-slide formats).
INPUT_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu",
                  ".bif", ".svslide", ".ome.tif", ".ome.tiff"}

#: Columns of ``cohort.csv``, in order.
COHORT_COLUMNS = (
    "input", "id", "case", "status", "reason", "kind", "scenario", "mpp", "n_cells",
    "count_immune", "count_tumour", "count_stroma", "count_other",
    "density_immune_per_mm2", "density_tumour_per_mm2", "density_stroma_per_mm2", "density_other_per_mm2",
    "tissue_area_mm2", "intratumoral_immune_density_per_mm2", "stromal_immune_density_per_mm2",
    "ratio_intratumoral_to_stromal", "immune_to_tumour_median_um", "stromal_til_percent", "stromal_til_wg_percent",
    "immune_phenotype", "outside_validated_use", "analysis_id", "runtime_s", "outputs",
)
#: cohort.csv column ← key of :func:`core.outputs.key_figures.key_figures`.
_KEY_FIGURE_COLUMNS = {
    "intratumoral_immune_density_per_mm2": "compartments.intratumoral",
    "stromal_immune_density_per_mm2": "compartments.stromal",
    "ratio_intratumoral_to_stromal": "compartments.ratio",
    "immune_to_tumour_median_um": "distances.median_um",
    "stromal_til_percent": "stromal_til_proxy",
    "stromal_til_wg_percent": "predicted_compartments.stromal_til",  # TILs Working Group, predicted stroma (--compartments)
    "immune_phenotype": "phenotype",
}
#: Why a whole slide is not analysed with ``--compartments`` (as ``python -m core analyze`` refuses it).
SLIDE_COMPARTMENTS_REFUSED = ("--compartments works on fields (images up to the 100-megapixel field limit), not yet on "
                              "whole slides")
_ROLES = ("immune", "tumour", "stroma", "other")
_RESERVED_IDS = {"cohort.csv", STORE_FOLDER}

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class BatchInput:
    """One input of a batch.

    Attributes
    ----------
    path : Path
        The file, absolute.
    given : str
        The path as the user gave it (written to ``cohort.csv``).
    input_id : str
        Its folder name under the output folder (:func:`input_ids`).
    case : str
        Case label it is saved under in the case store.
    mpp : float or None
        Microns per pixel given for it (manifest column or ``--mpp``); None: the file's own.
    """

    path: Path
    given: str
    input_id: str
    case: str
    mpp: float | None = None


def _safe_stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = path.stem
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "input"
    stem = stem[:MAX_ID_CHARS]
    return f"_{stem}" if stem in _RESERVED_IDS else stem


def input_ids(paths: list[Path]) -> list[str]:
    """Stable folder names for absolute ``paths``: the safe stem, made unique with a path hash where stems collide.

    Parameters
    ----------
    paths : list of Path, absolute and distinct

    Returns
    -------
    list of str, one per path, distinct (compared case-insensitively, for case-insensitive file systems)
    """
    stems = [_safe_stem(p) for p in paths]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s.lower()] = seen.get(s.lower(), 0) + 1
    return [s if seen[s.lower()] == 1 else f"{s}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
            for s, p in zip(stems, paths)]


def _check_mpp(value: Any, where: str) -> float:
    from core.io import check_mpp

    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: mpp {value!r} is not a number; give the scanner's microns per pixel, e.g. 0.25") from None
    try:
        return check_mpp(mpp)
    except InputError as err:
        raise InputError(f"{where}: {err}") from err


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a manifest CSV: ``path`` (required), optional ``mpp`` and ``case``.

    Relative paths are taken relative to the manifest's folder. Empty ``mpp`` / ``case``
    cells mean "not given" (the file's mpp, the file stem as case label).

    Parameters
    ----------
    path : str or Path
        A comma-separated file with a header row (UTF-8, a byte-order mark is allowed).

    Returns
    -------
    list of dict
        ``{"path": Path, "given": str, "mpp": float or None, "case": str or None, "row": int}``.

    Raises
    ------
    InputError
        If the file is missing or unreadable, has no ``path`` column, no rows, an empty
        path, or an mpp that is not a plausible number of microns per pixel.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"manifest {str(p)!r} does not exist; give a CSV with a 'path' column (and optional mpp, case)")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"cannot read the manifest {p.name!r} as CSV: {err}") from err
    if "path" not in columns:
        raise InputError(f"manifest {p.name!r} has no 'path' column (columns: {', '.join(columns) or 'none'}); "
                         "the first row must name the columns, e.g. path,mpp,case")
    rows = []
    for k, row in enumerate(raw, start=2):
        row = {str(key).strip().lower(): (v or "").strip() for key, v in row.items() if key is not None}
        if not row.get("path"):
            raise InputError(f"manifest {p.name!r}, line {k}: the path is empty")
        file = Path(row["path"]).expanduser()
        mpp = _check_mpp(row["mpp"], f"manifest {p.name!r}, line {k}") if row.get("mpp") else None
        rows.append({"path": file if file.is_absolute() else p.parent / file, "given": row["path"], "mpp": mpp,
                     "case": row.get("case") or None, "row": k})
    if not rows:
        raise InputError(f"manifest {p.name!r} lists no inputs (only a header row)")
    return rows


def collect_inputs(
    paths: Iterable[str | Path] = (),
    manifest: str | Path | None = None,
    *,
    mpp: float | None = None,
    case_prefix: str = "",
) -> list[BatchInput]:
    """The inputs of a batch from paths (files, or folders of images and slides) or a manifest.

    Parameters
    ----------
    paths : iterable of str or Path
        Files, or folders whose files with :data:`INPUT_SUFFIXES` are taken (not recursively).
    manifest : str or Path, optional
        A manifest CSV (:func:`read_manifest`), instead of or besides ``paths``.
    mpp : float, optional
        Microns per pixel for every input without its own (manifest ``mpp``).
    case_prefix : str
        Put before the file stem to make the case label of inputs without a manifest ``case``.

    Returns
    -------
    list of BatchInput
        In the order given, with distinct ids (:func:`input_ids`).

    Raises
    ------
    InputError
        No inputs; missing files (the first few are named); a file listed twice; an empty
        folder; a case label longer than 200 characters or with control characters.
    """
    rows: list[dict[str, Any]] = []
    for given in paths:
        p = Path(given).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and _has_input_suffix(f))
            if not found:
                raise InputError(f"{given}: the folder holds no images or slides (looked for "
                                 f"{', '.join(sorted(INPUT_SUFFIXES))})")
            rows += [{"path": f, "given": str(f), "mpp": None, "case": None} for f in found]
        else:
            rows.append({"path": p, "given": str(given), "mpp": None, "case": None})
    if manifest is not None:
        rows += read_manifest(manifest)
    if not rows:
        raise InputError("no inputs: give image or slide files, folders of them, or --manifest CSV")
    missing = [r["given"] for r in rows if not Path(r["path"]).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"{len(missing)} input(s) not found: {', '.join(missing[:3])}{more}; check the paths "
                         "(manifest paths are relative to the manifest's folder)")
    absolute = [Path(os.path.abspath(r["path"])) for r in rows]
    seen: dict[Path, str] = {}
    for r, a in zip(rows, absolute):
        if a in seen:
            raise InputError(f"{r['given']} is listed twice (also as {seen[a]}); list each input once")
        seen[a] = r["given"]
    ids = input_ids(absolute)
    out = []
    for r, a, i in zip(rows, absolute, ids):
        case = _check_case(r["case"] if r["case"] else f"{case_prefix}{_label_stem(a)}")
        out.append(BatchInput(a, r["given"], i, case, r["mpp"] if r["mpp"] is not None else mpp))
    return out


def _label_stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _has_input_suffix(f: Path) -> bool:
    name = f.name.lower()
    return f.suffix.lower() in INPUT_SUFFIXES or name.endswith((".ome.tif", ".ome.tiff"))


def _check_case(label: str) -> str:
    from core.cli import CASE_LABEL_MAX_CHARS

    text = (label or "").strip()
    if not text:
        raise InputError("an input has an empty case label; fill the manifest's case column or leave it out")
    if len(text) > CASE_LABEL_MAX_CHARS:
        raise InputError(f"case label {text[:40]!r}... has {len(text)} characters; use at most {CASE_LABEL_MAX_CHARS}")
    if not text.isprintable():
        raise InputError(f"case label {text[:40]!r} holds control characters (e.g. a line break); retype it")
    return text


# --------------------------------------------------------------------------- the task (runs on a worker)

_MODELS: dict[tuple[str, str | None], Any] = {}


def _model(key: str, device: str | None):
    """The scenario's model, loaded once per worker process and kept for its next tasks."""
    if (key, device) not in _MODELS:
        from core.pipeline import load_model

        _MODELS[(key, device)] = load_model(key, device)
    return _MODELS[(key, device)]


def _file_state(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"input": str(path), "input_size_bytes": int(st.st_size), "input_mtime_ns": int(st.st_mtime_ns)}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def completed(folder: Path, task: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether ``folder`` holds the complete result of ``task``; else why it cannot be used (None: not there).

    Returns
    -------
    (True, None)
        Complete, for the same file (path, size, modification time), scenario, compartment
        scenario and mpp.
    (False, None)
        No such folder: the input is to be analysed.
    (False, reason)
        The folder exists but belongs to something else; ``reason`` says what to do.
    """
    if not folder.exists():
        return False, None
    marker = _read_json(folder / COMPLETE_MARKER)
    if marker is None or marker.get("schema") != MARKER_SCHEMA:
        return False, (f"{folder} exists but is not a completed batch result; move or delete it, or choose another "
                       "output folder")
    path = Path(task["path"])
    if marker.get("input") != str(path):
        return False, (f"{folder} holds the results of another input ({marker.get('input')}); rename one of the two "
                       "files or choose another output folder")
    if marker.get("scenario") != task["scenario"]:
        return False, (f"{folder} holds results of scenario {marker.get('scenario')!r}; choose another output folder "
                       f"to analyse with {task['scenario']!r}")
    if marker.get("compartments") != task.get("compartments"):
        was, now = marker.get("compartments") or "no compartment scenario", task.get("compartments") or "none"
        return False, (f"{folder} was analysed with {was}, now --compartments is {now}; choose another output folder, "
                       "or delete that folder to analyse the input again")
    if marker.get("mpp_given") != task.get("mpp"):
        return False, (f"{folder} was analysed with mpp {marker.get('mpp_given')}, now {task.get('mpp')} is given; "
                       "delete that folder to analyse the input again")
    try:
        now = _file_state(path)
    except OSError:
        now = {}
    if (now.get("input_size_bytes"), now.get("input_mtime_ns")) != (marker.get("input_size_bytes"),
                                                                      marker.get("input_mtime_ns")):
        return False, (f"{path.name} changed since {folder} was written (size or modification time differ); delete "
                       "that folder to analyse it again")
    return True, None


def _is_slide(path: Path) -> bool:
    """Whether :func:`core.slides.is_slide` takes ``path`` as a whole-slide image (False without core.slides)."""
    try:
        import core.slides as slides
    except ModuleNotFoundError as err:
        if err.name in ("core.slides", "core"):
            return False
        raise
    return bool(slides.is_slide(path))


def _maybe_crash(task: dict[str, Any], out_dir: Path) -> None:
    """Test-only fault injection (:data:`FAULT_ENV`): kill this worker process once for the named input."""
    spec = os.environ.get(FAULT_ENV, "")
    if spec != f"crash-once:{task['input_id']}":
        return
    flag = out_dir / f".fault-{task['input_id']}"
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(70)


def _analyse_field(task: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Analyse a field image into ``folder``; return its analysis record (JSON-ready)."""
    from core.io import load_image
    from core.outputs import records as rec
    from core.outputs.exports import build_exports, source_image_png, write_exports
    from core.pipeline import run_analysis

    image = load_image(task["path"], mpp=task.get("mpp"))
    comp = task.get("compartments")
    result = run_analysis(image, task["scenario"], model=_model(task["scenario"], task.get("device")),
                          outside_validated_use=bool(task.get("outside_validated_use")),
                          antigen_confirmed=task.get("antigen_confirmed"), compartments=comp,
                          compartments_model=_model(comp, task.get("device")) if comp else None)
    record = rec.record_from_result(result, case_label=task["case"])
    files = build_exports(result, record=record)
    names = list(files)
    first, rest = names[:1], names[1:]
    write_exports({n: files[n] for n in first}, folder)
    _maybe_crash(task, Path(task["out_dir"]))  # mid-write: a part of the files is on disk
    write_exports({n: files[n] for n in rest}, folder)
    from core.outputs.store import SOURCE_IMAGE

    (folder / STORE_FOLDER).mkdir()
    (folder / STORE_FOLDER / SOURCE_IMAGE).write_bytes(source_image_png(result))
    return record


def _analyse_slide(task: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Analyse a whole slide into ``folder`` (:func:`core.slides.analyze_slide`); return its record."""
    from core.outputs import records as rec
    from core.slides import analyze_slide

    if task.get("compartments"):  # refused up front by run_batch; a task sent otherwise fails with the reason
        raise InputError(f"{SLIDE_COMPARTMENTS_REFUSED}: analyse the slide in a batch without --compartments")
    # The finished tiles are kept in a folder of their own, so an attempt that dies with its
    # worker is resumed by the next one instead of starting the slide again.
    work = Path(task["out_dir"]) / f".{task['input_id']}.slide-work"
    summary = analyze_slide(task["path"], task["scenario"], folder, mpp=task.get("mpp"), device=task.get("device"),
                            model=_model(task["scenario"], task.get("device")),
                            outside_validated_use=bool(task.get("outside_validated_use")),
                            antigen_confirmed=task.get("antigen_confirmed"), work_dir=work)
    summary = json.loads(json.dumps(summary, default=rec.json_default))
    _maybe_crash(task, Path(task["out_dir"]))
    return {"summary": summary, "spatial": rec.as_dict(summary.get("spatial")), "case_label": task["case"],
            "created_at": summary.get("created_at"), "app_version": summary.get("app_version"),
            "params": {}, "regions": None, "corrections": None, "n_corrections": None,
            "model_card": rec.scenario_card(task["scenario"])}


def analyse_input(task: dict[str, Any]) -> dict[str, Any]:
    """Analyse one input of a batch into ``<out_dir>/<input_id>``, whole or not at all (a Dask task).

    Runs on a worker. A complete folder for the same input (:func:`completed`) is left as it
    is. Otherwise the input is analysed into a new temporary folder beside it, the
    completion marker is written last and the folder renamed into place; should another
    attempt have finished first, this attempt's folder is dropped. Bad input (a
    :class:`~core.errors.TILscopeError`, e.g. not an image, outside the validated use) and
    unreadable files are returned as failures; other exceptions propagate (the task is
    retried, then reported as failed).

    Parameters
    ----------
    task : dict
        ``path`` (str, absolute), ``input_id``, ``case``, ``mpp`` (float or None),
        ``scenario``, ``out_dir`` (str), ``device``, ``outside_validated_use`` (bool),
        ``antigen_confirmed`` (bool or None), ``compartments`` (a compartment scenario's key
        run beside ``scenario`` on a field, or None).

    Returns
    -------
    dict
        ``{"input_id", "status": "done" | "failed", "reason", "reused" (bool: found complete),
        "kind": "field" | "slide" | None, "seconds"}``.
    """
    start = time.perf_counter()
    out_dir = Path(task["out_dir"])
    final = out_dir / task["input_id"]
    base = {"input_id": task["input_id"], "reason": "", "reused": False, "kind": None}
    done, why = completed(final, task)
    if done:
        return {**base, "status": "done", "reused": True, "seconds": 0.0}
    if why:
        return {**base, "status": "failed", "reason": why, "seconds": 0.0}
    tmp = Path(tempfile.mkdtemp(prefix=f".{task['input_id']}.partial-", dir=out_dir))
    try:
        try:
            state = _file_state(Path(task["path"]))
            kind = "slide" if _is_slide(Path(task["path"])) else "field"
            record = _analyse_slide(task, tmp) if kind == "slide" else _analyse_field(task, tmp)
        except TILscopeError as err:
            return {**base, "status": "failed", "reason": _one_line(err), "seconds": time.perf_counter() - start}
        except OSError as err:
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            return {**base, "status": "failed", "reason": f"{where}{err.strerror or err}",
                    "seconds": time.perf_counter() - start}
        (tmp / STORE_FOLDER).mkdir(exist_ok=True)
        (tmp / STORE_FOLDER / "record.json").write_text(
            json.dumps(record, ensure_ascii=False, default=_json_default), encoding="utf-8")
        marker = {
            "schema": MARKER_SCHEMA, **state, "id": task["input_id"], "case": task["case"], "scenario": task["scenario"],
            "mpp_given": task.get("mpp"), "compartments": task.get("compartments"), "kind": kind,
            "token": uuid.uuid4().hex,
            "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - start, 3), "worker_pid": os.getpid(),
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if completed(final, task)[0]:  # another attempt of this task finished first
                return {**base, "status": "done", "reused": True, "kind": kind, "seconds": time.perf_counter() - start}
            raise
        tmp = None
        return {**base, "status": "done", "kind": kind, "seconds": time.perf_counter() - start}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _json_default(value: Any) -> Any:
    from core.outputs import records as rec

    return rec.json_default(value)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# --------------------------------------------------------------------------- the client side


@dataclass
class InputOutcome:
    """What became of one input: ``status`` ``done``, ``failed`` (``reason``) or ``skipped`` (done by an earlier run)."""

    input: BatchInput
    status: str
    reason: str = ""
    kind: str | None = None
    analysis_id: int | None = None
    seconds: float | None = None
    record: dict | None = None


@dataclass
class BatchResult:
    """The outcome of :func:`run_batch`: one :class:`InputOutcome` per input, in input order."""

    outcomes: list[InputOutcome]
    cohort_csv: Path
    dashboard_link: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def all_succeeded(self) -> bool:
        return all(o.status in ("done", "skipped") for o in self.outcomes)

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "skipped": 0, "failed": 0}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out


def default_n_workers() -> int:
    """Workers of the default LocalCluster: half the CPU cores (at least 1), at most one per 4 GiB of memory.

    On a 2-core machine: 1. Each worker runs one task at a time with one thread, so the
    other cores are left to PyTorch's and NumPy's own threads and to the client.
    """
    cores = os.cpu_count() or 1
    try:
        import psutil

        by_memory = int(psutil.virtual_memory().total // (DEFAULT_WORKER_MEMORY_GIB * 1024**3))
    except ImportError:  # psutil comes with distributed; without it the cores decide
        by_memory = cores
    return max(1, min(cores // 2, by_memory))


def open_client(scheduler: str | None = None, n_workers: int | None = None, memory_limit: str | float = "auto",
                dashboard_address: str | None = ":8787"):
    """A ``dask.distributed.Client``: to a running scheduler, or to a new ``LocalCluster``.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler, e.g. ``tcp://10.0.0.5:8786`` (``dask scheduler``;
        start workers with ``dask worker ADDRESS --nthreads 1`` from this repository's
        environment). None: a ``LocalCluster`` on this machine.
    n_workers : int, optional
        LocalCluster worker processes (one thread each); default :func:`default_n_workers`.
    memory_limit : str or float
        Memory limit of each LocalCluster worker (``"4GB"``, bytes, or ``"auto"``: the
        machine's memory divided by the workers). A worker above 95 % of it is restarted by
        its nanny, and its task given to another worker.
    dashboard_address : str or None
        Where the LocalCluster's dashboard listens (``":8787"``; ``":0"`` any free port).

    Returns
    -------
    distributed.Client
        Close it (and its cluster: ``client.cluster``) when done.

    Raises
    ------
    InputError
        The scheduler cannot be reached, or ``n_workers`` < 1.
    """
    logging.getLogger("distributed").setLevel(logging.WARNING)
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as err:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({_one_line(err)}); start one with "
                             "'dask scheduler', or leave out --scheduler to run on this machine") from err
    n = default_n_workers() if n_workers is None else int(n_workers)
    if n < 1:
        raise InputError(f"--workers must be at least 1, got {n}")
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                           dashboard_address=dashboard_address)
    return Client(cluster)


def _clean_partials(out_dir: Path, inputs: list[BatchInput]) -> None:
    for inp in inputs:
        for tmp in out_dir.glob(f".{_glob_escape(inp.input_id)}.partial-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _task(inp: BatchInput, scenario: str, out_dir: Path, device: str | None, outside_validated_use: bool,
          antigen_confirmed: bool | None, compartments: str | None = None) -> dict[str, Any]:
    return {"path": str(inp.path), "input_id": inp.input_id, "case": inp.case, "mpp": inp.mpp, "scenario": scenario,
            "out_dir": str(out_dir), "device": device, "outside_validated_use": outside_validated_use,
            "antigen_confirmed": antigen_confirmed, "compartments": compartments or None}


def check_compartments(scenario: str, compartments: str | None, inputs: Iterable[BatchInput]) -> None:
    """Refuse, before anything runs, a compartment scenario that cannot run beside ``scenario`` on these inputs.

    Parameters
    ----------
    scenario : str
        The batch's cell scenario key.
    compartments : str or None
        The ``--compartments`` key; None (or empty): nothing to check.
    inputs : iterable of BatchInput

    Raises
    ------
    UnknownScenarioError
        ``compartments`` is not registered (the message lists the known keys).
    InputError
        ``compartments`` is not a tissue-compartment scenario, or cannot run beside
        ``scenario`` (:func:`core.pipeline.compartment_scenario`); its model card does not
        read; or an input is a whole slide (:func:`core.slides.is_slide`): the message names
        the first few.
    """
    if not compartments:
        return
    from core.pipeline import compartment_scenario

    comp = compartment_scenario(compartments, scenario)
    comp.card()  # an edited model card is refused, as analyze refuses it (its intended use goes into the report)
    slides = [inp.given for inp in inputs if _is_slide(inp.path)]
    if slides:
        more = f" and {len(slides) - 3} more" if len(slides) > 3 else ""
        raise InputError(f"{SLIDE_COMPARTMENTS_REFUSED}, and {len(slides)} input(s) are whole slides: "
                         f"{', '.join(slides[:3])}{more}; analyse them in a batch without --compartments, or export "
                         "fields of them")


def _store_files(folder: Path, kind: str | None) -> tuple[dict[str, bytes], dict[str, bytes], list[str]]:
    """(export files, originals, notes) of a completed folder, as the case store takes them.

    A slide's ``cells.csv`` stays in the folder only: the Review page reviews fields (their
    image is kept as an original); the slide's cells are in ``cells.parquet``.
    """
    files, notes = {}, []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name in (COMPLETE_MARKER, STORED_MARKER):
            continue
        if kind == "slide" and f.name == "cells.csv":
            continue
        if f.stat().st_size > STORE_MAX_FILE_BYTES:
            notes.append(f"{f.name} ({f.stat().st_size / 1024**2:.0f} MiB) is kept in {folder}, not in the case store")
            continue
        files[f.name] = f.read_bytes()
    from core.outputs.store import SOURCE_IMAGE

    originals = {}
    source = folder / STORE_FOLDER / SOURCE_IMAGE
    if source.is_file():
        originals[SOURCE_IMAGE] = source.read_bytes()
    return files, originals, notes


def _save_in_store(store, folder: Path, inp: BatchInput, record: dict) -> int:
    """Save a completed folder's analysis in the case store once; return its analysis id."""
    marker = _read_json(folder / COMPLETE_MARKER) or {}
    token = marker.get("token")
    summary = record.get("summary") or {}
    sha = (summary.get("image") or {}).get("sha256") if isinstance(summary.get("image"), dict) else None
    if token:  # saved by an earlier run that stopped before writing its marker?
        for row in store.list_analyses(search=sha or inp.case, limit=200):
            if row["case_label"] == inp.case and row["scenario_key"] == summary.get("scenario"):
                if (store.get_analysis(row["id"]).get("params") or {}).get("batch", {}).get("token") == token:
                    return row["id"]
    files, originals, notes = _store_files(folder, marker.get("kind"))
    for n in notes:
        log.warning(n)
    params = dict(record.get("params") or {})
    params["batch"] = {"token": token, "input": str(inp.path), "outputs": str(folder)}
    return store.save_analysis(
        inp.case, summary, params=params, spatial=record.get("spatial"), regions=record.get("regions"),
        corrections=record.get("corrections"), n_corrections=record.get("n_corrections"),
        model_card=record.get("model_card"), app_version=record.get("app_version"), files=files, originals=originals,
    )


def run_batch(
    inputs: list[BatchInput],
    scenario: str,
    out_dir: str | Path,
    *,
    client=None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    memory_limit: str | float = "auto",
    dashboard_address: str | None = ":8787",
    device: str | None = None,
    store: Any = True,
    outside_validated_use: bool = False,
    antigen_confirmed: bool | None = None,
    echo: Callable[[str], None] | None = None,
    compartments: str | None = None,
) -> BatchResult:
    """Analyse every input with one scenario on a Dask cluster; write the folders, the case store and cohort.csv.

    Parameters
    ----------
    inputs : list of BatchInput
        From :func:`collect_inputs`.
    scenario : str
        Registry key, e.g. ``"cd3-ihc"``.
    out_dir : str or Path
        Output folder ``DIR`` (created if needed).
    client : distributed.Client, optional
        Use this client (left open). Otherwise one is opened with ``scheduler``,
        ``n_workers``, ``memory_limit``, ``dashboard_address`` (:func:`open_client`) and closed.
    device : str, optional
        ``"cpu"``, ``"cuda"`` or None (CUDA when the worker has it).
    store : bool or CaseStore
        True: save each analysis in the default case store; a
        :class:`~core.outputs.store.CaseStore`: in that one; False: do not save. Scenarios
        trained on synthetic images only are never saved (a note says so).
    outside_validated_use, antigen_confirmed
        As for :func:`core.pipeline.run_analysis` (field images).
    echo : callable(str), optional
        Receives one line per event (start, dashboard, each input's outcome).
    compartments : str, optional
        A tissue-compartment scenario (``"tissue-compartments"``) run beside ``scenario`` on
        every field (:func:`core.pipeline.run_analysis` ``compartments=``), its model loaded
        once per worker; checked with the inputs by :func:`check_compartments` before anything
        runs. An input folder completed with another (or no) compartment scenario is not
        taken as complete (:func:`completed`).

    Returns
    -------
    BatchResult
        Every input done, skipped (complete from an earlier run) or failed with a one-line reason.

    Raises
    ------
    UnknownScenarioError
        ``scenario`` or ``compartments`` is not registered (before anything runs).
    InputError
        ``out_dir`` cannot be a folder; the scheduler cannot be reached; ``compartments`` is
        not a compartment scenario for ``scenario``, or a slide is among the inputs
        (:func:`check_compartments`; before anything runs).
    StoreError
        The case store cannot be opened.
    """
    from core.io import check_output_folder
    from core.scenarios.registry import get_scenario

    say = echo or (lambda line: None)
    spec = get_scenario(scenario)
    check_compartments(scenario, compartments, inputs)
    out = check_output_folder(out_dir, ["cohort.csv"])
    out.mkdir(parents=True, exist_ok=True)
    out = Path(os.path.abspath(out))
    notes: list[str] = []
    own_store = store is True
    if store is not False and spec.trained_on_synthetic:
        notes.append(f"not saved in the case history: the {spec.title} model was trained on synthetic images only")
        if own_store:
            store = False
    if own_store and store is True:
        from core.outputs.store import CaseStore

        store = CaseStore()
    _clean_partials(out, inputs)
    outcomes: dict[str, InputOutcome] = {}
    todo: list[BatchInput] = []
    for inp in inputs:
        task = _task(inp, scenario, out, device, outside_validated_use, antigen_confirmed, compartments)
        done, why = completed(out / inp.input_id, task)
        if done:
            outcomes[inp.input_id] = InputOutcome(inp, "skipped", "complete from an earlier run")
        elif why:
            outcomes[inp.input_id] = InputOutcome(inp, "failed", why)
        else:
            todo.append(inp)
    n_total = len(inputs)
    finished = 0

    def settle(o: InputOutcome) -> None:
        nonlocal finished
        if o.status in ("done", "skipped"):
            _settle_store(o, out / o.input.input_id, store)
            o.record = _read_json(out / o.input.input_id / STORE_FOLDER / "record.json")
        finished += 1
        say(_progress_line(o, finished, n_total))

    own_client = client is None
    dashboard = None
    try:
        for o in list(outcomes.values()):
            settle(o)
        if todo:
            if own_client:
                client = open_client(scheduler, n_workers, memory_limit, dashboard_address)
            dashboard = getattr(client, "dashboard_link", None)
            n_workers_now = len(client.scheduler_info().get("workers", {}))
            say(f"Dask: {n_workers_now} worker(s); dashboard {dashboard}")
            from dask.distributed import as_completed

            futures = {}
            for inp in todo:
                fut = client.submit(analyse_input, _task(inp, scenario, out, device, outside_validated_use,
                                                         antigen_confirmed, compartments),
                                    key=f"tilscope-batch-{inp.input_id}-{uuid.uuid4().hex[:8]}", pure=False,
                                    retries=TASK_RETRIES)
                futures[fut] = inp
            for fut in as_completed(futures):
                inp = futures[fut]
                try:
                    res = fut.result()
                except Exception as err:  # the task raised after its retries, or its workers kept dying
                    o = InputOutcome(inp, "failed", _task_error(err))
                else:
                    o = InputOutcome(inp, res["status"], res.get("reason", ""), res.get("kind"), seconds=res.get("seconds"))
                outcomes[inp.input_id] = o
                settle(o)
                fut.release()
    finally:
        if own_client and client is not None:
            cluster = getattr(client, "cluster", None)
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(logging.ERROR)  # workers slow to stop are killed at the end: not news to the user
            try:
                client.close()
                if cluster is not None:
                    cluster.close()
            finally:
                nanny.setLevel(level)
        if own_store and store not in (True, False):
            store.close()
    _clean_partials(out, inputs)  # attempts that died with their worker; every task has finished now
    ordered = [outcomes[i.input_id] for i in inputs]
    cohort = write_cohort_csv(ordered, out / "cohort.csv", scenario, out)
    return BatchResult(ordered, cohort, dashboard, notes)


def _task_error(err: BaseException) -> str:
    name = type(err).__name__
    if name == "KilledWorker":
        return ("the workers running it died repeatedly (out of memory, or killed); give the workers more memory "
                "(--memory-limit) or use fewer of them (--workers)")
    return f"unexpected failure ({name}: {_one_line(err)}); please report it with the input"


def _settle_store(o: InputOutcome, folder: Path, store) -> None:
    """Save a completed input in the case store unless it is there already; fill ``analysis_id``."""
    stored = _read_json(folder / STORED_MARKER)
    if stored is not None:
        o.analysis_id = stored.get("analysis_id")
        return
    if store in (False, None, True):
        return
    record = _read_json(folder / STORE_FOLDER / "record.json")
    if record is None:
        o.status, o.reason = "failed", f"{folder} has no readable {STORE_FOLDER}/record.json; delete the folder and run again"
        return
    try:
        o.analysis_id = _save_in_store(store, folder, o.input, record)
    except TILscopeError as err:
        o.status, o.reason = "failed", f"analysed, but saving in the case history failed: {_one_line(err)}"
        return
    (folder / STORED_MARKER).write_text(json.dumps({"analysis_id": o.analysis_id, "case": o.input.case}), encoding="utf-8")


def _progress_line(o: InputOutcome, k: int, n: int) -> str:
    head = f"[{k}/{n}] {o.status:<7} {o.input.input_id}"
    if o.status == "failed":
        return f"{head}: {o.reason}"
    s = (o.record or {}).get("summary") or {}
    extra = f" ({s.get('n_cells')} cells" + (f", {o.seconds:.1f} s" if o.seconds else "") + ")" if s else ""
    saved = f", analysis {o.analysis_id} of case {o.input.case!r}" if o.analysis_id is not None else ""
    return f"{head}{extra}{saved}"


# --------------------------------------------------------------------------- cohort.csv


def _num(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):  # 6 significant digits: areas of a field are a few thousandths of a mm²
        return None if not math.isfinite(value) else float(f"{value:.6g}")
    return value


def cohort_row(o: InputOutcome, scenario: str, out_dir: Path | None = None) -> dict[str, Any]:
    """One ``cohort.csv`` row (:data:`COHORT_COLUMNS`) of an outcome; figures empty when not computed.

    Counts and densities by role come from the summary (``counts_by_role``,
    ``density_by_role_per_mm2``: cells/mm² of tissue); the spatial figures from
    :func:`core.outputs.key_figures.key_figures` of the record, so they read as on every
    page and report.
    """
    from core.outputs.key_figures import key_figures

    row: dict[str, Any] = {c: None for c in COHORT_COLUMNS}
    row.update(input=o.input.given, id=o.input.input_id, case=o.input.case, status=o.status, reason=o.reason or None,
               scenario=scenario, analysis_id=o.analysis_id)
    record = o.record
    if not record:
        return row
    s = record.get("summary") or {}
    marker = _read_json(out_dir / o.input.input_id / COMPLETE_MARKER) if out_dir else None
    row["kind"] = o.kind or (marker or {}).get("kind")
    row["mpp"] = s.get("mpp")
    row["n_cells"] = s.get("n_cells")
    counts = s.get("counts_by_role") or {}
    dens = s.get("density_by_role_per_mm2") or {}
    area = s.get("tissue_area_mm2", s.get("area_mm2"))
    for r in _ROLES:
        row[f"count_{r}"] = counts.get(r)
        d = dens.get(r)
        if d is None and counts.get(r) is not None and area:
            d = counts[r] / area
        row[f"density_{r}_per_mm2"] = _num(d)
    row["tissue_area_mm2"] = _num(area)
    figures = {f.key: f.value for f in key_figures(record)}
    for column, key in _KEY_FIGURE_COLUMNS.items():
        row[column] = _num(figures.get(key))
    row["outside_validated_use"] = "; ".join(s.get("outside_validated_use") or []) or None
    row["runtime_s"] = _num(s.get("runtime_s"))
    row["outputs"] = str(out_dir / o.input.input_id) if out_dir else None
    return row


def write_cohort_csv(outcomes: list[InputOutcome], path: Path, scenario: str, out_dir: Path | None = None) -> Path:
    """Write ``cohort.csv`` (one row per outcome, :data:`COHORT_COLUMNS`) whole or not at all; return its path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(COHORT_COLUMNS), lineterminator="\n")
            writer.writeheader()
            for o in outcomes:
                writer.writerow({k: ("" if v is None else v) for k, v in cohort_row(o, scenario, out_dir).items()})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path



# --------------------------------------------------------------------------- python -m core batch


def batch_command(args) -> int:
    """``python -m core batch``: check everything that can be refused, run, print, return the exit status.

    Parameters
    ----------
    args : argparse.Namespace
        ``inputs``, ``manifest``, ``scenario``, ``out``, ``scheduler``, ``workers``,
        ``memory_limit``, ``mpp``, ``case_prefix``, ``device``, ``outside_validated_use``,
        ``confirm_antigen``, ``no_store``, ``compartments`` (optional).

    Returns
    -------
    int
        0 every input done or skipped; :data:`EXIT_SOME_FAILED` (3) some failed.

    Raises
    ------
    TILscopeError
        Bad invocation (unknown scenario, a ``--compartments`` key that is no compartment
        scenario, a whole slide with ``--compartments``, missing files or manifest column, bad
        output folder, unreachable scheduler): the CLI prints it on one line and exits with 2.
    """
    from core.io import check_output_folder
    from core.scenarios.registry import get_scenario

    get_scenario(args.scenario)  # an unknown key lists the known ones, before anything else
    compartments = getattr(args, "compartments", None) or None
    check_compartments(args.scenario, compartments, ())  # a wrong key, before the inputs are read
    memory_limit = _memory_limit(args.memory_limit)
    check_output_folder(args.out, ["cohort.csv"])
    inputs = collect_inputs(args.inputs, args.manifest, mpp=args.mpp, case_prefix=args.case_prefix or "")
    check_compartments(args.scenario, compartments, inputs)  # slides, before the cluster starts
    with_comp = f" with compartments from {compartments}" if compartments else ""
    print(f"batch: {len(inputs)} input(s), scenario {args.scenario}{with_comp}, output {args.out}", flush=True)
    result = run_batch(
        inputs, args.scenario, args.out, scheduler=args.scheduler, n_workers=args.workers, memory_limit=memory_limit,
        device=args.device, store=not args.no_store, outside_validated_use=args.outside_validated_use,
        antigen_confirmed=True if args.confirm_antigen else None, echo=lambda line: print(line, flush=True),
        compartments=compartments,
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    c = result.counts()
    print(f"{c['done']} done, {c['skipped']} skipped (done before), {c['failed']} failed; wrote {result.cohort_csv}")
    return 0 if result.all_succeeded else EXIT_SOME_FAILED


def _memory_limit(text: str | None) -> str | int:
    if text is None or str(text).strip().lower() == "auto":
        return "auto"
    from dask.utils import parse_bytes

    try:
        value = parse_bytes(str(text))
    except (ValueError, TypeError):
        raise InputError(f"--memory-limit {text!r} is not an amount of memory; give e.g. 4GB, 3.5GiB or auto") from None
    if value < 256 * 1024**2:
        raise InputError(f"--memory-limit {text} is less than the 256 MB a worker needs to load a model; give e.g. 4GB")
    return int(value)
