"""Registry: keys, weights verification and model cards."""

import shutil

import pytest

from core.cells import ROLES
from core.errors import UnknownScenarioError, WeightsError
from core.evaluation import EVALUATIONS
from core.scenarios.registry import get_scenario, list_scenarios
from core.fitness import STAIN_LABELS
from core.scenarios.spec import DENSE_MEANINGS, OUTPUT_KINDS
from core.scenarios.weights import load_verified_state_dict, sha256_file


def test_unknown_key_lists_known_keys():
    with pytest.raises(UnknownScenarioError, match="cd3-ihc"):
        get_scenario("cd3")


@pytest.mark.parametrize("scenario", list_scenarios(), ids=lambda s: s.key)
def test_every_entry_is_complete_and_its_weights_match(scenario):
    assert scenario.input_mpp > 0 and scenario.tiling.tile_px(scenario.input_mpp) > 0 and scenario.min_side_um > 0
    assert scenario.tiling.kind in ("dense", "cells") and scenario.tiling.blend in ("linear", "none")
    assert all(c.role in ROLES and c.color.startswith("#") for c in scenario.classes)
    assert all(o.kind in OUTPUT_KINDS for o in scenario.outputs)
    # every scenario finds cells, or tissue regions (compartments) that cell scenarios place their cells in
    assert scenario.outputs_of("cells") or scenario.outputs_of("regions")
    assert scenario.use.stains and all(s in STAIN_LABELS for s in scenario.use.stains)
    assert all(o.meaning in DENSE_MEANINGS for o in scenario.outputs_of("dense"))
    assert len({o.name for o in scenario.outputs}) == len(scenario.outputs)
    assert scenario.evaluation in EVALUATIONS
    assert sha256_file(scenario.weights_path) == scenario.sha256
    assert sha256_file(scenario.weights_path.parent / scenario.model_card) == scenario.card_sha256
    card = scenario.card()
    for field in ("version", "training_data", "metrics", "intended_use", "limitations"):
        assert card.get(field), f"model card of {scenario.key} lacks {field}"
    assert "not a diagnostic device" in card["intended_use"]
    assert card["weights_sha256"] == scenario.sha256
    assert card["trained_on_synthetic"] == scenario.trained_on_synthetic
    assert scenario.validated_for_counting == (not scenario.trained_on_synthetic and not scenario.research_only)
    if scenario.research_only:  # a model of real images that failed its validation: its caution says why, plainly
        assert scenario.caution and not scenario.trained_on_synthetic and "research only" in scenario.title.lower()
    if not scenario.input.is_rgb:  # named fluorescence channels: read by name, never by colour
        assert scenario.modality == "fluorescence" and not scenario.reads_colour and "fluorescence" in scenario.use.stains


def test_tampered_weights_are_refused(tmp_path):
    scenario = get_scenario("cd3-ihc")
    copy = tmp_path / scenario.weights
    shutil.copy(scenario.weights_path, copy)
    load_verified_state_dict(copy, scenario.sha256)  # the intact copy loads
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256"):
        load_verified_state_dict(copy, scenario.sha256)


def test_missing_weights_file_is_reported(tmp_path):
    with pytest.raises(WeightsError, match="missing"):
        load_verified_state_dict(tmp_path / "nothing.safetensors", "0" * 64)


def test_importing_the_registry_loads_no_scenario_module():
    """The registry names runners as strings: no import cycle registry → scenario → base → registry, and no torch.
    (``core.scenarios.mihc_spec`` is an entry without its network, as ``spec`` is.)"""
    import subprocess
    import sys

    code = ("import sys, core.scenarios.registry as r; "
            "assert not [m for m in sys.modules if m.startswith('core.scenarios.') and m not in "
            "('core.scenarios.registry', 'core.scenarios.spec', 'core.scenarios.mihc_spec')], sorted(sys.modules); "
            "assert 'torch' not in sys.modules; "
            "import core.scenarios.base as b; assert 'core.scenarios.registry' not in vars(b)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_edited_or_missing_model_card_is_refused(tmp_path, monkeypatch):
    import core.scenarios.spec as spec

    scenario = get_scenario("he-til")
    text = (spec.WEIGHTS_DIR / scenario.model_card).read_text(encoding="utf-8")
    monkeypatch.setattr(spec, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsError, match="missing"):
        scenario.card()
    (tmp_path / scenario.model_card).write_text(text, encoding="utf-8")
    assert scenario.card()["weights_sha256"] == scenario.sha256  # the same bytes: accepted
    (tmp_path / scenario.model_card).write_text(text.replace("not a diagnostic device", "a diagnostic device"),
                                                encoding="utf-8")
    with pytest.raises(WeightsError, match="has SHA-256 .* the card was edited"):
        scenario.card()


def test_weights_that_do_not_fit_the_network_raise_a_weights_error():
    import torch

    from core.scenarios.weights import load_strict

    net = torch.nn.Linear(3, 2)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    load_strict(net, state, "w.safetensors")
    with pytest.raises(WeightsError, match="1 tensor\\(s\\) unexpected \\(extra\\)"):
        load_strict(net, {**state, "extra": torch.zeros(1)}, "w.safetensors")
    with pytest.raises(WeightsError, match="1 tensor\\(s\\) missing \\(bias\\)"):
        load_strict(net, {"weight": state["weight"]}, "w.safetensors")
    with pytest.raises(WeightsError, match="of the wrong shape \\(weight\\)"):
        load_strict(net, {**state, "weight": torch.zeros(2, 4)}, "w.safetensors")


def test_a_scenario_may_read_several_stain_families_and_unknown_ones_are_refused():
    from core.scenarios.spec import Use

    comp = get_scenario("tissue-compartments")
    assert comp.use.stains == ("he", "dab-hematoxylin")  # CD-UNET: H&E and IHC with a hematoxylin counterstain
    assert get_scenario("cd3-ihc").use.stains == ("dab-hematoxylin",)  # one-stain entries are unchanged
    with pytest.raises(ValueError, match="unknown stain"):
        Use(stain="he", mpp_range=(0.2, 1.0), other_stains=("pas",))
    with pytest.raises(ValueError, match="twice"):
        Use(stain="he", mpp_range=(0.2, 1.0), other_stains=("he",))


def test_the_compartments_entry_declares_its_label_map_and_its_card_says_it_is_below_the_aims():
    from core.spatial.predicted_compartments import LABELS

    sc = get_scenario("tissue-compartments")
    assert sc.tiling.kind == "dense" and sc.tiling.tile_px(sc.input_mpp) == 1024 and sc.tiling.overlap_px(1.0) == 64
    assert sc.input_mpp == 1.0 and sc.evaluation == "compartments"
    assert sc.runner == "core.scenarios.compartments:CompartmentsModel"
    assert [c.name for c in sc.classes] == list(LABELS)  # class order = label values 0-3 of compartments.png
    assert sc.outputs_of("regions") and not sc.outputs_of("cells")
    card = sc.card()
    assert card["limitations"][0].startswith("Below the aims")
    # the caution quotes the card's figures: they must agree
    judged = card["metrics"]["real_judged_mean_over_sources"]["tumour_cells_in_predicted_tumour"]
    tumour_f1 = card["metrics"]["synthetic_heldout"]["per_class"]["tumour"]["f1"]
    assert f"{100 * judged:.0f} % of annotated tumour cells" in sc.caution
    assert f"tumour F1 is {tumour_f1:.2f}" in sc.caution
