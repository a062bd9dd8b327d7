"""Evaluation of ``cd3-ihc`` on the held-out CD3 IHC gastric patches (recipe ``cd3-patches``).

Patch metrics on one split of :func:`core.evaluation.datasets.cd3_patch_table`, and optionally
cell detection on mosaics of that split's patches (:func:`core.evaluation.mosaic.build_mosaic`).
"""

from __future__ import annotations

from core.errors import InputError

#: Detection match radius for CD3+ lymphocytes: about half a lymphocyte nucleus (7 µm).
CD3_MATCH_RADIUS_UM = 4.0
CD3_MOSAIC_SEEDS = (101, 102, 103, 104)
CD3_MOSAIC_GRID = (12, 12)


def evaluate_cd3(split: str = "validation", data: str | None = None, mosaic: bool = False, device: str | None = None) -> dict:
    """Patch metrics (accuracy, precision, recall, F1) of ``cd3-ihc`` on one split.

    With ``mosaic``, also detection precision/recall/F1 on mosaics of that split's
    patches (:func:`core.evaluation.mosaic.build_mosaic`, seeds :data:`CD3_MOSAIC_SEEDS`), a
    detection matching a positive centre within :data:`CD3_MATCH_RADIUS_UM`; and, for the
    validation split, ``mosaic_reporting_half``: the same on mosaics of the validation half
    the operating point was *not* chosen on (:mod:`core.evaluation.cd3_calibration`), the
    held-out figure of calibrated weights.
    """
    from core.evaluation.datasets import CD3_DATA_DIR, cd3_patch_table, read_patches
    from core.evaluation.metrics import binary_metrics, detection_metrics
    from core.evaluation.mosaic import build_mosaic
    from core.io import ImageData
    from core.pipeline import analyze, load_model

    table = cd3_patch_table(data or CD3_DATA_DIR)
    part = table[table.split == split]
    if part.empty:
        raise InputError(f"split {split!r} is empty; choose train, tune or validation")
    model = load_model("cd3-ihc", device)
    prob = model.classify_patches(read_patches(part.path))
    out = {
        "scenario": "cd3-ihc",
        "split": split,
        "patch_threshold": model.patch_threshold,
        "detection_threshold": model.threshold,
        "patches": binary_metrics(part.label.to_numpy(), prob >= model.patch_threshold),
    }
    if mosaic:
        mpp = model.scenario.input_mpp
        tp = fp = fn = 0
        for seed in CD3_MOSAIC_SEEDS:
            m = build_mosaic(part, *CD3_MOSAIC_GRID, seed=seed)
            image = ImageData(m.pixels, mpp, f"mosaic-{seed}", "", "user")
            result = analyze(image, "cd3-ihc", model=model)
            d = detection_metrics(result.cells[["x_px", "y_px"]].to_numpy(), m.positive_xy, CD3_MATCH_RADIUS_UM / mpp)
            tp, fp, fn = tp + d["tp"], fp + d["fp"], fn + d["fn"]
        precision = tp / max(tp + fp, 1)
        recall = tp / max(tp + fn, 1)
        out["mosaic"] = {
            "seeds": list(CD3_MOSAIC_SEEDS),
            "grid": list(CD3_MOSAIC_GRID),
            "match_radius_um": CD3_MATCH_RADIUS_UM,
            "tp": tp, "fp": fp, "fn": fn,
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        }
        if split == "validation":
            from core.evaluation import cd3_calibration as cal

            reporting = cal.validation_halves(table)["reporting"]
            out["mosaic_reporting_half"] = cal.mosaic_detection(model, cal.mosaic_maps(model, reporting, cal.REPORTING_SEEDS)) | {
                "seeds": list(cal.REPORTING_SEEDS), "grid": list(cal.MOSAIC_GRID), "patches": int(len(reporting))}
    return out
