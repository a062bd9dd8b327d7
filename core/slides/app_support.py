"""What the app's Slides page does, without Streamlit: choose a slide, preview it, run it as a background job, read the result.

The page (``pages/slides.py``) only draws; everything it decides or computes is here, so it is
unit-tested and the same from a notebook.

Choosing a slide
----------------
* A **slide folder** configured by the server's administrator (:data:`SLIDE_DIR_ENV`,
  ``TILSCOPE_SLIDE_DIR``): :func:`list_slide_files` lists the files whose suffix a slide may
  have (at most :data:`MAX_LISTED_FILES`, :data:`MAX_FOLDER_DEPTH` folders deep), and
  :func:`slide_in_folder` turns a listed name back into a path, refusing any name that leads
  outside the folder (``..``, an absolute path). Links placed *in* the folder by the
  administrator are followed: the folder is what they chose to show.
* An **upload**, at most :func:`upload_max_bytes` (``TILSCOPE_SLIDE_UPLOAD_MAX_MB``, default
  the server's ``maxUploadSize`` of 500 MB): :func:`check_upload_size` says what to do with a
  larger slide (put it in the slide folder).

Previewing (:func:`preview_slide`, run in a worker process: a slide file is decoded there, never in
the app server) gives the metadata, a thumbnail, the tissue (:func:`core.slides.tissue.detect_tissue`)
and the stain read on it. A slide whose file records no mpp gets :attr:`SlidePreview.missing_mpp`
and no tissue: the page asks for the mpp, and :func:`start_run` refuses to start without one.
The region to analyse and the regions to exclude come from a rectangle in µm
(:func:`rectangle_geometry`), GeoJSON (:func:`geojson_geometry`, level-0 pixels as QuPath
exports) or shapes drawn on the thumbnail (:func:`drawn_geometry`, the Review page's canvas
helpers); :func:`tissue_within` applies them exactly as the analysis will
(:func:`core.slides.tissue.limit_tissue`) and :func:`preview_picture` draws them.

Runs
----
:func:`start_run` makes a run folder ``<data folder>/slide-runs/<run id>/`` (``run.json``: the
request and the job ids; ``roi.wkb`` / ``exclude.wkb``; ``out/`` the analysis files and
``out.partial/`` its finished tiles while it runs; ``view/`` the pictures of the result view;
``saved.json`` the case-store outcome) and submits :func:`run_slide_job` to :mod:`core.jobs`.
The run id goes into the page's URL, so a reload (or a link) finds the run again:
:func:`load_run`, :func:`run_status` (progress by tile with the time left), :func:`cancel_run`,
:func:`resume_run` (a cancelled or failed run resumes from its finished tiles). The job saves
the analysis in the case store for the user who started it (:func:`core.slides.records.save_slide_analysis`),
so it is saved even when nobody keeps the page open.

Result
------
:func:`load_result` reads what the page shows: the summary (counts, densities per mm² of
tissue, spatial statistics, hot spots), the view picture (:data:`VIEW_MAX_SIDE_PX`, read at
the right pyramid level), a subsample of the cells for the view (at most :data:`VIEW_MAX_CELLS`,
:func:`subsample_cells`), the immune-density grid and its hot spots; :mod:`core.slides.view`
draws them. :func:`read_field` (a worker job) reads a field at full resolution with its cells;
:func:`run_files` and :func:`cells_geojson_bytes` give the downloads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.errors import InputError, TILscopeError

__all__ = [
    "SLIDE_DIR_ENV", "UPLOAD_MAX_ENV", "VIEW_MAX_SIDE_PX", "VIEW_MAX_CELLS", "FIELD_MAX_SIDE_PX", "GEOJSON_MAX_CELLS",
    "PREVIEW_MAX_SIDE_PX", "slide_dir", "list_slide_files", "slide_in_folder", "upload_max_bytes", "check_upload_size",
    "SlidePreview", "preview_slide", "rectangle_geometry", "geojson_geometry", "drawn_geometry", "canvas_frame",
    "canvas_background", "tissue_within", "preview_picture", "fitness_for", "SlideRun", "RunStatus", "start_run",
    "run_slide_job", "load_run", "list_runs", "run_status", "cancel_run", "resume_run", "cleanup_runs", "runs_dir",
    "SlideResult", "load_result", "subsample_cells", "Field", "read_field", "run_files", "cells_geojson_bytes",
    "format_duration", "RunAccessError",
]

log = logging.getLogger("tilscope.slides")

#: Environment variable naming the folder of slides the app offers.
SLIDE_DIR_ENV = "TILSCOPE_SLIDE_DIR"
#: Environment variable capping a slide upload, MB.
UPLOAD_MAX_ENV = "TILSCOPE_SLIDE_UPLOAD_MAX_MB"
#: Default upload cap, MB (the server's ``maxUploadSize`` in ``.streamlit/config.toml``).
UPLOAD_MAX_MB_DEFAULT = 500
#: Suffixes listed from the slide folder (vendor formats and TIFF; whether a TIFF is a slide is checked on opening).
LISTED_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".tif", ".tiff", ".btf")
#: Most files listed from the slide folder, and how deep its sub-folders are searched.
MAX_LISTED_FILES = 2000
MAX_FOLDER_DEPTH = 4
#: Longest side of the preview thumbnail, px.
PREVIEW_MAX_SIDE_PX = 1024
#: Longest side of the result view's slide picture, px (read from the coarsest sufficient pyramid level).
VIEW_MAX_SIDE_PX = 3072
#: Most cells drawn on the result view (a uniform random subsample above it, seeded; the legend says how many).
VIEW_MAX_CELLS = 150_000
#: Longest side of a field read at full resolution, level-0 px.
FIELD_MAX_SIDE_PX = 2048
#: Most cells written to ``cells.geojson`` for download (GeoJSON is about 250 bytes a cell; above it use the Parquet table).
GEOJSON_MAX_CELLS = 250_000
#: Run folders are removed this long after their job ended (:func:`cleanup_runs`), s.
RUN_KEEP_S = 14 * 24 * 3600
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class RunAccessError(TILscopeError):
    """The run was started by another user."""


# ------------------------------------------------------------------------------------------ choosing a slide


def slide_dir() -> Path | None:
    """The slide folder (``TILSCOPE_SLIDE_DIR``), or None when not configured.

    Raises
    ------
    InputError
        It is set but is not a folder that exists.
    """
    value = os.environ.get(SLIDE_DIR_ENV, "").strip()
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise InputError(f"the slide folder {SLIDE_DIR_ENV}={value!r} is not a folder that exists: ask the "
                         "administrator to set it to the folder holding the slides")
    return folder


def _listed(name: str) -> bool:
    return name.lower().endswith(LISTED_SUFFIXES) and not name.startswith(".")


def list_slide_files(folder: str | Path) -> tuple[list[str], bool]:
    """Files of the slide folder that may be slides, as paths relative to it (sorted, ``/``-separated).

    Parameters
    ----------
    folder : path of the slide folder

    Returns
    -------
    names : list of str, at most :data:`MAX_LISTED_FILES`, from at most :data:`MAX_FOLDER_DEPTH`
        folders deep (hidden files and folders left out)
    truncated : bool, True when more files were there
    """
    root = Path(folder)
    names: list[str] = []
    truncated = False
    for current, dirs, files in os.walk(root, followlinks=False):
        depth = len(Path(current).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < MAX_FOLDER_DEPTH)
        for f in sorted(files):
            if _listed(f):
                if len(names) >= MAX_LISTED_FILES:
                    truncated = True
                    break
                names.append((Path(current) / f).relative_to(root).as_posix())
        if truncated:
            break
    return sorted(names), truncated


def slide_in_folder(folder: str | Path, name: str) -> Path:
    """The path of ``name`` (as :func:`list_slide_files` gives it) in the slide folder.

    Raises
    ------
    InputError
        ``name`` is absolute, leads outside the folder (``..``), is hidden, has a suffix a
        slide cannot have, or is not a file there.
    """
    root = Path(folder)
    text = str(name or "")
    parts = Path(text).parts
    if not text or Path(text).is_absolute() or any(p in ("..", ".") or p.startswith(".") for p in parts) \
            or "\\" in text or "\x00" in text:
        raise InputError(f"{text!r} is not a file of the slide folder: pick a slide from the list")
    path = root / text
    if os.path.commonpath([os.path.abspath(root), os.path.abspath(path)]) != os.path.abspath(root):
        raise InputError(f"{text!r} lies outside the slide folder: pick a slide from the list")
    if not _listed(path.name):
        raise InputError(f"{text!r} is not a slide file ({', '.join(LISTED_SUFFIXES)}): pick a slide from the list")
    if not path.is_file():
        raise InputError(f"{text!r} is no longer in the slide folder: pick a slide from the list")
    return path


def upload_max_bytes() -> int:
    """The largest slide upload, bytes (``TILSCOPE_SLIDE_UPLOAD_MAX_MB``, default 500 MB).

    Raises
    ------
    InputError
        The variable is not a positive whole number of MB.
    """
    value = os.environ.get(UPLOAD_MAX_ENV, "").strip()
    if not value:
        return UPLOAD_MAX_MB_DEFAULT * 1024**2
    try:
        mb = int(value)
    except ValueError as err:
        raise InputError(f"{UPLOAD_MAX_ENV}={value!r} is not a whole number of MB (e.g. 500)") from err
    if mb <= 0:
        raise InputError(f"{UPLOAD_MAX_ENV}={mb} must be a positive number of MB (e.g. 500)")
    return mb * 1024**2


def check_upload_size(n_bytes: int, name: str) -> None:
    """Refuse an upload over :func:`upload_max_bytes`, saying where large slides go.

    Raises
    ------
    InputError
    """
    cap = upload_max_bytes()
    if n_bytes > cap:
        raise InputError(f"{name} is {n_bytes / 1024**2:,.0f} MB; slide uploads are limited to {cap / 1024**2:,.0f} MB. "
                         f"Ask the administrator to put large slides in the slide folder ({SLIDE_DIR_ENV}) and pick "
                         "them there")
    if n_bytes == 0:
        raise InputError(f"{name} is empty (0 bytes): upload the slide file again")


# ------------------------------------------------------------------------------------------ preview


@dataclass
class SlidePreview:
    """What the page shows of a slide before the run (made by :func:`preview_slide` in a worker).

    Attributes
    ----------
    path, name : str, the file and its name
    vendor, reader : str, OpenSlide's vendor (e.g. ``"aperio"``) or ``"ome-tiff"``, and the reader
    width_px, height_px : int, level 0
    levels : list of (width_px, height_px, downsample), finest first
    mpp : float or None, µm per level-0 pixel (file or user); None: not recorded and not given
    mpp_source : str, where it came from (:class:`core.slides.reader.Slide`)
    objective_power : float or None
    notes : list of str, what the reading found worth saying
    thumbnail : (h, w, 3) uint8, at most :data:`PREVIEW_MAX_SIDE_PX` a side
    thumb_scale : float, level-0 px per thumbnail px
    missing_mpp : str or None, the message when the mpp is missing (the slide cannot run until given)
    tissue_wkb : bytes or None, the detected tissue (no region of interest or exclusion) in level-0 µm, WKB
    tissue_area_mm2, pen_area_mm2 : float, mm² (0 without an mpp)
    tissue_method : str, tissue_notes : list of str
    stain_family, stain_label : str or None, the stain read on the tissue (:func:`core.fitness.read_stain`)
    """

    path: str
    name: str
    vendor: str
    reader: str
    width_px: int
    height_px: int
    levels: list[tuple[int, int, float]]
    mpp: float | None
    mpp_source: str
    objective_power: float | None
    notes: list[str]
    thumbnail: np.ndarray
    thumb_scale: float
    missing_mpp: str | None = None
    tissue_wkb: bytes | None = None
    tissue_area_mm2: float = 0.0
    pen_area_mm2: float = 0.0
    tissue_method: str = ""
    tissue_notes: list[str] = field(default_factory=list)
    stain_family: str | None = None
    stain_label: str | None = None

    @property
    def tissue(self):
        """The detected tissue, shapely (level-0 µm); an empty polygon without an mpp."""
        import shapely

        return shapely.from_wkb(self.tissue_wkb) if self.tissue_wkb else shapely.Polygon()

    @property
    def size_um(self) -> tuple[float, float] | None:
        """(width, height) in µm, None without an mpp."""
        return None if self.mpp is None else (self.width_px * self.mpp, self.height_px * self.mpp)

    @property
    def thumb_mpp(self) -> float | None:
        return None if self.mpp is None else self.thumb_scale * self.mpp


def preview_slide(path: str | Path, mpp: float | None = None, name: str | None = None) -> SlidePreview:
    """Open a slide and find its tissue, for the page's preview (run it in a worker: it decodes the file).

    Parameters
    ----------
    path : path of the slide
    mpp : float, optional, µm per level-0 pixel given by the user (wins over the file's)
    name : str, optional, the name shown (an upload's original name)

    Returns
    -------
    SlidePreview
        Without an mpp (none recorded, none given): metadata and thumbnail, ``missing_mpp``
        set, no tissue.

    Raises
    ------
    InputError
        Not a whole-slide image (a field image: the Analyze page), an implausible ``mpp``.
    ImageReadError
        The file cannot be read as a slide.
    """
    from core.slides.reader import is_slide, missing_mpp_message, open_slide
    from core.slides.run import read_slide_stain
    from core.slides.tissue import detect_tissue

    p = Path(path)
    shown = name or p.name
    if not is_slide(p):
        raise InputError(f"{shown}: is not a whole-slide image (a vendor file such as .svs or .ndpi, or a tiled "
                         "pyramidal TIFF / OME-TIFF): analyse field images on the Analyze page")
    with open_slide(p, mpp, require_mpp=False) as slide:
        slide.name = shown
        thumb, scale = slide.thumbnail(PREVIEW_MAX_SIDE_PX)
        preview = SlidePreview(
            path=str(p), name=shown, vendor=slide.vendor, reader=slide.reader, width_px=slide.width_px,
            height_px=slide.height_px, levels=[(lv.width_px, lv.height_px, round(lv.downsample, 4)) for lv in slide.levels],
            mpp=slide.mpp, mpp_source=slide.mpp_source, objective_power=slide.objective_power, notes=list(slide.notes),
            thumbnail=thumb, thumb_scale=float(scale))
        if slide.mpp is None:
            preview.missing_mpp = missing_mpp_message(
                shown, slide.objective_power,
                "enter them below (about 0.25 µm/px at 40x, 0.5 at 20x; the scanner's report gives the exact value). "
                "The slide cannot be analysed until they are given.")
            return preview
        tissue, rgb = detect_tissue(slide)
        stain = read_slide_stain(shown, rgb, tissue) if tissue.area_mm2 > 0 else None
    import shapely

    preview.tissue_wkb = shapely.to_wkb(tissue.geometry)
    preview.tissue_area_mm2 = float(tissue.area_mm2)
    preview.pen_area_mm2 = float(tissue.pen_area_mm2)
    preview.tissue_method = tissue.method
    preview.tissue_notes = list(tissue.notes)
    if stain is not None:
        preview.stain_family, preview.stain_label = stain.family, stain.label
    return preview


def fitness_for(preview: SlidePreview, scenario_key: str, antigen_confirmed: bool | None) -> tuple[list[str], list[str]]:
    """(problems, notes) of running ``scenario_key`` on the previewed slide (:func:`core.slides.run.slide_fitness`).

    Problems put the run outside the validated use (the page asks before running); a slide
    without an mpp or without tissue gives no problems here (it cannot start at all).
    """
    from core.scenarios.registry import get_scenario
    from core.slides.run import slide_fitness

    if preview.mpp is None or preview.stain_family is None:
        return [], []
    return slide_fitness(get_scenario(scenario_key), preview.stain_family, preview.mpp, antigen_confirmed)


# ------------------------------------------------------------------------------------------ regions


def rectangle_geometry(x_um: float, y_um: float, width_um: float, height_um: float,
                       size_um: tuple[float, float]):
    """A rectangle in level-0 µm (top-left corner and size), checked against the slide.

    Returns
    -------
    shapely Polygon, µm

    Raises
    ------
    InputError
        A size that is not positive, a value that is not finite, or a rectangle outside the slide.
    """
    import shapely

    values = [float(v) for v in (x_um, y_um, width_um, height_um)]
    if not all(math.isfinite(v) for v in values):
        raise InputError("the rectangle needs numbers for x, y, width and height (µm)")
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise InputError(f"the rectangle is {w:g} x {h:g} µm: give it a positive width and height")
    W, H = size_um
    if x >= W or y >= H or x + w <= 0 or y + h <= 0:
        raise InputError(f"the rectangle ({x:g}, {y:g}) + {w:g} x {h:g} µm lies outside the slide, which is "
                         f"{W:,.0f} x {H:,.0f} µm: x and y are measured from the slide's top-left corner")
    return shapely.box(x, y, x + w, y + h)


def geojson_geometry(data: bytes | str, mpp: float, what: str):
    """Polygons of a GeoJSON file in level-0 **pixels** (QuPath's frame), as shapely µm (:func:`core.slides.tissue.read_geometry`).

    Raises
    ------
    InputError
        Not GeoJSON, no polygon in it, over the limits of :mod:`core.spatial.regions`; the message names ``what``.
    """
    from core.slides.tissue import read_geometry

    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data.strip():
        raise InputError(f"{what}: the file is empty; export the annotation again as GeoJSON")
    try:
        return read_geometry(bytes(data), mpp, what)
    except InputError as err:
        if str(err).startswith(what):
            raise
        raise InputError(f"{what}: {err}") from err


def canvas_frame(preview: SlidePreview, max_width_px: int = 900, max_height_px: int = 640):
    """The drawing canvas over the slide: canvas pixels ↔ level-0 pixels (:class:`core.review.canvas.CanvasFrame`)."""
    from core.review.canvas import display_frame

    return display_frame((preview.height_px, preview.width_px), max_width_px, max_height_px)


def canvas_background(picture: np.ndarray, frame) -> np.ndarray:
    """``picture`` (the thumbnail or :func:`preview_picture`) resized to the canvas, (h, w, 3) uint8."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(picture))
    return np.asarray(img.resize((frame.canvas_width_px, frame.canvas_height_px), Image.Resampling.LANCZOS))


def drawn_geometry(objects: list[dict], frame, mpp: float):
    """Shapes drawn on the canvas (rectangles, polygons, freehand) as one shapely geometry in level-0 µm.

    Returns
    -------
    geometry : shapely Polygon / MultiPolygon, or None when nothing usable was drawn
    skipped : list of str, why a shape was not taken (too small, too few vertices)
    """
    import shapely

    from core.review.canvas import canvas_objects_to_regions

    regions, skipped = canvas_objects_to_regions(objects, frame, mpp, "exclude")
    if not regions:
        return None, skipped
    return shapely.union_all([shapely.make_valid(r.geometry) for r in regions]), skipped


def tissue_within(preview: SlidePreview, roi=None, exclude=None) -> tuple[Any, float]:
    """The tissue the run will analyse: detected tissue minus ``exclude``, within ``roi`` (µm geometries).

    Returns
    -------
    geometry : shapely, level-0 µm
    area_mm2 : float

    Raises
    ------
    InputError
        No mpp yet; the region of interest lies outside the slide.
    """
    from core.slides.tissue import limit_tissue

    if preview.size_um is None:
        raise InputError(preview.missing_mpp or f"{preview.name}: the microns per pixel are needed first")
    geom, _ = limit_tissue(preview.tissue, preview.size_um, roi, exclude)
    return geom, float(geom.area) / 1e6


def preview_picture(preview: SlidePreview, roi=None, exclude=None, tissue=None) -> np.ndarray:
    """The thumbnail with the analysed tissue tinted and outlined (green), exclusions (red) and the region of interest (blue).

    Parameters
    ----------
    preview : SlidePreview
    roi, exclude : shapely geometries in level-0 µm, or None
    tissue : shapely geometry, optional, the tissue to draw (default :func:`tissue_within`)

    Returns
    -------
    (h, w, 3) uint8 RGB, the thumbnail's size
    """
    import shapely
    from PIL import Image, ImageDraw

    from core.slides.tissue import rasterise_geometry

    thumb = preview.thumbnail
    if preview.thumb_mpp is None:
        return thumb.copy()
    t_mpp = preview.thumb_mpp
    if tissue is None:
        tissue, _ = tissue_within(preview, roi, exclude)
    out = thumb.astype(np.float32)
    mask = rasterise_geometry(tissue, t_mpp, thumb.shape[:2])
    out[mask] = 0.7 * out[mask] + 0.3 * np.array([40, 170, 60], np.float32)
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    width = max(1, min(thumb.shape[:2]) // 300 + 1)

    def outline(geom, colour, w):
        if geom is None or geom.is_empty:
            return
        for poly in shapely.get_parts(geom):
            if poly.geom_type != "Polygon":
                continue
            for ring in [poly.exterior, *poly.interiors]:
                pts = [(x / t_mpp, y / t_mpp) for x, y in np.asarray(ring.coords)]
                if len(pts) >= 2:
                    draw.line(pts, fill=colour, width=w)

    outline(tissue, (20, 140, 40), width)
    outline(exclude, (210, 30, 30), width + 1)
    outline(roi, (30, 80, 220), width + 1)
    return np.asarray(img)


# ------------------------------------------------------------------------------------------ runs


def runs_dir() -> Path:
    """``<data folder>/slide-runs`` (``TILSCOPE_DATA_DIR``), created with mode 0700."""
    from core.outputs.store import data_dir

    path = data_dir() / "slide-runs"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@dataclass
class SlideRun:
    """A slide run's folder and request (``run.json``)."""

    id: str
    folder: Path
    request: dict[str, Any]

    @property
    def out_dir(self) -> Path:
        return self.folder / "out"

    @property
    def view_dir(self) -> Path:
        return self.folder / "view"

    @property
    def job_id(self) -> str:
        return self.request["jobs"][-1]

    @property
    def slide_name(self) -> str:
        return self.request["slide_name"]

    @property
    def owner(self) -> str | None:
        return self.request.get("created_by")


def _write_json(path: Path, data: dict) -> None:
    """``data`` as JSON, replaced in one step (the run folder's files are read by other processes)."""
    from core.slides.run import _json_bytes, _write_atomic

    _write_atomic(path, _json_bytes(data))


def _user_dict(actor) -> dict | None:
    return None if actor is None else {"name": actor.name, "role": actor.role, "groups": list(actor.groups)}


def _actor(data: dict | None):
    from core.auth import User

    return None if not data else User(data["name"], data["role"], tuple(data.get("groups") or ()))


def start_run(
    preview: SlidePreview,
    scenario_key: str,
    *,
    case_label: str = "",
    roi=None,
    exclude=None,
    actor=None,
    user_name: str | None = None,
    group: str | None = None,
    precision: str = "float32",
    device: str | None = None,
    outside_validated_use: bool = False,
    antigen_confirmed: bool | None = None,
    keep_file: bool = False,
    save: bool = True,
) -> SlideRun:
    """Start analysing the previewed slide as a background job; return its run (its id goes into the URL).

    Parameters
    ----------
    preview : SlidePreview, with an mpp (``preview.mpp``; the user's when the file had none)
    scenario_key : str, a scenario that runs on slides (:func:`core.slides.run.slide_scenarios`)
    case_label : str, the case the analysis is saved under (blank: ``"unlabelled"``)
    roi, exclude : shapely geometries in level-0 µm, or None
    actor : core.auth.User or None, who starts it (the store saves for them; None: local mode)
    user_name : str, optional, the name typed in local mode
    group : str, optional, the group a new case is shared with
    precision, device : the network's precision and device (:func:`core.pipeline.load_model`)
    outside_validated_use : bool, run although the slide fails a fitness check
    antigen_confirmed : bool or None
    keep_file : bool, hard-link (or copy) the slide into the run folder: for uploads, whose
        staged file is removed after a day while the run may be resumed later
    save : bool, save the finished analysis in the case store

    Returns
    -------
    SlideRun

    Raises
    ------
    InputError
        No mpp; a scenario that does not run on slides; a case label the store refuses; no
        tissue to analyse within the region of interest.
    core.auth.AccessError
        A viewer (analyses need the analyst role).
    core.jobs.JobFailed
        No worker could be started.
    """
    import shapely

    from core import jobs
    from core.auth import AccessError
    from core.cli import _check_case_label
    from core.scenarios.registry import get_scenario
    from core.slides.run import check_slide_scenario

    if preview.mpp is None:
        raise InputError(preview.missing_mpp or f"{preview.name}: enter the microns per pixel first")
    check_slide_scenario(get_scenario(scenario_key))
    try:
        label = _check_case_label(case_label)
    except InputError as err:  # the command line's words, without its option name
        raise InputError(str(err).replace(" (--case)", "")) from err
    if actor is not None and not actor.can_save:
        raise AccessError("you are a viewer: running and saving analyses needs the analyst role (ask an admin)")
    _, area = tissue_within(preview, roi, exclude)
    if area <= 0:
        raise InputError("there is no tissue to analyse" + (" within the region of interest" if roi is not None else "")
                         + ": choose another region, or remove exclusions")
    run_id = uuid.uuid4().hex
    folder = runs_dir() / run_id
    folder.mkdir(mode=0o700)
    slide_path = Path(preview.path)
    if keep_file:
        kept = folder / "slide" / slide_path.name
        kept.parent.mkdir()
        try:
            os.link(slide_path, kept)
        except OSError:
            shutil.copyfile(slide_path, kept)
        slide_path = kept
    for name, geom in (("roi.wkb", roi), ("exclude.wkb", exclude)):
        if geom is not None:
            (folder / name).write_bytes(shapely.to_wkb(geom))
    request = {
        "id": run_id, "slide_path": str(slide_path), "slide_name": preview.name, "scenario": scenario_key,
        "mpp": preview.mpp, "mpp_source": preview.mpp_source, "case_label": label or "unlabelled", "group": group,
        "actor": _user_dict(actor), "created_by": actor.name if actor is not None else (user_name or None),
        "precision": precision, "device": device, "outside_validated_use": bool(outside_validated_use),
        "antigen_confirmed": antigen_confirmed, "roi": roi is not None, "exclude": exclude is not None,
        "tissue_area_mm2": area, "save": bool(save), "created_at": time.time(), "jobs": [],
    }
    _write_json(folder / "run.json", request)
    run = SlideRun(run_id, folder, request)
    _submit(run)
    return run


def _submit(run: SlideRun) -> None:
    from core import jobs

    attempt = uuid.uuid4().hex
    job_id = jobs.submit(run_slide_job, str(run.folder), attempt, kind="slide", progress_kwarg="progress")
    run.request["jobs"].append(job_id)
    run.request.setdefault("attempts", []).append(attempt)
    _write_json(run.folder / "run.json", run.request)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 10 s"``, ``"2 h 05 min"``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class _TileProgress:
    """Progress by tile with the time left, from the pace of the tiles analysed by this job."""

    def __init__(self, report: Callable[..., None] | None):
        self.report = report
        self.t0: float | None = None
        self.d0 = 0

    def __call__(self, done: int, total: int) -> None:
        if self.report is None:
            return
        now = time.monotonic()
        if self.t0 is None:  # the first tile of this job: its pace starts here
            self.t0, self.d0 = now, done
            left = "estimating the time left"
        elif done > self.d0:
            eta = (now - self.t0) / (done - self.d0) * (total - done)
            left = f"about {format_duration(eta)} left"
        else:
            left = ""
        if done >= total:
            text = f"All {total} tiles analysed: computing the statistics and writing the files…"
        else:
            text = f"Tile {done} of {total}" + (f" · {left}" if left else "")
        self.report(done, total, text)


def run_slide_job(folder: str, attempt: str = "", progress: Callable[..., None] | None = None) -> dict:
    """The worker's side of a run (:func:`start_run` submits it): analyse, draw the view, save in the case store.

    Parameters
    ----------
    folder : str, the run folder (``run.json`` holds the request)
    attempt : str, this job's token: a job cancelled before its worker started (:func:`cancel_run`
        lists its token in ``cancelled.json``) stops at once instead of running beside a resumed one
    progress : callable(done, total, text), :func:`core.jobs.report_progress`

    Returns
    -------
    dict ``{"summary", "analysis_id", "save_error"}``: the slide summary; the case-store id
    (None when not saved) and why not (None when saved or not asked).

    Raises
    ------
    TILscopeError
        As :func:`core.slides.run.analyze_slide` (the job's one-line message).
    """
    import shapely

    from core.slides.run import analyze_slide

    run_folder = Path(folder)
    if attempt and attempt in _cancelled(run_folder):
        raise TILscopeError("it was cancelled")
    req = json.loads((run_folder / "run.json").read_text(encoding="utf-8"))
    geoms = {n: shapely.from_wkb((run_folder / f"{n}.wkb").read_bytes()) if (run_folder / f"{n}.wkb").is_file()
             else None for n in ("roi", "exclude")}
    if progress is not None:
        progress(0, 0, "Finding the tissue and loading the model…")
    given = req["mpp"] if req.get("mpp_source") == "user" else None  # else the file's, recorded as such
    summary = analyze_slide(req["slide_path"], req["scenario"], run_folder / "out", mpp=given, roi=geoms["roi"],
                            exclude=geoms["exclude"], progress=_TileProgress(progress), device=req.get("device"),
                            precision=req.get("precision") or "float32",
                            outside_validated_use=bool(req.get("outside_validated_use")),
                            antigen_confirmed=req.get("antigen_confirmed"))
    n = summary["tiles"]["with_tissue"]
    if progress is not None:
        progress(n, n, "Drawing the slide view and saving to the case history…")
    write_view(run_folder, req["slide_path"], given)
    outcome = {"analysis_id": None, "save_error": None}
    saved_path = run_folder / "saved.json"
    if saved_path.is_file():
        outcome = json.loads(saved_path.read_text(encoding="utf-8"))
    elif req.get("save", True):
        outcome = _save(run_folder, req, summary)
        _write_json(saved_path, outcome)
    return {"summary": summary, **outcome}


def _save(run_folder: Path, req: dict, summary: dict) -> dict:
    """Save the run in the case store for the user who started it; never raises (a failure is the outcome's message)."""
    from core.outputs.store import CaseStore, database_url
    from core.slides.records import save_slide_analysis

    params = {"slide_run": req["id"], "roi": req.get("roi"), "exclude": req.get("exclude"),
              "mpp_given": req["mpp"] if req.get("mpp_source") == "user" else None}
    store = None
    try:
        store = CaseStore(database_url()).for_actor(_actor(req.get("actor")))
        analysis_id, notes = save_slide_analysis(store, run_folder / "out", summary, req["case_label"], params=params,
                                                 created_by=req.get("created_by"), group=req.get("group"))
        return {"analysis_id": analysis_id, "save_error": None, "notes": notes}
    except TILscopeError as err:
        return {"analysis_id": None, "save_error": " ".join(str(err).split())}
    finally:
        if store is not None:
            store.close()


def write_view(run_folder: Path, slide_path: str, mpp: float | None) -> None:
    """The result view's picture (``view/slide.jpg``, ``view/view.json``) and its cell subsample (``view/cells.parquet``).

    The picture is the slide at most :data:`VIEW_MAX_SIDE_PX` a side, read from the coarsest
    pyramid level that is large enough (:meth:`core.slides.reader.Slide.thumbnail`). ``mpp``:
    the user's µm per pixel, None for the file's.
    """
    from PIL import Image

    from core.slides.reader import open_slide

    view = run_folder / "view"
    tmp = run_folder / ".view.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open_slide(slide_path, mpp) as slide:
        picture, scale = slide.thumbnail(VIEW_MAX_SIDE_PX)
        meta = {"scale": float(scale), "width_px": int(picture.shape[1]), "height_px": int(picture.shape[0]),
                "mpp": float(slide.mpp), "slide_width_px": slide.width_px, "slide_height_px": slide.height_px}
    Image.fromarray(picture).save(tmp / "slide.jpg", quality=85)
    cells, n_total = subsample_cells(run_folder / "out" / "cells.parquet", VIEW_MAX_CELLS)
    cells.to_parquet(tmp / "cells.parquet", index=False)
    meta["n_cells"], meta["n_shown"] = int(n_total), int(len(cells))
    (tmp / "view.json").write_text(json.dumps(meta), encoding="utf-8")
    shutil.rmtree(view, ignore_errors=True)
    os.replace(tmp, view)


def subsample_cells(cells_path: str | Path, max_cells: int, seed: int = 0):
    """At most ``max_cells`` cells of a Parquet cell table, a uniform random subsample (seeded) when more.

    Read batch by batch (the whole table is never in memory); the columns the view draws:
    ``x_um``, ``y_um``, ``cell_class``, ``probability``.

    Returns
    -------
    cells : pandas.DataFrame, in table order
    n_total : int, rows of the table
    """
    import pandas as pd
    import pyarrow.parquet as pq

    columns = ["x_um", "y_um", "cell_class", "probability"]
    pf = pq.ParquetFile(cells_path)
    n = pf.metadata.num_rows
    if n <= max_cells:
        return pf.read(columns=columns).to_pandas(), n
    keep = np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))
    parts, start = [], 0
    for batch in pf.iter_batches(batch_size=262_144, columns=columns):
        stop = start + batch.num_rows
        lo, hi = np.searchsorted(keep, [start, stop])
        if hi > lo:
            parts.append(batch.take(keep[lo:hi] - start).to_pandas())
        start = stop
    return pd.concat(parts, ignore_index=True), n


def load_run(run_id: str, actor=None) -> SlideRun:
    """The run of ``run_id`` (from the page's URL), if the user may open it.

    Raises
    ------
    InputError
        Not a run id, or no such run (removed after :data:`RUN_KEEP_S`, or another data folder).
    RunAccessError
        Started by another user (admins open every run; in local mode, ``actor`` None, anyone).
    """
    text = str(run_id or "")
    if not _RUN_ID.match(text):
        raise InputError(f"{text[:40]!r} is not a slide run id: start the analysis from the Slides page")
    folder = runs_dir() / text
    try:
        request = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"slide run {text} does not exist (old runs are removed after "
                         f"{RUN_KEEP_S // 86400} days; saved analyses stay on the Cases page): start it again") from err
    owner = (request.get("actor") or {}).get("name")
    if actor is not None and not actor.is_admin and owner is not None and owner != actor.name:
        raise RunAccessError("this slide run was started by another user: only they, or an admin, can open it; "
                             "saved analyses shared with you are on the Cases page")
    return SlideRun(text, folder, request)


def list_runs(actor=None, limit: int = 10) -> list[dict[str, Any]]:
    """The newest runs the user may open: ``{"id", "slide", "scenario", "case", "created_at"}``, newest first."""
    rows = []
    root = runs_dir()
    for folder in root.iterdir():
        if not _RUN_ID.match(folder.name):
            continue
        try:
            run = load_run(folder.name, actor)
        except (InputError, RunAccessError):
            continue
        rows.append({"id": run.id, "slide": run.slide_name, "scenario": run.request.get("scenario"),
                     "case": run.request.get("case_label"), "created_at": float(run.request.get("created_at") or 0)})
    rows.sort(key=lambda r: -r["created_at"])
    return rows[:limit]


@dataclass
class RunStatus:
    """Where a run stands, in the page's words.

    Attributes
    ----------
    state : {"queued", "running", "done", "failed"}
    fraction : float in [0, 1], tiles done
    text : str, e.g. "Tile 12 of 40 · about 3 min 10 s left"
    error : str or None, one line for a failed (or cancelled) run
    """

    state: str
    fraction: float
    text: str
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


def run_status(run: SlideRun) -> RunStatus:
    """The run's job status as the page shows it (:func:`core.jobs.status`)."""
    from core import jobs

    try:
        st = jobs.status(run.job_id)
    except jobs.JobFailed as err:
        if (run.view_dir / "view.json").is_file() and (run.out_dir / "summary.json").is_file():
            return RunStatus("done", 1.0, "Finished")  # the job's folder was cleaned up; its files are here
        return RunStatus("failed", 0.0, "", str(err))
    if st.state == "queued":
        return RunStatus("queued", 0.0, "Waiting for a worker…")
    if st.state == "failed":
        return RunStatus("failed", st.fraction, st.text, st.error or "it failed")
    if st.state == "done":
        return RunStatus("done", 1.0, "Finished")
    return RunStatus("running", st.fraction, st.text or "Finding the tissue and loading the model…")


def _cancelled(folder: Path) -> list[str]:
    try:
        return list(json.loads((folder / "cancelled.json").read_text(encoding="utf-8")).get("attempts", []))
    except (OSError, ValueError):
        return []


def cancel_run(run: SlideRun) -> None:
    """Stop the run's job; its finished tiles stay (``out.partial``) for :func:`resume_run`.

    A job still queued is marked so that its worker, should it start later, stops at once.
    """
    from core import jobs

    attempts = run.request.get("attempts") or []
    if attempts:
        _write_json(run.folder / "cancelled.json", {"attempts": sorted(set(_cancelled(run.folder)) | {attempts[-1]})})
    jobs.cancel(run.job_id)


def resume_run(run: SlideRun) -> None:
    """Start a failed or cancelled run again: a new job that skips the tiles already done.

    Raises
    ------
    InputError
        The run is still going, or finished.
    """
    state = run_status(run).state
    if state != "failed":
        raise InputError(f"the run is {state}: only a cancelled or failed run is resumed")
    _submit(run)


def cleanup_runs(max_age_s: float = RUN_KEEP_S) -> list[str]:
    """Remove run folders whose last job ended (or was started, when its job folder is gone) over ``max_age_s`` ago."""
    from core import jobs

    removed = []
    now = time.time()
    for folder in runs_dir().iterdir():
        if not _RUN_ID.match(folder.name):
            continue
        try:
            req = json.loads((folder / "run.json").read_text(encoding="utf-8"))
            job = req["jobs"][-1]
            try:
                st = jobs.status(job)
                if not st.finished:
                    continue
                ended = float(st.finished_at or st.submitted_at or 0)
            except jobs.JobFailed:
                ended = float(req.get("created_at") or 0)
        except (OSError, ValueError, KeyError, IndexError):
            ended = folder.stat().st_mtime
        if now - ended > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


# ------------------------------------------------------------------------------------------ result


@dataclass
class SlideResult:
    """A finished run, as the page shows it.

    Attributes
    ----------
    summary : dict, ``out/summary.json`` (:func:`core.slides.run.slide_summary`)
    analysis_id : int or None, its id in the case store; save_error : str or None
    picture : bytes, JPEG of the slide at ``view["scale"]`` level-0 px per pixel
    view : dict, ``scale``, ``width_px``, ``height_px``, ``mpp``, ``n_cells``, ``n_shown``
    cells : pandas.DataFrame, the cells drawn (``x_um``, ``y_um``, ``cell_class``, ``probability``)
    density : (ny, nx) float32, immune cells per mm² of tissue per bin (NaN: under 25 % tissue)
    hot_spots : (ny, nx) int8, 1 hot, -1 cold, 0 neither
    bin_um : float
    """

    summary: dict
    analysis_id: int | None
    save_error: str | None
    picture: bytes
    view: dict
    cells: Any
    density: np.ndarray
    hot_spots: np.ndarray
    bin_um: float


def load_result(run: SlideRun) -> SlideResult:
    """Read a finished run's files.

    Raises
    ------
    InputError
        The files are missing (the run did not finish, or its folder was cleaned up).
    """
    import pandas as pd

    try:
        summary = json.loads((run.out_dir / "summary.json").read_text(encoding="utf-8"))
        view = json.loads((run.view_dir / "view.json").read_text(encoding="utf-8"))
        picture = (run.view_dir / "slide.jpg").read_bytes()
        cells = pd.read_parquet(run.view_dir / "cells.parquet")
        density = np.load(run.out_dir / "immune_density.npy")
        spots = np.load(run.out_dir / "immune_hot_spots.npy")
    except (OSError, ValueError) as err:
        raise InputError(f"the files of slide run {run.id} cannot be read ({err}); start the analysis again") from err
    saved = {}
    if (run.folder / "saved.json").is_file():
        saved = json.loads((run.folder / "saved.json").read_text(encoding="utf-8"))
    return SlideResult(summary, saved.get("analysis_id"), saved.get("save_error"), picture, view, cells, density, spots,
                       float((summary.get("heatmap") or {}).get("bin_um") or 100.0))


@dataclass
class Field:
    """A field of the slide at full resolution with its cells.

    Attributes
    ----------
    rgb : (h, w, 3) uint8, level 0 (the slide's mpp)
    x0_px, y0_px : int, its top-left corner in level-0 px
    mpp : float
    cells : pandas.DataFrame, the cells in it, ``x_px``/``y_px`` relative to the field (and the table's other columns)
    """

    rgb: np.ndarray
    x0_px: int
    y0_px: int
    mpp: float
    cells: Any


def read_field(slide_path: str, mpp: float, cells_path: str, x_um: float, y_um: float, size_um: float) -> Field:
    """A square field centred on (``x_um``, ``y_um``), read at the slide's full resolution, with its cells (a worker job).

    Parameters
    ----------
    slide_path : str, mpp : float, the run's slide and its level-0 µm per pixel
    cells_path : str, the run's ``cells.parquet``; read with a filter on ``x_um``, ``y_um``
        (only the row groups that can hold the field)
    x_um, y_um : float, the field's centre, level-0 µm
    size_um : float, its side, µm: at most :data:`FIELD_MAX_SIDE_PX` level-0 pixels

    Returns
    -------
    Field

    Raises
    ------
    InputError
        A centre outside the slide, a size that is not positive or over the cap (the message
        gives the largest).
    """
    import pandas as pd

    from core.slides.reader import open_slide

    values = [float(v) for v in (x_um, y_um, size_um)]
    if not all(math.isfinite(v) for v in values):
        raise InputError("the field needs numbers for its centre and size (µm)")
    x_um, y_um, size_um = values
    largest = FIELD_MAX_SIDE_PX * mpp
    if not 0 < size_um <= largest + 1e-9:
        raise InputError(f"a field of {size_um:g} µm: give a side from {10 * mpp:.0f} to {largest:.0f} µm "
                         f"({FIELD_MAX_SIDE_PX} pixels at {mpp:g} µm/px)")
    with open_slide(slide_path, mpp) as slide:
        w_um, h_um = slide.width_px * mpp, slide.height_px * mpp
        if not (0 <= x_um <= w_um and 0 <= y_um <= h_um):
            raise InputError(f"the centre ({x_um:,.0f}, {y_um:,.0f}) µm lies outside the slide, which is "
                             f"{w_um:,.0f} x {h_um:,.0f} µm")
        side = max(8, int(round(size_um / mpp)))
        x0 = int(min(max(0, round(x_um / mpp - side / 2)), max(0, slide.width_px - side)))
        y0 = int(min(max(0, round(y_um / mpp - side / 2)), max(0, slide.height_px - side)))
        w, h = min(side, slide.width_px - x0), min(side, slide.height_px - y0)
        rgb = slide.read_region(x0, y0, w, h, mpp)
    x1_um, y1_um = (x0 + w) * mpp, (y0 + h) * mpp
    cells = pd.read_parquet(cells_path, filters=[("x_um", ">=", x0 * mpp), ("x_um", "<", x1_um),
                                                 ("y_um", ">=", y0 * mpp), ("y_um", "<", y1_um)])
    cells = cells.assign(x_px=cells["x_px"] - x0, y_px=cells["y_px"] - y0).reset_index(drop=True)
    return Field(rgb, x0, y0, mpp, cells)


def run_files(run: SlideRun) -> list[tuple[str, Path]]:
    """The run's output files to download, ``(name, path)``, in :data:`core.slides.run.SLIDE_FILES` order."""
    from core.slides.run import SLIDE_FILES

    return [(n, run.out_dir / n) for n in SLIDE_FILES if (run.out_dir / n).is_file()]


def cells_geojson_bytes(run: SlideRun) -> bytes:
    """``cells.geojson`` of the run (QuPath detections in level-0 pixels, with the analysed tissue as an annotation).

    Raises
    ------
    InputError
        More than :data:`GEOJSON_MAX_CELLS` cells (the message points to ``cells.parquet``).
    """
    import pandas as pd
    import pyarrow.parquet as pq

    from core.outputs.records import json_default
    from core.scenarios.registry import get_scenario
    from core.spatial.regions import cells_to_geojson

    path = run.out_dir / "cells.parquet"
    n = pq.ParquetFile(path).metadata.num_rows
    if n > GEOJSON_MAX_CELLS:
        raise InputError(f"{n:,} cells are too many for GeoJSON (at most {GEOJSON_MAX_CELLS:,}, about 250 bytes a cell): "
                         "download cells.parquet or cells.csv instead (QuPath imports the CSV's x_px, y_px)")
    cells = pd.read_parquet(path)
    colors = get_scenario(run.request["scenario"]).class_colors
    data = cells_to_geojson(cells, dict(colors), float(run.request["mpp"]))
    tissue = json.loads((run.out_dir / "tissue.geojson").read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("features"), list):
        data["features"] = list(tissue.get("features") or []) + data["features"]
    return json.dumps(data, ensure_ascii=False, default=json_default).encode("utf-8")
