"""Run a scenario on an image and write its outputs: the one code path of CLI and app."""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from core import __version__
from core.allocator import tune_allocator
from core.cells import CELL_COLUMNS
from core.errors import InputError
from core.io import ImageData
from core.overlay import draw_cells, mask_to_uint8
from core.registry import Scenario, get_scenario, runner_class
from core.results import AnalysisResult
from core.scenarios.base import Progress, ScenarioModel, pick_device


def load_model(key: str, device: str | None = None, precision: str = "float32") -> ScenarioModel:
    """Load a registered scenario's model on ``device`` (CUDA when available if None).

    ``precision`` is ``"float32"`` (default) or ``"bfloat16"`` for the scenarios validated at
    it (see :func:`core.scenarios.base.check_precision`).

    Raises
    ------
    UnknownScenarioError, WeightsError, InputError

    Loading also tunes the process's memory allocator for large tiles
    (:func:`core.allocator.tune_allocator`, glibc only).
    """
    scenario = get_scenario(key)
    tune_allocator()
    return runner_class(scenario).from_registry(scenario, pick_device(device), precision)


def analyze(
    image: ImageData,
    key: str,
    model: ScenarioModel | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    precision: str = "float32",
) -> AnalysisResult:
    """Analyse one image with one scenario.

    Parameters
    ----------
    image : ImageData
        (H, W, 3) uint8 RGB with its mpp (None allowed: pixel counts only).
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
        Cells in image pixels and µm; ``summary`` with counts per class, and densities
        in cells/mm² of the analysed area (the whole image) when mpp is known.

    Raises
    ------
    UnknownScenarioError, WeightsError, InputError (among others: an image without colour for
    a scenario that reads colours, see :func:`check_colour`)
    """
    scenario = get_scenario(key)
    check_colour(image, scenario)
    model = model or load_model(key, device, precision)
    start = time.perf_counter()
    cells, masks, denoised, notes = model.analyze(image, progress)
    runtime_s = time.perf_counter() - start
    warnings = list(image.notes) + list(notes) + ([scenario.caution] if scenario.caution else [])
    summary = build_summary(image, scenario, cells, runtime_s, str(model.device), warnings, model.precision)
    return AnalysisResult(key, image, cells, summary, masks, denoised, warnings)


def check_colour(image: ImageData, scenario: Scenario) -> None:
    """Refuse an image without colour for a scenario whose model reads colours.

    A greyscale file is repeated into RGB on loading (:func:`core.io.to_rgb8`), so its red,
    green and blue are equal at every pixel. An H&E or DAB + hematoxylin model cannot tell
    its stains apart there, and would return a plausible-looking but meaningless result.

    Parameters
    ----------
    image : ImageData, (H, W, 3) uint8 RGB
    scenario : Scenario, checked when ``scenario.reads_colour``

    Raises
    ------
    InputError
        If red, green and blue are equal at every pixel (a greyscale image or a blank field).
    """
    px = image.pixels
    if scenario.reads_colour and np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2]):
        raise InputError(
            f"{image.name}: the image has no colour (red, green and blue are equal at every pixel: a greyscale "
            f"image or a blank field), but the {scenario.key} model reads the colours of {scenario.stain}; "
            "upload the colour (RGB) image as scanned"
        )


def build_summary(
    image: ImageData, scenario: Scenario, cells: pd.DataFrame, runtime_s: float, device: str, warnings: list[str],
    precision: str = "float32",
) -> dict:
    """JSON-ready summary: counts and densities per class, run metadata."""
    h, w = image.shape
    area_mm2 = None if image.mpp is None else h * w * image.mpp**2 / 1e6
    counts = {c.name: int((cells["cell_class"] == c.name).sum()) for c in scenario.classes}
    for extra in sorted(set(cells["cell_class"]) - set(counts)):
        counts[str(extra)] = int((cells["cell_class"] == extra).sum())
    roles = {r: int((cells["role"] == r).sum()) for r in ("immune", "tumour", "stroma", "other")}
    density = None if area_mm2 is None else {k: v / area_mm2 for k, v in counts.items()}
    card = _safe_card(scenario)
    return {
        "scenario": scenario.key,
        "scenario_title": scenario.title,
        "weights_file": scenario.weights,
        "weights_sha256": scenario.sha256,
        "weights_version": card.get("version"),
        "trained_on_synthetic": scenario.trained_on_synthetic,
        "image": {"name": image.name, "sha256": image.sha256, "width_px": w, "height_px": h},
        "mpp": image.mpp,
        "mpp_source": image.mpp_source,
        "analysed_area": "whole image",
        "area_mm2": area_mm2,
        "n_cells": int(len(cells)),
        "counts": counts,
        "counts_by_role": roles,
        "density_per_mm2": density,
        "density_by_role_per_mm2": None if area_mm2 is None else {k: v / area_mm2 for k, v in roles.items()},
        "runtime_s": round(runtime_s, 3),
        "device": device,
        "inference_precision": precision,
        "torch": torch.__version__,
        "app_version": __version__,
        "python": platform.python_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "warnings": warnings,
    }


def spatial_statistics(result: AnalysisResult, regions=None, params=None, seed: int = 0) -> dict:
    """Spatial TIL statistics of ``result`` over the whole image as the study window.

    Parameters
    ----------
    result : AnalysisResult
    regions : list of core.regions.Region, optional
    params : core.spatial.SpatialParams, optional
        Its ``window_um`` is replaced by the image extent (0, 0, W * mpp, H * mpp).
    seed : int
        Seeds the one generator of the Monte-Carlo envelopes.

    Returns
    -------
    dict
        JSON-ready, see :func:`core.spatial.compute_spatial_stats`; without an mpp,
        ``{"available": False, "reason": ...}``.
    """
    from dataclasses import replace

    from core.spatial import SpatialParams, compute_spatial_stats

    params = params or SpatialParams()
    if result.image.mpp is not None:
        h, w = result.image.shape
        params = replace(params, window_um=(0.0, 0.0, w * result.image.mpp, h * result.image.mpp))
    return compute_spatial_stats(result.cells, regions, params, seed=seed)


def _safe_card(scenario: Scenario) -> dict:
    try:
        return scenario.card()
    except Exception:  # the card is informative here; its absence is reported elsewhere
        return {}


def overlay_image(result: AnalysisResult) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the image with every cell ringed in its class colour."""
    scenario = get_scenario(result.scenario_key)
    h, w = result.image.shape
    radius_px = 5.0 / result.image.mpp if result.image.mpp else 25.0  # about a lymphocyte's radius + margin
    return draw_cells(result.image.pixels, result.cells, scenario.class_colors, radius_px, max(1, int(min(h, w) / 600) + 1))


def write_outputs(result: AnalysisResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``cells.csv``, ``summary.json`` and ``overlay.png`` (plus masks) into ``out_dir``.

    Returns
    -------
    dict of name to Path of every file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    files["cells.csv"] = out / "cells.csv"
    columns = list(CELL_COLUMNS) + [c for c in result.cells.columns if c not in CELL_COLUMNS]
    result.cells.to_csv(files["cells.csv"], index=False, columns=columns, float_format="%.3f")
    files["summary.json"] = out / "summary.json"
    files["summary.json"].write_text(json.dumps(result.summary, indent=2, ensure_ascii=False), encoding="utf-8")
    files["overlay.png"] = out / "overlay.png"
    Image.fromarray(overlay_image(result)).save(files["overlay.png"])
    if result.denoised is not None:
        files["denoised.png"] = out / "denoised.png"
        Image.fromarray(result.denoised).save(files["denoised.png"])
    if "mask" in result.masks:  # classification mask (TNRD scenarios), (H, W) float in [0, 1] → 8-bit grey
        files["mask.png"] = out / "mask.png"
        Image.fromarray(mask_to_uint8(result.masks["mask"])).save(files["mask.png"])
    return files
