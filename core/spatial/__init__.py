"""Spatial statistics of tumour-infiltrating lymphocytes, and the regions they are measured in.

Everything here works in µm on a cell table (:mod:`core.cells`) and optional region
polygons; :func:`compute_spatial_stats` returns the JSON-ready result the case store,
reports and pages read, :func:`spatial_stats` the same as a typed :class:`SpatialStats`.

Submodules (each imports only from the ones listed before it):

* :mod:`~core.spatial.regions`: :class:`Region` polygons in µm, point-in-region tests and
  QuPath-compatible GeoJSON import/export.
* :mod:`~core.spatial.params`: :class:`SpatialParams`, every threshold, and JSON helpers.
* :mod:`~core.spatial.geometry`: distances to borders, rasterised areas, the study window.
* :mod:`~core.spatial.point_processes`: nearest-tumour distances, cross-K/L/G with
  Monte-Carlo envelopes, Morisita-Horn.
* :mod:`~core.spatial.compartments`: region densities, intratumoral / stromal
  compartments, stromal TIL proxy, phenotype, invasive margin, per-cell zones.
* :mod:`~core.spatial.class_distances`: nearest distances between immune phenotypes (e.g.
  PD1+CD8+ to CD4+FOXP3+), with the share of cells within each radius.
* :mod:`~core.spatial.statistics`: :func:`compute_spatial_stats`, :class:`SpatialStats`
  (conventions and references are in its docstring).
* :mod:`~core.spatial.cell_tables`: reading TILscope and QuPath cell tables (CSV, Parquet).
* :mod:`~core.spatial.heatmaps`: density heat maps (cells/mm² per µm bin) and Getis-Ord
  Gi* hot spots, O(n) in the cells, for whole slides.
"""

from core.spatial.cell_tables import CLASS_ROLE_RULES, class_to_role, read_cell_table, read_cell_table_csv
from core.spatial.compartments import cell_spatial_table
from core.spatial.geometry import distance_to_segments_um, signed_distance_to_border_um
from core.spatial.heatmaps import DensityMap, HotSpotMap, density_map, getis_ord_gi_star, hot_spots, immune_density_map
from core.spatial.params import SpatialParams
from core.spatial.point_processes import MAX_PAIRS, morisita_horn
from core.spatial.regions import Region
from core.spatial.statistics import SCHEMA, SpatialStats, compute_spatial_stats, spatial_stats

__all__ = [
    "CLASS_ROLE_RULES",
    "DensityMap",
    "HotSpotMap",
    "MAX_PAIRS",
    "SCHEMA",
    "Region",
    "SpatialParams",
    "SpatialStats",
    "cell_spatial_table",
    "class_to_role",
    "compute_spatial_stats",
    "density_map",
    "distance_to_segments_um",
    "getis_ord_gi_star",
    "hot_spots",
    "immune_density_map",
    "morisita_horn",
    "read_cell_table",
    "read_cell_table_csv",
    "signed_distance_to_border_um",
    "spatial_stats",
]
