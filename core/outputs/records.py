"""The plain-dict "analysis record" that reports, the case store and the pages share.

A record describes one finished analysis with JSON-ready values only, so a result
just computed (:func:`record_from_result`) and one read back from the case store
(:meth:`core.outputs.store.CaseStore.get_record`) look the same::

    record = {
        "summary": {                       # AnalysisResult.summary
            "scenario": "cd3-ihc",          # registry key ("scenario_key" also read)
            "weights_version": "1.0.0",
            "weights_sha256": "9f2c...",
            "mpp": 0.5,                     # µm per pixel, or None
            "image": {"name": "case7.tif", "sha256": "ab12...",
                      "width_px": 2048, "height_px": 1536},
            "counts": {"cd3-positive": 412, "cd3-negative": 1290},
            "densities_per_mm2": {"cd3-positive": 523.6, "cd3-negative": 1639.5},
            "area_mm2": 0.787,
            "regions": {"tumour": {"area_mm2": 0.31,            # optional
                                   "counts": {"cd3-positive": 120},
                                   "densities_per_mm2": {"cd3-positive": 387.1}}},
            "runtime_s": 4.2, "device": "cpu", "warnings": [],
        },
        "spatial": {...} or None,         # SpatialStats.to_dict() (else summary["spatial"])
        "n_corrections": 3 or None,       # manual corrections (CorrectionLog.n_corrections)
        "case_label": "B-2024-0113",
        "created_at": "2025-01-31T10:02:11+00:00",  # when the analysis ran (RunInfo.created_at)
        "analysis_id": 17 or None,        # set by the case store
        "app_version": "0.1.0",
        "params": {...},                  # analysis parameters and thresholds
        "regions": GeoJSON FeatureCollection dict or None,
        "model_card": {...} or None,      # the scenario's model card (metadata.json)
        "created_by": "Dr Ana Silva" or None,   # who ran the analysis (case store; None if unknown)
        "reviewed_by": "Dr Jo Park" or None,    # who saved its review, and when (ISO 8601, UTC)
        "reviewed_at": "2025-02-03T09:15:00+00:00" or None,
    }

A reviewed analysis's ``summary`` carries the reviewed counts and densities (over the image
minus exclusion regions, ``analysed_area`` says which) and a ``review`` entry (corrections
made, ``detected_n_cells``, ``reviewed_by``, ``reviewed_at``); the summary as detected is
kept by the case store (``detected_summary``).

Flat image keys (``image_name``, ``image_sha256``, ``image_width_px``,
``image_height_px``, ``image_size`` as [W, H] or ``image_shape`` as [H, W, ...]) and
``density_per_mm2`` are read too, so older summaries keep working. The accessors
below never raise on a missing key: a report shows "n/a" instead.
"""

from __future__ import annotations

import json
from typing import Any

import core
from core.errors import TILscopeError


def image_info(summary: dict[str, Any]) -> dict[str, Any]:
    """Return the analysed image's ``name``, ``sha256``, ``width_px``, ``height_px``.

    Missing values are ``None``.
    """
    nested = summary.get("image") if isinstance(summary.get("image"), dict) else {}
    name = nested.get("name", summary.get("image_name"))
    sha = nested.get("sha256", summary.get("image_sha256"))
    width = nested.get("width_px", summary.get("image_width_px"))
    height = nested.get("height_px", summary.get("image_height_px"))
    size = nested.get("size_px", summary.get("image_size"))
    if (width is None or height is None) and isinstance(size, (list, tuple)) and len(size) >= 2:
        width, height = size[0], size[1]
    shape = nested.get("shape", summary.get("image_shape"))
    if (width is None or height is None) and isinstance(shape, (list, tuple)) and len(shape) >= 2:
        height, width = shape[0], shape[1]
    return {"name": name, "sha256": sha, "width_px": width, "height_px": height}


def scenario_key(summary: dict[str, Any]) -> str | None:
    """Return the scenario's registry key (``scenario`` or ``scenario_key``)."""
    value = summary.get("scenario", summary.get("scenario_key"))
    if isinstance(value, dict):  # {"key": ..., "name": ...}
        value = value.get("key")
    return None if value is None else str(value)


def counts(summary: dict[str, Any]) -> dict[str, int]:
    """Return cell counts per class, ``{class name: count}``."""
    raw = summary.get("counts") or {}
    return {str(k): int(v) for k, v in raw.items() if v is not None}


def densities_per_mm2(summary: dict[str, Any]) -> dict[str, float | None]:
    """Return densities per class in cells/mm² (``None`` where mpp was unknown)."""
    raw = summary.get("densities_per_mm2", summary.get("density_per_mm2")) or {}
    return {str(k): (None if v is None else float(v)) for k, v in raw.items()}


def as_dict(stats: Any) -> dict[str, Any] | None:
    """Spatial statistics as their JSON-ready dict: a :class:`core.spatial.SpatialStats`
    (``to_dict()``) or a dict as it is; ``None`` for anything else."""
    if hasattr(stats, "to_dict"):
        stats = stats.to_dict()
    return stats if isinstance(stats, dict) else None


def spatial(record: dict[str, Any]) -> dict[str, Any]:
    """The spatial statistics: ``record["spatial"]``, else ``summary["spatial"]``, else ``{}``."""
    value = as_dict(record.get("spatial"))
    if value is None:
        value = as_dict((record.get("summary") or {}).get("spatial"))
    return value or {}


def region_stats(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-region ``{"area_mm2", "counts", "densities_per_mm2"}`` dicts, keyed by region name.

    Read from ``summary["regions"]`` (``{name: {...}}``), else from
    ``core.spatial``'s ``spatial["regions"]["per_region"]`` (a list of
    ``{"name", "kind", "area_mm2", "counts_by_role", "density_per_mm2_by_role"}``;
    counts there are per cell role). Empty when the analysis had no regions.
    """
    summary = record.get("summary") or {}
    source = summary.get("regions")
    if isinstance(source, dict) and source and all(isinstance(v, dict) for v in source.values()):
        return {str(k): v for k, v in source.items()}
    per_region = (spatial(record).get("regions") or {}).get("per_region")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(per_region, list):
        for i, r in enumerate(per_region):
            if not isinstance(r, dict):
                continue
            name = str(r.get("name") or f"region {i + 1}")
            if r.get("kind") and r["kind"] not in name.lower():
                name = f"{name} ({r['kind']})"
            counts = {k: v for k, v in (r.get("counts_by_role") or r.get("counts") or {}).items() if v}
            dens = r.get("density_per_mm2_by_role") or r.get("densities_per_mm2") or {}
            out[name] = {
                "area_mm2": r.get("area_mm2"),
                "counts": counts,
                "densities_per_mm2": {k: dens.get(k) for k in counts},
            }
    return out


#: Keys of spatial statistics that describe rather than measure; left out of tables.
DESCRIPTIVE_KEYS = frozenset(
    {"schema", "units", "available", "reason", "note", "rule", "definition", "edge_correction",
     "null_model", "reference", "neighbour", "runtime_s", "warnings", "id", "source", "area_method"}
)
#: Top-level spatial keys shown as thresholds, or elsewhere (regions), not as statistics.
SPATIAL_NON_STATISTICS = frozenset({"params", "thresholds", "parameters", "regions", "per_region"})


def spatial_statistics(stats: dict[str, Any]) -> dict[str, Any]:
    """Scalar spatial statistics worth a table row, ``{"section.key": value}``.

    Descriptive keys (:data:`DESCRIPTIVE_KEYS`), thresholds and regions are left
    out; a section that could not be computed becomes one row ``"not computed: reason"``;
    ``within_radius``-style lists of rows become ``"...within_radius[10 µm].key"``, lists of
    class pairs ``"...pairs[A → B].key"``.
    """
    out: dict[str, Any] = {}
    for section, value in stats.items():
        if section in SPATIAL_NON_STATISTICS or section in DESCRIPTIVE_KEYS:
            continue
        if isinstance(value, dict) and value.get("available") is False:
            out[section] = f"not computed: {value.get('reason') or 'no reason given'}"
            continue
        out.update(_statistics(value, str(section)))
    return out


def _statistics(value: Any, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in DESCRIPTIVE_KEYS or key in ("thresholds", "params"):
                continue
            out.update(_statistics(sub, f"{path}.{key}"))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for row in value:
            if "from" in row and "to" in row:  # a pair of classes (immune_class_distances): labelled by the pair
                tag, skip = f"[{row['from']} → {row['to']}]", ("from", "to")
            else:  # a row of a radius list: labelled by its radius
                um_keys = [k for k in row if str(k).endswith("_um") and isinstance(row[k], (int, float))]
                if not um_keys:
                    continue
                tag, skip = f"[{row[um_keys[0]]:g} µm]", (um_keys[0],)
            for key, sub in row.items():
                if key not in skip:
                    out.update(_statistics(sub, f"{path}{tag}.{key}"))
    elif value is None or isinstance(value, (bool, int, float, str)):
        out[path] = value
    return out


def label(record: dict[str, Any]) -> str:
    """A short display label: ``"case · #id · image"``."""
    summary = record.get("summary") or {}
    parts = [str(record.get("case_label") or "no case")]
    if record.get("analysis_id") is not None:
        parts.append(f"#{record['analysis_id']}")
    name = image_info(summary)["name"]
    if name:
        parts.append(str(name))
    return " · ".join(parts)


def audit_detail_text(action: str, detail: Any) -> str:
    """One audit-log entry's ``detail`` as a short sentence, e.g. "cell 152: inflammatory → epithelial".

    Parameters
    ----------
    action : str
        The entry's action (:data:`core.outputs.store.AUDIT_ACTIONS`).
    detail : dict or None

    Returns
    -------
    str
        ``""`` when there is no detail.
    """
    d = detail if isinstance(detail, dict) else {}
    cell = d.get("cell") or (f"cell {d['cell_id']}" if "cell_id" in d else "")
    if action == "add":
        return f"{cell}: added as {d.get('to_class')} at x {d.get('x_px')}, y {d.get('y_px')} px"
    if action == "delete":
        return f"{cell} ({d.get('from_class') or 'class not recorded'}) deleted"
    if action == "relabel":
        return f"{cell}: {d.get('from_class') or '?'} → {d.get('to_class')}"
    if action == "undo":
        return f"undid the {d.get('undone', 'edit')} of {cell}"
    if action in ("region added", "region removed"):
        area = d.get("area_mm2")
        return f"{d.get('name')} ({d.get('kind')}, {area:.4f} mm²)" if isinstance(area, (int, float)) else str(d.get("name"))
    if action == "review saved":
        return (f"{d.get('n_corrections', 0)} cell(s) corrected, {d.get('n_regions', 0)} region(s), "
                f"{d.get('n_cells')} cells counted")
    if action == "analysis saved":
        return f"{d.get('scenario')} on {d.get('image')}: {d.get('n_cells')} cells"
    if action == "note":
        return f"note: {d.get('note') or '(cleared)'}"
    if action == "analysis deleted":
        return f"{d.get('image')} ({d.get('scenario')}) deleted"
    return ", ".join(f"{k} {v}" for k, v in d.items())


def count_corrections(corrections: Any) -> int | None:
    """Number of manual corrections in a correction log's JSON data, or ``None``.

    Reads ``n_corrections`` or ``count``, else the length of ``edits``,
    ``corrections``, ``entries`` or ``events``, else the length of a list.
    """
    if isinstance(corrections, dict):
        for key in ("n_corrections", "count"):
            if isinstance(corrections.get(key), int):
                return corrections[key]
        for key in ("edits", "corrections", "entries", "events"):
            if isinstance(corrections.get(key), list):
                return len(corrections[key])
    if isinstance(corrections, list):
        return len(corrections)
    return None


def flatten_scalars(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to ``{"a.b.c": scalar}``, keeping numbers, strings and bools.

    Lists are left out (curves are plotted, not tabulated).
    """
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten_scalars(value, path))
    elif data is None or isinstance(data, (bool, int, float, str)):
        if prefix:
            out[prefix] = data
    return out


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays, datetimes and paths.

    Raises
    ------
    TypeError
        For any other type, so nothing is stored in a lossy form silently.
    """
    from datetime import datetime
    from pathlib import Path

    import numpy as np

    if hasattr(value, "to_dict"):  # typed statistics (core.spatial.SpatialStats)
        return value.to_dict()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (datetime, Path)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------- building a record


def record_from_result(
    result: Any,
    *,
    spatial: Any = None,
    regions: Any = None,
    corrections: Any = None,
    params: dict | None = None,
    model_card: dict | None = None,
    case_label: str | None = None,
) -> dict[str, Any]:
    """The analysis record of a fresh :class:`core.results.AnalysisResult`.

    Deterministic: the same result gives the same record (``created_at`` is the run's
    time, :attr:`core.results.RunInfo.created_at`, not the time this is called).

    Parameters
    ----------
    result : core.results.AnalysisResult
        The finished analysis; its ``summary`` is copied as JSON data.
    spatial : core.spatial.SpatialStats or dict, optional
        Spatial statistics; default ``result.spatial`` (as in the summary).
    regions : list of core.spatial.Region or GeoJSON dict, optional
        Annotated regions (µm); stored as a GeoJSON FeatureCollection of annotations.
    corrections : core.review.CorrectionLog or dict, optional
        Manual edits; ``n_corrections`` is taken from it.
    params : dict, optional
        Analysis parameters and thresholds.
    model_card : dict, optional
        The scenario's model card; default the registry's card of ``result.scenario_key``.
    case_label : str, optional
        Case the analysis belongs to.

    Returns
    -------
    dict
        A JSON-ready record; ``analysis_id`` is ``None`` until the store saves it.
    """
    summary = json.loads(json.dumps(result.summary, default=json_default))
    spatial = as_dict(spatial)
    if spatial is None:
        spatial = as_dict(summary.get("spatial"))
    else:
        spatial = json.loads(json.dumps(spatial, default=json_default))
    if model_card is None:
        model_card = scenario_card(result.scenario_key)
    warnings = list(summary.get("warnings") or [])
    warnings += [w for w in result.warnings if w not in warnings]
    summary["warnings"] = warnings
    return {
        "summary": summary,
        "spatial": spatial,
        "n_corrections": corrections_count(corrections),
        "corrections": corrections_json(corrections),
        "case_label": case_label,
        "created_at": summary.get("created_at"),
        "analysis_id": None,
        "app_version": summary.get("app_version") or core.__version__,
        "params": params or {},
        "regions": regions_geojson(regions, result.image.mpp),
        "model_card": model_card,
        "created_by": None,
        "reviewed_by": (summary.get("review") or {}).get("reviewed_by"),
        "reviewed_at": (summary.get("review") or {}).get("reviewed_at"),
    }


def _scenario(key: str | None):
    if not key:
        return None
    try:
        from core.scenarios.registry import get_scenario

        return get_scenario(key)
    except (ImportError, TILscopeError):
        return None


def scenario_card(key: str | None) -> dict | None:
    """The registry's model card of scenario ``key``, or ``None`` if it cannot be read."""
    scenario = _scenario(key)
    try:
        return None if scenario is None else scenario.card()
    except TILscopeError:
        return None


def scenario_caution(key: str | None) -> str:
    """The registry's caution of scenario ``key`` ("" for none or an unknown key)."""
    scenario = _scenario(key)
    return "" if scenario is None else (scenario.caution or "")


def scenario_research_only(key: str | None) -> bool:
    """Whether scenario ``key`` is registered as research only (:attr:`core.scenarios.spec.Scenario.research_only`)."""
    scenario = _scenario(key)
    return bool(scenario is not None and scenario.research_only)


def scenario_trained_on_synthetic(key: str | None) -> bool:
    """Whether scenario ``key`` is registered as trained on synthetic images only (:attr:`core.scenarios.spec.Scenario.trained_on_synthetic`)."""
    scenario = _scenario(key)
    return bool(scenario is not None and scenario.trained_on_synthetic)


def scenario_colors(key: str | None) -> dict[str, str]:
    """``{class: "#rrggbb"}`` of scenario ``key`` from the registry; ``{}`` if unknown."""
    scenario = _scenario(key)
    return {} if scenario is None else dict(scenario.class_colors)


def corrections_count(corrections: Any) -> int | None:
    """Number of manual corrections in a CorrectionLog, its JSON, or ``None``."""
    if corrections is None:
        return None
    if hasattr(corrections, "n_corrections"):
        return int(corrections.n_corrections)
    return count_corrections(corrections_json(corrections))


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
    :class:`core.spatial.Region` (converted with
    :func:`core.spatial.regions.regions_to_geojson`, which needs ``mpp``).
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
    from core.spatial.regions import regions_to_geojson

    return regions_to_geojson(regions, mpp)


def card_summary(card: dict) -> dict:
    """The parts of a model card a clinician reads first: intended use, limitations, metrics."""
    return {
        "intended_use": card.get("intended_use", "not stated"),
        "limitations": card.get("limitations", []),
        "metrics": card.get("metrics", {}),
        "training_data": card.get("training_data", {}),
        "version": card.get("version"),
    }
