"""A whole-slide analysis in the case store: the same record and the same files whichever door it came in by.

The command line (``python -m core analyze SLIDE``, :mod:`core.slides.command`), the app's
Slides page (a worker job, :func:`core.slides.app_support.run_slide_job`) and batch runs
(:mod:`core.batch`) save a slide analysis as a field analysis is saved: one record under a
case (summary with counts, densities per mm² of tissue and spatial statistics; the model card
at the time of the run), owned by the user who ran it, with the output folder's files. The
files kept are those of :func:`core.batch._store_files`: every file of the output folder up to
:data:`core.batch.STORE_MAX_FILE_BYTES` each, but not ``cells.csv`` (the same cells are in
``cells.parquet``, half the size; the CSV stays in the output folder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from core.errors import InputError

__all__ = ["slide_record", "save_slide_analysis"]

log = logging.getLogger("tilscope.slides")


def slide_record(summary: dict[str, Any], case_label: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The analysis record of a slide run (the keys of :func:`core.outputs.records.record_from_result`).

    Parameters
    ----------
    summary : dict, what :func:`core.slides.run.analyze_slide` returns (or its ``summary.json``)
    case_label : str, the case it is saved under
    params : dict, optional, the run's settings worth keeping (e.g. the region of interest)

    Returns
    -------
    dict, JSON-ready: ``summary`` (with ``kind`` = "slide"), ``spatial`` (its spatial statistics),
    ``case_label``, ``created_at``, ``app_version``, ``params``, ``model_card`` and no regions
    or corrections.
    """
    from core.outputs import records as rec

    summary = json.loads(json.dumps(summary, default=rec.json_default))
    return {"summary": summary, "spatial": rec.as_dict(summary.get("spatial")), "case_label": case_label,
            "created_at": summary.get("created_at"), "app_version": summary.get("app_version"),
            "params": dict(params or {}), "regions": None, "corrections": None, "n_corrections": None,
            "model_card": rec.scenario_card(summary.get("scenario"))}


def save_slide_analysis(store, out_dir: str | Path, summary: dict[str, Any], case_label: str, *,
                        params: dict[str, Any] | None = None, created_by: str | None = None,
                        group: str | None = None) -> tuple[int, list[str]]:
    """Save a finished slide analysis (its record and its output folder's files) in the case store.

    Parameters
    ----------
    store : core.outputs.store.CaseStore, acting for the user who ran it
        (:meth:`~core.outputs.store.CaseStore.for_actor`), or unrestricted (command line)
    out_dir : path, the folder :func:`core.slides.run.analyze_slide` wrote
    summary : dict, its summary
    case_label : str, the case (created if new); blank: ``"unlabelled"``
    params : dict, optional, settings kept with the analysis
    created_by : str, optional, the user name (the store's actor wins when it has one)
    group : str, optional, the group a new case is shared with

    Returns
    -------
    analysis_id : int
    notes : list of str, files kept in the output folder only (too large for the store)

    Raises
    ------
    InputError
        The summary is not a slide analysis, the case label or user name is refused.
    core.auth.AccessError
        The store's user may not save (a viewer) or not into this case.
    StoreError
        The database cannot be written.
    """
    from core.batch import _store_files

    if not isinstance(summary, dict) or summary.get("kind") != "slide":
        raise InputError("not a whole-slide analysis summary (kind 'slide'); save field analyses with "
                         "core.pipeline.save_analysis")
    label = " ".join(str(case_label or "").split()) or "unlabelled"
    record = slide_record(summary, label, params)
    files, _originals, notes = _store_files(Path(out_dir), "slide")
    for note in notes:
        log.warning(note)
    analysis_id = store.save_analysis(
        label, record["summary"], params=record["params"], spatial=record["spatial"], regions=None,
        corrections=None, n_corrections=None, model_card=record["model_card"], app_version=record["app_version"],
        created_by=created_by, files=files, group=group,
    )
    return analysis_id, notes
