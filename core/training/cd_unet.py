"""Train CD-UNET (or the plain U-Net) for tissue compartments on synthetic multistain sections and real labels.

Usage::

    python -m core.training.cd_unet --variant cd-unet --minutes 40 --out runs/tc-s1.safetensors
    python -m core.training.cd_unet --variant cd-unet --minutes 40 --init runs/tc-s1.safetensors --out runs/tc-s2.safetensors
    python -m core.training.cd_unet --variant unet --minutes 40 --out runs/tc-unet-s1.safetensors   # the paper's comparison

Method (CD-UNET paper §2-3): 4 classes (background, tumour, stroma, necrosis), per-pixel cross
entropy averaged over the image with zero weight on pixels to ignore, median frequency
balancing of the class weights (Eigen & Fergus 2015), augmentation by hue, brightness and scale
jitter, uniform intensity noise, random occlusion and flips (§2), SGD with momentum 0.9 (§3;
``--optimizer sgd``) or Adam (default here: a short CPU budget), batch normalisation
throughout (:mod:`core.nets.cd_unet`).

Training data (each crop draws its kind first, so no kind dominates whatever its size):

- **synthetic sections** of the compartment recipe (:func:`core.generator.compartments.generate_compartments`,
  the nine stains of the paper), a pool of ``--pool`` sections of ``--pool-size`` px with seeds
  from :data:`core.evaluation.compartments.TRAIN_SEEDS` (share ``--synthetic-share``);
- **real weak labels** (:mod:`core.training.compartment_labels`): tumour / stroma / glass from
  the classed points of the ``fit`` splits of ``--sources`` (uniform over sources; share
  ``--real-share``); unknown pixels are ignored by the loss;
- **real necrosis** (``he-necrosis-tcga`` train patches; share ``--necrosis-share``): necrosis,
  glass, and "not necrosis" elsewhere (a partial label: -log of the summed probability of
  background, tumour and stroma).

Selection rule (fixed before any score is seen; printed at the start and kept in the record):
every ``--eval-minutes`` and at the end the network is scored on the tune sets — synthetic
sections of every stain with seeds from :data:`core.evaluation.compartments.TUNE_SEEDS`
(``--tune-per-stain`` each) and each source's ``tune`` split — and the score is
``0.5 x synthetic macro F1 + 0.5 x mean over sources of (share of annotated tumour cells in
predicted tumour + share of annotated stromal cells in predicted stroma) / 2``. The checkpoint
with the highest score is kept; the stage is **accepted** when that score beats the score of
its ``--init`` weights on the same tune sets (always, without ``--init``). Validation splits
and the held-out seeds are never read.

Writes ``--out`` (safetensors; the network configuration, classes, input contract and mpp in
its metadata, as :mod:`core.scenarios.weights` loads them) and ``<out>.train.json`` (settings,
data, class weights, every tune score, timing). The same command trains the full version on a
GPU (``--device cuda``, ``--base 32 --crop 512 --batch 16 --pool 2000 --workers 12``).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from core.evaluation.compartments import TRAIN_SEEDS, TUNE_SEEDS, evaluate_real, evaluate_synthetic
from core.generator.compartments import COMPARTMENT_NAMES, COMPARTMENTS, STAINS
from core.nets.cd_unet import CDUNet, VARIANTS
from core.training.compartment_labels import IGNORE, LABEL_SETS, MODEL_MPP
from core.training.stage import TimedStage

#: (256, 4) bool: the classes each label value allows (unlisted values: all, i.e. ignored).
ALLOWED = np.ones((256, 4), bool)
for _v, _classes in LABEL_SETS.items():
    ALLOWED[_v] = [c in _classes for c in range(4)]


def selection_rule() -> str:
    """The pre-registered checkpoint and stage rule, in words (printed and recorded)."""
    return ("score = 0.5 x synthetic macro F1 (tune seeds, every stain) + 0.5 x mean over sources of (share of "
            "annotated tumour cells in predicted tumour + share of annotated stromal cells in predicted stroma) / 2 on "
            "each source's tune split; the checkpoint with the highest score is kept; the stage is accepted when "
            "its score beats that of its --init weights on the same tune sets (always without --init); validation "
            "splits and held-out seeds are never read")


def median_frequency_weights(label_maps: list[np.ndarray]) -> np.ndarray:
    """Class weights by median frequency balancing (Eigen & Fergus 2015; CD-UNET §2).

    freq_c = pixels of class c / pixels of the maps in which c appears; w_c = median(freq) / freq_c.

    Parameters
    ----------
    label_maps : list of (H, W) uint8; only exact labels 0-3 count

    Returns
    -------
    (4,) float32, 1.0 for a class that never appears
    """
    pix = np.zeros(4)
    present = np.zeros(4)
    for m in label_maps:
        c = np.bincount(m.ravel(), minlength=256)[:4].astype(np.float64)
        n = c.sum()
        pix += c
        present += (c > 0) * n
    freq = np.where(present > 0, pix / np.maximum(present, 1), np.nan)
    med = np.nanmedian(freq)
    return np.where(np.isfinite(freq), med / np.maximum(freq, 1e-12), 1.0).astype(np.float32)


def set_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross entropy with partial labels: -log of the summed probability of the classes a label allows.

    A label of one class is the ordinary cross entropy; :data:`~core.training.compartment_labels.NOT_NECROSIS`
    allows background, tumour or stroma; :data:`~core.training.compartment_labels.IGNORE` allows
    every class and costs nothing (zero weight, as the paper's pixels to ignore, §3).

    Parameters
    ----------
    logits : (B, 4, H, W) float
    target : (B, H, W) int64 label values (:data:`~core.training.compartment_labels.LABEL_SETS`)
    class_weights : (4,) float, weight of a pixel labelled with one class (partial labels: 1)

    Returns
    -------
    scalar tensor: the weighted mean over the pixels that are not ignored (0 when all are)
    """
    allowed = torch.as_tensor(ALLOWED, device=logits.device)[target].permute(0, 3, 1, 2)  # (B, 4, H, W)
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -torch.logsumexp(logp.masked_fill(~allowed, -1e4), dim=1)  # (B, H, W)
    single = target <= 3
    w = torch.where(target == IGNORE, torch.zeros_like(nll), torch.ones_like(nll))
    if class_weights is not None:
        cw = class_weights.to(logits.device)[target.clamp(max=3)]
        w = torch.where(single, cw, w)
    return (w * nll).sum() / w.sum().clamp(min=1e-6)


def _generate(args_tuple) -> tuple[np.ndarray, np.ndarray, str]:
    from core.generator.compartments import generate_compartments

    size, seed = args_tuple
    s = generate_compartments((size, size), seed)
    return s.image, s.labels, s.stain


def make_pool(n: int, size: int, first_seed: int = TRAIN_SEEDS[0], workers: int = 1) -> tuple[list, list, list]:
    """``n`` synthetic training sections (seeds ``first_seed`` ...): (S, S, 3) uint8 images, (S, S) uint8 label maps, stains."""
    jobs = [(size, first_seed + i) for i in range(n)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            res = list(ex.map(_generate, jobs, chunksize=4))
    else:
        res = [_generate(j) for j in jobs]
    return [r[0] for r in res], [r[1] for r in res], [r[2] for r in res]


class MixedSampler:
    """Random crops of synthetic sections, real weak-label fields and necrosis patches, augmented (CD-UNET §2).

    Parameters
    ----------
    groups : dict of name → (list of (H, W, 3) uint8 images, list of (H, W) uint8 label maps)
    shares : dict of name → share of crops (normalised); a group with no images gets none
    crop_px : int, crop side (a multiple of the network's size step)
    gen : torch.Generator
    scale_jitter, brightness, hue, noise, occlusion : augmentation strengths (0 = off)

    Crops smaller images than ``crop_px`` are padded by reflection with :data:`IGNORE` labels.
    """

    def __init__(self, groups: dict, shares: dict, crop_px: int, gen: torch.Generator, scale_jitter: float = 0.15,
                 brightness: float = 0.12, hue: float = 0.06, noise: float = 0.03, occlusion: float = 0.15):
        self.groups = {k: ([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1) for i in v[0]],
                           [torch.from_numpy(np.ascontiguousarray(m)) for m in v[1]]) for k, v in groups.items() if v[0]}
        w = np.array([max(float(shares.get(k, 0.0)), 0.0) for k in self.groups])
        if not len(w) or w.sum() <= 0:
            raise ValueError("no training images: give synthetic sections or real fields with a positive share")
        self.names = list(self.groups)
        self.p = torch.as_tensor(w / w.sum(), dtype=torch.float64)
        self.crop, self.gen = crop_px, gen
        self.scale_jitter, self.brightness, self.hue, self.noise, self.occlusion = scale_jitter, brightness, hue, noise, occlusion

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen)

    def _one(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gen
        name = self.names[int(torch.multinomial(self.p, 1, generator=g))]
        imgs, labs = self.groups[name]
        i = int(torch.randint(len(imgs), (1,), generator=g))
        img, lab = imgs[i], labs[i]
        _, h, w = img.shape
        if h < size or w < size:
            ph, pw = max(size - h, 0), max(size - w, 0)
            img = F.pad(img[None].float(), (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")[0]
            lab = F.pad(lab[None, None].float(), (0, pw, 0, ph), value=float(IGNORE))[0, 0].to(torch.uint8)
            h, w = h + ph, w + pw
        y = int(torch.randint(h - size + 1, (1,), generator=g))
        x = int(torch.randint(w - size + 1, (1,), generator=g))
        img, lab = img[:, y : y + size, x : x + size].float() / 255.0, lab[y : y + size, x : x + size]
        flips = torch.randint(2, (3,), generator=g)
        if flips[0]:
            img, lab = img.flip(-1), lab.flip(-1)
        if flips[1]:
            img, lab = img.flip(-2), lab.flip(-2)
        if flips[2]:
            img, lab = img.transpose(-1, -2), lab.transpose(-1, -2)
        return img, lab

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, C, C) float32 RGB in [0, 1] and (n, C, C) int64 label values."""
        c = self.crop
        s = 1.0 + self.scale_jitter * (2 * float(self._rand(1)) - 1)
        size = max(16, int(round(c / s)))
        xs, ys = zip(*(self._one(size) for _ in range(n)))
        x, y = torch.stack(xs), torch.stack(ys).long()
        if size != c:
            x = F.interpolate(x, size=(c, c), mode="bilinear", align_corners=False, antialias=size > c)
            y = F.interpolate(y[:, None].float(), size=(c, c), mode="nearest")[:, 0].long()
        if self.brightness > 0 or self.hue > 0:
            gain = 1 + self.brightness * (2 * self._rand(n, 1, 1, 1) - 1)
            tint = 1 + self.hue * (2 * self._rand(n, 3, 1, 1) - 1)
            x = x * gain * tint
        if self.noise > 0:  # uniform noise on the intensity (§2)
            x = x + self.noise * (2 * self._rand(n, 1, c, c) - 1)
        if self.occlusion > 0:  # random occlusion (§2): a box of the crop's mean colour, not scored
            for b in range(n):
                if float(self._rand(1)) < self.occlusion:
                    bh, bw = (int(c * (0.1 + 0.2 * float(self._rand(1)))) for _ in range(2))
                    y0, x0 = int(self._rand(1) * (c - bh)), int(self._rand(1) * (c - bw))
                    x[b, :, y0 : y0 + bh, x0 : x0 + bw] = x[b].mean(dim=(1, 2), keepdim=True)
                    y[b, y0 : y0 + bh, x0 : x0 + bw] = IGNORE
        return x.clamp(0, 1).contiguous(), y.contiguous()


def tune_score(net: torch.nn.Module, tune_fields: dict, per_stain: int, size_px: int, device) -> dict:
    """The selection rule's score on the tune sets (:func:`selection_rule`)."""
    net.eval()
    syn = evaluate_synthetic(net, per_stain, size_px, first_seed=TUNE_SEEDS[0], device=device) if per_stain > 0 else None
    real = evaluate_real(net, "tune", tuple(tune_fields), fields=tune_fields, device=device) if tune_fields else None
    parts = []
    if syn is not None:
        parts.append(syn["overall"]["macro_f1"] or 0.0)
    if real is not None:
        vals = [np.mean([v["judged"]["tumour_cells_in_tumour"] or 0.0, v["judged"]["stromal_cells_in_stroma"] or 0.0])
                for k, v in real.items() if k != "mean_judged"]
        parts.append(float(np.mean(vals)))
    score = float(np.mean(parts)) if parts else 0.0
    return {"score": round(score, 4),
            "synthetic_macro_f1": None if syn is None else syn["overall"]["macro_f1"],
            "synthetic_per_class_f1": None if syn is None else {k: v["f1"] for k, v in syn["overall"]["per_class"].items()},
            "synthetic_per_stain_macro_f1": None if syn is None else {k: v["macro_f1"] for k, v in syn["per_stain"].items()},
            "real": None if real is None else {k: v["judged"] for k, v in real.items() if k != "mean_judged"}}


def metadata(net: CDUNet, class_weights: np.ndarray, extra: dict | None = None) -> dict:
    """The safetensors metadata: configuration, classes, input contract (read by :mod:`core.scenarios.compartments`)."""
    meta = {
        "model": "CD-UNET", "variant": net.variant, "config": json.dumps(net.config),
        "classes": json.dumps(list(COMPARTMENT_NAMES)), "mpp": str(MODEL_MPP),
        "input": f"(N, 3, H, W) float32 RGB in [0, 1] at {MODEL_MPP} µm/px; H, W multiples of {net.size_multiple}",
        "output": "(N, 4, H, W) float32 logits of background, tumour, stroma, necrosis",
        "class_weights": json.dumps([round(float(v), 4) for v in class_weights]), "dtype": "float32",
        "trained_on_synthetic": "partly (synthetic sections with real weak labels and real necrosis masks)",
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def load_init(net: CDUNet, path: str) -> None:
    """Warm start from a previous run's weights (strict; the configuration must agree).

    Raises
    ------
    ValueError
        If the file's configuration differs from ``net``'s.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as fh:
        saved = json.loads((fh.metadata() or {}).get("config", "{}"))
    if saved and saved != net.config:
        raise ValueError(f"--init {path}: its configuration {saved} differs from this run's {net.config}; "
                         "use the same --variant, --base and --depth")
    net.load_state_dict(load_file(path), strict=True)


def train(args: argparse.Namespace, real_fields: dict | None = None, necrosis: list | None = None,
          tune_fields: dict | None = None) -> dict:
    """Train one stage (module docstring); ``real_fields`` / ``necrosis`` / ``tune_fields`` may be given pre-read (tests)."""
    from core.training.compartment_labels import label_digest, label_shares, necrosis_fields, weak_label_fields

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gen = torch.Generator().manual_seed(args.seed)
    rule = selection_rule()
    print(json.dumps({"selection_rule": rule}), flush=True)
    t0 = time.time()
    first = int(args.pool_first_seed)
    if not (TRAIN_SEEDS[0] <= first and first + args.pool - 1 <= TRAIN_SEEDS[1]):
        raise ValueError(f"--pool-first-seed {first} with --pool {args.pool} leaves the training seeds {TRAIN_SEEDS}")
    pool_imgs, pool_labs, pool_stains = (make_pool(args.pool, args.pool_size, first, args.workers) if args.pool
                                         else ([], [], []))
    if real_fields is None:
        real_fields = {s: weak_label_fields(s, "fit") for s in args.sources}
    if necrosis is None:
        necrosis = necrosis_fields("train") if args.necrosis_share > 0 else []
    if tune_fields is None:
        tune_fields = {s: weak_label_fields(s, "tune") for s in args.sources}
    data_s = time.time() - t0
    real_all = [f for fl in real_fields.values() for f in fl]
    groups = {"synthetic": (pool_imgs, pool_labs), "necrosis": ([f.pixels for f in necrosis], [f.labels for f in necrosis])}
    shares = {"synthetic": args.synthetic_share, "necrosis": args.necrosis_share}
    for s, fl in real_fields.items():
        groups[f"real:{s}"] = ([f.pixels for f in fl], [f.labels for f in fl])
        shares[f"real:{s}"] = args.real_share / max(len(real_fields), 1)
    sampler = MixedSampler(groups, shares, args.crop, gen, args.scale_jitter, args.brightness, args.hue, args.noise,
                           args.occlusion)
    weights = median_frequency_weights(pool_labs + [f.labels for f in real_all] + [f.labels for f in necrosis])
    cw = torch.as_tensor(weights)
    data = {"pool": args.pool, "pool_size_px": args.pool_size, "pool_seeds": [first, first + args.pool - 1],
            "pool_stains": {k: pool_stains.count(k) for k in STAINS},
            "real_fit": {s: {"fields": len(fl), "label_shares": label_shares(fl), "digest": label_digest(fl)}
                         for s, fl in real_fields.items()},
            "necrosis_train": {"fields": len(necrosis), "label_shares": label_shares(necrosis) if necrosis else None},
            "tune": {s: len(fl) for s, fl in tune_fields.items()}, "shares": {k: round(v, 4) for k, v in shares.items()},
            "class_weights_median_frequency": dict(zip(COMPARTMENT_NAMES, [round(float(v), 4) for v in weights])),
            "data_time_s": round(data_s, 1)}
    print(json.dumps({"data": data}), flush=True)
    net = CDUNet(base=args.base, depth=args.depth, colour_deconvolution=args.variant == "cd-unet").to(device)
    if args.crop % net.size_multiple:
        raise ValueError(f"--crop must be a multiple of {net.size_multiple} (2 ** --depth), got {args.crop}")
    init_score = None
    if args.init:
        load_init(net, args.init)
        init_score = tune_score(net, tune_fields, args.tune_per_stain, args.tune_size, device)
        print(json.dumps({"init_tune": init_score}), flush=True)
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    stage = TimedStage(args.minutes, args.max_steps, args.eval_minutes, warmup_steps=20)
    stage.best["tune"] = None
    history, running = [], []
    while not stage.finished():
        stage.set_lr(opt, args.lr)
        net.train()
        x, y = sampler.batch(args.batch)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = net(x)
        loss = set_cross_entropy(logits, y, cw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        due = stage.tick()
        if stage.step % args.log_every == 0:
            print(json.dumps({"step": stage.step, "loss": round(float(np.mean(running[-args.log_every:])), 4),
                              "lr": round(opt.param_groups[0]["lr"], 6), "elapsed_s": round(stage.elapsed_s(), 1)}),
                  flush=True)
        if due:
            sc = tune_score(net, tune_fields, args.tune_per_stain, args.tune_size, device)
            rec = {"step": stage.step, "elapsed_s": round(stage.elapsed_s(), 1), "loss": round(float(np.mean(running)), 4),
                   "tune": sc}
            running = []
            history.append(rec)
            print(json.dumps(rec), flush=True)
            stage.keep_if_best(sc["score"], net, tune=sc)
    train_s, step, best = stage.elapsed_s(), stage.step, stage.best
    stage.restore_best(net)
    accepted = init_score is None or best["score"] > init_score["score"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out),
              metadata=metadata(net, weights, {"tune_score": best["score"], "accepted": accepted}))
    result = {
        "variant": args.variant, "config": net.config, "parameters": net.n_parameters(), "mpp": MODEL_MPP,
        "classes": list(COMPARTMENT_NAMES), "stains": list(STAINS), "recipe": COMPARTMENTS.key,
        "crop_px": args.crop, "batch": args.batch, "optimizer": args.optimizer, "lr": args.lr,
        "schedule": "20-step warm-up, cosine to 0.02 x lr over the budget",
        "augmentation": {"flips_and_transposes": True, "scale_jitter": args.scale_jitter, "brightness": args.brightness,
                         "hue_channel_gain": args.hue, "uniform_noise": args.noise, "occlusion_share": args.occlusion},
        "loss": "set cross entropy (partial labels; unknown ignored) with median-frequency class weights",
        "bf16_autocast": args.bf16, "minutes": args.minutes, "max_steps": args.max_steps, "steps": step,
        "best_step": best["step"], "init": args.init, "seed": args.seed, "threads": args.threads,
        "device": str(device), "train_time_s": round(train_s, 1),
        "seconds_per_step": round(train_s / max(step, 1), 3), "sources": list(real_fields), "data": data,
        "selection_rule": rule, "init_tune": init_score, "best_tune": best["tune"], "accepted": accepted,
        "tune_sets": {"synthetic_per_stain": args.tune_per_stain, "synthetic_size_px": args.tune_size,
                      "synthetic_seeds_from": TUNE_SEEDS[0], "real": "each source's tune split"},
        "history": history,
    }
    out.with_suffix(".train.json").write_text(json.dumps(result, indent=2))
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.training.cd_unet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=VARIANTS, default="cd-unet", help="cd-unet (§3.2) or the plain unet (§3.3)")
    p.add_argument("--base", type=int, default=16, help="filters of the first U-Net level (paper, half width: 32)")
    p.add_argument("--depth", type=int, default=4, help="poolings (original U-Net: 4)")
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = budget only)")
    p.add_argument("--crop", type=int, default=160, help="crop side, px at 1.0 µm/px (multiple of 2 ** depth; paper 512)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="paper: sgd with momentum 0.9")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--synthetic-share", type=float, default=0.6, help="share of crops from synthetic sections")
    p.add_argument("--real-share", type=float, default=0.3, help="share of crops from real weak-label fields")
    p.add_argument("--necrosis-share", type=float, default=0.1, help="share of crops from the real necrosis patches")
    p.add_argument("--sources", nargs="*", choices=["crc", "brca-m2c", "consep"], default=["crc", "brca-m2c", "consep"])
    p.add_argument("--pool", type=int, default=240, help="synthetic training sections")
    p.add_argument("--pool-size", type=int, default=320, help="synthetic section side, px")
    p.add_argument("--pool-first-seed", type=int, default=TRAIN_SEEDS[0],
                   help=f"first seed of the pool (training seeds are {TRAIN_SEEDS[0]}-{TRAIN_SEEDS[1]}; give a later "
                        "stage fresh sections)")
    p.add_argument("--workers", type=int, default=1, help="processes generating the synthetic pool")
    p.add_argument("--scale-jitter", type=float, default=0.15)
    p.add_argument("--brightness", type=float, default=0.12)
    p.add_argument("--hue", type=float, default=0.06, help="per-channel gain jitter")
    p.add_argument("--noise", type=float, default=0.03, help="uniform intensity noise amplitude")
    p.add_argument("--occlusion", type=float, default=0.15, help="share of crops with a random occluding box")
    p.add_argument("--eval-minutes", type=float, default=10.0, help="score on the tune sets this often")
    p.add_argument("--tune-per-stain", type=int, default=2, help="synthetic tune sections per stain")
    p.add_argument("--tune-size", type=int, default=256, help="synthetic tune section side, px")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast in the forward pass (GPU or AVX512-BF16 CPU)")
    p.add_argument("--init", help="warm start from a previous stage's .safetensors (same --variant, --base, --depth)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--out", required=True)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    result = train(args)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
