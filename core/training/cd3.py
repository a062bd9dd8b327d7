"""Train the CD3 lymphocyte CNN on the gastric CD3 IHC patches.

Usage::

    python -m core.training.cd3 --layout compact --epochs 15 --out weights/cd3-ihc-cnn-v1.safetensors

Method (paper §III.C and §IV): lymphocyte (positive) versus everything else
(negative + background), softmax cross-entropy, Adam, rotation and reflection
augmentation. Departures, stated in the model card:

- small shifts (±4 px, half the stride of dense inference) and mild colour jitter
  as extra augmentation;
- *context windows*: a share of each batch are 70 x 70 crops at random offsets
  from 2 x 2 mosaics of training patches, labelled positive only when a CD3+
  centre lies within 4 px of the crop centre and negative when none lies within
  14 px (crops in between are not used). A patch classifier trained on centred
  patches alone fires on every window that merely contains a lymphocyte, which
  multiplies detections around each cell once it is slid over a field;
- a one-cycle learning-rate schedule; epoch chosen on the ``tune`` split (detection F1
  on mosaics of tune patches, ties by tune patch F1: :func:`selection_rule`, printed
  before training), so the reported ``validation`` metrics are untouched;
- *hard negatives* (``--hard-negatives SHARE --hard-negatives-index CSV``): that share
  of each batch's centred-patch slots is filled with windows mined from the false
  positives of earlier weights (:mod:`core.training.cd3_negatives`), label 0, with
  the dihedral and colour augmentation but no shift (a shift would move an off-centre
  crop's lymphocyte towards the centre).

The detection operating point (threshold, NMS radius in µm) saved here is a provisional
one chosen on tune mosaics; :mod:`core.evaluation.cd3_calibration` replaces it with the
one calibrated on the validation calibration half before the weights are shipped.

Fine-tuning with hard negatives (issue 21), from the shipped weights::

    python -m core.training.cd3_negatives --weights weights/cd3-ihc-cnn-v1.safetensors \
        --out runs/cd3-hard-negatives-v1.csv
    python -m core.training.cd3 --init weights/cd3-ihc-cnn-v1.safetensors --epochs 6 --lr 5e-4 \
        --negative-weight 3 --hard-negatives 0.25 --hard-negatives-index runs/cd3-hard-negatives-v1.csv \
        --time-limit-s 2100 --out runs/cd3-v2.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.evaluation.datasets import CD3_DATA_DIR, cd3_patch_table, read_patches
from core.evaluation.metrics import best_f1_threshold, binary_metrics
from core.evaluation.cd3_calibration import MATCH_RADIUS_UM, NMS_RADII_UM, THRESHOLDS
from core.nets.cd3_cnn import CD3CNN

SHIFT_PX = 4
CONTEXT_POSITIVE_PX = 4.0
CONTEXT_NEGATIVE_PX = 14.0


def context_windows(x: torch.Tensor, y: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` crops at random offsets from 2 x 2 mosaics of patches, labelled by distance.

    Parameters
    ----------
    x : (N, 3, 70, 70) float patches; y : (N,) long labels (1 = centred CD3+ cell)

    Returns
    -------
    (M, 3, 70, 70) crops and (M,) labels, M <= n (ambiguous crops are dropped).
    """
    centres = torch.tensor([[34.5, 34.5], [104.5, 34.5], [34.5, 104.5], [104.5, 104.5]])  # (x, y) per quadrant
    crops, labels = [], []
    idx = torch.randint(0, len(x), (n, 4), generator=gen)
    offsets = torch.randint(0, 71, (n, 2), generator=gen)
    for k in range(n):
        q = x[idx[k]]
        mosaic = torch.cat([torch.cat([q[0], q[1]], dim=2), torch.cat([q[2], q[3]], dim=2)], dim=1)
        ox, oy = int(offsets[k, 0]), int(offsets[k, 1])
        centre = torch.tensor([ox + 34.5, oy + 34.5])
        pos = centres[y[idx[k]] == 1]
        d = float(torch.linalg.norm(pos - centre, dim=1).min()) if len(pos) else float("inf")
        if d <= CONTEXT_POSITIVE_PX:
            label = 1
        elif d >= CONTEXT_NEGATIVE_PX:
            label = 0
        else:
            continue
        crops.append(mosaic[:, oy : oy + 70, ox : ox + 70])
        labels.append(label)
    if not crops:
        return x[:0], y[:0]
    return torch.stack(crops), torch.tensor(labels, dtype=torch.long)


def augment(batch: torch.Tensor, gen: torch.Generator, shift_px: int = SHIFT_PX) -> torch.Tensor:
    """Random dihedral transform, ±``shift_px`` shift and colour jitter of (N, 3, 70, 70) float in [0, 1].

    ``shift_px`` 0 for hard negatives: an off-centre crop must keep its cell 10-20 px off centre.
    """
    n = batch.shape[0]
    out = torch.empty_like(batch)
    padded = nn.functional.pad(batch, (shift_px,) * 4, mode="reflect") if shift_px else batch
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen)
    shifts = torch.randint(0, 2 * shift_px + 1, (n, 2), generator=gen)
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        x = padded[i, :, dy : dy + 70, dx : dx + 70]
        x = torch.rot90(x, int(k[i]), dims=(1, 2))
        out[i] = torch.flip(x, dims=(2,)) if flip[i] else x
    gain = 1 + 0.08 * (2 * torch.rand((n, 3, 1, 1), generator=gen) - 1)
    contrast = 1 + 0.10 * (2 * torch.rand((n, 1, 1, 1), generator=gen) - 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean) * gain


def predict_proba(model: nn.Module, patches: np.ndarray, mean: np.ndarray, std: np.ndarray, batch: int = 256) -> np.ndarray:
    """P(lymphocyte) for (N, 70, 70, 3) uint8 patches with a patch-level model."""
    model.eval()
    out = []
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    with torch.inference_mode():
        for i in range(0, len(patches), batch):
            x = torch.from_numpy(patches[i : i + batch]).permute(0, 3, 1, 2).float() / 255.0
            out.append(torch.softmax(model((x - m) / s), dim=1)[:, 1].numpy())
    return np.concatenate(out) if out else np.zeros(0)


def selection_rule(args: argparse.Namespace) -> str:
    """The pre-registered checkpoint and shipping rule, in words (printed before training and recorded).

    References: the paper picks its model by validation precision with early stopping (§IV.B);
    here the pick is on the tune split only, and for detection F1, the figure the issue judges.
    """
    init = args.init or "none"
    return (
        "Pre-registered selection rule (fixed before any score of this run is seen): after every epoch the "
        f"weights are scored on {len(TUNE_SEEDS)} mosaics of tune patches ({TUNE_GRID[0]}x{TUNE_GRID[1]}, seeds "
        f"{list(TUNE_SEEDS)}) by the best detection F1 over thresholds {THRESHOLDS[0]}-{THRESHOLDS[-1]} x NMS radii "
        f"{list(NMS_RADII_UM)} um (match within {MATCH_RADIUS_UM} um); the epoch with the highest F1 is kept, ties "
        "by the higher tune patch F1, then the earlier epoch. The validation split is not read during training. "
        f"Shipping rule: the kept weights replace --init ({init}) only if, after calibration on the validation "
        "calibration half (python -m core.evaluation.cd3_calibration), their calibration-half mosaic F1 is higher "
        "than that of --init calibrated the same way; the reporting half is measured once, afterwards, for the card."
    )


#: Share of the hard negatives drawn from each source group (a source name or its prefix, e.g.
#: ``ki67`` for both Ki67 tiles). In-domain windows (CD3 training patches) first; the external
#: IHC, which has many more mined windows from one image, is held to 30 % so it does not dominate.
DEFAULT_HARD_NEGATIVE_MIX = "train-nonpositive-mosaic=0.35,train-positive-offcentre=0.35,skimage-ihc=0.15,ki67=0.15"


def parse_mix(text: str) -> dict[str, float]:
    """``"a=0.5,b=0.5"`` → ``{"a": 0.5, "b": 0.5}``.

    Raises
    ------
    InputError
        If an entry is not ``name=share`` with a share >= 0, or all shares are 0.
    """
    from core.errors import InputError

    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or not name.strip() or not share >= 0:
            raise InputError(f"--hard-negative-mix entry {part!r} is not NAME=SHARE with SHARE >= 0, "
                             f"e.g. {DEFAULT_HARD_NEGATIVE_MIX}")
        mix[name.strip()] = share
    if not mix or sum(mix.values()) <= 0:
        raise InputError(f"--hard-negative-mix gives no source a share: {text!r}")
    return mix


def mix_weights(sources: np.ndarray, mix: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-row sampling weights so that each source group is drawn with its share of ``mix``.

    Parameters
    ----------
    sources : (N,) str, the index's ``source`` column
    mix : group (source name or prefix) → share >= 0; a row belongs to the first group that
        names it; groups with no rows are dropped and the others renormalised; rows in no
        group get weight 0

    Returns
    -------
    weights : (N,) float64 tensor summing to 1
    share_drawn : dict group → the share actually drawn

    Raises
    ------
    InputError
        If no row falls into a group with a positive share.
    """
    from core.errors import InputError

    sources = np.asarray(sources).astype(str)
    weights = np.zeros(len(sources))
    members, claimed = {}, np.zeros(len(sources), bool)
    for g in mix:  # a row belongs to the first group that names it
        members[g] = np.char.startswith(sources, g) & ~claimed
        claimed |= members[g]
    present = {g: share for g, share in mix.items() if members[g].any() and share > 0}
    if not present:
        raise InputError(f"no hard negative belongs to a source of the mix {mix}; sources: {sorted(set(sources))}")
    total = sum(present.values())
    for g, share in present.items():
        weights[members[g]] = share / total / members[g].sum()
    return torch.from_numpy(weights / weights.sum()), {g: round(v / total, 4) for g, v in present.items()}


def _tune_mosaics(tune_table, seeds=None, grid=None) -> list:
    """(pixels, truth_xy) of the tune mosaics the selection rule scores (built once per run)."""
    from core.evaluation.mosaic import build_mosaic

    out = []
    for seed in seeds or TUNE_SEEDS:
        m = build_mosaic(tune_table, *(grid or TUNE_GRID), seed=seed)
        out.append((m.pixels, m.positive_xy))
    return out


def tune_detection(model: nn.Module, mean, std, mosaics: list) -> dict:
    """Best detection F1 on tune mosaics over the calibration grid (threshold x NMS radius).

    Parameters
    ----------
    model : CD3CNN, ``compact`` layout (runs fully convolutionally)
    mean, std : (3,) float, the input normalisation
    mosaics : list of (pixels (H, W, 3) uint8, truth_xy (P, 2) float64 px), :func:`_tune_mosaics`

    Returns
    -------
    dict: ``threshold``, ``nms_radius_um``, ``tune_mosaic_f1`` and the best row's counts,
    and what was searched.
    """
    from core.evaluation.cd3_calibration import pick_operating_point, score_grid
    from core.scenarios.cd3_ihc import CD3IHCModel
    from core.scenarios.registry import get_scenario

    meta = {"layout": "compact", "normalization_mean": json.dumps([float(v) for v in mean]),
            "normalization_std": json.dumps([float(v) for v in std]), "threshold": "0.5", "nms_radius_um": "4.0"}
    runner = CD3IHCModel(get_scenario("cd3-ihc"), torch.device("cpu"), model.state_dict(), meta)
    maps = [(runner.probability_map(px), truth) for px, truth in mosaics]
    best = pick_operating_point(score_grid(runner, maps))
    model.train()  # the runner shares no modules, but be explicit: training continues after this
    return {"threshold": best["threshold"], "nms_radius_um": best["nms_radius_um"], "tune_mosaic_f1": best["f1"],
            "precision": best["precision"], "recall": best["recall"], "tp": best["tp"], "fp": best["fp"],
            "fn": best["fn"], "seeds": list(TUNE_SEEDS), "mosaic_grid": list(TUNE_GRID),
            "searched": {"threshold": list(THRESHOLDS), "nms_radius_um": list(NMS_RADII_UM)}}


def train(args: argparse.Namespace) -> dict:
    """Train (or fine-tune with ``--init``) the CD3 CNN; write the weights and a ``.train.json`` record.

    Returns
    -------
    dict, the record (settings, per-epoch history, kept epoch, tune and validation figures).

    Raises
    ------
    InputError
        If ``--hard-negatives`` is outside [0, 0.9] or its index is missing.
    """
    from core.errors import InputError

    if not 0.0 <= args.hard_negatives <= 0.9:
        raise InputError(f"--hard-negatives is the share of a batch's centred patches, in [0, 0.9]; got {args.hard_negatives}")
    rule = selection_rule(args)
    print(rule, flush=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    table = cd3_patch_table(args.data)
    # the validation split is read only after training, for the record
    parts = {s: table[table.split == s] for s in ("train", "tune", "validation")}
    arrays = {s: read_patches(parts[s].path) for s in ("train", "tune")}
    labels = {s: p.label.to_numpy() for s, p in parts.items()}
    x_train = torch.from_numpy(arrays["train"]).permute(0, 3, 1, 2).float() / 255.0
    mean = x_train.mean(dim=(0, 2, 3)).numpy()
    std = x_train.std(dim=(0, 2, 3)).numpy()
    y_train = torch.from_numpy(labels["train"]).long()

    hard = None
    if args.hard_negatives > 0:
        from core.training.cd3_negatives import load_hard_negatives, read_index

        if not args.hard_negatives_index:
            raise InputError("--hard-negatives needs --hard-negatives-index CSV (python -m core.training.cd3_negatives)")
        index = read_index(args.hard_negatives_index)
        if len(index) == 0:
            raise InputError(f"{args.hard_negatives_index} holds no hard negatives")
        hard = torch.from_numpy(load_hard_negatives(index, table)).permute(0, 3, 1, 2).contiguous()  # uint8
        hard_counts = {k: int(v) for k, v in index.source.value_counts().sort_index().items()}
        mix = parse_mix(args.hard_negative_mix)
        hard_weight, hard_mix = mix_weights(index.source.to_numpy(), mix)
        print(json.dumps({"hard_negatives": len(hard), "by_source": hard_counts, "share_drawn": hard_mix}), flush=True)

    model = CD3CNN(args.layout)
    if args.init:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(args.init, framework="pt") as fh:
            init_meta = dict(fh.metadata())
        model.load_state_dict({k: v.float() for k, v in load_file(args.init).items()}, strict=True)
        mean = np.asarray(json.loads(init_meta["normalization_mean"]), dtype=np.float32)
        std = np.asarray(json.loads(init_meta["normalization_std"]), dtype=np.float32)
    # DAB-stained non-lymphocytes ('negative' patches) can be drawn more often than their share.
    sample_weight = torch.ones(len(x_train))
    sample_weight[torch.from_numpy((parts["train"].folder == "negative").to_numpy())] = args.negative_weight
    n_hard = int(round(args.batch * args.hard_negatives)) if hard is not None else 0
    n_regular = args.batch - n_hard
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / n_regular)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    m = torch.as_tensor(mean).view(1, 3, 1, 1)
    s = torch.as_tensor(std).view(1, 3, 1, 1)
    mosaics = _tune_mosaics(parts["tune"]) if model.fully_convolutional else []
    best = {"key": (-1.0, -1.0, 0)}
    history = []
    t0 = time.time()
    stopped = None
    for epoch in range(args.epochs):
        model.train()
        order = torch.multinomial(sample_weight, len(x_train), replacement=True, generator=gen) \
            if args.negative_weight != 1 else torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * n_regular : (b + 1) * n_regular]
            if len(idx) < 2:
                continue
            xb, yb = x_train[idx], y_train[idx]
            if args.context_fraction > 0:
                n_ctx = int(round(len(idx) * args.context_fraction))
                cx, cy = context_windows(x_train, y_train, n_ctx, gen)
                xb, yb = torch.cat([xb, cx]), torch.cat([yb, cy])
            xb = augment(xb, gen)
            if n_hard:
                pick = torch.multinomial(hard_weight, n_hard, replacement=True, generator=gen)
                xb = torch.cat([xb, augment(hard[pick].float() / 255.0, gen, shift_px=0)])
                yb = torch.cat([yb, torch.zeros(n_hard, dtype=torch.long)])
            loss = nn.functional.cross_entropy(model((xb - m) / s), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            if args.time_limit_s and time.time() - t0 > args.time_limit_s:
                stopped = {"epoch": epoch + 1, "step": b + 1, "of_steps": steps_per_epoch}
                break
        prob = predict_proba(model, arrays["tune"], mean, std)
        thr, f1 = best_f1_threshold(labels["tune"], prob)
        det = tune_detection(model, mean, std, mosaics) if mosaics else None
        history.append({"epoch": epoch + 1, "train_loss": total / len(x_train), "tune_f1": f1, "tune_threshold": thr,
                        "tune_mosaic_f1": det and det["tune_mosaic_f1"], "tune_mosaic_precision": det and det["precision"],
                        "tune_mosaic_recall": det and det["recall"], "elapsed_s": round(time.time() - t0, 1)})
        print(json.dumps(history[-1]), flush=True)
        key = ((det["tune_mosaic_f1"] if det else f1), f1, -(epoch + 1))
        if key > best["key"]:
            best = {"key": key, "f1": f1, "threshold": thr, "epoch": epoch + 1, "detection": det,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if stopped:
            print(json.dumps({"stopped_by_time_limit": stopped}), flush=True)
            break
    model.load_state_dict(best["state"], strict=True)
    detection = best["detection"]
    x_val = read_patches(parts["validation"].path)
    val_prob = predict_proba(model, x_val, mean, std)
    val = binary_metrics(labels["validation"], val_prob >= best["threshold"])
    val_05 = binary_metrics(labels["validation"], val_prob >= 0.5)
    result = {
        "layout": args.layout,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "epochs": args.epochs, "best_epoch": best["epoch"], "batch": args.batch, "lr": args.lr,
        "weight_decay": args.weight_decay, "seed": args.seed, "threads": args.threads,
        "train_time_s": round(time.time() - t0, 1), "stopped_by_time_limit": stopped,
        "selection_rule": rule,
        "threshold": best["threshold"], "tune_f1": best["f1"], "detection_tuning": detection,
        "context_fraction": args.context_fraction, "init": args.init, "negative_weight": args.negative_weight,
        "hard_negatives": None if hard is None else {
            "share_of_batch": args.hard_negatives, "per_batch": n_hard, "index": args.hard_negatives_index,
            "n": int(len(hard)), "by_source": hard_counts, "mix": args.hard_negative_mix, "share_drawn": hard_mix},
        "validation": val, "validation_at_0.5": val_05,
        "split_counts": {k: {"n": int(len(v)), "positive": int(v.label.sum())} for k, v in parts.items()},
        "normalization_mean": mean.tolist(), "normalization_std": std.tolist(),
        "history": history,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, out, mean, std, best["threshold"], args.layout, args.half, detection)
    out.with_suffix(".train.json").write_text(json.dumps(result, indent=2))
    return result


#: Tune mosaics of the selection rule (and the provisional operating point).
TUNE_SEEDS = (11, 12, 13, 14, 15)
TUNE_GRID = (10, 10)


def retune(weights: Path) -> dict:
    """Re-run :func:`tune_detection` on trained weights and rewrite their metadata and train record."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as fh:
        meta = dict(fh.metadata())
    model = CD3CNN(meta["layout"])
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    mean, std = json.loads(meta["normalization_mean"]), json.loads(meta["normalization_std"])
    detection = tune_detection(model, mean, std, _tune_mosaics(cd3_patch_table().query("split == 'tune'")))
    save_weights(model, weights, mean, std, float(meta["patch_threshold"]), meta["layout"], meta["dtype"] == "float16", detection)
    record_path = weights.with_suffix(".train.json")
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        record["detection_tuning"] = detection
        record_path.write_text(json.dumps(record, indent=2))
    return detection


def save_weights(model: nn.Module, path: Path, mean, std, threshold: float, layout: str, half: bool,
                 detection: dict | None = None) -> None:
    """Write the state dict as safetensors, with the preprocessing contract in its metadata."""
    from safetensors.torch import save_file

    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "model": "CD3CNN", "layout": layout, "input": "(N, 3, H, W) float32 RGB: (x / 255 - mean) / std",
        "normalization_mean": json.dumps([float(v) for v in mean]),
        "normalization_std": json.dumps([float(v) for v in std]),
        "patch_threshold": str(threshold),
        "threshold": str(threshold if detection is None else detection["threshold"]),
        "dtype": "float16" if half else "float32",
    }
    if detection is not None:
        meta["nms_radius_um"] = str(detection["nms_radius_um"])
        meta["operating_point_chosen_on"] = (f"tune split: {len(detection['seeds'])} mosaics of tune patches "
                                             "(provisional; calibrate with core.evaluation.cd3_calibration)")
    save_file(state, str(path), metadata=meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(CD3_DATA_DIR), help="folder with positive/, negative/, background/")
    p.add_argument("--layout", default="compact", choices=["compact", "paper"])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="start from these weights (fine-tuning); keeps their normalisation")
    p.add_argument("--negative-weight", type=float, default=1.0,
                   help="sampling weight of DAB-stained non-lymphocyte ('negative') patches relative to the others")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--half", action="store_true", help="store float16 weights")
    p.add_argument("--context-fraction", type=float, default=0.5,
                   help="context windows per centred patch in each batch (0 = the paper's centred patches only)")
    p.add_argument("--hard-negatives", type=float, default=0.0,
                   help="share of each batch's centred-patch slots filled with mined hard negatives (0-0.9; 0 = none)")
    p.add_argument("--hard-negatives-index", help="CSV of core.training.cd3_negatives (needed with --hard-negatives)")
    p.add_argument("--hard-negative-mix", default=DEFAULT_HARD_NEGATIVE_MIX,
                   help="share of the hard negatives drawn from each source (name or prefix)=share, comma-separated")
    p.add_argument("--time-limit-s", type=float, default=0.0,
                   help="stop training after this many seconds (smoke runs; 0 = no limit); the epoch is still scored")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--retune", action="store_true",
                   help="only re-tune the detection threshold and NMS of the trained weights at --out")
    args = p.parse_args(argv)
    if args.retune:
        print(json.dumps(retune(Path(args.out)), indent=2))
        return 0
    result = train(args)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
