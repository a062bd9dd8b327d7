"""The PDF report of one analysis, written to be read at a tumour board.

Page 1 holds what a reader needs before using the numbers: the case, a thumbnail of the
image with the detections, "Outside the validated use" when the run is, every warning, the
research-use statement, the cells per class, the immune phenotype call with its
thresholds, and every key figure (:func:`core.outputs.key_figures.key_figures`) with its
unit and what it means. Then figures that answer a question (immune density by
compartment, distances to the nearest tumour cell, cross-G and cross-L against the
envelopes of random labelling), the pictures of the result (:class:`ReportImage`), and a
methods appendix (image and run, model and its held-out validation, thresholds, settings,
definitions) in words, never raw keys (:mod:`core.outputs.labels`). An analysis with predicted
tissue compartments (``summary["compartments"]``) gets a section with the map over the image,
the area of each compartment, the model that drew them, the stromal TIL % by the TILs Working
Group's definition and whether they or drawn regions gave the statistics their regions.

Built from the plain-dict analysis record (:mod:`core.outputs.records`), so a result just
computed, one reviewed by hand (its record carries the corrected summary and statistics)
and one reloaded from the case store give the same report. Deterministic: the same record
and pictures give the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import core
from core.errors import InputError
from core.outputs import labels as L
from core.outputs import pdf as P
from core.outputs import records as rec
from core.outputs.figures import (
    class_palette,
    compartment_density_figure_png,
    distance_figure_png,
    envelope_figure_png,
    thumbnail_png,
)
from core.outputs.key_figures import KeyFigure, format_figure, format_value, key_figures

__all__ = ["ReportImage", "ReportSection", "build_report_pdf", "report_cautions", "report_warnings", "outside_validated_use",
           "review_text", "compartment_rows", "RESEARCH_USE"]

RESEARCH_USE = P.RESEARCH_USE
#: Characters of the case label printed on page 1 and in tables (longer labels are shortened, with a note).
CASE_LABEL_MAX_CHARS = 60


@dataclass(frozen=True)
class ReportImage:
    """A picture in the report: section ``title``, PNG bytes and a ``caption`` saying what it shows."""

    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class ReportSection:
    """A titled section computed on demand (e.g. saliency maps): its explanation ``text`` and its pictures."""

    title: str
    text: str
    images: tuple[ReportImage, ...] = ()


def outside_validated_use(summary: dict[str, Any]) -> list[str]:
    """Why a run lies outside its model's validated use, in plain words (``summary["outside_validated_use"]``).

    Returns
    -------
    list of str
        Empty when the key is absent or empty (the run is within the validated use).
    """
    return [line for line in P.text_list(summary.get("outside_validated_use")) if line.strip()]


def report_cautions(summary: dict[str, Any]) -> list[str]:
    """What a reader must know first: synthetic training data or a research-only model, the scenario's caution (from the registry)."""
    lines = []
    if summary.get("trained_on_synthetic"):
        lines.append("This model was trained on synthetic images only: the numbers illustrate the method and are "
                     "not measurements of real tissue.")
        if summary.get("synthetic_save_confirmed"):
            lines.append("Saved in the case history as a teaching or method-development analysis: the user confirmed "
                         "that these numbers are not counts for this case.")
    if rec.scenario_research_only(rec.scenario_key(summary)):
        lines.append("Research only: this model did not pass its validation (see below and its model card); its "
                     "numbers are not counts for a patient case.")
    caution = rec.scenario_caution(rec.scenario_key(summary))
    if caution:
        lines.append(caution)
    return lines


def report_warnings(record: dict[str, Any]) -> list[str]:
    """Every warning of an analysis, each once: the cautions, the run's warnings, the statistics' warnings.

    Parameters
    ----------
    record : dict
        An analysis record (:mod:`core.outputs.records`).

    Returns
    -------
    list of str
        :func:`report_cautions`, then ``summary["warnings"]``, then the spatial
        statistics' ``warnings``; exact repeats left out. "Outside the validated use"
        is not among them (:func:`outside_validated_use`).
    """
    summary = record.get("summary") or {}
    lines: list[str] = []
    for line in [*report_cautions(summary), *P.text_list(summary.get("warnings")),
                 *P.text_list(rec.spatial(record).get("warnings"))]:
        if line.strip() and line not in lines:
            lines.append(line)
    return lines


def review_text(record: dict[str, Any]) -> str:
    """Whether the analysis was reviewed by hand, and what changed, in one line.

    Reads ``summary["review"]`` (:func:`core.review.cells.reviewed_summary`) and the
    record's ``n_corrections``.
    """
    summary = record.get("summary") or {}
    review = summary.get("review") if isinstance(summary.get("review"), dict) else None
    n_corr = record.get("n_corrections")
    if review:
        n = review.get("n_corrections", n_corr) or 0
        text = (f"reviewed by hand: {n} cell(s) corrected ({review.get('n_added', 0)} added, "
                f"{review.get('n_deleted', 0)} deleted, {review.get('n_relabelled', 0)} relabelled)")
        if review.get("detected_n_cells") is not None and summary.get("n_cells") is not None:
            text += f"; {review['detected_n_cells']:,} cells detected, {summary['n_cells']:,} after review"
        return text
    if n_corr:
        return f"reviewed by hand: {n_corr} cell(s) corrected"
    if n_corr == 0:
        return "reviewed by hand: no cell changed"
    return "not reviewed by hand: the numbers are the model's"


@dataclass
class _Content:
    """Everything the report prints, computed once (the page layout may be drawn twice)."""

    record: dict[str, Any]
    summary: dict[str, Any]
    spatial: dict[str, Any]
    card: dict[str, Any]
    case_label: str
    figures: list[KeyFigure]
    outside: list[str]
    warnings: list[str]
    thumbnail: bytes | None
    pictures: list[ReportImage]
    charts: list[ReportImage] = field(default_factory=list)
    compartments_png: bytes | None = None
    sections: list[ReportSection] = field(default_factory=list)


def build_report_pdf(
    record: dict[str, Any],
    overlay_png: bytes | None = None,
    model_card: dict[str, Any] | None = None,
    case_label: str | None = None,
    path: str | Path | None = None,
    images: Iterable[ReportImage] = (),
    compartments_png: bytes | None = None,
    sections: Iterable[ReportSection] = (),
) -> bytes:
    """Write the PDF report of one analysis.

    Page 1: case, thumbnail of ``overlay_png`` with the class colours, "Outside the
    validated use: ..." when ``summary["outside_validated_use"]`` says so, every warning
    (:func:`report_warnings`), the research-use statement, cells and densities per class,
    the immune phenotype with its rule and thresholds, every key figure with its unit,
    meaning and setting. Then the figures (immune density by compartment, distances to
    the nearest tumour cell, cross-G and cross-L with random-labelling envelopes), the
    pictures (``overlay_png`` large, then ``images``), regions and further figures, and a
    methods appendix: image and run, model (intended use, limitations, training data,
    held-out validation figures, thresholds, references), the settings of the statistics
    and their definitions. The research-use statement is in every page's footer. When the
    page-1 content does not fit on one page it is drawn again, smaller.

    Parameters
    ----------
    record : dict
        An analysis record (:mod:`core.outputs.records`); only ``summary`` is required.
        For a reviewed analysis, the record of the reviewed result (corrected summary and
        statistics), so the report agrees with the other exports.
    overlay_png : bytes, optional
        PNG of the image with the detections drawn (:func:`core.outputs.figures.render_overlay`).
    model_card : dict, optional
        The scenario's model card; defaults to ``record["model_card"]``. Read keys:
        ``name``, ``version``, ``weights_file``, ``intended_use``, ``limitations`` (str or
        list), ``training_data``, ``metrics``, ``thresholds``, ``references``.
    case_label : str, optional
        Overrides ``record["case_label"]``. Any length: labels over
        :data:`CASE_LABEL_MAX_CHARS` characters are shortened, with a note.
    path : str or Path, optional
        Also write the PDF there.
    images : iterable of ReportImage
        Further pictures of the result, shown after the overlay in this order.
    compartments_png : bytes, optional
        PNG of the predicted tissue compartments over the image with their legend
        (:meth:`core.scenarios.compartments.CompartmentMap.picture`), shown in the
        "Tissue compartments" section with the areas of ``summary["compartments"]``.
    sections : iterable of ReportSection
        Sections computed on demand (e.g. the saliency maps of the Analyze page), each with
        its text and pictures, after the pictures of the result.

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
    card = model_card if model_card is not None else record.get("model_card") or {}
    label = case_label if case_label is not None else record.get("case_label")
    spatial = rec.spatial(record)
    pictures = list(images)
    if overlay_png:
        regions = record.get("regions")
        outlined = " Drawn regions are outlined and named." if isinstance(regions, dict) and regions.get("features") else ""
        pictures.insert(0, ReportImage("Image with detections", overlay_png,
                                       "Every detected cell ringed in its class colour." + outlined))
    content = _Content(
        record=record, summary=summary, spatial=spatial, card=card if isinstance(card, dict) else {},
        case_label=str(label) if label not in (None, "") else "no case label",
        figures=key_figures(dict(record, spatial=spatial)), outside=outside_validated_use(summary),
        warnings=report_warnings(record), thumbnail=thumbnail_png(overlay_png, 900) if overlay_png else None,
        pictures=pictures, compartments_png=compartments_png, sections=list(sections),
    )
    content.charts = _charts(content)
    pdf = None
    for compact in (False, True):
        pdf, fits = _document(content, compact)
        if fits:
            break
    return P.pdf_bytes(pdf, path)


# --------------------------------------------------------------------------- page 1


def _document(c: _Content, compact: bool):
    pdf = P.new_pdf("P", c.record.get("created_at") or c.summary.get("created_at"))
    pdf.set_title(f"TILscope report {P.shorten(c.case_label, 60)}")
    pdf.add_page()
    _first_page(pdf, c, compact)
    fits = pdf.page_no() == 1
    _figures_section(pdf, c)
    _compartments_section(pdf, c)
    _details_section(pdf, c)
    _pictures_section(pdf, c)
    _extra_sections(pdf, c)
    _methods_appendix(pdf, c)
    return pdf, fits


def _first_page(pdf, c: _Content, compact: bool) -> None:
    s = c.summary
    fs = 7.2 if compact else 8.2
    pdf.set_font("DejaVu", "B", 15)
    pdf.cell(0, 8, "TILscope analysis report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 9)
    when = P.date_text(c.record.get("created_at") or s.get("created_at"))
    aid = c.record.get("analysis_id")
    pdf.multi_cell(0, 4.6, f"Case {P.shorten(c.case_label, CASE_LABEL_MAX_CHARS)} · analysed {when}"
                   + (f" · analysis #{aid}" if aid is not None else ""), align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    P.banner(pdf)
    if c.outside:
        P.alert_box(pdf, "Outside the validated use: " + "; ".join(c.outside), font_size=fs + 1)
    P.caution_box(pdf, c.warnings, font_size=fs - 0.4)
    _image_and_facts(pdf, c, compact, fs)
    _phenotype_box(pdf, c, fs)
    _key_figure_table(pdf, c, fs)


def _image_and_facts(pdf, c: _Content, compact: bool, fs: float) -> None:
    s = c.summary
    top = pdf.get_y()
    left_w = 66.0 if compact else 82.0
    max_h = 46.0 if compact else 66.0
    x0 = pdf.l_margin
    if c.thumbnail:
        w, h = P.image_size_mm(c.thumbnail, left_w, max_h)
        pdf.image(io.BytesIO(c.thumbnail), x=x0 + (left_w - w) / 2, y=top, w=w, h=h)
        pdf.set_draw_color(150)
        pdf.rect(x0 + (left_w - w) / 2, top, w, h)
        pdf.set_draw_color(0)
    else:
        h = 20.0
        pdf.set_xy(x0, top)
        pdf.set_font("DejaVu", "", 8)
        pdf.multi_cell(left_w, 4, "No picture of the detections was supplied: see overlay.png of this analysis.",
                       border=1, align="C")
    bottom_left = _legend(pdf, c, x0, top + h + 1.5, left_w)

    facts = [
        ["Case", P.shorten(c.case_label, CASE_LABEL_MAX_CHARS)],
        ["Image", _image_text(s)],
        ["Pixel size", _mpp_text(s)],
        ["Analysed area", _area_text(s)],
        ["Model", _model_text(s, c.card)],
        ["Review", review_text(c.record)],
    ]
    pdf.set_y(top)
    right_w = pdf.w - pdf.r_margin - (x0 + left_w + 4)
    P.table(pdf, facts, (27, right_w - 27), header=False, font_size=fs - 0.4, width=right_w, align="RIGHT",
            first_column_bold=True)
    cnt, dens = rec.counts(s), rec.densities_per_mm2(s)
    classes = list(dict.fromkeys([*cnt, *dens]))
    if classes:
        rows = [["Cells per class", "cells", "cells/mm²"]]
        rows += [[cls, format_figure(cnt.get(cls), "cells"), format_figure(dens.get(cls), "cells/mm²")] for cls in classes]
        total_d = None if any(dens.get(k) is None for k in classes) else sum(dens.get(k) or 0.0 for k in classes)
        rows.append(["all cells", format_figure(s.get("n_cells", sum(cnt.values())), "cells"),
                     format_figure(total_d, "cells/mm²")])
        P.table(pdf, rows, (right_w - 44, 20, 24), font_size=fs - 0.4, width=right_w, align="RIGHT")
    pdf.set_y(max(pdf.get_y(), bottom_left) + 1)


def _legend(pdf, c: _Content, x: float, y: float, width: float) -> float:
    classes = list(rec.counts(c.summary))
    if not classes:
        return y
    colors = class_palette(classes, rec.scenario_colors(rec.scenario_key(c.summary)))
    pdf.set_font("DejaVu", "", 7)
    cx, cy = x, y
    for cls in classes:
        text_w = pdf.get_string_width(cls) + 6
        if cx + text_w > x + width:
            cx, cy = x, cy + 4
        r, g, b = (int(colors[cls][i:i + 2], 16) for i in (1, 3, 5))
        pdf.set_draw_color(r, g, b)
        pdf.set_line_width(0.6)
        pdf.ellipse(cx + 0.4, cy + 0.6, 2.4, 2.4)
        pdf.set_line_width(0.2)
        pdf.set_draw_color(0)
        pdf.set_xy(cx + 3.4, cy)
        pdf.cell(text_w - 3.4, 3.6, cls)
        cx += text_w
    return cy + 4


def _image_text(s: dict) -> str:
    image = rec.image_info(s)
    size = (f"{image['width_px']:,} × {image['height_px']:,} px"
            if isinstance(image["width_px"], int) and isinstance(image["height_px"], int) else "size unknown")
    return f"{P.shorten(image['name'] or 'unnamed image', 60)}, {size}"


def _mpp_text(s: dict) -> str:
    mpp = s.get("mpp")
    if mpp is None:
        return "unknown: counts only, no densities per mm² or distances in µm"
    source = {"tiff-resolution": "from the file", "sample catalogue": "from the sample catalogue",
              "user": "entered by the user"}.get(str(s.get("mpp_source")), "")
    return f"{format_value(mpp, 4)} µm per pixel" + (f" ({source})" if source else "")


def _area_text(s: dict) -> str:
    tissue = s.get("tissue_area_mm2")
    area = s.get("area_mm2")
    if tissue is not None:
        text = f"{format_figure(tissue, 'mm²', with_unit=True)} of tissue; densities are per mm² of this tissue"
        return text + (f" (image {format_figure(area, 'mm²', with_unit=True)})" if area is not None else "")
    if area is not None:
        return f"{format_figure(area, 'mm²', with_unit=True)}, the whole image; densities are per mm² of it"
    return "unknown (no pixel size)"


def _model_text(s: dict, card: dict) -> str:
    title = s.get("scenario_title") or rec.scenario_key(s) or "unknown scenario"
    version = s.get("weights_version", card.get("version"))
    text = f"{title}; {card.get('name') or 'model'}" + (f", version {version}" if version else "")
    if s.get("inference_precision") and s.get("inference_precision") != "float32":
        text += f", run in {s['inference_precision']}"
    return text


def _phenotype_box(pdf, c: _Content, fs: float) -> None:
    ph = c.spatial.get("phenotype") if isinstance(c.spatial.get("phenotype"), dict) else None
    if ph is None and "available" not in c.spatial:
        return
    ph = ph or {}
    call = ph.get("call") if ph.get("available") else None
    lines = []
    if ph.get("rule"):
        lines.append(f"Rule: {_plain(ph['rule'])}.")
    inputs = ph.get("inputs") or {}
    measured = [f"{name} {format_figure(inputs.get(key), 'cells/mm²', with_unit=True)}"
                for key, name in (("intratumoral_immune_density_per_mm2", "intratumoral"),
                                  ("stromal_immune_density_per_mm2", "stromal")) if inputs.get(key) is not None]
    if measured:
        where = (c.spatial.get("compartments") or {}).get("source")
        lines.append("Measured: " + ", ".join(measured) + (f"; compartments: {_plain(where)}" if where else "") + ".")
    if not call:
        lines.append(f"No call: {ph.get('reason') or c.spatial.get('reason') or 'not computed'}.")
    if ph.get("note"):
        lines.append(ph["note"][0].upper() + ph["note"][1:] + ".")
    pdf.ln(0.5)
    pdf.set_fill_color(240, 243, 250)
    pdf.set_draw_color(59, 111, 182)
    pdf.set_font("DejaVu", "B", fs + 2)
    pdf.multi_cell(0, 5.2, f"Immune phenotype: {call or 'not called'}", border="LTR", fill=True, padding=(1, 1.5, 0, 1.5),
                   align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", fs - 0.4)
    pdf.multi_cell(0, fs * 0.48, "\n".join(lines), border="LBR", fill=True, padding=(0.5, 1.5, 1, 1.5),
                   align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(255)
    pdf.set_draw_color(0)
    pdf.ln(1.5)


def _keep(value_text: str) -> str:
    """A value and its unit joined by no-break spaces, so a line never ends between them."""
    return value_text.replace(" ", "\u00a0")


def _plain(text: str) -> str:
    return text.replace(">=", "≥").replace("<=", "≤")


def _key_figure_rows(figures: list[KeyFigure], shown: Iterable[str] = ()) -> list[list[str]]:
    """Rows (measure, value, meaning and setting) of the key figures page 1 shows in its table.

    Counts and densities per class are in the class table and the phenotype in its box;
    the fractions within each radius r share one row; a setting already printed on the
    page (``shown``, e.g. how the compartments were found) is not repeated.
    """
    shown = set(shown)
    rows: list[list[str]] = []
    within = [f for f in figures if f.key.startswith("distances.within_radius[")]
    for f in figures:
        if f.key == "cells" or f.key.startswith(("count.", "density.")) or f.key == "phenotype":
            continue
        if f.key.startswith("distances.within_radius["):
            if f is not within[0]:
                continue
            radii = " / ".join(f.measure.split("within ", 1)[1].split(" µm", 1)[0] for f in within)
            values = " · ".join(_keep(f.value_text) for f in within)
            parts = [f.setting.split("; ")[1] for f in within if f.setting.count("; ") >= 1]
            n_within = ", ".join(p.split(" of ")[0] for p in parts) + f" of {parts[0].split(' of ')[1]}" if parts else ""
            meaning = L.figure_meaning(f.key)
            if f.value is None:
                meaning = f"Not available: {_plain(f.setting)}."
            rows.append([f"Immune cells within {radii} µm of a tumour cell", values,
                         f"{meaning} Here {n_within}." if n_within else meaning])
            continue
        meaning = L.figure_meaning(f.key)
        setting = "" if f.setting.strip() in shown else _plain(f.setting.strip())
        text = meaning if not setting else (f"{meaning} {setting[0].upper()}{setting[1:]}." if meaning else setting)
        if f.value is None:
            if setting:
                text = f"Not available: {setting}."
            elif f.setting.strip():  # how the compartments were sought, printed above
                text = f"Not available: no such compartment was found ({_plain(f.setting.strip())})."
            else:
                text = "Not available."
        rows.append([f.measure[0].upper() + f.measure[1:], _keep(f.value_text), text])
    return rows


def _key_figure_table(pdf, c: _Content, fs: float) -> None:
    comp = c.spatial.get("compartments") or {}
    shown = [comp["source"]] if isinstance(comp.get("source"), str) else []
    rows = _key_figure_rows(c.figures, shown)
    if not rows:
        return
    P.table(pdf, [["Key figure", "Value", "What it means · how it was measured"], *rows], (58, 28, 94),
            font_size=fs - 0.6)


# --------------------------------------------------------------------------- figures, pictures, details


def _charts(c: _Content) -> list[ReportImage]:
    out = []
    comp = c.spatial.get("compartments") or {}
    png = compartment_density_figure_png(dict(c.record, spatial=c.spatial))
    if png:
        where = comp.get("source") if comp.get("available") else comp.get("reason")
        out.append(ReportImage(
            "Immune-cell density by compartment", png,
            "Immune cells per mm² of each compartment measured"
            + (f" (tumour and stroma compartments: {_plain(where)})" if where else "")
            + ". Dashed lines: the phenotype thresholds."))
    png = distance_figure_png(c.spatial)
    if png:
        out.append(ReportImage(
            "Distance from each immune cell to the nearest tumour cell", png,
            "Left: immune cells per distance bin, with the median. Right: the share of immune cells within r of a "
            "tumour cell, at the radii of the key figures."))
    png = envelope_figure_png(c.spatial)
    if png:
        n_sim = (c.spatial.get("ripley") or c.spatial.get("cross_g") or {}).get("n_simulations")
        out.append(ReportImage(
            "Are immune cells closer to tumour cells than chance?", png,
            "Grey bands: what random labelling of the same tumour and immune positions gives"
            + (f" ({n_sim} relabellings)" if n_sim else "") + ". An observed curve above the band means immune cells "
            "are closer to tumour cells than chance; below it, they are kept apart."))
    return out


def _figures_section(pdf, c: _Content) -> None:
    pdf.add_page()
    P.heading(pdf, "Figures", 13, need_mm=0)
    if not c.charts:
        reasons = [f"{name}: {sec['reason']}" for name, sec in
                   (("distances", c.spatial.get("distances")), ("compartments", c.spatial.get("compartments")))
                   if isinstance(sec, dict) and sec.get("reason")]
        pdf.multi_cell(0, 4.6, "No spatial figures for this analysis"
                       + (": " + "; ".join(reasons) if reasons else ": spatial statistics were not computed") + ".",
                       new_x="LMARGIN", new_y="NEXT")
    for chart in c.charts:
        P.heading(pdf, chart.title, 10.5, need_mm=P.image_size_mm(chart.png, pdf.w - 30, 80)[1] + 10)
        P.image(pdf, chart.png, pdf.w - 30, 80, chart.caption)


def _pictures_section(pdf, c: _Content) -> None:
    if not c.pictures:
        return
    for i, pic in enumerate(c.pictures):
        need = P.image_size_mm(pic.png, pdf.w - 30, 120)[1] + 10
        if i == 0:
            P.heading(pdf, "Pictures of the result", 13, need_mm=need + 8)
        P.heading(pdf, pic.title, 10.5, need_mm=need)
        P.image(pdf, pic.png, pdf.w - 30, 120, pic.caption)


def compartment_rows(summary: dict[str, Any], spatial: dict[str, Any]) -> list[list[str]]:
    """Rows (what, value) of the "Tissue compartments" section: areas, model, use in the statistics, stromal TILs.

    Parameters
    ----------
    summary : dict, an analysis summary (its ``compartments``, :meth:`core.results.AnalysisResult.compartments_summary`)
    spatial : dict, the analysis's spatial statistics (its ``predicted_compartments``)

    Returns
    -------
    list of [str, str]; empty without compartments
    """
    comp = summary.get("compartments")
    if not isinstance(comp, dict):
        return []
    areas = comp.get("area_mm2") or {}
    fraction = comp.get("fraction") or {}
    n_cells = comp.get("n_cells_by_compartment") or {}
    rows = []
    for name in ("tumour", "stroma", "necrosis", "background"):
        area = format_figure(areas.get(name), "mm²", with_unit=True) if areas else "n/a (no pixel size)"
        share = f"{100 * fraction[name]:.1f} % of the image" if isinstance(fraction.get(name), (int, float)) else ""
        cells = (f"{format_figure(n_cells[name], 'cells')} cell{'' if n_cells[name] == 1 else 's'}"
                 if name in n_cells and summary.get("n_cells") else "")
        label = {"background": "Background (glass, artefacts)"}.get(name, name.capitalize())
        rows.append([label, ", ".join(t for t in (area, share, cells) if t)])
    model = comp.get("scenario_title") or comp.get("scenario") or "a compartment model"
    version = comp.get("weights_version")
    rows.append(["Predicted by", f"{model}" + (f", version {version}" if version else "")
                 + (f" ({comp['weights_file']})" if comp.get("weights_file") else "")])
    used = comp.get("regions_for_statistics")
    rows.append(["Regions of the statistics", {
        "predicted": "these compartments: tumour and stroma as regions, necrosis and background excluded",
        "drawn": "the regions drawn or given (they override the predicted compartments)",
        "not used": "not these compartments: the statistics were computed without them (e.g. those of a review)",
    }.get(used, "none: no spatial statistics (no cells, or no pixel size)")])
    if comp.get("n_cells_by_compartment") and summary.get("n_cells"):
        rows.append(["Tissue of the densities", "tumour and stroma only: cells in necrosis or background are in the "
                                                "cell table but not in the densities"])
    til = ((spatial or {}).get("predicted_compartments") or {}).get("stromal_til") or {}
    if til:
        value = (f"{format_figure(til.get('percent'), '%', with_unit=True)} of "
                 f"{format_figure(til.get('stroma_area_mm2'), 'mm²', with_unit=True)} of stroma"
                 if til.get("available") else f"not available: {til.get('reason') or 'no stroma'}")
        rows.append(["Stromal TILs (TILs Working Group)", value])
    return rows


def _compartments_section(pdf, c: _Content) -> None:
    rows = compartment_rows(c.summary, c.spatial)
    if not rows:
        return
    need = (P.image_size_mm(c.compartments_png, pdf.w - 30, 110)[1] if c.compartments_png else 0) + 40
    P.heading(pdf, "Tissue compartments", 13, need_mm=need)
    if c.compartments_png:
        P.image(pdf, c.compartments_png, pdf.w - 30, 110,
                "Tumour, stroma, necrosis and background predicted for every pixel, in the colours of the legend "
                "below the picture, over the image; compartments.png holds the labels (0 background, 1 tumour, "
                "2 stroma, 3 necrosis) and regions.geojson their outlines for QuPath.")
    P.table(pdf, [["Compartment", "Area, share, cells"], *rows], (55, 125), font_size=8)


def _extra_sections(pdf, c: _Content) -> None:
    for section in c.sections:
        first = P.image_size_mm(section.images[0].png, pdf.w - 30, 120)[1] + 10 if section.images else 0
        P.heading(pdf, section.title, 13, need_mm=first + 30)
        pdf.set_font("DejaVu", "", 8.5)
        pdf.multi_cell(0, 4.2, section.text, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
        for pic in section.images:
            need = P.image_size_mm(pic.png, pdf.w - 30, 120)[1] + 10
            P.heading(pdf, pic.title, 10.5, need_mm=need)
            P.image(pdf, pic.png, pdf.w - 30, 120, pic.caption)


def _details_section(pdf, c: _Content) -> None:
    regions = rec.region_stats(c.record)
    if "predicted_compartments" in c.spatial:  # one row per predicted part would run to pages: by kind instead
        regions = {f"all predicted {kind}": {"area_mm2": k.get("area_mm2"),
                                             "counts": {r: v for r, v in (k.get("counts_by_role") or {}).items() if v},
                                             "densities_per_mm2": k.get("density_per_mm2_by_role") or {}}
                   for kind, k in ((c.spatial.get("regions") or {}).get("by_kind") or {}).items()}
    rows = _more_figures(c.spatial)
    if not regions and not rows:
        return
    P.heading(pdf, "Further figures", 13, need_mm=30)
    if regions:
        P.heading(pdf, "Predicted compartments by kind" if "predicted_compartments" in c.spatial
                  else "Regions drawn on the image", 10.5)
        table = [["Region", "Area", "Cells", "Density"]]
        for name, stats in regions.items():
            r_cnt = stats.get("counts") or {}
            r_dens = stats.get("densities_per_mm2") or {}
            for i, cls in enumerate(dict.fromkeys([*r_cnt, *r_dens]) or [""]):
                table.append([P.shorten(name, 60) if i == 0 else "",
                              format_figure(stats.get("area_mm2"), "mm²", with_unit=True) if i == 0 else "",
                              f"{format_figure(r_cnt.get(cls), 'cells')} {cls}",
                              format_figure(r_dens.get(cls), "cells/mm²", with_unit=True)])
        P.table(pdf, table, (60, 30, 50, 40))
    if rows:
        P.heading(pdf, "Distances, compartments and co-localisation in detail", 10.5)
        P.table(pdf, [["Figure", "Value"], *rows], (110, 70))


def _um(v: Any) -> str:
    return format_figure(v, "µm", with_unit=True)


def _more_figures(s: dict) -> list[list[str]]:
    """Figures behind the key figures, in words (only sections that were computed)."""
    rows: list[list[str]] = []
    d = s.get("distances") or {}
    if d.get("available"):
        q = d.get("immune_to_nearest_tumour_um") or {}
        rows.append(["Immune → nearest tumour cell: mean", _um(q.get("mean_um"))])
        rows.append(["Immune → nearest tumour cell: middle half (quartiles)", f"{_um(q.get('q25_um'))} to {_um(q.get('q75_um'))}"])
        rows.append(["Immune → nearest tumour cell: shortest to longest", f"{_um(q.get('min_um'))} to {_um(q.get('max_um'))}"])
        for row in d.get("within_radius") or []:
            rows.append([f"Immune cells per tumour cell within {row['radius_um']:g} µm",
                         format_value(row.get("immune_per_tumour_cell_within"), 3)])
    comp = s.get("compartments") or {}
    if comp.get("available"):
        rows.append(["Tumour compartment: area, immune cells",
                     f"{format_figure(comp.get('tumour_area_mm2'), 'mm²', with_unit=True)}, "
                     f"{format_figure(comp.get('n_immune_intratumoral'), 'cells')}"])
        rows.append(["Stroma compartment: area, immune cells",
                     f"{format_figure(comp.get('stroma_area_mm2'), 'mm²', with_unit=True)}, "
                     f"{format_figure(comp.get('n_immune_stromal'), 'cells')}"])
    im = s.get("invasive_margin") or {}
    if im.get("available"):
        for key, name in (("ct", "Tumour centre (CT)"), ("im", "Invasive margin (IM)")):
            part = im.get(key) or {}
            rows.append([f"{name}: area, immune cells",
                         f"{format_figure(part.get('area_mm2'), 'mm²', with_unit=True)}, "
                         f"{format_figure(part.get('n_immune'), 'cells')}"])
    test = (s.get("ripley") or {}).get("global_test") or {}
    if test.get("global_max_deviation_um") is not None:
        rows.append(["Cross-L: largest deviation from random labelling, and the global envelope's",
                     f"{_um(test['global_max_deviation_um'])}, {_um(test.get('global_critical_deviation_um'))}"])
    win = s.get("window") or {}
    if rows and win.get("area_mm2") is not None:
        rows.append(["Study window (image minus exclusions)", format_figure(win["area_mm2"], "mm²", with_unit=True)])
    return rows


# --------------------------------------------------------------------------- methods appendix


def _methods_appendix(pdf, c: _Content) -> None:
    s, card = c.summary, c.card
    pdf.add_page()
    P.heading(pdf, "Methods appendix", 13, need_mm=0)
    image = rec.image_info(s)
    run = [
        ["Case", P.shorten(c.case_label, 400)],
        ["Analysis", f"#{c.record['analysis_id']}" if c.record.get("analysis_id") is not None else "not saved in the case history"],
        ["Analysed at", P.date_text(c.record.get("created_at") or s.get("created_at"))],
        ["Image", _image_text(s)],
        ["Image SHA-256", image["sha256"] or "n/a"],
        ["Pixel size", _mpp_text(s)],
        ["Analysed area", _area_text(s)],
        ["Review", review_text(c.record)],
        ["Computed on", f"{s.get('device') or 'unknown device'}, {format_value(s.get('runtime_s'))} s, "
                        f"{s.get('inference_precision') or 'float32'} precision"],
        ["TILscope version", str(c.record.get("app_version") or s.get("app_version") or core.__version__)],
    ]
    review = s.get("review") if isinstance(s.get("review"), dict) else {}
    if review.get("last_time"):
        who = ", ".join(str(u) for u in review.get("users") or [])
        run.insert(8, ["Review edits", f"{P.date_text(review.get('first_time'))} to {P.date_text(review['last_time'])}"
                                       + (f" by {who}" if who else "")])
    P.heading(pdf, "Image and run", 10.5)
    P.table(pdf, run, (38, 142), header=False, first_column_bold=True)

    P.heading(pdf, "Model", 10.5)
    training = card.get("training_data") if isinstance(card.get("training_data"), dict) else {}
    model = [
        ["Scenario", s.get("scenario_title") or rec.scenario_key(s) or "n/a"],
        ["Model", f"{card.get('name') or 'n/a'}, version {format_value(s.get('weights_version', card.get('version')))}"],
        ["Weights", f"{s.get('weights_file') or card.get('weights_file') or 'n/a'}; SHA-256 "
                    f"{s.get('weights_sha256') or card.get('weights_sha256') or 'n/a'}"],
        ["Trained on", "; ".join(str(training[k]) for k in ("name", "source") if training.get(k)) or
         (str(card.get("training_data")) if isinstance(card.get("training_data"), str) else "not stated in the model card")],
        ["Synthetic training data only", "yes" if s.get("trained_on_synthetic", card.get("trained_on_synthetic")) else "no"],
    ]
    P.table(pdf, model, (38, 142), header=False, first_column_bold=True)
    for title, key in (("Intended use", "intended_use"), ("Limitations", "limitations")):
        pdf.set_font("DejaVu", "B", 9)
        pdf.cell(0, 5, title, new_x="LMARGIN", new_y="NEXT")
        P.bullets(pdf, P.text_list(card.get(key)) or ["not stated in the model card"], 8.2)

    validation = L.validation_rows(card, precision=s.get("inference_precision"))
    P.heading(pdf, "Validation on held-out data (from the model card)", 10.5)
    if validation:
        P.table(pdf, [["Evaluation", "Result"], *[[a[0].upper() + a[1:], b] for a, b in validation]], (80, 100), font_size=8)
    else:
        pdf.multi_cell(0, 4.6, "The model card gives no held-out figures.", new_x="LMARGIN", new_y="NEXT")

    thresholds = L.model_threshold_rows(card)
    if thresholds:
        P.heading(pdf, "Model thresholds", 10.5)
        P.table(pdf, [["Threshold", "Value"], *[[a[0].upper() + a[1:], b] for a, b in thresholds]], (80, 100), font_size=8)

    params = c.spatial.get("params") if isinstance(c.spatial.get("params"), dict) else {}
    P.heading(pdf, "Settings of the spatial statistics", 10.5)
    if params:
        P.table(pdf, [["Setting", "Value"], *[[a[0].upper() + a[1:], b] for a, b in L.parameter_rows(params)]], (110, 70), font_size=8)
    else:
        pdf.multi_cell(0, 4.6, "No spatial statistics were computed for this analysis.", new_x="LMARGIN", new_y="NEXT")
    other = {k: v for k, v in (c.record.get("params") or {}).items() if params.get(k) != v}
    if other:
        P.heading(pdf, "Other analysis settings", 10.5)
        P.table(pdf, [["Setting", "Value"], *[[a[0].upper() + a[1:], b] for a, b in L.parameter_rows(other)]], (110, 70), font_size=8)

    definitions = _definitions(c.spatial)
    if definitions:
        P.heading(pdf, "Definitions", 10.5)
        P.table(pdf, [["Figure", "Definition"], *definitions], (40, 140), font_size=7.8)

    if c.spatial and "available" not in c.spatial:  # statistics saved before they had a schema
        older = [[L.humanise(k), format_value(v, 4)] for k, v in rec.spatial_statistics(c.spatial).items()]
        if older:
            P.heading(pdf, "Statistics saved in an older layout", 10.5)
            P.table(pdf, [["Statistic", "Value"], *older], (110, 70), font_size=8)

    refs = P.text_list(card.get("references"))
    if refs:
        P.heading(pdf, "References", 10.5)
        P.bullets(pdf, refs, 8)
    pdf.ln(2)
    P.banner(pdf)


def _definitions(s: dict) -> list[list[str]]:
    rows = []
    for key, name in (("distances", "Distances"), ("compartments", "Compartments"), ("stromal_til_proxy", "Stromal TILs"),
                      ("invasive_margin", "CT and IM"), ("ripley", "Cross-K and L"), ("cross_g", "Cross-G"),
                      ("morisita_horn", "Morisita-Horn")):
        sec = s.get(key) if isinstance(s.get(key), dict) else {}
        if not sec.get("available"):
            continue
        parts = [sec.get(k) for k in ("definition", "source", "label") if isinstance(sec.get(k), str)]
        for k, prefix in (("edge_correction", "edge correction: "), ("null_model", "null model: ")):
            if isinstance(sec.get(k), str):
                parts.append(prefix + sec[k])
        for part_key in ("ct", "im"):
            if isinstance((sec.get(part_key) or {}).get("definition"), str):
                parts.append(f"{part_key.upper()}: {sec[part_key]['definition']}")
        if parts:
            rows.append([name, "; ".join(parts)])
    til = (s.get("predicted_compartments") or {}).get("stromal_til") or {}
    if isinstance(til.get("definition"), str):
        rows.append(["Stromal TILs (TILs Working Group)", til["definition"] + "; stroma as predicted"])
    return rows
