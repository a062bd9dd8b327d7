"""Reports and exports: the PDF carries every required item, its text holds the counts
of summary.json, GeoJSON is valid and round-trips regions, the comparison builds."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from core import report
from core.cells import make_cell_table
from core.errors import InputError
from core.io import ImageData
from core.results import AnalysisResult

needs_poppler = pytest.mark.skipif(
    shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None,
    reason="poppler-utils (pdftotext, pdftoppm) is not installed: apt-get install -y poppler-utils",
)

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


def pdf_text(pdf: bytes, tmp_path) -> str:
    path = tmp_path / "out.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, timeout=60)
    return out.stdout.decode("utf-8")


def pdf_pages_png(pdf: bytes, tmp_path) -> list:
    path = tmp_path / "render.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(path), str(tmp_path / "page")], check=True, timeout=60)
    return sorted(tmp_path.glob("page*.png"))


def count_on_class_line(text: str, cls: str, count: int) -> bool:
    return any(re.search(rf"(^|\s){re.escape(cls)}\s+{count}(\s|$)", line) for line in text.splitlines())


@needs_poppler
def test_report_pdf_text_holds_every_required_item(tmp_path):
    record = make_record()
    overlay = report.render_overlay_png(np.full((48, 64, 3), 200, np.uint8), make_cells(5, 64, 48))
    pdf = report.build_report_pdf(record, overlay_png=overlay)
    assert pdf.startswith(b"%PDF")
    text = pdf_text(pdf, tmp_path)
    flat = " ".join(text.split())
    for cls, n in record["summary"]["counts"].items():
        assert count_on_class_line(text, cls, n), f"count of {cls} ({n}) not on its line"
    assert count_on_class_line(text, "total", sum(record["summary"]["counts"].values()))
    for needle in (
        "B-2024-0113", "2025-01-31", "field-7.tif", IMAGE_SHA, WEIGHTS_SHA, "0.5 µm/px", "mm²",
        "cd3-ihc", "1.2.0", "Manual corrections 7", "tumour 1", "radius_um", "inflamed", "12.50",
        CARD["intended_use"], CARD["limitations"][0], CARD["limitations"][1],
        "Research use only, not for diagnostic decisions.", "Image with detections", "Plots",
    ):
        assert needle in flat, f"{needle!r} missing from the report text"
    # Every page is rendered, and carries the research-use footer.
    pages = pdf_pages_png(pdf, tmp_path)
    assert len(pages) >= 2
    assert flat.count("not for diagnostic decisions") >= len(pages)


@needs_poppler
def test_report_without_mpp_spatial_or_card_still_builds(tmp_path):
    record = {"summary": {"scenario": "cd3-ihc", "mpp": None, "counts": {"cd3-positive": 3}, "density_per_mm2": None}}
    text = " ".join(pdf_text(report.build_report_pdf(record, case_label="C-1"), tmp_path).split())
    assert "cd3-positive 3" in text
    assert "unknown: densities not reported" in text
    assert "No spatial statistics were computed" in text
    assert "not stated in the model card" in text


def test_report_needs_a_summary():
    with pytest.raises(InputError, match="summary"):
        report.build_report_pdf({"counts": {}})


def test_spatial_curves_found_by_um_axis():
    curves = report.spatial_curves(make_record()["spatial"])
    assert len(curves) == 1
    title, x_name, x, ys = curves[0]
    assert (title, x_name) == ("ripley", "r_um")
    np.testing.assert_allclose(x, [5.0, 10.0, 20.0])
    assert set(ys) == {"K", "K_csr"}


def test_comparison_table_side_by_side():
    records = [make_record(seed=0, case_label="A"), make_record(seed=1, case_label="B")]
    table = report.comparison_table(records)
    assert list(table.columns) == ["A · #17 · field-7.tif", "B · #18 · field-7.tif"]
    assert table.loc["count: cd3-positive"].tolist() == [412, 413]
    assert table.loc["spatial: nearest_neighbour_um.median"].tolist() == [12.5, 13.5]
    assert table.loc["spatial: immune_phenotype"].tolist() == ["inflamed", "inflamed"]
    assert table.loc["density (cells/mm²): cd3-positive in tumour 1"].tolist() == [4000.0, 4000.0]


@needs_poppler
def test_comparison_pdf_holds_both_analyses(tmp_path):
    records = [make_record(seed=0, case_label="Case-A"), make_record(seed=5, case_label="Case-B")]
    pdf = report.build_comparison_pdf(records)
    text = " ".join(pdf_text(pdf, tmp_path).split())
    assert "Case-A" in text and "Case-B" in text
    assert "count: cd3-positive 412 417" in text
    assert "Research use only" in text
    assert len(pdf_pages_png(pdf, tmp_path)) >= 2  # table, then charts


def test_comparison_pdf_needs_records():
    with pytest.raises(InputError, match="at least one"):
        report.build_comparison_pdf([])


# --------------------------------------------------------------------------- exports


def make_cells(n: int, w: int, h: int, mpp: float | None = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    xy = rng.random((n, 2)) * [w - 1, h - 1]
    classes = np.where(np.arange(n) % 3 == 0, "cd3-negative", "cd3-positive")
    return make_cell_table(xy, classes, "immune", rng.random(n), mpp)


def make_result(mpp: float | None = 0.5) -> AnalysisResult:
    h, w = 120, 160
    cells = make_cells(30, w, h, mpp)
    counts = cells["cell_class"].value_counts().to_dict()
    area = None if mpp is None else h * w * mpp**2 / 1e6
    summary = {
        "scenario": "cd3-ihc",
        "weights_sha256": WEIGHTS_SHA,
        "weights_version": "1.2.0",
        "image": {"name": "field.png", "sha256": IMAGE_SHA, "width_px": w, "height_px": h},
        "mpp": mpp,
        "area_mm2": area,
        "n_cells": len(cells),
        "counts": {k: int(v) for k, v in counts.items()},
        "density_per_mm2": None if area is None else {k: v / area for k, v in counts.items()},
        "runtime_s": 0.1,
        "device": "cpu",
        "warnings": [],
        "spatial": {"nearest_neighbour_um": {"median": 3.0}},
    }
    image = ImageData(np.full((h, w, 3), 220, np.uint8), mpp, "field.png", IMAGE_SHA)
    return AnalysisResult("cd3-ihc", image, cells, summary)


@needs_poppler
def test_exports_agree_with_each_other(tmp_path):
    result = make_result()
    files = report.build_exports(result, model_card=CARD, case_label="B-1", class_colors={"cd3-positive": "#e8341c"})
    assert {"report.pdf", "cells.csv", "summary.json", "overlay.png"} <= set(files)
    summary = json.loads(files["summary.json"])
    assert summary["counts"] == result.summary["counts"]
    assert summary["spatial"] == {"nearest_neighbour_um": {"median": 3.0}}
    cells = pd.read_csv(pd.io.common.BytesIO(files["cells.csv"]))
    assert len(cells) == len(result.cells)
    assert cells["cell_class"].value_counts().to_dict() == summary["counts"]
    text = pdf_text(files["report.pdf"], tmp_path)
    for cls, n in summary["counts"].items():
        assert count_on_class_line(text, cls, n)
    assert files["overlay.png"].startswith(b"\x89PNG")


def test_geojson_export_is_valid_and_round_trips_regions(tmp_path):
    regions_mod = pytest.importorskip("core.regions", reason="core.regions is not there yet")
    result = make_result()
    region = regions_mod.Region("Tumour 1", "tumour", np.array([[5.0, 5.0], [60.0, 5.0], [60.0, 50.0], [5.0, 50.0]]))
    files = report.build_exports(result, regions=[region], model_card=CARD)
    data = json.loads(files["cells.geojson"])
    assert data["type"] == "FeatureCollection"
    kinds = [f["properties"]["objectType"] for f in data["features"]]
    assert kinds.count("annotation") == 1 and kinds.count("detection") == len(result.cells)
    for f in data["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] in ("Point", "Polygon")
        assert isinstance(f["properties"]["classification"]["name"], str)
        assert len(f["properties"]["classification"]["color"]) == 3
    back = regions_mod.read_regions_geojson(files["cells.geojson"], mpp=result.image.mpp)
    assert [(r.name, r.kind) for r in back] == [("Tumour 1", "tumour")]
    np.testing.assert_allclose(back[0].polygon_um, region.polygon_um, atol=1e-9)
    record = report.record_from_result(result, regions=[region])
    assert record["regions"]["features"][0]["properties"]["name"] == "Tumour 1"


def test_no_geojson_without_mpp():
    files = report.build_exports(make_result(mpp=None), model_card=CARD)
    assert "cells.geojson" not in files and "report.pdf" in files


def test_write_report_files(tmp_path):
    pytest.importorskip("core.regions", reason="core.regions is not there yet")
    from core.exports import write_report_files

    written = write_report_files(make_result(), tmp_path / "out", case_label="B-9", model_card=CARD)
    assert set(written) == {"report.pdf", "cells.geojson"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in written.values())


@needs_poppler
def test_save_result_keeps_every_export_and_rebuilds_the_report(tmp_path):
    from core.exports import save_result
    from core.store import CaseStore

    store = CaseStore(f"sqlite:///{tmp_path / 'cases.sqlite3'}")
    result = make_result()
    aid = save_result(result, "B-5", store, model_card=CARD, corrections={"edits": [1, 2]})
    names = {f["name"] for f in store.get_analysis(aid)["files"]}
    assert {"report.pdf", "cells.csv", "summary.json", "overlay.png"} <= names
    saved_text = " ".join(pdf_text(store.get_file(aid, "report.pdf"), tmp_path).split())
    assert f"Analysis id {aid}" in saved_text and "Manual corrections 2" in saved_text
    # A report rebuilt later from the stored record carries the same numbers and card.
    record = store.get_record(aid)
    rebuilt = " ".join(pdf_text(report.build_report_pdf(record, store.get_file(aid, "overlay.png")), tmp_path).split())
    for cls, n in json.loads(store.get_file(aid, "summary.json"))["counts"].items():
        assert f"{cls} {n}" in rebuilt
    assert CARD["intended_use"] in rebuilt and "nearest_neighbour_um.median" in rebuilt
    store.close()


def test_spatial_statistics_and_regions_from_the_spatial_schema():
    from core import records

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


def test_key_figures_keep_the_board_rows_of_a_real_spatial_result():
    from core.cells import make_cell_table
    from core.regions import Region
    from core.spatial import SpatialParams, compute_spatial_stats

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 400, (300, 2))
    roles = np.where(xy[:, 0] < 200, "tumour", "immune")
    roles[::7] = "stroma"
    cells = make_cell_table(xy / 0.5, roles, roles, np.ones(len(xy)), 0.5)
    tumour = Region("t", "tumour", np.array([[0, 0], [200, 0], [200, 400], [0, 400]], float))
    record = make_record()
    record["spatial"] = compute_spatial_stats(cells, [tumour], SpatialParams(n_simulations=9, window_um=(0, 0, 400, 400)))
    table = report.comparison_table([record])
    key = report.key_figures(table)
    names = [str(i) for i in key.index]
    assert len(table) > 2 * len(key)
    for wanted in ("case", "count: cd3-positive", "spatial: distances.immune_to_nearest_tumour_um.median_um",
                   "spatial: distances.within_radius[20 µm].fraction_immune_within",
                   "spatial: compartments.ratio_intratumoral_to_stromal",
                   "spatial: invasive_margin.ct.immune_density_per_mm2", "spatial: phenotype.call", "manual corrections"):
        assert wanted in names, wanted
    assert not any("n_pairs" in n or "note" in n or "label" in n for n in names)
    assert names == [n for n in map(str, table.index) if n in names]  # table order kept
