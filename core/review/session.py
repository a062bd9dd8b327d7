"""A review in progress: the detections, the correction log and the regions, with the reviewed
cells and their counts kept up to date edit by edit.

:class:`ReviewSession` is what the Review page holds for one analysis (a fresh run or one
opened from the case store, :func:`core.review.saved.open_saved_analysis`). It never
modifies the detections: every edit goes into its :class:`~core.review.corrections.CorrectionLog`,
and only what the edit changed is recomputed:

* an edit (add, delete, relabel, undo) concerns one cell: that cell's row and the class and
  role counts it belongs to are updated in place (O(1) in the number of cells);
* :meth:`ReviewSession.live_statistics`, the figures that move with every edit (counts,
  densities, per-region figures, immune → tumour distances, intratumoral / stromal
  compartments, stromal TIL proxy, phenotype, Morisita-Horn: tens of milliseconds on a few
  thousand cells), is computed by the same section functions as
  :func:`core.spatial.compute_spatial_stats`, reusing the study window and the exclusion
  membership kept per region set;
* :meth:`ReviewSession.statistics`, the full spatial statistics (adding the invasive margin,
  whose border distances are rasterised, and the cross-K/L/G envelopes, about a second on a
  1 MP field), runs on demand and when the review is saved, cached until cells, regions or
  thresholds change.

Regions: those drawn (or imported) on the review. An analysis run with predicted tissue
compartments (:attr:`core.results.AnalysisResult.compartments`) keeps them while no region is
drawn: the live figures and the full statistics then take the predicted tumour and stroma, with
necrosis and background as exclusions, as :func:`core.pipeline.spatial_statistics` did when the
analysis ran (:meth:`ReviewSession.statistics_regions`); drawn regions override them.

:meth:`ReviewSession.reviewed_summary` and :meth:`ReviewSession.reviewed_result` give the
reviewed state to the exports and the case store; :meth:`ReviewSession.audit_events` lists
what changed since the last save, with who, when and why.

Coordinates: image pixels are (x, y) with x = column, origin at the top-left corner;
µm = image pixels × mpp. Cell ids: detections keep theirs (row position unless the table has
``cell_id``); cells added by hand get -1, -2, ...
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np
import pandas as pd

from core.cells import CELL_COLUMNS, ROLES
from core.errors import InputError
from core.results import AnalysisResult
from core.review.corrections import CorrectionLog, Edit
from core.spatial import SpatialParams, SpatialStats, compute_spatial_stats
from core.spatial.geometry import StudyWindow
from core.spatial.params import json_ready
from core.spatial.regions import Region, points_in_regions
from core.spatial.statistics import SCHEMA as SPATIAL_SCHEMA
from core.spatial.statistics import counts_section

__all__ = ["EditOutcome", "ReviewSession", "cell_name", "WINDOW_SOURCE", "HEAVY_SECTIONS"]

#: How the study window of a review is described (as :func:`core.spatial.compute_spatial_stats` writes it).
WINDOW_SOURCE = "SpatialParams.window_um (image extent)"
#: Sections of the spatial statistics left out of :meth:`ReviewSession.live_statistics` (too slow to follow every edit).
HEAVY_SECTIONS = ("invasive_margin", "ripley", "cross_g")
#: Summary keys derived from the cells; :meth:`ReviewSession.reviewed_summary` rewrites these and keeps every other key.
COUNT_KEYS = ("analysed_area", "area_mm2", "tissue_area_mm2", "n_cells", "counts", "counts_by_role", "density_per_mm2",
              "density_by_role_per_mm2", "density_ci95_per_mm2", "n_cells_in_tissue", "review", "spatial")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cell_name(cell_id: int) -> str:
    """How a cell is named to the user: ``"cell 152"`` for a detection, ``"hand-added cell 3"`` for id -3."""
    cid = int(cell_id)
    return f"cell {cid}" if cid >= 0 else f"hand-added cell {-cid}"


@dataclass(frozen=True)
class EditOutcome:
    """What one edit did, for the user.

    Attributes
    ----------
    kind : {"success", "info", "warning"}
        ``"success"`` when the cells changed; ``"info"`` / ``"warning"`` when nothing
        changed (already that class, no cell near the click).
    message : str
        A sentence saying what happened, e.g. "Deleted cell 152 (inflammatory), 1.2 µm
        from the click."
    cell_id : int or None
        The cell edited.
    """

    kind: str
    message: str
    cell_id: int | None = None

    @property
    def changed(self) -> bool:
        return self.kind == "success"


class ReviewSession:
    """One analysis under review: detections, correction log, regions and the reviewed cells.

    Parameters
    ----------
    result : AnalysisResult
        The analysis as detected (its ``cells`` are the detections; never modified).
    log : CorrectionLog, optional
        Corrections already made (e.g. saved with the analysis); replayed here.
    regions : list of Region, optional
        Regions in µm (need the image's mpp).
    analysis_id : int, optional
        The case store's id of the analysis, when saved.
    case_label : str, optional
    base_summary : dict, optional
        The summary to rebuild from (:meth:`reviewed_summary` keeps every key of it that
        is not derived from the cells); default ``result.summary``.
    notes : iterable of str
        What the user should know about how the analysis was opened.
    saved_by, saved_at : str, optional
        Who saved the review loaded here, and when (ISO 8601).

    Raises
    ------
    InputError
        If the detections have duplicate ``cell_id`` values, or the log refers to a cell
        that is not among them (a log saved with another analysis).

    Examples
    --------
    >>> s = ReviewSession(result)  # doctest: +SKIP
    >>> s.delete_at(120.0, 80.0, radius_px=10, user="Dr Ana Silva").message  # doctest: +SKIP
    'Deleted cell 12 (cd3-positive), 1.4 px from the click.'
    >>> s.live_statistics()["counts"]["by_role"]["immune"]  # doctest: +SKIP
    41
    """

    def __init__(
        self,
        result: AnalysisResult,
        log: CorrectionLog | None = None,
        regions: Iterable[Region] | None = None,
        *,
        analysis_id: int | None = None,
        case_label: str | None = None,
        base_summary: dict | None = None,
        notes: Iterable[str] = (),
        saved_by: str | None = None,
        saved_at: str | None = None,
    ) -> None:
        self.result = result
        self.log = log if log is not None else CorrectionLog()
        self.regions: list[Region] = list(regions or [])
        self.analysis_id = analysis_id
        self.case_label = case_label
        self.base_summary = dict(base_summary) if base_summary is not None else result.summary
        self.notes = list(notes)
        self.saved_by, self.saved_at = saved_by, saved_at
        self.version = 0  # bumped by every change of the cells
        self.regions_version = 0  # bumped by every change of the regions
        self.last_statistics_s: float | None = None  # seconds the last full statistics took
        self._stats_cache: tuple[Any, dict] | None = None
        self._live_cache: tuple[Any, dict] | None = None
        self._region_cache: tuple[int, Any] | None = None
        self._journal: list[tuple[str, Any]] = []  # what happened through this session since the last save, in order
        self._build()
        self.mark_saved()
        if self.mpp:
            try:
                getattr(result, "tissue_mask", None)  # measured once here; copies of the result share it
            except Exception:  # a result without a tissue measure: the image is the analysed area
                pass

    # ------------------------------------------------------------------ building

    @property
    def mpp(self) -> float | None:
        return self.result.image.mpp

    def _build(self) -> None:
        det = self.result.cells.reset_index(drop=True).copy()
        if "cell_id" not in det.columns:
            det["cell_id"] = np.arange(len(det), dtype=np.int64)
        det["cell_id"] = det["cell_id"].astype(np.int64)
        if det["cell_id"].duplicated().any():
            raise InputError("the cell table has duplicate cell_id values: ids must be unique")
        det["edited"] = pd.Series([""] * len(det), dtype=object)
        self._u = det
        self._col = {c: det.columns.get_loc(c) for c in det.columns}
        self._det_class = det["cell_class"].astype(str).to_numpy(dtype=object).copy()
        self._det_role = det["role"].astype(str).to_numpy(dtype=object).copy()
        self._n_det = len(det)
        self._alive = np.ones(len(det), dtype=bool)
        self._xy_px = det[["x_px", "y_px"]].to_numpy(dtype=np.float64).copy()
        self._xy_um = det[["x_um", "y_um"]].to_numpy(dtype=np.float64).copy()
        self._pos = {int(c): i for i, c in enumerate(det["cell_id"].to_numpy())}
        self._edits_of: dict[int, list[Edit]] = {}
        self._class_counts = Counter(self._det_class.tolist())
        self._role_counts = Counter(self._det_role.tolist())
        self._cells_cache: pd.DataFrame | None = None
        self._region_cache = None
        for e in self.log.edits:
            self._edits_of.setdefault(e.cell_id, []).append(e)
        unknown = sorted({cid for cid, es in self._edits_of.items()
                          if cid not in self._pos and not any(e.op == "add" for e in es)})
        if unknown:
            raise InputError(
                f"the corrections refer to cell(s) {unknown[:5]}, which are not in this analysis's cell table "
                "(was the log saved with another analysis?)"
            )
        for cid in self._edits_of:
            self._refresh(cid)
        self._sig = self._signature()
        self.version += 1

    def _signature(self) -> tuple:
        return id(self.log), len(self.log.edits), sum(e.undone for e in self.log.edits)

    def _sync(self) -> None:
        """Rebuild when the log was changed behind the session's back (e.g. by a test or a notebook)."""
        if self._signature() != self._sig:
            self._build()

    def _state(self, cid: int) -> tuple[bool, str, str, str, Edit | None]:
        """(alive, cell_class, role, edited, add edit) of one cell after its active edits."""
        if cid in self._pos and self._pos[cid] < self._n_det:
            i = self._pos[cid]
            alive, cls, role, edited = True, self._det_class[i], self._det_role[i], ""
        else:
            alive, cls, role, edited = False, "", "other", "added"
        add = None
        for e in self._edits_of.get(cid, ()):
            if e.undone:
                if e.op == "add":
                    add = add or e
                continue
            if e.op == "add":
                add, alive, cls, role, edited = e, True, str(e.cell_class), str(e.role), "added"
            elif e.op == "delete":
                alive = False
            else:
                cls, role = str(e.cell_class), str(e.role)
                if edited != "added":
                    edited = "relabelled"
        return alive, cls, role, edited, add

    def _refresh(self, cid: int) -> None:
        """Bring one cell's row and the counts up to date with its edits."""
        alive, cls, role, edited, add = self._state(cid)
        i = self._pos.get(cid)
        if i is None:
            if add is None:
                return
            i = self._append(add)
        if self._alive[i]:
            self._class_counts[self._u.iat[i, self._col["cell_class"]]] -= 1
            self._role_counts[self._u.iat[i, self._col["role"]]] -= 1
        if cls:
            self._u.iat[i, self._col["cell_class"]] = cls
            self._u.iat[i, self._col["role"]] = role
        if alive:
            self._class_counts[cls] += 1
            self._role_counts[role] += 1
        self._u.iat[i, self._col["edited"]] = edited
        self._alive[i] = alive
        self._cells_cache = None

    def _append(self, add: Edit) -> int:
        row = {c: np.nan for c in self._u.columns}
        row.update({
            "x_px": add.x_px, "y_px": add.y_px,
            "x_um": np.nan if add.x_um is None else add.x_um, "y_um": np.nan if add.y_um is None else add.y_um,
            "cell_class": add.cell_class, "role": add.role, "probability": 1.0, "cell_id": add.cell_id, "edited": "added",
        })
        extra = pd.DataFrame([row], columns=self._u.columns)
        dtypes = self._u.dtypes
        self._u = pd.concat([self._u, extra], ignore_index=True)
        for c in ("cell_class", "role", "edited"):
            self._u[c] = self._u[c].astype(object)
        self._u["cell_id"] = self._u["cell_id"].astype(np.int64)
        for c in ("x_px", "y_px", "x_um", "y_um", "probability"):
            if c in dtypes and dtypes[c] != self._u[c].dtype:
                self._u[c] = self._u[c].astype(np.float64)
        self._col = {c: self._u.columns.get_loc(c) for c in self._u.columns}
        i = len(self._u) - 1
        self._pos[int(add.cell_id)] = i
        self._alive = np.append(self._alive, False)
        self._xy_px = np.vstack([self._xy_px, [[float(add.x_px), float(add.y_px)]]])
        self._xy_um = np.vstack([self._xy_um, [[np.nan if add.x_um is None else add.x_um,
                                                np.nan if add.y_um is None else add.y_um]]])
        if self._region_cache is not None:  # exclusion membership of the new row
            version, (window, excl) = self._region_cache
            excludes = [r for r in self.statistics_regions() if r.kind == "exclude"]
            inside = bool(points_in_regions(self._xy_um[-1:], excludes)[0]) if excludes and np.isfinite(
                self._xy_um[-1]).all() else False
            self._region_cache = (version, (window, np.append(excl, inside)))
        return i

    def _after_edit(self, cid: int, edit: Edit | None = None, undone: Edit | None = None) -> None:
        if edit is not None:
            self._edits_of.setdefault(cid, []).append(edit)
            self._journal.append(("edit", edit))
        if undone is not None:
            self._journal.append(("undo", undone))
        self._refresh(cid)
        self._sig = self._signature()
        self.version += 1

    # ------------------------------------------------------------------ reading

    def cells(self) -> pd.DataFrame:
        """The reviewed cell table.

        Returns
        -------
        pandas.DataFrame
            What :meth:`CorrectionLog.apply` gives for the detections: deleted cells
            removed, relabelled cells with their new class and role, added cells
            appended (``probability`` 1.0), plus ``cell_id`` (int64) and ``edited``
            (``""``, ``"added"``, ``"relabelled"``); :data:`core.cells.CELL_COLUMNS`
            first. A new table each version (callers may modify it).
        """
        self._sync()
        if self._cells_cache is None:
            out = self._u.loc[self._alive].reset_index(drop=True)
            cols = [c for c in CELL_COLUMNS if c in out.columns] + [c for c in out.columns if c not in CELL_COLUMNS]
            self._cells_cache = out[cols]
        return self._cells_cache.copy()

    def class_counts(self) -> dict[str, int]:
        """Reviewed cells per class (the scenario's classes first, zero included, then others sorted)."""
        self._sync()
        out = {c.name: int(self._class_counts.get(c.name, 0)) for c in self.result.scenario.classes}
        for extra in sorted(k for k, v in self._class_counts.items() if v > 0 and k not in out):
            out[str(extra)] = int(self._class_counts[extra])
        return out

    def role_counts(self) -> dict[str, int]:
        """Reviewed cells per role (:data:`core.cells.ROLES`)."""
        self._sync()
        return {r: int(self._role_counts.get(r, 0)) for r in ROLES}

    def deleted_xy_px(self) -> np.ndarray:
        """(N, 2) float64 image pixels of detections deleted by hand."""
        self._sync()
        gone = ~self._alive[: self._n_det]
        return self._xy_px[: self._n_det][gone]

    def nearest(self, x_px: float, y_px: float, radius_px: float) -> tuple[int, float] | None:
        """The reviewed cell nearest to (x_px, y_px) within ``radius_px`` image pixels.

        Returns
        -------
        (cell_id, distance_px) or None
        """
        self._sync()
        if not (np.isfinite(radius_px) and radius_px >= 0):
            raise InputError(f"the pick radius must be a finite number >= 0 pixels, got {radius_px!r}")
        idx = np.flatnonzero(self._alive)
        if not len(idx):
            return None
        d = np.hypot(self._xy_px[idx, 0] - float(x_px), self._xy_px[idx, 1] - float(y_px))
        d[~np.isfinite(d)] = np.inf
        k = int(np.argmin(d))
        if d[k] > radius_px:
            return None
        return int(self._u.iat[idx[k], self._col["cell_id"]]), float(d[k])

    def cell(self, cell_id: int) -> dict[str, Any]:
        """One cell's current row (``x_px``, ``y_px``, ``cell_class``, ``role``, ``edited``, ...) as a dict."""
        self._sync()
        i = self._pos.get(int(cell_id))
        if i is None:
            raise InputError(f"{cell_name(cell_id)} is not in this analysis")
        return dict(self._u.iloc[i])

    # ------------------------------------------------------------------ editing

    def _distance_text(self, d_px: float) -> str:
        return f"{d_px * self.mpp:.1f} µm" if self.mpp else f"{d_px:.1f} px"

    def add_at(self, x_px: float, y_px: float, cell_class: str, role: str, *, user: str, label: str | None = None,
               comment: str | None = None) -> EditOutcome:
        """Add a cell the detector missed at (x_px, y_px) image pixels.

        Raises
        ------
        InputError
            If the position is outside the image or not finite, or the role is unknown.
        """
        h, w = self.result.image.shape
        if not (np.isfinite(x_px) and np.isfinite(y_px) and 0 <= x_px < w and 0 <= y_px < h):
            raise InputError(f"the position ({x_px!r}, {y_px!r}) px is outside the {w} x {h} px image: click on the image")
        self._sync()
        cid = self.log.add_cell(x_px, y_px, cell_class, role, self.mpp, user=user, comment=comment)
        self._after_edit(cid, self.log.edits[-1])
        return EditOutcome("success", f"Added {cell_name(cid)} ({label or cell_class}) at x {x_px:.0f}, y {y_px:.0f} px.",
                           cid)

    def delete_at(self, x_px: float, y_px: float, radius_px: float, *, user: str,
                  comment: str | None = None) -> EditOutcome:
        """Delete the cell nearest to the click within ``radius_px`` image pixels."""
        hit = self.nearest(x_px, y_px, radius_px)
        if hit is None:
            return EditOutcome("warning", f"No cell within {self._distance_text(radius_px)} of the click: nothing deleted. "
                                          "Click on a marker (zoom in to pick among close cells).")
        cid, d = hit
        row = self.cell(cid)
        self.log.delete_cell(cid, user=user, comment=comment, from_class=str(row["cell_class"]), from_role=str(row["role"]))
        self._after_edit(cid, self.log.edits[-1])
        return EditOutcome("success", f"Deleted {cell_name(cid)} ({row['cell_class']}), {self._distance_text(d)} "
                                      "from the click.", cid)

    def relabel_at(self, x_px: float, y_px: float, radius_px: float, cell_class: str, role: str, *, user: str,
                   label: str | None = None, comment: str | None = None) -> EditOutcome:
        """Give the cell nearest to the click (within ``radius_px`` image pixels) a new class and role."""
        hit = self.nearest(x_px, y_px, radius_px)
        if hit is None:
            return EditOutcome("warning", f"No cell within {self._distance_text(radius_px)} of the click: nothing relabelled. "
                                          "Click on a marker (zoom in to pick among close cells).")
        cid, _ = hit
        row = self.cell(cid)
        if row["cell_class"] == cell_class:
            return EditOutcome("info", f"{cell_name(cid).capitalize()} is already {label or cell_class}: choose another "
                                       "class to relabel it.", cid)
        self.log.relabel_cell(cid, cell_class, role, user=user, comment=comment, from_class=str(row["cell_class"]),
                              from_role=str(row["role"]))
        self._after_edit(cid, self.log.edits[-1])
        return EditOutcome("success", f"Relabelled {cell_name(cid)}: {row['cell_class']} → {cell_class}.", cid)

    def undo(self, *, user: str) -> EditOutcome:
        """Undo the latest active edit (it stays in the log, marked undone)."""
        self._sync()
        e = self.log.undo(user=user)
        if e is None:
            return EditOutcome("info", "Nothing to undo.")
        self._after_edit(e.cell_id, undone=e)
        what = {"add": "the addition of", "delete": "the deletion of", "relabel": "the relabelling of"}[e.op]
        extra = f" ({e.from_class} → {e.cell_class})" if e.op == "relabel" and e.from_class else ""
        return EditOutcome("success", f"Undone: {what} {cell_name(e.cell_id)}{extra}.", e.cell_id)

    # ------------------------------------------------------------------ regions

    def add_regions(self, new: Iterable[Region], *, user: str) -> list[Region]:
        """Add regions (µm); returns them. Each is recorded for the audit log."""
        new = list(new)
        for r in new:
            if not isinstance(r, Region):
                raise InputError(f"regions must be core.spatial.regions.Region objects, got {type(r).__name__}")
            self.regions.append(r)
            self._journal.append(("region", _region_event("region added", r, user)))
        if new:
            self._regions_changed()
        return new

    def remove_region(self, index: int, *, user: str) -> Region:
        """Remove the region at ``index`` of :attr:`regions`; returns it.

        Raises
        ------
        InputError
            If there is no region at that index.
        """
        if not 0 <= int(index) < len(self.regions):
            raise InputError(f"there is no region number {index + 1}: {len(self.regions)} region(s) drawn")
        r = self.regions.pop(int(index))
        self._journal.append(("region", _region_event("region removed", r, user)))
        self._regions_changed()
        return r

    def _regions_changed(self) -> None:
        self.regions_version += 1
        self._region_cache = None

    @property
    def uses_predicted_compartments(self) -> bool:
        """True when the statistics take the analysis's predicted tissue compartments (no region drawn, mpp known)."""
        return not self.regions and getattr(self.result, "compartments", None) is not None and bool(self.mpp)

    def statistics_regions(self) -> list[Region]:
        """The regions the statistics use: those drawn, else the predicted compartments' regions, else none.

        Returns
        -------
        list of Region
            :attr:`regions` when any is drawn; otherwise, for an analysis with predicted
            compartments and an mpp, their tumour and stroma regions and their necrosis and
            background as ``exclude`` regions (µm;
            :meth:`core.scenarios.compartments.CompartmentMap.regions`, traced once per map);
            otherwise an empty list.
        """
        if self.uses_predicted_compartments:
            return self.result.compartments.regions()
        return list(self.regions)

    def _region_state(self) -> tuple[StudyWindow | None, np.ndarray]:
        """(study window, exclusion membership of every row of the cell universe), per region set."""
        if self._region_cache is not None and self._region_cache[0] == self.regions_version:
            return self._region_cache[1]
        excludes = [r for r in self.statistics_regions() if r.kind == "exclude"]
        window = None
        if self.mpp:
            h, w = self.result.image.shape
            window = StudyWindow((0.0, 0.0, float(w) * self.mpp, float(h) * self.mpp), WINDOW_SOURCE, excludes)
        excl = np.zeros(len(self._u), dtype=bool)
        finite = np.isfinite(self._xy_um).all(axis=1)
        if excludes and finite.any():
            excl[finite] = points_in_regions(self._xy_um[finite], excludes)
        self._region_cache = (self.regions_version, (window, excl))
        return window, excl

    # ------------------------------------------------------------------ statistics

    def params(self, params: SpatialParams | None = None) -> SpatialParams:
        """``params`` with the study window set to the image extent in µm (unchanged without an mpp)."""
        params = params or SpatialParams()
        if not self.mpp:
            return params
        h, w = self.result.image.shape
        return replace(params, window_um=(0.0, 0.0, float(w) * self.mpp, float(h) * self.mpp))

    def fingerprint(self, params: SpatialParams | None = None) -> str:
        """A short hash of what the statistics depend on (cells, regions, thresholds)."""
        h = hashlib.sha256()
        h.update(f"{id(self)}|{self.version}|{self.regions_version}".encode())
        h.update(json.dumps(self.params(params).to_dict(), sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    def live_statistics(self, params: SpatialParams | None = None) -> dict:
        """The figures that change with every edit, without the heavy statistics.

        Parameters
        ----------
        params : SpatialParams, optional
            Only its thresholds are recorded; the study window is the image extent.

        Returns
        -------
        dict
            The sections of :func:`core.spatial.compute_spatial_stats` for the reviewed
            cells that are cheap to compute, equal to its own: ``schema``, ``available``,
            ``params``, ``units``, ``window``, ``counts``, ``regions``, ``distances``,
            ``compartments``, ``stromal_til_proxy``, ``phenotype``, ``morisita_horn``,
            ``immune_class_distances``, ``warnings``; plus ``corrections`` (the log's summary) and ``live`` = True.
            Not here (see :data:`HEAVY_SECTIONS` and :meth:`statistics`):
            ``invasive_margin``, ``ripley``, ``cross_g``. Without an mpp: ``available``
            False with the reason and ``counts.n_cells``.
        """
        self._sync()
        p = self.params(params)
        key = (self.version, self.regions_version, json.dumps(p.to_dict(), sort_keys=True, default=str))
        if self._live_cache is not None and self._live_cache[0] == key:
            return copy.deepcopy(self._live_cache[1])
        from core.spatial.compartments import compartment_sections, regions_section
        from core.spatial.class_distances import class_distances_section
        from core.spatial.point_processes import distances_section, morisita_section

        base = {"schema": SPATIAL_SCHEMA, "params": p.to_dict(),
                "units": {"distance": "µm", "area": "mm²", "density": "cells/mm²"}}
        alive = self._alive
        n_table = int(alive.sum())
        corrections = self.log.summary()
        xy_all = self._xy_um[alive]
        finite = np.isfinite(xy_all).all(axis=1)
        if n_table and not finite.any():
            out = {**base, "available": False,
                   "reason": "spatial statistics need µm coordinates, but the image has no mpp: enter the scanner's "
                             "microns per pixel and analyse again",
                   "counts": {"n_cells": n_table}, "corrections": corrections, "live": True}
            self._live_cache = (key, json_ready(out))
            return copy.deepcopy(self._live_cache[1])
        window, excl_all = self._region_state()
        in_excl = excl_all[alive] & finite
        keep = finite & ~in_excl
        xy = xy_all[keep]
        role = self._u["role"].to_numpy(dtype=object)[alive][keep].astype(str)
        cls = self._u["cell_class"].to_numpy(dtype=object)[alive][keep].astype(str)
        out: dict[str, Any] = {**base, "available": True}
        out["window"] = {
            "source": WINDOW_SOURCE, "rect_um": list(window.rect), "area_mm2": window.area_um2 / 1e6,
            "excluded_area_mm2": window.excluded_area_um2 / 1e6, "area_method": window.area_method,
        } if window is not None else {"available": False, "reason": "no study window"}
        if window is not None:
            x0, y0, x1, y1 = window.rect
            in_win = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        else:
            in_win = np.zeros(len(xy), dtype=bool)
        out["counts"] = counts_section(n_table, role, cls, in_excl, finite, window, in_win)
        imm, tum = role == "immune", role == "tumour"
        regions = self.statistics_regions()
        out["regions"] = regions_section(xy, role, regions)
        out["distances"] = distances_section(xy, imm, tum, p)
        out["compartments"], out["stromal_til_proxy"], out["phenotype"] = compartment_sections(
            xy, role, imm, regions, window, in_win, p)
        out["morisita_horn"] = morisita_section(xy, role, imm, tum, in_win, window, p)
        out["immune_class_distances"] = class_distances_section(xy, role, cls, p)
        n_without = int((~finite).sum())
        out["warnings"] = [f"{n_without} cell(s) without µm coordinates were left out"] if n_without else []
        out["corrections"] = corrections
        out["live"] = True
        self._live_cache = (key, json_ready(out))
        return copy.deepcopy(self._live_cache[1])

    def statistics(self, params: SpatialParams | None = None, seed: int = 0) -> dict:
        """Full spatial statistics of the reviewed cells in the regions (cached until something changes).

        Returns
        -------
        dict
            :func:`core.spatial.compute_spatial_stats` of :meth:`cells` in the drawn
            :attr:`regions` with the image extent as study window, plus ``corrections`` (the
            log's summary). With no region drawn and predicted compartments
            (:attr:`uses_predicted_compartments`): :func:`core.pipeline.spatial_statistics` of
            the reviewed cells, i.e. the predicted regions, the invasive margin measured on the
            label map and ``predicted_compartments`` (stromal TILs by the TILs Working Group's
            definition), as when the analysis ran.
        """
        self._sync()
        key = (self.fingerprint(params), seed)
        if self._stats_cache is not None and self._stats_cache[0] == key:
            return copy.deepcopy(self._stats_cache[1])
        t0 = time.perf_counter()
        if self.uses_predicted_compartments:  # as when the analysis ran: margin on the map, stromal TILs (TILs WG)
            from core.pipeline import spatial_statistics

            reviewed = replace(self.result, cells=self.cells(), regions=[], spatial=None, review=None)
            stats = spatial_statistics(reviewed, params=self.params(params), seed=seed).to_dict()
        else:
            stats = compute_spatial_stats(self.cells(), self.regions, self.params(params), seed=seed)
        stats["corrections"] = self.log.summary()
        self.last_statistics_s = time.perf_counter() - t0
        self._stats_cache = (key, stats)
        return copy.deepcopy(stats)

    def statistics_if_current(self, params: SpatialParams | None = None, seed: int = 0) -> dict | None:
        """The full statistics if they were computed for the current cells, regions and thresholds, else None."""
        self._sync()
        if self._stats_cache is not None and self._stats_cache[0] == (self.fingerprint(params), seed):
            return copy.deepcopy(self._stats_cache[1])
        return None

    def last_statistics(self) -> dict | None:
        """The statistics computed last (possibly before the latest edits), or None."""
        return None if self._stats_cache is None else copy.deepcopy(self._stats_cache[1])

    # ------------------------------------------------------------------ the reviewed state

    def review_info(self, user: str | None = None, time_iso: str | None = None) -> dict:
        """The ``review`` entry of the reviewed summary.

        Returns
        -------
        dict
            The log's summary (``n_added``, ``n_deleted``, ``n_relabelled``,
            ``n_corrections``, ``n_edits``, ``n_undone``, ``users``, ``first_time``,
            ``last_time``) plus ``detected_n_cells`` (before review),
            ``n_cells_in_exclusions``, ``regions`` (count per kind), ``reviewed_by`` and
            ``reviewed_at`` (ISO 8601, UTC).
        """
        live = self.live_statistics()
        kinds = Counter(r.kind for r in self.regions)
        return {
            **self.log.summary(),
            "detected_n_cells": int(self._n_det),
            "n_cells_in_exclusions": int((live.get("counts") or {}).get("n_excluded_by_regions") or 0),
            "regions": dict(sorted(kinds.items())),
            "reviewed_by": user if user is not None else self.saved_by,
            "reviewed_at": time_iso if time_iso is not None else self.saved_at,
        }

    def _reviewed_base(self) -> tuple[AnalysisResult, bool]:
        """(the analysis in its reviewed state without statistics or review entry, whether its
        analysed area already leaves the exclusions out), cached per version of cells and regions."""
        key = (self.version, self.regions_version)
        cached = getattr(self, "_base_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        cells = self.cells()
        _, excl_all = self._region_state()
        excludes = [r for r in self.regions if r.kind == "exclude"]
        used = cells.loc[~excl_all[self._alive]].reset_index(drop=True) if excludes else cells
        changes: dict[str, Any] = {"cells": used, "regions": list(self.regions), "review": None, "spatial": None}
        trimmed = self._tissue_minus(excludes) if excludes and self.mpp else None
        if trimmed is not None:
            changes["tissue"] = trimmed
        base = replace(self.result, **changes)
        if getattr(base, "compartments", None) is not None:  # hand-added cells get the compartment under them too
            from core.pipeline import attach_compartments

            attach_compartments(base, base.compartments, base.compartments_run)
            base.tissue = trimmed if trimmed is not None else self.result.tissue
        self._base_cache = (key, (base, trimmed is not None or not excludes))
        return base, trimmed is not None or not excludes

    def _tissue_minus(self, excludes: list[Region]) -> Any:
        """The result's tissue mask with the exclusion regions cut out, or None if the result has no tissue mask."""
        import dataclasses

        try:
            tissue = getattr(self.result, "tissue_mask", None)
        except Exception:  # a result that cannot measure its tissue: the image is the analysed area
            return None
        if tissue is None or not dataclasses.is_dataclass(tissue) or not hasattr(tissue, "mask") \
                or "tissue" not in {f.name for f in dataclasses.fields(self.result)}:
            return None
        from PIL import Image, ImageDraw

        mask = np.asarray(tissue.mask, dtype=bool)
        canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
        draw = ImageDraw.Draw(canvas)
        step = float(tissue.scale) * float(self.mpp)  # µm per mask pixel
        for r in excludes:
            draw.polygon([(x / step - 0.5, y / step - 0.5) for x, y in np.asarray(r.polygon_um).tolist()], fill=1)
        cut = mask & np.asarray(canvas, dtype=bool)
        cut_mm2 = float(cut.sum()) * step**2 / 1e6
        return dataclasses.replace(tissue, mask=mask & ~cut, method=(
            f"{tissue.method}; minus {len(excludes)} exclusion region(s) ({cut_mm2:.4f} mm² of tissue)"))

    def reviewed_summary(self, stats: dict | None = None, *, user: str | None = None,
                         time_iso: str | None = None) -> dict:
        """The analysis's summary with the reviewed counts and densities, every other key kept.

        The derived keys (:data:`COUNT_KEYS`) are those :attr:`core.results.AnalysisResult.summary`
        gives for the reviewed state (:meth:`reviewed_result`), so a reviewed analysis reads
        like any other: cells inside exclusion regions are left out (as the spatial
        statistics leave them out) and the exclusions are cut out of the analysed area (the
        tissue, glass excluded; the image for results without a tissue measure), the
        densities' denominator.

        Parameters
        ----------
        stats : dict, optional
            The reviewed spatial statistics (:meth:`statistics`); stored as ``spatial``.
        user, time_iso : str, optional
            The reviewer and the time of the review (ISO 8601).

        Returns
        -------
        dict
            ``base_summary`` with :data:`COUNT_KEYS` rewritten: ``analysed_area`` (what the
            densities are over, "...; minus k exclusion region(s)" when there are any),
            ``area_mm2`` (mm², None without an mpp), ``n_cells``, ``counts`` (per class),
            ``counts_by_role``, ``density_per_mm2``, ``density_by_role_per_mm2`` and
            ``density_ci95_per_mm2`` (cells/mm², None without an mpp), ``review``
            (:meth:`review_info`) and ``spatial``. Keys such as ``outside_validated_use``,
            ``warnings`` or the run's metadata are kept as they were.
        """
        self._sync()
        summary = json.loads(json.dumps(self.base_summary, default=_json_default))
        base, area_done = self._reviewed_base()
        fresh = json.loads(json.dumps(base.summary, default=_json_default))
        for k in COUNT_KEYS:
            if k in fresh:
                summary[k] = fresh[k]
        excludes = [r for r in self.regions if r.kind == "exclude"]
        area = fresh.get("area_mm2")
        if excludes and area and not area_done:  # no tissue mask: cut the exclusions out of the image
            window, _ = self._region_state()
            cut_mm2 = window.excluded_area_um2 / 1e6 if window is not None else 0.0
            area = max(float(area) - cut_mm2, 0.0) or None
            summary["analysed_area"] = (f"{fresh.get('analysed_area') or 'whole image'}; minus {len(excludes)} exclusion "
                                        f"region(s) ({cut_mm2:.4f} mm²)")
            summary["area_mm2"] = area
            summary["density_per_mm2"] = None if not area else {k: v / area for k, v in summary["counts"].items()}
            summary["density_by_role_per_mm2"] = None if not area else {
                k: v / area for k, v in summary["counts_by_role"].items()}
            if "density_ci95_per_mm2" in summary:
                ci = _poisson_ci()
                summary["density_ci95_per_mm2"] = None if not area or ci is None else {
                    k: ci(v, area) for k, v in summary["counts"].items()}
        summary["review"] = self.review_info(user, time_iso)
        if stats is not None:
            summary["spatial"] = json.loads(json.dumps(stats, default=_json_default))
        if getattr(base, "compartments", None) is not None:  # cells per compartment, and which regions the statistics used
            block = replace(base, spatial=summary.get("spatial")).compartments_summary()
            summary["compartments"] = json.loads(json.dumps(block, default=_json_default))
        return summary

    def reviewed_result(self, stats: dict | None = None, *, user: str | None = None,
                        time_iso: str | None = None) -> AnalysisResult:
        """The analysis in its reviewed state, what the exports and the Analyze page show.

        Its ``cells`` are the reviewed cells outside exclusion regions (``cells.csv``, the
        overlay and ``cells.geojson`` list those; the detections before review keep every
        cell), its ``regions`` the regions drawn, its analysed area (``tissue``) has the
        exclusions cut out, ``spatial`` is ``stats`` and ``review`` :meth:`review_info`;
        so its :attr:`~core.results.AnalysisResult.summary` gives the numbers of
        :meth:`reviewed_summary`. The image, dense outputs and restored images are shared
        with the detections' result, not copied.
        """
        base, _ = self._reviewed_base()
        spatial = None if stats is None else SpatialStats.from_dict(stats)
        return replace(base, spatial=spatial if spatial is not None else self.result.spatial,
                       review=self.review_info(user, time_iso))

    # ------------------------------------------------------------------ saving and the audit log

    def mark_saved(self, user: str | None = None, time_iso: str | None = None) -> None:
        """Remember the current log and regions as saved (the audit log starts from here)."""
        self._saved_edits = [(e.op, e.cell_id, e.undone) for e in self.log.edits]
        self._journal = []
        if user is not None:
            self.saved_by, self.saved_at = user, time_iso or _now_iso()

    def audit_events(self) -> list[dict]:
        """What changed since the last save, for the audit log.

        Returns
        -------
        list of dict
            ``{"user", "time" (ISO 8601), "action" ("add", "delete", "relabel", "undo",
            "region added", "region removed"), "detail" (dict: the cell, its class before
            and after, its position; or the region's name, kind and area), "comment"}``,
            in the order they happened.
        """
        self._sync()
        out: list[dict] = []
        seen_edits, seen_undos = set(), set()
        for kind, item in self._journal:  # in the order they happened here
            if kind == "edit":
                out.append(_edit_event(item))
                seen_edits.add(id(item))
            elif kind == "undo":
                out.append(_undo_event(item))
                seen_undos.add(id(item))
            else:
                out.append(item)
        saved = self._saved_edits
        for k, e in enumerate(self.log.edits):  # edits made behind the session's back, after those
            if k >= len(saved) and id(e) not in seen_edits:
                out.append(_edit_event(e))
            if e.undone and not (saved[k][2] if k < len(saved) else False) and id(e) not in seen_undos:
                out.append(_undo_event(e))
        return out

    @property
    def has_unsaved_changes(self) -> bool:
        """True when there are edits or region changes not yet saved."""
        return bool(self.audit_events())


def _edit_event(e: Edit) -> dict:
    detail: dict[str, Any] = {"cell_id": e.cell_id, "cell": cell_name(e.cell_id)}
    if e.op == "add":
        detail.update(to_class=e.cell_class, to_role=e.role, x_px=round(float(e.x_px), 1), y_px=round(float(e.y_px), 1))
    elif e.op == "delete":
        detail.update(from_class=e.from_class, from_role=e.from_role)
    else:
        detail.update(from_class=e.from_class, from_role=e.from_role, to_class=e.cell_class, to_role=e.role)
    return {"user": e.user, "time": e.time, "action": e.op, "detail": detail, "comment": e.comment}


def _undo_event(e: Edit) -> dict:
    return {"user": e.undone_by or e.user, "time": e.undone_time or e.time, "action": "undo",
            "detail": {**_edit_event(e)["detail"], "undone": e.op}, "comment": None}


def _region_event(action: str, r: Region, user: str) -> dict:
    return {"user": user, "time": _now_iso(), "action": action,
            "detail": {"name": r.name, "kind": r.kind, "area_mm2": round(r.area_mm2, 6)}, "comment": None}


def _poisson_ci():
    """The Poisson interval of a density (:func:`core.results.poisson_ci_per_mm2`), if this TILscope has it."""
    import core.results

    return getattr(core.results, "poisson_ci_per_mm2", None)


def _json_default(value: Any) -> Any:
    from core.outputs.records import json_default

    return json_default(value)
