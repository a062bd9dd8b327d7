"""A whole-slide analysis saved in the case store, as the Cases, Review and Tumour board pages show it.

One small slide (a 320 x 320 px crop of the bundled H&E field as a tiled TIFF at 0.55 µm/px, 2 x 2
he-til tiles on CPU) is analysed once per module with :func:`core.slides.run.analyze_slide` and
saved twice with :func:`core.slides.records.save_slide_analysis`: as the command line saves it
(no slide run) and as the Slides page does (its run still kept in the data folder). The same crop
analysed as a field (:func:`core.pipeline.run_analysis`) is saved beside them, so the pages compare
a slide and a field of the same tissue. Pages with a link to the Slides page run through ``app.py``
(its router gives page links a target); pages whose buttons are clicked run on their own (AppTest
loses button clicks on a page shown by ``st.navigation``).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
from streamlit.testing.v1 import AppTest

from core.outputs.key_figures import format_figure, format_value
from core.slides import pages_support as ps

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
FIELD_MPP = 0.55
TILE_UM = 160 * FIELD_MPP  # 2 x 2 tiles on the 320 px crop
SLIDE_FILES_STORED = {"cells.parquet", "summary.json", "tissue.geojson", "overlay.png", "immune_density.png",
                      "immune_density.npy", "immune_hot_spots.npy"}  # cells.csv stays in the output folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """The data folder with a field, a slide saved by the command line and the same slide saved by the Slides page."""
    from core.io import ImageData, load_image
    from core.outputs.store import DB_FILENAME, CaseStore
    from core.pipeline import load_model, run_analysis, save_analysis
    from core.slides.records import save_slide_analysis
    from core.slides.run import analyze_slide

    root = tmp_path_factory.mktemp("slide-records")
    rgb = np.ascontiguousarray(load_image(SAMPLES / "he-crc-img7.tif").rgb[:320, :320])
    slide_path = root / "crc-field.tif"
    tifffile.imwrite(slide_path, rgb, tile=(128, 128), photometric="rgb",
                     resolution=(1e4 / FIELD_MPP, 1e4 / FIELD_MPP), resolutionunit="CENTIMETER")
    model = load_model("he-til", "cpu")
    out = root / "out"
    summary = analyze_slide(slide_path, "he-til", out, model=model, tile_um=TILE_UM)
    field = run_analysis(ImageData.from_rgb(rgb, FIELD_MPP, "crc-field.png"), "he-til", model=model)

    data = root / "data"
    data.mkdir()
    run_id = uuid.uuid4().hex  # a Slides-page run, still kept: its request, outputs and view
    run = data / "slide-runs" / run_id
    (run / "view").mkdir(parents=True)
    shutil.copytree(out, run / "out")
    (run / "view" / "view.json").write_text("{}", encoding="utf-8")
    (run / "run.json").write_text(json.dumps({"id": run_id, "slide_name": slide_path.name, "scenario": "he-til",
                                              "case_label": "CRC-1", "created_by": "ana", "actor": None,
                                              "jobs": ["job"], "created_at": time.time()}), encoding="utf-8")
    store = CaseStore(f"sqlite:///{data / DB_FILENAME}")
    try:
        field_id = save_analysis(field, "CRC-1", store, created_by="ana")
        cli_id, notes = save_slide_analysis(store, out, summary, "CRC-1", created_by="ana")
        app_id, _ = save_slide_analysis(store, run / "out", summary, "CRC-1", params={"slide_run": run_id},
                                        created_by="ana")
    finally:
        store.close()
    assert notes == []
    return {"data": data, "out": out, "summary": summary, "field": field.summary, "field_id": field_id,
            "cli_id": cli_id, "app_id": app_id, "run_id": run_id}


@pytest.fixture
def data_dir(saved, monkeypatch) -> Path:
    monkeypatch.delenv("TILSCOPE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(saved["data"]))
    return saved["data"]


def app(page: str, **state) -> AppTest:
    """``app.py`` showing ``pages/<page>.py`` with ``state`` in the session."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(f"pages/{page}.py")
    return at.run()


def page(name: str, **state) -> AppTest:
    """``pages/<name>.py`` run on its own with ``state`` in the session (no router: page links are left out)."""
    at = AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def frame_with(at: AppTest, column: str):
    frames = [d.value for d in at.dataframe if column in d.value.columns]
    assert frames, f"no table with a {column!r} column"
    return frames[0]


def slides_links(at: AppTest) -> list:
    return [p.proto for p in at.get("page_link") if p.proto.page == "slides"]


# ---------------------------------------------------------------------------------------------- Cases


def test_cases_page_shows_a_slide_analysis_as_a_whole_slide(saved, data_dir):
    s, aid = saved["summary"], saved["cli_id"]
    at = app("cases", open_analysis=aid)
    clean(at)
    assert at.subheader[0].value == f"#{aid} · CRC-1 · crc-field.tif · whole slide"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cells"] == str(s["n_cells"]) and s["n_cells"] > 80
    assert metrics["Tissue area (mm²)"] == format_value(s["tissue_area_mm2"], 3) and "Area (mm²)" not in metrics
    dens = frame_with(at, "density (cells/mm²)").set_index("class")
    for cls, n in s["counts"].items():  # per mm² of the slide's tissue
        assert dens.loc[cls, "count"] == n
        assert dens.loc[cls, "density (cells/mm²)"] == format_value(n / s["tissue_area_mm2"], 4)
    figures = frame_with(at, "measure").set_index("measure")
    assert figures.loc["inflammatory density", "value"] == format_figure(
        s["density_per_mm2"]["inflammatory"], "cells/mm²", with_unit=True)
    assert figures.loc["inflammatory density", "setting"].startswith("tissue (glass excluded)")
    captions = [i.caption for img in at.get("image") for i in img.proto.imgs]
    assert len(captions) == 2
    assert captions[0].startswith("The slide (thumbnail)") and "per mm² of tissue" in captions[1]
    assert {b.label for b in at.get("download_button")} == SLIDE_FILES_STORED
    facts = frame_with(at, "item").set_index("item")["value"]  # the provenance expander
    assert facts["slide"] == "320 x 320 px (0.18 x 0.18 mm)"
    assert facts["tiles"].startswith("4 with tissue of 4, 88.0 µm with")
    assert facts["tissue area"].startswith(format_figure(s["tissue_area_mm2"], "mm²", with_unit=True))
    assert any(s["weights_sha256"] in c.value and s["image"]["sha256"] in c.value and "mpp 0.55 µm/px" in c.value
               for c in at.caption)
    audit = frame_with(at, "what changed")
    assert list(audit["action"]) == ["analysis saved"] and list(audit["user"]) == ["ana"]
    # no cell-by-cell review: a link to the Slides page instead, saying why
    assert "Review this analysis" not in [b.label for b in at.button]
    (link,) = slides_links(at)
    assert "reviewed on the Slides page" in link.help and "no longer kept" in link.help


def test_cases_page_links_a_slide_saved_by_the_slides_page_to_its_run(saved, data_dir):
    at = app("cases", open_analysis=saved["app_id"])
    clean(at)
    (link,) = slides_links(at)
    assert link.query_string == f"run={saved['run_id']}" and "opens this analysis there" in link.help


def test_cases_page_labels_a_field_analysis_as_a_field_and_offers_its_review(saved, data_dir):
    at = app("cases", open_analysis=saved["field_id"])
    clean(at)
    assert at.subheader[0].value.endswith(" · field")
    assert "Area (mm²)" in {m.label for m in at.metric} and not slides_links(at)
    assert any(b.label == "Review this analysis" for b in at.button)


# ---------------------------------------------------------------------------------------------- Review


def test_review_page_sends_a_slide_analysis_to_the_slides_page(saved, data_dir):
    """Asked from Cases (or a link) for a slide: no review, a plain notice with a link; the picker offers fields."""
    at = app("review", review_request=saved["cli_id"], user_name="Dr Lee")
    clean(at)
    assert not at.metric and "Save review" not in [b.label for b in at.button]  # nothing opened for review
    notices = [i.value for i in at.info if "whole-slide analysis" in i.value]
    assert len(notices) == 1 and f"Analysis #{saved['cli_id']}" in notices[0] and "Slides page" in notices[0]
    assert at.selectbox[0].value == saved["cli_id"]  # the picker shows it
    review_it = next(b for b in at.button if b.label == "Review it")
    assert review_it.disabled
    (link,) = slides_links(at)
    assert link.query_string == ""  # no run kept: the Slides page itself

    at = page("review", review_request=saved["cli_id"], user_name="Dr Lee")
    clean(at)
    assert any("whole-slide analysis" in i.value for i in at.info)  # said without the router too
    at.selectbox[0].set_value(saved["field_id"]).run()  # a field of the same tissue is reviewed here
    clean(at)
    assert not [i for i in at.info if "whole-slide analysis" in i.value]
    next(b for b in at.button if b.label == "Review it").click().run()
    clean(at)
    assert at.session_state["review_session"].analysis_id == saved["field_id"]


def test_review_page_keeps_the_field_under_review_when_a_slide_is_asked_for(saved, data_dir):
    at = app("review", review_request=saved["field_id"], user_name="Dr Lee")
    clean(at)
    at.session_state["review_request"] = saved["app_id"]  # "Open" from Cases / a link, while reviewing
    at.run()
    clean(at)
    assert at.session_state["review_session"].analysis_id == saved["field_id"]
    assert any(f"Analysis #{saved['app_id']} is a whole-slide analysis" in i.value for i in at.info)
    (link,) = slides_links(at)
    assert link.query_string == f"run={saved['run_id']}"
    assert at.metric  # the field's review is still drawn


def test_review_page_opened_by_url_on_a_slide_shows_the_notice_not_a_traceback(saved, data_dir):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["user_name"] = "Dr Lee"
    at.query_params["analysis"] = str(saved["cli_id"])
    at.switch_page("pages/review.py")
    at.run()
    clean(at)
    assert any("whole-slide analysis" in i.value for i in at.info)
    assert "analysis" not in at.query_params  # a reload shows the picker


# ---------------------------------------------------------------------------------------------- Tumour board


def test_tumour_board_puts_a_slide_beside_a_field_per_mm2_of_tissue(saved, data_dir):
    s, f = saved["summary"], saved["field"]
    at = page("tumour_board", board_ids=[saved["field_id"], saved["cli_id"]])
    clean(at)
    table = at.dataframe[0].value
    field_col, slide_col = table.columns
    assert field_col == f"1. CRC-1 · #{saved['field_id']} · crc-field.png"
    assert slide_col == f"2. CRC-1 · #{saved['cli_id']} · crc-field.tif (whole slide)"
    assert table.loc["area (mm²)", slide_col] == format_value(s["tissue_area_mm2"], 4)
    for summary, col in ((f, field_col), (s, slide_col)):
        for cls in ("inflammatory", "fibroblast"):
            assert table.loc[f"{cls} cells", col] == format_figure(summary["counts"][cls], "cells")
            assert table.loc[f"{cls} density", col] == format_figure(
                summary["counts"][cls] / summary["tissue_area_mm2"], "cells/mm²", with_unit=True)
    # the same tissue as a field and as a slide: the same densities within a few cells at the tile borders
    assert s["density_per_mm2"]["inflammatory"] == pytest.approx(f["density_per_mm2"]["inflammatory"], rel=0.1)
    notes = [c.value for c in at.caption if "whole slide" in c.value]
    assert notes == [ps.board_note([{"summary": f}, {"summary": s}])] and "as for the fields" in notes[0]
    next(b for b in at.button if b.label == "Prepare comparison PDF").click().run()
    clean(at)
    ids, pdf = at.session_state["board_pdf"]
    assert ids == (saved["field_id"], saved["cli_id"]) and pdf.startswith(b"%PDF")


# ------------------------------------------------------------------------------------------- core.slides.pages_support


def test_pictures_and_labels_follow_the_kind_of_analysis():
    slide = {"kind": "slide", "heatmap": {"bin_um": 50.0},
             "hot_spots": {"n_tissue_bins": 12, "n_hot_bins": 2, "n_cold_bins": 1, "hot_area_mm2": 0.005}}
    assert ps.kind_label(slide) == "whole slide" and ps.kind_label({"kind": "field"}) == "field"
    assert ps.kind_label(None) == "field" and ps.area_label(slide) == "Tissue area (mm²)"
    shown = ps.pictures(slide, ["cells.parquet", "immune_density.png", "overlay.png"])
    assert [n for n, _ in shown] == ["overlay.png", "immune_density.png"]
    assert "50 µm squares" in shown[1][1] and "2 hot and 1 cold of 12 squares, hot area 0.0050 mm²" in shown[1][1]
    assert ps.pictures(slide, ["summary.json"]) == []
    assert ps.pictures({}, ["overlay.png", "immune_density.png"]) == [("overlay.png", "Detections over the image")]
    assert ps.slide_facts({"counts": {}}) == []
    rows = ps.slide_facts({"kind": "slide"})  # an incomplete summary reads "n/a", never raises
    assert {r["item"] for r in rows} >= {"slide", "tiles", "tissue area", "run"}
    assert dict((r["item"], r["value"]) for r in rows)["slide"] == "n/a"


def test_board_note_says_which_densities_are_per_mm2_of_tissue():
    slide, field, old = {"summary": {"kind": "slide"}}, {"summary": {"tissue_area_mm2": 0.1}}, {"summary": {}}
    assert ps.board_note([field, old]) is None
    assert ps.board_note([slide]).startswith("Analysis 1 is a whole slide")
    assert "as for the fields" in ps.board_note([field, slide])
    both = ps.board_note([slide, old, slide])
    assert both.startswith("Analysis 1, 3 are whole slides") and "Analysis 2 (field) was analysed before" in both


def test_slides_page_query_needs_a_kept_finished_run_the_user_may_open(tmp_path, monkeypatch):
    from core.auth import User

    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path))
    run_id = uuid.uuid4().hex
    run = tmp_path / "slide-runs" / run_id
    analysis = {"summary": {"kind": "slide"}, "params": {"slide_run": run_id}}
    assert ps.slides_page_query(analysis) is None  # no such run (removed after 14 days)
    (run / "out").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"actor": {"name": "ana"}, "jobs": ["j"]}), encoding="utf-8")
    assert ps.slides_page_query(analysis) is None  # not finished: no summary, no view
    (run / "out" / "summary.json").write_text("{}", encoding="utf-8")
    (run / "view").mkdir()
    (run / "view" / "view.json").write_text("{}", encoding="utf-8")
    assert ps.slides_page_query(analysis) == {"run": run_id}  # local mode
    assert ps.slides_page_query(analysis, User("ana", "analyst", ())) == {"run": run_id}
    assert ps.slides_page_query(analysis, User("ben", "analyst", ())) is None  # another user's run
    assert ps.slides_page_query(analysis, User("root", "admin", ())) == {"run": run_id}
    assert ps.slides_page_query({"summary": {}, "params": {"slide_run": run_id}}) is None  # a field
    assert ps.slides_page_query({"summary": {"kind": "slide"}, "params": {"slide_run": "../x"}}) is None
    assert ps.slides_page_query({"summary": {"kind": "slide"}, "params": {}}) is None  # command line / batch
    notice = ps.review_notice(7, run_kept=False)
    assert notice.startswith("Analysis #7 is a whole-slide analysis") and "14 days" in notice


def test_reopening_a_slide_for_review_outside_the_pages_is_refused_with_where_to_go(saved):
    """The command line or a notebook asking core.review for a slide analysis hears it is a slide and where to open it."""
    from core.errors import InputError
    from core.outputs.store import DB_FILENAME, CaseStore
    from core.review.saved import result_from_store

    store = CaseStore(f"sqlite:///{saved['data'] / DB_FILENAME}")
    try:
        with pytest.raises(InputError, match="whole slide.*Slides page"):
            result_from_store(store, saved["cli_id"])
        result, _ = result_from_store(store, saved["field_id"])  # a field of the same case still opens
        assert len(result.cells) == saved["field"]["n_cells"]
        kinds = {r["id"]: r["kind"] for r in store.list_analyses()}  # the pickers can mark slides without a read each
        assert kinds == {saved["field_id"]: "field", saved["cli_id"]: "slide", saved["app_id"]: "slide"}
    finally:
        store.close()
