"""Read microscope images and their pixel size (microns per pixel, mpp).

The boundary where every layout is normalised once: after :func:`load_image` an
image is (H, W, C) in the file's own dtype (uint8, uint16 or float32) with a name per
channel and its significant bits (:class:`ImageData`), whatever the file held (grey, RGB,
RGBA, palette, a multiplex fluorescence stack; PNG, JPEG, TIFF, OME-TIFF, ImageJ
hyperstacks). 8-bit RGB is made from it only for display and for the scenarios that
declare RGB input (:attr:`ImageData.rgb`).

Limits
------
What a file may ask of memory is bounded by design, with the limits stated here and
nowhere else (README, "Limits"):

- :data:`MAX_FILE_BYTES`: a file is measured (``os.stat``) before it is opened; larger
  files are refused without reading them.
- :data:`MAX_PIXELS`: H x W of the image read, and of that image resampled to a
  scenario's mpp (:func:`core.scenarios.base.resample_to_mpp`).
- :data:`MAX_DECODED_BYTES_PER_PIXEL`: everything one decode produces (every plane of
  the page read, at the decoder's dtype) is at most this many bytes per accepted pixel.

Each is checked from the file's header (TIFF tags, PNG/JPEG header) before any pixel is
decoded; a multi-page file has only the page asked for decoded.

The output folders of the command line are written whole or not at all
(:func:`write_output_folder`): into a temporary folder beside the target, moved into
place when complete, after :func:`check_output_folder` has refused, before any work, a
target that cannot receive the files.
"""

from __future__ import annotations

import hashlib
import os
import io as _io
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageReadError, InputError, TILscopeError

#: Largest image accepted, in pixels (H x W; about a 10 000 x 10 000 field), also after
#: resampling to a scenario's mpp. Whole slides need a tiled reader, not this function.
MAX_PIXELS = int(os.environ.get("TILSCOPE_MAX_PIXELS", 100_000_000))
#: Bytes one decode may produce per accepted pixel: 12 is an RGB image of float32 (or a
#: 6-plane 16-bit stack) at :data:`MAX_PIXELS`; a 16-channel 16-bit panel may have up to
#: ``12 / 32`` of :data:`MAX_PIXELS`. The peak memory of a read is about twice this
#: (the decoder's buffer and the array made from it).
MAX_DECODED_BYTES_PER_PIXEL = 12
#: Largest file opened, in bytes (2 GiB); measured before it is read.
MAX_FILE_BYTES = int(os.environ.get("TILSCOPE_MAX_FILE_BYTES", 2 * 1024**3))
#: mpp values outside this range are treated as absent (e.g. a 72 dpi default tag
#: reads as 352.8 µm/px, which no microscope produces).
PLAUSIBLE_MPP_RANGE = (0.05, 20.0)

_TIFF_SUFFIXES = {".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UNIT_TO_UM = {"m": 1e6, "mm": 1e3, "cm": 1e4, "µm": 1.0, "um": 1.0, "μm": 1.0, "nm": 1e-3}
#: The formats read through PIL (TIFF goes through tifffile); any other format is refused
#: from its first bytes.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "PPM")


#: Channel names of a colour (brightfield or composite) image.
RGB_CHANNELS = ("red", "green", "blue")
#: Most channels accepted in one image (a multiplex panel; more is a hyperstack of another kind).
MAX_CHANNELS = 16
#: Display colours of fluorescence channels, in order; a nuclear stain (Hoechst/DAPI) is blue.
_CHANNEL_COLORS = ((0, 255, 0), (255, 0, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0),
                   (128, 128, 255), (255, 255, 255))
_NUCLEAR_WORDS = ("hoechst", "h3342", "dapi", "nuclei", "nuclear")


def max_decoded_bytes(max_pixels: int | None = None) -> int:
    """Bytes one decode may produce: :data:`MAX_DECODED_BYTES_PER_PIXEL` x ``max_pixels`` (default :data:`MAX_PIXELS`)."""
    return MAX_DECODED_BYTES_PER_PIXEL * int(MAX_PIXELS if max_pixels is None else max_pixels)


#: Where a pixel size (``mpp_source`` of an image or a slide) came from, in words for the pages and reports.
MPP_SOURCE_WORDS = {
    "openslide": "from the scanner's metadata", "ome": "from the OME-TIFF metadata",
    "tiff-resolution": "from the TIFF resolution tags", "imagej-resolution": "from the ImageJ calibration",
    "tiff-description": "from the scanner's description", "user": "entered by you", "sample": "given with the sample",
    "none": "not recorded in the file",
}


@dataclass
class ImageData:
    """An image ready for analysis, with its channels intact.

    Attributes
    ----------
    data : (H, W, C) ndarray of uint8, uint16 or float32
        The pixel values as stored in the file (a 2-D array is given a channel axis).
        Brightfield and colour composites have C = 3 (:data:`RGB_CHANNELS`); a grey image
        C = 1; fluorescence C >= 1, one plane per marker. float32 data are in [0, 1].
    mpp : float or None
        Microns per pixel (assumed square pixels); ``None`` when unknown.
    name : str
        Source file name, used in reports.
    sha256 : str
        SHA-256 of the source file's bytes (hex), to tie results to the file.
    mpp_source : str
        Where ``mpp`` came from: ``"ome"``, ``"tiff-resolution"``, ``"user"`` or ``"none"``.
    notes : list of str
        Conversions applied on reading (e.g. "alpha channel dropped"), for the user.
    channel_names : tuple of str, optional
        One name per channel; default :data:`RGB_CHANNELS` for 3 channels, ``("grey",)``
        for one, ``"channel 1"``... otherwise.
    significant_bits : int, optional
        For integer data, the bits that carry signal (12 for a 12-bit camera's values
        stored in uint16); default the dtype's width. Display scaling divides by
        ``2**significant_bits - 1``, so 12-bit data are not crushed into the bottom 1/16.
    transparent : (H, W) bool ndarray, optional
        True where the file's pixel was fully transparent (alpha 0): no image there. The
        tissue mask counts these pixels as not tissue (:func:`core.fitness.tissue_mask`);
        None when the file had no transparency.
    n_pages : int
        Images (pages or frames) in the file; one of them is ``data`` (``load_image(page=...)``).

    Raises
    ------
    ImageReadError
        If the array is not 2-D or 3-D, is empty, has an unsupported dtype, more than
        :data:`MAX_CHANNELS` channels, a channel-name count that differs from C, or a
        ``transparent`` mask of another shape than (H, W).
    """

    data: np.ndarray
    mpp: float | None
    name: str
    sha256: str
    mpp_source: str = "none"
    notes: list[str] = field(default_factory=list)
    channel_names: tuple[str, ...] | None = None
    significant_bits: int | None = None
    transparent: np.ndarray | None = None
    n_pages: int = 1

    def __post_init__(self):
        a = np.asarray(self.data)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
            raise ImageReadError(f"{self.name}: expected a 2-D image, got an array of shape {np.shape(self.data)}")
        if a.dtype not in (np.uint8, np.uint16, np.float32):
            raise ImageReadError(f"{self.name}: pixel type {a.dtype} is not uint8, uint16 or float32")
        if a.shape[2] > MAX_CHANNELS:
            raise ImageReadError(
                f"{self.name}: {a.shape[2]} channels, more than the {MAX_CHANNELS} accepted; export the channels "
                "of one marker panel"
            )
        self.data = a
        if self.channel_names is None:
            c = a.shape[2]
            self.channel_names = RGB_CHANNELS if c == 3 else ("grey",) if c == 1 else tuple(f"channel {i + 1}" for i in range(c))
        self.channel_names = tuple(str(n) for n in self.channel_names)
        if len(self.channel_names) != a.shape[2]:
            raise ImageReadError(f"{self.name}: {len(self.channel_names)} channel names for {a.shape[2]} channels")
        if self.significant_bits is None and a.dtype != np.float32:
            self.significant_bits = 8 * a.dtype.itemsize
        if self.transparent is not None:
            t = np.asarray(self.transparent, dtype=bool)
            if t.shape != a.shape[:2]:
                raise ImageReadError(f"{self.name}: transparency mask of shape {t.shape} for an image of {a.shape[:2]}")
            self.transparent = t if t.any() else None
        self._rgb = None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return self.data.shape[0], self.data.shape[1]

    @property
    def n_channels(self) -> int:
        return self.data.shape[2]

    @property
    def is_rgb(self) -> bool:
        """True for a colour image (brightfield or a colour composite): channels red, green, blue."""
        return self.channel_names == RGB_CHANNELS

    @property
    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, for display and for scenarios that declare RGB input.

        Colour images are scaled from their significant bits to 8 bits; a grey image is
        repeated into three channels; other channel sets become a false-colour composite
        (:func:`composite_rgb8`). Computed once and cached.
        """
        if self._rgb is None:
            if self.is_rgb:
                self._rgb = scale_to_uint8(self.data, self.significant_bits)
            elif self.n_channels == 1:
                self._rgb = np.repeat(scale_to_uint8(self.data, self.significant_bits), 3, axis=2)
            else:
                self._rgb = composite_rgb8(self.data, self.channel_names)
        return self._rgb

    @classmethod
    def from_rgb(cls, rgb: np.ndarray, mpp: float | None, name: str, sha256: str = "", mpp_source: str = "user") -> "ImageData":
        """An image from an (H, W, 3) uint8 RGB array (tests, generated sections, mosaics)."""
        return cls(np.asarray(rgb, np.uint8), mpp, name, sha256, mpp_source if mpp is not None else "none")

    def with_mpp(self, mpp: float | None, source: str = "user") -> "ImageData":
        """Return a copy with ``mpp`` set (validated by :func:`check_mpp`); the pixels are shared."""
        mpp = None if mpp is None else check_mpp(mpp)
        return ImageData(self.data, mpp, self.name, self.sha256, source if mpp is not None else "none", list(self.notes),
                         self.channel_names, self.significant_bits, self.transparent, self.n_pages)


def scale_to_uint8(data: np.ndarray, significant_bits: int | None) -> np.ndarray:
    """(H, W, C) uint8 / uint16 / float32 → uint8, full range kept.

    Integer data are scaled by ``255 / (2**significant_bits - 1)`` with rounding (16-bit:
    the former 255/65535); float32 in [0, 1] by 255.
    """
    if data.dtype == np.uint8:
        return data
    out = np.empty(data.shape, np.uint8)
    rows = max(1, (16 << 20) // max(1, data[0].size * 4))  # bands of about 16 MB of temporaries
    top = (1 << int(significant_bits or 16)) - 1
    for r in range(0, data.shape[0], rows):
        band = data[r : r + rows]
        if data.dtype == np.float32:
            out[r : r + rows] = np.clip(np.nan_to_num(band), 0.0, 1.0) * 255.0 + 0.5
        else:
            out[r : r + rows] = (np.minimum(band.astype(np.uint32), top) * 255 + top // 2) // top
    return out


def composite_rgb8(data: np.ndarray, channel_names: tuple[str, ...]) -> np.ndarray:
    """False-colour composite of fluorescence channels, for display only.

    Each channel is stretched between its 0.5th and 99.8th percentile and added in its
    colour: a nuclear stain (Hoechst, DAPI) in blue, the others green, red, magenta, cyan,
    yellow... in order.

    Parameters
    ----------
    data : (H, W, C) uint8, uint16 or float32
    channel_names : C names

    Returns
    -------
    (H, W, 3) uint8 RGB
    """
    h, w, c = data.shape
    out = np.zeros((h, w, 3), np.float32)
    step = max(1, int(np.sqrt(h * w / 250_000)))  # percentiles from at most ~250k pixels
    others = iter(_CHANNEL_COLORS)
    for i, name in enumerate(channel_names):
        plane = data[..., i].astype(np.float32)
        lo, hi = np.percentile(plane[::step, ::step], (0.5, 99.8))
        norm = np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1)
        nuclear = any(wd in name.lower() for wd in _NUCLEAR_WORDS)
        color = (0, 80, 255) if nuclear else next(others, (255, 255, 255))
        out += norm[..., None] * (np.asarray(color, np.float32) / 255.0)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def nuclear_channel(channel_names: tuple[str, ...]) -> int | None:
    """Index of the first channel whose name says it is a nuclear (DNA) stain, e.g. "Hoechst 33342", "H3342", "DAPI".

    The channel picker's default for a scenario that reads a nuclear stain.

    Parameters
    ----------
    channel_names : tuple of str, e.g. ``("CD3", "DAPI", "CD8")``

    Returns
    -------
    int from 0, or None when no name matches (case ignored)
    """
    for i, name in enumerate(channel_names):
        if any(word in str(name).lower() for word in _NUCLEAR_WORDS):
            return i
    return None


def select_channels(image: "ImageData", picks: tuple[str | None, ...], names: tuple[str, ...]) -> "ImageData":
    """An image made of chosen channels of a multi-channel file (the channel picker).

    Parameters
    ----------
    image : ImageData with named channels (e.g. a fluorescence OME-TIFF)
    picks : for each channel of the result, the name of the file's channel to use, or None
        for an empty (zero) plane
    names : the result's channel names, e.g. ``("red", "green", "blue")`` for an RGB composite

    Returns
    -------
    ImageData
        Same dtype, mpp, name and hash; a note says which channel went where.

    Raises
    ------
    InputError
        A pick that is not one of the image's channels, or ``picks`` and ``names`` of different lengths.
    """
    if len(picks) != len(names):
        raise InputError(f"{len(picks)} channels picked for {len(names)} places ({', '.join(names)})")
    missing = [p for p in picks if p is not None and p not in image.channel_names]
    if missing:
        raise InputError(f"{image.name}: no channel named {', '.join(map(repr, missing))}; the file has "
                         f"{', '.join(image.channel_names)}")
    planes = [image.data[..., image.channel_names.index(p)] if p is not None else np.zeros(image.shape, image.data.dtype)
              for p in picks]
    note = "channels picked: " + ", ".join(f"{p or 'none'} as {n}" for p, n in zip(picks, names))
    return ImageData(np.stack(planes, axis=-1), image.mpp, image.name, image.sha256, image.mpp_source,
                     list(image.notes) + [note], tuple(names), image.significant_bits, image.transparent, image.n_pages)


def resolve_channel(image: "ImageData", spec: str | int) -> str:
    """The name of the channel ``spec`` designates: a channel name, or a 0-based index.

    A name is matched exactly first, then ignoring case; a whole number that is not a
    channel's name is an index from 0 (``--channel 0`` is the first plane, as in
    ``tifffile``, Fiji's "C=0" and OME ``Channel:0``).

    Parameters
    ----------
    image : ImageData
    spec : str or int, e.g. ``"Hoechst"``, ``"H3342"``, ``"0"`` or ``2``

    Returns
    -------
    str, one of ``image.channel_names``

    Raises
    ------
    InputError
        If no channel has that name and it is not an index in [0, C - 1]; the message
        lists the channels with their indices.
    """
    names = image.channel_names
    text = str(spec).strip()
    listed = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
    if text in names:
        return text
    folded = [n for n in names if n.casefold() == text.casefold()]
    if len(folded) == 1:
        return folded[0]
    if text.lstrip("+-").isdigit():
        index = int(text)
        if 0 <= index < len(names):
            return names[index]
        raise InputError(f"{image.name}: channel index {index} is out of range: the image has {len(names)} "
                         f"channel(s), indices 0 to {len(names) - 1} ({listed})")
    raise InputError(f"{image.name}: no channel named {text!r}; the image has {listed}: give a name or an index "
                     "from 0")


def pick_channel(image: "ImageData", spec: str | int, as_name: str) -> "ImageData":
    """One channel of a multi-channel image, renamed to what a scenario reads (the CLI's ``--channel``).

    Parameters
    ----------
    image : ImageData, e.g. a 16-bit multiplex fluorescence stack
    spec : str or int, a channel name or a 0-based index (:func:`resolve_channel`)
    as_name : str, the result's channel name, e.g. ``"Hoechst"``

    Returns
    -------
    ImageData, (H, W, 1) of the image's dtype, mpp and hash; a note names the channel picked

    Raises
    ------
    InputError
        See :func:`resolve_channel`.
    """
    return select_channels(image, (resolve_channel(image, spec),), (as_name,))


def check_mpp(mpp: float) -> float:
    """Validate a microns-per-pixel value.

    Raises
    ------
    InputError
        If ``mpp`` is not a finite number in :data:`PLAUSIBLE_MPP_RANGE`.
    """
    try:
        value = float(mpp)
    except (TypeError, ValueError) as err:
        raise InputError(f"mpp must be a number of microns per pixel, got {mpp!r}") from err
    lo, hi = PLAUSIBLE_MPP_RANGE
    if not np.isfinite(value) or not lo <= value <= hi:
        raise InputError(
            f"mpp {value!r} µm/px is outside {lo}-{hi}: enter the scanner's microns per pixel "
            "(about 0.25 at 40x, 0.5 at 20x)"
        )
    return value


def load_image(
    source: str | Path | bytes | BinaryIO,
    name: str | None = None,
    mpp: float | None = None,
    max_pixels: int | None = None,
    page: int | None = None,
) -> ImageData:
    """Read an image file with its channels, bit depth and microns per pixel.

    The file is measured and its header read before any pixel is decoded: a file larger
    than :data:`MAX_FILE_BYTES`, an image of more than ``max_pixels``, or a decode that
    would produce more than :func:`max_decoded_bytes` is refused without allocating it.

    Parameters
    ----------
    source : path, bytes or binary file object
        PNG, JPEG, BMP, GIF, WebP or TIFF/OME-TIFF/ImageJ hyperstack: 8- or 16-bit (12-bit
        data in 16-bit words are recognised), float (in [0, 1], 0-255 or 0-65535), RGB,
        RGBA, grey, palette, or up to :data:`MAX_CHANNELS` fluorescence planes (CYX).
    name : str, optional
        Display name; defaults to the file name.
    mpp : float, optional
        Microns per pixel given by the user; overrides the file's metadata (which is then
        still read, but never stops the image from loading).
    max_pixels : int, optional
        Refuse images with more pixels (H x W) than this; default :data:`MAX_PIXELS`.
    page : int, optional
        1-based page (image) of a multi-page file (a TIFF holding several images, an
        animated GIF); default 1. A note says which page was read when there are several.

    Returns
    -------
    ImageData
        ``data`` (H, W, C) in the file's own dtype (uint8, uint16 or float32) with channel
        names (OME ``Channel Name``, ImageJ ``Labels``, else red/green/blue, grey or
        "channel i"); ``mpp`` from the user, else the OME ``PhysicalSizeX``, TIFF
        ``XResolution``/``ResolutionUnit`` or Aperio ``MPP`` tags, else None; EXIF / TIFF
        orientation applied (a TIFF Orientation tag is reported, not applied, as in
        Bio-Formats); ``transparent`` marks pixels of alpha 0; ``notes`` says what
        was converted (page read, orientation, alpha, scaling, metadata ignored).

    Raises
    ------
    ImageReadError
        If the source is missing, a folder, empty, larger than the limits, not an image,
        truncated, holds NaN or infinite values, has no page ``page``, or is of an
        unsupported layout (e.g. a z-stack or time series).
    InputError
        If ``mpp`` or ``page`` is given but implausible.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if mpp is not None:
        mpp = check_mpp(mpp)
    page = _check_page(page)
    notes = _Notes()
    with _open_source(source, name) as (fh, name, digest):
        head = fh.read(8)
        fh.seek(0)
        if head[:4] in _TIFF_MAGIC:
            array, file_mpp, mpp_source, channel_names, alpha = _read_tiff(fh, name, max_pixels, page, notes,
                                                                           user_mpp=mpp is not None)
        else:
            array, alpha = _read_pil(fh, name, max_pixels, page, notes)
            file_mpp, mpp_source, channel_names = None, "none", None
        sha256 = digest()
    transparent = _transparent(array, alpha)
    try:
        array, channel_names, bits = normalise_array(array, notes, channel_names, alpha)
    except ImageReadError as err:
        raise ImageReadError(f"{name}: {err}") from err
    if transparent is not None:
        notes.append(f"{100 * transparent.mean():.1f} % of the pixels are transparent: they are counted as no tissue "
                     "(left out of the tissue area and the stain reading)")
    if mpp is not None:
        file_mpp, mpp_source = mpp, "user"
    return ImageData(array, file_mpp, name, sha256, mpp_source, list(notes), channel_names, bits, transparent,
                     notes.n_pages)


class _Notes(list):
    """The reading notes of one file, and how many images (pages) it holds (set by :func:`_page_note`)."""

    n_pages = 1


def _check_page(page) -> int:
    if page is None:
        return 1
    try:
        value = int(page)
    except (TypeError, ValueError) as err:
        raise InputError(f"page must be a whole number from 1, got {page!r}") from err
    if value != page or value < 1:
        raise InputError(f"page must be a whole number from 1 (the first page), got {page!r}")
    return value


class _open_source:
    """Context manager: (seekable binary file, display name, callable giving the SHA-256 hex).

    A path is measured with ``os.stat`` and refused (folder, missing, empty, larger than
    :data:`MAX_FILE_BYTES`) before it is opened; it is never read whole: decoders seek
    in it and the SHA-256 is computed in 1 MiB chunks.
    """

    def __init__(self, source, name):
        self.source, self.name, self.fh, self.own = source, name, None, False

    def __enter__(self):
        source, name = self.source, self.name
        if isinstance(source, (str, Path)):
            path = Path(source)
            name = name or path.name
            try:
                st = path.stat()
            except FileNotFoundError:
                raise ImageReadError(f"{path}: no such file; check the path") from None
            except OSError as err:
                raise ImageReadError(f"{path}: cannot be read ({err.strerror or err})") from err
            if path.is_dir():
                raise ImageReadError(f"{path}: is a folder, not a file; give the image file itself")
            if not path.is_file():
                raise ImageReadError(f"{path}: is not a regular file (a device or pipe); give the image file itself")
            self._check_size(st.st_size, name)
            try:
                self.fh = open(path, "rb")
            except OSError as err:
                raise ImageReadError(f"{path}: cannot be opened ({err.strerror or err}); check its permissions") from err
            self.own = True
        elif isinstance(source, (bytes, bytearray, memoryview)):
            name = name or "image"
            self._check_size(len(source), name)
            self.fh = _io.BytesIO(bytes(source))
        else:
            name = name or Path(str(getattr(source, "name", "image"))).name
            try:
                source.seek(0, os.SEEK_END)
                size = source.tell()
                source.seek(0)
                self.fh = source
            except (AttributeError, OSError, ValueError):  # not seekable: read it, bounded
                data = source.read(MAX_FILE_BYTES + 1)
                size = len(data)
                self.fh = _io.BytesIO(data)
            self._check_size(size, name)
        self.name = name
        return self.fh, name, self._digest

    @staticmethod
    def _check_size(size: int, name: str) -> None:
        if size == 0:
            raise ImageReadError(f"{name}: the file is empty (0 bytes); upload the image file itself")
        if size > MAX_FILE_BYTES:
            raise ImageReadError(
                f"{name}: the file is {size / 1024**3:.1f} GiB, more than the {MAX_FILE_BYTES / 1024**3:.1f} GiB "
                "accepted; export a region of interest (whole slides need a tiled reader)"
            )

    def _digest(self) -> str:
        digest = hashlib.sha256()
        self.fh.seek(0)
        for chunk in iter(lambda: self.fh.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()

    def __exit__(self, *exc):
        if self.own and self.fh is not None:
            self.fh.close()
        return False


def _check_decode(name: str, w: int, h: int, n_bytes: int, max_pixels: int, what: str = "") -> None:
    """Refuse, before decoding, an image of more than ``max_pixels`` or a decode of more than :func:`max_decoded_bytes`."""
    if w * h > max_pixels:
        raise ImageReadError(_too_large(name, w, h, max_pixels))
    limit = max_decoded_bytes(max_pixels)
    if n_bytes > limit:
        raise ImageReadError(
            f"{name}: reading {what or 'the image'} ({w} x {h} px) would take {n_bytes / 1e9:.2f} GB of memory, more "
            f"than the {limit / 1e9:.2f} GB accepted ({MAX_DECODED_BYTES_PER_PIXEL} bytes per pixel of the "
            f"{max_pixels / 1e6:.0f} megapixels); export fewer channels, 8- or 16-bit data, or a smaller region"
        )


def _page_note(notes: _Notes, page: int, n: int, what: str = "images (pages)") -> None:
    notes.n_pages = n
    if n > 1:
        notes.append(f"the file holds {n} {what}: page {page} was read; to analyse another, give its number "
                     "(--page on the command line) or export that page on its own")


def _no_page(name: str, page: int, n: int) -> ImageReadError:
    return ImageReadError(f"{name}: page {page} was asked for, but the file holds {n} page{'s' if n > 1 else ''} "
                          f"(1-{n}); give a page from 1 to {n}")


def _pil_bytes_per_pixel(mode: str) -> tuple[int, int]:
    """(bytes per pixel PIL keeps for ``mode``, bytes per pixel of the array made from it)."""
    try:
        bands = int(Image.getmodebands(mode))
    except (KeyError, ValueError):
        bands = 4
    if mode in ("I", "F"):
        return 4, 4
    if mode.startswith("I;16"):
        return 2, 2
    return (4 if bands > 1 else 1), bands


#: Plain names of the EXIF / TIFF orientations 2-8 (1 is upright).
_ORIENTATION_NAMES = {2: "mirrored left-right", 3: "rotated 180°", 4: "mirrored top-bottom", 5: "transposed",
                      6: "rotated 90° clockwise", 7: "transversed", 8: "rotated 90° anticlockwise"}


def _read_pil(fh: BinaryIO, name: str, max_pixels: int, page: int, notes: list[str]) -> tuple[np.ndarray, bool]:
    """(array, last channel is alpha) of a PNG/JPEG/other file PIL reads; header checked before decoding."""
    try:
        with warnings.catch_warnings():
            # TILscope checks the pixel count itself (max_pixels), before decoding; PIL's own
            # bomb warning at 89 megapixels would refuse images under that limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh, formats=_PIL_FORMATS) as im:
                n_frames = int(getattr(im, "n_frames", 1) or 1)
                if page > n_frames:
                    raise _no_page(name, page, n_frames)
                if page > 1:
                    im.seek(page - 1)
                _page_note(notes, page, n_frames, "frames (pages)")
                w, h = im.size
                internal, array_bpp = _pil_bytes_per_pixel(im.mode)
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    internal += 4  # converted to RGB(A)
                orientation = _exif_orientation(im)
                if orientation in _ORIENTATION_NAMES:
                    internal += 4  # the transposed copy
                _check_decode(name, w, h, w * h * (internal + array_bpp), max_pixels)
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                im.load()
                if orientation in _ORIENTATION_NAMES:
                    im = ImageOps.exif_transpose(im)
                    notes.append(f"EXIF orientation {orientation} applied: the image was {_ORIENTATION_NAMES[orientation]} "
                                 "as the camera recorded it")
                return np.asarray(im), im.mode in ("RGBA", "LA", "PA", "La", "RGBa")
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{name}: the image is larger than the {max_pixels / 1e6:.0f} megapixels accepted "
                             f"({err}); crop a region of interest or downsample it") from err
    except UnidentifiedImageError as err:
        raise ImageReadError(
            f"{name}: this file is not an image TILscope can read; upload a PNG, JPEG, BMP or TIFF / OME-TIFF file"
        ) from err
    except MemoryError as err:
        raise ImageReadError(f"{name}: not enough memory to read the image; downsample it or crop a region") from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as err:
        raise ImageReadError(f"{name}: the image data is damaged or truncated ({err}); export it again") from err


def _exif_orientation(im) -> int | None:
    try:
        value = im.getexif().get(0x0112)
        return int(value) if value is not None else None
    except Exception:  # a damaged EXIF block is ignored: orientation is optional metadata
        return None


def _tiff_images(tif) -> list[tuple[object, int | None]]:
    """The images (pages) of a TIFF: (series, index along its first axis, or None for the whole series).

    A series whose first axis is tifffile's generic page axis (``I`` or ``Q``) with one
    IFD per entry is a stack of separate pages; any other series (a hyperstack with its
    channels, an RGB image) is one image. Pyramid levels are not pages.
    """
    images = []
    for series in tif.series:
        shape, axes = tuple(series.shape), series.axes
        if axes and axes[0] in "IQ" and len(shape) > 2 and shape[0] > 1 and len(series.pages) == shape[0]:
            images.extend((series, i) for i in range(shape[0]))
        else:
            images.append((series, None))
    return images


def _read_tiff(fh: BinaryIO, name: str, max_pixels: int, page: int, notes: list[str], user_mpp: bool = False):
    """(array (H, W[, C]), mpp, mpp source, channel names or None, last channel is alpha).

    With ``user_mpp`` the file's pixel size is still read, but a malformed one is ignored silently.
    """
    import tifffile

    try:
        with tifffile.TiffFile(fh, name=name, _multifile=False) as tif:
            images = _tiff_images(tif)
            if not images:
                raise ImageReadError(f"{name}: the TIFF holds no image; export it again")
            if page > len(images):
                raise _no_page(name, page, len(images))
            _page_note(notes, page, len(images))
            series, index = images[page - 1]
            shape, axes = tuple(series.shape), series.axes
            if index is not None:
                shape, axes = shape[1:], axes[1:]
            first = series.pages[index or 0] if len(series.pages) else None
            first = first if first is not None else tif.pages[0]
            key = getattr(first, "keyframe", None) or first
            h, w = _yx_size(shape, axes)
            _check_layout(shape, axes, name)
            palette = key.photometric == tifffile.PHOTOMETRIC.PALETTE and key.colormap is not None
            n_bytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(series.dtype).itemsize
            if palette:
                n_bytes += 3 * h * w * 3  # the colour map applied: (3, H, W) uint16 then uint8
            orientation = _tiff_orientation(key)
            _check_decode(name, w, h, n_bytes, max_pixels, f"page {page}" if len(images) > 1 else "")
            array = series.asarray() if index is None else series.pages[index].asarray()
            array = np.asarray(array).reshape(shape)
            mpp, source = _tiff_mpp_safe(tif, key, [] if user_mpp else notes)
            # an RGB-photometric TIFF is a colour image whatever its plane labels say
            names = None if key.photometric == tifffile.PHOTOMETRIC.RGB else _tiff_channel_names_safe(tif)
            alpha = bool(key.extrasamples) and int(key.extrasamples[0]) in (1, 2)
            if palette:
                cmap = np.asarray(key.colormap)
                array = (cmap[:, array].transpose(1, 2, 0) // 257).astype(np.uint8)
                axes = "YXS"
                shape = array.shape
    except ImageReadError:
        raise
    except MemoryError as err:
        raise ImageReadError(f"{name}: not enough memory to read the TIFF; export a smaller region") from err
    except Exception as err:  # tifffile raises many types for damaged files
        raise ImageReadError(f"{name}: the TIFF is damaged or unsupported ({err}); export it again") from err
    array = _tiff_to_yxc(array, axes, shape, name)
    if orientation in _ORIENTATION_NAMES:
        # Microscopy readers (Bio-Formats, QuPath) ignore this tag; so does TILscope, so that
        # positions and imported regions stay in the frame those tools use.
        notes.append(f"the TIFF's Orientation tag says {orientation} ({_ORIENTATION_NAMES[orientation]}); the image is "
                     "read as stored, as QuPath and Bio-Formats read it")
    return array, mpp, source, names, alpha


def _yx_size(shape, axes) -> tuple[int, int]:
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"a TIFF series of axes {axes} has no Y and X axes; export a 2-D image")
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _tiff_orientation(page) -> int | None:
    try:
        tag = page.tags.get("Orientation")
        return None if tag is None else int(tag.value)
    except Exception:  # optional metadata
        return None


def _tiff_mpp_safe(tif, page, notes: list[str]) -> tuple[float | None, str]:
    """:func:`_tiff_mpp`, with malformed metadata ignored (and a note), never stopping the read."""
    try:
        return _tiff_mpp(tif, page, notes)
    except Exception as err:  # optional metadata: a damaged tag must not make a valid image unreadable
        notes.append(f"the pixel size in the file's metadata could not be read ({err}): ignored; enter the microns "
                     "per pixel")
        return None, "none"


def _tiff_channel_names_safe(tif) -> list[str] | None:
    try:
        return _tiff_channel_names(tif)
    except Exception:  # optional metadata: default channel names are used
        return None


def _tiff_channel_names(tif) -> list[str] | None:
    """Channel names from OME ``<Channel Name=...>`` or ImageJ ``Labels``; None when absent."""
    if tif.is_ome and tif.ome_metadata:
        names = re.findall(r'<(?:\w+:)?Channel\b[^>]*?\bName="([^"]*)"', tif.ome_metadata)
        if names:
            return names
    labels = (tif.imagej_metadata or {}).get("Labels") if tif.is_imagej else None
    if isinstance(labels, (list, tuple)) and labels:
        return [str(x) for x in labels]
    return None


def _kept_axes(shape, axes) -> list[int]:
    return [i for i, ax in enumerate(axes) if not (shape[i] == 1 and ax not in "YX")]


def _check_layout(shape, axes, name: str) -> None:
    """Refuse, before decoding, a TIFF series that is not one 2-D image (colour, grey or one plane per channel)."""
    kept = "".join(axes[i] for i in _kept_axes(shape, axes))
    if kept not in ("YX", "YXS", "CYX", "SYX", "YXC"):
        raise ImageReadError(
            f"{name}: TIFF of shape {tuple(shape)} (axes {axes}) is not a single 2-D image (colour, grey or one "
            "plane per channel); export one z-plane and time point"
        )


def _tiff_to_yxc(array: np.ndarray, axes: str, shape, name: str) -> np.ndarray:
    """Reduce a TIFF series to (H, W) or (H, W, C) by dropping singleton axes."""
    array = np.asarray(array)
    keep = _kept_axes(array.shape, axes)
    squeezed = array.reshape([array.shape[i] for i in keep])
    kept_axes = "".join(axes[i] for i in keep)
    if kept_axes in ("YX", "YXS"):
        return squeezed
    if kept_axes in ("CYX", "SYX"):
        return np.moveaxis(squeezed, 0, -1)
    if kept_axes in ("YXC",):
        return squeezed
    raise ImageReadError(
        f"{name}: TIFF of shape {tuple(shape)} (axes {axes}) is not a single 2-D image (colour, grey or one "
        "plane per channel); export one z-plane and time point"
    )


def _tiff_mpp(tif, page, notes: list[str] | None = None) -> tuple[float | None, str]:
    if tif.is_ome and tif.ome_metadata:
        match = re.search(r'PhysicalSizeX="([^"]*)"', tif.ome_metadata)
        if match:
            unit_match = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            factor = _UNIT_TO_UM.get(unit_match.group(1) if unit_match else "µm")
            value = _number(match.group(1), "OME PhysicalSizeX", notes)
            if factor is not None and value is not None:
                mpp = value * factor
                if _plausible(mpp):
                    return mpp, "ome"
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num and den:
            pixels_per_unit = num / den
            per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
            if per_unit_um is not None:
                mpp = per_unit_um / pixels_per_unit
                if _plausible(mpp):
                    return mpp, "tiff-resolution"
    unit = str((tif.imagej_metadata or {}).get("unit", "")).replace("\\u00B5", "µ") if tif.is_imagej else ""
    factor = _UNIT_TO_UM.get(unit.strip()) or (1.0 if unit.strip().lower() in ("micron", "microns") else None)
    if factor and "XResolution" in tags:  # ImageJ: XResolution in pixels per its own unit
        num, den = tags["XResolution"].value
        if num and _plausible(factor * den / num):
            return factor * den / num, "imagej-resolution"
    desc = page.description or ""
    match = re.search(r"\bMPP\s*=\s*([^|\s]*)", desc)  # Aperio ImageDescription: "... | MPP = 0.2520 | ..."
    if match:
        value = _number(match.group(1), "Aperio MPP", notes)
        if value is not None and _plausible(value):
            return value, "tiff-description"
    return None, "none"


def _number(text: str, what: str, notes: list[str] | None) -> float | None:
    """``float(text)``, or None with a note when the metadata value is not a number."""
    try:
        value = float(text)
    except ValueError:
        if notes is not None:
            notes.append(f"the file's {what} = {text[:40]!r} is not a number: ignored; enter the microns per pixel")
        return None
    return value if np.isfinite(value) else None


def _plausible(mpp: float) -> bool:
    lo, hi = PLAUSIBLE_MPP_RANGE
    return bool(np.isfinite(mpp) and lo <= mpp <= hi)


def _too_large(name, w, h, max_pixels):
    return (
        f"{name}: {w} x {h} px ({w * h / 1e6:.0f} megapixels) is more than the {max_pixels / 1e6:.0f} "
        "megapixels accepted; crop a region of interest or downsample it"
    )


def _transparent(array: np.ndarray, alpha: bool) -> np.ndarray | None:
    """(H, W) bool, True where the alpha channel (the last of 2 or 4) is 0; None without transparency."""
    if not alpha or array.ndim != 3 or array.shape[2] not in (2, 4):
        return None
    clear = array[..., -1] == 0
    return clear if clear.any() else None


def significant_bits(array: np.ndarray, declared: int | None = None) -> int:
    """Bits that carry signal in integer pixel data.

    ``declared`` (e.g. OME ``SignificantBits``) wins; otherwise the smallest of 8, 10, 12,
    14 and 16 bits (up to the dtype's width) that holds the largest value. A camera's
    12-bit values stored in uint16 words give 12, so they are not shown 16 times too dark.
    """
    width = 8 * array.dtype.itemsize
    if declared:
        return int(min(max(declared, 1), width))
    top = int(array.max()) if array.size else 0
    for bits in (8, 10, 12, 14, 16):
        if bits <= width and top <= (1 << bits) - 1:
            return bits
    return width


def normalise_array(
    array: np.ndarray, notes: list[str], channel_names: list[str] | None = None, alpha: bool = False
) -> tuple[np.ndarray, tuple[str, ...] | None, int | None]:
    """Bring a decoded pixel array to the layout of :class:`ImageData`, keeping its values.

    Parameters
    ----------
    array : (H, W) or (H, W, C) ndarray of any integer, bool or float dtype
    notes : list of str
        Conversions applied are appended here (for the user).
    channel_names : list of str, optional
        From the file's metadata; dropped when their count does not match.
    alpha : bool
        The last channel is transparency (RGBA, grey + alpha): it is dropped.

    Returns
    -------
    data : (H, W, C) uint8, uint16 or float32
        uint8 and uint16 unchanged; bool → uint8 0/255; float → float32 in [0, 1]: values
        up to 1 kept, up to 255 divided by 255, up to 65535 divided by 65535 (with a note),
        negative values clipped to 0 (with a note); other integer types → uint16 (clipped
        to 0-65535) when non-negative, else refused.
    channel_names : tuple of str or None (default names)
    significant_bits : int or None (float data)

    Raises
    ------
    ImageReadError
        For an empty image, negative integer values, NaN or infinite values, complex
        values, or floating-point values above 65535.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageReadError(f"expected a 2-D image, got an array of shape {np.shape(array)}")
    if alpha and a.shape[2] in (2, 4):
        a = a[..., :-1]
        notes.append(("RGBA" if a.shape[2] == 3 else "grey + alpha") + " image: alpha channel dropped")
        if channel_names and len(channel_names) == a.shape[2] + 1:
            channel_names = channel_names[:-1]
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.complexfloating):
        raise ImageReadError("the image holds complex numbers (e.g. a Fourier transform); export the image itself")
    elif np.issubdtype(a.dtype, np.floating):
        a = _float_to_unit(a, notes)
    elif a.dtype not in (np.uint8, np.uint16):
        if a.size and a.min() < 0:
            raise ImageReadError(f"{a.dtype} image with negative values; export unsigned 8- or 16-bit data")
        notes.append(f"{a.dtype} image stored as 16-bit (values above 65535 clipped)")
        a = np.clip(a, 0, 65535).astype(np.uint16)
    bits = None if a.dtype == np.float32 else significant_bits(a)
    if a.dtype == np.uint16 and bits < 16:
        notes.append(f"{bits}-bit data in 16-bit words: shown scaled from {bits} bits")
    if channel_names is not None and len(channel_names) != a.shape[2]:
        channel_names = None
    return np.ascontiguousarray(a), (tuple(channel_names) if channel_names else None), bits


def _float_to_unit(a: np.ndarray, notes: list[str]) -> np.ndarray:
    """Floating-point pixels → float32 in [0, 1], by the scale their largest value shows (see :func:`normalise_array`)."""
    rows = max(1, (16 << 20) // max(1, a[0].size * a.itemsize))  # bands: no full-size temporary
    bad, lo, hi = 0, np.inf, -np.inf
    for r in range(0, a.shape[0], rows):
        band = a[r : r + rows]
        finite = np.isfinite(band)
        if not finite.all():
            bad += int(finite.size - np.count_nonzero(finite))
            continue
        lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
    if bad:
        raise ImageReadError(
            f"{bad} pixel value(s) are NaN or infinite (not a number): TILscope cannot tell what they show; "
            "replace them (e.g. Fiji: Process > Math > Remove NaNs) and export the image again"
        )
    if hi > 65535:
        raise ImageReadError(
            f"floating-point values up to {hi:.4g}: TILscope reads float images scaled to 0-1, 0-255 or 0-65535; "
            "export 8- or 16-bit data, or scale the image to one of these ranges"
        )
    scale = 1.0 if hi <= 1.0 else 255.0 if hi <= 255.0 else 65535.0
    if scale != 1.0:
        notes.append(f"floating-point image with values up to {hi:.4g}: read as 0-{scale:.0f} and divided by {scale:.0f}")
    if lo < 0:
        notes.append(f"floating-point image with negative values (down to {lo:.3g}): clipped to 0")
    out = np.empty(a.shape, np.float32)
    for r in range(0, a.shape[0], rows):
        band = a[r : r + rows].astype(np.float32)
        if scale != 1.0:
            band /= np.float32(scale)
        out[r : r + rows] = np.clip(band, 0.0, 1.0)
    return out


# ---------------------------------------------------------------------------------- output folders


def check_output_folder(out_dir: str | Path, names: Iterable[str] = ()) -> Path:
    """Refuse, before any work, an output folder that cannot receive the files ``names``.

    Parameters
    ----------
    out_dir : path
        The folder to write into: it may exist (files of the same names are replaced) or
        not (it is created, with missing parents).
    names : iterable of str
        Plain file names that will be written into it.

    Returns
    -------
    Path of the folder

    Raises
    ------
    core.errors.InputError
        If ``out_dir`` is an existing file, lies under a file, is in a folder without
        write permission, or holds a folder (or other non-file) under one of ``names``.
    """
    out = Path(out_dir)
    if str(out_dir).strip() == "":
        raise InputError("the output folder is empty: give a folder to write the files into, e.g. --out results")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not a folder; choose a folder for the output (--out), e.g. {out}-results")
    anchor = out
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if anchor.exists() and not anchor.is_dir():
        raise InputError(f"{out}: {anchor} is a file, so no folder can be made under it; choose another output folder")
    if anchor.exists() and not os.access(anchor, os.W_OK | os.X_OK):
        raise InputError(f"{out}: no permission to write in {anchor}; choose another output folder")
    for n in names:
        if Path(n).name != n or n in ("", ".", ".."):
            raise InputError(f"{n!r} is not a plain file name")
        target = out / n
        if target.exists() and not target.is_file():
            raise InputError(f"{target}: is a folder, not a file, so {n} cannot be written there; remove or rename it, "
                             "or choose another output folder")
    return out


def write_output_folder(out_dir: str | Path, write: Callable[[Path], Iterable[Path]]) -> dict[str, Path]:
    """Write files into ``out_dir`` whole or not at all.

    ``write(folder)`` writes the files into a new temporary folder on the same file system
    (beside ``out_dir`` when that does not exist yet, inside it when it does); when it has
    finished, the files are moved into place: the temporary folder becomes ``out_dir``
    (one rename), or each file replaces its namesake (``os.replace``). On any error the
    temporary folder, and the parents created for it, are removed: nothing half-written
    is left behind.

    Parameters
    ----------
    out_dir : path
    write : callable(Path) -> iterable of Path
        Writes the files into the folder it is given and returns their paths.

    Returns
    -------
    dict of file name to its final Path

    Raises
    ------
    core.errors.InputError
        See :func:`check_output_folder` (checked again before and after writing).
    core.errors.TILscopeError
        If the files cannot be written or moved (disk full, permissions).
    """
    out = check_output_folder(out_dir)
    base = out if out.exists() else out.parent
    created: list[Path] = []
    probe = base
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    tmp = None
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name or 'out'}.partial-", dir=base))
        names = [Path(p).name for p in write(tmp)]
        check_output_folder(out, names)
        if not out.exists():
            os.replace(tmp, out)
            tmp = None
        else:
            for n in names:
                os.replace(tmp / n, out / n)
            tmp.rmdir()
            tmp = None
        return {n: out / n for n in names}
    except OSError as err:
        raise TILscopeError(f"{out}: the files could not be written ({err.strerror or err}); check the free space "
                            "and permissions of the output folder") from err
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            for d in created:  # innermost first; only the folders made here, and only if still empty
                try:
                    d.rmdir()
                except OSError:
                    break
