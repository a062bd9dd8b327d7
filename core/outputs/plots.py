"""Interactive plotly figures for the pages (pure functions: no Streamlit, no I/O).

:func:`cell_figure` shows the image with the cells, one marker trace per class; the
spatial figures take the statistics dict (:meth:`core.spatial.SpatialStats.to_dict`,
i.e. :func:`core.spatial.compute_spatial_stats`) or a cell table and return a
:class:`plotly.graph_objects.Figure`; axes carry units (µm, µm², cells/mm²) and the
thresholds that produced a figure are drawn on it. :func:`density_heatmap` draws a
:class:`core.spatial.heatmaps.DensityMap` (the grid and its densities are computed there).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.errors import InputError
from core.spatial.heatmaps import DensityMap

_IMMUNE = "#7b3fa0"
_TUMOUR = "#c82020"
_BAND = "rgba(120, 120, 120, 0.25)"
_BAND_GLOBAL = "rgba(120, 120, 120, 0.12)"
#: Longest side, in pixels, of the image sent to the browser; cells keep full-resolution coordinates.
DISPLAY_MAX_SIDE_PX = 2000


def cell_figure(
    pixels: np.ndarray,
    cells: pd.DataFrame,
    class_colors: dict[str, str],
    class_labels: dict[str, str] | None = None,
    visible_classes: list[str] | None = None,
    marker_size: int = 9,
) -> go.Figure:
    """Zoomable plotly figure: the image with one marker trace per cell class.

    Parameters
    ----------
    pixels : (H, W, 3) uint8 RGB
        The image's display rendering (:attr:`core.io.ImageData.rgb`).
    cells : cell table (``x_px``, ``y_px``, ``cell_class``, ``probability``)
    class_colors : cell_class → '#rrggbb'
    class_labels : cell_class → legend label (defaults to the class name)
    visible_classes : classes to draw (default: all)

    Returns
    -------
    plotly.graph_objects.Figure
        Axes in pixels of the full-resolution image, y downwards; images larger
        than :data:`DISPLAY_MAX_SIDE_PX` are shown downsampled.
    """
    h, w = pixels.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / DISPLAY_MAX_SIDE_PX)))
    shown = pixels[::step, ::step]
    fig = go.Figure(go.Image(z=shown, dx=step, dy=step, hoverinfo="skip"))
    labels = class_labels or {}
    for cls in class_colors:
        if visible_classes is not None and cls not in visible_classes:
            continue
        sub = cells[cells["cell_class"] == cls]
        fig.add_trace(
            go.Scatter(
                x=sub["x_px"], y=sub["y_px"], mode="markers", name=f"{labels.get(cls, cls)} ({len(sub)})",
                marker=dict(size=marker_size, color="rgba(0,0,0,0)", line=dict(color=class_colors[cls], width=2)),
                customdata=np.stack([sub["probability"]], axis=-1) if len(sub) else None,
                hovertemplate="x=%{x:.0f} px, y=%{y:.0f} px<br>p=%{customdata[0]:.2f}<extra>" + str(cls) + "</extra>",
            )
        )
    fig.update_layout(
        margin=dict(l=0, r=0, t=30, b=0), height=min(900, max(400, int(700 * h / max(w, 1)))),
        legend=dict(orientation="h", y=1.02, x=0), dragmode="pan",
    )
    fig.update_xaxes(showgrid=False, range=[-0.5, w - 0.5], constrain="domain")
    fig.update_yaxes(showgrid=False, range=[h - 0.5, -0.5], scaleanchor="x", constrain="domain")
    return fig


def _empty(title: str, reason: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=reason, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, template="plotly_white")
    return fig


def _stats(stats) -> dict:
    """The statistics as a dict (a :class:`core.spatial.SpatialStats` is converted)."""
    return stats.to_dict() if hasattr(stats, "to_dict") else stats


def _section(stats: dict, key: str) -> dict | None:
    if not isinstance(stats, dict):
        raise InputError(f"expected the spatial statistics dict (SpatialStats.to_dict()), got {type(stats).__name__}")
    if not stats.get("available", False):
        return None
    sec = stats.get(key)
    if not isinstance(sec, dict) or not sec.get("available", False):
        return None
    return sec


def _reason(stats: dict, key: str) -> str:
    if not stats.get("available", False):
        return stats.get("reason", "statistics unavailable")
    sec = stats.get(key) or {}
    return sec.get("reason", "not available")


def distance_figure(stats: dict) -> go.Figure:
    """Histogram and ECDF of immune → nearest tumour distances, r thresholds marked.

    Parameters
    ----------
    stats : dict
        Spatial statistics (:meth:`core.spatial.SpatialStats.to_dict`).

    Returns
    -------
    plotly.graph_objects.Figure
        Two rows sharing x (distance in µm): counts per bin, and the fraction of
        immune cells within x µm (ECDF); dashed lines at each ``radii_um`` labelled
        with the fraction within it. A figure with a message when unavailable.
    """
    stats = _stats(stats)
    title = "Immune cell → nearest tumour cell distance"
    d = _section(stats, "distances")
    if d is None:
        return _empty(title, _reason(stats, "distances"))
    edges = np.asarray(d["histogram"]["bin_edges_um"], dtype=float)
    counts = np.asarray(d["histogram"]["counts"], dtype=float)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.55, 0.45])
    fig.add_trace(
        go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), marker_color=_IMMUNE, name="immune cells"),
        row=1, col=1,
    )
    fig.add_trace(
        go.Scatter(x=d["ecdf"]["radius_um"], y=d["ecdf"]["fraction"], mode="lines", line_shape="hv",
                   line_color=_IMMUNE, name="fraction within"),
        row=2, col=1,
    )
    for row in d["within_radius"]:
        r = row["radius_um"]
        for rr in (1, 2):
            fig.add_vline(x=r, line_dash="dash", line_color="grey", row=rr, col=1)
        fig.add_annotation(x=r, y=row["fraction_immune_within"], text=f"{r:g} µm: {100 * row['fraction_immune_within']:.1f} %",
                           showarrow=True, arrowhead=1, ax=30, ay=-20, row=2, col=1)
    n_over = d["histogram"].get("n_overflow", 0)
    fig.update_xaxes(title_text="distance to nearest tumour cell (µm)", row=2, col=1)
    fig.update_yaxes(title_text="immune cells", row=1, col=1)
    fig.update_yaxes(title_text="fraction within", range=[0, 1.02], row=2, col=1)
    fig.update_layout(
        title=f"{title} (n = {d['n_immune']}; {n_over} beyond {edges[-1]:g} µm)", showlegend=False, template="plotly_white"
    )
    return fig


def ripley_figure(stats: dict, which: str = "L") -> go.Figure:
    """Cross-K or L(r) - r (tumour → immune) with the random-relabelling envelopes.

    Parameters
    ----------
    stats : dict
        Spatial statistics (:meth:`core.spatial.SpatialStats.to_dict`).
    which : {"L", "K", "G"}
        ``"L"``: L(r) - r in µm with the pointwise and global envelopes (0 = no
        attraction beyond random labelling); ``"K"``: K(r) in µm² with πr²;
        ``"G"``: cross-G (immune → tumour) with its envelope.

    Returns
    -------
    plotly.graph_objects.Figure

    Raises
    ------
    InputError
        If ``which`` is not "L", "K" or "G".
    """
    stats = _stats(stats)
    if which not in ("L", "K", "G"):
        raise InputError(f"which must be 'L', 'K' or 'G', got {which!r}")
    key = "cross_g" if which == "G" else "ripley"
    sec = _section(stats, key)
    titles = {"L": "Cross-L(r) − r, immune around tumour", "K": "Cross-K(r), immune around tumour", "G": "Cross-G(r), immune → tumour"}
    if sec is None:
        return _empty(titles[which], _reason(stats, key))
    r = np.asarray(sec["radius_um"], dtype=float)

    def arr(name):
        v = sec.get(name)
        return None if v is None else np.array([np.nan if x is None else x for x in v], dtype=float)

    if which == "L":
        obs, lo, hi = arr("L_minus_r_um"), arr("L_minus_r_envelope_lo_um"), arr("L_minus_r_envelope_hi_um")
        glo, ghi = arr("L_minus_r_global_envelope_lo_um"), arr("L_minus_r_global_envelope_hi_um")
        ref, ylab = np.zeros_like(r), "L(r) − r (µm)"
    elif which == "K":
        obs, lo, hi = arr("K_um2"), arr("K_envelope_lo_um2"), arr("K_envelope_hi_um2")
        glo = ghi = None
        ref, ylab = math.pi * r**2, "K(r) (µm²)"
    else:
        obs, lo, hi = arr("G"), arr("G_envelope_lo"), arr("G_envelope_hi")
        glo = ghi = None
        ref, ylab = None, "G(r): fraction of immune cells"
    fig = go.Figure()
    if glo is not None and ghi is not None:
        fig.add_trace(go.Scatter(x=np.r_[r, r[::-1]], y=np.r_[ghi, glo[::-1]], fill="toself", fillcolor=_BAND_GLOBAL,
                                 line_width=0, name=f"global envelope (α = {sec['global_test'].get('global_alpha', 0):.2f})"))
    if lo is not None and hi is not None:
        fig.add_trace(go.Scatter(x=np.r_[r, r[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", fillcolor=_BAND, line_width=0,
                                 name=f"pointwise envelope ({sec['n_simulations']} relabellings)"))
    if ref is not None:
        fig.add_trace(go.Scatter(x=r, y=ref, mode="lines", line=dict(color="grey", dash="dot"),
                                 name="random labelling" if which == "L" else "Poisson πr²"))
    fig.add_trace(go.Scatter(x=r, y=obs, mode="lines+markers", line_color=_IMMUNE, name="observed"))
    sub = ""
    if which == "L" and sec.get("global_test", {}).get("global_p_value") is not None:
        sub = f" — global test p = {sec['global_test']['global_p_value']:.3f}"
    fig.update_layout(title=titles[which] + sub, xaxis_title="r (µm)", yaxis_title=ylab, template="plotly_white")
    return fig


def density_heatmap(
    dmap: DensityMap,
    *,
    role: str = "immune",
    image: np.ndarray | None = None,
    mpp: float | None = None,
    analysed_area: str | None = None,
) -> go.Figure:
    """Draw a density map (cells/mm² per square of a µm grid) over the image.

    Only draws: the counting and the denominators are those of ``dmap``
    (:func:`core.spatial.heatmaps.immune_density_map`, the same map as a whole slide's).

    Parameters
    ----------
    dmap : core.spatial.heatmaps.DensityMap
        Cells per square and cells/mm² of the analysed area in each square; squares with
        no analysed area (glass, excluded) hold NaN and are drawn empty.
    role : str
        The role counted, for the title (e.g. ``"immune"``).
    image : (H, W, 3) uint8 ndarray, optional
        Drawn underneath at ``mpp`` µm per pixel, its top-left corner at µm (0, 0) (a
        downsampled display copy is fine: give its own mpp).
    mpp : float > 0, optional
        µm per pixel of ``image``; needed with it.
    analysed_area : str, optional
        What the densities are per mm² of, shown under the title (e.g. ``"tissue: Otsu
        ..."`` or ``"the whole image (no tissue mask)"``). Default: read from ``dmap``.

    Returns
    -------
    plotly.graph_objects.Figure
        A ``go.Heatmap`` (last trace) of ``dmap.density_per_mm2`` in µm (y down, as in the
        image), one square per bin, colour = cells/mm²; hover gives the count and the
        square's analysed area (mm²). With ``image``, a ``go.Image`` first.

    Raises
    ------
    InputError
        If ``dmap`` is not a DensityMap or ``image`` comes without a positive ``mpp``.
    """
    if not isinstance(dmap, DensityMap):
        raise InputError(f"density_heatmap draws a core.spatial.heatmaps.DensityMap (e.g. immune_density_map(cells, "
                         f"window_um=...)), got {type(dmap).__name__}")
    if image is not None and not (mpp is not None and math.isfinite(mpp) and mpp > 0):
        raise InputError(f"an image underlay needs its mpp (microns per pixel of the image drawn), got {mpp!r}")
    if analysed_area is None:
        analysed_area = ("the analysed area in each square" if dmap.tissue_area_mm2 is not None
                         else "each whole square holding a cell (no tissue mask)")
    bin_um = dmap.bin_um
    x0, y0 = dmap.origin_um
    area_mm2 = dmap.tissue_area_mm2 if dmap.tissue_area_mm2 is not None else np.where(dmap.tissue, dmap.bin_area_mm2, 0.0)
    fig = go.Figure()
    if image is not None:
        fig.add_trace(go.Image(z=image, dx=mpp, dy=mpp, x0=mpp / 2, y0=mpp / 2, name="image", hoverinfo="skip"))
    fig.add_trace(
        go.Heatmap(z=dmap.density_per_mm2, x0=x0 + bin_um / 2, dx=bin_um, y0=y0 + bin_um / 2, dy=bin_um,
                   customdata=np.dstack([dmap.counts, area_mm2]), colorscale="Viridis",
                   opacity=0.55 if image is not None else 1.0, colorbar=dict(title="cells/mm²"),
                   hovertemplate="x %{x:.0f} µm, y %{y:.0f} µm: %{z:.0f} cells/mm² (%{customdata[0]} cells in "
                                 "%{customdata[1]:.4f} mm²)<extra></extra>")
    )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title_text="y (µm)")
    fig.update_xaxes(title_text="x (µm)")
    fig.update_layout(title=dict(text=f"{role} cells/mm² in {bin_um:g} µm squares<br><sub>per mm² of "
                                      f"{analysed_area}; empty squares: no analysed area</sub>"),
                      template="plotly_white")
    return fig


def region_density_figure(stats: dict, role: str = "immune") -> go.Figure:
    """Bar chart of the density of one role per region (and per compartment).

    Parameters
    ----------
    stats : dict
        Spatial statistics (:meth:`core.spatial.SpatialStats.to_dict`).
    role : str
        Role whose density is shown, default ``"immune"``.

    Returns
    -------
    plotly.graph_objects.Figure
        One bar per region (hover: area in mm², count), then CT and IM when available,
        y in cells/mm².
    """
    stats = _stats(stats)
    title = f"{role} cell density per region"
    if not stats.get("available", False):
        return _empty(title, stats.get("reason", "statistics unavailable"))
    names, dens, hover, colors = [], [], [], []
    kind_color = {"tumour": _TUMOUR, "stroma": "#5a9a5a", "margin": "#d9a400", "exclude": "#999999"}
    for row in stats.get("regions", {}).get("per_region", []):
        if row["kind"] == "exclude":
            continue
        names.append(f"{row['name']} ({row['kind']})")
        dens.append(row["density_per_mm2_by_role"].get(role))
        hover.append(f"{row['area_mm2']:.4f} mm², {row['counts_by_role'].get(role, 0)} cells")
        colors.append(kind_color.get(row["kind"], "#666"))
    im = stats.get("invasive_margin") or {}
    if im.get("available") and role == "immune":
        h = im["half_width_um"]
        for key, label in (("ct", f"CT (> {h:g} µm inside)"), ("im", f"IM (±{h:g} µm)")):
            names.append(label)
            dens.append(im[key]["immune_density_per_mm2"])
            hover.append(f"{im[key]['area_mm2']:.4f} mm², {im[key]['n_immune']} cells")
            colors.append("#3b6fb6")
    if not names:
        return _empty(title, "no regions drawn")
    fig = go.Figure(go.Bar(x=names, y=[np.nan if v is None else v for v in dens], hovertext=hover, marker_color=colors))
    fig.update_layout(title=title, yaxis_title="cells/mm²", template="plotly_white")
    return fig
