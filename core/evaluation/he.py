"""Evaluation of ``he-til`` on the H&E colorectal nuclei (recipe ``he-points``; ``python -m core evaluate --scenario he-til``).

Detection (S-DRDIN §2.5): a predicted cell is a true positive when it is matched one-to-one
to an annotated nucleus within a radius (:func:`core.evaluation.metrics.match_points`); precision,
recall and F1 are pooled over the images of the split. Two radii are reported: the paper's
10 px at 0.44 µm/px (4.4 µm, 8 px here) and 6 px at 0.55 µm/px (3.3 µm), the radius usually
used on this data set.

Classification: on the matched cells whose annotated nucleus has a class, precision, recall
and F1 per class and their average weighted by the classes' support (the proportion of
cell types, as in S-DRDIN Table 3).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from core.evaluation.datasets_he import HE_CLASSES, HE_MPP, HEImage, read_he_split
from core.evaluation.metrics import match_points, precision_recall_f1

#: Match radii in µm: the S-DRDIN paper's 10 px at 0.44 µm/px, and 6 px at this data's 0.55 µm/px.
MATCH_RADII_UM = {"paper_10px_at_0.44": 10 * 0.44, "usual_6px_at_0.55": 6 * HE_MPP}
#: The headline radius (for threshold tuning and checkpoint choice).
PRIMARY_RADIUS = "usual_6px_at_0.55"

PAPER_RESULTS = {
    "s_drdin_mihc": {"detection_f1": 0.835, "detection_precision": 0.941, "detection_recall": 0.750,
                     "classification_weighted_f1": 0.867, "classification_weighted_precision": 0.870,
                     "classification_weighted_recall": 0.872,
                     "note": "S-DRDIN paper, Tables 2-3: ovarian cancer mIHC, 6 cell types, its own test slides (not this data)"},
    "sirinukunwattana_2016_this_dataset": {"detection_f1": 0.802, "classification_weighted_f1_with_nep": 0.784,
                                           "note": "Sirinukunwattana et al., IEEE TMI 2016 (SC-CNN; SC-CNN + NEP), on this data set with their own 2-fold split of all 100 images"},
}


def classification_metrics(true_label: np.ndarray, pred_label: np.ndarray, n_classes: int = len(HE_CLASSES),
                           names: tuple[str, ...] = HE_CLASSES) -> dict:
    """Per-class and support-weighted precision, recall and F1 of labelled cells.

    Parameters
    ----------
    true_label, pred_label : (N,) int in [0, n_classes)

    Returns
    -------
    dict
        ``weighted_precision``, ``weighted_recall``, ``weighted_f1``, ``accuracy``, ``n``, and
        ``per_class``: name → precision, recall, f1, support.
    """
    t = np.asarray(true_label, int)
    p = np.asarray(pred_label, int)
    per, wp, wr, wf = {}, 0.0, 0.0, 0.0
    n = len(t)
    for k in range(n_classes):
        tp = int(np.sum((t == k) & (p == k)))
        npred, support = int(np.sum(p == k)), int(np.sum(t == k))
        prec = tp / npred if npred else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[names[k]] = {"precision": prec, "recall": rec, "f1": f1, "support": support}
        if n:
            wp, wr, wf = wp + prec * support / n, wr + rec * support / n, wf + f1 * support / n
    return {"weighted_precision": wp, "weighted_recall": wr, "weighted_f1": wf,
            "accuracy": float(np.mean(t == p)) if n else 0.0, "n": n, "per_class": per}


def score_detections(results: list[tuple[np.ndarray, np.ndarray]], images: list[HEImage], radius_px: float) -> dict:
    """Detection and classification metrics pooled over images.

    Parameters
    ----------
    results : per image, (xy (N, 2) float x, y in pixels, label (N,) int class index)
    images : the annotated images, same order
    radius_px : match radius in pixels

    Returns
    -------
    dict
        ``detection`` (precision, recall, f1, tp, fp, fn) and ``classification``
        (see :func:`classification_metrics`) on matched cells with an annotated class.
    """
    return pool_matches(match_images(results, images, radius_px))


class ImageMatches(NamedTuple):
    """Matching of one image: detection counts and the classes of its matched, classed nuclei."""

    tp: int
    fp: int
    fn: int
    true_class: np.ndarray  # (M,) int, annotated class of each matched nucleus that has one
    pred_class: np.ndarray  # (M,) int, predicted class of the same cells


def match_images(results: list[tuple[np.ndarray, np.ndarray]], images: list[HEImage], radius_px: float) -> list[ImageMatches]:
    """One :class:`ImageMatches` per image (parameters as :func:`score_detections`)."""
    rows = []
    for (xy, lab), im in zip(results, images):
        pi, ti = match_points(xy, im.points_xy, radius_px)
        has = im.labels[ti] >= 0
        rows.append(ImageMatches(len(pi), len(xy) - len(pi), len(im.points_xy) - len(pi), im.labels[ti][has], np.asarray(lab)[pi][has]))
    return rows


def pool_matches(rows: list[ImageMatches]) -> dict:
    """Detection and classification metrics of :func:`match_images` rows, pooled (see :func:`score_detections`)."""
    tp, fp, fn = (sum(r.tp for r in rows), sum(r.fp for r in rows), sum(r.fn for r in rows))
    t = np.concatenate([r.true_class for r in rows]) if rows else np.zeros(0, int)
    p = np.concatenate([r.pred_class for r in rows]) if rows else np.zeros(0, int)
    return {"detection": precision_recall_f1(tp, fp, fn), "classification": classification_metrics(t, p)}


def headline_metrics(rows: list[ImageMatches]) -> dict:
    """Detection F1 and recall, weighted class F1 and inflammatory F1 of :func:`match_images` rows, pooled."""
    pooled = pool_matches(rows)
    cls = pooled["classification"]
    return {"detection_f1": pooled["detection"]["f1"], "detection_recall": pooled["detection"]["recall"],
            "classification_weighted_f1": cls["weighted_f1"],
            "inflammatory_f1": cls["per_class"]["inflammatory"]["f1"]}


def bootstrap_ci(rows: list[ImageMatches], n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile confidence intervals of the pooled metrics, resampling whole images.

    Images, not cells, are resampled with replacement (cells of one field are not independent),
    so the interval reflects field-to-field variation.

    Parameters
    ----------
    rows : output of :func:`match_images` (one row per image)
    n_resamples : int, bootstrap resamples
    seed : int, seed of the resampling (the intervals are reproducible)
    level : float in (0, 1)

    Returns
    -------
    dict
        ``detection_f1``, ``classification_weighted_f1`` and ``inflammatory_f1``, each [low, high];
        ``level``, ``n_resamples`` and ``unit`` ("image").
    """
    rng = np.random.default_rng(seed)
    keys = ("detection_f1", "classification_weighted_f1", "inflammatory_f1")
    draws = [headline_metrics([rows[i] for i in rng.integers(0, len(rows), len(rows))]) for _ in range(n_resamples)]
    samples = {k: [d[k] for d in draws] for k in keys}
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out = {k: [float(v) for v in np.percentile(samples[k], q)] for k in keys}
    return out | {"level": level, "n_resamples": n_resamples, "unit": "image"}


def _round(d):
    if isinstance(d, dict):
        return {k: _round(v) for k, v in d.items()}
    return round(d, 4) if isinstance(d, float) else d


#: Fixed re-stainings for the stain-robustness check: (name, haematoxylin factor, eosin factor).
RESTAININGS = (("haematoxylin x0.7", 0.7, 1.0), ("haematoxylin x1.3", 1.3, 1.0), ("eosin x0.6", 1.0, 0.6),
               ("eosin x1.5", 1.0, 1.5), ("both x0.75", 0.75, 0.75), ("both x1.3", 1.3, 1.3))


def restain(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Re-stain RGB images in haematoxylin-eosin-DAB optical density space.

    Colour deconvolution (Ruifrok & Johnston 2001, ``skimage.color.hed_from_rgb``) of the
    optical density into stain concentrations, ``conc * scale + shift`` per image and stain,
    and back (Beer-Lambert). Nothing is clipped in stain space, so scale 1 and shift 0 give
    the image back (to 1/255).

    Parameters
    ----------
    x : (B, 3, H, W) float RGB in [0, 1]
    scale, shift : (B, 3) float, per image: haematoxylin, eosin, residual (DAB) channel

    Returns
    -------
    (B, 3, H, W) float RGB in [0, 1]
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    to_hed = torch.as_tensor(hed_from_rgb, dtype=x.dtype)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=x.dtype)
    od = -torch.log10(x.clamp(min=1 / 255))
    conc = torch.einsum("bchw,cd->bdhw", od, to_hed)
    conc = conc * scale[:, :, None, None] + shift[:, :, None, None]
    return torch.pow(10.0, -torch.einsum("bdhw,dc->bchw", conc, to_rgb)).clamp(0, 1)


def restain_he(rgb: np.ndarray, haematoxylin: float, eosin: float) -> np.ndarray:
    """Re-stain an H&E image: scale its haematoxylin and eosin concentrations.

    :func:`restain` with fixed factors: simulates a lighter or heavier
    stain, as between laboratories; the tissue and nuclei stay put.

    Parameters
    ----------
    rgb : (H, W, 3) uint8
    haematoxylin, eosin : float > 0, concentration factors (1 = unchanged)

    Returns
    -------
    (H, W, 3) uint8
    """
    x = torch.from_numpy(np.array(rgb, dtype=np.float64)).permute(2, 0, 1)[None] / 255.0
    y = restain(x, torch.tensor([[haematoxylin, eosin, 1.0]], dtype=x.dtype), torch.zeros(1, 3, dtype=x.dtype))
    return np.round(y[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def evaluate_he(split: str = "validation", data: str | None = None, device: str | None = None, model=None,
                precision: str = "float32", restained: bool = False) -> dict:
    """Metrics of the shipped ``he-til`` model on one split of the H&E data.

    Parameters
    ----------
    split : {"validation", "tune", "fit", "train"}
        ``validation`` is the reported split; ``tune`` (held-out train/ images) is where the
        threshold was chosen.
    data : folder of he-crc-cell-points (default ``../shared/data/he-crc-cell-points``)
    device : "cpu", "cuda" or None
    model : an already loaded :class:`core.scenarios.he_til.HETILModel`, optional
    precision : {"float32", "bfloat16"}, when ``model`` is not given
    restained : also score the split re-stained by each of :data:`RESTAININGS`
        (:func:`restain_he`; detection F1, weighted class F1, inflammatory F1 at the 3.3 µm radius)

    Returns
    -------
    dict
        JSON-ready: per radius, detection and classification metrics; the threshold and
        post-processing sizes used; the published results beside them.

    Raises
    ------
    InputError (precision not supported on the device), FileNotFoundError (no data)
    """
    if model is None:
        from core.pipeline import load_model

        model = load_model("he-til", device, precision)
    images = read_he_split(split, data)
    results = []
    for im in images:
        xy, lab, *_ = model.detect(im.pixels)
        results.append((xy, lab))
    mpp = model.scenario.input_mpp
    out = {
        "scenario": "he-til", "split": split, "n_images": len(images),
        "n_annotated_nuclei": int(sum(len(im.points_xy) for im in images)),
        "n_classified_nuclei": int(sum(int((im.labels >= 0).sum()) for im in images)),
        "inference_precision": model.precision,
        "threshold": model.params.threshold,
        "postprocess_px": model.params.in_pixels(mpp),
        "radii": {},
    }
    matches = {}
    for name, r_um in MATCH_RADII_UM.items():
        matches[name] = rows = match_images(results, images, r_um / HE_MPP)
        out["radii"][name] = ({"radius_um": r_um, "radius_px": r_um / HE_MPP} | pool_matches(rows)
                              | {"ci95_image_bootstrap": bootstrap_ci(rows)})
    if restained:
        primary_px = MATCH_RADII_UM[PRIMARY_RADIUS] / HE_MPP
        out["restained"] = {"radius": PRIMARY_RADIUS, "method": "colour deconvolution (skimage hed_from_rgb), H and E concentrations scaled (restain_he)",
                            "unchanged": headline_metrics(matches[PRIMARY_RADIUS])}
        for name, h, e in RESTAININGS:
            res = [model.detect(restain_he(im.pixels, h, e))[:2] for im in images]
            out["restained"][name] = headline_metrics(match_images(res, images, primary_px))
    out["published"] = PAPER_RESULTS
    return _round(out)
