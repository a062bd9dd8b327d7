"""Whole slides: reading levels and mpp, tissue detection, streaming tiled analysis, resume, CLI.

Fast (CPU, under a minute): the two small sample slides of ``../shared/data/wsi-samples``, a
40 000 x 40 000 px pyramidal JPEG OME-TIFF written here in well under a second (blank glass
tiles share one stored copy), and the bundled 500 x 500 px H&E field written as a slide.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
from scipy.spatial import cKDTree

from core.errors import ImageReadError, InputError
from core.slides import is_slide, open_slide
from core.slides.synthetic import GLASS_RGB, write_pyramid_tiff
from core.slides.tissue import detect_tissue, read_geometry, tissue_from_rgb

WSI = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wsi-samples"
CMU = WSI / "cmu_small_region.svs"
TCGA = WSI / "tcga-cr-7395-01a-01-ts1.svs"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _count_level_reads(slide) -> collections.Counter:
    """Wrap the slide's backend so every decode records its level."""
    reads = collections.Counter()
    original = slide._backend.read_level

    def counted(level, *args):
        reads[level] += 1
        return original(level, *args)

    slide._backend.read_level = counted
    return reads


# ---------------------------------------------------------------------------------- sample slides


def test_cmu_sample_mpp_objective_and_reading():
    assert is_slide(CMU)
    with open_slide(CMU) as s:
        assert s.reader == "openslide" and s.vendor == "aperio"
        assert s.mpp == pytest.approx(0.499) and s.mpp_source == "openslide"
        assert s.objective_power == 20
        assert s.dimensions == (2220, 2967) and len(s.levels) == 1
        region = s.read_region(1000, 1000, 499, 499, 0.998)  # 499 level-0 px at half resolution
        assert region.shape == (250, 250, 3) and region.dtype == np.uint8
        full = s.read_region(1000, 1000, 64, 48, 0.499)  # level 0 as it is
        assert full.shape == (48, 64, 3)
        thumb, scale = s.thumbnail(512)
        assert max(thumb.shape[:2]) == 512 and scale == pytest.approx(2967 / 512)


def test_tcga_refused_without_mpp_and_read_with_it():
    assert is_slide(TCGA)
    with pytest.raises(InputError, match="--mpp"):
        open_slide(TCGA)
    with pytest.raises(InputError, match="outside"):
        open_slide(TCGA, mpp=50.0)  # implausible, as core.io.check_mpp refuses
    with open_slide(TCGA, mpp=0.25) as s:
        assert s.mpp_source == "user" and [lv.width_px for lv in s.levels] == [4443, 2221]
        assert s.level_for_mpp(0.5) == 1  # downsample 2.0005 within the 1 % tolerance
        assert s.level_for_mpp(0.45) == 0 and s.level_for_mpp(2.0) == 1
        reads = _count_level_reads(s)
        out = s.read_region(0, 0, 4443, 3567, 2.0)  # JPEG 2000 tiles, a reduced view
        assert out.shape == (446, 555, 3)
        assert set(reads) == {1}  # never level 0 for a low-resolution view
        assert 100 < out.mean() < 250


# ---------------------------------------------------------------------------------- a large synthetic slide

MPP = 0.25
SIDE = 40_000
ISLANDS = [(8_000, 8_000), (30_000, 10_000), (12_000, 30_000)]  # centres, level-0 px
RADIUS = 1_200  # px: 300 µm
PEN = (20_000, 30_000, 36_000, 30_400)  # x0, y0, x1, y1: a 100 µm wide, 4 mm long blue stroke
SPECK = (25_000, 20_000, 40)  # 10 µm of dust: smaller than the smallest tissue kept
TISSUE_RGB = (222, 150, 192)
INK_RGB = (35, 70, 165)


def _render(d, x0, y0, w, h):
    """Tile of the level with downsample d: glass, three tissue discs, a pen stroke and a speck."""
    X0, Y0, X1, Y1 = x0 * d, y0 * d, (x0 + w) * d, (y0 + h) * d
    shapes = []
    for cx, cy in ISLANDS:
        if X0 < cx + RADIUS and X1 > cx - RADIUS and Y0 < cy + RADIUS and Y1 > cy - RADIUS:
            shapes.append(("disc", cx, cy, RADIUS, TISSUE_RGB))
    if X0 < PEN[2] and X1 > PEN[0] and Y0 < PEN[3] and Y1 > PEN[1]:
        shapes.append(("box", *PEN, INK_RGB))
    sx, sy, sr = SPECK
    if X0 < sx + sr and X1 > sx - sr and Y0 < sy + sr and Y1 > sy - sr:
        shapes.append(("disc", sx, sy, sr, (120, 120, 120)))
    if not shapes:
        return None
    yy = ((np.arange(y0, y0 + h) + 0.5) * d)[:, None]  # level-0 px of the pixel centres
    xx = ((np.arange(x0, x0 + w) + 0.5) * d)[None, :]
    tile = np.empty((h, w, 3), np.uint8)
    tile[:] = GLASS_RGB
    for shape in shapes:
        if shape[0] == "disc":
            _, cx, cy, r, rgb = shape
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        else:
            _, bx0, by0, bx1, by1, rgb = shape
            inside = ((xx >= bx0) & (xx < bx1)) & ((yy >= by0) & (yy < by1))
        tile = np.where(inside[..., None], np.asarray(rgb, np.uint8), tile)
    return tile


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "synthetic.ome.tif"
    return write_pyramid_tiff(path, SIDE, SIDE, MPP, _render, tile_px=512, downsamples=(1, 4, 16, 64))


def test_synthetic_pyramid_levels_and_level_choice(big_slide):
    assert big_slide.stat().st_size < 5 * 1024**2  # 1.6 gigapixels in a few hundred kB
    assert is_slide(big_slide)
    with open_slide(big_slide) as s:
        assert s.reader == "tifffile" and s.vendor == "ome-tiff"
        assert s.mpp == pytest.approx(MPP) and s.mpp_source == "ome"
        assert [lv.width_px for lv in s.levels] == [40_000, 10_000, 2_500, 625]
        assert [lv.downsample for lv in s.levels] == [1, 4, 16, 64]
        assert s.level_for_mpp(0.25) == 0 and s.level_for_mpp(0.55) == 0
        assert s.level_for_mpp(1.0) == 1 and s.level_for_mpp(3.9) == 1 and s.level_for_mpp(4.0) == 2
        assert s.level_for_mpp(100.0) == 3
        reads = _count_level_reads(s)
        thumb, scale = s.thumbnail(600)
        assert thumb.shape == (600, 600, 3) and scale == pytest.approx(SIDE / 600)
        assert set(reads) == {3}  # the smallest level that is large enough; never level 0
        reads.clear()
        cx, cy = ISLANDS[0]
        centre = s.read_region(cx - 100, cy - 100, 200, 200, 0.55)
        assert set(reads) == {0}  # 0.55 µm/px needs level 0 (level 1 is 1 µm/px)
        assert np.abs(centre[45, 45].astype(int) - TISSUE_RGB).max() <= 6
        glass = s.read_region(1000, 1000, 4000, 4000, 16.0)
        assert np.abs(glass.astype(int) - GLASS_RGB).max() <= 3


def test_tissue_detection_on_the_large_slide(big_slide):
    with open_slide(big_slide) as s:
        reads = _count_level_reads(s)
        tissue, rgb = detect_tissue(s)
        assert 0 not in reads  # 8 µm/px is read from level 2 (4 µm/px)
    assert tissue.mask_mpp == 8.0 and tissue.mask.shape == (1250, 1250)
    island_mm2 = np.pi * (RADIUS * MPP / 1e3) ** 2
    assert tissue.area_mm2 == pytest.approx(3 * island_mm2, rel=0.03)
    assert tissue.pen_area_mm2 > 0.4  # the 0.4 mm² stroke and its halo are ink, not tissue
    parts = sorted(shapely.get_parts(tissue.geometry), key=lambda p: -p.area)
    assert len(parts) == 3  # the speck of dust is gone
    found = sorted((p.centroid.x / MPP, p.centroid.y / MPP) for p in parts)
    assert np.abs(np.array(found) - np.array(sorted(ISLANDS))).max() < 40  # px: within 10 µm
    pen_centre_um = ((PEN[0] + PEN[2]) / 2 * MPP, (PEN[1] + PEN[3]) / 2 * MPP)
    assert not tissue.geometry.contains(shapely.Point(pen_centre_um))


def test_exclusions_and_roi_on_the_large_slide(big_slide):
    island_mm2 = np.pi * (RADIUS * MPP / 1e3) ** 2
    cx, cy = ISLANDS[1]
    # exclusion as GeoJSON in level-0 pixels (QuPath's frame)
    box_px = [[cx - 2500, cy - 2500], [cx + 2500, cy - 2500], [cx + 2500, cy + 2500], [cx - 2500, cy + 2500],
              [cx - 2500, cy - 2500]]
    exclude = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [box_px]}, "properties": {}}]}
    roi = shapely.box(0, 0, 20_000 * MPP, SIDE * MPP)  # µm: the left half holds islands 0 and 2
    with open_slide(big_slide) as s:
        without, _ = detect_tissue(s, exclude=exclude)
        assert without.area_mm2 == pytest.approx(2 * island_mm2, rel=0.03)
        within, _ = detect_tissue(s, roi=roi)
        assert within.area_mm2 == pytest.approx(2 * island_mm2, rel=0.03)
        assert within.mask[:, int(20_000 * MPP // 8) + 1 :].sum() == 0
    with pytest.raises(InputError, match="no polygon"):
        read_geometry({"type": "FeatureCollection", "features": []}, MPP, "--roi")


def test_pen_rules_keep_stained_tissue():
    rgb = np.zeros((60, 60, 3), np.uint8)
    rgb[:] = GLASS_RGB
    rgb[5:25, 5:25] = (225, 150, 195)  # eosin
    rgb[5:25, 35:55] = (95, 70, 150)  # dense hematoxylin (lymphoid aggregate)
    rgb[35:55, 5:25] = (60, 165, 80)  # green ink
    rgb[35:55, 35:55] = (20, 20, 24)  # black ink
    tissue, ink, _ = tissue_from_rgb(rgb, 8.0, min_tissue_um2=1000, min_hole_um2=1000)
    assert tissue[15, 15] and tissue[15, 45]
    assert ink[45, 15] and ink[45, 45] and not tissue[45, 15] and not tissue[45, 45]
    assert not tissue[2, 58]  # glass


# ---------------------------------------------------------------------------------- streaming analysis

FIELD_MPP = 0.55  # he-til's input mpp: no resampling, so tiled and untiled see the same pixels
FIELD_PX = 320  # a crop of the bundled 500 x 500 px H&E field: 2 x 2 tiles of 160 px
TILE_UM = 160 * FIELD_MPP


def _field_rgb() -> np.ndarray:
    from core.io import load_image

    return np.ascontiguousarray(load_image(SAMPLES / "he-crc-img7.tif").rgb[:FIELD_PX, :FIELD_PX])


@pytest.fixture(scope="module")
def he_model():
    from core.pipeline import load_model

    return load_model("he-til", "cpu")


@pytest.fixture(scope="module")
def field_slide(tmp_path_factory) -> Path:
    """A crop of the bundled H&E field as a tiled TIFF (a slide of one level)."""
    rgb = _field_rgb()
    path = tmp_path_factory.mktemp("field") / "crc-field.tif"
    tifffile.imwrite(path, rgb, tile=(128, 128), photometric="rgb", resolution=(1e4 / FIELD_MPP, 1e4 / FIELD_MPP),
                     resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def slide_run(field_slide, he_model, tmp_path_factory):
    from core.slides.run import analyze_slide

    out = tmp_path_factory.mktemp("run") / "out"
    seen = []
    summary = analyze_slide(field_slide, "he-til", out, model=he_model, tile_um=TILE_UM,
                            progress=lambda d, n: seen.append((d, n)))
    return out, summary, seen


def test_tiled_slide_equals_field_pipeline(field_slide, he_model, slide_run):
    from core.io import ImageData
    from core.pipeline import analyze

    out, summary, seen = slide_run
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 2 x 2 tiles of 160 px, each with 96 px of context
    field = analyze(ImageData.from_rgb(_field_rgb(), FIELD_MPP, "field"), "he-til", model=he_model).cells
    cells = pd.read_parquet(out / "cells.parquet")
    tissue = read_geometry(out / "tissue.geojson", FIELD_MPP)
    in_tissue = shapely.contains_xy(tissue, field["x_um"].to_numpy(), field["y_um"].to_numpy())
    field = field[in_tissue]
    assert len(field) > 80 and len(cells) == len(field)
    d, i = cKDTree(field[["x_px", "y_px"]].to_numpy()).query(cells[["x_px", "y_px"]].to_numpy())
    assert d.max() <= 1.0
    assert (field["cell_class"].to_numpy()[i] == cells["cell_class"].to_numpy()).all()
    assert len(set(i)) == len(i)  # one to one
    assert np.allclose(cells["x_um"], cells["x_px"] * FIELD_MPP)


def test_slide_outputs_and_summary(slide_run):
    from core.results import poisson_ci_per_mm2
    from core.slides.run import SLIDE_FILES, partial_folder

    out, summary, _ = slide_run
    assert sorted(p.name for p in out.iterdir()) == sorted(SLIDE_FILES)
    assert not partial_folder(out).exists()  # removed once the run completed
    on_disk = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["n_cells"] == summary["n_cells"] == len(pd.read_csv(out / "cells.csv"))
    area = on_disk["tissue_area_mm2"]
    assert area == pytest.approx(read_geometry(out / "tissue.geojson", FIELD_MPP).area / 1e6, rel=1e-3)
    assert 0.02 < area <= FIELD_PX**2 * FIELD_MPP**2 / 1e6
    k = on_disk["counts"]["inflammatory"]
    assert on_disk["density_per_mm2"]["inflammatory"] == pytest.approx(k / area)
    assert on_disk["density_ci95_per_mm2"]["inflammatory"] == pytest.approx(poisson_ci_per_mm2(k, area))
    assert sum(on_disk["counts_by_role"].values()) == on_disk["n_cells"]
    assert on_disk["mpp_used"] == pytest.approx(FIELD_MPP) and on_disk["tiles"]["with_tissue"] == 4
    assert on_disk["kind"] == "slide" and on_disk["scenario"] == "he-til" and len(on_disk["image"]["sha256"]) == 64
    heat = np.load(out / "immune_density.npy")
    assert heat.shape == (2, 2) and heat.dtype == np.float32  # 176 µm in 100 µm bins
    assert np.nanmax(heat) > 0


def test_interrupted_run_resumes_without_recomputing(field_slide, he_model, slide_run, tmp_path, monkeypatch):
    from core.slides.run import analyze_slide, partial_folder

    full = pd.read_parquet(slide_run[0] / "cells.parquet")
    calls = [0]
    original = he_model.infer_window

    def counted(window):
        calls[0] += 1
        return original(window)

    monkeypatch.setattr(he_model, "infer_window", counted)
    out = tmp_path / "out"

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analyze_slide(field_slide, "he-til", out, model=he_model, tile_um=TILE_UM, progress=stop_after_two)
    assert calls[0] == 2 and not out.exists()  # nothing half-written in the output folder
    record = json.loads((partial_folder(out) / "tiles_done.json").read_text())
    assert record["done"] == [0, 1]
    with pytest.raises(InputError, match="other settings"):  # another tile size cannot resume this run
        analyze_slide(field_slide, "he-til", out, model=he_model, tile_um=200 * FIELD_MPP)
    seen = []
    summary = analyze_slide(field_slide, "he-til", out, model=he_model, tile_um=TILE_UM,
                            progress=lambda d, n: seen.append(d))
    assert calls[0] == 4 and seen == [3, 4]  # only the two tiles not done
    assert summary["resumed"] is True
    resumed = pd.read_parquet(out / "cells.parquet")
    pd.testing.assert_frame_equal(resumed, full)


def test_dense_scenario_on_a_slide_equals_field(cd3_model, tmp_path):
    """cd3-ihc (dense tiler + NMS) on part of the bundled mosaic as a slide: 2 x 2 tiles of 240 px, 104 px of context."""
    from core.io import ImageData, load_image
    from core.pipeline import analyze
    from core.slides.run import analyze_slide

    rgb = np.ascontiguousarray(load_image(SAMPLES / "cd3-ihc-mosaic.tif").rgb[:420, :480])  # 6 x 7 patches (the last cut)
    image = ImageData.from_rgb(rgb, 0.2, "mosaic")
    path = tmp_path / "mosaic.tif"
    tifffile.imwrite(path, image.rgb, tile=(128, 128), photometric="rgb", resolution=(1e4 / 0.2, 1e4 / 0.2),
                     resolutionunit="CENTIMETER")
    summary = analyze_slide(path, "cd3-ihc", tmp_path / "out", model=cd3_model, tile_um=240 * 0.2,
                            antigen_confirmed=True)
    assert summary["tiles"]["with_tissue"] == 4 and summary["tiles"]["context_px"] == 104
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    field = analyze(image, "cd3-ihc", model=cd3_model).cells
    tissue = read_geometry(tmp_path / "out" / "tissue.geojson", 0.2)
    field = field[shapely.contains_xy(tissue, field["x_um"].to_numpy(), field["y_um"].to_numpy())]
    assert len(cells) == len(field) > 10
    d, _ = cKDTree(field[["x_px", "y_px"]].to_numpy()).query(cells[["x_px", "y_px"]].to_numpy())
    assert d.max() <= 1.0


def test_synthetic_trained_scenario_refused(field_slide, tmp_path):
    from core.slides.run import analyze_slide

    with pytest.raises(InputError, match="not run on whole slides.*he-til"):
        analyze_slide(field_slide, "tnrd-he-melanoma", tmp_path / "out")


# ---------------------------------------------------------------------------------- routing and the CLI


def test_is_slide_routes(tmp_path, big_slide):
    assert is_slide(big_slide) and is_slide(CMU)
    assert not is_slide(SAMPLES / "he-crc-img7.tif")  # a field
    assert not is_slide(tmp_path / "missing.svs")
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_slide(tmp_path / "notes.txt")
    with pytest.raises(ImageReadError):
        open_slide(tmp_path / "notes.txt")


def test_cli_slide_without_mpp_exits_2(tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "out"
    assert main(["analyze", str(TCGA), "--scenario", "he-til", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--mpp" in err[0]
    assert not out.exists()
    assert main(["analyze", str(TCGA), "--scenario", "he-til", "--page", "2", "--mpp", "0.25",
                 "--out", str(out)]) == 2
    assert "--page" in capsys.readouterr().err


def test_cli_analyzes_a_pyramidal_slide(tmp_path, capsys):
    from core.cli import main

    rgb = _field_rgb()
    path = tmp_path / "field.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(rgb, tile=(128, 128), photometric="rgb", subifds=1, metadata={"PhysicalSizeX": FIELD_MPP,
                  "PhysicalSizeXUnit": "µm", "PhysicalSizeY": FIELD_MPP, "PhysicalSizeYUnit": "µm"})
        tif.write(rgb[::2, ::2].copy(), tile=(128, 128), photometric="rgb", subfiletype=1)
    assert is_slide(path)
    out = tmp_path / "result"
    assert main(["analyze", str(path), "--scenario", "he-til", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cells [" in text and "mm² of tissue" in text
    assert (out / "cells.parquet").is_file() and (out / "overlay.png").is_file()
    assert not (tmp_path / "result.partial").exists()


def test_edge_tiles_read_only_the_box_around_their_tissue():
    """A tile at the tissue's edge is read over its tissue's box plus the full context, never beyond a full window."""
    from core.slides.run import PART_MARGIN_PX, WINDOW_STEP_PX, _Plan, _tissue_parts

    mpp0 = 0.5
    plan = _Plan(scale=1.0, work_mpp=mpp0, level=0, grid_hw=(2000, 2000), tile_px=1024, context_px=96)
    tissue = shapely.box(0, 0, 1200 * mpp0, 2000 * mpp0)  # tissue: x in [0, 1200) px, y in [0, 2000) px
    parts = _tissue_parts(plan, tissue, mpp0, [0, 1, 2, 3])
    assert parts[0] == plan.core(0)  # all tissue: the whole core
    assert parts[1] == (1024, 0, 1200 + PART_MARGIN_PX, 1024)  # tissue up to x = 1200 px
    assert parts[3] == (1024, 1024, 1200 + PART_MARGIN_PX, 2000)
    full = plan.window(0)
    assert (full[2] - full[0], full[3] - full[1]) == (1024 + 2 * 96, 1024 + 2 * 96)  # shifted inwards at the edge
    x0, y0, x1, y1 = plan.window(1, parts[1])
    assert x0 == 1024 - 96 and x1 - x0 == -(-(1200 + PART_MARGIN_PX - 1024) // WINDOW_STEP_PX) * WINDOW_STEP_PX + 2 * 96
    assert x1 >= parts[1][2] + 96 and (y0, y1) == (0, 1024 + 2 * 96)
    w = plan.window(1)
    assert (x1 - x0) * (y1 - y0) < 0.5 * (w[2] - w[0]) * (w[3] - w[1])  # under half the network's work
    # a tile whose core only touches a line of zero area holds no tissue: not read at all
    assert _tissue_parts(plan, shapely.box(0, 0, 1024 * mpp0, 1024 * mpp0), mpp0, [1]) == {1: None}
