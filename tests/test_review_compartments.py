"""Reviews of analyses run with predicted tissue compartments (issue 18): a saved analysis reopened from the case
store keeps its compartments (label map, provenance, tissue, each cell's compartment), the review's statistics
use them as the analysis did, and they survive cell corrections, a saved review and a second reopening."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import core.review as rv
from core.errors import InputError
from core.io import ImageData
from core.outputs.store import CaseStore
from core.pipeline import save_analysis
from core.review.saved import compartments_from_store
from core.spatial import SpatialParams
from core.spatial.predicted_compartments import LABELS
from core.spatial.regions import Region
from tests.test_compartments_pipeline import _cells, _labels, _result, _run
from tests.test_report import pdf_text

#: The thresholds the constructed result's statistics were computed with (tests.test_compartments_pipeline._result).
PARAMS = SpatialParams(n_simulations=0, min_compartment_area_mm2=0.05, margin_half_width_um=50.0,
                       inflamed_min_intratumoral_per_mm2=100.0, excluded_min_stromal_per_mm2=100.0)
#: Figures of the statistics that do not depend on when or how fast they were computed.
COMPARTMENT_KEYS = ("tumour_area_mm2", "stroma_area_mm2", "n_immune_intratumoral", "n_immune_stromal",
                    "intratumoral_immune_density_per_mm2", "stromal_immune_density_per_mm2", "source")


@pytest.fixture()
def store(tmp_path):
    s = CaseStore(f"sqlite:///{tmp_path / 'cases.sqlite3'}")
    yield s
    s.close()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(store, analysis id, the result as detected): the constructed result saved once, for the tests that only read."""
    s = CaseStore(f"sqlite:///{tmp_path_factory.mktemp('saved') / 'cases.sqlite3'}")
    detected = _result()
    yield s, save_analysis(detected, "C-18", s), detected
    s.close()


def _figures(spatial: dict) -> dict:
    comp = spatial["compartments"]
    return {k: comp[k] for k in COMPARTMENT_KEYS}


def _margin(spatial: dict) -> dict:
    m = dict(spatial["invasive_margin"])
    m.pop("runtime_s", None)
    return m


def test_a_reopened_analysis_has_its_predicted_compartments_and_its_statistics_use_them(saved):
    store, aid, detected = saved
    saved = store.get_analysis(aid)["summary"]
    session = rv.open_saved_analysis(store, aid)
    result = session.result
    assert result is not detected and session.notes == []

    # The label map, its provenance, the tissue and each cell's compartment, as analysed.
    np.testing.assert_array_equal(result.compartments.labels, _labels())
    assert result.compartments.labels.dtype == np.uint8 and result.compartments.mpp == 2.0
    run = result.compartments_run
    assert (run.scenario_key, run.weights_file, run.weights_sha256, run.weights_version) == (
        "tissue-compartments", detected.compartments_run.weights_file, detected.compartments_run.weights_sha256, "1.0.0")
    assert result.run.scenario_key == "he-til"
    assert result.area_mm2 == pytest.approx(detected.area_mm2, rel=1e-12)  # tumour + stroma, not the image
    assert result.cells["tissue_compartment"].tolist() == detected.cells["tissue_compartment"].tolist()
    regions = session.statistics_regions()
    assert session.regions == [] and session.uses_predicted_compartments
    assert sorted(r.kind for r in regions) == sorted(r.kind for r in detected.compartments.regions())
    assert {"tumour", "stroma", "exclude"} == {r.kind for r in regions}

    # Before any correction the review's statistics are those saved with the analysis.
    stats = session.statistics(PARAMS)
    assert _figures(stats) == _figures(saved["spatial"])
    _, truth = _cells()
    assert (stats["compartments"]["n_immune_intratumoral"], stats["compartments"]["n_immune_stromal"]) == (
        truth["tumour"], truth["stroma"])  # necrosis and glass left out
    assert "predicted by the tissue-compartments model" in stats["compartments"]["source"]
    assert stats["predicted_compartments"] == saved["spatial"]["predicted_compartments"]
    assert stats["predicted_compartments"]["stromal_til"]["available"]
    assert _margin(stats) == _margin(saved["spatial"])
    # The figures that follow every edit read the same compartments.
    live = session.live_statistics(PARAMS)
    for k in COMPARTMENT_KEYS[:-1]:
        assert live["compartments"][k] == pytest.approx(stats["compartments"][k], rel=1e-9), k
    summary = session.reviewed_summary(stats)
    assert summary["compartments"]["regions_for_statistics"] == "predicted"
    assert summary["density_by_role_per_mm2"] == pytest.approx(saved["density_by_role_per_mm2"], rel=1e-12)
    assert summary["compartments"]["area_mm2"] == saved["compartments"]["area_mm2"]


def test_the_compartments_survive_corrections_a_saved_review_and_a_second_reopening(store, tmp_path):
    detected = _result()
    aid = save_analysis(detected, "C-18", store)
    originals = {n: store.get_file(aid, n) for n in ("compartments.png", "regions.geojson")}
    before = store.get_analysis(aid)["summary"]
    session = rv.open_saved_analysis(store, aid)
    # A stromal immune cell was a false detection; an intratumoral lymphocyte was missed.
    assert session.delete_at(330.0, 100.0, 3.0, user="Dr A").changed
    added = session.add_at(150.0, 110.0, "inflammatory", "immune", user="Dr A")
    assert added.changed
    stats = session.statistics(PARAMS)
    assert (stats["compartments"]["n_immune_intratumoral"], stats["compartments"]["n_immune_stromal"]) == (5, 69)
    assert stats["compartments"]["intratumoral_immune_density_per_mm2"] == pytest.approx(
        5 / stats["compartments"]["tumour_area_mm2"])
    assert "predicted by the tissue-compartments model" in stats["compartments"]["source"]
    wg = stats["predicted_compartments"]["stromal_til"]
    assert wg["n_immune_in_stroma"] == before["spatial"]["predicted_compartments"]["stromal_til"]["n_immune_in_stroma"] - 1

    rv.save_review(store, session, user="Dr A", params=PARAMS)
    a = store.get_analysis(aid)
    summary = a["summary"]
    assert summary["spatial"]["compartments"]["n_immune_stromal"] == 69
    assert "predicted_compartments" in summary["spatial"]
    comp = summary["compartments"]
    assert comp["regions_for_statistics"] == "predicted"
    assert comp["n_cells_by_compartment"]["stroma"] == before["compartments"]["n_cells_by_compartment"]["stroma"] - 1
    assert comp["n_cells_by_compartment"]["tumour"] == before["compartments"]["n_cells_by_compartment"]["tumour"] + 1
    assert comp["area_mm2"] == before["compartments"]["area_mm2"] and comp["scenario"] == "tissue-compartments"
    assert summary["area_mm2"] == pytest.approx(before["area_mm2"])  # still per mm² of predicted tumour and stroma
    # The files rebuilt from the review keep the compartments: map, polygons, the hand-added cell's compartment, report.
    assert {n: store.get_file(aid, n) for n in originals} == originals
    cells = pd.read_csv(io.BytesIO(store.get_file(aid, "cells.csv")), keep_default_na=False)
    assert cells.loc[cells["edited"] == "added", "tissue_compartment"].tolist() == ["tumour"]
    text = pdf_text(store.get_file(aid, "report.pdf"), tmp_path)
    assert "Tissue compartments" in text and "Stromal TILs (TILs Working Group)" in text

    # Reopened again: the detections, the saved corrections and the same compartments give the same figures.
    again = rv.open_saved_analysis(store, aid)
    np.testing.assert_array_equal(again.result.compartments.labels, _labels())
    assert again.log.n_corrections == 2 and again.uses_predicted_compartments
    restats = again.statistics(PARAMS)
    assert _figures(restats) == _figures(summary["spatial"])
    assert restats["predicted_compartments"] == summary["spatial"]["predicted_compartments"]


def test_drawn_regions_still_override_the_reopened_compartments(saved):
    store, aid, _ = saved
    session = rv.open_saved_analysis(store, aid)
    tumour = Region("drawn tumour", "tumour", np.array([[0.0, 0.0], [400.0, 0.0], [400.0, 800.0], [0.0, 800.0]]))
    session.add_regions([tumour], user="Dr A")
    assert not session.uses_predicted_compartments and [id(r) for r in session.statistics_regions()] == [id(tumour)]
    stats = session.statistics(PARAMS)
    assert "predicted_compartments" not in stats and "predicted" not in stats["compartments"]["source"]
    assert stats["compartments"]["tumour_area_mm2"] == pytest.approx(0.32, rel=1e-6)
    summary = session.reviewed_summary(stats)
    assert summary["compartments"]["regions_for_statistics"] == "drawn"
    session.remove_region(0, user="Dr A")  # back to the predicted compartments
    assert "predicted_compartments" in session.statistics(PARAMS)


def test_an_analysis_whose_label_map_is_missing_opens_with_a_note(saved):
    store, aid, _ = saved
    a = store.get_analysis(aid)
    a["files"] = [f for f in a["files"] if f["name"] != "compartments.png"]
    result, notes = rv.result_from_store(store, a)
    assert result.compartments is None and result.compartments_run is None
    assert len(notes) == 1 and "compartments.png, the label map, was not saved" in notes[0]


def _image(h: int = 40, w: int = 60) -> ImageData:
    return ImageData.from_rgb(np.full((h, w, 3), 200, np.uint8), 0.5, "field.png")


def _png(labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_the_label_map_is_read_through_the_summarys_label_values():
    lab = np.zeros((40, 60), np.uint8)
    lab[:, 20:40], lab[:, 40:] = 7, 9  # saved with another numbering: tumour 7, stroma 9
    summary = {"compartments": {"labels": {"background": 0, "tumour": 7, "stroma": 9, "necrosis": 3},
                                "scenario": "tissue-compartments", "weights_file": "w.safetensors",
                                "weights_sha256": "ab" * 32, "weights_version": "2", "runtime_s": 1.5}}
    cells_run = _run("he-til")
    cmap, run = compartments_from_store(summary, _png(lab), _image(), cells_run)
    assert np.unique(cmap.labels[:, 20:40]).tolist() == [LABELS["tumour"]]
    assert np.unique(cmap.labels[:, 40:]).tolist() == [LABELS["stroma"]]
    assert np.unique(cmap.labels[:, :20]).tolist() == [LABELS["background"]] and cmap.mpp == 0.5
    assert (run.scenario_key, run.weights_sha256, run.weights_version, run.runtime_s) == (
        "tissue-compartments", "ab" * 32, "2", 1.5)
    assert (run.device, run.created_at) == (cells_run.device, cells_run.created_at)
    # No scenario named in the summary: the map without provenance.
    assert compartments_from_store({"compartments": {"labels": LABELS}}, _png(lab % 4), _image(), cells_run)[1] is None


@pytest.mark.parametrize("png, message", [
    (None, "was not saved"),
    (b"not a png", "not a readable image"),
    (_png(np.zeros((40, 61), np.uint8)), "61 x 40 px, the analysed image 60 x 40 px"),
    (_png(np.full((40, 60), 5, np.uint8)), "holds value(s) [5]"),
])
def test_a_label_map_that_does_not_fit_is_refused_with_the_reason(png, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        compartments_from_store({"compartments": {"labels": LABELS}}, png, _image(), _run("he-til"))


def test_a_real_analysis_with_compartments_keeps_them_after_reopening(tmp_path, store):
    """The shipped he-til and tissue-compartments weights on a small synthetic H&E field, saved and reopened."""
    from core.generator.compartments import generate_compartments
    from core.pipeline import load_model, run_analysis

    sec = generate_compartments((160, 160), seed=5, stain="he")
    rgb = np.asarray(Image.fromarray(sec.image).resize((320, 320), Image.Resampling.BILINEAR))
    image = ImageData.from_rgb(rgb, 0.5, "section.png")
    detected = run_analysis(image, "he-til", model=load_model("he-til", "cpu"), outside_validated_use=True,
                            compartments="tissue-compartments",
                            compartments_model=load_model("tissue-compartments", "cpu"))
    assert {1, 2} <= set(np.unique(detected.compartments.labels).tolist())  # the model finds tumour and stroma
    aid = save_analysis(detected, "C-18", store)
    saved = store.get_analysis(aid)["summary"]
    session = rv.open_saved_analysis(store, aid)
    np.testing.assert_array_equal(session.result.compartments.labels, detected.compartments.labels)
    assert session.result.compartments_run.weights_sha256 == detected.compartments_run.weights_sha256
    stats = session.statistics()
    assert _figures(stats) == _figures(saved["spatial"])
    assert stats["predicted_compartments"] == saved["spatial"]["predicted_compartments"]
    rv.save_review(store, session, user="Dr A")
    reviewed = store.get_analysis(aid)["summary"]
    assert reviewed["compartments"]["regions_for_statistics"] == "predicted"
    assert json.loads(store.get_file(aid, "regions.geojson")) == json.loads(detected.compartments.exports()["regions.geojson"])
