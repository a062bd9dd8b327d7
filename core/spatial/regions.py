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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.path import Path as MplPath

from core.errors import InputError

REGION_KINDS = ("tumour", "stroma", "exclude", "margin")

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

    Raises
    ------
    InputError
        If ``kind`` is unknown, or a ring has fewer than 3 distinct vertices or
        non-finite coordinates.
    """

    name: str
    kind: str
    polygon_um: np.ndarray
    id: str | None = None
    holes_um: tuple[np.ndarray, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.kind not in REGION_KINDS:
            raise InputError(
                f"region {self.name!r} has kind {self.kind!r}: allowed kinds are {list(REGION_KINDS)}"
            )
        self.polygon_um = _as_ring(self.polygon_um, f"region {self.name!r}")
        self.holes_um = tuple(_as_ring(h, f"hole of region {self.name!r}") for h in self.holes_um)

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
            True inside the outer ring and outside every hole. Points exactly on an
            edge may fall either way (matplotlib's even-odd rule).
        """
        xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
        inside = _ring_contains(self.polygon_um, xy)
        for hole in self.holes_um:
            inside &= ~_ring_contains(hole, xy)
        return inside


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


def _ring_contains(ring: np.ndarray, xy: np.ndarray) -> np.ndarray:
    if len(xy) == 0:
        return np.zeros(0, dtype=bool)
    return MplPath(ring, closed=False).contains_points(xy)


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
    if isinstance(source, bytes):
        source = source.decode("utf-8-sig")
    if isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        try:
            return json.loads(source)
        except json.JSONDecodeError as err:
            raise InputError(f"regions text is not valid JSON: {err}") from err
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise InputError(f"regions file {str(p)!r} does not exist: give a GeoJSON file exported from TILscope or QuPath")
        try:
            return json.loads(p.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"regions file {p.name!r} is not valid GeoJSON (JSON error: {err})") from err
    raise InputError(f"regions must be a GeoJSON path, text or dict, got {type(source).__name__}")


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
        In file order, polygons (x, y) in µm.

    Raises
    ------
    InputError
        If the file is missing or not JSON, not GeoJSON, has malformed coordinates,
        has an annotation of unknown class (with ``on_unknown="raise"``), or holds no
        polygon annotation at all.
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
            arrs = [a[:, :2] * m for a in arrs]
            rid = None if fid is None else (str(fid) if len(parts) == 1 else f"{fid}#{p}")
            regions.append(Region(name=str(name), kind=kind, polygon_um=arrs[0], id=rid, holes_um=tuple(arrs[1:])))
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
