"""Write the model card of tissue-compartments (CD-UNET) weights from the training and evaluation records.

Usage::

    python -m core.training.cd_unet_card --weights weights/tissue-compartments-cdunet-v1.safetensors \
        --train runs/tc-s2.train.json --earlier runs/tc-s1.train.json --evaluation runs/tc-eval.json \
        --unet-evaluation runs/tc-unet-eval.json --unet-train runs/tc-unet-s2.train.json [--benchmark runs/tc-bench.json] \
        [--equal-cd-train runs/tc-cd-s1.train.json --equal-cd-evaluation runs/tc-cd-s1-eval.json]

Every number comes from those files (training records of :mod:`core.training.cd_unet`,
evaluations of :mod:`core.evaluation.compartments`); the SHA-256 is computed from the weights.
The card sets the per-class F1 of every validation source beside the paper's Table 2 and the
CD-UNET vs U-Net comparison on the same data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.evaluation.compartments import JUDGED_SHARES, PAPER_TABLE2
from core.generator.compartments import STAINS
from core.model_card import write_card
from core.scenarios.registry import get_scenario
from core.scenarios.weights import sha256_file


def _command(t: dict, out: str, init: str | None) -> str:
    cfg = t["config"]
    cmd = (f"python -m core.training.cd_unet --variant {t['variant']} --base {cfg['base']} --depth {cfg['depth']} "
           f"--minutes {t['minutes']:g} --crop {t['crop_px']} --batch {t['batch']} --optimizer {t['optimizer']} "
           f"--lr {t['lr']:g} --pool {t['data']['pool']} --pool-size {t['data']['pool_size_px']} "
           f"--pool-first-seed {t['data']['pool_seeds'][0]} --seed {t['seed']} "
           f"--sources {' '.join(t['sources'])}")
    return cmd + (f" --init {init}" if init else "") + f" --out {out}"


def _til_bias(til: dict) -> list[str]:
    """A limitation on the direction of the stromal TIL % error, when the evaluation measured it."""
    moved = til.get("stromal_lymphocytes_predicted_as_mean")
    bias = til.get("mean_signed_diff_points")
    if moved is None or bias is None:
        return []
    return [f"Stromal TIL % from predicted compartments is {'lower' if bias < 0 else 'higher'} than from the true ones by "
            f"{abs(bias):.1f} points on average (synthetic held-out sections): {100 * moved['tumour']:.0f} % of the "
            "lymphocytes lying in true stroma fall in predicted tumour (lymphocyte-rich stroma taken for tumour), which "
            "lowers the stromal TIL % and raises intratumoral immune densities."]


def _hardest_stains(per_stain: dict) -> dict:
    """The issue's criterion on per-stain macro F1 {stain: {"cd-unet", "unet"}}: ``unet_hardest_stains`` (the three
    lowest for the U-Net) and ``cd_unet_better_on_all_hardest`` (CD-UNET higher on each of them)."""
    hardest = sorted(per_stain, key=lambda s: per_stain[s]["unet"] or 0.0)[:3]
    return {"unet_hardest_stains": hardest,
            "cd_unet_better_on_all_hardest": all((per_stain[s]["cd-unet"] or 0) > (per_stain[s]["unet"] or 0)
                                                 for s in hardest)}


def comparison(cd: dict, unet: dict) -> dict:
    """CD-UNET vs U-Net on the same held-out data: per class overall, per stain, and on the U-Net's hardest stains.

    Parameters
    ----------
    cd, unet : evaluations of :func:`core.evaluation.compartments.evaluate_weights`

    Returns
    -------
    dict: ``per_class_f1`` {class: {"cd-unet", "unet"}}, ``per_stain_macro_f1`` {stain: {...}},
    ``unet_hardest_stains`` (three lowest U-Net macro F1) with ``cd_unet_better_on_all`` (bool),
    ``real`` per source judged shares of both
    """
    cs, us = cd["synthetic"], unet["synthetic"]
    per_class = {k: {"cd-unet": cs["overall"]["per_class"][k]["f1"], "unet": us["overall"]["per_class"][k]["f1"]}
                 for k in cs["overall"]["per_class"]}
    per_stain = {s: {"cd-unet": cs["per_stain"][s]["macro_f1"], "unet": us["per_stain"][s]["macro_f1"]}
                 for s in cs["per_stain"] if s in us["per_stain"]}
    real = {src: {"cd-unet": cd["real_weak_labels"][src]["judged"], "unet": unet["real_weak_labels"][src]["judged"]}
            for src in cd["real_weak_labels"] if src != "mean_judged" and src in unet["real_weak_labels"]}
    return {
        "per_class_f1": per_class, "per_stain_macro_f1": per_stain, **_hardest_stains(per_stain),
        "real_judged": real,
        "necrosis_f1": {"cd-unet": cd["real_necrosis"]["necrosis"]["f1"], "unet": unet["real_necrosis"]["necrosis"]["f1"]},
        "paper_table2": PAPER_TABLE2,
    }


#: What two training records must share for their tune scores to compare the networks at an equal budget.
EQUAL_BUDGET_KEYS = ("minutes", "seed", "lr", "optimizer", "crop_px", "batch", "sources", "init")


def _budget_differences(a: dict, b: dict) -> list[str]:
    """What differs between two training records' budget and data (empty when they compare at an equal budget)."""
    pairs = ([(k, a.get(k), b.get(k)) for k in (*EQUAL_BUDGET_KEYS, "tune_sets")]
             + [(f"data.{k}", a["data"].get(k), b["data"].get(k)) for k in ("pool", "pool_size_px", "pool_seeds")]
             + [(f"config.{k}", a["config"][k], b["config"][k]) for k in ("base", "depth")])
    diff = [name for name, x, y in pairs if x != y]
    # equal minutes on a machine loaded differently are not equal compute: the steps must agree within 10 %
    if abs(a["steps"] - b["steps"]) > 0.1 * max(a["steps"], b["steps"]):
        diff.append(f"steps ({a['steps']} vs {b['steps']})")
    return diff


def equal_budget_record(stages: list[dict], unet_train: dict) -> dict | None:
    """The CD-UNET stage record trained with the U-Net's budget and data (same minutes from scratch, seed, pools...).

    Parameters
    ----------
    stages : CD-UNET training records of :mod:`core.training.cd_unet`, in stage order
    unet_train : the plain U-Net's training record

    Returns
    -------
    the first stage record with no :func:`_budget_differences` to ``unet_train``, or None
    """
    return next((t for t in stages if t["variant"] == "cd-unet" and not _budget_differences(t, unet_train)), None)


def tune_comparison(cd_train: dict, unet_train: dict) -> dict:
    """CD-UNET vs U-Net at an equal training budget, on the tune sets both were selected on (paper §3.3's comparison).

    Both records' ``best_tune`` are read: synthetic macro F1 per stain (2 sections per stain at
    the seeds of ``tune_sets``), per class, and each real source's judged shares. The issue's
    criterion is read on it: the three stains with the lowest U-Net macro F1, and whether the
    CD-UNET's macro F1 is higher on all three. Tune sets are small and were used to choose each
    network's checkpoint, so this is the equal-budget comparison, not a held-out figure.

    Parameters
    ----------
    cd_train, unet_train : training records of :mod:`core.training.cd_unet` (``variant`` "cd-unet" and "unet")

    Returns
    -------
    dict: ``per_stain_macro_f1`` {stain: {"cd-unet", "unet"}}, ``per_class_f1``, ``macro_f1``, ``real``
    {source: {"cd-unet": {...}, "unet": {...}}}, ``unet_hardest_stains``, ``cd_unet_better_on_all_hardest``,
    ``budget`` (minutes, steps, seconds per step of each), ``data``

    Raises
    ------
    ValueError
        If the variants are not cd-unet and unet, or the budgets or data differ (the message lists what differs).
    """
    if cd_train["variant"] != "cd-unet" or unet_train["variant"] != "unet":
        raise ValueError(f"tune_comparison takes a cd-unet and a unet record, got {cd_train['variant']} and "
                         f"{unet_train['variant']}")
    diff = _budget_differences(cd_train, unet_train)
    if diff:
        raise ValueError("the two trainings do not share a budget and data, so their scores do not compare the "
                         f"networks: {', '.join(diff)} differ")
    c, u = cd_train["best_tune"], unet_train["best_tune"]
    c_stain, u_stain = c.get("synthetic_per_stain_macro_f1") or {}, u.get("synthetic_per_stain_macro_f1") or {}
    c_class, u_class = c.get("synthetic_per_class_f1") or {}, u.get("synthetic_per_class_f1") or {}
    per_stain = {s: {"cd-unet": c_stain[s], "unet": u_stain[s]} for s in c_stain if s in u_stain}
    return {
        "per_stain_macro_f1": per_stain,
        "per_class_f1": {k: {"cd-unet": c_class[k], "unet": u_class.get(k)} for k in c_class},
        "macro_f1": {"cd-unet": c["synthetic_macro_f1"], "unet": u["synthetic_macro_f1"]},
        "real": {src: {"cd-unet": c["real"][src], "unet": u["real"].get(src)} for src in c.get("real", {})},
        **_hardest_stains(per_stain),
        "budget": {v: {"minutes": t["minutes"], "steps": t["steps"], "seconds_per_step": t["seconds_per_step"],
                       "parameters": t["parameters"]} for v, t in (("cd-unet", cd_train), ("unet", unet_train))},
        "data": {"tune_sets": cd_train.get("tune_sets"), "pool_seeds": cd_train["data"]["pool_seeds"],
                 "seed": cd_train["seed"]},
        "note": "equal budget from scratch, scored on the tune sets each checkpoint was chosen on (small: 2 synthetic "
                "sections per stain); the held-out comparison needs both networks evaluated at this budget",
    }


def _hard_list(per_stain: dict, hardest: list[str]) -> str:
    return ", ".join(f"{s} {per_stain[s]['cd-unet']:.2f} vs {per_stain[s]['unet']:.2f}" for s in hardest)


def _unet_sentence(tune: dict | None, heldout: dict | None = None) -> str:
    """The card's sentence on the CD-UNET vs U-Net comparison.

    Parameters
    ----------
    tune : :func:`tune_comparison` at an equal budget, or None
    heldout : :func:`comparison` on held-out sections of two networks trained at an equal budget
        (``minutes`` added), or None

    Returns
    -------
    str starting with a space (appended to the aims statement); the held-out comparison when there
    is one, else the tune-set one, else a plain "not run"
    """
    if heldout is not None:
        verdict = "better" if heldout["cd_unet_better_on_all_hardest"] else "not better"
        f1 = heldout["per_class_f1"]
        classes = "; ".join(f"{k} {v['cd-unet']:.2f} vs {v['unet']:.2f}" for k, v in f1.items())
        return (f" CD-UNET vs plain U-Net on held-out synthetic sections, both trained {heldout['minutes']:g} CPU minutes "
                f"from scratch on the same data and seed: {verdict} on the three stains the U-Net finds hardest "
                f"({_hard_list(heldout['per_stain_macro_f1'], heldout['unet_hardest_stains'])}); per-class F1 {classes}.")
    if tune is None:
        return " The CD-UNET vs U-Net comparison has not been run for these weights."
    verdict = "better" if tune["cd_unet_better_on_all_hardest"] else "not better"
    minutes = tune["budget"]["cd-unet"]["minutes"]
    return (f" CD-UNET vs plain U-Net at an equal budget ({minutes:g} CPU minutes each from scratch, same data and seed; "
            f"tune sets, macro F1): {verdict} on the three stains the U-Net finds hardest "
            f"({_hard_list(tune['per_stain_macro_f1'], tune['unet_hardest_stains'])}); overall "
            f"{tune['macro_f1']['cd-unet']:.2f} vs {tune['macro_f1']['unet']:.2f}. Not yet compared on held-out sections "
            "at that budget.")


#: The issue's aims on held-out synthetic sections: per-class F1 (necrosis lower), stromal TIL % agreement (points).
F1_AIMS = {"background": 0.85, "tumour": 0.85, "stroma": 0.85, "necrosis": 0.75}
STROMAL_TIL_AIM_POINTS = 5.0


def aims_statement(evaluation: dict, unet_sentence: str) -> str:
    """One plain limitation saying which of the issue's aims the weights meet and which they miss, with the figures.

    Parameters
    ----------
    evaluation : :func:`core.evaluation.compartments.evaluate_weights` output
    unet_sentence : what CD-UNET vs U-Net comparison there is (:func:`_unet_sentence`), appended

    Returns
    -------
    str, starting "Below the aims ..." when any aim is missed, else "Meets the aims ..."
    """
    syn = evaluation["synthetic"]
    f1 = {k: syn["overall"]["per_class"][k]["f1"] for k in F1_AIMS}
    judged = evaluation["real_weak_labels"]["mean_judged"]
    til = syn.get("stromal_til") or {}
    missed, met = [], []
    for k, aim in F1_AIMS.items():
        (met if (f1[k] or 0) >= aim else missed).append(f"{k} F1 {f1[k]:.2f} (aim {aim:.2f})")
    for key, aim in JUDGED_SHARES.items():
        what = "annotated tumour cells in the predicted tumour" if key.startswith("tumour") else \
            "annotated stromal cells in the predicted stroma"
        value = judged.get(key)
        text = f"{what} {100 * (value or 0):.0f} % (aim {100 * aim:.0f} %)"
        (met if value is not None and value >= aim else missed).append(text)
    if til.get("share_within_5_points") is not None:
        text = (f"stromal TIL % within {STROMAL_TIL_AIM_POINTS:g} points of the ground-truth compartments' in "
                f"{100 * til['share_within_5_points']:.0f} % of synthetic sections (mean difference "
                f"{til.get('mean_abs_diff_points', float('nan')):.1f} points; aim: all)")
        (met if til["share_within_5_points"] >= 1.0 else missed).append(text)
    if not missed:
        return "Meets the aims of the issue on the project's validation data: " + "; ".join(met) + "." + unet_sentence
    return ("Below the aims of the issue (these are early-stage weights, registered as the current model until "
            "better ones pass). Not met: " + "; ".join(missed) + (f". Met: {'; '.join(met)}" if met else "")
            + ". Treat the compartments as a draft to check over the image, not as measurements." + unet_sentence)


def build_card(weights: Path, train: dict, evaluation: dict, earlier: list[dict] | None = None,
               unet_evaluation: dict | None = None, unet_train: dict | None = None, benchmark: dict | None = None,
               equal_cd_train: dict | None = None, equal_cd_evaluation: dict | None = None) -> dict:
    """The card's dict (see the module docstring).

    The CD-UNET vs U-Net comparison (paper §3.3) is at an equal budget when the CD-UNET record
    matches the U-Net's (:func:`_budget_differences`): either one of the shipped stages or a
    separate from-scratch re-run (``equal_cd_train``, with its held-out ``equal_cd_evaluation``)
    trained only for the comparison, since the shipped weights had several warm-started stages.

    Raises
    ------
    ValueError
        If ``equal_cd_train`` is given without ``unet_train``, or their budgets or data differ.
    """
    earlier = earlier or []
    stages = earlier + [train]
    if equal_cd_train is not None and unet_train is None:
        raise ValueError("an equal-budget CD-UNET re-run needs the U-Net's training record to compare with")
    same_budget = equal_cd_train if equal_cd_train is not None else (
        equal_budget_record(stages, unet_train) if unet_train is not None else None)
    tune = tune_comparison(same_budget, unet_train) if same_budget is not None else None
    rerun = equal_cd_train is not None and equal_cd_evaluation is not None  # held-out figures of the re-run
    heldout_equal = unet_evaluation is not None and (same_budget is train or rerun)
    held_out = comparison(equal_cd_evaluation if rerun else evaluation, unet_evaluation) if unet_evaluation else None
    heldout = dict(held_out, minutes=same_budget["minutes"]) if heldout_equal else None
    tiling = get_scenario("tissue-compartments").tiling
    cfg = train["config"]
    syn = evaluation["synthetic"]
    real = evaluation["real_weak_labels"]
    judged = real["mean_judged"]
    names = [f"runs/stage{i + 1}.safetensors" for i in range(len(stages))]
    commands = [_command(t, names[i], names[i - 1] if i else None) for i, t in enumerate(stages)]
    card = {
        "name": "CD-UNET tissue compartments (tumour, stroma, necrosis, background) in H&E and IHC",
        "scenario": "tissue-compartments",
        "version": "1.0.0",
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
        "weights_dtype": "float32",
        "trained_on_synthetic": False,
        "task": "label every pixel background (glass, artefacts), tumour, stroma or necrosis, in any brightfield stain "
                "with a haematoxylin counterstain",
        "intended_use": ("Research use, not a diagnostic device: tissue compartments for TIL statistics (stromal TIL %, "
                         "intratumoral vs stromal densities, invasive margin) and for excluding necrosis and glass; "
                         "results must be reviewed by a pathologist."),
        "limitations": [
            aims_statement(evaluation, _unet_sentence(tune, heldout)),
            "No real image with compartment masks exists in the project: tumour and stroma were learned from synthetic "
            "sections and weak labels derived from annotated cell points (borders known to about 20 µm), necrosis from "
            "20 overlapping crops of one TCGA slide. The real figures below are on those weak labels, not on a "
            "pathologist's outlines.",
            "IHC stains were seen only as synthetic sections (chromogen vectors estimated from CD3 and Ki67 IHC, red, "
            "purple and yellow chromogens from published or hand-chosen vectors); no real IHC image has compartment "
            "labels, so IHC accuracy on real slides is unknown.",
            "Normal epithelium is labelled tumour by the weak labels (\"epithelial\" nuclei) and will be predicted so.",
            "Trained at 1.0 µm/px: give the true mpp so the image is resampled; whole slides need the slide tiler.",
            *_til_bias(syn.get("stromal_til") or {}),
        ],
        "metrics": {
            "synthetic_heldout": {
                "split": syn["split"], "size_px": syn["size_px"],
                "per_class": syn["overall"]["per_class"], "macro_f1": syn["overall"]["macro_f1"],
                "per_stain_macro_f1": {s: v["macro_f1"] for s, v in syn["per_stain"].items()},
                "per_stain_per_class_f1": {s: {k: c["f1"] for k, c in v["per_class"].items()}
                                           for s, v in syn["per_stain"].items()},
                "hardest_stains": syn["hardest_stains"],
                "targets": "issue: per-class F1 >= 0.85 (necrosis >= 0.75)",
            },
            "stromal_til_agreement_synthetic": {k: v for k, v in syn["stromal_til"].items() if k != "sections"},
            "real_weak_labels_validation": {
                src: {"per_class": v["per_class"], "tumour_cells_in_predicted_tumour": v["judged"]["tumour_cells_in_tumour"],
                      "stromal_cells_in_predicted_stroma": v["judged"]["stromal_cells_in_stroma"],
                      "n_tumour_cells": v["judged"]["n_tumour_cells"], "n_stromal_cells": v["judged"]["n_stromal_cells"],
                      "n_fields": v["n_fields"]}
                for src, v in real.items() if src != "mean_judged"},
            "real_judged_mean_over_sources": {"tumour_cells_in_predicted_tumour": judged["tumour_cells_in_tumour"],
                                              "stromal_cells_in_predicted_stroma": judged["stromal_cells_in_stroma"],
                                              "targets": JUDGED_SHARES},
            "real_necrosis_validation": evaluation["real_necrosis"],
            "paper_table2_testing_f1": PAPER_TABLE2,
            "reproduce": f"python -m core.evaluation.compartments --weights weights/{weights.name}",
        },
        "training_data": {
            "synthetic": ("sections of the compartment recipe (core/generator/compartments.py): tumour nests of the "
                          "generator's tumour cells with gland lumina, stroma with collagen fibres and spindle cells, "
                          "necrosis with karyorrhectic fragments and eosinophilic debris, lymphoid aggregates, glass and "
                          "pen marks, in the paper's nine stains (H&E, CEA, CD163/CD68, CD8/CD3, FoxP3, Ki67/CD3, "
                          f"Ki67/CD8, PRF/CD3, PD1); {train['data']['pool']} sections of {train['data']['pool_size_px']} px "
                          f"per stage, seeds {train['data']['pool_seeds']}"),
            "colours": ("Beer-Lambert rendering with stain vectors (Macenko per image) and concentrations estimated from "
                        "the training parts of he-crc-cell-points, he-brca-m2c-points, he-consep-tiles, he-necrosis-tcga, "
                        "cd3-ihc-gastric and ihc-ki67-deepliif (core.generator.stains.estimate_stain_statistics)"),
            "real_weak_labels": {src: v for src, v in train["data"]["real_fit"].items()},
            "weak_label_rule": ("a pixel is tumour where >= 3 annotated tumour nuclei lie within 20 µm and make >= 75 % of "
                                "the tumour + stromal nuclei there, stroma likewise, unknown (ignored) elsewhere; glass (OD "
                                "sum < 0.15) is background (core.training.compartment_labels)"),
            "real_necrosis": train["data"]["necrosis_train"],
            "shares_of_crops": train["data"]["shares"],
            "class_weights": train["data"]["class_weights_median_frequency"],
        },
        "training": {
            "commands": commands,
            "stages": [{"stage": i + 1, "steps": t["steps"], "best_step": t["best_step"], "minutes": t["minutes"],
                        "train_time_s": t["train_time_s"], "device": t["device"], "lr": t["lr"],
                        "tune_score": (t["best_tune"] or {}).get("score"), "accepted": t["accepted"]}
                       for i, t in enumerate(stages)],
            "selection_rule": train["selection_rule"],
            "loss": train["loss"], "optimizer": train["optimizer"], "schedule": train["schedule"],
            "augmentation": train["augmentation"], "crop_px": train["crop_px"], "batch": train["batch"],
        },
        "departures_from_paper": [
            f"Width: base {cfg['base']} filters" + ("" if cfg["base"] == 32 else " instead of the paper's half width of 32 "
                                                    "(CPU budget and the speed target); the same command with --base 32 "
                                                    "trains the paper's width on a GPU"),
            "Training data: synthetic multistain sections and weak labels instead of 77 annotated whole slides; no "
            "\"exclude\" class (artefacts such as pen marks are background).",
            f"Optimiser {train['optimizer']} at {train['lr']:g} with a cosine schedule for a time budget (paper: SGD, "
            "momentum 0.9, 200 epochs on 15 GPUs); RGB input (the paper's BGR order is immaterial to a learned 1 x 1 layer).",
            "Augmentation as §2 except the small affine transforms (flips, transposes and scale jitter instead).",
            "The up-sampling is the original 2 x 2 transposed convolution with BN and ReLU; the last 1 x 1 convolution "
            "has no BN (logits).",
            "Necrosis masks of other patches are partial labels (\"not necrosis\": -log of the summed probability of the "
            "other classes).",
        ],
        "architecture": {"config": cfg, "parameters": train["parameters"], "variant": train["variant"],
                         "description": "two 1 x 1 convolutions (6 then 3 filters, BN + ReLU) in front of a U-Net "
                                        f"(widths {[cfg['base'] * 2 ** k for k in range(cfg['depth'] + 1)]}, zero padding, "
                                        "BN after every convolution), 4 classes (§3.2)"},
        "input": {"dtype": "uint8 RGB → float32 in [0, 1]", "mpp": train["mpp"],
                  "tile_px": int(round(tiling.tile_um / train["mpp"])),
                  "tile_overlap_px": int(round(tiling.overlap_um / train["mpp"])),
                  "size_multiple_px": 2 ** cfg["depth"]},
        "output": {"labels": {"background": 0, "tumour": 1, "stroma": 2, "necrosis": 3},
                   "compartments.png": "8-bit label image of the input's size", "regions.geojson":
                   "QuPath annotations classified tumour / stroma / necrosis", "areas": "mm² per compartment in summary.json"},
        "thresholds": {"rule": "arg-max of the class probabilities (no threshold tuned)"},
        "references": ["CD-UNET: one-shot colour deconvolution for multistain tissue segmentation "
                       "(shared/papers/cd-unet-multistain-tissue-segmentation.txt), §2, §3.2, §3.3, Table 2",
                       "Ronneberger et al., U-Net, MICCAI 2015", "Eigen & Fergus, ICCV 2015 (median frequency balancing)",
                       "Macenko et al., ISBI 2009; Ruifrok & Johnston 2001 (stain vectors)",
                       "Salgado et al., Ann Oncol 2015 (stromal TILs)"],
        "stains": list(STAINS),
    }
    if unet_evaluation is not None:
        card["metrics"]["cd_unet_vs_unet"] = held_out
        card["metrics"]["cd_unet_vs_unet"]["equal_budget"] = heldout_equal
        card["metrics"]["cd_unet_vs_unet"]["cd_unet_weights"] = (
            "a from-scratch re-run at the U-Net's budget, not the shipped weights" if rerun else "the shipped weights")
        card["metrics"]["cd_unet_vs_unet"]["cd_unet_minutes"] = (
            same_budget["minutes"] if rerun else sum(t["minutes"] for t in stages))
        if unet_train is not None:
            card["metrics"]["cd_unet_vs_unet"]["unet_training"] = {
                "steps": unet_train["steps"], "train_time_s": unet_train["train_time_s"], "config": unet_train["config"],
                "minutes": unet_train["minutes"]}
    if tune is not None:
        card["metrics"]["cd_unet_vs_unet_equal_budget_tune"] = tune
    if benchmark:
        card["benchmark_cpu"] = benchmark
    return card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.training.cd_unet_card", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--train", required=True, help="training record of the last stage")
    p.add_argument("--earlier", nargs="*", default=[], help="training records of the earlier stages, in order")
    p.add_argument("--evaluation", required=True, help="python -m core.evaluation.compartments output for --weights")
    p.add_argument("--unet-evaluation", help="the same for the plain U-Net trained on the same data")
    p.add_argument("--unet-train", help="the U-Net's training record; a CD-UNET stage record (--earlier or --train) "
                   "with the same budget and data gives the equal-budget comparison on the tune sets")
    p.add_argument("--equal-cd-train", help="training record of a CD-UNET re-run from scratch with the U-Net's budget "
                   "and data (when no shipped stage matches it)")
    p.add_argument("--equal-cd-evaluation", help="python -m core.evaluation.compartments output for that re-run")
    p.add_argument("--benchmark", help="JSON of a speed benchmark (seconds per megapixel)")
    args = p.parse_args(argv)
    load = lambda f: json.loads(Path(f).read_text()) if f else None  # noqa: E731
    card = build_card(Path(args.weights), load(args.train), load(args.evaluation), [load(f) for f in args.earlier],
                      load(args.unet_evaluation), load(args.unet_train), load(args.benchmark),
                      load(args.equal_cd_train), load(args.equal_cd_evaluation))
    js, md = write_card(Path(args.weights), card)
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
