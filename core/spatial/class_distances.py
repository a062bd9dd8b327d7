"""Nearest-neighbour distances between immune cell classes (phenotypes).

The role-based statistics (:mod:`core.spatial.point_processes`) measure immune cells
against tumour cells. A multiplex panel or a subtype classifier gives several immune
classes (``cell_class`` with role ``immune``: e.g. ``CD8+``, ``CD4+FOXP3+``,
``PD1+CD4-CD8+``), and the question becomes "how far is each PD1+CD4-CD8+ cell from the
nearest regulatory T cell?". :func:`class_distances_section` answers it for every ordered
pair of immune classes: the distance from each cell of class A to the nearest cell of
class B, summarised in µm, and the share of A cells with a B cell within each radius of
:attr:`SpatialParams.class_distance_radii_um` (10-30 µm by default: the cell-contact and
short-range interaction distances read in multiplex studies of immune-cell interactions,
e.g. PD-1/PD-L1 proximity).

The distances are those of the empirical multitype nearest-neighbour distance function
G_AB(r) (share of A cells whose nearest B cell is within r), without edge correction: a
cell near the border of the image may have its true nearest B cell outside it, so the
figures describe the cells analysed and are not a test against a null model.

References
----------
.. [Baddeley] Baddeley A., Rubak E., Turner R. "Spatial Point Patterns: Methodology and
   Applications with R." CRC (2015): §14.4 (multitype summary functions: the cross-type
   nearest-neighbour distance function G_ij), §8.3 (G function).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from core.spatial.params import SpatialParams, distance_summary, unavailable

__all__ = ["class_distances_section", "DEFINITION"]

#: One sentence saying how the section's figures were measured (its ``definition`` key).
DEFINITION = (
    "Euclidean distance from each immune cell of one class to the nearest immune cell of another class "
    "(cell centroids, no edge correction), for every ordered pair of immune classes"
)


def radius_key(r: float) -> str:
    """The key of radius ``r`` µm in ``n_within`` / ``fraction_within``: ``10.0`` → ``"10"``, ``12.5`` → ``"12.5"``."""
    return f"{float(r):g}"


def class_distances_section(xy: np.ndarray, role: np.ndarray, cls: np.ndarray, params: SpatialParams) -> dict:
    """Nearest-neighbour distances between immune cell classes: the ``immune_class_distances`` section.

    Only cells with role ``immune`` enter; their classes are the distinct ``cls`` values
    among them. For every ordered pair (A, B) of those classes, A != B, each A cell's
    distance to the nearest B cell is found with one k-d tree per class, in
    O(N log N) time and O(N) memory for N immune cells (no A × B distance matrix).

    Parameters
    ----------
    xy : (N, 2) float64 ndarray
        Cell centroids (x, y) in µm, all finite (the cells used by
        :func:`core.spatial.compute_spatial_stats`: µm coordinates, outside exclusions).
    role : (N,) str ndarray
        Role of each cell (:data:`core.cells.ROLES`); only ``"immune"`` cells are used.
    cls : (N,) str ndarray
        ``cell_class`` of each cell, e.g. ``"CD8+"``, ``"CD4+FOXP3+"``.
    params : SpatialParams
        Uses ``class_distance_radii_um`` (µm, > 0).

    Returns
    -------
    dict
        JSON-ready (plain Python types). With at least two immune classes::

            {"available": True,
             "definition": str,              # how the distances were measured
             "classes": [str, ...],          # immune classes, sorted
             "n_by_class": {class: int},     # immune cells per class
             "radii_um": [float, ...],       # the radii r of n_within / fraction_within
             "pairs": [                      # every ordered pair, A != B, A then B in class order
                 {"from": A, "to": B,
                  "n_from": int, "n_to": int,           # cells of A and of B
                  "median_um", "q25_um", "q75_um",      # A → nearest B distance, µm
                  "mean_um", "min_um", "max_um": float,
                  "n_within": {"10": int, ...},         # A cells with a B cell within r µm (d <= r)
                  "fraction_within": {"10": float, ...}},  # n_within / n_from, in [0, 1]
                 ...]}

        The keys of ``n_within`` and ``fraction_within`` are the radii written by
        :func:`radius_key` (``"10"``, ``"12.5"``). With fewer than two immune classes:
        ``{"available": False, "reason": ...}``.

    Raises
    ------
    ValueError
        If ``xy``, ``role`` and ``cls`` do not have N rows, or ``xy`` is not (N, 2).

    Notes
    -----
    Every class present has at least one cell, so every ordered pair is reported; with
    few cells (``n_from`` or ``n_to`` of a handful) the quartiles and shares move a lot
    with one cell: read them with the counts. Distances are not edge-corrected (see the
    module docstring).

    References
    ----------
    Baddeley, Rubak & Turner 2015, §14.4 (cross-type nearest-neighbour distances G_ij).

    Examples
    --------
    >>> xy = np.array([[0.0, 0.0], [5.0, 0.0], [50.0, 0.0]])
    >>> s = class_distances_section(xy, np.array(["immune"] * 3), np.array(["A", "B", "C"]), SpatialParams())
    >>> s["pairs"][0]["from"], s["pairs"][0]["to"], s["pairs"][0]["median_um"]
    ('A', 'B', 5.0)
    """
    xy = np.asarray(xy, dtype=np.float64)
    role = np.asarray(role)
    cls = np.asarray(cls)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(role) != len(xy) or len(cls) != len(xy):
        raise ValueError(
            f"class_distances_section needs xy (N, 2) and role, cls (N,), got {xy.shape}, {role.shape}, {cls.shape}"
        )
    imm = role == "immune"
    xy_i = xy[imm]
    # Hash-based factorisation (pandas): O(N), where sorting N Python strings takes seconds per million cells.
    codes, uniques = pd.factorize(pd.Series(cls[imm].astype(str), dtype=object), sort=True)
    classes = [str(u) for u in uniques]
    if len(classes) < 2:
        found = f"found only {classes[0]!r}" if classes else "found no immune cells"
        return unavailable(
            f"distances between immune classes need immune cells of at least 2 classes (cell_class), {found}: "
            "this needs a scenario or cell table that tells immune phenotypes apart"
        )
    radii = np.asarray(params.class_distance_radii_um, dtype=np.float64)
    keys = [radius_key(r) for r in radii]
    counts = np.bincount(codes, minlength=len(classes))
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    points = [xy_i[order[bounds[k]:bounds[k + 1]]] for k in range(len(classes))]
    trees = [cKDTree(p) for p in points]
    pairs = []
    for a, name_a in enumerate(classes):
        for b, name_b in enumerate(classes):
            if a == b:
                continue
            d, _ = trees[b].query(points[a], k=1)
            summary = distance_summary(d)
            n_within = np.searchsorted(np.sort(d), radii, side="right")
            n_from = int(len(d))
            pairs.append(
                {
                    "from": name_a,
                    "to": name_b,
                    "n_from": n_from,
                    "n_to": int(counts[b]),
                    "median_um": summary["median_um"],
                    "q25_um": summary["q25_um"],
                    "q75_um": summary["q75_um"],
                    "mean_um": summary["mean_um"],
                    "min_um": summary["min_um"],
                    "max_um": summary["max_um"],
                    "n_within": {k: int(n) for k, n in zip(keys, n_within)},
                    "fraction_within": {k: int(n) / n_from for k, n in zip(keys, n_within)},
                }
            )
    return {
        "available": True,
        "definition": DEFINITION,
        "classes": classes,
        "n_by_class": {c: int(n) for c, n in zip(classes, counts)},
        "radii_um": [float(r) for r in radii],
        "pairs": pairs,
    }
