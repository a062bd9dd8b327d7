"""Write the model card of the ``mihc-tcell-phenotypes`` S-DRDIN weights from the training and evaluation records.

Usage::

    python -m core.training.mihc card --weights weights/mihc-tcell-phenotypes-sdrdin-v1.safetensors \
        --train weights/mihc-tcell-phenotypes-sdrdin-v1.train.json \
        --earlier runs/mihc/mihc-tcell-phenotypes-sdrdin-v1.stage1.train.json --evaluation runs/mihc-eval.json

(``python -m core.training.mihc_card`` takes the same options.) Every number in the card comes
from those files; the SHA-256 is computed from the weights file itself. The card says, in its
intended use and its first limitation, that the model is trained on synthetic images only and
not validated on real mIHC (:data:`core.scenarios.mihc.SYNTHETIC_NOTE`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.model_card import write_card


def _train_command(t: dict, name: str, init: str | None = None) -> str:
    return (f"python -m core.training.mihc train --variant {t['variant']} --base {t['base_features']} --size {t['size_px']} "
            f"--batch {t['batch']} --lr {t['lr']} --minutes {t['minutes']:g} --seed {t['seed']} "
            f"--eval-minutes {t['eval_minutes']:g} --tune-sections {t['tune_seeds'][1] - t['tune_seeds'][0] + 1} "
            f"--pool {t['pool']} --fresh {t['fresh']}" + (f" --init {init}" if init else "") + f" --out weights/{name}")


def build_card(weights: Path, train: dict, evaluation: dict | None = None, earlier: list[dict] | None = None,
               benchmark: str | None = None) -> dict:
    """The card's dict (MONAI-bundle-like) from the last stage's record, the earlier stages' and the evaluation.

    Parameters
    ----------
    weights : the weights file (its name and SHA-256 go into the card)
    train : training record of the last stage (``<weights stem>.train.json``)
    evaluation : ``python -m core evaluate --scenario mihc-tcell-phenotypes --synthetic N --seed S`` output
    earlier : training records of the stages before ``train``, in order (each warm-started the next)
    benchmark : text of a CPU benchmark, optional

    Returns
    -------
    dict
    """
    from core.evaluation.mihc import MATCH_RADIUS_UM, PAPER_RESULTS
    from core.generator.mihc import CHROMOGENS, CLASS_FREQUENCIES, EXPRESSION, MIHC_MPP, PHENOTYPES
    from core.scenarios.he_til import PostprocessParams
    from core.scenarios.mihc import CHROMOGEN_DISC_UM, KEY, SYNTHETIC_NOTE, chromogen_columns
    from core.scenarios.weights import sha256_file

    stages = [*(earlier or []), train]
    pp = PostprocessParams(threshold=train["threshold"])
    if train.get("class_window_um") is not None:
        pp = PostprocessParams(threshold=train["threshold"], class_window_um=float(train["class_window_um"]))
    total_s = sum(t["train_time_s"] for t in stages)
    sections = sum(t["sections_seen"] for t in stages)
    budget_minutes = " + ".join(f"{t['minutes']:g}" for t in stages)
    variant = train.get("variant", "s-drdin")
    what = "S-DRDIN" if variant == "s-drdin" else f"{variant} (the paper's ablation of S-DRDIN, §2.4)"
    card = {
        "name": f"{what} for six T-cell phenotypes in multiplex IHC (synthetic-trained, base width {train['base_features']})",
        "scenario": KEY,
        "version": "1.0.0",
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
        "weights_dtype": "float32",
        "trained_on_synthetic": True,
        "intended_use": (f"Teaching and method development only: {SYNTHETIC_NOTE}. It shows how S-DRDIN detects and "
                         "phenotypes T cells in multiplex IHC (PD1, CD8, CD4, FOXP3) in one pass; its results are not "
                         "saved as case analyses unless the user confirms. Research use, not a diagnostic device.")
        if variant == "s-drdin" else (
            f"Method development only: {SYNTHETIC_NOTE}. A variant of S-DRDIN for the paper's ablation (§2.4, Tables 2-3), "
            "trained with the same budget and recipe; read by python -m core evaluate --scenario mihc-tcell-phenotypes beside "
            "the S-DRDIN weights, never registered as a scenario or offered on a page."),
        "limitations": [
            "Trained on synthetic images only; not validated on real mIHC: no labelled multiplex IHC was available. Every "
            "figure in this card comes from the project's generator, an optimistic setting; accuracy on real sections is "
            "unknown.",
            "The chromogen of each marker is an assumption of the generator (PD1 teal, CD8 Fast Red, CD4 green, FOXP3 DAB; "
            "the paper does not name its chromogens), and the green and teal absorbance spectra are estimates: a panel with "
            "other chromogens, or the same chromogens with other hues, is outside what it has seen.",
            "Cells are round lymphocytes drawn as ellipses with membrane rings and nuclear FOXP3; real T cells (crushed, "
            "overlapping, cut obliquely), macrophages with non-specific uptake, pigment and background staining are not "
            "modelled beyond a faint haze.",
            f"Images are resampled to {MIHC_MPP} µm/px (the paper's 20x); a wrong mpp changes the results.",
            f"The phenotype of a cell is the average of the class map over a {pp.class_window_um:g} µm square (eq. 3): a cell "
            "among cells of another phenotype can take theirs.",
            "The per-cell chromogen levels and the unmixed maps (core.mihc_unmixing) are a guide: five stains cannot be "
            "separated exactly from three colour channels.",
        ],
        "architecture": {
            "variant": train["variant"], "base_features": train["base_features"], "parameters": train["parameters"],
            "description": (
                "S-DRDIN §2.3: U-Net with inception blocks, encoder of 4 blocks joined by 2x2 average pooling (widths f, 2f, "
                "4f, 8f); a classification decoder ending in a 1x1 convolution to 7 channels (softmax over the 6 phenotypes "
                "and background) and a detection decoder that receives the encoder skips through a stop-gradient, joins the "
                "classification branch's last inception output and ends in two 3x3 and a 1x1 convolution (sigmoid); "
                "core.nets.sdrdin.SDRDIN(n_classes=6)."),
        },
        "input": {
            "dtype": "float32", "channels": "RGB (brightfield)", "value_range": "(x / 255 - mean) / std",
            "normalization_mean": train["normalization_mean"], "normalization_std": train["normalization_std"],
            "mpp": MIHC_MPP, "size": "H, W multiples of 8 (reflected); large images in 1024 px blocks with a 96 px context",
            "stains": [{"stain": c.name, "marker": c.marker, "localisation": c.localisation, "od_rgb": list(c.od_rgb),
                        "source": c.source, "estimate": c.estimate} for c in CHROMOGENS],
        },
        "output": {
            "classes": [{"cell_class": p, "role": "immune",
                         "expression": {m: ("+" if v else "-") for m, v in EXPRESSION[p].items()}} for p in PHENOTYPES],
            "cells": "one row per detected T cell: cell_class (phenotype), role immune, probability (class share of eq. 3), "
                     f"detection_probability, and the 90th percentile of each unmixed chromogen in a {CHROMOGEN_DISC_UM:g} µm "
                     f"disc ({', '.join(chromogen_columns().values())}; OD units)",
            "dense": "probability: detection probability per pixel",
        },
        "thresholds": {
            "detection": train["threshold"],
            "tuned_on": f"synthetic tuning sections, seeds {train['tune_seeds'][0]}-{train['tune_seeds'][1]} "
                        f"({train['tune_size_px']} x {train['tune_size_px']} px), never evaluation seeds",
            "selection_rule": train["selection_rule"],
            "tune_at_threshold": train["tune_at_threshold"],
            "postprocess_um": {"min_area_um2": round(pp.min_area_um2, 3), "peak_window_um": round(pp.peak_window_um, 3),
                               "peak_dilation_um": round(pp.peak_dilation_um, 3), "class_window_um": round(pp.class_window_um, 3)},
            "postprocess_px_at_0.44": pp.in_pixels(MIHC_MPP),
        },
        "training_data": {
            "name": "synthetic multiplex IHC sections from the TILscope generator, recipe 'mihc-tcell' (core.generator.mihc)",
            "source": "no real image was used: hematoxylin and DAB absorbance measured on the project's real IHC images, "
                      "Fast Red from Ruifrok & Johnston 2001, green and teal estimated",
            "sections": f"{sections} fresh sections of {train['size_px']} x {train['size_px']} px at {MIHC_MPP} µm/px, "
                        + "; ".join(f"stage {i + 1}: seeds {t['train_seeds'][0]}-{t['train_seeds'][1]}" for i, t in enumerate(stages)),
            "phenotype_frequencies": dict(zip(PHENOTYPES, [round(f, 4) for f in CLASS_FREQUENCIES])),
            "frequency_source": "S-DRDIN paper Table 1, all 3674 annotated cells",
            "targets": f"disks of radius {train['radius_um']} µm ({train['radius_px']:.1f} px) around each T cell's centre "
                       "(§2.2): class map with a background channel, detection map = their union; unstained tumour and "
                       "stromal cells are background",
        },
        "training": {
            "command": [_train_command(t, weights.name, f"<stage {i} weights>" if i else None) for i, t in enumerate(stages)],
            "loss": "pixel-weighted cross-entropy (eq. 1-2, weights recomputed per batch) + binary cross-entropy of detection"
                    + (f" x {train['det_weight']}" if train["det_weight"] != 1 else ""),
            "optimizer": f"Adam, lr {train['lr']}, 50-step warm-up and cosine decay over the time budget; Glorot-uniform init",
            "batch": train["batch"], "augmentation": "flips (paper) and transposes",
            "steps": sum(t["steps"] for t in stages), "train_time_s": round(total_s, 1),
            "hardware": ", ".join(sorted({f"{t['device']} ({t['threads']} threads)" for t in stages})),
            "stages": [{"stage": i + 1, "minutes": t["minutes"], "steps": t["steps"], "best_step": t["best_step"],
                        "seed": t["seed"], "sections_seen": t["sections_seen"],
                        "start": f"warm start from stage {i} (--init)" if i else "Glorot-uniform init"}
                       for i, t in enumerate(stages)],
            "history": [{k: h[k] for k in ("step", "elapsed_s", "tune")} for h in train["history"]],
        },
        "metrics": {"published_for_comparison": PAPER_RESULTS},
        "departures_from_paper": [
            "Synthetic sections from the project's generator instead of 180 annotated patches of 4 ovarian cancer slides.",
            f"Base width {train['base_features']} ({train['parameters']} parameters) and a time budget "
            f"({budget_minutes} minutes) instead of 100 epochs on a GPU.",
            f"Target disks of {train['radius_um']} µm ({train['radius_px']:.1f} px) instead of 2 px: §2.5 drops detected "
            "components under 50 px, larger than a 2 px disk (13 px).",
            "Transposes added to the flips; a cosine learning-rate decay over the budget.",
            "Checkpoint and detection threshold chosen on separate synthetic tuning seeds by a rule fixed before training.",
        ],
        "references": [
            "S-DRDIN: simultaneous detection and classification of cells in mIHC (shared/papers/s-drdin-mihc-detection-"
            "classification.txt), §2.1-2.5, eq. 1-3, Tables 1-3, A.5",
            "Ruifrok & Johnston, Quantification of histochemical staining by color deconvolution, Anal Quant Cytol Histol 2001",
            "Chen & Srinivas, Group sparsity model for stain unmixing in brightfield multiplex IHC images, CMIG 2015",
        ],
    }
    if abs(pp.class_window_um - 49 * 0.44) > 0.01:
        card["departures_from_paper"].append(
            f"Class square of eq. 3 is {pp.class_window_um:g} µm instead of the paper's 49 px (21.56 µm): chosen on the "
            "tuning seeds by the pre-registered rule (highest weighted class F1), as T cells in clusters lie closer than "
            "the paper's square.")
    if evaluation:
        card["metrics"]["heldout_synthetic"] = {
            "split": f"synthetic sections, seeds {evaluation['seeds'][0]}-{evaluation['seeds'][1]} "
                     f"({evaluation['shape'][0]} x {evaluation['shape'][1]} px), never used in training or tuning",
            "match_radius_um": MATCH_RADIUS_UM, "n_cells": evaluation["n_cells"], "headline": evaluation["headline"],
            "models": evaluation["models"], "rare_classes": evaluation["rare_classes"],
        }
        boot = evaluation.get("rare_classes_s_drdin_minus_drdin_classification")
        if boot:
            card["metrics"]["heldout_synthetic"]["rare_classes_s_drdin_minus_drdin_classification"] = boot
            parts = [f"{c} {v['difference']:+.3f} (95 % interval {v['ci95'][0]:+.3f} to {v['ci95'][1]:+.3f})"
                     for c, v in boot.items() if isinstance(v, dict)]
            met = [c for c, v in boot.items() if isinstance(v, dict) and v["difference"] >= 0]
            apart = all(v["ci95"][0] <= 0 <= v["ci95"][1] for v in boot.values() if isinstance(v, dict))
            card["limitations"].insert(2, (
                "The paper's ablation on the rare phenotypes, S-DRDIN minus DRDIN-classification F1 on the same held-out "
                f"sections: {'; '.join(parts)}."
                + (f" The aim 'S-DRDIN at least as good on the rare classes' holds on {len(met)} of {len(parts)}; every "
                   "interval includes 0, so on these sections the two are not told apart." if apart else "")))
        card["metrics"]["reproduce"] = (f"python -m core evaluate --scenario {KEY} --synthetic "
                                        f"{evaluation['seeds'][1] - evaluation['seeds'][0] + 1} --seed {evaluation['seeds'][0]}")
        h = evaluation["headline"]
        if variant != "s-drdin" and variant in evaluation["models"]:  # an ablation card: its own figures
            own = evaluation["models"][variant]
            h = {"detection_f1": own["detection"]["f1"],
                 "classification_weighted_f1": (own.get("classification") or {}).get("weighted_f1")}
            card["metrics"]["heldout_synthetic"]["headline"] = {**h, "variant": variant,
                                                                "s_drdin": evaluation["headline"]}
        card["limitations"].insert(1, (
            f"On held-out synthetic sections: detection F1 {h['detection_f1']:.3f} and weighted class F1 "
            f"{h['classification_weighted_f1']:.3f} (the paper on real mIHC: 0.835 / 0.867); these are figures on "
            "the generator's images, not on tissue." if h.get("classification_weighted_f1") is not None else
            f"On held-out synthetic sections: detection F1 {h['detection_f1']:.3f} (a detection-only network: no "
            "phenotypes; the paper on real mIHC: 0.816 for DRDIN-detection, 0.835 for S-DRDIN); these are figures on "
            "the generator's images, not on tissue."))
    if benchmark:
        card["benchmark_cpu"] = benchmark.strip()
    return card


def add_arguments(c: argparse.ArgumentParser) -> None:
    """The ``card`` options: weights, training records, evaluation, benchmark."""
    c.add_argument("--weights", required=True)
    c.add_argument("--train", required=True, help="training record of the last stage")
    c.add_argument("--earlier", nargs="+", default=[], help="training records of the earlier stages, in order")
    c.add_argument("--evaluation", help="output of python -m core evaluate --scenario mihc-tcell-phenotypes (JSON)")
    c.add_argument("--benchmark", help="a CPU benchmark (text)")


def run(args: argparse.Namespace) -> int:
    """Build the card from the files named in ``args`` and write it beside the weights (JSON + Markdown)."""
    weights = Path(args.weights)
    load = lambda f: json.loads(Path(f).read_text()) if f else None  # noqa: E731
    card = build_card(weights, load(args.train), load(args.evaluation), [load(f) for f in args.earlier],
                      Path(args.benchmark).read_text() if args.benchmark else None)
    js, md = write_card(weights, card)
    print(f"wrote {js} and {md}")
    return 0


def main(argv=None) -> int:
    """``python -m core.training.mihc_card``: the same as ``python -m core.training.mihc card``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
