"""Synthetic tissue generator: determinism, Table 1 statistics, the concentration rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import InputError
from core.generator import (
    HE_MELANOMA,
    IF_MELANOMA,
    cell_concentrations,
    classify_concentrations,
    concentration_map,
    ellipse_coverage,
    generate,
)


@pytest.fixture(scope="module")
def if_sections():
    return [generate(IF_MELANOMA, (500, 500), seed) for seed in (11, 12, 13)]


@pytest.fixture(scope="module")
def he_sections():
    return [generate(HE_MELANOMA, (500, 500), seed) for seed in (21, 22)]


def test_same_seed_same_section_other_seed_other_section():
    a = generate("if-melanoma", (96, 128), seed=5)
    b = generate("if-melanoma", (96, 128), seed=5)
    c = generate("if-melanoma", (96, 128), seed=6)
    for name in ("clean", "noisy", "mask", "instance"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.cells.equals(b.cells)
    assert not np.array_equal(a.noisy, c.noisy)
    assert a.noisy.shape == (96, 128, 3) and a.noisy.dtype == np.float32
    assert a.mask.shape == (96, 128) and a.mask.dtype == np.float32
    assert a.instance.dtype == np.int32
    assert 0.0 <= a.noisy.min() and a.noisy.max() <= 1.0 and 0.0 <= a.clean.min() and a.clean.max() <= 1.0


def test_if_table1_counts_sizes_and_visible_nuclei(if_sections):
    nuclei = []
    for s in if_sections:
        counts = s.cells["type"].value_counts().to_dict()
        assert counts == {"tumour": 60, "immune": 40, "stroma": 40}
        for name, (lo, hi) in (("tumour", (20, 35)), ("immune", (8, 20)), ("stroma", (5, 15))):
            rows = s.cells[s.cells["type"] == name]
            for col in ("semi_axis_a_px", "semi_axis_b_px"):
                assert rows[col].between(lo, hi).all()
                assert rows[col].max() - rows[col].min() > 0.5 * (hi - lo)  # drawn over the range, not a constant
        assert not s.cells.loc[s.cells["type"] == "stroma", "nucleus_visible"].any()
        nuclei.append(s.cells.loc[s.cells["type"].isin(["tumour", "immune"]), "nucleus_visible"].to_numpy())
    share = np.concatenate(nuclei).mean()
    assert abs(share - 0.6) < 0.07, share  # 300 cells: standard error 0.028


def _cell_masks(section):
    for row in section.cells.itertuples():
        y0, x0, cov = ellipse_coverage(row.x_px, row.y_px, row.semi_axis_a_px, row.semi_axis_b_px, row.angle_rad, section.mask.shape)
        yield row, y0, x0, cov >= 0.5


def test_no_overlap_rules(if_sections, he_sections):
    for s, groups in ((if_sections[0], ("immune", "stroma")), (he_sections[0], ("immune", "tumour"))):
        count = np.zeros(s.mask.shape, np.int32)
        for row, y0, x0, inside in _cell_masks(s):
            if row.type in groups:
                count[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]] += inside
        assert count.max() == 1


def test_he_table1_voronoi_sizes_and_nuclei(he_sections):
    nuclei = []
    for s in he_sections:
        c = s.cells
        assert set(c["type"]) == {"tumour", "immune"}
        assert c.loc[c["type"] == "tumour", ["semi_axis_a_px", "semi_axis_b_px"]].stack().between(15, 25).all()
        assert c.loc[c["type"] == "immune", ["semi_axis_a_px", "semi_axis_b_px"]].stack().between(4, 8).all()
        # immune cells fill 2 of 7 regions: dense, most are classified; tumour cells fill 5
        assert (c["type"] == "immune").sum() > 150 and (c["type"] == "tumour").sum() > 30
        assert c.loc[c["type"] == "immune", "classified"].mean() > 0.6
        nuclei.append(c.loc[c["type"] == "tumour", "nucleus_visible"].to_numpy())
    assert abs(np.concatenate(nuclei).mean() - 0.6) < 0.12


def test_mask_paints_the_cells_of_their_class(if_sections):
    s = if_sections[0]
    lut = np.concatenate([[0.0], s.cells["mask_value"].to_numpy()])
    np.testing.assert_array_equal(s.mask, lut[s.instance].astype(np.float32))
    assert set(np.unique(s.mask)) <= {0.0, 0.5, 1.0}
    assert s.cells.loc[s.cells["type"] != "immune", "mask_value"].eq(0).all()
    assert set(s.cells.loc[s.cells["type"] == "immune", "mask_value"]) == {0.0, 0.5, 1.0}


def _lens_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs of radii r1, r2 with centres d apart."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a = r1 * r1 * math.acos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1))
    b = r2 * r2 * math.acos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2))
    c = 0.5 * math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))
    return a + b - c


def test_concentration_of_hand_made_layout_matches_geometry():
    """A tumour disc of radius 40 px; immune cells at known distances (scenario 1 rule)."""
    h = w = 300
    yy, xx = np.mgrid[0:h, 0:w]
    tumour = (xx - 150) ** 2 + (yy - 150) ** 2 <= 40**2
    r = IF_MELANOMA.radius_px
    distances = [0, 36, 45, 48, 54, 80]  # fractions about 1, 0.53, 0.32, 0.25, 0.13, 0
    xy = np.array([[150 + d, 150] for d in distances], float)
    conc = cell_concentrations(tumour, xy, r)
    expected = np.array([_lens_area(40, r, d) / (math.pi * r * r) for d in distances])
    np.testing.assert_allclose(conc, expected, atol=0.03)
    values = classify_concentrations(conc, IF_MELANOMA.threshold, IF_MELANOMA.half_band)
    want = classify_concentrations(expected, 0.4, (0.2, 0.4))
    np.testing.assert_array_equal(values, want)
    assert values[0] == 1.0 and values[-1] == 0.0 and 0.5 in values


def test_classification_thresholds_of_both_scenarios():
    conc = np.array([0.0, 0.19, 0.2, 0.3, 0.4, 0.41, 0.9])
    np.testing.assert_array_equal(classify_concentrations(conc, 0.4, (0.2, 0.4)), [0, 0, 0.5, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(classify_concentrations(conc, 0.2, None), [0, 0, 0, 1, 1, 1, 1])


def test_concentration_map_is_a_local_area_fraction():
    t = np.zeros((120, 120))
    t[:, 60:] = 1  # half plane
    m = concentration_map(t, 10)
    assert m[60, 20] == pytest.approx(0, abs=1e-6) and m[60, 100] == pytest.approx(1, abs=1e-6)
    assert m[60, 60] == pytest.approx(0.5, abs=0.05)
    # at the border the disc is truncated, the fraction is over its part inside the image
    assert m[0, 100] == pytest.approx(1, abs=1e-6)


def test_recipe_variants_and_bad_input():
    s = generate(IF_MELANOMA.with_counts(immune=10, tumour=0, stroma=0).with_noise(0), (200, 200), 3)
    assert s.cells["type"].value_counts().to_dict() == {"immune": 2}  # 10 per 500 x 500, scaled by area
    assert (s.cells["mask_value"] == 0).all()  # no tumour cells: nobody in contact
    with pytest.raises(InputError, match="no cell type"):
        IF_MELANOMA.with_counts(macrophage=3)
    with pytest.raises(InputError, match="between 16 and 4096"):
        generate("if-melanoma", (8, 8), 0)
    with pytest.raises(InputError, match="known recipes"):
        generate("dab", (64, 64), 0)
