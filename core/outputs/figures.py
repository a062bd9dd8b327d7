"""Static pictures of an analysis, rendered by output kind: cells, dense outputs, restored images, charts.

- Cells: :func:`render_overlay` rings every cell in its class colour over the image
  (``overlay.png``, bounded to :data:`OVERLAY_MAX_SIDE_PX`; the report draws the same
  picture smaller).
- Dense outputs (:class:`core.results.DenseOutput`): :func:`dense_to_image` is the
  export (8-bit grey for a probability or a mask, the arg-max coloured for class
  probabilities); :func:`dense_over_image` lays one over the image for the report.
- Restored images are (H, W, 3) uint8 already: :func:`png_bytes`.
- Charts for the PDF (matplotlib's object API, no ``pyplot`` state, so safe in
  Streamlit's threads): :func:`density_figure_png`, :func:`spatial_figures_png`.

Nothing here names a scenario or an output: what to draw is read from the result.
"""

from __future__ import annotations

import io
from typing import Any, Iterable

import numpy as np
import pandas as pd

from core.outputs import records as rec

#: Longest side, in pixels, of ``overlay.png`` (larger images are downscaled first).
OVERLAY_MAX_SIDE_PX = 4000
#: Ring radius of a cell in µm (a lymphocyte's radius plus a margin), and in pixels without an mpp.
RING_RADIUS_UM = 5.0
RING_RADIUS_PX_NO_MPP = 12.0
#: Colours for classes (and class-probability planes) without one of their own.
DEFAULT_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#rrggbb' → (r, g, b) ints in 0-255."""
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def class_palette(classes: Iterable[str], class_colors: dict[str, Any] | None = None) -> dict[str, str]:
    """``{class: "#rrggbb"}`` from ``class_colors`` (hex or RGB tuples), :data:`DEFAULT_COLORS` for the rest."""
    out: dict[str, str] = {}
    class_colors = class_colors or {}
    for i, cls in enumerate(classes):
        color = class_colors.get(cls)
        if isinstance(color, (list, tuple)) and len(color) >= 3:
            vals = [int(round(c * 255)) if isinstance(c, float) and c <= 1.0 else int(c) for c in color[:3]]
            color = "#{:02x}{:02x}{:02x}".format(*vals)
        out[cls] = str(color) if color else DEFAULT_COLORS[i % len(DEFAULT_COLORS)]
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG encoding of an (H, W) or (H, W, 3) uint8 array (deterministic: no time stamp)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def downscale(pixels: np.ndarray, max_side_px: int) -> tuple[np.ndarray, float]:
    """``pixels`` resized (area filter) so the longest side is at most ``max_side_px``.

    Returns
    -------
    (ndarray, float)
        The image (same layout and dtype uint8) and the scale applied (1.0 if unchanged).
    """
    from PIL import Image

    h, w = pixels.shape[:2]
    scale = min(1.0, max_side_px / max(h, w))
    if scale >= 1.0:
        return np.asarray(pixels, dtype=np.uint8), 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize(size, Image.Resampling.BOX)), scale


def _ring_offsets(radius_px: float, thickness_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(dy, dx) int offsets of a ring of ``thickness_px`` pixels outside ``radius_px``."""
    outer = radius_px + thickness_px
    k = int(np.ceil(outer))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    d = np.hypot(dy, dx)
    keep = (d >= radius_px - 0.5) & (d < outer - 0.5)
    return dy[keep], dx[keep]


def render_overlay(
    rgb: np.ndarray,
    cells: pd.DataFrame,
    class_colors: dict[str, str],
    mpp: float | None,
    max_side_px: int = OVERLAY_MAX_SIDE_PX,
) -> np.ndarray:
    """The image with every cell ringed in its class colour.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
        The analysed image's RGB rendering (:attr:`core.io.ImageData.rgb`).
    cells : pandas.DataFrame
        Cell table with ``x_px``, ``y_px`` (pixels of ``rgb``) and ``cell_class``.
    class_colors : dict of str to str
        ``{cell_class: "#rrggbb"}`` (the scenario's classes); other classes get
        :data:`DEFAULT_COLORS`.
    mpp : float or None
        Microns per pixel of ``rgb``: rings have a radius of :data:`RING_RADIUS_UM`;
        :data:`RING_RADIUS_PX_NO_MPP` pixels without an mpp.
    max_side_px : int
        The image is first downscaled so its longest side is at most this.

    Returns
    -------
    (h, w, 3) uint8 ndarray
        h, w = H, W scaled by min(1, max_side_px / max(H, W)). Rings are at least 3 px in
        radius and 2 px thick (thicker on large outputs), so they stay visible.
    """
    out, scale = downscale(rgb, max_side_px)
    out = out.copy()
    h, w = out.shape[:2]
    if not len(cells):
        return out
    radius = max(3.0, (RING_RADIUS_UM / mpp if mpp else RING_RADIUS_PX_NO_MPP) * scale)
    thickness = max(2, round(max(h, w) / 1500))
    dy, dx = _ring_offsets(radius, thickness)
    classes = cells["cell_class"].astype(str)
    colors = class_palette(sorted(set(classes) - set(class_colors)), None) | dict(class_colors)
    step = max(1, 4_000_000 // len(dy))  # cells per batch: about 4 million ring pixels at a time
    for cls in dict.fromkeys(classes):
        sel = (classes == cls).to_numpy()
        y_all = np.rint(cells["y_px"].to_numpy(dtype=float)[sel] * scale).astype(np.int64)
        x_all = np.rint(cells["x_px"].to_numpy(dtype=float)[sel] * scale).astype(np.int64)
        for start in range(0, len(y_all), step):
            y, x = y_all[start:start + step], x_all[start:start + step]
            yy, xx = (y[:, None] + dy[None, :]).ravel(), (x[:, None] + dx[None, :]).ravel()
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            out[yy[ok], xx[ok]] = hex_to_rgb(colors[cls])
    return out


def mask_to_uint8(values: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey of values in [0, 1] (a probability or a mask): value x 255, rounded and clipped."""
    return np.clip(np.asarray(values, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def plane_colors(output: Any, class_colors: dict[str, str] | None = None) -> dict[str, str]:
    """``{plane name: "#rrggbb"}`` of a class-probabilities output (a class's own colour when it has one)."""
    return class_palette(list(output.class_names) or [str(k) for k in range(output.values.shape[-1])], class_colors)


def dense_to_image(output: Any, class_colors: dict[str, str] | None = None) -> np.ndarray:
    """The export picture of a dense output.

    Parameters
    ----------
    output : core.results.DenseOutput
    class_colors : dict, optional
        Colours of named planes (e.g. the scenario's classes).

    Returns
    -------
    ndarray
        ``probability`` / ``mask`` ((H, W) values): (H, W) uint8 grey, value x 255.
        ``class_probabilities`` ((H, W, K)): (H, W, 3) uint8, each pixel in the colour
        of its most probable plane (:func:`plane_colors`).
    """
    values = np.asarray(output.values)
    if values.ndim == 2:
        return mask_to_uint8(values)
    lut = np.array([hex_to_rgb(c) for c in plane_colors(output, class_colors).values()], dtype=np.uint8)
    return lut[np.argmax(values, axis=-1)]


def dense_over_image(rgb: np.ndarray, output: Any, class_colors: dict[str, str] | None = None,
                     max_alpha: float = 0.6) -> np.ndarray:
    """A dense output laid over the image, for the report.

    A one-plane output is drawn in its ``color`` with opacity value x ``max_alpha``; class
    probabilities in their arg-max colours at opacity ``0.75 * max_alpha``.

    Returns
    -------
    (H, W, 3) uint8 ndarray
    """
    base = np.asarray(rgb, dtype=np.float32)
    values = np.asarray(output.values, dtype=np.float32)
    if values.ndim == 2:
        alpha = np.clip(values, 0.0, 1.0)[..., None] * max_alpha
        color = np.array(hex_to_rgb(output.color), dtype=np.float32)
    else:
        alpha = np.float32(0.75 * max_alpha)
        color = dense_to_image(output, class_colors).astype(np.float32)
    return np.clip(base * (1 - alpha) + color * alpha + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- charts


def new_figure(width_in: float = 7.0, height_in: float = 3.2):
    """A matplotlib :class:`~matplotlib.figure.Figure` (object API, constrained layout, 150 dpi)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=150, layout="constrained")


def figure_png(fig) -> bytes:
    """PNG bytes of a matplotlib figure (no time-dependent metadata)."""
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=150, metadata={"Software": None})
    return out.getvalue()


def density_figure_png(record: dict[str, Any]) -> bytes | None:
    """Bar chart of density (cells/mm²) per class, per region when there are regions.

    Falls back to counts when densities are unknown (no mpp). ``None`` if there are no cells.
    """
    summary = record.get("summary") or {}
    dens = rec.densities_per_mm2(summary)
    cnt = rec.counts(summary)
    groups: dict[str, dict[str, float]] = {}
    use_density = bool(dens) and all(v is not None for v in dens.values())
    groups["whole image"] = {k: v for k, v in (dens if use_density else cnt).items() if v is not None}
    for name, stats in rec.region_stats(record).items():
        values = stats.get("densities_per_mm2" if use_density else "counts") or {}
        groups[name] = {k: float(v) for k, v in values.items() if v is not None}
    classes = sorted({c for g in groups.values() for c in g})
    if not classes:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    width = 0.8 / len(groups)
    colors = class_palette(list(groups), None)
    x = np.arange(len(classes))
    for i, (name, values) in enumerate(groups.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [values.get(c, 0.0) for c in classes], width, label=name, color=colors[name])
    ax.set_xticks(x, classes)
    ax.set_ylabel("cells/mm²" if use_density else "cells (mpp unknown)")
    ax.set_title("Density per class" if use_density else "Count per class")
    if len(groups) > 1:
        ax.legend(fontsize=7)
    return figure_png(fig)


def spatial_curves(spatial: dict | None) -> list[tuple[str, str, np.ndarray, dict[str, np.ndarray]]]:
    """Find curves in a spatial-statistics dict.

    A curve is any dict holding a numeric list whose key ends in ``_um`` (the x
    axis, e.g. ``r_um``) and other numeric lists of the same length (the y values).

    Returns
    -------
    list of (title, x_name, x (n,) float64, {y_name: (n,) float64})
    """
    found = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        arrays = {}
        for key, value in node.items():
            if isinstance(value, list) and len(value) > 1 and all(isinstance(v, (int, float)) or v is None for v in value):
                arrays[str(key)] = np.array([np.nan if v is None else v for v in value], dtype=np.float64)
        x_keys = [k for k in arrays if k.endswith("_um")]
        preferred = [k for k in ("r_um", "radius_um", "distance_um") if k in arrays]
        if x_keys:
            xk = (preferred or x_keys)[0]
            ys = {k: v for k, v in arrays.items() if k != xk and len(v) == len(arrays[xk])}
            by_unit: dict[str, dict[str, np.ndarray]] = {}
            for k, v in ys.items():  # one plot per unit: K in µm² and L in µm do not share an axis
                unit = k.rsplit("_", 1)[-1] if k.endswith(("_um", "_um2", "_per_mm2")) else ""
                by_unit.setdefault(unit, {})[k] = v
            for unit, group in by_unit.items():
                title = path or "spatial"
                found.append((f"{title} ({unit})" if unit and len(by_unit) > 1 else title, xk, arrays[xk], group))
        for key, value in node.items():
            walk(value, f"{path}.{key}" if path else str(key))

    walk(spatial or {}, "")
    return found


def spatial_figures_png(spatial: dict | None, max_figures: int = 4) -> list[tuple[str, bytes]]:
    """Line plots of the curves :func:`spatial_curves` finds, as ``[(title, png)]``."""
    out = []
    for title, x_name, x, ys in spatial_curves(spatial)[:max_figures]:
        fig = new_figure()
        ax = fig.add_subplot()
        for name, y in ys.items():
            ax.plot(x, y, marker="o", markersize=2.5, label=name)
        ax.set_xlabel(x_name.replace("_um", " (µm)"))
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        out.append((title, figure_png(fig)))
    return out
