"""The cell table every scenario yields, so statistics work the same for every stain.

A cell table is a :class:`pandas.DataFrame` with one row per detected cell and the
columns of :data:`CELL_COLUMNS`:

============  =======  ======================================================
column        dtype    meaning
============  =======  ======================================================
x_px, y_px    float64  centroid in pixels of the analysed image (x = column)
x_um, y_um    float64  centroid in µm (NaN when the image has no mpp)
cell_class    str      the scenario's class name, e.g. ``cd3-positive``
role          str      one of :data:`ROLES`
probability   float64  model confidence of ``cell_class`` in [0, 1]
============  =======  ======================================================

Scenarios may add columns (``edited``, ``cell_id``); the ones above are required.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import InputError

CELL_COLUMNS = ("x_px", "y_px", "x_um", "y_um", "cell_class", "role", "probability")
ROLES = ("immune", "tumour", "stroma", "other")


def make_cell_table(
    xy_px: np.ndarray,
    cell_class: np.ndarray | list[str] | str,
    role: np.ndarray | list[str] | str,
    probability: np.ndarray,
    mpp: float | None,
) -> pd.DataFrame:
    """Build a cell table from pixel centroids.

    Parameters
    ----------
    xy_px : (N, 2) float array
        Centroids as (x, y) in pixels of the analysed image.
    cell_class, role : str or (N,) sequence of str
        Class name and role of each cell (a single string applies to all).
        Roles must be in :data:`ROLES`.
    probability : (N,) float array in [0, 1]
        Confidence of each cell's class.
    mpp : float or None
        Microns per pixel; ``None`` leaves ``x_um``/``y_um`` as NaN.

    Returns
    -------
    pandas.DataFrame
        The cell table with :data:`CELL_COLUMNS`.

    Raises
    ------
    InputError
        If shapes disagree or a role is not one of :data:`ROLES`.
    """
    xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    prob = np.asarray(probability, dtype=np.float64).reshape(-1)
    if prob.shape[0] != n:
        raise InputError(f"got {n} centroids but {prob.shape[0]} probabilities")
    classes = np.full(n, cell_class, dtype=object) if isinstance(cell_class, str) else np.asarray(cell_class, dtype=object)
    roles = np.full(n, role, dtype=object) if isinstance(role, str) else np.asarray(role, dtype=object)
    if len(classes) != n or len(roles) != n:
        raise InputError(f"got {n} centroids but {len(classes)} classes and {len(roles)} roles")
    bad = sorted(set(roles) - set(ROLES))
    if bad:
        raise InputError(f"unknown cell role(s) {bad}: allowed roles are {list(ROLES)}")
    scale = np.nan if mpp is None else float(mpp)
    return pd.DataFrame(
        {
            "x_px": xy[:, 0],
            "y_px": xy[:, 1],
            "x_um": xy[:, 0] * scale,
            "y_um": xy[:, 1] * scale,
            "cell_class": pd.Series(classes, dtype=object),
            "role": pd.Series(roles, dtype=object),
            "probability": prob,
        },
        columns=list(CELL_COLUMNS),
    )


def empty_cell_table() -> pd.DataFrame:
    """Return a cell table with no rows and the columns of :data:`CELL_COLUMNS`."""
    return make_cell_table(np.zeros((0, 2)), [], [], np.zeros(0), None)


def validate_cell_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Check that ``cells`` has every column of :data:`CELL_COLUMNS` and valid roles.

    Returns
    -------
    pandas.DataFrame
        ``cells`` itself, unchanged.

    Raises
    ------
    InputError
        Naming the missing columns or the unknown roles.
    """
    missing = [c for c in CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise InputError(
            f"cell table is missing column(s) {missing}; a TILscope cell table has {list(CELL_COLUMNS)}"
        )
    bad = sorted(set(cells["role"].astype(str)) - set(ROLES))
    if bad:
        raise InputError(f"unknown cell role(s) {bad}: allowed roles are {list(ROLES)}")
    return cells
