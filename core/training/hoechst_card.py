"""Write the model card of the ``hoechst-lymphocytes`` weights from the training and evaluation records.

Usage::

    python -m core.training.hoechst_card --weights weights/hoechst-lymphocytes-unet-v1.safetensors \
        --cv runs/hoechst-lymphocytes-cv/cv.json --evaluation runs/hoechst-lymphocytes-cv/cv-eval.json \
        [--train weights/hoechst-lymphocytes-unet-v1.train.json] [--limitation TEXT]

Writes ``weights/<stem>.json`` and ``weights/<stem>.model_card.md`` (:func:`core.model_card.write_card`)
and prints the sentence for the registry entry's ``caution`` (what the app shows before a run).
Every number comes from those files; the SHA-256 is computed from the weights file itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.model_card import write_card


def _version(weights: Path) -> str:
    """``"N.0.0"`` from a weights name ending in ``-vN``."""
    tail = weights.stem.rsplit("-v", 1)
    return f"{int(tail[1])}.0.0" if len(tail) == 2 and tail[1].isdigit() else "1.0.0"


def _ci(pair) -> str:
    return "n/a" if not pair else f"{pair[0]:.2f} to {pair[1]:.2f}"


def _table(evaluation: dict, kind: str) -> dict:
    """Flat records per subtype: precision, recall, F1 with its 95 % interval, counts (a table in the Markdown)."""
    rows = {}
    for name, m in evaluation["model"][kind].items():
        ci = evaluation["ci95"][kind].get(name)
        rows[name] = {"precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
                      "f1_ci95": _ci(ci), "tp": m["tp"], "fp": m["fp"], "fn": m["fn"]}
    return rows


def _baseline_table(evaluation: dict) -> dict:
    """Per subtype: model and baseline per-centroid F1, and the paired 95 % interval of the differences."""
    rows = {}
    ci = evaluation["ci95"]
    for name, c in evaluation["comparison"].items():
        rows[name] = {
            "labelled_cells": c["n_true_cells"], "model_f1": c["model_centroid_f1"],
            "every_nucleus_f1": c["every_nucleus_f1"], "size_rule_f1": c["size_rule_f1"],
            "model_minus_every_nucleus_ci95": _ci(ci.get("centroid_f1_minus_all_nuclei", {}).get(name)),
            "model_minus_size_rule_ci95": _ci(ci.get("centroid_f1_minus_size_rule", {}).get(name)),
            "beats_every_baseline": c["beats_every_baseline"],
        }
    return rows


def plain_statement(evaluation: dict) -> str:
    """One plain sentence on the cross-validated result against the aim and the baselines (card and caution)."""
    comp, aim = evaluation["comparison"], evaluation.get("aim") or {}
    parts = []
    for name in ("cd3", "cd8"):
        if name not in comp:
            continue
        c = comp[name]
        verdict = "better than" if c["beats_every_baseline"] else "NOT better than"
        parts.append(f"{name.upper()} F1 {c['model_centroid_f1']:.2f} ({c['n_true_cells']} labelled cells), {verdict} the "
                     f"simple baselines (every nucleus {c['every_nucleus_f1']:.2f}, nucleus-size rule {c['size_rule_f1']:.2f})")
    met = aim.get("met")
    head = ("Meets the project's aim (CD3 F1 >= 0.6 and better than every baseline on CD3 and CD8)" if met else
            "Does NOT meet the project's aim (CD3 F1 >= 0.6 and better than every baseline on CD3 and CD8)")
    return (f"{head}. Cross-validated over {evaluation['n_tiles']} tiles of one slide, per centroid within "
            f"{evaluation['match_radius_um']:g} µm: " + "; ".join(parts) + ".")


def build_card(weights: Path, train: dict, cv: dict, evaluation: dict, fold_records: list[dict]) -> dict:
    """Model card (MONAI-bundle-like) of the final weights from its record, the CV record and its evaluation.

    Parameters
    ----------
    weights : the shipped ``.safetensors``
    train : its training record (``<stem>.train.json``)
    cv : the cross-validation record (``cv.json``)
    evaluation : the out-of-fold evaluation (``python -m core evaluate --scenario hoechst-lymphocytes``)
    fold_records : the folds' training records, in fold order

    Returns
    -------
    dict, the card
    """
    from core.evaluation.hoechst import DATA_LABELS, MATCH_RADIUS_UM, PAPER_RESULTS, PRESENCE_WINDOW_UM
    from core.scenarios.hoechst import CELL_CLASSES, INPUT_MPP, PERCENTILES, CellCallParams
    from core.scenarios.weights import sha256_file

    statement = plain_statement(evaluation)
    folds_s = sum(r["train_time_s"] + ((r.get("pretrain") or {}).get("time_s") or 0) for r in fold_records)
    final_s = train["train_time_s"] + ((train.get("pretrain") or {}).get("time_s") or 0)
    n_cells = train["n_fit_cells"]
    labels = {c.name: c.label for c in CELL_CLASSES}
    fold_cmd = cv.get("command", "python -m core.training.hoechst cv --folds 4 --minutes 7 --out runs/hoechst-lymphocytes-cv")
    card = {
        "name": "U-Net (ResNet34 encoder) for lymphocyte subtypes from a Hoechst nuclear stain",
        "scenario": "hoechst-lymphocytes",
        "version": _version(weights),
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
        "weights_dtype": f"{train.get('stored_dtype', 'float32')} (stored; the network computes in float32)",
        "trained_on_synthetic": False,
        "intended_use": (
            "Research use, not a diagnostic device: exploring whether CD3+, CD8+ and CD20+ lymphocytes can be counted from a "
            "Hoechst 33342 / DAPI image of lung adenocarcinoma without a multiplex panel, on fields resembling the training "
            "slide, with the counts checked against IF or IHC before any conclusion is drawn."),
        "limitations": [
            statement,
            f"Trained and cross-validated on 12 tiles (256 x 256 µm each, 0.79 mm² in all) of ONE lung adenocarcinoma slide "
            f"(L102): {n_cells.get('cd3', 0)} CD3, {n_cells.get('cd8', 0)} CD8 and {n_cells.get('cd20', 0)} CD20 labelled "
            "cells in all. Other slides, patients, tumours, stainings and scanners are unchecked; expect lower figures there.",
            "CD20 B cells cannot be learnt or checked from this data (2 labelled cells): CD20 calls are unvalidated.",
            "The images are at 1.0 µm/px, 4.4 times coarser than the paper's 0.227 µm/px: a lymphocyte nucleus is about 7 px "
            "across, so the chromatin texture the paper's network reads (§5.1) is largely lost. Finer images are resampled to "
            "1.0 µm/px.",
            "CD8 merges the data's 'CD8 with low CD3' and 'CD8 with high CD3' groups (25 and 38 cells; the split is an IF "
            "intensity threshold). CD3 means CD3+ CD8-negative T cells: the total of T cells is CD3 + CD8.",
            "The labels are IF intensity classes of the same slide (QuPath, the paper's recipe): a cell's label can be wrong "
            "where the IF signal is weak or spills over from a neighbour.",
            "The normalisation uses the percentiles of the whole image given: a field that is mostly empty, or a huge "
            "field mixing dense and sparse tissue, is stretched differently from the 256 µm training tiles.",
        ],
        "metrics": {
            "plain_statement": statement,
            "split": evaluation["split"] + f" ({len(evaluation['folds'])} folds of contiguous tiles along the strip: "
                     + "; ".join(f"fold {f['fold']}: {', '.join(f['held_out'])}" for f in evaluation["folds"]) + ")",
            "per_centroid": _table(evaluation, "centroid"),
            "per_pixel": _table(evaluation, "pixel"),
            "presence": _table(evaluation, "presence"),
            "against_baselines_per_centroid": _baseline_table(evaluation),
            "aim": evaluation.get("aim"),
            "how_scored": (
                f"Per centroid: predicted and labelled cells of the same subtype matched one-to-one within "
                f"{MATCH_RADIUS_UM:g} µm; per pixel: arg-max class map against the label map; presence: subtype present or "
                f"not in each {PRESENCE_WINDOW_UM:g} µm window. Counts pooled over the held-out tiles; 95 % intervals "
                f"from {evaluation['ci95']['n_resamples']} bootstrap resamples of tiles (seed {evaluation['ci95']['seed']}), "
                "paired for the differences. Baselines from nuclei segmented in the Hoechst image (Otsu, watershed): "
                "'every nucleus is X', and nuclei with area in a range chosen on each fold's training tiles called X."),
            "size_rule_ranges_um2": evaluation["baselines"].get("size_rule_ranges_um2"),
            "published_for_comparison": PAPER_RESULTS,
            "reproduce": "python -m core evaluate --scenario hoechst-lymphocytes --cv-record <cv.json>",
            "per_tile": evaluation.get("per_tile"),
        },
        "training_data": {
            "name": "hoechst-mif-lung (../shared/data/hoechst-mif-lung): 12 tiles of lung adenocarcinoma slide L102, panel IM1",
            "source": "jessicarumbelow/ICAIRD on GitHub, commit dc12b87, data/hoechst_exported_tiles/ (published with the "
                      "paper's code; no licence stated)",
            "images": "5 x 256 x 256 uint16 ImageJ stacks (Hoechst 33342, CD20, CD8, PD1, CD3), 1128 px regions at 0.227 "
                      "µm/px exported at 256 px (1.0 µm/px); only the Hoechst channel is read",
            "labels": "label PNGs from QuPath intensity classification of the IF channels (the paper's recipe, §3.3): "
                      + ", ".join(f"{i} {n}" for i, n in enumerate(DATA_LABELS)),
            "classes_used": f"scheme {train['scheme']}: {', '.join(train['classes'])} (CD8 = labels 1 and 4)",
            "fit_tiles": train["fit_tiles"],
            "n_labelled_cells": n_cells,
            "pixel_frequencies": dict(zip(train["classes"], train["pixel_frequencies"])),
        },
        "training": {
            "commands": [
                fold_cmd,
                "python -m core evaluate --scenario hoechst-lymphocytes --cv-record <cv folder>/cv.json > <cv folder>/cv-eval.json",
                (f"python -m core.training.hoechst train --minutes {train['minutes']:g} --crop {train['crop_px']} --batch "
                 f"{train['batch']} --lr {train['lr']:g} --seed {train['seed']}"
                 + (f" --pretrain-minutes {train['pretrain_minutes']:g}" if train.get("pretrain_minutes") else "")
                 + (f" --max-steps {train['max_steps']}" if train.get("max_steps") else "")
                 + f" --out weights/{weights.name}"),
                f"python -m core.training.hoechst_card --weights weights/{weights.name} --cv <cv folder>/cv.json "
                "--evaluation <cv folder>/cv-eval.json",
            ],
            "gpu_command": ("python -m core.training.hoechst cv --device cuda --batch 32 --crop 256 --max-steps 6000 "
                            "--minutes 30 --out runs/hoechst-cv-gpu (the paper's batch 32 and 256 px patches; "
                            "--classes paper for the five groups)"),
            "selection_rule": train["selection_rule"],
            "loss": f"cross-entropy (§3.4) with class weights {train['class_weights']} ({train['class_weight_rule']})",
            "optimizer": f"AdamW (§3.4), lr {train['lr']:g}, weight decay {train['weight_decay']:g}, 30 warm-up steps, "
                         "cosine decay to 2 % over the budget",
            "initialisation": ("random (torchvision ResNet init for the encoder, smp's for decoder and head; no downloaded "
                               "weights)" + (f"; encoder and decoder started by {train['pretrain_minutes']:g} min of "
                                             "masked-denoising pre-training on the training tiles' Hoechst channel"
                                             if train.get("pretrain_minutes") else "")
                               + (f"; warm start from {train['init']}" if train.get("init") else "")),
            "batch": train["batch"], "crop_px": train["crop_px"], "steps": train["steps"],
            "crop_sampling": f"{train['focus_share']:.0%} of crops around a labelled cell, its subtype drawn with probability "
                             "proportional to the square root of the subtype's cell count; the rest uniform over the tiles",
            "augmentation": train["augmentation"],
            "cpu_budget": {
                "cross_validation_s": round(folds_s, 1), "final_model_s": round(final_s, 1),
                "total_minutes": round((folds_s + final_s) / 60, 1),
                "hardware": f"{train['device']}, {train['threads']} threads (shared machine)",
                "fold_steps": [r["steps"] for r in fold_records],
            },
            "seed": train["seed"], "versions": train.get("versions"),
        },
        "departures_from_paper": [
            "12 tiles of one slide at 1.0 µm/px instead of 7413 patches of six slides at 0.227 µm/px.",
            "Classes merged to background, CD3, CD8, CD20 (the two CD8 groups joined; see limitations).",
            "Split by tile position (contiguous groups along the strip, cross-validated) instead of a random 80:10:10 split of "
            "half-overlapping patches.",
            "Heavy augmentation (flips, 90° rotations, scale, gamma, gain, noise, blur) and crops centred on rare subtypes; "
            "the paper states none.",
            "Class-weighted cross-entropy instead of plain cross-entropy.",
            f"Trained for {train['steps']} steps of {train['batch']} crops of {train['crop_px']} px on 2 CPU cores "
            f"({final_s / 60:.0f} min) instead of 100 epochs at batch 32 on a GPU.",
            "Per-cell calls (regions of P(lymphocyte) >= 0.5 split by watershed, subtype by probability mass) and a stated "
            f"matching rule ({MATCH_RADIUS_UM:g} µm) for the per-centroid metrics; the paper does not state its own.",
        ],
        "architecture": {
            "description": "segmentation_models_pytorch Unet('resnet34', encoder_weights=None, in_channels=1, "
                           f"classes={len(train['classes'])}, decoder_channels={tuple(train['decoder_channels'])}) (§3.4)",
            "parameters": train["parameters"],
        },
        "input": {
            "channels": "one: Hoechst 33342 or DAPI (a named channel of a multi-channel file is picked with --channel "
                        "NAME|INDEX or the channel picker)",
            "dtype": "uint8, uint16 (any significant bits) or float",
            "normalisation": f"per image: (x - p{PERCENTILES[0]:g}) / (p{PERCENTILES[1]:g} - p{PERCENTILES[0]:g}) clipped to "
                             "[0, 1], percentiles of the whole image given (paper §3.3: each patch normalised "
                             "individually); the same for 8-bit, 16-bit and float copies of an image",
            "mpp": INPUT_MPP,
            "tiling": "256 µm windows blended over 64 µm, each reflected to a multiple of 32 px",
        },
        "output": {
            "classes": [{"cell_class": c.name, "role": c.role, "label": c.label} for c in CELL_CLASSES],
            "dense": "lymphocyte: 1 - P(background); subtypes: softmax over background, CD3, CD8, CD20",
            "cells": "regions of P(lymphocyte) >= 0.5 split by a distance-transform watershed, subtype with the largest "
                     "summed probability over the region, probability = its mean over the region",
        },
        "thresholds": {"cell_calls": CellCallParams().__dict__,
                       "tuned_on": "nothing: fixed in advance (pre-registered selection rule)"},
        "explainability": "HiPe saliency per class (core/explain/hipe.py; Cooper et al. 2022; paper §5.1, 'fade', four "
                          "initial cells), on demand on a field of at most 512 px",
        "references": [
            "Hoechst U-Net paper (shared/papers/hoechst-unet-lymphocyte-subtypes.txt; code github.com/jessicamarycooper/ICAIRD), §3.3-3.4, §4 Table 2, §5.1",
            "Cooper, Arandjelović, Harrison: Believe the HiPe: hierarchical perturbation for fast, robust, and model-agnostic saliency mapping, Pattern Recognition 2022 (arXiv:2103.05108)",
            "Ronneberger et al., U-Net, MICCAI 2015; He et al., Deep residual learning, CVPR 2016; Iakubovskii, Segmentation Models PyTorch",
        ],
    }
    for name, label in labels.items():
        if name in card["metrics"]["per_centroid"]:
            card["metrics"]["per_centroid"][name]["label"] = label
    return card


def caution(evaluation: dict) -> str:
    """The registry entry's ``caution`` text (shown in the app before a run and in every report)."""
    return ("Subtypes are read from nuclear (DNA) morphology alone, by a model trained on 12 tiles (0.8 mm²) of one lung "
            "adenocarcinoma slide at 1 µm/px. " + plain_statement(evaluation)
            + " CD20 B cells could not be learnt or checked (2 in the data).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.training.hoechst_card", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="the final weights (.safetensors); the card is written beside them")
    p.add_argument("--train", help="its training record (default: <weights stem>.train.json)")
    p.add_argument("--cv", required=True, help="the cross-validation record (cv.json)")
    p.add_argument("--evaluation", required=True, help="its out-of-fold evaluation (cv-eval.json)")
    p.add_argument("--limitation", action="append", default=[], help="a further limitation; repeatable")
    args = p.parse_args(argv)
    weights = Path(args.weights)
    load = lambda f: json.loads(Path(f).read_text(encoding="utf-8"))  # noqa: E731
    train = load(args.train or weights.with_suffix(".train.json"))
    cv_path = Path(args.cv)
    cv = load(cv_path)
    folds = [load(cv_path.parent / f["train_json"]) for f in cv["folds"]]
    evaluation = load(args.evaluation)
    card = build_card(weights, train, cv, evaluation, folds)
    card["limitations"].extend(args.limitation)
    js, md = write_card(weights, card)
    print(f"wrote {js} and {md}")
    print("caution for the registry entry: " + caution(evaluation))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
