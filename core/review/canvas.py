"""Regions and clicks drawn on the Review page's canvas, and the image the canvas shows.

Pure helpers for the Review page (no Streamlit here, so they are unit-tested and usable
from notebooks):

* :class:`CanvasFrame` maps the part of the image shown in the browser, at its zoom
  ("canvas pixels"), to the analysed image's pixels, and those to µm with the image's mpp
  (once, here). :func:`view_frame` places a view of a given zoom around a centre (zoom and
  pan), :func:`fit_zoom` and :data:`ZOOM_STEPS` give the zoom levels, :func:`render_view`
  draws the view and :func:`render_navigator` the whole image with the view's outline.
* :func:`canvas_object_points` reads the fabric.js objects that
  ``streamlit-drawable-canvas`` returns (``Rect``, ``Polygon``, ``Path`` from the polygon
  and freehand tools, ``Circle`` from the point tool) into vertices in canvas pixels,
  applying each object's position, origin, scale and rotation the way fabric.js does.
* :func:`canvas_objects_to_regions` turns drawn shapes into :class:`core.spatial.regions.Region`
  polygons in µm; :func:`canvas_click_points` turns point-tool clicks into image pixels.
* :func:`downscale` and :func:`render_review_image` make the canvas background: the image
  at canvas size with the regions and cell markers drawn on it.

Coordinates: canvas and image pixels are (x, y) with x = column, origin at the top-left
corner; µm = image pixels × mpp.

References
----------
.. [fabric] fabric.js v6, ``FabricObject.getCenterPoint`` / ``_getTransformedDimensions``
   (origin, stroke and scale handling) and ``Polyline.pathOffset`` (points are stored
   relative to the centre of their bounding box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from core.errors import InputError
from core.spatial.regions import KIND_COLORS, REGION_KINDS, Region

#: Labels of the region kinds, as the page shows them.
KIND_LABELS = {
    "tumour": "Tumour",
    "stroma": "Stroma",
    "exclude": "Exclude (artefact, necrosis)",
    "margin": "Invasive-margin border",
}
_ORIGIN = {"left": -0.5, "top": -0.5, "center": 0.0, "right": 0.5, "bottom": 0.5}
#: Shapes whose bounding box is smaller than this (canvas pixels, either side) are taken
#: for stray clicks and ignored.
MIN_SHAPE_SIDE_PX = 4.0


#: Zoom levels offered (display pixels per image pixel), besides "fit".
ZOOM_STEPS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class CanvasFrame:
    """How the part of the image shown on the canvas maps to the analysed image.

    Attributes
    ----------
    image_width_px, image_height_px : int
        Size of the analysed image (W, H) in its pixels.
    canvas_width_px, canvas_height_px : int
        Size of the canvas (and of its background picture) in display pixels.
    x0_px, y0_px : int
        Top-left corner of the view in image pixels (0, 0 when the whole image is shown).
    view_width_px, view_height_px : int or None
        Size of the view in image pixels; None = the whole image.

    Examples
    --------
    A 400 x 300 px view at zoom 2 whose corner is at (1000, 500) image px: canvas pixel
    (100, 50) is image pixel (1050, 525).

    >>> f = CanvasFrame(4000, 3000, 800, 600, 1000, 500, 400, 300)
    >>> f.to_image_px([[100, 50]]).tolist()
    [[1050.0, 525.0]]
    """

    image_width_px: int
    image_height_px: int
    canvas_width_px: int
    canvas_height_px: int
    x0_px: int = 0
    y0_px: int = 0
    view_width_px: int | None = None
    view_height_px: int | None = None

    @property
    def view_w(self) -> int:
        """Width of the view in image pixels."""
        return self.image_width_px if self.view_width_px is None else self.view_width_px

    @property
    def view_h(self) -> int:
        """Height of the view in image pixels."""
        return self.image_height_px if self.view_height_px is None else self.view_height_px

    @property
    def scale_x(self) -> float:
        """Image pixels per canvas pixel along x."""
        return self.view_w / self.canvas_width_px

    @property
    def scale_y(self) -> float:
        """Image pixels per canvas pixel along y."""
        return self.view_h / self.canvas_height_px

    @property
    def zoom(self) -> float:
        """Display pixels per image pixel (1 = full resolution)."""
        return self.canvas_width_px / self.view_w

    @property
    def is_whole_image(self) -> bool:
        return (self.x0_px, self.y0_px, self.view_w, self.view_h) == (0, 0, self.image_width_px, self.image_height_px)

    @property
    def centre_px(self) -> tuple[float, float]:
        """Centre of the view in image pixels."""
        return self.x0_px + self.view_w / 2, self.y0_px + self.view_h / 2

    def to_image_px(self, xy_canvas: np.ndarray) -> np.ndarray:
        """(N, 2) canvas pixels → (N, 2) float64 image pixels."""
        xy = np.asarray(xy_canvas, dtype=np.float64).reshape(-1, 2)
        return xy * np.array([self.scale_x, self.scale_y]) + np.array([self.x0_px, self.y0_px], dtype=np.float64)

    def to_canvas_px(self, xy_image: np.ndarray) -> np.ndarray:
        """(N, 2) image pixels → (N, 2) float64 canvas pixels."""
        xy = np.asarray(xy_image, dtype=np.float64).reshape(-1, 2)
        return (xy - np.array([self.x0_px, self.y0_px], dtype=np.float64)) / np.array([self.scale_x, self.scale_y])

    def in_view(self, xy_image: np.ndarray, margin_px: float = 0.0) -> np.ndarray:
        """(N,) bool: image points inside the view (grown by ``margin_px`` image pixels)."""
        xy = np.asarray(xy_image, dtype=np.float64).reshape(-1, 2)
        return ((xy[:, 0] >= self.x0_px - margin_px) & (xy[:, 0] <= self.x0_px + self.view_w + margin_px)
                & (xy[:, 1] >= self.y0_px - margin_px) & (xy[:, 1] <= self.y0_px + self.view_h + margin_px))


def display_frame(image_shape: tuple[int, int], max_width_px: int = 900, max_height_px: int = 700) -> CanvasFrame:
    """The canvas size that shows an image whole, never enlarged, aspect ratio kept.

    Parameters
    ----------
    image_shape : (H, W)
        Analysed image size in pixels.
    max_width_px, max_height_px : int > 0
        Largest canvas in display pixels.

    Returns
    -------
    CanvasFrame

    Raises
    ------
    InputError
        If a size is not positive.
    """
    h, w = (int(v) for v in image_shape[:2])
    if h <= 0 or w <= 0 or max_width_px <= 0 or max_height_px <= 0:
        raise InputError(f"image and canvas sizes must be positive, got image {w} x {h} px, canvas {max_width_px} x {max_height_px}")
    scale = min(1.0, max_width_px / w, max_height_px / h)
    return CanvasFrame(w, h, max(1, round(w * scale)), max(1, round(h * scale)))


def fit_zoom(image_shape: tuple[int, int], max_width_px: int = 1000, max_height_px: int = 700,
             max_zoom: float = 2.0) -> float:
    """The zoom that shows the whole image within ``max_width_px`` x ``max_height_px``.

    A small image is enlarged up to ``max_zoom`` (so its cells can be clicked).

    Raises
    ------
    InputError
        If a size is not positive.
    """
    h, w = (int(v) for v in image_shape[:2])
    if h <= 0 or w <= 0 or max_width_px <= 0 or max_height_px <= 0:
        raise InputError(f"image and canvas sizes must be positive, got image {w} x {h} px, canvas {max_width_px} x {max_height_px}")
    return float(min(max_zoom, max_width_px / w, max_height_px / h))


def view_frame(
    image_shape: tuple[int, int],
    zoom: float,
    centre_px: tuple[float, float] | None = None,
    max_width_px: int = 1000,
    max_height_px: int = 700,
) -> CanvasFrame:
    """The view of an image at ``zoom`` around ``centre_px``, at most ``max_width_px`` x ``max_height_px`` on screen.

    Parameters
    ----------
    image_shape : (H, W)
        Analysed image size in pixels.
    zoom : float > 0
        Display pixels per image pixel (1 = full resolution; :func:`fit_zoom` for the
        whole image).
    centre_px : (x, y), optional
        Wanted centre in image pixels (default the image's centre); the view is moved
        inside the image where the centre is too close to an edge.
    max_width_px, max_height_px : int
        Largest canvas in display pixels.

    Returns
    -------
    CanvasFrame
        ``x0_px``, ``y0_px``, ``view_width_px``, ``view_height_px`` in whole image
        pixels; the canvas is the view times the zoom (never larger than the maximum).

    Raises
    ------
    InputError
        If the zoom or a size is not positive.

    Examples
    --------
    >>> f = view_frame((3000, 4000), 1.0, (100, 100), 800, 600)
    >>> (f.x0_px, f.y0_px, f.view_w, f.view_h, f.canvas_width_px)
    (0, 0, 800, 600, 800)
    """
    h, w = (int(v) for v in image_shape[:2])
    if not (np.isfinite(zoom) and zoom > 0):
        raise InputError(f"zoom must be a positive number of display pixels per image pixel, got {zoom!r}")
    if h <= 0 or w <= 0 or max_width_px <= 0 or max_height_px <= 0:
        raise InputError(f"image and canvas sizes must be positive, got image {w} x {h} px, canvas {max_width_px} x {max_height_px}")
    vw = max(1, min(w, int(math.floor(max_width_px / zoom + 1e-9))))
    vh = max(1, min(h, int(math.floor(max_height_px / zoom + 1e-9))))
    cx, cy = centre_px if centre_px is not None else (w / 2, h / 2)
    x0 = int(round(min(max(float(cx) - vw / 2, 0.0), w - vw)))
    y0 = int(round(min(max(float(cy) - vh / 2, 0.0), h - vh)))
    cw = max(1, min(max_width_px, int(round(vw * zoom))))
    ch = max(1, min(max_height_px, int(round(vh * zoom))))
    return CanvasFrame(w, h, cw, ch, x0, y0, vw, vh)


def zoom_steps(fit: float) -> list[float]:
    """The zoom levels to offer: ``fit`` first, then every :data:`ZOOM_STEPS` level above it."""
    return [fit] + [z for z in ZOOM_STEPS if z > fit * 1.05]


def marker_radius_px(mpp: float | None, zoom: float, cell_radius_um: float = 4.0) -> int:
    """Radius of a cell marker on screen: about a nucleus (``cell_radius_um``), 2 to 12 display pixels."""
    r_img = cell_radius_um / mpp if mpp else 8.0
    return int(min(12, max(2, round(r_img * zoom))))


# ----------------------------------------------------------------------------- canvas objects


def _num(obj: dict, key: str, default: float) -> float:
    v = obj.get(key, default)
    try:
        f = float(default if v is None else v)
    except (TypeError, ValueError) as err:
        raise InputError(f"canvas object field {key!r} is not a number: {v!r}") from err
    if not math.isfinite(f):
        raise InputError(f"canvas object field {key!r} is not finite: {v!r}")
    return f


def _path_vertices(path: Any, samples: int = 8) -> np.ndarray:
    """Vertices of SVG path commands in absolute coordinates, curves flattened.

    Quadratic (Q, T) and cubic (C, S) Béziers, which fabric's freehand brush writes, are
    sampled at ``samples`` points each, so the vertices (and their bounding box, which
    fabric's ``pathOffset`` is the centre of) lie on the drawn curve.
    """
    if not isinstance(path, list):
        raise InputError("a canvas Path has no 'path' command list")
    pts: list[np.ndarray] = []
    cur = np.zeros(2)
    last_ctrl: np.ndarray | None = None
    t = np.linspace(0.0, 1.0, samples + 1)[1:, None]
    for cmd in path:
        if not isinstance(cmd, (list, tuple)) or not cmd or not isinstance(cmd[0], str):
            raise InputError(f"unreadable path command {cmd!r}")
        op = cmd[0]
        if op.upper() == "Z":
            continue
        if op not in ("M", "L", "Q", "C", "T", "S"):
            raise InputError(f"path command {op!r} is not supported (absolute M, L, Q, C, T, S and Z are)")
        try:
            a = np.asarray([float(v) for v in cmd[1:]], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"path command {cmd!r} has non-numeric coordinates") from err
        need = {"M": 2, "L": 2, "T": 2, "Q": 4, "S": 4, "C": 6}[op]
        if len(a) != need:
            raise InputError(f"path command {op!r} needs {need} numbers, got {cmd!r}")
        if op in ("M", "L"):
            seg, ctrl = a[None, :], None
            end = a
        elif op in ("Q", "T"):
            c = a[:2] if op == "Q" else (2 * cur - last_ctrl if last_ctrl is not None else cur)
            end = a[-2:]
            seg = (1 - t) ** 2 * cur + 2 * (1 - t) * t * c + t**2 * end
            ctrl = c
        else:
            c1 = a[:2] if op == "C" else (2 * cur - last_ctrl if last_ctrl is not None else cur)
            c2, end = a[-4:-2], a[-2:]
            seg = (1 - t) ** 3 * cur + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * end
            ctrl = c2
        pts.append(np.asarray(seg, dtype=np.float64).reshape(-1, 2))
        cur, last_ctrl = end, ctrl
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def canvas_object_points(obj: dict) -> tuple[str, np.ndarray]:
    """Vertices of one fabric.js object in canvas pixels.

    Parameters
    ----------
    obj : dict
        One entry of ``json_data["objects"]`` from ``st_canvas``: ``Rect`` (``left``,
        ``top``, ``width``, ``height``), ``Polygon``/``Polyline`` (``points`` of
        ``{"x", "y"}``), ``Path`` (``path`` commands, as the freehand brush writes), or
        ``Circle`` (the point tool). Optional ``originX``/``originY``, ``scaleX``/``scaleY``,
        ``angle`` (degrees), ``strokeWidth``, ``strokeUniform``, ``pathOffset`` are honoured.

    Returns
    -------
    kind : str
        ``"shape"`` (a ring, (N, 2) with N >= 3 for a proper shape) or ``"point"`` ((1, 2),
        the centre of a circle).
    points : (N, 2) float64 ndarray
        (x, y) in canvas pixels.

    Raises
    ------
    InputError
        If the object type is not one of the above or its fields are malformed.
    """
    if not isinstance(obj, dict):
        raise InputError(f"a canvas object must be a dict, got {type(obj).__name__}")
    typ = str(obj.get("type", "")).lower()
    sx, sy = _num(obj, "scaleX", 1.0), _num(obj, "scaleY", 1.0)
    sw = _num(obj, "strokeWidth", 1.0)  # fabric's default; it counts even without a stroke colour
    uniform = bool(obj.get("strokeUniform", False))
    angle = math.radians(_num(obj, "angle", 0.0))
    if typ == "rect":
        local_w, local_h = _num(obj, "width", 0.0), _num(obj, "height", 0.0)
        local = np.array([[-local_w / 2, -local_h / 2], [local_w / 2, -local_h / 2],
                          [local_w / 2, local_h / 2], [-local_w / 2, local_h / 2]])
    elif typ in ("polygon", "polyline"):
        raw = obj.get("points")
        if not isinstance(raw, list):
            raise InputError("a canvas Polygon has no 'points' list")
        try:
            pts = np.array([[float(p["x"]), float(p["y"])] for p in raw], dtype=np.float64).reshape(-1, 2)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError("Polygon points must be {'x': number, 'y': number}") from err
        local = pts - _path_offset(obj, pts)
        local_w, local_h = _num(obj, "width", float(np.ptp(pts[:, 0])) if len(pts) else 0.0), _num(
            obj, "height", float(np.ptp(pts[:, 1])) if len(pts) else 0.0)
    elif typ == "path":
        pts = _path_vertices(obj.get("path"))
        local = pts - _path_offset(obj, pts)
        local_w, local_h = _num(obj, "width", float(np.ptp(pts[:, 0])) if len(pts) else 0.0), _num(
            obj, "height", float(np.ptp(pts[:, 1])) if len(pts) else 0.0)
    elif typ == "circle":
        r = _num(obj, "radius", 0.0)
        local = np.zeros((1, 2))
        local_w = local_h = 2 * r
    else:
        raise InputError(f"canvas object type {obj.get('type')!r} is not supported: draw with rectangle, polygon, freehand or point")
    # fabric: the box (left, top) refers to includes the stroke; the stroke is scaled with
    # the object unless strokeUniform.
    dim_x = (local_w + (0 if uniform else sw)) * sx + (sw if uniform else 0)
    dim_y = (local_h + (0 if uniform else sw)) * sy + (sw if uniform else 0)
    ox = _ORIGIN.get(str(obj.get("originX", "left")), -0.5)
    oy = _ORIGIN.get(str(obj.get("originY", "top")), -0.5)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    shift = rot @ np.array([-ox * dim_x, -oy * dim_y])
    centre = np.array([_num(obj, "left", 0.0), _num(obj, "top", 0.0)]) + shift
    out = (local * np.array([sx, sy])) @ rot.T + centre
    return ("point" if typ == "circle" else "shape"), out


def _path_offset(obj: dict, pts: np.ndarray) -> np.ndarray:
    po = obj.get("pathOffset")
    if isinstance(po, dict) and "x" in po and "y" in po:
        return np.array([float(po["x"]), float(po["y"])])
    if len(pts) == 0:
        return np.zeros(2)
    return (pts.min(axis=0) + pts.max(axis=0)) / 2


def _clean_ring(ring: np.ndarray) -> np.ndarray:
    """Drop consecutive duplicate vertices and a closing vertex equal to the first."""
    if len(ring) == 0:
        return ring
    keep = np.r_[True, np.any(np.diff(ring, axis=0) != 0, axis=1)]
    ring = ring[keep]
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    return ring


def canvas_objects_to_regions(
    objects: Iterable[dict],
    frame: CanvasFrame,
    mpp: float,
    kind: str,
    existing: Iterable[Region] = (),
) -> tuple[list[Region], list[str]]:
    """Turn shapes drawn on the canvas into regions in µm.

    Parameters
    ----------
    objects : iterable of dict
        fabric.js objects (``json_data["objects"]``); point-tool circles are skipped.
        A freehand stroke is closed by joining its end to its start.
    frame : CanvasFrame
        Canvas ↔ image pixels.
    mpp : float > 0
        Microns per pixel of the analysed image.
    kind : str
        One of :data:`core.spatial.regions.REGION_KINDS`, given to every new region.
    existing : iterable of Region
        Regions already there, so new names continue their numbering ("Tumour 3").

    Returns
    -------
    regions : list of Region
        Polygons (x, y) in µm of the analysed image.
    skipped : list of str
        Why an object was not made a region (too small, fewer than 3 vertices).

    Raises
    ------
    InputError
        If ``kind`` or ``mpp`` is invalid, or an object is malformed.

    Examples
    --------
    A 100 x 50 canvas-pixel rectangle on a canvas at half the image's size, mpp 0.5:
    200 x 100 image pixels, 100 x 50 µm, 5000 µm².

    >>> frame = CanvasFrame(1000, 800, 500, 400)
    >>> rect = {"type": "Rect", "left": 10, "top": 20, "width": 100, "height": 50, "strokeWidth": 0}
    >>> canvas_objects_to_regions([rect], frame, 0.5, "tumour")[0][0].area_um2
    5000.0
    """
    if kind not in REGION_KINDS:
        raise InputError(f"region kind {kind!r} is not allowed: choose one of {list(REGION_KINDS)}")
    if not (isinstance(mpp, (int, float, np.floating)) and math.isfinite(float(mpp)) and mpp > 0):
        raise InputError(f"regions need the image's microns per pixel: mpp must be a positive number, got {mpp!r}")
    n_kind = sum(1 for r in existing if r.kind == kind)
    label = KIND_LABELS[kind].split(" (")[0]
    regions: list[Region] = []
    skipped: list[str] = []
    for obj in objects:
        what, pts = canvas_object_points(obj)
        if what != "shape":
            continue
        ring = _clean_ring(pts)
        if len(ring) < 3 or len(np.unique(ring, axis=0)) < 3:
            skipped.append(f"a {obj.get('type')} with fewer than 3 distinct vertices")
            continue
        span = np.ptp(ring, axis=0)
        if span.min() < MIN_SHAPE_SIDE_PX:
            skipped.append(f"a {obj.get('type')} smaller than {MIN_SHAPE_SIDE_PX:g} screen pixels (a stray click?)")
            continue
        n_kind += 1
        ring_um = frame.to_image_px(ring) * float(mpp)
        regions.append(Region(name=f"{label} {n_kind}", kind=kind, polygon_um=ring_um))
    return regions, skipped


def canvas_click_points(objects: Iterable[dict], frame: CanvasFrame) -> np.ndarray:
    """Centres of point-tool clicks, in image pixels.

    Parameters
    ----------
    objects : iterable of dict
        fabric.js objects; only ``Circle`` objects (the point tool) are read.
    frame : CanvasFrame

    Returns
    -------
    (N, 2) float64 ndarray
        (x, y) in pixels of the analysed image, in click order.
    """
    pts = [canvas_object_points(o)[1][0] for o in objects if str(o.get("type", "")).lower() == "circle"]
    return frame.to_image_px(np.asarray(pts, dtype=np.float64).reshape(-1, 2))


# ----------------------------------------------------------------------------- display


def render_review_image(
    shown: np.ndarray,
    frame: CanvasFrame,
    cells: pd.DataFrame,
    class_colors: dict[str, str],
    regions: Iterable[Region] = (),
    mpp: float | None = None,
    deleted_xy_px: np.ndarray | None = None,
    marker_radius_px: int = 5,
) -> np.ndarray:
    """The downscaled image with regions and cell markers drawn on it (canvas background).

    Parameters
    ----------
    shown : (h, w, 3) uint8 RGB
        The image already downscaled to the canvas size (``frame.canvas_*``).
    frame : CanvasFrame
    cells : pandas.DataFrame
        Reviewed cells (``x_px``, ``y_px``, ``cell_class``, optional ``edited``).
    class_colors : dict
        ``cell_class`` → ``"#rrggbb"``; unknown classes are yellow.
    regions : iterable of Region
        Outlined in their kind's colour (needs ``mpp``).
    mpp : float, optional
    deleted_xy_px : (N, 2) float array, optional
        Deleted detections in image pixels, drawn as crosses.
    marker_radius_px : int
        Marker radius in canvas pixels.

    Returns
    -------
    (h, w, 3) uint8 RGB
        Detected cells: rings; cells added by hand: squares; relabelled cells: rings
        with a centre dot; deleted: white crosses edged in black.
    """
    from PIL import Image, ImageDraw

    from core.outputs.figures import hex_to_rgb

    img = Image.fromarray(np.ascontiguousarray(shown[..., :3], dtype=np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    if mpp:
        for reg in regions:
            col = KIND_COLORS[reg.kind]
            for k, ring in enumerate(reg.rings()):
                xy = frame.to_canvas_px(ring / mpp)
                pts = [tuple(p) for p in xy.tolist()]
                if k == 0:
                    draw.polygon(pts, fill=(*col, 40))
                draw.line(pts + [pts[0]], fill=(*col, 255), width=3)
            x0, y0 = frame.to_canvas_px(reg.polygon_um.min(axis=0) / mpp)[0]
            draw.text((x0 + 5, y0 + 4), reg.name, fill=(0, 0, 0, 255), stroke_width=2, stroke_fill=(255, 255, 255, 255),
                      font_size=13)
    r = marker_radius_px
    margin = (r + 2) * max(frame.scale_x, frame.scale_y)
    if deleted_xy_px is not None and len(deleted_xy_px):
        deleted_xy_px = np.asarray(deleted_xy_px, dtype=np.float64).reshape(-1, 2)
        deleted_xy_px = deleted_xy_px[frame.in_view(deleted_xy_px, margin)]
        for x, y in frame.to_canvas_px(deleted_xy_px).tolist():
            for col, wid in (((0, 0, 0, 255), 4), ((255, 255, 255, 255), 2)):  # visible on DAB and on glass
                draw.line([(x - r, y - r), (x + r, y + r)], fill=col, width=wid)
                draw.line([(x - r, y + r), (x + r, y - r)], fill=col, width=wid)
    if len(cells):
        xy_px = cells[["x_px", "y_px"]].to_numpy(dtype=np.float64)
        sel = frame.in_view(xy_px, margin)
        xy = frame.to_canvas_px(xy_px[sel])
        edited = cells["edited"].astype(str).to_numpy()[sel] if "edited" in cells.columns else np.full(len(xy), "")
        classes = cells["cell_class"].astype(str).to_numpy()[sel]
        rgb = {c: (*hex_to_rgb(class_colors.get(c, "#ffd700")), 255) for c in set(classes)}
        width = 2 if r >= 4 else 1
        for (x, y), cls, ed in zip(xy.tolist(), classes, edited):
            col = rgb[cls]
            if ed == "added":
                draw.rectangle([x - r, y - r, x + r, y + r], outline=col, width=width + 1)
            elif r <= 2:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=col)
            else:
                draw.ellipse([x - r, y - r, x + r, y + r], outline=col, width=width)
            if ed == "relabelled":
                draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=col)
    return np.asarray(img)


def downscale(pixels: np.ndarray, frame: CanvasFrame) -> np.ndarray:
    """The view of an (H, W, 3) uint8 image resized to the canvas, (h, w, 3) uint8.

    The view (``frame.x0_px`` ... ``view_height_px``) is cut out and resized: area
    averaging when shrinking, bilinear when enlarging.
    """
    from PIL import Image

    view = pixels[frame.y0_px: frame.y0_px + frame.view_h, frame.x0_px: frame.x0_px + frame.view_w, :3]
    img = Image.fromarray(np.ascontiguousarray(view, dtype=np.uint8))
    size = (frame.canvas_width_px, frame.canvas_height_px)
    if img.size != size:
        shrink = size[0] < img.size[0]
        img = img.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return np.asarray(img)


def render_view(
    rgb: np.ndarray,
    frame: CanvasFrame,
    cells: pd.DataFrame,
    class_colors: dict[str, str],
    regions: Iterable[Region] = (),
    mpp: float | None = None,
    deleted_xy_px: np.ndarray | None = None,
) -> np.ndarray:
    """The view of the image at its zoom with the regions and the markers of the cells in it.

    Parameters
    ----------
    rgb : (H, W, 3) uint8
        The analysed image's RGB.
    frame : CanvasFrame
        The view (:func:`view_frame`).
    cells, class_colors, regions, mpp, deleted_xy_px
        As for :func:`render_review_image`.

    Returns
    -------
    (h, w, 3) uint8 RGB
        h, w = ``frame.canvas_height_px``, ``frame.canvas_width_px``; markers sized to a
        nucleus at this zoom (:func:`marker_radius_px`).
    """
    return render_review_image(downscale(rgb, frame), frame, cells, class_colors, regions, mpp, deleted_xy_px,
                               marker_radius_px=marker_radius_px(mpp, frame.zoom))


def render_navigator(thumbnail: np.ndarray, image_shape: tuple[int, int], view: CanvasFrame,
                     regions: Iterable[Region] = (), mpp: float | None = None) -> np.ndarray:
    """The whole image, small, with the regions and the outline of the current view.

    Parameters
    ----------
    thumbnail : (h, w, 3) uint8
        The whole image downscaled (e.g. :func:`downscale` with :func:`display_frame`).
    image_shape : (H, W)
        The analysed image's size in pixels.
    view : CanvasFrame
        The view shown on the canvas.
    regions : iterable of Region
        Outlined thinly in their kind's colour (needs ``mpp``).
    mpp : float, optional

    Returns
    -------
    (h, w, 3) uint8 RGB
    """
    from PIL import Image, ImageDraw

    h, w = thumbnail.shape[:2]
    sx, sy = w / image_shape[1], h / image_shape[0]
    img = Image.fromarray(np.ascontiguousarray(thumbnail[..., :3], dtype=np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    if mpp:
        for reg in regions:
            pts = [(x / mpp * sx, y / mpp * sy) for x, y in np.asarray(reg.polygon_um).tolist()]
            draw.line(pts + [pts[0]], fill=(*KIND_COLORS[reg.kind], 255), width=1)
    if not view.is_whole_image:
        box = [view.x0_px * sx, view.y0_px * sy, (view.x0_px + view.view_w) * sx - 1, (view.y0_px + view.view_h) * sy - 1]
        draw.rectangle(box, fill=(0, 183, 255, 40), outline=(0, 0, 0, 255), width=3)
        draw.rectangle(box, outline=(0, 183, 255, 255), width=1)
    return np.asarray(img)
