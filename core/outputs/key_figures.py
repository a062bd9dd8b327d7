"""The key figures of an analysis: one selection, one formatter, for every page and report.

:func:`key_figures` picks the numbers a pathologist reads first from an analysis (counts
and densities per class, immune → tumour distances, compartment densities, CT/IM,
stromal TIL proxy, phenotype call, the cross-L test, co-localisation, distances between
immune classes, corrections), each
with its unit and the threshold or definition that produced it, or the reason it is
missing. :func:`format_figure` writes one value as text. The PDF report
(:mod:`core.outputs.report_pdf`), the tumour-board comparison
(:func:`core.outputs.tumour_board.key_figure_table`), the Cases, Analyze and Review pages
all show these rows, so a figure reads the same wherever it appears.

:func:`format_value` formats any other table value ("every statistic" tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.outputs import records as rec

__all__ = ["KeyFigure", "key_figures", "key_figure_rows", "format_figure", "format_value"]

#: Most rows of distances between immune classes (one per ordered pair: 12 = 4 classes).
#: With more pairs, only those from the two most numerous classes are key figures; the
#: full table is in the statistics (``immune_class_distances``).
MAX_CLASS_DISTANCE_FIGURES = 12


@dataclass(frozen=True)
class KeyFigure:
    """One key figure.

    Attributes
    ----------
    key : str
        Stable identifier, e.g. ``"density.cd3-positive"``, ``"distances.within_radius[20]"``.
    measure : str
        What is measured, e.g. "immune cells within 20 µm of a tumour cell".
    value : float, int, str or None
        In ``unit``; None when it could not be computed (``setting`` says why).
    unit : str
        ``"cells"``, ``"cells/mm²"``, ``"µm"``, ``"mm²"``, ``"fraction"`` (shown as %),
        ``"%"`` or ``""``.
    setting : str
        The threshold or definition behind the value, or why it is missing.
    digits : int, optional
        Decimals for a unitless value (default 2).
    """

    key: str
    measure: str
    value: Any
    unit: str = ""
    setting: str = ""
    digits: int | None = None

    @property
    def value_text(self) -> str:
        """The value with its unit, e.g. ``"20.0 µm"``, ``"50.0 %"``, ``"1,234 cells/mm²"``."""
        return format_figure(self.value, self.unit, digits=self.digits, with_unit=True)

    def row(self) -> dict[str, str]:
        """``{"measure", "value", "setting"}`` as text, for a table."""
        return {"measure": self.measure, "value": self.value_text, "setting": self.setting}


def format_figure(value: Any, unit: str = "", *, digits: int | None = None, with_unit: bool = False) -> str:
    """A key figure's value as text.

    Parameters
    ----------
    value : float, int, str, bool or None
    unit : str
        As :attr:`KeyFigure.unit`. Fractions are written as percent ("9.1 %");
        cells/mm² without decimals, µm with one, mm² with four; counts with thousands
        separators.
    digits : int, optional
        Decimals of a unitless float (default 2).
    with_unit : bool
        Append the unit ("20.0 µm"); a fraction always carries its "%".

    Returns
    -------
    str
        ``"n/a"`` for None or NaN.

    Examples
    --------
    >>> format_figure(1 / 11, "fraction")
    '9.1 %'
    >>> format_figure(1234.5, "cells/mm²", with_unit=True)
    '1,234 cells/mm²'
    """
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return "n/a"
    suffix = f" {unit}" if with_unit and unit and unit != "cells" else ""
    if unit == "fraction":
        return f"{100 * float(value):.1f} %"
    if unit == "cells" or isinstance(value, (int, np.integer)):
        return f"{int(value):,}{suffix}"
    v = float(value)
    if unit == "cells/mm²":
        return f"{v:,.0f}{suffix}"
    if unit == "µm":
        return f"{v:,.1f}{suffix}"
    if unit == "%":
        return f"{v:.1f}{suffix}"
    if unit == "mm²":
        return f"{v:.4f}{suffix}"
    return f"{v:.{2 if digits is None else digits}f}{suffix}"


def format_value(value: Any, digits: int = 3) -> str:
    """Any table value for people: ``None``/NaN → "n/a", floats to about ``digits`` figures."""
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


def _sources(source: Any, spatial: Any) -> tuple[dict | None, dict | None, int | None]:
    """(summary, spatial dict, n_corrections) of what :func:`key_figures` was given."""
    summary = stats = None
    n_corr = None
    if source is not None and hasattr(source, "summary") and not isinstance(source, dict):  # an AnalysisResult
        source = source.summary
    if hasattr(source, "to_dict"):  # SpatialStats
        source = source.to_dict()
    if isinstance(source, dict):
        if "summary" in source:  # a record
            summary, stats, n_corr = source.get("summary") or {}, rec.spatial(source) or None, source.get("n_corrections")
        elif "available" in source:  # spatial statistics (a summary never has this key)
            stats = source
        else:
            summary, stats = source, rec.as_dict(source.get("spatial"))
    if spatial is not None:
        stats = rec.as_dict(spatial)
    return summary, stats, n_corr


def key_figures(source: Any = None, *, spatial: Any = None) -> list[KeyFigure]:
    """Select the key figures of one analysis.

    Parameters
    ----------
    source : AnalysisResult, record dict, summary dict, SpatialStats or spatial dict, optional
        An analysis record (:mod:`core.outputs.records`, recognised by its ``summary``
        key), a summary (:attr:`core.results.AnalysisResult.summary`), a result, or
        spatial statistics alone (a dict with an ``available`` key, e.g. the Review
        page's statistics of the corrected cells).
    spatial : SpatialStats or dict, optional
        Statistics to use instead of those in ``source``.

    Returns
    -------
    list of KeyFigure
        In this order: the cells and, from a summary, count and density per class
        (from statistics alone: cells used, immune and tumour cells, immune density of
        the study window); then, from the statistics, immune → nearest tumour median
        distance, fraction of immune cells within each radius r, immune cells and density
        per region kind, intratumoral and stromal immune densities and their ratio,
        CT and IM immune densities (and the Immunoscore-like score when cut-offs are
        set), the stromal TIL proxy, the immune phenotype, the cross-L global test,
        Morisita-Horn, then, when the cells have at least two immune classes, the median
        distance from each class A to the nearest cell of each other class B (one row per
        ordered pair; with more than :data:`MAX_CLASS_DISTANCE_FIGURES` pairs, only the
        pairs from the two most numerous classes); last the cells corrected by hand. Statistics that could not be
        computed give rows with value None and the reason as setting; without
        statistics, one row says so.
    """
    summary, stats, n_corr = _sources(source, spatial)
    rows: list[KeyFigure] = []
    if summary is not None:
        rows += _summary_figures(summary)
    if stats:
        rows += _spatial_figures(stats, with_counts=summary is None)
    elif summary is not None:
        rows.append(KeyFigure("spatial", "spatial statistics", None, "", "not computed for this analysis"))
    corr = (stats or {}).get("corrections") or {}  # the Review page's statistics carry the log's summary
    if corr.get("n_corrections") is not None:
        rows.append(KeyFigure("corrections", "cells corrected by hand", corr["n_corrections"], "cells", _corr_note(corr)))
    elif n_corr is not None:
        rows.append(KeyFigure("corrections", "cells corrected by hand", n_corr, "cells", "manual review"))
    return rows


def key_figure_rows(source: Any = None, *, spatial: Any = None) -> list[dict[str, str]]:
    """:func:`key_figures` as table rows ``{"measure", "value", "setting"}`` (all str)."""
    return [f.row() for f in key_figures(source, spatial=spatial)]


def _summary_figures(summary: dict) -> list[KeyFigure]:
    counts = rec.counts(summary)
    dens = rec.densities_per_mm2(summary)
    area = summary.get("area_mm2")
    n_cells = summary.get("n_cells", sum(counts.values()) if counts else None)
    place = "tissue (glass excluded)" if summary.get("tissue_area_mm2") is not None else "whole image"
    where = f"{place}, {format_figure(area, 'mm²', with_unit=True)}" if area is not None else place
    rows = [KeyFigure("cells", "cells", n_cells, "cells", where)]
    for cls in dict.fromkeys([*counts, *dens]):
        rows.append(KeyFigure(f"count.{cls}", f"{cls} cells", counts.get(cls), "cells", where))
        rows.append(KeyFigure(f"density.{cls}", f"{cls} density", dens.get(cls), "cells/mm²",
                              where if dens.get(cls) is not None else "mpp unknown: no density"))
    return rows


def _spatial_figures(s: dict, with_counts: bool) -> list[KeyFigure]:
    rows: list[KeyFigure] = []
    add = lambda *a, **k: rows.append(KeyFigure(*a, **k))  # noqa: E731
    if "available" not in s:  # saved before the statistics had a schema: only the full table reads them
        add("spatial", "spatial statistics", None, "", "saved in an older layout: see every statistic")
        return rows
    if not s["available"]:
        if with_counts and (s.get("counts") or {}).get("n_cells") is not None:
            add("cells", "cells", s["counts"]["n_cells"], "cells", "")
        add("spatial", "spatial statistics", None, "", s.get("reason") or "not available")
        return rows
    p = s.get("params") or {}
    if with_counts:
        c = s.get("counts") or {}
        by_role = c.get("by_role") or {}
        excluded = c.get("n_excluded_by_regions") or 0
        add("cells", "cells", c.get("n_cells_used"), "cells",
            f"{excluded} in exclusion regions left out" if excluded else "all cells of the image")
        add("count.immune", "immune cells", by_role.get("immune"), "cells", "")
        add("count.tumour", "tumour cells", by_role.get("tumour"), "cells", "")
        win = s.get("window") or {}
        add("density.immune", "immune density, study window", (c.get("density_per_mm2_in_window") or {}).get("immune"),
            "cells/mm²", f"study window {win['area_mm2']:.4f} mm² (the rectangle studied minus exclusion regions: "
            "glass counts unless excluded, unlike the per-class densities per mm² of tissue)" if "area_mm2" in win else "")

    d = s.get("distances") or {}
    if d.get("available"):
        add("distances.median_um", "immune → nearest tumour cell, median", d["immune_to_nearest_tumour_um"].get("median_um"),
            "µm", f"{d['n_immune']} immune, {d['n_tumour']} tumour cells")
        for r in d["within_radius"]:
            add(f"distances.within_radius[{r['radius_um']:g}]", f"immune cells within {r['radius_um']:g} µm of a tumour cell",
                r["fraction_immune_within"], "fraction",
                f"r = {r['radius_um']:g} µm; {r['n_immune_within']} of {d['n_immune']} immune cells; "
                f"{r['immune_per_tumour_cell_within']:.2f} immune per tumour cell")
    else:
        radii = ", ".join(f"{r:g}" for r in p.get("radii_um") or [])
        add("distances.median_um", "immune → nearest tumour cell, median", None, "µm", d.get("reason", "not available"))
        add("distances.within_radius", f"immune cells within r of a tumour cell (r = {radii} µm)", None, "fraction",
            d.get("reason", "not available"))

    for kind, k in ((s.get("regions") or {}).get("by_kind") or {}).items():
        where = f"{k['n_regions']} region(s), {k['area_mm2']:.4f} mm² (exclusions subtracted)"
        add(f"regions.{kind}.immune", f"immune cells in {kind} regions", k["counts_by_role"].get("immune"), "cells", where)
        add(f"regions.{kind}.immune_density", f"immune density in {kind} regions",
            k["density_per_mm2_by_role"].get("immune"), "cells/mm²", where)

    comp = s.get("compartments") or {}
    why = comp.get("source") or comp.get("reason", "")
    add("compartments.intratumoral", "intratumoral immune density", comp.get("intratumoral_immune_density_per_mm2"),
        "cells/mm²", why)
    add("compartments.stromal", "stromal immune density", comp.get("stromal_immune_density_per_mm2"), "cells/mm²", why)
    ratio = comp.get("ratio_intratumoral_to_stromal")
    add("compartments.ratio", "intratumoral / stromal ratio", ratio, "", "" if ratio is not None else "needs both compartments")

    im = s.get("invasive_margin") or {}
    if im.get("available"):
        add("invasive_margin.ct", "immune density, tumour centre (CT)", im["ct"]["immune_density_per_mm2"], "cells/mm²",
            f"{im['ct']['definition']} ({im['ct']['area_mm2']:.4f} mm²)")
        add("invasive_margin.im", "immune density, invasive margin (IM)", im["im"]["immune_density_per_mm2"], "cells/mm²",
            f"{im['im']['definition']} ({im['im']['area_mm2']:.4f} mm²)")
        score = (im.get("immunoscore_like") or {}).get("score_0_to_2")
        if score is not None:
            cut = im["immunoscore_like"].get("cutoffs_per_mm2") or {}
            add("invasive_margin.immunoscore_like", "Immunoscore-like score (0-2)", score, "",
                f"CT ≥ {cut.get('ct', 0):g}, IM ≥ {cut.get('im', 0):g} cells/mm²; not a validated Immunoscore")
    else:
        reason = im.get("reason", "not available")
        add("invasive_margin.ct", "immune density, tumour centre (CT)", None, "cells/mm²", reason)
        add("invasive_margin.im", "immune density, invasive margin (IM)", None, "cells/mm²", reason)

    til = s.get("stromal_til_proxy") or {}
    if til.get("available"):
        add("stromal_til_proxy", "stromal TILs (computational proxy)", til["percent"], "%",
            f"immune-cell area {til['immune_cell_area_um2']:g} µm² over stromal area")
    wg = (s.get("predicted_compartments") or {}).get("stromal_til") or {}
    if wg:  # the predicted compartments' stroma, by the TILs Working Group's definition (core.pipeline)
        add("predicted_compartments.stromal_til", "stromal TILs (TILs Working Group definition)",
            wg.get("percent") if wg.get("available") else None, "%",
            f"predicted stroma covered by immune cells ({wg.get('immune_cell_area_um2', 0):g} µm² each, union) / "
            "stromal area; necrosis and glass excluded" if wg.get("available") else wg.get("reason", "not available"))

    ph = s.get("phenotype") or {}
    add("phenotype", "immune phenotype", ph.get("call"), "", ph.get("rule", "") if ph.get("available") else ph.get("reason", ""))

    test = (s.get("ripley") or {}).get("global_test") or {}
    if test.get("global_p_value") is not None:
        n_sim = (s.get("ripley") or {}).get("n_simulations")
        sub = (s.get("ripley") or {}).get("subsample") or {}
        where = (f" on a random subsample of {sub.get('n_tumour_used')} tumour and {sub.get('n_immune_used')} immune "
                 "cells" if sub else "")
        add("ripley.global_p_value", "cross-L global envelope test, p", test["global_p_value"], "",
            (f"{n_sim} random relabellings of tumour/immune labels" if n_sim else "random relabelling") + where,
            digits=3)
    mh = s.get("morisita_horn") or {}
    if mh.get("available") and mh.get("index") is not None:
        add("morisita_horn", "immune-tumour co-localisation (Morisita-Horn)", mh["index"], "",
            f"{mh['grid_cell_um']:g} µm squares; 0 = apart, 1 = same distribution", digits=2)
    rows += _class_distance_figures(s.get("immune_class_distances") or {})
    return rows


def _class_distance_figures(cd: dict) -> list[KeyFigure]:
    """One row per ordered pair of immune classes: median distance A → nearest B (none when unavailable)."""
    if not cd.get("available") or not cd.get("pairs"):
        return []
    pairs = cd["pairs"]
    note = ""
    if len(pairs) > MAX_CLASS_DISTANCE_FIGURES:
        n_by = cd.get("n_by_class") or {}
        top = sorted(n_by, key=lambda c: (-n_by[c], c))[:2]
        pairs = [p for p in pairs if p["from"] in top]
        note = (f"; key figures only for the pairs from the 2 most numerous classes ({', '.join(top)}): "
                f"the full table of {len(cd['pairs'])} pairs is in the statistics")
    rows = []
    for p in pairs:
        fw = p.get("fraction_within") or {}
        shares = " / ".join("n/a" if v is None else f"{100 * float(v):.1f}" for v in fw.values())
        within = f"share within {' / '.join(fw)} µm: {shares} %; " if fw else ""
        rows.append(KeyFigure(
            f"immune_class_distances.median_um[{p['from']} → {p['to']}]", f"{p['from']} → nearest {p['to']}, median",
            p.get("median_um"), "µm", f"{within}{p['n_from']:,} {p['from']} and {p['n_to']:,} {p['to']} cells{note}"))
    return rows


def _corr_note(corr: dict) -> str:
    return f"{corr.get('n_added', 0)} added, {corr.get('n_deleted', 0)} deleted, {corr.get('n_relabelled', 0)} relabelled"


def class_distance_table(spatial: Any) -> list[dict[str, Any]]:
    """Every ordered pair of immune phenotypes as a table row, for the pages (all pairs, not only the key figures').

    Parameters
    ----------
    spatial : dict (the statistics of :func:`core.spatial.compute_spatial_stats`), SpatialStats or None

    Returns
    -------
    list of dict: ``from``, ``to``, ``cells from``, ``cells to``, ``median (µm)``,
    ``IQR (µm)`` and one ``within r µm (%)`` column per radius; empty when the section is absent
    or not available (fewer than two immune phenotypes, no mpp).
    """
    s = spatial.to_dict() if hasattr(spatial, "to_dict") else (spatial or {})
    cd = s.get("immune_class_distances") or {}
    if not cd.get("available"):
        return []
    rows = []
    for p in cd.get("pairs") or []:
        row = {"from": p["from"], "to": p["to"], "cells from": p["n_from"], "cells to": p["n_to"],
               "median (µm)": None if p.get("median_um") is None else round(float(p["median_um"]), 1),
               "IQR (µm)": (f"{p['q25_um']:.1f} – {p['q75_um']:.1f}"
                            if p.get("q25_um") is not None and p.get("q75_um") is not None else "n/a")}
        for r, share in (p.get("fraction_within") or {}).items():
            row[f"within {r} µm (%)"] = None if share is None else round(100.0 * float(share), 1)
        rows.append(row)
    return rows
