"""Review of one analysis: regions drawn on the image, manual corrections, statistics again.

Pure helpers for the Review page (no Streamlit here, so they are unit-tested and usable
from notebooks):

* :class:`CanvasFrame` maps the downscaled image shown in the browser ("canvas pixels")
  to the analysed image's pixels, and those to µm with the image's mpp (once, here).
* :func:`canvas_object_points` reads the fabric.js objects that
  ``streamlit-drawable-canvas`` returns (``Rect``, ``Polygon``, ``Path`` from the polygon
  and freehand tools, ``Circle`` from the point tool) into vertices in canvas pixels,
  applying each object's position, origin, scale and rotation the way fabric.js does.
* :func:`canvas_objects_to_regions` turns drawn shapes into :class:`core.regions.Region`
  polygons in µm; :func:`canvas_click_points` turns point-tool clicks into image pixels.
* :func:`nearest_cell` finds the cell under a click; :func:`reviewed_cells` replays the
  :class:`core.corrections.CorrectionLog`; :func:`review_statistics` recomputes
  :func:`core.spatial.compute_spatial_stats` on the corrected cells with the image extent
  as the study window; :func:`key_figures` picks the numbers the page shows, each with
  its unit and the threshold that produced it.

Coordinates: canvas and image pixels are (x, y) with x = column, origin at the top-left
corner; µm = image pixels × mpp.

References
----------
.. [fabric] fabric.js v6, ``FabricObject.getCenterPoint`` / ``_getTransformedDimensions``
   (origin, stroke and scale handling) and ``Polyline.pathOffset`` (points are stored
   relative to the centre of their bounding box).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np
import pandas as pd

from core.cells import ROLES
from core.corrections import CorrectionLog
from core.errors import InputError
from core.regions import KIND_COLORS, REGION_KINDS, Region
from core.results import AnalysisResult
from core.spatial import SpatialParams, compute_spatial_stats

#: Labels of the region kinds, as the page shows them.
KIND_LABELS = {
    "tumour": "Tumour",
    "stroma": "Stroma",
    "exclude": "Exclude (artefact, necrosis)",
    "margin": "Invasive-margin border",
}
#: Classes offered for hand-marked cells of roles the scenario does not detect
#: (name, role, colour, label); a CD3 model finds no tumour cells, but a pathologist can
#: mark some so that distances to tumour cells can be measured.
MANUAL_CLASSES = (
    ("tumour-cell", "tumour", "#1f5fbf", "Tumour cell (marked by hand)"),
    ("stromal-cell", "stroma", "#2e8b57", "Stromal cell (marked by hand)"),
    ("other-cell", "other", "#7f7f7f", "Other cell (marked by hand)"),
)
_ORIGIN = {"left": -0.5, "top": -0.5, "center": 0.0, "right": 0.5, "bottom": 0.5}
#: Shapes whose bounding box is smaller than this (canvas pixels, either side) are taken
#: for stray clicks and ignored.
MIN_SHAPE_SIDE_PX = 4.0


@dataclass(frozen=True)
class CanvasFrame:
    """How the image shown on the canvas maps to the analysed image.

    Attributes
    ----------
    image_width_px, image_height_px : int
        Size of the analysed image (W, H) in its pixels.
    canvas_width_px, canvas_height_px : int
        Size of the canvas (and of the downscaled background image) in display pixels.
    """

    image_width_px: int
    image_height_px: int
    canvas_width_px: int
    canvas_height_px: int

    @property
    def scale_x(self) -> float:
        """Image pixels per canvas pixel along x."""
        return self.image_width_px / self.canvas_width_px

    @property
    def scale_y(self) -> float:
        """Image pixels per canvas pixel along y."""
        return self.image_height_px / self.canvas_height_px

    def to_image_px(self, xy_canvas: np.ndarray) -> np.ndarray:
        """(N, 2) canvas pixels → (N, 2) float64 image pixels."""
        xy = np.asarray(xy_canvas, dtype=np.float64).reshape(-1, 2)
        return xy * np.array([self.scale_x, self.scale_y])

    def to_canvas_px(self, xy_image: np.ndarray) -> np.ndarray:
        """(N, 2) image pixels → (N, 2) float64 canvas pixels."""
        xy = np.asarray(xy_image, dtype=np.float64).reshape(-1, 2)
        return xy / np.array([self.scale_x, self.scale_y])


def display_frame(image_shape: tuple[int, int], max_width_px: int = 900, max_height_px: int = 700) -> CanvasFrame:
    """The canvas size that shows an image whole, never enlarged, aspect ratio kept.

    Parameters
    ----------
    image_shape : (H, W)
        Analysed image size in pixels.
    max_width_px, max_height_px : int > 0
        Largest canvas in display pixels.

    Returns
    -------
    CanvasFrame

    Raises
    ------
    InputError
        If a size is not positive.
    """
    h, w = (int(v) for v in image_shape[:2])
    if h <= 0 or w <= 0 or max_width_px <= 0 or max_height_px <= 0:
        raise InputError(f"image and canvas sizes must be positive, got image {w} x {h} px, canvas {max_width_px} x {max_height_px}")
    scale = min(1.0, max_width_px / w, max_height_px / h)
    return CanvasFrame(w, h, max(1, round(w * scale)), max(1, round(h * scale)))


# ----------------------------------------------------------------------------- canvas objects


def _num(obj: dict, key: str, default: float) -> float:
    v = obj.get(key, default)
    try:
        f = float(default if v is None else v)
    except (TypeError, ValueError) as err:
        raise InputError(f"canvas object field {key!r} is not a number: {v!r}") from err
    if not math.isfinite(f):
        raise InputError(f"canvas object field {key!r} is not finite: {v!r}")
    return f


def _path_vertices(path: Any, samples: int = 8) -> np.ndarray:
    """Vertices of SVG path commands in absolute coordinates, curves flattened.

    Quadratic (Q, T) and cubic (C, S) Béziers, which fabric's freehand brush writes, are
    sampled at ``samples`` points each, so the vertices (and their bounding box, which
    fabric's ``pathOffset`` is the centre of) lie on the drawn curve.
    """
    if not isinstance(path, list):
        raise InputError("a canvas Path has no 'path' command list")
    pts: list[np.ndarray] = []
    cur = np.zeros(2)
    last_ctrl: np.ndarray | None = None
    t = np.linspace(0.0, 1.0, samples + 1)[1:, None]
    for cmd in path:
        if not isinstance(cmd, (list, tuple)) or not cmd or not isinstance(cmd[0], str):
            raise InputError(f"unreadable path command {cmd!r}")
        op = cmd[0]
        if op.upper() == "Z":
            continue
        if op not in ("M", "L", "Q", "C", "T", "S"):
            raise InputError(f"path command {op!r} is not supported (absolute M, L, Q, C, T, S and Z are)")
        try:
            a = np.asarray([float(v) for v in cmd[1:]], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"path command {cmd!r} has non-numeric coordinates") from err
        need = {"M": 2, "L": 2, "T": 2, "Q": 4, "S": 4, "C": 6}[op]
        if len(a) != need:
            raise InputError(f"path command {op!r} needs {need} numbers, got {cmd!r}")
        if op in ("M", "L"):
            seg, ctrl = a[None, :], None
            end = a
        elif op in ("Q", "T"):
            c = a[:2] if op == "Q" else (2 * cur - last_ctrl if last_ctrl is not None else cur)
            end = a[-2:]
            seg = (1 - t) ** 2 * cur + 2 * (1 - t) * t * c + t**2 * end
            ctrl = c
        else:
            c1 = a[:2] if op == "C" else (2 * cur - last_ctrl if last_ctrl is not None else cur)
            c2, end = a[-4:-2], a[-2:]
            seg = (1 - t) ** 3 * cur + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * end
            ctrl = c2
        pts.append(np.asarray(seg, dtype=np.float64).reshape(-1, 2))
        cur, last_ctrl = end, ctrl
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def canvas_object_points(obj: dict) -> tuple[str, np.ndarray]:
    """Vertices of one fabric.js object in canvas pixels.

    Parameters
    ----------
    obj : dict
        One entry of ``json_data["objects"]`` from ``st_canvas``: ``Rect`` (``left``,
        ``top``, ``width``, ``height``), ``Polygon``/``Polyline`` (``points`` of
        ``{"x", "y"}``), ``Path`` (``path`` commands, as the freehand brush writes), or
        ``Circle`` (the point tool). Optional ``originX``/``originY``, ``scaleX``/``scaleY``,
        ``angle`` (degrees), ``strokeWidth``, ``strokeUniform``, ``pathOffset`` are honoured.

    Returns
    -------
    kind : str
        ``"shape"`` (a ring, (N, 2) with N >= 3 for a proper shape) or ``"point"`` ((1, 2),
        the centre of a circle).
    points : (N, 2) float64 ndarray
        (x, y) in canvas pixels.

    Raises
    ------
    InputError
        If the object type is not one of the above or its fields are malformed.
    """
    if not isinstance(obj, dict):
        raise InputError(f"a canvas object must be a dict, got {type(obj).__name__}")
    typ = str(obj.get("type", "")).lower()
    sx, sy = _num(obj, "scaleX", 1.0), _num(obj, "scaleY", 1.0)
    sw = _num(obj, "strokeWidth", 1.0)  # fabric's default; it counts even without a stroke colour
    uniform = bool(obj.get("strokeUniform", False))
    angle = math.radians(_num(obj, "angle", 0.0))
    if typ == "rect":
        local_w, local_h = _num(obj, "width", 0.0), _num(obj, "height", 0.0)
        local = np.array([[-local_w / 2, -local_h / 2], [local_w / 2, -local_h / 2],
                          [local_w / 2, local_h / 2], [-local_w / 2, local_h / 2]])
    elif typ in ("polygon", "polyline"):
        raw = obj.get("points")
        if not isinstance(raw, list):
            raise InputError("a canvas Polygon has no 'points' list")
        try:
            pts = np.array([[float(p["x"]), float(p["y"])] for p in raw], dtype=np.float64).reshape(-1, 2)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError("Polygon points must be {'x': number, 'y': number}") from err
        local = pts - _path_offset(obj, pts)
        local_w, local_h = _num(obj, "width", float(np.ptp(pts[:, 0])) if len(pts) else 0.0), _num(
            obj, "height", float(np.ptp(pts[:, 1])) if len(pts) else 0.0)
    elif typ == "path":
        pts = _path_vertices(obj.get("path"))
        local = pts - _path_offset(obj, pts)
        local_w, local_h = _num(obj, "width", float(np.ptp(pts[:, 0])) if len(pts) else 0.0), _num(
            obj, "height", float(np.ptp(pts[:, 1])) if len(pts) else 0.0)
    elif typ == "circle":
        r = _num(obj, "radius", 0.0)
        local = np.zeros((1, 2))
        local_w = local_h = 2 * r
    else:
        raise InputError(f"canvas object type {obj.get('type')!r} is not supported: draw with rectangle, polygon, freehand or point")
    # fabric: the box (left, top) refers to includes the stroke; the stroke is scaled with
    # the object unless strokeUniform.
    dim_x = (local_w + (0 if uniform else sw)) * sx + (sw if uniform else 0)
    dim_y = (local_h + (0 if uniform else sw)) * sy + (sw if uniform else 0)
    ox = _ORIGIN.get(str(obj.get("originX", "left")), -0.5)
    oy = _ORIGIN.get(str(obj.get("originY", "top")), -0.5)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    shift = rot @ np.array([-ox * dim_x, -oy * dim_y])
    centre = np.array([_num(obj, "left", 0.0), _num(obj, "top", 0.0)]) + shift
    out = (local * np.array([sx, sy])) @ rot.T + centre
    return ("point" if typ == "circle" else "shape"), out


def _path_offset(obj: dict, pts: np.ndarray) -> np.ndarray:
    po = obj.get("pathOffset")
    if isinstance(po, dict) and "x" in po and "y" in po:
        return np.array([float(po["x"]), float(po["y"])])
    if len(pts) == 0:
        return np.zeros(2)
    return (pts.min(axis=0) + pts.max(axis=0)) / 2


def _clean_ring(ring: np.ndarray) -> np.ndarray:
    """Drop consecutive duplicate vertices and a closing vertex equal to the first."""
    if len(ring) == 0:
        return ring
    keep = np.r_[True, np.any(np.diff(ring, axis=0) != 0, axis=1)]
    ring = ring[keep]
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    return ring


def canvas_objects_to_regions(
    objects: Iterable[dict],
    frame: CanvasFrame,
    mpp: float,
    kind: str,
    existing: Iterable[Region] = (),
) -> tuple[list[Region], list[str]]:
    """Turn shapes drawn on the canvas into regions in µm.

    Parameters
    ----------
    objects : iterable of dict
        fabric.js objects (``json_data["objects"]``); point-tool circles are skipped.
        A freehand stroke is closed by joining its end to its start.
    frame : CanvasFrame
        Canvas ↔ image pixels.
    mpp : float > 0
        Microns per pixel of the analysed image.
    kind : str
        One of :data:`core.regions.REGION_KINDS`, given to every new region.
    existing : iterable of Region
        Regions already there, so new names continue their numbering ("Tumour 3").

    Returns
    -------
    regions : list of Region
        Polygons (x, y) in µm of the analysed image.
    skipped : list of str
        Why an object was not made a region (too small, fewer than 3 vertices).

    Raises
    ------
    InputError
        If ``kind`` or ``mpp`` is invalid, or an object is malformed.

    Examples
    --------
    A 100 x 50 canvas-pixel rectangle on a canvas at half the image's size, mpp 0.5:
    200 x 100 image pixels, 100 x 50 µm, 5000 µm².

    >>> frame = CanvasFrame(1000, 800, 500, 400)
    >>> rect = {"type": "Rect", "left": 10, "top": 20, "width": 100, "height": 50, "strokeWidth": 0}
    >>> canvas_objects_to_regions([rect], frame, 0.5, "tumour")[0][0].area_um2
    5000.0
    """
    if kind not in REGION_KINDS:
        raise InputError(f"region kind {kind!r} is not allowed: choose one of {list(REGION_KINDS)}")
    if not (isinstance(mpp, (int, float, np.floating)) and math.isfinite(float(mpp)) and mpp > 0):
        raise InputError(f"regions need the image's microns per pixel: mpp must be a positive number, got {mpp!r}")
    n_kind = sum(1 for r in existing if r.kind == kind)
    label = KIND_LABELS[kind].split(" (")[0]
    regions: list[Region] = []
    skipped: list[str] = []
    for obj in objects:
        what, pts = canvas_object_points(obj)
        if what != "shape":
            continue
        ring = _clean_ring(pts)
        if len(ring) < 3 or len(np.unique(ring, axis=0)) < 3:
            skipped.append(f"a {obj.get('type')} with fewer than 3 distinct vertices")
            continue
        span = np.ptp(ring, axis=0)
        if span.min() < MIN_SHAPE_SIDE_PX:
            skipped.append(f"a {obj.get('type')} smaller than {MIN_SHAPE_SIDE_PX:g} screen pixels (a stray click?)")
            continue
        n_kind += 1
        ring_um = frame.to_image_px(ring) * float(mpp)
        regions.append(Region(name=f"{label} {n_kind}", kind=kind, polygon_um=ring_um))
    return regions, skipped


def canvas_click_points(objects: Iterable[dict], frame: CanvasFrame) -> np.ndarray:
    """Centres of point-tool clicks, in image pixels.

    Parameters
    ----------
    objects : iterable of dict
        fabric.js objects; only ``Circle`` objects (the point tool) are read.
    frame : CanvasFrame

    Returns
    -------
    (N, 2) float64 ndarray
        (x, y) in pixels of the analysed image, in click order.
    """
    pts = [canvas_object_points(o)[1][0] for o in objects if str(o.get("type", "")).lower() == "circle"]
    return frame.to_image_px(np.asarray(pts, dtype=np.float64).reshape(-1, 2))


# ----------------------------------------------------------------------------- cells


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
    scenario_classes : iterable of core.registry.CellClass
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
    """``result.summary`` with counts and densities of the corrected cells.

    Returns
    -------
    dict
        A copy of the summary: ``n_cells``, ``counts``, ``counts_by_role``,
        ``density_per_mm2`` and ``density_by_role_per_mm2`` recomputed from ``cells``;
        ``review`` = the correction log's summary plus ``detected_n_cells`` (before
        correction).
    """
    s = json.loads(json.dumps(result.summary, default=_json_default))
    counts = dict.fromkeys(s.get("counts") or {}, 0)
    for k, v in cells["cell_class"].astype(str).value_counts().items():
        counts[str(k)] = int(v)
    roles = {r: int((cells["role"] == r).sum()) for r in ROLES}
    area = s.get("area_mm2")
    s["n_cells"] = int(len(cells))
    s["counts"] = counts
    s["counts_by_role"] = roles
    if area:
        s["density_per_mm2"] = {k: v / area for k, v in counts.items()}
        s["density_by_role_per_mm2"] = {k: v / area for k, v in roles.items()}
    s["review"] = {**(log or CorrectionLog()).summary(), "detected_n_cells": int(len(result.cells))}
    return s


def reviewed_result(result: AnalysisResult, log: CorrectionLog | None, spatial: dict | None = None) -> AnalysisResult:
    """A copy of ``result`` whose cells and summary carry the manual corrections.

    ``spatial``, when given, is stored as ``summary["spatial"]`` (what reports read).
    The image and masks are shared with ``result``, not copied.
    """
    cells = reviewed_cells(result, log)
    summary = reviewed_summary(result, cells, log)
    if spatial is not None:
        summary["spatial"] = spatial
    return replace(result, cells=cells, summary=summary)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ----------------------------------------------------------------------------- statistics


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


def _fmt_list(values: Iterable[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def key_figures(stats: dict) -> list[dict[str, Any]]:
    """The headline numbers of a review, each with its unit and the thresholds behind it.

    Parameters
    ----------
    stats : dict
        :func:`review_statistics` (or :func:`core.spatial.compute_spatial_stats`) output.

    Returns
    -------
    list of dict
        ``{"label", "value" (float, int, str or None), "unit", "note"}``; ``note`` names
        the definition or threshold (e.g. "within 20 µm of a tumour cell") or why the
        value is missing. Order: counts, densities per region kind, compartments and
        their ratio, CT/IM, fractions within r, phenotype.
    """
    rows: list[dict[str, Any]] = []

    def add(label, value, unit="", note=""):
        rows.append({"label": label, "value": value, "unit": unit, "note": note})

    corr = stats.get("corrections") or {}
    if not stats.get("available", False):
        counts = stats.get("counts") or {}
        add("Cells", counts.get("n_cells"), "cells", stats.get("reason", ""))
        if corr:
            add("Cells corrected by hand", corr.get("n_corrections"), "cells", _corr_note(corr))
        return rows
    c = stats["counts"]
    p = stats["params"]
    add("Cells", c["n_cells_used"], "cells",
        f"{c['n_excluded_by_regions']} in exclusion regions left out" if c["n_excluded_by_regions"] else "all cells of the image")
    add("Immune cells", c["by_role"]["immune"], "cells", "")
    add("Tumour cells", c["by_role"]["tumour"], "cells", "")
    dens = (c.get("density_per_mm2_in_window") or {}).get("immune")
    win = stats.get("window") or {}
    add("Immune density, whole image", dens, "cells/mm²",
        f"study window {win.get('area_mm2', 0):.4f} mm² (image extent minus exclusions)" if win.get("available", True) and "area_mm2" in win else "")
    by_kind = (stats.get("regions") or {}).get("by_kind") or {}
    for kind in ("tumour", "stroma", "margin"):
        k = by_kind.get(kind)
        if k:
            label = KIND_LABELS[kind].split(" (")[0]
            add(f"Immune cells in {label.lower()} regions", k["counts_by_role"]["immune"], "cells",
                f"{k['n_regions']} region(s), {k['area_mm2']:.4f} mm²")
            add(f"Immune density in {label.lower()} regions", k["density_per_mm2_by_role"]["immune"], "cells/mm²",
                f"{k['n_regions']} region(s), {k['area_mm2']:.4f} mm² (exclusions subtracted)")
    comp = stats.get("compartments") or {}
    add("Intratumoral immune density", comp.get("intratumoral_immune_density_per_mm2"), "cells/mm²",
        comp.get("source", ""))
    add("Stromal immune density", comp.get("stromal_immune_density_per_mm2"), "cells/mm²", comp.get("source", ""))
    add("Intratumoral / stromal density ratio", comp.get("ratio_intratumoral_to_stromal"), "",
        "needs both compartments" if comp.get("ratio_intratumoral_to_stromal") is None else "")
    im = stats.get("invasive_margin") or {}
    if im.get("available"):
        h = im["half_width_um"]
        add("CT immune density", im["ct"]["immune_density_per_mm2"], "cells/mm²",
            f"tumour centre: inside the tumour, > {h:g} µm from the border ({im['ct']['area_mm2']:.4f} mm²)")
        add("IM immune density", im["im"]["immune_density_per_mm2"], "cells/mm²",
            f"invasive margin: within ±{h:g} µm of the border ({im['im']['area_mm2']:.4f} mm²)")
    else:
        add("CT immune density", None, "cells/mm²", im.get("reason", "not available"))
        add("IM immune density", None, "cells/mm²", im.get("reason", "not available"))
    dist = stats.get("distances") or {}
    if dist.get("available"):
        for row in dist["within_radius"]:
            add(f"Immune cells within {row['radius_um']:g} µm of a tumour cell", row["fraction_immune_within"], "fraction",
                f"{row['n_immune_within']} of {dist['n_immune']} immune cells (r = {row['radius_um']:g} µm)")
    else:
        add(f"Immune cells within r of a tumour cell (r = {_fmt_list(p['radii_um'])} µm)", None, "fraction",
            dist.get("reason", "not available"))
    ph = stats.get("phenotype") or {}
    add("Immune phenotype", ph.get("call"), "", ph.get("rule", "") if ph.get("available") else ph.get("reason", ""))
    if corr:
        add("Cells corrected by hand", corr.get("n_corrections"), "cells", _corr_note(corr))
    return rows


def _corr_note(corr: dict) -> str:
    return f"{corr.get('n_added', 0)} added, {corr.get('n_deleted', 0)} deleted, {corr.get('n_relabelled', 0)} relabelled"


def format_figure(value: Any, unit: str) -> str:
    """A key figure as text: ``"n/a"`` for None, percent for fractions, thousands separators."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if unit == "fraction":
        return f"{100 * float(value):.1f} %"
    if isinstance(value, (int, np.integer)) or unit == "cells":
        return f"{int(value):,}"
    v = float(value)
    if unit == "cells/mm²":
        return f"{v:,.0f}"
    return f"{v:.2f}"


# ----------------------------------------------------------------------------- display


def render_review_image(
    shown: np.ndarray,
    frame: CanvasFrame,
    cells: pd.DataFrame,
    class_colors: dict[str, str],
    regions: Iterable[Region] = (),
    mpp: float | None = None,
    deleted_xy_px: np.ndarray | None = None,
    marker_radius_px: int = 5,
) -> np.ndarray:
    """The downscaled image with regions and cell markers drawn on it (canvas background).

    Parameters
    ----------
    shown : (h, w, 3) uint8 RGB
        The image already downscaled to the canvas size (``frame.canvas_*``).
    frame : CanvasFrame
    cells : pandas.DataFrame
        Reviewed cells (``x_px``, ``y_px``, ``cell_class``, optional ``edited``).
    class_colors : dict
        ``cell_class`` → ``"#rrggbb"``; unknown classes are yellow.
    regions : iterable of Region
        Outlined in their kind's colour (needs ``mpp``).
    mpp : float, optional
    deleted_xy_px : (N, 2) float array, optional
        Deleted detections in image pixels, drawn as crosses.
    marker_radius_px : int
        Marker radius in canvas pixels.

    Returns
    -------
    (h, w, 3) uint8 RGB
        Detected cells: rings; cells added by hand: squares; relabelled cells: rings
        with a centre dot; deleted: white crosses edged in black.
    """
    from PIL import Image, ImageDraw

    from core.overlay import hex_to_rgb

    img = Image.fromarray(np.ascontiguousarray(shown[..., :3], dtype=np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    if mpp:
        for reg in regions:
            col = KIND_COLORS[reg.kind]
            for k, ring in enumerate(reg.rings()):
                xy = frame.to_canvas_px(ring / mpp)
                pts = [tuple(p) for p in xy.tolist()]
                if k == 0:
                    draw.polygon(pts, fill=(*col, 40))
                draw.line(pts + [pts[0]], fill=(*col, 255), width=3)
            x0, y0 = frame.to_canvas_px(reg.polygon_um.min(axis=0) / mpp)[0]
            draw.text((x0 + 4, y0 + 2), reg.name, fill=(*col, 255))
    r = marker_radius_px
    if deleted_xy_px is not None and len(deleted_xy_px):
        for x, y in frame.to_canvas_px(deleted_xy_px).tolist():
            for col, wid in (((0, 0, 0, 255), 4), ((255, 255, 255, 255), 2)):  # visible on DAB and on glass
                draw.line([(x - r, y - r), (x + r, y + r)], fill=col, width=wid)
                draw.line([(x - r, y + r), (x + r, y - r)], fill=col, width=wid)
    if len(cells):
        xy = frame.to_canvas_px(cells[["x_px", "y_px"]].to_numpy(dtype=np.float64))
        edited = cells["edited"].astype(str).to_numpy() if "edited" in cells.columns else np.full(len(cells), "")
        classes = cells["cell_class"].astype(str).to_numpy()
        for (x, y), cls, ed in zip(xy.tolist(), classes, edited):
            col = (*hex_to_rgb(class_colors.get(cls, "#ffd700")), 255)
            if ed == "added":
                draw.rectangle([x - r, y - r, x + r, y + r], outline=col, width=2)
            else:
                draw.ellipse([x - r, y - r, x + r, y + r], outline=col, width=2)
                if ed == "relabelled":
                    draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=col)
    return np.asarray(img)


def downscale(pixels: np.ndarray, frame: CanvasFrame) -> np.ndarray:
    """(H, W, 3) uint8 image resized to the canvas (area averaging), (h, w, 3) uint8."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(pixels[..., :3], dtype=np.uint8))
    size = (frame.canvas_width_px, frame.canvas_height_px)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BOX)
    return np.asarray(img)
