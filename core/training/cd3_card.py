"""Write the model card of the shipped CD3 weights from the training and evaluation records.

Usage::

    python -m core.training.cd3_card --weights weights/cd3-ihc-cnn-v1.safetensors \
        --train runs/cd3-compact/cd3-ihc-cnn-v1.train.json [--paper runs/cd3-paper/paper.train.json] \
        [--evaluation runs/cd3-eval.json] [--benchmark runs/bench.txt]

    # a version fine-tuned with hard negatives and calibrated (issue 21)
    python -m core.training.cd3_card --weights weights/cd3-ihc-cnn-v2.safetensors --version 2.0.0 \
        --train runs/cd3-v2.train.json --calibration runs/cd3-v2.calibration.json \
        --previous-card weights/cd3-ihc-cnn-v1.json --previous-evaluation runs/cd3-v1.reporting.json \
        --hard-negatives-meta runs/cd3-hard-negatives-v1.meta.json [--evaluation runs/cd3-v2-eval.json]

Every number in the card comes from those files; the SHA-256 is computed from the
weights file itself. With ``--previous-card`` the card sets this version's validation
patch accuracy / precision / recall / F1 and mosaic detection precision / recall / F1
beside the previous version's (as its card recorded them, and re-measured on the same
reporting-half mosaics with ``--previous-evaluation``) and the paper's Table III
(``metrics.comparison``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.model_card import write_card
from core.scenarios.weights import sha256_file

PAPER_TEST = {"accuracy": 0.940, "precision": 0.9583, "recall": 0.920, "f1": 0.9388,
              "note": "paper Table III, its own test set of 2174 augmented patches (not ours)"}


def _metrics(rec: dict) -> dict:
    keys = ("accuracy", "precision", "recall", "f1", "tp", "fp", "fn", "tn", "n")
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items() if k in keys}


def _row(where: str, rec: dict | None, **extra) -> dict:
    """One row of ``metrics.comparison``: accuracy / precision / recall / F1 (None where not measured)."""
    rec = rec or {}
    row = {"measured_on": where}
    for k in ("accuracy", "precision", "recall", "f1"):
        v = rec.get(k)
        row[k] = round(float(v), 4) if isinstance(v, (int, float)) else None
    return row | extra


def comparison(train: dict, calibration: dict | None, previous_card: dict | None, previous_eval: dict | None,
               evaluation: dict | None, version: str) -> dict:
    """This version beside the previous one and the paper (issue 21 §3), one row each.

    Returns
    -------
    dict name → {measured_on, accuracy, precision, recall, f1} (fractions in [0, 1], None where
    the figure does not exist, e.g. accuracy of a detection).
    """
    rows = {}
    prev_version = (previous_card or {}).get("version", "previous")
    rows[f"v{version} validation patches"] = _row("validation split, patch threshold from tune", train["validation"])
    if previous_card:
        rows[f"v{prev_version} validation patches (its card)"] = _row(
            "validation split, patch threshold from tune", previous_card["metrics"].get("validation_patches"))
    rows["paper Table III"] = _row("the paper's own test set (2174 augmented patches)", PAPER_TEST)
    if calibration:
        rows[f"v{version} mosaics, reporting half"] = _row(
            "mosaics of the validation reporting half at the operating point chosen on the calibration half",
            calibration["reporting_half"])
    if previous_eval:
        rows[f"v{prev_version} mosaics, reporting half"] = _row(
            "the same reporting-half mosaics at v" + str(prev_version) + "'s own operating point",
            previous_eval["reporting_half_mosaics"])
    if evaluation and "mosaic" in evaluation:
        rows[f"v{version} mosaics, whole validation (v1 protocol)"] = _row(
            "4 mosaics of the whole validation split (seeds 101-104); includes the calibration half, so optimistic",
            evaluation["mosaic"])
    if previous_card and "validation_mosaic_detection" in previous_card["metrics"]:
        rows[f"v{prev_version} mosaics, whole validation (its card)"] = _row(
            "4 mosaics of the whole validation split (seeds 101-104)", previous_card["metrics"]["validation_mosaic_detection"])
    return rows


def build_card(weights: Path, train: dict, paper: dict | None, evaluation: dict | None, benchmark: str | None,
               base: dict | None = None, version: str = "1.0.0", calibration: dict | None = None,
               previous_card: dict | None = None, previous_eval: dict | None = None,
               hard_negatives_meta: dict | None = None) -> dict:
    """The card of CD3 CNN weights (JSON-ready), from training / calibration / evaluation records.

    Parameters
    ----------
    weights : path of the ``.safetensors`` file (hashed here)
    train : ``.train.json`` of the final stage (:func:`core.training.cd3.train`)
    paper, evaluation, benchmark, base : optional records (paper layout run, ``python -m core
        evaluate --scenario cd3-ihc --mosaic`` JSON, benchmark text, first-stage record)
    version : str, the card's version (``"2.0.0"`` for the hard-negative version)
    calibration : JSON of ``python -m core.evaluation.cd3_calibration --write`` on these weights
    previous_card : the previous version's card (``weights/cd3-ihc-cnn-v1.json``)
    previous_eval : JSON of ``cd3_calibration --evaluate-only`` on the previous weights
    hard_negatives_meta : the ``.meta.json`` beside the mined index

    Returns
    -------
    dict, the card (:func:`core.model_card.write_card` writes it)
    """
    sc = train["split_counts"]
    det = train.get("detection_tuning") or {}
    op = (calibration or {}).get("operating_point")
    hn = train.get("hard_negatives")
    card = {
        "name": "CD3 IHC lymphocyte CNN, compact layout",
        "scenario": "cd3-ihc",
        "version": version,
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
        "weights_dtype": "float32",
        "trained_on_synthetic": False,
        "architecture": {
            "layout": train["layout"],
            "parameters": train["parameters"],
            "description": (
                "Paper §III.C convolution stages (3x3 conv 64/128/256, each with batch norm, ReLU, 2x2 max pooling) "
                "with 'valid' padding; dense head written as convolutions: 1x1 to 32, 7x7 to 256 (FC1), 1x1 to 256 "
                "(FC2), dropout 0.5 after each, 1x1 classifier, softmax over not-lymphocyte / lymphocyte."
            ),
        },
        "input": {
            "dtype": "float32", "channels": "RGB", "value_range": "(x / 255 - mean) / std",
            "normalization_mean": train["normalization_mean"], "normalization_std": train["normalization_std"],
            "mpp": 0.2, "patch_size_px": 70,
            "mpp_note": "The data set gives no pixel size; lymphocyte nuclei (about 7 µm) span 30-40 px, so 0.2 µm/px is assumed. Images are resampled to 0.2 µm/px before inference.",
        },
        "output": {"classes": ["not-lymphocyte", "lymphocyte"], "cell_class": "cd3-positive", "role": "immune"},
        "thresholds": {
            "patch": train["threshold"],
            "detection": op["threshold"] if op else det.get("threshold", train["threshold"]),
            "nms_radius_um": op["nms_radius_um"] if op else det.get("nms_radius_um"),
            "tuned_on": (
                f"patch threshold: tune split (patch F1); detection threshold and NMS radius: {op['chosen_on']}"
                if op else
                "tune split only (patch F1 for the patch threshold; detection F1 on 5 mosaics of tune patches for the detection threshold and NMS)"
            ),
        } | ({} if op or "nms_radius_um" in det else {"nms_box_um": det.get("nms_box_um"), "nms_iou": det.get("nms_iou")}),
        "training_data": {
            "name": "CD3 IHC lymphocyte patches, gastric cancer (../shared/data/cd3-ihc-gastric)",
            "source": "public data set of 'Automatic lymphocyte detection on gastric cancer IHC images using deep learning' (grpiaa-pucp/prisma-public, commit 3a0260b, data/patches_20170718), about 80% of it; research use",
            "stain": "CD3 IHC, DAB + hematoxylin; Olympus BX63, 40x; 10 biopsy micrographs of one lab",
            "labels": "positive (CD3+ lymphocyte, 3753) vs negative (DAB-stained non-lymphocyte, 416) + background (1746)",
            "split": "deterministic by SHA-1 of the patch's 512 x 512 px block of its source micrograph (overlapping neighbours stay together; patches without metadata are their own group): train 70% / tune 10% / validation 20%",
            "split_counts": sc,
        },
        "training": {
            "command": (
                f"python -m core.training.cd3 --layout compact --epochs {train['epochs']} --lr {train['lr']} "
                f"--negative-weight {train.get('negative_weight', 1)} "
                + (f"--hard-negatives {hn['share_of_batch']} --hard-negatives-index {hn['index']} " if hn else "")
                + f"--init {train['init'] if hn else 'STAGE1.safetensors'} --out weights/{weights.name}"
                if train.get("init") else
                f"python -m core.training.cd3 --layout compact --epochs {train['epochs']} --out weights/{weights.name}"
            ),
            "selection_rule": train.get("selection_rule"),
            "stage_1": None if base is None else {
                "command": f"python -m core.training.cd3 --layout compact --epochs {base['epochs']} --out STAGE1.safetensors",
                "epochs": base["epochs"], "best_epoch_on_tune": base["best_epoch"], "lr": base["lr"],
                "train_time_s": base["train_time_s"], "validation_patches": _metrics(base["validation"]),
            },
            "hard_negative_sampling_weight": train.get("negative_weight", 1.0),
            "optimizer": f"Adam, one-cycle learning rate up to {train['lr']}, weight decay {train['weight_decay']}",
            "batch": train["batch"], "epochs": train["epochs"], "best_epoch_on_tune": train["best_epoch"],
            "augmentation": "rotation by multiples of 90° and reflection (paper); ±4 px shifts, ±8% channel gain, ±10% contrast (ours)",
            "context_windows": f"{train['context_fraction']} context crop per centred patch in each batch (ours, see departures)",
            "seed": train["seed"], "hardware": f"CPU, {train['threads']} threads (shared with other jobs)",
            "train_time_s": train["train_time_s"] + (base["train_time_s"] if base else 0.0),
        },
        "metrics": {
            "validation_patches": _metrics(train["validation"]) | {"threshold": train["threshold"], "split": "validation"},
            "validation_patches_at_0.5": _metrics(train["validation_at_0.5"]),
            "paper_test_set": PAPER_TEST,
        },
        "departures_from_paper": [
            "Shipped layout is 'compact' (848 k parameters, 3.4 MB) instead of the paper's dense head (42.5 M weights in FC1 alone, 170 MB): it runs fully convolutionally over a whole image with exactly the per-window results, and fits in git. The paper layout is kept as a configuration and compared below.",
            "'valid' instead of 'same' convolution padding, so that a whole-image pass equals the sliding window.",
            "Context windows from 2 x 2 mosaics of training patches (negative when no CD3+ centre is within 14 px), because a classifier trained only on centred patches fires on every window that contains a lymphocyte and multiplies detections around each cell.",
            "Shift and colour augmentation, one-cycle schedule, and epoch/threshold choice on a tune split instead of the paper's random search with early stopping.",
            "Two stages: 18 epochs from scratch, then 5 epochs of fine-tuning at a lower learning rate with DAB-stained non-lymphocyte patches drawn 3 times as often (hard negatives); the fine-tuned weights were kept because their detection F1 on the tune mosaics was higher (0.946 vs 0.942).",
            "NMS on square boxes around each window centre, box side and IoU tuned on tune mosaics among 6-8 µm and 0.10-0.15 (see thresholds); the paper does not state its NMS settings.",
        ],
        "intended_use": "Research use, not a diagnostic device: counting and locating CD3+ lymphocytes in CD3 IHC (DAB + hematoxylin) fields for research, teaching and tumour-board discussion, with results reviewed by a pathologist.",
        "limitations": [
            "Trained on one lab's gastric cancer biopsies (Olympus BX63, 40x): other organs, stains, scanners and protocols may shift its accuracy.",
            "The pixel size of the training data is not recorded; 0.2 µm/px is assumed. A wrong mpp for an input image changes the resampling and the results.",
            "Detection was validated on mosaics of held-out single-cell patches (artificial tile seams), not on annotated whole micrographs, which are not public.",
            "Touching lymphocytes closer than about 5 µm may be merged into one detection by NMS.",
            "It counts DAB-stained cells and cannot tell CD3 from another membranous DAB stain: on scikit-image's colon IHC (FHL2 on epithelial membranes, no CD3) it reports thousands of cells/mm² on the stained epithelium, while hematoxylin-only stroma stays empty. Use it on CD3 IHC only.",
            "On mosaics of held-out patches about 1 detection in 9 is a false positive, nearly all on DAB-stained non-lymphocytes (the training set has only 416 such patches).",
        ],
        "references": [
            "Automatic lymphocyte detection on gastric cancer IHC images using deep learning (shared/papers/cd3-ihc-lymphocyte-cnn-gastric.txt), §III.A, §III.C, Table III",
        ],
    }
    if hn:
        card["training"]["hard_negatives"] = hn | ({"mining": hard_negatives_meta} if hard_negatives_meta else {})
        card["training"]["previous_stages"] = None if not previous_card else previous_card.get("training")
        card["training"]["train_time_s"] = train["train_time_s"] + (
            (previous_card or {}).get("training", {}).get("train_time_s", 0.0))
        card["departures_from_paper"] = [d for d in card["departures_from_paper"] if not d.startswith(("Two stages", "NMS on square"))] + [
            "Three stages: 18 epochs from scratch, 5 epochs of fine-tuning with DAB-stained non-lymphocyte patches drawn "
            f"3 times as often (v1), then {train['epochs']} epochs from v1 with hard negatives filling "
            f"{hn['share_of_batch']:.0%} of each batch: {hn['n']} windows v1 called a lymphocyte that are not one "
            "(negative/background training patches in mosaics, positive training patches cropped with the cell 10-20 px "
            "off centre, the top halves of scikit-image's FHL2 colon IHC and of two Ki67 IHC tiles); training split only.",
            "Non-maximum suppression by radius: a window within nms_radius_um of a more probable kept one is dropped; "
            "the paper states no NMS settings. The threshold and radius were chosen for F1 on mosaics of the validation "
            "calibration half and are reported on the disjoint reporting half (see thresholds and metrics).",
        ]
    if train.get("detection_tuning"):
        card["metrics"]["tune_mosaic_detection"] = train["detection_tuning"]
    if calibration:
        rep = calibration["reporting_half"]
        card["metrics"]["validation_reporting_half_mosaic_detection"] = {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in rep.items()}
        card["metrics"]["validation_calibration_half_mosaic_detection"] = {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in calibration["calibration_half"].items()
            if k not in ("searched",)} | {"note": "the figure the operating point was chosen on (tuned: not a held-out estimate)"}
        after = calibration.get("after_write") or {}
        if after.get("external_held_out_detections"):
            card["metrics"]["external_ihc_without_cd3_held_out"] = after["external_held_out_detections"] | (
                {"previous_version": previous_eval["external_held_out_detections"]}
                if previous_eval and previous_eval.get("external_held_out_detections") else {})
        fp_share = rep["fp"] / max(rep["tp"] + rep["fp"], 1)
        ext = after.get("external_held_out_detections") or {}
        prev_ext = (previous_eval or {}).get("external_held_out_detections") or {}
        replaced = {
            "Touching lymphocytes": f"Touching lymphocytes whose centres are closer than the NMS radius "
                                    f"({op['nms_radius_um']:g} µm) are counted once.",
        }
        if "skimage-ihc" in ext:
            sk, prev_sk = ext["skimage-ihc"], prev_ext.get("skimage-ihc")
            replaced["It counts DAB-stained cells"] = (
                "It counts DAB-stained round cells and is not a stain classifier: on the held-out (never mined) bottom "
                f"half of scikit-image's colon IHC (FHL2 on epithelial membranes, no CD3) it still reports "
                f"{sk['per_mm2']:.0f} cells/mm²" + (f" (v1: {prev_sk['per_mm2']:.0f})" if prev_sk else "")
                + "; on the held-out halves of two Ki67 IHC tiles "
                + ", ".join(f"{ext[k]['per_mm2']:.0f}" for k in ext if k.startswith("ki67"))
                + " cells/mm². Use it on CD3 IHC only.")
        card["limitations"] = [next((v for k, v in replaced.items() if x.startswith(k)), x)
                               for x in card["limitations"] if not x.startswith("On mosaics of held-out patches")] + [
            f"On mosaics of the reporting half about 1 detection in {1 / max(fp_share, 1e-9):.0f} is a false positive "
            f"(precision {rep['precision']:.3f} at recall {rep['recall']:.3f}); mosaics are not whole micrographs.",
        ]
    if previous_card or calibration:
        card["metrics"]["comparison"] = comparison(train, calibration, previous_card, previous_eval, evaluation, version)
    if evaluation:
        if "mosaic" in evaluation:
            card["metrics"]["validation_mosaic_detection"] = {k: (round(v, 4) if isinstance(v, float) else v)
                                                              for k, v in evaluation["mosaic"].items()}
        card["metrics"]["reproduce"] = "python -m core evaluate --scenario cd3-ihc --mosaic"
    if paper:
        card["metrics"]["paper_layout_validation_patches"] = _metrics(paper["validation"]) | {
            "parameters": paper["parameters"], "epochs": paper["epochs"], "train_time_s": paper["train_time_s"],
            "threshold": paper["threshold"], "size_mb_float32": round(paper["parameters"] * 4 / 1e6, 1),
            "note": "paper layout trained with the same data, split and augmentation but centred patches only (no context windows); not shipped (over 50 MB)",
        }
    if benchmark:
        card["benchmark_cpu"] = benchmark
    return card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--paper")
    p.add_argument("--evaluation")
    p.add_argument("--benchmark")
    p.add_argument("--base-train", help="train record of the first stage when --train is a fine-tuning run")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--calibration", help="JSON of python -m core.evaluation.cd3_calibration --write on these weights")
    p.add_argument("--previous-card", help="the previous version's card, e.g. weights/cd3-ihc-cnn-v1.json")
    p.add_argument("--previous-evaluation", help="JSON of cd3_calibration --evaluate-only on the previous weights")
    p.add_argument("--hard-negatives-meta", help="the .meta.json beside the mined hard-negative index")
    args = p.parse_args(argv)
    weights = Path(args.weights)
    load = lambda f: json.loads(Path(f).read_text()) if f else None  # noqa: E731
    bench = Path(args.benchmark).read_text() if args.benchmark else None
    card = build_card(weights, load(args.train), load(args.paper), load(args.evaluation), bench, load(args.base_train),
                      args.version, load(args.calibration), load(args.previous_card), load(args.previous_evaluation),
                      load(args.hard_negatives_meta))
    js, md = write_card(weights, card)
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
