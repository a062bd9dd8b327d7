"""Pure helpers the pages use to prepare what they draw (no Streamlit here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

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


def card_summary(card: dict) -> dict:
    """The parts of a model card a clinician reads first: intended use, limitations, metrics."""
    return {
        "intended_use": card.get("intended_use", "not stated"),
        "limitations": card.get("limitations", []),
        "metrics": card.get("metrics", {}),
        "training_data": card.get("training_data", {}),
        "version": card.get("version"),
    }


def _fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def spatial_headline(spatial: dict | None) -> list[dict]:
    """Key spatial figures as table rows {measure, value, setting}, for a clinician's first look.

    Each row carries the threshold or parameter that produced it; a section that could
    not be computed gives one row with the reason (e.g. "draw a tumour region").

    Parameters
    ----------
    spatial : dict or None
        Output of :func:`core.spatial.compute_spatial_stats`.

    Returns
    -------
    list of dict with keys ``measure``, ``value``, ``setting`` (all str)
    """
    if not spatial:
        return []
    if spatial.get("available") is False:
        return [{"measure": "spatial statistics", "value": "n/a", "setting": spatial.get("reason", "")}]
    rows: list[dict] = []
    d = spatial.get("distances", {})
    if d.get("available"):
        summ = d["immune_to_nearest_tumour_um"]
        rows.append({"measure": "immune → nearest tumour cell, median", "value": _fmt(summ.get("median_um"), 1, " µm"),
                     "setting": f"{d['n_immune']} immune, {d['n_tumour']} tumour cells"})
        for r in d["within_radius"]:
            rows.append({"measure": f"immune cells within {r['radius_um']:g} µm of a tumour cell",
                         "value": f"{100 * r['fraction_immune_within']:.1f} %",
                         "setting": f"r = {r['radius_um']:g} µm; {r['immune_per_tumour_cell_within']:.2f} immune per tumour cell"})
    else:
        rows.append({"measure": "immune → tumour distances", "value": "n/a", "setting": d.get("reason", "")})
    c = spatial.get("compartments", {})
    if c.get("available"):
        rows.append({"measure": "intratumoral immune density", "value": _fmt(c["intratumoral_immune_density_per_mm2"], 0, " cells/mm²"),
                     "setting": c["source"]})
        rows.append({"measure": "stromal immune density", "value": _fmt(c["stromal_immune_density_per_mm2"], 0, " cells/mm²"),
                     "setting": c["source"]})
        ratio = c.get("ratio_intratumoral_to_stromal")
        rows.append({"measure": "intratumoral / stromal ratio", "value": _fmt(ratio, 2), "setting": ""})
    til = spatial.get("stromal_til_proxy", {})
    if til.get("available"):
        rows.append({"measure": "stromal TILs (computational proxy)", "value": _fmt(til["percent"], 1, " %"),
                     "setting": f"immune-cell area {til['immune_cell_area_um2']:g} µm² over stromal area"})
    ph = spatial.get("phenotype", {})
    rows.append({"measure": "immune phenotype", "value": ph.get("call") or "n/a",
                 "setting": ph.get("rule", "") if ph.get("available") else ph.get("reason", "")})
    im = spatial.get("invasive_margin", {})
    if im.get("available"):
        rows.append({"measure": "immune density, tumour centre (CT)", "value": _fmt(im["ct"]["immune_density_per_mm2"], 0, " cells/mm²"),
                     "setting": im["ct"]["definition"]})
        rows.append({"measure": "immune density, invasive margin (IM)", "value": _fmt(im["im"]["immune_density_per_mm2"], 0, " cells/mm²"),
                     "setting": im["im"]["definition"]})
    else:
        rows.append({"measure": "centre vs invasive margin", "value": "n/a", "setting": im.get("reason", "")})
    return rows
