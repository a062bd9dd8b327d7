"""Evaluation of the tissue-compartment model (CD-UNET): synthetic multistain sections, real weak labels, necrosis masks.

Figures (all per class: background, tumour, stroma, necrosis):

- **synthetic held-out sections** (:func:`evaluate_synthetic`): per-class F1 on sections of the
  compartment recipe with seeds never used in training or tuning (:data:`EVAL_SEEDS`), per stain
  of the paper's nine and over all; and the stromal TIL % of the same lymphocytes measured with
  the predicted and with the ground-truth compartments (:func:`core.spatial.predicted_compartments.stromal_til_percent`).
- **real weak labels** (:func:`evaluate_real`): on each H&E source's validation split, per-class
  F1 on the pixels the weak-label rule labels (tumour, stroma, glass; unknown pixels left out),
  and the figures the issue judges: the share of annotated tumour cells inside the predicted
  tumour compartment and of annotated stromal cells inside the predicted stroma.
- **real necrosis** (:func:`evaluate_necrosis`): necrosis F1 (necrosis against everything else)
  on the validation patches of he-necrosis-tcga.

``python -m core.evaluation.compartments --weights W.safetensors`` prints all of them as JSON
(the model card's metrics).

References
----------
CD-UNET paper §3 (F1 per class; Table 2: CD-UNET background 0.99, tumour 0.88, tissue 0.90,
necrosis 0.80; U-Net 0.92 / 0.52 / 0.89 / 0.60); Salgado et al. 2015 (stromal TILs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from core.errors import InputError
from core.generator.compartments import COMPARTMENT_NAMES, STAINS
from core.spatial.predicted_compartments import stromal_til_percent

#: Seeds of the synthetic sections: training pool, tuning (checkpoint choice), held-out evaluation.
TRAIN_SEEDS = (100_000, 199_999)
TUNE_SEEDS = (200_000, 299_999)
EVAL_SEEDS = (300_000, 399_999)
#: Seeds per stain are spaced by this, so that adding sections to one stain never reuses another's.
SEEDS_PER_STAIN = 1_000
#: The paper's Table 2 (testing F1), for the card.
PAPER_TABLE2 = {"cd-unet": {"background": 0.99, "tumour": 0.88, "stroma": 0.90, "necrosis": 0.80},
                "unet": {"background": 0.92, "tumour": 0.52, "stroma": 0.89, "necrosis": 0.60}}
#: The issue's judged figures on real H&E: tumour cells in predicted tumour, stromal cells in predicted stroma.
JUDGED_SHARES = {"tumour_cells_in_tumour": 0.85, "stromal_cells_in_stroma": 0.75}


def stain_seeds(first: int, stain_index: int, n: int) -> list[int]:
    """``n`` seeds of stain number ``stain_index`` (order of :data:`STAINS`) from the block starting at ``first``."""
    start = first + stain_index * SEEDS_PER_STAIN
    return list(range(start, start + n))


def confusion(pred: np.ndarray, truth: np.ndarray, n_classes: int = 4) -> np.ndarray:
    """Pixel confusion matrix; truth values outside [0, n_classes) are left out.

    Parameters
    ----------
    pred, truth : (H, W) (or any equal shapes) integer label maps

    Returns
    -------
    (n_classes, n_classes) int64, rows truth, columns prediction
    """
    p = np.asarray(pred).ravel().astype(np.int64)
    t = np.asarray(truth).ravel().astype(np.int64)
    ok = (t >= 0) & (t < n_classes) & (p >= 0) & (p < n_classes)
    return np.bincount(t[ok] * n_classes + p[ok], minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1_from_confusion(cm: np.ndarray, names: tuple[str, ...] = COMPARTMENT_NAMES) -> dict:
    """Per-class precision, recall, F1 and support from a confusion matrix (rows truth).

    Returns
    -------
    dict of class name → {"precision", "recall", "f1", "support" (truth pixels), "predicted"
    (prediction pixels)}. A class absent from the truth has no recall and no F1 (None), so it
    does not enter :func:`macro_f1`; its precision is 0.0 when it was predicted anyway (the
    false area is in "predicted"), None when it was not.
    """
    out = {}
    for k, name in enumerate(names):
        tp = int(cm[k, k])
        fp = int(cm[:, k].sum()) - tp
        fn = int(cm[k, :].sum()) - tp
        if tp + fn == 0:
            out[name] = {"precision": 0.0 if fp else None, "recall": None, "f1": None, "support": 0, "predicted": fp}
            continue
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        out[name] = {"precision": round(prec, 4), "recall": round(rec, 4),
                     "f1": round(2 * tp / (2 * tp + fp + fn), 4), "support": tp + fn, "predicted": tp + fp}
    return out


def macro_f1(per_class: dict) -> float | None:
    """Mean F1 over the classes that have one (those present in the truth; see :func:`f1_from_confusion`)."""
    vals = [v["f1"] for v in per_class.values() if v["f1"] is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def labels_at(label_map: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    """(N,) labels of ``label_map`` (H, W) at points (N, 2) float x, y pixels (pixel centres at integers; clipped to the map)."""
    xy = np.asarray(points_xy, np.float64).reshape(-1, 2)
    h, w = label_map.shape
    ix = np.clip(np.round(xy[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.round(xy[:, 1]).astype(int), 0, h - 1)
    return label_map[iy, ix]


def point_shares(pred: np.ndarray, points_xy: np.ndarray, roles: np.ndarray) -> dict:
    """The issue's judged figures on one field or many: annotated cells inside their predicted compartment.

    Parameters
    ----------
    pred : (H, W) label map (1 tumour, 2 stroma)
    points_xy : (N, 2) float x, y pixels of annotated nuclei (pixel centres at integers)
    roles : (N,) str; ``tumour`` and ``stroma`` points are scored

    Returns
    -------
    dict: ``n_tumour``, ``tumour_in_tumour`` (count), ``n_stroma``, ``stroma_in_stroma`` (count)
    """
    roles = np.asarray(roles).astype(str)
    lab = labels_at(pred, points_xy)
    t, s = roles == "tumour", roles == "stroma"
    return {"n_tumour": int(t.sum()), "tumour_in_tumour": int((lab[t] == 1).sum()),
            "n_stroma": int(s.sum()), "stroma_in_stroma": int((lab[s] == 2).sum())}


def _shares(c: dict) -> dict:
    return {"tumour_cells_in_tumour": round(c["tumour_in_tumour"] / c["n_tumour"], 4) if c["n_tumour"] else None,
            "stromal_cells_in_stroma": round(c["stroma_in_stroma"] / c["n_stroma"], 4) if c["n_stroma"] else None,
            "n_tumour_cells": c["n_tumour"], "n_stromal_cells": c["n_stroma"]}


def predict_probabilities(net: torch.nn.Module, rgb: np.ndarray, tile_px: int = 512, overlap_px: int = 64,
                          device: torch.device | str = "cpu") -> np.ndarray:
    """Class probabilities of an image at the model's mpp, window by window (the dense tiler).

    Parameters
    ----------
    net : CD-UNET (:class:`core.nets.cd_unet.CDUNet`) in eval mode
    rgb : (H, W, 3) uint8 RGB at the model's mpp
    tile_px, overlap_px : window and overlap, pixels

    Returns
    -------
    (H, W, 4) float32 probabilities summing to 1
    """
    from core.nets.cd_unet import pad_to_multiple
    from core.tiling import tile_dense

    mult = net.size_multiple

    def infer(window):
        x = torch.from_numpy(np.ascontiguousarray(window)).to(device).permute(2, 0, 1)[None].float() / 255.0
        x, (h, w) = pad_to_multiple(x, mult)
        with torch.inference_mode():
            p = torch.softmax(net(x), dim=1)[0, :, :h, :w]
        return p.permute(1, 2, 0).float().cpu().numpy()

    return tile_dense(infer, rgb, tile_px, overlap_px)


def predict_labels(net: torch.nn.Module, rgb: np.ndarray, **kw) -> np.ndarray:
    """Arg-max compartment of each pixel: (H, W) uint8 in {0, 1, 2, 3} (see :func:`predict_probabilities`)."""
    return np.argmax(predict_probabilities(net, rgb, **kw), axis=-1).astype(np.uint8)


def _where_stromal_lymphocytes_go(truth: np.ndarray, pred: np.ndarray, lym_xy: np.ndarray) -> dict | None:
    """Share of the lymphocytes lying in true stroma that fall in each predicted compartment.

    Parameters
    ----------
    truth, pred : (H, W) uint8 label maps (0 background, 1 tumour, 2 stroma, 3 necrosis)
    lym_xy : (N, 2) float lymphocyte centroids (x, y) in pixels of the maps

    Returns
    -------
    {compartment: share in [0, 1]} over :data:`COMPARTMENT_NAMES`, or None when no lymphocyte
    lies in true stroma. Stromal lymphocytes predicted as tumour make the stromal TIL % too low
    and the intratumoral density too high.
    """
    in_stroma = labels_at(truth, lym_xy) == 2
    if not in_stroma.any():
        return None
    dest = np.bincount(labels_at(pred, lym_xy)[in_stroma], minlength=len(COMPARTMENT_NAMES))
    return {c: round(float(v) / int(in_stroma.sum()), 4) for c, v in zip(COMPARTMENT_NAMES, dest)}


def evaluate_synthetic(net: torch.nn.Module, per_stain: int = 4, size_px: int = 384, first_seed: int = EVAL_SEEDS[0],
                       stains: tuple[str, ...] = tuple(STAINS), device="cpu") -> dict:
    """Per-class F1 and stromal TIL % agreement on synthetic sections, per stain and overall.

    Parameters
    ----------
    net : CD-UNET in eval mode
    per_stain : sections per stain
    size_px : section side, pixels at 1.0 µm/px
    first_seed : first seed of the block (:data:`EVAL_SEEDS` for held-out figures, :data:`TUNE_SEEDS` for tuning)

    Returns
    -------
    dict: ``per_stain`` {stain: {"per_class", "macro_f1"}}, ``overall`` {"per_class",
    "macro_f1"}, ``hardest_stains`` (the three lowest macro F1), ``stromal_til`` (mean absolute
    difference in percentage points between predicted and ground-truth compartments, share of
    sections within 5 points, and every pair), ``seeds``, ``size_px``
    """
    from core.generator.compartments import generate_compartments

    total = np.zeros((4, 4), np.int64)
    per = {}
    til = []
    for k, stain in enumerate(STAINS):
        if stain not in stains:
            continue
        cm = np.zeros((4, 4), np.int64)
        for seed in stain_seeds(first_seed, k, per_stain):
            s = generate_compartments((size_px, size_px), seed, stain=stain)
            pred = predict_labels(net, s.image, device=device)
            cm += confusion(pred, s.labels)
            lym = s.cells[s.cells["kind"] == "lymphocyte"][["x_px", "y_px"]].to_numpy()
            t_true = stromal_til_percent(s.labels, s.mpp, lym)["percent"]
            t_pred = stromal_til_percent(pred, s.mpp, lym)["percent"]
            if t_true is not None:
                til.append({"stain": stain, "seed": seed, "true_percent": round(t_true, 2),
                            "predicted_percent": None if t_pred is None else round(t_pred, 2),
                            "exact_mask_percent": round(s.stromal_til_percent, 2),
                            "stromal_lymphocytes_predicted_as": _where_stromal_lymphocytes_go(s.labels, pred, lym)})
        total += cm
        pc = f1_from_confusion(cm)
        per[stain] = {"per_class": pc, "macro_f1": macro_f1(pc)}
    pc = f1_from_confusion(total)
    diffs = [abs(t["predicted_percent"] - t["true_percent"]) if t["predicted_percent"] is not None else 100.0 for t in til]
    signed = [t["predicted_percent"] - t["true_percent"] for t in til if t["predicted_percent"] is not None]
    moved = [t["stromal_lymphocytes_predicted_as"] for t in til if t["stromal_lymphocytes_predicted_as"]]
    return {
        "split": (f"synthetic held-out sections, {per_stain} per stain, seeds from {first_seed} "
                  f"({SEEDS_PER_STAIN} apart per stain)"),
        "size_px": size_px, "mpp": 1.0, "per_stain": per,
        "overall": {"per_class": pc, "macro_f1": macro_f1(pc)},
        "hardest_stains": sorted(per, key=lambda s: per[s]["macro_f1"] or 0.0)[:3],
        "stromal_til": {"mean_abs_diff_points": round(float(np.mean(diffs)), 3) if diffs else None,
                        "share_within_5_points": round(float(np.mean(np.asarray(diffs) <= 5.0)), 4) if diffs else None,
                        "mean_signed_diff_points": round(float(np.mean(signed)), 3) if signed else None,
                        "stromal_lymphocytes_predicted_as_mean": (
                            {c: round(float(np.mean([m[c] for m in moved])), 4) for c in COMPARTMENT_NAMES} if moved else None),
                        "n_sections": len(til), "sections": til,
                        "definition": "the same lymphocytes (ground-truth positions) scored with the predicted and with "
                                      "the ground-truth compartments (TILs Working Group: stromal area covered / stromal "
                                      "area, 38.5 µm² per cell)"},
    }


def evaluate_real(net: torch.nn.Module, split: str = "validation", sources=("crc", "brca-m2c", "consep"),
                  fields: dict | None = None, device="cpu") -> dict:
    """Weak-label F1 and the judged cell shares on each H&E source's ``split``.

    Parameters
    ----------
    net : CD-UNET in eval mode
    split : ``validation`` (the card) or ``tune`` (checkpoint choice)
    fields : source → list of :class:`core.training.compartment_labels.LabelledField`, when already read

    Returns
    -------
    dict per source: ``per_class`` (background, tumour, stroma on the labelled pixels; necrosis
    predicted there is an error), ``judged`` (:func:`point_shares` as shares), ``n_fields``; and
    ``mean_judged`` over sources.
    """
    from core.training.compartment_labels import weak_label_fields

    out = {}
    for src in sources:
        fl = fields[src] if fields and src in fields else weak_label_fields(src, split)
        cm = np.zeros((4, 4), np.int64)
        counts = {"n_tumour": 0, "tumour_in_tumour": 0, "n_stroma": 0, "stroma_in_stroma": 0}
        for f in fl:
            pred = predict_labels(net, f.pixels, device=device)
            cm += confusion(pred, f.labels)
            for k, v in point_shares(pred, f.points_xy, f.roles).items():
                counts[k] += v
        pc = f1_from_confusion(cm)
        out[src] = {"split": split, "n_fields": len(fl), "per_class": {k: v for k, v in pc.items() if k != "necrosis"},
                    "judged": _shares(counts)}
    tt = [v["judged"]["tumour_cells_in_tumour"] for v in out.values() if v["judged"]["tumour_cells_in_tumour"] is not None]
    ss = [v["judged"]["stromal_cells_in_stroma"] for v in out.values() if v["judged"]["stromal_cells_in_stroma"] is not None]
    out["mean_judged"] = {"tumour_cells_in_tumour": round(float(np.mean(tt)), 4) if tt else None,
                          "stromal_cells_in_stroma": round(float(np.mean(ss)), 4) if ss else None,
                          "targets": JUDGED_SHARES}
    return out


def evaluate_necrosis(net: torch.nn.Module, split: str = "validation", fields=None, device="cpu") -> dict:
    """Necrosis F1 (necrosis against everything else) on the he-necrosis-tcga patches of ``split``.

    Returns
    -------
    dict: ``necrosis`` {"precision", "recall", "f1", "support"}, ``n_fields``, ``note``
    """
    from core.training.compartment_labels import necrosis_fields

    fl = fields if fields is not None else necrosis_fields(split)
    tp = fp = fn = 0
    for f in fl:
        pred = predict_labels(net, f.pixels, device=device) == 3
        truth = f.labels == 3
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {"split": split, "n_fields": len(fl),
            "necrosis": {"precision": round(tp / max(tp + fp, 1), 4), "recall": round(tp / max(tp + fn, 1), 4),
                         "f1": round(f1, 4), "support": tp + fn},
            "note": "20 heavily overlapping crops of one or two necrotic regions (TCGA): a check of the class, not an "
                    "accuracy claim; pixel size assumed 0.5 µm/px"}


def load_weights(path: str | Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """A CD-UNET from a training run's safetensors (configuration in its metadata), in eval mode.

    Raises
    ------
    InputError
        If the file is not CD-UNET weights written by :mod:`core.training.cd_unet`.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from core.nets.cd_unet import build

    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    if meta.get("model") != "CD-UNET":
        raise InputError(f"{path.name} is not CD-UNET weights (metadata model={meta.get('model')!r})")
    net = build(json.loads(meta["config"]))
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.to(device).eval(), meta


def evaluate_weights(path: str | Path, per_stain: int = 4, size_px: int = 384, device="cpu") -> dict:
    """Every held-out figure of one weights file (the model card's metrics)."""
    torch.set_grad_enabled(False)
    net, meta = load_weights(path, device)
    t0 = time.time()
    out = {"weights": Path(path).name, "variant": meta.get("variant"),
           "synthetic": evaluate_synthetic(net, per_stain, size_px, device=device),
           "real_weak_labels": evaluate_real(net, "validation", device=device),
           "real_necrosis": evaluate_necrosis(net, "validation", device=device)}
    out["evaluation_time_s"] = round(time.time() - t0, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.evaluation.compartments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="CD-UNET .safetensors written by core.training.cd_unet")
    p.add_argument("--per-stain", type=int, default=4, help="held-out synthetic sections per stain")
    p.add_argument("--size", type=int, default=384, help="synthetic section side, px at 1.0 µm/px")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(evaluate_weights(args.weights, args.per_stain, args.size, args.device), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
