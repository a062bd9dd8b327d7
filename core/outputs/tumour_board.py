"""The tumour-board comparison of several saved analyses: tables, charts and a PDF.

:func:`board_table` gives one row per analysis with the figures a board compares (immune
density, intratumoral and stromal density, distance to the nearest tumour cell, stromal
TILs, phenotype, warnings); :func:`key_figure_table` puts every key figure
(:func:`core.outputs.key_figures.key_figures`) of each analysis side by side, the same rows
the Cases page and the PDF report show; :func:`comparison_table` holds every number saved
with the analyses (the page's "Every statistic"). :func:`comparison_figures_png` draws the
charts that compare the analyses, and :func:`build_comparison_pdf` puts it all in a PDF
with each analysis's overlay thumbnail. All read analysis records (:mod:`core.outputs.records`).
"""

from __future__ import annotations

import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from core.errors import InputError
from core.outputs import pdf as P
from core.outputs import records as rec
from core.outputs.figures import DEFAULT_COLORS, compartment_densities, figure_png, new_figure, thumbnail_png
from core.outputs.key_figures import KeyFigure, format_figure, format_value, key_figures
from core.outputs.report_pdf import outside_validated_use, report_warnings, review_text

__all__ = ["comparison_table", "key_figure_table", "board_table", "comparison_numeric", "comparison_figures_png",
           "build_comparison_pdf", "PROVENANCE_ROWS", "BOARD_COLUMNS"]

#: Rows of :func:`comparison_table` that say which analysis a column is; the key-figure table starts with them.
PROVENANCE_ROWS = ("case", "date", "image", "scenario", "mpp (µm/px)", "area (mm²)")


def _labels(records: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in records:
        name = rec.label(r)
        while name in names:
            name += " (2)"
        names.append(name)
    return names


def comparison_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Every number saved with the analyses, side by side.

    Rows (index): :data:`PROVENANCE_ROWS`, counts and densities per class, per-region
    densities, every scalar spatial statistic (proximity figures, phenotype calls) and
    the corrections count. Columns: one per record, named by :func:`core.outputs.records.label`.
    Values are numbers or strings; missing ones ``None``.
    """
    columns: dict[str, dict[str, Any]] = {}
    for name, r in zip(_labels(records), records):
        summary = r.get("summary") or {}
        col: dict[str, Any] = {
            "case": r.get("case_label"),
            "date": P.date_text(r.get("created_at")),
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
        columns[name] = col
    table = pd.DataFrame(columns)
    return table.astype(object).where(table.notna(), None)


def key_figure_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The key figures of each analysis side by side, as text.

    Returns
    -------
    pandas.DataFrame
        Index: :data:`PROVENANCE_ROWS`, then the measures of
        :func:`core.outputs.key_figures.key_figures` in the order they first appear;
        columns as :func:`comparison_table`; cells are the formatted values with their
        units ("n/a" where an analysis lacks the figure). A ``setting`` column is not
        included: thresholds can differ between analyses (see the PDF report of each).
    """
    names = _labels(records)
    provenance = comparison_table(records).loc[list(PROVENANCE_ROWS)]
    rows: dict[str, dict[str, str]] = {
        str(idx): {n: format_value(provenance.at[idx, n], 4) if not isinstance(provenance.at[idx, n], str)
                   else provenance.at[idx, n] for n in names}
        for idx in provenance.index
    }
    order = list(rows)
    for name, r in zip(names, records):
        at = len(PROVENANCE_ROWS) - 1
        for f in key_figures(r):
            label = f.measure if f.measure not in PROVENANCE_ROWS else f"{f.measure} ({f.key})"
            if label in rows:
                at = max(at, order.index(label))
            else:  # a figure the analyses before lacked goes after this analysis's previous one
                at += 1
                order.insert(at, label)
                rows[label] = {}
            rows[label][name] = f.value_text
    table = pd.DataFrame.from_dict(rows, orient="index", columns=names).loc[order]
    return table.fillna("n/a")


def _numeric_figures(records: list[dict[str, Any]]) -> pd.DataFrame:
    """(measures × analyses) float DataFrame of the numeric key figures other than counts."""
    names = _labels(records)
    rows: dict[str, dict[str, float]] = {}
    for name, r in zip(names, records):
        for f in key_figures(r):
            if f.key in ("cells", "corrections") or f.key.startswith("count.") or f.unit == "cells":
                continue
            if isinstance(f.value, (int, float)) and not isinstance(f.value, bool) and math.isfinite(float(f.value)):
                label = f"{f.measure} ({'%' if f.unit == 'fraction' else f.unit})" if f.unit else f.measure
                rows.setdefault(label, {})[name] = 100 * float(f.value) if f.unit == "fraction" else float(f.value)
    return pd.DataFrame.from_dict(rows, orient="index", columns=names, dtype=float)


def comparison_numeric(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The numbers of the comparison, ready to chart.

    Returns
    -------
    dict
        ``"density"``: (classes × analyses) float DataFrame of densities in cells/mm²
        over the analysed area (empty if no analysis had an mpp); ``"spatial"``:
        (key figures × analyses) float DataFrame of the numeric key figures other than
        counts and densities per class (distances in µm, densities in cells/mm², shares
        in %), indexed by their measure with its unit, at most 12 rows. Missing values
        are NaN.
    """
    table = comparison_table(records)
    prefix = "density (cells/mm²): "
    rows = []
    for idx in table.index:
        name = str(idx)
        if not name.startswith(prefix) or " in " in name[len(prefix):]:
            continue
        values = list(table.loc[idx])
        if all((isinstance(v, (int, float)) and not isinstance(v, bool)) or v is None for v in values):
            rows.append((name[len(prefix):], [np.nan if v is None else float(v) for v in values]))
    density = pd.DataFrame([v for _, v in rows], index=[n for n, _ in rows], columns=list(table.columns), dtype=float)
    spatial = _numeric_figures(records)
    spatial = spatial.loc[[i for i in spatial.index if " density (" not in i or "immune" in i]]
    return {"density": density.dropna(how="all"), "spatial": spatial.dropna(how="all").iloc[:12]}


# --------------------------------------------------------------------------- one row per analysis

#: Columns of :func:`board_table` after the case: (header, what it holds).
BOARD_COLUMNS = (
    ("Immune cells/mm²", "immune-cell density over the analysed area"),
    ("Intratumoral · stromal (cells/mm²)", "immune-cell density in the tumour and in the stroma compartment"),
    ("Immune → tumour, median", "median distance from an immune cell to the nearest tumour cell"),
    ("Within 20 µm of tumour", "share of immune cells within r of a tumour cell (r = 20 µm when measured)"),
    ("Stromal TILs", "computational stromal TIL proxy"),
    ("Phenotype", "immune phenotype call"),
)


def _figure(figures: list[KeyFigure], key: str) -> KeyFigure | None:
    return next((f for f in figures if f.key == key), None)


def _immune_density(record: dict[str, Any]) -> float | None:
    summary = record.get("summary") or {}
    value = (summary.get("density_by_role_per_mm2") or {}).get("immune")
    if value is None:
        value = ((rec.spatial(record).get("counts") or {}).get("density_per_mm2_in_window") or {}).get("immune")
    return value


def _within(figures: list[KeyFigure]) -> tuple[str, str]:
    within = [f for f in figures if f.key.startswith("distances.within_radius[") and f.value is not None]
    if not within:
        return "Within r of tumour", "n/a"
    pick = next((f for f in within if f.key == "distances.within_radius[20]"), within[0])
    r = pick.key.split("[", 1)[1].rstrip("]")
    return f"Within {r} µm of tumour", pick.value_text


def board_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per analysis with the figures a tumour board compares, as text.

    Returns
    -------
    pandas.DataFrame
        Index: the analyses numbered as everywhere on the board ("1. case · #id · image").
        Columns: ``"Case"`` (case, image, scenario, date, review), the headers of
        :data:`BOARD_COLUMNS` (values with units; "n/a" with no value), ``"Cells per
        class"``, ``"Outside the validated use"`` ("" when within it) and ``"Warnings"``
        (how many).
    """
    rows = []
    for i, (name, r) in enumerate(zip(_labels(records), records)):
        s = r.get("summary") or {}
        figs = key_figures(r)
        fig = lambda key: _figure(figs, key)  # noqa: E731
        intra, strom = fig("compartments.intratumoral"), fig("compartments.stromal")
        median, til, pheno = fig("distances.median_um"), fig("stromal_til_proxy"), fig("phenotype")
        within_head, within_value = _within(figs)
        dens = rec.densities_per_mm2(s)
        cnt = rec.counts(s)
        classes = "; ".join(f"{c} {format_figure(cnt.get(c), 'cells')}"
                            + (f" ({format_figure(dens[c], 'cells/mm²', with_unit=True)})" if dens.get(c) is not None else "")
                            for c in dict.fromkeys([*cnt, *dens]))
        case = "\n".join(x for x in (
            P.shorten(r.get("case_label") or "no case label", 60),
            P.shorten(rec.image_info(s)["name"] or "unnamed image", 50),
            P.shorten(s.get("scenario_title") or rec.scenario_key(s) or "", 60),
            f"analysed {P.date_text(r.get('created_at') or s.get('created_at'))}",
            review_text(r).split(":")[0],
        ) if x)
        rows.append({
            "Case": case,
            BOARD_COLUMNS[0][0]: format_figure(_immune_density(r), "cells/mm²"),
            BOARD_COLUMNS[1][0]: f"{intra.value_text if intra else 'n/a'} · {strom.value_text if strom else 'n/a'}".replace(" cells/mm²", ""),
            BOARD_COLUMNS[2][0]: median.value_text if median else "n/a",
            BOARD_COLUMNS[3][0]: within_value,
            "_within_header": within_head,
            BOARD_COLUMNS[4][0]: til.value_text if til else "n/a",
            BOARD_COLUMNS[5][0]: pheno.value_text if pheno else "n/a",
            "Cells per class": classes,
            "Outside the validated use": "; ".join(outside_validated_use(s)),
            "Warnings": len(report_warnings(r)),
        })
    table = pd.DataFrame(rows, index=[f"{i + 1}. {n}" for i, n in enumerate(_labels(records))])
    headers = set(table.pop("_within_header")) if len(table) else set()
    if len(headers) == 1 and (head := headers.pop()) != BOARD_COLUMNS[3][0]:
        table = table.rename(columns={BOARD_COLUMNS[3][0]: head})
    return table


# --------------------------------------------------------------------------- charts


def _case_colors(n: int) -> list[str]:
    return [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(n)]


def _grouped_bars(ax, frame: pd.DataFrame, colors: list[str], unit: str) -> None:
    n = len(frame.columns)
    width = 0.8 / max(n, 1)
    x = np.arange(len(frame.index))
    for i, col in enumerate(frame.columns):
        values = frame[col].to_numpy(dtype=float)
        bars = ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(values), width, color=colors[i], label=str(col))
        for bar, v in zip(bars, values):
            label = "n/a" if np.isnan(v) else f"{v:,.0f}"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, 0 if np.isnan(v) else v), ha="center", va="bottom",
                        fontsize=5.5, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, list(frame.index), fontsize=7)
    ax.set_ylabel(unit, fontsize=7)
    ax.tick_params(axis="y", labelsize=6.5)
    ax.grid(axis="y", alpha=0.3)


def comparison_figures_png(records: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Charts that compare the analyses; every analysis is drawn in the same colour and number throughout.

    Returns
    -------
    list of (title, png bytes)
        Each only when at least one analysis has its data: immune-cell density by
        compartment (whole area, intratumoral, stromal, drawn regions, CT, IM; cells/mm²),
        the share of immune cells within r of a tumour cell against r (µm) with the
        radii of the key figures, and the density of each cell role (immune, tumour,
        stroma, other; cells/mm²).
    """
    names = [f"{i + 1}. {P.shorten(r.get('case_label') or 'no case label', 28, note=False)}" for i, r in enumerate(records)]
    names = [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]
    colors = _case_colors(len(records))
    out: list[tuple[str, bytes]] = []

    comp: dict[str, dict[str, float]] = {}
    for name, r in zip(names, records):
        for label, value, _ in compartment_densities(r):
            comp.setdefault(label.replace("\n", " "), {})[name] = value
    if comp:
        frame = pd.DataFrame.from_dict(comp, orient="index", columns=names, dtype=float)
        fig = new_figure(10.5, 3.0)
        ax = fig.add_subplot()
        _grouped_bars(ax, frame, colors, "immune cells/mm²")
        fig.legend(fontsize=7, loc="outside lower center", ncols=min(len(names), 4), frameon=False)
        out.append(("Immune-cell density by compartment", figure_png(fig)))

    curves = []
    for name, color, r in zip(names, colors, records):
        d = rec.spatial(r).get("distances") or {}
        ecdf = d.get("ecdf") or {}
        if d.get("available") and ecdf.get("radius_um"):
            curves.append((name, color, ecdf, [row["radius_um"] for row in d.get("within_radius") or []]))
    if curves:
        fig = new_figure(10.5, 3.0)
        ax = fig.add_subplot()
        for name, color, ecdf, _ in curves:
            ax.step(ecdf["radius_um"], 100 * np.asarray(ecdf["fraction"], dtype=float), where="post", color=color, label=name)
        for radius in sorted({r for *_, radii in curves for r in radii}):
            ax.axvline(radius, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("distance r to the nearest tumour cell (µm); dotted: the radii of the key figures", fontsize=7)
        ax.set_ylabel("immune cells within r (%)", fontsize=7)
        ax.set_ylim(0, 102)
        ax.tick_params(labelsize=6.5)
        ax.grid(alpha=0.3)
        fig.legend(fontsize=7, loc="outside lower center", ncols=min(len(names), 4), frameon=False)
        out.append(("Share of immune cells within r of a tumour cell", figure_png(fig)))

    roles: dict[str, dict[str, float]] = {}
    for name, r in zip(names, records):
        for role, value in ((r.get("summary") or {}).get("density_by_role_per_mm2") or {}).items():
            if value is not None:
                roles.setdefault(str(role), {})[name] = float(value)
    if roles:
        frame = pd.DataFrame.from_dict(roles, orient="index", columns=names, dtype=float)
        frame = frame.loc[[r for r in frame.index if frame.loc[r].fillna(0).any()]]
        if not frame.empty:
            fig = new_figure(10.5, 3.0)
            ax = fig.add_subplot()
            _grouped_bars(ax, frame, colors, "cells/mm²")
            fig.legend(fontsize=7, loc="outside lower center", ncols=min(len(names), 4), frameon=False)
            out.append(("Density of each cell role", figure_png(fig)))
    return out


# --------------------------------------------------------------------------- PDF


def _side_by_side(pdf, table: pd.DataFrame, title: str, per_table: int = 5) -> None:
    usable = pdf.w - pdf.l_margin - pdf.r_margin
    for start in range(0, len(table.columns), per_table):
        cols = list(table.columns[start:start + per_table])
        first = 75.0
        rest = (usable - first) / len(cols)
        rows = [["Key figure", *[f"{start + j + 1}. {P.shorten(c, 50)}" for j, c in enumerate(cols)]]]
        for idx in table.index:
            rows.append([str(idx)[:1].upper() + str(idx)[1:], *[P.shorten(v, 200) if isinstance(v := table.at[idx, c], str) else format_value(v, 4)
                                     for c in cols]])
        P.heading(pdf, title if start == 0 else f"{title} (continued, analyses {start + 1}-{start + len(cols)})")
        P.table(pdf, rows, (first, *([rest] * len(cols))), font_size=7.5)


def _placeholder_png() -> bytes:
    from core.outputs.figures import png_bytes

    return png_bytes(np.full((90, 120, 3), 235, np.uint8))


def _board_rows(pdf, records: list[dict[str, Any]], overlays: Sequence[bytes | None]) -> list[str]:
    """The table of one row per analysis; returns the warnings in full, numbered as the rows cite them."""
    from fpdf.fonts import FontFace

    table = board_table(records)
    headers = [c for c in table.columns if c not in ("Cells per class", "Outside the validated use", "Warnings")]
    all_warnings: list[str] = []
    widths = (7, 38, 52, *([21] * (len(headers) - 1)), 49)
    pdf.set_font("DejaVu", "", 7.2)
    red = FontFace(color=(150, 30, 20), emphasis="BOLD")
    with pdf.table(col_widths=widths, width=pdf.w - pdf.l_margin - pdf.r_margin, line_height=3.5, padding=1,
                   text_align="LEFT", v_align="TOP", first_row_as_headings=True,
                   headings_style=FontFace(emphasis="BOLD", fill_color=(230, 236, 245)),
                   cell_fill_color=(246, 247, 249), cell_fill_mode="ROWS") as t:
        head = t.row()
        for text in ("#", "Image with detections", *headers, "Warnings"):
            head.cell(text)
        for i, (r, (_, row)) in enumerate(zip(records, table.iterrows())):
            cells = t.row()
            cells.cell(str(i + 1), style=FontFace(emphasis="BOLD"))
            png = overlays[i] if i < len(overlays) else None
            thumb = None
            if png:
                try:
                    thumb = thumbnail_png(png, 400)
                except (OSError, ValueError):  # a stored file that is not an image
                    thumb = None
            if thumb:
                cells.cell(img=io.BytesIO(thumb), img_fill_width=True)
            else:
                cells.cell("no overlay image saved")
            cells.cell(f"{row['Case']}\n{row['Cells per class']}")
            for h in headers[1:]:
                cells.cell(str(row[h]).replace(" ", "\u00a0") if len(str(row[h])) < 16 else str(row[h]))
            numbers = []
            for w in report_warnings(r):
                if w not in all_warnings:
                    all_warnings.append(w)
                numbers.append(f"W{all_warnings.index(w) + 1}")
            text = f"{len(numbers)} warning(s): {', '.join(numbers)}" if numbers else "no warnings"
            if row["Outside the validated use"]:
                cells.cell(f"Outside the validated use: {row['Outside the validated use']}\n{text}", style=red)
            else:
                cells.cell(text)
    pdf.ln(1)
    return all_warnings


def build_comparison_pdf(records: list[dict[str, Any]], path: str | Path | None = None,
                         overlays: Sequence[bytes | None] | None = None) -> bytes:
    """Write the tumour-board comparison of several analyses as a PDF (A4 landscape).

    Parameters
    ----------
    records : list of dict
        Analysis records (:mod:`core.outputs.records`), one per compared analysis, in the
        order they are numbered.
    path : str or Path, optional
        Also write the PDF there.
    overlays : sequence of bytes or None, optional
        ``overlay.png`` of each analysis (same order as ``records``; None where there is
        none), drawn as a thumbnail in its row.

    Returns
    -------
    bytes
        The PDF: the research-use statement; one row per analysis (:func:`board_table`)
        with its overlay thumbnail, case, cells per class, the compared figures and
        its warnings ("Outside the validated use" in red); the warnings in full; the
        charts that compare the analyses (:func:`comparison_figures_png`); every key
        figure side by side (:func:`key_figure_table`), five analyses per table.

    Raises
    ------
    InputError
        If ``records`` is empty.
    """
    if not records:
        raise InputError("no analyses to compare: pick at least one analysis")
    overlays = list(overlays or [])
    now = datetime.now(timezone.utc)
    pdf = P.new_pdf("L", now)
    pdf.set_title("TILscope tumour-board comparison")
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 15)
    pdf.cell(0, 8, "TILscope tumour-board comparison", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 9)
    pdf.cell(0, 5, f"{len(records)} analyses · generated {P.date_text(now.isoformat())}", new_x="LMARGIN", new_y="NEXT")
    P.banner(pdf)
    warnings = _board_rows(pdf, records, overlays)
    if warnings:
        P.heading(pdf, "Warnings in full", 10.5, need_mm=12)
        P.bullets(pdf, [f"W{i + 1}. {w}" for i, w in enumerate(warnings)], 7.5)
    figures = comparison_figures_png(records)
    if figures:
        pdf.add_page()
        P.heading(pdf, "Charts comparing the analyses", 13, need_mm=0)
        for title, png in figures:
            P.heading(pdf, title, 10, need_mm=P.image_size_mm(png, pdf.w - 30, 44)[1] + 2)
            P.image(pdf, png, pdf.w - 30, 44)
    pdf.add_page()
    _side_by_side(pdf, key_figure_table(records), "Every key figure side by side")
    return P.pdf_bytes(pdf, path)
