"""Evaluation of ``mihc-tcell-phenotypes`` on held-out synthetic mIHC sections (recipe ``mihc-synthetic``).

``python -m core evaluate --scenario mihc-tcell-phenotypes --synthetic 40 --seed 10000`` draws ``n``
sections of the generator's mIHC recipe (:mod:`core.generator.mihc`) with seeds ``seed`` ..
``seed + n - 1``, which training never used (training draws seeds from :data:`TRAIN_SEED_BASE`
up, threshold tuning and checkpoint choice use :data:`TUNE_SEEDS`; evaluation seeds must lie in
neither), runs the S-DRDIN weights and, on the same sections, every ablation variant whose
weights lie beside them (the paper's DRDIN-detection, DRDIN-classification, S-DRDIN-gradient;
§2.4), and reports as the paper does (§2.5):

- **detection**: a predicted cell is a true positive when it lies within 10 px at 0.44 µm/px
  (4.4 µm) of an annotated T cell, matched one-to-one (:func:`core.evaluation.metrics.match_points`);
  precision, recall and F1 pooled over the sections (Table 2); detection recall per phenotype
  (Table A.5);
- **classification**: on the annotated cells a model detected, precision, recall and F1 per
  phenotype and their averages weighted by the phenotypes' support (Table 3, Table A.5).

DRDIN-detection has no class map and DRDIN-classification no detection map: the first is
scored on detection only, the second detects on 1 - P(background); the paper's "separate
models" baseline, DRDIN-detection's cells classified by DRDIN-classification's class map
(eq. 3), is reported as ``drdin-detection+classification``. The paper's figures are printed
beside ours (:data:`PAPER_RESULTS`): they come from real ovarian cancer mIHC, ours from the
generator, and are not comparable as accuracy on real tissue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import InputError, WeightsError
from core.evaluation.metrics import match_points, precision_recall_f1
from core.generator.mihc import MIHC_MPP, PHENOTYPES

RECIPE = "mihc-synthetic"
#: Match radius of §2.5: 10 px at the paper's 0.44 µm/px.
MATCH_RADIUS_UM = 10 * 0.44
#: Size of an evaluation section, px at 0.44 µm/px (197 µm).
EVAL_SHAPE = (448, 448)
#: Seeds of tuning sections (threshold and checkpoint), [start, stop).
TUNE_SEEDS = (5000, 6000)
#: Training sections use seeds TRAIN_SEED_BASE, TRAIN_SEED_BASE + 1, ...
TRAIN_SEED_BASE = 1_000_000
#: Smallest seed for evaluation (below: reserved for examples and tests).
EVAL_SEED_MIN = 10_000
#: The rare phenotypes (2 % and 4 % of Table 1), on which S-DRDIN must match DRDIN-classification.
RARE_CLASSES = ("PD1+CD4-CD8-", "PD1+CD4+CD8-")
#: The ablation variants, in the paper's order.
ABLATION = ("drdin-detection", "drdin-classification", "s-drdin-gradient")

#: S-DRDIN paper, Tables 2, 3 and A.5 (mean ± sd over 3 trainings; real ovarian cancer mIHC, 5 test slides).
PAPER_RESULTS = {
    "note": "S-DRDIN paper, Tables 2, 3, A.5: real high-grade serous ovarian cancer mIHC, 5 test slides; not this data",
    "detection_f1": {"u-net": 0.808, "concorde-net": 0.768, "drdin-detection": 0.816, "s-drdin-gradient": 0.793,
                     "s-drdin": 0.835},
    "detection_precision": {"drdin-detection": 0.851, "s-drdin-gradient": 0.783, "s-drdin": 0.941},
    "detection_recall": {"drdin-detection": 0.783, "s-drdin-gradient": 0.809, "s-drdin": 0.750},
    "classification_weighted_f1": {"u-net": 0.761, "concorde-net": 0.778, "drdin-classification": 0.829,
                                   "s-drdin-gradient": 0.857, "s-drdin": 0.867},
    "s_drdin_per_class_f1": {"CD8+": 0.749, "CD4+FOXP3-": 0.931, "CD4+FOXP3+": 0.970, "PD1+CD4-CD8-": 0.711,
                             "PD1+CD4-CD8+": 0.877, "PD1+CD4+CD8-": 0.514},
    "s_drdin_detection_recall_per_class": {"CD8+": 0.731, "CD4+FOXP3-": 0.525, "CD4+FOXP3+": 0.865,
                                           "PD1+CD4-CD8-": 0.833, "PD1+CD4-CD8+": 0.814, "PD1+CD4+CD8-": 0.527},
}


def check_eval_seeds(n: int, seed: int) -> tuple[int, int]:
    """The evaluation seeds ``[seed, seed + n)``, refused when they touch tuning or training seeds.

    Raises
    ------
    InputError
        If ``n`` < 1, ``seed`` < :data:`EVAL_SEED_MIN`, or the range meets :data:`TUNE_SEEDS` or
        reaches :data:`TRAIN_SEED_BASE`.
    """
    n, seed = int(n), int(seed)
    if n < 1:
        raise InputError(f"--synthetic must be at least 1 section, got {n}")
    stop = seed + n
    if seed < EVAL_SEED_MIN or (seed < TUNE_SEEDS[1] and stop > TUNE_SEEDS[0]) or stop > TRAIN_SEED_BASE:
        raise InputError(f"evaluation seeds {seed}-{stop - 1} must lie in [{EVAL_SEED_MIN}, {TRAIN_SEED_BASE}): seeds "
                         f"{TUNE_SEEDS[0]}-{TUNE_SEEDS[1] - 1} tune the model and seeds from {TRAIN_SEED_BASE} on train it; "
                         "use e.g. --seed 10000")
    return seed, stop


def classification_metrics(true_label: np.ndarray, pred_label: np.ndarray) -> dict:
    """Per-phenotype and support-weighted precision, recall and F1 (S-DRDIN Table 3, A.5).

    Parameters
    ----------
    true_label, pred_label : (N,) int in [0, 6), the phenotypes of matched cells

    Returns
    -------
    dict: ``weighted_precision``, ``weighted_recall``, ``weighted_f1``, ``accuracy``, ``n`` and
    ``per_class`` (phenotype → precision, recall, f1, support), all in [0, 1] except the counts
    """
    from core.evaluation.he import classification_metrics as _cm

    return _cm(true_label, pred_label, len(PHENOTYPES), PHENOTYPES)


def score_cells(results: list[tuple[np.ndarray, np.ndarray | None]], truths: list[tuple[np.ndarray, np.ndarray]],
                radius_px: float) -> dict:
    """Detection and classification metrics of predicted cells against annotated T cells, pooled over sections.

    Parameters
    ----------
    results : per section, (xy (N, 2) float x, y in pixels, label (N,) int phenotype index or None
        for a detection-only model)
    truths : per section, (xy (T, 2) float x, y in pixels, label (T,) int phenotype index)
    radius_px : float > 0, match radius in pixels (§2.5: 10 px at 0.44 µm/px)

    Returns
    -------
    dict
        ``detection``: precision, recall, f1, tp, fp, fn; ``detection_recall_per_class``:
        phenotype → recall (NaN-free: 0 where a phenotype has no cell; with its ``support``);
        ``classification``: :func:`classification_metrics` of the matched cells, or None
        without labels.

    Raises
    ------
    InputError
        If the two lists differ in length or ``radius_px`` is not positive.

    References
    ----------
    S-DRDIN paper §2.5 (matching within 10 px, weighted F1), Tables 2, 3, A.5.
    """
    if len(results) != len(truths):
        raise InputError(f"{len(results)} predictions for {len(truths)} sections")
    if not radius_px > 0:
        raise InputError(f"radius_px must be > 0, got {radius_px}")
    tp = fp = fn = 0
    found = np.zeros(len(PHENOTYPES), np.int64)
    support = np.zeros(len(PHENOTYPES), np.int64)
    t_all, p_all = [], []
    labelled = all(lab is not None for _, lab in results)
    for (xy, lab), (txy, tlab) in zip(results, truths):
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        tlab = np.asarray(tlab, np.int64)
        pi, ti = match_points(xy, txy, radius_px)
        tp, fp, fn = tp + len(pi), fp + len(xy) - len(pi), fn + len(tlab) - len(pi)
        support += np.bincount(tlab, minlength=len(PHENOTYPES))
        found += np.bincount(tlab[ti], minlength=len(PHENOTYPES))
        if labelled:
            t_all.append(tlab[ti])
            p_all.append(np.asarray(lab, np.int64)[pi])
    per_class = {name: {"recall": float(found[k] / support[k]) if support[k] else 0.0, "support": int(support[k])}
                 for k, name in enumerate(PHENOTYPES)}
    cls = None
    if labelled:
        cls = classification_metrics(np.concatenate(t_all) if t_all else np.zeros(0, int),
                                     np.concatenate(p_all) if p_all else np.zeros(0, int))
    return {"detection": precision_recall_f1(tp, fp, fn), "detection_recall_per_class": per_class,
            "classification": cls}


def _shown(path) -> str:
    """A weights path as the record keeps it: relative to the working folder when inside it (no machine's absolute paths)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def section_confusions(results: list[tuple[np.ndarray, np.ndarray]], truths: list[tuple[np.ndarray, np.ndarray]]
                        ) -> np.ndarray:
    """Per section, the phenotype confusion of the matched cells: (n_sections, 6, 6) int64, [true, predicted].

    ``results`` and ``truths`` as for :func:`score_cells` (the cells of a labelled model), matched the same way
    (within :data:`MATCH_RADIUS_UM`), kept per section so that :func:`paired_bootstrap_f1` can resample sections.
    """
    from core.scenarios.mihc import INPUT_MPP

    k = len(PHENOTYPES)
    out = np.zeros((len(results), k, k), np.int64)
    for i, ((xy, lab), (txy, tlab)) in enumerate(zip(results, truths)):
        pi, ti = match_points(np.asarray(xy, np.float64).reshape(-1, 2), txy, MATCH_RADIUS_UM / INPUT_MPP)
        np.add.at(out[i], (np.asarray(tlab, np.int64)[ti], np.asarray(lab, np.int64)[pi]), 1)
    return out


def _f1_of_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class F1 of (..., K, K) confusion matrices [true, predicted] (0 where a class has no cell)."""
    diag = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    denom = conf.sum(axis=-1) + conf.sum(axis=-2)
    return np.divide(2 * diag, denom, out=np.zeros_like(diag), where=denom > 0)


def paired_bootstrap_f1(conf_a: np.ndarray, conf_b: np.ndarray, classes: tuple[str, ...] = RARE_CLASSES,
                        n_boot: int = 2000, seed: int = 0) -> dict:
    """Per-class F1 of model A minus model B with a 95 % interval from a paired bootstrap over sections.

    Parameters
    ----------
    conf_a, conf_b : (n_sections, 6, 6) int confusions of the same sections (:func:`section_confusions`)
    classes : phenotypes reported
    n_boot : int, resamples (sections drawn with replacement, the same draw for both models)
    seed : int

    Returns
    -------
    dict: phenotype → ``difference`` (A - B on all sections), ``ci95`` [low, high] (percentile
    interval), ``share_a_at_least_b`` (share of resamples with A's F1 >= B's).

    Raises
    ------
    InputError
        If the two confusions do not have the same shape.

    References
    ----------
    Efron B., Tibshirani R.J., "An Introduction to the Bootstrap", Chapman & Hall (1993), ch. 13
    (percentile intervals); resampling whole sections keeps the cells of a section together.
    """
    a, b = np.asarray(conf_a), np.asarray(conf_b)
    if a.shape != b.shape or a.ndim != 3:
        raise InputError(f"confusions of different shapes: {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(int(n_boot), len(a)))
    diff_all = _f1_of_confusion(a.sum(0)) - _f1_of_confusion(b.sum(0))
    diffs = _f1_of_confusion(a[idx].sum(1)) - _f1_of_confusion(b[idx].sum(1))  # (n_boot, K)
    out = {}
    for name in classes:
        k = PHENOTYPES.index(name)
        lo, hi = np.percentile(diffs[:, k], [2.5, 97.5])
        out[name] = {"difference": round(float(diff_all[k]), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
                     "share_a_at_least_b": round(float((diffs[:, k] >= 0).mean()), 4)}
    return out


def selection_score(scores: dict, variant: str) -> float:
    """The pre-registered checkpoint score: detection F1 + weighted class F1 (detection F1 alone for drdin-detection)."""
    det = scores["detection"]["f1"]
    return det if variant == "drdin-detection" or scores["classification"] is None else det + scores["classification"]["weighted_f1"]


def cells_from_maps(det: np.ndarray, cls: np.ndarray, params, mpp: float, labelled: bool = True
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """§2.5 on one field's maps: cells from the detection map, phenotypes by eq. 3.

    Parameters
    ----------
    det : (H, W) float32 detection probability
    cls : (7, H, W) float32 softmax over the 6 phenotypes and background
    params : core.scenarios.he_til.PostprocessParams
    mpp : float, µm/px of the maps
    labelled : False for a detection-only model (no phenotypes)

    Returns
    -------
    xy : (N, 2) float64 x, y in pixels; label : (N,) int64 phenotype index, or None
    """
    from core.scenarios.he_til import classify_cells, detect_peaks

    xy = detect_peaks(det, params, mpp)
    if not labelled:
        return xy, None
    return xy, classify_cells(cls[:-1], xy, params.in_pixels(mpp)["class_window_px"])[0]


def sections(n: int, seed: int, shape: tuple[int, int] = EVAL_SHAPE) -> list:
    """The sections of seeds ``seed`` .. ``seed + n - 1`` (:func:`core.generator.mihc.generate_mihc`)."""
    from core.generator.mihc import generate_mihc

    return [generate_mihc(shape, s) for s in range(int(seed), int(seed) + int(n))]


def truths_of(secs: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """(points_xy, labels) of the T cells of each section."""
    return [(s.points_xy, s.labels) for s in secs]


def score_model(model, secs: list, maps: list | None = None, params=None) -> dict:
    """:func:`score_cells` of one :class:`core.scenarios.mihc.MIHCModel` on sections (maps computed unless given)."""
    from core.scenarios.mihc import INPUT_MPP

    maps = maps if maps is not None else [model.predict_maps(s.image) for s in secs]
    return score_cells(model_cells(model, maps, params), truths_of(secs), MATCH_RADIUS_UM / INPUT_MPP)


def model_cells(model, maps: list, params=None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """:func:`cells_from_maps` of each section's maps with the model's post-processing (or ``params``)."""
    from core.scenarios.mihc import INPUT_MPP

    labelled = model.variant != "drdin-detection"
    return [cells_from_maps(d, c, params or model.params, INPUT_MPP, labelled) for d, c in maps]


def _models(weights: str | Path | None, device: str) -> dict:
    """variant → (path, model): the S-DRDIN weights and the ablation weights beside them.

    Raises
    ------
    WeightsError
        If the S-DRDIN weights are missing.
    """
    import torch
    from safetensors import safe_open

    from core.scenarios.mihc import KEY, WEIGHTS_NAME, MIHCModel, model_from_file
    from core.scenarios.registry import SCENARIOS
    from core.scenarios.spec import WEIGHTS_DIR

    if weights is None and KEY in SCENARIOS:
        main_path = SCENARIOS[KEY].weights_path
        main = MIHCModel.from_registry(SCENARIOS[KEY], torch.device(device))
    else:
        main_path = Path(weights) if weights else WEIGHTS_DIR / WEIGHTS_NAME
        if not main_path.is_file():
            raise WeightsError(f"no weights at {main_path}: train them with python -m core.training.mihc train "
                               "(or pass --weights FILE)")
        main = model_from_file(main_path, device)
    out = {main.variant: (main_path, main)}
    for f in sorted(main_path.parent.glob("mihc-tcell-phenotypes-*.safetensors")):
        if f.resolve() == main_path.resolve():
            continue
        try:
            with safe_open(str(f), framework="pt") as fh:
                variant = (fh.metadata() or {}).get("variant")
        except Exception:  # noqa: BLE001 - a stray file is skipped, said in the result
            continue
        if variant in ABLATION and variant not in out:
            out[variant] = (f, model_from_file(f, device))
    return out


def evaluate_mihc(n: int, seed: int, device: str | None = None, weights: str | Path | None = None,
                  shape: tuple[int, int] = EVAL_SHAPE) -> dict:
    """``python -m core evaluate --scenario mihc-tcell-phenotypes --synthetic N --seed S``.

    Parameters
    ----------
    n : int, sections (1 to 1000)
    seed : int, first seed (see :func:`check_eval_seeds`)
    device : "cpu", "cuda" or None (auto)
    weights : S-DRDIN weights file; default the registered weights, else
        ``weights/mihc-tcell-phenotypes-sdrdin-v1.safetensors``. Ablation weights are the other
        ``mihc-tcell-phenotypes-*.safetensors`` files in the same folder (by their ``variant``).
    shape : (H, W) px of each section

    Returns
    -------
    dict (JSON-ready): ``recipe``, ``seeds``, ``shape``, ``match_radius_um``, ``models`` (variant →
    weights, threshold, detection, detection_recall_per_class, classification), ``rare_classes``
    (variant → phenotype → F1), ``headline`` (S-DRDIN detection F1 and weighted class F1 beside
    the paper's 0.835 / 0.867), ``paper`` (:data:`PAPER_RESULTS`), ``warning``.

    Raises
    ------
    InputError, WeightsError
    """
    from core.scenarios.base import pick_device
    from core.scenarios.he_til import classify_cells
    from core.scenarios.mihc import INPUT_MPP

    first, stop = check_eval_seeds(n, seed)
    dev = str(pick_device(device))
    models = _models(weights, dev)
    secs = sections(n, first, shape)
    truths = truths_of(secs)
    out_models, maps_of, cells_of = {}, {}, {}
    for variant, (path, model) in models.items():
        maps_of[variant] = [model.predict_maps(s.image) for s in secs]
        cells_of[variant] = model_cells(model, maps_of[variant])
        scores = score_cells(cells_of[variant], truths, MATCH_RADIUS_UM / INPUT_MPP)
        out_models[variant] = {"weights": _shown(path), "threshold": model.params.threshold, **scores}
    if "drdin-detection" in models and "drdin-classification" in models:
        det_model, cls_model = models["drdin-detection"][1], models["drdin-classification"][1]
        win = cls_model.params.in_pixels(INPUT_MPP)["class_window_px"]
        results = []
        for (d, _), (_, c) in zip(maps_of["drdin-detection"], maps_of["drdin-classification"]):
            xy, _ = cells_from_maps(d, c, det_model.params, INPUT_MPP, labelled=False)
            results.append((xy, classify_cells(c[:-1], xy, win)[0]))
        out_models["drdin-detection+classification"] = {
            "weights": [_shown(models["drdin-detection"][0]), _shown(models["drdin-classification"][0])],
            **score_cells(results, truths, MATCH_RADIUS_UM / INPUT_MPP)}
    rare = {v: {c: m["classification"]["per_class"][c]["f1"] for c in RARE_CLASSES}
            for v, m in out_models.items() if m.get("classification")}
    main = out_models.get("s-drdin") or next(iter(out_models.values()))
    headline = {"detection_f1": main["detection"]["f1"],
                "classification_weighted_f1": (main["classification"] or {}).get("weighted_f1"),
                "paper_detection_f1": 0.835, "paper_classification_weighted_f1": 0.867}
    bootstrap = None
    if "s-drdin" in rare and "drdin-classification" in rare:
        headline["s_drdin_at_least_drdin_classification_on_rare_classes"] = all(
            rare["s-drdin"][c] >= rare["drdin-classification"][c] for c in RARE_CLASSES)
        bootstrap = {"what": "F1 of S-DRDIN minus F1 of DRDIN-classification on the rare phenotypes, 95 % interval "
                             "of a paired bootstrap over the sections (2000 resamples, seed 0)",
                     **paired_bootstrap_f1(*(section_confusions(cells_of[v], truths)
                                             for v in ("s-drdin", "drdin-classification")))}
    missing = [v for v in ABLATION if v not in models]
    return {
        "recipe": RECIPE, "scenario": "mihc-tcell-phenotypes", "seeds": [first, stop - 1], "shape": list(shape),
        "mpp": MIHC_MPP, "match_radius_um": MATCH_RADIUS_UM, "n_cells": int(sum(len(s.labels) for s in secs)),
        "headline": headline, "models": out_models, "rare_classes": rare,
        **({"rare_classes_s_drdin_minus_drdin_classification": bootstrap} if bootstrap else {}),
        **({"ablation_missing": missing} if missing else {}),
        "paper": PAPER_RESULTS,
        "warning": "held-out sections of the project's generator: figures on synthetic images, not on real mIHC",
    }


#: Teaching sections: side in pixels (at the generator's 0.44 µm/px) offered on the Teaching page.
TEACHING_SIZES_PX = (256, 512)


def teaching_section(seed: int, size_px: int = 320, model=None) -> dict:
    """One synthetic mIHC section, analysed by ``mihc-tcell-phenotypes`` and scored against its ground truth.

    What the Teaching page shows: the section, where its T cells truly are and what they are,
    what the model found, and how each phenotype fared (S-DRDIN paper §2.5 matching: one to
    one within :data:`MATCH_RADIUS_UM`).

    Parameters
    ----------
    seed : int >= 0, the generator's seed (:func:`core.generator.mihc.generate_mihc`); any
        seed can be viewed, and the card's figures come from seeds 10000-10039
    size_px : int in [:data:`TEACHING_SIZES_PX`], the section's side in pixels
    model : a loaded :class:`core.scenarios.mihc.MIHCModel`, optional (loaded from the registry if None)

    Returns
    -------
    dict with
        ``section``: :class:`core.generator.mihc.MIHCSection`;
        ``result``: :class:`core.results.AnalysisResult` of the scenario on ``section.image``;
        ``scores``: :func:`score_cells` of this one section (``detection``, ``classification``);
        ``truth_cells``: DataFrame ``x_px, y_px, cell_class`` of the true T cells;
        ``per_phenotype``: DataFrame, one row per phenotype: ``phenotype``, ``true_cells``,
        ``model_cells`` (called that phenotype), ``found`` (true cells detected whatever their call),
        ``called_right`` (detected and given that phenotype), ``recall`` and ``precision`` of the call
        (NaN where undefined).

    Raises
    ------
    InputError
        A seed below 0 or a size outside :data:`TEACHING_SIZES_PX`.
    """
    import pandas as pd

    from core.generator.mihc import generate_mihc
    from core.io import ImageData
    from core.pipeline import analyze, load_model
    from core.scenarios.mihc import INPUT_MPP

    seed, size_px = int(seed), int(size_px)
    if seed < 0:
        raise InputError(f"the seed must be 0 or more, got {seed}")
    lo, hi = TEACHING_SIZES_PX
    if not lo <= size_px <= hi:
        raise InputError(f"a teaching section is {lo} to {hi} px a side, got {size_px}")
    section = generate_mihc((size_px, size_px), seed)
    model = model or load_model("mihc-tcell-phenotypes", "cpu")
    image = ImageData(section.image, section.mpp, f"synthetic-mihc-s{seed}", "", "user")
    result = analyze(image, "mihc-tcell-phenotypes", model=model)
    cells = result.cells
    index = {name: k for k, name in enumerate(PHENOTYPES)}
    pxy = cells[["x_px", "y_px"]].to_numpy(np.float64)
    plab = cells["cell_class"].map(index).fillna(-1).to_numpy(np.int64)
    txy, tlab = section.points_xy, section.labels
    radius_px = MATCH_RADIUS_UM / INPUT_MPP
    scores = score_cells([(pxy, plab)], [(txy, tlab)], radius_px)
    pi, ti = match_points(pxy, txy, radius_px)
    rows = []
    for k, name in enumerate(PHENOTYPES):
        true_k, pred_k = int((tlab == k).sum()), int((plab == k).sum())
        found = int((tlab[ti] == k).sum())
        right = int(((tlab[ti] == k) & (plab[pi] == k)).sum())
        rows.append({"phenotype": name, "true_cells": true_k, "model_cells": pred_k, "found": found,
                     "called_right": right, "recall": right / true_k if true_k else float("nan"),
                     "precision": right / pred_k if pred_k else float("nan")})
    truth = pd.DataFrame({"x_px": txy[:, 0], "y_px": txy[:, 1], "cell_class": [PHENOTYPES[k] for k in tlab]})
    return {"section": section, "result": result, "scores": scores, "truth_cells": truth,
            "per_phenotype": pd.DataFrame(rows)}


def chromogen_truth_pictures(section) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Each chromogen of a synthetic section as it truly is and as the unmixing recovers it (Teaching page).

    Parameters
    ----------
    section : :class:`core.generator.mihc.MIHCSection` (at most 1.5 MP, so both pictures keep its size)

    Returns
    -------
    list of (title, true_picture, unmixed_picture), hematoxylin first, then FOXP3, CD8, CD4 and
    PD1 by their chromogens: each (H, W, 3) uint8 RGB, the chromogen alone on white glass
    (:func:`core.mihc_unmixing.chromogen_rgb`); the true one from the generator's
    concentrations before blur and noise, the unmixed one from the scanned image
    (:func:`core.mihc_unmixing.chromogen_pictures`, the panel's nominal stain vectors).
    """
    from core.generator.mihc import CHROMOGENS
    from core.mihc_unmixing import ChromogenMaps, chromogen_pictures, chromogen_rgb

    h, w = section.image.shape[:2]
    unmixed = chromogen_pictures(section.image, max_pixels=max(1024, h * w))
    truth = ChromogenMaps(section.concentrations.astype(np.float32), tuple(c.name for c in CHROMOGENS),
                          tuple(c.marker for c in CHROMOGENS), np.asarray(section.stain_matrix, np.float64),
                          np.asarray(section.white, np.float64), np.zeros((h, w), np.float32))
    return [(title, chromogen_rgb(truth, c.name), picture) for c, (title, picture, _) in zip(CHROMOGENS, unmixed)]
