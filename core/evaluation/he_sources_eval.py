"""Per-source evaluation of ``he-til`` (``python -m core evaluate --scenario he-til --dataset NAME``).

Scores the model on each labelled H&E source of :mod:`core.evaluation.he_sources` (CRC, one
laboratory; BRCA-M2C, TCGA breast from many centres; CoNSeP, another colorectal laboratory
at 40x), each read at the model's 0.55 µm/px, so that "H&E TILs on other laboratories'
slides" is measured rather than assumed. The CRC figures of the model card stay with
:func:`core.evaluation.he.evaluate_he` (``--dataset`` not given), which this module does not change.

Matching (the issue: "detection P/R/F1 within 3 µm")
----------------------------------------------------
Detection: predicted cells are matched one-to-one to *all* annotated nuclei (classed or not)
within :data:`MATCH_RADIUS_UM` = 3 µm (5.45 px at 0.55 µm/px) by minimum total distance
(:func:`core.evaluation.metrics.match_points`); TP = matched pairs, FP = unmatched
predictions, FN = unmatched nuclei, pooled over the images of the split.

Roles (:data:`ROLE_METRIC`): class-aware F1 on the same pairs. For role ``c``
(immune = inflammatory, tumour = epithelial, stroma = fibroblast, other = other):

- TP_c: matched pairs whose nucleus is annotated ``c`` and whose prediction is called ``c``;
- FP_c: predictions called ``c`` matched to a nucleus annotated with another class
  (``fp_misclassified``) plus unmatched predictions called ``c`` (``fp_unmatched``);
- FN_c: nuclei annotated ``c`` matched to a prediction of another class
  (``fn_misclassified``) plus unmatched nuclei annotated ``c`` (``fn_unmatched``);
- a pair whose nucleus has no class (label -1: CRC's unclassed nuclei) counts for no role,
  neither TP, FP nor FN, whatever the prediction is called;
- F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c).

This is the per-class F-score of MCSpatNet on BRCA-M2C except that MCSpatNet matches each
class's predictions to that class's dots separately (greedy, 1..6 px at 20x); that variant
is reported too (``f1_role_matching``: predictions called ``c``, less those paired with an
unclassed nucleus, matched one-to-one to nuclei annotated ``c`` within 3 µm). HoVer-Net's
F_c (Graham et al. 2019; ``compute_stats.py`` of vqdang/hover_net) uses the same pairs as here but counts
the misclassified pairs twice, F_c = 2 TP / (2 TP + 2 FP_misclassified + 2 FN_misclassified
+ FP_unmatched + FN_unmatched); it is given as ``f_c_hovernet`` beside the CoNSeP figure.
Roles are reported only where the source annotates them (BRCA-M2C has no "other"): a
prediction called "other" on BRCA-M2C is a miss (FN) for the nucleus's role and no FP.

``immune_recall`` = TP_immune / annotated immune nuclei: the share of annotated TILs found
*and* called immune (``immune_detected_share``: found, whatever they are called).

Uncertainty: percentile bootstrap over images (resampled with replacement, seed 0, 1000
resamples), as :func:`core.evaluation.he.bootstrap_ci`. CoNSeP's tiles of one source image
overlap and share nuclei, so there the unit resampled is the source image (its tiles together).
"""

from __future__ import annotations

import numpy as np

from core.errors import InputError
from core.evaluation.datasets_he import HE_CLASSES, HE_MPP, HE_ROLES, HEImage
from core.evaluation.he import PAPER_RESULTS
from core.evaluation.he_sources import HE_SOURCES, read_source_split
from core.evaluation.metrics import match_points, precision_recall_f1

#: Match radius of detection and roles, µm (the issue's "within 3 µm"; HoVer-Net's 12 px at 0.25 µm/px).
MATCH_RADIUS_UM = 3.0
#: Order in which roles are reported (TILs first).
ROLE_ORDER = ("immune", "tumour", "stroma", "other")
ROLE_METRIC = ("class-aware F1 within 3 um: detection is matched one-to-one on all annotated nuclei first; "
               "for role c, TP = pairs annotated c and called c, FP = predictions called c that are paired with a "
               "nucleus of another annotated class or unmatched, FN = nuclei annotated c that are called otherwise "
               "or unmatched; pairs with an unclassed nucleus (label -1) count for no role; F1 = 2TP/(2TP+FP+FN)")
_N_CLASSES = len(HE_CLASSES)
# Per-image count vector: detection tp, fp, fn; annotated immune nuclei detected (any class); then
# per class index k: tp, fp_misclassified, fp_unmatched, fn_misclassified, fn_unmatched,
# and the per-role matching variant's tp, fp, fn.
_HEAD = 4
_PER_CLASS = 8

#: Published figures to compare with, per source: what each measures and where it comes from.
PUBLISHED = {
    "crc": PAPER_RESULTS,
    "consep": {
        "hovernet_graham_2019": {
            "detection_f1": 0.748, "inflammatory_f_c": 0.631,
            "epithelial_f_c": "not found", "spindle_f_c": "not found", "other_f_c": "not found",
            "source": "Graham et al., HoVer-Net, Medical Image Analysis 58:101563 (2019), Table 4 (CoNSeP)",
            "measures": ("detection F1 (F_d) and type F-score F_c with misclassifications weighted 2 "
                         "(compare with f_c_hovernet); pairing within 12 px at 0.25 um/px (3 um, compute_stats.py "
                         "of vqdang/hover_net); trained on CoNSeP's 27 training images, scored on its 14 test images "
                         "(full 1000 px fields at 40x), which are not in ../shared/data: our 'validation' is held-out "
                         "tiles of 6 of the 27 training images"),
        },
    },
    "brca-m2c": {
        "mcspatnet_abousamra_2021": {
            "detection_f1": "not found", "lymphocyte_f1": "not found", "tumour_f1": "not found",
            "stromal_f1": "not found",
            "source": "Abousamra et al., Multi-Class Cell Detection Using Spatial Context Representation, ICCV 2021 (BRCA-M2C)",
            "measures": ("per-class F-score: each class's predictions matched to that class's dots, greedy nearest "
                         "within 1..6 px at 20x (about 0.5 um/px, up to about 3 um; 03_eval_localization_fscore.py "
                         "of TopoXLab/MCSpatNet; compare with f1_role_matching); on the authors' 30 test patches, "
                         "which are not in ../shared/data (our 'validation' is their 10 validation patches)"),
        },
    },
}


def _round(d):
    """Floats to 4 decimals, in nested dicts and lists (the intervals too)."""
    if isinstance(d, dict):
        return {k: _round(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_round(v) for v in d]
    return round(d, 4) if isinstance(d, float) else d


def _group(im: HEImage) -> str:
    """Bootstrap unit: the source image (a CoNSeP tile ``train_I_K`` belongs to ``train_I``)."""
    return im.name.rsplit("_", 1)[0] if im.source == "consep" else im.name


def image_counts(pred_xy: np.ndarray, pred_label: np.ndarray, im: HEImage, radius_px: float) -> np.ndarray:
    """Detection and role counts of one image (the rules of this module's docstring).

    Parameters
    ----------
    pred_xy : (P, 2) float x, y in pixels of ``im.pixels``
    pred_label : (P,) int class index into :data:`HE_CLASSES`
    im : the annotated image (``points_xy`` (T, 2) in the same pixels, ``labels`` (T,) int, -1 = no class)
    radius_px : float, match radius in pixels

    Returns
    -------
    (4 + 8 * 4,) int64
        Detection tp, fp, fn; annotated immune nuclei matched to any prediction; then per class
        index: tp, fp_misclassified, fp_unmatched, fn_misclassified, fn_unmatched, and the
        per-role matching variant's tp, fp, fn. Sum over images to pool; see :func:`counts_metrics`.
    """
    pred_xy = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    pred_label = np.asarray(pred_label, np.int64).reshape(-1)
    if len(pred_xy) != len(pred_label):
        raise InputError(f"got {len(pred_xy)} predicted points but {len(pred_label)} labels")
    labels = np.asarray(im.labels, np.int64)
    pi, ti = match_points(pred_xy, im.points_xy, radius_px)
    true_m, pred_m = labels[ti], pred_label[pi]
    pred_free = np.ones(len(pred_xy), bool)
    pred_free[pi] = False
    true_free = np.ones(len(labels), bool)
    true_free[ti] = False
    classed = true_m >= 0
    # predictions paired with an unclassed nucleus count for no role, in either variant
    scored_pred = np.ones(len(pred_xy), bool)
    scored_pred[pi[~classed]] = False
    out = np.zeros(_HEAD + _PER_CLASS * _N_CLASSES, np.int64)
    out[:3] = len(pi), len(pred_xy) - len(pi), len(labels) - len(pi)
    out[3] = int(np.sum(true_m == HE_ROLES.index("immune")))
    for k in range(_N_CLASSES):
        pk, tk = scored_pred & (pred_label == k), labels == k
        rpi, _ = match_points(pred_xy[pk], im.points_xy[tk], radius_px)
        out[_HEAD + _PER_CLASS * k: _HEAD + _PER_CLASS * (k + 1)] = (
            np.sum((true_m == k) & (pred_m == k)),
            np.sum(classed & (true_m != k) & (pred_m == k)),
            np.sum(pred_free & (pred_label == k)),
            np.sum((true_m == k) & (pred_m != k)),
            np.sum(true_free & (labels == k)),
            len(rpi), int(pk.sum()) - len(rpi), int(tk.sum()) - len(rpi),
        )
    return out


def counts_metrics(counts: np.ndarray, annotated: tuple[int, ...]) -> dict:
    """Detection, role and immune-recall metrics of pooled counts (:func:`image_counts` summed).

    Parameters
    ----------
    counts : (4 + 8 * 4,) int, pooled over images
    annotated : class indices the source annotates (roles reported)

    Returns
    -------
    dict
        ``detection`` (precision, recall, f1, tp, fp, fn); ``roles``: role name → precision,
        recall, f1, tp, fp, fn, fp_misclassified, fp_unmatched, fn_misclassified, fn_unmatched,
        f_c_hovernet, f1_role_matching; ``immune_recall``, ``immune_detected_share``.
    """
    c = np.asarray(counts, np.int64)
    roles = {}
    for name in ROLE_ORDER:
        k = HE_ROLES.index(name)
        if k not in annotated:
            continue
        tp, fp_m, fp_u, fn_m, fn_u, rtp, rfp, rfn = (int(v) for v in c[_HEAD + _PER_CLASS * k: _HEAD + _PER_CLASS * (k + 1)])
        denom = 2 * tp + 2 * fp_m + 2 * fn_m + fp_u + fn_u
        roles[name] = (precision_recall_f1(tp, fp_m + fp_u, fn_m + fn_u)
                       | {"fp_misclassified": fp_m, "fp_unmatched": fp_u, "fn_misclassified": fn_m, "fn_unmatched": fn_u,
                          "f_c_hovernet": 2 * tp / denom if denom else 0.0,
                          "f1_role_matching": precision_recall_f1(rtp, rfp, rfn)["f1"]})
    imm = _HEAD + _PER_CLASS * HE_ROLES.index("immune")
    n_immune = int(c[imm] + c[imm + 3] + c[imm + 4])
    return {"detection": precision_recall_f1(int(c[0]), int(c[1]), int(c[2])), "roles": roles,
            "immune_recall": int(c[imm]) / n_immune if n_immune else 0.0,
            "immune_detected_share": int(c[3]) / n_immune if n_immune else 0.0}


def bootstrap_source_ci(counts: np.ndarray, groups: list[str], annotated: tuple[int, ...], n_resamples: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict:
    """Percentile intervals of detection F1, each role's F1 and immune recall, resampling whole images.

    As :func:`core.evaluation.he.bootstrap_ci`: units (images, or CoNSeP source images) are drawn
    with replacement from one ``numpy.random.Generator`` seeded once, the counts of the drawn
    units pooled and the metrics recomputed.

    Parameters
    ----------
    counts : (N, 4 + 8 * 4) int, one row per image (:func:`image_counts`)
    groups : N unit names; the images of one name are drawn together
    annotated : class indices reported
    n_resamples, seed, level : bootstrap resamples, seed, interval level in (0, 1)

    Returns
    -------
    dict
        ``detection_f1``, ``<role>_f1`` per reported role and ``immune_recall``, each [low, high];
        ``level``, ``n_resamples``, ``seed``, ``unit``, ``n_units``.
    """
    names = sorted(set(groups))
    per_unit = np.stack([np.sum([row for row, g in zip(counts, groups) if g == name], axis=0) for name in names])
    rng = np.random.default_rng(seed)
    keys = ["detection_f1"] + [f"{r}_f1" for r in ROLE_ORDER if HE_ROLES.index(r) in annotated] + ["immune_recall"]
    samples = {k: [] for k in keys}
    for _ in range(n_resamples):
        m = counts_metrics(per_unit[rng.integers(0, len(names), len(names))].sum(axis=0), annotated)
        samples["detection_f1"].append(m["detection"]["f1"])
        samples["immune_recall"].append(m["immune_recall"])
        for r, v in m["roles"].items():
            samples[f"{r}_f1"].append(v["f1"])
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out = {k: [float(v) for v in np.percentile(samples[k], q)] for k in keys}
    unit = "source image (its overlapping tiles together)" if len(names) < len(groups) else "image"
    return out | {"level": level, "n_resamples": n_resamples, "seed": seed, "unit": unit, "n_units": len(names)}


def _load(model, device, precision):
    if model is None:
        from core.pipeline import load_model

        model = load_model("he-til", device, precision)
    return model


def evaluate_he_source(source: str, split: str = "validation", device: str | None = None, model=None,
                       precision: str = "float32", bootstrap: int = 1000, data=None) -> dict:
    """Detection and role metrics of ``he-til`` on one H&E source within 3 µm.

    Parameters
    ----------
    source : one of :data:`core.evaluation.he_sources.HE_SOURCES` ("crc", "brca-m2c", "consep")
    split : {"validation", "tune", "fit", "train"}; ``validation`` is never trained or tuned on
    device : "cpu", "cuda" or None, when ``model`` is not given
    model : a loaded model with ``detect(pixels)`` → (xy (N, 2) float x, y in pixels, label (N,)
        int class index into :data:`HE_CLASSES`, ...) for (H, W, 3) uint8 RGB at 0.55 µm/px; optional
    precision : {"float32", "bfloat16"}, when ``model`` is not given
    bootstrap : int, bootstrap resamples of the intervals (seed 0)
    data : folder of that source's data set (default ``../shared/data/<folder>``)

    Returns
    -------
    dict
        JSON-ready (rounded to 4 decimals): ``source``, ``split``, ``n_images``,
        ``n_annotated_nuclei``, ``n_classified_nuclei``, ``match_radius_um``, ``match_radius_px``,
        ``detection``, ``role_metric``, ``roles``, ``immune_recall``, ``immune_detected_share``,
        ``bootstrap_95ci``, ``model`` (threshold, inference precision) and ``published``.

    Raises
    ------
    InputError
        Unknown source or split, a missing data folder, an empty split.

    References
    ----------
    Graham et al., HoVer-Net, Medical Image Analysis 2019, Table 4 (F_d, F_c on CoNSeP); Abousamra et al.,
    MCSpatNet, ICCV 2021 (BRCA-M2C per-class F-score).
    """
    images = read_source_split(source, split, data)
    if not images:
        raise InputError(f"source {source!r} has no images in split {split!r}")
    model = _load(model, device, precision)
    radius_px = MATCH_RADIUS_UM / HE_MPP
    counts = np.stack([image_counts(*model.detect(im.pixels)[:2], im, radius_px) for im in images])
    annotated = tuple(images[0].annotated)
    out = {"scenario": "he-til", "source": source, "split": split, "n_images": len(images),
           "n_annotated_nuclei": int(sum(len(im.points_xy) for im in images)),
           "n_classified_nuclei": int(sum(int((im.labels >= 0).sum()) for im in images)),
           "match_radius_um": MATCH_RADIUS_UM, "match_radius_px": radius_px,
           "model": {"threshold": getattr(getattr(model, "params", None), "threshold", None),
                     "inference_precision": getattr(model, "precision", None)}}
    pooled = counts_metrics(counts.sum(axis=0), annotated)
    out |= {"detection": pooled["detection"], "role_metric": ROLE_METRIC, "roles": pooled["roles"],
            "immune_recall": pooled["immune_recall"], "immune_detected_share": pooled["immune_detected_share"],
            "bootstrap_95ci": bootstrap_source_ci(counts, [_group(im) for im in images], annotated, bootstrap),
            "published": PUBLISHED[source]}
    return _round(out)


def evaluate_he_dataset(dataset: str, split: str = "validation", data=None, device: str | None = None, model=None,
                        precision: str = "float32", bootstrap: int = 1000) -> dict:
    """``--dataset NAME``: :func:`evaluate_he_source` for one source, or for each with ``all``.

    Parameters
    ----------
    dataset : one of :data:`HE_SOURCES`, or "all"
    split, device, model, precision, bootstrap : as :func:`evaluate_he_source`
    data : one source's data folder; refused with "all"

    Returns
    -------
    dict
        One source's result; for "all": ``scenario``, ``split``, ``sources`` (source → result)
        and ``mean_over_sources`` (unweighted mean of detection F1 and immune F1 over the sources).

    Raises
    ------
    InputError
        Unknown name, ``data`` with "all", and as :func:`evaluate_he_source`.
    """
    if dataset != "all" and dataset not in HE_SOURCES:
        raise InputError(f"unknown --dataset {dataset!r}; choose one of {', '.join(HE_SOURCES)} or all")
    if dataset != "all":
        return evaluate_he_source(dataset, split, device, model, precision, bootstrap, data)
    if data:
        raise InputError("--data names one source's folder: with --dataset all each source reads its own folder "
                         "under ../shared/data; pass --dataset NAME to use --data")
    model = _load(model, device, precision)
    sources = {s: evaluate_he_source(s, split, device, model, precision, bootstrap) for s in HE_SOURCES}
    mean = {"detection_f1": float(np.mean([r["detection"]["f1"] for r in sources.values()])),
            "immune_f1": float(np.mean([r["roles"]["immune"]["f1"] for r in sources.values()])),
            "immune_recall": float(np.mean([r["immune_recall"] for r in sources.values()])),
            "note": "unweighted mean over the sources of their pooled figures"}
    return _round({"scenario": "he-til", "split": split, "sources": sources, "mean_over_sources": mean})
