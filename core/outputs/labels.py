"""Words for people: labels for the settings, thresholds and validation figures the reports print.

The reports (:mod:`core.outputs.report_pdf`, :mod:`core.outputs.tumour_board`) never print
a raw key such as ``distances.within_radius[10 µm].immune_per_tumour_cell``. The analysis
figures come with their own words from :func:`core.outputs.key_figures.key_figures`; this
module gives words to the rest:

- :func:`figure_meaning`: what a key figure means, in one plain sentence;
- :func:`parameter_rows`: the spatial-statistics settings (:class:`core.spatial.SpatialParams`)
  and other analysis parameters, with units;
- :func:`model_threshold_rows`: the thresholds in a model card;
- :func:`validation_rows`: a model card's own held-out figures (not the published ones,
  not the tuning ones), one row per evaluation;
- :func:`humanise`: the fallback for a key no table knows ("nms_box_um" → "nms box (µm)").

Nothing here names a scenario: labels are keyed by the names of settings and metrics.
"""

from __future__ import annotations

import math
import re
from typing import Any

from core.outputs.key_figures import format_value

__all__ = ["humanise", "figure_meaning", "parameter_rows", "model_threshold_rows", "validation_rows",
           "PARAMETER_LABELS", "THRESHOLD_LABELS", "METRIC_LABELS", "SOURCE_LABELS"]

#: Settings of the spatial statistics (:class:`core.spatial.SpatialParams`): key → (label, unit).
PARAMETER_LABELS: dict[str, tuple[str, str]] = {
    "radii_um": ("distances r for 'immune cells within r of a tumour cell'", "µm"),
    "margin_half_width_um": ("invasive margin: half-width of the band around the tumour border", "µm"),
    "ripley_radii_um": ("cross-K, cross-L and cross-G evaluated at r", "µm"),
    "class_distance_radii_um": ("immune phenotypes: share of cells with a cell of another phenotype within r", "µm"),
    "n_simulations": ("random relabellings of tumour/immune labels for the envelopes", ""),
    "envelope_alpha": ("level of the global envelope test (α)", ""),
    "grid_cell_um": ("side of the grid squares (compartments without regions, Morisita-Horn)", "µm"),
    "immune_cell_area_um2": ("area of one immune cell (stromal TIL proxy)", "µm²"),
    "compartment_tumour_fraction": ("a grid square is tumour when tumour cells are at least this share of its "
                                    "non-immune cells", ""),
    "inflamed_min_intratumoral_per_mm2": ("phenotype 'inflamed' from an intratumoral immune density of", "cells/mm²"),
    "excluded_min_stromal_per_mm2": ("phenotype 'excluded' (when not inflamed) from a stromal immune density of",
                                     "cells/mm²"),
    "immunoscore_cutoffs_per_mm2": ("Immunoscore-like cut-offs (tumour centre, invasive margin)", "cells/mm²"),
    "histogram_bin_um": ("distance histogram: bin width", "µm"),
    "histogram_max_um": ("distance histogram: longest distance binned", "µm"),
    "window_um": ("study window (x from, y from, x to, y to)", "µm"),
    "min_probability": ("minimum cell probability", ""),
    "seed": ("random seed", ""),
}

#: Thresholds in a model card: key → (label, unit).
THRESHOLD_LABELS: dict[str, tuple[str, str]] = {
    "patch": ("patch classifier: probability threshold", ""),
    "detection": ("detection: probability threshold", ""),
    "nms_box_um": ("non-maximum suppression: box side", "µm"),
    "nms_iou": ("non-maximum suppression: largest overlap kept (IoU)", ""),
    "nms_radius_um": ("non-maximum suppression: radius (no two cells closer)", "µm"),
    "mask_threshold": ("immune-cell mask: threshold", ""),
    "min_area_px": ("smallest cell kept (area)", "px"),
    "min_distance_px": ("least distance between two cells", "px"),
    "min_area_um2": ("smallest nucleus kept (area)", "µm²"),
    "peak_window_um": ("window for local maxima (one cell per window)", "µm"),
    "peak_dilation_um": ("dilation of detected peaks", "µm"),
    "class_window_um": ("window over which a cell's class is read", "µm"),
    "tuned_on": ("tuned on", ""),
}

#: Validation measures: key → label (a fraction is printed as %).
METRIC_LABELS: dict[str, str] = {
    "precision": "precision",
    "recall": "recall (sensitivity)",
    "f1": "F1",
    "accuracy": "accuracy",
    "detection_f1": "detection F1",
    "detection_recall": "detection recall",
    "classification_weighted_f1": "class F1 (weighted)",
    "weighted_f1": "class F1 (weighted)",
    "inflammatory_f1": "immune-cell F1",
    "immune_f1": "immune-cell F1",
    "rgb_psnr_gain_db": "denoising gain, PSNR (dB)",
    "mask_psnr_db": "immune-cell mask PSNR (dB)",
}

#: Names of evaluation sets that do not read well from their keys.
SOURCE_LABELS: dict[str, str] = {
    "crc": "colorectal 20x, the training laboratory (CRCHistoPhenotypes)",
    "brca-m2c": "breast, TCGA, many laboratories (BRCA-M2C)",
    "consep": "colorectal 40x, another laboratory (CoNSeP)",
}

_TOKENS = {"um": "µm", "um2": "µm²", "mm2": "mm²", "f1": "F1", "psnr": "PSNR", "db": "dB", "rgb": "RGB",
           "iou": "IoU", "heldout": "held-out", "nms": "NMS", "ct": "CT", "im": "IM", "til": "TIL", "px": "px", "mpp": "mpp"}
_UNIT_SUFFIXES = (("_per_mm2", "cells/mm²"), ("_um2", "µm²"), ("_um", "µm"), ("_mm2", "mm²"), ("_px", "px"),
                  ("_db", "dB"), ("_s", "s"))
#: Metric subtrees that are not this model's own held-out figures at its shipped settings (regular expressions).
_NOT_OWN = ("published", "tune", "reproduce", "history", "ci95", "bootstrap", "sweep", "searched", "paper_test",
            "paper_layout", "restained", "mean_over_sources", r"_at_0\.5$", "per_class")


def humanise(key: str) -> str:
    """A key as words, its unit in brackets: ``"nms_box_um"`` → ``"NMS box (µm)"``, ``"a.b_c"`` → ``"a · b c"``.

    Parameters
    ----------
    key : str
        A dotted key path; only its words are kept (no dots, brackets or underscores).

    Returns
    -------
    str
    """
    parts = []
    for part in str(key).split("."):
        unit = ""
        for suffix, name in _UNIT_SUFFIXES:
            if part.endswith(suffix) and len(part) > len(suffix):
                part, unit = part[: -len(suffix)], name
                break
        words = " ".join(_TOKENS.get(w.lower(), w) for w in re.split(r"[_\s]+", part) if w)
        words = re.sub(r"[\[\]{}]", "", words)
        parts.append(f"{words} ({unit})" if unit else words)
    return " · ".join(p for p in parts if p)


#: Plain-language meaning of a key figure, by its key (:attr:`core.outputs.key_figures.KeyFigure.key`) or prefix.
_MEANINGS: tuple[tuple[str, str], ...] = (
    ("cells", "All cells detected and classified."),
    ("count.", "Cells of this class."),
    ("density.", "Cells of this class per mm² of the analysed area."),
    ("distances.median_um", "Half of the immune cells lie closer than this to a tumour cell."),
    ("distances.within_radius", "Share of immune cells close enough to a tumour cell to touch it or act on it."),
    ("regions.", "In the regions drawn on the image."),
    ("compartments.intratumoral", "Immune cells among the tumour cells (inside tumour nests), per mm² of tumour."),
    ("compartments.stromal", "Immune cells in the stroma around the tumour, per mm² of stroma."),
    ("compartments.ratio", "Below 1: the immune cells stay mostly in the stroma; above 1: they enter the tumour."),
    ("invasive_margin.ct", "Immune cells per mm² in the tumour centre (CT)."),
    ("invasive_margin.im", "Immune cells per mm² in the band across the tumour border (IM)."),
    ("invasive_margin.immunoscore_like", "Number of compartments (CT, IM) at or above their cut-off."),
    ("stromal_til_proxy", "Share of the stromal area covered by immune cells, as in the stromal TIL score."),
    ("phenotype", "Where the immune cells are relative to the tumour."),
    ("ripley.global_p_value", "Small p (below 0.05): immune and tumour cells are not mixed at random; "
                              "the cross-L figure shows whether closer or further apart."),
    ("morisita_horn", "Whether immune and tumour cells occupy the same places."),
    ("corrections", "Cells added, deleted or relabelled by hand in the review."),
    ("spatial", "Spatial statistics (distances, compartments)."),
)


def figure_meaning(key: str) -> str:
    """What the key figure ``key`` means, in one plain sentence ("" for an unknown key).

    Parameters
    ----------
    key : str
        :attr:`core.outputs.key_figures.KeyFigure.key`, e.g. ``"distances.within_radius[20]"``.
    """
    for prefix, text in _MEANINGS:
        if key.startswith(prefix):
            return text
    return ""


def _number(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return format_value(value, 4)


def _value_text(value: Any, unit: str) -> str:
    if isinstance(value, (list, tuple)):
        steps = {round(b - a, 9) for a, b in zip(value, value[1:])} if all(
            isinstance(v, (int, float)) for v in value) else set()
        if len(value) > 5 and len(steps) == 1:
            text = f"{_number(value[0])} to {_number(value[-1])} in steps of {_number(steps.pop())}"
        else:
            text = ", ".join(_number(v) for v in value) if value else "none"
    elif value is None:
        text = "not set"
    else:
        text = _number(value)
    return f"{text} {unit}" if unit and value not in (None, [], ()) else text


def parameter_rows(params: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The settings of an analysis as ``(label, value with unit)`` rows.

    Parameters
    ----------
    params : dict or None
        :meth:`core.spatial.SpatialParams.to_dict` or any flat-ish dict of settings;
        nested dicts are read one level down ("a: b" labels).

    Returns
    -------
    list of (str, str)
        In the order of ``params``; known settings with the words and unit of
        :data:`PARAMETER_LABELS`, others with :func:`humanise`.
    """
    rows: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        if isinstance(value, dict):
            for sub, v in value.items():
                label, unit = PARAMETER_LABELS.get(str(sub), (humanise(str(sub)), ""))
                rows.append((f"{humanise(str(key))}: {label}", _value_text(v, unit)))
            continue
        label, unit = PARAMETER_LABELS.get(str(key), (humanise(str(key)), ""))
        rows.append((label, _value_text(value, unit)))
    return rows


def model_threshold_rows(card: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The thresholds of a model card as ``(label, value with unit)`` rows.

    Reads ``card["thresholds"]``: its scalar entries and those one level down in entries
    whose key ends in ``_um`` (sizes in µm, e.g. ``postprocess_um``); the figures measured
    while tuning are left to :func:`validation_rows`' source, the card.

    Returns
    -------
    list of (str, str)
    """
    th = (card or {}).get("thresholds") or {}
    rows: list[tuple[str, str]] = []
    if not isinstance(th, dict):
        return rows
    for key, value in th.items():
        if isinstance(value, dict) and str(key).endswith("_um"):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    label, unit = THRESHOLD_LABELS.get(str(sub), (humanise(str(sub)), ""))
                    rows.append((label, _value_text(v, unit)))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool) and not str(key).endswith("_note"):
            label, unit = THRESHOLD_LABELS.get(str(key), (humanise(str(key)), ""))
            rows.append((label, _value_text(value, unit)))
    # the tuned-on sentence reads best last
    rows.sort(key=lambda r: r[0] == THRESHOLD_LABELS["tuned_on"][0])
    return rows


def _is_fraction_metric(key: str) -> bool:
    return not key.endswith("_db")


def _metric_text(key: str, value: float) -> str:
    if _is_fraction_metric(key) and 0 <= value <= 1:
        return f"{METRIC_LABELS[key]} {100 * value:.1f} %"
    return f"{METRIC_LABELS[key]} {value:.2f}"


def _set_label(path: list[str], context: dict[str, Any]) -> str:
    words = []
    for key in path:
        if key in ("radii", "roles", "metrics", "detection", "classification"):
            if key in ("detection", "classification"):
                words.append(key)
            continue
        if key in SOURCE_LABELS:
            words.append(SOURCE_LABELS[key])
        elif key in context.get("radius_keys", {}):
            words.append(f"match within {context['radius_keys'][key]:g} µm")
        elif path and len(path) > 1 and path[path.index(key) - 1] == "roles":
            words.append(f"{key} cells")
        else:
            words.append(humanise(key))
    return ", ".join(w for w in words if w)


def validation_rows(card: dict[str, Any] | None, *, precision: str | None = None,
                    max_rows: int = 16) -> list[tuple[str, str]]:
    """The model's own held-out figures in a model card, one row per evaluation.

    Walks ``card["metrics"]`` and keeps every group of measures named in
    :data:`METRIC_LABELS` (precision, recall, F1, ...), leaving out figures that are not
    this model's held-out results (published figures, tuning, bootstrap intervals,
    re-stained or threshold variants). For per-role results only the immune role is kept
    (the TILs).

    Parameters
    ----------
    card : dict or None
        The model card (``metrics`` is read).
    precision : str, optional
        The run's numeric precision; ``"bfloat16"`` also keeps figures measured in
        bfloat16 (otherwise left out).
    max_rows : int
        At most this many rows.

    Returns
    -------
    list of (str, str)
        ``(evaluation, "precision 94.7 %, recall 98.8 %, F1 96.7 %")``; fractions as
        percent, decibels with two decimals. Empty without metrics.
    """
    metrics = (card or {}).get("metrics")
    rows: list[tuple[str, str]] = []
    if not isinstance(metrics, dict):
        return rows
    skip = re.compile("|".join(_NOT_OWN + (() if precision == "bfloat16" else ("bfloat16",))))

    def walk(node: dict, path: list[str], radius_keys: dict[str, float]) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and isinstance(value.get("radius_um"), (int, float)):
                radius_keys = {**radius_keys, str(key): float(value["radius_um"])}
        found = [(k, float(v)) for k, v in node.items()
                 if k in METRIC_LABELS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if found and path:
            text = ", ".join(_metric_text(k, v) for k, v in found)
            where = node.get("match_radius_um")
            label = _set_label(path, {"radius_keys": radius_keys})
            if isinstance(where, (int, float)) and "within" not in label:
                label += f", match within {where:g} µm"
            rows.append((label, text))
        for key, value in node.items():
            if not isinstance(value, dict) or skip.search(str(key).lower()):
                continue
            if path and path[-1] == "roles" and key != "immune":
                continue
            walk(value, [*path, str(key)], radius_keys)

    walk(metrics, [], {})
    return rows[:max_rows]
