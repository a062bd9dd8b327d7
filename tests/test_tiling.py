"""The two tilers (core.tiling): tiled equals untiled with analytic stub models (MONAI's test
habit), every output or cell from exactly one window or block."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from core.errors import InputError
from core.tiling import balanced_windows, detect_in_blocks, tile_dense, tile_starts


def _image(h=97, w=131, c=2, seed=0):
    return np.random.default_rng(seed).random((h, w, c)).astype(np.float32)


@pytest.mark.parametrize("tile, overlap", [(32, 8), (40, 16), (200, 10)])
def test_dense_linear_blend_equals_one_pass(tile, overlap):
    img = _image()
    calls = []

    def pointwise(x):
        calls.append(x.shape)
        return np.concatenate([x + 1, x**2], axis=2)

    whole = np.concatenate([img + 1, img**2], axis=2)
    out = tile_dense(pointwise, img, tile, overlap, blend="linear")
    assert out.shape == (97, 131, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, whole, rtol=1e-6, atol=1e-6)
    if tile < 97:
        assert len(calls) > 1 and all(s[:2] == (tile, tile) for s in calls)  # full-size windows, the last shifted back


@pytest.mark.parametrize("length", [1, 100, 1024, 1025, 2048, 2100, 3001, 10_000])
def test_balanced_windows_cover_with_the_overlap_in_fewer_pixels(length):
    size, starts = balanced_windows(length, 1024, 64, 16)
    assert starts[0] == 0 and starts[-1] + size == length and size <= 1024
    assert len(starts) == len(tile_starts(length, 1024, 64)) or length <= 1024  # never more windows
    assert all(b - a <= size - 64 for a, b in zip(starts, starts[1:]))  # each seam overlaps by >= 64 px
    if len(starts) > 1:
        assert size % 16 == 0 and len(starts) * size <= 1.15 * length
    assert balanced_windows(2048, 1024, 64, 16) == (736, [0, 656, 1312])  # full windows: 3 x 1024 = 2.25x the pixels


def test_balanced_dense_tiling_equals_one_pass_with_smaller_windows():
    img = _image(300, 211)
    calls = []

    def pointwise(x):
        calls.append(x.shape[:2])
        return np.concatenate([x + 1, x**2], axis=2)

    out = tile_dense(pointwise, img, 128, 16, blend="linear", balance=True, multiple_px=8)
    np.testing.assert_allclose(out, np.concatenate([img + 1, img**2], axis=2), rtol=1e-6, atol=1e-6)
    assert len(calls) == len(tile_starts(300, 128, 16)) * len(tile_starts(211, 128, 16))
    assert all(h % 8 == 0 and w % 8 == 0 and h <= 128 and w <= 128 for h, w in calls)
    assert sum(h * w for h, w in calls) < 0.85 * len(calls) * 128 * 128


def test_dense_linear_blend_weights_sum_to_one_and_blend_the_seams():
    """Windows that disagree are blended across the overlap, not cut: the weights are ramps summing to 1."""
    img = np.zeros((1, 100, 1), np.float32)
    seen = []

    def window_id(x):
        seen.append(1)
        return np.full(x.shape[:2] + (1,), float(len(seen)), np.float32)

    out = tile_dense(window_id, img, 60, 20, blend="linear")[0, :, 0]
    assert out[0] == 1 and out[-1] == 2
    seam = out[40:60]
    assert np.all(np.diff(seam) > 0) and 1 < seam.mean() < 2  # a ramp from window 1 to window 2


def test_dense_valid_geometry_without_blend_equals_one_pass():
    """A valid convolution (field 5, stride 2) tiled on its output grid equals the one-pass result."""
    img = np.random.default_rng(3).integers(0, 10, (61, 47)).astype(np.float32)  # integer sums are exact

    def net(x):  # sum over a 5 x 5 field at stride 2
        x = x[..., 0] if x.ndim == 3 else x
        s = ndi.uniform_filter(x.astype(np.float64), 5, mode="constant")[2:-2:2, 2:-2:2] * 25
        return s[..., None].astype(np.float32)

    whole = net(img)
    windows = []
    out = tile_dense(lambda w: (windows.append(w.shape), net(w))[1], img[..., None], 14, blend="none",
                     stride_px=2, field_px=5, progress=None)
    assert out.shape == whole.shape == ((61 - 5) // 2 + 1, (47 - 5) // 2 + 1, 1)
    assert len(windows) == 5 * 4  # a 29 x 22 output grid in 7 x 7 windows, the last ones smaller
    np.testing.assert_array_equal(out, whole)


def test_dense_progress_and_bad_settings():
    img = _image(50, 50, 1)
    calls = []
    tile_dense(lambda x: x, img, 20, 5, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] == len(calls) == 9
    with pytest.raises(InputError, match="larger than the overlap"):
        tile_dense(lambda x: x, img, 10, 10)
    with pytest.raises(InputError, match="unknown blend"):
        tile_dense(lambda x: x, img, 20, 5, blend="gaussian")


def _blobs(h=150, w=170, n=60, seed=1):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for x, y in zip(rng.uniform(0, w, n), rng.uniform(0, h, n)):
        yy, xx = np.mgrid[:h, :w]
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
    return img[..., None]


def _maxima(window):
    """Analytic detector: local maxima above 0.5 in a 5 x 5 window, with the value as a column and map."""
    v = window[..., 0]
    peaks = (v == ndi.maximum_filter(v, 5, mode="nearest")) & (v > 0.5)
    yy, xx = np.nonzero(peaks)
    return np.stack([xx, yy], 1).astype(float), {"value": v[yy, xx]}, v * 2


@pytest.mark.parametrize("tile", [37, 64, 1000])
def test_cell_blocks_equal_one_pass_and_each_cell_once(tile):
    img = _blobs()
    whole_xy, whole_cols, whole_map = _maxima(img)
    xy, cols, dense = detect_in_blocks(_maxima, img, tile, margin_px=6)
    assert len(xy) == len(whole_xy) > 20
    order, whole_order = np.lexsort(xy.T), np.lexsort(whole_xy.T)
    np.testing.assert_array_equal(xy[order], whole_xy[whole_order])
    np.testing.assert_array_equal(cols["value"][order], whole_cols["value"][whole_order])
    assert len(np.unique(xy, axis=0)) == len(xy)  # no cell twice
    np.testing.assert_array_equal(dense, whole_map)


def test_cell_blocks_without_context_differ():
    """The margin matters: without context, maxima at block seams are found twice or wrongly."""
    img = _blobs()
    whole_xy = _maxima(img)[0]
    xy, _, _ = detect_in_blocks(_maxima, img, 37, margin_px=0)
    assert len(xy) != len(whole_xy) or not np.array_equal(np.sort(xy, 0), np.sort(whole_xy, 0))
