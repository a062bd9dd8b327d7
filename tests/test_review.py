"""Review helpers (canvas → regions in µm, clicks → cells, corrected statistics), the store's
review update, and an AppTest of the Review page with a small analysis in the session."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import review as rv
from core.cells import make_cell_table
from core.errors import InputError
from core.io import ImageData
from core.spatial.regions import Region, regions_to_geojson
from core.results import AnalysisResult, RunInfo
from core.scenarios.registry import get_scenario
from core.review import CorrectionLog
from core.spatial import SpatialParams

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "pages" / "review.py")


def small_result(mpp: float = 0.5, created: str = "2026-01-01T00:00:00+00:00") -> AnalysisResult:
    """A 200 x 300 px image (100 x 150 µm at 0.5): 10 immune cells on a row, 4 tumour cells."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(150, 255, size=(200, 300, 3), dtype=np.uint8)
    xy_imm = np.c_[np.linspace(20, 280, 10), np.full(10, 50.0)]
    xy_tum = np.array([[40.0, 150.0], [100.0, 150.0], [160.0, 150.0], [220.0, 150.0]])
    cells = pd.concat(
        [
            make_cell_table(xy_imm, "cd3-positive", "immune", np.full(10, 0.9), mpp),
            make_cell_table(xy_tum, "tumour-cell", "tumour", np.full(4, 1.0), mpp),
        ],
        ignore_index=True,
    )
    run = RunInfo("cd3-ihc", "CD3", "w.safetensors", "0" * 64, "1", False, "cpu", "float32", 0.1, "test", "test",
                  created_at=created)
    return AnalysisResult(ImageData(pixels, mpp, "tiny.png", "ab" * 32, "user"), cells, run, get_scenario("cd3-ihc"))


# ----------------------------------------------------------------------------- canvas → regions


def test_display_frame_keeps_aspect_and_never_enlarges():
    f = rv.display_frame((700, 980), max_width_px=490, max_height_px=1000)
    assert (f.canvas_width_px, f.canvas_height_px) == (490, 350)
    assert f.scale_x == pytest.approx(2.0) and f.scale_y == pytest.approx(2.0)
    small = rv.display_frame((100, 50), 900, 700)
    assert (small.canvas_width_px, small.canvas_height_px) == (50, 100)
    with pytest.raises(InputError):
        rv.display_frame((0, 10))


def test_rectangle_gives_exact_area_in_um2():
    # Canvas at half the image's size: 1 canvas px = 2 image px = 1 µm at mpp 0.5.
    frame = rv.CanvasFrame(1000, 800, 500, 400)
    rect = {"type": "Rect", "left": 10, "top": 20, "width": 100, "height": 50, "strokeWidth": 0,
            "originX": "left", "originY": "top", "scaleX": 1, "scaleY": 1, "angle": 0}
    regions, skipped = rv.canvas_objects_to_regions([rect], frame, 0.5, "tumour")
    assert skipped == []
    (r,) = regions
    assert r.kind == "tumour" and r.name == "Tumour 1"
    assert r.area_um2 == pytest.approx(100 * 50)  # 200 x 100 image px x 0.25 µm²
    assert r.bbox_um == pytest.approx((10, 20, 110, 70))


def test_rectangle_stroke_and_scale_follow_fabric():
    # fabric: (left, top) is the corner of the box that includes the stroke; strokeUniform
    # keeps the stroke unscaled. Geometry = 40 x 30 scaled by 2 → 80 x 60, starting at
    # left + strokeWidth / 2.
    frame = rv.CanvasFrame(100, 100, 100, 100)
    rect = {"type": "Rect", "left": 5, "top": 7, "width": 40, "height": 30, "strokeWidth": 4, "strokeUniform": True,
            "scaleX": 2, "scaleY": 2}
    _, pts = rv.canvas_object_points(rect)
    assert pts.min(axis=0) == pytest.approx([7, 9])
    assert pts.max(axis=0) == pytest.approx([87, 69])
    rotated = dict(rect, angle=90, originX="center", originY="center", left=50, top=50)
    _, pts = rv.canvas_object_points(rotated)
    assert pts.min(axis=0) == pytest.approx([20, 10])  # 80 wide becomes 80 tall
    assert pts.max(axis=0) == pytest.approx([80, 90])


def test_polygon_points_are_placed_by_their_path_offset():
    # As fabric writes a closed polygon: points absolute, left/top = bbox corner minus
    # half the stroke, so the polygon lands where it was clicked.
    pts = [{"x": 10, "y": 10}, {"x": 110, "y": 10}, {"x": 60, "y": 90}]
    obj = {"type": "Polygon", "points": pts, "left": 9, "top": 9, "width": 100, "height": 80, "strokeWidth": 2}
    _, xy = rv.canvas_object_points(obj)
    assert xy == pytest.approx(np.array([[10, 10], [110, 10], [60, 90]], dtype=float))
    moved = dict(obj, left=19, top=29)  # dragged by (10, 20) in edit mode
    _, xy = rv.canvas_object_points(moved)
    assert xy[0] == pytest.approx([20, 30])
    frame = rv.CanvasFrame(200, 200, 200, 200)
    (r,), _ = rv.canvas_objects_to_regions([obj], frame, 1.0, "stroma")
    assert r.area_um2 == pytest.approx(0.5 * 100 * 80)


def test_freehand_path_is_closed_and_curves_are_flattened():
    # A freehand square traced with straight and quadratic segments; the brush's path
    # is open, the region joins its end to its start.
    path = [["M", 0, 0], ["L", 40, 0], ["Q", 40, 0, 40, 20], ["L", 40, 40], ["L", 0, 40]]
    obj = {"type": "Path", "path": path, "left": -1, "top": -1, "width": 40, "height": 40, "strokeWidth": 2,
           "fill": None}
    kind, xy = rv.canvas_object_points(obj)
    assert kind == "shape"
    assert xy.min(axis=0) == pytest.approx([0, 0]) and xy.max(axis=0) == pytest.approx([40, 40])
    frame = rv.CanvasFrame(80, 80, 40, 40)  # 2 image px per canvas px
    (r,), _ = rv.canvas_objects_to_regions([obj], frame, 0.25, "exclude")
    assert r.area_um2 == pytest.approx((80 * 0.25) ** 2)
    with pytest.raises(InputError):
        rv.canvas_object_points({"type": "Path", "path": [["A", 1, 2, 3, 4, 5, 6, 7]]})


def test_stray_clicks_and_points_are_not_regions():
    frame = rv.CanvasFrame(100, 100, 100, 100)
    tiny = {"type": "Rect", "left": 5, "top": 5, "width": 2, "height": 2, "strokeWidth": 0}
    click = {"type": "Circle", "left": 10, "top": 10, "radius": 3, "strokeWidth": 1, "originX": "left", "originY": "center"}
    regions, skipped = rv.canvas_objects_to_regions([tiny, click], frame, 0.5, "tumour")
    assert regions == [] and len(skipped) == 1
    with pytest.raises(InputError, match="mpp"):
        rv.canvas_objects_to_regions([tiny], frame, None, "tumour")
    with pytest.raises(InputError, match="kind"):
        rv.canvas_objects_to_regions([tiny], frame, 0.5, "necrosis")


def test_names_continue_numbering_of_existing_regions():
    frame = rv.CanvasFrame(100, 100, 100, 100)
    rect = {"type": "Rect", "left": 0, "top": 0, "width": 20, "height": 20, "strokeWidth": 0}
    old = [Region("Tumour 1", "tumour", [[0, 0], [1, 0], [1, 1]]), Region("Stroma 1", "stroma", [[0, 0], [1, 0], [1, 1]])]
    (r,), _ = rv.canvas_objects_to_regions([rect], frame, 1.0, "tumour", existing=old)
    assert r.name == "Tumour 2"


def test_point_tool_click_maps_to_image_pixels():
    # The point tool puts a circle's left edge at x - (radius + strokeWidth / 2).
    frame = rv.CanvasFrame(600, 400, 300, 200)
    click = {"type": "Circle", "left": 50 - 3.5, "top": 80, "radius": 3, "strokeWidth": 1, "originX": "left",
             "originY": "center"}
    xy = rv.canvas_click_points([click, {"type": "Rect", "left": 0, "top": 0, "width": 9, "height": 9}], frame)
    assert xy == pytest.approx(np.array([[100.0, 160.0]]))


# ----------------------------------------------------------------------------- cells


def test_nearest_cell_within_radius():
    res = small_result()
    cells = rv.reviewed_cells(res, None)
    # immune cells at x = 20, 48.9, ... px on y = 50 px; at mpp 0.5: (10, 25) µm is cell 0.
    hit = rv.nearest_cell(cells, 11.0, 25.0, 5.0)
    assert hit is not None and hit[0] == 0 and hit[1] == pytest.approx(1.0)
    assert rv.nearest_cell(cells, 11.0, 40.0, 5.0) is None  # 15 µm away
    assert rv.nearest_cell(cells, 22.0, 52.0, 3.0, units="px")[0] == 0
    with pytest.raises(InputError):
        rv.nearest_cell(cells, 0, 0, 1.0, units="mm")


def test_reviewed_cells_and_summary_follow_the_log():
    res = small_result()
    log = CorrectionLog()
    log.delete_cell(0, user="s1")
    log.relabel_cell(10, "cd3-positive", "immune", user="s1")
    new = log.add_cell(150.0, 100.0, "cd3-positive", "immune", mpp=0.5, user="s1")
    cells = rv.reviewed_cells(res, log)
    assert len(cells) == 14 and 0 not in set(cells["cell_id"])
    assert cells.set_index("cell_id").loc[new, "edited"] == "added"
    assert cells.set_index("cell_id").loc[10, "edited"] == "relabelled"
    assert len(res.cells) == 14 and "edited" not in res.cells  # original untouched
    s = rv.reviewed_summary(res, cells, log)
    assert s["counts"] == {"cd3-positive": 11, "tumour-cell": 3}
    assert s["review"]["n_corrections"] == 3 and s["review"]["detected_n_cells"] == 14
    assert s["density_per_mm2"]["cd3-positive"] == pytest.approx(11 / res.summary["area_mm2"])
    assert res.summary["counts"]["cd3-positive"] == 10


def test_correction_classes_offer_roles_the_scenario_lacks():
    from core.scenarios.registry import get_scenario

    classes = rv.correction_classes(get_scenario("cd3-ihc").classes)
    assert classes[0]["name"] == "cd3-positive"
    assert {c["role"] for c in classes} >= {"immune", "tumour", "stroma", "other"}


# ----------------------------------------------------------------------------- statistics


def test_review_params_window_is_the_image_extent():
    res = small_result()
    p = rv.review_params(res, SpatialParams(n_simulations=3))
    assert p.window_um == (0.0, 0.0, 150.0, 100.0) and p.n_simulations == 3


def test_statistics_change_with_regions_and_corrections():
    res = small_result()
    params = SpatialParams(n_simulations=0, radii_um=(10.0, 30.0))
    # Tumour region: the lower half (y 50..100 µm); immune cells are at y = 25 µm.
    tumour = Region("Tumour 1", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]])
    s0 = rv.review_statistics(res, None, [tumour], params)
    assert s0["window"]["area_mm2"] == pytest.approx(150 * 100 / 1e6)
    assert s0["regions"]["by_kind"]["tumour"]["counts_by_role"]["immune"] == 0
    log = CorrectionLog()
    log.add_cell(100.0, 160.0, "cd3-positive", "immune", mpp=0.5)  # (50, 80) µm: inside the tumour
    s1 = rv.review_statistics(res, log, [tumour], params)
    k1 = s1["regions"]["by_kind"]["tumour"]
    assert k1["counts_by_role"]["immune"] == 1
    assert k1["density_per_mm2_by_role"]["immune"] == pytest.approx(1 / (150 * 50 / 1e6))
    assert s1["corrections"]["n_corrections"] == 1
    assert s1["compartments"]["intratumoral_immune_density_per_mm2"] == pytest.approx(1 / 0.0075)
    # that cell sits 5 µm from the tumour cell at (50, 75) µm; the others are >= 50 µm away
    rows = {r["radius_um"]: r for r in s1["distances"]["within_radius"]}
    assert rows[10.0]["n_immune_within"] == 1 and rows[30.0]["n_immune_within"] == 1
    figures = {f["label"]: f for f in rv.key_figures(s1)}
    assert figures["Immune cells in tumour regions"]["value"] == 1
    assert figures["Immune cells within 10 µm of a tumour cell"]["value"] == pytest.approx(1 / 11)
    assert "r = 10 µm" in figures["Immune cells within 10 µm of a tumour cell"]["note"]
    assert figures["Cells corrected by hand"]["value"] == 1
    assert rv.format_figure(1 / 11, "fraction") == "9.1 %" and rv.format_figure(None, "cells/mm²") == "n/a"
    assert rv.state_fingerprint(log, [tumour], params) != rv.state_fingerprint(None, [tumour], params)


def test_render_review_image_draws_markers_and_regions():
    res = small_result()
    frame = rv.display_frame(res.image.shape, 150, 100)
    shown = rv.downscale(res.image.rgb, frame)
    assert shown.shape == (100, 150, 3)
    tumour = Region("Tumour 1", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]])
    out = rv.render_review_image(shown, frame, rv.reviewed_cells(res, None), {"cd3-positive": "#ff0000"}, [tumour], 0.5,
                                 deleted_xy_px=np.array([[100.0, 100.0]]))
    assert out.shape == shown.shape and out.dtype == np.uint8
    assert not np.array_equal(out, shown)


# ----------------------------------------------------------------------------- store


def test_store_update_review(tmp_path):
    from core.outputs.store import CaseStore, StoreError

    store = CaseStore(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    res = small_result()
    aid = store.save_analysis("B-1", res.summary)
    log = CorrectionLog()
    log.delete_cell(1, user="s")
    log.delete_cell(2, user="s")
    log.undo(user="s")
    regions = [Region("Tumour 1", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]])]
    store.update_review(aid, regions=regions_to_geojson(regions, 0.5), corrections=json.loads(log.to_json()),
                        n_corrections=log.n_corrections, spatial={"available": True, "x": np.float64(1.5)},
                        summary={**res.summary, "n_cells": 13})
    a = store.get_analysis(aid)
    assert a["n_corrections"] == 1
    assert a["regions"]["features"][0]["properties"]["classification"]["name"] == "Tumor"
    assert CorrectionLog.from_json(a["corrections"]).n_corrections == 1
    assert a["spatial"] == {"available": True, "x": 1.5} and a["summary"]["n_cells"] == 13
    store.update_review(aid, regions=None, corrections=None, n_corrections=0)
    a = store.get_analysis(aid)
    assert a["regions"] is None and a["n_corrections"] == 0 and a["spatial"]["x"] == 1.5  # spatial kept
    with pytest.raises(StoreError):
        store.update_review(aid + 99, regions=None, corrections=None)
    store.close()


# ----------------------------------------------------------------------------- page


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TILSCOPE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path))
    return tmp_path


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_review_page_without_analysis_says_where_to_get_one(data_dir):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("Analyze page" in i.value for i in at.info)


def test_review_page_shows_numbers_and_follows_corrections(data_dir):
    res = small_result()
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["analysis"] = res
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    m = metrics(at)
    assert m["Cells"] == "14" and m["Immune cells"] == "10" and m["Tumour cells"] == "4"
    assert m["Immune density, whole image (cells/mm²)"] == f"{10 / 0.015:,.0f}"
    assert m["Cells corrected by hand"] == "0"
    # Regions and corrections made outside the canvas (as the canvas handlers make them).
    at.session_state["regions"] = [Region("Tumour 1", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]])]
    log = at.session_state["corrections"]
    log.add_cell(100.0, 160.0, "cd3-positive", "immune", mpp=0.5, user="test")
    log.delete_cell(0, user="test")
    at.run()
    assert not at.exception, at.exception
    m = metrics(at)
    assert m["Immune cells in tumour regions"] == "1"
    assert m["Immune density in tumour regions (cells/mm²)"] == f"{1 / 0.0075:,.0f}"
    assert m["Cells corrected by hand"] == "2"
    table = at.dataframe[0].value
    assert (table["edited"] == "added").sum() == 1 and len(table) == 14
    at.radio(key="review_mode").set_value("Correct cells").run()
    undo = next(b for b in at.button if b.label == "Undo last correction")
    undo.click().run()
    assert not at.exception
    assert metrics(at)["Cells corrected by hand"] == "1"
    assert any("Undone: delete" in s.value for s in at.info)


def test_review_page_resets_for_another_analysis_and_saves(data_dir):
    from core.outputs.store import CaseStore

    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["analysis"] = small_result()
    at.run()
    at.session_state["corrections"].delete_cell(3, user="t")
    at.session_state["regions"] = [Region("Tumour 1", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]])]
    at.run()
    label = next(t for t in at.text_input if t.label == "Case label")
    label.input("B-77").run()
    next(b for b in at.button if b.label == "Save review").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    aid = at.session_state["analysis_id"]
    a = CaseStore().get_analysis(aid)
    assert a["case_label"] == "B-77" and a["n_corrections"] == 1
    assert a["summary"]["n_cells"] == 13 and a["regions"]["features"]
    assert {f["name"] for f in a["files"]} >= {"report.pdf", "cells.csv"}
    # Saving again updates the same analysis.
    at.session_state["corrections"].delete_cell(4, user="t")
    at.run()
    next(b for b in at.button if b.label == "Save review").click().run()
    assert not at.exception and CaseStore().get_analysis(aid)["n_corrections"] == 2
    assert len(CaseStore().list_analyses()) == 1
    # A different run: fresh regions and corrections... unless it is the saved one.
    at.session_state["analysis"] = small_result(created="2026-02-02T00:00:00+00:00")
    at.run()
    assert not at.exception
    assert at.session_state["regions"] == [] and at.session_state["corrections"].n_corrections == 0
    at.session_state["analysis"] = small_result()
    at.run()
    assert at.session_state["corrections"].n_corrections == 2 and len(at.session_state["regions"]) == 1


def test_review_page_draw_mode_offers_every_kind_and_tool(data_dir):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["analysis"] = small_result()
    at.run()
    assert not at.exception
    assert at.radio(key="region_kind").options == ["Tumour", "Stroma", "Exclude (artefact, necrosis)", "Invasive-margin border"]
    assert at.radio(key="region_tool").options == ["Polygon", "Rectangle", "Freehand"]
    at.radio(key="review_mode").set_value("Correct cells").run()
    assert at.radio(key="correct_action").options == ["Add a missed cell", "Delete a cell", "Relabel a cell"]
    assert "Tumour cell (marked by hand)" in at.selectbox(key="correct_class").options
