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
