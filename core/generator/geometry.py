"""Shapes on the pixel grid: anti-aliased ellipses (cells, nuclei), membrane rings, smooth random fields and
Voronoi tessellations.

Every cell and nucleus of the generator is an ellipse (TNRD melanoma paper, §2.2); cells of
some types fill the regions of a random Voronoi tessellation. Pixel centres are at integer
coordinates, x = column.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def ellipse_coverage(cx: float, cy: float, a: float, b: float, angle: float, shape: tuple[int, int]):
    """Anti-aliased coverage of an ellipse on a pixel grid, in its bounding box.

    Parameters
    ----------
    cx, cy : float
        Centre, pixels (x = column, pixel centres at integers).
    a, b : float > 0
        Semi-axes along the rotated x and y axes, pixels.
    angle : float
        Inclination of the ``a`` axis to the x axis, radians.
    shape : (H, W)

    Returns
    -------
    (y0, x0, cov) : the box's top-left pixel and (h, w) float32 coverage in [0, 1]
        (empty when the ellipse misses the image).
    """
    r = max(a, b) + 1.5
    h, w = shape
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, h)
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, w)
    if y1 <= y0 or x1 <= x0:
        return 0, 0, np.zeros((0, 0), np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    rho = np.sqrt(u * u + v * v)
    # signed distance to the boundary along the ray, approximately (1 - rho) * radius there
    radius = 1.0 / np.sqrt((np.where(rho > 0, u / np.maximum(rho, 1e-9), 1) / a) ** 2
                           + (np.where(rho > 0, v / np.maximum(rho, 1e-9), 0) / b) ** 2)
    cov = np.clip((1.0 - rho) * radius + 0.5, 0.0, 1.0).astype(np.float32)
    return y0, x0, cov


def ring_coverage(outer, inner):
    """Coverage of a ring: ``outer`` minus ``inner``, clipped to [0, 1], in ``outer``'s box.

    Parameters
    ----------
    outer, inner : (y0, x0, cov)
        Boxes from :func:`ellipse_coverage` (``inner`` inside ``outer``; either may be empty).

    Returns
    -------
    (y0, x0, cov) with ``cov`` (h, w) float32 in [0, 1]: a membrane or nuclear rim.
    """
    oy, ox, oc = outer
    if oc.size == 0:
        return oy, ox, oc
    iy, ix, ic = inner
    ring = oc.copy()
    if ic.size:
        ys, xs = iy - oy, ix - ox
        ring[ys : ys + ic.shape[0], xs : xs + ic.shape[1]] -= ic
    return oy, ox, np.clip(ring, 0.0, 1.0)


def add_coverage(target: np.ndarray, box, value: float, texture: np.ndarray | None = None) -> None:
    """Add ``value`` x the coverage of ``box`` (y0, x0, cov) into ``target`` (H, W), in place.

    ``texture`` (H, W), when given, multiplies the added amount pixel by pixel (chromatin,
    patchy membranes). An empty box adds nothing.
    """
    y0, x0, cov = box
    if cov.size == 0:
        return
    sl = (slice(y0, y0 + cov.shape[0]), slice(x0, x0 + cov.shape[1]))
    target[sl] += cov * value if texture is None else cov * value * texture[sl]


def smooth_field(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field: white noise filtered by a Gaussian of ``sigma_px``.

    Fields wider than 4 px are filtered on a grid coarser by ``sigma_px // 4`` and
    interpolated linearly (same statistics, much faster); the noise wraps at the edges.

    Returns
    -------
    (H, W) float32, mean 0 and standard deviation 1.
    """
    h, w = shape
    f = max(1, int(sigma_px // 4))
    gh, gw = -(-h // f) + 2, -(-w // f) + 2
    z = ndimage.gaussian_filter(rng.standard_normal((gh, gw)).astype(np.float32), max(sigma_px / f, 0.3), mode="wrap")
    if f > 1:
        z = ndimage.zoom(z, f, order=1, grid_mode=False)
    z = z[:h, :w]
    return ((z - z.mean()) / max(float(z.std()), 1e-6)).astype(np.float32)


def voronoi_labels(shape: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """Label map of a Voronoi tessellation of ``n`` uniform random sites.

    Returns
    -------
    (H, W) int32 in [0, n)
    """
    h, w = shape
    sites = rng.uniform([0, 0], [w, h], size=(n, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    d = (xx[None] - sites[:, 0, None, None]) ** 2 + (yy[None] - sites[:, 1, None, None]) ** 2
    return np.argmin(d, axis=0).astype(np.int32)


def hex_lattice_points(mask: np.ndarray, spacing_px: float, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """(N, 2) float64 x, y of a jittered hexagonal lattice inside ``mask`` (random offset and orientation)."""
    h, w = mask.shape
    ang = rng.uniform(0, np.pi)
    r = math.hypot(h, w) / 2 + spacing_px
    dy = spacing_px * math.sqrt(3) / 2
    jj = np.arange(-r, r + dy, dy)
    ii = np.arange(-r, r + spacing_px, spacing_px)
    gx, gy = np.meshgrid(ii, jj)
    gx = gx + (np.arange(len(jj))[:, None] % 2) * spacing_px / 2
    c, s = math.cos(ang), math.sin(ang)
    x = gx * c - gy * s + w / 2 + rng.uniform(0, spacing_px)
    y = gx * s + gy * c + h / 2 + rng.uniform(0, spacing_px)
    xy = np.c_[x.ravel(), y.ravel()]
    xy = xy + rng.normal(0.0, jitter * spacing_px, xy.shape)
    ix, iy = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    xy, ix, iy = xy[ok], ix[ok], iy[ok]
    return xy[mask[iy, ix]]


def uniform_points_in_mask(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) float64 x, y uniform over the pixels of ``mask`` (empty when the mask is)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0 or n <= 0:
        return np.zeros((0, 2))
    k = rng.integers(0, len(xs), n)
    return np.c_[xs[k] + rng.uniform(-0.5, 0.5, n), ys[k] + rng.uniform(-0.5, 0.5, n)]
