"""Registry: keys, weights verification and model cards."""

import shutil

import pytest

from core.cells import ROLES
from core.errors import UnknownScenarioError, WeightsError
from core.evaluation import EVALUATIONS
from core.scenarios.registry import get_scenario, list_scenarios
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
    assert all(o.kind in OUTPUT_KINDS for o in scenario.outputs) and scenario.outputs_of("cells")
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
    """The registry names runners as strings: no import cycle registry → scenario → base → registry."""
    import subprocess
    import sys

    code = ("import sys, core.scenarios.registry as r; "
            "assert not [m for m in sys.modules if m.startswith('core.scenarios.') and m not in "
            "('core.scenarios.registry', 'core.scenarios.spec')], sorted(sys.modules); "
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
