"""Every page renders, and the Analyze page runs a bundled sample end to end (AppTest)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.scenarios.registry import get_scenario

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted(p.name for p in (REPO / "pages").glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_exception(page):
    at = AppTest.from_file(str(REPO / "pages" / page), default_timeout=120).run()
    assert not at.exception, at.exception


def test_router_renders_home():
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("TILscope" in t.value for t in at.title)


def analyze_page() -> AppTest:
    """The Analyze page, run once, for a user who has given their name (asked once per browser)."""
    at = AppTest.from_file(str(REPO / "pages" / "analyze.py"), default_timeout=300)
    at.session_state["user_name"] = "Dr Test"
    return at.run()


def test_analyze_runs_bundled_sample():
    at = analyze_page()
    at.radio[0].set_value("Bundled sample").run()
    assert not at.exception
    card = [b for b in at.get("download_button") if b.label == "Download the whole model card (Markdown)"]
    assert len(card) == 1  # the scenario's Markdown card, before any run
    run = next(b for b in at.button if b.label == "Run")
    assert run.disabled  # a CD3 count needs the user to confirm the antibody: colours cannot tell CD3 from Ki67
    next(c for c in at.checkbox if "stained for CD3" in c.label).check().run()
    run = next(b for b in at.button if b.label == "Run")
    run.click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Cells"]) > 20
    assert float(metrics["Density (cells/mm² of tissue)"].replace(",", "")) > 1000
    assert at.session_state["analysis"].scenario_key == "cd3-ihc"
    assert at.session_state["analysis_id"] is not None
    downloads = {b.label for b in at.get("download_button")}
    assert {"report.pdf", "cells.csv", "summary.json", "overlay.png", "cells.geojson"} <= downloads, downloads


def test_analyze_fast_mode_is_offered_for_he_til_only_and_recorded():
    import torch

    from core.scenarios.base import bfloat16_supported

    at = analyze_page()
    at.radio[0].set_value("Bundled sample").run()
    assert not [t for t in at.toggle if "bfloat16" in t.label]  # cd3-ihc: float32 only
    at.selectbox[0].set_value("he-til").run()
    assert any(get_scenario("he-til").caution in w.value for w in at.warning)  # the scenario's caution is shown
    fast = next(t for t in at.toggle if "bfloat16" in t.label)
    assert fast.value is False  # float32 unless asked
    if not bfloat16_supported(torch.device("cpu")):
        assert fast.disabled
        return
    fast.set_value(True).run()
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["analysis"].summary["inference_precision"] == "bfloat16"
    assert any("bfloat16" in m.label for m in at.metric)  # shown beside the run time


def test_analyze_asks_for_a_name_before_a_run():
    at = AppTest.from_file(str(REPO / "pages" / "analyze.py"), default_timeout=300).run()
    at.radio[0].set_value("Bundled sample").run()
    next(c for c in at.checkbox if "stained for CD3" in c.label).check().run()
    run = next(b for b in at.button if b.label == "Run")
    assert run.disabled and any("Enter your name" in c.value for c in at.caption)


def test_analyze_offers_the_synthetic_mihc_model_for_teaching_with_its_chromogen_maps_and_a_confirmed_save():
    at = analyze_page()
    assert "mihc-tcell-phenotypes" not in at.selectbox[0].options  # hidden unless asked
    next(t for t in at.toggle if "synthetic images" in t.label).set_value(True).run()
    at.selectbox[0].set_value("mihc-tcell-phenotypes").run()
    assert any("Trained on synthetic images only" in e.value for e in at.error)  # said before anything is run
    at.radio[0].set_value("Bundled sample").run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    result = at.session_state["analysis"]
    assert result.scenario_key == "mihc-tcell-phenotypes" and len(result.cells) > 50
    assert "analysis_id" not in at.session_state  # not saved without the user's word
    assert any("Not saved in the case history" in i.value for i in at.info)
    pictures = at.session_state["unmixing"]["pictures"]  # the "why this call" maps, one per stain and the residual
    assert [t.split(" ")[0] for t, _, _ in pictures] == ["hematoxylin", "FOXP3", "CD8", "CD4", "PD1", "Not"]
    assert all(p.shape == (512, 512, 3) for _, p, _ in pictures)
    assert any(e.label.startswith("Distances between immune phenotypes") for e in at.expander)  # PD1+CD8+ → Treg...
    downloads = {b.label for b in at.get("download_button")}
    assert {"report.pdf", "cells.csv"} <= downloads  # the downloads work unsaved
    save = next(b for b in at.button if b.label == "Save in the case history as a teaching analysis")
    assert save.disabled
    next(c for c in at.checkbox if "teaching or method-development" in c.label).check().run()
    next(b for b in at.button if b.label == "Save in the case history as a teaching analysis").click().run()
    assert not at.exception, at.exception
    aid = at.session_state["analysis_id"]
    assert aid is not None
    from core.outputs.store import CaseStore

    summary = CaseStore().get_analysis(aid)["summary"]
    assert summary["trained_on_synthetic"] and summary["synthetic_save_confirmed"]
    assert any("teaching analysis" in s.value for s in at.success)


def test_teaching_page_shows_true_and_called_mihc_phenotypes_and_the_chromogens():
    at = AppTest.from_file(str(REPO / "pages" / "teaching.py"), default_timeout=300)
    at.session_state["user_name"] = "Dr Test"
    at.run()
    assert any(o.endswith("(mihc-tcell-phenotypes)") for o in at.selectbox[0].options)
    at.selectbox[0].set_value("mihc-tcell-phenotypes").run()
    assert any("Trained on synthetic images only" in e.value for e in at.error)
    at.slider[0].set_value(256).run()
    next(b for b in at.button if b.label == "Generate and run").click().run()
    assert not at.exception, at.exception
    state = at.session_state["teaching_mihc"]
    per = state["per_phenotype"]
    assert list(per["phenotype"]) == ["CD8+", "CD4+FOXP3-", "CD4+FOXP3+", "PD1+CD4-CD8-", "PD1+CD4-CD8+", "PD1+CD4+CD8-"]
    assert int(per["true_cells"].sum()) == len(state["truth_cells"]) > 0
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["T cells (truth)"]) == int(per["true_cells"].sum())
    assert [t.split(" ")[0] for t, _, _ in state["chromogens"]] == ["hematoxylin", "FOXP3", "CD8", "CD4", "PD1"]
    assert any(e.label == "Chromogens: true and unmixed" for e in at.expander)
