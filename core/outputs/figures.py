"""Static pictures of an analysis, rendered by output kind: cells, dense outputs, restored images, charts.

- Cells: :func:`render_overlay` rings every cell in its class colour over the image
  (``overlay.png``, bounded to :data:`OVERLAY_MAX_SIDE_PX`; the report draws the same
  picture smaller).
- Dense outputs (:class:`core.results.DenseOutput`): :func:`dense_to_image` is the
  export (8-bit grey for a probability or a mask, the arg-max coloured for class
  probabilities); :func:`dense_over_image` lays one over the image for the report.
- Restored images are (H, W, 3) uint8 already: :func:`png_bytes`.
- Charts for the PDF (matplotlib's object API, no ``pyplot`` state, so safe in
  Streamlit's threads): :func:`compartment_density_figure_png`, :func:`distance_figure_png`,
  :func:`envelope_figure_png`; :func:`thumbnail_png` for small copies of the overlay; the older
  generic :func:`density_figure_png`, :func:`spatial_figures_png`.

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
    """``{plane name: "#rrggbb"}`` of a class-probabilities output (a class's own colour when it has one).

    A plane called ``background`` without a colour of its own is black, so the arg-max picture
    shows the classes, not a palette colour that may match one of them.
    """
    colors = {"background": "#000000", **(class_colors or {})}
    return class_palette(list(output.class_names) or [str(k) for k in range(output.values.shape[-1])], colors)


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


# --------------------------------------------------------------------------- report figures

#: Colours of the report figures: immune cells, tumour, stroma, envelopes.
IMMUNE_COLOR = "#7b3fa0"
TUMOUR_COLOR = "#c82020"
STROMA_COLOR = "#5a9a5a"
MARGIN_COLOR = "#d9a400"
OTHER_COLOR = "#3b6fb6"


def thumbnail_png(png: bytes, max_side_px: int = 600) -> bytes:
    """``png`` downscaled (area filter) so its longest side is at most ``max_side_px``, as RGB PNG.

    Parameters
    ----------
    png : bytes
        Any image PIL reads (e.g. ``overlay.png``).
    max_side_px : int > 0

    Returns
    -------
    bytes
        PNG of an (h, w, 3) uint8 RGB image.

    Raises
    ------
    ValueError
        If ``png`` is not an image (PIL's ``UnidentifiedImageError``).
    """
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"))
    return png_bytes(downscale(rgb, max_side_px)[0])


def compartment_densities(record: dict[str, Any]) -> list[tuple[str, float, str]]:
    """Immune-cell density (cells/mm²) in each compartment an analysis measured.

    Parameters
    ----------
    record : dict
        An analysis record (:mod:`core.outputs.records`).

    Returns
    -------
    list of (label, density in cells/mm², colour)
        In this order, each only when measured: the whole analysed area (the summary's
        immune density by role, else the study window's), the intratumoral and stromal
        compartments, the drawn tumour / stroma / margin regions, the tumour centre (CT)
        and the invasive margin (IM).
    """
    summary = record.get("summary") or {}
    s = rec.spatial(record)
    out: list[tuple[str, float, str]] = []
    whole = (summary.get("density_by_role_per_mm2") or {}).get("immune")
    if whole is None:
        whole = ((s.get("counts") or {}).get("density_per_mm2_in_window") or {}).get("immune")
    if whole is not None:
        out.append(("whole\nanalysed area", float(whole), OTHER_COLOR))
    comp = s.get("compartments") or {}
    for key, label, color in (("intratumoral_immune_density_per_mm2", "intratumoral\ncompartment", TUMOUR_COLOR),
                              ("stromal_immune_density_per_mm2", "stromal\ncompartment", STROMA_COLOR)):
        if comp.get(key) is not None:
            out.append((label, float(comp[key]), color))
    kind_colors = {"tumour": TUMOUR_COLOR, "stroma": STROMA_COLOR, "margin": MARGIN_COLOR}
    # predicted compartments (core.pipeline) are the regions of the compartments above: not drawn, not shown twice
    by_kind = {} if "predicted_compartments" in s else (s.get("regions") or {}).get("by_kind") or {}
    for kind, k in by_kind.items():
        value = (k.get("density_per_mm2_by_role") or {}).get("immune")
        if kind != "exclude" and value is not None:
            out.append((f"{kind}\nregions (drawn)", float(value), kind_colors.get(kind, OTHER_COLOR)))
    im = s.get("invasive_margin") or {}
    if im.get("available"):
        for key, label in (("ct", "tumour\ncentre (CT)"), ("im", "invasive\nmargin (IM)")):
            value = (im.get(key) or {}).get("immune_density_per_mm2")
            if value is not None:
                out.append((label, float(value), MARGIN_COLOR if key == "im" else TUMOUR_COLOR))
    return out


def compartment_density_figure_png(record: dict[str, Any]) -> bytes | None:
    """Bar chart of immune-cell density by compartment, with the phenotype thresholds.

    Parameters
    ----------
    record : dict
        An analysis record (:mod:`core.outputs.records`).

    Returns
    -------
    bytes or None
        PNG (7 x 3.2 in, 150 dpi): one bar per compartment of
        :func:`compartment_densities` (cells/mm², value printed on the bar); the
        phenotype's "inflamed" and "excluded" thresholds as dashed lines when the
        statistics carry them. None when fewer than two compartments were measured
        (no mpp, or neither tumour cells nor regions).
    """
    bars = compartment_densities(record)
    if len(bars) < 2:  # the whole image alone compares nothing: its density is on page 1
        return None
    fig = new_figure(7.0, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(bars))
    values = [v for _, v, _ in bars]
    ax.bar(x, values, color=[c for _, _, c in bars], width=0.6)
    for xi, v in zip(x, values):
        ax.annotate(f"{v:,.0f}", (xi, v), ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [label for label, _, _ in bars], fontsize=7)
    ax.set_ylabel("immune cells/mm²")
    th = (rec.spatial(record).get("phenotype") or {}).get("thresholds") or {}
    for key, text, color in (("inflamed_min_intratumoral_per_mm2", "inflamed from (intratumoral)", TUMOUR_COLOR),
                             ("excluded_min_stromal_per_mm2", "excluded from (stromal)", STROMA_COLOR)):
        if isinstance(th.get(key), (int, float)):
            ax.axhline(th[key], color=color, linestyle="--", linewidth=0.9,
                       label=f"{text}: {th[key]:g} cells/mm²")
    if th:
        fig.legend(fontsize=6.5, loc="outside lower center", ncols=2, frameon=False)
    ax.set_ylim(0, max(values + [float(v) for v in th.values() if isinstance(v, (int, float))]) * 1.15 or 1.0)
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def distance_figure_png(spatial: dict | None, max_bins: int = 40) -> bytes | None:
    """Immune cell → nearest tumour cell distances: histogram and cumulative share, radii marked.

    Parameters
    ----------
    spatial : dict or None
        Spatial statistics (:meth:`core.spatial.SpatialStats.to_dict`); reads
        ``distances.histogram`` (``bin_edges_um``, ``counts``, ``n_overflow``),
        ``distances.ecdf`` (``radius_um``, ``fraction``), ``within_radius`` and the median.
    max_bins : int > 0
        Adjacent histogram bins are merged down to at most this many.

    Returns
    -------
    bytes or None
        PNG (7 x 2.8 in): left, immune cells per distance bin (µm) with the median;
        right, the share of immune cells within each distance with the radii r marked
        and labelled. None when distances were not computed.
    """
    d = (spatial or {}).get("distances") or {}
    if not d.get("available") or not isinstance(d.get("histogram"), dict):
        return None
    edges = np.asarray(d["histogram"]["bin_edges_um"], dtype=float)
    counts = np.asarray(d["histogram"]["counts"], dtype=float)
    n_bins = len(counts)
    merge = max(1, int(np.ceil(n_bins / max_bins)))  # a few immune cells over 100 narrow bins read as noise
    if merge > 1:
        keep = (n_bins // merge) * merge
        counts = np.r_[counts[:keep].reshape(-1, merge).sum(axis=1), counts[keep:].sum()] if keep < n_bins \
            else counts.reshape(-1, merge).sum(axis=1)
        edges = np.r_[edges[:keep + 1:merge], edges[-1]] if keep < n_bins else edges[::merge]
    fig = new_figure(7.0, 2.8)
    left, right = fig.subplots(1, 2)
    left.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=IMMUNE_COLOR)
    median = (d.get("immune_to_nearest_tumour_um") or {}).get("median_um")
    if median is not None:
        left.axvline(median, color="black", linestyle="--", linewidth=0.9, label=f"median {median:.1f} µm")
        left.legend(fontsize=6.5)
    left.set_xlabel("distance to the nearest tumour cell (µm)", fontsize=7)
    left.set_ylabel("immune cells", fontsize=7)
    n_over = d["histogram"].get("n_overflow", 0)
    left.set_title(f"{d.get('n_immune', int(counts.sum()))} immune cells"
                   + (f" ({n_over} beyond {edges[-1]:g} µm)" if n_over else ""), fontsize=8)
    ecdf = d.get("ecdf") or {}
    if ecdf.get("radius_um"):
        right.step(ecdf["radius_um"], 100 * np.asarray(ecdf["fraction"], dtype=float), where="post", color=IMMUNE_COLOR)
    marks = []
    for row in d.get("within_radius") or []:
        r, f = row["radius_um"], 100 * row["fraction_immune_within"]
        right.axvline(r, color="grey", linestyle=":", linewidth=0.8)
        right.plot([r], [f], "o", color="black", markersize=3)
        marks.append(f"within {r:g} µm: {f:.1f} %")
    if marks:
        right.text(0.03, 0.97, "\n".join(marks), transform=right.transAxes, va="top", ha="left", fontsize=6.5,
                   bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#bbbbbb"})
    right.set_ylim(0, 102)
    right.set_xlabel("distance r (µm)", fontsize=7)
    right.set_ylabel("immune cells within r (%)", fontsize=7)
    right.set_title("Share of immune cells within r of a tumour cell", fontsize=8)
    for ax in (left, right):
        ax.tick_params(labelsize=6.5)
        ax.grid(alpha=0.3)
    return figure_png(fig)


def _floats(values: Any) -> np.ndarray | None:
    if values is None:
        return None
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def envelope_figure_png(spatial: dict | None) -> bytes | None:
    """Cross-G and cross-L of immune around tumour cells with their random-relabelling envelopes.

    Parameters
    ----------
    spatial : dict or None
        Spatial statistics (:meth:`core.spatial.SpatialStats.to_dict`); reads
        ``cross_g`` (``radius_um``, ``G``, ``G_envelope_lo/hi``, ``G_sim_mean``) and
        ``ripley`` (``radius_um``, ``L_minus_r_um`` and its pointwise and global envelopes,
        ``global_test``).

    Returns
    -------
    bytes or None
        PNG (7 x 2.8 in): left, cross-G(r), the share of immune cells with a tumour cell
        within r, against the envelope of random labelling; right, L(r) − r in µm with
        the pointwise and global envelopes and the global test's p. None when neither was
        computed.
    """
    s = spatial or {}
    g, k = s.get("cross_g") or {}, s.get("ripley") or {}
    have_g, have_k = bool(g.get("available") and g.get("radius_um")), bool(k.get("available") and k.get("radius_um"))
    if not (have_g or have_k):
        return None
    fig = new_figure(7.0, 2.8)
    axes = fig.subplots(1, int(have_g) + int(have_k), squeeze=False).ravel()
    i = 0
    if have_g:
        ax, i = axes[i], i + 1
        r = _floats(g["radius_um"])
        lo, hi, mean = _floats(g.get("G_envelope_lo")), _floats(g.get("G_envelope_hi")), _floats(g.get("G_sim_mean"))
        if lo is not None and hi is not None:
            ax.fill_between(r, 100 * lo, 100 * hi, color="grey", alpha=0.3, linewidth=0,
                            label=f"random labelling ({g.get('n_simulations', '?')} runs)")
        if mean is not None:
            ax.plot(r, 100 * mean, color="grey", linestyle=":", linewidth=0.9)
        ax.plot(r, 100 * _floats(g["G"]), color=IMMUNE_COLOR, marker="o", markersize=2.5, label="observed")
        ax.set_ylim(0, 102)
        ax.set_xlabel("r (µm)", fontsize=7)
        ax.set_ylabel("immune cells with a tumour cell within r (%)", fontsize=6.5)
        ax.set_title("Cross-G: nearest-tumour distances", fontsize=8)
    if have_k:
        ax = axes[i]
        r = _floats(k["radius_um"])
        glo, ghi = _floats(k.get("L_minus_r_global_envelope_lo_um")), _floats(k.get("L_minus_r_global_envelope_hi_um"))
        lo, hi = _floats(k.get("L_minus_r_envelope_lo_um")), _floats(k.get("L_minus_r_envelope_hi_um"))
        test = k.get("global_test") or {}
        if glo is not None and ghi is not None:
            ax.fill_between(r, glo, ghi, color="grey", alpha=0.15, linewidth=0,
                            label=f"global envelope (α = {test.get('global_alpha', 0.05):g})")
        if lo is not None and hi is not None:
            ax.fill_between(r, lo, hi, color="grey", alpha=0.35, linewidth=0, label="pointwise envelope")
        ax.axhline(0, color="grey", linestyle=":", linewidth=0.9)
        ax.plot(r, _floats(k["L_minus_r_um"]), color=IMMUNE_COLOR, marker="o", markersize=2.5, label="observed")
        p = test.get("global_p_value")
        ax.set_title("Cross-L(r) − r" + (f", global test p = {p:.3f}" if p is not None else ""), fontsize=8)
        ax.set_xlabel("r (µm)", fontsize=7)
        ax.set_ylabel("L(r) − r (µm)", fontsize=7)
    for ax in axes:
        ax.tick_params(labelsize=6.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return figure_png(fig)
