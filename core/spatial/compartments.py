"""Where the immune cells are: regions, compartments, the invasive margin, per-cell zones.

* :func:`regions_section`: cell counts, net areas (exclusions subtracted) and densities
  per region and per region kind.
* :func:`compartment_sections`: intratumoral versus stromal immune density, the
  computational stromal TIL proxy and the inflamed / excluded / desert phenotype.
* :func:`invasive_margin_section`: immune densities in the tumour centre (CT) and the
  invasive margin (IM, a band of ±``margin_half_width_um`` around the tumour border) and
  an Immunoscore-like summary of the two.
* :func:`cell_spatial_table`: the same definitions cell by cell (compartment, signed
  border distance, CT/IM zone, nearest tumour cell).

Coordinates are (x, y) in µm, float64; masks are (N,) bool over the same cells; areas
are µm² inside and mm² in the output; densities are cells/mm².

References
----------
.. [Galon] Galon J. et al. "Type, density, and location of immune cells within human
   colorectal tumors predict clinical outcome." Science 313:1960-1964 (2006);
   Pagès F. et al. "International validation of the consensus Immunoscore for the
   classification of colon cancer." Lancet 391:2128-2139 (2018) (CT and IM, IM = a
   band around the invasive border).
.. [Salgado] Salgado R. et al. "The evaluation of tumor-infiltrating lymphocytes (TILs)
   in breast cancer: recommendations by an International TILs Working Group 2014."
   Ann Oncol 26:259-271 (2015).
.. [Hegde] Hegde P.S., Karanikas V., Evers S. "The where, the when, and the how of
   immune monitoring for cancer immunotherapies in the era of checkpoint inhibition."
   Clin Cancer Res 22:1865-1874 (2016) (inflamed / excluded / desert).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from core.cells import ROLES
from core.errors import InputError
from core.spatial.geometry import (
    StudyWindow,
    distance_to_segments_um,
    raster_grid,
    rasterise,
    region_net_area_um2,
    rings_segments,
    signed_distance_to_border_um,
)
from core.spatial.params import SpatialParams, density_per_mm2, distance_summary, ratio_or_none, unavailable
from core.spatial.point_processes import grid_counts
from core.spatial.regions import Region, points_in_regions


def regions_section(xy: np.ndarray, role: np.ndarray, regions: list[Region]) -> dict:
    """The ``regions`` section: counts, areas and densities per region and per kind.

    Parameters
    ----------
    xy : (N, 2) float64 ndarray
        Cell centroids (x, y) in µm (cells in exclusion regions already left out).
    role : (N,) str ndarray
        One of :data:`core.cells.ROLES` per cell.
    regions : list of Region

    Returns
    -------
    dict
        ``per_region`` (name, kind, id, ``area_mm2`` with exclusions subtracted,
        ``area_method``, counts and densities by role), ``by_kind`` (the same for the
        union of the tumour, stroma and margin regions), ``excluded_area_mm2``, ``note``.
    """
    excludes = [r for r in regions if r.kind == "exclude"]
    reg_rows = []
    masks: dict[int, np.ndarray] = {}
    for k, r in enumerate(regions):
        area_um2, how = region_net_area_um2(r, excludes) if r.kind != "exclude" else (r.area_um2, "exact")
        m = r.contains(xy) if r.kind != "exclude" else np.zeros(len(xy), dtype=bool)
        masks[k] = m
        counts = {ro: int((role[m] == ro).sum()) for ro in ROLES}
        reg_rows.append(
            {
                "name": r.name,
                "kind": r.kind,
                "id": r.id,
                "area_mm2": area_um2 / 1e6,
                "area_method": how,
                "counts_by_role": counts,
                "density_per_mm2_by_role": {ro: density_per_mm2(c, area_um2) for ro, c in counts.items()},
            }
        )
    by_kind = {}
    for kind in ("tumour", "stroma", "margin"):
        idx = [k for k, r in enumerate(regions) if r.kind == kind]
        if not idx:
            continue
        m = np.zeros(len(xy), dtype=bool)
        for k in idx:
            m |= masks[k]
        area_um2 = sum(reg_rows[k]["area_mm2"] for k in idx) * 1e6
        counts = {ro: int((role[m] == ro).sum()) for ro in ROLES}
        by_kind[kind] = {
            "n_regions": len(idx),
            "area_mm2": area_um2 / 1e6,
            "counts_by_role": counts,
            "density_per_mm2_by_role": {ro: density_per_mm2(c, area_um2) for ro, c in counts.items()},
        }
    return {
        "per_region": reg_rows,
        "by_kind": by_kind,
        "excluded_area_mm2": sum(r.area_um2 for r in excludes) / 1e6,
        "note": "areas have exclusions subtracted; regions of one kind are assumed not to overlap",
    }


def compartment_sections(
    xy: np.ndarray,
    role: np.ndarray,
    imm: np.ndarray,
    regions: list[Region],
    window: StudyWindow | None,
    in_win: np.ndarray,
    params: SpatialParams,
) -> tuple[dict, dict, dict]:
    """The ``compartments``, ``stromal_til_proxy`` and ``phenotype`` sections.

    Compartments come from ``tumour`` regions when drawn (stroma = ``stroma`` regions, or
    the window outside the tumour regions when none is drawn); without tumour regions,
    from a grid of ``grid_cell_um`` squares, a square being tumour when tumour cells are
    at least ``compartment_tumour_fraction`` of its non-immune cells.

    Parameters
    ----------
    xy : (N, 2) float64 ndarray
        Cell centroids (x, y) in µm.
    role : (N,) str ndarray
        One of :data:`core.cells.ROLES` per cell.
    imm, in_win : (N,) bool ndarray
        Immune cells, cells inside the study window.
    regions : list of Region
    window : StudyWindow or None
    params : SpatialParams
        Uses ``grid_cell_um``, ``compartment_tumour_fraction``, ``immune_cell_area_um2``
        and the phenotype thresholds.

    Returns
    -------
    compartments : dict
        Tumour and stroma areas (mm²), immune cells and densities (cells/mm²) in each,
        their ratio, and the ``source`` of the compartments.
    stromal_til_proxy : dict
        ``percent`` = 100 · immune cells in stroma · ``immune_cell_area_um2`` / stromal
        area (a proxy for the visual stromal TIL score, Salgado et al. 2015), or
        ``{"available": False, ...}`` without stromal area.
    phenotype : dict
        ``call`` (inflamed / excluded / desert) with the thresholds and rule applied.
    """
    excludes = [r for r in regions if r.kind == "exclude"]
    tumour_regions = [r for r in regions if r.kind == "tumour"]
    stroma_regions = [r for r in regions if r.kind == "stroma"]
    tumour_area = stroma_area = None
    n_imm_t = n_imm_s = 0
    if tumour_regions:
        in_t = points_in_regions(xy, tumour_regions)
        tumour_area = sum(region_net_area_um2(r, excludes)[0] for r in tumour_regions)
        if stroma_regions:
            in_s = points_in_regions(xy, stroma_regions) & ~in_t
            stroma_area = sum(region_net_area_um2(r, excludes)[0] for r in stroma_regions)
            csource = "tumour and stroma regions"
        elif window is not None:
            in_s = in_win & ~in_t
            x0, y0, x1, y1 = window.rect
            p, h, w = raster_grid(window.rect)
            wmask = ~rasterise([e.rings() for e in window.excludes], x0, y0, p, (h, w))
            tmask = rasterise([r.rings() for r in tumour_regions], x0, y0, p, (h, w))
            stroma_area = float((wmask & ~tmask).sum()) * p * p
            csource = "tumour regions; stroma = study window outside them (no stroma region drawn)"
        else:
            in_s = np.zeros(len(xy), dtype=bool)
            csource = "tumour regions"
        n_imm_t, n_imm_s = int((imm & in_t).sum()), int((imm & in_s).sum())
    elif window is not None and len(xy):
        g = grid_counts(xy, role, window.rect, params.grid_cell_um)
        non_imm = g["tumour"] + g["stroma"] + g["other"]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac_t = np.where(non_imm > 0, g["tumour"] / np.maximum(non_imm, 1), 0.0)
        t_sq = (non_imm > 0) & (frac_t >= params.compartment_tumour_fraction)
        s_sq = (non_imm > 0) & ~t_sq
        cell2 = params.grid_cell_um**2
        if t_sq.any():
            tumour_area = float(t_sq.sum()) * cell2
        if s_sq.any():
            stroma_area = float(s_sq.sum()) * cell2
        n_imm_t, n_imm_s = int(g["immune"][t_sq].sum()), int(g["immune"][s_sq].sum())
        csource = (
            f"grid of {params.grid_cell_um:g} µm squares: tumour when tumour cells >= "
            f"{params.compartment_tumour_fraction:g} of its non-immune cells (no tumour region drawn)"
        )
    else:
        csource = "none"
    d_t = density_per_mm2(n_imm_t, tumour_area)
    d_s = density_per_mm2(n_imm_s, stroma_area)
    compartments = {
        "available": d_t is not None or d_s is not None,
        "source": csource,
        "tumour_area_mm2": None if tumour_area is None else tumour_area / 1e6,
        "stroma_area_mm2": None if stroma_area is None else stroma_area / 1e6,
        "n_immune_intratumoral": n_imm_t,
        "n_immune_stromal": n_imm_s,
        "intratumoral_immune_density_per_mm2": d_t,
        "stromal_immune_density_per_mm2": d_s,
        "ratio_intratumoral_to_stromal": ratio_or_none(d_t, d_s),
    }
    min_um2 = params.min_compartment_area_mm2 * 1e6
    if stroma_area and stroma_area < min_um2:
        til = unavailable(_too_small("stromal", stroma_area, params))
    elif stroma_area:
        pct = 100.0 * n_imm_s * params.immune_cell_area_um2 / stroma_area
        til = {
            "available": True,
            "percent": pct,
            "immune_cell_area_um2": params.immune_cell_area_um2,
            "n_immune_in_stroma": n_imm_s,
            "stroma_area_mm2": stroma_area / 1e6,
            "label": "computational stromal TIL % (immune-cell area over stromal area): a proxy for, "
            "not the same as, the TILs Working Group's visual score (Salgado et al. 2015)",
            "capped_note": "can exceed 100 % when lymphocytes are packed or the cell area is set too large",
        }
    else:
        til = unavailable("no stromal area: draw a stroma region or include non-tumour cells")
    return compartments, til, _phenotype(d_t, d_s, params, tumour_area, stroma_area)


def _too_small(which: str, area_um2: float, params: SpatialParams) -> str:
    return (f"not enough tissue: the {which} compartment is {area_um2 / 1e6:.3g} mm², the figure needs at least "
            f"{params.min_compartment_area_mm2:g} mm² (analyse a larger field or the whole slide)")


def _phenotype(d_t: float | None, d_s: float | None, params: SpatialParams,
               tumour_area_um2: float | None = None, stroma_area_um2: float | None = None) -> dict:
    """Inflamed / excluded / desert from the compartment densities (cells/mm²) and the printed thresholds."""
    thr = {
        "inflamed_min_intratumoral_per_mm2": params.inflamed_min_intratumoral_per_mm2,
        "excluded_min_stromal_per_mm2": params.excluded_min_stromal_per_mm2,
    }
    rule = (
        f"inflamed if intratumoral immune density >= {params.inflamed_min_intratumoral_per_mm2:g} cells/mm²; "
        f"else excluded if stromal immune density >= {params.excluded_min_stromal_per_mm2:g} cells/mm²; else desert"
    )
    res: dict[str, Any] = {
        "thresholds": thr,
        "rule": rule,
        "inputs": {"intratumoral_immune_density_per_mm2": d_t, "stromal_immune_density_per_mm2": d_s},
        "note": "illustrative thresholds, not validated cut-offs (Hegde et al. 2016); set them for your marker and cohort",
    }
    res["min_compartment_area_mm2"] = params.min_compartment_area_mm2
    if d_t is None:
        return {**res, "available": False, "call": None, "reason": "no tumour compartment: draw a tumour region"}
    min_um2 = params.min_compartment_area_mm2 * 1e6
    if tumour_area_um2 is not None and tumour_area_um2 < min_um2:
        return {**res, "available": False, "call": None, "reason": _too_small("tumour", tumour_area_um2, params)}
    if stroma_area_um2 is not None and stroma_area_um2 < min_um2 and d_t < params.inflamed_min_intratumoral_per_mm2:
        return {**res, "available": False, "call": None, "reason": _too_small("stromal", stroma_area_um2, params)}
    if d_t >= params.inflamed_min_intratumoral_per_mm2:
        call = "inflamed"
    elif d_s is None:
        return {**res, "available": False, "call": None, "reason": "not inflamed, and no stromal compartment to tell excluded from desert"}
    elif d_s >= params.excluded_min_stromal_per_mm2:
        call = "excluded"
    else:
        call = "desert"
    return {**res, "available": True, "call": call}


def invasive_margin_section(
    xy: np.ndarray,
    imm: np.ndarray,
    regions: list[Region],
    window: StudyWindow | None,
    in_win: np.ndarray,
    params: SpatialParams,
) -> dict:
    """The ``invasive_margin`` section: CT and IM areas, immune densities and an Immunoscore-like summary.

    The border is the outline of the ``margin`` regions, else of the ``tumour`` regions.
    CT is the tumour more than ``h = margin_half_width_um`` inside the border, IM the band
    within ``h`` of it on either side, both cut to the study window. Areas are measured
    on a raster of the window whose pixel centres near ±h are refined with exact
    distances, so they carry only the pixel-centre sampling error.

    Parameters
    ----------
    xy : (N, 2) float64 ndarray
        Cell centroids (x, y) in µm.
    imm, in_win : (N,) bool ndarray
        Immune cells, cells inside the study window.
    regions : list of Region
    window : StudyWindow or None
    params : SpatialParams
        Uses ``margin_half_width_um`` and ``immunoscore_cutoffs_per_mm2``.

    Returns
    -------
    dict
        ``ct`` and ``im`` (area_mm2, n_immune, immune_density_per_mm2, definition),
        ``immunoscore_like`` (a 0-2 count of high compartments when cut-offs are set),
        ``immune_signed_distance_um`` (summary and histogram, < 0 inside the tumour);
        ``{"available": False, ...}`` without a tumour or margin region or a window.

    References
    ----------
    Galon et al. 2006; Pagès et al. 2018 (CT and IM).
    """
    if not any(r.kind in ("tumour", "margin") for r in regions):
        return unavailable("needs a tumour region (or a margin region tracing the tumour border)")
    h = float(params.margin_half_width_um)
    sd, source = signed_distance_to_border_um(xy, regions)
    zone_ct = in_win & (sd < -h)
    zone_im = in_win & (np.abs(sd) <= h)
    if window is None:
        return unavailable("no study window")
    border = [r for r in regions if r.kind == "margin"] or [r for r in regions if r.kind == "tumour"]
    x0, y0, x1, y1 = window.rect
    p, hh, ww = raster_grid(window.rect)
    valid = ~rasterise([e.rings() for e in window.excludes], x0, y0, p, (hh, ww))
    inside = rasterise([r.rings() for r in border], x0, y0, p, (hh, ww))
    d_in = ndimage.distance_transform_edt(inside) * p
    d_out = ndimage.distance_transform_edt(~inside) * p
    sd_grid = np.where(inside, -d_in + p / 2, d_out - p / 2)
    # The raster distance is within about a pixel of the truth; pixel centres near the
    # two thresholds (±h) are measured exactly, so CT/IM areas carry only the
    # pixel-centre sampling error.
    near = np.abs(np.abs(sd_grid) - h) <= 2.5 * p
    if near.any():
        rr, cc = np.nonzero(near)
        centres = np.c_[x0 + (cc + 0.5) * p, y0 + (rr + 0.5) * p]
        a_seg, b_seg = rings_segments([g for r in border for g in r.rings()])
        dd = distance_to_segments_um(centres, a_seg, b_seg)
        sd_grid[rr, cc] = np.where(inside[rr, cc], -dd, dd)
    area_ct = float((valid & (sd_grid < -h)).sum()) * p * p
    area_im = float((valid & (np.abs(sd_grid) <= h)).sum()) * p * p
    return margin_section(sd, imm, in_win, zone_ct, zone_im, area_ct, area_im, params, source,
                          f"raster {p:.3g} µm of the study window")


def margin_section(sd: np.ndarray, imm: np.ndarray, in_win: np.ndarray, zone_ct: np.ndarray, zone_im: np.ndarray,
                   area_ct: float, area_im: float, params: SpatialParams, border_source: str, area_method: str) -> dict:
    """The ``invasive_margin`` section from the cells' zones and the zones' areas, however the border was found.

    Shared by the drawn-region border (:func:`invasive_margin_section`) and the border of
    predicted compartments (:func:`core.spatial.predicted_compartments.invasive_margin_from_labels`).

    Parameters
    ----------
    sd : (N,) float64, signed distance of each cell to the tumour border in µm (< 0 inside the tumour)
    imm, in_win : (N,) bool, immune cells and cells inside the study window
    zone_ct, zone_im : (N,) bool, cells in the tumour centre and in the invasive margin
    area_ct, area_im : float, areas of the two zones in µm²
    params : SpatialParams (``margin_half_width_um``, ``immunoscore_cutoffs_per_mm2``, ``min_compartment_area_mm2``)
    border_source, area_method : str, how the border was found and the areas measured (printed)

    Returns
    -------
    dict, as :func:`invasive_margin_section`
    """
    h = float(params.margin_half_width_um)
    n_ct, n_im = int((zone_ct & imm).sum()), int((zone_im & imm).sum())
    d_ct, d_im = density_per_mm2(n_ct, area_ct), density_per_mm2(n_im, area_im)
    cut = params.immunoscore_cutoffs_per_mm2
    small = [(n, a) for n, a in (("tumour centre (CT)", area_ct), ("invasive margin (IM)", area_im))
             if a < params.min_compartment_area_mm2 * 1e6]
    if small:
        score, high = None, None
        why = "; ".join(_too_small(n, a, params) for n, a in small)
    elif cut is None:
        score, high = None, None
        why = "set SpatialParams.immunoscore_cutoffs_per_mm2 = (CT, IM), e.g. your cohort's medians, for a 0-2 score"
    else:
        high = {"ct": None if d_ct is None else d_ct >= cut[0], "im": None if d_im is None else d_im >= cut[1]}
        score = None if None in high.values() else int(high["ct"]) + int(high["im"])
        why = None
    step = h / 10
    edges = np.arange(-2 * h, 2 * h + step / 2, step)
    sd_imm = sd[imm & in_win]
    hist, _ = np.histogram(sd_imm[(sd_imm >= edges[0]) & (sd_imm <= edges[-1])], bins=edges)
    return {
        "available": True,
        "border_source": border_source,
        "half_width_um": h,
        "sign_convention": "signed distance < 0 inside the tumour, > 0 outside",
        "area_method": area_method,
        "ct": {"area_mm2": area_ct / 1e6, "n_immune": n_ct, "immune_density_per_mm2": d_ct,
               "definition": f"inside the tumour, more than {h:g} µm from the border"},
        "im": {"area_mm2": area_im / 1e6, "n_immune": n_im, "immune_density_per_mm2": d_im,
               "definition": f"within {h:g} µm of the border on either side"},
        "immunoscore_like": {
            "name": "Immunoscore-like",
            "ct_density_per_mm2": d_ct,
            "im_density_per_mm2": d_im,
            "cutoffs_per_mm2": None if cut is None else {"ct": cut[0], "im": cut[1]},
            "high": high,
            "score_0_to_2": score,
            "reason": why,
            "note": "a true Immunoscore (Pagès et al. 2018) converts CD3+ and CD8+ densities in CT and IM to "
            "percentiles of the assay's reference cohort; this is only a density summary in the same compartments",
        },
        "immune_signed_distance_um": {
            "summary": distance_summary(sd_imm),
            "histogram": {"bin_edges_um": edges, "counts": hist,
                          "n_below": int((sd_imm < edges[0]).sum()), "n_above": int((sd_imm > edges[-1]).sum())},
        },
    }


def cell_spatial_table(cells: pd.DataFrame, regions: list[Region] | None = None, params: SpatialParams | None = None) -> pd.DataFrame:
    """Per-cell spatial columns for tables and plots.

    Parameters
    ----------
    cells : pandas.DataFrame
        Cell table with ``x_um``, ``y_um``, ``role``.
    regions : list of Region, optional
    params : SpatialParams, optional
        Only ``margin_half_width_um`` is used.

    Returns
    -------
    pandas.DataFrame
        A copy of ``cells`` with ``compartment`` (str: ``"tumour"``, ``"stroma"``,
        ``"exclude"`` or ``""``; tumour wins over stroma), ``border_distance_um``
        (float64, signed, < 0 inside the tumour; NaN without tumour/margin regions),
        ``zone`` (``"CT"``, ``"IM"``, ``"outside"`` or ``""``) and
        ``nearest_tumour_um`` (float64, immune cells only, else NaN).

    Raises
    ------
    InputError
        If coordinate or role columns are missing.
    """
    params = (params or SpatialParams()).validate()
    regions = list(regions or [])
    if any(c not in cells.columns for c in ("x_um", "y_um", "role")):
        raise InputError("cell table needs x_um, y_um and role columns")
    out = cells.copy()
    xy = cells[["x_um", "y_um"]].to_numpy(dtype=np.float64)
    ok = np.isfinite(xy).all(axis=1)
    comp = np.full(len(cells), "", dtype=object)
    for kind in ("stroma", "tumour", "exclude"):
        rs = [r for r in regions if r.kind == kind]
        if rs and ok.any():
            m = np.zeros(len(cells), dtype=bool)
            m[ok] = points_in_regions(xy[ok], rs)
            comp[m] = kind
    out["compartment"] = comp
    sd = np.full(len(cells), np.nan)
    zone = np.full(len(cells), "", dtype=object)
    if any(r.kind in ("tumour", "margin") for r in regions) and ok.any():
        sd[ok], _ = signed_distance_to_border_um(xy[ok], regions)
        h = params.margin_half_width_um
        zone[ok] = np.where(sd[ok] < -h, "CT", np.where(sd[ok] <= h, "IM", "outside"))
    out["border_distance_um"] = sd
    out["zone"] = zone
    near = np.full(len(cells), np.nan)
    role = cells["role"].astype(str).to_numpy()
    t, i = ok & (role == "tumour"), ok & (role == "immune")
    if t.any() and i.any():
        near[i], _ = cKDTree(xy[t]).query(xy[i], k=1)
    out["nearest_tumour_um"] = near
    return out
