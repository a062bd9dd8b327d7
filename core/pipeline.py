"""One pipeline for the CLI, the app and batch jobs: run → save → write.

- :func:`run_analysis`: load (or take) the model, analyse the image, compute the spatial
  statistics → :class:`~core.results.AnalysisResult`.
- :func:`save_analysis`: the result with all its exports into the case store.
- :func:`write_analysis`: the result's export files into a folder, or :func:`write_stored`:
  the files the case store keeps for a saved analysis (what the app downloads).

Every output file has one writer (:func:`core.outputs.exports.build_exports`), so the same
image and settings give the same files whichever door they came in by (apart from the
timestamps and the run time).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from core import __version__
from core.allocator import tune_allocator
from core.io import ImageData
from core.results import AnalysisResult, DenseOutput, RunInfo
from core.scenarios.base import ScenarioModel, pick_device
from core.scenarios.base import check_input as check_scenario_input
from core.scenarios.registry import get_scenario, runner_class
from core.tiling import Progress

__all__ = ["load_model", "analyze", "spatial_statistics", "run_analysis", "save_analysis", "write_analysis",
           "write_stored", "check_input", "device_name", "fast_mode"]


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
        torch_version=torch.__version__,
    )
    warnings = list(image.notes) + list(out.notes) + ([scenario.caution] if scenario.caution else [])
    return AnalysisResult(image, out.cells, run, scenario, dense, restored, [], warnings)


def spatial_statistics(result: AnalysisResult, regions=None, params=None, seed: int = 0):
    """Spatial TIL statistics of ``result`` with the whole image as the study window.

    Parameters
    ----------
    result : AnalysisResult
    regions : list of core.spatial.regions.Region, optional
        Default: ``result.regions``.
    params : core.spatial.SpatialParams, optional
        Its ``window_um`` is replaced by the image extent (0, 0, W * mpp, H * mpp).
    seed : int
        Seeds the one generator of the Monte-Carlo envelopes.

    Returns
    -------
    core.spatial.SpatialStats
        Without an mpp: not available, with the reason.
    """
    from core.spatial import SpatialParams, spatial_stats

    params = params or SpatialParams()
    if result.image.mpp is not None:
        h, w = result.image.shape
        params = replace(params, window_um=(0.0, 0.0, w * result.image.mpp, h * result.image.mpp))
    regions = result.regions if regions is None else regions
    return spatial_stats(result.cells, regions or None, params, seed=seed)


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
) -> AnalysisResult:
    """Analyse an image and compute its spatial statistics: what every door runs.

    Parameters are those of :func:`analyze`; ``regions`` (µm) are kept on the result and
    used by the statistics; ``seed`` seeds their Monte-Carlo envelopes.

    Returns
    -------
    AnalysisResult with ``spatial`` set

    Raises
    ------
    UnknownScenarioError, WeightsError, InputError
    """
    result = analyze(image, key, model=model, device=device, progress=progress, precision=precision)
    if regions:
        result.regions = list(regions)
    result.spatial = spatial_statistics(result, seed=seed)
    return result


def save_analysis(result: AnalysisResult, case_label: str, store=None, **kwargs) -> int:
    """Save ``result`` with all its exports in the case store; return the analysis id.

    See :func:`core.outputs.exports.save_result` for ``store`` and the keyword arguments.

    Raises
    ------
    InputError, StoreError
    """
    from core.outputs.exports import save_result

    return save_result(result, case_label, store, **kwargs)


def write_analysis(result: AnalysisResult, out_dir: str | Path, *, report: bool = False,
                   case_label: str | None = None) -> dict[str, Path]:
    """Write the result's export files into ``out_dir`` (created if needed).

    Writes ``cells.csv``, ``summary.json``, ``overlay.png`` and one PNG per dense output and
    restored image; with ``report`` also ``report.pdf`` and (mpp known) ``cells.geojson``.
    The bytes are those :func:`core.outputs.exports.build_exports` makes for the case
    store, i.e. those the app downloads.

    Returns
    -------
    dict of file name to Path written
    """
    from core.outputs.exports import REPORT_FILES, build_exports, write_exports

    files = build_exports(result, case_label=case_label)
    if not report:
        files = {k: v for k, v in files.items() if k not in REPORT_FILES}
    return {p.name: p for p in write_exports(files, out_dir)}


def write_stored(store, analysis_id: int, out_dir: str | Path, *, report: bool = False) -> dict[str, Path]:
    """Write the files the case store keeps for an analysis (what the app downloads) into ``out_dir``.

    Parameters
    ----------
    store : core.outputs.store.CaseStore
    analysis_id : int
    report : bool
        Also ``report.pdf`` and ``cells.geojson``.

    Returns
    -------
    dict of file name to Path written

    Raises
    ------
    StoreError
    """
    from core.outputs.exports import REPORT_FILES, write_exports

    names = sorted(f["name"] for f in store.get_analysis(analysis_id)["files"])
    files = {n: store.get_file(analysis_id, n) for n in names if report or n not in REPORT_FILES}
    return {p.name: p for p in write_exports(files, out_dir)}


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
