"""The cell table under review: the cell under a click, manual corrections replayed.

* :func:`nearest_cell` finds the cell under a click;
* :func:`reviewed_cells` replays the :class:`core.review.corrections.CorrectionLog` on the
  analysis's cells; :func:`reviewed_summary` and :func:`reviewed_result` carry the
  corrected counts and densities into the result's summary;
* :func:`correction_classes` lists the classes a cell can be added as or relabelled to
  (the scenario's, plus :data:`MANUAL_CLASSES` for roles it does not detect).

Coordinates: image pixels are (x, y) with x = column, origin at the top-left corner;
µm = image pixels × mpp.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterable

import numpy as np
import pandas as pd

from core.errors import InputError
from core.results import AnalysisResult
from core.review.corrections import CorrectionLog

#: Classes offered for hand-marked cells of roles the scenario does not detect
#: (name, role, colour, label); a CD3 model finds no tumour cells, but a pathologist can
#: mark some so that distances to tumour cells can be measured.
MANUAL_CLASSES = (
    ("tumour-cell", "tumour", "#1f5fbf", "Tumour cell (marked by hand)"),
    ("stromal-cell", "stroma", "#2e8b57", "Stromal cell (marked by hand)"),
    ("other-cell", "other", "#7f7f7f", "Other cell (marked by hand)"),
)


def nearest_cell(
    cells: pd.DataFrame, x: float, y: float, max_distance: float, units: str = "um"
) -> tuple[int, float] | None:
    """The cell nearest to a click, if it is close enough.

    Parameters
    ----------
    cells : pandas.DataFrame
        Cell table with ``cell_id`` (as :func:`reviewed_cells` returns) and ``x_um``,
        ``y_um`` (``units="um"``) or ``x_px``, ``y_px`` (``units="px"``).
    x, y : float
        The click, in ``units``.
    max_distance : float >= 0
        Search radius in ``units``; farther cells are not picked.
    units : {"um", "px"}
        µm (default) or image pixels (for images without an mpp).

    Returns
    -------
    (cell_id, distance) or None
        ``cell_id`` (int) of the nearest cell and its distance in ``units``, or None when
        no cell lies within ``max_distance``.

    Raises
    ------
    InputError
        If ``units`` is unknown, columns are missing or ``max_distance`` is negative.
    """
    if units not in ("um", "px"):
        raise InputError(f"units must be 'um' or 'px', got {units!r}")
    cx, cy = ("x_um", "y_um") if units == "um" else ("x_px", "y_px")
    missing = [c for c in ("cell_id", cx, cy) if c not in cells.columns]
    if missing:
        raise InputError(f"cell table is missing {missing}: pass the table reviewed_cells() returns")
    if not (math.isfinite(max_distance) and max_distance >= 0):
        raise InputError(f"max_distance must be a finite number >= 0, got {max_distance!r}")
    if len(cells) == 0:
        return None
    xy = cells[[cx, cy]].to_numpy(dtype=np.float64)
    d = np.hypot(xy[:, 0] - float(x), xy[:, 1] - float(y))
    d[~np.isfinite(d)] = np.inf
    i = int(np.argmin(d))
    if d[i] > max_distance:
        return None
    return int(cells["cell_id"].iloc[i]), float(d[i])


def reviewed_cells(result: AnalysisResult, log: CorrectionLog | None) -> pd.DataFrame:
    """The analysis's cell table with the manual corrections applied.

    Parameters
    ----------
    result : AnalysisResult
    log : CorrectionLog or None

    Returns
    -------
    pandas.DataFrame
        :meth:`CorrectionLog.apply` of ``result.cells``: deleted cells removed, added
        cells appended, plus ``cell_id`` (int64) and ``edited`` (``""``, ``"added"``,
        ``"relabelled"``). The original table is not modified.
    """
    return (log or CorrectionLog()).apply(result.cells)


def correction_classes(scenario_classes: Iterable[Any]) -> list[dict[str, str]]:
    """Classes a cell can be added as or relabelled to.

    Parameters
    ----------
    scenario_classes : iterable of core.scenarios.spec.CellClass
        The scenario's classes (``name``, ``role``, ``color``, ``label``).

    Returns
    -------
    list of dict
        ``{"name", "role", "color", "label"}``: the scenario's classes, then one
        :data:`MANUAL_CLASSES` entry for each role the scenario has no class for.
    """
    out = [{"name": c.name, "role": c.role, "color": c.color, "label": c.label} for c in scenario_classes]
    roles = {c["role"] for c in out}
    names = {c["name"] for c in out}
    for name, role, color, label in MANUAL_CLASSES:
        if role not in roles and name not in names:
            out.append({"name": name, "role": role, "color": color, "label": label})
    return out


def reviewed_summary(result: AnalysisResult, cells: pd.DataFrame, log: CorrectionLog | None) -> dict:
    """``result.summary`` with the counts and densities of the corrected ``cells``.

    Returns
    -------
    dict
        The summary of :func:`reviewed_result`: ``n_cells``, ``counts``, ``counts_by_role``,
        ``density_per_mm2`` and ``density_by_role_per_mm2`` of ``cells``; ``review`` = the
        correction log's summary plus ``detected_n_cells`` (before correction).
    """
    return replace(result, cells=cells, review=_review(result, log)).summary


def reviewed_result(result: AnalysisResult, log: CorrectionLog | None, spatial: Any = None) -> AnalysisResult:
    """A copy of ``result`` whose cells carry the manual corrections and whose ``review`` says which.

    ``spatial`` (a :class:`core.spatial.SpatialStats` or its dict), when given, becomes the
    result's statistics (what reports read). The image and dense outputs are shared with
    ``result``, not copied.
    """
    from core.spatial import SpatialStats

    cells = reviewed_cells(result, log)
    if isinstance(spatial, dict):
        spatial = SpatialStats.from_dict(spatial)
    return replace(result, cells=cells, review=_review(result, log),
                   spatial=result.spatial if spatial is None else spatial)


def _review(result: AnalysisResult, log: CorrectionLog | None) -> dict:
    return {**(log or CorrectionLog()).summary(), "detected_n_cells": int(len(result.cells))}
