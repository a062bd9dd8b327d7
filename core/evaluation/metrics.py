"""Detection and classification metrics (precision, recall, F1, point matching)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, precision, recall and F1 of binary predictions.

    Parameters
    ----------
    y_true, y_pred : (N,) arrays of 0/1 (or bool)

    Returns
    -------
    dict
        ``accuracy``, ``precision``, ``recall``, ``f1`` in [0, 1] (0 where undefined),
        and the counts ``tp``, ``fp``, ``fn``, ``tn``, ``n``.
    """
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    tn = int(np.sum(~t & ~p))
    return precision_recall_f1(tp, fp, fn) | {"accuracy": (tp + tn) / max(len(t), 1), "tn": tn, "n": int(len(t))}


def precision_recall_f1(tp: int, fp: int, fn: int) -> dict:
    """Precision, recall and F1 in [0, 1] (0 where undefined) from counts, with the counts."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def match_points(pred_xy: np.ndarray, true_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to true points within ``radius``.

    Pairs closer than ``radius`` are matched by minimum total distance
    (Hungarian assignment on the candidate pairs), so one true cell is never
    credited twice.

    Parameters
    ----------
    pred_xy : (P, 2) float array
    true_xy : (T, 2) float array, same unit as ``radius``
    radius : float

    Returns
    -------
    pred_idx, true_idx : (M,) int arrays
        Indices of the matched pairs.
    """
    pred = np.asarray(pred_xy, dtype=float).reshape(-1, 2)
    true = np.asarray(true_xy, dtype=float).reshape(-1, 2)
    if len(pred) == 0 or len(true) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    pairs = cKDTree(pred).query_ball_tree(cKDTree(true), r=radius)
    big = 1e9
    cost = np.full((len(pred), len(true)), big)
    for i, js in enumerate(pairs):
        for j in js:
            cost[i, j] = np.hypot(*(pred[i] - true[j]))
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] < big
    return rows[keep], cols[keep]


def detection_metrics(pred_xy: np.ndarray, true_xy: np.ndarray, radius: float) -> dict:
    """Precision, recall and F1 of point detections matched within ``radius``.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``, ``radius``.
    """
    pi, _ = match_points(pred_xy, true_xy, radius)
    tp = len(pi)
    return precision_recall_f1(tp, len(np.asarray(pred_xy).reshape(-1, 2)) - tp, len(np.asarray(true_xy).reshape(-1, 2)) - tp) | {
        "radius": float(radius)
    }


def best_f1_threshold(y_true: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """Return the probability threshold (and its F1) that maximises F1."""
    candidates = np.unique(np.round(np.asarray(prob, float), 4))
    best = (0.5, -1.0)
    for t in candidates:
        f1 = binary_metrics(y_true, prob >= t)["f1"]
        if f1 > best[1]:
            best = (float(t), f1)
    return best
