"""Train S-DRDIN on the H&E colorectal nuclei, and write its model card (:mod:`core.training.sdrdin_card`).

Usage::

    python -m core.training.sdrdin train --minutes 80 --base 32 --seed 2 --out runs/he-til.safetensors
    python -m core.training.sdrdin tune --weights runs/he-til.safetensors --train runs/he-til.train.json
    python -m core.training.sdrdin card --weights weights/he-til-sdrdin-v3.safetensors \
        --train weights/he-til-sdrdin-v3.train.json --earlier weights/he-til-sdrdin-v3.stage1.train.json \
        weights/he-til-sdrdin-v3.stage2.train.json --evaluation runs/he-eval.json --benchmark runs/he-bench.txt

Method (S-DRDIN paper §2.2-2.5): disks around each annotated dot as the class map (4 classes
+ background) and the detection map (their channel-wise maximum); flips as augmentation;
pixel-weighted cross-entropy (eq. 1-2) plus binary cross-entropy; Adam at 1e-3 with Glorot
initialisation. Departures (stated in the card): reduced width and random crops so it trains
on 2 CPU cores within a time budget, cosine learning-rate decay over that budget, transposes
and mild colour jitter added to the flips, nuclei without a class ignored by the class loss,
checkpoint and detection threshold chosen on held-out train/ images (the ``tune`` split).
Optionally (``--swa-start``) stochastic weight averaging (Izmailov et al., UAI 2018): a constant
learning rate, the weights averaged every ``--swa-every`` steps, the average shipped with its
batch-norm statistics re-estimated on fit crops (``torch.optim.swa_utils``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from core.evaluation.datasets_he import HE_CLASSES, HE_DATA_DIR, HE_MPP, IGNORE_LABEL, disk_targets, he_folders, read_he_split
from core.evaluation.he import restain
from core.training import sdrdin_card
from core.training.stage import TimedStage

#: Disk radius of the training targets: 2.2 µm = 4 px at 0.55 µm/px (see :func:`main`'s help).
RADIUS_UM = 2.2
#: Batches of fit crops over which the batch-norm statistics of a weight average are re-estimated.
SWA_BN_BATCHES = 150


def class_weights(target: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Per-class pixel weights of S-DRDIN eq. 1: w_c = N · N_c · B / Σ_i x_i^c.

    Parameters
    ----------
    target : (B, H, W) int64 class index in [0, n_channels), or :data:`IGNORE_LABEL`
    n_channels : N_c, the channels of the class map (cell classes + background)

    Returns
    -------
    (n_channels,) float32; 0 for a class absent from the batch. Ignored pixels count
    neither in N nor in any class.
    """
    valid = target[target != IGNORE_LABEL]
    counts = torch.bincount(valid, minlength=n_channels).float()
    b = target.shape[0]
    n = valid.numel() / b  # pixels per channel per image
    w = n * n_channels * b / counts.clamp(min=1)
    return torch.where(counts > 0, w, torch.zeros_like(w))


def pixel_weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """S-DRDIN eq. 2 over a batch: -1 / (N_c · N · B) Σ_c Σ_i x_i^c w_c log p_c(x_i).

    With w_c of eq. 1 this is Σ_c (mean of -log p_c over the pixels of class c): every class
    present in the batch counts equally, whatever its pixel count. (Eq. 2 divides by N_c · N;
    dividing also by B makes the loss independent of the batch size.)

    Parameters
    ----------
    logits : (B, N_c, H, W) float
    target : (B, H, W) int64 in [0, N_c) or :data:`IGNORE_LABEL`

    Returns
    -------
    scalar tensor
    """
    nll = F.cross_entropy(logits, target.clamp(min=0), reduction="none")  # (B, H, W)
    return pixel_weighted_mean(nll, target, logits.shape[1])


def pixel_weighted_mean(loss_px: torch.Tensor, target: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Eq. 2's normalisation of a per-pixel loss: weighted by w_c of eq. 1 (:func:`class_weights`) of each pixel's class.

    Parameters
    ----------
    loss_px : (B, H, W) float per-pixel loss
    target : (B, H, W) int64 class of each pixel in [0, n_channels), or :data:`IGNORE_LABEL` (left out)
    n_channels : N_c

    Returns
    -------
    scalar tensor: Σ w_c(pixel) · loss / (N_c · N · B), N the valid pixels per image
    """
    b = target.shape[0]
    w = class_weights(target, n_channels).to(loss_px.dtype)
    valid = target != IGNORE_LABEL
    n = valid.sum() / b
    pix_w = w[target.clamp(min=0)] * valid
    return (pix_w * loss_px).sum() / (n_channels * n * b)


def sdrdin_loss(out: dict, class_target: torch.Tensor, detection_target: torch.Tensor, det_weight: float = 1.0) -> dict:
    """Combined loss (§2.4): pixel-weighted cross-entropy + binary cross-entropy of detection.

    Either term is absent for the variant that lacks its branch.
    """
    terms = {}
    if out.get("class_logits") is not None:
        terms["class"] = pixel_weighted_cross_entropy(out["class_logits"], class_target)
    if out.get("detection_logits") is not None:
        terms["detection"] = F.binary_cross_entropy_with_logits(out["detection_logits"][:, 0], detection_target)
    terms["total"] = terms.get("class", 0.0) + det_weight * terms.get("detection", 0.0)
    return terms


def hed_stain_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Random re-staining of RGB crops (:func:`core.evaluation.he.restain`), as between laboratories.

    The haematoxylin and eosin concentrations are multiplied by factors drawn from
    U(1 - strength, 1 + strength) and shifted by U(-strength / 10, strength / 10), the
    residual channel by a third of that. This is the HED augmentation of Tellez et al., Med
    Image Anal 2019 (our departure from S-DRDIN §2.2, which uses flips only).

    Parameters
    ----------
    x : (B, 3, H, W) float RGB in [0, 1]
    strength : 0 leaves the crops unchanged; 0.3 spans a light to a heavy H&E
    gen : random generator (reproducible training)

    Returns
    -------
    (B, 3, H, W) float RGB in [0, 1]
    """
    if strength <= 0:
        return x
    b = x.shape[0]
    amp = torch.tensor([1.0, 1.0, 1 / 3], dtype=x.dtype) * strength
    u = lambda: 2 * torch.rand((b, 3), generator=gen, dtype=x.dtype) - 1  # noqa: E731
    scale = 1 + amp * u()
    return restain(x, scale, amp / 10 * u())


def random_dihedral(parts: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """One of the 8 dihedral transforms (flips, transpose; S-DRDIN paper §2.2), the same for every tensor of ``parts``.

    ``parts`` share their last two (H, W) axes (an image and its target maps); three random
    bits from ``gen`` pick the transform.
    """
    flips = torch.randint(2, (3,), generator=gen)
    if flips[0]:
        parts = [p.flip(-1) for p in parts]
    if flips[1]:
        parts = [p.flip(-2) for p in parts]
    if flips[2]:
        parts = [p.transpose(-1, -2) for p in parts]
    return parts


class CropSampler:
    """Random square crops of the training images with their targets, augmented.

    Augmentation: horizontal and vertical flips (paper) and transposes (so all 8 dihedral
    transforms); colour jitter (ours): per-channel gain ±``gain``, brightness ±``gain``,
    contrast and saturation ±2·``gain``, applied to RGB in [0, 1] before normalisation;
    optionally HED stain jitter (:func:`hed_stain_jitter`) before the colour jitter.

    Crops are drawn uniformly over the images, except that a share ``focus_share`` of them
    (ours, as hard-example sampling for a class the network misses) contain a nucleus of
    class ``focus_label`` at a uniformly random position inside the crop.
    """

    def __init__(self, images, radius_px: float, crop_px: int, gen: torch.Generator, jitter: float = 0.06,
                 stain_jitter: float = 0.0, focus_label: int | None = None, focus_share: float = 0.0):
        self.pixels = [torch.from_numpy(np.array(im.pixels)).permute(2, 0, 1).float() / 255.0 for im in images]
        targets = [disk_targets(im.pixels.shape[:2], im.points_xy, im.labels, radius_px) for im in images]
        self.cls = [torch.from_numpy(c) for c, _ in targets]
        self.det = [torch.from_numpy(d) for _, d in targets]
        self.crop = crop_px
        self.gen = gen
        self.jitter = jitter
        self.stain_jitter = stain_jitter
        self.focus_share = focus_share if focus_label is not None else 0.0
        # (image index, x, y) of every nucleus of the focus class
        self.focus = [(i, x, y) for i, im in enumerate(images) for (x, y), lab in zip(im.points_xy, im.labels)
                      if lab == focus_label] if focus_label is not None else []
        if self.focus_share > 0 and not self.focus:
            raise ValueError("no nucleus of the focus class in the training images")

    def _corner(self) -> tuple[int, int, int]:
        """Image index and top-left corner of one crop."""
        g, c = self.gen, self.crop
        if self.focus_share > 0 and float(torch.rand((1,), generator=g)) < self.focus_share:
            i, px, py = self.focus[int(torch.randint(len(self.focus), (1,), generator=g))]
            h, w = self.pixels[i].shape[1:]
            # the nucleus lands anywhere in the crop (not always at its centre)
            y = int(np.clip(round(py) - int(torch.randint(c, (1,), generator=g)), 0, h - c))
            x = int(np.clip(round(px) - int(torch.randint(c, (1,), generator=g)), 0, w - c))
            return i, y, x
        i = int(torch.randint(len(self.pixels), (1,), generator=g))
        h, w = self.pixels[i].shape[1:]
        return i, int(torch.randint(h - c + 1, (1,), generator=g)), int(torch.randint(w - c + 1, (1,), generator=g))

    def inputs(self, n: int, batches: int):
        """``batches`` input batches of :meth:`batch` (no targets): (n, 3, C, C) float RGB in [0, 1]."""
        for _ in range(batches):
            yield self.batch(n)[0]

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n, 3, C, C) float RGB in [0, 1] (jittered), (n, C, C) int64 class target, (n, C, C) float detection target."""
        g, c = self.gen, self.crop
        xs, cs, ds = [], [], []
        for _ in range(n):
            i, y, x = self._corner()
            parts = random_dihedral([self.pixels[i][:, y : y + c, x : x + c], self.cls[i][y : y + c, x : x + c],
                                     self.det[i][y : y + c, x : x + c]], g)
            xs.append(parts[0])
            cs.append(parts[1])
            ds.append(parts[2])
        x = hed_stain_jitter(torch.stack(xs), self.stain_jitter, g)
        if self.jitter > 0:
            j = self.jitter
            u = lambda *s: 2 * torch.rand(s, generator=g) - 1  # noqa: E731
            gray = x.mean(dim=1, keepdim=True)
            x = gray + (x - gray) * (1 + 2 * j * u(n, 1, 1, 1))  # saturation
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = mean + (x - mean) * (1 + 2 * j * u(n, 1, 1, 1))  # contrast
            x = x * (1 + j * u(n, 3, 1, 1)) + j * u(n, 1, 1, 1)  # channel gain, brightness
            x = x.clamp(0, 1)
        return x.contiguous(), torch.stack(cs).contiguous(), torch.stack(ds).contiguous()


def tune_scores(runner, images, thresholds, radius_px: float, class_window_um: float | None = None, maps=None) -> list[dict]:
    """Detection/classification metrics on ``images`` for each threshold (maps computed once)."""
    from dataclasses import replace

    from core.evaluation.he import score_detections
    from core.scenarios.he_til import classify_cells, detect_peaks

    mpp = runner.scenario.input_mpp
    maps = maps if maps is not None else [runner.predict_maps(im.pixels) for im in images]
    rows = []
    for thr in thresholds:
        params = replace(runner.params, threshold=float(thr))
        if class_window_um is not None:
            params = replace(params, class_window_um=float(class_window_um))
        win = params.in_pixels(mpp)["class_window_px"]
        results = []
        for det, cls in maps:
            xy = detect_peaks(det, params, mpp)
            results.append((xy, classify_cells(cls[:-1], xy, win)[0]))
        s = score_detections(results, images, radius_px)
        rows.append({"threshold": round(float(thr), 3), "class_window_um": round(params.class_window_um, 2), "detection_f1": s["detection"]["f1"],
                     "precision": s["detection"]["precision"], "recall": s["detection"]["recall"],
                     "classification_weighted_f1": s["classification"]["weighted_f1"]})
    return rows


def make_runner(net, mean, std, threshold: float = 0.5, variant: str = "s-drdin", base: int = 16,
                class_window_um: float | None = None):
    """An :class:`HETILModel` around an in-memory network (for tuning during training).

    ``class_window_um``: the eq. 3 square (default the paper's 21.56 µm); a warm start scores
    with the window its ``--init`` weights were tuned with.
    """
    from core.scenarios.he_til import HETILModel
    from core.scenarios.registry import get_scenario

    scenario = get_scenario("he-til")
    meta = metadata(mean, std, threshold, variant, base)
    if class_window_um is not None:
        meta["class_window_um"] = str(class_window_um)
    runner = HETILModel(scenario, torch.device("cpu"), net.state_dict(), meta)
    return runner


def metadata(mean, std, threshold: float, variant: str, base: int) -> dict:
    """The safetensors metadata: the preprocessing contract and post-processing threshold."""
    return {
        "model": "SDRDIN", "variant": variant, "base_features": str(base), "n_classes": str(len(HE_CLASSES)),
        "classes": json.dumps(list(HE_CLASSES) + ["background"]),
        "input": "(N, 3, H, W) float32 RGB at 0.55 µm/px: (x / 255 - mean) / std; H, W multiples of 8",
        "normalization_mean": json.dumps([round(float(v), 6) for v in mean]),
        "normalization_std": json.dumps([round(float(v), 6) for v in std]),
        "threshold": str(threshold), "radius_um": str(RADIUS_UM), "dtype": "float32",
    }


def train(args: argparse.Namespace) -> dict:
    from core.evaluation.he import MATCH_RADII_UM, PRIMARY_RADIUS
    from core.nets.sdrdin import SDRDIN

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    radius_px = args.radius_um / HE_MPP
    multi = bool(args.sources)
    if multi:  # three sources: core/training/he_sources.py
        from core.training import he_sources as hs

        fit_by, tune_by = hs.fit_images(args.sources), hs.tune_images(args.sources)
        fit = [im for ims in fit_by.values() for im in ims]
        tune = [im for ims in tune_by.values() for im in ims]
        sampler = hs.MultiSourceSampler(fit_by, radius_px, args.crop, gen, args.jitter, args.stain_jitter,
                                        args.scale_jitter, args.blur_share, args.jpeg_share, args.source_weights)
    else:
        fit = read_he_split("fit", args.data)
        tune = read_he_split("tune", args.data)
        focus = HE_CLASSES.index(args.focus_class) if args.focus_class else None
        sampler = CropSampler(fit, radius_px, args.crop, gen, args.jitter, args.stain_jitter, focus, args.focus_share)
    if multi and args.init:  # a warm start keeps the input normalisation its weights were trained with
        info = hs.sdrdin_metadata(args.init)
        mean, std, window = info["mean"], info["std"], info["class_window_um"]
    else:
        window = None
        allpix = torch.cat([p.reshape(3, -1) for p in sampler.pixels], 1)  # images may differ in size
        mean, std = allpix.mean(1).numpy(), allpix.std(1).numpy()
    if args.class_window_um is not None:
        window = float(args.class_window_um)
    m = torch.as_tensor(mean).view(1, 3, 1, 1)
    s = torch.as_tensor(std).view(1, 3, 1, 1)
    net = SDRDIN(len(HE_CLASSES), args.variant, args.base)
    if args.init:  # warm start; strict, so the variant and width must match
        from safetensors.torch import load_file

        net.load_state_dict(load_file(args.init), strict=True)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    swa = torch.optim.swa_utils.AveragedModel(net) if args.swa_start is not None else None
    match_px = MATCH_RADII_UM[PRIMARY_RADIUS] / HE_MPP
    sweep_thresholds = np.round(np.arange(0.20, 0.901, 0.05), 3)
    init_score, references = None, []
    if multi:  # the acceptance rule compares the stage with its --init weights on the same tune splits
        net.eval()
        init_rows = hs.score_sources(make_runner(net, mean, std, 0.5, args.variant, args.base, window), tune_by,
                                     sweep_thresholds)
        init_score = max(init_rows, key=lambda r: r["score"])
        print(json.dumps({"init_tune": init_score}), flush=True)
        references = [init_score]
        if args.baseline:  # the stage must beat these weights (e.g. the shipped version), scored with their own window
            baseline_counts = hs.reference_counts(args.baseline, tune_by, sweep_thresholds)
            baseline_tune = max(hs.rows_from_counts(baseline_counts), key=lambda r: r["score"])
            print(json.dumps({"baseline_tune": baseline_tune}), flush=True)
            references.append(baseline_tune)
            init_score = max(init_score, baseline_tune, key=lambda r: r["score"])
    teacher, distill_sources = None, set()
    if args.distill:
        if not multi:
            raise SystemExit("--distill needs --sources (it distils on the crops of --distill-sources)")
        teacher, distill_sources = hs.Teacher(args.distill), set(args.distill_sources)
        unknown = distill_sources - set(args.sources)
        if unknown:
            raise SystemExit(f"--distill-sources {sorted(unknown)} are not among --sources {args.sources}")
    guard_select = bool(args.guard_select and multi and args.guard_sources)
    select_guards = args.guard_sources if guard_select else None  # guards that choose checkpoint and threshold
    margins = None
    if args.guard_margin:
        if not (multi and args.guard_sources and args.baseline):
            raise SystemExit("--guard-margin needs --sources, --guard-sources and --baseline (the weights it protects)")
        margins = hs.guard_margins(baseline_counts, args.guard_sources, args.guard_margin)
        print(json.dumps({"guard_margins": margins}), flush=True)
    margin_of = {g: m["margin"] for g, m in margins.items()} if margins else None
    stage = TimedStage(args.minutes, args.max_steps, args.eval_minutes, warmup_steps=50)
    history, running = [], []
    while not stage.finished():
        frac = stage.fraction()
        stage.set_lr(opt, args.lr, constant=swa is not None)  # SWA: constant rate (Izmailov et al. 2018); else cosine
        net.train()
        x, ct, dt, *allowed = sampler.batch(args.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = net((x - m) / s)
        out = {k: (v.float() if v is not None else None) for k, v in out.items()}  # losses in float32
        if allowed and out.get("class_logits") is not None:
            out["class_logits"] = hs.mask_unannotated(out["class_logits"], allowed[0])
        terms = sdrdin_loss(out, ct, dt, args.det_weight)
        if teacher is not None:  # soft targets of the earlier model on the crops of the distilled sources
            keep = torch.tensor([src in distill_sources for src in sampler.last_sources])
            if keep.any():
                student = {k: (v[keep] if v is not None else None) for k, v in out.items()}
                soft = hs.distillation_loss(student, teacher(x[keep]))
                share = float(keep.float().mean())  # the terms are means over the distilled crops
                for k, v in soft.items():
                    terms[k] = v
                    terms["total"] = terms["total"] + args.distill_weight * share * v
            for k in ("distil_class", "distil_detection"):
                terms.setdefault(k, torch.zeros(()))
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        running.append([float(v.detach()) for k, v in terms.items() if k != "total"])
        due = stage.tick()
        if swa is not None and frac >= args.swa_start and stage.step % args.swa_every == 0:
            swa.update_parameters(net)
        if due:
            net.eval()
            runner = make_runner(net, mean, std, 0.5, args.variant, args.base, window)
            if multi:
                rows = hs.score_sources(runner, tune_by, args.eval_thresholds)
                top, held = hs.guarded_best(rows, references, select_guards, margin_of)
                score = top["score"] if held else top["score"] - 10.0  # checkpoints whose guards hold come first
            else:
                rows = tune_scores(runner, tune, args.eval_thresholds, match_px)
                top = max(rows, key=lambda r: r["detection_f1"])
                score = top["detection_f1"] + top["classification_weighted_f1"]
            rec = {"step": stage.step, "elapsed_s": round(stage.elapsed_s(), 1), "lr": opt.param_groups[0]["lr"],
                   "loss_terms": np.mean(running, axis=0).round(4).tolist(), "tune": top}
            running = []
            history.append(rec)
            print(json.dumps(rec), flush=True)
            stage.keep_if_best(score, net)
    step, best = stage.step, stage.best
    if swa is not None and swa.n_averaged.item() > 0:
        # The weight average is the result; its batch-norm statistics are re-estimated on fit crops.
        torch.optim.swa_utils.update_bn(((x - m) / s for x in sampler.inputs(args.batch, SWA_BN_BATCHES)), swa.module)
        best = {"score": None, "step": step, "state": swa.module.state_dict()}
    train_time = stage.elapsed_s()
    net.load_state_dict(best["state"], strict=True)
    net.eval()
    runner = make_runner(net, mean, std, 0.5, args.variant, args.base, window)
    if multi:
        sweep = hs.score_sources(runner, tune_by, sweep_thresholds)
        chosen = hs.guarded_best(sweep, references, select_guards, margin_of)[0]
    else:
        sweep = tune_scores(runner, tune, sweep_thresholds, match_px)
        chosen = max(sweep, key=lambda r: (r["detection_f1"], -abs(r["threshold"] - 0.5)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    meta_out = metadata(mean, std, chosen["threshold"], args.variant, args.base)
    if window is not None:
        meta_out["class_window_um"] = str(window)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out), metadata=meta_out)
    result = {
        "variant": args.variant, "base_features": args.base,
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "crop_px": args.crop, "batch": args.batch, "lr": args.lr, "det_weight": args.det_weight,
        "jitter": args.jitter, "stain_jitter": args.stain_jitter,
        "focus_class": args.focus_class, "focus_share": args.focus_share if args.focus_class else 0.0, "bf16_autocast": args.bf16, "radius_um": args.radius_um, "radius_px": radius_px,
        "minutes": args.minutes, "eval_minutes": args.eval_minutes,
        "eval_thresholds": list(args.eval_thresholds), "steps": step, "best_step": best["step"], "init": args.init, "seed": args.seed,
        **({"swa_start": args.swa_start, "swa_every": args.swa_every, "swa_n_averaged": int(swa.n_averaged.item()),
            "swa_bn_batches": SWA_BN_BATCHES} if swa is not None else {}),
        "threads": args.threads, "train_time_s": round(train_time, 1),
        "fit_images": [im.name for im in fit] if multi else [p.name for p in he_folders("fit", args.data)],
        "tune_images": [im.name for im in tune] if multi else [p.name for p in he_folders("tune", args.data)],
        **({"sources": list(args.sources), "source_weights": args.source_weights, "scale_jitter": args.scale_jitter,
            "blur_share": args.blur_share, "jpeg_share": args.jpeg_share, "tune_radius_um": hs.TUNE_RADIUS_UM,
            "class_window_um": window, "baseline": args.baseline,
            "acceptance_rule": ("accepted when the mean over sources of detection F1 + immune F1 within 3 µm on the "
                                "tune splits, at the best threshold, beats that of the --init weights and of the "
                                "--baseline weights (each scored with its own class window)"),
            "guard_sources": args.guard_sources, "init_tune": init_score, "guard_select": guard_select,
            "guard_margins": margins,
            "distill": args.distill, "distill_sources": sorted(distill_sources) or None,
            "distill_weight": args.distill_weight if args.distill else None,
            # guards: not below the --init's nor the --baseline's on each guarded source (each its own best threshold)
            "accepted": bool(init_score is None or (chosen["score"] > init_score["score"]
                                                    and hs.guards_hold(chosen, references, args.guard_sources, margin_of)))}
           if multi else {}),
        "n_fit_nuclei": int(sum(len(im.points_xy) for im in fit)),
        "threshold": chosen["threshold"], "tune_at_threshold": chosen, "tune_sweep": sweep,
        "normalization_mean": mean.tolist(), "normalization_std": std.tolist(),
        "history": history,
    }
    out.with_suffix(".train.json").write_text(json.dumps(result, indent=2))
    return result


def retune(weights: Path, train_json: Path, data: str | None = None, windows_um=(21.56, 11.0, 6.6, 3.3)) -> dict:
    """Re-tune the detection threshold (finer, down to 0.1) and the class window on the tune split.

    The class window of eq. 3 is the paper's 49 px at 0.44 µm/px (21.56 µm) unless a smaller
    square gives a higher weighted class F1 on the tune split; the choice and every score are
    recorded in the training record (``retune``) and the weights' metadata. Never reads validation/.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from core.evaluation.he import MATCH_RADII_UM, PRIMARY_RADIUS

    with safe_open(str(weights), framework="pt") as fh:
        meta = dict(fh.metadata())
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    rec = json.loads(train_json.read_text())
    from core.nets.sdrdin import SDRDIN

    net = SDRDIN(int(meta["n_classes"]), meta["variant"], int(meta["base_features"]))
    net.load_state_dict(state, strict=True)
    net.eval()
    runner = make_runner(net, json.loads(meta["normalization_mean"]), json.loads(meta["normalization_std"]),
                         0.5, meta["variant"], int(meta["base_features"]))
    tune = read_he_split("tune", data)
    maps = [runner.predict_maps(im.pixels) for im in tune]
    match_px = MATCH_RADII_UM[PRIMARY_RADIUS] / HE_MPP
    det_rows = tune_scores(runner, tune, np.round(np.arange(0.10, 0.701, 0.025), 3), match_px, maps=maps)
    best_det = max(det_rows, key=lambda r: (r["detection_f1"], -abs(r["threshold"] - 0.5)))
    win_rows = [tune_scores(runner, tune, [best_det["threshold"]], match_px, w, maps=maps)[0] for w in windows_um]
    paper = win_rows[0]
    best_win = max(win_rows, key=lambda r: r["classification_weighted_f1"])
    meta["threshold"] = str(best_det["threshold"])
    meta["class_window_um"] = str(best_win["class_window_um"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights), metadata=meta)
    rec["threshold"] = best_det["threshold"]
    rec["class_window_um"] = best_win["class_window_um"]
    rec["retune"] = {"threshold_sweep": det_rows, "class_window_sweep": win_rows, "paper_class_window": paper,
                     "chosen": best_win}
    rec["tune_at_threshold"] = best_win
    train_json.write_text(json.dumps(rec, indent=2))
    return rec["retune"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train S-DRDIN on the fit split, tune on the tune split")
    t.add_argument("--data", default=str(HE_DATA_DIR))
    t.add_argument("--variant", default="s-drdin", choices=["s-drdin", "s-drdin-gradient", "drdin-detection", "drdin-classification"])
    t.add_argument("--base", type=int, default=16, help="channels of the first encoder block (divisible by 4)")
    t.add_argument("--crop", type=int, default=160, help="crop side in px (multiple of 8)")
    t.add_argument("--batch", type=int, default=6)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--det-weight", type=float, default=1.0)
    t.add_argument("--jitter", type=float, default=0.06, help="colour jitter strength (0 = flips only, as the paper)")
    t.add_argument("--stain-jitter", type=float, default=0.0,
                   help="HED stain augmentation strength (0 = off; 0.3 = concentrations x U(0.7, 1.3)), for other laboratories' staining")
    t.add_argument("--focus-class", choices=list(HE_CLASSES), default=None,
                   help="draw a share of the crops around nuclei of this class (hard-example sampling)")
    t.add_argument("--focus-share", type=float, default=0.25, help="share of crops drawn around --focus-class")
    t.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast for the forward pass (about 1.5 x faster on CPUs with AVX512-BF16); weights and losses stay float32")
    t.add_argument("--radius-um", type=float, default=RADIUS_UM,
                   help="disk radius of the targets in µm (default 2.2 µm = 4 px: covers the nucleus centre, neighbours' disks rarely touch)")
    t.add_argument("--minutes", type=float, default=22.0, help="wall-clock training budget")
    t.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = budget only)")
    t.add_argument("--eval-minutes", type=float, default=4.0, help="evaluate on the tune split every so often")
    t.add_argument("--eval-thresholds", type=float, nargs="+", default=[0.4, 0.5, 0.6],
                   help="detection thresholds tried at each tune-split evaluation (checkpoint choice)")
    t.add_argument("--swa-start", type=float, default=None,
                   help="stochastic weight averaging: constant --lr, weights averaged from this fraction of the budget on")
    t.add_argument("--swa-every", type=int, default=25, help="average the weights every this many steps (with --swa-start)")
    t.add_argument("--init", help="warm start from this S-DRDIN .safetensors (same variant and --base)")
    t.add_argument("--sources", nargs="+", choices=["crc", "brca-m2c", "consep"], default=None,
                   help="train on these H&E sources at once (core/training/he_sources.py); default: CRC only, as v1-v3")
    t.add_argument("--scale-jitter", type=float, default=0.15, help="with --sources: scale jitter around the mpp (0.15 = ±15 %%)")
    t.add_argument("--blur-share", type=float, default=0.25, help="with --sources: share of crops blurred")
    t.add_argument("--jpeg-share", type=float, default=0.25, help="with --sources: share of crops JPEG-compressed")
    t.add_argument("--source-weights", type=float, nargs="+", default=None,
                   help="with --sources: relative share of crops drawn from each source, in --sources order (default equal)")
    t.add_argument("--class-window-um", type=float, default=None,
                   help="eq. 3 class window used for scoring and saved with the weights (default: --init's, else the paper's 21.56 µm)")
    t.add_argument("--guard-sources", nargs="+", choices=["crc", "brca-m2c", "consep"], default=None,
                   help="with --sources: the stage is accepted only if on each of these sources detection F1 + immune F1 "
                        "on the tune split is not below the --baseline's (or --init's)")
    t.add_argument("--baseline", default=None,
                   help="with --sources: weights (e.g. the shipped version) that the stage must also beat on the tune splits")
    t.add_argument("--guard-select", action="store_true",
                   help="with --guard-sources: choose the checkpoint and threshold among those that keep every guarded "
                        "source at its references (best score otherwise)")
    t.add_argument("--guard-margin", type=float, default=None,
                   help="with --guard-sources and --baseline: a guarded source's detection F1 + immune F1 may fall this "
                        "much below the references (non-inferiority margin; the bootstrap SE of the baseline's figure "
                        "is recorded beside it; default none)")
    t.add_argument("--distill", default=None,
                   help="with --sources: an earlier S-DRDIN .safetensors whose outputs are soft targets on the crops of "
                        "--distill-sources (learning without forgetting)")
    t.add_argument("--distill-sources", nargs="+", choices=["crc", "brca-m2c", "consep"], default=["crc"])
    t.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation terms")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", required=True)
    r = sub.add_parser("tune", help="re-tune threshold and class window on the tune split (rewrites the weights' metadata)")
    r.add_argument("--weights", required=True)
    r.add_argument("--train", required=True)
    r.add_argument("--data", default=None)
    c = sub.add_parser("card", help="write the model card beside the weights")
    sdrdin_card.add_arguments(c)
    args = p.parse_args(argv)
    if args.cmd == "train":
        result = train(args)
        print(json.dumps({k: v for k, v in result.items() if k not in ("history", "tune_sweep")}, indent=2))
        return 0
    if args.cmd == "tune":
        out = retune(Path(args.weights), Path(args.train), args.data)
        print(json.dumps({k: v for k, v in out.items() if k != "threshold_sweep"}, indent=2))
        return 0
    return sdrdin_card.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
