"""Spatial statistics of tumour-infiltrating lymphocytes on a cell table.

Where are the immune cells: inside tumour nests or held back in the stroma, how close
do they come to tumour cells, how dense are they in the tumour centre (CT) versus the
invasive margin (IM)? :func:`compute_spatial_stats` answers on a cell table
(:mod:`core.cells`: ``x_um``, ``y_um``, ``role``, ``cell_class``) and optional
:class:`core.regions.Region` polygons, in µm, µm², mm² and cells/mm² only, and puts
every threshold it used next to the figure it produced.

Conventions
-----------
* Coordinates are (x, y) in µm; pixels never enter this module, so the same tissue
  imaged at two mpp values gives the same figures.
* Roles (:data:`core.cells.ROLES`): ``immune`` cells are the TILs; ``tumour`` cells are
  the reference for distances and cross-K.
* Cells inside ``exclude`` regions are dropped from every statistic and exclusion areas
  are subtracted from every area.
* **Study window** (Ripley K/L, cross-G, Morisita-Horn grid, CT/IM areas): the
  rectangle ``SpatialParams.window_um`` (pass the image extent in µm, i.e.
  ``(0, 0, width_px * mpp, height_px * mpp)``) or, when it is not given, the
  **bounding box of the cells**; exclusions are cut out of it.
* **Tumour border**: the outline of ``margin`` regions when there are any, else the
  outline of ``tumour`` regions. Signed distance to it is **negative inside the
  tumour and positive outside** (towards the stroma).
* **Compartments** (intratumoral / stromal): from ``tumour`` regions when drawn (stroma =
  ``stroma`` regions, or the window outside tumour regions when none is drawn);
  without tumour regions, from a grid of ``grid_cell_um`` squares, a square being tumour
  when tumour cells are at least ``compartment_tumour_fraction`` of its non-immune cells.
  Regions of one kind are assumed not to overlap; a cell in a tumour and a stroma region
  counts as intratumoral.
* Randomness: one :class:`numpy.random.Generator`, seeded once from ``seed`` and passed
  down.

References
----------
.. [Ripley] Ripley B.D. "Modelling spatial patterns." J R Stat Soc B 39:172-212 (1977);
   Ripley B.D. "The second-order analysis of stationary point processes." J Appl Prob
   13:255-266 (1976).
.. [Baddeley] Baddeley A., Rubak E., Turner R. "Spatial Point Patterns: Methodology and
   Applications with R." CRC (2015): §7.4 (edge corrections: translation, border),
   §8.3 (G function, reduced-sample), §14.4 (multitype K, G), §10.7 (random labelling).
.. [Envelopes] Baddeley A. et al. "On tests of spatial pattern based on simulation
   envelopes." Ecol Monogr 84:477-489 (2014) (global MAD envelope).
.. [Galon] Galon J. et al. "Type, density, and location of immune cells within human
   colorectal tumors predict clinical outcome." Science 313:1960-1964 (2006);
   Pagès F. et al. "International validation of the consensus Immunoscore for the
   classification of colon cancer." Lancet 391:2128-2139 (2018) (CT and IM, IM = a
   band around the invasive border).
.. [Salgado] Salgado R. et al. "The evaluation of tumor-infiltrating lymphocytes (TILs)
   in breast cancer: recommendations by an International TILs Working Group 2014."
   Ann Oncol 26:259-271 (2015).
.. [Morisita] Horn H.S. "Measurement of 'overlap' in comparative ecological studies."
   Am Nat 100:419-424 (1966); Maley C.C. et al. "An ecological measure of immune-cancer
   colocalization as a prognostic factor for breast cancer." Breast Cancer Res 17:131
   (2015).
.. [Hegde] Hegde P.S., Karanikas V., Evers S. "The where, the when, and the how of
   immune monitoring for cancer immunotherapies in the era of checkpoint inhibition."
   Clin Cancer Res 22:1865-1874 (2016) (inflamed / excluded / desert).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage, sparse
from scipy.spatial import cKDTree
from skimage.draw import polygon as _draw_polygon

from core.cells import ROLES
from core.errors import InputError
from core.regions import Region, points_in_regions

SCHEMA = "tilscope.spatial/1"
#: Largest number of tumour-immune candidate pairs (within the largest Ripley radius)
#: the Monte-Carlo code accepts (memory is about 40 bytes a pair).
MAX_PAIRS = 60_000_000
_RASTER_MAX_PIXELS = 2_000_000


@dataclass(frozen=True)
class SpatialParams:
    """Every threshold and setting of :func:`compute_spatial_stats` (all printed in its output).

    Attributes
    ----------
    radii_um : tuple of float > 0
        Radii r for "fraction of immune cells within r µm of a tumour cell" and "immune
        cells per tumour cell within r". Default (10, 20, 30, 50).
    margin_half_width_um : float > 0
        Half-width of the invasive-margin band around the tumour border. Default 500 µm
        (the IM of Galon et al. 2006 / Pagès et al. 2018 spans ±500 µm).
    ripley_radii_um : tuple of float >= 0, increasing
        Radii at which cross-K, cross-L and cross-G are evaluated. Default 0, 5, ..., 100
        µm (cell-contact to ~10 cell diameters). Radii above half the window's shorter
        side are dropped (with a warning).
    n_simulations : int >= 0
        Random relabellings for the Monte-Carlo envelopes. Default 99 (a pointwise
        envelope at 2/100, a global one at 5/100).
    envelope_alpha : float in (0, 1)
        Level of the global (maximum absolute deviation) envelope of L(r) - r. Default 0.05.
    grid_cell_um : float > 0
        Side of the squares for the Morisita-Horn index and the grid compartments.
        Default 100 µm (Maley et al. 2015 used a comparable grid of tissue squares).
    immune_cell_area_um2 : float > 0
        Area one immune cell covers in the stromal TIL proxy. Default 38.5 µm², a
        small lymphocyte of 7 µm diameter (π·3.5²); lymphocytes are 6-9 µm across.
    compartment_tumour_fraction : float in (0, 1]
        Grid compartments: a square is tumour when tumour cells are at least this
        fraction of its non-immune cells. Default 0.5.
    inflamed_min_intratumoral_per_mm2 : float >= 0
        Phenotype: "inflamed" when the intratumoral immune density reaches this.
        Default 100 cells/mm² (illustrative, not a validated cut-off: set it from your
        cohort and marker).
    excluded_min_stromal_per_mm2 : float >= 0
        Phenotype: "excluded" when not inflamed and the stromal immune density reaches
        this; otherwise "desert". Default 100 cells/mm² (illustrative).
    immunoscore_cutoffs_per_mm2 : (float, float) or None
        (CT, IM) density cut-offs for the 0-2 Immunoscore-like count of "high"
        compartments; None (default) reports the densities only, because a true
        Immunoscore needs the assay's reference cohort.
    histogram_bin_um, histogram_max_um : float > 0
        Bins of the immune → nearest tumour distance histogram (default 2 µm up to
        200 µm; larger distances are counted as overflow).
    window_um : (x_min, y_min, x_max, y_max) in µm or None
        Study window, normally the image extent; None uses the cells' bounding box.
    """

    radii_um: tuple[float, ...] = (10.0, 20.0, 30.0, 50.0)
    margin_half_width_um: float = 500.0
    ripley_radii_um: tuple[float, ...] = tuple(float(r) for r in range(0, 101, 5))
    n_simulations: int = 99
    envelope_alpha: float = 0.05
    grid_cell_um: float = 100.0
    immune_cell_area_um2: float = 38.5
    compartment_tumour_fraction: float = 0.5
    inflamed_min_intratumoral_per_mm2: float = 100.0
    excluded_min_stromal_per_mm2: float = 100.0
    immunoscore_cutoffs_per_mm2: tuple[float, float] | None = None
    histogram_bin_um: float = 2.0
    histogram_max_um: float = 200.0
    window_um: tuple[float, float, float, float] | None = None

    def validate(self) -> "SpatialParams":
        """Return ``self`` after checking every value; raise InputError naming the bad one."""

        def pos(name: str, v: Any, zero_ok: bool = False) -> None:
            ok = isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v))
            ok = ok and (float(v) >= 0 if zero_ok else float(v) > 0)
            if not ok:
                raise InputError(f"SpatialParams.{name} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {v!r}")

        if len(self.radii_um) == 0:
            raise InputError("SpatialParams.radii_um is empty: give at least one radius in µm, e.g. (10, 20, 30, 50)")
        for r in self.radii_um:
            pos("radii_um", r)
        rr = np.asarray(self.ripley_radii_um, dtype=float)
        if rr.ndim != 1 or len(rr) < 2 or not np.all(np.isfinite(rr)) or rr.min() < 0 or np.any(np.diff(rr) <= 0):
            raise InputError(
                f"SpatialParams.ripley_radii_um must be >= 2 increasing radii >= 0 in µm, got {self.ripley_radii_um!r}"
            )
        pos("margin_half_width_um", self.margin_half_width_um)
        pos("grid_cell_um", self.grid_cell_um)
        pos("immune_cell_area_um2", self.immune_cell_area_um2)
        pos("histogram_bin_um", self.histogram_bin_um)
        pos("histogram_max_um", self.histogram_max_um)
        pos("inflamed_min_intratumoral_per_mm2", self.inflamed_min_intratumoral_per_mm2, zero_ok=True)
        pos("excluded_min_stromal_per_mm2", self.excluded_min_stromal_per_mm2, zero_ok=True)
        if not isinstance(self.n_simulations, (int, np.integer)) or self.n_simulations < 0:
            raise InputError(f"SpatialParams.n_simulations must be an integer >= 0, got {self.n_simulations!r}")
        if not 0 < float(self.envelope_alpha) < 1:
            raise InputError(f"SpatialParams.envelope_alpha must be in (0, 1), got {self.envelope_alpha!r}")
        if not 0 < float(self.compartment_tumour_fraction) <= 1:
            raise InputError(
                f"SpatialParams.compartment_tumour_fraction must be in (0, 1], got {self.compartment_tumour_fraction!r}"
            )
        if self.immunoscore_cutoffs_per_mm2 is not None:
            if len(self.immunoscore_cutoffs_per_mm2) != 2:
                raise InputError("SpatialParams.immunoscore_cutoffs_per_mm2 must be (CT, IM) cells/mm² or None")
            for v in self.immunoscore_cutoffs_per_mm2:
                pos("immunoscore_cutoffs_per_mm2", v, zero_ok=True)
        if self.window_um is not None:
            w = np.asarray(self.window_um, dtype=float)
            if w.shape != (4,) or not np.all(np.isfinite(w)) or w[2] <= w[0] or w[3] <= w[1]:
                raise InputError(
                    f"SpatialParams.window_um must be (x_min, y_min, x_max, y_max) in µm with max > min, got {self.window_um!r}"
                )
        return self

    def to_dict(self) -> dict:
        """JSON-ready dict of the parameters (tuples as lists)."""
        return _clean(asdict(self))


# ----------------------------------------------------------------------------- helpers


def _clean(obj: Any) -> Any:
    """Recursively convert numpy types to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_clean(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _density_per_mm2(count: float, area_um2: float | None) -> float | None:
    if area_um2 is None or area_um2 <= 0:
        return None
    return float(count) / (area_um2 / 1e6)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _rings_segments(rings: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Segments (start, end), each (E, 2) float64, of closed rings."""
    if not rings:
        return np.zeros((0, 2)), np.zeros((0, 2))
    a = np.vstack(rings)
    b = np.vstack([np.roll(r, -1, axis=0) for r in rings])
    return a, b


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distance from points p (M, 2) to segments a-b (M, 2)."""
    px, py = p[:, 0], p[:, 1]
    ax, ay = a[:, 0], a[:, 1]
    abx, aby = b[:, 0] - ax, b[:, 1] - ay
    den = abx * abx + aby * aby
    apx, apy = px - ax, py - ay
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(den > 0, (apx * abx + apy * aby) / den, 0.0)
    np.clip(t, 0.0, 1.0, out=t)
    return np.hypot(apx - t * abx, apy - t * aby)


def distance_to_segments_um(xy_um: np.ndarray, seg_start_um: np.ndarray, seg_end_um: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from each point to the nearest of a set of segments.

    Points are grouped in square blocks; for a block with centre c and half-diagonal
    ρ, a segment can hold the nearest border point of one of its points only if
    ``dist(c, segment) <= min_segments dist(c, .) + 2ρ``, so each point is measured
    exactly against that short candidate list. Cost O(B·E + N·k) for B blocks and k
    candidates per block (a few dozen to a few hundred for smooth borders).

    Parameters
    ----------
    xy_um : (N, 2) float array
        Points (x, y) in µm.
    seg_start_um, seg_end_um : (E, 2) float arrays
        Segment end points in µm, E >= 1.

    Returns
    -------
    (N,) float64 ndarray
        Exact distances in µm, >= 0.

    Raises
    ------
    InputError
        If there are no segments.
    """
    xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
    a = np.asarray(seg_start_um, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(seg_end_um, dtype=np.float64).reshape(-1, 2)
    if len(a) == 0:
        raise InputError("no border segments to measure distances to")
    n, e = len(xy), len(a)
    if n == 0:
        return np.zeros(0)
    lo = xy.min(axis=0)
    span = float(max((xy.max(axis=0) - lo).max(), 1e-9))
    nb = int(np.clip(math.sqrt(n / 32.0), 1, 256))
    side = span / nb * (1 + 1e-9)
    ij = np.minimum(((xy - lo) // side).astype(np.int64), nb - 1)
    blk = ij[:, 1] * nb + ij[:, 0]
    order = np.argsort(blk, kind="stable")
    blocks, first, counts = np.unique(blk[order], return_index=True, return_counts=True)
    centres = lo + (np.c_[blocks % nb, blocks // nb] + 0.5) * side
    rho = side * math.sqrt(2) / 2
    out = np.empty(n)
    pts_sorted = order
    blk_of_sorted = np.repeat(np.arange(len(blocks)), counts)
    step = max(1, 4_000_000 // e)
    for c0 in range(0, len(blocks), step):
        cs = centres[c0 : c0 + step]
        m = len(cs)
        dc = _point_segment_distance(np.repeat(cs, e, axis=0), np.tile(a, (m, 1)), np.tile(b, (m, 1))).reshape(m, e)
        rows, cand = np.nonzero(dc <= dc.min(axis=1, keepdims=True) + 2 * rho + 1e-9)
        k_blk = np.bincount(rows, minlength=m)
        off_blk = np.cumsum(k_blk) - k_blk
        # Points of these blocks, in chunks of about 4 million (point, segment) pairs.
        p_lo, p_hi = first[c0], first[c0 + m - 1] + counts[c0 + m - 1]
        sel = np.arange(p_lo, p_hi)
        r_of = blk_of_sorted[sel] - c0
        kp = k_blk[r_of]
        cum = np.cumsum(kp)
        start = 0
        while start < len(sel):
            stop = int(np.searchsorted(cum, (cum[start] - kp[start]) + 4_000_000, side="right"))
            stop = max(stop, start + 1)
            ss, kk = sel[start:stop], kp[start:stop]
            tot = int(kk.sum())
            pt = np.repeat(pts_sorted[ss], kk)
            first_pair = np.cumsum(kk) - kk
            within = np.arange(tot) - np.repeat(first_pair, kk)
            sg = cand[np.repeat(off_blk[r_of[start:stop]], kk) + within]
            d = _point_segment_distance(xy[pt], a[sg], b[sg])
            out[pts_sorted[ss]] = np.minimum.reduceat(d, first_pair)
            start = stop
    return out


def signed_distance_to_border_um(xy_um: np.ndarray, regions: list[Region]) -> tuple[np.ndarray, str]:
    """Signed distance of points to the tumour border (negative inside the tumour).

    The border is the outline of the ``margin`` regions if any, else of the ``tumour``
    regions (outer rings and holes).

    Parameters
    ----------
    xy_um : (N, 2) float array
        Points (x, y) in µm.
    regions : list of Region

    Returns
    -------
    distance_um : (N,) float64 ndarray
        Distance to the border in µm, < 0 inside the tumour, > 0 outside.
    source : str
        ``"margin regions"`` or ``"tumour regions"``.

    Raises
    ------
    InputError
        If there is neither a tumour nor a margin region.

    References
    ----------
    Pagès et al. 2018 (IM defined around the invasive border).
    """
    border = [r for r in regions if r.kind == "margin"]
    source = "margin regions"
    if not border:
        border = [r for r in regions if r.kind == "tumour"]
        source = "tumour regions"
    if not border:
        raise InputError("the tumour border needs a 'tumour' or 'margin' region: draw the tumour outline first")
    xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
    rings = [g for r in border for g in r.rings()]
    a, b = _rings_segments(rings)
    d = distance_to_segments_um(xy, a, b)
    inside = points_in_regions(xy, border)
    return np.where(inside, -d, d), source


def _segments_cross(a1: np.ndarray, a2: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> bool:
    """True if any segment a1-a2 properly intersects or touches any segment b1-b2."""

    def orient(p, q, r):
        return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

    A1, A2 = a1[:, None, :], a2[:, None, :]
    B1, B2 = b1[None, :, :], b2[None, :, :]
    o1, o2 = orient(A1, A2, B1), orient(A1, A2, B2)
    o3, o4 = orient(B1, B2, A1), orient(B1, B2, A2)
    return bool(np.any((o1 * o2 <= 0) & (o3 * o4 <= 0)))


def _bbox_overlap(a: tuple, b: tuple) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _raster_grid(bbox: tuple, max_pixels: int = _RASTER_MAX_PIXELS, min_px_um: float = 0.25):
    x0, y0, x1, y1 = bbox
    p = max(math.sqrt(max((x1 - x0) * (y1 - y0), 1e-12) / max_pixels), min_px_um)
    w = max(int(math.ceil((x1 - x0) / p)), 1)
    h = max(int(math.ceil((y1 - y0) / p)), 1)
    return p, h, w


def _rasterise(rings_list: list[list[np.ndarray]], x0: float, y0: float, p: float, shape: tuple[int, int]) -> np.ndarray:
    """Union of polygons (each a list [outer, holes...] in µm) as a bool mask of pixel centres."""
    mask = np.zeros(shape, dtype=bool)
    for rings in rings_list:
        m = np.zeros(shape, dtype=bool)
        for k, ring in enumerate(rings):
            rr, cc = _draw_polygon((ring[:, 1] - y0) / p - 0.5, (ring[:, 0] - x0) / p - 0.5, shape)
            if k == 0:
                m[rr, cc] = True
            else:
                m[rr, cc] = False
        mask |= m
    return mask


def _overlap_area_um2(region: Region, excludes: list[Region]) -> tuple[float, str]:
    """Area of region ∩ (union of excludes), exact where possible, else a raster estimate."""
    rel = [e for e in excludes if e is not region and _bbox_overlap(region.bbox_um, e.bbox_um)]
    if not rel:
        return 0.0, "exact"
    exact = not region.holes_um and all(not e.holes_um for e in rel)
    for i in range(len(rel)):
        for j in range(i + 1, len(rel)):
            if _bbox_overlap(rel[i].bbox_um, rel[j].bbox_um):
                exact = False
    overlap = 0.0
    if exact:
        ra, rb = _rings_segments([region.polygon_um])
        for e in rel:
            ea, eb = _rings_segments([e.polygon_um])
            if len(ra) * len(ea) > 4_000_000 or _segments_cross(ra, rb, ea, eb):
                exact = False
                break
            e_in = region.contains(e.polygon_um)
            r_in = e.contains(region.polygon_um)
            if e_in.all() and not r_in.any():
                overlap += e.area_um2
            elif e_in.any() or r_in.any():
                exact = False
                break
    if exact:
        return overlap, "exact"
    x0, y0, x1, y1 = region.bbox_um
    p, h, w = _raster_grid((x0, y0, x1, y1))
    m_r = _rasterise([region.rings()], x0, y0, p, (h, w))
    m_e = _rasterise([e.rings() for e in rel], x0, y0, p, (h, w))
    return float((m_r & m_e).sum()) * p * p, f"raster {p:.3g} µm"


def _region_net_area_um2(region: Region, excludes: list[Region]) -> tuple[float, str]:
    ov, how = _overlap_area_um2(region, excludes)
    return max(region.area_um2 - ov, 0.0), how


# ----------------------------------------------------------------------------- window


class _Window:
    """Rectangular study window minus exclusion polygons."""

    def __init__(self, rect: tuple[float, float, float, float], source: str, excludes: list[Region]):
        self.rect = tuple(float(v) for v in rect)
        self.source = source
        x0, y0, x1, y1 = self.rect
        self.width_um, self.height_um = x1 - x0, y1 - y0
        rect_region = Region("window", "stroma", np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        self.excludes = [e for e in excludes if _bbox_overlap(self.rect, e.bbox_um)]
        ov, self.area_method = _overlap_area_um2(rect_region, self.excludes)
        self.area_um2 = max(self.width_um * self.height_um - ov, 0.0)
        self.excluded_area_um2 = ov
        self._gamma = None

    def contains(self, xy: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.rect
        m = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        if self.excludes:
            m &= ~points_in_regions(xy, self.excludes)
        return m

    def boundary_distance_um(self, xy: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.rect
        d = np.minimum.reduce([xy[:, 0] - x0, x1 - xy[:, 0], xy[:, 1] - y0, y1 - xy[:, 1]])
        if self.excludes and len(xy):
            a, b = _rings_segments([g for e in self.excludes for g in e.rings()])
            d = np.minimum(d, distance_to_segments_um(xy, a, b))
        return d

    def setcov_um2(self, dxy: np.ndarray, rmax: float) -> np.ndarray:
        """|W ∩ (W + d)| for displacement vectors d (P, 2) in µm with |d| <= rmax."""
        if not self.excludes:
            return (self.width_um - np.abs(dxy[:, 0])) * (self.height_um - np.abs(dxy[:, 1]))
        if self._gamma is None:
            x0, y0, x1, y1 = self.rect
            p, h, w = _raster_grid(self.rect, max_pixels=1_000_000)
            mask = ~_rasterise([e.rings() for e in self.excludes], x0, y0, p, (h, w))
            lag = int(math.ceil(rmax / p)) + 1
            H, W = h + lag, w + lag
            f = np.fft.rfft2(mask.astype(np.float64), s=(H, W))
            ac = np.fft.irfft2(f * np.conj(f), s=(H, W)) * p * p
            # Scale so that the zero lag equals the polygon-exact window area.
            ac *= self.area_um2 / max(ac[0, 0], 1e-12)
            self._gamma = (ac, p, H, W)
        ac, p, H, W = self._gamma
        ix = np.rint(dxy[:, 0] / p).astype(np.int64) % W
        iy = np.rint(dxy[:, 1] / p).astype(np.int64) % H
        return ac[iy, ix]


# ----------------------------------------------------------------------------- statistics


def _cross_k_g(
    xy_t: np.ndarray,
    xy_i: np.ndarray,
    window: _Window,
    radii: np.ndarray,
    n_sim: int,
    rng: np.random.Generator,
) -> dict:
    """Cross-K (tumour → immune, translation correction), cross-G (immune → tumour,
    border correction) and random-relabelling simulations, sharing one pair list.

    Every candidate pair of points within max(radii) is found once with a k-d tree;
    a relabelling only changes which pairs are tumour-immune, so each simulation costs
    one sparse-matrix product per radius bin: O(n log n + P·S) for P pairs, S simulations.
    """
    pts = np.vstack([xy_t, xy_i])
    n, nt, ni = len(pts), len(xy_t), len(xy_i)
    lab0 = np.zeros(n, dtype=np.float32)
    lab0[:nt] = 1.0
    # Spatial order (strips of height max(radii), x within a strip) keeps neighbours
    # close in memory, which makes the sparse products below cache-friendly.
    strip = np.floor((pts[:, 1] - pts[:, 1].min()) / max(float(radii[-1]), 1e-9))
    order_sp = np.lexsort((pts[:, 0], strip))
    pts, lab0 = pts[order_sp], lab0[order_sp]
    rmax = float(radii[-1])
    expected_pairs = n * n * math.pi * rmax * rmax / (2 * max(window.area_um2, 1e-12))
    if expected_pairs > MAX_PAIRS:
        raise InputError(
            f"cross-K up to {rmax:g} µm would need about {expected_pairs:.2g} cell pairs (limit {MAX_PAIRS:.0e}): "
            "lower SpatialParams.ripley_radii_um or analyse a smaller region"
        )
    tree = cKDTree(pts)
    pairs = tree.query_pairs(rmax, output_type="ndarray")
    pi, pj = pairs[:, 0], pairs[:, 1]
    dxy = pts[pj] - pts[pi]
    d = np.hypot(dxy[:, 0], dxy[:, 1])
    gam = window.setcov_um2(dxy, rmax)
    w = np.where(gam > 0, window.area_um2 / np.where(gam > 0, gam, 1.0), 0.0).astype(np.float32)
    b = np.searchsorted(radii, d, side="left").astype(np.uint8 if len(radii) < 255 else np.int64)
    order = np.argsort(b, kind="stable")  # a radix sort for small integer keys: O(P)
    bounds = np.r_[0, np.cumsum(np.bincount(b, minlength=len(radii) + 1))]

    S = n_sim + 1
    X = np.empty((n, S), dtype=np.float32)
    X[:, 0] = lab0
    for s in range(1, S):
        X[:, s] = rng.permutation(lab0)
    Y = 1.0 - X
    immune = Y > 0
    bd = window.boundary_distance_um(pts)
    ksum = np.zeros((len(radii), S))
    g = np.full((len(radii), S), np.nan)
    # found[i, s]: point i has a tumour-labelled neighbour within the current radius in
    # labelling s. Only rows with an immune label still unmatched ("pending") are updated:
    # at tissue densities nearly every immune cell meets a tumour cell within a few radius
    # bins, so the per-bin work soon falls from n x S to a handful of rows.
    found = np.zeros((n, S), dtype=bool)
    pending = np.arange(n)
    for k in range(len(radii)):
        sel = order[bounds[k] : bounds[k + 1]]
        if len(sel):
            a_, b_, wk = pi[sel], pj[sel], w[sel]
            # Tumour-immune pairs = Σ w (x_a + x_b) - 2 Σ w x_a x_b over unordered pairs
            # (x = tumour indicator): a degree term plus one upper-triangular product.
            deg = np.bincount(a_, wk, minlength=n) + np.bincount(b_, wk, minlength=n)
            U = sparse.csr_matrix((wk, (a_, b_)), shape=(n, n))
            quad = np.einsum("ij,ij->j", X, U @ X, dtype=np.float64)
            ksum[k] = np.einsum("i,ij->j", deg, X, dtype=np.float64) - 2.0 * quad
            if len(pending):
                A = sparse.csr_matrix((np.ones(2 * len(sel), np.float32), (np.r_[a_, b_], np.r_[b_, a_])), shape=(n, n))
                found[pending] |= (A[pending] @ X) > 0
        if len(pending):
            pending = pending[(immune[pending] & ~found[pending]).any(axis=1)]
        mk = bd >= radii[k]
        if mk.any():
            den = Y.T @ mk.astype(np.float32)
            rows = pending[mk[pending]]
            missing = np.count_nonzero(immune[rows] & ~found[rows], axis=0)
            num = den - missing
            g[k] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    K = np.cumsum(ksum, axis=0) * window.area_um2 / (nt * ni)
    L = np.sqrt(np.maximum(K, 0.0) / math.pi)
    return {"K": K, "L": L, "G": g, "n_pairs": int(len(pairs))}


def _envelope(values: np.ndarray, radii: np.ndarray, alpha: float, deviation: bool) -> dict:
    """Pointwise min/max and (optionally) the global MAD envelope of simulated curves.

    values: (R, S+1), column 0 observed.
    """
    obs, sims = values[:, 0], values[:, 1:]
    out: dict[str, Any] = {"observed": obs}
    if sims.shape[1] == 0:
        return out
    # A radius at which no simulation has a value (no cell that far inside the window)
    # gives NaN bounds; numpy's "All-NaN slice" warnings say nothing more.
    with np.errstate(all="ignore"), warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        out["pointwise_lo"] = np.nanmin(sims, axis=1) if np.isfinite(sims).any() else np.full(len(obs), np.nan)
        out["pointwise_hi"] = np.nanmax(sims, axis=1) if np.isfinite(sims).any() else np.full(len(obs), np.nan)
        out["mean"] = np.nanmean(sims, axis=1)
    if deviation:
        use = radii > 0
        centre = out["mean"]
        dev_sim = np.nanmax(np.abs(sims[use] - centre[use, None]), axis=0)
        dev_obs = float(np.nanmax(np.abs(obs[use] - centre[use])))
        S = sims.shape[1]
        m = max(int(math.floor(alpha * (S + 1))), 1)
        crit = float(np.sort(dev_sim)[::-1][m - 1])
        out["global_lo"] = centre - crit
        out["global_hi"] = centre + crit
        out["global_max_deviation_um"] = dev_obs
        out["global_critical_deviation_um"] = crit
        out["global_p_value"] = (1 + int(np.sum(dev_sim >= dev_obs))) / (S + 1)
        out["global_alpha"] = m / (S + 1)
        out["inside_global_envelope"] = bool(dev_obs < crit)
    return out


def _grid_counts(xy: np.ndarray, role: np.ndarray, rect: tuple, cell_um: float) -> dict:
    x0, y0, x1, y1 = rect
    nx = max(int(math.ceil((x1 - x0) / cell_um)), 1)
    ny = max(int(math.ceil((y1 - y0) / cell_um)), 1)
    ix = np.clip(((xy[:, 0] - x0) // cell_um).astype(np.int64), 0, nx - 1)
    iy = np.clip(((xy[:, 1] - y0) // cell_um).astype(np.int64), 0, ny - 1)
    flat = iy * nx + ix
    out = {"nx": nx, "ny": ny}
    for r in ROLES:
        out[r] = np.bincount(flat[role == r], minlength=nx * ny)
    return out


def morisita_horn(counts_a: np.ndarray, counts_b: np.ndarray) -> float | None:
    """Morisita-Horn overlap of two count vectors over the same grid squares.

    Parameters
    ----------
    counts_a, counts_b : (M,) int arrays
        Cells of each type per grid square.

    Returns
    -------
    float in [0, 1] or None
        ``2 Σ p_i q_i / (Σ p_i² + Σ q_i²)`` with p, q the proportions per square;
        1 when the two types are distributed identically, 0 when they never share a
        square; None if either type has no cells.

    References
    ----------
    Horn 1966; Maley et al. 2015 (immune-cancer co-localisation).
    """
    a = np.asarray(counts_a, dtype=np.float64)
    b = np.asarray(counts_b, dtype=np.float64)
    if a.sum() == 0 or b.sum() == 0:
        return None
    p, q = a / a.sum(), b / b.sum()
    return float(2 * np.dot(p, q) / (np.dot(p, p) + np.dot(q, q)))


def _summary(d: np.ndarray) -> dict:
    if len(d) == 0:
        return {"n": 0, "mean_um": None, "median_um": None, "q25_um": None, "q75_um": None, "min_um": None, "max_um": None}
    q = np.percentile(d, [25, 50, 75])
    return {
        "n": int(len(d)),
        "mean_um": float(d.mean()),
        "median_um": float(q[1]),
        "q25_um": float(q[0]),
        "q75_um": float(q[2]),
        "min_um": float(d.min()),
        "max_um": float(d.max()),
    }


def _unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def compute_spatial_stats(
    cells: pd.DataFrame,
    regions: list[Region] | None = None,
    params: SpatialParams | None = None,
    seed: int = 0,
) -> dict:
    """Spatial statistics of immune cells relative to tumour cells and regions.

    Parameters
    ----------
    cells : pandas.DataFrame
        Cell table with ``x_um``, ``y_um`` (float64, µm; NaN when the image had no mpp)
        and ``role`` (one of :data:`core.cells.ROLES`); ``cell_class`` is used for
        per-class counts when present.
    regions : list of Region, optional
        Tumour / stroma / exclude / margin polygons in µm.
    params : SpatialParams, optional
        Thresholds and settings; defaults as documented in :class:`SpatialParams`.
    seed : int
        Seeds the single :class:`numpy.random.Generator` used for every random
        relabelling (the same seed gives the same envelopes).

    Returns
    -------
    dict
        JSON-serialisable (Python types only, None instead of NaN), with keys:
        ``schema``, ``available``, ``params`` (every threshold used), ``window``,
        ``counts``, ``regions`` (count, area_mm2, density_per_mm2 per region and per
        kind), ``distances`` (immune → nearest tumour: summary in µm, histogram, ECDF,
        ``within_radius`` rows with the exact counts, fractions and immune cells per
        tumour cell), ``compartments`` (intratumoral and stromal immune densities, their
        ratio), ``invasive_margin`` (CT/IM densities, Immunoscore-like, histogram of
        signed distances of immune cells to the border), ``ripley`` (cross-K/L with
        envelopes), ``cross_g``, ``morisita_horn``, ``stromal_til_proxy``,
        ``phenotype``, ``warnings``, ``runtime_s``. A section that cannot be computed is
        ``{"available": False, "reason": ...}``. When no cell has µm coordinates the
        whole result is ``{"available": False, "reason": "... needs an mpp ..."}``.

    Raises
    ------
    InputError
        If ``cells`` lacks ``x_um``/``y_um``/``role``, a role is unknown, ``regions``
        holds something other than Region, or ``params`` is invalid.

    References
    ----------
    See the module docstring: Ripley 1976/1977 and Baddeley et al. 2015 (cross-K with
    translation edge correction, cross-G with border correction, random labelling);
    Baddeley et al. 2014 (global envelope); Galon et al. 2006 / Pagès et al. 2018
    (CT, IM); Salgado et al. 2015 (stromal TILs); Horn 1966 / Maley et al. 2015
    (Morisita-Horn); Hegde et al. 2016 (phenotypes).
    """
    t_start = time.perf_counter()
    params = (params or SpatialParams()).validate()
    regions = list(regions or [])
    for r in regions:
        if not isinstance(r, Region):
            raise InputError(f"regions must be core.regions.Region objects, got {type(r).__name__}")
    missing = [c for c in ("x_um", "y_um", "role") if c not in cells.columns]
    if missing:
        raise InputError(
            f"cell table is missing column(s) {missing}: spatial statistics need x_um, y_um (µm) and role"
        )
    roles_all = cells["role"].astype(str).to_numpy()
    bad = sorted(set(roles_all) - set(ROLES))
    if bad:
        raise InputError(f"unknown cell role(s) {bad}: allowed roles are {list(ROLES)}")
    base = {"schema": SCHEMA, "params": params.to_dict(), "units": {"distance": "µm", "area": "mm²", "density": "cells/mm²"}}
    xy_all = cells[["x_um", "y_um"]].to_numpy(dtype=np.float64)
    finite = np.isfinite(xy_all).all(axis=1)
    if len(cells) and not finite.any():
        return _clean(
            {
                **base,
                "available": False,
                "reason": "spatial statistics need µm coordinates, but the image has no mpp: "
                "enter the scanner's microns per pixel and analyse again",
                "counts": {"n_cells": int(len(cells))},
            }
        )
    warnings: list[str] = []
    if not finite.all():
        warnings.append(f"{int((~finite).sum())} cell(s) without µm coordinates were left out")
    classes_all = cells["cell_class"].astype(str).to_numpy() if "cell_class" in cells.columns else roles_all
    excludes = [r for r in regions if r.kind == "exclude"]
    in_excl = np.zeros(len(cells), dtype=bool)
    if excludes and finite.any():
        in_excl[finite] = points_in_regions(xy_all[finite], excludes)
    keep = finite & ~in_excl
    xy, role, cls = xy_all[keep], roles_all[keep], classes_all[keep]
    rng = np.random.default_rng(seed)

    # Study window.
    if params.window_um is not None:
        rect, wsource = tuple(params.window_um), "SpatialParams.window_um (image extent)"
    elif len(xy):
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        rect, wsource = (lo[0], lo[1], hi[0], hi[1]), "bounding box of the cells"
    else:
        rect, wsource = None, "none"
    window = None
    if rect is not None and rect[2] > rect[0] and rect[3] > rect[1]:
        window = _Window(rect, wsource, excludes)
    in_win = window.contains(xy) if window is not None else np.zeros(len(xy), dtype=bool)

    out: dict[str, Any] = {**base, "available": True}
    out["window"] = (
        {
            "source": wsource,
            "rect_um": list(window.rect),
            "area_mm2": window.area_um2 / 1e6,
            "excluded_area_mm2": window.excluded_area_um2 / 1e6,
            "area_method": window.area_method,
        }
        if window is not None
        else _unavailable("fewer than two distinct cell positions: no study window")
    )
    imm, tum = role == "immune", role == "tumour"
    out["counts"] = {
        "n_cells_in_table": int(len(cells)),
        "n_cells_used": int(len(xy)),
        "n_excluded_by_regions": int(in_excl.sum()),
        "n_without_um": int((~finite).sum()),
        "by_role": {r: int((role == r).sum()) for r in ROLES},
        "by_class": {str(k): int(v) for k, v in zip(*np.unique(cls, return_counts=True))} if len(cls) else {},
        "density_per_mm2_in_window": (
            {r: _density_per_mm2((role[in_win] == r).sum(), window.area_um2) for r in ROLES} if window else None
        ),
    }

    # Regions: counts and densities.
    reg_rows = []
    masks: dict[int, np.ndarray] = {}
    for k, r in enumerate(regions):
        area_um2, how = _region_net_area_um2(r, excludes) if r.kind != "exclude" else (r.area_um2, "exact")
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
                "density_per_mm2_by_role": {ro: _density_per_mm2(c, area_um2) for ro, c in counts.items()},
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
            "density_per_mm2_by_role": {ro: _density_per_mm2(c, area_um2) for ro, c in counts.items()},
        }
    out["regions"] = {
        "per_region": reg_rows,
        "by_kind": by_kind,
        "excluded_area_mm2": sum(r.area_um2 for r in excludes) / 1e6,
        "note": "areas have exclusions subtracted; regions of one kind are assumed not to overlap",
    }

    # Immune → nearest tumour distances.
    radii = np.asarray(params.radii_um, dtype=np.float64)
    nearest = np.full(len(xy), np.nan)
    if imm.sum() == 0 or tum.sum() == 0:
        out["distances"] = _unavailable(
            f"needs immune and tumour cells (found {int(imm.sum())} immune, {int(tum.sum())} tumour)"
        )
    else:
        tree_t = cKDTree(xy[tum])
        tree_i = cKDTree(xy[imm])
        d_nn, _ = tree_t.query(xy[imm], k=1)
        nearest[imm] = d_nn
        pair_counts = tree_t.count_neighbors(tree_i, radii)
        n_i, n_t = int(imm.sum()), int(tum.sum())
        rows = []
        for r, pc in zip(radii, np.atleast_1d(pair_counts)):
            n_within = int((d_nn <= r).sum())
            rows.append(
                {
                    "radius_um": float(r),
                    "n_immune_within": n_within,
                    "fraction_immune_within": n_within / n_i,
                    "n_immune_tumour_pairs_within": int(pc),
                    "immune_per_tumour_cell_within": int(pc) / n_t,
                }
            )
        edges = np.arange(0.0, params.histogram_max_um + params.histogram_bin_um / 2, params.histogram_bin_um)
        hist, _ = np.histogram(d_nn[d_nn <= edges[-1]], bins=edges)
        ecdf = np.searchsorted(np.sort(d_nn), edges, side="right") / n_i
        out["distances"] = {
            "available": True,
            "definition": "Euclidean distance from each immune cell centroid to the nearest tumour cell centroid",
            "n_immune": n_i,
            "n_tumour": n_t,
            "immune_to_nearest_tumour_um": _summary(d_nn),
            "within_radius": rows,
            "histogram": {
                "bin_edges_um": edges,
                "counts": hist,
                "n_overflow": int((d_nn > edges[-1]).sum()),
            },
            "ecdf": {"radius_um": edges, "fraction": ecdf},
        }

    # Compartments, stromal TIL proxy, phenotype.
    tumour_regions = [r for r in regions if r.kind == "tumour"]
    stroma_regions = [r for r in regions if r.kind == "stroma"]
    comp: dict[str, Any]
    tumour_area = stroma_area = None
    n_imm_t = n_imm_s = 0
    if tumour_regions:
        in_t = points_in_regions(xy, tumour_regions)
        tumour_area = sum(_region_net_area_um2(r, excludes)[0] for r in tumour_regions)
        if stroma_regions:
            in_s = points_in_regions(xy, stroma_regions) & ~in_t
            stroma_area = sum(_region_net_area_um2(r, excludes)[0] for r in stroma_regions)
            csource = "tumour and stroma regions"
        elif window is not None:
            in_s = in_win & ~in_t
            x0, y0, x1, y1 = window.rect
            p, h, w = _raster_grid(window.rect)
            wmask = ~_rasterise([e.rings() for e in window.excludes], x0, y0, p, (h, w))
            tmask = _rasterise([r.rings() for r in tumour_regions], x0, y0, p, (h, w))
            stroma_area = float((wmask & ~tmask).sum()) * p * p
            csource = "tumour regions; stroma = study window outside them (no stroma region drawn)"
        else:
            in_s = np.zeros(len(xy), dtype=bool)
            csource = "tumour regions"
        n_imm_t, n_imm_s = int((imm & in_t).sum()), int((imm & in_s).sum())
    elif window is not None and len(xy):
        g = _grid_counts(xy, role, window.rect, params.grid_cell_um)
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
    d_t = _density_per_mm2(n_imm_t, tumour_area)
    d_s = _density_per_mm2(n_imm_s, stroma_area)
    out["compartments"] = {
        "available": d_t is not None or d_s is not None,
        "source": csource,
        "tumour_area_mm2": None if tumour_area is None else tumour_area / 1e6,
        "stroma_area_mm2": None if stroma_area is None else stroma_area / 1e6,
        "n_immune_intratumoral": n_imm_t,
        "n_immune_stromal": n_imm_s,
        "intratumoral_immune_density_per_mm2": d_t,
        "stromal_immune_density_per_mm2": d_s,
        "ratio_intratumoral_to_stromal": _ratio(d_t, d_s),
    }
    if stroma_area:
        pct = 100.0 * n_imm_s * params.immune_cell_area_um2 / stroma_area
        out["stromal_til_proxy"] = {
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
        out["stromal_til_proxy"] = _unavailable("no stromal area: draw a stroma region or include non-tumour cells")
    out["phenotype"] = _phenotype(d_t, d_s, params)

    # Invasive margin.
    out["invasive_margin"] = _invasive_margin(xy, role, imm, regions, window, in_win, params, warnings)

    # Ripley cross-K / L and cross-G.
    out["ripley"], out["cross_g"] = _ripley_section(xy, tum, imm, in_win, window, params, rng, warnings)

    # Morisita-Horn.
    if window is not None and imm.any() and tum.any():
        g = _grid_counts(xy[in_win], role[in_win], window.rect, params.grid_cell_um)
        mh = morisita_horn(g["immune"], g["tumour"])
        out["morisita_horn"] = {
            "available": mh is not None,
            "index": mh,
            "grid_cell_um": params.grid_cell_um,
            "grid_shape": [g["ny"], g["nx"]],
            "n_squares_with_cells": int(((g["immune"] + g["tumour"]) > 0).sum()),
            "definition": "2·Σ p_i q_i / (Σ p_i² + Σ q_i²), p/q = immune/tumour proportion per square (Horn 1966)",
        }
    else:
        out["morisita_horn"] = _unavailable("needs immune and tumour cells in the study window")
    out["warnings"] = warnings
    out["runtime_s"] = time.perf_counter() - t_start
    return _clean(out)


def _phenotype(d_t: float | None, d_s: float | None, params: SpatialParams) -> dict:
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
    if d_t is None:
        return {**res, "available": False, "call": None, "reason": "no tumour compartment: draw a tumour region"}
    if d_t >= params.inflamed_min_intratumoral_per_mm2:
        call = "inflamed"
    elif d_s is None:
        return {**res, "available": False, "call": None, "reason": "not inflamed, and no stromal compartment to tell excluded from desert"}
    elif d_s >= params.excluded_min_stromal_per_mm2:
        call = "excluded"
    else:
        call = "desert"
    return {**res, "available": True, "call": call}


def _invasive_margin(xy, role, imm, regions, window, in_win, params, warnings) -> dict:
    if not any(r.kind in ("tumour", "margin") for r in regions):
        return _unavailable("needs a tumour region (or a margin region tracing the tumour border)")
    h = float(params.margin_half_width_um)
    sd, source = signed_distance_to_border_um(xy, regions)
    zone_ct = in_win & (sd < -h)
    zone_im = in_win & (np.abs(sd) <= h)
    if window is None:
        return _unavailable("no study window")
    border = [r for r in regions if r.kind == "margin"] or [r for r in regions if r.kind == "tumour"]
    x0, y0, x1, y1 = window.rect
    p, hh, ww = _raster_grid(window.rect)
    valid = ~_rasterise([e.rings() for e in window.excludes], x0, y0, p, (hh, ww))
    inside = _rasterise([r.rings() for r in border], x0, y0, p, (hh, ww))
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
        a_seg, b_seg = _rings_segments([g for r in border for g in r.rings()])
        dd = distance_to_segments_um(centres, a_seg, b_seg)
        sd_grid[rr, cc] = np.where(inside[rr, cc], -dd, dd)
    area_ct = float((valid & (sd_grid < -h)).sum()) * p * p
    area_im = float((valid & (np.abs(sd_grid) <= h)).sum()) * p * p
    n_ct, n_im = int((zone_ct & imm).sum()), int((zone_im & imm).sum())
    d_ct, d_im = _density_per_mm2(n_ct, area_ct), _density_per_mm2(n_im, area_im)
    cut = params.immunoscore_cutoffs_per_mm2
    if cut is None:
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
        "border_source": source,
        "half_width_um": h,
        "sign_convention": "signed distance < 0 inside the tumour, > 0 outside",
        "area_method": f"raster {p:.3g} µm of the study window",
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
            "summary": _summary(sd_imm),
            "histogram": {"bin_edges_um": edges, "counts": hist,
                          "n_below": int((sd_imm < edges[0]).sum()), "n_above": int((sd_imm > edges[-1]).sum())},
        },
    }


def _ripley_section(xy, tum, imm, in_win, window, params, rng, warnings) -> tuple[dict, dict]:
    if window is None:
        u = _unavailable("no study window")
        return u, u
    t_w, i_w = tum & in_win, imm & in_win
    nt, ni = int(t_w.sum()), int(i_w.sum())
    if nt < 2 or ni < 2:
        u = _unavailable(f"needs >= 2 tumour and >= 2 immune cells in the study window (found {nt} and {ni})")
        return u, u
    radii = np.asarray(params.ripley_radii_um, dtype=np.float64)
    r_lim = 0.5 * min(window.width_um, window.height_um)
    if radii[-1] > r_lim:
        radii = radii[radii <= r_lim]
        warnings.append(f"Ripley radii above {r_lim:.4g} µm (half the window's shorter side) were dropped")
        if len(radii) < 2:
            u = _unavailable(f"the study window is too small for Ripley radii (half its shorter side is {r_lim:.4g} µm)")
            return u, u
    try:
        res = _cross_k_g(xy[t_w], xy[i_w], window, radii, params.n_simulations, rng)
    except InputError as err:
        u = _unavailable(str(err))
        return u, u
    K = res["K"]
    L = res["L"]
    env_k = _envelope(K, radii, params.envelope_alpha, deviation=False)
    env_l = _envelope(L - radii[:, None], radii, params.envelope_alpha, deviation=True)
    env_g = _envelope(res["G"], radii, params.envelope_alpha, deviation=False)
    common = {
        "n_simulations": params.n_simulations,
        "null_model": "random relabelling of tumour/immune labels over the observed tumour+immune positions",
        "n_tumour": nt,
        "n_immune": ni,
        "window_area_mm2": window.area_um2 / 1e6,
    }
    ripley = {
        "available": True,
        "reference": "tumour",
        "neighbour": "immune",
        "definition": "K_TI(r) = |W| / (n_T n_I) Σ_{i∈T} Σ_{j∈I} 1[d_ij <= r] |W| / |W ∩ (W + x_j - x_i)|; L = sqrt(K/π)",
        "edge_correction": "translation (Ohser & Stoyan; Baddeley et al. 2015 §7.4.3)",
        **common,
        "n_pairs_within_rmax": res["n_pairs"],
        "radius_um": radii,
        "K_um2": env_k["observed"],
        "K_envelope_lo_um2": env_k.get("pointwise_lo"),
        "K_envelope_hi_um2": env_k.get("pointwise_hi"),
        "K_poisson_um2": math.pi * radii**2,
        "L_um": L[:, 0],
        "L_minus_r_um": env_l["observed"],
        "L_minus_r_envelope_lo_um": env_l.get("pointwise_lo"),
        "L_minus_r_envelope_hi_um": env_l.get("pointwise_hi"),
        "L_minus_r_sim_mean_um": env_l.get("mean"),
        "L_minus_r_global_envelope_lo_um": env_l.get("global_lo"),
        "L_minus_r_global_envelope_hi_um": env_l.get("global_hi"),
        "global_test": {
            k: env_l.get(k)
            for k in ("global_max_deviation_um", "global_critical_deviation_um", "global_p_value", "global_alpha", "inside_global_envelope")
        },
        "envelope_note": "pointwise envelope = min/max of the simulations at each r; global envelope = simulation mean "
        "± the critical maximum absolute deviation of L(r) - r over r > 0 (Baddeley et al. 2014)",
    }
    gcross = {
        "available": True,
        "from": "immune",
        "to": "tumour",
        "definition": "G(r) = fraction of immune cells with a tumour cell within r, among immune cells at least r from the window edge",
        "edge_correction": "border (reduced sample; Baddeley et al. 2015 §8.11)",
        **common,
        "radius_um": radii,
        "G": env_g["observed"],
        "G_envelope_lo": env_g.get("pointwise_lo"),
        "G_envelope_hi": env_g.get("pointwise_hi"),
        "G_sim_mean": env_g.get("mean"),
    }
    return ripley, gcross


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


# ----------------------------------------------------------------------------- reading tables

_IMMUNE_WORDS = {
    "til", "tils", "immune", "lymphocyte", "lymphocytes", "lymphoid", "cd3", "cd4", "cd8", "cd20", "cd45",
    "tcell", "bcell", "plasma", "inflammatory", "leukocyte", "leukocytes", "positive",
}
_TUMOUR_WORDS = {"tumor", "tumour", "neoplastic", "cancer", "carcinoma", "malignant"}
_STROMA_WORDS = {"stroma", "stromal", "fibroblast", "fibroblasts", "connective", "endothelial", "endothelium"}

#: How class names map to roles (checked in this order, case-insensitive, on the words
#: of the name, base class before ":" first): tumour words → "tumour"; stroma words →
#: "stroma"; a name containing "negative" → "other"; immune words (lymphocyte, immune,
#: TIL, CD3/CD4/CD8/CD20/CD45, T/B cell, plasma, inflammatory, and QuPath's bare
#: "Positive" of a positive-cell detection on a lymphocyte marker) → "immune";
#: anything else, including unclassified → "other".
CLASS_ROLE_RULES = (
    ("tumour", sorted(_TUMOUR_WORDS)),
    ("stroma", sorted(_STROMA_WORDS)),
    ("other", ["negative"]),
    ("immune", sorted(_IMMUNE_WORDS)),
)


def class_to_role(name: str) -> str:
    """Role of a class name by :data:`CLASS_ROLE_RULES` (unknown → ``"other"``).

    Parameters
    ----------
    name : str
        E.g. ``"Tumor"``, ``"Immune cells"``, ``"cd3-positive"``, ``"Tumor: Positive"``.

    Returns
    -------
    str
        One of :data:`core.cells.ROLES`.
    """
    s = str(name or "").strip().lower()
    if s in ("", "nan", "none", "unclassified"):
        return "other"
    s = s.replace("t cell", "tcell").replace("t-cell", "tcell").replace("b cell", "bcell").replace("b-cell", "bcell")
    parts = [s.split(":")[0], s] if ":" in s else [s]
    for part in parts:
        words = set("".join(c if c.isalnum() else " " for c in part).split())
        if words & _TUMOUR_WORDS:
            return "tumour"
        if words & _STROMA_WORDS:
            return "stroma"
        if "negative" in words:
            return "other"
        if words & _IMMUNE_WORDS or any(w.startswith(("lymph", "immun", "inflamm")) for w in words):
            return "immune"
    return "other"


def _norm_col(c: str) -> str:
    s = str(c).lower().replace("Âµ", "u").replace("µ", "u").replace("μ", "u")
    return "".join(ch for ch in s if ch.isalnum())


def read_cell_table_csv(path: str | Path, mpp: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Read a TILscope ``cells.csv`` or a QuPath detection export into a cell table.

    Parameters
    ----------
    path : str or Path
        Comma- or tab-separated text. Recognised columns (case, spaces, brackets and
        µ/u spelling ignored): ``x_um``/``y_um`` or QuPath's ``Centroid X µm`` /
        ``Centroid Y µm``; ``x_px``/``y_px`` or ``Centroid X px`` / ``Centroid Y px``;
        ``cell_class`` or QuPath's ``Class`` / ``Classification``; ``role``;
        ``probability``.
    mpp : float, optional
        Microns per pixel, used only to fill the missing one of µm / pixel columns.

    Returns
    -------
    cells : pandas.DataFrame
        Cell table with :data:`core.cells.CELL_COLUMNS` (``x_um``/``y_um`` NaN when
        only pixels and no mpp are known; ``probability`` NaN when absent).
    info : dict
        ``format`` (``"tilscope"`` or ``"qupath"``), ``columns`` (which source column
        became each field), ``class_to_role`` (the mapping applied, by
        :data:`CLASS_ROLE_RULES`, when there was no role column), ``n_rows``,
        ``notes``.

    Raises
    ------
    InputError
        If the file is missing or unreadable, has no centroid columns, has non-numeric
        coordinates, or has a ``role`` column with unknown roles.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cell table {str(p)!r} does not exist")
    try:
        with open(p, encoding="utf-8-sig", errors="replace") as fh:
            head = fh.readline()
        sep = "\t" if head.count("\t") > head.count(",") else ","
        df = pd.read_csv(p, sep=sep, encoding="utf-8-sig", encoding_errors="replace", low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {p.name!r} as a CSV/TSV cell table: {err}") from err
    cols = {_norm_col(c): c for c in df.columns}

    def pick(*names: str) -> str | None:
        for n in names:
            if n in cols:
                return cols[n]
        return None

    src = {
        "x_um": pick("xum", "centroidxum"),
        "y_um": pick("yum", "centroidyum"),
        "x_px": pick("xpx", "centroidxpx"),
        "y_px": pick("ypx", "centroidypx"),
        "cell_class": pick("cellclass", "class", "classification"),
        "role": pick("role"),
        "probability": pick("probability", "detectionprobability"),
    }
    notes = []
    fmt = "tilscope" if src["role"] is not None and src["x_um"] == cols.get("xum") else "qupath"
    has_um = src["x_um"] is not None and src["y_um"] is not None
    has_px = src["x_px"] is not None and src["y_px"] is not None
    if not has_um and not has_px:
        raise InputError(
            f"{p.name!r} has no centroid columns: expected x_um/y_um (TILscope cells.csv) or "
            f"'Centroid X µm'/'Centroid Y µm' (QuPath detection export); found {list(df.columns)[:12]}"
        )

    def num(col: str) -> np.ndarray:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = int((~np.isfinite(v) & df[col].notna().to_numpy()).sum())
        if bad:
            raise InputError(f"column {col!r} of {p.name!r} has {bad} non-numeric value(s): coordinates must be numbers")
        return v

    n = len(df)
    m = None
    if mpp is not None:
        try:
            m = float(mpp)
        except (TypeError, ValueError) as err:
            raise InputError(f"mpp must be a positive number, got {mpp!r}") from err
        if not (math.isfinite(m) and m > 0):
            raise InputError(f"mpp must be a positive number, got {mpp!r}")
    if has_um:
        x_um, y_um = num(src["x_um"]), num(src["y_um"])
    elif m is not None:
        x_um, y_um = num(src["x_px"]) * m, num(src["y_px"]) * m
        notes.append(f"µm computed from pixel centroids with mpp {m:g}")
    else:
        x_um = y_um = np.full(n, np.nan)
        notes.append("no µm columns and no mpp: spatial statistics need an mpp")
    if has_px:
        x_px, y_px = num(src["x_px"]), num(src["y_px"])
    elif m is not None:
        x_px, y_px = x_um / m, y_um / m
    else:
        x_px = y_px = np.full(n, np.nan)
    classes = (
        df[src["cell_class"]].fillna("").astype(str).to_numpy(dtype=object)
        if src["cell_class"] is not None
        else np.full(n, "", dtype=object)
    )
    mapping = None
    if src["role"] is not None:
        role = df[src["role"]].fillna("other").astype(str).str.strip().to_numpy(dtype=object)
        bad = sorted(set(role) - set(ROLES))
        if bad:
            raise InputError(f"column {src['role']!r} has unknown role(s) {bad[:5]}: allowed roles are {list(ROLES)}")
    else:
        uniq = sorted(set(classes))
        mapping = {c: class_to_role(c) for c in uniq}
        role = np.array([mapping[c] for c in classes], dtype=object)
        if src["cell_class"] is None:
            notes.append("no class column: every cell has role 'other'")
    prob = (
        pd.to_numeric(df[src["probability"]], errors="coerce").to_numpy(dtype=np.float64)
        if src["probability"] is not None
        else np.full(n, np.nan)
    )
    cells = pd.DataFrame(
        {
            "x_px": x_px,
            "y_px": y_px,
            "x_um": x_um,
            "y_um": y_um,
            "cell_class": pd.Series(classes, dtype=object),
            "role": pd.Series(role, dtype=object),
            "probability": prob,
        }
    )
    for extra in ("cell_id", "edited"):
        if extra in df.columns:
            cells[extra] = df[extra].to_numpy()
    info = {
        "format": fmt,
        "path": str(p),
        "separator": "tab" if sep == "\t" else "comma",
        "n_rows": n,
        "columns": {k: v for k, v in src.items() if v is not None},
        "class_to_role": mapping,
        "notes": notes,
    }
    return cells, info
