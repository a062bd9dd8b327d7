"""Calibrated operating point of ``cd3-ihc``: detection threshold and NMS radius chosen for F1.

Usage::

    python -m core.evaluation.cd3_calibration --weights runs/cd3-v2.safetensors --write \
        --out runs/cd3-v2.calibration.json
    python -m core.evaluation.cd3_calibration --weights weights/cd3-ihc-cnn-v1.safetensors \
        --evaluate-only --out runs/cd3-v1.reporting.json
    python -m core.evaluation.cd3_calibration --weights runs/cd3-v5.safetensors --cross-fitted

Method. The gastric CD3 paper slides its patch classifier over an image and keeps the
windows that survive non-maximum suppression (§III.A), but states neither the probability
a window needs nor the NMS extent. Both are chosen here for detection F1 on mosaics of
held-out patches (:func:`core.evaluation.mosaic.build_mosaic`: one CD3+ lymphocyte at the
centre of every positive tile, matched within :data:`MATCH_RADIUS_UM`).

Choosing on the validation mosaics and then reporting on the same mosaics would report a
tuned figure. The validation split is therefore cut in two halves **by source block**
(the same 512 x 512 px block of a source micrograph that the train / tune / validation
split is drawn by, so overlapping patches never straddle the halves), by SHA-1 of the
block key (:func:`validation_halves`):

- ``calibration`` half: the grid search (:data:`THRESHOLDS` x :data:`NMS_RADII_UM`) on
  mosaics :data:`CALIBRATION_SEEDS`; the best F1 is the operating point
  (:func:`pick_operating_point`);
- ``reporting`` half: detection precision / recall / F1 at that point, once, on mosaics
  :data:`REPORTING_SEEDS` (:func:`mosaic_detection`). This is the figure the card reports.

The chosen point is written into the weights' safetensors metadata (``threshold``,
``nms_radius_um``, ``operating_point_chosen_on``; :func:`write_operating_point`), where the
scenario reads it (:class:`core.scenarios.cd3_ihc.CD3IHCModel`), and from there it goes
into every ``summary.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.errors import InputError

#: Detection match radius: about half a lymphocyte nucleus (7 µm); as :data:`core.evaluation.cd3.CD3_MATCH_RADIUS_UM`.
MATCH_RADIUS_UM = 4.0
#: Detection thresholds searched (P(CD3+ lymphocyte) of a window). From 0.05: weights fine-tuned on
#: hard negatives put true lymphocytes at 0.05-0.2, below the first grid of 0.2-0.95 (cd3 v2's tune epochs).
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))
#: NMS radii searched, µm. Capped at 6 µm: mosaics (one cell per 14 µm tile) reward ever larger
#: radii, but touching lymphocytes in a real infiltrate sit about 6-7 µm apart and would merge.
NMS_RADII_UM = (3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0)
CALIBRATION_SEEDS = (201, 202, 203, 204, 205, 206)
REPORTING_SEEDS = (301, 302, 303, 304, 305, 306)
MOSAIC_GRID = (12, 12)
#: Salt of the half split, so it is independent of the train / tune / validation draw.
HALF_SALT = "cd3-validation-half/"
HALVES = ("calibration", "reporting")


def validation_halves(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Cut the validation split into a calibration and a reporting half by source block.

    Parameters
    ----------
    table : DataFrame of :func:`core.evaluation.datasets.cd3_patch_table` (columns
        ``path``, ``label``, ``group``, ``split``); only its ``validation`` rows are used.

    Returns
    -------
    dict with keys ``"calibration"`` and ``"reporting"``, each the validation rows whose
    group's SHA-1 (salted with :data:`HALF_SALT`) falls below / above one half. The halves
    are disjoint, cover the validation split, and never share a source block.

    Raises
    ------
    InputError
        If the table has no ``group`` column or no validation rows.
    """
    if "group" not in table.columns:
        raise InputError("the patch table has no 'group' column: build it with core.evaluation.datasets.cd3_patch_table")
    val = table[table.split == "validation"]
    if val.empty:
        raise InputError("the patch table has no validation rows to calibrate on")
    u = val.group.map(lambda g: int(hashlib.sha1((HALF_SALT + g).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF)
    return {"calibration": val[u < 0.5], "reporting": val[u >= 0.5]}


def mosaic_maps(model, table: pd.DataFrame, seeds, grid=MOSAIC_GRID) -> list[tuple[np.ndarray, np.ndarray]]:
    """Probability grids of mosaics of ``table``'s patches, with their true CD3+ centres.

    Parameters
    ----------
    model : core.scenarios.cd3_ihc.CD3IHCModel
    table : DataFrame with ``path`` and ``label`` (one half of :func:`validation_halves`)
    seeds : iterable of int, one mosaic each
    grid : (rows, cols) of 70 px tiles

    Returns
    -------
    list of (prob, truth_xy): prob (rows * 70 / 8, cols * 70 / 8) float32 in [0, 1] (rounded
    up), truth_xy (P, 2) float64 x, y in pixels at 0.2 µm/px.
    """
    from core.evaluation.mosaic import build_mosaic

    out = []
    for seed in seeds:
        m = build_mosaic(table, *grid, seed=int(seed))
        out.append((model.probability_map(m.pixels), m.positive_xy))
    return out


def score_grid(model, maps, thresholds=THRESHOLDS, radii_um=NMS_RADII_UM,
               match_radius_um: float = MATCH_RADIUS_UM) -> pd.DataFrame:
    """Detection counts on ``maps`` for every threshold and NMS radius.

    Parameters
    ----------
    model : object with ``detect(prob, threshold, nms_radius_px)`` and ``scenario.input_mpp``
        (:class:`core.scenarios.cd3_ihc.CD3IHCModel`)
    maps : list of (prob, truth_xy) from :func:`mosaic_maps`
    thresholds : iterable of float in [0, 1]
    radii_um : iterable of float >= 0, µm
    match_radius_um : float > 0, µm

    Returns
    -------
    DataFrame, one row per (threshold, nms_radius_um): ``tp``, ``fp``, ``fn`` (summed over
    the mosaics), ``precision``, ``recall``, ``f1`` in [0, 1].
    """
    from core.evaluation.metrics import detection_metrics, precision_recall_f1

    mpp = model.scenario.input_mpp
    rows = []
    for radius_um in radii_um:
        for thr in thresholds:
            tp = fp = fn = 0
            for prob, truth in maps:
                xy, _ = model.detect(prob, float(thr), float(radius_um) / mpp)
                d = detection_metrics(xy, truth, match_radius_um / mpp)
                tp, fp, fn = tp + d["tp"], fp + d["fp"], fn + d["fn"]
            rows.append({"threshold": float(thr), "nms_radius_um": float(radius_um)} | precision_recall_f1(tp, fp, fn))
    return pd.DataFrame(rows)


def pick_operating_point(scores: pd.DataFrame) -> dict:
    """The row of a score table with the highest F1.

    Ties (F1 equal to 1e-9) go to the higher precision (fewer false CD3 counts), then the
    higher threshold, then the smaller NMS radius (fewer touching cells merged): a rule
    fixed before any score is seen.

    Parameters
    ----------
    scores : DataFrame with ``threshold``, ``nms_radius_um``, ``f1``, ``precision`` (and
        optionally ``recall``, ``tp``, ``fp``, ``fn``), e.g. from :func:`score_grid`

    Returns
    -------
    dict: ``threshold``, ``nms_radius_um`` and the row's other columns (Python scalars).

    Raises
    ------
    InputError
        If the table is empty or lacks a column.
    """
    need = {"threshold", "nms_radius_um", "f1", "precision"}
    if scores.empty or not need <= set(scores.columns):
        raise InputError(f"a score table needs rows and the columns {sorted(need)}, got {len(scores)} rows "
                         f"with {sorted(scores.columns)}")
    s = scores.assign(_f1=scores.f1.round(9), _p=scores.precision.round(9), _r=-scores.nms_radius_um)
    best = s.sort_values(["_f1", "_p", "threshold", "_r"], ascending=False, kind="mergesort").iloc[0]
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items() if not k.startswith("_")}


def mosaic_detection(model, maps, threshold: float | None = None, nms_radius_um: float | None = None,
                     match_radius_um: float = MATCH_RADIUS_UM) -> dict:
    """Detection precision / recall / F1 on ``maps`` at one operating point.

    Parameters
    ----------
    model : core.scenarios.cd3_ihc.CD3IHCModel
    maps : list of (prob, truth_xy) from :func:`mosaic_maps`
    threshold, nms_radius_um : the point (µm); both None: the model's own operating point
        (v1 weights: their square-box NMS)

    Returns
    -------
    dict: ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``, ``threshold``,
    ``nms_radius_um`` (None for v1's box NMS), ``match_radius_um``.
    """
    from core.evaluation.metrics import detection_metrics, precision_recall_f1

    mpp = model.scenario.input_mpp
    tp = fp = fn = 0
    for prob, truth in maps:
        if threshold is None and nms_radius_um is None:
            xy, _ = model.detect_at_operating_point(prob)
        else:
            xy, _ = model.detect(prob, float(threshold), float(nms_radius_um) / mpp)
        d = detection_metrics(xy, truth, match_radius_um / mpp)
        tp, fp, fn = tp + d["tp"], fp + d["fp"], fn + d["fn"]
    own = threshold is None and nms_radius_um is None
    return precision_recall_f1(tp, fp, fn) | {
        "threshold": model.threshold if own else float(threshold),
        "nms_radius_um": model.nms_radius_um if own else float(nms_radius_um),
        "match_radius_um": match_radius_um,
    }


def load_weights_model(weights: str | Path, device: str = "cpu"):
    """A :class:`core.scenarios.cd3_ihc.CD3IHCModel` from any CD3 weights file (not only the registered one).

    Raises
    ------
    WeightsError
        If the file is missing, not safetensors, or not CD3 CNN weights.
    """
    from core.scenarios.cd3_ihc import CD3IHCModel
    from core.scenarios.registry import get_scenario
    from core.scenarios.weights import load_verified_state_dict, sha256_file
    from core.errors import WeightsError

    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    state, meta = load_verified_state_dict(path, sha256_file(path))
    return CD3IHCModel(get_scenario("cd3-ihc"), torch.device(device), state, meta)


def patch_metrics(model, table: pd.DataFrame) -> dict:
    """Accuracy / precision / recall / F1 of the patch classifier at the model's ``patch_threshold``.

    Parameters
    ----------
    table : DataFrame with ``path`` and ``label`` (1 = CD3+ lymphocyte)

    Returns
    -------
    dict of :func:`core.evaluation.metrics.binary_metrics` plus ``threshold``.
    """
    from core.evaluation.datasets import read_patches
    from core.evaluation.metrics import binary_metrics

    prob = model.classify_patches(read_patches(table.path))
    return binary_metrics(table.label.to_numpy(), prob >= model.patch_threshold) | {"threshold": model.patch_threshold}


def calibrate(model, table: pd.DataFrame, calibration_seeds=CALIBRATION_SEEDS, reporting_seeds=REPORTING_SEEDS,
              grid=MOSAIC_GRID, thresholds=THRESHOLDS, radii_um=NMS_RADII_UM) -> dict:
    """Choose the operating point on the calibration half; report it on the reporting half.

    Parameters
    ----------
    model : core.scenarios.cd3_ihc.CD3IHCModel
    table : the full :func:`core.evaluation.datasets.cd3_patch_table` (its validation rows are used)

    Returns
    -------
    dict
        ``operating_point`` (``threshold``, ``nms_radius_um``, ``chosen_on``),
        ``calibration_half`` (best row of the grid, its size, seeds, the searched grid),
        ``reporting_half`` (:func:`mosaic_detection` at that point; patches),
        ``previous_operating_point_on_reporting_half`` (the model's operating point before
        calibration, on the same reporting mosaics).
    """
    halves = validation_halves(table)
    cal_maps = mosaic_maps(model, halves["calibration"], calibration_seeds, grid)
    scores = score_grid(model, cal_maps, thresholds, radii_um)
    best = pick_operating_point(scores)
    rep_maps = mosaic_maps(model, halves["reporting"], reporting_seeds, grid)
    chosen_on = (f"validation calibration half ({len(halves['calibration'])} patches, "
                 f"{halves['calibration'].group.nunique()} source blocks; mosaics {grid[0]}x{grid[1]}, seeds "
                 f"{list(calibration_seeds)}); reported on the disjoint reporting half")
    return {
        "operating_point": {"threshold": best["threshold"], "nms_radius_um": best["nms_radius_um"], "chosen_on": chosen_on},
        "calibration_half": best | {"patches": _half_counts(halves["calibration"]), "seeds": list(calibration_seeds),
                                    "grid": list(grid), "searched": {"threshold": list(thresholds),
                                                                     "nms_radius_um": list(radii_um)},
                                    "rule": "highest F1; ties: higher precision, higher threshold, smaller radius"},
        "reporting_half": mosaic_detection(model, rep_maps, best["threshold"], best["nms_radius_um"])
        | {"patches": _half_counts(halves["reporting"]), "seeds": list(reporting_seeds), "grid": list(grid)},
        "previous_operating_point_on_reporting_half": mosaic_detection(model, rep_maps),
    }


def cross_fit_maps(model, maps_a, maps_b, thresholds=THRESHOLDS, radii_um=NMS_RADII_UM) -> dict:
    """Choose the operating point on one half's mosaics and score it on the other, both ways.

    A figure for deciding between two weights files that neither half has tuned: each
    direction's score is on mosaics its operating point was not chosen on, so the choice
    does not inflate it (the calibration-half F1 of :func:`calibrate` is the best of a grid
    search and favours a model whose best point does not carry over).

    Parameters
    ----------
    model : object with ``detect`` and ``scenario.input_mpp`` (:class:`core.scenarios.cd3_ihc.CD3IHCModel`)
    maps_a, maps_b : lists of (prob, truth_xy) of the two halves (:func:`mosaic_maps`)
    thresholds, radii_um : the searched grid

    Returns
    -------
    dict: ``a_to_b`` and ``b_to_a`` (the point chosen on the first half: ``threshold``,
    ``nms_radius_um``; and :func:`mosaic_detection` on the second), ``pooled`` (precision,
    recall, f1 of the two held-out scores' summed counts).
    """
    from core.evaluation.metrics import precision_recall_f1

    out = {}
    for name, (fit, held) in (("a_to_b", (maps_a, maps_b)), ("b_to_a", (maps_b, maps_a))):
        best = pick_operating_point(score_grid(model, fit, thresholds, radii_um))
        out[name] = {"chosen": {"threshold": best["threshold"], "nms_radius_um": best["nms_radius_um"]},
                     "held_out": mosaic_detection(model, held, best["threshold"], best["nms_radius_um"])}
    counts = {k: sum(out[d]["held_out"][k] for d in ("a_to_b", "b_to_a")) for k in ("tp", "fp", "fn")}
    out["pooled"] = precision_recall_f1(**counts)
    return out


def cross_fitted(model, table: pd.DataFrame, calibration_seeds=CALIBRATION_SEEDS, reporting_seeds=REPORTING_SEEDS,
                 grid=MOSAIC_GRID) -> dict:
    """:func:`cross_fit_maps` on the two validation halves' mosaics (the figure to compare versions on).

    Returns
    -------
    dict as :func:`cross_fit_maps`, ``a`` the calibration half and ``b`` the reporting half, with ``seeds``.
    """
    halves = validation_halves(table)
    maps_a = mosaic_maps(model, halves["calibration"], calibration_seeds, grid)
    maps_b = mosaic_maps(model, halves["reporting"], reporting_seeds, grid)
    return cross_fit_maps(model, maps_a, maps_b) | {"seeds": {"a": list(calibration_seeds), "b": list(reporting_seeds)},
                                                   "grid": list(grid)}


def report(model, table: pd.DataFrame, reporting_seeds=REPORTING_SEEDS, grid=MOSAIC_GRID) -> dict:
    """Held-out figures of a model at its own operating point (no calibration).

    Returns
    -------
    dict
        ``operating_point``, ``validation_patches`` (whole validation split, patch
        threshold), ``reporting_half_patches``, ``reporting_half_mosaics``
        (:func:`mosaic_detection` on mosaics :data:`REPORTING_SEEDS`), and
        ``external_held_out_detections`` (detections per mm² on the never-mined bottom halves of
        the IHC images without CD3, :func:`core.training.cd3_negatives.external_detections_per_mm2`;
        every one is a false CD3 count).
    """
    from core.training.cd3_negatives import external_detections_per_mm2

    halves = validation_halves(table)
    rep_maps = mosaic_maps(model, halves["reporting"], reporting_seeds, grid)
    return {
        "operating_point": model.operating_point,
        "validation_patches": patch_metrics(model, table[table.split == "validation"]),
        "reporting_half_patches": patch_metrics(model, halves["reporting"]),
        "reporting_half_mosaics": mosaic_detection(model, rep_maps)
        | {"patches": _half_counts(halves["reporting"]), "seeds": list(reporting_seeds), "grid": list(grid)},
        "external_held_out_detections": external_detections_per_mm2(model, "held-out"),
    }


def _half_counts(part: pd.DataFrame) -> dict:
    return {"n": int(len(part)), "positive": int(part.label.sum()), "source_blocks": int(part.group.nunique())}


def write_operating_point(weights: str | Path, operating_point: dict) -> str:
    """Write ``threshold``, ``nms_radius_um`` and ``operating_point_chosen_on`` into a weights file's metadata.

    The tensors are written back unchanged (same dtype); the file's SHA-256 changes, so
    the registry's and the card's hashes must follow.

    Parameters
    ----------
    weights : path of a CD3 CNN ``.safetensors`` file
    operating_point : dict with ``threshold`` (float in [0, 1]), ``nms_radius_um`` (float >= 0)
        and ``chosen_on`` (str)

    Returns
    -------
    str, the new SHA-256 of the file

    Raises
    ------
    InputError
        If a value is out of range.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from core.scenarios.weights import sha256_file

    thr, radius = float(operating_point["threshold"]), float(operating_point["nms_radius_um"])
    if not (0.0 <= thr <= 1.0 and 0.0 <= radius < np.inf):
        raise InputError(f"operating point out of range: threshold {thr} (0-1), nms_radius_um {radius} (>= 0)")
    path = Path(weights)
    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    meta.pop("nms_box_um", None)
    meta.pop("nms_iou", None)
    meta |= {"threshold": str(thr), "nms_radius_um": str(radius),
             "operating_point_chosen_on": str(operating_point.get("chosen_on", ""))}
    save_file(state, str(path), metadata=meta)
    return sha256_file(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="CD3 CNN .safetensors file")
    p.add_argument("--data", default=None, help="CD3 patch folder (default ../shared/data/cd3-ihc-gastric)")
    p.add_argument("--write", action="store_true", help="write the chosen operating point into the weights' metadata")
    p.add_argument("--evaluate-only", action="store_true",
                   help="no calibration: the weights' own operating point on the reporting half, and patch metrics")
    p.add_argument("--cross-fitted", action="store_true",
                   help="choose the operating point on each validation half and score it on the other (to compare versions)")
    p.add_argument("--out", help="write the JSON here as well")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from core.evaluation.datasets import CD3_DATA_DIR, cd3_patch_table

    torch.set_num_threads(args.threads)
    table = cd3_patch_table(args.data or CD3_DATA_DIR)
    model = load_weights_model(args.weights)
    if args.evaluate_only:
        result = {"weights": str(args.weights)} | report(model, table)
    elif args.cross_fitted:
        result = {"weights": str(args.weights)} | cross_fitted(model, table)
    else:
        result = {"weights": str(args.weights)} | calibrate(model, table)
        if args.write:
            result["weights_sha256"] = write_operating_point(args.weights, result["operating_point"])
            model = load_weights_model(args.weights)
            result |= {"after_write": report(model, table)}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
