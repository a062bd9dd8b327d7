"""Statistics of a review: spatial statistics of the corrected cells, and the key figures.

:func:`review_statistics` recomputes :func:`core.spatial.compute_spatial_stats` on the
corrected cells (:func:`core.review.cells.reviewed_cells`) with the image extent as the
study window (:func:`review_params`); :func:`key_figures` picks the numbers the page shows,
each with its unit and the threshold that produced it, and :func:`format_figure` writes
one as text. :func:`review_key` and :func:`state_fingerprint` tell when regions, edits or
statistics belong to another run or are out of date.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Iterable

import numpy as np

from core.outputs.key_figures import format_figure as outputs_format_figure
from core.outputs.key_figures import key_figures as select_key_figures
from core.results import AnalysisResult
from core.review.cells import reviewed_cells
from core.review.corrections import CorrectionLog
from core.spatial import SpatialParams, compute_spatial_stats
from core.spatial.regions import Region


def review_key(result: AnalysisResult) -> str:
    """Identity of an analysis run: image SHA-256, scenario and run time.

    Regions and corrections belong to one run; the page resets them when this changes.
    """
    return f"{result.image.sha256}|{result.scenario_key}|{result.summary.get('created_at', '')}"


def review_params(result: AnalysisResult, params: SpatialParams | None = None) -> SpatialParams:
    """``params`` with the study window set to the image extent in µm.

    Returns
    -------
    SpatialParams
        ``window_um = (0, 0, W·mpp, H·mpp)`` (x_min, y_min, x_max, y_max in µm, the
        analysed image's full extent); unchanged when the image has no mpp.
    """
    params = params or SpatialParams()
    mpp = result.image.mpp
    if mpp is None:
        return params
    h, w = result.image.shape
    return replace(params, window_um=(0.0, 0.0, float(w) * mpp, float(h) * mpp))


def review_statistics(
    result: AnalysisResult,
    log: CorrectionLog | None,
    regions: list[Region] | None,
    params: SpatialParams | None = None,
    seed: int = 0,
) -> dict:
    """Spatial statistics of the corrected cells within the drawn regions.

    Parameters
    ----------
    result : AnalysisResult
    log : CorrectionLog or None
    regions : list of Region or None
    params : SpatialParams, optional
        Its ``window_um`` is replaced by the image extent (:func:`review_params`).
    seed : int
        Seeds the Monte-Carlo envelopes (same seed, same envelopes).

    Returns
    -------
    dict
        :func:`core.spatial.compute_spatial_stats` output, plus ``corrections`` (the
        log's summary: n_added, n_deleted, n_relabelled, n_corrections, users, times).
    """
    cells = reviewed_cells(result, log)
    stats = compute_spatial_stats(cells, regions, review_params(result, params), seed=seed)
    stats["corrections"] = (log or CorrectionLog()).summary()
    return stats


def state_fingerprint(log: CorrectionLog | None, regions: Iterable[Region], params: SpatialParams) -> str:
    """A short hash of what the statistics depend on (active edits, regions, parameters)."""
    h = hashlib.sha256()
    edits = [] if log is None else [(e.op, e.cell_id, e.x_px, e.y_px, e.cell_class, e.role, e.undone) for e in log.edits]
    h.update(json.dumps(edits, default=str).encode())
    for r in regions:
        h.update(r.kind.encode())
        for ring in r.rings():
            h.update(np.ascontiguousarray(ring, dtype=np.float64).tobytes())
    h.update(json.dumps(params.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def key_figures(stats: dict) -> list[dict[str, Any]]:
    """The headline numbers of a review, each with its unit and the thresholds behind it.

    The selection is :func:`core.outputs.key_figures.key_figures` (the same figures the
    reports and the other pages show) of the corrected cells' statistics.

    Parameters
    ----------
    stats : dict
        :func:`review_statistics` (or :func:`core.spatial.compute_spatial_stats`) output.

    Returns
    -------
    list of dict
        ``{"label", "value" (float, int, str or None), "unit", "note"}``; ``note`` names
        the definition or threshold (e.g. "r = 20 µm") or why the value is missing.
    """
    return [{"label": f.measure[:1].upper() + f.measure[1:], "value": f.value, "unit": f.unit, "note": f.setting}
            for f in select_key_figures(stats)]


def format_figure(value: Any, unit: str) -> str:
    """A key figure as text (:func:`core.outputs.key_figures.format_figure`, without the unit)."""
    return outputs_format_figure(value, unit)
