"""Generation of one synthetic section with its ground truth (:func:`generate`).

:func:`generate` turns a recipe, an image shape and a seed into a :class:`SyntheticSection`:
it places the cells (:mod:`core.generator.placement`), renders the clean and noisy images
(:mod:`core.generator.rendering`), classifies the cells by local concentration
(:mod:`core.generator.concentration`) and tabulates them. One ``numpy.random.Generator``,
seeded once, makes every draw, so the same arguments give the same section on every machine.

References
----------
TNRD melanoma paper (shared/papers/tnrd-variational-network-melanoma.txt), §2.2 and
Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import InputError
from core.generator.concentration import cell_concentrations, classify_concentrations
from core.generator.placement import draw_appearance, place_cells
from core.generator.recipes import StainRecipe, get_recipe
from core.generator.rendering import add_noise, render_clean


@dataclass
class SyntheticSection:
    """One generated section and its ground truth.

    Attributes
    ----------
    clean : (H, W, 3) float32 RGB in [0, 1]
        Noise-free image (the denoising target g_rgb of eq. 4).
    noisy : (H, W, 3) float32 RGB in [0, 1]
        Blurred image with structured and white noise (the model input u0_rgb).
    mask : (H, W) float32 in {0, 0.5, 1}
        Classification mask g_m: 1 on the pixels of classified immune cells, 0.5 on
        those of cells in the half band (scenario 1 only), 0 elsewhere.
    instance : (H, W) int32
        ``cell_id`` of the topmost cell at each pixel, 0 for background.
    cells : pandas.DataFrame
        One row per cell: ``cell_id`` (int, as in ``instance``), ``x_px``, ``y_px``
        (centroid of the whole ellipse, pixels, x = column; may lie outside the image
        for cells cut by the border), ``type``, ``role``, ``semi_axis_a_px``,
        ``semi_axis_b_px``, ``angle_rad``, ``nucleus_visible`` (bool),
        ``visible_area_px`` (pixels in ``instance``), ``concentration`` (in [0, 1],
        NaN for types that are not classified), ``mask_value`` (0, 0.5 or 1) and
        ``classified`` (mask_value == 1).
    recipe : StainRecipe
    seed : int
    """

    clean: np.ndarray
    noisy: np.ndarray
    mask: np.ndarray
    instance: np.ndarray
    cells: pd.DataFrame
    recipe: StainRecipe
    seed: int

    @property
    def noisy_uint8(self) -> np.ndarray:
        """The noisy image as (H, W, 3) uint8 RGB, as a microscope would save it."""
        return np.clip(self.noisy * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def classified_xy(self, value: float = 1.0) -> np.ndarray:
        """(N, 2) float64 x, y in pixels of the cells whose mask value is ``value``."""
        rows = self.cells[np.isclose(self.cells["mask_value"], value)]
        return rows[["x_px", "y_px"]].to_numpy(np.float64)


def generate(recipe: StainRecipe | str, shape: tuple[int, int] = (500, 500), seed: int = 0) -> SyntheticSection:
    """Generate one synthetic stained section with its ground truth.

    Parameters
    ----------
    recipe : StainRecipe or str
        The stain (a recipe key such as ``"if-melanoma"`` or ``"he-melanoma"``).
    shape : (H, W) int
        Image size in pixels, each side in [16, 4096]. Cell numbers of Table 1 are per
        500 x 500 px and scale with the area.
    seed : int >= 0
        Seeds the one ``numpy.random.Generator`` used for everything: the same
        arguments give the same section.

    Returns
    -------
    SyntheticSection

    Raises
    ------
    InputError
        If the shape or seed is out of range or the recipe is unknown.

    References
    ----------
    TNRD melanoma paper, §2.2 and Table 1.

    Example
    -------
    >>> s = generate("if-melanoma", (128, 128), seed=1)
    >>> s.noisy.shape, s.mask.dtype
    ((128, 128, 3), dtype('float32'))
    """
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError) as err:
        raise InputError(f"shape must be (height, width) in pixels, got {shape!r}") from err
    if not (16 <= h <= 4096 and 16 <= w <= 4096):
        raise InputError(f"shape must be between 16 and 4096 px per side, got {h} x {w}")
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(int(seed))
    cells = place_cells(recipe, (h, w), rng)
    draw_appearance(recipe, cells, rng)
    clean, objclass, instance, target_union = render_clean(recipe, cells, (h, w), rng)

    # classification (paper §2.2): concentration in a disc around each classifiable cell
    n = len(cells)
    conc = np.full(n, np.nan)
    mask_value = np.zeros(n, np.float32)
    cls_idx = [i for i, c in enumerate(cells) if c.type == recipe.classify_type]
    if cls_idx:
        xy = np.array([[cells[i].cx, cells[i].cy] for i in cls_idx])
        conc[cls_idx] = cell_concentrations(target_union, xy, recipe.radius_px)
        mask_value[cls_idx] = classify_concentrations(conc[cls_idx], recipe.threshold, recipe.half_band)
    lut = np.concatenate([[0.0], mask_value]).astype(np.float32)
    mask = lut[instance]

    # noisy image: point-spread blur, structured noise per object class, white noise
    noisy = add_noise(recipe, clean, objclass, rng)

    visible = np.bincount(instance.ravel(), minlength=n + 1)[1:]
    table = pd.DataFrame(
        {
            "cell_id": np.arange(1, n + 1, dtype=np.int64),
            "x_px": [c.cx for c in cells],
            "y_px": [c.cy for c in cells],
            "type": pd.Series([c.type for c in cells], dtype=object),
            "role": pd.Series([c.role for c in cells], dtype=object),
            "semi_axis_a_px": [c.a for c in cells],
            "semi_axis_b_px": [c.b for c in cells],
            "angle_rad": [c.angle for c in cells],
            "nucleus_visible": [c.nucleus is not None for c in cells],
            "visible_area_px": visible.astype(np.int64),
            "concentration": conc,
            "mask_value": mask_value.astype(np.float64),
            "classified": mask_value == 1.0,
        }
    )
    return SyntheticSection(np.clip(clean, 0, 1).astype(np.float32), noisy, mask.astype(np.float32), instance, table, recipe, int(seed))
