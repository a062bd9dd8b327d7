"""The CD3 CNN: layouts, dense = sliding window, NMS on known peaks."""

import numpy as np
import pytest
import torch

from core.nets.cd3_cnn import CD3CNN
from core.scenarios.registry import get_scenario
from core.scenarios.cd3_ihc import CD3IHCModel


def _random_model(seed=0):
    torch.manual_seed(seed)
    net = CD3CNN("compact")
    meta = {"layout": "compact", "normalization_mean": "[0.5, 0.5, 0.5]", "normalization_std": "[0.25, 0.25, 0.25]",
            "threshold": "0.5", "nms_radius_um": "4.0"}
    return CD3IHCModel(get_scenario("cd3-ihc"), torch.device("cpu"), net.state_dict(), meta)


def test_paper_layout_matches_the_paper():
    net = CD3CNN("paper").eval()
    first_dense = net.head[1]
    assert first_dense.in_features == 9 * 9 * 256 and first_dense.out_features == 2048
    assert 42e6 < first_dense.weight.numel() < 43e6  # "about 42 M weights"
    assert net(torch.zeros(2, 3, 70, 70)).shape == (2, 2)
    assert not net.fully_convolutional


def test_compact_layout_patch_and_field_shapes():
    net = CD3CNN("compact").eval()
    assert net.fully_convolutional
    assert net(torch.zeros(3, 3, 70, 70)).shape == (3, 2)
    assert net(torch.zeros(1, 3, 70 + 8 * 5, 70 + 8 * 9)).shape == (1, 2, 6, 10)
    assert sum(p.numel() for p in net.parameters()) < 2_000_000


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="compact"):
        CD3CNN("huge")


def test_dense_map_equals_per_window_classification():
    model = _random_model()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (150, 131, 3), dtype=np.uint8)
    prob = model.probability_map(image)
    assert prob.shape == (19, 17) and prob.dtype == np.float32
    padded = np.pad(image, ((35, 8 * 18 + 70 - 150 - 35), (35, 8 * 16 + 70 - 131 - 35), (0, 0)), mode="reflect")
    windows = np.stack([padded[8 * i : 8 * i + 70, 8 * j : 8 * j + 70] for i in range(19) for j in range(17)])
    np.testing.assert_allclose(prob, model.classify_patches(windows).reshape(19, 17), atol=1e-5)


def test_dense_map_blocks_equal_one_pass():
    model = _random_model(2)
    image = np.random.default_rng(3).integers(0, 256, (200, 210, 3), dtype=np.uint8)
    assert model.tile_px == 768  # the registry's 153.6 µm at 0.2 µm/px: 96 windows of 8 px
    whole = model.probability_map(image)
    model.tile_px = 8 * 7  # blocks of 7 x 7 windows
    calls = []
    tiled = model.probability_map(image, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert calls[-1][0] == calls[-1][1] == 16


def test_inference_is_deterministic():
    model = _random_model()
    image = np.random.default_rng(4).integers(0, 256, (90, 90, 3), dtype=np.uint8)
    np.testing.assert_array_equal(model.probability_map(image), model.probability_map(image))


def test_nms_on_known_peaks():
    model = _random_model()
    prob = np.zeros((40, 40), np.float32)
    peaks = [(5, 5), (5, 20), (30, 12)]
    for i, j in peaks:
        prob[i - 1 : i + 2, j - 1 : j + 2] = 0.7  # a plateau around each cell, as a CNN gives
        prob[i, j] = 0.95
    xy, p = model.detect(prob, threshold=0.5, nms_radius_px=20.0)
    assert len(xy) == 3
    expected = sorted((8 * j - 0.5, 8 * i - 0.5) for i, j in peaks)
    np.testing.assert_allclose(sorted(map(tuple, xy)), expected, atol=1e-6)
    assert np.all(p == pytest.approx(0.95))
    xy, _ = model.detect(prob, threshold=0.99, nms_radius_px=20.0)
    assert len(xy) == 0
    # the v1 weights' square-box NMS finds the same cells
    xy, _ = model.detect_boxes(prob, threshold=0.5, box_px=30.0, iou=0.15)
    np.testing.assert_allclose(sorted(map(tuple, xy)), expected, atol=1e-6)


def test_radius_nms_keeps_cells_just_beyond_the_radius():
    """Two peaks 3 grid steps (24 px) apart: one cell with a 24 px radius, two with 23 px."""
    from core.scenarios.cd3_ihc import suppress_within_radius

    prob = np.zeros((10, 10), np.float32)
    prob[5, 2], prob[5, 5] = 0.9, 0.8
    ii, jj = suppress_within_radius(prob, 0.5, 24.0)
    assert list(zip(ii, jj)) == [(5, 2)]
    ii, jj = suppress_within_radius(prob, 0.5, 23.0)
    assert list(zip(ii, jj)) == [(5, 2), (5, 5)]  # by decreasing probability
    ii, _ = suppress_within_radius(prob, 0.5, 0.0)
    assert len(ii) == 2
    with pytest.raises(ValueError, match="radius"):
        suppress_within_radius(prob, 0.5, -1.0)


def test_operating_point_comes_from_the_metadata():
    model = _random_model()
    assert model.operating_point["threshold"] == 0.5 and model.operating_point["nms_radius_um"] == 4.0
    from core.errors import WeightsError

    torch.manual_seed(0)
    meta = {"layout": "compact", "normalization_mean": "[0.5, 0.5, 0.5]", "normalization_std": "[0.25, 0.25, 0.25]"}
    with pytest.raises(WeightsError, match="metadata"):  # no threshold: no silent default
        CD3IHCModel(get_scenario("cd3-ihc"), torch.device("cpu"), CD3CNN("compact").state_dict(), meta)
