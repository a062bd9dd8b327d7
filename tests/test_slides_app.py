"""The Slides page's core (core.slides.app_support, core.slides.view, core.slides.records), the one immune-density
heat map (core.spatial.heatmaps used by the slide run) and the command line saving slide analyses in the case store.

Small inputs: the two sample slides of ``../shared/data/wsi-samples`` (previews only) and a crop of the bundled H&E
field written as a two-level pyramidal OME-TIFF (one he-til window), analysed once in-process and once through a
worker job.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile

from core import jobs
from core.auth import User
from core.errors import InputError
from core.slides import app_support as sa
from core.spatial.heatmaps import (bin_counts, density_from_counts, density_map, hot_spots, immune_density_map,
                                   tissue_area_per_bin)

WSI = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wsi-samples"
CMU = WSI / "cmu_small_region.svs"
TCGA = WSI / "tcga-cr-7395-01a-01-ts1.svs"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
FIELD_MPP = 0.55


# ---------------------------------------------------------------------------------- the one density map


def test_tissue_area_per_bin_counts_mask_pixels_into_the_bin_of_their_centre():
    mask = np.zeros((25, 40), bool)  # 8 µm pixels: 200 x 320 µm
    mask[:, :10] = True  # the first 80 µm of every row
    area = tissue_area_per_bin(mask, 8.0, bin_um=100.0, shape=(2, 4))
    # pixel centres 4..76 µm lie in the first column of bins; rows: centres < 100 µm → 12 pixels, the rest 13
    np.testing.assert_allclose(area[:, 0], [12 * 10 * 64 / 1e6, 13 * 10 * 64 / 1e6])
    assert (area[:, 1:] == 0).all()


def test_tissue_area_per_bin_in_row_blocks_equals_counting_every_pixel(monkeypatch):
    import core.spatial.heatmaps as hm

    rng = np.random.default_rng(5)
    mask = rng.random((53, 71)) < 0.4
    monkeypatch.setattr(hm, "TISSUE_AREA_BLOCK_ROWS", 7)  # several blocks, the last one short
    area = tissue_area_per_bin(mask, 2.0, bin_um=15.0, shape=(6, 8), origin_um=(9.0, 11.0))
    yy, xx = np.nonzero(mask)  # every tissue pixel into the bin of its centre, grid corner at (9, 11) µm
    by, bx = np.floor(((yy + 0.5) * 2 - 11) / 15).astype(int), np.floor(((xx + 0.5) * 2 - 9) / 15).astype(int)
    inside = (by >= 0) & (by < 6) & (bx >= 0) & (bx < 8)
    expected = np.zeros((6, 8))
    np.add.at(expected, (by[inside], bx[inside]), 4.0 / 1e6)
    np.testing.assert_allclose(area, expected)
    assert (~inside).any() and tissue_area_per_bin(mask, 2.0, bin_um=15.0, shape=(2, 2), origin_um=(500.0, 0.0)).sum() == 0


def test_a_half_covered_bin_is_not_halved_and_a_sliver_is_left_out():
    xy = np.array([[10.0, 10.0], [20.0, 20.0], [150.0, 50.0]])
    area = np.array([[0.005, 0.001]])  # 50 % and 10 % of a 0.01 mm² bin
    m = density_map(xy, bin_um=100.0, window_um=(0, 0, 200, 100), tissue_area_mm2=area, min_tissue_fraction=0.25)
    assert m.density_per_mm2[0, 0] == pytest.approx(2 / 0.005) and math.isnan(m.density_per_mm2[0, 1])
    assert m.tissue.tolist() == [[True, False]] and np.array_equal(m.tissue_area_mm2, area)
    whole = density_map(xy, bin_um=100.0, window_um=(0, 0, 200, 100))  # without a tissue area: whole bins
    assert whole.density_per_mm2.tolist() == [[200.0, 100.0]]


def test_counts_added_part_by_part_equal_the_whole_table():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 1000, (5000, 2))
    window = (0.0, 0.0, 1000.0, 800.0)  # some cells fall outside
    whole = density_map(xy, bin_um=50.0, window_um=window, tissue_mask=np.ones((16, 20), bool))
    parts = sum(bin_counts(chunk, bin_um=50.0, window_um=window)[0] for chunk in np.array_split(xy, 7))
    built = density_from_counts(parts, bin_um=50.0, tissue=np.ones((16, 20), bool))
    np.testing.assert_array_equal(built.counts, whole.counts)
    np.testing.assert_array_equal(built.density_per_mm2, whole.density_per_mm2)
    assert whole.n_outside == int((xy[:, 1] >= 800).sum())


def test_hot_area_is_the_tissue_area_of_the_hot_bins():
    counts = np.ones((12, 12), np.int64)
    counts[5:7, 5:7] = 60
    area = np.full((12, 12), 0.01)
    area[5, 5] = 0.004
    spots = hot_spots(density_from_counts(counts, bin_um=100.0, tissue_area_mm2=area))
    assert spots.hot[5:7, 5:7].all()
    assert spots.summary["hot_area_mm2"] == pytest.approx(area[spots.hot].sum())
    assert immune_density_map  # the field's map is unchanged (tests/test_spatial_scale.py)


# ---------------------------------------------------------------------------------- a small slide, analysed once


def _field_rgb() -> np.ndarray:
    from core.io import load_image

    return np.ascontiguousarray(load_image(SAMPLES / "he-crc-img7.tif").rgb[:320, :320])


@pytest.fixture(scope="module")
def tiny_slide(tmp_path_factory) -> Path:
    """A 320 x 320 px H&E crop at 0.55 µm/px as a two-level pyramidal OME-TIFF: one he-til window."""
    rgb = _field_rgb()
    path = tmp_path_factory.mktemp("tiny") / "tiny-slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(rgb, tile=(128, 128), photometric="rgb", subifds=1, metadata={
            "PhysicalSizeX": FIELD_MPP, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": FIELD_MPP,
            "PhysicalSizeYUnit": "µm"})
        tif.write(rgb[::2, ::2].copy(), tile=(128, 128), photometric="rgb", subfiletype=1)
    return path


@pytest.fixture(scope="module")
def tiny_run(tiny_slide, tmp_path_factory):
    from core.pipeline import load_model
    from core.slides.run import analyze_slide

    out = tmp_path_factory.mktemp("tiny-run") / "out"
    summary = analyze_slide(tiny_slide, "he-til", out, model=load_model("he-til", "cpu"))
    return out, summary


def test_the_slide_heat_map_is_the_spatial_density_map(tiny_run):
    """immune_density.npy is density_map over the slide with the tissue area of each bin (25 % at least)."""
    from core.slides.run import HEATMAP_BIN_UM, HEATMAP_MIN_TISSUE_FRACTION, SLIDE_FILES
    from core.slides.tissue import rasterise_geometry, read_geometry

    out, summary = tiny_run
    assert sorted(p.name for p in out.iterdir()) == sorted(SLIDE_FILES)
    mpp, w, h = summary["mpp"], summary["image"]["width_px"], summary["image"]["height_px"]
    size = (w * mpp, h * mpp)
    mask_mpp = max(8.0, mpp)
    shape = (math.ceil(size[1] / mask_mpp), math.ceil(size[0] / mask_mpp))
    mask = rasterise_geometry(read_geometry(out / "tissue.geojson", mpp), mask_mpp, shape)
    cells = pd.read_parquet(out / "cells.parquet")
    immune = cells.loc[cells["role"] == "immune", ["x_um", "y_um"]].to_numpy()
    grid = (math.ceil(size[1] / HEATMAP_BIN_UM), math.ceil(size[0] / HEATMAP_BIN_UM))
    expected = density_map(immune, bin_um=HEATMAP_BIN_UM, window_um=(0, 0, *size),
                           tissue_area_mm2=tissue_area_per_bin(mask, mask_mpp, bin_um=HEATMAP_BIN_UM, shape=grid),
                           min_tissue_fraction=HEATMAP_MIN_TISSUE_FRACTION)
    written = np.load(out / "immune_density.npy")
    np.testing.assert_allclose(written, expected.density_per_mm2.astype(np.float32), equal_nan=True)
    spots = np.load(out / "immune_hot_spots.npy")
    assert spots.shape == written.shape and spots.dtype == np.int8
    hs = hot_spots(expected)
    np.testing.assert_array_equal(spots, hs.hot.astype(np.int8) - hs.cold.astype(np.int8))
    assert summary["hot_spots"]["n_tissue_bins"] == int(np.isfinite(written).sum())


def test_slide_summary_has_the_spatial_statistics_of_its_tissue(tiny_run):
    out, summary = tiny_run
    on_disk = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    sp = on_disk["spatial"]
    assert sp["available"] is True and sp["counts"]["n_cells_in_table"] == on_disk["n_cells"]
    assert sp["counts"]["n_excluded_by_regions"] == 0  # the cells lie in the tissue, none in the glass
    # the window is the tissue's bounding box with the glass cut out: its area is the tissue's
    assert sp["window"]["area_mm2"] == pytest.approx(on_disk["tissue_area_mm2"], rel=0.03)
    assert sp["window"]["source"].startswith("bounding box of the analysed tissue")
    from core.outputs.key_figures import key_figure_rows

    assert any(r["measure"].startswith("immune → nearest tumour") for r in key_figure_rows(sp))


def test_the_command_line_saves_a_slide_analysis_in_the_case_store(tiny_slide, tmp_path, capsys):
    from core.cli import main
    from core.outputs.store import CaseStore

    out = tmp_path / "result"
    assert main(["analyze", str(tiny_slide), "--scenario", "he-til", "--device", "cpu", "--out", str(out),
                 "--case", "S-22"]) == 0
    text = capsys.readouterr().out
    assert "saved as analysis" in text and "'S-22'" in text
    aid = int(text.split("saved as analysis ")[1].split()[0])
    store = CaseStore()
    try:
        a = store.get_analysis(aid)
        names = {f["name"] for f in a["files"]}
        assert a["case_label"] == "S-22" and a["summary"]["kind"] == "slide"
        assert a["summary"]["n_cells"] == len(pd.read_parquet(out / "cells.parquet"))
        assert {"cells.parquet", "summary.json", "tissue.geojson", "immune_density.npy"} <= names
        assert "cells.csv" not in names  # the same cells, kept in the output folder only
        assert store.get_file(aid, "cells.parquet") == (out / "cells.parquet").read_bytes()
    finally:
        store.close()
    n = len(CaseStore().list_analyses())
    assert main(["analyze", str(tiny_slide), "--scenario", "he-til", "--device", "cpu", "--out", str(tmp_path / "r2"),
                 "--no-store"]) == 0
    assert len(CaseStore().list_analyses()) == n
    assert main(["analyze", str(tiny_slide), "--scenario", "he-til", "--out", str(tmp_path / "r3"),
                 "--case", "x" * 201]) == 2
    assert "case label" in capsys.readouterr().err and not (tmp_path / "r3").exists()


# ---------------------------------------------------------------------------------- choosing a slide


def test_the_slide_folder_lists_slides_and_refuses_paths_outside_it(tmp_path, monkeypatch):
    folder = tmp_path / "slides"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.svs").write_bytes(b"x")
    (folder / "sub" / "b.ome.tif").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.svs").write_bytes(b"x")
    os.symlink(TCGA, folder / "tcga.svs")  # a link the administrator put in the folder is shown
    (tmp_path / "outside.svs").write_bytes(b"x")
    monkeypatch.setenv(sa.SLIDE_DIR_ENV, str(folder))
    assert sa.slide_dir() == folder
    names, truncated = sa.list_slide_files(folder)
    assert names == ["a.svs", "sub/b.ome.tif", "tcga.svs"] and not truncated
    assert sa.slide_in_folder(folder, "sub/b.ome.tif") == folder / "sub" / "b.ome.tif"
    assert sa.slide_in_folder(folder, "tcga.svs").resolve() == TCGA.resolve()
    for bad in ("../outside.svs", str(tmp_path / "outside.svs"), ".hidden.svs", "notes.txt", "missing.svs",
                "sub/../../outside.svs", ""):
        with pytest.raises(InputError, match="slide"):
            sa.slide_in_folder(folder, bad)
    monkeypatch.setenv(sa.SLIDE_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="not a folder"):
        sa.slide_dir()


def test_uploads_over_the_cap_are_refused_with_where_to_put_them(monkeypatch):
    monkeypatch.setenv(sa.UPLOAD_MAX_ENV, "2")
    sa.check_upload_size(2 * 1024**2, "ok.svs")
    with pytest.raises(InputError, match=f"limited to 2 MB.*{sa.SLIDE_DIR_ENV}"):
        sa.check_upload_size(3 * 1024**2, "big.svs")
    with pytest.raises(InputError, match="empty"):
        sa.check_upload_size(0, "empty.svs")
    monkeypatch.setenv(sa.UPLOAD_MAX_ENV, "lots")
    with pytest.raises(InputError, match="whole number"):
        sa.upload_max_bytes()


def test_a_slide_without_mpp_is_previewed_but_cannot_start_until_given():
    p = sa.preview_slide(TCGA)
    assert p.mpp is None and p.tissue_area_mm2 == 0 and p.thumbnail.ndim == 3
    assert "not recorded" in p.missing_mpp and "enter them below" in p.missing_mpp and "--mpp" not in p.missing_mpp
    with pytest.raises(InputError, match="not recorded"):
        sa.start_run(p, "he-til")
    with pytest.raises(InputError, match="not recorded"):
        sa.tissue_within(p)
    given = sa.preview_slide(TCGA, mpp=0.25)
    assert given.mpp == 0.25 and given.mpp_source == "user" and given.missing_mpp is None
    assert given.tissue_area_mm2 > 0.05 and given.stain_family is not None


def test_a_field_image_is_sent_to_the_analyze_page():
    with pytest.raises(InputError, match="Analyze page"):
        sa.preview_slide(SAMPLES / "he-crc-img7.tif")


def test_regions_limit_the_tissue_as_the_analysis_does():
    from core.slides.reader import open_slide
    from core.slides.tissue import detect_tissue

    p = sa.preview_slide(CMU)
    assert p.mpp == pytest.approx(0.499) and p.objective_power == 20 and p.stain_family == "he"
    assert sa.fitness_for(p, "he-til", None) == ([], [])
    problems, _ = sa.fitness_for(p, "cd3-ihc", True)
    assert any("looks like" in x for x in problems)
    roi = sa.rectangle_geometry(200, 300, 500, 400, p.size_um)
    exclude = shapely.box(300, 400, 400, 500)
    geom, area = sa.tissue_within(p, roi, exclude)
    with open_slide(CMU) as slide:
        tissue, _ = detect_tissue(slide, roi=roi, exclude=exclude)
    assert area == pytest.approx(tissue.area_mm2) and 0 < area < 0.2
    assert geom.within(roi.buffer(1e-6)) and geom.intersection(exclude).area < 1e-6
    picture = sa.preview_picture(p, roi, exclude)
    assert picture.shape == p.thumbnail.shape and picture.dtype == np.uint8
    assert not np.array_equal(picture, p.thumbnail)  # tissue tinted, outlines drawn
    for args, match in (((0, 0, 0, 10), "positive"), ((1e6, 0, 10, 10), "outside the slide"),
                        ((float("nan"), 0, 10, 10), "numbers")):
        with pytest.raises(InputError, match=match):
            sa.rectangle_geometry(*args, p.size_um)
    with pytest.raises(InputError, match="outside the slide"):
        sa.tissue_within(p, shapely.box(1e5, 1e5, 1e5 + 10, 1e5 + 10))


def test_geojson_and_drawn_regions_become_level0_um():
    size_um = (1000.0, 800.0)
    gj = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[100, 100], [300, 100], [300, 200],
                                                                              [100, 200], [100, 100]]]}}
    g = sa.geojson_geometry(json.dumps(gj).encode(), 0.5, "roi.geojson")
    assert g.bounds == pytest.approx((50, 50, 150, 100))
    for bad, match in ((b"", "empty"), (b"{not json", "roi.geojson"), (b'{"type": "Point", "coordinates": [1, 2]}',
                                                                      "not GeoJSON polygons")):
        with pytest.raises(InputError, match=match):
            sa.geojson_geometry(bad, 0.5, "roi.geojson")
    preview = sa.SlidePreview(path="x", name="x.svs", vendor="aperio", reader="openslide", width_px=2000,
                              height_px=1600, levels=[(2000, 1600, 1.0)], mpp=0.5, mpp_source="openslide",
                              objective_power=20, notes=[], thumbnail=np.zeros((512, 640, 3), np.uint8), thumb_scale=3.125)
    frame = sa.canvas_frame(preview, 500, 500)  # 2000 x 1600 px shown at 500 x 400
    rect = {"type": "rect", "left": 50, "top": 40, "width": 100, "height": 50, "scaleX": 1, "scaleY": 1,
            "strokeWidth": 0, "originX": "left", "originY": "top", "angle": 0}
    geom, skipped = sa.drawn_geometry([rect], frame, preview.mpp)
    assert skipped == [] and geom.bounds == pytest.approx((100, 80, 300, 180), abs=1.5)  # µm: 4 px a canvas px x 0.5
    assert sa.canvas_background(preview.thumbnail, frame).shape == (400, 500, 3)
    assert sa.drawn_geometry([], frame, 0.5) == (None, [])


def test_the_cell_subsample_is_uniform_seeded_and_bounded(tmp_path):
    n = 10_000
    cells = pd.DataFrame({"x_um": np.arange(n, dtype=float), "y_um": np.zeros(n), "cell_class": ["a"] * n,
                          "probability": np.ones(n), "other": np.zeros(n)})
    path = tmp_path / "cells.parquet"
    cells.to_parquet(path, row_group_size=999)
    sub, total = sa.subsample_cells(path, 1000)
    again, _ = sa.subsample_cells(path, 1000)
    assert total == n and len(sub) == 1000 and list(sub.columns) == ["x_um", "y_um", "cell_class", "probability"]
    assert sub["x_um"].is_monotonic_increasing and sub["x_um"].is_unique and sub.equals(again)
    assert 3000 < sub["x_um"].mean() < 7000  # spread over the whole table
    whole, total = sa.subsample_cells(path, n)
    assert len(whole) == n == total


def test_progress_says_the_tile_and_the_time_left(monkeypatch):
    seen = []
    clock = iter([100.0, 110.0, 120.0, 125.0])
    monkeypatch.setattr(sa.time, "monotonic", lambda: next(clock))
    progress = sa._TileProgress(lambda d, n, text: seen.append(text))
    for done in (3, 4, 5, 10):  # resumed: 2 tiles were done before this job
        progress(done, 10)
    assert seen[0] == "Tile 3 of 10 · estimating the time left"
    assert seen[1] == "Tile 4 of 10 · about 1 min 00 s left"  # 10 s a tile, 6 to go
    assert seen[2] == "Tile 5 of 10 · about 50 s left"
    assert seen[3].startswith("All 10 tiles analysed")
    assert sa.format_duration(7300) == "2 h 01 min"


# ---------------------------------------------------------------------------------- a run through a worker job


@pytest.fixture
def fresh_worker_helper():
    """Jobs run by a helper started here, so the worker sees this test's data folder (its case store)."""
    def stop():
        helper = jobs._helper
        if helper is not None and helper.poll() is None:
            helper.stdin.close()  # it ends once its workers have finished
        jobs._helper = None

    stop()
    yield
    stop()


def test_a_run_goes_through_a_worker_is_found_by_id_and_saved_for_its_user(tiny_slide, fresh_worker_helper):
    from core.outputs.store import CaseStore
    from core.slides import view

    analyst = User("ana", "analyst", ("lab",))
    p = sa.preview_slide(tiny_slide)
    run = sa.start_run(p, "he-til", case_label="  T-7 ", actor=analyst, group="lab", device="cpu",
                       roi=sa.rectangle_geometry(0, 0, 150, 176, p.size_um))
    assert run.request["case_label"] == "T-7" and run.request["created_by"] == "ana"
    # a reloaded page has the run id only
    deadline = time.monotonic() + 600
    while not sa.run_status(sa.load_run(run.id, analyst)).finished and time.monotonic() < deadline:
        time.sleep(0.5)
    again = sa.load_run(run.id, analyst)
    status = sa.run_status(again)
    assert status.state == "done", status.error
    with pytest.raises(sa.RunAccessError, match="another user"):
        sa.load_run(run.id, User("bob", "analyst"))
    assert sa.load_run(run.id, User("root", "admin")).id == run.id
    assert sa.load_run(run.id, None).id == run.id  # local mode
    assert [r["id"] for r in sa.list_runs(analyst)] == [run.id] and sa.list_runs(User("bob", "analyst")) == []
    for bad in ("../x", "0" * 31, "g" * 32):
        with pytest.raises(InputError, match="not a slide run id"):
            sa.load_run(bad)

    res = sa.load_result(again)
    s = res.summary
    assert s["roi"] is True and s["tissue_area_mm2"] <= 150 * 176 / 1e6 + 1e-9
    assert s["mpp_source"] == "ome" and not any("given by the user" in w for w in s["warnings"])
    assert res.analysis_id is not None and res.save_error is None
    store = CaseStore().for_actor(analyst)
    try:
        a = store.get_analysis(res.analysis_id)
        assert a["case_label"] == "T-7" and a["summary"]["kind"] == "slide" and a["params"]["slide_run"] == run.id
    finally:
        store.close()
    assert res.view["n_cells"] == s["n_cells"] == len(res.cells) and res.density.shape == res.hot_spots.shape

    sc = __import__("core.scenarios.registry", fromlist=["get_scenario"]).get_scenario("he-til")
    fig = view.slide_figure(res, dict(sc.class_colors), dict(sc.class_labels))
    kinds = [t.type for t in fig.data]
    assert kinds[:3] == ["image", "heatmap", "heatmap"] and kinds.count("scattergl") == len(sc.classes)
    assert sum(len(t.x) for t in fig.data if t.type == "scattergl") == s["n_cells"]
    w_um = 320 * FIELD_MPP
    assert fig.layout.xaxis.range == pytest.approx((0, w_um)) and fig.layout.yaxis.range == pytest.approx((w_um, 0))

    field = sa.read_field(again.request["slide_path"], FIELD_MPP, str(again.out_dir / "cells.parquet"), 50, 50, 100)
    assert field.rgb.shape == (182, 182, 3) and field.x0_px == 0 and field.y0_px == 0
    inside = pd.read_parquet(again.out_dir / "cells.parquet")
    inside = inside[(inside["x_px"] < 182) & (inside["y_px"] < 182)]
    assert len(field.cells) == len(inside) and (field.cells["x_px"] >= 0).all()
    with pytest.raises(InputError, match="give a side"):
        sa.read_field(again.request["slide_path"], FIELD_MPP, str(again.out_dir / "cells.parquet"), 60, 60, 5000)
    with pytest.raises(InputError, match="outside the slide"):
        sa.read_field(again.request["slide_path"], FIELD_MPP, str(again.out_dir / "cells.parquet"), 900, 60, 100)
    assert view.field_figure(field, dict(sc.class_colors)).data

    names = [n for n, _ in sa.run_files(again)]
    assert names[:3] == ["cells.parquet", "cells.csv", "summary.json"]
    geo = json.loads(sa.cells_geojson_bytes(again))
    assert len(geo["features"]) == s["n_cells"] + 1  # the tissue annotation and one detection a cell


def test_a_cancelled_run_resumes_and_a_viewer_cannot_start(tiny_slide, fresh_worker_helper):
    from core.auth import AccessError

    p = sa.preview_slide(tiny_slide)
    with pytest.raises(AccessError, match="viewer"):
        sa.start_run(p, "he-til", actor=User("vic", "viewer"))
    with pytest.raises(InputError, match="not run on whole slides"):
        sa.start_run(p, "tnrd-he-melanoma")
    with pytest.raises(InputError, match="no tissue"):
        sa.start_run(p, "he-til", roi=shapely.box(0, 0, 1, 1), exclude=shapely.box(0, 0, 2, 2))
    run = sa.start_run(p, "he-til", device="cpu", save=False)
    with pytest.raises(InputError, match="only a cancelled or failed run"):
        sa.resume_run(run)
    sa.cancel_run(run)
    status = sa.run_status(run)
    assert status.state == "failed" and "cancelled" in status.error
    sa.resume_run(run)
    assert len(run.request["jobs"]) == 2
    deadline = time.monotonic() + 600
    while not sa.run_status(run).finished and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sa.run_status(run).state == "done"
    res = sa.load_result(sa.load_run(run.id))
    assert res.analysis_id is None and res.save_error is None and res.summary["n_cells"] > 50
