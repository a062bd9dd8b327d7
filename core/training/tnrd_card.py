"""Write the model card of shipped TNRD weights from the training and evaluation records.

Usage::

    python -m core.training.tnrd_card --weights weights/tnrd-if-melanoma-v1.safetensors \
        --train runs/tnrd-if/tnrd-if-melanoma-v1.train.json --evaluation runs/tnrd-if-eval.json \
        [--real runs/tnrd-if-real.json] [--benchmark runs/tnrd-bench.json]

Every number in the card comes from those files; the SHA-256 is computed from the
weights file itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.model_card import write_card
from core.scenarios.weights import sha256_file

PAPER = {
    "n_steps": 10, "nf1": 24, "nf2": 24, "k1": 11, "k2": 5, "n_rbf": 31, "rbf_range": 1.2,
    "training_images": "200 random 500 x 500", "iterations": 20000, "batch": 2, "adam_step": 0.001,
}

TITLES = {
    "tnrd-if-melanoma": ("TNRD variational network, melanoma immunofluorescence (CD45 red, gp100 green, DAPI blue)",
                         "scenario 1: CD45+ immune cells in contact with gp100+ melanoma cells"),
    "tnrd-he-melanoma": ("TNRD variational network, H&E melanoma", "scenario 2: immune cells in dense infiltrates"),
}


def _r(v):
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, dict):
        return {k: _r(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_r(x) for x in v]
    return v


def _command(key: str, name: str, cfg: dict, train: dict, init: str | None = None) -> str:
    return (f"python -m core.training.tnrd --scenario {key} --out weights/{name} --steps {cfg['n_steps']} "
            f"--nf1 {cfg['nf1']} --nf2 {cfg['nf2']} --crop {train['crop_px']} --batch {train['batch']} "
            f"--lr {train['lr']} --pool {train['pool']} --seed {train['seed']}"
            + (f" --time-limit-s {train['train_time_s']:.0f}" if "train_time_s" in train else "")
            + (f" --tune-images {train['tuning']['seeds'][1] - train['tuning']['seeds'][0] + 1}" if "tuning" in train else "")
            + (f" --init {init}" if init else ""))


def build_card(weights: Path, train: dict, evaluation: dict | None, real: dict | None, benchmark: dict | None,
               stage1: dict | None = None) -> dict:
    """The card's dict. ``stage1``: training record of the run that ``train`` warm-started from (``--init``)."""
    key = train["scenario"]
    cfg = train["config"]
    tune = train["tuning"]
    title, task = TITLES[key]
    rule = ("area fraction of tumour (gp100+) cells in a disc of radius 25 px around the immune cell's centre: > 0.4 → 1, "
            "[0.2, 0.4] → 0.5, else 0" if key == "tnrd-if-melanoma" else
            "area fraction of immune cells in a disc of radius 20 px around the immune cell's centre: > 0.2 → 1, else 0")
    iterations = train["iterations"] + (stage1["iterations"] if stage1 else 0)
    crops = (f"{train['crop_px']} x {train['crop_px']}" if stage1 is None or stage1["crop_px"] == train["crop_px"] else
             f"{stage1['crop_px']} x {stage1['crop_px']}, then {train['crop_px']} x {train['crop_px']}")
    card = {
        "name": title,
        "scenario": key,
        "version": "1.0.0",
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
        "weights_dtype": "float32",
        "trained_on_synthetic": True,
        "task": task,
        "architecture": {
            "config": cfg,
            "parameters": train["parameters"],
            "description": (
                f"N_t = {cfg['n_steps']} projected gradient steps u_(t+1) = clip_[0,1](u_t - grad E_t(u_t)) on the 4-channel "
                f"image (RGB + mask), E_t = sum phi2(K2 phi1(K1 u)) + lambda_t/2 ||R u - f||^2 (paper eq. 1-2); K1: "
                f"{cfg['nf1']} filters {cfg['k1']}x{cfg['k1']}x4, K2: {cfg['nf2']} filters {cfg['k2']}x{cfg['k2']}x{cfg['nf1']}, "
                f"phi1, phi2 per filter as sums of {cfg['n_rbf']} Gaussian RBFs in [-{cfg['rbf_range']}, {cfg['rbf_range']}]; "
                "gradient eq. (3) computed explicitly (K^T by conv_transpose2d, phi' analytic; RBF sums tabulated on a grid of "
                "sigma/64 and linearly interpolated for speed); initial mask: uniform noise (seed 0); image mirrored by "
                f"{cfg['pad_px']} px at its borders."
            ),
        },
        "input": {
            "dtype": "uint8 image → float32 RGB in [0, 1]", "channels": "RGB" + (
                " (R = CD45, G = gp100, B = DAPI)" if key == "tnrd-if-melanoma" else " (H&E brightfield)"),
            "mpp": 0.5,
            "mpp_note": ("The generator works in pixels (Table 1). Taking an immune nucleus of about 7 µm as 14-16 px "
                         "(Table 1 semi-axes 7-8 px in scenario 1, 4-8 px cells in scenario 2) gives about 0.5 µm/px "
                         "(20x); images with a known mpp are resampled to it."),
            "tile_px": 256, "tile_overlap_px": 32,
        },
        "output": {
            "denoised": "(H, W, 3) uint8 RGB (denoised.png)",
            "mask": "(H, W) float32 in [0, 1] (mask.png): 1 on classified immune cells",
            "cells": "connected regions of mask >= threshold split by a watershed, area >= min_area_px: "
                     "cell_class classified-immune, role immune, probability = mean mask value",
            "classification_rule": rule,
        },
        "thresholds": {
            "mask_threshold": tune["threshold"], "min_area_px": tune["min_area_px"], "min_distance_px": tune["min_distance_px"],
            "tuned_on": f"synthetic sections with seeds {tune['seeds'][0]}-{tune['seeds'][1]} of {tune['size_px']} x "
                        f"{tune['size_px']} px (never evaluation seeds): highest recall of the classified immune cells at precision >= 0.9, else best F1",
            "tune_metrics": _r({k: tune[k] for k in ("tune_f1", "precision", "recall", "tp", "fp", "fn")}),
        },
        "training_data": {
            "name": f"synthetic sections from the TILscope stochastic tissue generator, recipe '{train['recipe']}'",
            "source": "core/generator/ (the tissue generator package; TNRD melanoma paper §2.2, Table 1); no real image was used for training",
            "colours": ("H&E colour means and covariances estimated from the 70 real H&E training images of "
                        "he-crc-cell-points (core.generator.estimate_he_colours)" if key == "tnrd-he-melanoma" else
                        "chosen by hand (no real CD45/gp100/DAPI image is available); values in core.generator.IF_MELANOMA"),
            "sections": f"{train['pool']} sections of {train['pool_size_px']} x {train['pool_size_px']} px, seeds "
                        f"{train['train_seeds'][0]}-{train['train_seeds'][1]}; random {train['crop_px']} x {train['crop_px']} px "
                        "crops with random rotation by 90° and reflection, fresh uniform-noise initial mask per crop",
        },
        "training": {
            "command": (_command(key, weights.name, cfg, train) if stage1 is None else
                        [_command(key, weights.name, cfg, stage1),
                         _command(key, weights.name, cfg, train, init="<stage 1 weights>")]),
            "loss": "eq. (4): 1/6 ||u_rgb_T - g_rgb||^2 + 1/2 ||u_m_T - g_m||^2 per pixel",
            "optimizer": f"Adam (beta1 0.9, beta2 0.999), step {train['lr']}, {train['schedule']}; projection onto T "
                         "(filter norms <= 1, lambda >= 0) after every step",
            "iterations": iterations, "batch": train["batch"], "crop_px": train["crop_px"],
            "seed": train["seed"], "hardware": f"CPU, {train['threads']} threads (shared)",
            "train_time_s": round(train["train_time_s"] + (stage1["train_time_s"] if stage1 else 0.0), 1),
            "seconds_per_iteration": train["seconds_per_iteration"],
            "final_batch": _r(train["history"][-1]) if train.get("history") else None,
        },
        "metrics": {},
        "departures_from_paper": [
            f"CPU budget: N_t = {cfg['n_steps']} (paper 10), {cfg['nf1']} + {cfg['nf2']} filters (paper 24 + 24), "
            f"{iterations} Adam iterations (paper 20 000) on {crops} px crops "
            f"(paper whole 500 x 500 images) of {train['pool']} sections (paper 200); batch {train['batch']} as in the paper.",
            f"Adam step {train['lr']} with a cosine decay (paper 0.001 constant), because of the far shorter training.",
            "Training backpropagates through the truncation to [0, 1] with a recovering gradient (core.nets.tnrd."
            "clip01): the exact derivative is 0 outside [0, 1], and a first run collapsed to an all-zero mask that no "
            "gradient could leave; the forward pass is the paper's truncation.",
            "RBF activations evaluated from tables of the analytic sums (interpolation error < 1e-3 of the weights' scale).",
            "The image is mirrored at its borders before the steps; the convolutions zero-pad (exact adjoint).",
            "Cells are read off the mask (threshold, watershed split, area filter), tuned on separate synthetic seeds; "
            "the paper shows masks only.",
        ] + (["H&E recipe: besides the 2 of 7 Voronoi regions filled with immune cells, 30 isolated immune cells per "
              "500 x 500 px are scattered among the tumour cells (not in Table 1), so that the density rule has negatives."]
             if key == "tnrd-he-melanoma" else []),
        "intended_use": ("Research and teaching use, not a diagnostic device: denoising and marking immune cells that "
                         + ("touch melanoma cells in CD45/gp100/DAPI immunofluorescence" if key == "tnrd-if-melanoma"
                            else "lie in dense infiltrates in H&E melanoma sections")
                         + ", to illustrate the TNRD method; results must be reviewed by a pathologist."),
        "limitations": [
            "Trained on synthetic images only: ellipses with colours and noise of a simple stochastic model. Real tissue has "
            "shapes, textures, stains and artefacts the generator does not model; accuracy on real images is unknown.",
            "Metrics are measured on held-out synthetic sections from the same generator, an optimistic setting.",
            "The classification depends on a neighbourhood radius in pixels; images at another magnification must carry "
            "a correct mpp so that they are resampled to 0.5 µm/px.",
            "Touching classified cells can be merged or split wrongly by the watershed.",
        ] + (["Colours of the IF recipe were chosen by hand, not estimated from real melanoma IF images.",
              "Only the contact rule of scenario 1 is learned; borderline cells (mask 0.5) are neither required nor penalised."]
             if key == "tnrd-if-melanoma" else
             ["H&E colours were estimated from colorectal (not melanoma) H&E; extracellular matrix and other structures "
              "are not modelled and may be marked (paper §4)."]),
        "references": [
            "A variational network learning approach for TIL detection in melanoma sections (TNRD melanoma paper, "
            "shared/papers/tnrd-variational-network-melanoma.txt), §2.1 eq. (1)-(4), §2.2 Table 1, §3",
            "Chen & Pock, Trainable nonlinear reaction diffusion, IEEE TPAMI 2017",
        ],
        "paper_settings": PAPER,
    }
    card["metrics"]["tune_synthetic"] = _r({k: tune[k] for k in ("rgb_psnr_db", "input_rgb_psnr_db", "mask_psnr_db")}) | {
        "split": "tuning seeds"}
    if evaluation:
        card["metrics"]["heldout_synthetic"] = _r({
            "split": f"synthetic sections, seeds {evaluation['seeds'][0]}-{evaluation['seeds'][1]} (never used in training or tuning), "
                     f"{evaluation['shape'][0]} x {evaluation['shape'][1]} px",
            "rgb_psnr_db": evaluation["rgb_psnr_db"], "input_rgb_psnr_db": evaluation["input_rgb_psnr_db"],
            "rgb_psnr_gain_db": evaluation["rgb_psnr_gain_db"], "mask_psnr_db": evaluation["mask_psnr_db"],
            "classified_immune_cells": evaluation["cells"], "match_radius_px": evaluation["match_radius_px"],
        })
        card["metrics"]["reproduce"] = (f"python -m core evaluate --scenario {key} --synthetic "
                                        f"{evaluation['seeds'][1] - evaluation['seeds'][0] + 1} --seed {evaluation['seeds'][0]}")
    if stage1 is not None:
        card["training"]["stages"] = [
            {"stage": i + 1, "iterations": t["iterations"], "crop_px": t["crop_px"], "lr": t["lr"], "seed": t["seed"],
             "train_time_s": t["train_time_s"], "seconds_per_iteration": t["seconds_per_iteration"],
             "start": "warm start from stage 1 (--init)" if i else f"random initialisation (seed {t['seed']})"}
            for i, t in enumerate((stage1, train))
        ]
    if real:
        card["real_images"] = _r(real)
        if "share_of_detections_on_inflammatory_nuclei" in real:  # H&E: annotated real nuclei
            card["limitations"].insert(0, (
                f"Not for real H&E: on {real['images']} real colorectal H&E fields ({real['data']}) only "
                f"{real['share_of_detections_on_inflammatory_nuclei']:.0%} of its {real['detections']} detections lie within "
                f"{real['radius_um']:g} µm of an annotated inflammatory nucleus, and it finds "
                f"{real['share_of_inflammatory_nuclei_detected']:.0%} of those nuclei: the synthetic training does not carry "
                "over to real tissue. Use it to show the TNRD method, not to count."))
        elif "classified_cells" in real:  # IF: no melanoma IF at hand
            card["limitations"].insert(0, (
                f"No real melanoma IF image was available to check it: on {real['tiles']} lung tiles rendered as "
                f"{real['rendering']} ({real['data']}; no gp100 channel, so no cell should be classified) it classified "
                f"{real['classified_cells']} cells. Use it to show the TNRD method, not to count."))
    if benchmark:
        card["benchmark_cpu"] = benchmark
    return card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--evaluation")
    p.add_argument("--real")
    p.add_argument("--benchmark")
    p.add_argument("--stage1", help="training record of the run the weights were warm-started from (--init)")
    args = p.parse_args(argv)
    weights = Path(args.weights)
    load = lambda f: json.loads(Path(f).read_text()) if f else None  # noqa: E731
    card = build_card(weights, load(args.train), load(args.evaluation), load(args.real), load(args.benchmark),
                      load(args.stage1))
    js, md = write_card(weights, card)
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
