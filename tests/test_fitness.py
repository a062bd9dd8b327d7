"""Fitness checks (core.fitness): stain, magnification, tissue, focus; and what the pipeline does with them."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from core.errors import InputError
from core.fitness import OutsideValidatedUse, assess, read_stain, tissue_mask
from core.io import ImageData, load_image
from core.pipeline import load_model, previous_runs, run_analysis, save_analysis
from core.results import poisson_ci_per_mm2
from core.samples import get_sample
from core.scenarios.registry import get_scenario


@pytest.fixture(scope="module")
def he_field() -> ImageData:
    return get_sample("he-crc").load()


@pytest.fixture(scope="module")
def cd3_field() -> ImageData:
    return get_sample("cd3-mosaic").load()


def fluorescence_field(seed: int = 0) -> ImageData:
    """Bright nuclei on a black background, as a DAPI / IF composite."""
    rng = np.random.default_rng(seed)
    img = np.zeros((300, 300, 3), np.uint8)
    yy, xx = np.mgrid[:300, :300]
    for x, y in rng.uniform(10, 290, (60, 2)):
        img[(xx - x) ** 2 + (yy - y) ** 2 < 25, 2] = 200
    return ImageData.from_rgb(img, 0.5, "if.png")


def test_stain_families_are_read_from_the_colours(he_field, cd3_field):
    assert read_stain(he_field).family == "he"
    assert read_stain(cd3_field).family == "dab-hematoxylin"
    assert read_stain(fluorescence_field()).family == "fluorescence"
    assert read_stain(he_field).eosin_share > 0.05 > 0.01 > read_stain(cd3_field).eosin_share


def test_a_wrong_stain_stops_the_run_with_a_plain_message_unless_overridden(cd3_field):
    report = assess(cd3_field, get_scenario("he-til"))
    assert report.problems and "looks like DAB with a hematoxylin counterstain" in report.problems[0]
    model = load_model("he-til", "cpu")
    with pytest.raises(OutsideValidatedUse, match="Run outside the validated use") as err:
        run_analysis(cd3_field.with_mpp(0.5), "he-til", model=model)
    assert "Traceback" not in str(err.value) and "Error" not in str(err.value)
    result = run_analysis(cd3_field.with_mpp(0.5), "he-til", model=model, outside_validated_use=True)
    assert result.outside_validated_use == result.summary["outside_validated_use"] != []


def test_magnification_outside_the_validated_range_is_a_problem(he_field):
    report = assess(he_field.with_mpp(2.0), get_scenario("he-til"))
    assert any("2 µm/px" in p and "0.2 to 0.6 µm/px" in p for p in report.problems)
    assert not assess(he_field, get_scenario("he-til")).problems


def test_cd3_asks_for_the_antibody(cd3_field):
    scenario = get_scenario("cd3-ihc")
    assert not assess(cd3_field, scenario, antigen_confirmed=True).problems
    assert any("not confirmed as CD3" in p for p in assess(cd3_field, scenario, antigen_confirmed=False).problems)
    assert any("Ki67" in n for n in assess(cd3_field, scenario).notes)  # command line: a warning, not a stop


def test_half_glass_field_keeps_its_density(he_field):
    """Densities are per mm² of tissue: a field that is half glass must not halve them."""
    model = load_model("he-til", "cpu")
    whole = run_analysis(he_field, "he-til", model=model)
    half = he_field.rgb.copy()
    half[:, 250:] = 245  # glass
    halved = run_analysis(ImageData.from_rgb(half, he_field.mpp, "half.png"), "he-til", model=model)
    s_whole, s_half = whole.summary, halved.summary
    assert s_half["tissue_fraction"] == pytest.approx(0.5, abs=0.06)
    assert s_half["tissue_area_mm2"] == pytest.approx(s_half["image_area_mm2"] / 2, rel=0.12)
    d_whole = s_whole["n_cells"] / s_whole["area_mm2"]
    d_half = s_half["n_cells"] / s_half["area_mm2"]
    assert d_half == pytest.approx(d_whole, rel=0.25)  # whole-image area would give about half
    lo, hi = s_half["density_ci95_per_mm2"]["inflammatory"]
    assert lo <= s_half["density_per_mm2"]["inflammatory"] <= hi


def test_no_tissue_is_refused():
    glass = ImageData.from_rgb(np.full((400, 400, 3), 240, np.uint8), 0.5, "glass.png")
    report = assess(glass, get_scenario("he-til"))
    assert any("Almost no tissue" in p for p in report.problems)
    assert tissue_mask(glass).fraction == 0.0


def test_a_blurred_field_gets_a_focus_warning(he_field):
    blurred = ndimage.gaussian_filter(he_field.rgb.astype(float), (3, 3, 0)).round().astype(np.uint8)
    notes = assess(ImageData.from_rgb(blurred, he_field.mpp, "blur.png"), get_scenario("he-til")).notes
    assert any("out of focus" in n for n in notes)
    assert not any("out of focus" in n for n in assess(he_field, get_scenario("he-til")).notes)


def test_poisson_interval_is_exact():
    assert poisson_ci_per_mm2(0, 1.0)[0] == 0.0
    lo, hi = poisson_ci_per_mm2(10, 0.5)
    assert lo == pytest.approx(4.7954 / 0.5, rel=1e-3) and hi == pytest.approx(18.390 / 0.5, rel=1e-3)


def test_synthetic_only_results_are_never_saved_and_duplicates_are_found(he_field, tmp_path):
    from core.outputs.store import CaseStore

    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    result = run_analysis(he_field, "he-til", model=load_model("he-til", "cpu"))
    assert previous_runs(store, "C-1", result) == []
    first = save_analysis(result, "C-1", store)
    assert previous_runs(store, "C-1", result) == [first]
    assert previous_runs(store, "C-2", result) == []  # another case
    assert previous_runs(store, "C-1", replace(result, image=result.image.with_mpp(0.5))) == []  # other settings
    synthetic = replace(result, scenario=get_scenario("tnrd-he-melanoma"))
    with pytest.raises(InputError, match="synthetic images only"):
        save_analysis(synthetic, "C-1", store)
    store.close()


def test_bmp_and_jpeg_compressed_tiff_are_read(he_field):
    buf = io.BytesIO()
    Image.fromarray(he_field.rgb).save(buf, format="BMP")
    assert load_image(buf.getvalue(), name="field.bmp").shape == he_field.shape
    buf = io.BytesIO()
    tifffile.imwrite(buf, he_field.rgb, photometric="rgb", compression="jpeg")
    im = load_image(buf.getvalue(), name="field.tif")
    assert im.shape == he_field.shape and np.abs(im.rgb.astype(int) - he_field.rgb).mean() < 6
