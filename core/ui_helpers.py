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
