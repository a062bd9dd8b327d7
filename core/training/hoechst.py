"""Train the Hoechst U-Net (``hoechst-lymphocytes``) on the 12 labelled tiles, with cross-validation.

Usage (2 CPU cores; see :data:`SELECTION_RULE` for what is fixed in advance)::

    # cross-validation for the model card: 4 folds of 3 contiguous tiles, 7 minutes each
    python -m core.training.hoechst cv --folds 4 --minutes 7 --out runs/hoechst-lymphocytes-cv
    # (or one fold at a time: ... cv --folds 4 --fold 0 --minutes 7 --out runs/hoechst-lymphocytes-cv)
    python -m core evaluate --scenario hoechst-lymphocytes --cv-record runs/hoechst-lymphocytes-cv/cv.json \
        > runs/hoechst-lymphocytes-cv/cv-eval.json
    # the shipped model: every tile, the same settings as the folds (the CV estimate is of this procedure)
    python -m core.training.hoechst train --minutes 7 --out weights/hoechst-lymphocytes-unet-v1.safetensors
    python -m core.training.hoechst_card --weights weights/hoechst-lymphocytes-unet-v1.safetensors \
        --cv runs/hoechst-lymphocytes-cv/cv.json --evaluation runs/hoechst-lymphocytes-cv/cv-eval.json

On a GPU the same commands train the paper's full version (§3.4: batch 32, AdamW at 1e-3,
cross-entropy, 100 epochs of 256 px patches): ``--device cuda --batch 32 --crop 256
--max-steps 6000 --minutes 30`` (``--classes paper`` keeps the five groups of a data set
that has them in number).

Method (paper §3.3-3.4) and what we add for 12 tiles (stated in the model card):

- **Input**: the Hoechst channel of each tile stretched between its 1st and 99.8th
  percentiles (:func:`core.scenarios.hoechst.normalise_hoechst`), as at inference.
- **Targets**: the label PNGs mapped to the class scheme (:data:`core.nets.hoechst_unet.CLASS_SCHEMES`;
  ``merged``: background, CD3, CD8 (both CD3 levels), CD20).
- **Split by tile position**: the tiles form a vertical strip of neighbouring 256 µm
  regions (slide L102, sorted by position); ``cv --folds K`` holds out K contiguous groups
  in turn (:func:`core.evaluation.hoechst.tile_folds`: 4 folds of 3 tiles), so a held-out
  tile never overlaps a training tile. The paper split 7413 half-overlapping patches 80:10:10
  at random (and also by slide).
- **Augmentation** (heavy: 12 tiles): random crops, half of them around a labelled cell of a
  subtype drawn with probability proportional to the square root of its cell count (CD8 and
  CD20 seen more often than their share, without spending a sixth of the crops on the two CD20
  cells); scale jitter ±15 %; the 8
  flips and 90° rotations; intensity gamma exp(U(-0.4, 0.4)), gain U(0.8, 1.2), offset
  ±0.05; Gaussian noise (sigma up to 0.05) on half of the crops; Gaussian blur (sigma
  0.3-1.2 px) on a quarter. The paper states no augmentation.
- **Loss**: cross-entropy (§3.4) weighted per class by (pixel frequency)^-0.5 relative to
  background, capped at 25 (the paper used plain cross-entropy; focal loss did not help it).
- **Optimiser**: AdamW (§3.4), learning rate 1e-3 (§3.4) with 30 warm-up steps and cosine
  decay to 2 % over the budget (``--minutes`` wall clock, or ``--max-steps``).
- **Initialisation**: random (no downloaded weights, :mod:`core.nets.hoechst_unet`); optional
  ``--pretrain-minutes``: masked denoising of the training tiles' Hoechst channel (8 px
  blocks blanked, Gaussian noise added, the clean crop reconstructed) before the supervised
  stage, whose encoder and decoder it starts; ``--init`` warm-starts from earlier weights.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from core.training.stage import TimedStage

#: The selection rule, fixed before any held-out tile was scored; printed by every run.
SELECTION_RULE = (
    "Pre-registered selection rule: every model is the weights at the end of its budget (no early stopping, no "
    "checkpoint or threshold chosen on held-out tiles); the cell calls are fixed in advance (P(lymphocyte) >= 0.5, "
    "regions >= 6 µm², watershed markers >= 3 µm apart, subtype by probability mass); cross-validation holds out "
    "contiguous groups of tiles along the strip, every tile once; the card reports the pooled out-of-fold metrics "
    "(per-centroid F1 within 4 µm first) with 95 % bootstrap intervals over tiles, beside the baselines 'every nucleus "
    "is X' and a nucleus-size rule chosen on each fold's training tiles, scored on the same held-out tiles. The final "
    "model is trained on all tiles with the same settings; it meets the aim if its cross-validated CD3 F1 is >= 0.6 "
    "and it beats every baseline on CD3 and CD8, and the card says plainly whether it does."
)
#: Crops drawn around a labelled cell (the rest uniformly over the tiles).
FOCUS_SHARE = 0.5
#: Class weights: (pixel frequency / background frequency) ** -power, capped.
CLASS_WEIGHT_POWER = 0.5
CLASS_WEIGHT_CAP = 25.0
WARMUP_STEPS = 30


@dataclass(frozen=True)
class Augmentation:
    """Augmentation settings (module docstring); intensities act on the image in [0, 1].

    Attributes
    ----------
    scale_jitter : float, crops resized by a factor in [1 / (1 + s), 1 + s] (log-uniform)
    gamma_log : float, gamma = exp(U(-g, g))
    gain : float, multiplied by U(1 - gain, 1 + gain)
    offset : float, plus U(-offset, offset)
    noise_sigma : float, Gaussian noise of sigma U(0, noise_sigma) on ``noise_share`` of crops
    blur_sigma_px : (float, float), Gaussian blur sigma range on ``blur_share`` of crops
    """

    scale_jitter: float = 0.15
    gamma_log: float = 0.4
    gain: float = 0.2
    offset: float = 0.05
    noise_sigma: float = 0.05
    noise_share: float = 0.5
    blur_sigma_px: tuple[float, float] = (0.3, 1.2)
    blur_share: float = 0.25


@dataclass
class TrainTile:
    """A tile ready for training: ``image`` (H, W) float32 in [0, 1], ``target`` (H, W) int64
    class indices, ``cells`` (N, 3) int64 rows x, y, subtype (from 0) of its labelled cells."""

    name: str
    image: np.ndarray
    target: np.ndarray
    cells: np.ndarray


def load_training_tiles(tiles, scheme: str) -> list[TrainTile]:
    """Normalised images, class targets and labelled cells of :class:`core.evaluation.hoechst.HoechstTile` s."""
    from core.evaluation.hoechst import true_cells
    from core.nets.hoechst_unet import CLASS_SCHEMES, label_to_class
    from core.scenarios.hoechst import normalise_hoechst

    out = []
    for t in tiles:
        target = label_to_class(t.labels, scheme)
        xy, cls = true_cells(target, len(CLASS_SCHEMES[scheme]))
        cells = np.concatenate([np.round(xy).astype(np.int64), cls[:, None]], axis=1) if len(xy) else np.zeros((0, 3), np.int64)
        out.append(TrainTile(t.name, normalise_hoechst(t.hoechst), target, cells))
    return out


class CropSampler:
    """Augmented random crops of the training tiles (module docstring), reproducible from ``gen``.

    Parameters
    ----------
    tiles : list of TrainTile
    crop_px : int, crop side (multiple of 32)
    gen : torch.Generator
    focus_share : float in [0, 1], share of crops around a labelled cell (its subtype drawn with
        probability proportional to the square root of the subtype's cell count)
    aug : Augmentation
    """

    def __init__(self, tiles: list[TrainTile], crop_px: int, gen: torch.Generator, focus_share: float = FOCUS_SHARE,
                 aug: Augmentation = Augmentation()):
        if crop_px % 32 or crop_px < 32:
            raise ValueError(f"--crop must be a multiple of 32 px, got {crop_px}")
        side = min(min(t.image.shape) for t in tiles)
        if crop_px > side:
            raise ValueError(f"--crop {crop_px} px is larger than the smallest tile ({side} px)")
        self.images = [torch.from_numpy(t.image) for t in tiles]
        self.targets = [torch.from_numpy(t.target) for t in tiles]
        self.crop, self.gen, self.aug = crop_px, gen, aug
        # (tile, x, y) of each labelled cell, grouped by subtype
        self.cells: dict[int, list[tuple[int, int, int]]] = {}
        for i, t in enumerate(tiles):
            for x, y, c in t.cells:
                self.cells.setdefault(int(c), []).append((i, int(x), int(y)))
        self.focus_share = focus_share if self.cells else 0.0
        self.subtypes = sorted(self.cells)
        counts = np.array([len(self.cells[c]) for c in self.subtypes], float)
        self.subtype_p = torch.tensor(np.sqrt(counts) / np.sqrt(counts).sum() if len(counts) else [])

    def _u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.gen))

    def _int(self, n: int) -> int:
        return int(torch.randint(n, (), generator=self.gen))

    def _crop(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One geometric crop: (c, c) float image, (c, c) int64 target."""
        c, a = self.crop, self.aug
        scale = math.exp(self._u(-math.log1p(a.scale_jitter), math.log1p(a.scale_jitter)))
        if self.focus_share > 0 and self._u() < self.focus_share:
            pick = int(torch.multinomial(self.subtype_p, 1, generator=self.gen))
            group = self.cells[self.subtypes[pick]]
            i, cx, cy = group[self._int(len(group))]
        else:
            i = self._int(len(self.images))
            cx, cy = None, None
        img, tgt = self.images[i], self.targets[i]
        h, w = img.shape
        src = int(min(max(32, round(c * scale)), h, w))
        if cx is None:
            y0, x0 = self._int(h - src + 1), self._int(w - src + 1)
        else:  # the cell lands anywhere in the inner 60 % of the crop, not always at its centre
            y0 = int(np.clip(cy - round(self._u(0.2, 0.8) * src), 0, h - src))
            x0 = int(np.clip(cx - round(self._u(0.2, 0.8) * src), 0, w - src))
        im = img[y0 : y0 + src, x0 : x0 + src]
        tg = tgt[y0 : y0 + src, x0 : x0 + src]
        if src != c:
            im = F.interpolate(im[None, None], size=(c, c), mode="bilinear", align_corners=False)[0, 0]
            tg = F.interpolate(tg[None, None].float(), size=(c, c), mode="nearest")[0, 0].long()
        k = self._int(4)
        im, tg = torch.rot90(im, k, (0, 1)), torch.rot90(tg, k, (0, 1))
        if self._int(2):
            im, tg = im.flip(1), tg.flip(1)
        return im, tg

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 1, c, c) float32 in [0, 1] augmented Hoechst, (n, c, c) int64 class targets."""
        from torchvision.transforms.functional import gaussian_blur

        a = self.aug
        xs, ys = [], []
        for _ in range(n):
            im, tg = self._crop()
            im = im.clamp(0, 1) ** math.exp(self._u(-a.gamma_log, a.gamma_log))
            im = im * self._u(1 - a.gain, 1 + a.gain) + self._u(-a.offset, a.offset)
            if self._u() < a.blur_share:
                sigma = self._u(*a.blur_sigma_px)
                k = 2 * int(math.ceil(3 * sigma)) + 1
                im = gaussian_blur(im[None, None], [k, k], [sigma, sigma])[0, 0]
            if self._u() < a.noise_share:
                im = im + self._u(0, a.noise_sigma) * torch.randn(im.shape, generator=self.gen)
            xs.append(im.clamp(0, 1))
            ys.append(tg)
        return torch.stack(xs)[:, None].contiguous(), torch.stack(ys).contiguous()


def class_weights(tiles: list[TrainTile], n_classes: int, power: float = CLASS_WEIGHT_POWER,
                  cap: float = CLASS_WEIGHT_CAP) -> tuple[torch.Tensor, list[float]]:
    """Cross-entropy weights per class from the training tiles' pixel frequencies.

    ``w_c = min(cap, (f_c / f_background) ** -power)``; a class absent from the tiles gets
    ``cap`` (it never occurs in a target, so its weight does not matter).

    Returns
    -------
    weights : (n_classes,) float32 tensor, background 1
    frequencies : list of float, pixel share of each class
    """
    counts = np.bincount(np.concatenate([t.target.ravel() for t in tiles]), minlength=n_classes)[:n_classes].astype(float)
    freq = counts / counts.sum()
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, (freq / max(freq[0], 1e-12)) ** -power, cap)
    w = np.minimum(w, cap)
    w[0] = 1.0
    return torch.tensor(w, dtype=torch.float32), [round(float(f), 6) for f in freq]


def _loop(net, sampler, loss_fn, args, minutes: float, max_steps: int, device, label: str) -> dict:
    """The optimisation loop shared by pre-training and training; returns steps, time and loss history.

    Schedule (:class:`core.training.stage.TimedStage`): :data:`WARMUP_STEPS` of warm-up, then a
    cosine from ``args.lr`` to 0.02 x ``args.lr`` over the budget; no budget and no step limit
    means no steps.
    """
    if minutes <= 0 and not max_steps:
        return {"steps": 0, "time_s": 0.0, "history": []}
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    stage = TimedStage(max(minutes, 0.0), max_steps, warmup_steps=WARMUP_STEPS)
    running, history = [], []
    while not stage.finished():
        stage.set_lr(opt, args.lr)
        net.train()
        x, y = sampler.batch(args.batch)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(args.amp)):
            out = net(x)
        loss = loss_fn(out.float(), x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stage.tick()
        running.append(float(loss.detach()))
        if stage.step % args.log_every == 0:
            rec = {"stage": label, "step": stage.step, "elapsed_s": round(stage.elapsed_s(), 1),
                   "lr": round(opt.param_groups[0]["lr"], 6), "loss": round(float(np.mean(running)), 4)}
            history.append(rec)
            print(json.dumps(rec), flush=True)
            running = []
    if running:
        history.append({"stage": label, "step": stage.step, "elapsed_s": round(stage.elapsed_s(), 1),
                        "lr": round(opt.param_groups[0]["lr"], 6), "loss": round(float(np.mean(running)), 4)})
    return {"steps": stage.step, "time_s": round(stage.elapsed_s(), 1), "history": history}


def pretrain_denoising(net, tiles: list[TrainTile], args, device) -> dict:
    """Masked denoising of the Hoechst channel (self-supervised; labels unused), in place on ``net``'s encoder and decoder.

    A U-Net of the same encoder and decoder with a 2-plane head learns to reconstruct the clean
    crop (plane 0, sigmoid) from one with a quarter of its 8 px blocks blanked and Gaussian
    noise of sigma U(0.02, 0.15) added; its encoder and decoder weights then start ``net``.

    Returns
    -------
    dict: steps, time_s, loss history (mean squared error on [0, 1] intensities)
    """
    from core.nets.hoechst_unet import HoechstUNet

    pre = HoechstUNet(2, net.encoder_name, net.decoder_channels).to(device)
    gen = torch.Generator().manual_seed(args.seed + 1000)
    sampler = CropSampler(tiles, args.crop, gen, focus_share=0.0)

    class Masked:
        def batch(self, n):
            x, _ = sampler.batch(n)
            blocks = (torch.rand((n, 1, args.crop // 8, args.crop // 8), generator=gen) < 0.25).float()
            keep = 1 - F.interpolate(blocks, scale_factor=8, mode="nearest")
            sigma = 0.02 + 0.13 * torch.rand((n, 1, 1, 1), generator=gen)
            noisy = (x * keep + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
            return noisy, x  # input, clean target

    def loss_fn(out, x, clean):
        return F.mse_loss(torch.sigmoid(out[:, :1]), clean)

    rec = _loop(pre, Masked(), loss_fn, args, args.pretrain_minutes, 0, device, "pretrain")
    missing = net.load_state_dict(pre.encoder_decoder_state(), strict=False)
    if missing.unexpected_keys or any(not k.startswith("unet.segmentation_head.") for k in missing.missing_keys):
        raise RuntimeError(f"pre-trained weights do not fit the network: {missing}")
    return rec


def weights_metadata(scheme: str, decoder_channels, encoder: str, stored_dtype: str = "float32") -> dict:
    """The safetensors metadata: network, classes, input contract, cell-call settings and the stored dtype.

    The network always computes in float32 (:func:`core.scenarios.weights.load_verified_state_dict`
    casts stored float16 tensors back); float16 storage halves the file (49 MB instead of 98 MB
    for the ResNet34 U-Net).
    """
    from core.nets.hoechst_unet import CLASS_SCHEMES
    from core.scenarios.hoechst import INPUT_MPP, PERCENTILES, CellCallParams

    return {
        "model": "HoechstUNet", "encoder": encoder, "decoder_channels": json.dumps(list(decoder_channels)),
        "scheme": scheme, "classes": json.dumps(list(CLASS_SCHEMES[scheme])),
        "n_classes": str(len(CLASS_SCHEMES[scheme])), "percentiles": json.dumps(list(PERCENTILES)),
        "cell_calls": json.dumps(asdict(CellCallParams())), "mpp": str(INPUT_MPP), "dtype": stored_dtype,
        "compute_dtype": "float32",
        "input": (f"(N, 1, H, W) float32: the Hoechst channel at {INPUT_MPP} µm/px stretched between its "
                  f"{PERCENTILES[0]:g}th and {PERCENTILES[1]:g}th percentiles to [0, 1]; H, W multiples of 32"),
    }


def train_model(args, fit_tiles, held_tiles, out: Path) -> dict:
    """Train one model on ``fit_tiles`` and save it to ``out`` (+ ``.train.json``); score ``held_tiles`` if any.

    Parameters
    ----------
    args : parsed arguments of :func:`main`
    fit_tiles, held_tiles : lists of :class:`core.evaluation.hoechst.HoechstTile`
    out : weights path (``.safetensors``)

    Returns
    -------
    dict, the training record (also written as ``<out stem>.train.json``)
    """
    from safetensors.torch import load_file, save_file

    from core.nets.hoechst_unet import CLASS_SCHEMES, HoechstUNet, count_parameters
    from core.scenarios.base import pick_device

    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    scheme = args.classes
    n_classes = len(CLASS_SCHEMES[scheme])
    fit = load_training_tiles(fit_tiles, scheme)
    net = HoechstUNet(n_classes, args.encoder, tuple(args.decoder_channels)).to(device)
    if args.init:
        from safetensors import safe_open

        with safe_open(args.init, framework="pt") as fh:
            meta = fh.metadata() or {}
        if json.loads(meta.get("classes", "[]")) != list(CLASS_SCHEMES[scheme]):
            raise SystemExit(f"--init {args.init} has classes {meta.get('classes')}, this run {list(CLASS_SCHEMES[scheme])}")
        net.load_state_dict(load_file(args.init, device=str(device)), strict=True)
    pre = None
    if args.pretrain_minutes > 0 and args.init:
        raise SystemExit("--pretrain-minutes and --init both start the network: choose one")
    if args.pretrain_minutes > 0:
        pre = pretrain_denoising(net, fit, args, device)
    weights, freq = class_weights(fit, n_classes)
    weights = weights.to(device)
    gen = torch.Generator().manual_seed(args.seed)
    sampler = CropSampler(fit, args.crop, gen, args.focus_share)

    def loss_fn(out_, x, y):
        return F.cross_entropy(out_, y, weight=weights)

    print(json.dumps({"model": out.name, "fit_tiles": [t.name for t in fit_tiles],
                      "held_out_tiles": [t.name for t in held_tiles], "class_weights": weights.tolist(),
                      "device": str(device)}), flush=True)
    rec = _loop(net, sampler, loss_fn, args, args.minutes, args.max_steps, device, "train")
    net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    store = torch.float16 if args.save_dtype == "float16" else torch.float32
    save_file({k: (v.detach().cpu().to(store) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in net.state_dict().items()}, str(out),
              metadata=weights_metadata(scheme, args.decoder_channels, args.encoder, args.save_dtype))
    import segmentation_models_pytorch as smp

    record = {
        "scheme": scheme, "classes": list(CLASS_SCHEMES[scheme]), "encoder": args.encoder,
        "decoder_channels": list(args.decoder_channels), "parameters": count_parameters(net),
        "fit_tiles": [t.name for t in fit_tiles], "held_out_tiles": [t.name for t in held_tiles],
        "n_fit_cells": {CLASS_SCHEMES[scheme][c + 1]: int(sum((t.cells[:, 2] == c).sum() for t in fit))
                        for c in range(n_classes - 1)},
        "pixel_frequencies": freq, "class_weights": [round(float(v), 4) for v in weights.tolist()],
        "class_weight_rule": f"(f_c / f_background) ** -{CLASS_WEIGHT_POWER}, capped at {CLASS_WEIGHT_CAP:g}",
        "crop_px": args.crop, "batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay,
        "focus_share": args.focus_share, "augmentation": asdict(Augmentation()),
        "minutes": args.minutes, "max_steps": args.max_steps, "steps": rec["steps"], "train_time_s": rec["time_s"],
        "stored_dtype": args.save_dtype,
        "pretrain_minutes": args.pretrain_minutes, "pretrain": pre, "init": args.init, "seed": args.seed,
        "threads": args.threads, "device": str(device), "amp_bfloat16": bool(args.amp),
        "data": str(args.data), "selection_rule": SELECTION_RULE, "history": rec["history"],
        "versions": {"torch": torch.__version__, "segmentation_models_pytorch": smp.__version__,
                     "python": platform.python_version()},
    }
    if held_tiles:
        from core.evaluation.hoechst import model_tile_counts, pooled_metrics
        from core.scenarios.hoechst import model_from_file

        model = model_from_file(out, device)
        names = CLASS_SCHEMES[scheme][1:]
        pooled = pooled_metrics([model_tile_counts(model, t, scheme) for t in held_tiles], names)
        record["held_out_centroid"] = pooled["centroid"]
        record["held_out_cells"] = {"true": pooled["n_true_cells"], "predicted": pooled["n_predicted_cells"]}
        print(json.dumps({"held_out_centroid_f1": {k: round(v["f1"], 3) for k, v in pooled["centroid"].items()},
                          "cells": record["held_out_cells"]}), flush=True)
    out.with_suffix(".train.json").write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    return record


def _select(tiles, spec: list[str] | None):
    """Tiles named or indexed (0-based, strip order) by ``spec``."""
    if not spec:
        return []
    by_name = {t.name: t for t in tiles}
    out = []
    for s in spec:
        if s in by_name:
            out.append(by_name[s])
        elif s.isdigit() and int(s) < len(tiles):
            out.append(tiles[int(s)])
        else:
            raise SystemExit(f"--holdout {s!r}: not a tile name or an index 0-{len(tiles) - 1}")
    return out


def cmd_train(args) -> int:
    from core.evaluation.hoechst import read_tiles

    print(SELECTION_RULE, flush=True)
    tiles = read_tiles(args.data)
    held = _select(tiles, args.holdout)
    fit = [t for t in tiles if t.name not in {h.name for h in held}]
    rec = train_model(args, fit, held, Path(args.out))
    print(json.dumps({k: v for k, v in rec.items() if k not in ("history", "selection_rule")}, indent=2,
                     ensure_ascii=False))
    return 0


def cmd_cv(args) -> int:
    """Train the folds (all, or ``--fold``), write ``cv.json``, and score out of fold when every fold exists."""
    from core.evaluation.hoechst import evaluate_cv, read_tiles, tile_folds

    print(SELECTION_RULE, flush=True)
    tiles = read_tiles(args.data)
    folds = tile_folds(len(tiles), args.folds)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = args.fold if args.fold is not None else list(range(len(folds)))
    for i in todo:
        if not 0 <= i < len(folds):
            raise SystemExit(f"--fold {i}: there are {len(folds)} folds (0-{len(folds) - 1})")
        held = [tiles[j] for j in folds[i]]
        fit = [t for j, t in enumerate(tiles) if j not in folds[i]]
        train_model(args, fit, held, out_dir / f"fold{i}.safetensors")
    record = {
        "data": str(args.data), "classes": args.classes, "n_folds": len(folds),
        "split": "contiguous groups of tiles in strip order (slide position), each held out once",
        "folds": [{"fold": i, "held_out": [tiles[j].name for j in g], "weights": f"fold{i}.safetensors",
                   "train_json": f"fold{i}.train.json", "trained": (out_dir / f"fold{i}.safetensors").is_file()}
                  for i, g in enumerate(folds)],
        "selection_rule": SELECTION_RULE,
        "command": "python -m core.training.hoechst cv " + " ".join(_without_fold(args.argv)),
    }
    (out_dir / "cv.json").write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    if all(f["trained"] for f in record["folds"]):
        result = evaluate_cv(out_dir / "cv.json", args.data, args.device)
        (out_dir / "cv-eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
        print(json.dumps({"comparison": result["comparison"], "aim": result["aim"],
                          "ci95_centroid": result["ci95"]["centroid"]}, indent=2, ensure_ascii=False))
    else:
        print(f"wrote {out_dir / 'cv.json'}; folds still to train: "
              f"{[f['fold'] for f in record['folds'] if not f['trained']]}")
    return 0


def _without_fold(argv: list[str]) -> list[str]:
    """The ``cv`` arguments without ``--fold i ...`` (the command that trains every fold)."""
    out, skip = [], False
    for a in argv:
        if a == "--fold":
            skip = True
            continue
        if skip and a.lstrip("-").isdigit() and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    from core.evaluation.hoechst import HOECHST_DATA_DIR
    from core.nets.hoechst_unet import CLASS_SCHEMES, DECODER_CHANNELS, ENCODER

    p.add_argument("--data", default=str(HOECHST_DATA_DIR), help="tile folder (<name>.tif + <name>_labels.png)")
    p.add_argument("--classes", default="merged", choices=sorted(CLASS_SCHEMES),
                   help="class scheme: merged (background, CD3, CD8, CD20; shipped) or paper (the five groups)")
    p.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget of each model's supervised stage")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: the budget only)")
    p.add_argument("--crop", type=int, default=128, help="crop side in px, multiple of 32 (GPU: 256, the paper's patch)")
    p.add_argument("--batch", type=int, default=8, help="crops per step (GPU: 32, the paper's)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (the paper's 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (torch's default)")
    p.add_argument("--focus-share", type=float, default=FOCUS_SHARE, help="share of crops around a labelled cell")
    p.add_argument("--pretrain-minutes", type=float, default=0.0,
                   help="masked-denoising pre-training on the training tiles' Hoechst channel before each model (0: off)")
    p.add_argument("--init", help="warm start from these weights (same classes, encoder and decoder)")
    p.add_argument("--encoder", default=ENCODER, help="smp encoder (the paper's resnet34)")
    p.add_argument("--decoder-channels", type=int, nargs=5, default=list(DECODER_CHANNELS),
                   help="U-Net decoder widths (smp's default, as the paper)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast of the forward pass (GPU)")
    p.add_argument("--save-dtype", default="float16", choices=["float16", "float32"],
                   help="dtype the weights are stored in (float16: half the file; inference computes in float32)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=25, help="print the mean loss every this many steps")


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m core.training.hoechst", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one model (all tiles, or all but --holdout)")
    _add_common(t)
    t.add_argument("--holdout", nargs="+", help="tiles held out (names or 0-based indices in strip order)")
    t.add_argument("--out", required=True, help="weights file (.safetensors); the record goes beside it (.train.json)")
    c = sub.add_parser("cv", help="cross-validation over contiguous groups of tiles")
    _add_common(c)
    c.add_argument("--folds", type=int, default=4, help="number of folds (contiguous groups of tiles)")
    c.add_argument("--fold", type=int, nargs="+", help="train only these folds (0-based); the others are kept")
    c.add_argument("--out", required=True, help="folder for fold<i>.safetensors, cv.json and cv-eval.json")
    args = p.parse_args(argv)
    args.argv = argv[1:]
    return cmd_train(args) if args.cmd == "train" else cmd_cv(args)


if __name__ == "__main__":
    raise SystemExit(main())
