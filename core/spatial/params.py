"""Settings of the spatial statistics and the JSON-ready helpers every section shares.

:class:`SpatialParams` holds every threshold and setting of
:func:`core.spatial.compute_spatial_stats`; the result prints them all next to the figures
they produced. The helpers below make the values of a result JSON-ready: Python types
only, ``None`` instead of NaN/inf, densities in cells/mm² from counts and areas in µm²,
and ``{"available": False, "reason": ...}`` for a section that cannot be computed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.errors import InputError


@dataclass(frozen=True)
class SpatialParams:
    """Every threshold and setting of :func:`~core.spatial.compute_spatial_stats` (all printed in its output).

    Attributes
    ----------
    radii_um : tuple of float > 0
        Radii r for "fraction of immune cells within r µm of a tumour cell" and "immune
        cells per tumour cell within r". Default (10, 20, 30, 50).
    margin_half_width_um : float > 0
        Half-width of the invasive-margin band around the tumour border. Default 500 µm
        (the IM of Galon et al. 2006 / Pagès et al. 2018 spans ±500 µm).
    ripley_radii_um : tuple of float >= 0, increasing
        Radii at which cross-K, cross-L and cross-G are evaluated. Default 0, 5, ..., 100
        µm (cell-contact to ~10 cell diameters). Radii above half the window's shorter
        side are dropped (with a warning).
    n_simulations : int >= 0
        Random relabellings for the Monte-Carlo envelopes. Default 99 (a pointwise
        envelope at 2/100, a global one at 5/100).
    envelope_alpha : float in (0, 1)
        Level of the global (maximum absolute deviation) envelope of L(r) - r. Default 0.05.
    grid_cell_um : float > 0
        Side of the squares for the Morisita-Horn index and the grid compartments.
        Default 100 µm (Maley et al. 2015 used a comparable grid of tissue squares).
    immune_cell_area_um2 : float > 0
        Area one immune cell covers in the stromal TIL proxy. Default 38.5 µm², a
        small lymphocyte of 7 µm diameter (π·3.5²); lymphocytes are 6-9 µm across.
    compartment_tumour_fraction : float in (0, 1]
        Grid compartments: a square is tumour when tumour cells are at least this
        fraction of its non-immune cells. Default 0.5.
    inflamed_min_intratumoral_per_mm2 : float >= 0
        Phenotype: "inflamed" when the intratumoral immune density reaches this.
        Default 100 cells/mm² (illustrative, not a validated cut-off: set it from your
        cohort and marker).
    excluded_min_stromal_per_mm2 : float >= 0
        Phenotype: "excluded" when not inflamed and the stromal immune density reaches
        this; otherwise "desert". Default 100 cells/mm² (illustrative).
    min_compartment_area_mm2 : float >= 0
        Smallest tumour (and stromal) compartment area on which the phenotype call, the
        stromal TIL proxy and the CT / IM densities are reported; below it they read "not
        enough tissue". Default 0.5 mm², about two 40x high-power fields (0.2-0.25 mm² each):
        the TILs Working Group scores the whole tumour area, not single fields (Salgado et
        al. 2015), and Immunoscore reads densities over tiles of about 0.8 mm² (Pagès et al.
        2018); a call on a few hundredths of a mm² is not reproducible.
    min_cells_per_role : int >= 1
        Smallest number of immune and of tumour cells on which the distance statistics
        (nearest-tumour distances, shares within r) and the cross-K/L and cross-G functions
        are reported; below it they read "too few cells". Default 10: with fewer cells a
        share or a quantile moves by 10 % or more with one cell.
    immunoscore_cutoffs_per_mm2 : (float, float) or None
        (CT, IM) density cut-offs for the 0-2 Immunoscore-like count of "high"
        compartments; None (default) reports the densities only, because a true
        Immunoscore needs the assay's reference cohort.
    histogram_bin_um, histogram_max_um : float > 0
        Bins of the immune → nearest tumour distance histogram (default 2 µm up to
        200 µm; larger distances are counted as overflow).
    window_um : (x_min, y_min, x_max, y_max) in µm or None
        Study window, normally the image extent; None uses the cells' bounding box.
    class_distance_radii_um : tuple of float > 0, distinct
        Radii r for "share of class-A immune cells with a class-B immune cell within r µm"
        in the distances between immune classes (:mod:`core.spatial.class_distances`).
        Default (10, 20, 30): cell contact to short-range interaction, the distances read
        in multiplex studies of immune-cell interactions (e.g. PD-1/PD-L1 proximity).
    """

    radii_um: tuple[float, ...] = (10.0, 20.0, 30.0, 50.0)
    margin_half_width_um: float = 500.0
    ripley_radii_um: tuple[float, ...] = tuple(float(r) for r in range(0, 101, 5))
    n_simulations: int = 99
    envelope_alpha: float = 0.05
    grid_cell_um: float = 100.0
    immune_cell_area_um2: float = 38.5
    compartment_tumour_fraction: float = 0.5
    inflamed_min_intratumoral_per_mm2: float = 100.0
    excluded_min_stromal_per_mm2: float = 100.0
    min_compartment_area_mm2: float = 0.5
    min_cells_per_role: int = 10
    immunoscore_cutoffs_per_mm2: tuple[float, float] | None = None
    histogram_bin_um: float = 2.0
    histogram_max_um: float = 200.0
    window_um: tuple[float, float, float, float] | None = None
    class_distance_radii_um: tuple[float, ...] = (10.0, 20.0, 30.0)

    def validate(self) -> "SpatialParams":
        """Return ``self`` after checking every value; raise InputError naming the bad one."""

        def pos(name: str, v: Any, zero_ok: bool = False) -> None:
            ok = isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v))
            ok = ok and (float(v) >= 0 if zero_ok else float(v) > 0)
            if not ok:
                raise InputError(f"SpatialParams.{name} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {v!r}")

        if len(self.radii_um) == 0:
            raise InputError("SpatialParams.radii_um is empty: give at least one radius in µm, e.g. (10, 20, 30, 50)")
        for r in self.radii_um:
            pos("radii_um", r)
        cr = self.class_distance_radii_um
        if not isinstance(cr, (tuple, list, np.ndarray)) or len(cr) == 0:
            raise InputError(
                f"SpatialParams.class_distance_radii_um must be a non-empty sequence of radii in µm, e.g. (10, 20, 30), "
                f"got {cr!r}"
            )
        for r in cr:
            pos("class_distance_radii_um", r)
        if len({float(r) for r in cr}) != len(cr):
            raise InputError(f"SpatialParams.class_distance_radii_um has a radius twice, got {cr!r}: give each radius once")
        rr = np.asarray(self.ripley_radii_um, dtype=float)
        if rr.ndim != 1 or len(rr) < 2 or not np.all(np.isfinite(rr)) or rr.min() < 0 or np.any(np.diff(rr) <= 0):
            raise InputError(
                f"SpatialParams.ripley_radii_um must be >= 2 increasing radii >= 0 in µm, got {self.ripley_radii_um!r}"
            )
        pos("margin_half_width_um", self.margin_half_width_um)
        pos("grid_cell_um", self.grid_cell_um)
        pos("immune_cell_area_um2", self.immune_cell_area_um2)
        pos("histogram_bin_um", self.histogram_bin_um)
        pos("histogram_max_um", self.histogram_max_um)
        pos("inflamed_min_intratumoral_per_mm2", self.inflamed_min_intratumoral_per_mm2, zero_ok=True)
        pos("excluded_min_stromal_per_mm2", self.excluded_min_stromal_per_mm2, zero_ok=True)
        pos("min_compartment_area_mm2", self.min_compartment_area_mm2, zero_ok=True)
        if not isinstance(self.min_cells_per_role, (int, np.integer)) or self.min_cells_per_role < 1:
            raise InputError(f"SpatialParams.min_cells_per_role must be an integer >= 1, got {self.min_cells_per_role!r}")
        if not isinstance(self.n_simulations, (int, np.integer)) or self.n_simulations < 0:
            raise InputError(f"SpatialParams.n_simulations must be an integer >= 0, got {self.n_simulations!r}")
        if not 0 < float(self.envelope_alpha) < 1:
            raise InputError(f"SpatialParams.envelope_alpha must be in (0, 1), got {self.envelope_alpha!r}")
        if not 0 < float(self.compartment_tumour_fraction) <= 1:
            raise InputError(
                f"SpatialParams.compartment_tumour_fraction must be in (0, 1], got {self.compartment_tumour_fraction!r}"
            )
        if self.immunoscore_cutoffs_per_mm2 is not None:
            if len(self.immunoscore_cutoffs_per_mm2) != 2:
                raise InputError("SpatialParams.immunoscore_cutoffs_per_mm2 must be (CT, IM) cells/mm² or None")
            for v in self.immunoscore_cutoffs_per_mm2:
                pos("immunoscore_cutoffs_per_mm2", v, zero_ok=True)
        if self.window_um is not None:
            w = np.asarray(self.window_um, dtype=float)
            if w.shape != (4,) or not np.all(np.isfinite(w)) or w[2] <= w[0] or w[3] <= w[1]:
                raise InputError(
                    f"SpatialParams.window_um must be (x_min, y_min, x_max, y_max) in µm with max > min, got {self.window_um!r}"
                )
        return self

    def to_dict(self) -> dict:
        """JSON-ready dict of the parameters (tuples as lists)."""
        return json_ready(asdict(self))


def json_ready(obj: Any) -> Any:
    """Recursively convert numpy types to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_ready(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def density_per_mm2(count: float, area_um2: float | None) -> float | None:
    """``count`` cells over ``area_um2`` µm² as cells/mm²; None without a positive area."""
    if area_um2 is None or area_um2 <= 0:
        return None
    return float(count) / (area_um2 / 1e6)


def ratio_or_none(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def distance_summary(d: np.ndarray) -> dict:
    """n, mean, median, quartiles, min and max of distances ``d`` ((N,) float, µm); None when N = 0."""
    if len(d) == 0:
        return {"n": 0, "mean_um": None, "median_um": None, "q25_um": None, "q75_um": None, "min_um": None, "max_um": None}
    q = np.percentile(d, [25, 50, 75])
    return {
        "n": int(len(d)),
        "mean_um": float(d.mean()),
        "median_um": float(q[1]),
        "q25_um": float(q[0]),
        "q75_um": float(q[2]),
        "min_um": float(d.min()),
        "max_um": float(d.max()),
    }


def unavailable(reason: str) -> dict:
    """The value of a section that cannot be computed: ``{"available": False, "reason": reason}``."""
    return {"available": False, "reason": reason}
