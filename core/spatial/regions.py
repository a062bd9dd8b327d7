"""Regions of interest (tumour, stroma, exclusions, invasive-margin border) and GeoJSON.

A :class:`Region` is a polygon in µm of the analysed image's coordinate frame
(x = column direction, y = row direction, origin at the top-left pixel corner of the
image, as in the cell table). Regions travel as GeoJSON following QuPath's
conventions, so annotations drawn in QuPath can be imported and TILscope's regions and
cells can be opened in QuPath:

* coordinates are in **pixels** of the full-resolution image (QuPath's frame); they
  are converted to µm once, here, with the image's mpp;
* ``properties.objectType`` is ``"annotation"`` for regions and ``"detection"`` for
  cells;
* ``properties.classification`` is ``{"name": ..., "color": [r, g, b]}``.

Region kinds and the QuPath class names they map to:

==========  ===========================  ============================================
kind        exported QuPath class        also recognised on import (case-insensitive)
==========  ===========================  ============================================
tumour      ``Tumor``                    tumour, tumor, tumour region, carcinoma
stroma      ``Stroma``                   stroma, stromal
exclude     ``Ignore*``                  ignore, ignore*, exclude, excluded,
                                         necrosis, artefact, artifact, background
margin      ``Invasive margin``          margin, invasive margin, invasive front,
                                         tumour border, tumor border
==========  ===========================  ============================================

A ``margin`` region's outline is the tumour border that the invasive-margin band is
built around (see :func:`core.spatial.compartments.invasive_margin_section`); without
one the outline of the tumour regions is used.

References
----------
.. [1] Bankhead P. et al. "QuPath: Open source software for digital pathology image
   analysis." Sci Rep 7, 16878 (2017); QuPath docs, "Exporting annotations" (GeoJSON).
.. [2] Butler H. et al. "The GeoJSON Format", RFC 7946 (2016), §3.1.6 (Polygon rings).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from core.errors import InputError

REGION_KINDS = ("tumour", "stroma", "exclude", "margin")

#: Most vertices of one region (outer ring and holes together). A hand-drawn or QuPath
#: outline has hundreds to tens of thousands; every polygon step (containment with a
#: prepared geometry, rasterising by scanlines, distances through an R-tree) costs about
#: O(V log V), a few seconds at this limit.
MAX_REGION_VERTICES = 500_000
#: Largest |x| or |y| of a region or cell coordinate read from a file, in µm (100 mm: a
#: glass slide is 75 x 25 mm). Beyond it a file is taken as wrong (e.g. nanometres read
#: as pixels) and refused, before any grid or raster is sized from it.
MAX_COORDINATE_UM = 100_000.0
#: Largest GeoJSON file read, in bytes, and its deepest nesting of arrays and objects (a
#: FeatureCollection of MultiPolygons nests 7 deep).
MAX_GEOJSON_BYTES = 256 * 1024**2
MAX_GEOJSON_DEPTH = 64

#: QuPath class name written for each kind.
KIND_TO_QUPATH_CLASS = {
    "tumour": "Tumor",
    "stroma": "Stroma",
    "exclude": "Ignore*",
    "margin": "Invasive margin",
}
#: QuPath's default colours for its built-in classes (Tumor, Stroma, Ignore*).
KIND_COLORS = {
    "tumour": (200, 0, 0),
    "stroma": (150, 200, 150),
    "exclude": (180, 180, 180),
    "margin": (255, 200, 0),
}
_CLASS_SYNONYMS = {
    "tumour": {"tumour", "tumor", "tumour region", "tumor region", "carcinoma"},
    "stroma": {"stroma", "stromal"},
    "exclude": {
        "ignore", "ignore*", "exclude", "excluded", "exclusion", "necrosis", "artefact",
        "artifact", "background",
    },
    "margin": {
        "margin", "invasive margin", "invasive front", "tumour border", "tumor border",
        "invasive-margin border", "im",
    },
}
_DEFAULT_CELL_COLOR = (128, 128, 128)


@dataclass
class Region:
    """A polygonal region of interest in µm.

    Attributes
    ----------
    name : str
        Label shown to the user, e.g. ``"Tumour 1"``.
    kind : str
        One of :data:`REGION_KINDS`: ``"tumour"``, ``"stroma"``, ``"exclude"``,
        ``"margin"`` (its outline is the tumour border).
    polygon_um : (N, 2) float64 ndarray
        Outer ring, vertices as (x, y) in µm, N >= 3, not repeated at the end (a closing
        vertex equal to the first one is dropped).
    id : str or None
        Stable identifier (e.g. QuPath's feature id), kept through GeoJSON.
    holes_um : tuple of (M, 2) float64 ndarray
        Inner rings (holes), same layout as ``polygon_um``; usually empty.
    note : str
        What was done to the region on reading, for the user (e.g. an outline that
        crossed itself, repaired by :func:`repair_region`); "" when nothing.

    Raises
    ------
    InputError
        If ``kind`` is unknown, a ring has fewer than 3 distinct vertices or non-finite
        coordinates, or the rings hold more than :data:`MAX_REGION_VERTICES` vertices.

    Notes
    -----
    A ring that crosses itself is kept as given (its shoelace area cancels); readers of
    files repair it with :func:`repair_region`, and :attr:`problem` says what is wrong.
    """

    name: str
    kind: str
    polygon_um: np.ndarray
    id: str | None = None
    holes_um: tuple[np.ndarray, ...] = field(default_factory=tuple)
    note: str = ""
    _geom: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in REGION_KINDS:
            raise InputError(
                f"region {self.name!r} has kind {self.kind!r}: allowed kinds are {list(REGION_KINDS)}"
            )
        self.polygon_um = _as_ring(self.polygon_um, f"region {self.name!r}")
        self.holes_um = tuple(_as_ring(h, f"hole of region {self.name!r}") for h in self.holes_um)
        n = len(self.polygon_um) + sum(len(h) for h in self.holes_um)
        if n > MAX_REGION_VERTICES:
            raise InputError(
                f"region {self.name!r} has {n} vertices, more than the {MAX_REGION_VERTICES} accepted; simplify the "
                "outline (QuPath: Objects > Annotations > Simplify shape) and import it again"
            )

    @property
    def geometry(self) -> shapely.Polygon:
        """The region as a prepared shapely Polygon (µm), built once and kept while the rings are unchanged."""
        key = (id(self.polygon_um), tuple(id(h) for h in self.holes_um))
        if self._geom is None or self._geom[0] != key:
            geom = shapely.Polygon(self.polygon_um, [h for h in self.holes_um])
            shapely.prepare(geom)
            self._geom = (key, geom)
        return self._geom[1]

    @property
    def problem(self) -> str | None:
        """Why the polygon is not valid (e.g. "Self-intersection[x y]"), or None when it is."""
        geom = self.geometry
        return None if shapely.is_valid(geom) else str(shapely.is_valid_reason(geom))

    def __getstate__(self):  # the cached shapely geometry is rebuilt after unpickling
        state = dict(self.__dict__)
        state["_geom"] = None
        return state

    @property
    def area_um2(self) -> float:
        """Area in µm² (outer ring minus holes; rings must not self-intersect)."""
        return polygon_area_um2(self.polygon_um) - sum(polygon_area_um2(h) for h in self.holes_um)

    @property
    def area_mm2(self) -> float:
        """Area in mm² (``area_um2 / 1e6``)."""
        return self.area_um2 / 1e6

    @property
    def bbox_um(self) -> tuple[float, float, float, float]:
        """Bounding box ``(x_min, y_min, x_max, y_max)`` in µm."""
        lo = self.polygon_um.min(axis=0)
        hi = self.polygon_um.max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def rings(self) -> list[np.ndarray]:
        """Outer ring then holes, each (N, 2) float64 in µm."""
        return [self.polygon_um, *self.holes_um]

    def contains(self, xy_um: np.ndarray) -> np.ndarray:
        """Point-in-polygon test.

        Parameters
        ----------
        xy_um : (N, 2) float array
            Points as (x, y) in µm.

        Returns
        -------
        (N,) bool ndarray
            True inside the outer ring and outside every hole; points exactly on an edge
            are outside. A prepared shapely geometry: O(log V) per point for V vertices.
        """
        xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
        if len(xy) == 0:
            return np.zeros(0, dtype=bool)
        return np.asarray(shapely.contains_xy(self.geometry, xy[:, 0], xy[:, 1]), dtype=bool)


def polygon_area_um2(ring_um: np.ndarray) -> float:
    """Area of a simple polygon by the shoelace formula.

    Parameters
    ----------
    ring_um : (N, 2) float array
        Vertices (x, y) in µm, open or closed ring, either orientation.

    Returns
    -------
    float
        Area in µm², >= 0.
    """
    p = np.asarray(ring_um, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    # Shifting by the first vertex keeps the cross products small (less cancellation).
    x = x - x[0]
    y = y - y[0]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def points_in_regions(xy_um: np.ndarray, regions: list[Region], kinds: tuple[str, ...] | None = None) -> np.ndarray:
    """True where a point lies in at least one of ``regions`` (optionally of ``kinds``).

    Parameters
    ----------
    xy_um : (N, 2) float array
        Points (x, y) in µm.
    regions : list of Region
    kinds : tuple of str, optional
        Only regions of these kinds count.

    Returns
    -------
    (N,) bool ndarray
    """
    xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
    out = np.zeros(len(xy), dtype=bool)
    for r in regions:
        if kinds is None or r.kind in kinds:
            out |= r.contains(xy)
    return out


def _as_ring(points: Any, what: str) -> np.ndarray:
    try:
        p = np.array(points, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what}: polygon vertices must be numbers as (x, y) pairs") from err
    if p.ndim != 2 or p.shape[1] != 2:
        raise InputError(f"{what}: polygon must be an (N, 2) array of (x, y) in µm, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise InputError(f"{what}: polygon has non-finite (NaN/inf) coordinates")
    if len(p) >= 2 and np.array_equal(p[0], p[-1]):
        p = p[:-1]
    if len(np.unique(p, axis=0)) < 3:
        raise InputError(f"{what}: a polygon needs at least 3 distinct vertices, got {len(p)}")
    return np.ascontiguousarray(p)


def repair_region(region: Region) -> list[Region]:
    """A region whose outline crosses itself (or whose holes cross it) made valid.

    ``shapely.make_valid`` splits the outline where it crosses itself: a figure-of-eight
    becomes its two loops; lines and points it leaves are dropped. Each polygonal part
    becomes a region of the same kind (ids suffixed ``~k``, names numbered) with a
    :attr:`Region.note` saying what was done.

    Parameters
    ----------
    region : Region

    Returns
    -------
    list of Region
        ``[region]`` when it is valid; otherwise its valid parts.

    Raises
    ------
    InputError
        If the repaired outline encloses no area (every vertex on one line).
    """
    why = region.problem
    if why is None:
        return [region]
    fixed = shapely.make_valid(region.geometry)
    parts = [g for g in shapely.get_parts(shapely.get_parts(fixed))
             if isinstance(g, (shapely.Polygon, shapely.MultiPolygon))]
    polys = [p for g in parts for p in shapely.get_parts(g) if isinstance(p, shapely.Polygon) and p.area > 0]
    if not polys:
        raise InputError(f"region {region.name!r}: its outline is invalid ({why}) and encloses no area; draw it again")
    area_mm2 = sum(p.area for p in polys) / 1e6
    note = (f"region {region.name!r}: its outline was invalid ({why}) and was repaired into {len(polys)} polygon(s) "
            f"of {area_mm2:.4g} mm² in all; check it")
    out = []
    for k, p in enumerate(polys):
        name = region.name if len(polys) == 1 else f"{region.name} ({k + 1})"
        rid = None if region.id is None else (region.id if len(polys) == 1 else f"{region.id}~{k}")
        out.append(Region(name, region.kind, np.asarray(p.exterior.coords), rid,
                          tuple(np.asarray(h.coords) for h in p.interiors), note=note))
    return out


def repair_regions(regions: list[Region]) -> tuple[list[Region], list[str]]:
    """:func:`repair_region` over a list: (valid regions in order, one note per repaired region).

    Raises
    ------
    InputError
        See :func:`repair_region`.
    """
    out: list[Region] = []
    notes: list[str] = []
    for r in regions:
        parts = repair_region(r)
        if parts[0] is not r:
            notes.append(parts[0].note)
        out.extend(parts)
    return out, notes


def check_coordinates_um(xy_um: np.ndarray, what: str) -> None:
    """Refuse coordinates (µm) that are not finite or lie beyond :data:`MAX_COORDINATE_UM`.

    Parameters
    ----------
    xy_um : (N, 2) float array, x, y in µm (NaN rows are allowed: a cell without µm)
    what : str, named in the message (e.g. "cell table cells.csv")

    Raises
    ------
    InputError
        If a coordinate is infinite or its absolute value exceeds :data:`MAX_COORDINATE_UM`.
    """
    a = np.asarray(xy_um, dtype=np.float64)
    if a.size == 0:
        return
    with np.errstate(invalid="ignore"):
        bad = np.isinf(a) | (np.abs(a) > MAX_COORDINATE_UM)
    if bad.any():
        worst = float(np.nanmax(np.abs(np.where(np.isfinite(a), a, np.inf))))
        raise InputError(
            f"{what}: coordinates up to {worst:.4g} µm, beyond the ±{MAX_COORDINATE_UM:.0f} µm (100 mm) of any slide; "
            "check the units (pixels, µm, nm) and the microns per pixel"
        )


def _check_mpp(mpp: Any) -> float:
    try:
        m = float(mpp)
    except (TypeError, ValueError) as err:
        raise InputError(f"mpp must be a number of microns per pixel, got {mpp!r}") from err
    if not math.isfinite(m) or m <= 0:
        raise InputError(
            f"mpp must be a positive number of microns per pixel, got {mpp!r}: "
            "GeoJSON coordinates are pixels, so enter the scanner's microns per pixel"
        )
    return m


def _rgb(color: Any) -> list[int]:
    """``"#rrggbb"``, ``(r, g, b)`` or a QuPath packed int to ``[r, g, b]``."""
    if isinstance(color, str):
        s = color.strip().lstrip("#")
        if len(s) == 3:
            s = "".join(c * 2 for c in s)
        if len(s) != 6:
            raise InputError(f"colour {color!r} is not a '#rrggbb' hex string")
        try:
            return [int(s[i : i + 2], 16) for i in (0, 2, 4)]
        except ValueError as err:
            raise InputError(f"colour {color!r} is not a '#rrggbb' hex string") from err
    if isinstance(color, (int, np.integer)):
        v = int(color) & 0xFFFFFF
        return [(v >> 16) & 255, (v >> 8) & 255, v & 255]
    try:
        rgb = [int(c) for c in color]
    except (TypeError, ValueError) as err:
        raise InputError(f"colour {color!r} is neither '#rrggbb' nor (r, g, b)") from err
    if len(rgb) != 3:
        raise InputError(f"colour {color!r} must have 3 components (r, g, b)")
    return rgb


def _ring_to_px(ring_um: np.ndarray, mpp: float) -> list[list[float]]:
    px = ring_um / mpp
    closed = np.vstack([px, px[:1]])
    return closed.tolist()


def regions_to_geojson(regions: list[Region], mpp: float) -> dict:
    """Export regions as a QuPath-compatible GeoJSON FeatureCollection.

    Parameters
    ----------
    regions : list of Region
        Polygons in µm.
    mpp : float > 0
        Microns per pixel of the image the coordinates refer to.

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...]}``, one Polygon Feature per
        region with closed rings in **pixels** (x, y), ``properties.objectType =
        "annotation"``, ``properties.name``, ``properties.classification = {"name":
        QuPath class, "color": [r, g, b]}`` and ``properties.tilscope_kind``. JSON-ready.

    Raises
    ------
    InputError
        If ``mpp`` is not a positive number.

    References
    ----------
    QuPath GeoJSON export; RFC 7946 §3.1.6.
    """
    m = _check_mpp(mpp)
    features = []
    for r in regions:
        props: dict[str, Any] = {
            "objectType": "annotation",
            "name": r.name,
            "classification": {"name": KIND_TO_QUPATH_CLASS[r.kind], "color": list(KIND_COLORS[r.kind])},
            "tilscope_kind": r.kind,
            "isLocked": False,
        }
        feat: dict[str, Any] = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_ring_to_px(g, m) for g in r.rings()]},
            "properties": props,
        }
        if r.id is not None:
            feat["id"] = str(r.id)
        features.append(feat)
    return {"type": "FeatureCollection", "features": features}


def cells_to_geojson(
    cells: pd.DataFrame,
    class_colors: dict[str, str],
    mpp: float,
    regions: list[Region] | None = None,
) -> dict:
    """Export cells (and optionally regions) as a GeoJSON FeatureCollection for QuPath.

    Parameters
    ----------
    cells : pandas.DataFrame
        Cell table (:mod:`core.cells`); uses ``x_px``/``y_px`` when present and finite,
        otherwise ``x_um / mpp``. ``cell_id``, ``role``, ``probability`` and ``edited``
        are written to properties when present.
    class_colors : dict of str to str
        ``cell_class`` to ``"#rrggbb"``; classes not listed are grey.
    mpp : float > 0
        Microns per pixel.
    regions : list of Region, optional
        Written first, as annotations (see :func:`regions_to_geojson`).

    Returns
    -------
    dict
        FeatureCollection: regions (``objectType "annotation"``) then one Point feature
        per cell at its centroid in pixels (``objectType "detection"``,
        ``classification {"name": cell_class, "color": [r, g, b]}``).

    Raises
    ------
    InputError
        If ``mpp`` is invalid, a colour is malformed or coordinate columns are missing.
    """
    m = _check_mpp(mpp)
    out = regions_to_geojson(regions or [], m)
    if len(cells) == 0:
        return out
    if {"x_px", "y_px"} <= set(cells.columns) and np.isfinite(cells[["x_px", "y_px"]].to_numpy(float)).all():
        xy = cells[["x_px", "y_px"]].to_numpy(np.float64)
    elif {"x_um", "y_um"} <= set(cells.columns):
        xy = cells[["x_um", "y_um"]].to_numpy(np.float64) / m
    else:
        raise InputError("cell table needs x_px, y_px or x_um, y_um columns to export GeoJSON")
    colors = {k: _rgb(v) for k, v in class_colors.items()}
    classes = cells["cell_class"].astype(str).to_numpy() if "cell_class" in cells else np.full(len(cells), "")
    extra = [c for c in ("cell_id", "role", "probability", "edited") if c in cells.columns]
    extra_vals = {c: cells[c].tolist() for c in extra}
    features = out["features"]
    for k in range(len(cells)):
        cls = classes[k]
        props: dict[str, Any] = {
            "objectType": "detection",
            "classification": {"name": cls, "color": colors.get(cls, list(_DEFAULT_CELL_COLOR))},
        }
        meas = {}
        for c in extra:
            v = extra_vals[c][k]
            if isinstance(v, (np.generic,)):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            if c == "probability":
                meas["probability"] = v
            else:
                props[c] = v
        if meas:
            props["measurements"] = meas
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [float(xy[k, 0]), float(xy[k, 1])]},
                "properties": props,
            }
        )
    return out


def _kind_of(props: dict) -> str | None:
    kind = props.get("tilscope_kind")
    if isinstance(kind, str) and kind in REGION_KINDS:
        return kind
    names = []
    cls = props.get("classification")
    if isinstance(cls, dict):
        names.append(cls.get("name"))
    elif isinstance(cls, str):
        names.append(cls)
    names.append(props.get("name"))
    for n in names:
        if not isinstance(n, str):
            continue
        key = n.strip().lower()
        for k, syn in _CLASS_SYNONYMS.items():
            if key in syn:
                return k
    return None


def _load_geojson(source: Any) -> Any:
    if isinstance(source, (dict, list)):
        return source
    if isinstance(source, (bytes, bytearray)):
        if len(source) > MAX_GEOJSON_BYTES:
            raise InputError(_too_big("regions text", len(source)))
        try:
            source = bytes(source).decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise InputError(f"regions text is not UTF-8 text ({err}); export the GeoJSON again") from err
    if isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        return _parse_json(source, "regions text")
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            raise InputError(f"regions file {str(p)!r} is a folder, not a file: give the GeoJSON file itself")
        if not p.is_file():
            raise InputError(f"regions file {str(p)!r} does not exist: give a GeoJSON file exported from TILscope or QuPath")
        size = p.stat().st_size
        if size > MAX_GEOJSON_BYTES:
            raise InputError(_too_big(f"regions file {p.name!r}", size))
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise InputError(f"regions file {p.name!r} is not valid GeoJSON (not UTF-8 text: {err})") from err
        except OSError as err:
            raise InputError(f"regions file {p.name!r} cannot be read ({err.strerror or err})") from err
        return _parse_json(text, f"regions file {p.name!r}")
    raise InputError(f"regions must be a GeoJSON path, text or dict, got {type(source).__name__}")


def _too_big(what: str, size: int) -> str:
    return (f"{what} is {size / 1024**2:.0f} MiB, more than the {MAX_GEOJSON_BYTES / 1024**2:.0f} MiB accepted; "
            "export fewer or simpler annotations")


def json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects in JSON ``text`` (brackets inside strings ignored), without recursion.

    Parameters
    ----------
    text : str

    Returns
    -------
    int >= 0 (0 for a bare number or string)
    """
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    data = np.frombuffer(stripped.encode("utf-8"), dtype=np.uint8)
    deepest, level = 0, 0
    step = 8 << 20
    opens, closes = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        delta = np.isin(chunk, opens).astype(np.int32) - np.isin(chunk, closes).astype(np.int32)
        if not delta.any():
            continue
        running = np.cumsum(delta) + level
        deepest = max(deepest, int(running.max()))
        level = int(running[-1])
    return deepest


def _parse_json(text: str, what: str) -> Any:
    """``json.loads`` after refusing nesting deeper than :data:`MAX_GEOJSON_DEPTH` (no recursion error)."""
    depth = json_depth(text)
    if depth > MAX_GEOJSON_DEPTH:
        raise InputError(f"{what} nests arrays or objects {depth} deep, more than the {MAX_GEOJSON_DEPTH} of any "
                         "GeoJSON: it is not regions; export the annotations again as GeoJSON")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"{what} is not valid GeoJSON (JSON error: {err})") from err


def read_regions_geojson(source: str | Path | dict | list | bytes, mpp: float, on_unknown: str = "raise") -> list[Region]:
    """Read regions from GeoJSON written by TILscope or QuPath.

    Parameters
    ----------
    source : path, JSON text, bytes, dict or list
        A FeatureCollection, a single Feature, or a list of Features (QuPath writes
        either). Polygon and MultiPolygon geometries are read (a MultiPolygon becomes one
        region per part, ids suffixed ``#k``); ``objectType "detection"``/``"cell"``
        features and other geometries are skipped.
    mpp : float > 0
        Microns per pixel: coordinates are pixels (QuPath convention) and are multiplied
        by ``mpp`` to give µm.
    on_unknown : {"raise", "skip"}
        What to do with an annotation whose class is not a known region kind (see the
        module table), e.g. QuPath's ``"Tissue"``.

    Returns
    -------
    list of Region
        In file order, polygons (x, y) in µm. An outline that crosses itself is repaired
        (:func:`repair_region`): its parts come in its place, each with a ``note``.

    Raises
    ------
    InputError
        If the file is missing, a folder, larger than :data:`MAX_GEOJSON_BYTES`, nested
        deeper than :data:`MAX_GEOJSON_DEPTH`, not JSON, not GeoJSON, has malformed
        coordinates or coordinates beyond :data:`MAX_COORDINATE_UM`, a region of more
        than :data:`MAX_REGION_VERTICES` vertices, an outline enclosing no area, an
        annotation of unknown class (with ``on_unknown="raise"``), or holds no polygon
        annotation at all.
    """
    m = _check_mpp(mpp)
    if on_unknown not in ("raise", "skip"):
        raise InputError(f"on_unknown must be 'raise' or 'skip', got {on_unknown!r}")
    data = _load_geojson(source)
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        raise InputError(
            "not GeoJSON regions: expected a FeatureCollection, a Feature or a list of Features "
            f"(got {type(data).__name__}{' of type ' + repr(data.get('type')) if isinstance(data, dict) else ''})"
        )
    if not isinstance(features, list):
        raise InputError("GeoJSON 'features' must be a list")
    regions: list[Region] = []
    unknown: list[str] = []
    for k, feat in enumerate(features):
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            raise InputError(f"GeoJSON item {k} is not a Feature (got {str(feat)[:60]!r})")
        props = feat.get("properties") or {}
        if str(props.get("objectType", "annotation")).lower() in ("detection", "cell", "tile"):
            continue
        geom = feat.get("geometry") or {}
        gtype = geom.get("type")
        if gtype not in ("Polygon", "MultiPolygon"):
            continue
        kind = _kind_of(props)
        cls = props.get("classification")
        cls_name = cls.get("name") if isinstance(cls, dict) else cls
        name = props.get("name") or cls_name or f"region {k + 1}"
        if kind is None:
            unknown.append(str(cls_name if cls_name is not None else "unclassified"))
            continue
        fid = feat.get("id", props.get("id"))
        parts = [geom.get("coordinates")] if gtype == "Polygon" else list(geom.get("coordinates") or [])
        for p, rings in enumerate(parts):
            if not isinstance(rings, list) or not rings:
                raise InputError(f"feature {k} ({name!r}): Polygon coordinates must be a list of rings")
            try:
                arrs = [np.asarray(r, dtype=np.float64) for r in rings]
            except (TypeError, ValueError) as err:
                raise InputError(f"feature {k} ({name!r}): ring coordinates must be [x, y] number pairs") from err
            for a in arrs:
                if a.ndim != 2 or a.shape[1] < 2:
                    raise InputError(f"feature {k} ({name!r}): each ring must be a list of [x, y] positions")
            n_vertices = sum(len(a) for a in arrs)
            if n_vertices > MAX_REGION_VERTICES:
                raise InputError(
                    f"feature {k} ({name!r}) has {n_vertices} vertices, more than the {MAX_REGION_VERTICES} accepted; "
                    "simplify the outline (QuPath: Objects > Annotations > Simplify shape) and export it again"
                )
            arrs = [a[:, :2] * m for a in arrs]
            for a in arrs:
                check_coordinates_um(a, f"feature {k} ({name!r})")
            rid = None if fid is None else (str(fid) if len(parts) == 1 else f"{fid}#{p}")
            region = Region(name=str(name), kind=kind, polygon_um=arrs[0], id=rid, holes_um=tuple(arrs[1:]))
            regions.extend(repair_region(region))
    if unknown and on_unknown == "raise":
        raise InputError(
            f"annotation class(es) {sorted(set(unknown))} are not region kinds: classify annotations as "
            f"{sorted(KIND_TO_QUPATH_CLASS.values())} in QuPath, or import with on_unknown='skip'"
        )
    if not regions:
        raise InputError(
            "no polygon annotations found in the GeoJSON: draw Tumor / Stroma / Ignore* / Invasive margin "
            "annotations and export them as GeoJSON (Polygon or MultiPolygon)"
        )
    return regions


def write_geojson(obj: dict, path: str | Path) -> Path:
    """Write a GeoJSON dict to ``path`` (UTF-8, compact) and return the path."""
    p = Path(path)
    p.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")
    return p
