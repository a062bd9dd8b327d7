"""Write the model card of the shipped S-DRDIN (``he-til``) weights from the training and evaluation records.

Usage::

    python -m core.training.sdrdin card --weights weights/he-til-sdrdin-v3.safetensors \
        --train weights/he-til-sdrdin-v3.train.json --earlier weights/he-til-sdrdin-v3.stage1.train.json \
        weights/he-til-sdrdin-v3.stage2.train.json --evaluation runs/he-eval.json --benchmark runs/he-bench.txt

(``python -m core.training.sdrdin_card`` takes the same options.) Every number in the card
comes from those files; the SHA-256 is computed from the weights file itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.evaluation.datasets_he import HE_CLASSES, HE_MPP
from core.model_card import write_card


def _train_command(train: dict, name: str, init: str | None = None) -> str:
    return (f"python -m core.training.sdrdin train --minutes {train['minutes']} --base {train['base_features']} "
            f"--crop {train['crop_px']} --batch {train['batch']} --lr {train['lr']} --seed {train['seed']}"
            + (f" --eval-minutes {train['eval_minutes']:g}" if "eval_minutes" in train else "")
            + (f" --eval-thresholds {' '.join(f'{t:g}' for t in train['eval_thresholds'])}" if "eval_thresholds" in train else "")
            + (f" --stain-jitter {train['stain_jitter']:g}" if train.get("stain_jitter") else "")
            + (" --bf16" if train.get("bf16_autocast") else "")
            + (f" --focus-class {train['focus_class']} --focus-share {train['focus_share']:g}" if train.get("focus_class") else "")
            + (f" --swa-start {train['swa_start']:g} --swa-every {train['swa_every']}" if train.get("swa_start") is not None else "")
            + _multi_source_options(train)
            + (f" --init {init}" if init else "") + f" --out weights/{name}")


def _multi_source_options(train: dict) -> str:
    """The ``--sources`` options of a stage's command, as its record gives them ("" for a one-source stage)."""
    if not train.get("sources"):
        return ""
    return (f" --sources {' '.join(train['sources'])}"
            + (f" --source-weights {' '.join(f'{w:g}' for w in train['source_weights'])}" if train.get("source_weights") else "")
            + f" --scale-jitter {train['scale_jitter']:g} --blur-share {train['blur_share']:g} --jpeg-share {train['jpeg_share']:g}"
            + (f" --class-window-um {train['class_window_um']:g}" if train.get("class_window_um") else "")
            + (f" --baseline {train['baseline']}" if train.get("baseline") else "")
            + (f" --guard-sources {' '.join(train['guard_sources'])}" if train.get("guard_sources") else "")
            + (" --guard-select" if train.get("guard_select") else "")
            + (f" --guard-margin {next(iter(train['guard_margins'].values()))['margin']:g}" if train.get("guard_margins") else "")
            + (f" --distill {train['distill']} --distill-sources {' '.join(train['distill_sources'])}"
               f" --distill-weight {train['distill_weight']:g}" if train.get("distill") else ""))


def _stages_with(stages: list[dict], key: str) -> str:
    """``"3, 4"``: the 1-based numbers of the training stages whose record sets ``key``."""
    return ", ".join(str(i + 1) for i, t in enumerate(stages) if t.get(key))


def _version(weights: Path) -> str:
    """``"N.0.0"`` from a weights name ending in ``-vN`` (``he-til-sdrdin-v2.safetensors`` → ``"2.0.0"``)."""
    tail = weights.stem.rsplit("-v", 1)
    return f"{int(tail[1])}.0.0" if len(tail) == 2 and tail[1].isdigit() else "1.0.0"


def _validation_size(evaluation: dict | None) -> str:
    """The card's limitation on the size of the validation set, with its intervals when evaluated."""
    ci = evaluation["radii"]["usual_6px_at_0.55"].get("ci95_image_bootstrap") if evaluation else None
    if not ci:
        return "Validated on 10 images (about 2,850 nuclei): the confidence intervals of the metrics are a few points wide."
    return (f"Validated on {evaluation['n_images']} images ({evaluation['n_annotated_nuclei']} nuclei); 95% intervals from "
            f"resampling images (3.3 µm): detection F1 {ci['detection_f1'][0]:.2f}-{ci['detection_f1'][1]:.2f}, weighted class F1 "
            f"{ci['classification_weighted_f1'][0]:.2f}-{ci['classification_weighted_f1'][1]:.2f}, inflammatory F1 "
            f"{ci['inflammatory_f1'][0]:.2f}-{ci['inflammatory_f1'][1]:.2f}.")


def build_card(weights: Path, train: dict, evaluation: dict | None, benchmark: str | None,
               earlier: list[dict] | None = None, evaluation_bf16: dict | None = None,
               evaluation_sources: dict | None = None) -> dict:
    """Model card (MONAI-bundle-like) from the training records, the evaluations and the benchmark.

    ``earlier``: training records of the stages before ``train``, in order (each later stage
    warm-started from the one before with ``--init``). ``evaluation_bf16``: the validation
    evaluation at ``--precision bfloat16``. ``evaluation_sources``: the per-source validation
    (``python -m core evaluate --scenario he-til --dataset all``), required when the last stage
    trained on several sources (``--sources``).
    """
    stages = [*(earlier or []), train]
    multi = len(stages) > 1
    from core.evaluation.he import PAPER_RESULTS
    from core.scenarios.he_til import PostprocessParams
    from core.scenarios.weights import sha256_file

    pp = PostprocessParams(threshold=train["threshold"])
    if "class_window_um" in train:
        pp = PostprocessParams(threshold=train["threshold"], class_window_um=train["class_window_um"])
    budget_minutes = " + ".join(f"{t['minutes']:g}" for t in stages)
    total_train_s = sum(t["train_time_s"] for t in stages)
    stain = max(t.get("stain_jitter", 0.0) for t in stages)
    focused = {t["focus_class"] for t in stages if t.get("focus_class")}
    bf16_stages = _stages_with(stages, "bf16_autocast")
    swa_stages = ", ".join(str(i + 1) for i, t in enumerate(stages) if t.get("swa_start") is not None)  # "4": stages with SWA
    card = {
        "name": f"S-DRDIN for H&E tumour / immune / stromal cells (base width {train['base_features']})",
        "scenario": "he-til",
        "version": _version(weights),
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
        "weights_dtype": "float32",
        "trained_on_synthetic": False,
        "architecture": {
            "variant": train["variant"], "base_features": train["base_features"], "parameters": train["parameters"],
            "description": (
                "S-DRDIN §2.3: U-Net with inception blocks (1x1; 1x1-3x3; 1x1-3x3-3x3; 3x3 average pool of a 1x1, "
                "concatenated, batch norm, ReLU); encoder of 4 blocks joined by 2x2 average pooling (widths f, 2f, 4f, 8f); "
                "two decoders (bilinear x2, concatenated skip, inception block); classification head 1x1 conv to 5 channels "
                "(softmax: epithelial, inflammatory, fibroblast, other, background); detection branch with stop-gradient on "
                "every encoder skip, its last inception output concatenated with the classification branch's, then two 3x3 "
                "convolutions and a 1x1 convolution (sigmoid). Variants drdin-detection, drdin-classification and "
                "s-drdin-gradient are selectable (core.nets.sdrdin.SDRDIN(variant=...))."
            ),
        },
        "input": {
            "dtype": "float32", "channels": "RGB", "value_range": "(x / 255 - mean) / std",
            "normalization_mean": train["normalization_mean"], "normalization_std": train["normalization_std"],
            "mpp": HE_MPP, "size": "H, W multiples of 8 (reflected); whole images in 1024 px tiles with a 96 px context margin",
        },
        "output": {
            "classes": [{"cell_class": c, "role": r} for c, r in zip(HE_CLASSES, ("tumour", "immune", "stroma", "other"))],
            "note": "epithelial = tumour, inflammatory = immune (lymphocytes and other leukocytes), fibroblast = stroma, others = other",
        },
        "thresholds": {
            "detection": train["threshold"],
            "tuned_on": f"tune split: {len(train['tune_images'])} images held out of train/ ({', '.join(train['tune_images'])}); "
                        "detection F1 at 3.3 µm (6 px); never validation/",
            "tune_at_threshold": train["tune_at_threshold"],
            "postprocess_um": {"min_area_um2": round(pp.min_area_um2, 3), "peak_window_um": round(pp.peak_window_um, 3),
                               "peak_dilation_um": round(pp.peak_dilation_um, 3), "class_window_um": round(pp.class_window_um, 3)},
            "postprocess_px_at_0.55": pp.in_pixels(HE_MPP),
            "postprocess_note": "§2.5 sizes from the paper's pixels at 0.44 µm/px: 50 px area, 15 x 15 px maxima window, 2 px dilation, 49 x 49 px class square (21.56 µm)",
        },
        "training_data": {
            "name": "CRCHistoPhenotypes: H&E colorectal adenocarcinoma nuclei with class points (../shared/data/he-crc-cell-points)",
            "source": "Sirinukunwattana et al., IEEE TMI 2016 (Warwick), via zhuyiche/sfcn-opi commit 15a25c8; research use only",
            "images": f"{len(train['fit_images'])} of the 70 train/ images (500 x 500 px, 20x, ~0.55 µm/px); "
                      f"{len(train['tune_images'])} train/ images held out for tuning; validation/ (10 images) untouched",
            "n_fit_nuclei": train["n_fit_nuclei"],
            "targets": f"disks of radius {train['radius_um']} µm ({train['radius_px']:.1f} px) around each dot; class map with a "
                       "background channel; detection map = channel-wise maximum (every annotated nucleus, classed or not); "
                       "pixels of nuclei without a class are ignored by the class loss",
            "radius_choice": "The paper's 2 px at 0.44 µm/px (0.88 µm) covers a fraction of an H&E nucleus (~6-8 µm across). "
                             "2.2 µm (4 px) covers the nucleus centre while disks of neighbours stay apart: 95% of nuclei here "
                             "have their nearest neighbour more than 8.3 px away, so at most the closest 5% of disks touch.",
        },
        "training": {
            "command": [_train_command(t, weights.name, f"<stage {i} weights>" if i else None) for i, t in enumerate(stages)]
                       if multi else _train_command(train, weights.name),
            "loss": "pixel-weighted cross-entropy (eq. 1-2, weights recomputed per batch) + binary cross-entropy of detection"
                    + (f" x {train['det_weight']}" if train["det_weight"] != 1 else ""),
            "optimizer": (f"Adam, lr {train['lr']} with 50-step warm-up and cosine decay over the time budget; Glorot-uniform init"
                          if not swa_stages else "Adam with 50-step warm-up; Glorot-uniform init; " + "; ".join(
                f"stage {i + 1}: lr {t['lr']}, " + (f"constant, stochastic weight averaging of the weights every {t['swa_every']} steps "
                                                  f"from {t['swa_start']:.0%} of the budget on ({t['swa_n_averaged']} snapshots), "
                                                  f"batch-norm statistics re-estimated on {t['swa_bn_batches']} batches of fit crops"
                                                  if t.get("swa_start") is not None else "cosine decay over the time budget")
                for i, t in enumerate(stages))),
            "batch": train["batch"], "crop_px": train["crop_px"], "steps": train["steps"], "best_step_on_tune": train["best_step"],
            "augmentation": "horizontal/vertical flips (paper), transposes, colour jitter (saturation/contrast ±"
                            f"{2 * train['jitter']:.0%}, channel gain and brightness ±{train['jitter']:.0%}) (ours, not ablated)"
                            + (f"; HED stain jitter in stage(s) {_stages_with(stages, 'stain_jitter')}: "
                               f"haematoxylin and eosin concentrations x U({1 - stain:g}, {1 + stain:g}) and shifted (Tellez et al. 2019), "
                               "for other laboratories' staining" if stain else ""),
            **({"crop_sampling": "uniform over the fit images; in stage(s) " + ", ".join(
                f"{i + 1} ({t['focus_share']:.0%} of crops around a nucleus of class {t['focus_class']})" for i, t in enumerate(stages)
                if t.get("focus_class")) + ", hard-example sampling for the class with the lowest recall (ours)"}
               if focused else {}),
            "numeric_precision": "float32 weights; " + (f"forward pass in bfloat16 autocast in stage(s) {bf16_stages} (losses in float32)"
                                                         if bf16_stages else "float32 training"),
            "seed": train["seed"], "hardware": f"CPU, {train['threads']} threads (shared machine)",
            "train_time_s": round(total_train_s, 1),
            "stages": [{"stage": i + 1, "minutes": t["minutes"], "steps": t["steps"], "best_step": t["best_step"], "lr": t["lr"],
                        "seed": t["seed"], "stain_jitter": t.get("stain_jitter", 0.0), "bf16_autocast": t.get("bf16_autocast", False),
                        **({"focus_class": t["focus_class"], "focus_share": t["focus_share"]} if t.get("focus_class") else {}),
                        **({"swa_start": t["swa_start"], "swa_every": t["swa_every"], "swa_n_averaged": t["swa_n_averaged"]}
                           if t.get("swa_start") is not None else {}),
                        "start": f"warm start from stage {i} (--init)" if i else "Glorot-uniform init"}
                       for i, t in enumerate(stages)] if multi else None,
            "history": [{k: h[k] for k in ("step", "elapsed_s", "tune")} for h in train["history"]],
        },
        "metrics": {"published_for_comparison": PAPER_RESULTS},
        "departures_from_paper": [
            f"Width chosen for 2 CPU cores: base {train['base_features']} features ({train['parameters']} parameters), trained for "
            f"{budget_minutes} minutes in a developer session; the paper trains 100 epochs on a GPU (its text gives no widths).",
            f"Random {train['crop_px']} x {train['crop_px']} px crops, batch {train['batch']}, instead of 224 x 224 patches at stride 120 and batch 4.",
            *([f"A share of the crops in the later stage(s) is drawn around {' and '.join(sorted(focused))} nuclei, hard-example "
               "sampling for the class with the lowest recall; the paper samples patches on a regular grid."] if focused else []),
            "Time-budgeted training with cosine learning-rate decay; checkpoint chosen on the tune split (detection F1 + weighted class F1)"
            + (f"; stage(s) {swa_stages} instead keep the learning rate constant and ship the average of the "
               "weights along the run (stochastic weight averaging, Izmailov et al. 2018), chosen because on the tune split an average "
               "of two checkpoints beat both end points." if swa_stages else "."),
            f"Target disks of {train['radius_um']} µm instead of 2 px (0.88 µm): H&E nuclei at 0.55 µm/px are larger in pixels than the paper's mIHC dots call for.",
            "Transposes and colour jitter added to the flips" + (", and HED stain jitter (haematoxylin / eosin strength) in the later "
                                                                  "stage(s), for other laboratories' staining." if stain else "."),
            "Nuclei annotated without a class are detection targets but ignored by the classification loss (the paper's data had a class for every dot).",
            "The decoders upsample bilinearly; the four 1x1 convolutions of each inception block are computed as one (same function, fewer passes).",
            "Post-processing sizes are converted to µm; the detection threshold is tuned on held-out train/ images, not on the reported split.",
        ],
        "intended_use": "Research use, not a diagnostic device: locating and counting tumour (epithelial), immune (inflammatory) and stromal (fibroblast) nuclei in H&E fields of colorectal cancer at 20x for research and teaching, with results reviewed by a pathologist.",
        "limitations": [
            f"Trained on {len(train['fit_images'])} fields of one centre's colorectal adenocarcinoma (H&E, 20x); other organs, stains, scanners and magnifications may shift its accuracy.",
            "Not yet checked on another organ or laboratory (e.g. breast cancer H&E): the project holds no labelled H&E of another organ, so how reliably it finds immune cells there is unknown.",
            "Images are resampled to 0.55 µm/px; a wrong mpp changes the results.",
            "'inflammatory' includes all leukocytes (lymphocytes, plasma cells, neutrophils, eosinophils...), not lymphocytes only; 'other' is a small, mixed class with the lowest accuracy.",
            f"The class of a cell is the average over a {pp.class_window_um:g} µm square (eq. 3), so a cell surrounded by cells of another class can take their class.",
            _validation_size(evaluation),
        ],
        "references": [
            "S-DRDIN: simultaneous detection and classification of cells in mIHC (shared/papers/s-drdin-mihc-detection-classification.txt), §2.2-2.5, eq. 1-3",
            "Sirinukunwattana et al., Locality Sensitive Deep Learning for Detection and Classification of Nuclei in Routine Colon Cancer Histology Images, IEEE TMI 2016",
        ],
    }
    if "retune" in train:
        rt = train["retune"]
        card["thresholds"]["tune_split_choices"] = {
            "command": f"python -m core.training.sdrdin tune --weights weights/{weights.name} --train <training record>",
            "class_window_sweep": rt["class_window_sweep"], "paper_class_window_on_tune": rt["paper_class_window"],
            "chosen": rt["chosen"],
        }
        if abs(pp.class_window_um - 49 * 0.44) > 0.01:
            card["departures_from_paper"].append(
                f"Class square of eq. 3 is {pp.class_window_um} µm instead of the paper's 49 px (21.56 µm): it gave a higher "
                "weighted class F1 on the tune split (sweep in thresholds.tune_split_choices); H&E immune cells are scattered "
                "among stromal and tumour cells, and a 21.6 µm square averages over several neighbours.")
    if evaluation:
        r6 = evaluation["radii"]["usual_6px_at_0.55"]
        r8 = evaluation["radii"]["paper_10px_at_0.44"]
        card["limitations"].insert(0, (
            f"Below the published results on this data: validation detection F1 {r6['detection']['f1']:.3f} (3.3 µm) / "
            f"{r8['detection']['f1']:.3f} (4.4 µm) and weighted class F1 {r6['classification']['weighted_f1']:.3f} / "
            f"{r8['classification']['weighted_f1']:.3f}, against 0.802 and 0.784 (Sirinukunwattana et al. 2016): the "
            f"base-{train['base_features']} network trained for {total_train_s / 60:.0f} minutes on 2 CPU cores is undertrained; "
            "the 'other' and 'inflammatory' classes are the weakest."))
        card["metrics"]["validation"] = {k: evaluation[k] for k in ("split", "n_images", "n_annotated_nuclei", "n_classified_nuclei", "threshold", "radii")}
        card["metrics"]["reproduce"] = "python -m core evaluate --scenario he-til --split validation" + (" --restained" if "restained" in evaluation else "")
        if "restained" in evaluation:
            rs = evaluation["restained"]
            card["metrics"]["validation_restained"] = rs
            worst_name, worst = min(((k, v) for k, v in rs.items() if isinstance(v, dict) and k != "unchanged"),
                                    key=lambda kv: kv[1]["classification_weighted_f1"])
            card["limitations"].append(
                "Stain variation (a stand-in for other laboratories): with the validation images re-stained at fixed haematoxylin / "
                f"eosin strengths (the card's 'validation restained' figures), the weighted class F1 falls from {rs['unchanged']['classification_weighted_f1']:.3f} "
                f"to {worst['classification_weighted_f1']:.3f} at worst ({worst_name}), inflammatory F1 to {worst['inflammatory_f1']:.3f}, "
                f"detection F1 to {min(v['detection_f1'] for k, v in rs.items() if isinstance(v, dict)):.3f}.")
    if evaluation_bf16:
        card["inference_precisions"] = ["float32", "bfloat16"]
        card["metrics"]["validation_bfloat16"] = {
            "note": "the same validation run with the network in bfloat16 autocast (opt-in: --precision bfloat16, the app's fast mode)",
            "reproduce": "python -m core evaluate --scenario he-til --split validation --precision bfloat16",
            "radii": evaluation_bf16["radii"]}
    if benchmark:
        card["benchmark_cpu"] = benchmark.strip()
    if train.get("sources"):
        _multi_source_sections(card, train, stages, evaluation_sources)
    return card


#: What each H&E source is, for the card (data sets in ../shared/data).
SOURCE_DESCRIPTIONS = {
    "crc": "CRCHistoPhenotypes (he-crc-cell-points): colorectal adenocarcinoma, one lab (Warwick), 20x, 0.55 µm/px; "
           "Sirinukunwattana et al., IEEE TMI 2016; classes epithelial / inflammatory / fibroblast / other, some nuclei unclassed",
    "brca-m2c": "BRCA-M2C (he-brca-m2c-points): breast cancer, TCGA slides of many centres, 20x, ~0.5 µm/px resampled to 0.55; "
                "Abousamra et al., ICCV 2021, BSD-3; lymphocyte -> inflammatory, tumour -> epithelial, stromal -> fibroblast; "
                "no 'other' class (left out of the loss for these images)",
    "consep": "CoNSeP (he-consep-tiles): colorectal adenocarcinoma, another hospital (UHCW), 40x, 0.25 µm/px resampled to 0.55; "
              "Graham et al., MedIA 2019; 256 px tiles of its 27 training images, split by source image; "
              "inflammatory, epithelial, spindle -> fibroblast, other",
}


def _multi_source_sections(card: dict, train: dict, stages: list[dict], by_source: dict | None) -> None:
    """Rewrite the data, tuning, metrics and limitations of a card whose last stage trained on several sources."""
    from core.training.he_sources import TUNE_RADIUS_UM

    sources = train["sources"]
    card["training_data"] = {
        "sources": {s: SOURCE_DESCRIPTIONS[s] for s in sources},
        "earlier_stages": "stages before the last trained on CRCHistoPhenotypes alone" if len(stages) > 1 else None,
        "images": f"{len(train['fit_images'])} fit images (CoNSeP as 2 x 2 mosaics of tiles of one source image), "
                  f"{len(train['tune_images'])} tune images; each source's validation split untouched",
        "sampling": "each crop draws its source uniformly (no source dominates), then an image of that source",
        "targets": f"disks of radius {train['radius_um']} µm around each dot (S-DRDIN §2.2); class loss masked for nuclei "
                   "without a class and for classes a source does not annotate",
    }
    card["thresholds"]["tuned_on"] = (
        f"tune splits of {', '.join(sources)} ({len(train['tune_images'])} images, none from validation): the threshold "
        f"maximising the mean over sources of detection F1 + immune F1 within {TUNE_RADIUS_UM:g} µm")
    card["thresholds"]["acceptance_rule"] = train.get("acceptance_rule")
    card["thresholds"]["init_tune"] = train.get("init_tune")
    card["training"]["augmentation"] += (
        f"; scale jitter ±{train['scale_jitter']:.0%} around 0.55 µm/px, Gaussian blur on {train['blur_share']:.0%} and "
        f"JPEG compression (quality 40-90) on {train['jpeg_share']:.0%} of the crops, for other scanners (ours)")
    card["departures_from_paper"].append(
        "Trained on three H&E sources at once (two organs, three labs, 20x and 40x), with source-uniform sampling and the class "
        "loss masked where a source does not annotate a class; the paper trains on one mIHC data set.")
    distilled = [(i + 1, t) for i, t in enumerate(stages) if t.get("distill")]
    for n, t in distilled:
        card["departures_from_paper"].append(
            f"Stage {n} adds distillation (learning without forgetting; Hinton et al. 2015, Li & Hoiem 2016): on the crops of "
            f"{', '.join(t['distill_sources'])}, the outputs of a frozen earlier model ({Path(t['distill']).name}) are soft targets "
            f"beside the labels (class softmax KL, pixel-weighted as eq. 1-2, and detection probability; weight "
            f"{t['distill_weight']:g}), so that learning the other sources does not lose what it did on them.")
    guarded = [str(i + 1) for i, t in enumerate(stages) if t.get("guard_select")]
    if guarded:
        card["departures_from_paper"].append(
            f"In stage(s) {', '.join(guarded)} the checkpoint and the detection threshold are chosen among those that keep every "
            "guarded source's tune detection F1 + immune F1 at least at the shipped version's (the best score otherwise).")
    for n, t in ((i + 1, t) for i, t in enumerate(stages) if t.get("guard_margins")):
        card["departures_from_paper"].append(
            f"Stage {n}'s guard is a non-inferiority margin, set before the run: "
            + "; ".join(f"{g} may fall {m['margin']:g} below the shipped version's detection F1 + immune F1 on its tune split "
                        f"(whose bootstrap standard error over the tune images is {m['se']:.3f})"
                        for g, m in t["guard_margins"].items())
            + ". The shipped version was itself selected on those images, so a strict 'not below' bar rejects equal models by "
              "chance.")
    card["intended_use"] = (
        "Research use, not a diagnostic device: locating and counting tumour (epithelial), immune (inflammatory) and stromal "
        "(fibroblast) nuclei in H&E fields of colorectal and breast cancer at 20x or 40x for research and teaching, with results "
        "reviewed by a pathologist.")
    card["limitations"] = [
        "Images are resampled to 0.55 µm/px; a wrong mpp changes the results.",
        "'inflammatory' includes all leukocytes (lymphocytes, plasma cells, neutrophils, eosinophils...), not lymphocytes only; "
        "'other' is a small, mixed class with the lowest accuracy, absent from the breast data.",
    ]
    if by_source:
        add_source_validation(card, by_source, sources)


def add_source_validation(card: dict, by_source: dict, sources=None) -> dict:
    """Add the per-source validation (``evaluate --dataset all``) to a card, with a limitation that states it.

    The limitation replaces any that says the model was not checked on another organ or lab.
    """
    per = {s: v for s, v in by_source["sources"].items() if sources is None or s in sources}
    card["metrics"]["validation_by_source"] = per
    card["metrics"]["validation_mean_over_sources"] = by_source.get("mean_over_sources")
    card["metrics"]["reproduce_by_source"] = "python -m core evaluate --scenario he-til --dataset all --split validation"
    rows = []
    for s, v in per.items():
        roles, ci = v["roles"], v.get("bootstrap_95ci", {})
        rows.append(f"{s}: detection F1 {v['detection']['f1']:.3f} (95% CI {_ci(ci.get('detection_f1'))}), immune F1 "
                    f"{roles['immune']['f1']:.3f} ({_ci(ci.get('immune_f1'))}), tumour F1 {roles['tumour']['f1']:.3f}, stroma F1 "
                    f"{roles['stroma']['f1']:.3f}, immune nuclei found and called immune {v['immune_recall']:.0%} "
                    f"({v['n_images']} {'tiles' if s == 'consep' else 'images'})")
    card["limitations"] = [x for x in card["limitations"] if "Not yet checked on another organ" not in x]
    aims = {"crc": 0.85, "consep": 0.85, "brca-m2c": 0.80}
    met = all(v["detection"]["f1"] >= 0.82 and v["roles"]["immune"]["f1"] >= aims.get(s, 0.85) for s, v in per.items())
    card["limitations"].insert(0, (
        "Per source, on each source's validation split, within 3 µm: " + "; ".join(rows) + ". The project's aims (detection "
        f"F1 >= 0.82 on each source, immune F1 >= 0.85 colorectal and >= 0.80 breast) are {'met' if met else 'not met'}; other "
        "organs, stains, scanners and centres are unchecked. CoNSeP is scored on tiles of 6 of its training images (its test "
        "images are not in the project)."))
    return card


def add_stain_study(card: dict, study: dict) -> dict:
    """Add the Macenko stain-normalisation study (:mod:`core.evaluation.he_stain_normalisation`) to ``card``.

    Puts the decision, the tune and validation scores with and without normalisation in
    ``metrics["stain_normalisation_at_inference"]`` and says the outcome in the limitations.
    Returns ``card``.
    """
    def compact(row):
        return {"threshold": row["threshold"], "score": row["score"],
                "by_source": {s: {k: round(v, 4) for k, v in m.items()} for s, m in row["by_source"].items()}}

    d = study["decision"]
    card["metrics"]["stain_normalisation_at_inference"] = {
        "method": "Macenko (torchstain, numpy backend), each image normalised alone to a reference fitted on every CRC fit image",
        "reference": study["reference"], "decision": d,
        "tune": {arm: compact(r) for arm, r in study["tune"].items()},
        "validation": {arm: compact(r) for arm, r in study["validation"].items()},
        "images_not_normalisable": study["failed_normalisations"],
        "reproduce": "python -m core.evaluation.he_stain_normalisation",
    }
    v0, v1 = study["validation"]["without"]["by_source"], study["validation"]["with"]["by_source"]
    changes = "; ".join(f"{s}: detection F1 {v0[s]['detection_f1']:.2f} → {v1[s]['detection_f1']:.2f}, immune F1 "
                        f"{v0[s]['immune_f1']:.2f} → {v1[s]['immune_f1']:.2f}" for s in v0)
    outcome = "kept" if d["keep_macenko"] else "not used"
    card["limitations"].append(
        f"Macenko stain normalisation at inference is {outcome}: on the tune splits it moved the score (mean over sources "
        f"of detection F1 + immune F1 within 3 µm) from {d['score_without']:.3f} to {d['score_with']:.3f}, per source "
        + ", ".join(f"{s} {-v:+.3f}" for s, v in d["source_drop"].items())
        + " (by the rule written before the study, in the metrics). On the validation splits, read after the decision: "
        f"{changes}. Breast (TCGA) immune calls gain from it and the colorectal sources lose: a stain mismatch is one "
        "cause of the breast gap, which normalising every image does not cure.")
    return card


def add_previous_comparison(card: dict, previous: dict) -> dict:
    """Set this version's per-source validation beside the previous version's (from its card), both on the same splits.

    Puts ``metrics["validation_by_source_vs_previous"]`` {source: {metric: {"previous", "this"}}}
    (detection, immune, tumour and stroma F1 within 3 µm, and the share of immune nuclei found
    and called immune) and one limitation that states the changes, so a user of the previous
    version sees what moved. Returns ``card``.

    Raises
    ------
    ValueError
        If either card has no per-source validation (``--evaluation-sources``).
    """
    this, prev = card["metrics"].get("validation_by_source"), previous.get("metrics", {}).get("validation_by_source")
    if not this or not prev:
        raise ValueError("both cards need their per-source validation (card --evaluation-sources) to be compared")

    def figures(v):
        return {"detection_f1": v["detection"]["f1"], "immune_f1": v["roles"]["immune"]["f1"],
                "tumour_f1": v["roles"]["tumour"]["f1"], "stroma_f1": v["roles"]["stroma"]["f1"],
                "immune_found_and_called_immune": v["immune_recall"]}

    table = {}
    for src in this:
        if src in prev:
            a, b = figures(prev[src]), figures(this[src])
            table[src] = {k: {"previous": round(a[k], 4), "this": round(b[k], 4)} for k in a}
    name = f"{previous.get('weights_file', 'the previous weights')} (version {previous.get('version', '?')})"
    card["metrics"]["validation_by_source_vs_previous"] = {"previous": name, "by_source": table}
    changes = "; ".join(
        f"{src}: detection F1 {t['detection_f1']['previous']:.2f} → {t['detection_f1']['this']:.2f}, immune F1 "
        f"{t['immune_f1']['previous']:.2f} → {t['immune_f1']['this']:.2f}, immune nuclei found and called immune "
        f"{t['immune_found_and_called_immune']['previous']:.0%} → {t['immune_found_and_called_immune']['this']:.0%}"
        for src, t in table.items())
    card["limitations"].insert(1, f"Against {name} on the same validation splits (within 3 µm): {changes}.")
    return card


def _ci(pair) -> str:
    return "n/a" if not pair else f"{pair[0]:.3f}-{pair[1]:.3f}"


def add_arguments(c: argparse.ArgumentParser) -> None:
    """The ``card`` options: weights, training records, evaluations, benchmark, limitations."""
    c.add_argument("--weights", required=True)
    c.add_argument("--train", help="training record of the last stage (required unless --update)")
    c.add_argument("--update", action="store_true",
                   help="add --evaluation-sources and/or --stain-study to the existing card beside --weights instead of building it "
                        "from the records")
    c.add_argument("--evaluation")
    c.add_argument("--benchmark")
    c.add_argument("--earlier", nargs="+", default=[],
                   help="training records of the earlier stages, in order (each warm-started the next with --init)")
    c.add_argument("--evaluation-bf16", help="the validation evaluation at --precision bfloat16")
    c.add_argument("--evaluation-sources", help="the per-source validation (evaluate --dataset all), for --sources stages")
    c.add_argument("--stain-study", help="the Macenko study (python -m core.evaluation.he_stain_normalisation --out FILE)")
    c.add_argument("--previous-card", help="the JSON card of the version these weights replace: its per-source validation "
                   "is set beside theirs")
    c.add_argument("--limitation", action="append", default=[],
                   help="a limitation seen outside the evaluation (e.g. a look at another centre's slides); repeatable")


def run(args: argparse.Namespace) -> int:
    """Build the card from the files named in ``args`` and write it beside the weights."""
    weights = Path(args.weights)
    load = lambda f: json.loads(Path(f).read_text()) if f else None  # noqa: E731
    if getattr(args, "update", False):
        if not (args.evaluation_sources or args.stain_study):
            raise SystemExit("--update needs --evaluation-sources or --stain-study")
        card = load(weights.with_suffix(".json"))
        if args.evaluation_sources:
            card = add_source_validation(card, load(args.evaluation_sources))
        if args.stain_study:
            card = add_stain_study(card, load(args.stain_study))
        card["limitations"].extend(args.limitation)
        js, md = write_card(weights, card)
        print(f"wrote {js} and {md}")
        return 0
    if not args.train:
        raise SystemExit("--train is required (or --update)")
    bench = Path(args.benchmark).read_text() if args.benchmark else None
    card = build_card(weights, load(args.train), load(args.evaluation), bench, [load(f) for f in args.earlier],
                      load(args.evaluation_bf16), load(getattr(args, "evaluation_sources", None)))
    if getattr(args, "stain_study", None):
        card = add_stain_study(card, load(args.stain_study))
    if getattr(args, "previous_card", None):
        card = add_previous_comparison(card, load(args.previous_card))
    card["limitations"].extend(args.limitation)
    js, md = write_card(weights, card)
    print(f"wrote {js} and {md}")
    return 0


def main(argv=None) -> int:
    """``python -m core.training.sdrdin_card``: the same as ``python -m core.training.sdrdin card``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
