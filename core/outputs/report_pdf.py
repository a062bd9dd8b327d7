"""The PDF report of one analysis.

Built from the plain-dict analysis record (:mod:`core.outputs.records`), so a result just
computed and one reloaded from the case store give the same report, plus the pictures
of the result by kind (:class:`ReportImage`: the overlay of the cells, each dense output
over the image, each restored image) that :func:`core.outputs.exports.build_exports`
renders. Deterministic: the same record and pictures give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import core
from core.errors import InputError
from core.outputs import pdf as P
from core.outputs import records as rec
from core.outputs.figures import density_figure_png, spatial_figures_png
from core.outputs.key_figures import format_value, key_figures

__all__ = ["ReportImage", "build_report_pdf", "report_cautions", "RESEARCH_USE"]

RESEARCH_USE = P.RESEARCH_USE
_THRESHOLD_KEYS = ("thresholds", "params", "parameters")


@dataclass(frozen=True)
class ReportImage:
    """A picture in the report: section ``title``, PNG bytes and a ``caption`` saying what it shows."""

    title: str
    png: bytes
    caption: str = ""


def report_cautions(summary: dict[str, Any]) -> list[str]:
    """What a reader must know first: synthetic training data, the scenario's caution (from the registry)."""
    lines = []
    if summary.get("trained_on_synthetic"):
        lines.append("This model was trained on synthetic images only: the numbers illustrate the method and are "
                     "not measurements of real tissue.")
    caution = rec.scenario_caution(rec.scenario_key(summary))
    if caution:
        lines.append(caution)
    return lines


def build_report_pdf(
    record: dict[str, Any],
    overlay_png: bytes | None = None,
    model_card: dict[str, Any] | None = None,
    case_label: str | None = None,
    path: str | Path | None = None,
    images: Iterable[ReportImage] = (),
) -> bytes:
    """Write the PDF report of one analysis.

    Contents: case label, date, image name and SHA-256, mpp, scenario with weights
    version and SHA-256, the scenario's caution and whether it was trained on synthetic
    images, counts and densities per class and region, the key figures
    (:func:`core.outputs.key_figures.key_figures`), the image with the detections and the
    other pictures of the result (dense outputs, restored images) with captions, the
    spatial statistics with their thresholds, plots, the number of manual corrections,
    the model card's intended use and limitations, the warnings, and the research-use
    statement on every page.

    Parameters
    ----------
    record : dict
        An analysis record (:mod:`core.outputs.records`); only ``summary`` is required.
    overlay_png : bytes, optional
        PNG of the image with the detections drawn (:func:`core.outputs.figures.render_overlay`).
    model_card : dict, optional
        The scenario's model card; defaults to ``record["model_card"]``. Read keys:
        ``name``, ``version``, ``intended_use``, ``limitations`` (str or list),
        ``training_data``, ``metrics``, ``references``.
    case_label : str, optional
        Overrides ``record["case_label"]``.
    path : str or Path, optional
        Also write the PDF there.
    images : iterable of ReportImage
        Further pictures of the result, shown after the overlay in this order.

    Returns
    -------
    bytes
        The PDF (A4 portrait); its creation date is ``record["created_at"]``.

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

    pdf = P.new_pdf("P", record.get("created_at") or summary.get("created_at"))
    pdf.set_title(f"TILscope report {case_label or ''}".strip())
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    pdf.cell(0, 9, "TILscope analysis report", new_x="LMARGIN", new_y="NEXT")
    P.banner(pdf)
    cautions = report_cautions(summary)
    P.caution_box(pdf, cautions)

    size = (
        f"{image['width_px']} × {image['height_px']} px"
        if image["width_px"] is not None and image["height_px"] is not None
        else "n/a"
    )
    n_corr = record.get("n_corrections")
    title = summary.get("scenario_title")
    meta = [
        ["Field", "Value"],
        ["Case", case_label or "n/a"],
        ["Date", P.date_text(record.get("created_at"))],
        ["Analysis id", format_value(record.get("analysis_id"))],
        ["Image", image["name"] or "n/a"],
        ["Image SHA-256", image["sha256"] or "n/a"],
        ["Image size", size],
        ["Pixel size (mpp)", f"{format_value(mpp, 4)} µm/px" if mpp is not None else "unknown: densities not reported"],
        ["Analysed area", f"{format_value(summary.get('area_mm2'), 4)} mm²" if summary.get("area_mm2") is not None else "n/a"],
        ["Scenario", f"{rec.scenario_key(summary) or 'n/a'}" + (f" ({title})" if title else "")],
        ["Weights version", format_value(summary.get("weights_version", model_card.get("version")))],
        ["Weights SHA-256", summary.get("weights_sha256") or "n/a"],
        ["Device / runtime", f"{summary.get('device') or 'n/a'} / {format_value(summary.get('runtime_s'))} s"],
        ["Numeric precision", str(summary.get("inference_precision", "float32"))],
        ["Manual corrections", "none recorded" if n_corr is None else str(n_corr)],
        ["TILscope version", str(record.get("app_version") or core.__version__)],
    ]
    if summary.get("warnings"):
        meta.append(["Warnings", f"{len(P.text_list(summary.get('warnings')))}, listed at the end of this report"])
    P.table(pdf, meta, (40, 140))

    P.heading(pdf, "Counts and densities per class")
    cnt = rec.counts(summary)
    dens = rec.densities_per_mm2(summary)
    classes = list(dict.fromkeys([*cnt, *dens]))
    rows = [["Class", "Count", "Density (cells/mm²)"]]
    rows += [[c, str(cnt.get(c, "n/a")), format_value(dens.get(c), 4)] for c in classes]
    if cnt:
        rows.append(["total", str(sum(cnt.values())), format_value(_sum_or_none(dens.values()), 4)])
    P.table(pdf, rows, (70, 40, 70))

    regions = rec.region_stats(record)
    if regions:
        P.heading(pdf, "Counts and densities per region")
        rows = [["Region", "Area (mm²)", "Class", "Count", "Density (cells/mm²)"]]
        for name, stats in regions.items():
            r_cnt = stats.get("counts") or {}
            r_dens = stats.get("densities_per_mm2") or {}
            for i, c in enumerate(dict.fromkeys([*r_cnt, *r_dens]) or [""]):
                rows.append([name if i == 0 else "", format_value(stats.get("area_mm2"), 4) if i == 0 else "",
                             c, format_value(r_cnt.get(c)), format_value(r_dens.get(c), 4)])
        P.table(pdf, rows, (38, 26, 46, 24, 46))

    figures = key_figures(record)
    P.heading(pdf, "Key figures")
    P.table(pdf, [["Measure", "Value", "Setting"], *[[f.measure, f.value_text, f.setting or ""] for f in figures]],
            (62, 30, 88))

    pictures = list(images)
    if overlay_png:
        pictures.insert(0, ReportImage("Image with detections", overlay_png,
                                       "Every detected cell ringed in its class colour."))
    for pic in pictures:
        P.heading(pdf, pic.title, need_mm=P.image_size_mm(pic.png, pdf.w - 30, 105)[1] + 8)
        P.image(pdf, pic.png, pdf.w - 30, 105, pic.caption)

    P.heading(pdf, "Spatial statistics")
    stats_rows = [[k, format_value(v, 4)] for k, v in rec.spatial_statistics(spatial).items()]
    if stats_rows:
        P.table(pdf, [["Statistic", "Value"], *stats_rows], (110, 70))
    else:
        pdf.multi_cell(0, 5, "No spatial statistics were computed for this analysis.", new_x="LMARGIN", new_y="NEXT")
    thresholds = {}
    for key in _THRESHOLD_KEYS:
        if isinstance(spatial.get(key), dict):
            thresholds.update(rec.flatten_scalars(spatial[key]))
    thresholds.update({f"analysis.{k}": v for k, v in rec.flatten_scalars(record.get("params") or {}).items()})
    if thresholds:
        P.heading(pdf, "Thresholds and parameters", 10)
        P.table(pdf, [["Name", "Value"], *[[k, format_value(v, 4)] for k, v in thresholds.items()]], (110, 70))

    charts = []
    density_png = density_figure_png(record)
    if density_png:
        charts.append(density_png)
    charts += [png for _, png in spatial_figures_png(spatial)]
    if charts:
        P.heading(pdf, "Plots", need_mm=P.image_size_mm(charts[0], pdf.w - 40, 80)[1])
        for png in charts:
            P.image(pdf, png, pdf.w - 40, 80)

    P.heading(pdf, "Model card")
    card_name = model_card.get("name") or rec.scenario_key(summary) or "n/a"
    pdf.multi_cell(0, 5, f"Model: {card_name}, version {format_value(model_card.get('version', summary.get('weights_version')))}",
                   new_x="LMARGIN", new_y="NEXT")
    for label, key in (("Intended use", "intended_use"), ("Limitations", "limitations"),
                       ("Training data", "training_data"), ("Metrics", "metrics"), ("References", "references")):
        lines = P.text_list(model_card.get(key))
        if key in ("intended_use", "limitations") and not lines:
            lines = ["not stated in the model card"]
        if lines:
            pdf.set_font("DejaVu", "B", 9)
            pdf.cell(0, 5, label, new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("DejaVu", "", 9)
            for line in lines:
                pdf.multi_cell(0, 4.6, f"• {line}", new_x="LMARGIN", new_y="NEXT")

    warnings = P.text_list(summary.get("warnings"))
    warnings += [w for w in P.text_list(spatial.get("warnings")) if w not in warnings]
    if warnings:
        P.heading(pdf, "Warnings", 10)
        for line in warnings:
            pdf.multi_cell(0, 4.6, f"• {line}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    P.banner(pdf)
    return P.pdf_bytes(pdf, path)


def _sum_or_none(values: Iterable[float | None]) -> float | None:
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))
