"""The typed result of one analysis, shared by the CLI, the app, batch jobs, statistics and outputs.

An :class:`AnalysisResult` holds what a scenario produced, by kind (the cell table, named
dense outputs that say what they hold, restored images, regions), the run's metadata
(:class:`RunInfo`), the spatial statistics once computed, and a manual review once made.
Its :attr:`AnalysisResult.summary` is the one JSON-ready digest written to
``summary.json``, saved in the case store and read by every page and report; it is derived
from the fields, so an edited cell table or new statistics are always reflected.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from core.cells import ROLES
from core.io import ImageData


@dataclass(frozen=True)
class DenseOutput:
    """A dense output at the image's size, with what its values mean.

    Attributes
    ----------
    name : str
        Key and export file stem, as the registry declares it (e.g. ``"probability"``).
    meaning : {"probability", "class_probabilities", "mask"}
    description : str
        E.g. "P(CD3+ lymphocyte) of the 14 µm window centred on each pixel".
    values : ndarray
        (H, W) float32 in [0, 1] for ``probability`` and ``mask``; (H, W, K) float32 summing
        to 1 over K for ``class_probabilities``.
    class_names : tuple of str
        The K planes' names (``class_probabilities`` only).
    color : str
        Hex colour of a one-plane output drawn over the image.
    """

    name: str
    meaning: str
    description: str
    values: np.ndarray
    class_names: tuple[str, ...] = ()
    color: str = "#ffd400"


@dataclass(frozen=True)
class RunInfo:
    """How an analysis was run: model, weights, device, precision, time, versions."""

    scenario_key: str
    scenario_title: str
    weights_file: str
    weights_sha256: str
    weights_version: str | None
    trained_on_synthetic: bool
    device: str
    precision: str
    runtime_s: float
    app_version: str
    torch_version: str
    python_version: str = field(default_factory=platform.python_version)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    #: The model's calibrated post-processing (:attr:`core.scenarios.base.ScenarioModel.operating_point`),
    #: e.g. cd3-ihc ``{"threshold": 0.55, "nms_radius_um": 4.0, "chosen_on": ...}``; None when it has none.
    operating_point: dict | None = None


@dataclass
class AnalysisResult:
    """Everything one scenario run produced.

    Attributes
    ----------
    image : ImageData
        The analysed image (its channels in their own dtype, mpp, name, SHA-256).
    cells : pandas.DataFrame
        Cell table (:data:`core.cells.CELL_COLUMNS` plus the scenario's extra columns),
        coordinates in the pixels of ``image`` and in µm.
    run : RunInfo
    scenario : core.scenarios.spec.Scenario
        The registry entry the result was produced with (classes, outputs, caution).
    dense : dict of str to DenseOutput
        Named dense outputs at the image's size.
    restored : dict of str to ndarray
        Named restored images, (H, W, 3) uint8 RGB at the image's size (e.g. ``"denoised"``).
    regions : list of core.spatial.regions.Region
        Regions the statistics used (drawn by a user, read from GeoJSON or produced by a
        compartment scenario); µm.
    warnings : list of str
        Messages for the user (conversions on reading, "mpp unknown", the scenario's caution).
    spatial : core.spatial.SpatialStats or None
        Spatial statistics, once computed.
    review : dict or None
        The manual review's summary (corrections made), once reviewed.
    outside_validated_use : list of str
        Why the image is outside what the model was validated for, when a user ran it
        anyway (:mod:`core.fitness`); empty within the validated use.
    tissue : core.fitness.TissueMask or None
        Tissue of the image (glass excluded), the denominator of every density; computed
        from the image on first use when not given (:attr:`tissue_mask`). With predicted
        compartments: their tumour and stroma (background and necrosis left out).
    compartments : core.scenarios.compartments.CompartmentMap or None
        Tissue compartments predicted for this image by a compartment scenario (its own
        output, or run beside a cell scenario): (H, W) uint8 labels in the image's pixels.
    compartments_run : RunInfo or None
        How the compartments were predicted (model, weights, device, time).
    synthetic_save_confirmed : bool
        A model trained on synthetic images only, whose result the user chose to save in the
        case history as a teaching or method-development analysis
        (:func:`core.pipeline.save_analysis`); in the summary when True.
    """

    image: ImageData
    cells: pd.DataFrame
    run: RunInfo
    scenario: Any
    dense: dict[str, DenseOutput] = field(default_factory=dict)
    restored: dict[str, np.ndarray] = field(default_factory=dict)
    regions: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    spatial: Any = None
    review: dict | None = None
    outside_validated_use: list[str] = field(default_factory=list)
    tissue: Any = None
    compartments: Any = None
    compartments_run: RunInfo | None = None
    synthetic_save_confirmed: bool = False

    @property
    def scenario_key(self) -> str:
        return self.run.scenario_key

    def _cells_in_tissue(self) -> np.ndarray | None:
        """(N,) bool: the cells whose centroid lies in the predicted tumour or stroma; None without compartments."""
        if self.compartments is None:
            return None
        lab = self.compartments.labels_at(self.cells[["x_px", "y_px"]].to_numpy(np.float64))
        return (lab == 1) | (lab == 2)

    def cells_outside_tissue(self) -> int:
        """Cells whose centroid lies in predicted background or necrosis (0 without compartments)."""
        inside = self._cells_in_tissue()
        return 0 if inside is None else int((~inside).sum())

    def compartments_summary(self) -> dict[str, Any] | None:
        """``summary["compartments"]``: the predicted map's labels, areas and provenance; None without compartments.

        Returns
        -------
        dict or None
            :meth:`core.scenarios.compartments.CompartmentMap.summary` (``labels`` exactly
            ``{"background": 0, "tumour": 1, "stroma": 2, "necrosis": 3}``, ``area_mm2`` per
            compartment, ``area_px``, ``fraction``, ``mpp``, ``method``), plus ``scenario``,
            ``scenario_title``, ``weights_file``, ``weights_sha256``, ``weights_version``,
            ``runtime_s``, ``n_cells_by_compartment`` (cells whose centroid lies in each; cells
            there are counted, but only those in tumour or stroma enter the densities) and
            ``regions_for_statistics``: ``"predicted"`` (the compartments gave the spatial
            statistics their regions), ``"drawn"`` (regions drawn or given override them),
            ``"not used"`` (statistics computed without them, e.g. those of a review) or
            ``"none"`` (no statistics: no cells, or no mpp).
        """
        if self.compartments is None:
            return None
        out = dict(self.compartments.summary())
        run = self.compartments_run
        if run is not None:
            out.update(scenario=run.scenario_key, scenario_title=run.scenario_title, weights_file=run.weights_file,
                       weights_sha256=run.weights_sha256, weights_version=run.weights_version,
                       runtime_s=round(run.runtime_s, 3))
        lab = self.compartments.labels_at(self.cells[["x_px", "y_px"]].to_numpy(np.float64))
        out["n_cells_by_compartment"] = {name: int((lab == v).sum()) for name, v in out["labels"].items()}
        sp = self.spatial
        if hasattr(sp, "extra"):  # SpatialStats
            available, predicted = bool(sp.available), "predicted_compartments" in sp.extra
        else:
            available, predicted = bool((sp or {}).get("available")), "predicted_compartments" in (sp or {})
        out["regions_for_statistics"] = ("none" if not available else "predicted" if predicted
                                         else "drawn" if self.regions else "not used")
        return out

    @property
    def tissue_mask(self):
        """The image's :class:`core.fitness.TissueMask` (computed once from the image)."""
        if self.tissue is None:
            from core.fitness import tissue_mask

            self.tissue = tissue_mask(self.image)
        return self.tissue

    @property
    def image_area_mm2(self) -> float | None:
        """Area of the whole image in mm², None without an mpp."""
        if self.image.mpp is None:
            return None
        h, w = self.image.shape
        return h * w * self.image.mpp**2 / 1e6

    @property
    def area_mm2(self) -> float | None:
        """Analysed area in mm²: the tissue of the image (glass excluded), None without an mpp."""
        return self.tissue_mask.area_mm2(self.image.mpp)

    @property
    def summary(self) -> dict[str, Any]:
        """JSON-ready digest: counts and densities per class and role, run metadata, warnings, statistics.

        Keys: ``scenario``, ``scenario_title``, ``weights_file``, ``weights_sha256``,
        ``weights_version``, ``trained_on_synthetic``, ``image`` (name, sha256, width_px,
        height_px, channels), ``mpp``, ``mpp_source``, ``analysed_area``, ``area_mm2``,
        ``n_cells``, ``counts``, ``counts_by_role``, ``density_per_mm2`` and
        ``density_by_role_per_mm2`` (cells/mm² of tissue, None without mpp),
        ``density_ci95_per_mm2`` (exact Poisson 95 % interval per class), ``image_area_mm2``,
        ``tissue_area_mm2`` (= ``area_mm2``, the densities' denominator), ``tissue_fraction``,
        ``outside_validated_use`` (reasons, empty within it), ``runtime_s``, ``device``,
        ``inference_precision``, ``torch``, ``app_version``, ``python``, ``created_at``,
        ``warnings``, and when present ``operating_point`` (the detection threshold and
        ``nms_radius_um`` read from the weights, :attr:`RunInfo.operating_point`), ``spatial``
        and ``review``. A scenario without a cell output (tissue compartments) has empty
        ``counts``. With predicted compartments (:attr:`compartments`): ``compartments``
        (:meth:`compartments_summary`), ``n_cells_in_tissue``, and the densities count only the
        cells whose centroid lies in the tumour or stroma their area is measured on.
        """
        cells, run = self.cells, self.run
        h, w = self.image.shape
        area_mm2 = self.area_mm2
        counted = self.scenario.outputs_of("cells") if hasattr(self.scenario, "outputs_of") else True
        counts = {c.name: int((cells["cell_class"] == c.name).sum()) for c in self.scenario.classes} if counted else {}
        for extra in sorted(set(cells["cell_class"]) - set(counts)):
            counts[str(extra)] = int((cells["cell_class"] == extra).sum())
        roles = {r: int((cells["role"] == r).sum()) for r in ROLES}
        # Densities count the cells on the tissue of their denominator: with predicted compartments, tumour and stroma.
        inside = self._cells_in_tissue()
        dense_cells = cells if inside is None else cells[inside]
        d_counts = counts if inside is None else {k: int((dense_cells["cell_class"] == k).sum()) for k in counts}
        d_roles = roles if inside is None else {r: int((dense_cells["role"] == r).sum()) for r in ROLES}
        out = {
            "scenario": run.scenario_key,
            "scenario_title": run.scenario_title,
            "weights_file": run.weights_file,
            "weights_sha256": run.weights_sha256,
            "weights_version": run.weights_version,
            "trained_on_synthetic": run.trained_on_synthetic,
            "image": {"name": self.image.name, "sha256": self.image.sha256, "width_px": w, "height_px": h,
                      "channels": list(self.image.channel_names)},
            "mpp": self.image.mpp,
            "mpp_source": self.image.mpp_source,
            "analysed_area": "tissue: " + self.tissue_mask.method,
            "area_mm2": area_mm2,
            "image_area_mm2": self.image_area_mm2,
            "tissue_area_mm2": area_mm2,
            "tissue_fraction": round(self.tissue_mask.fraction, 4),
            "n_cells": int(len(cells)),
            "counts": counts,
            "counts_by_role": roles,
            "density_per_mm2": None if not area_mm2 else {k: v / area_mm2 for k, v in d_counts.items()},
            "density_by_role_per_mm2": None if not area_mm2 else {k: v / area_mm2 for k, v in d_roles.items()},
            "density_ci95_per_mm2": None if not area_mm2 else {k: poisson_ci_per_mm2(v, area_mm2) for k, v in d_counts.items()},
            "runtime_s": round(run.runtime_s, 3),
            "device": run.device,
            "inference_precision": run.precision,
            "torch": run.torch_version,
            "app_version": run.app_version,
            "python": run.python_version,
            "created_at": run.created_at,
            "warnings": list(self.warnings),
            "outside_validated_use": list(self.outside_validated_use),
        }
        if run.operating_point is not None:
            out["operating_point"] = dict(run.operating_point)
        if inside is not None:
            out["n_cells_in_tissue"] = int(inside.sum())
        if self.spatial is not None:
            out["spatial"] = self.spatial.to_dict()
        if self.compartments is not None:
            out["compartments"] = self.compartments_summary()
        if self.review is not None:
            out["review"] = self.review
        if self.synthetic_save_confirmed:
            out["synthetic_save_confirmed"] = True
        return out


def poisson_ci_per_mm2(count: int, area_mm2: float, level: float = 0.95) -> list[float]:
    """Exact (Garwood) Poisson interval of a density.

    Parameters
    ----------
    count : int >= 0, cells counted
    area_mm2 : float > 0, area they were counted in
    level : float in (0, 1)

    Returns
    -------
    [low, high] in cells/mm²

    References
    ----------
    Garwood, Fiducial limits for the Poisson distribution, Biometrika 1936.
    """
    from scipy.stats import chi2

    a = 1.0 - level
    low = 0.0 if count == 0 else chi2.ppf(a / 2, 2 * count) / 2
    high = chi2.ppf(1 - a / 2, 2 * count + 2) / 2
    return [float(low) / area_mm2, float(high) / area_mm2]
