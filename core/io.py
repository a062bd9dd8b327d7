"""Read microscope images and their pixel size (microns per pixel, mpp).

The boundary where every layout is normalised once: after :func:`load_image` an
image is (H, W, 3) uint8 RGB, whatever the file held (8/16-bit, grey, RGBA,
palette; PNG, JPEG, TIFF, OME-TIFF).
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


@dataclass
class ImageData:
    """An image ready for analysis.

    Attributes
    ----------
    pixels : (H, W, 3) uint8 ndarray
        RGB, brightfield or a false-colour rendering of fluorescence.
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
    """

    pixels: np.ndarray
    mpp: float | None
    name: str
    sha256: str
    mpp_source: str = "none"
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return self.pixels.shape[0], self.pixels.shape[1]

    def with_mpp(self, mpp: float | None, source: str = "user") -> "ImageData":
        """Return a copy with ``mpp`` set (validated by :func:`check_mpp`)."""
        if mpp is None:
            return ImageData(self.pixels, None, self.name, self.sha256, "none", list(self.notes))
        return ImageData(self.pixels, check_mpp(mpp), self.name, self.sha256, source, list(self.notes))


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
    """Read an image file into (H, W, 3) uint8 RGB with its microns per pixel.

    Parameters
    ----------
    source : path, bytes or binary file object
        PNG, JPEG or TIFF/OME-TIFF (8- or 16-bit; RGB, RGBA, grey or palette).
    name : str, optional
        Display name; defaults to the file name.
    mpp : float, optional
        Microns per pixel given by the user; overrides the file's metadata.
    max_pixels : int
        Refuse images with more pixels than this.

    Returns
    -------
    ImageData
        ``pixels`` (H, W, 3) uint8 RGB; ``mpp`` from the user, else the OME
        ``PhysicalSizeX`` or TIFF ``XResolution``/``ResolutionUnit`` tags, else None.

    Raises
    ------
    ImageReadError
        If the bytes are empty, not an image, truncated, too large, or of an
        unsupported layout (e.g. a multi-channel fluorescence stack of more than 4 channels).
    InputError
        If ``mpp`` is given but implausible.
    """
    data, name = _read_bytes(source, name)
    if not data:
        raise ImageReadError(f"{name}: the file is empty (0 bytes); upload the image file itself")
    digest = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    is_tiff = data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    if is_tiff:
        array, file_mpp, mpp_source = _read_tiff(data, name, max_pixels)
    else:
        array = _read_pil(data, name, max_pixels)
        file_mpp, mpp_source = None, "none"
    pixels = to_rgb8(array, notes)
    if mpp is not None:
        file_mpp, mpp_source = check_mpp(mpp), "user"
    return ImageData(pixels, file_mpp, name, digest, mpp_source, notes)


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


def _read_pil(data: bytes, name: str, max_pixels: int) -> np.ndarray:
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
                return np.asarray(im)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageReadError(
            f"{name}: not a readable image ({type(err).__name__}); upload a PNG, JPEG or TIFF file"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{name}: the image data is damaged or truncated ({err}); export it again") from err


def _read_tiff(data: bytes, name: str, max_pixels: int):
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
            array = series.asarray()
            mpp, source = _tiff_mpp(tif, page)
            if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
                cmap = np.asarray(page.colormap)
                array = (cmap[:, array].transpose(1, 2, 0) // 257).astype(np.uint8)
                axes = "YXS"
    except ImageReadError:
        raise
    except Exception as err:  # tifffile raises many types for damaged files
        raise ImageReadError(f"{name}: the TIFF is damaged or unsupported ({err}); export it again") from err
    return _tiff_to_yxc(array, axes, shape, name), mpp, source


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
    if kept_axes in ("CYX", "SYX") and squeezed.shape[0] <= 4:
        return np.moveaxis(squeezed, 0, -1)
    raise ImageReadError(
        f"{name}: TIFF of shape {tuple(shape)} (axes {axes}) is not a single 2-D RGB or grey image; "
        "export one plane or an RGB rendering (multi-plane stacks are not supported yet)"
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


def to_rgb8(array: np.ndarray, notes: list[str] | None = None) -> np.ndarray:
    """Convert (H, W), (H, W, 1|2|3|4) integer or float arrays to (H, W, 3) uint8 RGB.

    16-bit data are scaled by 255/65535 (full range kept); float data in [0, 1]
    are scaled by 255; alpha is dropped; grey is repeated into three channels.

    Raises
    ------
    ImageReadError
        For an unsupported number of channels or an empty image.
    """
    notes = notes if notes is not None else []
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageReadError(f"expected a 2-D image, got an array of shape {array.shape}")
    channels = a.shape[2]
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
        notes.append("16-bit image scaled to 8 bits")
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5
        notes.append("floating-point image scaled from [0, 1] to 8 bits")
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, 255)
        notes.append(f"{a.dtype} image clipped to 0-255")
    else:
        raise ImageReadError(f"unsupported pixel type {a.dtype}")
    a = a.astype(np.uint8)
    if channels == 1:
        a = np.repeat(a, 3, axis=2)
        notes.append("grey image repeated into RGB")
    elif channels == 2:
        a = np.repeat(a[..., :1], 3, axis=2)
        notes.append("grey + alpha image: alpha channel dropped")
    elif channels == 4:
        a = a[..., :3]
        notes.append("RGBA image: alpha channel dropped")
    elif channels != 3:
        raise ImageReadError(
            f"expected an RGB or grey image, got {channels} channels; export an RGB rendering"
        )
    return np.ascontiguousarray(a)
