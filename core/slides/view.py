"""The slide result view: one zoomable, pannable plotly figure in level-0 µm, with layers (no Streamlit here).

:func:`slide_figure` draws, in µm from the slide's top-left corner (y downwards):

* the slide picture (``view/slide.jpg`` of :func:`core.slides.app_support.write_view`: at most
  :data:`core.slides.app_support.VIEW_MAX_SIDE_PX` a side, from the coarsest sufficient pyramid
  level) as a ``go.Image`` placed by its pixel size;
* the immune-density heat map (immune cells per mm² of the tissue in each bin,
  :func:`core.spatial.heatmaps.density_from_counts`) and its Getis-Ord Gi* hot (red) and cold
  (blue) spots (:func:`core.spatial.heatmaps.hot_spots`) as ``go.Heatmap`` layers;
* the cells, one WebGL scatter layer (``go.Scattergl``) per class in its colour, subsampled
  above :data:`core.slides.app_support.VIEW_MAX_CELLS` (the legend gives shown and total counts).

Every layer has a legend entry: clicking it hides or shows the layer (in the browser, no
rerun). :func:`field_figure` draws a field read at full resolution with its cells
(:func:`core.outputs.plots.cell_figure`).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = ["slide_figure", "field_figure", "LAYERS", "DENSITY_COLORSCALE"]

#: The heat map's colours: magma, more opaque as the density rises (a bin without immune cells leaves the slide
#: visible); the top of the scale is the 99th percentile of the bins, so one extreme bin does not wash out the rest.
DENSITY_COLORSCALE = [[0.0, "rgba(0, 0, 4, 0.05)"], [0.1, "rgba(24, 15, 61, 0.35)"], [0.25, "rgba(68, 15, 118, 0.5)"],
                      [0.45, "rgba(140, 41, 129, 0.6)"], [0.65, "rgba(222, 73, 104, 0.65)"],
                      [0.85, "rgba(254, 159, 109, 0.7)"], [1.0, "rgba(252, 253, 191, 0.75)"]]
#: Layer names (legend entries) besides the cell classes.
LAYERS = {"slide": "Slide", "density": "Immune density (cells/mm² of tissue)", "hot": "Immune hot and cold spots (Gi*)"}


def slide_figure(result: Any, class_colors: dict[str, str], class_labels: dict[str, str] | None = None, *,
                 show_density: bool = True, show_hot_spots: bool = False, height_px: int = 760) -> go.Figure:
    """The slide with its cells and heat maps, in level-0 µm.

    Parameters
    ----------
    result : core.slides.app_support.SlideResult
    class_colors : cell_class → '#rrggbb' (the scenario's)
    class_labels : cell_class → legend label, optional
    show_density, show_hot_spots : bool, whether those layers start visible (else in the legend only)
    height_px : int, the figure's height

    Returns
    -------
    plotly.graph_objects.Figure
        x, y axes in µm (y reversed, equal scale); pans by dragging, zooms with the wheel
        (``config={"scrollZoom": True}``); selecting a cell (click) or a box gives µm coordinates.
    """
    view = result.view
    um_per_px = float(view["scale"]) * float(view["mpp"])
    labels = class_labels or {}
    fig = go.Figure()
    source = "data:image/jpeg;base64," + base64.b64encode(result.picture).decode("ascii")
    fig.add_trace(go.Image(source=source, x0=um_per_px / 2, y0=um_per_px / 2, dx=um_per_px, dy=um_per_px,
                           name=LAYERS["slide"], hoverinfo="skip"))
    b = float(result.bin_um)
    density = np.asarray(result.density, np.float64)
    finite = np.isfinite(density)
    zmax = float(np.nanpercentile(density, 99)) if finite.any() else 1.0
    fig.add_trace(go.Heatmap(
        z=density, x0=b / 2, dx=b, y0=b / 2, dy=b, colorscale=DENSITY_COLORSCALE, zmin=0, zmax=max(zmax, 1e-9),
        name=LAYERS["density"], showlegend=True, visible=True if show_density else "legendonly",
        colorbar=dict(title=dict(text="immune<br>cells/mm²"), x=1.0, len=0.6),
        hovertemplate="x %{x:.0f} µm, y %{y:.0f} µm: %{z:.0f} immune cells/mm²<extra></extra>"))
    spots = np.asarray(result.hot_spots, np.int8)
    n_hot, n_cold = int((spots == 1).sum()), int((spots == -1).sum())
    # one layer, never all empty (plotly drops the legend entry of an all-NaN heat map): 0 is transparent
    fig.add_trace(go.Heatmap(
        z=spots.astype(np.float64), x0=b / 2, dx=b, y0=b / 2, dy=b, zmin=-1, zmax=1, showscale=False, opacity=0.5,
        colorscale=[[0.0, "rgb(40, 90, 230)"], [0.33, "rgb(40, 90, 230)"], [0.34, "rgba(0, 0, 0, 0)"],
                    [0.66, "rgba(0, 0, 0, 0)"], [0.67, "rgb(230, 40, 40)"], [1.0, "rgb(230, 40, 40)"]],
        name=f"{LAYERS['hot']}: {n_hot} hot (red), {n_cold} cold (blue) bins", showlegend=True,
        visible=True if show_hot_spots else "legendonly", hoverinfo="skip"))
    cells = result.cells
    counts = (result.summary or {}).get("counts") or {}
    cls = cells["cell_class"].astype(str).to_numpy() if len(cells) else np.array([], dtype=object)
    for name, colour in class_colors.items():
        pick = cls == name
        shown = int(pick.sum())
        total = int(counts.get(name, shown))
        label = labels.get(name, name)
        fig.add_trace(go.Scattergl(
            x=cells["x_um"].to_numpy()[pick], y=cells["y_um"].to_numpy()[pick], mode="markers",
            name=f"{label} ({total:,})" if shown == total else f"{label} ({shown:,} of {total:,} shown)",
            marker=dict(size=5, color=colour, line=dict(width=0)),
            customdata=cells["probability"].to_numpy()[pick],
            hovertemplate="x %{x:.0f} µm, y %{y:.0f} µm<br>p = %{customdata:.2f}<extra>" + str(label) + "</extra>"))
    w_um = float(view.get("slide_width_px", view["width_px"] * view["scale"])) * float(view["mpp"])
    h_um = float(view.get("slide_height_px", view["height_px"] * view["scale"])) * float(view["mpp"])
    fig.update_layout(
        height=height_px, margin=dict(l=0, r=0, t=10, b=0), dragmode="pan", template="plotly_white",
        legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0, itemclick="toggle"), uirevision="slide")
    fig.update_xaxes(range=[0, w_um], showgrid=False, title_text="x (µm)", constrain="domain")
    fig.update_yaxes(range=[h_um, 0], showgrid=False, title_text="y (µm)", scaleanchor="x", constrain="domain")
    return fig


def field_figure(field: Any, class_colors: dict[str, str], class_labels: dict[str, str] | None = None) -> go.Figure:
    """A field at full resolution with its cells (:func:`core.outputs.plots.cell_figure`), axes in field pixels."""
    from core.outputs.plots import cell_figure

    return cell_figure(field.rgb, field.cells, class_colors, class_labels)
