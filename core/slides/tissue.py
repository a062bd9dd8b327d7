"""Tissue detection on whole slides, at low resolution (about 8 µm/px).

Method
------
1. The slide is read at :data:`TISSUE_MPP` µm/px (coarser for slides wider than
   :data:`MAX_MASK_SIDE_PX` mask pixels) from its smallest sufficient pyramid level
   (:meth:`core.slides.reader.Slide.read_grid`).
2. **Pen marks** are found first and never count as tissue: strongly saturated blue ink (hue
   0.52-0.69, HSV saturation > 0.6), green ink (hue 0.20-0.50, saturation > 0.25: no stain
   of H&E or DAB-hematoxylin IHC is green) and black ink (HSV value < 0.2), grown by 16 µm
   to take their halo. The colour rules follow the pen filters of the Deep Histopath /
   histolab filters and HistoQC's pen-marking module (Janowczyk et al., JCO Clin Cancer
   Inform 2019); a densely cellular, strongly blue-stained region may be taken for blue ink
   (turn ``pen_marks`` off for such slides).
3. **Tissue** is the median-smoothed HSV saturation above an Otsu threshold (the
   segmentation of CLAM, Lu et al., Nat Biomed Eng 2021, §Methods "WSI segmentation"),
   computed on the non-ink pixels with scikit-image ``threshold_otsu`` and kept within
   [:data:`SATURATION_MIN`, :data:`SATURATION_MAX`] (glass is grey, whatever its
   brightness; the bounds keep a slide that is nearly all glass or nearly all tissue from
   splitting its glass noise or its pale stroma), or a summed optical density above
   :data:`DARK_OD` (dark material of low saturation), Beer-Lambert optical density as in
   Ruifrok & Johnston (Anal Quant Cytol Histol 2001).
4. Clean-up by area in µm² (scikit-image ``morphology``): a closing by a 16 µm disk, holes
   smaller than ``min_hole_um2`` filled, specks smaller than ``min_tissue_um2`` removed.
5. The mask becomes polygons (shapely: the union of its pixel runs, simplified by half a
   mask pixel) in level-0 µm; user **exclusion** regions are subtracted and an optional
   **ROI** intersected, as geometries; the final mask is the geometry rasterised again
   (:func:`core.spatial.geometry.rasterise`).

The tissue area (mm²) is the area of the final geometry: the denominator of every slide
density, and cells are counted when their centroid lies in it.

Frame: x, y in µm from the slide's top-left corner (x = column direction); mask pixel
``(i, j)`` covers ``[j m, (j + 1) m) x [i m, (i + 1) m)`` µm for mask mpp ``m``; GeoJSON
exports are in level-0 pixels (QuPath's frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.affinity
import shapely.geometry

from core.errors import InputError

__all__ = ["SlideTissue", "detect_tissue", "limit_tissue", "tissue_from_rgb", "mask_to_geometry", "read_geometry",
           "rasterise_geometry", "tissue_geojson", "TISSUE_MPP", "MAX_MASK_SIDE_PX"]

#: µm per mask pixel of the tissue detection.
TISSUE_MPP = 8.0
#: Longest side of the tissue mask (a wider slide is read coarser than :data:`TISSUE_MPP`).
MAX_MASK_SIDE_PX = 4096
#: Bounds of the Otsu threshold on the median-smoothed saturation (HSV, 0-1).
SATURATION_MIN = 0.05
SATURATION_MAX = 0.20
#: Summed RGB optical density above which a pixel is tissue whatever its saturation.
DARK_OD = 0.9
#: Default clean-up sizes.
MIN_TISSUE_UM2 = 2_000.0
MIN_HOLE_UM2 = 2_000.0
CLOSING_UM = 16.0
PEN_GROW_UM = 16.0


@dataclass
class SlideTissue:
    """Tissue of a slide.

    Attributes
    ----------
    mask : (h, w) bool ndarray, True on tissue (after exclusions and ROI), at ``mask_mpp``
    mask_mpp : float, µm per mask pixel
    geometry : shapely Polygon or MultiPolygon, the tissue in level-0 µm (empty when none)
    area_mm2 : float, area of ``geometry`` in mm²
    pen_area_mm2 : float, ink excluded from the tissue, mm²
    method : str, how the mask was made (for the summary)
    notes : list of str
    """

    mask: np.ndarray
    mask_mpp: float
    geometry: Any
    area_mm2: float
    pen_area_mm2: float = 0.0
    method: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Tissue share of the mask's pixels, in [0, 1]."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def _hsv(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB → (h, w, 3) float32 HSV in [0, 1] (scikit-image ``rgb2hsv``, in float32)."""
    from skimage.color import rgb2hsv

    return rgb2hsv(np.asarray(rgb, np.float32) / np.float32(255.0)).astype(np.float32, copy=False)


def pen_mask(rgb: np.ndarray, mpp: float, hsv: np.ndarray | None = None) -> np.ndarray:
    """Pen (ink) marks in a low-resolution RGB image (module docstring, step 2).

    Parameters
    ----------
    rgb : (h, w, 3) uint8 RGB
    mpp : float, µm per pixel of ``rgb``
    hsv : (h, w, 3) float32, optional, ``rgb`` in HSV when already computed

    Returns
    -------
    (h, w) bool, True on ink (grown by :data:`PEN_GROW_UM`)
    """
    from skimage import morphology

    hsv = _hsv(rgb) if hsv is None else hsv
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    blue = (h >= 0.52) & (h <= 0.69) & (s > 0.6)
    green = (h >= 0.20) & (h <= 0.50) & (s > 0.25) & (v < 0.95)
    black = v < 0.2
    ink = blue | green | black
    if ink.any():
        ink = morphology.remove_small_objects(ink, max_size=2)
        grow = max(1, int(round(PEN_GROW_UM / mpp)))
        ink = morphology.dilation(ink, morphology.disk(grow))
    return ink


def tissue_from_rgb(rgb: np.ndarray, mpp: float, *, pen_marks: bool = True, min_tissue_um2: float = MIN_TISSUE_UM2,
                    min_hole_um2: float = MIN_HOLE_UM2) -> tuple[np.ndarray, np.ndarray, str]:
    """Tissue and ink masks of a low-resolution brightfield image (module docstring, steps 2-4).

    Parameters
    ----------
    rgb : (h, w, 3) uint8 RGB, e.g. the slide at 8 µm/px
    mpp : float, µm per pixel of ``rgb``
    pen_marks : bool, exclude ink
    min_tissue_um2, min_hole_um2 : float, µm²

    Returns
    -------
    tissue : (h, w) bool
    ink : (h, w) bool (all False with ``pen_marks`` off)
    method : str

    References
    ----------
    Otsu N., IEEE Trans Syst Man Cybern 9:62 (1979); Lu M.Y. et al. (CLAM), Nat Biomed Eng
    5:555 (2021); Janowczyk A. et al. (HistoQC), JCO Clin Cancer Inform 3:1 (2019).
    """
    from scipy import ndimage
    from skimage import filters, morphology

    rgb = np.asarray(rgb, np.uint8)
    hsv = _hsv(rgb)
    ink = pen_mask(rgb, mpp, hsv) if pen_marks else np.zeros(rgb.shape[:2], bool)
    sat = ndimage.median_filter(hsv[..., 1], size=5, mode="nearest")
    del hsv
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0).sum(axis=-1)
    pool = sat[~ink]
    if pool.size >= 16 and float(pool.max()) > float(pool.min()):
        otsu = float(filters.threshold_otsu(pool))
    else:
        otsu = SATURATION_MIN
    threshold = float(np.clip(otsu, SATURATION_MIN, SATURATION_MAX))
    tissue = ((sat > threshold) | (od > DARK_OD)) & ~ink
    px_um2 = mpp * mpp
    close_px = max(1, int(round(CLOSING_UM / mpp)))
    tissue = morphology.closing(tissue, morphology.disk(close_px)) & ~ink
    # scikit-image removes components of at most max_size pixels: those smaller than the area asked for
    tissue = morphology.remove_small_holes(tissue, max_size=max(0, math.ceil(min_hole_um2 / px_um2) - 1))
    tissue = morphology.remove_small_objects(tissue, max_size=max(0, math.ceil(min_tissue_um2 / px_um2) - 1))
    tissue &= ~ink
    method = (f"saturation > {threshold:.3f} (Otsu {otsu:.3f}, kept in {SATURATION_MIN:g}-{SATURATION_MAX:g}) or "
              f"optical density > {DARK_OD:g}, at {mpp:.3g} µm/px; closed by {CLOSING_UM:g} µm, holes < "
              f"{min_hole_um2:g} µm² filled, specks < {min_tissue_um2:g} µm² removed"
              + ("; blue, green and black ink excluded" if pen_marks else ""))
    return tissue, ink, method


def mask_to_geometry(mask: np.ndarray, mpp: float, simplify: bool = True):
    """Polygons of a mask in µm: the union of its pixel runs (shapely), simplified by half a pixel.

    Parameters
    ----------
    mask : (h, w) bool, pixel (i, j) covering [j mpp, (j + 1) mpp) x [i mpp, (i + 1) mpp) µm
    mpp : float, µm per pixel

    Returns
    -------
    shapely Polygon or MultiPolygon (possibly empty), µm
    """
    m = np.asarray(mask, bool)
    if not m.any():
        return shapely.Polygon()
    padded = np.zeros((m.shape[0], m.shape[1] + 2), np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    r0, c0 = np.nonzero(d == 1)
    r1, c1 = np.nonzero(d == -1)  # same rows, same order: runs [c0, c1)
    # merge runs repeated on consecutive rows into taller boxes (far fewer boxes to union)
    order = np.lexsort((r0, c1, c0))
    r0, c0, c1 = r0[order], c0[order], c1[order]
    new = np.ones(len(r0), bool)
    new[1:] = (c0[1:] != c0[:-1]) | (c1[1:] != c1[:-1]) | (r0[1:] != r0[:-1] + 1)
    group = np.cumsum(new) - 1
    top = r0[new]
    bottom = np.zeros(group[-1] + 1, np.int64)
    np.maximum.at(bottom, group, r0 + 1)
    boxes = shapely.box(c0[new] * mpp, top * mpp, c1[new] * mpp, bottom * mpp)
    geom = shapely.union_all(boxes)
    if simplify:
        geom = shapely.simplify(geom, 0.5 * mpp, preserve_topology=True)
    return shapely.make_valid(geom) if not geom.is_valid else geom


def _polygonal(geom):
    """Only the polygonal parts of ``geom`` (a Polygon or MultiPolygon)."""
    if geom.is_empty:
        return shapely.Polygon()
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def read_geometry(source, mpp: float, what: str = "regions"):
    """Polygons from shapely geometries or GeoJSON, in level-0 µm.

    Parameters
    ----------
    source : shapely geometry (µm), list of them, a GeoJSON path / text / dict (coordinates
        in level-0 **pixels**, QuPath's frame), or None
    mpp : float, µm per level-0 pixel (for GeoJSON)
    what : str, named in messages (e.g. ``"--roi"``)

    Returns
    -------
    shapely Polygon / MultiPolygon in µm, or None for ``source`` None

    Raises
    ------
    InputError
        Unreadable or oversized GeoJSON (the limits of :mod:`core.spatial.regions`), no
        polygon in it, coordinates beyond :data:`core.spatial.regions.MAX_COORDINATE_UM`.
    """
    from core.spatial.regions import MAX_REGION_VERTICES, _load_geojson, check_coordinates_um

    if source is None:
        return None
    if isinstance(source, shapely.Geometry):
        geoms = [source]
    elif isinstance(source, (list, tuple)) and source and all(isinstance(g, shapely.Geometry) for g in source):
        geoms = list(source)
    else:
        data = _load_geojson(str(source) if isinstance(source, Path) else source)
        if isinstance(data, dict) and data.get("type") == "FeatureCollection":
            feats = data.get("features") or []
        elif isinstance(data, dict) and data.get("type") == "Feature":
            feats = [data]
        elif isinstance(data, dict) and data.get("type") in ("Polygon", "MultiPolygon"):
            feats = [{"type": "Feature", "geometry": data}]
        elif isinstance(data, list):
            feats = data
        else:
            raise InputError(f"{what}: not GeoJSON polygons (expected a FeatureCollection, a Feature or a Polygon)")
        geoms = []
        for k, feat in enumerate(feats):
            geom = feat.get("geometry") if isinstance(feat, dict) else None
            if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
                continue
            try:
                g = shapely.geometry.shape(geom)
            except (TypeError, ValueError, KeyError, AttributeError, shapely.errors.ShapelyError) as err:
                raise InputError(f"{what}: feature {k} has malformed polygon coordinates ({err})") from err
            if shapely.get_num_coordinates(g) > MAX_REGION_VERTICES:
                raise InputError(f"{what}: feature {k} has more than {MAX_REGION_VERTICES} vertices; simplify it")
            geoms.append(shapely.affinity.scale(g, mpp, mpp, origin=(0, 0)))
        if not geoms:
            raise InputError(f"{what}: the GeoJSON holds no polygon; draw the region as a polygon (QuPath: export "
                             "the annotation as GeoJSON)")
    for g in geoms:
        coords = shapely.get_coordinates(g)
        check_coordinates_um(coords, what)
    geom = shapely.union_all([shapely.make_valid(g) for g in geoms])
    geom = _polygonal(geom)
    if geom.is_empty:
        raise InputError(f"{what}: the polygons enclose no area")
    return geom


def rasterise_geometry(geom, mpp: float, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) bool mask of the pixel centres inside ``geom`` (µm; pixel (i, j) centred at ((j + 0.5) mpp, (i + 0.5) mpp))."""
    from core.spatial.geometry import rasterise

    if geom is None or geom.is_empty:
        return np.zeros(shape, bool)
    rings = []
    for poly in shapely.get_parts(_polygonal(geom)):
        rings.append([np.asarray(poly.exterior.coords)[:-1]] + [np.asarray(r.coords)[:-1] for r in poly.interiors])
    return rasterise(rings, 0.0, 0.0, mpp, shape)


def limit_tissue(geometry, size_um: tuple[float, float], roi=None, exclude=None) -> tuple[Any, str]:
    """Tissue polygons clipped to the slide, minus exclusion regions, within a region of interest.

    Parameters
    ----------
    geometry : shapely Polygon / MultiPolygon, the detected tissue in level-0 µm
    size_um : (width, height) of the slide in µm
    roi, exclude : shapely geometries in level-0 µm, or None (:func:`read_geometry`)

    Returns
    -------
    geometry : shapely Polygon / MultiPolygon (possibly empty), µm
    method : str, what was done, appended to :attr:`SlideTissue.method` ("" when nothing)

    Raises
    ------
    InputError
        The region of interest lies outside the slide.
    """
    bounds = shapely.box(0.0, 0.0, float(size_um[0]), float(size_um[1]))
    geom = shapely.intersection(geometry, bounds)
    method = ""
    if exclude is not None:
        geom = shapely.difference(geom, exclude)
        method += "; exclusion regions subtracted"
    if roi is not None:
        if shapely.intersection(roi, bounds).is_empty:
            raise InputError("the region of interest lies outside the slide: check that its coordinates are level-0 "
                             "pixels (GeoJSON) or µm (a rectangle) of this slide")
        geom = shapely.intersection(geom, roi)
        method += "; limited to the region of interest"
    return _polygonal(geom), method


def detect_tissue(slide, *, mask_mpp: float = TISSUE_MPP, roi=None, exclude=None, pen_marks: bool = True,
                  min_tissue_um2: float = MIN_TISSUE_UM2, min_hole_um2: float = MIN_HOLE_UM2) -> tuple[SlideTissue, np.ndarray]:
    """Tissue of a slide (module docstring), with exclusions subtracted and a ROI intersected.

    Parameters
    ----------
    slide : core.slides.reader.Slide, with an mpp
    mask_mpp : float, µm per mask pixel (raised so the mask is at most
        :data:`MAX_MASK_SIDE_PX` a side)
    roi, exclude : shapely geometry in level-0 µm, a list of them, a GeoJSON path/text/dict
        in level-0 pixels, or None
    pen_marks : bool, exclude ink
    min_tissue_um2, min_hole_um2 : float, µm²

    Returns
    -------
    tissue : SlideTissue
    rgb : (h, w, 3) uint8, the slide at ``tissue.mask_mpp`` the mask was computed from

    Raises
    ------
    InputError
        The slide has no mpp; a ROI or exclusion file cannot be read (see :func:`read_geometry`).
    """
    mpp0 = slide.require_mpp()
    roi_geom = read_geometry(roi, mpp0, "the region of interest (--roi)")
    exclude_geom = read_geometry(exclude, mpp0, "the exclusion regions")
    width_um, height_um = slide.width_px * mpp0, slide.height_px * mpp0
    m = max(float(mask_mpp), max(width_um, height_um) / MAX_MASK_SIDE_PX, mpp0)
    shape = (max(1, math.ceil(height_um / m)), max(1, math.ceil(width_um / m)))
    rgb = slide.read_grid(0, 0, shape[1], shape[0], m / mpp0)
    tissue, ink, method = tissue_from_rgb(rgb, m, pen_marks=pen_marks, min_tissue_um2=min_tissue_um2,
                                          min_hole_um2=min_hole_um2)
    notes = []
    geom, how = limit_tissue(mask_to_geometry(tissue, m), (width_um, height_um), roi_geom, exclude_geom)
    method += how
    pen_mm2 = float(ink.sum()) * m * m / 1e6
    if pen_mm2 > 0:
        notes.append(f"pen marks excluded from the tissue: {pen_mm2:.2f} mm²")
    mask = rasterise_geometry(geom, m, shape)
    return SlideTissue(mask, m, geom, float(geom.area) / 1e6, pen_mm2, method, notes), rgb


def tissue_geojson(tissue: SlideTissue, mpp0: float, name: str = "Tissue") -> dict:
    """The tissue as a GeoJSON FeatureCollection in level-0 **pixels** (QuPath annotation, class "Tissue").

    Returns
    -------
    dict, one MultiPolygon Feature (``properties``: objectType, name, classification,
    area_mm2, mpp) — JSON-ready
    """
    geom = shapely.affinity.scale(tissue.geometry, 1.0 / mpp0, 1.0 / mpp0, origin=(0, 0)) \
        if not tissue.geometry.is_empty else tissue.geometry
    mapping = shapely.geometry.mapping(geom) if not geom.is_empty else {"type": "MultiPolygon", "coordinates": []}
    if mapping["type"] == "Polygon":
        mapping = {"type": "MultiPolygon", "coordinates": [mapping["coordinates"]]}
    return {
        "type": "FeatureCollection",
        "features": [{
            "type": "Feature",
            "geometry": _lists(mapping),
            "properties": {"objectType": "annotation", "name": name,
                           "classification": {"name": "Tissue", "color": [0, 160, 0]},
                           "area_mm2": round(tissue.area_mm2, 6), "mpp": mpp0,
                           "method": tissue.method},
        }],
    }


def _lists(obj):
    """Tuples → lists (JSON arrays), rounding coordinates to 0.01 px."""
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, (int, float)) for v in obj):
            return [round(float(v), 2) for v in obj]
        return [_lists(v) for v in obj]
    return obj
