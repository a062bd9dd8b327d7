"""Compartments from a predicted label map, in the terms the spatial statistics use.

A compartment scenario (``tissue-compartments``, CD-UNET) labels every pixel background (glass
and artefacts) 0, tumour 1, stroma 2 or necrosis 3. This module turns such a map into what the
TIL statistics need, so that a cell scenario can use predicted compartments instead of drawn
ones:

* :func:`label_map_regions`: tumour and stroma polygons (:class:`core.spatial.regions.Region`,
  µm) and exclusions for necrosis and glass, the input of
  :func:`core.spatial.compute_spatial_stats` (which then gives the intratumoral / stromal
  densities and the phenotype);
* :func:`compartment_masks`: the same on the raster, with the invasive margin as a band of
  ``band_width_um`` centred on the predicted tumour-stroma border, cut to tissue (necrosis and
  glass excluded);
* :func:`invasive_margin_from_labels`: the CT / IM section of the statistics on that band (the
  outline of a tumour polygon also runs along the image's edges and around necrosis, which are
  no invasive margin);
* :func:`stromal_til_percent`: stromal TILs by the International TILs Working Group's
  definition, the share of the stromal area covered by mononuclear cells (necrosis and glass
  are not stroma);
* :func:`compartment_statistics`: densities per compartment and band, and the stromal TIL %.

Conventions: a label map is (H, W) uint8 in the pixels of the analysed image; cell positions
are pixels with centres at integer coordinates (``x_px``, ``y_px`` of the cell table), and µm
are ``px * mpp`` as in the cell table (:func:`core.cells.make_cell_table`); areas are counted
on the raster (exact for the map), densities are cells/mm².

References
----------
Salgado R. et al., "The evaluation of tumor-infiltrating lymphocytes (TILs) in breast cancer:
recommendations by an International TILs Working Group 2014", Ann Oncol 26:259-271 (2015)
(stromal TILs: % of stromal area occupied by mononuclear cells; necrosis and crush artefacts
excluded); Galon J. et al., Science 313:1960-1964 (2006) and Pagès F. et al., Lancet
391:2128-2139 (2018) (tumour centre and invasive margin); CD-UNET paper §2 (compartments).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from core.errors import InputError
from core.spatial.regions import Region

#: Label values of a compartment map (as in ``summary.json["compartments"]["labels"]``).
LABELS = {"background": 0, "tumour": 1, "stroma": 2, "necrosis": 3}
#: Area of one mononuclear cell for the stromal TIL %: a small lymphocyte of 7 µm diameter
#: (the default of :class:`core.spatial.SpatialParams`).
IMMUNE_CELL_AREA_UM2 = 38.5
#: Regions (and holes) smaller than this are dropped from the polygons (µm²).
MIN_REGION_AREA_UM2 = 150.0


def _check(labels: np.ndarray, mpp: float) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"a compartment label map is (H, W), got shape {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() > 3):
        bad = sorted(set(np.unique(lab).tolist()) - {0, 1, 2, 3})[:5]
        raise InputError(f"compartment labels must be 0-3 ({LABELS}), got values {bad}")
    if mpp is None or not np.isfinite(mpp) or mpp <= 0:
        raise InputError(f"mpp must be a positive number of µm per pixel, got {mpp!r}: compartments need the scanner's mpp")
    return lab.astype(np.uint8, copy=False)


def mask_polygons(mask: np.ndarray, min_area_px: float = 0.0,
                  simplify_px: float = 0.5) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Polygons (outer ring and holes) of the connected parts of a binary mask.

    Contours are traced at the 0.5 level between pixel centres (scikit-image
    ``measure.find_contours`` on the zero-padded mask), so a polygon runs half a pixel inside
    the mask's pixel edges: its area is smaller than the pixel count by about half a pixel per
    boundary pixel (use the pixel count for areas).

    Parameters
    ----------
    mask : (H, W) bool
    min_area_px : float, parts and holes of fewer pixels are dropped
    simplify_px : float >= 0, Douglas-Peucker tolerance (shapely; where the plain simplification
        gives an invalid polygon, GEOS's topology-preserving one is used)

    Returns
    -------
    list of (outer, holes): (N, 2) float64 x, y ring in pixels (centres at integers) and a list
    of such rings
    """
    import shapely
    from skimage import measure

    mask = np.asarray(mask, bool)
    comp, n = ndimage.label(mask)
    out = []
    if n == 0:
        return out
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    objs = ndimage.find_objects(comp)
    for k, sl in enumerate(objs, start=1):
        if sl is None or sizes[k] < max(min_area_px, 1):
            continue
        sub = np.pad(comp[sl] == k, 1)
        y0, x0 = sl[0].start - 1, sl[1].start - 1
        rings = []
        for c in measure.find_contours(sub.astype(np.float32), 0.5):
            if len(c) < 4:
                continue
            ring = np.c_[c[:, 1] + x0, c[:, 0] + y0]
            poly = shapely.Polygon(ring)
            if poly.area <= 0:
                continue
            rings.append((poly.area, ring))
        if not rings:
            continue
        rings.sort(key=lambda r: -r[0])
        outer = rings[0][1]
        holes = [r for a, r in rings[1:] if a >= max(min_area_px, 1)]
        geom = shapely.Polygon(outer, holes)
        if simplify_px > 0:
            # Plain Douglas-Peucker is 20-30x faster than GEOS's topology-preserving simplifier on
            # pixel staircases; where it leaves a ring self-touching or crossing a hole, the
            # topology-preserving result is used instead.
            simple = shapely.simplify(geom, simplify_px, preserve_topology=False)
            geom = simple if shapely.is_valid(simple) and not simple.is_empty else \
                geom.simplify(simplify_px, preserve_topology=True)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        for part in shapely.get_parts(geom):
            if isinstance(part, shapely.Polygon) and part.area > 0:
                out.append((np.asarray(part.exterior.coords)[:-1],
                            [np.asarray(h.coords)[:-1] for h in part.interiors]))
    return out


def label_map_regions(labels: np.ndarray, mpp: float, min_area_um2: float = MIN_REGION_AREA_UM2,
                      simplify_um: float | None = None, trace=None) -> list[Region]:
    """Regions for :func:`core.spatial.compute_spatial_stats` from a compartment label map.

    Parameters
    ----------
    labels : (H, W) uint8 in {0, 1, 2, 3}, pixels of the analysed image
    mpp : float > 0, µm/px of that image
    min_area_um2 : float, parts and holes smaller than this are left out
    simplify_um : float, optional, outline tolerance (default half a pixel)
    trace : callable(value, min_area_px, simplify_px) → :func:`mask_polygons` of ``labels == value``,
        optional (default: traced here); lets a caller that keeps the polygons trace each label once

    Returns
    -------
    list of Region, polygons in µm (``px * mpp``): kind ``tumour`` named "Tumour k", kind
    ``stroma`` named "Stroma k", kind ``exclude`` named "Necrosis k" and "Glass k"

    Raises
    ------
    InputError
        If ``labels`` is not a 2-D map of 0-3 or ``mpp`` is not positive.
    """
    lab = _check(labels, mpp)
    tol = (0.5 if simplify_um is None else simplify_um / mpp)
    min_px = min_area_um2 / mpp**2
    out: list[Region] = []
    for value, kind, name in ((1, "tumour", "Tumour"), (2, "stroma", "Stroma"), (3, "exclude", "Necrosis"),
                              (0, "exclude", "Glass")):
        polygons = trace(value, min_px, tol) if trace is not None else mask_polygons(lab == value, min_px, tol)
        for k, (outer, holes) in enumerate(polygons, start=1):
            out.append(Region(f"{name} {k}", kind, outer * mpp, id=f"{name.lower()}-{k}",
                              holes_um=tuple(h * mpp for h in holes)))
    return out


def compartment_areas_mm2(labels: np.ndarray, mpp: float) -> dict[str, float]:
    """Area of each compartment in mm² (pixel count x mpp²): {"background", "tumour", "stroma", "necrosis"}.

    Raises
    ------
    InputError
        See :func:`label_map_regions`.
    """
    lab = _check(labels, mpp)
    counts = np.bincount(lab.ravel(), minlength=4)
    return {name: float(counts[v]) * mpp**2 / 1e6 for name, v in LABELS.items()}


def compartment_masks(labels: np.ndarray, mpp: float, band_width_um: float) -> dict[str, np.ndarray]:
    """Raster compartments with the invasive margin as a band around the predicted tumour border.

    The tumour border is where tumour meets stroma (the invasive front): tumour pixels with a
    stroma pixel among their 4 neighbours. The tumour's edges against necrosis or glass, and the
    image's edges, are not an invasive margin. A pixel's signed distance to the border is
    measured from pixel centre to the tumour-stroma interface half a pixel beyond those border
    pixels, negative inside the tumour. The invasive margin (IM) is the tissue (tumour or stroma,
    not necrosis or glass) within ``band_width_um / 2`` of the border on either side; the tumour
    centre (CT) is the tumour deeper than that. A map without a tumour-stroma border (no tumour,
    or no stroma next to it) has no band, and all its tumour is centre.

    Parameters
    ----------
    labels : (H, W) uint8 in {0, 1, 2, 3}
    mpp : float > 0, µm/px
    band_width_um : float > 0, full width of the band (Galon et al.: 1 mm, ±500 µm)

    Returns
    -------
    dict of (H, W) bool: ``tumour``, ``stroma``, ``necrosis``, ``glass``, ``tissue`` (tumour or
    stroma), ``margin`` (IM band), ``centre`` (CT); and ``signed_distance_um`` (H, W) float32
    (NaN without tumour)

    Raises
    ------
    InputError
        If the map or mpp is invalid or ``band_width_um`` is not positive.
    """
    lab = _check(labels, mpp)
    if not band_width_um or band_width_um <= 0:
        raise InputError(f"band_width_um must be > 0 µm, got {band_width_um!r}")
    tumour, stroma = lab == 1, lab == 2
    tissue = tumour | stroma
    out = {"tumour": tumour, "stroma": stroma, "necrosis": lab == 3, "glass": lab == 0, "tissue": tissue}
    border = tumour & ndimage.binary_dilation(stroma)  # tumour pixels touching stroma (4-neighbourhood)
    if border.any():
        d = ndimage.distance_transform_edt(~border) * mpp
        sd = np.where(tumour, -(d + 0.5 * mpp), d - 0.5 * mpp).astype(np.float32)
        half = band_width_um / 2.0
        out["margin"] = tissue & (np.abs(sd) <= half)
        out["centre"] = tumour & (sd < -half)
    else:
        sd = np.full(lab.shape, np.nan, np.float32)
        out["margin"] = np.zeros(lab.shape, bool)
        out["centre"] = tumour.copy()
    out["signed_distance_um"] = sd
    return out


def _pixels_of(xy_px: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xy = np.asarray(xy_px, np.float64).reshape(-1, 2)
    ok = np.isfinite(xy).all(axis=1)
    ix = np.clip(np.round(np.nan_to_num(xy[:, 0])).astype(np.int64), 0, shape[1] - 1)
    iy = np.clip(np.round(np.nan_to_num(xy[:, 1])).astype(np.int64), 0, shape[0] - 1)
    inside = ok & (xy[:, 0] > -0.5) & (xy[:, 0] < shape[1] - 0.5) & (xy[:, 1] > -0.5) & (xy[:, 1] < shape[0] - 0.5)
    return ix, iy, inside


def labels_at(labels: np.ndarray, xy_px: np.ndarray) -> np.ndarray:
    """The compartment label under each point.

    Parameters
    ----------
    labels : (H, W) uint8 in {0, 1, 2, 3}
    xy_px : (N, 2) float x, y in pixels of the map (pixel centres at integers, as ``x_px``, ``y_px``)

    Returns
    -------
    (N,) int16: the label of the pixel nearest each point, -1 for a point outside the map or not finite
    """
    lab = np.asarray(labels)
    ix, iy, inside = _pixels_of(xy_px, lab.shape)
    out = np.full(len(ix), -1, np.int16)
    out[inside] = lab[iy[inside], ix[inside]]
    return out


def stromal_til_percent(labels: np.ndarray, mpp: float, immune_xy_px: np.ndarray,
                        immune_cell_area_um2: float = IMMUNE_CELL_AREA_UM2) -> dict:
    """Stromal TILs by the TILs Working Group definition: stromal area covered by mononuclear cells / stromal area.

    Each mononuclear cell whose centre lies in stroma covers a disc of ``immune_cell_area_um2``
    centred on it; the covered area is the union of the discs within the stroma (so touching
    cells are not counted twice and the figure cannot exceed 100 %). Necrosis, glass and tumour
    are not stroma.

    Parameters
    ----------
    labels : (H, W) uint8 in {0, 1, 2, 3}
    mpp : float > 0, µm/px
    immune_xy_px : (N, 2) float x, y in pixels of the mononuclear (immune) cells
    immune_cell_area_um2 : float > 0 (default 38.5 µm², a 7 µm lymphocyte)

    Returns
    -------
    dict
        ``available`` (bool), ``percent`` (float in [0, 100] or None), ``stroma_area_mm2``,
        ``covered_area_mm2``, ``n_immune_in_stroma``, ``immune_cell_area_um2``, ``definition``

    Raises
    ------
    InputError
        If the map or mpp is invalid or the cell area is not positive.

    References
    ----------
    Salgado et al. 2015 (International TILs Working Group).
    """
    lab = _check(labels, mpp)
    if immune_cell_area_um2 <= 0:
        raise InputError(f"immune_cell_area_um2 must be > 0, got {immune_cell_area_um2}")
    stroma = lab == 2
    ix, iy, inside = _pixels_of(immune_xy_px, lab.shape)
    in_stroma = inside & stroma[iy, ix]
    res = {"immune_cell_area_um2": float(immune_cell_area_um2),
           "definition": "area of stroma covered by mononuclear cells (a disc of immune_cell_area_um2 per cell, "
                         "union) / stromal area x 100; necrosis and glass are not stroma (TILs Working Group, "
                         "Salgado et al. 2015)",
           "stroma_area_mm2": float(stroma.sum()) * mpp**2 / 1e6, "n_immune_in_stroma": int(in_stroma.sum())}
    if not stroma.any():
        return {**res, "available": False, "percent": None, "covered_area_mm2": 0.0, "reason": "no stroma in the map"}
    covered = np.zeros(lab.shape, bool)
    covered[iy[in_stroma], ix[in_stroma]] = True
    r_px = np.sqrt(immune_cell_area_um2 / np.pi) / mpp
    if r_px >= 0.5 and covered.any():
        covered = ndimage.distance_transform_edt(~covered) <= r_px
    covered &= stroma
    return {**res, "available": True, "percent": 100.0 * float(covered.sum()) / float(stroma.sum()),
            "covered_area_mm2": float(covered.sum()) * mpp**2 / 1e6}


def invasive_margin_from_labels(labels: np.ndarray, mpp: float, cells: pd.DataFrame, params) -> dict:
    """The ``invasive_margin`` section of the spatial statistics on a predicted compartment map.

    The tumour centre (CT) and the invasive margin (IM, a band of ± ``margin_half_width_um``
    around the predicted tumour-stroma border) of :func:`compartment_masks`, cut to tissue
    (tumour and stroma: necrosis and glass are in neither), their areas counted on the map's
    pixels; a cell is in a zone when its centroid's pixel is. The figures (densities,
    Immunoscore-like summary, histogram of the immune cells' signed distances) are those of
    drawn regions (:func:`core.spatial.compartments.margin_section`).

    Parameters
    ----------
    labels : (H, W) uint8 in {0, 1, 2, 3}, in the pixels of ``cells``
    mpp : float > 0, µm/px
    cells : pandas.DataFrame with ``x_px``, ``y_px`` and ``role``
    params : core.spatial.SpatialParams (``margin_half_width_um``, ``immunoscore_cutoffs_per_mm2``,
        ``min_compartment_area_mm2``)

    Returns
    -------
    dict, the layout of :func:`core.spatial.compartments.invasive_margin_section`;
    ``{"available": False, "reason": ...}`` when the map has no tumour-stroma border

    Raises
    ------
    InputError
        If a column is missing or the map or mpp is invalid.

    References
    ----------
    Galon et al. 2006; Pagès et al. 2018 (CT and IM, IM = a band around the invasive border).
    """
    from core.spatial.compartments import margin_section
    from core.spatial.params import unavailable

    missing = [c for c in ("x_px", "y_px", "role") if c not in cells.columns]
    if missing:
        raise InputError(f"cell table is missing column(s) {missing}: the invasive margin needs x_px, y_px and role")
    h = float(params.margin_half_width_um)
    m = compartment_masks(labels, mpp, 2.0 * h)
    if not np.isfinite(m["signed_distance_um"]).any():
        return unavailable("no border between predicted tumour and stroma: no invasive margin")
    ix, iy, inside = _pixels_of(cells[["x_px", "y_px"]].to_numpy(np.float64), m["tumour"].shape)
    in_tissue = inside & m["tissue"][iy, ix]
    sd = np.where(in_tissue, m["signed_distance_um"][iy, ix], np.nan).astype(np.float64)
    imm = cells["role"].astype(str).to_numpy() == "immune"
    px_um2 = mpp * mpp
    out = margin_section(sd, imm, in_tissue, inside & m["centre"][iy, ix], inside & m["margin"][iy, ix],
                         float(m["centre"].sum()) * px_um2, float(m["margin"].sum()) * px_um2, params,
                         "border between the predicted tumour and stroma", f"pixels of the compartment map ({mpp:.3g} µm)")
    out["ct"]["definition"] = f"predicted tumour more than {h:g} µm from its border with the stroma"
    out["im"]["definition"] = (f"predicted tumour or stroma within {h:g} µm of the tumour-stroma border (necrosis and "
                               "glass excluded)")
    return out


def compartment_statistics(labels: np.ndarray, mpp: float, cells: pd.DataFrame, band_width_um: float = 1000.0,
                           immune_cell_area_um2: float = IMMUNE_CELL_AREA_UM2) -> dict:
    """Immune densities per predicted compartment and band, and the stromal TIL %.

    Parameters
    ----------
    labels : (H, W) uint8 in {0, 1, 2, 3}, in the pixels of ``cells``
    mpp : float > 0, µm/px
    cells : pandas.DataFrame with ``x_px``, ``y_px`` and ``role`` (immune cells are the TILs)
    band_width_um : float > 0, full width of the invasive-margin band (:func:`compartment_masks`)
    immune_cell_area_um2 : float > 0

    Returns
    -------
    dict
        ``areas_mm2`` (background, tumour, stroma, necrosis, margin, centre), ``n_immune`` and
        ``immune_density_per_mm2`` per ``tumour``, ``stroma``, ``margin``, ``centre`` (None for
        an empty area), ``ratio_intratumoral_to_stromal``, ``n_immune_excluded`` (in necrosis or
        glass), ``stromal_til`` (:func:`stromal_til_percent`), ``band_width_um``, ``labels``.

    Raises
    ------
    InputError
        If a column is missing, or the map, mpp or band width is invalid.
    """
    missing = [c for c in ("x_px", "y_px", "role") if c not in cells.columns]
    if missing:
        raise InputError(f"cell table is missing column(s) {missing}: predicted compartments need x_px, y_px and role")
    m = compartment_masks(labels, mpp, band_width_um)
    imm = cells["role"].astype(str).to_numpy() == "immune"
    xy = cells[["x_px", "y_px"]].to_numpy(np.float64)[imm]
    ix, iy, inside = _pixels_of(xy, m["tumour"].shape)
    px_mm2 = mpp**2 / 1e6
    areas = {k: float(m[k].sum()) * px_mm2 for k in ("tumour", "stroma", "necrosis", "glass", "margin", "centre")}
    areas["background"] = areas.pop("glass")
    n = {k: int((inside & m[k][iy, ix]).sum()) for k in ("tumour", "stroma", "margin", "centre")}
    dens = {k: (n[k] / areas[k] if areas[k] > 0 else None) for k in n}
    excluded = int((inside & (m["necrosis"] | m["glass"])[iy, ix]).sum())
    ratio = dens["tumour"] / dens["stroma"] if dens["tumour"] is not None and dens["stroma"] else None
    return {
        "labels": dict(LABELS),
        "band_width_um": float(band_width_um),
        "areas_mm2": areas,
        "n_immune": n,
        "immune_density_per_mm2": dens,
        "ratio_intratumoral_to_stromal": ratio,
        "n_immune_excluded": excluded,
        "stromal_til": stromal_til_percent(labels, mpp, xy, immune_cell_area_um2),
        "definitions": {
            "margin": f"tumour or stroma within {band_width_um / 2:g} µm of the predicted tumour border (a band of "
                      f"{band_width_um:g} µm), necrosis and glass excluded",
            "centre": f"tumour more than {band_width_um / 2:g} µm inside the predicted tumour border",
        },
    }
