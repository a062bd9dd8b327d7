"""Colour unmixing of multiplex brightfield IHC: one concentration map per chromogen.

What the Analyze page's "why this call" view shows for the ``mihc-tcell-phenotypes`` scenario:
how much hematoxylin, DAB (FOXP3), Fast Red (CD8), green (CD4) and teal (PD1) each pixel holds,
so that a user can see which chromogens a cell carries and why it got its phenotype. No
Streamlit here; the page calls :func:`unmix` and :func:`chromogen_rgb`, the scenario
:func:`cell_levels` (the per-cell columns of its cell table).

Method. Beer-Lambert (Ruifrok & Johnston 2001): a pixel's optical density
``OD = -log10(I / I_0)`` (I_0 the glass) is ``sum_k c_k v_k`` with v_k the unit OD vector of stain
k (:func:`core.generator.mihc.stain_matrix`) and c_k >= 0 its concentration. scikit-image's
``separate_stains`` solves this for 3 stains by inverting a 3 x 3 matrix; with 5 stains and 3
colour channels the system is under-determined (every OD is the mixture of many stain triples),
so the concentrations are found by non-negative least squares with a preference for few stains
per pixel, as in the group-sparsity unmixing of brightfield multiplex IHC (Chen & Srinivas 2015):

    minimise  ||OD - c V||^2 + lambda * |support(c)|   over c >= 0, |support(c)| <= 3,

``lambda = sparsity_od ** 2``. The support is searched exhaustively: the unconstrained least
squares of every subset of at most 3 stains (5 + 10 + 10 subsets, and the empty one) is one
(3 x k) pseudo-inverse applied to all pixels; subsets with a negative coefficient are
infeasible; the feasible subset of lowest cost wins. With ``sparsity_od = 0`` this is the exact
NNLS solution (``scipy.optimize.nnls``: the NNLS optimum is the best feasible subset, and
Carathéodory's theorem bounds its support by 3 in 3 channels) with ties broken towards fewer
stains. All subsets are solved at once by two small matrix products per chunk of pixels (the
coefficients of every subset, and the residuals as a quadratic form of the OD): measured on the
shared 2-core CPU, under load, about 2 s per megapixel, against 25-30 µs per pixel (25-30 s per
megapixel) for ``scipy.optimize.nnls`` called pixel by pixel; so ``nnls`` is used only in the
tests, as the reference (same residuals to 1e-3 OD).

Limits (said in the view): with three colour channels, stains whose vectors are close (here
DAB, Fast Red and green lie 25-30° apart, hematoxylin 29-40° from each) can trade
concentration where two of them and noise meet, and a weak mixture of two chromogens can read as
the one stain between them (0.16 Fast Red + 0.17 teal fits 0.27 hematoxylin within 0.025 OD). On
noisy synthetic sections with jittered stains the per-cell levels (:func:`cell_levels_from_rgb`)
separate positive from negative cells with an AUC of 0.85 (PD1, teal), 0.91 (CD8), 0.98 (CD4)
and 1.00 (FOXP3). The maps are a guide to the chromogens, not a measurement, and the network's
call, not the unmixing, is the result.

References
----------
Ruifrok A.C., Johnston D.A., "Quantification of histochemical staining by color deconvolution",
Anal Quant Cytol Histol 23:291-299 (2001); Chen T., Srinivas C., "Group sparsity model for stain
unmixing in brightfield multiplex immunohistochemistry images", Comput Med Imaging Graph 46:30-39
(2015); S-DRDIN paper §1 (colour deconvolution as the earlier approach to mIHC).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from core.errors import InputError

#: Default sparsity penalty (OD units): one more stain must lower the residual by more than this.
SPARSITY_OD = 0.04
#: Pixels solved per chunk (bounds the temporaries to a few tens of MB).
_CHUNK_PX = 1 << 16


@dataclass
class ChromogenMaps:
    """Per-chromogen concentration maps of an RGB image.

    Attributes
    ----------
    concentrations : (H, W, K) float32 >= 0
        Concentration of each stain in OD units along its unit vector (a strongly stained
        membrane is about 0.3-1).
    names : tuple of K str
        Stain names, e.g. ``("hematoxylin", "dab", "fast_red", "green", "teal")``.
    markers : tuple of K (str or None)
        The marker each stain shows (None for the counterstain).
    stain_matrix : (K, 3) float64
        Unit OD vectors used (rows).
    white : (3,) float64
        Glass intensity used, RGB in (0, 1].
    residual_od : (H, W) float32 >= 0
        Norm of the OD the stains do not explain (large: a colour outside the panel, e.g. pigment
        or another stain).
    """

    concentrations: np.ndarray
    names: tuple[str, ...]
    markers: tuple[str | None, ...]
    stain_matrix: np.ndarray
    white: np.ndarray
    residual_od: np.ndarray

    def map(self, name: str) -> np.ndarray:
        """(H, W) float32 concentration of the stain called ``name`` (or of the stain of marker ``name``).

        Raises
        ------
        InputError
            If neither a stain nor a marker of that name is unmixed; the message lists them.
        """
        if name in self.names:
            return self.concentrations[..., self.names.index(name)]
        if name in self.markers:
            return self.concentrations[..., self.markers.index(name)]
        raise InputError(f"no chromogen {name!r} was unmixed; stains: {', '.join(self.names)}; markers: "
                         f"{', '.join(m for m in self.markers if m)}")


def optical_density(rgb: np.ndarray, white=1.0) -> np.ndarray:
    """Optical density of RGB pixels, ``-log10(I / white)``, clipped at 0.

    Parameters
    ----------
    rgb : (..., 3) uint8 RGB, or float RGB in [0, 1]
    white : float or (3,) float in (0, 1], glass intensity (float RGB units)

    Returns
    -------
    (..., 3) float32 OD >= 0 (a value of 0 (black) counts as 1/255 of the white level)
    """
    x = np.asarray(rgb)
    x = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
    wh = np.asarray(white, np.float32)
    return np.maximum(-np.log10(np.maximum(x, np.float32(1.0 / 255.0)) / wh), np.float32(0.0))


def estimate_white(rgb: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """The glass intensity of an image: each channel's ``percentile`` of the brightest pixels.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 or float RGB in [0, 1]
    percentile : float in (50, 100]

    Returns
    -------
    (3,) float64 RGB in [0.5, 1] (an image without glass gives its brightest tissue, which
    makes every concentration a little lower; pass the scanner's white level when known)
    """
    x = np.asarray(rgb)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    flat = x.reshape(-1, 3)
    if len(flat) > 1_000_000:  # a strided sample is as good for a percentile
        flat = flat[:: len(flat) // 1_000_000]
    return np.clip(np.percentile(flat, percentile, axis=0), 0.5, 1.0)


def _subsets(k: int, max_stains: int) -> list[tuple[int, ...]]:
    return [()] + [c for n in range(1, max_stains + 1) for c in combinations(range(k), n)]


def unmix(rgb: np.ndarray, stains: np.ndarray | None = None, white=None, names: tuple[str, ...] | None = None,
          markers: tuple[str | None, ...] | None = None, sparsity_od: float = SPARSITY_OD,
          max_stains: int = 3) -> ChromogenMaps:
    """Per-chromogen concentration maps of an RGB brightfield image (module docstring).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 RGB, or float RGB in [0, 1]
    stains : (K, 3) float, optional
        Unit OD vectors (rows; normalised here). Default: the mIHC panel's
        (:func:`core.generator.mihc.stain_matrix`, K = 5) with its names and markers.
    white : float or (3,) float in (0, 1], optional
        Glass intensity; default :func:`estimate_white` of the image.
    names, markers : tuple of K, optional
        Stain names and the marker each shows (default: the panel's when ``stains`` is None,
        else ``stain0``, ``stain1``... and None).
    sparsity_od : float >= 0
        Penalty per stain used, in OD units (0: exact non-negative least squares).
    max_stains : int in [1, 3]
        Most stains in one pixel (3 = the number of colour channels).

    Returns
    -------
    ChromogenMaps

    Raises
    ------
    InputError
        If the image is not (H, W, 3), ``stains`` is not (K, 3) with K >= 1, a stain vector is
        zero or has a negative entry, or ``max_stains`` / ``sparsity_od`` is out of range.

    References
    ----------
    Ruifrok & Johnston 2001 (OD, Beer-Lambert); Chen & Srinivas 2015 (sparse unmixing of
    brightfield multiplex IHC).

    Example
    -------
    >>> from core.generator.mihc import generate_mihc, MIHC_TCELL
    >>> s = generate_mihc((64, 64), seed=1, recipe=MIHC_TCELL.without_variation())
    >>> m = unmix(s.image, white=1.0)
    >>> m.concentrations.shape, m.names[4]
    ((64, 64, 5), 'teal')
    """
    from core.generator import mihc

    px = np.asarray(rgb)
    if px.ndim != 3 or px.shape[2] != 3:
        raise InputError(f"colour unmixing needs an (H, W, 3) RGB image, got shape {px.shape}")
    if stains is None:
        v = mihc.stain_matrix()
        names = names or mihc.CHROMOGEN_NAMES
        markers = markers or tuple(c.marker for c in mihc.CHROMOGENS)
    else:
        v = np.asarray(stains, np.float64)
        if v.ndim != 2 or v.shape[1] != 3 or len(v) < 1:
            raise InputError(f"stains must be a (K, 3) matrix of OD vectors, got shape {v.shape}")
        if (v < 0).any() or (np.linalg.norm(v, axis=1) == 0).any():
            raise InputError("every stain vector must be non-negative and non-zero (OD per R, G, B channel)")
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        names = names or tuple(f"stain{i}" for i in range(len(v)))
        markers = markers or (None,) * len(v)
    if len(names) != len(v) or len(markers) != len(v):
        raise InputError(f"{len(v)} stains need {len(v)} names and markers, got {len(names)} and {len(markers)}")
    if not 1 <= int(max_stains) <= 3:
        raise InputError(f"max_stains must be 1, 2 or 3 (the colour channels), got {max_stains}")
    if not sparsity_od >= 0:
        raise InputError(f"sparsity_od must be >= 0 (OD units), got {sparsity_od}")
    wh = estimate_white(px) if white is None else np.broadcast_to(np.asarray(white, np.float64), (3,)).copy()
    if (wh <= 0).any() or (wh > 1).any():
        raise InputError(f"white must be in (0, 1] per channel (float RGB), got {wh.tolist()}")
    h, w = px.shape[:2]
    k = len(v)
    lam = np.float32(float(sparsity_od) ** 2)
    subsets = [c for c in _subsets(k, min(int(max_stains), k)) if not c or np.linalg.matrix_rank(v[list(c)]) == len(c)]
    # Per subset S: its pseudo-inverse rows (coefficients c_S = od P_S^T) and its projection Q_S = A_S P_S, so
    # that the squared residual is ||od||^2 - od^T Q_S od; all subsets at once as two matrix products.
    p_rows, starts, quad = [], [], []
    for sub in subsets:
        starts.append(sum(len(x) for x in p_rows))
        if not sub:
            p_rows.append(np.zeros((0, 3)))
            quad.append(np.zeros(6))
            continue
        a = v[list(sub)].T  # (3, |S|)
        pinv = np.linalg.pinv(a)
        q = a @ pinv
        p_rows.append(pinv)
        quad.append([q[0, 0], q[1, 1], q[2, 2], 2 * q[0, 1], 2 * q[0, 2], 2 * q[1, 2]])
    p_all = np.concatenate(p_rows).astype(np.float32)  # (sum |S|, 3)
    quad = np.asarray(quad, np.float32).T  # (6, n_subsets)
    penalty = lam * np.array([len(x) for x in subsets], np.float32)
    conc = np.zeros((h * w, k), np.float32)
    resid = np.zeros(h * w, np.float32)
    flat = px.reshape(-1, 3)
    for start in range(0, h * w, _CHUNK_PX):
        od = optical_density(flat[start : start + _CHUNK_PX], wh)  # (n, 3)
        n = len(od)
        o0, o1, o2 = od[:, 0], od[:, 1], od[:, 2]
        # subsets along the first axis: the reductions below run over contiguous rows
        outer = np.stack([o0 * o0, o1 * o1, o2 * o2, o0 * o1, o0 * o2, o1 * o2])  # (6, n)
        r2 = np.maximum(outer[:3].sum(axis=0) - quad.T @ outer, 0.0)  # (n_subsets, n)
        coef = p_all @ od.T  # (sum |S|, n)
        cost = r2 + penalty[:, None]
        for j, sub in enumerate(subsets):
            if len(sub) == 1:
                cost[j][coef[starts[j]] < 0] = np.inf
            elif sub:
                cost[j][np.minimum.reduce(coef[starts[j] : starts[j] + len(sub)], axis=0) < 0] = np.inf
        win = np.argmin(cost, axis=0)
        resid[start : start + n] = np.sqrt(r2[win, np.arange(n)])
        out = conc[start : start + n]
        for j in np.unique(win):
            sub = subsets[j]
            if sub:
                sel = np.flatnonzero(win == j)
                out[np.ix_(sel, list(sub))] = coef[starts[j] : starts[j] + len(sub)][:, sel].T
    return ChromogenMaps(conc.reshape(h, w, k), tuple(names), tuple(markers), v, wh, resid.reshape(h, w))


def chromogen_rgb(maps: ChromogenMaps, name: str) -> np.ndarray:
    """One unmixed chromogen rendered alone, as it would look on white glass (Beer-Lambert).

    Parameters
    ----------
    maps : ChromogenMaps
    name : str, a stain name or the marker it shows

    Returns
    -------
    (H, W, 3) uint8 RGB

    Raises
    ------
    InputError
        If ``name`` is neither an unmixed stain nor a marker.
    """
    c = maps.map(name)
    k = maps.names.index(name) if name in maps.names else maps.markers.index(name)
    rgb = np.power(np.float32(10.0), -c[..., None] * maps.stain_matrix[k].astype(np.float32))
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _disc_pixels(shape: tuple[int, int], xy_px: np.ndarray, radius_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column of every pixel of a disc around each point, and whether it lies in the image.

    Returns
    -------
    rows, cols : (N, M) int64, clipped into the image
    inside : (N, M) bool, False for disc pixels outside the image
    """
    h, w = shape
    r = int(np.ceil(radius_px))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = dx * dx + dy * dy <= radius_px * radius_px
    xy = np.asarray(xy_px, np.float64).reshape(-1, 2)
    rows = np.round(xy[:, 1]).astype(np.int64)[:, None] + dy[disc][None]
    cols = np.round(xy[:, 0]).astype(np.int64)[:, None] + dx[disc][None]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1), inside


def _summarise(values: np.ndarray, inside: np.ndarray, statistic: str) -> np.ndarray:
    """(N, M, K) values and (N, M) inside → (N, K) float32 statistic over the inside pixels (0 where none)."""
    v = np.where(inside[..., None], values, np.nan).astype(np.float32)
    out = np.zeros((v.shape[0], v.shape[2]), np.float32)
    some = inside.any(axis=1)
    if some.any():
        out[some] = (np.nanpercentile(v[some], 90, axis=1) if statistic == "p90" else np.nanmean(v[some], axis=1))
    return out


def _check_levels_args(radius_px: float, statistic: str) -> None:
    if not radius_px > 0:
        raise InputError(f"radius_px must be > 0, got {radius_px}")
    if statistic not in ("p90", "mean"):
        raise InputError(f"statistic must be 'p90' or 'mean', got {statistic!r}")


def cell_levels(maps: ChromogenMaps, xy_px: np.ndarray, radius_px: float, statistic: str = "p90") -> np.ndarray:
    """Each cell's level of every chromogen: a statistic of the concentrations in a disc around it.

    Parameters
    ----------
    maps : ChromogenMaps of the image the cells are in
    xy_px : (N, 2) float x, y in pixels of that image
    radius_px : float > 0, disc radius (a T cell's radius with its membrane: about 4.5 µm)
    statistic : {"p90", "mean"}
        90th percentile (a membrane ring covers a fraction of the disc, so its mean understates
        it) or mean.

    Returns
    -------
    (N, K) float32 >= 0, OD units, in ``maps.names`` order (0 for a disc wholly outside the image)

    Raises
    ------
    InputError
        If ``radius_px`` is not positive or ``statistic`` unknown.
    """
    _check_levels_args(radius_px, statistic)
    rows, cols, inside = _disc_pixels(maps.concentrations.shape[:2], xy_px, radius_px)
    return _summarise(maps.concentrations[rows, cols], inside, statistic)


def cell_levels_from_rgb(rgb: np.ndarray, xy_px: np.ndarray, radius_px: float, white=None, statistic: str = "p90",
                         chunk_cells: int = 4096, **unmix_args) -> np.ndarray:
    """:func:`cell_levels` of an RGB image, unmixing only the pixels of the cells' discs (any image size).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 RGB, or float RGB in [0, 1]
    xy_px, radius_px, statistic : as :func:`cell_levels`
    white : glass intensity; default :func:`estimate_white` of the whole image
    chunk_cells : int, cells unmixed at a time (bounds the memory)
    unmix_args : further arguments of :func:`unmix` (``stains``, ``sparsity_od``...)

    Returns
    -------
    (N, K) float32 >= 0, OD units, in the panel's stain order (:data:`core.generator.mihc.CHROMOGEN_NAMES`
    unless ``stains`` is given)

    Raises
    ------
    InputError
        As :func:`cell_levels` and :func:`unmix`.
    """
    _check_levels_args(radius_px, statistic)
    px = np.asarray(rgb)
    if px.ndim != 3 or px.shape[2] != 3:
        raise InputError(f"colour unmixing needs an (H, W, 3) RGB image, got shape {px.shape}")
    wh = estimate_white(px) if white is None else white
    xy = np.asarray(xy_px, np.float64).reshape(-1, 2)
    k = len(unmix_args["stains"]) if unmix_args.get("stains") is not None else None
    parts = []
    for start in range(0, len(xy), max(1, int(chunk_cells))):
        rows, cols, inside = _disc_pixels(px.shape[:2], xy[start : start + chunk_cells], radius_px)
        maps = unmix(px[rows, cols], white=wh, **unmix_args)  # the discs as an (N, M, 3) image
        parts.append(_summarise(maps.concentrations, inside, statistic))
    if not parts:
        from core.generator.mihc import CHROMOGENS

        return np.zeros((0, k or len(CHROMOGENS)), np.float32)
    return np.concatenate(parts)


def chromogen_columns() -> dict[str, str]:
    """Cell-table column of each stain of the mIHC panel: ``{"hematoxylin": "hematoxylin_od", "dab": "foxp3_od", ...}``.

    A marker's chromogen is named by its marker (``pd1_od``, ``cd8_od``, ``cd4_od``,
    ``foxp3_od``), the counterstain by its stain (``hematoxylin_od``); OD units, in the panel's
    order (:data:`core.generator.mihc.CHROMOGENS`).
    """
    from core.generator.mihc import CHROMOGENS

    return {c.name: (f"{c.marker.lower()}_od" if c.marker else f"{c.name}_od") for c in CHROMOGENS}


#: Most pixels unmixed for the page's maps (about 3 s on 2 CPU cores, some 60 MB of temporaries).
VIEW_MAX_PIXELS = 1_500_000


def chromogen_pictures(rgb: np.ndarray, max_pixels: int = VIEW_MAX_PIXELS) -> list[tuple[str, np.ndarray, str]]:
    """The unmixed chromogen maps of an mIHC image as pictures, for the "why this call" view.

    The image is first reduced (area averaging of the intensities) to at most ``max_pixels``,
    so the time and memory are bounded whatever its size; then unmixed (:func:`unmix`, the
    panel's nominal stains, glass from :func:`estimate_white` of the image). Each stain is drawn
    alone on white glass (:func:`chromogen_rgb`); the last picture is the optical density the
    panel does not explain (black: 0.5 OD or more), which marks pigment, another stain or a
    panel with other chromogens.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 RGB
    max_pixels : int >= 1024, most pixels unmixed

    Returns
    -------
    list of (title, picture, caption): picture (h, w, 3) uint8 RGB, the same (h, w) for all,
    one per stain (hematoxylin first, then FOXP3, CD8, CD4, PD1 by their chromogens) and the
    residual last.

    Raises
    ------
    InputError
        If ``rgb`` is not an (H, W, 3) image or ``max_pixels`` is below 1024.
    """
    from skimage.transform import resize

    from core.generator.mihc import CHROMOGENS

    px = np.asarray(rgb)
    if px.ndim != 3 or px.shape[2] != 3:
        raise InputError(f"colour unmixing needs an (H, W, 3) RGB image, got shape {px.shape}")
    if max_pixels < 1024:
        raise InputError(f"max_pixels must be at least 1024, got {max_pixels}")
    h, w = px.shape[:2]
    scale = min(1.0, float(np.sqrt(max_pixels / float(h * w))))
    small = px.astype(np.float32) / (255.0 if px.dtype == np.uint8 else 1.0)
    if scale < 1.0:
        small = resize(small, (max(1, round(h * scale)), max(1, round(w * scale))), anti_aliasing=True,
                       preserve_range=True).astype(np.float32)
    maps = unmix(small)
    out = []
    for c in CHROMOGENS:
        level = float(np.percentile(maps.map(c.name), 99.5)) if maps.concentrations.size else 0.0
        what = f"{c.marker} ({c.colour.split(' ')[0]} chromogen, {c.localisation})" if c.marker else \
            "hematoxylin (counterstain, every nucleus)"
        out.append((what, chromogen_rgb(maps, c.name),
                    f"{c.name.replace('_', ' ')} alone on white glass; 99.5th percentile {level:.2f} OD"))
    resid = np.clip(maps.residual_od / 0.5, 0.0, 1.0)
    grey = np.clip((1.0 - resid) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out.append(("Not explained by the panel", np.repeat(grey[..., None], 3, axis=2),
                f"optical density the five stains leave unexplained (black: 0.5 OD or more); "
                f"median {float(np.median(maps.residual_od)):.3f} OD"))
    return out


def phenotype_levels(cells, columns: dict[str, str] | None = None):
    """Median chromogen level of the cells of each phenotype: the table that says why cells got their call.

    Parameters
    ----------
    cells : pandas.DataFrame with ``cell_class`` and the chromogen columns (:func:`chromogen_columns`)
    columns : stain → column, optional; default :func:`chromogen_columns`

    Returns
    -------
    pandas.DataFrame, one row per phenotype present (in the order of first appearance in the
    panel's classes when known): ``phenotype``, ``cells`` and one column per stain, e.g.
    ``"CD8 (fast red), median OD"``. Empty (with those columns) when there are no cells.

    Raises
    ------
    InputError
        If ``cells`` lacks ``cell_class`` or a chromogen column.
    """
    import pandas as pd

    from core.generator.mihc import CHROMOGENS, PHENOTYPES

    cols = columns or chromogen_columns()
    missing = [c for c in ("cell_class", *cols.values()) if c not in cells.columns]
    if missing:
        raise InputError(f"the cell table has no column {', '.join(missing)}: it is not an mIHC phenotype table")
    marker = {c.name: c.marker for c in CHROMOGENS}
    heads = {name: (f"{marker[name]} ({name.replace('_', ' ')}), median OD" if marker.get(name) else f"{name}, median OD")
             for name in cols}
    order = [p for p in PHENOTYPES if p in set(cells["cell_class"])]
    order += sorted(set(cells["cell_class"]) - set(order))
    rows = []
    for p in order:
        sub = cells[cells["cell_class"] == p]
        rows.append({"phenotype": p, "cells": int(len(sub)),
                     **{heads[n]: round(float(sub[c].median()), 3) for n, c in cols.items()}})
    return pd.DataFrame(rows, columns=["phenotype", "cells", *heads.values()])
