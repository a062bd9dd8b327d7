"""Evaluation of the TNRD scenarios on held-out synthetic sections (recipe ``tnrd-synthetic``).

``python -m core evaluate --scenario tnrd-if-melanoma --synthetic 20 --seed 10000``
generates ``n`` sections with seeds ``seed, seed + 1, ...`` (never used in training:
training uses seeds 1000-4999, threshold tuning 5000-5999), runs the shipped model
through the same code path as ``analyze`` and reports:

- RGB PSNR of the denoised image and of the noisy input against the clean image,
  and their difference (the gain), in dB;
- mask PSNR of the predicted classification mask against the ground-truth mask;
- precision, recall and F1 of the classified immune cells: a predicted cell (a row
  of cells.csv) matches a ground-truth cell with mask value 1 whose visible centroid
  lies within the match radius (one-to-one, Hungarian). Predictions within the radius
  of a cell in the half band (mask 0.5, scenario 1) or of a classified cell with
  less visible area than the minimum cell area are ignored, and those cells are not
  counted as missed.

References
----------
TNRD melanoma paper, §2.2 (classification rule), §3 (PSNR of RGB and mask).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from core.errors import InputError
from core.evaluation.metrics import precision_recall_f1

#: Stain recipe of each TNRD scenario (core.generator.RECIPES).
SCENARIO_RECIPE = {"tnrd-if-melanoma": "if-melanoma", "tnrd-he-melanoma": "he-melanoma"}
#: Match radius between predicted and true cell centroids, pixels: about the
#: smallest semi-axis of the immune cells (Table 1: 8 px in scenario 1, 4 px in 2) + 1.
MATCH_RADIUS_PX = {"tnrd-if-melanoma": 9.0, "tnrd-he-melanoma": 5.0}
#: Seed ranges: training sections and threshold tuning; evaluation should use >= 10000.
TRAIN_SEEDS = (1000, 5000)
TUNE_SEEDS = (5000, 6000)
EVAL_SHAPE = (500, 500)


def recipe_for(key: str):
    """The generator recipe of TNRD scenario ``key``.

    Raises
    ------
    InputError
        If ``key`` is not a TNRD scenario.
    """
    from core.generator import get_recipe

    if key not in SCENARIO_RECIPE:
        raise InputError(f"scenario {key!r} has no synthetic recipe; TNRD scenarios are {', '.join(SCENARIO_RECIPE)}")
    return get_recipe(SCENARIO_RECIPE[key])


def psnr_db(x: np.ndarray, y: np.ndarray) -> float:
    """PSNR in dB of two arrays in [0, 1] (peak 1); inf when equal."""
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def truth_points(section, min_area_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth cells to find and cells to ignore.

    Returns
    -------
    find_xy : (T, 2) float64 visible centroids x, y (px) of classified cells (mask 1)
        with at least ``min_area_px`` visible pixels
    ignore_xy : (I, 2) float64 the half-band cells (mask 0.5) and the classified cells
        with less visible area
    """
    cells = section.cells
    ids = cells["cell_id"].to_numpy()
    com = np.array(ndimage.center_of_mass(np.ones(section.instance.shape), section.instance, ids)).reshape(-1, 2)[:, ::-1]
    area = cells["visible_area_px"].to_numpy()
    value = cells["mask_value"].to_numpy()
    visible = area > 0
    find = (value == 1.0) & (area >= min_area_px)
    ignore = visible & (((value == 1.0) & (area < min_area_px)) | (value == 0.5))
    return com[find], com[ignore]


def match_cells(pred_xy: np.ndarray, find_xy: np.ndarray, ignore_xy: np.ndarray, radius_px: float) -> dict:
    """TP, FP and FN of predicted cells against the cells to find, with ignored cells.

    Returns
    -------
    dict with ``tp``, ``fp``, ``fn`` (int).
    """
    from core.evaluation.metrics import match_points

    pred = np.asarray(pred_xy, float).reshape(-1, 2)
    pi, _ = match_points(pred, find_xy, radius_px)
    rest = np.setdiff1d(np.arange(len(pred)), pi)
    if len(rest) and len(ignore_xy):
        from scipy.spatial import cKDTree

        d, _ = cKDTree(ignore_xy).query(pred[rest])
        rest = rest[d > radius_px]
    tp = len(pi)
    return {"tp": int(tp), "fp": int(len(rest)), "fn": int(len(find_xy) - tp)}


def score_section(key: str, section, cells, denoised: np.ndarray, mask: np.ndarray, min_area_px: float) -> dict:
    """Metrics of one analysed synthetic section.

    Parameters
    ----------
    key : str
        TNRD scenario key (for the match radius).
    section : core.generator.SyntheticSection
    cells : pandas.DataFrame
        Predicted cell table (x_px, y_px in the section's pixels).
    denoised : (H, W, 3) uint8 RGB
    mask : (H, W) float32 in [0, 1]
    min_area_px : float
        The model's minimum cell area (smaller true cells are ignored).

    Returns
    -------
    dict
        ``rgb_psnr_db``, ``input_rgb_psnr_db``, ``rgb_psnr_gain_db``, ``mask_psnr_db``
        (dB), ``n_true``, ``n_pred``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``.
    """
    den = np.asarray(denoised, np.float32) / 255.0
    find_xy, ignore_xy = truth_points(section, min_area_px)
    m = match_cells(cells[["x_px", "y_px"]].to_numpy(), find_xy, ignore_xy, MATCH_RADIUS_PX[key])
    rgb = psnr_db(den, section.clean)
    inp = psnr_db(section.noisy_uint8.astype(np.float32) / 255.0, section.clean)
    return {
        "rgb_psnr_db": rgb, "input_rgb_psnr_db": inp, "rgb_psnr_gain_db": rgb - inp,
        "mask_psnr_db": psnr_db(mask, section.mask),
        "n_true": int(len(find_xy)), "n_pred": int(len(cells)), **precision_recall_f1(**m),
    }


def evaluate_synthetic(key: str, n: int, seed: int, device: str | None = None, shape: tuple[int, int] | None = None,
                       model=None, recipe=None) -> dict:
    """Metrics of a TNRD scenario on ``n`` fresh synthetic sections.

    Parameters
    ----------
    key : str
        ``"tnrd-if-melanoma"`` or ``"tnrd-he-melanoma"``.
    n : int in [1, 1000]
        Number of sections, seeds ``seed`` .. ``seed + n - 1``.
    seed : int >= 0
        First seed; use >= 10000 for held-out numbers (training used 1000-5999).
    device : str, optional
    shape : (H, W), optional
        Section size in pixels (default :data:`EVAL_SHAPE`, 500 x 500 as in the paper).
    model : ScenarioModel, optional
        Already loaded model (else the registered weights are loaded).
    recipe : StainRecipe, optional
        Another recipe (e.g. with other cell numbers or noise), for the teaching page.

    Returns
    -------
    dict
        ``scenario``, ``seeds``, ``shape``; ``rgb_psnr_db`` (denoised vs clean),
        ``input_rgb_psnr_db`` (noisy vs clean), ``rgb_psnr_gain_db``,
        ``mask_psnr_db`` (means over sections); ``cells`` with precision, recall, F1,
        tp, fp, fn pooled over the sections; ``match_radius_px``; ``per_image``.

    Raises
    ------
    InputError
        If ``key`` is not a TNRD scenario or ``n``/``seed`` are out of range.
    """
    from core.generator import generate
    from core.io import ImageData
    from core.pipeline import analyze, load_model

    recipe = recipe or recipe_for(key)
    shape = shape or EVAL_SHAPE
    if not (1 <= int(n) <= 1000):
        raise InputError(f"--synthetic must be between 1 and 1000 sections, got {n}")
    if int(seed) < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    model = model or load_model(key, device)
    radius = MATCH_RADIUS_PX[key]
    rows, tot = [], {"tp": 0, "fp": 0, "fn": 0}
    for s in range(int(seed), int(seed) + int(n)):
        sec = generate(recipe, shape, s)
        image = ImageData(sec.noisy_uint8, model.scenario.input_mpp, f"synthetic-{recipe.key}-{s}", "", "user")
        result = analyze(image, key, model=model)
        row = score_section(key, sec, result.cells, result.restored["denoised"], result.dense["mask"].values, model.min_area_px)
        for k in tot:
            tot[k] += row[k]
        rows.append({"seed": s, **row})
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    return {
        "scenario": key,
        "recipe": recipe.key,
        "seeds": [int(seed), int(seed) + int(n) - 1],
        "shape": list(shape),
        "rgb_psnr_db": mean("rgb_psnr_db"),
        "input_rgb_psnr_db": mean("input_rgb_psnr_db"),
        "rgb_psnr_gain_db": mean("rgb_psnr_db") - mean("input_rgb_psnr_db"),
        "mask_psnr_db": mean("mask_psnr_db"),
        "cells": precision_recall_f1(**tot),
        "match_radius_px": radius,
        "threshold": model.threshold,
        "min_area_px": model.min_area_px,
        "per_image": rows,
    }


def real_he_check(model, data_dir, mpp: float = 0.55, radius_um: float = 4.0) -> dict:
    """What an H&E TNRD model does on real H&E with nucleus points (``he-crc-cell-points``).

    The real labels are not the paper's classes (every inflammatory nucleus is marked,
    dense infiltrate or not), so this is a plausibility check, not a validation:
    detections are matched one-to-one to the inflammatory, epithelial and all marked
    nuclei within ``radius_um``.

    Parameters
    ----------
    model : ScenarioModel of ``tnrd-he-melanoma``
    data_dir : path to a folder of ``imgN/imgN.png`` with ``imgN_<class>.mat`` points
    mpp : float
        Pixel size of the images (about 0.55 µm/px at 20x per the data README).
    radius_um : float

    Returns
    -------
    dict with the pooled counts and fractions and ``images``.
    """
    from pathlib import Path

    import scipy.io as sio

    from core.evaluation.metrics import match_points
    from core.io import load_image
    from core.pipeline import analyze

    folders = sorted(p for p in Path(data_dir).iterdir() if (p / f"{p.name}.png").is_file())
    if not folders:
        raise InputError(f"no imgN/imgN.png images in {data_dir}")
    tot = {"detections": 0, "inflammatory": 0, "inflammatory_found": 0, "near_inflammatory": 0,
           "near_epithelial": 0, "near_any_nucleus": 0}
    radius_px = radius_um / mpp
    for f in folders:
        image = load_image(f / f"{f.name}.png", mpp=mpp)
        cells = analyze(image, model.scenario.key, model=model).cells
        xy = cells[["x_px", "y_px"]].to_numpy()
        pts = {k: sio.loadmat(f / f"{f.name}_{k}.mat")["detection"].reshape(-1, 2)
               for k in ("inflammatory", "epithelial", "detection")}
        tot["detections"] += len(xy)
        tot["inflammatory"] += len(pts["inflammatory"])
        n_inf = len(match_points(xy, pts["inflammatory"], radius_px)[0])
        tot["inflammatory_found"] += n_inf
        tot["near_inflammatory"] += n_inf
        tot["near_epithelial"] += len(match_points(xy, pts["epithelial"], radius_px)[0])
        tot["near_any_nucleus"] += len(match_points(xy, pts["detection"], radius_px)[0])
    d = max(tot["detections"], 1)
    return {
        "data": str(data_dir), "images": len(folders), "mpp": mpp, "radius_um": radius_um, **tot,
        "share_of_detections_on_inflammatory_nuclei": tot["near_inflammatory"] / d,
        "share_of_detections_on_epithelial_nuclei": tot["near_epithelial"] / d,
        "share_of_detections_on_any_marked_nucleus": tot["near_any_nucleus"] / d,
        "share_of_inflammatory_nuclei_detected": tot["inflammatory_found"] / max(tot["inflammatory"], 1),
    }


def real_if_check(model, data_dir, mpp: float = 1.0) -> dict:
    """What an IF TNRD model does on real immunofluorescence without melanoma cells.

    The project has no CD45/gp100/DAPI melanoma image. The Hoechst + multiplex IF lung
    tiles (``hoechst-mif-lung``) are rendered as CD3 in red (an immune marker, like
    CD45), Hoechst in blue (a nuclear stain, like DAPI) and an empty green (no gp100+
    melanoma cells), each channel scaled to its 1st-99.5th percentiles. With no
    melanoma cells nobody is in contact with one, so every classified cell is a false
    positive of the contact rule: the count is a specificity check.

    Returns
    -------
    dict with ``tiles``, ``classified_cells`` and ``classified_per_tile``.
    """
    from pathlib import Path

    import tifffile

    from core.pipeline import analyze

    files = sorted(p for p in Path(data_dir).glob("*.tif"))
    if not files:
        raise InputError(f"no .tif tiles in {data_dir}")
    counts = []
    for f in files:
        stack = tifffile.imread(f).astype(np.float64)  # (5, H, W): Hoechst, CD20, CD8, PD1, CD3

        def scale(c):
            lo, hi = np.percentile(c, [1, 99.5])
            return np.clip((c - lo) / max(hi - lo, 1e-9), 0, 1)

        rgb = np.stack([scale(stack[4]), np.zeros(stack.shape[1:]), scale(stack[0])], axis=-1)
        from core.io import ImageData

        image = ImageData((rgb * 255 + 0.5).astype(np.uint8), mpp, f.name, "", "user")
        counts.append(int(len(analyze(image, model.scenario.key, model=model).cells)))
    return {"data": str(data_dir), "tiles": len(files), "mpp": mpp, "rendering": "R = CD3, G = 0, B = Hoechst",
            "classified_cells": int(sum(counts)), "classified_per_tile": counts}
