"""Exports of one analysis (PDF report, cells.csv, summary.json, cells.geojson) and
the tumour-board comparison.

Everything here works from the plain-dict analysis record of :mod:`core.records`,
so a result just computed and one reloaded from the case store give the same
report. Plots are drawn with matplotlib's object API (no ``pyplot`` state, safe in
Streamlit's threads); the PDF is written with fpdf2 and the DejaVu Sans font that
ships with matplotlib, so "µm" and "mm²" print.
"""

from __future__ import annotations

import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

import core
from core import records as rec
from core.errors import InputError, TILscopeError
from core.overlay import mask_to_uint8, png_bytes

#: Printed on every report page and on the comparison.
RESEARCH_USE = "Research use only, not for diagnostic decisions."
#: Files :func:`build_exports` returns, with their media types.
EXPORT_MEDIA_TYPES = {
    "report.pdf": "application/pdf",
    "cells.csv": "text/csv",
    "summary.json": "application/json",
    "cells.geojson": "application/geo+json",
    "overlay.png": "image/png",
    "denoised.png": "image/png",
    "mask.png": "image/png",
}
_DEFAULT_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_THRESHOLD_KEYS = ("thresholds", "params", "parameters")


# --------------------------------------------------------------------------- records


def record_from_result(
    result: Any,
    *,
    spatial: dict | None = None,
    regions: Any = None,
    corrections: Any = None,
    params: dict | None = None,
    model_card: dict | None = None,
    case_label: str | None = None,
    class_colors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the analysis record (:mod:`core.records`) of a fresh :class:`AnalysisResult`.

    Parameters
    ----------
    result : core.results.AnalysisResult
        The finished analysis; its ``summary`` is copied.
    spatial : dict, optional
        Output of ``core.spatial.compute_spatial_stats``.
    regions : list of core.regions.Region or GeoJSON dict, optional
        Annotated regions; stored as a GeoJSON FeatureCollection of annotations.
    corrections : core.corrections.CorrectionLog or dict, optional
        Manual edits; ``n_corrections`` is taken from it.
    params, model_card : dict, optional
        Analysis parameters and thresholds; the scenario's model card (default:
        the registry's card for ``result.scenario_key``).
    case_label : str, optional
        Case the analysis belongs to.
    class_colors : dict, optional
        Unused here; accepted so the same keyword arguments serve :func:`build_exports`.

    Returns
    -------
    dict
        A JSON-ready record; ``analysis_id`` is ``None`` until the store saves it.
    """
    summary = json.loads(json.dumps(result.summary, default=rec.json_default))
    summary.setdefault("scenario", result.scenario_key)
    summary.setdefault(
        "image",
        {
            "name": result.image.name,
            "sha256": result.image.sha256,
            "width_px": int(result.image.shape[1]),
            "height_px": int(result.image.shape[0]),
        },
    )
    summary.setdefault("mpp", result.image.mpp)
    if spatial is None and isinstance(summary.get("spatial"), dict):
        spatial = summary["spatial"]
    if model_card is None:
        model_card = scenario_card(result.scenario_key)
    warnings = list(summary.get("warnings") or [])
    for w in result.warnings:
        if w not in warnings:
            warnings.append(w)
    summary["warnings"] = warnings
    return {
        "summary": summary,
        "spatial": spatial,
        "n_corrections": corrections_count(corrections),
        "corrections": corrections_json(corrections),
        "case_label": case_label,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "analysis_id": None,
        "app_version": core.__version__,
        "params": params or {},
        "regions": regions_geojson(regions, result.image.mpp),
        "model_card": model_card,
    }


def scenario_card(key: str) -> dict | None:
    """The registry's model card of scenario ``key``, or ``None`` if it cannot be read."""
    try:
        from core.registry import get_scenario

        return get_scenario(key).card()
    except (ImportError, TILscopeError):
        return None


def scenario_colors(key: str) -> dict[str, str]:
    """``{class: "#rrggbb"}`` of scenario ``key`` from the registry; ``{}`` if unknown."""
    try:
        from core.registry import get_scenario

        return dict(get_scenario(key).class_colors)
    except (ImportError, TILscopeError):
        return {}


def corrections_count(corrections: Any) -> int | None:
    """Number of manual corrections in a CorrectionLog, its JSON, or ``None``."""
    if corrections is None:
        return None
    if hasattr(corrections, "n_corrections"):
        return int(corrections.n_corrections)
    return rec.count_corrections(corrections_json(corrections))


def corrections_json(corrections: Any) -> Any:
    """A CorrectionLog (``to_json()`` str or dict), a JSON string or a dict, as JSON data."""
    if corrections is None:
        return None
    if hasattr(corrections, "to_json"):
        corrections = corrections.to_json()
    if isinstance(corrections, (bytes, str)):
        return json.loads(corrections)
    return corrections


def regions_geojson(regions: Any, mpp: float | None = None) -> dict | None:
    """Regions as a GeoJSON FeatureCollection dict (annotations only), or ``None``.

    Accepts a FeatureCollection dict, a GeoJSON string, or a list of
    ``core.regions.Region`` (converted with ``core.regions.regions_to_geojson``,
    which needs ``mpp``).
    """
    if regions is None:
        return None
    if isinstance(regions, (str, bytes)):
        regions = json.loads(regions)
    if isinstance(regions, dict):
        return regions
    regions = list(regions)
    if not regions:
        return None
    from core.regions import regions_to_geojson

    return regions_to_geojson(regions, mpp)


# --------------------------------------------------------------------------- exports


def render_overlay_png(
    pixels: np.ndarray,
    cells: pd.DataFrame,
    class_colors: dict[str, Any] | None = None,
    max_side_px: int = 1200,
) -> bytes:
    """Draw cell centroids over the image as a thumbnail PNG.

    Parameters
    ----------
    pixels : (H, W, 3) uint8 ndarray
        The analysed RGB image.
    cells : pandas.DataFrame
        Cell table with ``x_px``, ``y_px`` (pixels of ``pixels``) and ``cell_class``.
    class_colors : dict, optional
        ``{class name: "#rrggbb" or (r, g, b)}``; other classes get a default palette.
    max_side_px : int
        Longest side of the thumbnail, in pixels.

    Returns
    -------
    bytes
        PNG, (h, w, 3) RGB, longest side at most ``max_side_px``.
    """
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
    scale = min(1.0, max_side_px / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    radius = max(2.0, 4.0 * scale ** 0.5)
    colors = class_palette(sorted(cells["cell_class"].astype(str).unique()) if len(cells) else [], class_colors)
    for cls, group in cells.groupby(cells["cell_class"].astype(str)) if len(cells) else []:
        color = colors[cls]
        for x, y in zip(group["x_px"].to_numpy() * scale, group["y_px"].to_numpy() * scale):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=color, width=2)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def class_palette(classes: Iterable[str], class_colors: dict[str, Any] | None = None) -> dict[str, str]:
    """``{class: "#rrggbb"}`` from ``class_colors`` (hex or RGB tuples), defaults for the rest."""
    out: dict[str, str] = {}
    class_colors = class_colors or {}
    for i, cls in enumerate(classes):
        color = class_colors.get(cls)
        if isinstance(color, (list, tuple)) and len(color) >= 3:
            vals = [int(round(c * 255)) if isinstance(c, float) and c <= 1.0 else int(c) for c in color[:3]]
            color = "#{:02x}{:02x}{:02x}".format(*vals)
        out[cls] = str(color) if color else _DEFAULT_COLORS[i % len(_DEFAULT_COLORS)]
    return out


def build_exports(
    result: Any,
    *,
    spatial: dict | None = None,
    regions: Any = None,
    corrections: Any = None,
    params: dict | None = None,
    model_card: dict | None = None,
    case_label: str | None = None,
    class_colors: dict[str, Any] | None = None,
    record: dict | None = None,
) -> dict[str, bytes]:
    """All exports of one analysis, as ``{file name: bytes}``.

    Parameters
    ----------
    result : core.results.AnalysisResult
        The analysis (image, cell table, summary).
    spatial, regions, corrections, params, model_card, case_label, class_colors
        As for :func:`record_from_result`.
    record : dict, optional
        A record already built (e.g. with the store's ``analysis_id``); built here if absent.

    Returns
    -------
    dict of str to bytes
        ``report.pdf``, ``cells.csv``, ``summary.json``, ``overlay.png``, for the TNRD
        scenarios ``denoised.png`` ((H, W, 3) uint8) and ``mask.png`` ((H, W) uint8 grey,
        mask x 255), and, when mpp is known, ``cells.geojson`` (QuPath: cells as
        detections with classification name and colour, regions as annotations).
        Media types are in :data:`EXPORT_MEDIA_TYPES`.
    """
    if record is None:
        record = record_from_result(
            result,
            spatial=spatial,
            regions=regions,
            corrections=corrections,
            params=params,
            model_card=model_card,
            case_label=case_label,
            class_colors=class_colors,
        )
    from core.cells import CELL_COLUMNS

    class_colors = class_colors or scenario_colors(result.scenario_key)
    classes = sorted(set(result.cells["cell_class"].astype(str))) if len(result.cells) else []
    overlay = render_overlay_png(result.image.pixels, result.cells, class_colors)
    columns = list(CELL_COLUMNS) + [c for c in result.cells.columns if c not in CELL_COLUMNS]
    files = {
        "overlay.png": overlay,
        "cells.csv": result.cells.to_csv(index=False, columns=columns, float_format="%.3f").encode("utf-8"),
        "summary.json": summary_json(record),
    }
    if getattr(result, "denoised", None) is not None:  # TNRD scenarios: the denoised image and the mask
        files["denoised.png"] = png_bytes(result.denoised)
    if "mask" in (getattr(result, "masks", None) or {}):
        files["mask.png"] = png_bytes(mask_to_uint8(result.masks["mask"]))
    geojson = _cells_geojson(result, regions, class_palette(classes, class_colors))
    if geojson is not None:
        files["cells.geojson"] = geojson
    files["report.pdf"] = build_report_pdf(record, overlay_png=overlay)
    return files


def summary_json(record: dict[str, Any]) -> bytes:
    """``summary.json``: the summary plus spatial statistics, corrections count and provenance."""
    data = dict(record.get("summary") or {})
    data["spatial"] = rec.spatial(record) or None
    data["n_corrections"] = record.get("n_corrections")
    data["case_label"] = record.get("case_label")
    data["created_at"] = record.get("created_at") or data.get("created_at")
    data["app_version"] = record.get("app_version") or data.get("app_version")
    data["params"] = record.get("params") or {}
    return json.dumps(data, indent=2, ensure_ascii=False, default=rec.json_default).encode("utf-8")


def _cells_geojson(result: Any, regions: Any, colors: dict[str, str]) -> bytes | None:
    try:
        from core.regions import cells_to_geojson
    except ImportError:  # the regions module is optional; the other exports still work
        return None
    if not result.image.mpp:
        return None  # QuPath coordinates are pixels, but regions are in µm: need mpp
    region_list = None if regions is None or isinstance(regions, (dict, str, bytes)) else list(regions)
    data = cells_to_geojson(result.cells, colors, result.image.mpp, regions=region_list)
    if isinstance(data, (dict, list)):
        data = json.dumps(data, ensure_ascii=False, default=rec.json_default)
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def write_exports(files: dict[str, bytes], out_dir: str | Path) -> list[Path]:
    """Write ``{name: bytes}`` into ``out_dir`` (created if needed); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = out / Path(name).name
        path.write_bytes(data)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- figures


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 3.2), dpi=150, layout="constrained")
    return fig


def _png(fig) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=150)
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
    fig = _figure()
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
    return _png(fig)


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
        fig = _figure()
        ax = fig.add_subplot()
        for name, y in ys.items():
            ax.plot(x, y, marker="o", markersize=2.5, label=name)
        ax.set_xlabel(x_name.replace("_um", " (µm)"))
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        out.append((title, _png(fig)))
    return out


# --------------------------------------------------------------------------- PDF helpers


def _font_paths() -> tuple[Path, Path]:
    import matplotlib

    base = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return base / "DejaVuSans.ttf", base / "DejaVuSans-Bold.ttf"


def _new_pdf(orientation: str = "P"):
    from fpdf import FPDF

    class _PDF(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("DejaVu", "", 7)
            self.set_text_color(110)
            self.cell(
                0, 5, f"TILscope {core.__version__} · {RESEARCH_USE} · page {self.page_no()}/{{nb}}", align="C"
            )
            self.set_text_color(0)

    pdf = _PDF(orientation=orientation, unit="mm", format="A4")
    regular, bold = _font_paths()
    pdf.add_font("DejaVu", "", str(regular))
    pdf.add_font("DejaVu", "B", str(bold))
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(15, 15, 15)
    pdf.set_creator(f"TILscope {core.__version__}")
    return pdf


def _heading(pdf, text: str, size: int = 12, need_mm: float = 24.0) -> None:
    """A section heading, on a new page unless ``need_mm`` more fit below it."""
    if pdf.get_y() + 9 + need_mm > pdf.h - 18:
        pdf.add_page()
    pdf.ln(2)
    pdf.set_font("DejaVu", "B", size)
    pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 9)


def _banner(pdf) -> None:
    pdf.set_fill_color(253, 236, 234)
    pdf.set_draw_color(192, 57, 43)
    pdf.set_text_color(150, 30, 20)
    pdf.set_font("DejaVu", "B", 10)
    pdf.cell(0, 8, RESEARCH_USE, border=1, fill=True, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.set_draw_color(0)
    pdf.set_fill_color(255)
    pdf.ln(2)


def _table(pdf, rows: list[list[str]], col_widths: tuple[float, ...], header: bool = True, font_size: float = 8.5) -> None:
    pdf.set_font("DejaVu", "", font_size)
    with pdf.table(
        col_widths=col_widths,
        first_row_as_headings=header,
        line_height=4.6,
        padding=1,
        headings_style=_heading_style(),
        cell_fill_color=(246, 247, 249),
        cell_fill_mode="ROWS",
    ) as table:
        for row in rows:
            r = table.row()
            for value in row:
                r.cell(str(value))
    pdf.ln(1)


def _heading_style():
    from fpdf.fonts import FontFace

    return FontFace(emphasis="BOLD", fill_color=(230, 236, 245))


def _image_size_mm(png: bytes, max_w: float, max_h: float) -> tuple[float, float]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        w_px, h_px = im.size
    scale = min(max_w / w_px, max_h / h_px)
    return w_px * scale, h_px * scale


def _image(pdf, png: bytes, max_w: float, max_h: float) -> None:
    w, h = _image_size_mm(png, max_w, max_h)
    if pdf.get_y() + h > pdf.h - 18:
        pdf.add_page()
    x = (pdf.w - w) / 2
    pdf.image(io.BytesIO(png), x=x, y=pdf.get_y(), w=w, h=h)
    pdf.set_y(pdf.get_y() + h + 2)


def format_value(value: Any, digits: int = 3) -> str:
    """Format a table value for people: ``None``/NaN → "n/a", floats to about ``digits`` figures."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value == 0 or 1e-3 <= abs(value) < 1:
            return f"{value:.{digits}g}"
        if 1 <= abs(value) < 1e6:
            return f"{value:.{max(0, digits - 2) if abs(value) < 1000 else 0}f}"
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v, digits) for v in value)
    return str(value)


def _date(value: Any) -> str:
    if not value:
        return "n/a"
    try:
        dt = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc)
        return dt.strftime("%Y-%m-%d %H:%M UTC")
    return dt.strftime("%Y-%m-%d %H:%M")


def _text_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [f"{k}: {format_value(v)}" for k, v in rec.flatten_scalars(value).items()]
    return [str(v) for v in value]


def _pdf_bytes(pdf, path: str | Path | None) -> bytes:
    data = bytes(pdf.output())
    if path is not None:
        Path(path).write_bytes(data)
    return data


# --------------------------------------------------------------------------- report


def build_report_pdf(
    record: dict[str, Any],
    overlay_png: bytes | None = None,
    model_card: dict[str, Any] | None = None,
    case_label: str | None = None,
    path: str | Path | None = None,
) -> bytes:
    """Write the PDF report of one analysis.

    Contents: case label, date, image name and SHA-256, mpp, scenario with weights
    version and SHA-256, the overlay thumbnail, counts and densities per class and
    region, the spatial statistics with their thresholds, plots, the number of
    manual corrections, the model card's intended use and limitations, and the
    research-use statement on every page.

    Parameters
    ----------
    record : dict
        An analysis record (:mod:`core.records`); only ``summary`` is required.
    overlay_png : bytes, optional
        PNG of the image with the detections drawn (:func:`render_overlay_png`).
    model_card : dict, optional
        The scenario's model card; defaults to ``record["model_card"]``. Read keys:
        ``name``, ``version``, ``intended_use``, ``limitations`` (str or list),
        ``training_data``, ``references``.
    case_label : str, optional
        Overrides ``record["case_label"]``.
    path : str or Path, optional
        Also write the PDF there.

    Returns
    -------
    bytes
        The PDF (A4 portrait).

    Raises
    ------
    InputError
        If ``record`` has no ``summary`` dict.
    """
    summary = record.get("summary")
    if not isinstance(summary, dict):
        raise InputError(
            f"an analysis record needs a 'summary' dict, got {type(summary).__name__}; "
            "pass AnalysisResult.summary or a record from the case store"
        )
    model_card = model_card if model_card is not None else record.get("model_card") or {}
    case_label = case_label if case_label is not None else record.get("case_label")
    spatial = rec.spatial(record)
    image = rec.image_info(summary)
    mpp = summary.get("mpp")

    pdf = _new_pdf("P")
    pdf.set_title(f"TILscope report {case_label or ''}".strip())
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    pdf.cell(0, 9, "TILscope analysis report", new_x="LMARGIN", new_y="NEXT")
    _banner(pdf)

    size = (
        f"{image['width_px']} × {image['height_px']} px"
        if image["width_px"] is not None and image["height_px"] is not None
        else "n/a"
    )
    n_corr = record.get("n_corrections")
    meta = [
        ["Field", "Value"],
        ["Case", case_label or "n/a"],
        ["Date", _date(record.get("created_at"))],
        ["Analysis id", format_value(record.get("analysis_id"))],
        ["Image", image["name"] or "n/a"],
        ["Image SHA-256", image["sha256"] or "n/a"],
        ["Image size", size],
        ["Pixel size (mpp)", f"{format_value(mpp, 4)} µm/px" if mpp is not None else "unknown: densities not reported"],
        ["Analysed area", f"{format_value(summary.get('area_mm2'), 4)} mm²" if summary.get("area_mm2") is not None else "n/a"],
        ["Scenario", rec.scenario_key(summary) or "n/a"],
        ["Weights version", format_value(summary.get("weights_version", model_card.get("version")))],
        ["Weights SHA-256", summary.get("weights_sha256") or "n/a"],
        ["Device / runtime", f"{summary.get('device') or 'n/a'} / {format_value(summary.get('runtime_s'))} s"],
        ["Numeric precision", str(summary.get("inference_precision", "float32"))],
        ["Manual corrections", "none recorded" if n_corr is None else str(n_corr)],
        ["TILscope version", str(record.get("app_version") or core.__version__)],
    ]
    if summary.get("warnings"):
        meta.append(["Warnings", f"{len(_text_list(summary.get('warnings')))}, listed at the end of this report"])
    _table(pdf, meta, (40, 140))

    _heading(pdf, "Counts and densities per class")
    cnt = rec.counts(summary)
    dens = rec.densities_per_mm2(summary)
    classes = list(dict.fromkeys([*cnt, *dens]))
    rows = [["Class", "Count", "Density (cells/mm²)"]]
    rows += [[c, str(cnt.get(c, "n/a")), format_value(dens.get(c), 4)] for c in classes]
    if cnt:
        rows.append(["total", str(sum(cnt.values())), format_value(_sum_or_none(dens.values()), 4)])
    _table(pdf, rows, (70, 40, 70))

    regions = rec.region_stats(record)
    if regions:
        _heading(pdf, "Counts and densities per region")
        rows = [["Region", "Area (mm²)", "Class", "Count", "Density (cells/mm²)"]]
        for name, stats in regions.items():
            r_cnt = stats.get("counts") or {}
            r_dens = stats.get("densities_per_mm2") or {}
            for i, c in enumerate(dict.fromkeys([*r_cnt, *r_dens]) or [""]):
                rows.append([name if i == 0 else "", format_value(stats.get("area_mm2"), 4) if i == 0 else "",
                             c, format_value(r_cnt.get(c)), format_value(r_dens.get(c), 4)])
        _table(pdf, rows, (38, 26, 46, 24, 46))

    if overlay_png:
        _heading(pdf, "Image with detections", need_mm=_image_size_mm(overlay_png, pdf.w - 30, 105)[1])
        _image(pdf, overlay_png, pdf.w - 30, 105)

    _heading(pdf, "Spatial statistics")
    stats_rows = [[k, format_value(v, 4)] for k, v in rec.spatial_statistics(spatial).items()]
    if stats_rows:
        _table(pdf, [["Statistic", "Value"], *stats_rows], (110, 70))
    else:
        pdf.multi_cell(0, 5, "No spatial statistics were computed for this analysis.", new_x="LMARGIN", new_y="NEXT")
    thresholds = {}
    for key in _THRESHOLD_KEYS:
        if isinstance(spatial.get(key), dict):
            thresholds.update(rec.flatten_scalars(spatial[key]))
    thresholds.update({f"analysis.{k}": v for k, v in rec.flatten_scalars(record.get("params") or {}).items()})
    if thresholds:
        _heading(pdf, "Thresholds and parameters", 10)
        _table(pdf, [["Name", "Value"], *[[k, format_value(v, 4)] for k, v in thresholds.items()]], (110, 70))

    figures = []
    density_png = density_figure_png(record)
    if density_png:
        figures.append(density_png)
    figures += [png for _, png in spatial_figures_png(spatial)]
    if figures:
        _heading(pdf, "Plots", need_mm=_image_size_mm(figures[0], pdf.w - 40, 80)[1])
        for png in figures:
            _image(pdf, png, pdf.w - 40, 80)

    _heading(pdf, "Model card")
    card_name = model_card.get("name") or rec.scenario_key(summary) or "n/a"
    pdf.multi_cell(0, 5, f"Model: {card_name}, version {format_value(model_card.get('version', summary.get('weights_version')))}",
                   new_x="LMARGIN", new_y="NEXT")
    for title, key in (("Intended use", "intended_use"), ("Limitations", "limitations"),
                       ("Training data", "training_data"), ("Metrics", "metrics"), ("References", "references")):
        lines = _text_list(model_card.get(key))
        if key in ("intended_use", "limitations") and not lines:
            lines = ["not stated in the model card"]
        if lines:
            pdf.set_font("DejaVu", "B", 9)
            pdf.cell(0, 5, title, new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("DejaVu", "", 9)
            for line in lines:
                pdf.multi_cell(0, 4.6, f"• {line}", new_x="LMARGIN", new_y="NEXT")

    warnings = _text_list(summary.get("warnings")) + [
        w for w in _text_list(spatial.get("warnings")) if w not in _text_list(summary.get("warnings"))
    ]
    if warnings:
        _heading(pdf, "Warnings", 10)
        for line in warnings:
            pdf.multi_cell(0, 4.6, f"• {line}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    _banner(pdf)
    return _pdf_bytes(pdf, path)


def _sum_or_none(values: Iterable[float | None]) -> float | None:
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))


# --------------------------------------------------------------------------- comparison


def comparison_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Side-by-side table of analyses for the tumour board.

    Rows (index): case, date, image, scenario, mpp, area, counts and densities per
    class, per-region densities, every scalar spatial statistic (proximity figures,
    phenotype calls) and the corrections count. Columns: one per record, named by
    :func:`core.records.label`. Values are numbers or strings; missing ones ``None``.
    """
    columns: dict[str, dict[str, Any]] = {}
    for r in records:
        summary = r.get("summary") or {}
        col: dict[str, Any] = {
            "case": r.get("case_label"),
            "date": _date(r.get("created_at")),
            "image": rec.image_info(summary)["name"],
            "scenario": rec.scenario_key(summary),
            "mpp (µm/px)": summary.get("mpp"),
            "area (mm²)": summary.get("area_mm2"),
        }
        for c, v in rec.counts(summary).items():
            col[f"count: {c}"] = v
        for c, v in rec.densities_per_mm2(summary).items():
            col[f"density (cells/mm²): {c}"] = v
        for region, stats in rec.region_stats(r).items():
            for c, v in (stats.get("densities_per_mm2") or {}).items():
                col[f"density (cells/mm²): {c} in {region}"] = v
        for k, v in rec.spatial_statistics(rec.spatial(r)).items():
            if isinstance(v, str) and v.startswith("not computed"):
                continue
            col[f"spatial: {k}"] = v
        col["manual corrections"] = r.get("n_corrections")
        name = rec.label(r)
        while name in columns:
            name += " (2)"
        columns[name] = col
    table = pd.DataFrame(columns)
    return table.astype(object).where(table.notna(), None)


#: Rows of :func:`comparison_table` a tumour board reads first (regular expressions on the
#: row names): provenance, counts and densities, the proximity figures, compartments,
#: CT/IM, stromal TIL proxy, phenotype call, the K-function test and corrections.
KEY_FIGURE_ROWS = (
    r"case", r"date", r"image", r"scenario", r"mpp \(µm/px\)", r"area \(mm²\)",
    r"count: .*", r"density \(cells/mm²\): .*",
    r"spatial: distances\.immune_to_nearest_tumour_um\.median_um",
    r"spatial: distances\.within_radius\[.*\]\.fraction_immune_within",
    r"spatial: compartments\.(intratumoral|stromal)_immune_density_per_mm2",
    r"spatial: compartments\.ratio_intratumoral_to_stromal",
    r"spatial: invasive_margin\.(ct|im)\.immune_density_per_mm2",
    r"spatial: invasive_margin\.immunoscore_like\.score_0_to_2",
    r"spatial: stromal_til_proxy\.percent",
    r"spatial: phenotype\.call",
    r"spatial: ripley\.global_test\.global_p_value",
    r"spatial: morisita_horn\.index",
    r"manual corrections",
)


def key_figures(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`comparison_table` named by :data:`KEY_FIGURE_ROWS`, in table order.

    Parameters
    ----------
    table : pandas.DataFrame
        As returned by :func:`comparison_table` (rows = measures, columns = analyses).

    Returns
    -------
    pandas.DataFrame
        The same columns; only the key rows (about 20-30 of the ~100).
    """
    import re

    pattern = re.compile("|".join(f"(?:{p})" for p in KEY_FIGURE_ROWS))
    return table.loc[[i for i in table.index if pattern.fullmatch(str(i))]]


def comparison_numeric(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The numeric parts of :func:`comparison_table`, ready to chart.

    Returns
    -------
    dict
        ``"density"``: (classes × analyses) float DataFrame of densities in cells/mm²
        over the analysed area (empty if no analysis had an mpp); ``"spatial"``:
        (statistics × analyses) float DataFrame of the numeric spatial statistics,
        thresholds left out (at most 12 rows). Missing values are NaN.
    """
    table = comparison_table(records)
    out = {}
    for key, prefix in (("density", "density (cells/mm²): "), ("spatial", "spatial: ")):
        rows = []
        for idx in table.index:
            name = str(idx)
            if not name.startswith(prefix):
                continue
            short = name[len(prefix):]
            if key == "density" and " in " in short:
                continue
            if key == "spatial" and short.split(".")[0] in _THRESHOLD_KEYS:
                continue
            values = list(table.loc[idx])
            if all((isinstance(v, (int, float)) and not isinstance(v, bool)) or v is None for v in values):
                rows.append((short, [np.nan if v is None else float(v) for v in values]))
        rows = rows[:12]
        frame = pd.DataFrame([v for _, v in rows], index=[n for n, _ in rows], columns=list(table.columns), dtype=float)
        out[key] = frame.dropna(how="all")
    return out


def comparison_figures_png(records: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Charts for the tumour board: densities per class, and numeric spatial figures.

    Returns
    -------
    list of (title, png bytes)
    """
    numeric = comparison_numeric(records)
    out = []
    density = numeric["density"]
    if not density.empty:
        fig = _figure()
        fig.set_size_inches(9.5, 3.4)
        ax = fig.add_subplot()
        colors = class_palette(list(density.columns), None)
        width = 0.8 / len(density.columns)
        x = np.arange(len(density.index))
        for i, col in enumerate(density.columns):
            ax.bar(x + i * width - 0.4 + width / 2, density[col].to_numpy(), width, label=f"{i + 1}. {col}", color=colors[col])
        ax.set_xticks(x, list(density.index), fontsize=8)
        ax.set_ylabel("cells/mm²")
        ax.set_title("Density per class")
        ax.legend(fontsize=6)
        out.append(("Density per class", _png(fig)))
    spatial = numeric["spatial"]
    if not spatial.empty:
        # Statistics have different scales: one small panel each.
        ncols = min(4, len(spatial.index))
        nrows = math.ceil(len(spatial.index) / ncols)
        fig = _figure()
        fig.set_size_inches(9.5, 2.2 * nrows + 0.4)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        colors = class_palette(list(spatial.columns), None)
        n = len(spatial.columns)
        for ax, (name, values) in zip(axes, spatial.iterrows()):
            ax.bar(range(n), values.to_numpy(), color=[colors[c] for c in spatial.columns])
            ax.set_title(str(name), fontsize=7)
            ax.set_xticks(range(n), [str(i + 1) for i in range(n)], fontsize=7)
            ax.tick_params(axis="y", labelsize=6)
        for ax in axes[len(spatial.index):]:
            ax.set_visible(False)
        fig.suptitle("Spatial statistics (bars numbered as the analyses)", fontsize=9)
        out.append(("Spatial statistics", _png(fig)))
    return out


def build_comparison_pdf(records: list[dict[str, Any]], path: str | Path | None = None) -> bytes:
    """Write the tumour-board comparison of several analyses as a PDF (A4 landscape).

    Parameters
    ----------
    records : list of dict
        Analysis records (:mod:`core.records`), one per compared analysis.
    path : str or Path, optional
        Also write the PDF there.

    Returns
    -------
    bytes
        The PDF: the comparison table (:func:`comparison_table`, five analyses per
        table), charts of densities and spatial statistics, and the research-use
        statement.

    Raises
    ------
    InputError
        If ``records`` is empty.
    """
    if not records:
        raise InputError("no analyses to compare: pick at least one analysis")
    table = comparison_table(records)
    pdf = _new_pdf("L")
    pdf.set_title("TILscope tumour-board comparison")
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    pdf.cell(0, 9, "TILscope tumour-board comparison", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 9)
    pdf.cell(0, 5, f"{len(records)} analyses · generated {_date(datetime.now(timezone.utc).isoformat())}",
             new_x="LMARGIN", new_y="NEXT")
    _banner(pdf)
    pdf.set_font("DejaVu", "", 8.5)
    for i, col in enumerate(table.columns):
        pdf.cell(0, 4.6, f"{i + 1}. {col}", new_x="LMARGIN", new_y="NEXT")
    per_table = 5
    usable = pdf.w - 30
    for start in range(0, len(table.columns), per_table):
        cols = list(table.columns[start:start + per_table])
        first = 75.0
        rest = (usable - first) / len(cols)
        rows = [["Measure", *[f"{start + j + 1}. {c}" for j, c in enumerate(cols)]]]
        for idx in table.index:
            rows.append([str(idx), *[format_value(table.at[idx, c], 4) for c in cols]])
        _heading(pdf, "Comparison" if start == 0 else f"Comparison (continued, analyses {start + 1}-{start + len(cols)})")
        _table(pdf, rows, (first, *([rest] * len(cols))), font_size=8)
    figures = comparison_figures_png(records)
    if figures:
        pdf.add_page()
        _heading(pdf, "Charts", need_mm=0)
        for _, png in figures:
            _image(pdf, png, pdf.w - 40, 78)
    return _pdf_bytes(pdf, path)
