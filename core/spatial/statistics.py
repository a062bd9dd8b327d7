"""Spatial statistics of tumour-infiltrating lymphocytes on a cell table.

Where are the immune cells: inside tumour nests or held back in the stroma, how close
do they come to tumour cells, how dense are they in the tumour centre (CT) versus the
invasive margin (IM)? How far apart are the immune classes (phenotypes of a multiplex
panel, e.g. PD1+CD8+ T cells from the nearest regulatory T cell)?
:func:`compute_spatial_stats` answers on a cell table
(:mod:`core.cells`: ``x_um``, ``y_um``, ``role``, ``cell_class``) and optional
:class:`core.spatial.regions.Region` polygons, in µm, µm², mm² and cells/mm² only, and puts
every threshold it used next to the figure it produced.

The result is a JSON-ready dict (what the case store, reports and pages read);
:func:`spatial_stats` returns the same result as a typed :class:`SpatialStats`, whose
``to_dict`` / ``from_dict`` carry the schema version :data:`SCHEMA`.

Conventions
-----------
* Coordinates are (x, y) in µm; pixels never enter this package, so the same tissue
  imaged at two mpp values gives the same figures.
* Roles (:data:`core.cells.ROLES`): ``immune`` cells are the TILs; ``tumour`` cells are
  the reference for distances and cross-K. Only ``immune_class_distances`` reads
  ``cell_class``: nearest-neighbour distances between the classes of the immune cells
  (:mod:`core.spatial.class_distances`; unavailable with fewer than two immune classes).
* Cells inside ``exclude`` regions are dropped from every statistic and exclusion areas
  are subtracted from every area.
* **Study window** (Ripley K/L, cross-G, Morisita-Horn grid, CT/IM areas): the
  rectangle ``SpatialParams.window_um`` (pass the image extent in µm, i.e.
  ``(0, 0, width_px * mpp, height_px * mpp)``) or, when it is not given, the
  **bounding box of the cells**; exclusions are cut out of it.
* **Tumour border**: the outline of ``margin`` regions when there are any, else the
  outline of ``tumour`` regions. Signed distance to it is **negative inside the
  tumour and positive outside** (towards the stroma).
* **Compartments** (intratumoral / stromal): from ``tumour`` regions when drawn (stroma =
  ``stroma`` regions, or the window outside tumour regions when none is drawn);
  without tumour regions, from a grid of ``grid_cell_um`` squares, a square being tumour
  when tumour cells are at least ``compartment_tumour_fraction`` of its non-immune cells.
  Regions of one kind are assumed not to overlap; a cell in a tumour and a stroma region
  counts as intratumoral.
* Randomness: one :class:`numpy.random.Generator`, seeded once from ``seed`` and passed
  down.

References
----------
.. [Ripley] Ripley B.D. "Modelling spatial patterns." J R Stat Soc B 39:172-212 (1977);
   Ripley B.D. "The second-order analysis of stationary point processes." J Appl Prob
   13:255-266 (1976).
.. [Baddeley] Baddeley A., Rubak E., Turner R. "Spatial Point Patterns: Methodology and
   Applications with R." CRC (2015): §7.4 (edge corrections: translation, border),
   §8.3 (G function, reduced-sample), §14.4 (multitype K, G; cross-type nearest-neighbour
   distances between immune classes), §10.7 (random labelling).
.. [Envelopes] Baddeley A. et al. "On tests of spatial pattern based on simulation
   envelopes." Ecol Monogr 84:477-489 (2014) (global MAD envelope).
.. [Galon] Galon J. et al. "Type, density, and location of immune cells within human
   colorectal tumors predict clinical outcome." Science 313:1960-1964 (2006);
   Pagès F. et al. "International validation of the consensus Immunoscore for the
   classification of colon cancer." Lancet 391:2128-2139 (2018) (CT and IM, IM = a
   band around the invasive border).
.. [Salgado] Salgado R. et al. "The evaluation of tumor-infiltrating lymphocytes (TILs)
   in breast cancer: recommendations by an International TILs Working Group 2014."
   Ann Oncol 26:259-271 (2015).
.. [Morisita] Horn H.S. "Measurement of 'overlap' in comparative ecological studies."
   Am Nat 100:419-424 (1966); Maley C.C. et al. "An ecological measure of immune-cancer
   colocalization as a prognostic factor for breast cancer." Breast Cancer Res 17:131
   (2015).
.. [Hegde] Hegde P.S., Karanikas V., Evers S. "The where, the when, and the how of
   immune monitoring for cancer immunotherapies in the era of checkpoint inhibition."
   Clin Cancer Res 22:1865-1874 (2016) (inflamed / excluded / desert).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from core.cells import ROLES
from core.errors import InputError
from core.spatial.class_distances import class_distances_section
from core.spatial.compartments import compartment_sections, invasive_margin_section, regions_section
from core.spatial.geometry import StudyWindow
from core.spatial.params import SpatialParams, density_per_mm2, json_ready, unavailable
from core.spatial.point_processes import distances_section, morisita_section, ripley_sections
from core.spatial.regions import Region, points_in_regions

#: Schema of the result dict (its ``"schema"`` key); bump it when a key changes meaning.
SCHEMA = "tilscope.spatial/1"
#: Schemas :meth:`SpatialStats.from_dict` reads.
READABLE_SCHEMAS = (SCHEMA,)


def compute_spatial_stats(
    cells: pd.DataFrame,
    regions: list[Region] | None = None,
    params: SpatialParams | None = None,
    seed: int = 0,
) -> dict:
    """Spatial statistics of immune cells relative to tumour cells and regions.

    Parameters
    ----------
    cells : pandas.DataFrame
        Cell table with ``x_um``, ``y_um`` (float64, µm; NaN when the image had no mpp)
        and ``role`` (one of :data:`core.cells.ROLES`); ``cell_class`` is used for
        per-class counts and the distances between immune classes when present.
    regions : list of Region, optional
        Tumour / stroma / exclude / margin polygons in µm.
    params : SpatialParams, optional
        Thresholds and settings; defaults as documented in :class:`SpatialParams`.
    seed : int
        Seeds the single :class:`numpy.random.Generator` used for every random
        relabelling (the same seed gives the same envelopes).

    Returns
    -------
    dict
        JSON-serialisable (Python types only, None instead of NaN), with keys:
        ``schema``, ``available``, ``params`` (every threshold used), ``window``,
        ``counts``, ``regions`` (count, area_mm2, density_per_mm2 per region and per
        kind), ``distances`` (immune → nearest tumour: summary in µm, histogram, ECDF,
        ``within_radius`` rows with the exact counts, fractions and immune cells per
        tumour cell), ``compartments`` (intratumoral and stromal immune densities, their
        ratio), ``invasive_margin`` (CT/IM densities, Immunoscore-like, histogram of
        signed distances of immune cells to the border), ``ripley`` (cross-K/L with
        envelopes), ``cross_g``, ``morisita_horn``, ``immune_class_distances`` (per
        ordered pair of immune classes A → B: nearest-B distance summary in µm and the
        share of A cells within each of ``class_distance_radii_um``; see
        :func:`core.spatial.class_distances.class_distances_section`),
        ``stromal_til_proxy``, ``phenotype``, ``warnings``, ``runtime_s``. A section
        that cannot be computed is ``{"available": False, "reason": ...}``. When no cell has µm coordinates the
        whole result is ``{"available": False, "reason": "... needs an mpp ..."}``.
        :func:`spatial_stats` gives the same result as a typed :class:`SpatialStats`.

    Raises
    ------
    InputError
        If ``cells`` lacks ``x_um``/``y_um``/``role``, a role is unknown, ``regions``
        holds something other than Region, or ``params`` is invalid.

    References
    ----------
    See the module docstring: Ripley 1976/1977 and Baddeley et al. 2015 (cross-K with
    translation edge correction, cross-G with border correction, random labelling);
    Baddeley et al. 2014 (global envelope); Galon et al. 2006 / Pagès et al. 2018
    (CT, IM); Salgado et al. 2015 (stromal TILs); Horn 1966 / Maley et al. 2015
    (Morisita-Horn); Hegde et al. 2016 (phenotypes); Baddeley et al. 2015 §14.4
    (distances between immune classes).
    """
    t_start = time.perf_counter()
    params = (params or SpatialParams()).validate()
    regions = list(regions or [])
    for r in regions:
        if not isinstance(r, Region):
            raise InputError(f"regions must be core.spatial.regions.Region objects, got {type(r).__name__}")
    missing = [c for c in ("x_um", "y_um", "role") if c not in cells.columns]
    if missing:
        raise InputError(
            f"cell table is missing column(s) {missing}: spatial statistics need x_um, y_um (µm) and role"
        )
    roles_all = cells["role"].astype(str).to_numpy()
    bad = sorted(set(roles_all) - set(ROLES))
    if bad:
        raise InputError(f"unknown cell role(s) {bad}: allowed roles are {list(ROLES)}")
    base = {"schema": SCHEMA, "params": params.to_dict(), "units": {"distance": "µm", "area": "mm²", "density": "cells/mm²"}}
    xy_all = cells[["x_um", "y_um"]].to_numpy(dtype=np.float64)
    finite = np.isfinite(xy_all).all(axis=1)
    if len(cells) and not finite.any():
        return json_ready(
            {
                **base,
                "available": False,
                "reason": "spatial statistics need µm coordinates, but the image has no mpp: "
                "enter the scanner's microns per pixel and analyse again",
                "counts": {"n_cells": int(len(cells))},
            }
        )
    warnings: list[str] = []
    if not finite.all():
        warnings.append(f"{int((~finite).sum())} cell(s) without µm coordinates were left out")
    classes_all = cells["cell_class"].astype(str).to_numpy() if "cell_class" in cells.columns else roles_all
    excludes = [r for r in regions if r.kind == "exclude"]
    in_excl = np.zeros(len(cells), dtype=bool)
    if excludes and finite.any():
        in_excl[finite] = points_in_regions(xy_all[finite], excludes)
    keep = finite & ~in_excl
    xy, role, cls = xy_all[keep], roles_all[keep], classes_all[keep]
    rng = np.random.default_rng(seed)

    # Study window.
    if params.window_um is not None:
        rect, wsource = tuple(params.window_um), "SpatialParams.window_um (image extent)"
    elif len(xy):
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        rect, wsource = (lo[0], lo[1], hi[0], hi[1]), "bounding box of the cells"
    else:
        rect, wsource = None, "none"
    window = None
    if rect is not None and rect[2] > rect[0] and rect[3] > rect[1]:
        window = StudyWindow(rect, wsource, excludes)
    in_win = window.contains(xy) if window is not None else np.zeros(len(xy), dtype=bool)

    out: dict[str, Any] = {**base, "available": True}
    out["window"] = (
        {
            "source": wsource,
            "rect_um": list(window.rect),
            "area_mm2": window.area_um2 / 1e6,
            "excluded_area_mm2": window.excluded_area_um2 / 1e6,
            "area_method": window.area_method,
        }
        if window is not None
        else unavailable("fewer than two distinct cell positions: no study window")
    )
    imm, tum = role == "immune", role == "tumour"
    out["counts"] = counts_section(len(cells), role, cls, in_excl, finite, window, in_win)

    out["regions"] = regions_section(xy, role, regions)
    out["distances"] = distances_section(xy, imm, tum, params)
    out["compartments"], out["stromal_til_proxy"], out["phenotype"] = compartment_sections(
        xy, role, imm, regions, window, in_win, params
    )
    out["invasive_margin"] = invasive_margin_section(xy, imm, regions, window, in_win, params)
    out["ripley"], out["cross_g"] = ripley_sections(xy, tum, imm, in_win, window, params, rng, warnings)
    out["morisita_horn"] = morisita_section(xy, role, imm, tum, in_win, window, params)
    out["immune_class_distances"] = class_distances_section(xy, role, cls, params)
    out["warnings"] = warnings
    out["runtime_s"] = time.perf_counter() - t_start
    return json_ready(out)


def counts_section(n_table: int, role: np.ndarray, cls: np.ndarray, in_excl: np.ndarray, finite: np.ndarray,
                   window: StudyWindow | None, in_win: np.ndarray) -> dict:
    """The ``counts`` section: cells used and left out, by role and class, densities in the study window.

    Parameters
    ----------
    n_table : int, rows of the cell table
    role, cls : (N,) str ndarray, role and class of the N cells used (µm coordinates, outside exclusions)
    in_excl, finite : (n_table,) bool ndarray, cells in exclusion regions, cells with µm coordinates
    window : StudyWindow or None
    in_win : (N,) bool ndarray, cells used that lie in the window

    Returns
    -------
    dict: ``n_cells_in_table``, ``n_cells_used``, ``n_excluded_by_regions``, ``n_without_um``,
    ``by_role``, ``by_class``, ``density_per_mm2_in_window`` (cells/mm², None without a window)
    """
    # Hash-based counts (pandas): O(N), where comparing or sorting N Python strings took seconds per million cells.
    by_role = pd.Series(role, dtype=object).value_counts()
    by_class = pd.Series(cls, dtype=object).value_counts()
    in_window = pd.Series(role[in_win], dtype=object).value_counts() if window else None
    return {
        "n_cells_in_table": int(n_table),
        "n_cells_used": int(len(role)),
        "n_excluded_by_regions": int(in_excl.sum()),
        "n_without_um": int((~finite).sum()),
        "by_role": {r: int(by_role.get(r, 0)) for r in ROLES},
        "by_class": {str(k): int(by_class[k]) for k in sorted(by_class.index)},
        "density_per_mm2_in_window": (
            {r: density_per_mm2(int(in_window.get(r, 0)), window.area_um2) for r in ROLES} if window else None
        ),
    }


@dataclass(kw_only=True)
class SpatialStats:
    """The result of :func:`compute_spatial_stats` as a typed, versioned object.

    Every section is the JSON-ready dict documented in :func:`compute_spatial_stats`;
    ``None`` means the key is absent (``reason`` in an available result; every section
    when the image had no mpp). :meth:`to_dict` gives back exactly that dict, keys in the
    same order, so its JSON text is byte-identical; :meth:`from_dict` reads it, and the
    dicts the case store kept before this class existed.

    Attributes
    ----------
    schema : str
        Version of the layout, :data:`SCHEMA` (``"tilscope.spatial/1"``).
    available : bool
        False when no statistic could be computed (``reason`` says why).
    reason : str or None
        Why the result is unavailable, e.g. "... the image has no mpp ...".
    params : dict or None
        Every threshold used (:meth:`SpatialParams.to_dict`).
    units : dict or None
        ``{"distance": "µm", "area": "mm²", "density": "cells/mm²"}``.
    window, counts, regions, distances, compartments, stromal_til_proxy : dict or None
        The sections (:data:`SECTIONS`); one that could not be computed is
        ``{"available": False, "reason": ...}``.
    phenotype, invasive_margin, ripley, cross_g, morisita_horn : dict or None
        Likewise.
    immune_class_distances : dict or None
        Nearest-neighbour distances between immune classes
        (:func:`core.spatial.class_distances.class_distances_section`); None in a dict
        saved before this section existed, which then round-trips without it.
    warnings : list of str or None
        What the user should know (cells left out, Ripley radii dropped).
    runtime_s : float or None
        Seconds :func:`compute_spatial_stats` took.
    extra : dict
        Top-level keys the schema does not define, kept as they are and written after the
        others: e.g. ``corrections`` (added by :func:`core.review.review_statistics`) or
        ``input`` (in the CLI's ``stats.json``).

    Raises
    ------
    InputError
        If ``schema`` is not one this TILscope reads (:data:`READABLE_SCHEMAS`).

    Examples
    --------
    >>> s = spatial_stats(cells, regions, params, seed=0)  # doctest: +SKIP
    >>> s.phenotype["call"]  # doctest: +SKIP
    'excluded'
    >>> SpatialStats.from_dict(s.to_dict()) == s  # doctest: +SKIP
    True
    """

    #: Names of the statistic sections, in the order of the result dict.
    SECTIONS: ClassVar[tuple[str, ...]] = (
        "window", "counts", "regions", "distances", "compartments", "stromal_til_proxy", "phenotype",
        "invasive_margin", "ripley", "cross_g", "morisita_horn", "immune_class_distances",
    )

    schema: str = SCHEMA
    params: dict[str, Any] | None = None
    units: dict[str, str] | None = None
    available: bool
    reason: str | None = None
    window: dict[str, Any] | None = None
    counts: dict[str, Any] | None = None
    regions: dict[str, Any] | None = None
    distances: dict[str, Any] | None = None
    compartments: dict[str, Any] | None = None
    stromal_til_proxy: dict[str, Any] | None = None
    phenotype: dict[str, Any] | None = None
    invasive_margin: dict[str, Any] | None = None
    ripley: dict[str, Any] | None = None
    cross_g: dict[str, Any] | None = None
    morisita_horn: dict[str, Any] | None = None
    immune_class_distances: dict[str, Any] | None = None
    warnings: list[str] | None = None
    runtime_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_schema(self.schema)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of :func:`compute_spatial_stats`, keys in its order, then ``extra``.

        Returns
        -------
        dict
            A deep copy: changing it leaves this object as it is.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and value is not None:
                out[f.name] = copy.deepcopy(value)
        for key, value in self.extra.items():
            out[key] = copy.deepcopy(value)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpatialStats:
        """Read a result dict: :func:`compute_spatial_stats` output, or one the case store kept.

        Parameters
        ----------
        d : mapping
            The dict of :meth:`to_dict`. One without a ``"schema"`` key predates the key
            and is read with the current layout (``to_dict`` then writes :data:`SCHEMA`);
            one without ``"available"`` is read as unavailable, as the readers of these
            dicts always did (``stats.get("available", False)``). Other top-level keys go
            to ``extra``. ``d`` is copied, not kept.

        Returns
        -------
        SpatialStats

        Raises
        ------
        InputError
            If ``d`` is not a mapping, its ``schema`` is not one this TILscope reads, or
            a known key has the wrong type (a section that is not a dict, ``warnings``
            that is not a list of str, ...).
        """
        if not isinstance(d, Mapping):
            raise InputError(
                f"spatial statistics must be a dict (the JSON of compute_spatial_stats), got {type(d).__name__}"
            )
        _check_schema(d.get("schema", SCHEMA))
        known = [f.name for f in fields(cls) if f.name not in ("schema", "extra")]
        kwargs = {name: _checked(name, copy.deepcopy(d[name])) for name in known if name in d}
        kwargs["available"] = bool(kwargs.get("available") or False)
        extra = {k: copy.deepcopy(v) for k, v in d.items() if k not in known and k != "schema"}
        return cls(schema=SCHEMA, extra=extra, **kwargs)


def _check_schema(schema: Any) -> None:
    if schema not in READABLE_SCHEMAS:
        raise InputError(
            f"spatial statistics have schema {schema!r}, but this TILscope reads only {list(READABLE_SCHEMAS)}: "
            "update TILscope to read them, or compute the statistics again from the cell table"
        )


def _checked(name: str, value: Any) -> Any:
    """``value`` of the top-level key ``name`` if its type fits the schema (None always does)."""
    if value is None:
        return None
    if name == "available":
        ok, want = isinstance(value, (bool, np.bool_)), "true or false"
    elif name == "reason":
        ok, want = isinstance(value, str), "a str"
    elif name == "warnings":
        ok, want = isinstance(value, list) and all(isinstance(w, str) for w in value), "a list of str"
    elif name == "runtime_s":
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        want = "a number of seconds"
    else:  # params, units and the sections
        ok, want = isinstance(value, Mapping), "a dict"
    if not ok:
        raise InputError(f"spatial statistics key {name!r} must be {want}, got {type(value).__name__} {str(value)[:60]!r}")
    return bool(value) if name == "available" else value


def spatial_stats(
    cells: pd.DataFrame,
    regions: list[Region] | None = None,
    params: SpatialParams | None = None,
    seed: int = 0,
) -> SpatialStats:
    """:func:`compute_spatial_stats` as a typed :class:`SpatialStats`.

    Parameters, Raises and References as :func:`compute_spatial_stats`;
    ``spatial_stats(...).to_dict()`` equals ``compute_spatial_stats(...)`` (``runtime_s``
    apart, which is measured anew).
    """
    return SpatialStats.from_dict(compute_spatial_stats(cells, regions, params, seed=seed))
