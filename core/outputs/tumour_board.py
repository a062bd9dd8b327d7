"""The tumour-board comparison of several saved analyses: tables, charts and a PDF.

:func:`key_figure_table` puts the key figures (:func:`core.outputs.key_figures.key_figures`)
of each analysis side by side, the same rows the Cases page and the PDF report show;
:func:`comparison_table` holds every number saved with the analyses. Both read analysis
records (:mod:`core.outputs.records`).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError
from core.outputs import pdf as P
from core.outputs import records as rec
from core.outputs.figures import class_palette, figure_png, new_figure
from core.outputs.key_figures import format_value, key_figures

__all__ = ["comparison_table", "key_figure_table", "comparison_numeric", "comparison_figures_png",
           "build_comparison_pdf", "PROVENANCE_ROWS"]

#: Rows of :func:`comparison_table` that say which analysis a column is; the key-figure table starts with them.
PROVENANCE_ROWS = ("case", "date", "image", "scenario", "mpp (µm/px)", "area (mm²)")
_THRESHOLD_KEYS = ("thresholds", "params", "parameters")


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
        fig = new_figure(9.5, 3.4)
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
        out.append(("Density per class", figure_png(fig)))
    spatial = numeric["spatial"]
    if not spatial.empty:
        # Statistics have different scales: one small panel each.
        ncols = min(4, len(spatial.index))
        nrows = math.ceil(len(spatial.index) / ncols)
        fig = new_figure(9.5, 2.2 * nrows + 0.4)
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
        out.append(("Spatial statistics", figure_png(fig)))
    return out


def _side_by_side(pdf, table: pd.DataFrame, title: str, per_table: int = 5) -> None:
    usable = pdf.w - 30
    for start in range(0, len(table.columns), per_table):
        cols = list(table.columns[start:start + per_table])
        first = 75.0
        rest = (usable - first) / len(cols)
        rows = [["Measure", *[f"{start + j + 1}. {c}" for j, c in enumerate(cols)]]]
        for idx in table.index:
            rows.append([str(idx), *[v if isinstance(v := table.at[idx, c], str) else format_value(v, 4) for c in cols]])
        P.heading(pdf, title if start == 0 else f"{title} (continued, analyses {start + 1}-{start + len(cols)})")
        P.table(pdf, rows, (first, *([rest] * len(cols))), font_size=8)


def build_comparison_pdf(records: list[dict[str, Any]], path: str | Path | None = None) -> bytes:
    """Write the tumour-board comparison of several analyses as a PDF (A4 landscape).

    Parameters
    ----------
    records : list of dict
        Analysis records (:mod:`core.outputs.records`), one per compared analysis.
    path : str or Path, optional
        Also write the PDF there.

    Returns
    -------
    bytes
        The PDF: the key figures side by side (:func:`key_figure_table`), every
        statistic (:func:`comparison_table`), five analyses per table, charts of
        densities and spatial statistics, and the research-use statement.

    Raises
    ------
    InputError
        If ``records`` is empty.
    """
    if not records:
        raise InputError("no analyses to compare: pick at least one analysis")
    now = datetime.now(timezone.utc)
    pdf = P.new_pdf("L", now)
    pdf.set_title("TILscope tumour-board comparison")
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    pdf.cell(0, 9, "TILscope tumour-board comparison", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 9)
    pdf.cell(0, 5, f"{len(records)} analyses · generated {P.date_text(now.isoformat())}", new_x="LMARGIN", new_y="NEXT")
    P.banner(pdf)
    pdf.set_font("DejaVu", "", 8.5)
    for i, name in enumerate(_labels(records)):
        pdf.cell(0, 4.6, f"{i + 1}. {name}", new_x="LMARGIN", new_y="NEXT")
    _side_by_side(pdf, key_figure_table(records), "Key figures")
    _side_by_side(pdf, comparison_table(records), "Every statistic")
    figures = comparison_figures_png(records)
    if figures:
        pdf.add_page()
        P.heading(pdf, "Charts", need_mm=0)
        for _, png in figures:
            P.image(pdf, png, pdf.w - 40, 78)
    return P.pdf_bytes(pdf, path)
