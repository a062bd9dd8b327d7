"""Whole-image CD3 detection with the shipped weights, on real IHC."""

import numpy as np
import pytest
from skimage.transform import rescale

from core.analysis import analyze
from core.evaluate import CD3_MATCH_RADIUS_UM
from core.io import ImageData
from core.metrics import detection_metrics, match_points
from core.mosaic import build_mosaic
from core.samples import get_sample


def test_mosaic_of_held_out_patches_recall_and_precision(cd3_model, cd3_table):
    mosaic = build_mosaic(cd3_table[cd3_table.split == "validation"], 8, 10, seed=7)
    result = analyze(ImageData(mosaic.pixels, 0.2, "mosaic", "", "user"), "cd3-ihc", model=cd3_model)
    m = detection_metrics(result.cells[["x_px", "y_px"]].to_numpy(), mosaic.positive_xy, CD3_MATCH_RADIUS_UM / 0.2)
    assert m["recall"] >= 0.9, m
    assert m["precision"] >= 0.9, m


def test_bundled_sample_against_its_truth(cd3_model):
    sample = get_sample("cd3-mosaic")
    result = analyze(sample.load(), "cd3-ihc", model=cd3_model)
    m = detection_metrics(result.cells[["x_px", "y_px"]].to_numpy(), sample.truth_xy(), CD3_MATCH_RADIUS_UM / 0.2)
    assert m["f1"] >= 0.9, m


def test_membranous_dab_colon_ihc_gives_few_lymphocytes(cd3_model):
    """scikit-image's real colon IHC (DAB on epithelium, no CD3): a specificity check."""
    result = analyze(get_sample("skimage-ihc").load(), "cd3-ihc", model=cd3_model)
    density = result.summary["density_per_mm2"]["cd3-positive"]
    assert density < 150, f"{result.summary['n_cells']} cells, {density:.0f} cells/mm² on a CD3-negative image"


def test_same_tissue_at_two_mpp_gives_same_um_and_mm2(cd3_model):
    sample = get_sample("cd3-mosaic")
    fine = sample.load()
    coarse_px = np.clip(rescale(fine.pixels, 0.5, channel_axis=2, anti_aliasing=True, preserve_range=True) + 0.5, 0, 255)
    coarse = ImageData(coarse_px.astype(np.uint8), 0.4, "coarse", "", "user")
    a = analyze(fine, "cd3-ihc", model=cd3_model)
    b = analyze(coarse, "cd3-ihc", model=cd3_model)
    assert b.summary["area_mm2"] == pytest.approx(a.summary["area_mm2"], rel=1e-6)
    da, db = a.summary["density_per_mm2"]["cd3-positive"], b.summary["density_per_mm2"]["cd3-positive"]
    assert db == pytest.approx(da, rel=0.15)
    ia, ib = match_points(a.cells[["x_um", "y_um"]].to_numpy(), b.cells[["x_um", "y_um"]].to_numpy(), 3.0)
    assert len(ia) >= 0.8 * min(len(a.cells), len(b.cells))
