"""Writing pyramidal, tiled JPEG OME-TIFF slides: test and benchmark slides of any size in seconds.

A slide of 40 000 x 40 000 px that is mostly glass is written in well under a second and
takes a few hundred kB: every run of consecutive blank (glass) tiles points at one stored
copy of the blank tile (TIFF tiles are addressed by offset, so tiles may share their bytes),
and only the tiles a ``render`` callable draws are encoded. Levels are OME SubIFDs, as
Bio-Formats and QuPath write them. tifffile writes the file; imagecodecs encodes the JPEG
tiles exactly as tifffile would (YCbCr, 2 x 2 chroma subsampling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["write_pyramid_tiff", "GLASS_RGB"]

#: Colour of blank glass in the synthetic slides.
GLASS_RGB = (243, 243, 241)

#: ``render(downsample, x0, y0, width, height)`` → (height, width, 3) uint8 RGB of the level's
#: pixels [x0, x0 + width) x [y0, y0 + height), or None where the tile is all glass.
Render = Callable[[float, int, int, int, int], "np.ndarray | None"]


def write_pyramid_tiff(path: str | Path, width_px: int, height_px: int, mpp: float | None, render: Render, *,
                       tile_px: int = 512, downsamples: tuple[int, ...] = (1, 4, 16, 64), quality: int = 90,
                       glass_rgb: tuple[int, int, int] = GLASS_RGB) -> Path:
    """Write a tiled, pyramidal JPEG OME-TIFF.

    Parameters
    ----------
    path : path, should end in ``.ome.tif``
    width_px, height_px : int, level-0 size in pixels
    mpp : float or None, µm per level-0 pixel (OME ``PhysicalSizeX/Y`` and the resolution
        tags); None writes no pixel size
    render : callable(downsample, x0, y0, width, height) → (height, width, 3) uint8 or None
        Draws one tile of a level (pixel coordinates of that level); None for all glass.
    tile_px : int, multiple of 16
    downsamples : level downsamples, the first 1; level ``i`` is ``ceil(W / d_i)`` wide
    quality : JPEG quality 1-100
    glass_rgb : colour of the blank tiles

    Returns
    -------
    Path of the file written
    """
    import imagecodecs
    import tifffile

    path = Path(path)

    def encode(a: np.ndarray) -> bytes:
        return imagecodecs.jpeg_encode(a, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))

    blank = np.empty((tile_px, tile_px, 3), np.uint8)
    blank[:] = glass_rgb
    blank_bytes = encode(blank)

    def tiles(d: float, w: int, h: int):
        ny, nx = -(-h // tile_px), -(-w // tile_px)
        drawn = {}
        for ty in range(ny):
            for tx in range(nx):
                x0, y0 = tx * tile_px, ty * tile_px
                tw, th = min(tile_px, w - x0), min(tile_px, h - y0)
                a = render(d, x0, y0, tw, th)
                if a is not None:
                    full = blank.copy()
                    full[:th, :tw] = a
                    drawn[ty * nx + tx] = encode(full)
        n = ny * nx
        for i in range(n):
            if i in drawn:
                b = drawn.pop(i)
                yield b, len(b)
            elif i + 1 < n and (i + 1) not in drawn:
                # a blank tile followed by another blank: its offset is where the run's one copy is written
                yield b"", len(blank_bytes)
            else:
                yield blank_bytes, len(blank_bytes)

    kwargs = dict(dtype=np.uint8, tile=(tile_px, tile_px), photometric="rgb", compression="jpeg")
    meta = {}
    res = {}
    if mpp is not None:
        meta = {"PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(tiles(1, width_px, height_px), shape=(height_px, width_px, 3), subifds=len(downsamples) - 1,
                  metadata=meta, **res, **kwargs)
        for d in downsamples[1:]:
            w, h = -(-width_px // d), -(-height_px // d)
            tif.write(tiles(d, w, h), shape=(h, w, 3), subfiletype=1, **kwargs)
    return path
