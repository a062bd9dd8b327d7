"""Density heat maps and Getis-Ord Gi* hot spots of cells on a square µm grid.

Slide-scale companions of the point statistics: O(n) in the number of cells (one
``numpy.bincount``) and O(B·F) in the number of grid bins B and neighbourhood size F, so
5 million cells take about a second and the grid of a 30 x 30 mm section in 100 µm bins
(90 000 bins) a few milliseconds.

* :func:`density_map`: cells per bin and cells/mm² of tissue per bin (e.g. immune cells/mm²
  per 100 µm bin), with the bins that count as tissue: bins holding a cell, a tissue mask of
  the bins, or the tissue area of each bin (:func:`tissue_area_per_bin`, from a tissue mask
  at any resolution) for densities per mm² of the tissue actually in the bin.
* :func:`bin_counts` and :func:`density_from_counts`: the same map built in pieces, for cell
  tables read part by part (a whole slide's millions of cells are never held at once:
  :func:`core.slides.run.analyze_slide` adds each part's counts, then divides once).
* :func:`immune_density_map`: :func:`density_map` of one role of a cell table, per mm² of
  the bins holding any cell, of a tissue mask (the analysed area) or of the whole window.
* :func:`getis_ord_gi_star`: the Gi* z-score of every bin over a disc of bins.
* :func:`hot_spots`: Gi* of a density map, two-sided p-values, Benjamini-Hochberg
  q-values, hot and cold bins and a summary.

Grids: bin (i, j) covers x in [x0 + j·b, x0 + (j+1)·b), y in [y0 + i·b, y0 + (i+1)·b) µm
for bin side b and origin (x0, y0); arrays are (ny, nx), row i = y (image rows), column j
= x. Without a window the origin is the cells' minimum rounded down to a multiple of b, so
grids of the same image line up.

References
----------
.. [Getis] Getis A., Ord J.K. "The analysis of spatial association by use of distance
   statistics." Geographical Analysis 24:189-206 (1992) (G_i and G_i* over a distance band).
.. [Ord] Ord J.K., Getis A. "Local spatial autocorrelation statistics: distributional
   issues and an application." Geographical Analysis 27:286-306 (1995) (the standardised
   G_i* with its mean and variance under random permutation, used here as a z-score).
.. [Nawaz] Nawaz S., Heindl A., Koelble K., Yuan Y. "Beyond immune density: critical role
   of spatial heterogeneity in estrogen receptor-negative breast cancer." Mod Pathol
   28:766-777 (2015) (Getis-Ord hot spots of immune and cancer cells on a grid of a
   whole section).
.. [BH] Benjamini Y., Hochberg Y. "Controlling the false discovery rate." J R Stat Soc B
   57:289-300 (1995).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from core.cells import ROLES
from core.errors import InputError

__all__ = ["DensityMap", "HotSpotMap", "density_map", "density_from_counts", "bin_counts", "tissue_area_per_bin",
           "immune_density_map", "getis_ord_gi_star", "hot_spots", "MAX_GRID_BINS", "HEATMAP_MIN_TISSUE_FRACTION"]

#: Most bins of one grid (e.g. 100 mm x 100 mm in 50 µm bins); a finer grid is refused.
MAX_GRID_BINS = 4_000_000
#: Heat maps shown to users (slides, the Review page) leave a bin with less tissue than this share of its
#: area empty (NaN): a density over a sliver of tissue is noise.
HEATMAP_MIN_TISSUE_FRACTION = 0.25


@dataclass(frozen=True)
class DensityMap:
    """Cells counted on a square grid, and their density per mm² of tissue.

    Attributes
    ----------
    counts : (ny, nx) int64 ndarray
        Cells per bin.
    density_per_mm2 : (ny, nx) float64 ndarray
        ``counts / (tissue area of the bin in mm²)`` in the tissue bins, NaN elsewhere
        (glass); the tissue area is the whole bin unless ``tissue_area_mm2`` is known.
    tissue : (ny, nx) bool ndarray
        Bins that count as tissue (the denominator's area).
    origin_um : (float, float)
        (x0, y0) of the grid's corner, µm.
    bin_um : float
        Side of a bin, µm.
    n_outside : int
        Cells outside the grid's window (not counted).
    tissue_area_mm2 : (ny, nx) float64 ndarray or None
        Tissue area inside each bin, mm² (0 to ``bin_um² / 10⁶``), when the map was made
        from a tissue mask (:func:`tissue_area_per_bin`); None: tissue bins count whole.
    """

    counts: np.ndarray
    density_per_mm2: np.ndarray
    tissue: np.ndarray
    origin_um: tuple[float, float]
    bin_um: float
    n_outside: int = 0
    tissue_area_mm2: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.counts.shape

    @property
    def bin_area_mm2(self) -> float:
        return self.bin_um**2 / 1e6

    def bin_centres_um(self) -> tuple[np.ndarray, np.ndarray]:
        """(x centres (nx,), y centres (ny,)) of the bins, float64 µm."""
        ny, nx = self.shape
        x0, y0 = self.origin_um
        return x0 + (np.arange(nx) + 0.5) * self.bin_um, y0 + (np.arange(ny) + 0.5) * self.bin_um


@dataclass(frozen=True)
class HotSpotMap:
    """Getis-Ord Gi* hot and cold spots of a :class:`DensityMap`.

    Attributes
    ----------
    z : (ny, nx) float64 ndarray
        Gi* z-score per tissue bin (NaN elsewhere, or everywhere when the map is constant).
    p_value : (ny, nx) float64 ndarray
        Two-sided normal p-value of ``z`` (NaN outside tissue).
    q_value : (ny, nx) float64 ndarray
        Benjamini-Hochberg adjusted p-value over the tissue bins (NaN outside tissue).
    hot, cold : (ny, nx) bool ndarray
        ``q_value < alpha`` and z > 0 (hot) or z < 0 (cold).
    neighbourhood_um : float
        Radius of the disc of bins each Gi* sums over (bin centres within it, the bin itself included).
    alpha : float
    summary : dict
        JSON-ready: ``n_tissue_bins``, ``n_hot_bins``, ``n_cold_bins``, ``hot_area_mm2``,
        ``fraction_of_cells_in_hot_bins``, ``bin_um``, ``neighbourhood_um``,
        ``neighbourhood_bins``, ``alpha``, ``correction``, ``definition``, ``note``.
    """

    z: np.ndarray
    p_value: np.ndarray
    q_value: np.ndarray
    hot: np.ndarray
    cold: np.ndarray
    neighbourhood_um: float
    alpha: float
    summary: dict[str, Any]


def _check_xy(xy_um: Any, what: str) -> np.ndarray:
    xy = np.asarray(xy_um, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(f"{what} must be an (N, 2) array of (x, y) in µm, got shape {xy.shape}")
    return xy[np.isfinite(xy).all(axis=1)]


def _grid(xy: np.ndarray, bin_um: float, window_um: tuple | None) -> tuple[float, float, int, int]:
    """(x0, y0, nx, ny) of a grid of ``bin_um`` bins over ``window_um`` or the cells' extent."""
    if not (isinstance(bin_um, (int, float, np.integer, np.floating)) and math.isfinite(bin_um) and bin_um > 0):
        raise InputError(f"bin_um must be a positive number of µm (e.g. 100), got {bin_um!r}")
    if window_um is not None:
        w = np.asarray(window_um, dtype=np.float64)
        if w.shape != (4,) or not np.isfinite(w).all() or w[2] <= w[0] or w[3] <= w[1]:
            raise InputError(f"window_um must be (x_min, y_min, x_max, y_max) in µm with max > min, got {window_um!r}")
        x0, y0, x1, y1 = (float(v) for v in w)
    elif len(xy):
        x0, y0 = (math.floor(v / bin_um) * bin_um for v in xy.min(axis=0))
        x1, y1 = (float(v) for v in xy.max(axis=0))
    else:
        x0 = y0 = 0.0
        x1 = y1 = bin_um
    nx = max(int(math.floor((x1 - x0) / bin_um)) + 1 if window_um is None else int(math.ceil((x1 - x0) / bin_um)), 1)
    ny = max(int(math.floor((y1 - y0) / bin_um)) + 1 if window_um is None else int(math.ceil((y1 - y0) / bin_um)), 1)
    if nx * ny > MAX_GRID_BINS:
        raise InputError(f"a grid of {bin_um:g} µm bins over {(x1 - x0) / 1000:.1f} x {(y1 - y0) / 1000:.1f} mm has "
                         f"{nx * ny:,} bins, more than {MAX_GRID_BINS:,}: use larger bins")
    return x0, y0, nx, ny


def _bin_counts(xy: np.ndarray, x0: float, y0: float, nx: int, ny: int, bin_um: float,
                edge_um: tuple[float, float] | None = None) -> tuple[np.ndarray, int]:
    """Cells per bin (ny, nx) int64 and the number outside; ``edge_um`` = the window's (x1, y1), whose
    points on the far edge go into the last bin."""
    ix = np.floor((xy[:, 0] - x0) / bin_um).astype(np.int64)
    iy = np.floor((xy[:, 1] - y0) / bin_um).astype(np.int64)
    if edge_um is not None:
        ix[(ix == nx) & (xy[:, 0] <= edge_um[0])] = nx - 1
        iy[(iy == ny) & (xy[:, 1] <= edge_um[1])] = ny - 1
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    counts = np.bincount(iy[inside] * nx + ix[inside], minlength=nx * ny).reshape(ny, nx)
    return counts.astype(np.int64), int((~inside).sum())


def bin_counts(xy_um: np.ndarray, *, bin_um: float, window_um: tuple[float, float, float, float]) -> tuple[np.ndarray, int]:
    """Cells per bin of the grid of ``bin_um`` bins over ``window_um`` (the grid of :func:`density_map`).

    Counts of parts of one cell table add up to the counts of the whole table, so a table
    read part by part is binned without holding it whole.

    Parameters
    ----------
    xy_um : (N, 2) float array
        Centroids (x, y) in µm; rows with NaN are left out.
    bin_um : float > 0
        Side of a bin, µm.
    window_um : (x_min, y_min, x_max, y_max) in µm
        The grid's extent: ``ceil((x_max - x_min) / bin_um)`` bins across; cells on the far
        edge go into the last bin, cells outside are not counted.

    Returns
    -------
    counts : (ny, nx) int64 ndarray
    n_outside : int
        Cells outside the window.

    Raises
    ------
    InputError
        As :func:`density_map` (bin size, window, more than :data:`MAX_GRID_BINS` bins).
    """
    xy = _check_xy(xy_um, "xy_um")
    x0, y0, nx, ny = _grid(xy, float(bin_um), window_um)
    return _bin_counts(xy, x0, y0, nx, ny, float(bin_um), (float(window_um[2]), float(window_um[3])))


def _bin_sum(a: np.ndarray, index: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Sums of ``a`` along ``axis`` over runs of equal, non-decreasing bin ``index`` → ``n`` bins on that axis."""
    out_shape = list(a.shape)
    out_shape[axis] = n
    out = np.zeros(out_shape, a.dtype)
    if a.shape[axis] == 0:
        return out
    starts = np.r_[0, np.nonzero(np.diff(index))[0] + 1]
    sums = np.add.reduceat(a, starts, axis=axis)
    sl = [slice(None)] * a.ndim
    sl[axis] = index[starts]
    out[tuple(sl)] = sums
    return out


#: Mask rows counted at a time by :func:`tissue_area_per_bin` (bounds its working memory).
TISSUE_AREA_BLOCK_ROWS = 512


def tissue_area_per_bin(mask: np.ndarray, mask_mpp: float, *, bin_um: float, shape: tuple[int, int],
                        origin_um: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Tissue area inside each bin of a grid, mm², from a tissue mask.

    Mask pixel (i, j) covers ``[j m, (j + 1) m) x [i m, (i + 1) m)`` µm (``m = mask_mpp``,
    origin at the mask's top-left corner, as :func:`core.slides.tissue.detect_tissue` makes
    it) and is given whole to the bin holding its centre. O(mask pixels): one
    ``numpy.add.reduceat`` per axis, over blocks of :data:`TISSUE_AREA_BLOCK_ROWS` rows
    (working memory about 4 bytes per pixel of one block).

    Parameters
    ----------
    mask : (h, w) bool ndarray
        True on tissue.
    mask_mpp : float > 0
        µm per mask pixel (e.g. 8).
    bin_um : float > 0
        Side of a bin, µm.
    shape : (ny, nx)
        The grid's shape (e.g. :attr:`DensityMap.shape` of the same window).
    origin_um : (x0, y0)
        The grid's corner in the mask's µm frame.

    Returns
    -------
    (ny, nx) float64 ndarray
        mm² of tissue per bin, in [0, bin_um² / 10⁶] (up to the mask's pixelation); mask
        pixels whose centre falls outside the grid are not counted.

    Raises
    ------
    InputError
        If ``mask`` is not 2-D or a size is not positive.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise InputError(f"the tissue mask must be a 2-D (h, w) bool array, got shape {m.shape}")
    if not (math.isfinite(mask_mpp) and mask_mpp > 0 and math.isfinite(bin_um) and bin_um > 0):
        raise InputError(f"mask_mpp and bin_um must be positive µm, got {mask_mpp!r} and {bin_um!r}")
    ny, nx = (int(v) for v in shape)
    x0, y0 = (float(v) for v in origin_um)
    rows = np.floor(((np.arange(m.shape[0]) + 0.5) * mask_mpp - y0) / bin_um).astype(np.int64)
    cols = np.floor(((np.arange(m.shape[1]) + 0.5) * mask_mpp - x0) / bin_um).astype(np.int64)
    # bin indices grow with the pixel index, so the pixels inside the grid are one range per axis
    r0, r1 = np.searchsorted(rows, 0), np.searchsorted(rows, ny)
    c0, c1 = np.searchsorted(cols, 0), np.searchsorted(cols, nx)
    px = np.zeros((ny, nx), np.int64)
    # Row blocks: the counts of a block's pixels, never an integer copy of the whole mask (a field's
    # full-resolution mask of 36 MP would otherwise cost 288 MB of int64 on top of itself).
    for start in range(r0, r1, TISSUE_AREA_BLOCK_ROWS) if c1 > c0 else ():
        stop = min(start + TISSUE_AREA_BLOCK_ROWS, r1)
        block = m[start:stop, c0:c1].astype(np.int32)
        px += _bin_sum(_bin_sum(block, cols[c0:c1], nx, axis=1), rows[start:stop], ny, axis=0)
    return px * (float(mask_mpp) ** 2 / 1e6)


def density_from_counts(
    counts: np.ndarray,
    *,
    bin_um: float,
    origin_um: tuple[float, float] = (0.0, 0.0),
    tissue: np.ndarray | None = None,
    tissue_area_mm2: np.ndarray | None = None,
    min_tissue_fraction: float = 0.0,
    n_outside: int = 0,
) -> DensityMap:
    """A :class:`DensityMap` from cells already counted per bin (:func:`bin_counts`).

    Parameters
    ----------
    counts : (ny, nx) int array
        Cells per bin.
    bin_um : float > 0
        Side of a bin, µm.
    origin_um : (x0, y0)
        The grid's corner, µm.
    tissue : (ny, nx) bool array, optional
        The bins that count as tissue, each counted whole. Default (without
        ``tissue_area_mm2``): the bins holding a cell.
    tissue_area_mm2 : (ny, nx) float array, optional
        Tissue area of each bin, mm² (:func:`tissue_area_per_bin`): the densities' denominator,
        so a bin half covered by tissue is not halved. Overrides ``tissue``.
    min_tissue_fraction : float in [0, 1]
        With ``tissue_area_mm2``: a bin with less tissue than this share of its area is not
        tissue (NaN; a sliver of tissue would give an unstable density). Default 0: any tissue.
    n_outside : int
        Cells outside the grid, kept in the result.

    Returns
    -------
    DensityMap
        ``density_per_mm2 = counts / tissue area`` (the whole bin's area with ``tissue``) in
        the tissue bins, NaN elsewhere.

    Raises
    ------
    InputError
        If an array has another shape than ``counts`` or ``min_tissue_fraction`` is outside [0, 1].
    """
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim != 2:
        raise InputError(f"counts must be a 2-D grid (ny, nx), got shape {c.shape}")
    if not 0.0 <= min_tissue_fraction <= 1.0:
        raise InputError(f"min_tissue_fraction must be in [0, 1] (a share of a bin's area), got {min_tissue_fraction!r}")
    bin_area_mm2 = float(bin_um) ** 2 / 1e6
    area = None
    if tissue_area_mm2 is not None:
        area = np.asarray(tissue_area_mm2, dtype=np.float64)
        if area.shape != c.shape:
            raise InputError(f"tissue_area_mm2 has shape {area.shape}, the counts {c.shape}: give one area per bin")
        is_tissue = (area > 0) & (area >= min_tissue_fraction * bin_area_mm2)
        denominator = np.where(is_tissue, area, 1.0)
    else:
        is_tissue = (c > 0) if tissue is None else np.asarray(tissue, dtype=bool)
        if is_tissue.shape != c.shape:
            raise InputError(f"tissue has shape {is_tissue.shape}, the counts {c.shape}: give one bool per bin")
        denominator = bin_area_mm2
    density = np.where(is_tissue, c / denominator, np.nan)
    return DensityMap(c, density, is_tissue, (float(origin_um[0]), float(origin_um[1])), float(bin_um),
                      int(n_outside), area)


def density_map(
    xy_um: np.ndarray,
    *,
    bin_um: float = 100.0,
    window_um: tuple[float, float, float, float] | None = None,
    tissue_xy_um: np.ndarray | None = None,
    tissue_mask: np.ndarray | None = None,
    tissue_area_mm2: np.ndarray | None = None,
    min_tissue_fraction: float = 0.0,
) -> DensityMap:
    """Cells per bin of a square µm grid and their density in cells/mm² of tissue.

    Parameters
    ----------
    xy_um : (N, 2) float array
        Centroids (x, y) in µm of the cells to map (e.g. the immune cells); rows with NaN
        are left out.
    bin_um : float > 0
        Side of a bin in µm. Default 100 µm (a 0.01 mm² square, about the area over which
        TIL densities are read in hot-spot studies).
    window_um : (x_min, y_min, x_max, y_max) in µm, optional
        The grid's extent (e.g. the image: ``(0, 0, W·mpp, H·mpp)``); cells outside are not
        counted (``n_outside``). Default: the extent of ``xy_um`` and ``tissue_xy_um``, its
        corner rounded down to a multiple of ``bin_um``.
    tissue_xy_um : (M, 2) float array, optional
        Centroids of all cells: a bin holding any of them is tissue. Default ``xy_um``.
    tissue_mask : (ny, nx) bool array, optional
        The tissue bins, given directly (e.g. a tissue detection resampled to the grid);
        overrides ``tissue_xy_um``. Needs ``window_um`` (the shape must be known).
    tissue_area_mm2 : (ny, nx) float array, optional
        Tissue area of each bin in mm² (:func:`tissue_area_per_bin` of a tissue mask):
        densities per mm² of the tissue in the bin; overrides ``tissue_mask`` and
        ``tissue_xy_um``. Needs ``window_um``.
    min_tissue_fraction : float in [0, 1]
        With ``tissue_area_mm2``: bins with less tissue than this share of their area are
        not tissue (NaN). Default 0.

    Returns
    -------
    DensityMap
        ``density_per_mm2 = counts / (bin_um² / 10⁶)`` in tissue bins, NaN in the others
        (with ``tissue_area_mm2``: counts / the bin's tissue area). Without a tissue area a
        bin only partly covered by tissue is counted whole, so densities at the tissue edge
        are underestimates.

    Raises
    ------
    InputError
        If ``bin_um`` is not positive, the window is malformed, the grid would exceed
        :data:`MAX_GRID_BINS`, or ``tissue_mask`` / ``tissue_area_mm2`` has the wrong shape
        or no window.

    Examples
    --------
    >>> xy = np.array([[10.0, 10.0], [20.0, 30.0], [150.0, 50.0]])
    >>> m = density_map(xy, bin_um=100.0, window_um=(0, 0, 200, 100))
    >>> m.counts.tolist(), m.density_per_mm2.tolist()
    ([[2, 1]], [[200.0, 100.0]])
    """
    xy = _check_xy(xy_um, "xy_um")
    txy = xy if tissue_xy_um is None else _check_xy(tissue_xy_um, "tissue_xy_um")
    for given, name in ((tissue_mask, "tissue_mask"), (tissue_area_mm2, "tissue_area_mm2")):
        if given is not None and window_um is None:
            raise InputError(f"{name} needs window_um: give the grid's extent (x_min, y_min, x_max, y_max) in µm")
    x0, y0, nx, ny = _grid(np.vstack([xy, txy]) if len(txy) else xy, float(bin_um), window_um)
    edge = None if window_um is None else (float(window_um[2]), float(window_um[3]))
    counts, n_out = _bin_counts(xy, x0, y0, nx, ny, float(bin_um), edge)
    common = dict(bin_um=float(bin_um), origin_um=(x0, y0), n_outside=n_out)
    if tissue_area_mm2 is not None:
        return density_from_counts(counts, tissue_area_mm2=tissue_area_mm2, min_tissue_fraction=min_tissue_fraction,
                                   **common)
    if tissue_mask is not None:
        tissue = np.asarray(tissue_mask, dtype=bool)
        if tissue.shape != (ny, nx):
            raise InputError(f"tissue_mask has shape {tissue.shape}, the grid of {bin_um:g} µm bins over the window "
                             f"is ({ny}, {nx})")
    else:
        tissue = (counts > 0) if tissue_xy_um is None else (_bin_counts(txy, x0, y0, nx, ny, float(bin_um), edge)[0] > 0)
        tissue |= counts > 0
    return density_from_counts(counts, tissue=tissue, **common)


def _window_area_per_bin(window_um: tuple[float, float, float, float], bin_um: float) -> np.ndarray:
    """(ny, nx) float64 mm²: the area of each bin of the window's grid that lies inside the window
    (the last row and column are cut by its far edges)."""
    x0, y0, nx, ny = _grid(np.empty((0, 2)), float(bin_um), window_um)
    x1, y1 = float(window_um[2]), float(window_um[3])
    width_um = np.minimum(x0 + (np.arange(nx) + 1) * bin_um, x1) - (x0 + np.arange(nx) * bin_um)
    height_um = np.minimum(y0 + (np.arange(ny) + 1) * bin_um, y1) - (y0 + np.arange(ny) * bin_um)
    return np.outer(np.maximum(height_um, 0.0), np.maximum(width_um, 0.0)) / 1e6


def immune_density_map(cells: pd.DataFrame, *, role: str = "immune", bin_um: float = 100.0,
                       window_um: tuple[float, float, float, float] | None = None,
                       tissue_px: np.ndarray | None = None, tissue_mpp: float | None = None,
                       whole_window: bool = False, min_tissue_fraction: float = 0.0) -> DensityMap:
    """:func:`density_map` of the cells of one role, per mm² of the analysed area in each bin.

    The analysed area (the densities' denominator) is, in this order: the tissue mask
    ``tissue_px`` (each bin's tissue area, :func:`tissue_area_per_bin`, as a slide's heat map
    has it); the whole window when ``whole_window`` (each bin's area inside the window, so a
    bin cut by the image's edge is not diluted); else the bins holding a cell of any role,
    each counted whole.

    Parameters
    ----------
    cells : pandas.DataFrame
        Cell table (:mod:`core.cells`) with ``x_um``, ``y_um`` (µm) and ``role``.
    role : str
        One of :data:`core.cells.ROLES`; default ``"immune"`` (TILs/mm² per bin).
    bin_um, window_um
        As for :func:`density_map`; ``window_um`` is in the frame of ``tissue_px`` (e.g. the
        image: ``(0, 0, W·mpp, H·mpp)``).
    tissue_px : (h, w) bool ndarray, optional
        The analysed area (tissue, exclusions cut out) at ``tissue_mpp`` µm per pixel, pixel
        (0, 0) at µm (0, 0) (:class:`core.fitness.TissueMask` ``.mask``, or
        :func:`core.slides.tissue.detect_tissue`). Needs ``window_um`` and ``tissue_mpp``.
    tissue_mpp : float > 0, optional
        µm per pixel of ``tissue_px`` (``TissueMask.scale`` x the image's mpp).
    whole_window : bool
        Without ``tissue_px``: the whole window is analysed (no bin is glass). Needs
        ``window_um``. Default False.
    min_tissue_fraction : float in [0, 1]
        With ``tissue_px`` or ``whole_window``: a bin whose analysed area is less than this
        share of a whole bin is left empty (NaN). Default 0.

    Returns
    -------
    DensityMap
        With ``tissue_px`` or ``whole_window``, ``tissue_area_mm2`` holds each bin's analysed
        area (never more than its area inside the window) and bins without any are NaN.

    Raises
    ------
    InputError
        If a column is missing, ``role`` is unknown, the cells have no µm coordinates,
        ``tissue_px`` comes without ``tissue_mpp`` or with ``whole_window``, or either comes
        without ``window_um`` (and as :func:`density_map`).

    Examples
    --------
    >>> cells = pd.DataFrame({"x_um": [10.0, 20.0], "y_um": [10.0, 20.0], "role": "immune"})
    >>> tissue = np.zeros((10, 20), bool); tissue[:, :5] = True  # 10 µm pixels: x < 50 µm is tissue
    >>> m = immune_density_map(cells, window_um=(0, 0, 200, 100), tissue_px=tissue, tissue_mpp=10.0)
    >>> m.density_per_mm2.tolist()  # 2 cells in 0.005 mm² of tissue; the second bin is glass
    [[400.0, nan]]
    """
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}: choose one of {list(ROLES)}")
    missing = [c for c in ("x_um", "y_um", "role") if c not in cells.columns]
    if missing:
        raise InputError(f"cell table is missing column(s) {missing}: a density map needs x_um, y_um (µm) and role")
    xy = cells[["x_um", "y_um"]].to_numpy(dtype=np.float64)
    if len(xy) and not np.isfinite(xy).any():
        raise InputError("the cells have no µm coordinates (the image had no mpp): enter the scanner's microns per "
                         "pixel and analyse again")
    pick = (cells["role"] == role).to_numpy()
    if tissue_px is None and not whole_window:
        return density_map(xy[pick], bin_um=bin_um, window_um=window_um, tissue_xy_um=xy)
    if tissue_px is not None and whole_window:
        raise InputError("give either tissue_px (the analysed area's mask) or whole_window=True, not both")
    if window_um is None:
        raise InputError("a density map over a tissue mask or the whole window needs window_um: give the grid's "
                         "extent (x_min, y_min, x_max, y_max) in µm, e.g. the image's (0, 0, W·mpp, H·mpp)")
    area_mm2 = _window_area_per_bin(window_um, bin_um)
    if tissue_px is not None:
        if tissue_mpp is None:
            raise InputError("tissue_px needs tissue_mpp, its µm per pixel (the mask's scale x the image's mpp)")
        in_mask_mm2 = tissue_area_per_bin(tissue_px, float(tissue_mpp), bin_um=float(bin_um), shape=area_mm2.shape,
                                          origin_um=(float(window_um[0]), float(window_um[1])))
        area_mm2 = np.minimum(in_mask_mm2, area_mm2)  # a mask pixel astride the window's edge counts whole
    return density_map(xy[pick], bin_um=bin_um, window_um=window_um, tissue_area_mm2=area_mm2,
                       min_tissue_fraction=min_tissue_fraction)


def _disc(radius_bins: float) -> np.ndarray:
    r = int(math.floor(radius_bins + 1e-9))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= radius_bins * radius_bins + 1e-9


def getis_ord_gi_star(values: np.ndarray, mask: np.ndarray | None = None, *, radius_bins: float = 1.5) -> np.ndarray:
    """Getis-Ord Gi* z-score of every bin of a grid, binary weights over a disc of bins.

    For bin i with neighbours N(i) = the mask's bins whose centres lie within
    ``radius_bins`` bin sides of i's centre (i itself included), W_i = |N(i)|, and the n
    bins of the mask with mean x̄ and s = sqrt(Σ x_j² / n - x̄²)::

        Gi* = (Σ_{j∈N(i)} x_j - x̄ W_i) / (s · sqrt((n W_i - W_i²) / (n - 1)))

    the standardised statistic of Ord & Getis 1995 (binary weights, so Σ w² = W_i):
    approximately N(0, 1) when the values are randomly arranged over the mask's bins.

    Parameters
    ----------
    values : (ny, nx) float array
        A value per bin, e.g. immune cells/mm² (:attr:`DensityMap.density_per_mm2`).
    mask : (ny, nx) bool array, optional
        Bins taking part (tissue); others neither get a score nor count as neighbours.
        Default: the finite values.
    radius_bins : float > 0
        Neighbourhood radius in bin sides. 1 = the 4 edge neighbours, 1.5 (default) = the
        3 x 3 block (8 neighbours, "queen"), 3 = a disc of 29 bins.

    Returns
    -------
    (ny, nx) float64 ndarray
        Gi* per mask bin; NaN outside the mask, and everywhere when fewer than 2 bins
        take part or all their values are equal (s = 0: no pattern to find).

    Raises
    ------
    InputError
        If ``values`` is not 2-D, ``mask`` has another shape, or ``radius_bins`` <= 0.

    References
    ----------
    Getis & Ord 1992 (G_i*); Ord & Getis 1995 (standardised G_i*, its moments under
    random permutation).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"values must be a 2-D grid (ny, nx), got shape {x.shape}")
    m = np.isfinite(x) if mask is None else np.asarray(mask, dtype=bool) & np.isfinite(x)
    if m.shape != x.shape:
        raise InputError(f"mask has shape {m.shape}, values {x.shape}: give one bool per bin")
    if not (math.isfinite(radius_bins) and radius_bins > 0):
        raise InputError(f"radius_bins must be > 0 (in bin sides, e.g. 1.5 for the 3 x 3 block), got {radius_bins!r}")
    out = np.full(x.shape, np.nan)
    n = int(m.sum())
    if n < 2:
        return out
    xm = np.where(m, x, 0.0)
    mean = xm.sum() / n
    s = math.sqrt(max((xm * xm).sum() / n - mean * mean, 0.0))
    if s <= 1e-12 * max(abs(mean), 1.0):
        return out
    foot = _disc(radius_bins).astype(np.float64)
    local_sum = ndimage.correlate(xm, foot, mode="constant", cval=0.0)
    w = ndimage.correlate(m.astype(np.float64), foot, mode="constant", cval=0.0)
    den = s * np.sqrt(np.maximum(n * w - w * w, 0.0) / (n - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (local_sum - mean * w) / den
    out[m] = np.where(den[m] > 0, z[m], 0.0)
    return out


def hot_spots(dmap: DensityMap, *, neighbourhood_um: float = 150.0, alpha: float = 0.05) -> HotSpotMap:
    """Hot and cold spots of a density map: Gi* per tissue bin, FDR-controlled.

    Each tissue bin's Gi* (:func:`getis_ord_gi_star`) sums the densities of the tissue bins
    whose centres lie within ``neighbourhood_um`` of its own; its two-sided p-value from the
    normal distribution is adjusted over all tissue bins by Benjamini-Hochberg. A bin is a
    hot spot when q < ``alpha`` and Gi* > 0, a cold spot when q < ``alpha`` and Gi* < 0.
    Neighbouring Gi* overlap and are correlated (one extreme bin can flag its whole
    neighbourhood), and the normal approximation is rough for few bins; read the q-values
    as a screen, not as exact error rates.

    Parameters
    ----------
    dmap : DensityMap
        E.g. :func:`immune_density_map` in 100 µm bins.
    neighbourhood_um : float > 0
        Radius of the neighbourhood, µm. Default 150 µm: with 100 µm bins the 3 x 3 block
        (the bin and its 8 neighbours, a 0.09 mm² area), as on a grid of tissue squares in
        Nawaz et al. 2015.
    alpha : float in (0, 1)
        False discovery rate. Default 0.05.

    Returns
    -------
    HotSpotMap

    Raises
    ------
    InputError
        If ``neighbourhood_um`` is smaller than one bin side's distance to the next bin
        (no neighbour) or ``alpha`` is outside (0, 1).

    References
    ----------
    Getis & Ord 1992; Ord & Getis 1995; Nawaz et al. 2015 (immune hot spots on a whole
    section); Benjamini & Hochberg 1995.
    """
    if not (math.isfinite(neighbourhood_um) and neighbourhood_um >= dmap.bin_um):
        raise InputError(f"neighbourhood_um must be at least one bin side ({dmap.bin_um:g} µm) so that each bin has "
                         f"neighbours, got {neighbourhood_um!r}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha (the false discovery rate) must be in (0, 1), e.g. 0.05; got {alpha!r}")
    radius_bins = neighbourhood_um / dmap.bin_um
    z = getis_ord_gi_star(dmap.density_per_mm2, dmap.tissue, radius_bins=radius_bins)
    ok = np.isfinite(z)
    p = np.full(z.shape, np.nan)
    q = np.full(z.shape, np.nan)
    if ok.any():
        p[ok] = 2.0 * stats.norm.sf(np.abs(z[ok]))
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    sig = ok & (np.nan_to_num(q, nan=1.0) < alpha)
    hot, cold = sig & (np.nan_to_num(z) > 0), sig & (np.nan_to_num(z) < 0)
    total = int(dmap.counts[dmap.tissue].sum())
    summary = {
        "n_tissue_bins": int(dmap.tissue.sum()),
        "n_hot_bins": int(hot.sum()),
        "n_cold_bins": int(cold.sum()),
        "hot_area_mm2": (float(hot.sum()) * dmap.bin_area_mm2 if dmap.tissue_area_mm2 is None
                         else float(dmap.tissue_area_mm2[hot].sum())),
        "fraction_of_cells_in_hot_bins": (float(dmap.counts[hot].sum()) / total) if total else None,
        "bin_um": dmap.bin_um,
        "neighbourhood_um": float(neighbourhood_um),
        "neighbourhood_bins": int(_disc(radius_bins).sum()),
        "alpha": float(alpha),
        "correction": "Benjamini-Hochberg over the tissue bins",
        "definition": "Getis-Ord Gi* z-score of cells/mm² per bin, binary weights over the tissue bins whose centres "
                      "lie within neighbourhood_um (the bin included) (Getis & Ord 1992; Ord & Getis 1995)",
        "note": None if ok.any() else "no Gi*: fewer than two tissue bins, or the same density in every bin",
    }
    return HotSpotMap(z, p, q, hot, cold, float(neighbourhood_um), float(alpha), summary)
