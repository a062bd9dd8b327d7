"""Streaming tiled analysis of a whole slide, resumable, in bounded memory.

:func:`analyze_slide` runs one cell-detecting scenario over the tissue of a slide:

1. **Tissue** (:func:`core.slides.tissue.detect_tissue`, about 8 µm/px), minus exclusion
   regions, within an optional ROI; its area (mm²) is the denominator of every density.
2. **Tiles**: the slide is read on the grid of the scenario's input mpp (the level whose mpp
   is within 2 % of it when the pyramid has one, else the coarsest finer level resampled;
   :meth:`core.slides.reader.Slide.read_grid`), cut into core tiles of the scenario's tile
   size (registry ``tiling.tile_um``); tiles whose core does not meet the tissue are skipped.
   Each tile is read with a context margin on every side the slide has (the registry's
   overlap, at least :data:`MIN_CONTEXT_UM`); a tile at the tissue's edge is read only over
   the box around its tissue, with the same context (:func:`_tissue_parts`: glass is not run
   through the network). Each window is run through the scenario's own block
   machinery: network + ``postprocess_window`` for a cell tiler (he-til), the dense tiler
   and its cell post-processing (:meth:`~core.scenarios.base.ScenarioModel.predict`) for a
   dense one (cd3-ihc). A cell is kept when its centroid lies in the tile's core (so it
   belongs to exactly one tile, the rule of :func:`core.tiling.detect_in_blocks`) and in the
   tissue. Centroids are mapped to level-0 pixels (TILscope's pixel-centre convention,
   :func:`core.scenarios.base.to_image_xy`) and µm (``x_um = x_px * mpp``).
3. **Resume**: finished tiles are appended as Parquet parts to ``DIR.partial/parts/`` (one
   part per batch of tiles, flushed every :data:`FLUSH_TILES` tiles, :data:`FLUSH_CELLS`
   cells or :data:`FLUSH_SECONDS` s, and when the run stops for any reason, an exception or
   Ctrl-C included), then
   recorded in ``DIR.partial/tiles_done.json``, replaced atomically. Running the same
   command again skips the recorded tiles; a hard kill loses at most the unflushed batch.
   The run's settings are kept in ``DIR.partial/run.json``: a rerun with other settings
   (scenario, mpp, ROI, tiling, another slide) is refused until that folder is removed.
4. **Outputs**, written into a temporary folder and moved to ``DIR`` when all are
   written (:func:`core.io.write_output_folder`), then ``DIR.partial`` is removed:
   ``cells.parquet`` and ``cells.csv`` (level-0 px and µm, class, role, probability, the
   scenario's extra columns, ``tile``), ``summary.json`` (:func:`slide_summary`),
   ``tissue.geojson`` (level-0 px, QuPath), ``overlay.png`` (thumbnail with the tissue
   outline and the cells in their class colours), ``immune_density.png`` + ``.npy``
   (immune cells per mm² of the tissue in each :data:`HEATMAP_BIN_UM` µm bin,
   :func:`core.spatial.heatmaps.density_from_counts`, the counts added part by part) and
   ``immune_hot_spots.npy`` (its Getis-Ord Gi* hot and cold spots); ``summary.json`` carries
   the spatial statistics of a field analysis (:func:`slide_spatial_statistics`).

Memory
------
Bounded whatever the slide size: one tile with its context as uint8 (4.4 MB for he-til's
1216 px windows), one read's float32 resampling temporaries (:mod:`core.slides.reader`:
60-250 MB for such a window, at most about 350 MB for any read), the network's activations
for one window (he-til in float32 on CPU: about 1.9 GB for 1216 x 1216 px), the cells of at
most :data:`FLUSH_TILES` tiles (a few MB), the tissue mask (at most 4096 x 4096 bool, 16 MB)
and its polygons, the overlay thumbnail (at most 2048 px a side, 12 MB) and the density grid
(100 µm bins: 1 000 x 1 000 for a 10 cm slide, 4 MB). The final files are assembled part by
part, never holding the whole cell table. A window is never larger than a tile with its
context; one over a tile at the tissue's edge covers only the tissue's box in it
(:func:`_tissue_parts`), its sides in steps of :data:`WINDOW_STEP_PX`, so the network sees few
shapes and its buffers are reused rather than fragmenting the allocator that
:func:`core.allocator.tune_allocator` tunes (it keeps freed memory for reuse). Tiles are read
and analysed in turn, not read ahead in a thread: a reader thread's allocator arena cost
about 1 GB of peak memory for under 5 % of the time. The heap is trimmed between windows
(:func:`core.allocator.release_free_memory`), so freed pieces do not pile up with the slide.
Measured (``benchmarks/bench_slides.py``, he-til, 2 CPU cores, float32): peak RSS 3.09, 3.26
and 3.35 GB at 1, 4 and 16 mm² of tissue, model and libraries included (README).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import shapely

from core.allocator import release_free_memory
from core.cells import CELL_COLUMNS, ROLES
from core.errors import InputError, TILscopeError
from core.spatial.heatmaps import HEATMAP_MIN_TISSUE_FRACTION
from core.tiling import Progress

__all__ = ["analyze_slide", "check_slide_scenario", "partial_folder", "slide_spatial_statistics", "slide_fitness",
           "read_slide_stain", "SLIDE_FILES",
           "HEATMAP_BIN_UM",
           "MIN_CONTEXT_UM", "FLUSH_TILES", "FLUSH_CELLS", "FLUSH_SECONDS", "slide_scenarios"]

#: Files ``analyze_slide`` writes into its output folder.
SLIDE_FILES = ("cells.parquet", "cells.csv", "summary.json", "tissue.geojson", "overlay.png", "immune_density.png",
               "immune_density.npy", "immune_hot_spots.npy")
#: Side of a bin of the immune-density heat map, µm.
HEATMAP_BIN_UM = 100.0
#: Least context around each tile, µm (the registry's overlap when larger): covers the CD3
#: CNN's 14 µm field and its 8 µm non-maximum suppression box, whose registry overlap is 0.
MIN_CONTEXT_UM = 20.0
#: Tiles, cells and seconds of work collected before a Parquet part is written.
FLUSH_TILES = 16
FLUSH_CELLS = 200_000
FLUSH_SECONDS = 60.0
#: Longest side of the overlay thumbnail, px.
OVERLAY_MAX_SIDE_PX = 2048
#: A window over part of a tile (the tissue in it) has sides in steps of this many px, so
#: the network sees few distinct input shapes and reuses its buffers.
WINDOW_STEP_PX = 128
#: Grid px added around the tissue's bounding box in a tile before its window is cut.
PART_MARGIN_PX = 4
#: Version of the ``.partial`` folder layout (a rerun refuses another version).
PARTIAL_VERSION = 1
#: Share of the slide's mpp within which a pyramid level is read as the model's grid as it is.
LEVEL_MATCH_TOLERANCE = 0.02


def partial_folder(out_dir: str | Path) -> Path:
    """The folder holding the unfinished work of a run writing to ``out_dir``: ``<out_dir>.partial``."""
    out = Path(out_dir)
    return out.with_name(out.name + ".partial")


def _slide_ok(scenario) -> str | None:
    """Why ``scenario`` is not run on whole slides, or None."""
    if scenario.trained_on_synthetic:
        return "it was trained on synthetic images only (teaching and method development)"
    if scenario.outputs_of("restored"):
        return "it restores (denoises) the whole image, and a restored slide pyramid is not stitched yet"
    if scenario.outputs_of("regions"):
        return "it outlines tissue regions, which are not stitched across tiles yet"
    if not scenario.input.is_rgb:
        return "it reads fluorescence channels, and slides are read as RGB brightfield images"
    if not scenario.outputs_of("cells"):
        return "it yields no cells"
    return None


def slide_scenarios() -> list[str]:
    """Keys of the scenarios :func:`analyze_slide` runs."""
    from core.scenarios.registry import list_scenarios

    return [s.key for s in list_scenarios() if _slide_ok(s) is None]


def check_slide_scenario(scenario) -> None:
    """Refuse a scenario that is not run on whole slides.

    Raises
    ------
    InputError
        The scenario was trained on synthetic images only, restores whole images (TNRD), or
        reads fluorescence channels; the message lists the scenarios that run on slides.
    """
    why = _slide_ok(scenario)
    if why:
        raise InputError(f"the {scenario.key} model is not run on whole slides: {why}; whole-slide runs support "
                         f"{', '.join(slide_scenarios())}. Export a field (e.g. a region from QuPath) and analyse "
                         "it as an image")


@dataclass(frozen=True)
class _Plan:
    """Where the model reads: the grid, the tiles and their context (all px of the grid at the work mpp).

    Tiles are laid from ``origin`` (the top-left of the tissue's bounding box, on the network's
    stride), so a small piece of tissue is not split across more tiles than it needs. Every
    window has the same size, ``tile_px + 2 context_px`` (or the grid's), shifted inwards at the
    slide's edges: the network sees one input shape, which keeps its memory from fragmenting.
    """

    scale: float  # level-0 px per grid px
    work_mpp: float
    level: int
    grid_hw: tuple[int, int]
    tile_px: int
    context_px: int
    stride_px: int = 1
    origin: tuple[int, int] = (0, 0)  # (x, y) of tile 0's top-left, grid px

    @property
    def n_across(self) -> int:
        return max(1, -(-(self.grid_hw[1] - self.origin[0]) // self.tile_px))

    @property
    def n_down(self) -> int:
        return max(1, -(-(self.grid_hw[0] - self.origin[1]) // self.tile_px))

    def core(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a tile's core, grid px."""
        ty, tx = divmod(index, self.n_across)
        x0, y0 = self.origin[0] + tx * self.tile_px, self.origin[1] + ty * self.tile_px
        return x0, y0, min(x0 + self.tile_px, self.grid_hw[1]), min(y0 + self.tile_px, self.grid_hw[0])

    def _span(self, c0: int, c1: int, length: int) -> tuple[int, int]:
        full = min(_round_up(c1 - c0, WINDOW_STEP_PX) + 2 * self.context_px, self.tile_px + 2 * self.context_px,
                   length)
        w0 = min(max(0, c0 - self.context_px), length - full)
        w0 = (w0 // self.stride_px) * self.stride_px  # on the network's output grid
        return w0, max(min(length, w0 + full), c1)

    def window(self, index: int, part: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a tile with its context, inside the grid.

        ``part`` (x0, y0, x1, y1), grid px inside the tile's core: the window covers that part
        of the core only (the tissue in it, :func:`_tissue_parts`) with its context, its sides
        rounded up to :data:`WINDOW_STEP_PX`; default the whole core.
        """
        x0, y0, x1, y1 = self.core(index) if part is None else part
        wx0, wx1 = self._span(x0, x1, self.grid_hw[1])
        wy0, wy1 = self._span(y0, y1, self.grid_hw[0])
        return wx0, wy0, wx1, wy1


def _plan(slide, scenario, model, tile_um: float | None) -> _Plan:
    mpp0 = slide.require_mpp()
    target = scenario.input_mpp
    level = slide.level_for_mpp(target)
    lv = slide.levels[level]
    if abs(lv.mpp / target - 1.0) < LEVEL_MATCH_TOLERANCE:
        scale = slide.width_px / lv.width_px  # the level's own pixels: read as they are
    else:
        scale = target / mpp0
    work_mpp = scale * mpp0
    if tile_um is None:
        tile_px = int(model.tile_px)
    else:
        if not (math.isfinite(tile_um) and 16 * target <= tile_um <= 4096 * target):
            raise InputError(f"tile_um {tile_um!r} is outside {16 * target:g}-{4096 * target:g} µm (16 to 4096 px at "
                             f"{target} µm/px)")
        tile_px = int(round(tile_um / target))
    context_px = max(int(model.overlap_px), int(math.ceil(MIN_CONTEXT_UM / target)))
    # A dense network's outputs lie on a grid of its stride (cd3-ihc: 8 px): tiles and context in
    # whole strides keep every window on the slide's one grid, as the field's single pass is.
    stride = max(1, int(getattr(model, "output_stride_px", 1)))
    tile_px = max(stride, (tile_px // stride) * stride)
    context_px = -(-context_px // stride) * stride
    return _Plan(scale, work_mpp, level, slide.grid_shape(scale), tile_px, context_px, stride)


def _round_up(n: int, step: int) -> int:
    return -(-int(n) // step) * step


def _tissue_parts(plan: _Plan, geometry, mpp0: float, tiles: list[int]) -> dict[int, tuple[int, int, int, int] | None]:
    """The part of each tile's core that holds tissue: its bounding box, grid px, or None when none.

    A tile at the edge of the tissue is mostly glass; the network reads only the box around
    its tissue (with the usual context), which on a biopsy saves a third to a half of the
    network's work. Cells outside the tissue are dropped anyway, so the cells kept are those of
    the whole core. The box is widened by :data:`PART_MARGIN_PX` and kept inside the core.
    """
    if not tiles:
        return {}
    k = plan.scale * mpp0  # µm per grid px
    parts = shapely.intersection(geometry, _tile_boxes_um(plan, mpp0)[np.asarray(tiles)])
    out: dict[int, tuple[int, int, int, int] | None] = {}
    for index, part, (bx0, by0, bx1, by1) in zip(tiles, parts, shapely.bounds(parts)):
        if part is None or part.is_empty or part.area <= 0 or not np.isfinite(bx0):
            out[index] = None
            continue
        cx0, cy0, cx1, cy1 = plan.core(index)
        x0 = max(cx0, int(math.floor(bx0 / k)) - PART_MARGIN_PX)
        y0 = max(cy0, int(math.floor(by0 / k)) - PART_MARGIN_PX)
        x1 = min(cx1, int(math.ceil(bx1 / k)) + PART_MARGIN_PX)
        y1 = min(cy1, int(math.ceil(by1 / k)) + PART_MARGIN_PX)
        out[index] = (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
    return out


def _with_origin(plan: _Plan, geometry, mpp0: float) -> _Plan:
    """``plan`` with its tiles laid from the tissue's bounding box (on the network's stride)."""
    if geometry.is_empty:
        return plan
    k = plan.scale * mpp0  # µm per grid px
    x, y = shapely.bounds(geometry)[:2]
    s = plan.stride_px
    ox = min(max(0, int(math.floor(x / k / s)) * s), max(0, plan.grid_hw[1] - 1))
    oy = min(max(0, int(math.floor(y / k / s)) * s), max(0, plan.grid_hw[0] - 1))
    return replace(plan, origin=(ox, oy))


def _tile_boxes_um(plan: _Plan, mpp0: float) -> np.ndarray:
    """Shapely boxes of every tile core in level-0 µm, tile index order."""
    n = plan.n_across * plan.n_down
    idx = np.arange(n)
    ty, tx = np.divmod(idx, plan.n_across)
    x0 = plan.origin[0] + tx * plan.tile_px
    y0 = plan.origin[1] + ty * plan.tile_px
    x1 = np.minimum(x0 + plan.tile_px, plan.grid_hw[1])
    y1 = np.minimum(y0 + plan.tile_px, plan.grid_hw[0])
    k = plan.scale * mpp0
    return shapely.box(x0 * k, y0 * k, x1 * k, y1 * k)


def _file_fingerprint(path: Path) -> dict:
    """Size and SHA-256 of the first and last MiB: tells a rerun it is the same slide file, without reading it all."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return {"size_bytes": st.st_size, "head_tail_sha256": h.hexdigest()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _geometry_digest(geom) -> str | None:
    return None if geom is None else hashlib.sha256(shapely.to_wkb(shapely.normalize(geom))).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and one ``os.replace`` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default).encode("utf-8")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


class _Work:
    """The ``.partial`` folder: settings, tissue, finished tiles and their Parquet parts."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.parts_dir = folder / "parts"
        self.done: list[int] = []
        self.parts: list[str] = []
        self.n_cells = 0
        self.runtime_s = 0.0

    @property
    def record_path(self) -> Path:
        return self.folder / "tiles_done.json"

    def open(self, settings: dict) -> bool:
        """Create the folder or check it holds a run with the same ``settings``; True when resuming."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: is a file, but it is where the unfinished work of this run is kept; "
                             "remove or rename it")
        run_path = self.folder / "run.json"
        if run_path.is_file():
            try:
                stored = json.loads(run_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise InputError(f"{run_path}: the record of an unfinished run cannot be read ({err}); remove "
                                 f"{self.folder} to start again") from err
            if stored.get("settings") != json.loads(_json_bytes(settings)):
                differs = sorted(k for k in set(stored.get("settings", {})) | set(settings)
                                 if stored.get("settings", {}).get(k) != json.loads(_json_bytes(settings)).get(k))
                raise InputError(
                    f"{self.folder} holds an unfinished run with other settings ({', '.join(differs) or 'version'}): "
                    "rerun with the same slide, scenario, mpp, ROI and exclusions to resume it, or remove that "
                    "folder to start again")
            self._load_record()
            return True
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(run_path, _json_bytes({"settings": settings}))
        self._save_record()
        return False

    def _load_record(self) -> None:
        try:
            rec = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # never written: a run stopped before its first tile
            rec = {}
        self.done = [int(i) for i in rec.get("done", [])]
        self.parts = [str(p) for p in rec.get("parts", [])]
        self.n_cells = int(rec.get("n_cells", 0))
        self.runtime_s = float(rec.get("runtime_s", 0.0))
        missing = [p for p in self.parts if not (self.parts_dir / p).is_file()]
        if missing:
            raise InputError(f"{self.folder}: the parts {', '.join(missing[:3])} of the unfinished run are missing; "
                             f"remove {self.folder} to start again")
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        for f in self.parts_dir.iterdir():  # a part written but never recorded (the run was killed in between)
            if f.name not in self.parts:
                f.unlink()

    def _save_record(self) -> None:
        _write_atomic(self.record_path, _json_bytes({"version": PARTIAL_VERSION, "done": self.done,
                                                     "parts": self.parts, "n_cells": self.n_cells,
                                                     "runtime_s": round(self.runtime_s, 3)}))

    def append(self, tiles: list[int], frames: list[pd.DataFrame], runtime_s: float) -> None:
        """Write one Parquet part with the cells of ``tiles``, then record the tiles as done."""
        if not frames:  # tiles without tissue inside their core: recorded, no part
            self.done.extend(tiles)
            self.runtime_s += runtime_s
            self._save_record()
            return
        name = f"part-{len(self.parts):06d}.parquet"
        frame = pd.concat(frames, ignore_index=True)
        tmp = self.parts_dir / f".{name}.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, self.parts_dir / name)
        self.parts.append(name)
        self.done.extend(tiles)
        self.n_cells += len(frame)
        self.runtime_s += runtime_s
        self._save_record()

    def iter_parts(self):
        for name in self.parts:
            yield pd.read_parquet(self.parts_dir / name)


def _tile_cells(model, window: np.ndarray):
    """Cells of one window, in its pixels: (xy (N, 2), class_index (N,), probability (N,), extra columns)."""
    if model.scenario.tiling.kind == "cells":
        xy, cols, _ = model.postprocess_window(model.infer_window(model.prepare(window)))
        extra = {k: np.asarray(v) for k, v in cols.items() if k not in ("class_index", "probability")}
        return np.asarray(xy, np.float64).reshape(-1, 2), np.asarray(cols["class_index"]), \
            np.asarray(cols["probability"], np.float64), extra
    pred = model.predict(window)
    return np.asarray(pred.xy, np.float64).reshape(-1, 2), np.asarray(pred.class_index), \
        np.asarray(pred.probability, np.float64), {k: np.asarray(v) for k, v in pred.columns.items()}


def analyze_slide(
    path: str | Path,
    scenario_key: str,
    out_dir: str | Path,
    *,
    mpp: float | None = None,
    roi=None,
    exclude=None,
    progress: Progress | None = None,
    device: str | None = None,
    precision: str = "float32",
    model=None,
    tile_um: float | None = None,
    outside_validated_use: bool = False,
    antigen_confirmed: bool | None = None,
    pen_marks: bool = True,
    work_dir: str | Path | None = None,
) -> dict:
    """Analyse the tissue of a whole slide, tile by tile, resumably (module docstring).

    Parameters
    ----------
    path : path of the slide (:func:`core.slides.reader.open_slide`)
    scenario_key : str, a scenario that runs on slides (:func:`slide_scenarios`: cd3-ihc, he-til)
    out_dir : path, the output folder (created; files of the same names replaced; the
        unfinished work is kept in ``<out_dir>.partial`` until the run completes)
    mpp : float, optional, µm per level-0 pixel; required when the slide records none
    roi, exclude : shapely geometries in level-0 µm, or GeoJSON (path, text or dict) in
        level-0 pixels: the analysis is limited to ``roi`` and leaves out ``exclude``
    progress : callable(done, total), optional, called after each tile (tiles with tissue;
        ``done`` counts the tiles of an earlier, interrupted run)
    device : {"cpu", "cuda", None}, ignored when ``model`` is given
    precision : {"float32", "bfloat16"}, ignored when ``model`` is given
    model : ScenarioModel, optional, an already loaded model of ``scenario_key``
    tile_um : float, optional, core tile side in µm (default: the registry's ``tiling.tile_um``)
    outside_validated_use : bool, run although the slide fails a fitness check (stain, mpp)
    antigen_confirmed : bool or None, the user confirmed the antibody (cd3-ihc)
    pen_marks : bool, leave ink out of the tissue
    work_dir : path, optional, where the unfinished work is kept (default ``<out_dir>.partial``,
        :func:`partial_folder`); a batch runner that writes into a fresh temporary ``out_dir``
        each attempt passes a stable folder here to resume across attempts

    Returns
    -------
    dict
        The summary written to ``summary.json`` (:func:`slide_summary`): counts, densities per
        mm² of tissue with exact Poisson 95 % intervals, tissue area (mm²), tiles, mpp used.

    Raises
    ------
    UnknownScenarioError
        Unknown scenario key.
    InputError
        A scenario that is not run on slides (TNRD); a slide without mpp and none given; an
        implausible mpp; an output folder that cannot take the files; a ``.partial`` folder
        of a run with other settings; no tissue found; a ROI or exclusion file that cannot be read.
    core.fitness.OutsideValidatedUse
        The slide fails a fitness check and ``outside_validated_use`` is False.
    ImageReadError
        The slide cannot be read.
    WeightsError
        The scenario's weights fail their checks.
    TILscopeError
        The files cannot be written.
    """
    from core.io import check_output_folder
    from core.scenarios.registry import get_scenario
    from core.slides.reader import open_slide
    from core.slides.tissue import detect_tissue

    start = time.perf_counter()
    scenario = get_scenario(scenario_key)
    check_slide_scenario(scenario)
    out = check_output_folder(out_dir, SLIDE_FILES)
    work = _Work(Path(work_dir) if work_dir is not None else partial_folder(out))
    if model is not None and model.scenario.key != scenario.key:
        raise InputError(f"the model given is for {model.scenario.key!r}, not {scenario.key!r}")
    with open_slide(path, mpp) as slide:
        mpp0 = slide.require_mpp()
        from core.slides.tissue import read_geometry

        roi_geom = read_geometry(roi, mpp0, "the region of interest (--roi)")
        exclude_geom = read_geometry(exclude, mpp0, "the exclusion regions")
        fingerprint = _file_fingerprint(slide.path)
        resuming = (work.folder / "run.json").is_file()
        if model is None:
            from core.pipeline import load_model

            scenario.card()  # an edited model card is refused before any work
            model = load_model(scenario_key, device, precision)
        plan = _plan(slide, scenario, model, tile_um)
        settings = {
            "version": PARTIAL_VERSION, "slide": slide.name, "slide_file": fingerprint, "scenario": scenario.key,
            "weights_sha256": scenario.sha256, "precision": model.precision, "mpp": mpp0,
            "mpp_source": slide.mpp_source, "scale": plan.scale, "tile_px": plan.tile_px,
            "context_px": plan.context_px, "roi": _geometry_digest(roi_geom), "exclude": _geometry_digest(exclude_geom),
            "pen_marks": bool(pen_marks), "outside_validated_use": bool(outside_validated_use),
            "antigen_confirmed": antigen_confirmed,
        }
        state_path = work.folder / "state.json"
        if resuming and state_path.is_file():
            work.open(settings)
            state = json.loads(state_path.read_text(encoding="utf-8"))
            tissue = _tissue_from_state(state, work.folder, slide)
        else:
            tissue, rgb = detect_tissue(slide, roi=roi_geom, exclude=exclude_geom, pen_marks=pen_marks)
            if tissue.area_mm2 <= 0:
                raise InputError(
                    f"{slide.name}: no tissue was found on the slide"
                    + (" within the region of interest" if roi_geom is not None else "")
                    + ": check that it is a brightfield slide with tissue, or give a region of interest (--roi)")
            problems, fit_notes = _fitness(scenario, slide, rgb, tissue, antigen_confirmed)
            if problems and not outside_validated_use:
                from core.fitness import OutsideValidatedUse, outside_use_message

                raise OutsideValidatedUse(outside_use_message(scenario, problems), problems)
            work.open(settings)
            (work.folder / "tissue.wkb").write_bytes(shapely.to_wkb(tissue.geometry))
            state = {"sha256": _sha256(slide.path), "problems": problems, "notes": fit_notes,
                     "tissue": {"mask_mpp": tissue.mask_mpp, "mask_shape": list(tissue.mask.shape),
                                "area_mm2": tissue.area_mm2, "pen_area_mm2": tissue.pen_area_mm2,
                                "method": tissue.method, "notes": tissue.notes}}
            _write_atomic(state_path, _json_bytes(state))
        plan = _with_origin(plan, tissue.geometry, mpp0)
        boxes = _tile_boxes_um(plan, mpp0)
        shapely.prepare(tissue.geometry)
        tiles = [int(i) for i in np.nonzero(shapely.intersects(tissue.geometry, boxes))[0]]
        finished = set(work.done)
        done_before = len(finished & set(tiles))
        todo = [i for i in tiles if i not in finished]
        _run_tiles(slide, model, plan, tissue.geometry, mpp0, todo, len(tiles), done_before, work, progress)
        runtime_s = work.runtime_s
        summary = slide_summary(slide, scenario, model, plan, tissue, state, work, len(tiles),
                                plan.n_across * plan.n_down, runtime_s, resumed=resuming,
                                roi=roi_geom is not None, exclude=exclude_geom is not None,
                                outside_validated_use=state.get("problems", []))
        from core.io import write_output_folder

        write_output_folder(out, lambda folder: _write_outputs(folder, slide, scenario, tissue, work, summary))
    shutil.rmtree(work.folder, ignore_errors=True)
    summary["wall_s"] = round(time.perf_counter() - start, 3)
    return summary


def _tissue_from_state(state: dict, folder: Path, slide):
    from core.slides.tissue import SlideTissue, rasterise_geometry

    t = state["tissue"]
    geom = shapely.from_wkb((folder / "tissue.wkb").read_bytes())
    mask = rasterise_geometry(geom, float(t["mask_mpp"]), tuple(t["mask_shape"]))
    return SlideTissue(mask, float(t["mask_mpp"]), geom, float(t["area_mm2"]), float(t["pen_area_mm2"]), t["method"],
                       list(t.get("notes", [])))


def _fitness(scenario, slide, rgb: np.ndarray, tissue, antigen_confirmed) -> tuple[list[str], list[str]]:
    """The field checks of :func:`core.fitness.assess` that apply to a slide: stain on the tissue, mpp range, antigen."""
    return slide_fitness(scenario, read_slide_stain(slide.name, rgb, tissue).family, slide.mpp, antigen_confirmed)


def read_slide_stain(name: str, rgb: np.ndarray, tissue):
    """The stain family read from the tissue of a low-resolution view (:func:`core.fitness.read_stain`).

    Parameters
    ----------
    name : str, the slide's name (for messages)
    rgb : (h, w, 3) uint8, the slide at ``tissue.mask_mpp`` (what :func:`core.slides.tissue.detect_tissue` returns)
    tissue : SlideTissue; the stain is read on its mask only (glass set to white)

    Returns
    -------
    core.fitness.StainReading (``family``, ``label``)
    """
    from core.fitness import read_stain
    from core.io import ImageData

    shown = rgb.copy()
    shown[~tissue.mask] = 255  # the stain is read on tissue only
    return read_stain(ImageData.from_rgb(shown, tissue.mask_mpp, name))


def slide_fitness(scenario, stain_family: str, mpp: float, antigen_confirmed: bool | None) -> tuple[list[str], list[str]]:
    """Whether a slide is within ``scenario``'s validated use: (problems, notes), each a list of sentences.

    Parameters
    ----------
    scenario : core.scenarios.registry.Scenario
    stain_family : str, the family :func:`read_slide_stain` read (``"he"``, ``"dab-hematoxylin"``, ``"uncertain"``...)
    mpp : float, µm per level-0 pixel
    antigen_confirmed : bool or None, the user confirmed the antibody (None: not asked)

    Returns
    -------
    problems : list of str, each a reason the run is outside the validated use (stain, mpp, antibody)
    notes : list of str, what the user should check (stain uncertain, antibody not confirmed)
    """
    from core.fitness import StainReading, stain_check, use_checks

    problems, notes = stain_check(StainReading(stain_family, None, 0.0), scenario, what="slide")
    more_problems, more_notes = use_checks(scenario, mpp, antigen_confirmed, fix="use a scan at such a magnification")
    return problems + more_problems, notes + more_notes


def _run_tiles(slide, model, plan: _Plan, geometry, mpp0: float, todo: list[int], total: int, done_before: int,
               work: _Work, progress: Callable[[int, int], None] | None) -> None:
    """Analyse ``todo`` tiles in order; flush parts as they fill, and whatever stops the run."""
    names = np.array([c.name for c in model.scenario.classes], dtype=object)
    roles = np.array([c.role for c in model.scenario.classes], dtype=object)
    need = model.min_side_px()
    if min(plan.grid_hw) < need:
        raise InputError(f"{slide.name}: the slide is {plan.grid_hw[1]} x {plan.grid_hw[0]} px at "
                         f"{plan.work_mpp:.3g} µm/px; the {model.scenario.key} model needs at least {need} px a side")

    parts = _tissue_parts(plan, geometry, mpp0, todo)

    pending_tiles: list[int] = []
    pending: list[pd.DataFrame] = []
    pending_cells = 0
    t_batch = time.perf_counter()
    done = done_before

    def flush():
        nonlocal pending_tiles, pending, pending_cells, t_batch
        if pending_tiles:
            now = time.perf_counter()
            work.append(pending_tiles, pending, now - t_batch)
            t_batch = now
            pending_tiles, pending, pending_cells = [], [], 0

    try:
        for index in todo:
            # Read and analyse in turn: reading ahead in a thread saved under 5 % of the time but kept
            # that thread's allocator arena resident (about 1 GB more at peak with the tuned allocator).
            if parts[index] is None:  # the tile only touches the tissue's outline: no cell can be inside it
                pending_tiles.append(index)
                done += 1
                if progress is not None:
                    progress(done, total)
                continue
            cx0, cy0, cx1, cy1 = plan.core(index)
            wx0, wy0, wx1, wy1 = plan.window(index, parts[index])
            window = slide.read_grid(wx0, wy0, wx1 - wx0, wy1 - wy0, plan.scale)
            xy, cls, prob, extra = _tile_cells(model, window)
            del window
            release_free_memory()  # the next window's activations start from a trimmed heap: peak flat with the slide
            gx, gy = xy[:, 0] + wx0, xy[:, 1] + wy0
            own = (gx >= cx0) & (gx < cx1) & (gy >= cy0) & (gy < cy1)
            x_px = np.clip((gx[own] + 0.5) * plan.scale - 0.5, 0, slide.width_px - 1)
            y_px = np.clip((gy[own] + 0.5) * plan.scale - 0.5, 0, slide.height_px - 1)
            inside = shapely.contains_xy(geometry, x_px * mpp0, y_px * mpp0)
            sel = np.nonzero(own)[0][inside]
            idx = np.asarray(cls, np.int64)[sel]
            frame = pd.DataFrame({
                "x_px": x_px[inside], "y_px": y_px[inside], "x_um": x_px[inside] * mpp0, "y_um": y_px[inside] * mpp0,
                "cell_class": pd.Series(names[idx], dtype=object), "role": pd.Series(roles[idx], dtype=object),
                "probability": np.asarray(prob, np.float64)[sel],
            }, columns=list(CELL_COLUMNS))
            for k, v in extra.items():
                frame[k] = np.asarray(v)[sel]
            frame["tile"] = np.full(len(frame), index, np.int32)
            pending.append(frame)
            pending_tiles.append(index)
            pending_cells += len(frame)
            done += 1
            if (len(pending_tiles) >= FLUSH_TILES or pending_cells >= FLUSH_CELLS
                    or time.perf_counter() - t_batch >= FLUSH_SECONDS):
                flush()
            if progress is not None:
                progress(done, total)
    finally:
        # What was finished is kept whatever stopped the run (an error, Ctrl-C, a callback that raised).
        flush()


def slide_summary(slide, scenario, model, plan: _Plan, tissue, state: dict, work: _Work, n_tiles: int,
                  n_tiles_grid: int, runtime_s: float, *, resumed: bool, roi: bool, exclude: bool,
                  outside_validated_use: list[str]) -> dict:
    """The JSON-ready summary of a slide run (counts filled in by :func:`_write_outputs`).

    Keys as a field's summary (:attr:`core.results.AnalysisResult.summary`): ``scenario``,
    ``scenario_title``, ``weights_*``, ``trained_on_synthetic``, ``image`` (name, sha256,
    width_px, height_px, channels, format, levels, objective_power), ``mpp``, ``mpp_source``,
    ``analysed_area``, ``area_mm2`` = ``tissue_area_mm2`` (the densities' denominator),
    ``image_area_mm2``, ``tissue_fraction``, ``n_cells``, ``counts``, ``counts_by_role``,
    ``density_per_mm2``, ``density_by_role_per_mm2``, ``density_ci95_per_mm2`` (exact Poisson),
    ``runtime_s``, ``device``, ``inference_precision``, ``torch``, ``app_version``, ``python``,
    ``created_at``, ``warnings``, ``outside_validated_use``, ``spatial``
    (:func:`slide_spatial_statistics`, as a field's summary.json has it); and for slides
    ``kind`` = "slide", ``mpp_used`` (µm/px the model read), ``pen_area_mm2``, ``tiles`` (tile
    and context size, counts, level read), ``heatmap``, ``hot_spots`` (Getis-Ord Gi* summary,
    :func:`core.spatial.heatmaps.hot_spots`), ``resumed``, ``roi``, ``exclusions``.
    """
    import platform
    from datetime import datetime, timezone

    import torch

    from core import __version__

    card = {}
    try:
        card = scenario.card()
    except TILscopeError:
        card = {}
    mpp0 = slide.mpp
    warnings = list(slide.notes) + list(tissue.notes) + list(state.get("notes", []))
    if slide.mpp_source == "user":
        warnings.append(f"microns per pixel given by the user: {mpp0:g}")
    warnings.append("cells are counted when their centroid lies in the detected tissue (minus exclusions, within "
                    "the region of interest); the densities are per mm² of that tissue")
    if scenario.outputs_of("dense"):
        warnings.append("dense maps (" + ", ".join(o.name for o in scenario.outputs_of("dense"))
                        + ") are not written for whole slides; the immune-density heat map is")
    if scenario.caution:
        warnings.append(scenario.caution)
    return {
        "kind": "slide",
        "scenario": scenario.key,
        "scenario_title": scenario.title,
        "weights_file": scenario.weights,
        "weights_sha256": scenario.sha256,
        "weights_version": card.get("version"),
        "trained_on_synthetic": scenario.trained_on_synthetic,
        "image": {"name": slide.name, "sha256": state.get("sha256"), "width_px": slide.width_px,
                  "height_px": slide.height_px, "channels": ["red", "green", "blue"], "format": slide.vendor,
                  "reader": slide.reader, "levels": [[lv.width_px, lv.height_px, round(lv.downsample, 6)]
                                                     for lv in slide.levels],
                  "objective_power": slide.objective_power},
        "mpp": mpp0,
        "mpp_source": slide.mpp_source,
        "mpp_used": plan.work_mpp,
        "analysed_area": "tissue: " + tissue.method,
        "area_mm2": tissue.area_mm2,
        "image_area_mm2": slide.width_px * slide.height_px * mpp0 * mpp0 / 1e6,
        "tissue_area_mm2": tissue.area_mm2,
        "tissue_fraction": round(tissue.area_mm2 / max(slide.width_px * slide.height_px * mpp0 * mpp0 / 1e6, 1e-12), 4),
        "pen_area_mm2": round(tissue.pen_area_mm2, 4),
        "tiles": {"with_tissue": n_tiles, "on_grid": n_tiles_grid, "tile_px": plan.tile_px,
                  "tile_um": round(plan.tile_px * plan.work_mpp, 3), "context_px": plan.context_px,
                  "context_um": round(plan.context_px * plan.work_mpp, 3), "level_read": plan.level,
                  "grid_px": [plan.grid_hw[1], plan.grid_hw[0]]},
        "runtime_s": round(runtime_s, 3),
        "device": str(model.device),
        "inference_precision": model.precision,
        "torch": torch.__version__,
        "app_version": __version__,
        "python": platform.python_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "warnings": warnings,
        "outside_validated_use": list(outside_validated_use),
        "resumed": bool(resumed),
        "roi": bool(roi),
        "exclusions": bool(exclude),
    }


#: Name of the exclusion region that takes the glass out of the spatial statistics' study window.
GLASS_REGION_NAME = "Glass (no tissue)"


def slide_spatial_statistics(cells_path: str | Path, tissue_geometry, seed: int = 0) -> dict:
    """Spatial statistics of a slide's cells (:func:`core.spatial.compute_spatial_stats`), as for a field.

    The study window is the bounding box of the analysed tissue with the glass in it (the box
    minus the tissue) cut out as an exclusion region, so that Ripley's cross-K, cross-G and the
    Morisita-Horn grid see the tissue only; a field's window is its whole image. Only the
    columns the statistics read are loaded (``x_um``, ``y_um``, ``role``, ``cell_class``, the
    strings as categories): about 20 bytes a cell, 100 MB for 5 million cells. Cross-K/L and
    cross-G run on at most :data:`core.spatial.point_processes.RIPLEY_MAX_POINTS` cells (a
    random subsample above it, said in the result), the rest is O(n log n).

    Parameters
    ----------
    cells_path : path of the slide's ``cells.parquet``
    tissue_geometry : shapely Polygon or MultiPolygon, the analysed tissue in level-0 µm
    seed : int, seeds the random relabellings (envelopes) and the subsample

    Returns
    -------
    dict
        JSON-ready, as :func:`core.spatial.compute_spatial_stats` (``available``, ``counts``,
        ``distances``, ``compartments``, ``ripley``, ...), with a warning that names the window.

    Raises
    ------
    InputError
        The cell table lacks a column (a table not written by :func:`analyze_slide`).
    """
    from core.spatial import Region, SpatialParams, compute_spatial_stats

    cells = pd.read_parquet(cells_path, columns=["x_um", "y_um", "role", "cell_class"])
    for column in ("role", "cell_class"):
        cells[column] = cells[column].astype("category")
    regions, note = [], None
    if tissue_geometry is not None and not tissue_geometry.is_empty:
        x0, y0, x1, y1 = (float(v) for v in shapely.bounds(tissue_geometry))
        params = SpatialParams(window_um=(x0, y0, x1, y1))
        glass = shapely.difference(shapely.box(x0, y0, x1, y1), tissue_geometry)
        try:
            for k, poly in enumerate(g for g in shapely.get_parts(glass) if g.geom_type == "Polygon" and g.area > 0):
                regions.append(Region(GLASS_REGION_NAME if k == 0 else f"{GLASS_REGION_NAME} {k + 1}", "exclude",
                                      np.asarray(poly.exterior.coords)[:-1],
                                      holes_um=tuple(np.asarray(r.coords)[:-1] for r in poly.interiors)))
            note = ("slide: the study window is the bounding box of the analysed tissue, the glass in it excluded; "
                    "the compartments come from the cells (no drawn tumour regions)")
        except InputError as err:  # e.g. an outline of more vertices than a region may have: say so, keep the box
            regions = []
            note = (f"slide: the study window is the bounding box of the analysed tissue, glass included (the glass "
                    f"could not be made an exclusion region: {err})")
    else:
        params = SpatialParams()
    stats = compute_spatial_stats(cells, regions, params, seed=seed)
    if note and isinstance(stats.get("warnings"), list):
        stats["warnings"].append(note)
    if note and isinstance(stats.get("window"), dict) and "source" in stats["window"]:
        stats["window"]["source"] = "bounding box of the analysed tissue" + (", the glass in it excluded" if regions
                                                                             else "")
    return stats


def _hex_rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _write_outputs(folder: Path, slide, scenario, tissue, work: _Work, summary: dict) -> list[Path]:
    """Assemble the output files from the Parquet parts, one part in memory at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    from core.outputs.figures import png_bytes
    from core.results import poisson_ci_per_mm2
    from core.slides.tissue import tissue_geojson
    from core.spatial.heatmaps import bin_counts, density_from_counts, hot_spots, tissue_area_per_bin

    mpp0 = slide.mpp
    thumb, t_scale = slide.thumbnail(OVERLAY_MAX_SIDE_PX)
    t_mpp = t_scale * mpp0
    th, tw = thumb.shape[:2]
    colors = {c.name: _hex_rgb(c.color) for c in scenario.classes}
    order = sorted(colors, key=lambda n: scenario.class_roles[n] == "immune")  # immune cells drawn last, on top
    dot = int(min(5, max(1, round(4.0 / t_mpp))))
    window_um = (0.0, 0.0, slide.width_px * mpp0, slide.height_px * mpp0)  # the heat map's grid: the whole slide
    immune_counts = None
    counts = {c.name: 0 for c in scenario.classes}
    roles = {r: 0 for r in ROLES}

    pq_path, csv_path = folder / "cells.parquet", folder / "cells.csv"
    writer = None
    schema = None
    n_cells = 0
    header = True
    with open(csv_path, "w", encoding="utf-8", newline="") as csv_fh:
        for frame in work.iter_parts():
            columns = list(CELL_COLUMNS) + [c for c in frame.columns if c not in CELL_COLUMNS]
            frame = frame[columns]
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(pq_path, schema)
            writer.write_table(table.cast(schema))
            frame.to_csv(csv_fh, index=False, header=header, float_format="%.3f")
            header = False
            n_cells += len(frame)
            vc = frame["cell_class"].value_counts()
            for k, v in vc.items():
                counts[str(k)] = counts.get(str(k), 0) + int(v)
            for k, v in frame["role"].value_counts().items():
                roles[str(k)] = roles.get(str(k), 0) + int(v)
            imm = frame["role"].to_numpy() == "immune"
            part_counts, _ = bin_counts(frame[["x_um", "y_um"]].to_numpy(np.float64)[imm], bin_um=HEATMAP_BIN_UM,
                                        window_um=window_um)
            immune_counts = part_counts if immune_counts is None else immune_counts + part_counts
            px = np.clip((frame["x_um"].to_numpy() / t_mpp).astype(np.int64), 0, tw - 1)
            py = np.clip((frame["y_um"].to_numpy() / t_mpp).astype(np.int64), 0, th - 1)
            cls = frame["cell_class"].to_numpy()
            for name in order:
                m = cls == name
                if not m.any():
                    continue
                for dy in range(dot):
                    for dx in range(dot):
                        thumb[np.clip(py[m] + dy - dot // 2, 0, th - 1), np.clip(px[m] + dx - dot // 2, 0, tw - 1)] = colors[name]
        if header:  # no part at all (no tile with tissue was analysed)
            columns = list(CELL_COLUMNS) + ["tile"]
            pd.DataFrame({c: pd.Series(dtype="float64" if c not in ("cell_class", "role", "tile") else
                                       ("int32" if c == "tile" else object)) for c in columns}).to_csv(
                csv_fh, index=False)
    if writer is not None:
        writer.close()
    else:
        empty = pd.DataFrame({"x_px": pd.Series(dtype="float64"), "y_px": pd.Series(dtype="float64"),
                              "x_um": pd.Series(dtype="float64"), "y_um": pd.Series(dtype="float64"),
                              "cell_class": pd.Series(dtype="str"), "role": pd.Series(dtype="str"),
                              "probability": pd.Series(dtype="float64"), "tile": pd.Series(dtype="int32")})
        empty.to_parquet(pq_path, index=False)

    # tissue outline on the overlay
    img = Image.fromarray(thumb)
    draw = ImageDraw.Draw(img)
    for poly in shapely.get_parts(tissue.geometry):
        for ring in [poly.exterior, *poly.interiors]:
            pts = [(x / t_mpp, y / t_mpp) for x, y in np.asarray(ring.coords)]
            if len(pts) >= 2:
                draw.line(pts, fill=(0, 170, 0), width=max(1, min(th, tw) // 600 + 1))
    (folder / "overlay.png").write_bytes(png_bytes(np.asarray(img)))

    # immune density per bin: cells / mm² of the tissue in the bin (NaN with too little tissue), and its hot spots
    if immune_counts is None:
        immune_counts, _ = bin_counts(np.empty((0, 2)), bin_um=HEATMAP_BIN_UM, window_um=window_um)
    dmap = density_from_counts(
        immune_counts, bin_um=HEATMAP_BIN_UM,
        tissue_area_mm2=tissue_area_per_bin(tissue.mask, tissue.mask_mpp, bin_um=HEATMAP_BIN_UM,
                                            shape=immune_counts.shape),
        min_tissue_fraction=HEATMAP_MIN_TISSUE_FRACTION)
    density = dmap.density_per_mm2.astype(np.float32)
    bins_y, bins_x = density.shape
    with open(folder / "immune_density.npy", "wb") as fh:
        np.save(fh, density)
    (folder / "immune_density.png").write_bytes(_heatmap_png(density, slide.name))
    spots = hot_spots(dmap)
    with open(folder / "immune_hot_spots.npy", "wb") as fh:
        np.save(fh, spots.hot.astype(np.int8) - spots.cold.astype(np.int8))

    area = tissue.area_mm2
    summary.update({
        "n_cells": n_cells,
        "counts": counts,
        "counts_by_role": roles,
        "density_per_mm2": {k: v / area for k, v in counts.items()},
        "density_by_role_per_mm2": {k: v / area for k, v in roles.items()},
        "density_ci95_per_mm2": {k: poisson_ci_per_mm2(v, area) for k, v in counts.items()},
        "heatmap": {"file": "immune_density.npy", "bin_um": HEATMAP_BIN_UM, "shape": [bins_y, bins_x],
                    "value": "immune cells per mm² of tissue in each bin, NaN where the bin holds less than "
                             f"{HEATMAP_MIN_TISSUE_FRACTION:.0%} tissue; row 0 / column 0 start at the slide's top-left",
                    "max_per_mm2": None if not np.isfinite(density).any() else float(np.nanmax(density))},
        "hot_spots": {**spots.summary, "file": "immune_hot_spots.npy",
                      "value": "1 = hot spot, -1 = cold spot, 0 = neither (or not tissue), on the heat map's bins"},
    })
    summary["spatial"] = slide_spatial_statistics(folder / "cells.parquet", tissue.geometry)
    (folder / "summary.json").write_bytes(_json_bytes(summary))
    (folder / "tissue.geojson").write_bytes(
        json.dumps(tissue_geojson(tissue, mpp0), separators=(",", ":")).encode("utf-8"))
    return [folder / n for n in SLIDE_FILES]


def _heatmap_png(density: np.ndarray, title: str) -> bytes:
    """The density grid as a colour map with its scale (matplotlib object API)."""
    from core.outputs.figures import figure_png, new_figure

    h, w = density.shape
    extent_mm = (0, w * HEATMAP_BIN_UM / 1e3, h * HEATMAP_BIN_UM / 1e3, 0)
    aspect = h / max(w, 1)
    fig = new_figure(7.0, max(2.5, min(9.0, 6.0 * aspect + 1.0)))
    ax = fig.add_subplot()
    finite = np.isfinite(density)
    vmax = float(np.nanpercentile(density, 99)) if finite.any() else 1.0
    im = ax.imshow(np.ma.masked_invalid(density), extent=extent_mm, cmap="magma", vmin=0, vmax=max(vmax, 1e-9),
                   interpolation="nearest")
    ax.set_facecolor("#dddddd")
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_title(f"{title}: immune cells per mm² of tissue ({HEATMAP_BIN_UM:g} µm bins)", fontsize=9)
    fig.colorbar(im, ax=ax, label="immune cells / mm²")
    return figure_png(fig)
