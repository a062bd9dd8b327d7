"""Reports and exports: page 1 of the PDF holds the case, the thumbnail, every key figure and
warning and the research-use statement, no page prints a raw key, its text holds the counts
of summary.json, GeoJSON is valid and round-trips regions, every dense output and restored
image gets its file, the same result gives the same bytes, the tumour-board PDF has one row
with an image per analysis, and the key figures are selected once for every page and report."""

from __future__ import annotations

import hashlib
import json
import re
import functools
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from core.cells import make_cell_table
from core.errors import InputError
from core.io import ImageData
from core.outputs import exports, figures, records, report_pdf, tumour_board
from core.outputs.key_figures import format_figure, key_figure_rows, key_figures
from core.results import AnalysisResult, DenseOutput, RunInfo
from core.scenarios.registry import get_scenario

def needs_poppler(test):
    """The test reads PDFs with poppler-utils, which ``make test`` installs; missing, the test fails."""

    def wrapper(*args, **kwargs):
        if shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None:
            pytest.fail("poppler-utils (pdftotext, pdftoppm) is not installed: make test installs it")
        return test(*args, **kwargs)

    return functools.wraps(test)(wrapper)

IMAGE_SHA = hashlib.sha256(b"image").hexdigest()
WEIGHTS_SHA = hashlib.sha256(b"weights").hexdigest()
CARD = {
    "name": "CD3 CNN",
    "version": "1.2.0",
    "intended_use": "Counting CD3-positive lymphocytes in IHC fields of view for research.",
    "limitations": ["Trained on gastric carcinoma only.", "Not validated on whole slides."],
    "metrics": {"test": {"f1": 0.87}},
}


def make_record(counts=None, seed: int = 0, case_label: str = "B-2024-0113") -> dict:
    counts = counts or {"cd3-positive": 412 + seed, "cd3-negative": 1290}
    area_mm2 = 0.0768
    return {
        "summary": {
            "scenario": "cd3-ihc",
            "weights_version": "1.2.0",
            "weights_sha256": WEIGHTS_SHA,
            "mpp": 0.5,
            "image": {"name": "field-7.tif", "sha256": IMAGE_SHA, "width_px": 640, "height_px": 480},
            "counts": counts,
            "density_per_mm2": {k: v / area_mm2 for k, v in counts.items()},
            "area_mm2": area_mm2,
            "regions": {
                "tumour 1": {"area_mm2": 0.03, "counts": {"cd3-positive": 120}, "densities_per_mm2": {"cd3-positive": 4000.0}},
            },
            "runtime_s": 4.2,
            "device": "cpu",
            "warnings": ["faint staining in the lower left"],
        },
        "spatial": {
            "thresholds": {"radius_um": 30.0},
            "immune_phenotype": "inflamed",
            "nearest_neighbour_um": {"median": 12.5 + seed},
            "ripley": {"r_um": [5.0, 10.0, 20.0], "K": [70.0, 300.0, 1200.0], "K_csr": [78.5, 314.2, 1256.6]},
        },
        "n_corrections": 7,
        "case_label": case_label,
        "created_at": "2025-01-31T10:02:11+00:00",
        "analysis_id": 17 + seed,
        "app_version": "0.1.0",
        "params": {"min_probability": 0.5},
        "model_card": CARD,
    }


def pdf_text(pdf: bytes, tmp_path, page: int | None = None, layout: bool = True) -> str:
    """The PDF's text (``page``: that page only, from 1); ``layout`` keeps table rows on one line."""
    path = tmp_path / "out.pdf"
    path.write_bytes(pdf)
    pages = ["-f", str(page), "-l", str(page)] if page else []
    out = subprocess.run(["pdftotext", *(["-layout"] if layout else []), *pages, str(path), "-"], check=True,
                         capture_output=True, timeout=60)
    return out.stdout.decode("utf-8")


def flat(text: str) -> str:
    return " ".join(text.split())


def images_on_page(pdf: bytes, tmp_path, page: int) -> int:
    """Number of images drawn on ``page`` (poppler's pdfimages)."""
    path = tmp_path / "images.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdfimages", "-list", "-f", str(page), "-l", str(page), str(path)], check=True,
                         capture_output=True, timeout=60).stdout.decode()
    return sum(1 for line in out.splitlines()[2:] if line.split() and line.split()[2] == "image")


#: What a raw key looks like in text: snake_case words, dotted paths, indexed lists.
RAW_KEY = re.compile(r"\b[a-z]{2,}_[a-z0-9_]{2,}\b|\b[a-z_]+\.[a-z_]+\[|\b[a-z_]+\.[a-z_]+_[a-z_]+\b")


def raw_keys(text: str) -> list[str]:
    return sorted(set(m.group(0) for m in RAW_KEY.finditer(text)))


def pdf_pages_png(pdf: bytes, tmp_path) -> list:
    path = tmp_path / "render.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(path), str(tmp_path / "page")], check=True, timeout=60)
    return sorted(tmp_path.glob("page*.png"))


def count_on_class_line(text: str, cls: str, count: int) -> bool:
    return any(re.search(rf"(^|\s){re.escape(cls)}\s+{count}(\s|$)", line) for line in text.splitlines())


def overlay_png() -> bytes:
    rgb = np.full((48, 64, 3), 200, np.uint8)
    return figures.png_bytes(figures.render_overlay(rgb, make_cells(5, 64, 48), {"cd3-positive": "#e8341c"}, 0.5))


def full_record(**summary) -> dict:
    record = make_record()
    record["spatial"] = real_spatial()
    record["summary"].update(summary)
    return record


@needs_poppler
def test_page_one_holds_every_key_figure_and_warning(tmp_path):
    record = full_record(outside_validated_use=["the pixel size 0.2 µm/px is outside 0.45-0.65 µm/px",
                                                "the stain does not look like CD3 IHC"],
                         tissue_area_mm2=0.0512)
    record["spatial"]["warnings"] = ["radii above half the window were dropped"]
    pdf = report_pdf.build_report_pdf(record, overlay_png=overlay_png())
    assert pdf.startswith(b"%PDF")
    page1 = flat(pdf_text(pdf, tmp_path, page=1, layout=False))
    for needle in (
        "B-2024-0113", "field-7.tif", "Research use only, not for diagnostic decisions.",
        "Outside the validated use: the pixel size 0.2 µm/px is outside 0.45-0.65 µm/px; "
        "the stain does not look like CD3 IHC",
        "faint staining in the lower left", "radii above half the window were dropped",
        "0.0512 mm² of tissue", "reviewed by hand: 7 cell(s) corrected", "Immune phenotype",
        record["spatial"]["phenotype"]["rule"].replace(">=", "≥"),
    ):
        assert needle in page1, f"{needle!r} missing from page 1"
    figs = key_figures(record)
    assert len(figs) > 15
    for f in figs:
        if f.key.startswith(("count.", "density.")) or f.key == "cells":  # the class table: number, unit in its heading
            assert format_figure(f.value, f.unit) in page1, f.measure
        elif f.key.startswith("distances.within_radius["):  # one row, the values side by side
            assert f.value_text in page1, f.measure
        elif f.key != "phenotype" or f.value is not None:
            assert f.measure[1:] in page1 and f.value_text in page1, f"{f.measure}: {f.value_text} not on page 1"
    radii = " / ".join(f"{r['radius_um']:g}" for r in record["spatial"]["distances"]["within_radius"])
    assert f"Immune cells within {radii} µm" in page1
    assert "cells/mm²" in page1 and "µm" in page1 and "%" in page1
    assert images_on_page(pdf, tmp_path, 1) == 1  # the thumbnail of the overlay
    # No page prints a raw key; every page has the research-use footer.
    text = pdf_text(pdf, tmp_path, layout=False)
    assert raw_keys(text) == [], raw_keys(text)
    for bad in ("within_radius", "n_without_um", "window.area_mm2", "immune_per_tumour_cell"):
        assert bad not in text
    pages = pdf_pages_png(pdf, tmp_path)
    assert flat(text).count("Research use only, not for diagnostic decisions.") >= len(pages) + 1


@needs_poppler
def test_report_follows_page_one_with_figures_and_a_methods_appendix(tmp_path):
    record = full_record()
    pdf = report_pdf.build_report_pdf(record, overlay_png=overlay_png())
    text = flat(pdf_text(pdf, tmp_path, layout=False))
    order = ["Immune phenotype", "Figures", "Immune-cell density by compartment",
             "Distance from each immune cell to the nearest tumour cell", "Are immune cells closer to tumour cells than chance?",
             "Image with detections", "Methods appendix", "Validation on held-out data", "Settings of the spatial statistics",
             "Definitions"]
    at = [text.find(needle) for needle in order]
    assert -1 not in at and at == sorted(at), dict(zip(order, at))
    for needle in (IMAGE_SHA, WEIGHTS_SHA, "CD3 CNN, version 1.2.0", CARD["intended_use"], *CARD["limitations"],
                   "F1 87.0 %",  # the card's held-out figure, in words
                   "Distances r for 'immune cells within r of a tumour cell' 10, 20, 30, 50 µm",
                   "Random relabellings of tumour/immune labels for the envelopes 9",
                   "Minimum cell probability 0.5"):
        assert needle in text, f"{needle!r} missing"
    # the figures are pictures: compartments, distances, envelopes, the overlay
    assert sum(images_on_page(pdf, tmp_path, p) for p in range(2, len(pdf_pages_png(pdf, tmp_path)) + 1)) >= 4


@needs_poppler
def test_a_reviewed_analysis_says_so_and_reports_the_corrected_counts(tmp_path):
    record = full_record(n_cells=1705, counts={"cd3-positive": 415, "cd3-negative": 1290},
                         review={"n_added": 4, "n_deleted": 1, "n_relabelled": 0, "n_corrections": 5,
                                 "detected_n_cells": 1702, "users": ["dr-a"], "first_time": "2025-02-01T09:00:00+00:00",
                                 "last_time": "2025-02-01T09:30:00+00:00"})
    record["n_corrections"] = 5
    page1 = flat(pdf_text(report_pdf.build_report_pdf(record), tmp_path, page=1, layout=False))
    assert "reviewed by hand: 5 cell(s) corrected (4 added, 1 deleted, 0 relabelled); 1,702 cells detected, 1,705 after review" \
        in page1
    assert "415" in page1 and "1,705" in page1
    assert "No picture of the detections was supplied" in page1


@needs_poppler
def test_a_very_long_case_label_is_shortened_and_page_one_still_holds_everything(tmp_path):
    label = "B-2024-" + "x" * 4993
    record = full_record(outside_validated_use=["the stain does not look like CD3 IHC"])
    pdf = report_pdf.build_report_pdf(record, overlay_png=overlay_png(), case_label=label)
    page1 = flat(pdf_text(pdf, tmp_path, page=1, layout=False))
    assert "(5,000 characters, shortened)" in page1 and "x" * 200 not in page1
    assert "Outside the validated use: the stain does not look like CD3 IHC" in page1
    assert "Research use only, not for diagnostic decisions." in page1
    last = [f for f in key_figures(record) if f.value is not None][-1]
    assert last.value_text in page1  # the last key figure still fits on page 1


@needs_poppler
def test_report_without_mpp_spatial_or_card_still_builds(tmp_path):
    record = {"summary": {"scenario": "cd3-ihc", "mpp": None, "counts": {"cd3-positive": 3}, "density_per_mm2": None}}
    text = flat(pdf_text(report_pdf.build_report_pdf(record, case_label="C-1"), tmp_path))
    assert "cd3-positive 3" in text
    assert "unknown: counts only" in text
    assert "No spatial statistics were computed" in text
    assert "not stated in the model card" in text


@needs_poppler
def test_statistics_in_an_older_layout_are_shown_in_words(tmp_path):
    text = pdf_text(report_pdf.build_report_pdf(make_record(), overlay_png=overlay_png()), tmp_path, layout=False)
    assert "Statistics saved in an older layout" in text and "inflamed" in text and "12.50" in text
    assert raw_keys(text) == [], raw_keys(text)


def test_report_helpers_read_absent_and_present_keys():
    assert report_pdf.outside_validated_use({}) == [] and report_pdf.outside_validated_use({"outside_validated_use": []}) == []
    assert report_pdf.outside_validated_use({"outside_validated_use": "not H&E"}) == ["not H&E"]
    record = full_record(warnings=["a", "a", "b"])
    record["spatial"]["warnings"] = ["b", "c"]
    assert report_pdf.report_warnings(record)[-3:] == ["a", "b", "c"]
    assert report_pdf.review_text({"summary": {}}) == "not reviewed by hand: the numbers are the model's"


def test_report_needs_a_summary():
    with pytest.raises(InputError, match="summary"):
        report_pdf.build_report_pdf({"counts": {}})


def test_spatial_curves_found_by_um_axis():
    curves = figures.spatial_curves(make_record()["spatial"])
    assert len(curves) == 1
    title, x_name, x, ys = curves[0]
    assert (title, x_name) == ("ripley", "r_um")
    np.testing.assert_allclose(x, [5.0, 10.0, 20.0])
    assert set(ys) == {"K", "K_csr"}


def test_comparison_table_side_by_side():
    records = [make_record(seed=0, case_label="A"), make_record(seed=1, case_label="B")]
    table = tumour_board.comparison_table(records)
    assert list(table.columns) == ["A · #17 · field-7.tif", "B · #18 · field-7.tif"]
    assert table.loc["count: cd3-positive"].tolist() == [412, 413]
    assert table.loc["spatial: nearest_neighbour_um.median"].tolist() == [12.5, 13.5]
    assert table.loc["spatial: immune_phenotype"].tolist() == ["inflamed", "inflamed"]
    assert table.loc["density (cells/mm²): cd3-positive in tumour 1"].tolist() == [4000.0, 4000.0]


@needs_poppler
def test_comparison_pdf_has_one_row_with_an_image_per_analysis(tmp_path):
    records = [full_record(), make_record(seed=5, case_label="Case-B"),
               full_record(outside_validated_use=["the pixel size is outside 0.45-0.65 µm/px"])]
    records[0]["case_label"], records[2]["case_label"] = "Case-A", "Case-C"
    overlays = [overlay_png(), None, overlay_png()]
    pdf = tumour_board.build_comparison_pdf(records, overlays=overlays)
    page1 = flat(pdf_text(pdf, tmp_path, page=1, layout=False))
    assert "Research use only, not for diagnostic decisions." in page1
    at = [page1.find(label) for label in ("Case-A", "Case-B", "Case-C")]
    assert -1 not in at and at == sorted(at)  # one row each, in order
    assert "no overlay image saved" in page1
    assert images_on_page(pdf, tmp_path, 1) == 2  # a thumbnail in each row that has an overlay
    assert "Outside the validated use: the pixel size is outside 0.45-0.65 µm/px" in page1
    board = tumour_board.board_table(records)
    for column in ("Immune cells/mm²", "Intratumoral · stromal (cells/mm²)", "Immune → tumour, median", "Phenotype"):
        for value in board[column]:
            assert value in page1, (column, value)
    text = pdf_text(pdf, tmp_path, layout=False)
    assert "Charts comparing the analyses" in text and "Every key figure side by side" in text
    assert "412" in text and "417" in text
    assert raw_keys(text) == [], raw_keys(text)
    assert len(pdf_pages_png(pdf, tmp_path)) >= 2  # rows, then charts


def test_board_table_and_charts_compare_what_means_something():
    records = [full_record(), make_record(seed=1, case_label="B")]
    board = tumour_board.board_table(records)
    assert list(board.index) == ["1. B-2024-0113 · #17 · field-7.tif", "2. B · #18 · field-7.tif"]
    figs = {f.key: f for f in key_figures(records[0])}
    assert board.iloc[0]["Immune → tumour, median"] == figs["distances.median_um"].value_text
    assert board.iloc[0]["Within 20 µm of tumour"] == figs["distances.within_radius[20]"].value_text
    assert board.iloc[1]["Phenotype"] == "n/a"  # older statistics: not read
    titles = [t for t, _ in tumour_board.comparison_figures_png(records)]
    assert titles[:2] == ["Immune-cell density by compartment", "Share of immune cells within r of a tumour cell"]
    spatial = tumour_board.comparison_numeric(records)["spatial"]
    assert not [i for i in spatial.index if "_" in i or "window" in i or "n_without" in i]
    assert "immune → nearest tumour cell, median (µm)" in spatial.index


def test_comparison_pdf_needs_records():
    with pytest.raises(InputError, match="at least one"):
        tumour_board.build_comparison_pdf([])


# --------------------------------------------------------------------------- exports


def make_cells(n: int, w: int, h: int, mpp: float | None = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    xy = rng.random((n, 2)) * [w - 1, h - 1]
    classes = np.where(np.arange(n) % 3 == 0, "cd3-negative", "cd3-positive")
    return make_cell_table(xy, classes, "immune", rng.random(n), mpp)


def make_result(mpp: float | None = 0.5, dense=None, restored=None, spatial: bool = False) -> AnalysisResult:
    h, w = 120, 160
    cells = make_cells(30, w, h, mpp)
    rgb = np.full((h, w, 3), 220, np.uint8)
    rgb[40:80, 50:110] = (150, 90, 60)
    image = ImageData.from_rgb(rgb, mpp, "field.png", IMAGE_SHA)
    run = RunInfo(
        scenario_key="cd3-ihc", scenario_title="CD3+ lymphocytes in CD3 IHC", weights_file="cd3.safetensors",
        weights_sha256=WEIGHTS_SHA, weights_version="1.2.0", trained_on_synthetic=False, device="cpu",
        precision="float32", runtime_s=0.1, app_version="0.0.test", torch_version="2.x",
        python_version="3.x", created_at="2025-01-31T10:02:11+00:00",
    )
    result = AnalysisResult(image, cells, run, get_scenario("cd3-ihc"), dense=dense or {}, restored=restored or {})
    if spatial:
        from core.pipeline import spatial_statistics
        from core.spatial import SpatialParams

        result.spatial = spatial_statistics(result, params=SpatialParams(n_simulations=9))
    return result


def probability_output(h: int = 120, w: int = 160) -> DenseOutput:
    values = np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))
    return DenseOutput("probability", "probability", "P(test) at each pixel", values, color="#e8341c")


def denoised_image(h: int = 120, w: int = 160) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(pd.io.common.BytesIO(data)))


@needs_poppler
def test_exports_agree_with_each_other(tmp_path):
    result = make_result(spatial=True)
    files = exports.build_exports(result, model_card=CARD, case_label="B-1")
    assert {"report.pdf", "cells.csv", "cells.parquet", "summary.json", "overlay.png", "cells.geojson"} == set(files)
    pd.testing.assert_frame_equal(pd.read_parquet(pd.io.common.BytesIO(files["cells.parquet"])),
                                  pd.read_csv(pd.io.common.BytesIO(files["cells.csv"])), check_exact=False, atol=5e-4)
    summary = json.loads(files["summary.json"])
    assert summary["counts"] == result.summary["counts"]
    assert summary["spatial"] == json.loads(json.dumps(result.spatial.to_dict()))
    cells = pd.read_csv(pd.io.common.BytesIO(files["cells.csv"]))
    assert len(cells) == len(result.cells)
    observed = {k: v for k, v in summary["counts"].items() if v}
    assert cells["cell_class"].value_counts().to_dict() == observed
    text = pdf_text(files["report.pdf"], tmp_path)
    for cls, n in summary["counts"].items():
        assert count_on_class_line(text, cls, n)
    overlay = png_array(files["overlay.png"])
    assert overlay.shape == (120, 160, 3)
    # every cell is ringed in its class colour: the class colour appears, the background stays
    assert (overlay == (0xE8, 0x34, 0x1C)).all(axis=-1).any()
    assert not np.array_equal(overlay, result.image.rgb)


@needs_poppler
def test_build_exports_writes_one_png_per_dense_output_and_restored_image(tmp_path):
    dense = probability_output()
    restored = denoised_image()
    result = make_result(dense={"probability": dense}, restored={"denoised": restored})
    files = exports.build_exports(result, model_card=CARD)
    assert list(files)[:5] == ["cells.csv", "summary.json", "overlay.png", "probability.png", "denoised.png"]
    grey = png_array(files["probability.png"])
    assert grey.shape == (120, 160) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey, np.clip(dense.values * 255.0 + 0.5, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(png_array(files["denoised.png"]), restored)
    assert all(exports.media_type(name) == "image/png" for name in files if name.endswith(".png"))
    text = " ".join(pdf_text(files["report.pdf"], tmp_path).split())
    assert "P(test) at each pixel" in text and "Probability (probability)" in text
    assert "Denoised (restored image)" in text


def test_class_probabilities_are_written_as_their_arg_max_in_class_colours():
    values = np.zeros((120, 160, 2), np.float32)
    values[:, :80, 0] = 1.0
    values[:, 80:, 1] = 1.0
    out = DenseOutput("compartments", "class_probabilities", "P(tumour), P(stroma)", values, ("tumour", "stroma"))
    files = exports.build_exports(make_result(dense={"compartments": out}), model_card=CARD)
    rgb = png_array(files["compartments.png"])
    colors = figures.plane_colors(out)
    assert tuple(rgb[0, 0]) == figures.hex_to_rgb(colors["tumour"])
    assert tuple(rgb[0, -1]) == figures.hex_to_rgb(colors["stroma"])


def test_two_builds_of_the_same_result_are_byte_identical():
    result = make_result(dense={"probability": probability_output()}, restored={"denoised": denoised_image()}, spatial=True)
    first = exports.build_exports(result, model_card=CARD, case_label="B-1")
    second = exports.build_exports(result, model_card=CARD, case_label="B-1")
    assert list(first) == list(second)
    for name in first:
        assert first[name] == second[name], f"{name} differs between two builds"
    record = records.record_from_result(result, model_card=CARD)
    assert exports.build_exports(result, record=record) == exports.build_exports(result, record=dict(record))


def test_overlay_is_bounded_and_rings_scale_with_it():
    rgb = np.zeros((300, 9000, 3), np.uint8)
    cells = make_cell_table(np.array([[4500.0, 150.0]]), "cd3-positive", "immune", np.ones(1), 0.5)
    out = figures.render_overlay(rgb, cells, {"cd3-positive": "#ffffff"}, 0.5)
    assert out.shape == (133, 4000, 3)
    ys, xs = np.nonzero(out[..., 0])
    assert abs(xs.mean() - 2000) < 1 and abs(ys.mean() - 66.5) < 1.5  # the ring is centred on the cell


def test_geojson_export_is_valid_and_round_trips_regions(tmp_path):
    from core.spatial.regions import Region, read_regions_geojson

    result = make_result()
    region = Region("Tumour 1", "tumour", np.array([[5.0, 5.0], [60.0, 5.0], [60.0, 50.0], [5.0, 50.0]]))
    files = exports.build_exports(result, regions=[region], model_card=CARD)
    data = json.loads(files["cells.geojson"])
    assert data["type"] == "FeatureCollection"
    kinds = [f["properties"]["objectType"] for f in data["features"]]
    assert kinds.count("annotation") == 1 and kinds.count("detection") == len(result.cells)
    for f in data["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] in ("Point", "Polygon")
        assert isinstance(f["properties"]["classification"]["name"], str)
        assert len(f["properties"]["classification"]["color"]) == 3
    back = read_regions_geojson(files["cells.geojson"], mpp=result.image.mpp)
    assert [(r.name, r.kind) for r in back] == [("Tumour 1", "tumour")]
    np.testing.assert_allclose(back[0].polygon_um, region.polygon_um, atol=1e-9)
    record = records.record_from_result(result, regions=[region])
    assert record["regions"]["features"][0]["properties"]["name"] == "Tumour 1"


def test_no_geojson_without_mpp():
    files = exports.build_exports(make_result(mpp=None), model_card=CARD)
    assert "cells.geojson" not in files and "report.pdf" in files


def test_write_analysis_writes_the_same_bytes(tmp_path):
    from core.pipeline import write_analysis

    result = make_result(dense={"probability": probability_output()})
    written = write_analysis(result, tmp_path / "out", case_label="B-9")
    assert set(written) == {"cells.csv", "cells.parquet", "summary.json", "overlay.png", "probability.png"}
    with_report = write_analysis(result, tmp_path / "full", report=True, case_label="B-9")
    assert set(with_report) == set(written) | set(exports.REPORT_FILES)
    files = exports.build_exports(result, case_label="B-9")
    assert all(p.read_bytes() == files[name] for name, p in with_report.items())


@needs_poppler
def test_save_result_keeps_every_export_and_rebuilds_the_report(tmp_path):
    from core.outputs.store import CaseStore

    store = CaseStore(f"sqlite:///{tmp_path / 'cases.sqlite3'}")
    result = make_result(spatial=True, dense={"probability": probability_output()})
    aid = exports.save_result(result, "B-5", store, model_card=CARD, corrections={"edits": [1, 2]})
    files = {f["name"]: f["media_type"] for f in store.get_analysis(aid)["files"]}
    assert files == {name: exports.media_type(name) for name in exports.build_exports(result, model_card=CARD)}
    saved_text = " ".join(pdf_text(store.get_file(aid, "report.pdf"), tmp_path).split())
    assert f"analysis #{aid}" in saved_text and "reviewed by hand: 2 cell(s) corrected" in saved_text
    # The CLI's files and the stored ones are the same bytes (the PDF carries the analysis id).
    cli = exports.build_exports(result, model_card=CARD, case_label="B-5", corrections={"edits": [1, 2]})
    for name in ("cells.csv", "summary.json", "overlay.png", "probability.png", "cells.geojson"):
        assert store.get_file(aid, name) == cli[name], name
    # A report rebuilt later from the stored record carries the same numbers and card.
    record = store.get_record(aid)
    rebuilt = flat(pdf_text(report_pdf.build_report_pdf(record, store.get_file(aid, "overlay.png")), tmp_path, layout=False))
    for cls, n in json.loads(store.get_file(aid, "summary.json"))["counts"].items():
        assert f"{cls} {n}" in rebuilt
    assert CARD["intended_use"] in rebuilt and "Immune → nearest tumour cell, median" in rebuilt
    assert raw_keys(rebuilt) == [], raw_keys(rebuilt)
    store.close()


def test_spatial_statistics_and_regions_from_the_spatial_schema():
    stats = {
        "schema": 1, "available": True, "params": {"radius_um": 30.0},
        "distances": {"available": True, "definition": "text", "immune_to_nearest_tumour_um": {"median_um": 6.9},
                      "within_radius": [{"radius_um": 10.0, "fraction_immune_within": 0.75}]},
        "ripley": {"available": False, "reason": "needs >= 2 tumour cells"},
        "phenotype": {"thresholds": {"x": 1}, "call": "inflamed", "rule": "text"},
        "regions": {"per_region": [{"name": "T1", "kind": "tumour", "area_mm2": 0.01,
                                    "counts_by_role": {"immune": 53, "stroma": 0},
                                    "density_per_mm2_by_role": {"immune": 5300.0, "stroma": 0.0}}]},
    }
    assert records.spatial_statistics(stats) == {
        "distances.immune_to_nearest_tumour_um.median_um": 6.9,
        "distances.within_radius[10 µm].fraction_immune_within": 0.75,
        "ripley": "not computed: needs >= 2 tumour cells",
        "phenotype.call": "inflamed",
    }
    assert records.region_stats({"summary": {}, "spatial": stats}) == {
        "T1 (tumour)": {"area_mm2": 0.01, "counts": {"immune": 53}, "densities_per_mm2": {"immune": 5300.0}}
    }


# --------------------------------------------------------------------------- key figures


def real_spatial() -> dict:
    from core.spatial import Region, SpatialParams, compute_spatial_stats

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 400, (300, 2))
    roles = np.where(xy[:, 0] < 200, "tumour", "immune")
    roles[::7] = "stroma"
    cells = make_cell_table(xy / 0.5, roles, roles, np.ones(len(xy)), 0.5)
    tumour = Region("t", "tumour", np.array([[0, 0], [200, 0], [200, 400], [0, 400]], float))
    return compute_spatial_stats(cells, [tumour], SpatialParams(n_simulations=9, window_um=(0, 0, 400, 400)))


def test_key_figures_of_a_record_read_the_summary_and_the_statistics():
    record = make_record()
    record["spatial"] = real_spatial()
    figs = {f.measure: f for f in key_figures(record)}
    assert figs["cd3-positive cells"].value_text == "412"
    assert figs["cd3-positive density"].value_text == f"{412 / 0.0768:,.0f} cells/mm²"
    d = record["spatial"]["distances"]
    median = figs["immune → nearest tumour cell, median"]
    assert median.value == d["immune_to_nearest_tumour_um"]["median_um"] and median.unit == "µm"
    within = figs["immune cells within 20 µm of a tumour cell"]
    assert within.value_text == f"{100 * d['within_radius'][1]['fraction_immune_within']:.1f} %"
    assert "r = 20 µm" in within.setting
    assert figs["immune phenotype"].value == record["spatial"]["phenotype"]["call"]
    assert figs["cells corrected by hand"].value == 7
    # a record, its summary with the statistics inside, and the statistics object read the same
    from core.spatial import SpatialStats

    summary = dict(record["summary"], spatial=record["spatial"])
    assert key_figures(summary, spatial=None)[-1].measure != "cells corrected by hand"  # no count outside a record
    assert [f for f in key_figures(summary) if f.key.startswith("distances")] == \
        [f for f in key_figures(SpatialStats.from_dict(record["spatial"])) if f.key.startswith("distances")]


def test_key_figures_say_why_a_figure_is_missing():
    rows = {r["measure"]: r for r in key_figure_rows({"available": False, "reason": "needs an mpp", "counts": {"n_cells": 4}})}
    assert rows["spatial statistics"] == {"measure": "spatial statistics", "value": "n/a", "setting": "needs an mpp"}
    assert rows["cells"]["value"] == "4"
    rows = key_figure_rows({"summary": {"counts": {"a": 3}, "density_per_mm2": None}})
    assert rows[-1] == {"measure": "spatial statistics", "value": "n/a", "setting": "not computed for this analysis"}
    assert {"measure": "a density", "value": "n/a", "setting": "mpp unknown: no density"} in rows
    assert format_figure(1 / 11, "fraction") == "9.1 %" and format_figure(None, "cells/mm²") == "n/a"
    assert format_figure(20.04, "µm", with_unit=True) == "20.0 µm" and format_figure(1234, "cells") == "1,234"


def test_key_figure_table_puts_the_same_figures_side_by_side():
    first, second = make_record(seed=0, case_label="A"), make_record(seed=1, case_label="B")
    first["spatial"] = real_spatial()
    table = tumour_board.key_figure_table([first, second])
    assert list(table.columns) == ["A · #17 · field-7.tif", "B · #18 · field-7.tif"]
    assert list(table.index[:6]) == list(tumour_board.PROVENANCE_ROWS)
    assert table.loc["cd3-positive cells"].tolist() == ["412", "413"]
    for f in key_figures(first):
        assert table.at[f.measure, "A · #17 · field-7.tif"] == f.value_text
    assert table.at["immune phenotype", "B · #18 · field-7.tif"] == "n/a"  # older statistics: not read
    full = tumour_board.comparison_table([first, second])
    assert len(full) > len(table)
