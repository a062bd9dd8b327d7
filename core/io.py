"""Read microscope images and their pixel size (microns per pixel, mpp).

The boundary where every layout is normalised once: after :func:`load_image` an
image is (H, W, C) in the file's own dtype (uint8, uint16 or float32) with a name per
channel and its significant bits (:class:`ImageData`), whatever the file held (grey, RGB,
RGBA, palette, a multiplex fluorescence stack; PNG, JPEG, TIFF, OME-TIFF, ImageJ
hyperstacks). 8-bit RGB is made from it only for display and for the scenarios that
declare RGB input (:attr:`ImageData.rgb`).
"""

from __future__ import annotations

import hashlib
import os
import io as _io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import ImageReadError, InputError

#: Largest image accepted, in pixels (about a 10 000 x 10 000 field). Whole slides
#: need a tiled reader, not this function.
MAX_PIXELS = int(os.environ.get("TILSCOPE_MAX_PIXELS", 100_000_000))
#: mpp values outside this range are treated as absent (e.g. a 72 dpi default tag
#: reads as 352.8 µm/px, which no microscope produces).
PLAUSIBLE_MPP_RANGE = (0.05, 20.0)

_TIFF_SUFFIXES = {".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf"}
_UNIT_TO_UM = {"m": 1e6, "mm": 1e3, "cm": 1e4, "µm": 1.0, "um": 1.0, "μm": 1.0, "nm": 1e-3}


#: Channel names of a colour (brightfield or composite) image.
RGB_CHANNELS = ("red", "green", "blue")
#: Most channels accepted in one image (a multiplex panel; more is a hyperstack of another kind).
MAX_CHANNELS = 16
#: Display colours of fluorescence channels, in order; a nuclear stain (Hoechst/DAPI) is blue.
_CHANNEL_COLORS = ((0, 255, 0), (255, 0, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0),
                   (128, 128, 255), (255, 255, 255))
_NUCLEAR_WORDS = ("hoechst", "h3342", "dapi", "nuclei", "nuclear")


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

    Raises
    ------
    ImageReadError
        If the array is not 2-D or 3-D, is empty, has an unsupported dtype, more than
        :data:`MAX_CHANNELS` channels, or a channel-name count that differs from C.
    """

    data: np.ndarray
    mpp: float | None
    name: str
    sha256: str
    mpp_source: str = "none"
    notes: list[str] = field(default_factory=list)
    channel_names: tuple[str, ...] | None = None
    significant_bits: int | None = None

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
                         self.channel_names, self.significant_bits)


def scale_to_uint8(data: np.ndarray, significant_bits: int | None) -> np.ndarray:
    """(H, W, C) uint8 / uint16 / float32 → uint8, full range kept.

    Integer data are scaled by ``255 / (2**significant_bits - 1)`` with rounding (16-bit:
    the former 255/65535); float32 in [0, 1] by 255.
    """
    if data.dtype == np.uint8:
        return data
    if data.dtype == np.float32:
        return (np.clip(np.nan_to_num(data), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    top = (1 << int(significant_bits or 16)) - 1
    return ((np.minimum(data.astype(np.uint32), top) * 255 + top // 2) // top).astype(np.uint8)


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
    max_pixels: int = MAX_PIXELS,
) -> ImageData:
    """Read an image file with its channels, bit depth and microns per pixel.

    Parameters
    ----------
    source : path, bytes or binary file object
        PNG, JPEG or TIFF/OME-TIFF/ImageJ hyperstack: 8- or 16-bit (12-bit data in 16-bit
        words are recognised), RGB, RGBA, grey, palette, or up to :data:`MAX_CHANNELS`
        fluorescence planes (CYX).
    name : str, optional
        Display name; defaults to the file name.
    mpp : float, optional
        Microns per pixel given by the user; overrides the file's metadata.
    max_pixels : int
        Refuse images with more pixels (H x W) than this.

    Returns
    -------
    ImageData
        ``data`` (H, W, C) in the file's own dtype (uint8, uint16 or float32) with channel
        names (OME ``Channel Name``, ImageJ ``Labels``, else red/green/blue, grey or
        "channel i"); ``mpp`` from the user, else the OME ``PhysicalSizeX``, TIFF
        ``XResolution``/``ResolutionUnit`` or Aperio ``MPP`` tags, else None.

    Raises
    ------
    ImageReadError
        If the bytes are empty, not an image, truncated, too large, or of an unsupported
        layout (e.g. a z-stack or time series).
    InputError
        If ``mpp`` is given but implausible.
    """
    data, name = _read_bytes(source, name)
    if not data:
        raise ImageReadError(f"{name}: the file is empty (0 bytes); upload the image file itself")
    digest = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    is_tiff = data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    channel_names = None
    if is_tiff:
        array, file_mpp, mpp_source, channel_names, alpha = _read_tiff(data, name, max_pixels)
    else:
        array, alpha = _read_pil(data, name, max_pixels)
        file_mpp, mpp_source = None, "none"
    array, channel_names, bits = normalise_array(array, notes, channel_names, alpha)
    if mpp is not None:
        file_mpp, mpp_source = check_mpp(mpp), "user"
    return ImageData(array, file_mpp, name, digest, mpp_source, notes, channel_names, bits)


def _read_bytes(source, name):
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageReadError(f"{path}: no such file")
        return path.read_bytes(), name or path.name
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "image"
    data = source.read()
    return data, name or getattr(source, "name", "image")


def _read_pil(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, bool]:
    """(array, last channel is alpha) of a PNG/JPEG/other file PIL reads."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_io.BytesIO(data)) as im:
                if im.width * im.height > max_pixels:
                    raise ImageReadError(_too_large(name, im.width, im.height, max_pixels))
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                im.load()
                return np.asarray(im), im.mode in ("RGBA", "LA", "PA", "La", "RGBa")
    except ImageReadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageReadError(
            f"{name}: the image is larger than the {max_pixels / 1e6:.0f} megapixels accepted; crop a region of "
            "interest or downsample it"
        ) from err
    except UnidentifiedImageError as err:
        raise ImageReadError(
            f"{name}: this file is not an image TILscope can read; upload a PNG, JPEG, BMP or TIFF / OME-TIFF file"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{name}: the image data is damaged or truncated ({err}); export it again") from err


def _read_tiff(data: bytes, name: str, max_pixels: int):
    """(array (H, W[, C]), mpp, mpp source, channel names or None, last channel is alpha)."""
    import tifffile

    try:
        with tifffile.TiffFile(_io.BytesIO(data)) as tif:
            series = tif.series[0]
            shape = series.shape
            page = tif.pages[0]
            axes = series.axes
            h = page.imagelength
            w = page.imagewidth
            if h * w > max_pixels:
                raise ImageReadError(_too_large(name, w, h, max_pixels))
            if int(np.prod(shape)) > max_pixels * MAX_CHANNELS:
                raise ImageReadError(
                    f"{name}: TIFF of shape {tuple(shape)} (axes {axes}) holds more planes than the "
                    f"{MAX_CHANNELS} channels accepted; export one plane or one marker panel"
                )
            array = series.asarray()
            mpp, source = _tiff_mpp(tif, page)
            # an RGB-photometric TIFF is a colour image whatever its plane labels say
            names = None if page.photometric == tifffile.PHOTOMETRIC.RGB else _tiff_channel_names(tif)
            alpha = bool(page.extrasamples) and int(page.extrasamples[0]) in (1, 2)
            if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
                cmap = np.asarray(page.colormap)
                array = (cmap[:, array].transpose(1, 2, 0) // 257).astype(np.uint8)
                axes = "YXS"
                shape = array.shape
    except ImageReadError:
        raise
    except Exception as err:  # tifffile raises many types for damaged files
        raise ImageReadError(f"{name}: the TIFF is damaged or unsupported ({err}); export it again") from err
    return _tiff_to_yxc(array, axes, shape, name), mpp, source, names, alpha


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


def _tiff_to_yxc(array: np.ndarray, axes: str, shape, name: str) -> np.ndarray:
    """Reduce a TIFF series to (H, W) or (H, W, C) by dropping singleton axes."""
    array = np.asarray(array)
    keep = []
    for i, ax in enumerate(axes):
        if array.shape[i] == 1 and ax not in "YX":
            continue
        keep.append(i)
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


def _tiff_mpp(tif, page) -> tuple[float | None, str]:
    if tif.is_ome and tif.ome_metadata:
        match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        if match:
            unit_match = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            factor = _UNIT_TO_UM.get(unit_match.group(1) if unit_match else "µm")
            if factor is not None:
                mpp = float(match.group(1)) * factor
                if _plausible(mpp):
                    return mpp, "ome"
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num:
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
    match = re.search(r"MPP\s*=\s*([0-9.]+)", desc)  # Aperio ImageDescription
    if match and _plausible(float(match.group(1))):
        return float(match.group(1)), "tiff-description"
    return None, "none"


def _plausible(mpp: float) -> bool:
    lo, hi = PLAUSIBLE_MPP_RANGE
    return bool(np.isfinite(mpp) and lo <= mpp <= hi)


def _too_large(name, w, h, max_pixels):
    return (
        f"{name}: {w} x {h} px ({w * h / 1e6:.0f} megapixels) is more than the {max_pixels / 1e6:.0f} "
        "megapixels accepted; crop a region of interest or downsample it"
    )


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
        uint8 and uint16 unchanged; bool → uint8 0/255; float → float32 (clipped to [0, 1]
        with a note when outside); other integer types → uint16 (clipped to 0-65535) when
        non-negative, else refused.
    channel_names : tuple of str or None (default names)
    significant_bits : int or None (float data)

    Raises
    ------
    ImageReadError
        For an empty image or negative integer values.
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
    elif np.issubdtype(a.dtype, np.floating):
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        finite = np.nan_to_num(a)
        if finite.min() < 0 or finite.max() > 1:
            notes.append("floating-point image clipped to [0, 1]")
        a = np.clip(finite, 0.0, 1.0)
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
