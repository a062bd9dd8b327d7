"""Every registry entry, with its shipped weights, honours the scenario contract (timm's habit of
parametrising one smoke test over the registry). Nothing here skips: a scenario whose weights,
card or module is missing fails."""

import numpy as np
import pandas as pd
import pytest

from core.cells import CELL_COLUMNS, ROLES
from core.errors import InputError
from core.io import ImageData
from core.pipeline import analyze, load_model
from core.scenarios.registry import list_scenarios


def _stained_field(scenario, h: int, w: int, mpp: float) -> ImageData:
    """An (H, W) image of the scenario's own input, given the pixel size ``mpp``: a crop of its bundled sample
    (for a model that reads one channel, the channel its picker offers by default, as the page does), or of a
    section of the project's generator for a generator-trained scenario; cells of its kind are in it."""
    from core.samples import list_samples
    from core.scenarios.base import channel_choices, pick_input_channel

    sample = next((smp for smp in list_samples() if smp.scenario == scenario.key), None)
    if sample is not None and abs(sample.mpp - scenario.input_mpp) < 1e-6:
        image = sample.load()
        choices = channel_choices(scenario, image.channel_names)
        if choices is not None:
            image = pick_input_channel(image, scenario, choices[1])
        return ImageData(np.ascontiguousarray(image.data[:h, :w]), mpp, "field.tif", "", "user",
                         channel_names=image.channel_names)
    if scenario.outputs_of("regions"):  # tissue compartments: a section of the compartment recipe (tumour and stroma)
        from core.generator.compartments import generate_compartments

        return ImageData.from_rgb(generate_compartments((h, w), seed=10007, stain="he").image, mpp, "field.png")
    if scenario.evaluation == "mihc-synthetic":  # multiplex IHC: a section of the generator's mIHC recipe
        from core.generator.mihc import generate_mihc

        return ImageData.from_rgb(generate_mihc((h, w), 10007).image, mpp, "field.png")
    from core.evaluation.tnrd import recipe_for
    from core.generator import generate

    return ImageData.from_rgb(generate(recipe_for(scenario.key), (h, w), seed=10007).noisy_uint8, mpp, "field.png")


def _of_input_kind(scenario, rgb: np.ndarray, mpp: float) -> ImageData:
    """``rgb`` as the kind of image the scenario reads: itself for a colour model, else its grey level in 16 bits
    under the scenario's channel names (an image the model accepts, so only the check under test can refuse it)."""
    if scenario.input.is_rgb:
        return ImageData.from_rgb(rgb, mpp, "field.png")
    grey = (rgb.mean(axis=-1, keepdims=True) * 257).astype(np.uint16)
    return ImageData(np.repeat(grey, len(scenario.input.channels), axis=-1), mpp, "field.tif", "", "user",
                     channel_names=scenario.input.channels)


def _field(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: pale background with dark and coloured round blobs, a stand-in for a stained field."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 225, np.float32) + rng.normal(0, 6, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    for _ in range(h * w // 400):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 6)
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = rng.choice([(60, 40, 140), (140, 70, 40), (200, 60, 150)])
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", params=[s.key for s in list_scenarios()])
def loaded(request):
    return load_model(request.param, "cpu")


@pytest.mark.parametrize("mpp_factor", [1.0, 1.5])
def test_every_scenario_honours_the_result_contract(loaded, mpp_factor):
    scenario = loaded.scenario
    h, w = 150, 170
    mpp = scenario.input_mpp * mpp_factor  # 1.5: resampled to the model's mpp and mapped back
    image = _stained_field(scenario, h, w, mpp)
    result = analyze(image, scenario.key, model=loaded)
    cells = result.cells
    if scenario.outputs_of("cells"):
        assert len(cells) > 0  # a field of its own stain has cells for every cell scenario (else the checks are vacuous)
    else:  # a regions scenario finds no cells: its table is empty but has the columns
        assert len(cells) == 0
    if scenario.outputs_of("regions"):
        from core.spatial.predicted_compartments import LABELS

        labels = result.compartments.labels
        assert labels.dtype == np.uint8 and labels.shape == (h, w)
        assert set(np.unique(labels)) <= set(LABELS.values()) and len(np.unique(labels)) >= 2  # not one flat class
        assert result.summary["compartments"]["labels"] == LABELS
        assert result.summary["area_mm2"] == pytest.approx(
            result.summary["compartments"]["area_mm2"]["tumour"] + result.summary["compartments"]["area_mm2"]["stroma"])
    else:
        assert result.compartments is None
    assert list(cells.columns[: len(CELL_COLUMNS)]) == list(CELL_COLUMNS)
    assert set(cells["cell_class"]) <= {c.name for c in scenario.classes}
    assert set(cells["role"]) <= set(ROLES)
    assert cells[["x_px", "y_px", "probability"]].notna().all().all()
    assert cells["probability"].between(0, 1).all()
    assert cells["x_px"].between(0, w - 1).all() and cells["y_px"].between(0, h - 1).all()
    np.testing.assert_allclose(cells["x_um"], cells["x_px"] * mpp)
    assert pd.api.types.is_float_dtype(cells["x_px"])
    declared_dense = {o.name for o in scenario.outputs_of("dense")}
    assert set(result.dense) == declared_dense
    for d in result.dense.values():
        assert d.values.dtype == np.float32 and d.values.shape[:2] == (h, w) and np.isfinite(d.values).all()
        assert d.values.min() >= 0 and d.values.max() <= 1 and d.description
    assert set(result.restored) == {o.name for o in scenario.outputs_of("restored")}
    for r in result.restored.values():
        assert r.dtype == np.uint8 and r.shape == (h, w, 3)
    s = result.summary
    assert s["scenario"] == scenario.key and s["n_cells"] == len(cells) and s["weights_sha256"] == scenario.sha256
    assert s["trained_on_synthetic"] == scenario.trained_on_synthetic
    again = analyze(image, scenario.key, model=loaded)
    pd.testing.assert_frame_equal(again.cells, cells)  # deterministic
    if scenario.outputs_of("regions"):
        np.testing.assert_array_equal(again.compartments.labels, result.compartments.labels)


def test_every_scenario_refuses_an_image_smaller_than_its_window(loaded):
    scenario = loaded.scenario
    side = max(2, int(scenario.min_side_um / scenario.input_mpp) - 2)
    with pytest.raises(InputError, match="needs at least"):
        analyze(_of_input_kind(scenario, _field(side, side), scenario.input_mpp), scenario.key, model=loaded)


def test_every_scenario_refuses_input_of_another_modality(loaded):
    """A colour model refuses a multi-channel fluorescence stack; a model of named fluorescence channels refuses a
    brightfield RGB scan, and a stack without its channel until one is picked; nothing is analysed."""
    scenario = loaded.scenario
    side = max(64, int(np.ceil(scenario.min_side_um / scenario.input_mpp)))
    stack = np.random.default_rng(0).integers(0, 4096, (side, side, 5)).astype(np.uint16)
    image = ImageData(stack, scenario.input_mpp, "panel.tif", "", "user",
                      channel_names=("DAPI", "CD20", "CD8", "PD1", "CD3"))
    if scenario.input.is_rgb:
        with pytest.raises(InputError, match="5 channels"):
            analyze(image, scenario.key, model=loaded)
        return
    assert scenario.modality == "fluorescence" and not scenario.reads_colour
    with pytest.raises(InputError, match="colour \\(RGB\\) image"):
        analyze(ImageData.from_rgb(_field(side, side), scenario.input_mpp, "he.png"), scenario.key, model=loaded)
    with pytest.raises(InputError, match="5 channels .*pick the"):
        analyze(image, scenario.key, model=loaded)
