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
- a one-cycle learning-rate schedule; epoch chosen on the ``tune`` split (patch
  F1), and the detection threshold chosen on mosaics of ``tune`` patches, so the
  reported ``validation`` metrics are untouched.
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


def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random dihedral transform, ±4 px shift and colour jitter of (N, 3, 70, 70) float in [0, 1]."""
    n = batch.shape[0]
    out = torch.empty_like(batch)
    padded = nn.functional.pad(batch, (SHIFT_PX,) * 4, mode="reflect")
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen)
    shifts = torch.randint(0, 2 * SHIFT_PX + 1, (n, 2), generator=gen)
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


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    table = cd3_patch_table(args.data)
    parts = {s: table[table.split == s] for s in ("train", "tune", "validation")}
    arrays = {s: read_patches(p.path) for s, p in parts.items()}
    labels = {s: p.label.to_numpy() for s, p in parts.items()}
    x_train = torch.from_numpy(arrays["train"]).permute(0, 3, 1, 2).float() / 255.0
    mean = x_train.mean(dim=(0, 2, 3)).numpy()
    std = x_train.std(dim=(0, 2, 3)).numpy()
    y_train = torch.from_numpy(labels["train"]).long()

    model = CD3CNN(args.layout)
    if args.init:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(args.init, framework="pt") as fh:
            init_meta = dict(fh.metadata())
        model.load_state_dict({k: v.float() for k, v in load_file(args.init).items()}, strict=True)
        mean = np.asarray(json.loads(init_meta["normalization_mean"]), dtype=np.float32)
        std = np.asarray(json.loads(init_meta["normalization_std"]), dtype=np.float32)
    # Hard negatives: DAB-stained non-lymphocytes are drawn more often than their share.
    sample_weight = torch.ones(len(x_train))
    sample_weight[torch.from_numpy((parts["train"].folder == "negative").to_numpy())] = args.negative_weight
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    m = torch.as_tensor(mean).view(1, 3, 1, 1)
    s = torch.as_tensor(std).view(1, 3, 1, 1)
    best = {"f1": -1.0}
    history = []
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.multinomial(sample_weight, len(x_train), replacement=True, generator=gen) \
            if args.negative_weight != 1 else torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch : (b + 1) * args.batch]
            if len(idx) < 2:
                continue
            xb, yb = x_train[idx], y_train[idx]
            if args.context_fraction > 0:
                n_ctx = int(round(len(idx) * args.context_fraction))
                cx, cy = context_windows(x_train, y_train, n_ctx, gen)
                xb, yb = torch.cat([xb, cx]), torch.cat([yb, cy])
            xb = (augment(xb, gen) - m) / s
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        prob = predict_proba(model, arrays["tune"], mean, std)
        thr, f1 = best_f1_threshold(labels["tune"], prob)
        history.append({"epoch": epoch + 1, "train_loss": total / len(x_train), "tune_f1": f1, "tune_threshold": thr,
                        "elapsed_s": time.time() - t0})
        print(json.dumps(history[-1]), flush=True)
        if f1 > best["f1"]:
            best = {"f1": f1, "threshold": thr, "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    model.load_state_dict(best["state"], strict=True)
    detection = tune_detection_threshold(model, mean, std, parts["tune"]) if model.fully_convolutional else None
    val_prob = predict_proba(model, arrays["validation"], mean, std)
    val = binary_metrics(labels["validation"], val_prob >= best["threshold"])
    val_05 = binary_metrics(labels["validation"], val_prob >= 0.5)
    result = {
        "layout": args.layout,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "epochs": args.epochs, "best_epoch": best["epoch"], "batch": args.batch, "lr": args.lr,
        "weight_decay": args.weight_decay, "seed": args.seed, "threads": args.threads,
        "train_time_s": round(time.time() - t0, 1),
        "threshold": best["threshold"], "tune_f1": best["f1"], "detection_tuning": detection,
        "context_fraction": args.context_fraction, "init": args.init, "negative_weight": args.negative_weight,
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


#: NMS settings searched on tune mosaics: boxes of 6-8 µm (about one lymphocyte nucleus) and
#: small overlaps; larger boxes win on mosaics (one labelled cell per 14 µm tile) but would
#: merge touching lymphocytes in real infiltrates, so they are not offered.
NMS_BOXES_UM = (6.0, 7.0, 8.0)
NMS_IOUS = (0.1, 0.15)
TUNE_SEEDS = (11, 12, 13, 14, 15)


def tune_detection_threshold(model: nn.Module, mean, std, tune_table, seeds=TUNE_SEEDS) -> dict:
    """Choose detection threshold and NMS box/IoU for F1 on mosaics of ``tune`` patches (never validation)."""
    from core.evaluation.metrics import detection_metrics
    from core.evaluation.mosaic import build_mosaic
    from core.scenarios.registry import get_scenario
    from core.scenarios.cd3_ihc import CD3IHCModel

    scenario = get_scenario("cd3-ihc")
    meta = {"layout": "compact", "normalization_mean": json.dumps([float(v) for v in mean]),
            "normalization_std": json.dumps([float(v) for v in std])}
    runner = CD3IHCModel(scenario, torch.device("cpu"), model.state_dict(), meta)
    radius_px = 4.0 / scenario.input_mpp
    maps = []
    for seed in seeds:
        m = build_mosaic(tune_table, 10, 10, seed=seed)
        maps.append((runner.probability_map(m.pixels), m.positive_xy))
    scores = []
    for box_um in NMS_BOXES_UM:
        for iou in NMS_IOUS:
            for thr in np.arange(0.30, 0.951, 0.05):
                tp = fp = fn = 0
                for prob, truth in maps:
                    xy, _ = runner.detect(prob, float(thr), box_um / scenario.input_mpp, iou)
                    d = detection_metrics(xy, truth, radius_px)
                    tp, fp, fn = tp + d["tp"], fp + d["fp"], fn + d["fn"]
                f1 = 2 * tp / max(2 * tp + fp + fn, 1)
                scores.append((round(f1, 6), float(round(thr, 2)), box_um, iou, tp, fp, fn))
    f1, thr, box_um, iou, tp, fp, fn = max(scores)
    return {"threshold": thr, "nms_box_um": box_um, "nms_iou": iou, "tune_mosaic_f1": f1, "tp": tp, "fp": fp,
            "fn": fn, "seeds": list(seeds), "mosaic_grid": [10, 10],
            "searched": {"nms_box_um": list(NMS_BOXES_UM), "nms_iou": list(NMS_IOUS), "threshold": "0.30-0.95 step 0.05"}}


def retune(weights: Path) -> dict:
    """Re-run :func:`tune_detection_threshold` on trained weights and rewrite their metadata and train record."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as fh:
        meta = dict(fh.metadata())
    model = CD3CNN(meta["layout"])
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    mean, std = json.loads(meta["normalization_mean"]), json.loads(meta["normalization_std"])
    detection = tune_detection_threshold(model, mean, std, cd3_patch_table().query("split == 'tune'"))
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
        meta["nms_box_um"], meta["nms_iou"] = str(detection["nms_box_um"]), str(detection["nms_iou"])
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
