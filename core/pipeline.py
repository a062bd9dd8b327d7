"""One pipeline for the CLI, the app and batch jobs: run → save → write.

- :func:`run_analysis`: load (or take) the model, analyse the image, compute the spatial
  statistics → :class:`~core.results.AnalysisResult`. With ``compartments=`` a compartment
  scenario (``tissue-compartments``) runs beside a cell scenario: its predicted tumour, stroma,
  necrosis and background give the statistics their regions (unless regions are drawn or
  given, which override them) and the densities their tissue (tumour and stroma).
- :func:`save_analysis`: the result with all its exports into the case store.
- :func:`write_analysis`: the result's export files into a folder, or :func:`write_stored`:
  the files the case store keeps for a saved analysis (what the app downloads).

Every output file has one writer (:func:`core.outputs.exports.build_exports`), so the same
image and settings give the same files whichever door they came in by (apart from the
timestamps and the run time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from core import __version__
from core.allocator import tune_allocator
from core.errors import InputError
from core.fitness import OutsideValidatedUse, outside_use_message
from core.io import ImageData
from core.results import AnalysisResult, DenseOutput, RunInfo
from core.scenarios.base import ScenarioModel, pick_device
from core.scenarios.base import check_input as check_scenario_input
from core.scenarios.registry import get_scenario, runner_class
from core.tiling import Progress

__all__ = ["load_model", "analyze", "spatial_statistics", "run_analysis", "save_analysis", "write_analysis",
           "write_stored", "check_input", "assess_fitness", "previous_runs", "device_name", "fast_mode", "ImageSource",
           "PreparedImage", "prepare_image", "analyze_source", "FROM_FILE", "compartment_scenario",
           "compartment_scenarios", "attach_compartments", "predicted_stromal_tils"]


def load_model(key: str, device: str | None = None, precision: str = "float32") -> ScenarioModel:
    """Load a registered scenario's model on ``device`` (CUDA when available if None).

    ``precision`` is ``"float32"`` (default) or ``"bfloat16"`` for the scenarios validated at
    it (see :func:`core.scenarios.base.check_precision`). Loading also tunes the process's
    memory allocator for large tiles (:func:`core.allocator.tune_allocator`, glibc only).

    Raises
    ------
    UnknownScenarioError, WeightsError, InputError
    """
    scenario = get_scenario(key)
    tune_allocator()
    return runner_class(scenario).from_registry(scenario, pick_device(device), precision)


def load_candidate(key: str, weights: str | Path, device: str | None = None, precision: str = "float32") -> ScenarioModel:
    """Load unregistered weights of a scenario (a training stage's candidate) to evaluate them before registration.

    The file is read as the registered one would be (safetensors, ``strict=True``) but is checked
    against its own SHA-256, computed here, since no registry entry names it yet; the evaluation
    that uses it records that hash so its figures stay tied to the file. Only the command line's
    ``evaluate --weights`` reaches this; the app and batch load registered weights only.

    Parameters
    ----------
    key : registered scenario key whose network and post-processing the weights are for
    weights : path of a ``.safetensors`` file written by that scenario's training
    device, precision : as :func:`load_model`

    Returns
    -------
    ScenarioModel, with ``weights_sha256`` set to the file's hash

    Raises
    ------
    UnknownScenarioError, WeightsError (missing or not safetensors, tensors that do not fit), InputError
    """
    from core.scenarios.weights import sha256_file

    scenario = get_scenario(key)
    path = Path(weights)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist: give the path of a .safetensors file written by training")
    digest = sha256_file(path)
    tune_allocator()
    model = runner_class(scenario).from_file(scenario, path, digest, pick_device(device), precision)
    model.weights_sha256 = digest
    return model


def compartment_scenarios(for_cells=None) -> list:
    """The registered scenarios whose output is tissue regions (kind ``regions``), e.g. ``tissue-compartments``.

    ``for_cells``, a cell :class:`~core.scenarios.spec.Scenario`, keeps only those that read its
    images (same modality: CD-UNET reads brightfield colour, not a fluorescence channel).
    """
    from core.scenarios.registry import list_scenarios

    return [s for s in list_scenarios() if s.outputs_of("regions")
            and (for_cells is None or s.modality == for_cells.modality)]


def compartment_scenario(key: str | None, cell_key: str):
    """The compartment scenario ``key`` to run beside cell scenario ``cell_key`` (None for none).

    Returns
    -------
    core.scenarios.spec.Scenario or None

    Raises
    ------
    UnknownScenarioError
        ``key`` is not registered (the message lists the known keys).
    InputError
        ``key`` is not a compartment scenario, or ``cell_key`` finds no cells to place in them.
    """
    if not key:
        return None
    comp = get_scenario(key)
    known = ", ".join(s.key for s in compartment_scenarios()) or "none registered"
    if not comp.outputs_of("regions"):
        raise InputError(f"--compartments takes a tissue-compartment scenario (one whose output is tissue regions: "
                         f"{known}); {key!r} finds {', '.join(o.kind for o in comp.outputs)}: give e.g. "
                         f"--compartments {known.split(', ')[0]}")
    cells = get_scenario(cell_key)
    if cells.outputs_of("regions"):
        raise InputError(f"{cell_key!r} is itself a tissue-compartment scenario: leave --compartments out")
    if not cells.outputs_of("cells"):
        raise InputError(f"--compartments places cells in tissue compartments, but {cell_key!r} finds no cells: "
                         "use it with a cell scenario (e.g. he-til, cd3-ihc)")
    if comp.modality != cells.modality:
        raise InputError(f"{key!r} reads {comp.modality} images and {cell_key!r} {cells.modality} ones: the two cannot "
                         "run on the same image; leave --compartments out")
    return comp


def check_input(image: ImageData, key: str) -> None:
    """Refuse, before any model runs, an image the scenario cannot read (no colour, wrong channels).

    Raises
    ------
    UnknownScenarioError, InputError
    """
    check_scenario_input(image, get_scenario(key))


def analyze(
    image: ImageData,
    key: str,
    model: ScenarioModel | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    precision: str = "float32",
) -> AnalysisResult:
    """Analyse one image with one scenario (no statistics; see :func:`run_analysis`).

    Parameters
    ----------
    image : ImageData
        With the channels the scenario declares; mpp None allowed (pixel counts only).
    key : str
        Scenario key, e.g. ``"cd3-ihc"``.
    model : ScenarioModel, optional
        An already loaded model of that scenario (the app caches one per key and device).
    device : str, optional
        ``"cpu"``, ``"cuda"`` or None (automatic); ignored when ``model`` is given.
    precision : {"float32", "bfloat16"}
        Inference precision; ignored when ``model`` is given (its own is used and recorded).
    progress : callable(done, total), optional

    Returns
    -------
    AnalysisResult
        Cells in image pixels and µm, the declared dense outputs and restored images at the
        image's size, the run's metadata and warnings (reading notes, scenario notes, the
        scenario's caution).

    Raises
    ------
    UnknownScenarioError, WeightsError, InputError
    """
    scenario = get_scenario(key)
    check_input(image, key)
    model = model or load_model(key, device, precision)
    start = time.perf_counter()
    out = model.analyze(image, progress)
    compartments = model.regions_map(out, image) if scenario.outputs_of("regions") else None
    runtime_s = time.perf_counter() - start
    dense = {
        spec.name: DenseOutput(spec.name, spec.meaning, spec.description, out.dense[spec.name], spec.class_names, spec.color)
        for spec in scenario.outputs_of("dense")
    }
    restored = {spec.name: out.restored[spec.name] for spec in scenario.outputs_of("restored")}
    card = _safe_card(scenario)
    run = RunInfo(
        scenario_key=key, scenario_title=scenario.title, weights_file=scenario.weights, weights_sha256=scenario.sha256,
        weights_version=card.get("version"), trained_on_synthetic=scenario.trained_on_synthetic,
        device=str(model.device), precision=model.precision, runtime_s=runtime_s, app_version=__version__,
        torch_version=torch.__version__, operating_point=model.operating_point,
    )
    warnings = list(image.notes) + list(out.notes) + ([scenario.caution] if scenario.caution else [])
    result = AnalysisResult(image, out.cells, run, scenario, dense, restored, [], warnings)
    if compartments is not None:
        attach_compartments(result, compartments, run)
    return result


def attach_compartments(result: AnalysisResult, compartments, run: RunInfo) -> None:
    """Put predicted compartments on ``result`` (in place).

    Parameters
    ----------
    result : AnalysisResult
    compartments : core.scenarios.compartments.CompartmentMap, (H, W) labels in ``result.image``'s pixels
    run : RunInfo of the compartment model's run

    Effects: ``result.compartments`` and ``result.compartments_run`` set; ``result.tissue``
    becomes the map's tumour and stroma (the densities' denominator, background and necrosis
    left out); every cell gets the compartment under its centroid in the cell-table column
    ``tissue_compartment`` (background, tumour, stroma, necrosis; "" outside the map).
    """
    import numpy as np

    from core.spatial.predicted_compartments import LABELS

    result.compartments = compartments
    result.compartments_run = run
    result.tissue = compartments.tissue_mask()
    names = np.array([*LABELS, ""], dtype=object)  # index -1 (outside the map): ""
    lab = compartments.labels_at(result.cells[["x_px", "y_px"]].to_numpy(np.float64))
    result.cells = result.cells.assign(tissue_compartment=names[lab])


def spatial_statistics(result: AnalysisResult, regions=None, params=None, seed: int = 0):
    """Spatial TIL statistics of ``result`` with the whole image as the study window.

    Parameters
    ----------
    result : AnalysisResult
    regions : list of core.spatial.regions.Region, optional
        Default: ``result.regions`` (drawn or given); when there are none and the result has
        predicted compartments (:attr:`AnalysisResult.compartments`) and an mpp, their
        regions (:meth:`core.scenarios.compartments.CompartmentMap.regions`): tumour and
        stroma, necrosis and background as exclusions.
    params : core.spatial.SpatialParams, optional
        Its ``window_um`` is replaced by the image extent (0, 0, W * mpp, H * mpp).
    seed : int
        Seeds the one generator of the Monte-Carlo envelopes.

    Returns
    -------
    core.spatial.SpatialStats
        Without an mpp: not available, with the reason. With predicted compartments, the
        ``compartments`` section names them as its source, ``invasive_margin`` is measured on
        the map (a band of ± ``margin_half_width_um`` around the predicted tumour-stroma
        border, necrosis and glass excluded:
        :func:`core.spatial.predicted_compartments.invasive_margin_from_labels`), and the extra
        section ``predicted_compartments`` holds the stromal TIL % by the TILs Working Group's
        definition (:func:`predicted_stromal_tils`).
    """
    from core.spatial import SpatialParams, spatial_stats

    params = (params or SpatialParams()).validate()
    if result.image.mpp is not None:
        h, w = result.image.shape
        params = replace(params, window_um=(0.0, 0.0, w * result.image.mpp, h * result.image.mpp))
    regions = result.regions if regions is None else regions
    predicted = not regions and result.compartments is not None and bool(result.image.mpp)
    if predicted:
        regions = result.compartments.regions()
    stats = spatial_stats(result.cells, regions or None, params, seed=seed)
    if predicted and stats.available:
        from core.spatial.params import json_ready
        from core.spatial.predicted_compartments import invasive_margin_from_labels

        run = result.compartments_run
        who = f"the {run.scenario_key} model ({run.weights_file})" if run else "a compartment model"
        if stats.compartments and "source" in stats.compartments:
            stats.compartments["source"] = f"tumour and stroma predicted by {who}; necrosis and background excluded"
        margin = invasive_margin_from_labels(result.compartments.labels, result.image.mpp, result.cells, params)
        if margin.get("available"):
            margin["border_source"] += f" ({who})"
        stats.invasive_margin = json_ready(margin)
        stats.extra["predicted_compartments"] = predicted_stromal_tils(result, params)
    return stats


def predicted_stromal_tils(result: AnalysisResult, params) -> dict:
    """Stromal TILs by the TILs Working Group definition on the predicted compartments, for the statistics.

    The share of the predicted stroma covered by immune (mononuclear) cells, each a disc of
    ``params.immune_cell_area_um2`` (:func:`core.spatial.predicted_compartments.stromal_til_percent`);
    necrosis, background and tumour are not stroma. Reported only when the stroma is at least
    ``params.min_compartment_area_mm2``, as every compartment figure.

    Parameters
    ----------
    result : AnalysisResult with ``compartments`` and an mpp
    params : core.spatial.SpatialParams

    Returns
    -------
    dict: ``scenario``, ``weights_sha256``, ``regions`` ("predicted"), ``stromal_til`` (``available``,
    ``percent`` in [0, 100] or None with a ``reason``, ``stroma_area_mm2``, ``covered_area_mm2``,
    ``n_immune_in_stroma``, ``immune_cell_area_um2``, ``definition``)

    References
    ----------
    Salgado R. et al., Ann Oncol 26:259-271 (2015), International TILs Working Group.
    """
    from core.spatial.predicted_compartments import stromal_til_percent

    immune = result.cells["role"].astype(str).to_numpy() == "immune"
    xy = result.cells[["x_px", "y_px"]].to_numpy(float)[immune]
    til = stromal_til_percent(result.compartments.labels, result.image.mpp, xy, params.immune_cell_area_um2)
    if til.get("available") and til["stroma_area_mm2"] < params.min_compartment_area_mm2:
        til = {**til, "available": False, "percent": None,
               "reason": f"not enough tissue: the predicted stroma is {til['stroma_area_mm2']:.3g} mm², the figure "
                         f"needs at least {params.min_compartment_area_mm2:g} mm² (analyse a larger field)"}
    run = result.compartments_run
    return {"scenario": run.scenario_key if run else None, "weights_sha256": run.weights_sha256 if run else None,
            "regions": "predicted", "stromal_til": til}


def run_analysis(
    image: ImageData,
    key: str,
    *,
    model: ScenarioModel | None = None,
    device: str | None = None,
    precision: str = "float32",
    regions=None,
    progress: Progress | None = None,
    seed: int = 0,
    outside_validated_use: bool = False,
    antigen_confirmed: bool | None = None,
    fitness=None,
    compartments: str | None = None,
    compartments_model: ScenarioModel | None = None,
) -> AnalysisResult:
    """Check the image against the scenario's validated use, analyse it, compute its statistics.

    What every door runs. Parameters are those of :func:`analyze`; ``regions`` (µm) are
    kept on the result and used by the statistics; ``seed`` seeds their Monte-Carlo
    envelopes. The fitness checks (:func:`core.fitness.assess`: stain, magnification,
    tissue, focus) come first: a mismatch stops the run unless ``outside_validated_use``,
    in which case the result carries the reasons (shown and exported everywhere).
    ``antigen_confirmed``: the user confirmed the antibody of a one-antigen scenario (True),
    denied it (False), or was not asked (None, the command line: a warning says so).
    ``fitness``: the :func:`assess_fitness` report of this very image, scenario(s) and
    ``antigen_confirmed`` when the caller already has it (the Analyze page shows it before Run).

    ``compartments``: the key of a compartment scenario (``tissue-compartments``) to run on
    the same image after the cell scenario ``key`` (checked against its own validated use
    too); ``compartments_model`` its loaded model (loaded here if None). Its map goes on the
    result (:attr:`AnalysisResult.compartments`): the densities are then per mm² of its
    tumour and stroma (background and necrosis left out), and, unless ``regions`` are given
    (drawn regions override), the statistics take its regions (:func:`spatial_statistics`).
    A compartment scenario run as ``key`` itself has its map on the result and no statistics
    (it finds no cells).

    Returns
    -------
    AnalysisResult with ``spatial``, ``tissue`` and ``outside_validated_use`` set

    Raises
    ------
    core.fitness.OutsideValidatedUse
        The image fails a fitness check and ``outside_validated_use`` is False.
    UnknownScenarioError, WeightsError, InputError
        Also when ``compartments`` is not a compartment scenario or ``key`` finds no cells
        (:func:`compartment_scenario`).
    """
    comp = compartment_scenario(compartments, key)
    check_input(image, key)  # what the model cannot read at all comes first, with its own message
    if comp is not None:
        check_input(image, comp.key)
    fitness = fitness or assess_fitness(image, key, antigen_confirmed, compartments=compartments)
    if fitness.problems and not outside_validated_use:
        raise OutsideValidatedUse(outside_use_message(get_scenario(key), fitness.problems,
                                                      others=(comp,) if comp is not None else ()), fitness.problems)
    result = analyze(image, key, model=model, device=device, progress=progress, precision=precision)
    if result.compartments is None:
        result.tissue = fitness.tissue
    result.outside_validated_use = list(fitness.problems)
    result.warnings.extend(fitness.notes)
    if comp is not None:
        found = analyze(image, comp.key, model=compartments_model, device=device, progress=progress)
        attach_compartments(result, found.compartments, found.run)
        result.warnings.extend(w for w in found.warnings if w not in result.warnings)
        del found  # its class probabilities (16 bytes per pixel) are not kept beside a cell scenario's result
        outside = result.cells_outside_tissue()
        if outside:
            result.warnings.append(f"{outside} cell(s) lie in predicted necrosis or background: they stay in the cell "
                                   "table but are left out of the densities per mm² of tissue.")
    if regions:
        result.regions = list(regions)
    if result.scenario.outputs_of("cells"):
        result.spatial = spatial_statistics(result, seed=seed)
    return result


def assess_fitness(image: ImageData, key: str, antigen_confirmed: bool | None = None, compartments: str | None = None):
    """The fitness checks of ``image`` for scenario ``key`` (:func:`core.fitness.assess`), before any model runs.

    With ``compartments`` (a compartment scenario run beside ``key``), the image is checked
    against both scenarios' validated use; problems and notes of both, each once
    (:func:`core.fitness.merge_reports`), the stain and tissue read once.

    Returns
    -------
    core.fitness.FitnessReport: ``problems`` stop a run unless overridden, ``notes`` are warnings

    Raises
    ------
    UnknownScenarioError, InputError (see :func:`compartment_scenario`)
    """
    from core.fitness import assess, merge_reports

    comp = compartment_scenario(compartments, key)
    report = assess(image, get_scenario(key), antigen_confirmed)
    if comp is None:
        return report
    return merge_reports(report, assess(image, comp, None, stain=report.stain, tissue=report.tissue))


def save_analysis(result: AnalysisResult, case_label: str, store=None, *, confirm_synthetic: bool = False,
                  **kwargs) -> int:
    """Save ``result`` with all its exports in the case store; return the analysis id.

    See :func:`core.outputs.exports.save_result` for ``store`` and the keyword arguments.
    A model trained on synthetic images only is for teaching and method development: its
    results are saved only when the user confirms it (``confirm_synthetic``), and are then
    marked in the summary (``synthetic_save_confirmed``), on the Cases page and in the report.

    Raises
    ------
    InputError
        The scenario was trained on synthetic images only and ``confirm_synthetic`` is False.
    StoreError
    """
    from core.outputs.exports import save_result

    if result.scenario.trained_on_synthetic:
        if not confirm_synthetic:
            raise InputError(
                f"The {result.scenario.title} model was trained on synthetic images only: its results are for teaching "
                "and method development and are saved as case analyses only when you confirm it (the Analyze page's "
                "save button, or --save-synthetic on the command line). Download the files instead, or analyse the "
                "image with a validated scenario."
            )
        result = replace(result, synthetic_save_confirmed=True)
    return save_result(result, case_label, store, **kwargs)


def previous_runs(store, case_label: str, result: AnalysisResult) -> list[int]:
    """Saved analyses of the same image, scenario and settings in the same case (to ask before saving a copy).

    Settings compared: the weights (SHA-256), the mpp and the inference precision.

    Parameters
    ----------
    store : core.outputs.store.CaseStore
    case_label : str
    result : AnalysisResult, not yet saved

    Returns
    -------
    list of int, analysis ids, newest first (empty when none)

    Raises
    ------
    StoreError
    """
    label = (case_label or "").strip() or "unlabelled"
    s = result.summary
    same = []
    for row in store.list_analyses(search=result.image.sha256 or None, limit=100):
        if row["case_label"] != label or row["image_sha256"] != result.image.sha256 or row["scenario_key"] != result.scenario_key:
            continue
        if row.get("complete") is False:  # a save that did not finish is not an earlier run
            continue
        saved = store.get_analysis(row["id"])
        ss = saved.get("detected_summary") or saved["summary"]
        if (saved.get("weights_sha256") in (None, s["weights_sha256"]) and ss.get("mpp") == s["mpp"]
                and ss.get("inference_precision", "float32") == s["inference_precision"]):
            same.append(row["id"])
    return same


def write_analysis(result: AnalysisResult, out_dir: str | Path, *, report: bool = False,
                   case_label: str | None = None) -> dict[str, Path]:
    """Write the result's export files into ``out_dir``, whole or not at all.

    Writes ``cells.csv``, ``summary.json``, ``overlay.png`` and one PNG per dense output and
    restored image, ``compartments.png`` and ``regions.geojson`` when the result has predicted
    compartments; with ``report`` also ``report.pdf`` and (mpp known) ``cells.geojson``.
    The bytes are those :func:`core.outputs.exports.build_exports` makes for the case
    store, i.e. those the app downloads. They are written into a temporary folder and
    moved into ``out_dir`` (created if needed) when all are written
    (:func:`core.io.write_output_folder`): a failure leaves no file behind.

    Returns
    -------
    dict of file name to Path written

    Raises
    ------
    InputError
        ``out_dir`` cannot receive the files (a file, under a file, a folder in the way);
        see :func:`core.io.check_output_folder`.
    TILscopeError
        The files could not be written (disk full, permissions).
    """
    from core.io import check_output_folder, write_output_folder
    from core.outputs.exports import REPORT_FILES, build_exports, write_exports

    check_output_folder(out_dir)
    files = build_exports(result, case_label=case_label)
    if not report:
        files = {k: v for k, v in files.items() if k not in REPORT_FILES}
    check_output_folder(out_dir, files)
    return write_output_folder(out_dir, lambda folder: write_exports(files, folder))


def write_stored(store, analysis_id: int, out_dir: str | Path, *, report: bool = False) -> dict[str, Path]:
    """Write the files the case store keeps for an analysis (what the app downloads) into ``out_dir``, whole or not at all.

    Parameters
    ----------
    store : core.outputs.store.CaseStore
    analysis_id : int
    out_dir : path
        Created if needed; the files are written into a temporary folder and moved there
        when all are written (:func:`core.io.write_output_folder`).
    report : bool
        Also ``report.pdf`` and ``cells.geojson``.

    Returns
    -------
    dict of file name to Path written

    Raises
    ------
    StoreError
    InputError
        ``out_dir`` cannot receive the files (see :func:`core.io.check_output_folder`).
    TILscopeError
        The files could not be written (disk full, permissions).
    """
    from core.io import check_output_folder, write_output_folder
    from core.outputs.exports import REPORT_FILES, write_exports

    check_output_folder(out_dir)
    names = sorted(f["name"] for f in store.get_analysis(analysis_id)["files"])
    files = {n: store.get_file(analysis_id, n) for n in names if report or n not in REPORT_FILES}
    check_output_folder(out_dir, files)
    return write_output_folder(out_dir, lambda folder: write_exports(files, folder))


def _safe_card(scenario) -> dict:
    try:
        return scenario.card()
    except Exception:  # the card is informative here; its absence is reported by the registry tests
        return {}


def device_name(requested: str | None = None) -> str:
    """The device an analysis runs on: ``"cuda"`` when a GPU is available (or requested), else ``"cpu"``."""
    return str(pick_device(requested))


def fast_mode(key: str) -> tuple[bool, bool]:
    """Whether bfloat16 inference is validated for scenario ``key``, and whether this machine runs it natively.

    Returns
    -------
    (validated, native) : tuple of bool
    """
    from core.scenarios.base import bfloat16_supported

    validated = "bfloat16" in runner_class(get_scenario(key)).supported_precisions
    return validated, validated and bfloat16_supported(pick_device())


# --------------------------------------------------------------------------- the app's jobs
#
# The Analyze page runs these in a worker process with a memory cap (core.jobs): reading an
# upload, its fitness checks and the analysis never run in the app server.


@dataclass(frozen=True)
class ImageSource:
    """Where an image to analyse comes from, in a form that travels to a worker process.

    Attributes
    ----------
    path : str, optional
        A file (an upload kept on disk by :func:`core.jobs.stage_input`).
    name : str, optional
        Its display name (the uploaded file's name).
    page : int
        1-based page of a multi-page file.
    sample : str, optional
        Instead of a file: a bundled sample's key (:mod:`core.samples`).
    channel : str, optional
        The file's channel (its name, or its index from 0) that a single-channel scenario
        reads (the channel picker; :meth:`pick`); None: the file's channels as they are.
    """

    path: str | None = None
    name: str | None = None
    page: int = 1
    sample: str | None = None
    channel: str | None = None

    def pick(self, image: ImageData, key: str) -> ImageData:
        """``image`` (as :meth:`load` read it) reduced to :attr:`channel`, named as scenario ``key`` reads it.

        Raises
        ------
        InputError
            The scenario does not read one named channel, or the file has no such channel
            (:func:`core.scenarios.base.pick_input_channel`).
        """
        if self.channel is None:
            return image
        from core.scenarios.base import pick_input_channel

        return pick_input_channel(image, get_scenario(key), self.channel)

    def load(self) -> ImageData:
        """Read the image (its size, pages and decode checked against the limits of :mod:`core.io`).

        Raises
        ------
        ImageReadError, InputError
            See :func:`core.io.load_image`.
        """
        if self.sample is not None:
            from core.samples import get_sample

            try:
                return get_sample(self.sample).load()
            except KeyError as err:
                raise InputError(str(err.args[0])) from err
        from core.io import load_image

        return load_image(self.path, name=self.name, page=self.page)


@dataclass
class PreparedImage:
    """What the Analyze page shows about an image before Run (no pixels).

    Attributes
    ----------
    name : str
    shape : tuple of int
        (H, W) in pixels.
    n_pages : int
        Images (pages) in the file.
    mpp, mpp_source
        The pixel size as read from the file (or the sample catalogue) and where it came from.
    notes : list of str
        Reading notes (page read, orientation, alpha, scaling...).
    mpp_used : float or None
        The pixel size the checks ran at.
    fitness : core.fitness.FitnessReport or None
        The fitness checks at ``mpp_used``; None when ``refused``.
    refused : str or None
        Why the scenario cannot read the image at all (no colour, too large once resampled,
        missing channels; :func:`check_input`), or None.
    channel_names : tuple of str
        The file's channels, before any pick (:attr:`ImageSource.channel`): what the channel
        picker offers.
    """

    name: str
    shape: tuple[int, int]
    n_pages: int
    mpp: float | None
    mpp_source: str
    notes: list[str]
    mpp_used: float | None
    fitness: object | None
    refused: str | None = None
    channel_names: tuple[str, ...] = ()


#: ``mpp`` of :func:`prepare_image` / :func:`analyze_source` meaning "as the file says".
FROM_FILE = "file"


def _with_chosen_mpp(image: ImageData, mpp) -> ImageData:
    if mpp == FROM_FILE:
        return image
    return image.with_mpp(mpp, source=image.mpp_source if mpp is not None and image.mpp == mpp else "user")


def prepare_image(source: ImageSource, key: str, mpp: float | None | str = FROM_FILE,
                  antigen_confirmed: bool | None = None, fitness: bool = True,
                  compartments: str | None = None) -> PreparedImage:
    """Read an image and check it against scenario ``key`` at pixel size ``mpp``, before any model runs.

    Parameters
    ----------
    source : ImageSource
    key : str
        Scenario key.
    mpp : float, None or ``"file"``
        The pixel size the user chose (None: unknown); ``"file"``: the file's own.
    antigen_confirmed : bool, optional
        As for :func:`assess_fitness`.
    fitness : bool
        Run the fitness checks (False: read and :func:`check_input` only, ``fitness`` None).
    compartments : str, optional
        A compartment scenario to run beside ``key``: the image is checked against it too.

    Returns
    -------
    PreparedImage
        With ``refused`` set (and no fitness) when the scenario cannot read the image
        (:func:`check_input`): the file's page count and notes are still known.

    Raises
    ------
    ImageReadError, InputError, UnknownScenarioError
        The file cannot be read, or ``mpp`` is implausible.
    """
    image = source.load()
    channels = image.channel_names
    image = source.pick(image, key)
    chosen = _with_chosen_mpp(image, mpp)
    facts = (image.name, image.shape, image.n_pages, image.mpp, image.mpp_source, list(image.notes), chosen.mpp)
    try:
        check_input(chosen, key)
        comp = compartment_scenario(compartments, key)
        if comp is not None:
            check_input(chosen, comp.key)
    except InputError as err:
        return PreparedImage(*facts, None, str(err), channel_names=channels)
    return PreparedImage(*facts, assess_fitness(chosen, key, antigen_confirmed, compartments) if fitness else None,
                         channel_names=channels)


def analyze_source(source: ImageSource, key: str, mpp: float | None | str = FROM_FILE, *, device: str | None = None,
                   precision: str = "float32", outside_validated_use: bool = False,
                   antigen_confirmed: bool | None = None, fitness=None, progress: Progress | None = None,
                   compartments: str | None = None) -> AnalysisResult:
    """Read the image of ``source`` at pixel size ``mpp``, load the model(s) and run :func:`run_analysis`.

    What the Analyze page runs in a worker process (:mod:`core.jobs`); the parameters are
    those of :func:`prepare_image` and :func:`run_analysis` (``compartments``: a compartment
    scenario run beside ``key``, its model loaded here too).

    Raises
    ------
    ImageReadError, InputError, UnknownScenarioError, WeightsError, core.fitness.OutsideValidatedUse
    """
    compartment_scenario(compartments, key)  # a wrong key is refused before the image is read
    image = _with_chosen_mpp(source.pick(source.load(), key), mpp)
    model = load_model(key, device, precision)
    comp_model = load_model(compartments, device) if compartments else None
    return run_analysis(image, key, model=model, outside_validated_use=outside_validated_use,
                        antigen_confirmed=antigen_confirmed, fitness=fitness, progress=progress,
                        compartments=compartments, compartments_model=comp_model)
