"""Point-pattern statistics of immune cells against tumour cells.

* :func:`distances_section`: immune → nearest tumour cell distances (summary in µm,
  histogram, ECDF, counts and fractions within radii).
* :func:`ripley_sections`: bivariate cross-K/L (tumour → immune, translation edge
  correction) and cross-G (immune → tumour, border correction), each with Monte-Carlo
  envelopes under random relabelling (pointwise, and a global MAD envelope for L(r) - r).
* :func:`morisita_horn`, :func:`morisita_section`: immune-tumour co-localisation over
  grid squares.

Coordinates are (x, y) in µm, float64; masks are (N,) bool over the same cells.
Randomness comes from one :class:`numpy.random.Generator`, seeded once by the caller and
passed down (re-seeding per simulation would make every simulation identical).

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
.. [Morisita] Horn H.S. "Measurement of 'overlap' in comparative ecological studies."
   Am Nat 100:419-424 (1966); Maley C.C. et al. "An ecological measure of immune-cancer
   colocalization as a prognostic factor for breast cancer." Breast Cancer Res 17:131
   (2015).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from core.cells import ROLES
from core.errors import InputError
from core.spatial.geometry import StudyWindow
from core.spatial.params import SpatialParams, distance_summary, unavailable

#: Largest number of tumour-immune candidate pairs (within the largest Ripley radius)
#: the Monte-Carlo code accepts (memory is about 40 bytes a pair).
MAX_PAIRS = 60_000_000
#: Most tumour + immune cells entering cross-K/L/G and their Monte-Carlo envelopes. Above it
#: (a whole slide: 10^5 to 10^7 cells) the cells are thinned at random to this many before
#: the relabellings (:func:`_thinned`: K and L unchanged in expectation); the section says so
#: (``subsample``) and a warning is added. Cost and memory are then those of
#: RIPLEY_MAX_POINTS cells whatever the slide (about 4 s and 0.3 GB with 99 simulations on
#: 2 CPU cores), instead of O(n·S) memory for n cells and S simulations.
RIPLEY_MAX_POINTS = 100_000


def distances_section(xy: np.ndarray, imm: np.ndarray, tum: np.ndarray, params: SpatialParams) -> dict:
    """Immune → nearest tumour cell distances: the ``distances`` section.

    Parameters
    ----------
    xy : (N, 2) float64 ndarray
        Cell centroids (x, y) in µm.
    imm, tum : (N,) bool ndarray
        Immune and tumour cells.
    params : SpatialParams
        Uses ``radii_um``, ``histogram_bin_um`` and ``histogram_max_um``.

    Returns
    -------
    dict
        ``n_immune``, ``n_tumour``, ``immune_to_nearest_tumour_um`` (summary in µm),
        ``within_radius`` (per radius r: immune cells with a tumour cell within r, their
        fraction, immune-tumour pairs within r and immune cells per tumour cell),
        ``histogram`` and ``ecdf`` of the distances; or ``{"available": False, ...}``
        without immune or tumour cells. Arrays are numpy (made JSON-ready by the caller).
    """
    radii = np.asarray(params.radii_um, dtype=np.float64)
    need = max(1, int(params.min_cells_per_role))
    if imm.sum() < need or tum.sum() < need:
        return unavailable(f"too few cells: needs at least {need} immune and {need} tumour cells "
                           f"(found {int(imm.sum())} immune, {int(tum.sum())} tumour)")
    tree_t = cKDTree(xy[tum])
    tree_i = cKDTree(xy[imm])
    d_nn, _ = tree_t.query(xy[imm], k=1)
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
    return {
        "available": True,
        "definition": "Euclidean distance from each immune cell centroid to the nearest tumour cell centroid",
        "n_immune": n_i,
        "n_tumour": n_t,
        "immune_to_nearest_tumour_um": distance_summary(d_nn),
        "within_radius": rows,
        "histogram": {
            "bin_edges_um": edges,
            "counts": hist,
            "n_overflow": int((d_nn > edges[-1]).sum()),
        },
        "ecdf": {"radius_um": edges, "fraction": ecdf},
    }


def _cross_k_g(
    xy_t: np.ndarray,
    xy_i: np.ndarray,
    window: StudyWindow,
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


def grid_counts(xy: np.ndarray, role: np.ndarray, rect: tuple, cell_um: float) -> dict:
    """Cells of each role per square of a grid over ``rect`` = (x0, y0, x1, y1) in µm.

    Returns ``{"nx", "ny", role: (ny * nx,) int counts, row-major, for each of ROLES}``;
    cells outside ``rect`` are clipped into the border squares.
    """
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


def ripley_sections(
    xy: np.ndarray,
    tum: np.ndarray,
    imm: np.ndarray,
    in_win: np.ndarray,
    window: StudyWindow | None,
    params: SpatialParams,
    rng: np.random.Generator,
    warnings: list[str],
) -> tuple[dict, dict]:
    """The ``ripley`` (cross-K/L, tumour → immune) and ``cross_g`` (immune → tumour) sections.

    Parameters
    ----------
    xy : (N, 2) float64 ndarray
        Cell centroids (x, y) in µm.
    tum, imm, in_win : (N,) bool ndarray
        Tumour cells, immune cells, cells inside the study window.
    window : StudyWindow or None
    params : SpatialParams
        Uses ``ripley_radii_um``, ``n_simulations`` and ``envelope_alpha``.
    rng : numpy.random.Generator
        Drawn from for the random relabellings (one generator for all simulations).
    warnings : list of str
        Appended to when radii above half the window's shorter side are dropped.

    Returns
    -------
    ripley, cross_g : dict
        Curves over ``radius_um`` with their envelopes, the global test of L(r) - r and
        every setting used; ``{"available": False, ...}`` (both) with fewer than two
        tumour or immune cells in the window, or too many pairs (:data:`MAX_PAIRS`).
        With more than :data:`RIPLEY_MAX_POINTS` tumour + immune cells in the window both
        are computed on a random subsample (:func:`_thinned`), described under
        ``subsample`` (and ``cross_g["subsample_note"]``), with a warning.
    """
    if window is None:
        u = unavailable("no study window")
        return u, u
    t_w, i_w = tum & in_win, imm & in_win
    nt, ni = int(t_w.sum()), int(i_w.sum())
    need = max(2, int(params.min_cells_per_role))
    if nt < need or ni < need:
        u = unavailable(f"too few cells: needs at least {need} tumour and {need} immune cells in the study window "
                        f"(found {nt} and {ni})")
        return u, u
    subsample = None
    if nt + ni > RIPLEY_MAX_POINTS:
        t_w, i_w, subsample = _thinned(t_w, i_w, RIPLEY_MAX_POINTS, rng)
        warnings.append(subsample["note"])
    radii = np.asarray(params.ripley_radii_um, dtype=np.float64)
    r_lim = 0.5 * min(window.width_um, window.height_um)
    if radii[-1] > r_lim:
        radii = radii[radii <= r_lim]
        warnings.append(f"Ripley radii above {r_lim:.4g} µm (half the window's shorter side) were dropped")
        if len(radii) < 2:
            u = unavailable(f"the study window is too small for Ripley radii (half its shorter side is {r_lim:.4g} µm)")
            return u, u
    try:
        res = _cross_k_g(xy[t_w], xy[i_w], window, radii, params.n_simulations, rng)
    except InputError as err:
        u = unavailable(str(err))
        return u, u
    K = res["K"]
    L = res["L"]
    env_k = _envelope(K, radii, params.envelope_alpha, deviation=False)
    env_l = _envelope(L - radii[:, None], radii, params.envelope_alpha, deviation=True)
    env_g = _envelope(res["G"], radii, params.envelope_alpha, deviation=False)
    common = {
        "n_simulations": params.n_simulations,
        "null_model": "random relabelling of tumour/immune labels over the observed tumour+immune positions",
        "n_tumour": int(t_w.sum()),
        "n_immune": int(i_w.sum()),
        "window_area_mm2": window.area_um2 / 1e6,
    }
    if subsample is not None:
        common["subsample"] = subsample
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
    if subsample is not None:
        gcross["subsample_note"] = (
            "G of the thinned pattern: with fewer tumour cells the nearest one is farther, so G(r) is lower than "
            "on all cells (K and L are not changed by thinning); the exact immune → nearest tumour distances of "
            "every cell are in the distances section")
    return ripley, gcross


def _thinned(t_w: np.ndarray, i_w: np.ndarray, max_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Tumour and immune masks thinned at random to ``max_points`` cells together.

    The rarer type keeps all its cells when they are at most half of ``max_points``, else
    half of ``max_points``; the other type fills the rest. Each type's cells are drawn
    uniformly without replacement from ``rng``. Thinning each type independently leaves the
    cross-K function K_TI (and so L) of a stationary pattern unchanged: the immune cells
    expected within r of a tumour cell and the immune intensity both scale by the immune
    retention fraction (Baddeley et al. 2015, ch. 7, thinning); the estimate only becomes
    noisier, and a randomly labelled pattern stays randomly labelled, so the relabelling
    envelopes test the same null. The nearest-neighbour function G does change (the nearest
    tumour cell is farther in a thinned pattern).

    Parameters
    ----------
    t_w, i_w : (N,) bool ndarray
        Tumour and immune cells in the study window; more than ``max_points`` together.
    max_points : int >= 2
    rng : numpy.random.Generator

    Returns
    -------
    t_kept, i_kept : (N,) bool ndarray
    subsample : dict
        ``fraction_tumour``, ``fraction_immune`` (retention fractions in (0, 1]),
        ``n_tumour_total``, ``n_immune_total``, ``n_tumour_used``, ``n_immune_used``,
        ``max_points``, ``method``, ``note`` (the sentence added to the warnings).
    """
    nt, ni = int(t_w.sum()), int(i_w.sum())
    half = max_points // 2
    small = min(nt, ni)
    k_small = small if small <= half else half
    k_t, k_i = (k_small, max_points - k_small) if nt <= ni else (max_points - k_small, k_small)
    out = []
    for mask, k in ((t_w, k_t), (i_w, k_i)):
        idx = np.flatnonzero(mask)
        kept = np.zeros_like(mask)
        kept[rng.choice(idx, size=min(k, len(idx)), replace=False)] = True
        out.append(kept)
    info = {
        "fraction_tumour": int(out[0].sum()) / nt,
        "fraction_immune": int(out[1].sum()) / ni,
        "max_points": int(max_points),
        "n_tumour_total": nt,
        "n_immune_total": ni,
        "n_tumour_used": int(out[0].sum()),
        "n_immune_used": int(out[1].sum()),
        "method": "uniform random subsample of each type (independent thinning): K and L unchanged in "
                  "expectation (Baddeley et al. 2015, ch. 7); G of the thinned pattern",
    }
    info["note"] = (f"cross-K/L/G and their envelopes were computed on a random subsample of {info['n_tumour_used']} of "
                    f"{nt} tumour and {info['n_immune_used']} of {ni} immune cells (at most {max_points} cells, to "
                    "bound time and memory); the other statistics use every cell")
    return out[0], out[1], info


def morisita_section(
    xy: np.ndarray,
    role: np.ndarray,
    imm: np.ndarray,
    tum: np.ndarray,
    in_win: np.ndarray,
    window: StudyWindow | None,
    params: SpatialParams,
) -> dict:
    """The ``morisita_horn`` section: :func:`morisita_horn` over ``grid_cell_um`` squares of the window.

    Parameters
    ----------
    xy : (N, 2) float64 ndarray
        Cell centroids (x, y) in µm.
    role : (N,) str ndarray
        One of :data:`core.cells.ROLES` per cell.
    imm, tum, in_win : (N,) bool ndarray
        Immune cells, tumour cells, cells inside the study window.
    window : StudyWindow or None
    params : SpatialParams
        Uses ``grid_cell_um``.

    Returns
    -------
    dict
        ``index`` in [0, 1] (None when a type is absent from the window), the grid used
        and the definition; ``{"available": False, ...}`` without a window or cells.
    """
    if window is not None and imm.any() and tum.any():
        g = grid_counts(xy[in_win], role[in_win], window.rect, params.grid_cell_um)
        mh = morisita_horn(g["immune"], g["tumour"])
        return {
            "available": mh is not None,
            "index": mh,
            "grid_cell_um": params.grid_cell_um,
            "grid_shape": [g["ny"], g["nx"]],
            "n_squares_with_cells": int(((g["immune"] + g["tumour"]) > 0).sum()),
            "definition": "2·Σ p_i q_i / (Σ p_i² + Σ q_i²), p/q = immune/tumour proportion per square (Horn 1966)",
        }
    return unavailable("needs immune and tumour cells in the study window")
