"""Write the exports of one analysis next to the CLI's other outputs (``analyze --report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.report import build_exports, write_exports

#: Files :func:`write_report_files` writes; ``core.analysis.write_outputs`` writes
#: cells.csv, summary.json and overlay.png itself.
REPORT_FILES = ("report.pdf", "cells.geojson")


def write_report_files(
    result: Any,
    out_dir: str | Path,
    case_label: str | None = None,
    *,
    regions: Any = None,
    corrections: Any = None,
    params: dict | None = None,
    model_card: dict | None = None,
    names: tuple[str, ...] = REPORT_FILES,
) -> dict[str, Path]:
    """Write ``report.pdf`` and ``cells.geojson`` of ``result`` into ``out_dir``.

    Parameters
    ----------
    result : core.results.AnalysisResult
        The analysis; spatial statistics are read from ``result.summary["spatial"]``.
    out_dir : str or Path
        Output folder (created if needed).
    case_label : str, optional
        Printed on the report.
    regions : list of core.regions.Region, optional
        Written to cells.geojson as annotations and listed in the report.
    corrections, params, model_card
        As for :func:`core.report.build_exports` (the model card defaults to the registry's).
    names : tuple of str
        Which of :data:`core.report.EXPORT_MEDIA_TYPES` to write.

    Returns
    -------
    dict of str to Path
        ``{file name: path written}``; cells.geojson is absent when mpp is unknown.
    """
    files = build_exports(
        result, regions=regions, corrections=corrections, params=params, model_card=model_card, case_label=case_label
    )
    chosen = {name: data for name, data in files.items() if name in names}
    return {path.name: path for path in write_exports(chosen, out_dir)}


def save_result(
    result: Any,
    case_label: str,
    store: Any = None,
    *,
    spatial: dict | None = None,
    regions: Any = None,
    corrections: Any = None,
    params: dict | None = None,
    model_card: dict | None = None,
) -> int:
    """Save an analysis with all its exports in the case store; return its id.

    The files saved are those of :func:`core.report.build_exports` (report.pdf,
    cells.csv, summary.json, overlay.png, cells.geojson when mpp is known). The
    numbers are saved first and the files in a second transaction, so the report
    carries the analysis id and the database's write lock is not held while the PDF
    is drawn; should drawing fail, the analysis and its numbers are kept.

    Parameters
    ----------
    result : core.results.AnalysisResult
        The finished analysis.
    case_label : str
        The case it belongs to (created if new).
    store : core.store.CaseStore, optional
        Default: a store on :func:`core.store.database_url`.
    spatial, regions, corrections, params, model_card
        As for :func:`core.report.record_from_result`; ``spatial`` defaults to
        ``result.summary["spatial"]``.

    Returns
    -------
    int
        The analysis id.

    Raises
    ------
    InputError
        If the case label is empty.
    StoreError
        If the database cannot be opened.
    """
    from core.report import EXPORT_MEDIA_TYPES, record_from_result
    from core.store import CaseStore

    own = store is None
    store = store or CaseStore()
    try:
        record = record_from_result(
            result, spatial=spatial, regions=regions, corrections=corrections, params=params,
            model_card=model_card, case_label=case_label,
        )
        analysis_id = store.save_analysis(
            case_label,
            record["summary"],
            params=record["params"],
            spatial=record["spatial"],
            regions=record["regions"],
            corrections=record["corrections"],
            n_corrections=record["n_corrections"],
            model_card=record["model_card"],
            app_version=record["app_version"],
        )
        record["analysis_id"] = analysis_id
        record["case_label"] = store.get_analysis(analysis_id)["case_label"]
        files = build_exports(result, regions=regions, record=record)
        store.add_files(analysis_id, files, EXPORT_MEDIA_TYPES)
        return analysis_id
    finally:
        if own:
            store.close()
