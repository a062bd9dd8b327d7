"""Draw detected cells over an image (for overlay.png, reports and thumbnails)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.draw import circle_perimeter


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#rrggbb' → (r, g, b) ints in 0-255."""
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def draw_cells(
    pixels: np.ndarray,
    cells: pd.DataFrame,
    class_colors: dict[str, str],
    radius_px: float = 12.0,
    thickness_px: int = 2,
) -> np.ndarray:
    """Return a copy of ``pixels`` with a circle around every cell, coloured by class.

    Parameters
    ----------
    pixels : (H, W, 3) uint8 RGB
    cells : cell table (uses ``x_px``, ``y_px``, ``cell_class``)
    class_colors : cell_class → '#rrggbb'; unknown classes are drawn in yellow
    radius_px : circle radius in pixels of ``pixels``
    thickness_px : ring thickness in pixels

    Returns
    -------
    (H, W, 3) uint8 RGB
    """
    out = np.array(pixels, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    for cls, group in cells.groupby("cell_class", sort=False):
        rgb = np.array(hex_to_rgb(class_colors.get(str(cls), "#ffd700")), dtype=np.uint8)
        for x, y in zip(group["x_px"].to_numpy(), group["y_px"].to_numpy()):
            for t in range(thickness_px):
                rr, cc = circle_perimeter(int(round(y)), int(round(x)), max(1, int(round(radius_px)) + t), shape=(h, w))
                out[rr, cc] = rgb
    return out


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey of a classification mask: values in [0, 1] mapped to 0-255 (rounded, clipped)."""
    return np.clip(np.asarray(mask, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG encoding of an (H, W) or (H, W, 3) uint8 array."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
