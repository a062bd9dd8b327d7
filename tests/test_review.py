"""Review helpers (canvas → regions in µm, the zoomable view, clicks → cells, corrected statistics),
the review session (edits applied incrementally, equal to replaying the log), reviews of saved
analyses (open from the store, save back with the original kept, the audit log), and AppTests
of the Review page."""

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
    params = SpatialParams(n_simulations=0, radii_um=(10.0, 30.0), min_cells_per_role=1)  # a small fixture
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


# ----------------------------------------------------------------------------- zoomable view


def test_view_frame_zooms_pans_and_stays_inside_the_image():
    f = rv.view_frame((3000, 4000), 1.0, (3990, 10), 800, 600)  # centre near the top-right corner
    assert (f.x0_px, f.y0_px, f.view_w, f.view_h) == (3200, 0, 800, 600)
    assert f.zoom == pytest.approx(1.0) and not f.is_whole_image
    # canvas pixel (10, 20) is image pixel (3210, 20); and back
    assert f.to_image_px([[10, 20]]).tolist() == [[3210.0, 20.0]]
    assert f.to_canvas_px([[3210, 20]]).tolist() == [[10.0, 20.0]]
    z2 = rv.view_frame((3000, 4000), 2.0, (2000, 1500), 800, 600)
    assert (z2.view_w, z2.view_h, z2.canvas_width_px) == (400, 300, 800)
    assert z2.centre_px == (2000.0, 1500.0)
    assert z2.in_view(np.array([[2000.0, 1500.0], [100.0, 100.0]])).tolist() == [True, False]
    fit = rv.fit_zoom((3000, 4000), 800, 600)
    whole = rv.view_frame((3000, 4000), fit, None, 800, 600)
    assert whole.is_whole_image and fit == pytest.approx(0.2)
    assert rv.zoom_steps(fit) == [fit, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert rv.fit_zoom((100, 100), 800, 600) == 2.0  # small fields are enlarged, at most twice
    with pytest.raises(InputError, match="zoom"):
        rv.view_frame((10, 10), 0.0)


def test_render_view_draws_only_the_view_with_nucleus_sized_markers():
    res = small_result()
    cells = rv.reviewed_cells(res, None)
    frame = rv.view_frame(res.image.shape, 4.0, (20, 50), 200, 120)  # 50 x 30 px around immune cell 0
    view = rv.render_view(res.image.rgb, frame, cells, {"cd3-positive": "#ff0000"}, [], 0.5)
    assert view.shape == (120, 200, 3)
    assert rv.marker_radius_px(0.5, 4.0) == 12 and rv.marker_radius_px(0.5, 0.25) == 2
    red = (view[..., 0] > 200) & (view[..., 1] < 60) & (view[..., 2] < 60)
    cx, cy = frame.to_canvas_px([[20.0, 50.0]])[0]
    assert (frame.x0_px, frame.view_w) == (0, 50) and cx == 80.0
    ys, xs = np.nonzero(red[:, :120])  # the ring around cell 0 (cell 1, at x 48.9 px, is at the right edge)
    assert red[:, :120].sum() > 50 and abs(xs.mean() - cx) < 3 and abs(ys.mean() - cy) < 3
    assert (xs.max() - xs.min()) == pytest.approx(2 * 12, abs=3)  # 4 µm radius at 0.5 µm/px x 4 = 16 → capped at 12
    nav = rv.render_navigator(rv.downscale(res.image.rgb, rv.display_frame(res.image.shape, 150, 100)), res.image.shape,
                              frame)
    assert nav.shape == (100, 150, 3)


# ----------------------------------------------------------------------------- review session


def test_session_edits_equal_replaying_the_log_and_say_what_happened():
    res = small_result()
    s = rv.ReviewSession(res)
    out = s.delete_at(21.0, 51.0, 5.0, user="Dr A", comment="stain deposit")
    assert out.changed and out.message == "Deleted cell 0 (cd3-positive), 0.7 µm from the click."
    out = s.add_at(150.0, 100.0, "cd3-positive", "immune", user="Dr A", label="CD3+ lymphocyte")
    assert out.message == "Added hand-added cell 1 (CD3+ lymphocyte) at x 150, y 100 px." and "-1" not in out.message
    out = s.relabel_at(40.0, 150.0, 5.0, "cd3-positive", "immune", user="Dr B")
    assert out.message == "Relabelled cell 10: tumour-cell → cd3-positive."
    again = s.relabel_at(40.0, 150.0, 5.0, "cd3-positive", "immune", user="Dr B", label="CD3+ lymphocyte")
    assert again.kind == "info" and "already CD3+ lymphocyte" in again.message
    miss = s.delete_at(150.0, 190.0, 5.0, user="Dr A")
    assert miss.kind == "warning" and "No cell within 2.5 µm" in miss.message
    with pytest.raises(InputError, match="outside"):
        s.add_at(400.0, 10.0, "cd3-positive", "immune", user="Dr A")
    pd.testing.assert_frame_equal(s.cells(), s.log.apply(res.cells))
    assert s.class_counts() == {"cd3-positive": 11, "tumour-cell": 3}
    assert s.role_counts()["immune"] == 11
    undo = s.undo(user="Dr B")
    assert undo.message == "Undone: the relabelling of cell 10 (tumour-cell → cd3-positive)."
    pd.testing.assert_frame_equal(s.cells(), s.log.apply(res.cells))
    assert s.deleted_xy_px().tolist() == [[20.0, 50.0]]
    log = s.log.edits
    assert log[0].comment == "stain deposit" and log[0].from_class == "cd3-positive" and log[2].from_class == "tumour-cell"


def test_session_follows_random_edits_and_live_figures_equal_the_full_statistics():
    """Incremental updates give what a full replay gives, after any sequence of edits and undos."""
    from core.spatial import compute_spatial_stats

    res = small_result()
    s = rv.ReviewSession(res)
    s.add_regions([Region("T", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]]),
                   Region("X", "exclude", [[0, 0], [40, 0], [40, 40], [0, 40]])], user="u")
    rng = np.random.default_rng(3)
    params = SpatialParams(n_simulations=0)
    for k in range(40):
        op = rng.choice(["add", "delete", "relabel", "undo"])
        x, y = rng.uniform(0, 299), rng.uniform(0, 199)
        if op == "add":
            s.add_at(x, y, "cd3-positive", "immune", user="u")
        elif op == "delete":
            s.delete_at(x, y, 40.0, user="u")
        elif op == "relabel":
            s.relabel_at(x, y, 40.0, str(rng.choice(["cd3-positive", "tumour-cell"])), "tumour", user="u")
        else:
            s.undo(user="u")
        if k % 8 == 7:
            ref = s.log.apply(res.cells)
            pd.testing.assert_frame_equal(s.cells(), ref)
            live = s.live_statistics(params)
            full = compute_spatial_stats(ref, s.regions, s.params(params))
            for section in ("window", "counts", "regions", "distances", "compartments", "stromal_til_proxy", "phenotype",
                            "morisita_horn"):
                assert live[section] == full[section], section
            assert not set(rv.HEAVY_SECTIONS) & set(live)
    # a log changed behind the session's back (a notebook, a test) is picked up
    s.log.add_cell(5.0, 5.0, "cd3-positive", "immune", mpp=0.5, user="u")
    pd.testing.assert_frame_equal(s.cells(), s.log.apply(res.cells))


def test_full_statistics_are_cached_until_something_changes():
    s = rv.ReviewSession(small_result())
    p = SpatialParams(n_simulations=0)
    assert s.statistics_if_current(p) is None
    first = s.statistics(p)
    assert s.statistics_if_current(p) == first and s.last_statistics_s is not None
    s.delete_at(20.0, 50.0, 5.0, user="u")
    assert s.statistics_if_current(p) is None and s.last_statistics() == first
    assert s.statistics(p)["counts"]["n_cells_used"] == 13


def test_reviewed_summary_keeps_other_keys_and_leaves_exclusions_out():
    res = small_result()
    base = {**res.summary, "outside_validated_use": ["magnification outside 0.4-0.6 µm/px"], "note_from_elsewhere": 1}
    s = rv.ReviewSession(res, base_summary=base)
    s.delete_at(20.0, 50.0, 5.0, user="Dr A")
    plain = s.reviewed_summary(user="Dr A", time_iso="2026-01-02T03:04:05+00:00")
    assert plain["outside_validated_use"] == ["magnification outside 0.4-0.6 µm/px"] and plain["note_from_elsewhere"] == 1
    assert plain["n_cells"] == 13 and plain["counts"] == {"cd3-positive": 9, "tumour-cell": 4}
    assert plain["review"]["reviewed_by"] == "Dr A" and plain["review"]["detected_n_cells"] == 14
    assert plain["created_at"] == res.summary["created_at"]
    # an exclusion over x < 30 µm holds immune cell 1 (24.4 µm; cell 0 is deleted) and tumour cell 10 (20 µm)
    s.add_regions([Region("Exclude 1", "exclude", [[0, 0], [30, 0], [30, 100], [0, 100]])], user="Dr A")
    out = s.reviewed_summary(stats={"available": True})
    assert out["n_cells"] == 11 and out["counts"] == {"cd3-positive": 8, "tumour-cell": 3}
    assert out["review"]["n_cells_in_exclusions"] == 2
    assert "minus 1 exclusion region" in out["analysed_area"] and out["area_mm2"] < plain["area_mm2"]
    assert out["density_per_mm2"]["cd3-positive"] == pytest.approx(8 / out["area_mm2"])
    assert out["spatial"] == {"available": True}
    assert s.live_statistics()["counts"]["n_cells_used"] == out["n_cells"]  # the Review page's "Cells"
    # the reviewed result reads the same numbers (the Analyze page shows it)
    reviewed = s.reviewed_result()
    assert len(reviewed.cells) == 11 and reviewed.summary["counts"] == out["counts"]
    assert reviewed.summary["area_mm2"] == pytest.approx(out["area_mm2"])


def test_audit_events_list_what_changed_since_the_last_save():
    s = rv.ReviewSession(small_result())
    s.delete_at(20.0, 50.0, 5.0, user="Dr A", comment="debris")
    s.relabel_at(40.0, 150.0, 5.0, "cd3-positive", "immune", user="Dr A")
    s.add_regions([Region("Tumour 1", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]])], user="Dr A")
    s.undo(user="Dr B")
    events = s.audit_events()
    assert [e["action"] for e in events] == ["delete", "relabel", "region added", "undo"]
    assert events[0]["comment"] == "debris" and events[0]["detail"]["from_class"] == "cd3-positive"
    assert events[1]["detail"]["to_class"] == "cd3-positive" and events[3]["user"] == "Dr B"
    assert s.has_unsaved_changes
    s.mark_saved("Dr A")
    assert s.audit_events() == [] and s.saved_by == "Dr A"


# ----------------------------------------------------------------------------- saved analyses


def saved_store(tmp_path):
    from core.outputs.exports import save_result
    from core.outputs.store import CaseStore

    store = CaseStore(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    res = small_result()
    aid = save_result(res, "B-1", store, created_by="Dr A")
    return store, res, aid


def test_a_saved_analysis_opens_as_detected_with_its_image(tmp_path):
    store, res, aid = saved_store(tmp_path)
    a = store.get_analysis(aid)
    assert a["created_by"] == "Dr A" and [f["name"] for f in a["originals"]] == ["source-image.png"]
    assert "source-image.png" not in {f["name"] for f in a["files"]}  # not an export
    result, notes = rv.result_from_store(store, aid)
    assert notes == []
    np.testing.assert_array_equal(result.image.rgb, res.image.rgb)
    assert result.image.mpp == 0.5 and result.image.sha256 == res.image.sha256
    np.testing.assert_allclose(result.cells[["x_px", "y_px"]], res.cells[["x_px", "y_px"]], atol=1e-3)
    assert result.cells["cell_class"].tolist() == res.cells["cell_class"].tolist()
    assert result.summary["created_at"] == res.summary["created_at"]
    session = rv.open_saved_analysis(store, aid)
    assert session.analysis_id == aid and session.case_label == "B-1" and len(session.cells()) == 14
    assert rv.open_saved_analysis(store, aid, res).result is res  # the Analyze page's run is used as it is


def test_saving_a_review_keeps_the_original_and_rebuilds_every_export(tmp_path):
    import io

    from PIL import Image

    store, res, aid = saved_store(tmp_path)
    before = {n: store.get_file(aid, n) for n in ("overlay.png", "cells.csv", "summary.json", "report.pdf")}
    session = rv.open_saved_analysis(store, aid)
    session.delete_at(20.0, 50.0, 5.0, user="Dr B", comment="not a cell")
    session.relabel_at(40.0, 150.0, 5.0, "cd3-positive", "immune", user="Dr B")
    session.add_regions([Region("Tumour 1", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]])], user="Dr B")
    assert rv.save_review(store, session, user="Dr B", comment="second read",
                          params=SpatialParams(n_simulations=0)) == aid
    a = store.get_analysis(aid)
    assert a["reviewed_by"] == "Dr B" and a["n_corrections"] == 2
    assert a["summary"]["counts"] == {"cd3-positive": 10, "tumour-cell": 3} and a["summary"]["n_cells"] == 13
    assert a["detected_summary"]["counts"] == {"cd3-positive": 10, "tumour-cell": 4}
    assert a["spatial"]["corrections"]["n_corrections"] == 2 and a["params"]["spatial"]["n_simulations"] == 0
    for name, data in before.items():  # the exports before review are kept as they were
        assert store.get_original(aid, name) == data
    cells = pd.read_csv(io.BytesIO(store.get_file(aid, "cells.csv")))
    assert len(cells) == 13 and (cells["edited"] == "relabelled").sum() == 1
    saved = json.loads(store.get_file(aid, "summary.json"))
    assert saved["counts"] == a["summary"]["counts"] and saved["review"]["reviewed_by"] == "Dr B"
    overlay = np.asarray(Image.open(io.BytesIO(store.get_file(aid, "overlay.png"))).convert("RGB"))
    tumour_red = (overlay[..., 0] == 200) & (overlay[..., 1] == 0) & (overlay[..., 2] == 0)
    assert tumour_red[100, :].sum() > 200  # the region's top edge (y 50 µm = 100 px) is drawn across the overlay
    assert store.get_file(aid, "report.pdf") != before["report.pdf"]
    actions = [(e["user"], e["action"]) for e in reversed(store.audit_log(aid))]
    assert actions == [("Dr A", "analysis saved"), ("Dr B", "delete"), ("Dr B", "relabel"), ("Dr B", "region added"),
                       ("Dr B", "review saved")]
    assert store.audit_log(aid)[0]["comment"] == "second read"
    # reopened: the saved review comes back; a second save keeps the first originals
    again = rv.open_saved_analysis(store, aid)
    assert again.log.n_corrections == 2 and len(again.regions) == 1 and again.saved_by == "Dr B"
    again.undo(user="Dr C")
    rv.save_review(store, again, user="Dr C", params=SpatialParams(n_simulations=0))
    assert store.get_original(aid, "cells.csv") == before["cells.csv"]
    assert store.get_analysis(aid)["detected_summary"]["n_cells"] == 14
    assert [(e["user"], e["action"]) for e in store.audit_log(aid)][:2] == [("Dr C", "review saved"), ("Dr C", "undo")]


def test_a_review_of_an_unsaved_run_saves_it_as_detected_first(tmp_path):
    from core.outputs.store import CaseStore

    store = CaseStore(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    session = rv.ReviewSession(small_result())
    session.delete_at(20.0, 50.0, 5.0, user="Dr A")
    with pytest.raises(InputError, match="case label"):
        rv.save_review(store, session, user="Dr A", params=SpatialParams(n_simulations=0))
    aid = rv.save_review(store, session, user="Dr A", case_label="B-9", params=SpatialParams(n_simulations=0))
    a = store.get_analysis(aid)
    assert a["case_label"] == "B-9" and a["created_by"] == "Dr A" and a["summary"]["n_cells"] == 13
    assert a["detected_summary"]["n_cells"] == 14 and session.analysis_id == aid


def test_analyses_saved_before_originals_open_with_a_note(tmp_path):
    """An analysis saved by an older TILscope: no image kept, its cells.csv already reviewed."""
    import io

    from core.outputs.exports import build_exports
    from core.outputs.store import CaseStore

    store = CaseStore(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    res = small_result()
    log = CorrectionLog()
    log.delete_cell(0, user="old")
    reviewed = rv.reviewed_result(res, log)
    files = build_exports(reviewed)
    aid = store.save_analysis("OLD", reviewed.summary, files=files, corrections=json.loads(log.to_json()))
    session = rv.open_saved_analysis(store, aid)
    assert any("saved overlay" in n for n in session.notes)
    assert any("earlier corrections are part of the cell table" in n for n in session.notes)
    assert len(session.cells()) == 13 and session.result.image.shape == res.image.shape
    cells = pd.read_csv(io.BytesIO(files["cells.csv"]))
    assert "edited" in cells.columns


def test_import_regions_lists_every_skipped_qupath_class():
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [100, 0], [100, 100], [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 50], [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
         "properties": {"objectType": "detection", "classification": {"name": "Immune cells"}}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
         "properties": {"objectType": "annotation"}},
    ]
    got = rv.import_regions({"type": "FeatureCollection", "features": features}, 0.5)
    assert [r.kind for r in got.regions] == ["tumour"]
    text = got.message()
    assert "Imported 1 region(s): 1 tumour" in text and "class 'Tissue'" in text
    assert "cell detections" in text and "LineString geometry" in text
    with pytest.raises(InputError, match="1 × class 'Tissue'"):
        rv.import_regions(json.dumps({"type": "FeatureCollection", "features": features[1:2]}), 0.5)
    with pytest.raises(InputError, match="not valid GeoJSON"):
        rv.import_regions(b"{oops", 0.5)


# ----------------------------------------------------------------------------- page


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TILSCOPE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path))
    return tmp_path


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def review_page(**state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def button(at, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r}: {[b.label for b in at.button]}"
    return found[0]


def test_review_page_without_analysis_says_where_to_get_one(data_dir):
    at = review_page()
    assert not at.exception
    assert any("Analyze page" in i.value and "Cases" in i.value for i in at.info)


def test_review_page_asks_for_a_name_once_and_never_invents_one(data_dir):
    at = review_page(analysis=small_result())
    assert not at.exception
    assert any("Enter your name" in i.value for i in at.info) and not at.metric  # no editing without a name
    assert "user_name" not in at.session_state and "reviewer" not in at.session_state
    next(t for t in at.text_input if t.label == "Your name").input("   ")
    button(at, "Save name").click().run()
    assert any("user name is empty" in e.value for e in at.error) and "user_name" not in at.session_state
    next(t for t in at.text_input if t.label == "Your name").input("  Dr   Ana Silva ")
    button(at, "Save name").click().run()
    assert not at.exception and at.session_state["user_name"] == "Dr Ana Silva"
    assert metrics(at)["Cells"] == "14"
    s = at.session_state["review_session"]
    s.delete_at(20.0, 50.0, 5.0, user=at.session_state["user_name"])
    assert s.log.edits[0].user == "Dr Ana Silva"


def test_review_page_shows_numbers_and_follows_corrections(data_dir):
    at = review_page(analysis=small_result(), user_name="Dr Test")
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("Reviewing the analysis just run" in i.value for i in at.info)
    assert not any("Restored" in i.value for i in at.info)
    m = metrics(at)
    assert m["Cells"] == "14" and m["Immune cells"] == "10" and m["Tumour cells"] == "4"
    assert m["Immune density, study window (cells/mm²)"] == f"{10 / 0.015:,.0f}"
    assert m["Cells corrected by hand"] == "0"
    session = at.session_state["review_session"]
    session.add_regions([Region("Tumour 1", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]])], user="Dr Test")
    session.add_at(100.0, 160.0, "cd3-positive", "immune", user="Dr Test")
    session.delete_at(20.0, 50.0, 5.0, user="Dr Test")
    at.run()
    assert not at.exception, at.exception
    m = metrics(at)
    assert m["Immune cells in tumour regions"] == "1"
    assert m["Immune density in tumour regions (cells/mm²)"] == f"{1 / 0.0075:,.0f}"
    assert m["Intratumoral immune density (cells/mm²)"] == f"{1 / 0.0075:,.0f}"
    assert m["Cells corrected by hand"] == "2"
    button(at, "Undo last correction").click().run()
    assert not at.exception
    assert metrics(at)["Cells corrected by hand"] == "1"
    assert any("Undone: the deletion of cell 0" in s.value for s in at.success)
    at.toggle(key="show_cell_table").set_value(True).run()
    table = at.dataframe[0].value
    assert (table["edited"] == "added").sum() == 1 and len(table) == 15


def test_review_page_saves_and_gives_the_analyze_page_the_reviewed_state(data_dir):
    from core.outputs.exports import save_result
    from core.outputs.store import CaseStore

    res = small_result()
    aid = save_result(res, "B-77", CaseStore(), created_by="Dr A")  # as the Analyze page saves a run
    at = review_page(analysis=res, analysis_id=aid, user_name="Dr B")
    assert any(f"Reviewing analysis #{aid} (case B-77), just analysed" in i.value for i in at.info)
    at.session_state["review_session"].delete_at(20.0, 50.0, 5.0, user="Dr B")
    at.session_state["review_session"].add_regions(
        [Region("Tumour 1", "tumour", [[0, 50], [150, 50], [150, 100], [0, 100]])], user="Dr B")
    at.run()
    next(t for t in at.text_input if t.label.startswith("Why (optional, recorded")).input("second read").run()
    button(at, "Save review").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(f"Review saved in analysis #{aid}" in s.value for s in at.success)
    a = CaseStore().get_analysis(aid)
    assert a["reviewed_by"] == "Dr B" and a["n_corrections"] == 1 and a["summary"]["n_cells"] == 13
    assert a["detected_summary"]["n_cells"] == 14
    assert len(CaseStore().list_analyses()) == 1  # saved into the same analysis
    shown = at.session_state["analysis"]  # what the Analyze page shows now
    assert shown.review["n_corrections"] == 1 and shown.summary["n_cells"] == 13
    assert shown.summary["counts"] == a["summary"]["counts"]
    assert CaseStore().audit_log(aid)[0]["comment"] == "second read"


def test_review_page_opens_what_cases_asks_for_and_a_new_run_replaces_it(data_dir):
    from core.outputs.exports import save_result
    from core.outputs.store import CaseStore

    old = save_result(small_result(created="2025-05-05T00:00:00+00:00"), "OLD-1", CaseStore(), created_by="Dr A")
    run = small_result()
    at = review_page(analysis=run, user_name="Dr B")
    assert at.session_state["review_session"].result is run
    at.session_state["review_request"] = old  # the Cases page's "Review this analysis"
    at.run()
    assert not at.exception
    assert at.session_state["review_session"].analysis_id == old
    assert any(f"Reviewing analysis #{old} (case OLD-1)" in i.value for i in at.info)
    at.run()  # the Analyze page's run does not take over again...
    assert at.session_state["review_session"].analysis_id == old
    at.session_state["analysis"] = small_result(created="2026-03-03T00:00:00+00:00")  # ...until a new run
    at.run()
    assert at.session_state["review_session"].analysis_id is None
    assert at.session_state["review_session"].result.summary["created_at"].startswith("2026-03-03")


def test_review_page_reports_an_analysis_it_cannot_open(data_dir):
    at = review_page(review_request=999, user_name="Dr B")
    assert not at.exception
    assert any("Analysis #999 cannot be reviewed" in e.value and "does not exist" in e.value for e in at.error)


def test_review_page_draw_mode_offers_every_kind_and_tool(data_dir):
    at = review_page(analysis=small_result(), user_name="Dr B")
    assert not at.exception
    assert at.radio(key="correct_action").options == ["Add a missed cell", "Delete a cell", "Relabel a cell"]
    assert "Tumour cell (marked by hand)" in at.selectbox(key="correct_class").options
    at.radio(key="review_mode").set_value("Draw regions").run()
    assert at.radio(key="region_kind").options == ["Tumour", "Stroma", "Exclude (artefact, necrosis)", "Invasive-margin border"]
    assert at.radio(key="region_tool").options == ["Polygon", "Rectangle", "Freehand"]


def test_review_page_without_a_pixel_size_still_corrects_cells(data_dir):
    at = review_page(analysis=small_result(mpp=None), user_name="Dr B")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("pixel size is unknown" in w.value for w in at.warning)
    assert at.radio(key="review_mode").options == ["Correct cells"]
    session = at.session_state["review_session"]
    assert session.delete_at(20.0, 50.0, 3.0, user="Dr B").message == "Deleted cell 0 (cd3-positive), 0.0 px from the click."
    summary = session.reviewed_summary()
    assert summary["n_cells"] == 13 and summary["density_per_mm2"] is None
    at.run()
    assert not at.exception and metrics(at)["Cells"] == "13"
