"""Rendering of a synthetic section: the clean stained image and the noisy one a microscope sees.

The clean image paints each cell's ellipse and nucleus with anti-aliased edges over the
background colour, later cell types on top. The noisy image blurs it with a Gaussian
point-spread function, adds structured (spatially correlated) noise whose colour
covariance is that of the object under each pixel, and white noise (TNRD melanoma
paper, §2.2).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from core.generator.geometry import ellipse_coverage
from core.generator.placement import PlacedCell
from core.generator.recipes import StainRecipe


def smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Spatially correlated unit-variance Gaussian noise.

    Returns
    -------
    (H, W, 3) float32, each channel independent, standard deviation about 1, Gaussian
    autocorrelation of width ``sigma_px``.
    """
    z = rng.standard_normal((shape[0], shape[1], 3)).astype(np.float32)
    if sigma_px <= 0:
        return z
    out = ndimage.gaussian_filter(z, (sigma_px, sigma_px, 0), mode="wrap")
    return out / max(float(out.std()), 1e-6)


def render_clean(recipe: StainRecipe, cells: list[PlacedCell], shape: tuple[int, int],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Paint the cells (in list order, later on top) on a background drawn from the recipe.

    Parameters
    ----------
    recipe : StainRecipe
    cells : list of PlacedCell
        With colours and nuclei drawn (:func:`core.generator.placement.draw_appearance`).
    shape : (H, W)
    rng : numpy.random.Generator
        Draws the background colour.

    Returns
    -------
    clean : (H, W, 3) float32 RGB, not clipped
    objclass : (H, W) int16
        Object class per pixel for the structured noise: 0 background, 1 + 2 i the body of
        a cell of the recipe's type i, 2 + 2 i its nucleus.
    instance : (H, W) int32
        1-based index into ``cells`` of the topmost cell at each pixel, 0 for background.
    target_union : (H, W) float32 in {0, 1}
        Pixels of the cells of type ``recipe.concentration_of``.
    """
    h, w = shape
    type_rank = {ct.name: i for i, ct in enumerate(recipe.cell_types)}
    bg = recipe.background.draw(rng)
    clean = np.broadcast_to(bg.astype(np.float32), (h, w, 3)).copy()
    # object class per pixel: 0 background, 1 + 2*i cell body of type i, 2 + 2*i nucleus of type i
    objclass = np.zeros((h, w), np.int16)
    instance = np.zeros((h, w), np.int32)
    target_union = np.zeros((h, w), np.float32)
    for cid, c in enumerate(cells, start=1):
        y0, x0, cov = ellipse_coverage(c.cx, c.cy, c.a, c.b, c.angle, (h, w))
        if cov.size == 0:
            continue
        sl = (slice(y0, y0 + cov.shape[0]), slice(x0, x0 + cov.shape[1]))
        alpha = cov[..., None]
        clean[sl] = clean[sl] * (1 - alpha) + c.color.astype(np.float32) * alpha
        inside = cov >= 0.5
        instance[sl][inside] = cid
        objclass[sl][inside] = 1 + 2 * type_rank[c.type]
        if c.type == recipe.concentration_of:
            target_union[sl] = np.maximum(target_union[sl], inside.astype(np.float32))
        if c.nucleus is not None:
            ny0, nx0, ncov = ellipse_coverage(*c.nucleus, (h, w))
            if ncov.size:
                # clip the nucleus to its own cell's ellipse
                cell_cov = np.zeros_like(ncov)
                ys = slice(max(ny0, y0), min(ny0 + ncov.shape[0], y0 + cov.shape[0]))
                xs = slice(max(nx0, x0), min(nx0 + ncov.shape[1], x0 + cov.shape[1]))
                if ys.stop > ys.start and xs.stop > xs.start:
                    cell_cov[ys.start - ny0 : ys.stop - ny0, xs.start - nx0 : xs.stop - nx0] = cov[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
                ncov = np.minimum(ncov, cell_cov)
                nsl = (slice(ny0, ny0 + ncov.shape[0]), slice(nx0, nx0 + ncov.shape[1]))
                na = ncov[..., None]
                clean[nsl] = clean[nsl] * (1 - na) + c.nucleus_color.astype(np.float32) * na
                objclass[nsl][ncov >= 0.5] = 2 + 2 * type_rank[c.type]
    return clean, objclass, instance, target_union


def add_noise(recipe: StainRecipe, clean: np.ndarray, objclass: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The noisy image: point-spread blur, structured noise per object class, white noise.

    Parameters
    ----------
    recipe : StainRecipe
        ``blur_sigma_px``, ``texture_sigma_px``, ``texture_gain``, ``white_noise`` and the
        within-object covariances of its colour models.
    clean : (H, W, 3) float32 RGB
    objclass : (H, W) int16, as :func:`render_clean` returns it
    rng : numpy.random.Generator

    Returns
    -------
    (H, W, 3) float32 RGB in [0, 1]
    """
    h, w = objclass.shape
    noisy = ndimage.gaussian_filter(clean, (recipe.blur_sigma_px, recipe.blur_sigma_px, 0)) if recipe.blur_sigma_px > 0 else clean.copy()
    if recipe.texture_gain > 0:
        z = smooth_noise((h, w), recipe.texture_sigma_px, rng)
        models = [recipe.background]
        for ct in recipe.cell_types:
            models += [ct.color, ct.nucleus_color or ct.color]
        chol = np.stack([np.linalg.cholesky(np.asarray(m.within_cov) + 1e-9 * np.eye(3)) for m in models]).astype(np.float32)
        noisy = noisy + recipe.texture_gain * np.einsum("hwij,hwj->hwi", chol[objclass], z)
    if recipe.white_noise > 0:
        noisy = noisy + rng.normal(0.0, recipe.white_noise, size=noisy.shape).astype(np.float32)
    noisy = np.clip(noisy, 0.0, 1.0).astype(np.float32)
    return noisy
