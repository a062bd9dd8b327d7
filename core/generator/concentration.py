"""The classification rule of the TNRD melanoma paper (§2.2): local cell concentration.

A cell is classified from the area fraction of a target cell type (tumour cells in
scenario 1, immune cells in scenario 2) in a circular neighbourhood around its centroid:
above a threshold it gets mask value 1, inside an optional half band 0.5.
"""

from __future__ import annotations

import numpy as np


def concentration_map(target: np.ndarray, radius_px: float) -> np.ndarray:
    """Local area fraction of ``target`` in a disc of radius ``radius_px`` around each pixel.

    The disc is truncated at the image border and the fraction taken over its part
    inside the image.

    Parameters
    ----------
    target : (H, W) bool or float in [0, 1]
    radius_px : float > 0

    Returns
    -------
    (H, W) float32 in [0, 1]

    References
    ----------
    TNRD melanoma paper, §2.2 ("volumetric measure of cells in circular neighbourhoods").
    """
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (xx * xx + yy * yy <= radius_px * radius_px).astype(np.float64)
    num = _convolve_same(np.asarray(target, np.float64), disc)
    den = _convolve_same(np.ones(target.shape), disc)
    return np.clip(num / np.maximum(den, 1e-9), 0.0, 1.0).astype(np.float32)


def _convolve_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded 2-D convolution, output the size of ``image`` (FFT; odd square kernel)."""
    from scipy import fft

    h, w = image.shape
    k = kernel.shape[0]
    shape = (fft.next_fast_len(h + k - 1, real=True), fft.next_fast_len(w + k - 1, real=True))
    full = fft.irfft2(fft.rfft2(image, shape) * fft.rfft2(kernel, shape), shape)
    c = k // 2
    return full[c : c + h, c : c + w]


def cell_concentrations(target: np.ndarray, xy_px: np.ndarray, radius_px: float) -> np.ndarray:
    """Concentration of ``target`` in the disc around each cell centroid (paper §2.2).

    Parameters
    ----------
    target : (H, W) bool or float in [0, 1]
        Pixels of the cells whose concentration counts (tumour cells in scenario 1,
        immune cells in scenario 2).
    xy_px : (N, 2) float
        Cell centroids x, y in pixels (rounded to the nearest pixel, clipped to the image).
    radius_px : float > 0

    Returns
    -------
    (N,) float64 in [0, 1]
    """
    xy = np.asarray(xy_px, float).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros(0)
    h, w = target.shape
    cmap = concentration_map(target, radius_px)
    ix = np.clip(np.round(xy[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.round(xy[:, 1]).astype(int), 0, h - 1)
    return cmap[iy, ix].astype(np.float64)


def classify_concentrations(conc: np.ndarray, threshold: float, half_band: tuple[float, float] | None) -> np.ndarray:
    """Mask value of each cell from its concentration (paper §2.2).

    Parameters
    ----------
    conc : (N,) float in [0, 1]
    threshold : float
        Concentrations strictly above it give 1.0.
    half_band : (lo, hi) or None
        Concentrations in [lo, hi] give 0.5 (scenario 1: [0.2, 0.4]).

    Returns
    -------
    (N,) float32 in {0, 0.5, 1}
    """
    conc = np.asarray(conc, np.float64)
    out = np.where(conc > threshold, 1.0, 0.0)
    if half_band is not None:
        lo, hi = half_band
        out = np.where((conc >= lo) & (conc <= hi), 0.5, out)
    return out.astype(np.float32)
