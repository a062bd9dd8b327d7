"""The two tilers every scenario runs large images through.

- :func:`tile_dense`: a dense map computed window by window and stitched, with linear
  ramps across the overlaps (MONAI ``sliding_window_inference``) or, for a network whose
  windows carry their whole receptive field, without blending (each output comes from
  exactly one window).
- :func:`detect_in_blocks`: cell detection in blocks with context (stardist ``big.py``):
  each block is a core tile plus a margin wider than the network's receptive field and
  the post-processing footprint; cells are detected in the whole block and kept only when
  their centroid lies in the block's core, so each cell belongs to exactly one block.

Memory stays bounded by one window whatever the image size (plus the stitched map).
Progress is reported through a ``progress(done, total)`` callable, so ``core`` needs no UI.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from core.errors import InputError

#: ``progress(done, total)`` callback; ``core`` never imports a UI.
Progress = Callable[[int, int], None]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of size ``tile`` covering ``length`` with at least ``overlap``.

    Returns
    -------
    list of int, first 0, last ``length - tile`` (a single 0 when ``length <= tile``).
    """
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def balanced_windows(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """The fewest windows of at most ``tile`` covering ``length`` with at least ``overlap``, as small and as evenly spaced as that allows.

    :func:`tile_starts` keeps every window at ``tile`` and shifts the last one back to the
    border, so an image a little longer than a multiple of the step gets a nearly redundant
    window (2048 px in 1024 px windows with 64 px overlap: 3 windows of 1024, 2.25 times the
    pixels). Here the same number of windows shrinks to the size that still overlaps by
    ``overlap`` (2048 px: 3 windows of 736 px at ``multiple`` 16, 1.08 times the pixels).

    Parameters
    ----------
    length, tile : int >= 1, px; overlap : int >= 0, px, smaller than ``tile``
    multiple : int >= 1, window sizes are rounded up to a multiple of this (e.g. a U-Net's 2^depth),
        never above ``tile`` nor ``length``

    Returns
    -------
    size : int, the window side (``length`` when one window covers it)
    starts : list of int, first 0, last ``length - size``; consecutive windows overlap by at least ``overlap``
    """
    if length <= tile:
        return length, [0]
    step = tile - overlap
    n = -(-(length - overlap) // step)  # windows of ``tile`` needed
    size = -(-(length + (n - 1) * overlap) // n)
    size = min(tile, -(-size // multiple) * multiple)
    gap = (length - size) / (n - 1)
    if int(np.ceil(gap)) > size - overlap:  # rounding of the starts: fall back to full windows
        size, gap = tile, (length - tile) / (n - 1)
    return size, [int(round(i * gap)) for i in range(n)]


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """(n,) blending weight: linear ramps of ``overlap`` px at inner edges, 1 elsewhere."""
    w = np.ones(n, np.float64)
    r = min(overlap, n // 2)
    if r > 0:
        ramp = (np.arange(r) + 0.5) / r
        if not at_start:
            w[:r] = ramp
        if not at_end:
            w[n - r :] = ramp[::-1]
    return w


def tile_dense(
    infer: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile_px: int,
    overlap_px: int = 0,
    *,
    blend: str = "linear",
    stride_px: int = 1,
    field_px: int = 1,
    balance: bool = False,
    multiple_px: int = 1,
    progress: Progress | None = None,
) -> np.ndarray:
    """Apply a dense model window by window and stitch the outputs (the dense-map tiler).

    The network maps an input window of ``field_px + stride_px * (n - 1)`` pixels to ``n``
    outputs per side (a same-size network: ``stride_px = field_px = 1``; a valid
    convolution of a 70 px field at stride 8: 8 and 70). Windows are laid out on the output
    grid of ``(H - field_px) // stride_px + 1`` rows and as many columns.

    Parameters
    ----------
    infer : callable
        (h, w, C) window of ``image`` → (n_h, n_w, K) float32 outputs.
    image : (H, W, C) array
    tile_px : int
        Window side in input pixels (``tile_px // stride_px`` outputs).
    overlap_px : int >= 0
        Overlap of neighbouring windows in input pixels.
    blend : {"linear", "none"}
        ``"linear"``: windows of full size, the last one shifted back to the border
        (:func:`tile_starts`), outputs weighted by linear ramps across the overlaps (weights
        sum to 1). ``"none"``: the output grid is partitioned into windows (the last ones
        smaller) and each output is taken from its one window: for networks whose outputs do
        not depend on where a window starts.
    stride_px, field_px : int >= 1
    balance : bool
        With ``"linear"`` blending of a same-size network: the fewest windows, shrunk and spread
        evenly (:func:`balanced_windows`) instead of full windows with the last shifted back.
    multiple_px : int >= 1, with ``balance``: window sides are multiples of this (the network's size multiple)
    progress : callable(done, total), optional

    Returns
    -------
    (H_out, W_out, K) float32

    Raises
    ------
    InputError
        If the window is not larger than the overlap, or ``blend`` is unknown.
    """
    h, w = image.shape[:2]
    gh, gw = (h - field_px) // stride_px + 1, (w - field_px) // stride_px + 1
    tile = max(1, tile_px // stride_px)
    overlap = overlap_px // stride_px
    if blend == "none":
        tile_h = tile_w = tile
        ys, xs = list(range(0, gh, tile)), list(range(0, gw, tile))
    elif blend == "linear":
        if tile <= overlap:
            raise InputError(f"tile ({tile_px} px) must be larger than the overlap ({overlap_px} px)")
        if balance and stride_px == 1 and field_px == 1:
            tile_h, ys = balanced_windows(gh, tile, overlap, multiple_px)
            tile_w, xs = balanced_windows(gw, tile, overlap, multiple_px)
        else:
            tile_h, ys = tile, tile_starts(gh, tile, overlap)
            tile_w, xs = tile, tile_starts(gw, tile, overlap)
    else:
        raise InputError(f"unknown blend {blend!r}; use 'linear' or 'none'")
    out = weight = None
    total, done = len(ys) * len(xs), 0
    for y in ys:
        for x in xs:
            th, tw = min(tile_h, gh - y), min(tile_w, gw - x)
            window = image[stride_px * y : stride_px * (y + th - 1) + field_px, stride_px * x : stride_px * (x + tw - 1) + field_px]
            res = np.asarray(infer(window))
            if res.shape[:2] != (th, tw):
                raise ValueError(f"the network gave {res.shape[:2]} outputs for a window of {(th, tw)}")
            if blend == "none":
                if out is None:
                    out = np.zeros((gh, gw, res.shape[2]), np.float32)
                out[y : y + th, x : x + tw] = res
            else:
                if out is None:
                    out = np.zeros((gh, gw, res.shape[2]), np.float64)
                    weight = np.zeros((gh, gw, 1), np.float64)
                wy = _ramp(th, overlap, y == 0, y + th >= gh)
                wx = _ramp(tw, overlap, x == 0, x + tw >= gw)
                wt = (wy[:, None] * wx[None, :])[..., None]
                out[y : y + th, x : x + tw] += res.astype(np.float64) * wt
                weight[y : y + th, x : x + tw] += wt
            done += 1
            if progress is not None:
                progress(done, total)
    if blend == "none":
        return out
    return (out / np.maximum(weight, 1e-12)).astype(np.float32)


def detect_in_blocks(
    detect: Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]],
    image: np.ndarray,
    tile_px: int,
    margin_px: int,
    *,
    progress: Progress | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Detect cells block by block; each cell belongs to exactly one block (the cell tiler).

    Blocks are core tiles of ``tile_px`` on a regular grid (the last ones smaller), each
    read with ``margin_px`` of context on every side that the image has. A cell is kept
    when its centroid lies in the block's core: ``x0 <= x < x0 + tile_px`` (likewise y).
    With a margin wider than the network's receptive field and the post-processing
    footprint the tiled result equals the untiled one.

    Parameters
    ----------
    detect : callable
        (h, w, C) block with context → ``(xy, columns, dense)``: (N, 2) float centroids
        x, y in the block's pixels; per-cell arrays of length N; an (h, w[, K]) map of the
        block, or None.
    image : (H, W, C) array
    tile_px, margin_px : int > 0, >= 0
    progress : callable(done, total), optional

    Returns
    -------
    xy : (N, 2) float64 centroids in pixels of ``image``
    columns : dict of str to (N,) arrays, concatenated over blocks
    dense : (H, W[, K]) float32 map stitched from the blocks' cores, or None
    """
    h, w = image.shape[:2]
    t, m = tile_px, margin_px
    blocks = [(y, x) for y in range(0, h, t) for x in range(0, w, t)]
    out_xy: list[np.ndarray] = []
    out_cols: dict[str, list[np.ndarray]] = {}
    dense = None
    for n, (y0, x0) in enumerate(blocks):
        wy0, wx0 = max(0, y0 - m), max(0, x0 - m)
        wy1, wx1 = min(h, y0 + t + m), min(w, x0 + t + m)
        xy, columns, block_map = detect(image[wy0:wy1, wx0:wx1])
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        gx, gy = xy[:, 0] + wx0, xy[:, 1] + wy0
        own = (gx >= x0) & (gx < x0 + t) & (gy >= y0) & (gy < y0 + t)
        out_xy.append(np.stack([gx[own], gy[own]], axis=1))
        for k, v in columns.items():
            out_cols.setdefault(k, []).append(np.asarray(v)[own])
        if block_map is not None:
            if dense is None:
                dense = np.zeros((h, w) + block_map.shape[2:], np.float32)
            cy1, cx1 = min(h, y0 + t), min(w, x0 + t)
            dense[y0:cy1, x0:cx1] = block_map[y0 - wy0 : cy1 - wy0, x0 - wx0 : cx1 - wx0]
        if progress is not None:
            progress(n + 1, len(blocks))
    xy = np.concatenate(out_xy) if out_xy else np.zeros((0, 2))
    return xy, {k: np.concatenate(v) for k, v in out_cols.items()}, dense
