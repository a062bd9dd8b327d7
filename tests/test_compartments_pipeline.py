"""Tissue compartments in the pipeline (issue 18): a cell scenario's statistics on predicted regions, the exports
(compartments.png, regions.geojson, summary, cells.csv / cells.geojson, report), the CLI's --compartments and the
Analyze page's switch."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.cells import make_cell_table
from core.cli import main
from core.io import ImageData
from core.results import AnalysisResult, RunInfo
from core.scenarios.compartments import CompartmentMap
from core.scenarios.registry import get_scenario
from core.spatial import Region, SpatialParams
from core.spatial.predicted_compartments import LABELS

REPO = Path(__file__).resolve().parent.parent
MPP = 2.0  # µm/px of the constructed field


def _run(key: str) -> RunInfo:
    sc = get_scenario(key)
    return RunInfo(scenario_key=key, scenario_title=sc.title, weights_file=sc.weights, weights_sha256=sc.sha256,
                   weights_version="1.0.0", trained_on_synthetic=False, device="cpu", precision="float32",
                   runtime_s=0.5, app_version="test", torch_version="test", created_at="2026-01-02T03:04:05+00:00")


def _labels() -> np.ndarray:
    """(400, 600) map at 2 µm/px: tumour left of x = 300 px, stroma right, a necrosis block and a glass corner."""
    lab = np.full((400, 600), LABELS["stroma"], np.uint8)
    lab[:, :300] = LABELS["tumour"]
    lab[300:380, 20:120] = LABELS["necrosis"]  # inside the tumour, far from the border
    lab[:60, 500:] = LABELS["background"]  # glass in the stroma's corner
    return lab


def _cells() -> tuple[pd.DataFrame, dict]:
    """Cells at known places (pixels): tumour cells in the tumour, immune cells in each compartment."""
    tumour = [(x, y) for x in range(40, 260, 20) for y in range(20, 280, 20)]  # 11 x 13 in the tumour centre
    imm_t = [(x, 150.0) for x in range(60, 260, 50)]  # 4 in the tumour, more than 50 µm from the border
    imm_s = [(x, y) for x in range(330, 480, 15) for y in range(100, 380, 40)]  # 10 x 7 = 70 in the stroma
    imm_n = [(50.0, 340.0), (90.0, 350.0)]  # 2 in necrosis
    imm_g = [(550.0, 30.0)]  # 1 on glass
    xy = np.array(tumour + imm_t + imm_s + imm_n + imm_g, float)
    n_t = len(tumour)
    roles = np.array(["tumour"] * n_t + ["immune"] * (len(xy) - n_t), dtype=object)
    classes = np.where(roles == "tumour", "epithelial", "inflammatory").astype(object)
    cells = make_cell_table(xy, classes, roles, np.full(len(xy), 0.9), MPP)
    return cells, {"tumour": len(imm_t), "stroma": len(imm_s), "necrosis": len(imm_n), "glass": len(imm_g),
                   "n_tumour_cells": n_t}


def _result(regions=None) -> AnalysisResult:
    """A he-til result on a constructed field with the constructed compartments attached (no network)."""
    from core.pipeline import attach_compartments, spatial_statistics

    rng = np.random.default_rng(0)
    rgb = (rng.integers(150, 230, (400, 600, 3))).astype(np.uint8)
    image = ImageData.from_rgb(rgb, MPP, "constructed.png")
    cells, _ = _cells()
    result = AnalysisResult(image, cells, _run("he-til"), get_scenario("he-til"))
    attach_compartments(result, CompartmentMap(_labels(), MPP), _run("tissue-compartments"))
    if regions:
        result.regions = list(regions)
    params = SpatialParams(n_simulations=0, min_compartment_area_mm2=0.05, margin_half_width_um=50.0,
                           inflamed_min_intratumoral_per_mm2=100.0, excluded_min_stromal_per_mm2=100.0)
    result.spatial = spatial_statistics(result, params=params)
    return result


# ---------------------------------------------------------------------------------------------- statistics


def test_statistics_take_the_predicted_compartments_and_leave_necrosis_and_glass_out():
    result = _result()
    _, n = _cells()
    st = result.spatial.to_dict()
    comp = st["compartments"]
    assert "predicted by the tissue-compartments model" in comp["source"]
    assert comp["n_immune_intratumoral"] == n["tumour"] and comp["n_immune_stromal"] == n["stroma"]
    tumour_mm2 = (400 * 300 - 80 * 100) * MPP**2 / 1e6  # necrosis cut out of the tumour
    stroma_mm2 = (400 * 300 - 60 * 100) * MPP**2 / 1e6  # glass cut out of the stroma
    assert comp["tumour_area_mm2"] == pytest.approx(tumour_mm2, rel=0.01)  # polygons traced between pixel centres
    assert comp["stroma_area_mm2"] == pytest.approx(stroma_mm2, rel=0.01)
    assert comp["stromal_immune_density_per_mm2"] == pytest.approx(n["stroma"] / stroma_mm2, rel=0.01)
    # cells in necrosis and on glass are left out of the statistics
    assert st["counts"]["n_excluded_by_regions"] == n["necrosis"] + n["glass"]
    # phenotype: intratumoral 4 / 0.448 mm² = 9 < 100; stromal 70 / 0.456 mm² = 154 >= 100
    assert st["phenotype"]["available"] and st["phenotype"]["call"] == "excluded"
    # invasive margin: a band of ±50 µm around the predicted border at x = 299.5 px (599 µm), tissue only
    im = st["invasive_margin"]
    assert im["available"] and "predicted" in im["border_source"] and im["half_width_um"] == 50.0
    band_mm2 = 100 * 400 * MPP / 1e6  # 100 µm wide, 800 µm high (no necrosis or glass near the border)
    assert im["im"]["area_mm2"] == pytest.approx(band_mm2, rel=0.03)
    assert im["im"]["n_immune"] == sum(1 for x in range(330, 480, 15) if abs(x - 299.5) * MPP <= 50) * 7
    # stromal TILs by the TILs Working Group definition: the union of 38.5 µm² discs / stroma (raster)
    wg = st["predicted_compartments"]["stromal_til"]
    assert wg["available"] and wg["n_immune_in_stroma"] == n["stroma"]
    assert wg["percent"] == pytest.approx(100 * n["stroma"] * 38.5 / (stroma_mm2 * 1e6), rel=0.15)  # discs on 2 µm px


def test_densities_are_per_mm2_of_predicted_tumour_and_stroma_counting_the_cells_in_them():
    result = _result()
    _, n = _cells()
    s = result.summary
    areas = s["compartments"]["area_mm2"]
    assert s["compartments"]["labels"] == {"background": 0, "tumour": 1, "stroma": 2, "necrosis": 3}
    assert areas["necrosis"] == pytest.approx(80 * 100 * MPP**2 / 1e6) and areas["background"] == pytest.approx(
        60 * 100 * MPP**2 / 1e6)
    assert s["area_mm2"] == pytest.approx(areas["tumour"] + areas["stroma"])  # background and necrosis left out
    assert s["n_cells"] == len(result.cells) and s["n_cells_in_tissue"] == len(result.cells) - n["necrosis"] - n["glass"]
    immune_in_tissue = n["tumour"] + n["stroma"]
    assert s["density_by_role_per_mm2"]["immune"] == pytest.approx(immune_in_tissue / s["area_mm2"])
    assert s["compartments"]["n_cells_by_compartment"] == {
        "background": n["glass"], "tumour": n["n_tumour_cells"] + n["tumour"], "stroma": n["stroma"],
        "necrosis": n["necrosis"]}
    assert s["compartments"]["regions_for_statistics"] == "predicted"
    assert set(result.cells["tissue_compartment"]) == {"tumour", "stroma", "necrosis", "background"}


def test_drawn_regions_override_the_predicted_compartments():
    drawn = [Region("Tumour 1", "tumour", np.array([[0, 0], [400, 0], [400, 800], [0, 800]], float))]  # µm
    result = _result(regions=drawn)
    st = result.spatial.to_dict()
    assert "predicted_compartments" not in st
    assert st["compartments"]["tumour_area_mm2"] == pytest.approx(0.32, rel=1e-6)  # the drawn 400 x 800 µm
    assert "predicted" not in st["compartments"]["source"]
    assert result.summary["compartments"]["regions_for_statistics"] == "drawn"
    assert result.summary["area_mm2"] == pytest.approx(
        sum(result.summary["compartments"]["area_mm2"][k] for k in ("tumour", "stroma")))  # the tissue stays predicted


# ---------------------------------------------------------------------------------------------- exports


def test_exports_carry_the_compartments(tmp_path):
    from core.outputs.exports import build_exports
    from core.spatial.regions import read_regions_geojson
    from tests.test_report import pdf_text

    result = _result()
    files = build_exports(result, case_label="C-18")
    labels = np.asarray(Image.open(io.BytesIO(files["compartments.png"])))
    assert labels.dtype == np.uint8 and labels.shape == (400, 600)
    np.testing.assert_array_equal(labels, _labels())  # the label values of summary["compartments"]["labels"]
    regions = json.loads(files["regions.geojson"])
    names = {f["properties"]["classification"]["name"] for f in regions["features"]}
    assert names == {"tumour", "stroma", "necrosis"}  # background is not exported
    assert {r.kind for r in read_regions_geojson(regions, MPP)} == {"tumour", "stroma", "exclude"}  # QuPath → TILscope
    summary = json.loads(files["summary.json"])
    assert summary["compartments"]["labels"] == LABELS and summary["compartments"]["area_mm2"]["tumour"] > 0
    assert summary["spatial"]["predicted_compartments"]["stromal_til"]["available"]
    cells = pd.read_csv(io.BytesIO(files["cells.csv"]))
    assert cells["tissue_compartment"].value_counts().to_dict()["stroma"] == 70
    geo = json.loads(files["cells.geojson"])  # QuPath: the predicted compartments as annotations, then the cells
    annotations = [f for f in geo["features"] if f["properties"]["objectType"] == "annotation"]
    assert {f["properties"]["tilscope_kind"] for f in annotations} == {"tumour", "stroma", "exclude"}
    text = pdf_text(files["report.pdf"], tmp_path)
    assert "Tissue compartments" in text and "Stromal TILs (TILs Working Group)" in text
    assert "Predicted by" in text and "these compartments" in text
    again = build_exports(result, case_label="C-18")
    assert all(again[k] == files[k] for k in ("compartments.png", "regions.geojson", "summary.json", "cells.csv"))


def test_a_cell_scenario_without_compartments_writes_none_of_their_files():
    from core.outputs.exports import COMPARTMENT_FILES, build_exports

    result = _result()
    result.compartments = None
    result.compartments_run = None
    assert not set(COMPARTMENT_FILES) & set(build_exports(result))
    assert "compartments" not in result.summary


# ---------------------------------------------------------------------------------------------- fitness


def test_a_multistain_scenario_accepts_each_of_its_stain_families():
    from core.fitness import StainReading, stain_check, stains_label

    comp, he = get_scenario("tissue-compartments"), get_scenario("he-til")
    for family in ("he", "dab-hematoxylin"):
        assert stain_check(StainReading(family, 0.5, 0.0), comp) == ([], [])
    problems, _ = stain_check(StainReading("fluorescence", None, 0.9), comp)
    assert problems and "H&E or DAB with a hematoxylin counterstain (IHC)" in problems[0]
    assert stain_check(StainReading("dab-hematoxylin", 0.001, 0.0), he)[0]  # he-til still reads H&E only
    assert stains_label(he.use) == "H&E"
    _, notes = stain_check(StainReading("uncertain", 0.03, 0.0), comp)
    assert notes and "such an image" in notes[0]


# ---------------------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def he_field(tmp_path_factory) -> Path:
    """A 600 x 600 px synthetic H&E section at 0.5 µm/px (drawn at 1 µm/px, twice enlarged): tumour and stroma."""
    from core.generator.compartments import generate_compartments

    sec = generate_compartments((300, 300), seed=5, stain="he")
    path = tmp_path_factory.mktemp("field") / "section.png"
    Image.fromarray(sec.image).resize((600, 600), Image.Resampling.BILINEAR).save(path)
    return path


def test_cli_runs_a_cell_scenario_with_its_compartments_and_the_app_saves_the_same_files(he_field, tmp_path,
                                                                                          monkeypatch, capsys):
    import time
    from datetime import datetime, timezone

    import core.results
    from core.io import load_image
    from core.outputs.store import CaseStore
    from core.pipeline import load_model, run_analysis, save_analysis

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz or timezone.utc)

    monkeypatch.setattr(core.results, "datetime", Frozen)
    monkeypatch.setattr(time, "perf_counter", lambda: 0.0)
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path / "cli-store"))
    out = tmp_path / "out"
    args = ["--mpp", "0.5", "--outside-validated-use", "--device", "cpu"]
    assert main(["analyze", str(he_field), "--scenario", "he-til", "--compartments", "tissue-compartments",
                 "--out", str(out), "--report", "--case", "C-18", *args]) == 0
    printed = capsys.readouterr().out
    assert "compartments (tissue-compartments): background" in printed and "statistics on these compartments" in printed
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"compartments.png", "regions.geojson", "cells.csv", "summary.json", "report.pdf"} <= set(files)
    labels = np.asarray(Image.open(out / "compartments.png"))
    assert labels.shape == (600, 600) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}
    assert {1, 2} <= set(np.unique(labels))  # the section's tumour and stroma are found
    summary = json.loads(files["summary.json"])
    comp = summary["compartments"]
    assert comp["labels"] == {"background": 0, "tumour": 1, "stroma": 2, "necrosis": 3}
    assert comp["scenario"] == "tissue-compartments" and comp["regions_for_statistics"] == "predicted"
    assert math.isclose(sum(comp["area_mm2"].values()), 600 * 600 * 0.25 / 1e6, rel_tol=1e-9)
    assert summary["area_mm2"] == pytest.approx(comp["area_mm2"]["tumour"] + comp["area_mm2"]["stroma"])
    assert "predicted by the tissue-compartments model" in summary["spatial"]["compartments"]["source"]
    assert "predicted_compartments" in summary["spatial"]
    names = {f["properties"]["classification"]["name"] for f in json.loads(files["regions.geojson"])["features"]}
    assert names <= {"tumour", "stroma", "necrosis"} and {"tumour", "stroma"} <= names
    # The Analyze page's path (read, run both, save): the same bytes
    image = load_image(he_field.read_bytes(), name=he_field.name, mpp=0.5)
    result = run_analysis(image, "he-til", model=load_model("he-til", "cpu"), outside_validated_use=True,
                          compartments="tissue-compartments", compartments_model=load_model("tissue-compartments", "cpu"))
    store = CaseStore(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    aid = save_analysis(result, "C-18", store)
    app = {f["name"]: store.get_file(aid, f["name"]) for f in store.get_analysis(aid)["files"]}
    store.close()
    assert set(app) == set(files)
    for name in sorted(app):
        assert app[name] == files[name], f"{name} differs between the CLI and the app"


def test_cli_runs_the_compartments_scenario_alone(he_field, tmp_path):
    out = tmp_path / "alone"
    assert main(["analyze", str(he_field), "--scenario", "tissue-compartments", "--mpp", "0.5", "--out", str(out),
                 "--no-store", "--device", "cpu", "--outside-validated-use"]) == 0
    assert {"compartments.png", "regions.geojson", "compartment_probabilities.png", "summary.json"} <= {
        p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cells"] == 0 and summary["counts"] == {} and summary["spatial"] is None
    assert summary["compartments"]["labels"] == LABELS and summary["compartments"]["regions_for_statistics"] == "none"
    assert np.asarray(Image.open(out / "compartments.png")).shape == (600, 600)


@pytest.mark.parametrize("args, message", [
    (["--scenario", "he-til", "--compartments", "cd3-ihc"], "--compartments takes a tissue-compartment scenario"),
    (["--scenario", "he-til", "--compartments", "tissue"], "unknown scenario 'tissue'; known scenarios:"),
    (["--scenario", "tissue-compartments", "--compartments", "tissue-compartments"],
     "is itself a tissue-compartment scenario: leave --compartments out"),
])
def test_cli_refuses_a_second_key_that_is_not_a_compartment_scenario(he_field, tmp_path, capsys, args, message):
    out = tmp_path / "refused"
    assert main(["analyze", str(he_field), *args, "--out", str(out), "--no-store"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------- the Analyze page


def test_analyze_page_switch_adds_the_compartments_run(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "pages" / "analyze.py"), default_timeout=600)
    at.session_state["user_name"] = "Dr Test"
    at.run()
    at.selectbox[0].set_value("he-til").run()
    at.radio[0].set_value("Bundled sample").run()
    assert not at.exception, at.exception
    switch = next(t for t in at.toggle if t.label == "Tissue compartments from CD-UNET")
    assert switch.value is False  # off unless asked
    switch.set_value(True).run()
    override = [c for c in at.checkbox if c.label == "Run outside the validated use"]
    if override:
        override[0].check().run()
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    # the one error box: the compartment model is research only (below its card's aims), said on the result
    assert [e.value.startswith("**Research only:** the compartments come from") for e in at.error] == [True]
    result = at.session_state["analysis"]
    assert result.scenario_key == "he-til" and result.compartments is not None
    assert result.summary["compartments"]["regions_for_statistics"] in ("predicted", "none")
    assert any("Tissue compartments" in m.value for m in at.markdown)
    areas = [d for d in at.dataframe if "area, share of the image, cells" in d.value.columns]
    assert areas and list(areas[0].value["compartment"][:3]) == ["Tumour", "Stroma", "Necrosis"]
    downloads = {b.label for b in at.get("download_button")}
    assert {"compartments.png", "regions.geojson", "report.pdf"} <= downloads, downloads
    # the compartments scenario itself: no switch (it is the compartments), no cells to show
    at.selectbox[0].set_value("tissue-compartments").run()
    assert not [t for t in at.toggle if t.label == "Tissue compartments from CD-UNET"]
    assert not at.exception, at.exception


def test_the_pipelines_map_is_the_one_the_model_card_was_measured_on():
    """The registered scenario gives, pixel for pixel, the labels of the evaluation behind the card's figures."""
    from core.evaluation.compartments import predict_labels
    from core.generator.compartments import generate_compartments
    from core.pipeline import analyze, load_model

    model = load_model("tissue-compartments", "cpu")
    sec = generate_compartments((200, 240), seed=7, stain="pd1")  # an IHC section, at the model's 1 µm/px
    result = analyze(ImageData.from_rgb(sec.image, 1.0, "ihc.png"), "tissue-compartments", model=model)
    np.testing.assert_array_equal(result.compartments.labels, predict_labels(model.net, sec.image))
    assert (result.compartments.labels == sec.labels).mean() > 0.5  # and it finds the section's compartments
