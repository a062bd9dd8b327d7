"""Reviews of saved analyses: open one from the case store, save the reviewed state back.

* :func:`result_from_store` rebuilds the :class:`~core.results.AnalysisResult` of a saved
  analysis as it was detected: the analysed image (kept as an original since schema 4;
  for older analyses the saved overlay stands in, with a note), the detections (the
  original ``cells.csv``), the dense outputs and restored images from their exported PNGs,
  and the run's metadata from the summary; with the tissue compartments predicted beside the
  cells (``compartments.png``, the label map, and the summary's ``compartments`` block), so the
  statistics of a review use the same predicted regions and its report keeps them.
* :func:`open_saved_analysis` makes a :class:`~core.review.session.ReviewSession` of it
  with the saved corrections and regions.
* :func:`save_review` writes the reviewed state: the summary with the reviewed counts, the
  recomputed statistics, regions, corrections, every export rebuilt from the reviewed cells
  (overlay with the regions, report, tables), who reviewed it, and the audit entries of
  what changed; the analysis as detected stays in the store (``detected_summary``, the
  original exports).
* :func:`import_regions` reads regions from GeoJSON (TILscope or QuPath) and says which
  annotations it skipped and why, class by class.

Coordinates: image pixels (x, y), x = column, origin top-left; µm = pixels × mpp.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError, TILscopeError
from core.io import ImageData
from core.outputs import records as rec
from core.results import AnalysisResult, DenseOutput, RunInfo
from core.review.corrections import CorrectionLog
from core.review.session import ReviewSession
from core.spatial import SpatialParams
from core.spatial.regions import Region, read_regions_geojson, regions_to_geojson

__all__ = ["RegionImport", "result_from_store", "compartments_from_store", "open_saved_analysis", "is_same_run",
           "save_review", "import_regions", "png_rgb"]


def png_rgb(data: bytes) -> np.ndarray:
    """PNG (or any image Pillow reads) bytes → (H, W, 3) uint8 RGB.

    Raises
    ------
    InputError
        If the bytes are not an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"a stored picture could not be read ({err})") from err


def _png_plane(data: bytes) -> np.ndarray:
    """An exported one-plane map (8-bit grey = value x 255) → (H, W) float32 in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _read_cells(data: bytes, what: str) -> pd.DataFrame:
    try:
        cells = pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(f"the saved {what} cannot be read as a cell table ({err})") from err
    missing = [c for c in ("x_px", "y_px", "x_um", "y_um", "cell_class", "role") if c not in cells.columns]
    if missing:
        raise InputError(f"the saved {what} lacks the column(s) {missing}: it is not a TILscope cell table")
    for c in ("x_px", "y_px", "x_um", "y_um"):
        cells[c] = pd.to_numeric(cells[c], errors="coerce").astype(np.float64)
    if "probability" not in cells.columns:
        cells["probability"] = 1.0
    cells["cell_class"] = cells["cell_class"].astype(str).astype(object)
    cells["role"] = cells["role"].astype(str).astype(object)
    return cells


def result_from_store(store: Any, analysis: dict | int) -> tuple[AnalysisResult, list[str]]:
    """The saved analysis as it was detected, rebuilt from the case store.

    Parameters
    ----------
    store : core.outputs.store.CaseStore
    analysis : dict or int
        :meth:`CaseStore.get_analysis` of the analysis, or its id.

    Returns
    -------
    result : AnalysisResult
        ``image``: the analysed image's 8-bit RGB (``source-image.png``), else the saved
        overlay resized to the image's size, else a grey field; ``cells``: the detections
        (the original ``cells.csv``); ``dense`` / ``restored``: read back from their PNG
        exports (one-plane maps as value = grey / 255); ``run`` from the summary. An
        analysis run with predicted tissue compartments gets them back
        (:func:`compartments_from_store`, put on the result by
        :func:`core.pipeline.attach_compartments`): ``compartments``, ``compartments_run``,
        ``tissue`` (their tumour and stroma, the densities' denominator) and each cell's
        ``tissue_compartment``, as when it was analysed.
    notes : list of str
        What the user should know (a stand-in background, corrections already in the
        cell table of an analysis reviewed before originals were kept, compartments that
        could not be read back).

    Raises
    ------
    InputError
        If the analysis has no cell table, its scenario is not in this TILscope, or a
        stored file cannot be read.
    StoreError
        If there is no such analysis.
    """
    from core.outputs.store import SOURCE_IMAGE, StoreError
    from core.scenarios.registry import get_scenario

    a = store.get_analysis(analysis) if isinstance(analysis, int) else analysis
    aid = a["id"]
    summary = a.get("detected_summary") or a["summary"] or {}
    originals = {f["name"] for f in a.get("originals") or []}
    files = {f["name"] for f in a.get("files") or []}
    notes: list[str] = []

    def original_or_file(name: str) -> bytes | None:
        try:
            if name in originals:
                return store.get_original(aid, name)
            if name in files:
                return store.get_file(aid, name)
        except StoreError:
            return None
        return None

    key = rec.scenario_key(summary) or a.get("scenario_key")
    try:
        scenario = get_scenario(key)
    except TILscopeError as err:
        raise InputError(f"analysis #{aid} was made with scenario {key!r}, which this TILscope does not have: {err}") from err
    info = rec.image_info(summary)
    if summary.get("kind") == "slide":
        raise InputError(f"analysis #{aid} is of a whole slide, which is not reviewed cell by cell here: open it on "
                         "the Slides page (or export a field, e.g. a region from QuPath, and analyse it as an image)")
    cells_csv = original_or_file("cells.csv")
    if cells_csv is None:
        raise InputError(f"analysis #{aid} has no saved cell table (cells.csv), so it cannot be reviewed; analyse the "
                         "image again")
    cells = _read_cells(cells_csv, f"cell table of analysis #{aid}")
    if "edited" in cells.columns:  # reviewed before TILscope kept the detections
        notes.append("This analysis was reviewed before TILscope kept the cells as detected: its earlier corrections "
                     "are part of the cell table now, and new corrections start from it.")
        cells = cells.drop(columns=["edited"])
    mpp = summary.get("mpp")
    mpp = float(mpp) if mpp else None
    h = int(info["height_px"] or 0) or None
    w = int(info["width_px"] or 0) or None
    pixels = None
    if SOURCE_IMAGE in originals:
        pixels = png_rgb(store.get_original(aid, SOURCE_IMAGE))
    else:
        overlay = original_or_file("overlay.png")
        if overlay is not None:
            pixels = png_rgb(overlay)
            notes.append("The analysed image was not saved with this analysis (it was saved before TILscope kept "
                         "images): the background is its saved overlay, with the detected cells' rings drawn in.")
    if pixels is None:
        if not (h and w):
            raise InputError(f"analysis #{aid} has neither its image nor its size saved, so it cannot be reviewed")
        pixels = np.full((h, w, 3), 200, dtype=np.uint8)
        notes.append("Neither the analysed image nor its overlay was saved with this analysis: the cells are shown on a "
                     "grey field.")
    if h and w and pixels.shape[:2] != (h, w):
        from PIL import Image

        pixels = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR))
    image = ImageData.from_rgb(pixels, mpp, info["name"] or f"analysis-{aid}", info["sha256"] or a.get("image_sha256") or "",
                               mpp_source=summary.get("mpp_source") or "user")
    dense: dict[str, DenseOutput] = {}
    for spec in scenario.outputs_of("dense"):
        data = original_or_file(f"{spec.name}.png")
        if data is None or spec.meaning == "class_probabilities":
            continue  # class probabilities are exported as their arg-max colours: not invertible
        values = _png_plane(data)
        if values.shape == image.shape:
            dense[spec.name] = DenseOutput(spec.name, spec.meaning, spec.description, values, spec.class_names, spec.color)
    restored: dict[str, np.ndarray] = {}
    for spec in scenario.outputs_of("restored"):
        data = original_or_file(f"{spec.name}.png")
        if data is not None:
            rgb = png_rgb(data)
            if rgb.shape[:2] == image.shape:
                restored[spec.name] = rgb
    run = RunInfo(
        scenario_key=key, scenario_title=summary.get("scenario_title") or scenario.title,
        weights_file=summary.get("weights_file") or scenario.weights, weights_sha256=summary.get("weights_sha256") or "",
        weights_version=summary.get("weights_version"), trained_on_synthetic=bool(summary.get("trained_on_synthetic")),
        device=str(summary.get("device") or "n/a"), precision=str(summary.get("inference_precision") or "float32"),
        runtime_s=float(summary.get("runtime_s") or 0.0), app_version=str(summary.get("app_version") or a.get("app_version") or ""),
        torch_version=str(summary.get("torch") or ""), python_version=str(summary.get("python") or ""),
        created_at=str(summary.get("created_at") or a.get("created_at") or ""),
        operating_point=summary.get("operating_point") if isinstance(summary.get("operating_point"), dict) else None,
    )
    warnings = [str(w) for w in summary.get("warnings") or []]
    extra = {}
    if "outside_validated_use" in {f.name for f in fields(AnalysisResult)}:
        extra["outside_validated_use"] = [str(w) for w in summary.get("outside_validated_use") or []]
    result = AnalysisResult(image, cells, run, scenario, dense, restored, [], warnings, **extra)
    if isinstance(summary.get("compartments"), dict):
        try:
            compartments, comp_run = compartments_from_store(summary, original_or_file("compartments.png"), image, run)
        except InputError as err:
            notes.append(f"The tissue compartments predicted with this analysis could not be read back ({err}): the "
                         "review's statistics use the regions drawn, if any, and its report has no compartments.")
        else:
            from core.pipeline import attach_compartments

            attach_compartments(result, compartments, comp_run)  # tissue, and each cell's compartment, as analysed
    return result, notes


def compartments_from_store(summary: dict, labels_png: bytes | None, image: ImageData, run: RunInfo):
    """The predicted tissue compartments of a saved analysis, from its label map and its summary.

    The label map ``compartments.png`` (8-bit grey, the image's size) is what the analysis
    computed its compartment statistics on, so the map rebuilt from it is exact (the polygons of
    ``regions.geojson`` leave out parts under a minimum area and run half a pixel inside them).
    Label values are read through the summary's ``compartments["labels"]`` (name → value), so a
    map saved with another numbering is renumbered to :data:`core.spatial.predicted_compartments.LABELS`.

    Parameters
    ----------
    summary : dict
        The analysis's summary as detected, with its ``compartments`` block
        (:meth:`core.results.AnalysisResult.compartments_summary`).
    labels_png : bytes or None
        The stored ``compartments.png``.
    image : ImageData
        The analysed image (its size and mpp), as rebuilt by :func:`result_from_store`.
    run : RunInfo
        The cell scenario's run: its device, versions and time stand in for those of the
        compartment run, which the summary does not keep.

    Returns
    -------
    compartments : core.scenarios.compartments.CompartmentMap
        (H, W) uint8 labels in the image's pixels, the image's mpp.
    compartments_run : RunInfo or None
        The compartment model's scenario, title, weights (file, SHA-256, version) and run time
        from the summary; None when the summary does not name the scenario.

    Raises
    ------
    InputError
        If there is no label map, it cannot be read, it is not the image's size, or it holds a
        value the summary's labels do not name.
    """
    from PIL import Image, UnidentifiedImageError

    from core.scenarios.compartments import CompartmentMap
    from core.spatial.predicted_compartments import LABELS

    block = summary.get("compartments") or {}
    if labels_png is None:
        raise InputError("compartments.png, the label map, was not saved with it")
    try:
        with Image.open(io.BytesIO(labels_png)) as im:
            stored = np.asarray(im if im.mode in ("L", "P") else im.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"compartments.png is not a readable image ({err})") from err
    h, w = image.shape
    if stored.shape != (h, w):
        raise InputError(f"compartments.png is {stored.shape[1]} x {stored.shape[0]} px, the analysed image {w} x {h} px")
    names = block.get("labels") if isinstance(block.get("labels"), dict) else LABELS
    labels = np.zeros(stored.shape, np.uint8)
    named = np.zeros(stored.shape, bool)
    for name, value in names.items():
        if name not in LABELS:
            raise InputError(f"its compartment {name!r} is not one of {', '.join(LABELS)}")
        hit = stored == int(value)
        labels[hit], named[hit] = LABELS[name], True
    if not named.all():
        odd = sorted(set(np.unique(stored[~named]).tolist()))[:5]
        raise InputError(f"compartments.png holds value(s) {odd} that its labels {names} do not name")
    key = block.get("scenario")
    comp_run = None
    if key:
        from core.scenarios.registry import get_scenario

        try:
            synthetic = bool(get_scenario(key).trained_on_synthetic)
        except TILscopeError:  # a compartment model this TILscope no longer has: its saved provenance stays
            synthetic = False
        comp_run = replace(run, scenario_key=str(key), scenario_title=str(block.get("scenario_title") or key),
                           weights_file=str(block.get("weights_file") or ""),
                           weights_sha256=str(block.get("weights_sha256") or ""),
                           weights_version=block.get("weights_version"), trained_on_synthetic=synthetic,
                           precision="float32", runtime_s=float(block.get("runtime_s") or 0.0), operating_point=None)
    return CompartmentMap(labels, image.mpp), comp_run


def is_same_run(analysis: dict, result: AnalysisResult | None) -> bool:
    """True when ``result`` is the run saved as ``analysis`` (same image SHA-256 and run time).

    Parameters
    ----------
    analysis : dict
        :meth:`core.outputs.store.CaseStore.get_analysis` of a saved analysis.
    result : AnalysisResult or None
    """
    if result is None:
        return False
    saved = analysis.get("detected_summary") or analysis.get("summary") or {}
    return result.image.sha256 == analysis.get("image_sha256") and result.summary.get("created_at") == saved.get("created_at")


def open_saved_analysis(store: Any, analysis_id: int, result: AnalysisResult | None = None) -> ReviewSession:
    """A review session of saved analysis ``analysis_id``, with its saved corrections and regions.

    Parameters
    ----------
    store : core.outputs.store.CaseStore
    analysis_id : int
    result : AnalysisResult, optional
        The same analysis still in memory as detected (the Analyze page's run): used
        instead of rebuilding it from the store when its image and run time match and it
        carries no review.

    Returns
    -------
    ReviewSession
        ``analysis_id``, ``case_label`` and ``base_summary`` (the stored summary) set;
        ``notes`` say what the user should know.

    Raises
    ------
    StoreError
        If there is no such analysis.
    InputError
        If it cannot be rebuilt (see :func:`result_from_store`).
    """
    a = store.get_analysis(int(analysis_id))
    if result is not None and result.review is None and is_same_run(a, result):
        base, notes = result, []
    else:
        base, notes = result_from_store(store, a)
    log = CorrectionLog()
    if a.get("corrections"):
        try:
            log = CorrectionLog.from_json(a["corrections"])
        except InputError as err:
            notes.append(f"The saved corrections could not be read ({err}); the review starts from the detections.")
    regions: list[Region] = []
    if a.get("regions") and base.image.mpp:
        try:
            regions = import_regions(a["regions"], base.image.mpp).regions
        except InputError as err:
            notes.append(f"The saved regions could not be read ({err}).")
    try:
        session = ReviewSession(base, log, regions, analysis_id=a["id"], case_label=a["case_label"],
                                base_summary=a["summary"], notes=notes, saved_by=a.get("reviewed_by"),
                                saved_at=a.get("reviewed_at"))
    except InputError as err:
        if not log.edits:
            raise
        notes.append(f"The saved corrections do not fit this analysis's cells ({err}); the review starts from the "
                     "cells as saved.")
        session = ReviewSession(base, CorrectionLog(), regions, analysis_id=a["id"], case_label=a["case_label"],
                                base_summary=a["summary"], notes=notes)
    return session


def save_review(
    store: Any,
    session: ReviewSession,
    *,
    user: str,
    comment: str | None = None,
    params: SpatialParams | None = None,
    case_label: str | None = None,
    seed: int = 0,
) -> int:
    """Save the reviewed state of ``session`` in the case store; return the analysis id.

    The statistics are recomputed on the reviewed cells (:meth:`ReviewSession.statistics`,
    cached if current), the summary gets the reviewed counts
    (:meth:`ReviewSession.reviewed_summary`), and every export is rebuilt from the reviewed
    cells and regions by :func:`core.outputs.exports.build_exports` (one writer for every
    door): overlay with the regions, ``cells.csv``, ``summary.json``, ``cells.geojson``,
    ``report.pdf``. A saved analysis is updated in place (its analysis as detected is kept
    the first time, :meth:`core.outputs.store.CaseStore.update_review`); an unsaved one is
    saved as a new analysis under ``case_label``. The audit log gets one entry per edit and
    region change since the last save (:meth:`ReviewSession.audit_events`) and one
    ``"review saved"`` entry with ``comment``.

    Parameters
    ----------
    store : core.outputs.store.CaseStore
    session : ReviewSession
    user : str
        The reviewer (recorded as ``reviewed_by`` and in the audit log).
    comment : str, optional
        Why (kept in the audit log).
    params : SpatialParams, optional
        Thresholds of the statistics; also stored in the analysis's ``params["spatial"]``.
    case_label : str, optional
        Needed only when the session's analysis is not saved yet.
    seed : int
        Seeds the statistics' Monte-Carlo envelopes.

    Returns
    -------
    int
        The analysis id.

    Raises
    ------
    InputError
        If the user name is empty, or an unsaved analysis has no case label.
    StoreError
        If the analysis was deleted meanwhile, or the database cannot be written.
    """
    from core.outputs.exports import build_exports, save_result
    from core.outputs.store import check_user

    user = check_user(user)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    p = session.params(params)
    stats = session.statistics(params, seed=seed)
    summary = session.reviewed_summary(stats, user=user, time_iso=now)
    reviewed = session.reviewed_result(stats, user=user, time_iso=now)
    regions = list(session.regions)
    mpp = session.mpp
    regions_gj = regions_to_geojson(regions, mpp) if regions and mpp else None
    corrections = json.loads(session.log.to_json())
    events = session.audit_events()
    if session.analysis_id is None:  # not in the case store yet: save it as detected first, so the original is kept
        label = (case_label or session.case_label or "").strip()
        if not label:
            raise InputError("enter a case label to save the review, e.g. the specimen or block number")
        session.analysis_id = save_result(session.result, label, store, created_by=user)
        session.case_label = store.get_analysis(session.analysis_id)["case_label"]
    aid = session.analysis_id
    record = store.get_record(aid)
    params_all = dict(record.get("params") or {})
    params_all["spatial"] = p.to_dict()
    record.update(summary=summary, spatial=stats, regions=regions_gj, corrections=corrections,
                  n_corrections=session.log.n_corrections, reviewed_by=user, reviewed_at=now, params=params_all)
    files = build_exports(reviewed, regions=regions or None, record=record)
    store.update_review(aid, regions=regions_gj, corrections=corrections, n_corrections=session.log.n_corrections,
                        spatial=stats, summary=summary, files=files, user=user, comment=comment, events=events,
                        params=params_all)
    session.base_summary = summary
    session.mark_saved(user, now)
    return aid


@dataclass
class RegionImport:
    """Regions read from a GeoJSON file, and what was left out.

    Attributes
    ----------
    regions : list of Region
        Polygons in µm, in file order.
    skipped : dict of str to int
        Why → how many features, e.g. ``{"class 'Tissue' (not a region kind)": 1,
        "cell detections (cells come from the analysis)": 1200}``.
    """

    regions: list[Region]
    skipped: dict[str, int] = field(default_factory=dict)

    def message(self) -> str:
        """One sentence for the user: what was imported and what was skipped, class by class."""
        kinds = Counter(r.kind for r in self.regions)
        got = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no regions"
        text = f"Imported {len(self.regions)} region(s): {got}."
        if self.skipped:
            text += " Skipped: " + "; ".join(f"{n} × {why}" for why, n in self.skipped.items()) + "."
        return text


def _load_json(source: Any) -> Any:
    from pathlib import Path

    if isinstance(source, (dict, list)):
        return source
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith(("{", "["))):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"regions file {str(path)!r} does not exist: give a GeoJSON file exported from TILscope or QuPath")
        source = path.read_bytes()
    if isinstance(source, (bytes, bytearray)):
        try:
            source = bytes(source).decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise InputError("the regions file is not text: export the annotations from QuPath as GeoJSON") from err
    try:
        return json.loads(source)
    except (TypeError, json.JSONDecodeError) as err:
        raise InputError(f"the regions file is not valid GeoJSON (JSON error: {err})") from err


def import_regions(source: Any, mpp: float) -> RegionImport:
    """Read tumour / stroma / exclusion / margin regions from GeoJSON, listing everything skipped.

    Every Polygon or MultiPolygon annotation whose class is a region kind is imported
    (:func:`core.spatial.regions.read_regions_geojson`: QuPath's Tumor, Stroma, Ignore*,
    Invasive margin and their synonyms); every other feature is counted in ``skipped``
    with the reason: its class (e.g. QuPath's ``Tissue``, ``Immune cells``), cell
    detections, or a geometry that is not a polygon.

    Parameters
    ----------
    source : path, JSON text, bytes, dict or list
        GeoJSON from TILscope or QuPath (a FeatureCollection, a Feature or a list of them).
    mpp : float > 0
        Microns per pixel (GeoJSON coordinates are pixels).

    Returns
    -------
    RegionImport

    Raises
    ------
    InputError
        If the GeoJSON is unreadable or malformed, or holds no region at all (the
        message then lists what it held).
    """
    data = _load_json(source)
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise InputError("not GeoJSON regions: expected a FeatureCollection, a Feature or a list of Features")
    if not isinstance(features, list):
        raise InputError("GeoJSON 'features' must be a list")
    regions: list[Region] = []
    skipped: Counter = Counter()
    for k, feat in enumerate(features):
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            raise InputError(f"GeoJSON item {k} is not a Feature (got {str(feat)[:60]!r})")
        props = feat.get("properties") or {}
        if str(props.get("objectType", "annotation")).lower() in ("detection", "cell", "tile"):
            skipped["cell detections (the cells come from the analysis)"] += 1
            continue
        gtype = (feat.get("geometry") or {}).get("type")
        if gtype not in ("Polygon", "MultiPolygon"):
            skipped[f"{gtype or 'empty'} geometry (only polygons are regions)"] += 1
            continue
        cls = props.get("classification")
        cls_name = cls.get("name") if isinstance(cls, dict) else cls
        try:
            regions.extend(read_regions_geojson([feat], mpp, on_unknown="raise"))
        except InputError as err:
            if "not region kinds" not in str(err):
                raise
            label = f"class {cls_name!r}" if cls_name else "unclassified annotation"
            skipped[f"{label} (not a region kind: use Tumor, Stroma, Ignore* or Invasive margin)"] += 1
    if not regions:
        held = "; ".join(f"{n} × {why}" for why, n in skipped.items()) or "no features"
        raise InputError(f"no tumour, stroma, exclusion or margin region in the GeoJSON (it holds {held}): classify "
                         "the annotations as Tumor, Stroma, Ignore* or Invasive margin in QuPath and export again")
    return RegionImport(regions, dict(skipped))
