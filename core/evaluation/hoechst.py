"""Evaluation recipe ``hoechst-tiles``: lymphocyte subtypes on Hoechst tiles with IF-derived labels.

Data (``../shared/data/hoechst-mif-lung/README.md``): 12 tiles of one lung adenocarcinoma
slide, a vertical strip of neighbouring 256 x 256 µm regions at 1.0 µm/px; per tile a
5-channel 16-bit ImageJ stack (Hoechst 33342, CD20, CD8, PD1, CD3) and a label PNG (0
background/other, 1 CD8 CD3-low, 2 CD3, 3 CD20, 4 CD8 CD3-high) from QuPath intensity
classification of the IF channels, the paper's labelling recipe (§3.3).

Metrics, per subtype, as the paper reports them (§4, Table 2) and with what we add:

- **per pixel**: precision, recall and F1 of the arg-max class map against the label map
  (the paper scores its softmax output against the per-class masks; with hard labels the two
  agree at the arg-max);
- **per centroid**: the cells read off the map (:func:`core.scenarios.hoechst.cells_from_probabilities`)
  matched one-to-one to the labelled cells of the same subtype within :data:`MATCH_RADIUS_UM`
  (Hungarian matching, :func:`core.evaluation.metrics.match_points`); labelled cells are the
  connected regions (8-connected) of each subtype in the label map. The paper scores "the
  centroid coordinates of each cell" without a matching rule; ours is stated here;
- **presence**: whether a subtype is present in each :data:`PRESENCE_WINDOW_UM` window (the
  paper's patches are 256 px at 0.227 µm/px = 58 µm; its Table 1 counts patches "containing
  at least one cell of that type"): precision, recall and F1 of "present" over windows.

Counts are pooled over tiles; 95 % intervals by the percentile bootstrap over tiles (tiles,
not cells, are resampled: cells of one field are not independent), 1000 resamples, seed 0,
with the paired difference model minus each baseline.

Baselines, computed the same way on the same held-out tiles, from nuclei segmented in the
Hoechst image (:func:`core.scenarios.hoechst.segment_nuclei`):

- **every nucleus is X**: every nucleus called subtype X (scored for X);
- **nucleus-size rule**: nuclei whose area lies in [lo, hi] µm² called X, with lo and hi
  chosen on the training tiles of the fold (never the held-out ones) for the best
  per-centroid F1 of X, over the 0th-60th and 40th-100th percentiles of nucleus areas in
  steps of 10.

Cross-validation (``--split validation``, the model card's figures): each fold's weights on
its held-out tiles (the record written by ``python -m core.training.hoechst cv``), every tile
scored once by a model that never saw it. ``--split all``: one set of weights on every tile
of ``--data`` (new tiles of the slide, or the training tiles, flagged as not held out).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from core.errors import InputError
from core.evaluation.metrics import match_points, precision_recall_f1

#: The data set of the scenario (12 tiles of slide L102).
HOECHST_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "hoechst-mif-lung"
#: Names the data set's label values carry (0-4), as its README states them.
DATA_LABELS = ("background/other", "CD8 with low CD3", "CD3", "CD20", "CD8 with high CD3")
#: Predicted and labelled cells of one subtype within this distance are a match (about a
#: lymphocyte nucleus radius: nuclei are 6-7 µm across).
MATCH_RADIUS_UM = 4.0
#: Side of the windows in which "presence" of a subtype is scored (the paper's patch is 58 µm).
PRESENCE_WINDOW_UM = 64.0
#: Bootstrap resamples of the intervals.
N_RESAMPLES = 1000
#: The project's aim for this scenario (issue 19): CD3 per-centroid F1 >= 0.6, better than every baseline on CD3 and CD8.
AIM_CD3_F1 = 0.6

#: The paper's figures (Table 2, holdout test set; Table 1 class counts), on its own data:
#: six slides at 0.227 µm/px, 7413 patches of 256 px, the five-group labels.
PAPER_RESULTS = {
    "source": "Hoechst U-Net paper, Table 2 (holdout test set; the training-set figures are 0.95-1.00) and Table 1",
    "data": "6 lung adenocarcinoma slides (NHS Lothian), 7413 patches of 256 x 256 px at 0.227 µm/px (58 µm), split "
            "80:10:10 by patch; also 5 slides for training and the sixth held out, 'no decrease in performance'",
    "per_pixel": {
        "cd8-cd3lo": {"precision": 0.95, "recall": 0.90, "f1": 0.92},
        "cd3": {"precision": 0.90, "recall": 0.92, "f1": 0.91},
        "cd20": {"precision": 0.96, "recall": 0.90, "f1": 0.93},
        "cd8-cd3hi": {"precision": 0.88, "recall": 0.91, "f1": 0.89},
        "average": {"precision": 0.91, "recall": 0.91, "f1": 0.91},
    },
    "per_centroid": {
        "cd8-cd3lo": {"precision": 0.98, "recall": 0.94, "f1": 0.96},
        "cd3": {"precision": 0.95, "recall": 0.96, "f1": 0.96},
        "cd20": {"precision": 0.99, "recall": 0.95, "f1": 0.97},
        "cd8-cd3hi": {"precision": 0.91, "recall": 0.95, "f1": 0.92},
        "average": {"precision": 0.96, "recall": 0.95, "f1": 0.95},
    },
    "class_counts_table1": {
        "cd8-cd3lo": {"cells": 14536, "patches_present": 5259, "pixel_share": 0.076},
        "cd3": {"cells": 14480, "patches_present": 4955, "pixel_share": 0.075},
        "cd20": {"cells": 7528, "patches_present": 1352, "pixel_share": 0.039},
        "cd8-cd3hi": {"cells": 1412, "patches_present": 1071, "pixel_share": 0.007},
        "other": {"cells": 153811, "patches_present": 7375, "pixel_share": 0.802},
    },
    "note": "Not comparable one to one: other slides, 4.4 times finer pixels (chromatin texture visible), 600 times "
            "more labelled cells, a split by patch (neighbouring, 50 %-overlapping patches in training and test), and "
            "CD8 split into CD3-low and CD3-high (merged into CD8 here).",
}


@dataclass(eq=False)
class HoechstTile:
    """One labelled tile.

    Attributes
    ----------
    name : str, file stem (e.g. ``L102_x100370_y10150``)
    x_px, y_px : int, position of the region in the slide (from the name; slide pixels)
    hoechst : (H, W) uint16, the Hoechst channel as stored
    labels : (H, W) uint8, the data set's label values 0-4 (:data:`DATA_LABELS`)
    mpp : float, µm per pixel (1.0 for this data set)
    channel_names : tuple of str, the file's channel names (Hoechst first)
    """

    name: str
    x_px: int
    y_px: int
    hoechst: np.ndarray
    labels: np.ndarray
    mpp: float
    channel_names: tuple[str, ...]


def read_tiles(data: str | Path | None = None) -> list[HoechstTile]:
    """Read every labelled tile of a folder, in strip order (by slide position x, then y).

    Parameters
    ----------
    data : folder with ``<name>.tif`` (channel 0 Hoechst) and ``<name>_labels.png``;
        default :data:`HOECHST_DATA_DIR`

    Returns
    -------
    list of HoechstTile

    Raises
    ------
    InputError
        If the folder has no labelled tiles, a label file is missing or its size differs
        from its image, or an image is not a multi-channel fluorescence stack.
    """
    from PIL import Image

    from core.io import load_image

    root = Path(data) if data else HOECHST_DATA_DIR
    images = sorted(p for p in root.glob("*.tif") if not p.name.endswith("_labels.tif"))
    if not images:
        raise InputError(f"{root}: no Hoechst tiles (<name>.tif with <name>_labels.png) found")
    tiles = []
    for path in images:
        label_path = path.with_name(path.stem + "_labels.png")
        if not label_path.is_file():
            raise InputError(f"{path.name}: its label file {label_path.name} is missing")
        image = load_image(path)
        with Image.open(label_path) as im:
            labels = np.asarray(im)
        if labels.shape != image.shape:
            raise InputError(f"{label_path.name} is {labels.shape[1]} x {labels.shape[0]} px, its image "
                             f"{image.shape[1]} x {image.shape[0]}")
        m = re.search(r"_x(\d+)_y(\d+)$", path.stem)
        x, y = (int(m.group(1)), int(m.group(2))) if m else (0, len(tiles))
        tiles.append(HoechstTile(path.stem, x, y, np.ascontiguousarray(image.data[..., 0]), labels.astype(np.uint8),
                                 float(image.mpp or 1.0), image.channel_names))
    return sorted(tiles, key=lambda t: (t.x_px, t.y_px, t.name))


def tile_folds(n_tiles: int, k: int) -> list[list[int]]:
    """Split tiles in strip order into ``k`` contiguous groups (sizes differ by at most one).

    Held-out tiles then border training tiles on at most two sides, and no held-out pixel
    lies in a training tile (the regions do not overlap).

    Raises
    ------
    InputError
        If ``k`` is not in [2, n_tiles].
    """
    if not 2 <= k <= n_tiles:
        raise InputError(f"--folds must be between 2 and the number of tiles ({n_tiles}), got {k}")
    return [list(map(int, g)) for g in np.array_split(np.arange(n_tiles), k)]


def true_cells(class_map: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled cells: the 8-connected regions of each subtype in a class map, and their centroids.

    Parameters
    ----------
    class_map : (H, W) int, class indices (0 background, 1..n_classes - 1 subtypes)
    n_classes : int, including background

    Returns
    -------
    xy : (N, 2) float64 centroids x, y in pixels
    subtype : (N,) int64 in [0, n_classes - 1)
    """
    xy, cls = [], []
    for c in range(1, n_classes):
        lab, n = ndimage.label(class_map == c, structure=np.ones((3, 3)))
        if n:
            com = np.asarray(ndimage.center_of_mass(np.ones(lab.shape), lab, np.arange(1, n + 1))).reshape(-1, 2)
            xy.append(com[:, ::-1])
            cls.append(np.full(n, c - 1, np.int64))
    if not xy:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    return np.concatenate(xy), np.concatenate(cls)


def tile_counts(pred_map: np.ndarray, pred_xy: np.ndarray, pred_cls: np.ndarray, class_map: np.ndarray,
                n_classes: int, mpp: float) -> dict[str, np.ndarray]:
    """Per-subtype counts of one tile for the three kinds of metric.

    Parameters
    ----------
    pred_map : (H, W) int, predicted class per pixel (0 background)
    pred_xy : (P, 2) float, predicted cell centroids x, y in pixels
    pred_cls : (P,) int, predicted subtype in [0, n_classes - 1)
    class_map : (H, W) int, labelled class per pixel
    n_classes : int, including background
    mpp : float, µm per pixel

    Returns
    -------
    dict of arrays, one row per subtype:
        ``pixel`` (S, 3) tp, fp, fn; ``centroid`` (S, 3) tp, fp, fn; ``presence`` (S, 4)
        tp, fp, fn, tn over windows; ``n_true`` (S,) labelled cells; ``n_pred`` (S,) predicted cells
    """
    s = n_classes - 1
    true_xy, true_cls = true_cells(class_map, n_classes)
    pred_xy = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    pred_cls = np.asarray(pred_cls, np.int64)
    pixel = np.zeros((s, 3), np.int64)
    centroid = np.zeros((s, 3), np.int64)
    presence = np.zeros((s, 4), np.int64)
    win = max(1, int(round(PRESENCE_WINDOW_UM / mpp)))
    h, w = class_map.shape
    nwy, nwx = -(-h // win), -(-w // win)
    radius_px = MATCH_RADIUS_UM / mpp
    for c in range(s):
        p, t = pred_map == c + 1, class_map == c + 1
        pixel[c] = (np.count_nonzero(p & t), np.count_nonzero(p & ~t), np.count_nonzero(~p & t))
        pxy, txy = pred_xy[pred_cls == c], true_xy[true_cls == c]
        matched = len(match_points(pxy, txy, radius_px)[0])
        centroid[c] = (matched, len(pxy) - matched, len(txy) - matched)
        present_p = np.zeros((nwy, nwx), bool)
        present_t = np.zeros((nwy, nwx), bool)
        for xy, grid in ((pxy, present_p), (txy, present_t)):
            if len(xy):
                iy = np.clip((xy[:, 1] // win).astype(int), 0, nwy - 1)
                ix = np.clip((xy[:, 0] // win).astype(int), 0, nwx - 1)
                grid[iy, ix] = True
        presence[c] = (np.count_nonzero(present_p & present_t), np.count_nonzero(present_p & ~present_t),
                       np.count_nonzero(~present_p & present_t), np.count_nonzero(~present_p & ~present_t))
    return {"pixel": pixel, "centroid": centroid, "presence": presence,
            "n_true": np.bincount(true_cls, minlength=s)[:s], "n_pred": np.bincount(pred_cls, minlength=s)[:s]}


def pooled_metrics(counts: list[dict[str, np.ndarray]], names: tuple[str, ...]) -> dict:
    """Precision, recall, F1 per subtype and kind, counts pooled over tiles.

    Parameters
    ----------
    counts : list of :func:`tile_counts` results
    names : subtype names, one per row

    Returns
    -------
    dict kind → subtype → {precision, recall, f1, tp, fp, fn} (presence also ``tn``), plus
    ``n_true_cells`` and ``n_predicted_cells`` per subtype
    """
    out: dict = {}
    for kind in ("pixel", "centroid", "presence"):
        total = sum(c[kind] for c in counts)
        out[kind] = {}
        for i, name in enumerate(names):
            m = precision_recall_f1(int(total[i, 0]), int(total[i, 1]), int(total[i, 2]))
            if kind == "presence":
                m["tn"] = int(total[i, 3])
            out[kind][name] = m
    out["n_true_cells"] = {n: int(v) for n, v in zip(names, sum(c["n_true"] for c in counts))}
    out["n_predicted_cells"] = {n: int(v) for n, v in zip(names, sum(c["n_pred"] for c in counts))}
    return out


def _f1_rows(counts: list[dict[str, np.ndarray]], kind: str) -> np.ndarray:
    """(T, S) per-tile tp, fp, fn stacked: (T, S, 3)."""
    return np.stack([c[kind][:, :3] for c in counts]).astype(np.float64)


def _f1(total: np.ndarray) -> np.ndarray:
    """F1 per row of summed (..., 3) tp, fp, fn; NaN where nothing was labelled nor predicted."""
    tp, fp, fn = total[..., 0], total[..., 1], total[..., 2]
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def bootstrap_intervals(counts: list[dict[str, np.ndarray]], names: tuple[str, ...],
                        baselines: dict[str, list[dict[str, np.ndarray]]] | None = None,
                        n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap over tiles of the pooled F1 (pixel, centroid, presence) per subtype.

    One generator (seed ``seed``) draws the tile resamples once; the same draws score the
    model and each baseline, so the intervals of the differences are paired.

    Parameters
    ----------
    counts : list of :func:`tile_counts` results of the model, one per tile
    names : subtype names
    baselines : name → list of :func:`tile_counts` results per tile (same tile order), optional
    n_resamples, seed, level : bootstrap settings

    Returns
    -------
    dict kind → subtype → [low, high] of F1 (None when undefined in too many resamples), and
    ``centroid_f1_minus_<baseline>`` → subtype → [low, high]; ``level``, ``n_resamples``, ``unit``
    """
    rng = np.random.default_rng(seed)
    n = len(counts)
    draws = rng.integers(0, n, size=(n_resamples, n))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(samples: np.ndarray) -> list[float] | None:
        ok = samples[np.isfinite(samples)]
        if len(ok) < 0.9 * len(samples):
            return None
        return [round(float(v), 4) for v in np.percentile(ok, q)]

    out: dict = {}
    model_f1 = {}
    for kind in ("pixel", "centroid", "presence"):
        f1 = _f1(_f1_rows(counts, kind)[draws].sum(axis=1))  # (R, S)
        model_f1[kind] = f1
        out[kind] = {name: interval(f1[:, i]) for i, name in enumerate(names)}
    for bname, bcounts in (baselines or {}).items():
        diff = model_f1["centroid"] - _f1(_f1_rows(bcounts, "centroid")[draws].sum(axis=1))
        out[f"centroid_f1_minus_{bname}"] = {name: interval(diff[:, i]) for i, name in enumerate(names)}
    return out | {"level": level, "n_resamples": n_resamples, "seed": seed, "unit": "tile"}


# --------------------------------------------------------------------------- baselines


@dataclass(eq=False)
class Nuclei:
    """Nuclei of one tile (:func:`core.scenarios.hoechst.segment_nuclei`)."""

    xy: np.ndarray
    area_um2: np.ndarray
    labels: np.ndarray


def tile_nuclei(tile: HoechstTile) -> Nuclei:
    """Nuclei segmented in a tile's Hoechst channel (normalised as the model's input)."""
    from core.scenarios.hoechst import normalise_hoechst, segment_nuclei

    xy, area, labels = segment_nuclei(normalise_hoechst(tile.hoechst), tile.mpp)
    return Nuclei(xy, area, labels)


def rule_prediction(nuclei: Nuclei, subtype: int, area_range_um2: tuple[float, float] | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A baseline's prediction: nuclei (all, or those with area in the range) called one subtype.

    Returns
    -------
    pred_map : (H, W) int64, subtype + 1 on the called nuclei, 0 elsewhere
    pred_xy : (P, 2) float64
    pred_cls : (P,) int64, all ``subtype``
    """
    keep = np.ones(len(nuclei.xy), bool)
    if area_range_um2 is not None:
        lo, hi = area_range_um2
        keep = (nuclei.area_um2 >= lo) & (nuclei.area_um2 <= hi)
    lut = np.zeros(len(nuclei.xy) + 1, np.int64)
    lut[1:][keep] = subtype + 1
    return lut[nuclei.labels], nuclei.xy[keep], np.full(int(keep.sum()), subtype, np.int64)


def tune_size_rule(tiles: list[HoechstTile], nuclei: list[Nuclei], subtype: int, scheme: str) -> dict:
    """The nucleus-size rule for one subtype, chosen on (training) tiles for the best per-centroid F1.

    Candidate ranges [lo, hi]: lo at the 0th, 10th ... 60th and hi at the 40th, 50th ... 100th
    percentile of all nucleus areas on ``tiles`` (lo < hi); ties go to the wider range.

    Returns
    -------
    dict ``area_range_um2`` [lo, hi], ``train_centroid_f1``, ``subtype``
    """
    from core.nets.hoechst_unet import CLASS_SCHEMES, label_to_class

    n_classes = len(CLASS_SCHEMES[scheme])
    areas = np.concatenate([nu.area_um2 for nu in nuclei]) if nuclei else np.zeros(0)
    if len(areas) == 0:
        return {"subtype": subtype, "area_range_um2": [0.0, 0.0], "train_centroid_f1": 0.0}
    maps = [label_to_class(t.labels, scheme) for t in tiles]
    truth = [true_cells(m, n_classes) for m in maps]
    best = (-1.0, 0.0, None)
    los = np.percentile(areas, np.arange(0, 61, 10))
    his = np.percentile(areas, np.arange(40, 101, 10))
    for lo in los:
        for hi in his:
            if hi <= lo:
                continue
            tp = fp = fn = 0
            for t, nu, (txy, tcls) in zip(tiles, nuclei, truth):
                _, pxy, _ = rule_prediction(nu, subtype, (lo, hi))
                sel = txy[tcls == subtype]
                m = len(match_points(pxy, sel, MATCH_RADIUS_UM / t.mpp)[0])
                tp, fp, fn = tp + m, fp + len(pxy) - m, fn + len(sel) - m
            f1 = precision_recall_f1(tp, fp, fn)["f1"]
            if (f1, hi - lo) > (best[0], best[1]):
                best = (f1, hi - lo, (float(lo), float(hi)))
    return {"subtype": subtype, "area_range_um2": [round(v, 2) for v in best[2]], "train_centroid_f1": round(best[0], 4)}


# --------------------------------------------------------------------------- scoring a model


def model_tile_counts(model, tile: HoechstTile, scheme: str) -> dict[str, np.ndarray]:
    """:func:`tile_counts` of a :class:`~core.scenarios.hoechst.HoechstModel` on one tile (at the model's mpp).

    Raises
    ------
    InputError
        If the tile's pixel size differs from the model's by more than 2 %.
    """
    from core.nets.hoechst_unet import CLASS_SCHEMES, label_to_class
    from core.scenarios.hoechst import cells_from_probabilities

    if abs(tile.mpp / model.scenario.input_mpp - 1) > 0.02:
        raise InputError(f"{tile.name}: {tile.mpp} µm/px; the evaluation reads tiles at the model's "
                         f"{model.scenario.input_mpp} µm/px")
    prob = model.probabilities(tile.hoechst)
    xy, cls, _, _ = cells_from_probabilities(prob, tile.mpp, model.params)
    return tile_counts(prob.argmax(axis=-1), xy, cls, label_to_class(tile.labels, scheme),
                       len(CLASS_SCHEMES[scheme]), tile.mpp)


def score_held_out(pairs: list[tuple[object, HoechstTile]], train_tiles_of: list[list[HoechstTile]], scheme: str,
                   n_resamples: int = N_RESAMPLES) -> dict:
    """Model and baselines on held-out tiles, pooled, with bootstrap intervals.

    Parameters
    ----------
    pairs : (model, tile) for every held-out tile: the model that did not see the tile
    train_tiles_of : for each pair, the tiles its model was trained on (the size rule is
        chosen on these)
    scheme : class scheme of the models (:data:`core.nets.hoechst_unet.CLASS_SCHEMES`)
    n_resamples : bootstrap resamples

    Returns
    -------
    dict with ``model``, ``baselines``, ``ci95``, ``comparison``, ``aim``, ``per_tile``
    """
    from core.nets.hoechst_unet import CLASS_SCHEMES, label_to_class

    names = CLASS_SCHEMES[scheme][1:]
    n_classes = len(CLASS_SCHEMES[scheme])
    nuclei_cache: dict[str, Nuclei] = {}

    def nuclei_of(t: HoechstTile) -> Nuclei:
        if t.name not in nuclei_cache:
            nuclei_cache[t.name] = tile_nuclei(t)
        return nuclei_cache[t.name]

    model_counts, per_tile = [], []
    all_counts = {s: [] for s in range(len(names))}
    size_counts = {s: [] for s in range(len(names))}
    rules: dict[tuple[str, ...], dict] = {}
    for (model, tile), train in zip(pairs, train_tiles_of):
        c = model_tile_counts(model, tile, scheme)
        model_counts.append(c)
        per_tile.append({"tile": tile.name, "true_cells": dict(zip(names, map(int, c["n_true"]))),
                         "predicted_cells": dict(zip(names, map(int, c["n_pred"])))})
        truth = label_to_class(tile.labels, scheme)
        nu = nuclei_of(tile)
        key = tuple(sorted(t.name for t in train))
        if key not in rules:
            rules[key] = {s: tune_size_rule(train, [nuclei_of(t) for t in train], s, scheme) for s in range(len(names))}
        for s in range(len(names)):
            pm, pxy, pcls = rule_prediction(nu, s, None)
            all_counts[s].append(tile_counts(pm, pxy, pcls, truth, n_classes, tile.mpp))
            pm, pxy, pcls = rule_prediction(nu, s, tuple(rules[key][s]["area_range_um2"]))
            size_counts[s].append(tile_counts(pm, pxy, pcls, truth, n_classes, tile.mpp))
    model_metrics = pooled_metrics(model_counts, names)

    def per_subtype(counts_by_s):  # each subtype's metrics from the baseline that calls that subtype
        out = {}
        for s, name in enumerate(names):
            pooled = pooled_metrics(counts_by_s[s], names)
            out[name] = {k: pooled[k][name] for k in ("pixel", "centroid", "presence")}
        return out

    def mix(counts_by_s):  # per tile, row s taken from the baseline calling subtype s (for paired bootstrap)
        return [{k: np.stack([counts_by_s[s][i][k][s] for s in range(len(names))])
                 for k in ("pixel", "centroid", "presence", "n_true", "n_pred")} for i in range(len(model_counts))]

    baselines = {"all_nuclei": per_subtype(all_counts), "size_rule": per_subtype(size_counts)}
    baselines["size_rule_ranges_um2"] = [{"trained_on": list(k), **{names[s]: v["area_range_um2"] for s, v in r.items()}}
                                         for k, r in rules.items()]
    ci = bootstrap_intervals(model_counts, names, {"all_nuclei": mix(all_counts), "size_rule": mix(size_counts)},
                             n_resamples)
    comparison = {}
    for name in names:
        m = model_metrics["centroid"][name]["f1"]
        a = baselines["all_nuclei"][name]["centroid"]["f1"]
        z = baselines["size_rule"][name]["centroid"]["f1"]
        comparison[name] = {"model_centroid_f1": round(m, 4), "every_nucleus_f1": round(a, 4), "size_rule_f1": round(z, 4),
                            "beats_every_baseline": bool(m > max(a, z)),
                            "n_true_cells": model_metrics["n_true_cells"][name]}
    aim = None
    if "cd3" in names and "cd8" in names:
        cd3 = comparison["cd3"]["model_centroid_f1"]
        aim = {"cd3_centroid_f1_at_least": AIM_CD3_F1, "cd3_centroid_f1": cd3,
               "met_cd3_f1": bool(cd3 >= AIM_CD3_F1),
               "met_beats_baselines_cd3_cd8": bool(comparison["cd3"]["beats_every_baseline"]
                                                   and comparison["cd8"]["beats_every_baseline"])}
        aim["met"] = aim["met_cd3_f1"] and aim["met_beats_baselines_cd3_cd8"]
    return {"subtypes": list(names), "match_radius_um": MATCH_RADIUS_UM, "presence_window_um": PRESENCE_WINDOW_UM,
            "n_tiles": len(model_counts), "model": _round(model_metrics), "baselines": _round(baselines),
            "ci95": ci, "comparison": comparison, "aim": aim, "per_tile": per_tile}


def _round(d):
    if isinstance(d, dict):
        return {k: _round(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_round(v) for v in d]
    return round(d, 4) if isinstance(d, float) else d


def evaluate_cv(cv_record: str | Path, data: str | Path | None = None, device: str | None = None,
                n_resamples: int = N_RESAMPLES) -> dict:
    """Out-of-fold evaluation of a cross-validation record (every tile scored by the fold that held it out).

    Parameters
    ----------
    cv_record : the ``cv.json`` written by ``python -m core.training.hoechst cv``
    data : tile folder (default: the record's)
    device : "cpu", "cuda" or None (automatic)

    Returns
    -------
    dict: :func:`score_held_out` plus ``split``, ``folds``, ``published``

    Raises
    ------
    InputError
        If the record is missing or does not cover every tile once.
    WeightsError
        If a fold's weights are missing or do not fit the network.
    """
    from core.scenarios.base import pick_device
    from core.scenarios.hoechst import model_from_file
    from core.scenarios.weights import sha256_file

    path = Path(cv_record)
    if not path.is_file():
        raise InputError(f"{path}: no cross-validation record; run python -m core.training.hoechst cv first, or pass "
                         "--cv-record")
    record = json.loads(path.read_text(encoding="utf-8"))
    tiles = read_tiles(data or record.get("data"))
    by_name = {t.name: t for t in tiles}
    dev = pick_device(device)
    pairs, trains, folds = [], [], []
    seen: list[str] = []
    for fold in record["folds"]:
        weights = Path(fold["weights"])
        if not weights.is_absolute():
            weights = path.parent / weights if (path.parent / weights).is_file() else weights
        model = model_from_file(weights, dev)
        held = [by_name[n] for n in fold["held_out"]]
        train = [t for t in tiles if t.name not in fold["held_out"]]
        for t in held:
            pairs.append((model, t))
            trains.append(train)
        seen += fold["held_out"]
        folds.append({"fold": fold["fold"], "held_out": fold["held_out"], "weights": str(fold["weights"]),
                      "weights_sha256": sha256_file(weights)})
    if sorted(seen) != sorted(by_name):
        raise InputError(f"{path}: the folds hold out {len(seen)} tile(s) of {len(by_name)}; every tile must be held out "
                         "once (rerun the missing folds)")
    scheme = record.get("classes", "merged")
    out = score_held_out(pairs, trains, scheme, n_resamples)
    return {"recipe": "hoechst-tiles", "split": "cross-validation: each tile scored by the fold model that did not see it",
            "data": str(data or record.get("data")), "scheme": scheme, "folds": folds, **out,
            "selection_rule": record.get("selection_rule"), "published": PAPER_RESULTS}


def evaluate_all(weights: str | Path | None = None, data: str | Path | None = None, device: str | None = None,
                 n_resamples: int = N_RESAMPLES) -> dict:
    """One set of weights on every tile of ``data``; the size rule chosen on the training tiles.

    Parameters
    ----------
    weights : a ``.safetensors`` file; default the registered ``hoechst-lymphocytes`` weights
        (or ``weights/hoechst-lymphocytes-unet-v1.safetensors`` before registration)
    data : tile folder (default the training data: then nothing is held out, which the
        result says)

    Returns
    -------
    dict: :func:`score_held_out` plus ``split``, ``held_out``, ``weights``
    """
    from core.scenarios.base import pick_device
    from core.scenarios.hoechst import KEY, WEIGHTS_NAME, model_from_file
    from core.scenarios.registry import SCENARIOS
    from core.scenarios.spec import WEIGHTS_DIR

    dev = pick_device(device)
    if weights is None and KEY in SCENARIOS:
        from core.scenarios.hoechst import HoechstModel

        model = HoechstModel.from_registry(SCENARIOS[KEY], dev)
        weights = SCENARIOS[KEY].weights_path
    else:
        weights = Path(weights) if weights else WEIGHTS_DIR / WEIGHTS_NAME
        model = model_from_file(weights, dev)
    scheme = "paper" if len(model.class_names) == 5 else "merged"
    tiles = read_tiles(data)
    train = read_tiles(None)
    held_out = Path(data or HOECHST_DATA_DIR).resolve() != HOECHST_DATA_DIR.resolve()
    out = score_held_out([(model, t) for t in tiles], [train] * len(tiles), scheme, n_resamples)
    return {"recipe": "hoechst-tiles", "split": "all tiles of the data folder", "data": str(data or HOECHST_DATA_DIR),
            "held_out": held_out, "weights": str(weights), "scheme": scheme, **out,
            **({} if held_out else {"warning": "these are the training tiles: the figures are not held-out figures"}),
            "published": PAPER_RESULTS}


def evaluate_hoechst(split: str = "validation", data: str | None = None, cv_record: str | None = None,
                     weights: str | None = None, device: str | None = None) -> dict:
    """``python -m core evaluate --scenario hoechst-lymphocytes``.

    Parameters
    ----------
    split : ``"validation"`` (or ``"cv"``): the cross-validation record, out of fold (the card's
        figures); ``"all"``: ``weights`` on every tile of ``data``
    data : tile folder (default the project's data set)
    cv_record : path of ``cv.json`` (default ``runs/hoechst-lymphocytes-cv/cv.json``)
    weights : weights file for ``split="all"`` (default the registered or ``weights/`` file)

    Raises
    ------
    InputError
        For another split, or a missing record.
    """
    if split in ("validation", "cv"):
        default = Path(__file__).resolve().parents[2] / "runs" / "hoechst-lymphocytes-cv" / "cv.json"
        return evaluate_cv(cv_record or default, data, device)
    if split == "all":
        return evaluate_all(weights, data, device)
    raise InputError(f"hoechst-lymphocytes is evaluated with --split validation (cross-validation, the card's figures) or "
                     f"--split all (one set of weights on every tile of --data), not {split!r}")
