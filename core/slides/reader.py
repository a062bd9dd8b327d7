"""Reading whole-slide images: pyramid levels, microns per pixel, regions at a requested mpp.

Two readers behind one :class:`Slide`:

- **OpenSlide** (``openslide-python`` with the ``openslide-bin`` library) for the vendor
  formats (:data:`VENDOR_SUFFIXES`: Aperio ``.svs``, Hamamatsu ``.ndpi``/``.vms``/``.vmu``,
  3DHISTECH ``.mrxs``, Leica ``.scn``, Ventana ``.bif``, Sakura ``.svslide``), and for TIFF
  files OpenSlide recognises as one of them (an Aperio or Philips file saved as ``.tif``);
- **tifffile** (+ imagecodecs) for pyramidal TIFF and OME-TIFF: the levels are the series'
  levels (OME SubIFDs, or reduced-resolution pages tifffile groups into a pyramid), each
  read tile by tile (``TiffPage.decode``), never whole.

Geometry
--------
Level 0 is the full-resolution image, (H0, W0) pixels of ``mpp`` µm. A read at a
requested mpp samples the **grid at that mpp**: grid pixel ``k`` (column) has its centre at
level-0 pixel ``(k + 0.5) * s - 0.5``, with ``s = mpp / mpp0`` level-0 pixels per grid
pixel (TILscope's one convention, :func:`core.scenarios.base.to_image_xy`). The grid has
``round(W0 / s)`` columns and ``round(H0 / s)`` rows. A read takes the **coarsest level
whose mpp is at most the requested one** (1 % tolerance for the inexact downsamples scanners
record), so a low-resolution view never decodes level 0 when the pyramid has a coarser
level; the rest of the way is resampled in float32 as scikit-image ``rescale(order=1,
anti_aliasing=True)`` does: a Gaussian of sigma ``(r - 1) / 2`` level pixels when reducing by
``r``, then linear interpolation at the grid's pixel centres (edge pixels repeated). Where
the level is more than twice as fine as the request (a slide without a coarse enough
level), it is first reduced by the whole factor ``k = floor(r)`` with a box mean, read in
chunks of at most :data:`READ_CHUNK_PX` a side.

Memory of one read
------------------
For a grid window of ``h x w`` pixels the reader holds the level window it needs, at
most ``(2 h + 2 p) x (2 w + 2 p)`` pixels once box-reduced (``p`` the Gaussian's support,
a few pixels), as float32 RGB with two temporaries of its size: about
``40 * (2 h + 2 p) * (2 w + 2 p)`` bytes, plus one decoded chunk of at most
:data:`READ_CHUNK_PX` ² RGBA pixels (16 MB). Reads of more than :data:`READ_BAND_PX` grid
pixels go in bands of rows, so one read's temporaries stay under about 350 MB whatever its
size (typically a third of that: the level read is usually at most 1.1 times finer than
the request once box-reduced), plus its uint8 result. A 1216 x 1216 px window (one he-til
tile with its context) takes 60-250 MB; the whole slide is never decoded. A read of more
than :data:`core.io.MAX_PIXELS` grid pixels is refused.

References
----------
Goode A. et al., "OpenSlide: A vendor-neutral software foundation for digital pathology",
J Pathol Inform 4:27 (2013). Goldberg I. et al., "The Open Microscopy Environment (OME)
Data Model and XML file", Genome Biol 6:R47 (2005) (OME-TIFF, ``PhysicalSizeX``).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import ImageReadError, InputError

__all__ = ["Slide", "Level", "open_slide", "is_slide", "VENDOR_SUFFIXES", "READ_CHUNK_PX", "LEVEL_MPP_TOLERANCE"]

#: File suffixes read with OpenSlide (vendor whole-slide formats).
VENDOR_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
#: OpenSlide vendors that are whole slides even when the file is called ``.tif``/``.tiff``.
_OPENSLIDE_TIFF_VENDORS = ("aperio", "hamamatsu", "leica", "philips", "ventana")
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8")
#: Largest side, in level pixels, of one decode when a level is box-reduced (bounds a read's memory).
READ_CHUNK_PX = 2048
#: Reads of more grid pixels than this are done in bands of rows (bounds a read's memory).
READ_BAND_PX = 2 << 20
#: Largest strip of an untiled TIFF level decoded at once, in bytes (a tiled TIFF decodes tiles).
MAX_STRIP_BYTES = 256 << 20
#: A level is used for a requested mpp when its mpp is at most ``(1 + tolerance)`` times it
#: (scanners record inexact downsamples, e.g. 2.0005).
LEVEL_MPP_TOLERANCE = 0.01
#: Background (glass) colour for pixels outside the scanned area.
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Level:
    """One pyramid level.

    Attributes
    ----------
    index : int, 0 = full resolution
    width_px, height_px : int, the level's size in its own pixels
    downsample : float, level-0 pixels per level pixel (mean of x and y)
    mpp : float or None, µm per level pixel (``downsample * mpp0``)
    """

    index: int
    width_px: int
    height_px: int
    downsample: float
    mpp: float | None


@dataclass
class Slide:
    """An open whole-slide image (use :func:`open_slide`; close it, or use it as a context manager).

    Attributes
    ----------
    path : Path
    name : str, the file name
    reader : {"openslide", "tifffile"}
    vendor : str, OpenSlide's vendor name or ``"ome-tiff"`` / ``"tiff"``
    levels : tuple of Level, finest first
    mpp : float or None
        µm per level-0 pixel (None only when opened with ``require_mpp=False``).
    mpp_source : str, ``"openslide"`` (``openslide.mpp-x``), ``"ome"``, ``"tiff-resolution"``,
        ``"tiff-description"``, ``"user"`` or ``"none"``
    objective_power : float or None, the scanner's objective magnification (e.g. 20)
    notes : list of str, what the user should know about the reading
    """

    path: Path
    name: str
    reader: str
    vendor: str
    levels: tuple[Level, ...]
    mpp: float | None
    mpp_source: str
    objective_power: float | None
    notes: list[str] = field(default_factory=list)
    _backend: object = field(default=None, repr=False)

    # ------------------------------------------------------------------ geometry

    @property
    def width_px(self) -> int:
        """Level-0 width in pixels."""
        return self.levels[0].width_px

    @property
    def height_px(self) -> int:
        """Level-0 height in pixels."""
        return self.levels[0].height_px

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels (OpenSlide's order)."""
        return self.width_px, self.height_px

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level."""
        return tuple((lv.width_px, lv.height_px) for lv in self.levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(lv.downsample for lv in self.levels)

    @property
    def size_um(self) -> tuple[float, float]:
        """(width, height) of the slide in µm.

        Raises
        ------
        InputError
            Without an mpp.
        """
        mpp = self.require_mpp()
        return self.width_px * mpp, self.height_px * mpp

    def require_mpp(self) -> float:
        """The level-0 mpp.

        Raises
        ------
        InputError
            The slide records none and none was given (:func:`missing_mpp_message`).
        """
        if self.mpp is None:
            raise InputError(missing_mpp_message(self.name, self.objective_power))
        return self.mpp

    def with_mpp(self, mpp: float) -> "Slide":
        """Set the level-0 mpp given by the user (checked as :func:`core.io.check_mpp`); returns ``self``."""
        from core.io import check_mpp

        self.mpp = check_mpp(mpp)
        self.mpp_source = "user"
        self.levels = tuple(Level(lv.index, lv.width_px, lv.height_px, lv.downsample, lv.downsample * self.mpp)
                            for lv in self.levels)
        return self

    def level_for_downsample(self, scale: float) -> int:
        """Index of the coarsest level with at most ``scale * (1 + LEVEL_MPP_TOLERANCE)`` level-0 px per pixel."""
        best = 0
        for lv in self.levels:
            if lv.downsample <= scale * (1.0 + LEVEL_MPP_TOLERANCE) and lv.downsample >= self.levels[best].downsample:
                best = lv.index
        return best

    def level_for_mpp(self, mpp: float) -> int:
        """Index of the coarsest level whose mpp is at most ``mpp`` (1 % tolerance); 0 when none is.

        Raises
        ------
        InputError
            Without an mpp.
        """
        return self.level_for_downsample(float(mpp) / self.require_mpp())

    def grid_shape(self, scale: float) -> tuple[int, int]:
        """(rows, columns) of the grid of ``scale`` level-0 px per pixel: ``round(H0 / scale)``, ``round(W0 / scale)``, at least 1."""
        return max(1, int(round(self.height_px / scale))), max(1, int(round(self.width_px / scale)))

    # ------------------------------------------------------------------ reading

    def read_grid(self, col: int, row: int, width: int, height: int, scale: float) -> np.ndarray:
        """Pixels of the grid of ``scale`` level-0 px per pixel (the slide resampled; module docstring).

        Parameters
        ----------
        col, row : int, top-left grid pixel (may lie outside the slide: background there)
        width, height : int >= 1, grid pixels
        scale : float > 0, level-0 pixels per grid pixel (``mpp / mpp0``)

        Returns
        -------
        (height, width, 3) uint8 RGB. Where the scanner recorded nothing, the slide's
        background colour (white); grid pixels beyond the slide's edge repeat the edge (as
        resampling does), and a region entirely outside the slide is white.

        Raises
        ------
        InputError
            If ``width * height`` exceeds :data:`core.io.MAX_PIXELS` or a size is not positive.
        ImageReadError
            If the slide's data cannot be decoded (damaged file).
        """
        from core import io as _io

        width, height, col, row = int(width), int(height), int(col), int(row)
        if width < 1 or height < 1 or not (scale > 0 and math.isfinite(scale)):
            raise InputError(f"a slide region needs a positive size and scale, got {width} x {height} px at {scale}")
        if width * height > _io.MAX_PIXELS:
            raise InputError(f"{self.name}: a region of {width} x {height} px is more than the "
                             f"{_io.MAX_PIXELS / 1e6:.0f} megapixels read at once; read it in tiles")
        if width * height > READ_BAND_PX and height > 1:
            # bands of rows, each from its own level window: the same pixels, bounded temporaries
            out = np.empty((height, width, 3), np.uint8)
            rows = max(1, READ_BAND_PX // width)
            for r0 in range(0, height, rows):
                n = min(rows, height - r0)
                out[r0 : r0 + n] = self.read_grid(col, row + r0, width, n, scale)
            return out
        level = self.levels[self.level_for_downsample(scale)]
        dx = self.width_px / level.width_px
        dy = self.height_px / level.height_px
        rx, ry = scale / dx, scale / dy  # level pixels per grid pixel
        # Grid pixel k sits at level pixel (k + 0.5) * r - 0.5.
        cx = (np.arange(col, col + width, dtype=np.float64) + 0.5) * rx - 0.5
        cy = (np.arange(row, row + height, dtype=np.float64) + 0.5) * ry - 0.5
        if abs(rx - 1.0) < 1e-3 and abs(ry - 1.0) < 1e-3:  # the level's own pixels: no resampling
            return self._read_level(level.index, col, row, width, height)
        k = max(1, int(math.floor(min(rx, ry))))  # whole factor reduced by a box mean first
        sigma = (max(0.0, (rx / k - 1.0) / 2.0), max(0.0, (ry / k - 1.0) / 2.0))
        pad = k * (int(math.ceil(4.0 * max(sigma))) + 2)
        x0 = int(math.floor(cx[0])) - pad
        y0 = int(math.floor(cy[0])) - pad
        nx = -(-(int(math.ceil(cx[-1])) + pad + 1 - x0) // k) * k
        ny = -(-(int(math.ceil(cy[-1])) + pad + 1 - y0) // k) * k
        # Clip the window to the level; its size stays a multiple of k (rows and columns beyond
        # the level's edge repeat the edge, see _read_reduced).
        lx0, ly0 = max(x0, 0), max(y0, 0)
        lx1, ly1 = min(x0 + nx, level.width_px), min(y0 + ny, level.height_px)
        if lx1 <= lx0 or ly1 <= ly0:  # entirely outside the slide
            return np.full((height, width, 3), 255, np.uint8)
        lx1 = lx0 + -(-(lx1 - lx0) // k) * k
        ly1 = ly0 + -(-(ly1 - ly0) // k) * k
        window = self._read_reduced(level.index, lx0, ly0, lx1 - lx0, ly1 - ly0, k)
        # Level coordinate c → reduced coordinate (c - origin - (k - 1) / 2) / k.
        ux = (cx - lx0 - (k - 1) / 2.0) / k
        uy = (cy - ly0 - (k - 1) / 2.0) / k
        if sigma[0] > 0 or sigma[1] > 0:
            from scipy import ndimage

            window = ndimage.gaussian_filter(window, (sigma[1], sigma[0], 0.0), mode="nearest", output=np.float32)
        rows = _interp_axis(window, uy, axis=0)
        del window
        out = _interp_axis(rows, ux, axis=1)
        out += 0.5
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)

    def read_region(self, x_px: float, y_px: float, w_px: float, h_px: float, mpp: float) -> np.ndarray:
        """A level-0 box read at ``mpp`` µm/px.

        Parameters
        ----------
        x_px, y_px : float, top-left corner of the box in level-0 pixels
        w_px, h_px : float > 0, its size in level-0 pixels
        mpp : float, µm per pixel of the result (>= the slide's for a reduced view; smaller
            values up-sample level 0)

        Returns
        -------
        (round(h_px / s), round(w_px / s), 3) uint8 RGB, s = mpp / mpp0: the grid pixels of
        the grid at ``mpp`` (module docstring) from ``round(x_px / s)``, ``round(y_px / s)``

        Raises
        ------
        InputError
            Without an mpp (give ``--mpp``), an implausible ``mpp``, a box of no size or of
            more than :data:`core.io.MAX_PIXELS` result pixels.
        ImageReadError
            Damaged slide data.
        """
        from core.io import check_mpp

        mpp = check_mpp(mpp)
        s = mpp / self.require_mpp()
        return self.read_grid(int(round(x_px / s)), int(round(y_px / s)), max(1, int(round(w_px / s))),
                              max(1, int(round(h_px / s))), s)

    def thumbnail(self, max_side_px: int = 1024) -> tuple[np.ndarray, float]:
        """The whole slide at most ``max_side_px`` pixels on its longer side, from the smallest level that is large enough.

        Never larger than level 0 (no up-sampling); works without an mpp.

        Returns
        -------
        rgb : (h, w, 3) uint8
        scale : float, level-0 pixels per thumbnail pixel (thumbnail mpp = ``scale * mpp``)
        """
        side = max(self.width_px, self.height_px)
        scale = max(1.0, side / max(1, int(max_side_px)))
        h, w = self.grid_shape(scale)
        return self.read_grid(0, 0, w, h, scale), scale

    # ------------------------------------------------------------------ backend helpers

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 of level pixels [x, x + w) x [y, y + h); white outside the level."""
        lv = self.levels[level]
        out = np.full((h, w, 3), 255, np.uint8)
        ix0, iy0 = max(0, x), max(0, y)
        ix1, iy1 = min(lv.width_px, x + w), min(lv.height_px, y + h)
        if ix1 <= ix0 or iy1 <= iy0:
            return out
        try:
            part = self._backend.read_level(level, ix0, iy0, ix1 - ix0, iy1 - iy0)
        except (InputError, ImageReadError):
            raise
        except MemoryError as err:
            raise ImageReadError(f"{self.name}: not enough memory to read a region of level {level}") from err
        except Exception as err:  # decoders raise many types for damaged data
            raise ImageReadError(f"{self.name}: the slide's image data at level {level}, pixels {ix0}, {iy0} "
                                 f"({ix1 - ix0} x {iy1 - iy0}), cannot be decoded ({err}); the file may be damaged "
                                 "or incompletely copied") from err
        out[iy0 - y : iy1 - y, ix0 - x : ix1 - x] = part
        return out

    def _read_reduced(self, level: int, x: int, y: int, w: int, h: int, k: int) -> np.ndarray:
        """Level window [x, x + w) x [y, y + h) (multiples of k) box-reduced by k: (h / k, w / k, 3) float32.

        Read in chunks of at most :data:`READ_CHUNK_PX` (a multiple of k) a side when k > 1.
        """
        if k == 1:
            return self._read_level(level, x, y, w, h).astype(np.float32)
        out = np.empty((h // k, w // k, 3), np.float32)
        step = max(k, (READ_CHUNK_PX // k) * k)
        for cy in range(0, h, step):
            ch = min(step, h - cy)
            for cx in range(0, w, step):
                cw = min(step, w - cx)
                a = self._read_level(level, x + cx, y + cy, cw, ch)
                lv = self.levels[level]
                # pixels beyond the level's edge repeat the last row / column (not white)
                vx, vy = min(cw, lv.width_px - (x + cx)), min(ch, lv.height_px - (y + cy))
                if 0 < vx < cw:
                    a[:, vx:] = a[:, vx - 1 : vx]
                if 0 < vy < ch:
                    a[vy:] = a[vy - 1 : vy]
                out[cy // k : (cy + ch) // k, cx // k : (cx + cw) // k] = (
                    a.reshape(ch // k, k, cw // k, k, 3).mean(axis=(1, 3), dtype=np.float32))
        return out

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _interp_axis(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` (float32) along ``axis`` at ``coords`` (edge values beyond the ends)."""
    n = a.shape[axis]
    c = np.clip(coords, 0.0, n - 1.0)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (c - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = len(c)
    lo = np.take(a, i0, axis=axis)
    lo *= (1.0 - f).reshape(shape)
    hi = np.take(a, i1, axis=axis)
    hi *= f.reshape(shape)
    lo += hi
    return lo


def missing_mpp_message(name: str, objective_power: float | None,
                        fix: str = "give them with --mpp (about 0.25 at 40x, 0.5 at 20x), or enter them in the app") -> str:
    """The message for a slide whose file records no microns per pixel.

    Parameters
    ----------
    name : str, the slide's file name
    objective_power : float or None, the objective the file records (gives a hint of the mpp)
    fix : str, how to give the mpp where the message is shown (the command line's option by default)
    """
    hint = ""
    if objective_power:
        guess = 10.0 / float(objective_power)
        hint = f" (the file records a {objective_power:g}x objective: often about {guess:.2g} µm/px, but check the scanner)"
    return f"{name}: the slide's microns per pixel are not recorded in the file{hint}; {fix}"


# ---------------------------------------------------------------------------------- backends


class _OpenSlideBackend:
    """OpenSlide: regions of a level as RGBA, composited on the slide's background colour."""

    def __init__(self, path: Path):
        import openslide

        self.slide = openslide.OpenSlide(str(path))
        bg = self.slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR)
        try:
            self.background = tuple(int(bg[i : i + 2], 16) for i in (0, 2, 4)) if bg else _WHITE
        except ValueError:
            self.background = _WHITE

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.slide.level_downsamples[level]
        im = self.slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h))
        rgba = np.asarray(im)
        rgb = rgba[..., :3]
        alpha = rgba[..., 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        # OpenSlide returns un-premultiplied RGBA; alpha 0 where nothing was scanned.
        a = alpha.astype(np.uint16)
        bg = np.asarray(self.background, np.uint16)
        return ((rgb.astype(np.uint16) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)

    def close(self) -> None:
        self.slide.close()


class _TiffBackend:
    """tifffile: levels of the first series, decoded tile by tile (or strip by strip)."""

    def __init__(self, path: Path, tif, pages: list):
        self.path = path
        self.tif = tif
        self.pages = pages
        self.lock = threading.Lock()

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        page = self.pages[level]
        out = np.full((h, w, 3), 255, np.uint8)
        width, length = int(page.imagewidth), int(page.imagelength)
        if page.is_tiled:
            th, tw = int(page.tilelength), int(page.tilewidth)
        else:
            th, tw = int(page.rowsperstrip or length), width
            th = min(th, length)
        across = -(-width // tw)
        jpegtables = getattr(page, "jpegtables", None)
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                index = ty * across + tx
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                seg_y, seg_x = ty * th, tx * tw
                if not count:
                    continue  # an empty tile: background
                with self.lock:
                    fh = self.tif.filehandle
                    fh.seek(offset)
                    data = fh.read(count)
                segment, _, _ = page.decode(data, index, jpegtables=jpegtables)
                if segment is None:
                    continue
                seg = np.asarray(segment).reshape(segment.shape[-3:])  # (rows, cols, samples)
                seg = _to_rgb8(seg)
                sy0, sx0 = max(y, seg_y), max(x, seg_x)
                sy1 = min(y + h, seg_y + seg.shape[0], length)
                sx1 = min(x + w, seg_x + seg.shape[1], width)
                if sy1 > sy0 and sx1 > sx0:
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = seg[sy0 - seg_y : sy1 - seg_y, sx0 - seg_x : sx1 - seg_x]
        return out

    def close(self) -> None:
        self.tif.close()


def _to_rgb8(seg: np.ndarray) -> np.ndarray:
    """A decoded TIFF segment (rows, cols, samples) → uint8 RGB (alpha dropped, grey repeated)."""
    if seg.dtype != np.uint8:
        raise ImageReadError(f"slide tiles are {seg.dtype}; whole slides are read as 8-bit RGB (brightfield) only")
    if seg.shape[-1] == 1:
        return np.repeat(seg, 3, axis=-1)
    return seg[..., :3]


# ---------------------------------------------------------------------------------- opening


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _openslide_vendor(path: Path) -> str | None:
    """OpenSlide's format name for ``path`` (``"aperio"``, ``"generic-tiff"``...) or None."""
    try:
        import openslide

        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # the library or the file: not an OpenSlide file
        return None


def is_slide(path: str | Path) -> bool:
    """Whether ``path`` is a whole-slide image (read by :func:`open_slide`) rather than a field (:func:`core.io.load_image`).

    A slide is a file with a vendor suffix (:data:`VENDOR_SUFFIXES`); a TIFF that OpenSlide
    recognises as a vendor format; a tiled RGB (or grey) TIFF with more than one resolution
    level, or whose level 0 has more pixels than :data:`core.io.MAX_PIXELS` (too large for a
    field). A multi-channel pyramid of field size stays a field (its base level is read), and
    an untiled TIFF is a field whatever its size (the field reader's pixel limit refuses it).
    Never raises: an unreadable file is "not a slide" and the field reader reports it.
    """
    from core import io as _io

    p = Path(path)
    try:
        if not p.is_file():
            return False
        if _suffix(p) in VENDOR_SUFFIXES:
            return True
        with open(p, "rb") as fh:
            head = fh.read(4)
        if head not in _io._TIFF_MAGIC:
            return False
        if _openslide_vendor(p) in _OPENSLIDE_TIFF_VENDORS:
            return True
        import tifffile

        with tifffile.TiffFile(p, _multifile=False) as tif:
            if not tif.series:
                return False
            series = tif.series[0]
            page = series.keyframe
            h, w = int(page.imagelength), int(page.imagewidth)
            levels = len(getattr(series, "levels", None) or [series])
            kept = "".join(series.axes[i] for i, n in enumerate(series.shape) if n > 1 or series.axes[i] in "YX")
            # a multi-channel (fluorescence) pyramid of field size is read as a field, by its base level
            # an untiled (stripped) TIFF is a field, however large: the field reader's pixel limit answers it
            return bool(page.is_tiled and kept in ("YX", "YXS") and (levels > 1 or h * w > _io.MAX_PIXELS))
    except Exception:  # is_slide decides a route; reading errors are reported by the reader that runs
        return False


def open_slide(path: str | Path, mpp: float | None = None, *, require_mpp: bool = True) -> Slide:
    """Open a whole-slide image.

    Parameters
    ----------
    path : path of the slide (for ``.mrxs`` and ``.vms``, the index file beside its data folder)
    mpp : float, optional
        µm per level-0 pixel given by the user; wins over the file's (checked as
        :func:`core.io.check_mpp`).
    require_mpp : bool
        Refuse a slide whose mpp is neither recorded nor given (default). False opens it
        anyway (thumbnails work; :meth:`Slide.read_region` and the analysis do not).

    Returns
    -------
    Slide
        mpp from ``mpp``, else OpenSlide's ``openslide.mpp-x`` (vendor formats), the OME
        ``PhysicalSizeX``, the TIFF ``XResolution``/``ResolutionUnit`` tags or an Aperio
        ``MPP =`` description; values outside :data:`core.io.PLAUSIBLE_MPP_RANGE` are taken
        as absent (with a note). Objective power from ``openslide.objective-power`` or OME
        ``NominalMagnification``.

    Raises
    ------
    ImageReadError
        Missing file, a folder, not a slide OpenSlide or tifffile can read, a layout that
        is not 8-bit RGB (or grey).
    InputError
        ``mpp`` implausible; the slide has no mpp and ``require_mpp`` (the message says
        to give ``--mpp``).
    """
    from core.io import check_mpp

    p = Path(path)
    if mpp is not None:
        mpp = check_mpp(mpp)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a folder, not a slide file; give the slide file itself (for MIRAX, the .mrxs "
                             "file beside its folder)")
    use_openslide = _suffix(p) in VENDOR_SUFFIXES or _openslide_vendor(p) in _OPENSLIDE_TIFF_VENDORS
    slide = _open_openslide(p) if use_openslide else _open_tiff(p)
    if mpp is not None:
        slide.with_mpp(mpp)
    elif require_mpp:
        slide.require_mpp()
    return slide


def _plausible_mpp(value, what: str, notes: list[str]) -> float | None:
    from core.io import PLAUSIBLE_MPP_RANGE

    try:
        v = float(value)
    except (TypeError, ValueError):
        notes.append(f"the file's {what} = {str(value)[:40]!r} is not a number: ignored")
        return None
    lo, hi = PLAUSIBLE_MPP_RANGE
    if not (math.isfinite(v) and lo <= v <= hi):
        notes.append(f"the file's {what} = {v:g} µm/px is outside {lo}-{hi}: ignored")
        return None
    return v


def _open_openslide(p: Path) -> Slide:
    try:
        import openslide
    except ImportError as err:  # pragma: no cover - an install without the pinned requirements
        raise ImageReadError("reading whole-slide files needs openslide-python and openslide-bin "
                             "(pip install -r requirements.txt)") from err
    try:
        backend = _OpenSlideBackend(p)
    except openslide.OpenSlideUnsupportedFormatError as err:
        raise ImageReadError(f"{p.name}: not a whole-slide format OpenSlide reads ({err}); check the file, or "
                             "export the slide as a pyramidal OME-TIFF") from err
    except openslide.OpenSlideError as err:
        raise ImageReadError(f"{p.name}: the slide cannot be opened ({err}); the file may be damaged or "
                             "incompletely copied (MIRAX and VMS slides also need their data folder)") from err
    s = backend.slide
    props = s.properties
    notes: list[str] = []
    mpp_x = _plausible_mpp(props[openslide.PROPERTY_NAME_MPP_X], "openslide.mpp-x", notes) \
        if openslide.PROPERTY_NAME_MPP_X in props else None
    mpp_y = _plausible_mpp(props[openslide.PROPERTY_NAME_MPP_Y], "openslide.mpp-y", notes) \
        if openslide.PROPERTY_NAME_MPP_Y in props else None
    if mpp_x and mpp_y and abs(mpp_x / mpp_y - 1) > 0.02:
        notes.append(f"the pixels are not square ({mpp_x:g} x {mpp_y:g} µm): x's size is used")
    objective = None
    if openslide.PROPERTY_NAME_OBJECTIVE_POWER in props:
        try:
            objective = float(props[openslide.PROPERTY_NAME_OBJECTIVE_POWER])
        except ValueError:
            objective = None
    levels = tuple(Level(i, int(w), int(h), float(d), None if mpp_x is None else float(d) * mpp_x)
                   for i, ((w, h), d) in enumerate(zip(s.level_dimensions, s.level_downsamples)))
    vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "openslide")
    return Slide(p, p.name, "openslide", vendor, levels, mpp_x, "openslide" if mpp_x else "none", objective, notes,
                 backend)


def _open_tiff(p: Path) -> Slide:
    import tifffile

    from core.io import _TIFF_MAGIC, _tiff_mpp_safe

    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise ImageReadError(f"{p}: cannot be read ({err.strerror or err})") from err
    if head not in _TIFF_MAGIC:
        raise ImageReadError(f"{p.name}: not a whole-slide file TILscope reads: give a vendor slide "
                             f"({', '.join(VENDOR_SUFFIXES)}) or a pyramidal TIFF / OME-TIFF")
    try:
        tif = tifffile.TiffFile(p, _multifile=False)
    except Exception as err:  # tifffile raises many types for damaged files
        raise ImageReadError(f"{p.name}: the TIFF cannot be opened ({err}); the file may be damaged") from err
    try:
        if not tif.series:
            raise ImageReadError(f"{p.name}: the TIFF holds no image")
        series = tif.series[0]
        levels_series = list(getattr(series, "levels", None) or [series])
        pages = [lv.keyframe for lv in levels_series]
        base = pages[0]
        kept = "".join(series.axes[i] for i, n in enumerate(series.shape) if n > 1 or series.axes[i] in "YX")
        if kept not in ("YX", "YXS"):
            raise ImageReadError(
                f"{p.name}: the TIFF holds {dict(zip(series.axes, series.shape))} (axes {series.axes}), not one RGB "
                "image; whole slides are read as RGB brightfield pyramids (for a fluorescence or multi-plane image, "
                "export a field and analyse it as an image)")
        if base.planarconfig == 2 and base.samplesperpixel > 1:
            raise ImageReadError(f"{p.name}: the slide stores its colours as separate planes; export it with "
                                 "interleaved RGB (e.g. bfconvert or QuPath's OME-TIFF writer)")
        for page in pages:
            if page.dtype != np.uint8 or page.samplesperpixel not in (1, 3, 4) or page.imagedepth != 1:
                raise ImageReadError(
                    f"{p.name}: a level of {page.imagewidth} x {page.imagelength} px holds {page.samplesperpixel} "
                    f"samples of {page.dtype}; whole slides are read as 8-bit RGB brightfield images (for "
                    "fluorescence stacks, export a field as OME-TIFF and analyse it as an image)")
        for page in pages:
            if not page.is_tiled:
                rows = int(page.rowsperstrip or page.imagelength)
                strip_bytes = min(rows, int(page.imagelength)) * int(page.imagewidth) * int(page.samplesperpixel)
                if strip_bytes > MAX_STRIP_BYTES:
                    raise ImageReadError(
                        f"{p.name}: a level of {page.imagewidth} x {page.imagelength} px is stored in strips of "
                        f"{strip_bytes / 1e6:.0f} MB, more than the {MAX_STRIP_BYTES / 1e6:.0f} MB decoded at once; "
                        "convert it to a tiled, pyramidal TIFF (e.g. vips tiffsave --tile --pyramid, or QuPath's "
                        "OME-TIFF export)")
        notes: list[str] = []
        mpp, source = _tiff_mpp_safe(tif, base, notes)
        w0, h0 = int(base.imagewidth), int(base.imagelength)
        levels = []
        for i, page in enumerate(pages):
            w, h = int(page.imagewidth), int(page.imagelength)
            d = 0.5 * (w0 / w + h0 / h)
            levels.append(Level(i, w, h, d, None if mpp is None else d * mpp))
        objective = None
        if tif.is_ome and tif.ome_metadata:
            m = re.search(r'NominalMagnification="([^"]+)"', tif.ome_metadata)
            if m:
                try:
                    objective = float(m.group(1))
                except ValueError:
                    objective = None
        if objective is None:
            m = re.search(r"AppMag\s*=\s*([0-9.]+)", base.description or "")
            objective = float(m.group(1)) if m else None
        if not base.is_tiled and len(levels) == 1:
            notes.append("the TIFF is stored in strips without a pyramid: reduced views decode the whole strips they "
                         "cover (slower); a tiled, pyramidal OME-TIFF reads faster")
        backend = _TiffBackend(p, tif, pages)
        vendor = "ome-tiff" if tif.is_ome else "tiff"
        return Slide(p, p.name, "tifffile", vendor, tuple(levels), mpp, source if mpp else "none", objective, notes,
                     backend)
    except BaseException:
        tif.close()
        raise
