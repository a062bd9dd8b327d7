"""Train the CD3 lymphocyte CNN on the gastric CD3 IHC patches.

Usage::

    python -m core.training.cd3 --layout compact --epochs 15 --out weights/cd3-ihc-cnn-v1.safetensors

Method (paper §III.C and §IV): lymphocyte (positive) versus everything else
(negative + background), softmax cross-entropy, Adam, rotation and reflection
augmentation. Departures, stated in the model card: small shifts (±4 px, the
half-stride of dense inference) and mild colour jitter as extra augmentation,
a cosine learning-rate schedule, and epoch and threshold chosen on a separate
``tune`` split so that the reported ``validation`` metrics are untouched.
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

from core.datasets import CD3_DATA_DIR, cd3_patch_table, read_patches
from core.metrics import best_f1_threshold, binary_metrics
from core.models.cd3_cnn import CD3CNN

SHIFT_PX = 4


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
        order = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch : (b + 1) * args.batch]
            if len(idx) < 2:
                continue
            xb = (augment(x_train[idx], gen) - m) / s
            loss = nn.functional.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        prob = predict_proba(model, arrays["tune"], mean, std)
        thr, f1 = best_f1_threshold(labels["tune"], prob)
        history.append({"epoch": epoch + 1, "train_loss": total / len(x_train), "tune_f1": f1, "tune_threshold": thr,
                        "elapsed_s": time.time() - t0})
        print(json.dumps(history[-1]), flush=True)
        if f1 > best["f1"]:
            best = {"f1": f1, "threshold": thr, "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    model.load_state_dict(best["state"], strict=True)
    val_prob = predict_proba(model, arrays["validation"], mean, std)
    val = binary_metrics(labels["validation"], val_prob >= best["threshold"])
    val_05 = binary_metrics(labels["validation"], val_prob >= 0.5)
    result = {
        "layout": args.layout,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "epochs": args.epochs, "best_epoch": best["epoch"], "batch": args.batch, "lr": args.lr,
        "weight_decay": args.weight_decay, "seed": args.seed, "threads": args.threads,
        "train_time_s": round(time.time() - t0, 1),
        "threshold": best["threshold"], "tune_f1": best["f1"],
        "validation": val, "validation_at_0.5": val_05,
        "split_counts": {k: {"n": int(len(v)), "positive": int(v.label.sum())} for k, v in parts.items()},
        "normalization_mean": mean.tolist(), "normalization_std": std.tolist(),
        "history": history,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, out, mean, std, best["threshold"], args.layout, args.half)
    out.with_suffix(".train.json").write_text(json.dumps(result, indent=2))
    return result


def save_weights(model: nn.Module, path: Path, mean, std, threshold: float, layout: str, half: bool) -> None:
    """Write the state dict as safetensors, with the preprocessing contract in its metadata."""
    from safetensors.torch import save_file

    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "model": "CD3CNN", "layout": layout, "input": "(N, 3, H, W) float32 RGB: (x / 255 - mean) / std",
        "normalization_mean": json.dumps([float(v) for v in mean]),
        "normalization_std": json.dumps([float(v) for v in std]),
        "threshold": str(threshold), "dtype": "float16" if half else "float32",
    }
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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--half", action="store_true", help="store float16 weights")
    p.add_argument("--out", required=True, help="output .safetensors path")
    args = p.parse_args(argv)
    result = train(args)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
