"""Hostile and broken input (issue 17): nothing lost, nothing leaked, no traceback.

Every case is generated here, small: a bomb is a many-page or mis-scaled file of modest
size, checked against its limit or measured for memory. Each refused case must exit with
status 2, print one line on stderr starting with "error:", no traceback, and leave no
output behind; each accepted one must give a correct analysis with a note.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from core.cli import main
from core.errors import WeightsError

REPO = Path(__file__).resolve().parent.parent


def refused(rc: int, err: str, match: str) -> None:
    """Exit status 2, one line on stderr starting with "error:" and containing ``match``, no traceback."""
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and match in lines[0], err


def run_main(capsys, *args) -> tuple[int, str]:
    """``main(args)`` in this process: (status, stderr); argparse's own exits count as status."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def measured(cases: dict[str, str]) -> dict:
    """Run each case's code in one fresh interpreter, after importing the pipeline (and so torch).

    Each code sets ``rc`` (and may set ``extra``); returns, per case, {"rc", "err",
    "grew_mb", "extra"}, where ``grew_mb`` is how much the peak resident memory of the
    process grew while that case ran (the high-water mark only rises, so a case that
    allocated gigabytes shows them whatever ran before it).
    """
    lines = ["import contextlib, io, json, resource, sys", "import core.pipeline, core.cli, core.io",
             # what every run loads anyway (the scenario modules, the device check), before measuring
             "from core.scenarios.registry import list_scenarios, runner_class",
             "[runner_class(s) for s in list_scenarios()]", "core.pipeline.pick_device(None)",
             "results = {}", "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"]
    for name, code in cases.items():
        lines += ["before = peak()", "err = io.StringIO()", "extra = None", "with contextlib.redirect_stderr(err):",
                  textwrap.indent(textwrap.dedent(code).strip(), "    "),
                  f"results[{name!r}] = {{'rc': rc, 'err': err.getvalue(), 'grew_mb': (peak() - before) / 1024, "
                  "'extra': extra}"]
    lines.append("print(json.dumps(results))")
    proc = subprocess.run([sys.executable, "-c", "\n".join(lines)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def field_png(tmp_path_factory) -> Path:
    """A small coloured field (120 x 140 px)."""
    rng = np.random.default_rng(0)
    grey = rng.integers(60, 220, (120, 140), dtype=np.uint8)
    path = tmp_path_factory.mktemp("field") / "field.png"
    Image.fromarray(np.stack([grey, (grey * 0.6).astype(np.uint8), grey], axis=2)).save(path)
    return path


# ------------------------------------------------------------------------------------------ memory bombs


@pytest.fixture(scope="module")
def many_pages(tmp_path_factory) -> Path:
    """40 pages of 2000 x 2000 px (160 MB decoded, 0.6 MB on disk)."""
    page = np.zeros((2000, 2000), np.uint8)
    page[::9, ::7] = 180
    path = tmp_path_factory.mktemp("pages") / "stack.tif"
    with tifffile.TiffWriter(path) as w:
        for _ in range(40):
            w.write(page, compression="zlib", metadata=None)
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory, many_pages, field_png) -> dict:
    """The memory cases, run and measured in one interpreter (see :func:`measured`)."""
    tmp = tmp_path_factory.mktemp("bombs")
    png = tmp / "small.png"
    Image.open(field_png).resize((300, 300)).save(png)
    huge, garbage = tmp / "huge.png", tmp / "garbage.png"
    with open(huge, "wb") as fh:  # sparse: no disk used
        fh.truncate(3 * 1024**3)
    with open(garbage, "wb") as fh:
        fh.truncate(600 * 1024**2)
    out = str(tmp / "o")
    analyze = ["analyze", "--scenario", "cd3-ihc", "--out", out]
    start = time.perf_counter()
    results = measured({
        "page 1": f"""
            im = core.io.load_image({str(many_pages)!r})
            rc, extra = 0, [im.shape, im.notes]
        """,
        "pixel limit": f"""
            core.io.MAX_PIXELS = 1_000_000
            rc = core.cli.main({analyze + [str(many_pages)]!r})
            core.io.MAX_PIXELS = 100_000_000
        """,
        "page 41": f"rc = core.cli.main({analyze + [str(many_pages), '--page', '41']!r})",
        "mpp 20": f"rc = core.cli.main({analyze + [str(png), '--mpp', '20']!r})",
        "3 GiB": f"rc = core.cli.main({analyze + [str(huge)]!r})",
        "600 MiB garbage": f"rc = core.cli.main({analyze + [str(garbage)]!r})",
    })
    results["seconds"] = time.perf_counter() - start
    results["out_left"] = Path(out).exists()
    return results


def test_a_many_page_tiff_decodes_only_the_page_read(bombs):
    shape, notes = bombs["page 1"]["extra"]
    assert shape == [2000, 2000] and any("holds 40 images" in n and "page 1" in n for n in notes)
    assert bombs["page 1"]["grew_mb"] < 60, bombs["page 1"]  # one page is 4 MB; all 40 would be 160 MB


def test_a_many_page_tiff_is_checked_against_the_pixel_limit_and_its_pages(bombs):
    refused(bombs["pixel limit"]["rc"], bombs["pixel limit"]["err"], "2000 x 2000 px (4 megapixels) is more than the 1")
    refused(bombs["page 41"]["rc"], bombs["page 41"]["err"], "page 41 was asked for, but the file holds 40 pages")
    assert bombs["pixel limit"]["grew_mb"] < 60 and bombs["page 41"]["grew_mb"] < 60, bombs
    assert not bombs["out_left"]


def test_a_wrong_mpp_does_not_resample_into_gigabytes(bombs):
    """300 x 300 px at 20 µm/px for a 0.2 µm/px model would be 30 000² px: 21.6 GB of float64."""
    refused(bombs["mpp 20"]["rc"], bombs["mpp 20"]["err"], "becomes 30000 x 30000 px")
    assert bombs["mpp 20"]["grew_mb"] < 300, bombs["mpp 20"]


def test_big_files_are_refused_without_being_read(bombs):
    refused(bombs["3 GiB"]["rc"], bombs["3 GiB"]["err"], "3.0 GiB, more than the 2.0 GiB")
    refused(bombs["600 MiB garbage"]["rc"], bombs["600 MiB garbage"]["err"], "not an image TILscope can read")
    assert bombs["3 GiB"]["grew_mb"] < 60 and bombs["600 MiB garbage"]["grew_mb"] < 60, bombs  # neither read whole
    assert bombs["seconds"] < 300  # a guard against reading the files whole (minutes), not a speed target: benchmarks hold those


def test_resampling_works_in_float32_bands_and_matches_scikit_image():
    import tracemalloc

    from skimage.transform import rescale

    from core.scenarios.base import resample_to_mpp

    rng = np.random.default_rng(1)
    for shape, mpp, target in (((90, 130, 3), 0.25, 0.55), ((64, 80, 3), 0.5, 0.2), ((41, 53, 2), 0.05, 0.55)):
        px = rng.integers(0, 256, shape).astype(np.uint8)
        ref = rescale(px, mpp / target, order=1, channel_axis=2, anti_aliasing=mpp < target, preserve_range=True)
        got = resample_to_mpp(px, mpp, target)
        assert got.shape == ref.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - np.clip(ref + 0.5, 0, 255).astype(int)).max() <= 1
    big = rng.integers(0, 256, (1000, 1000, 3)).astype(np.uint8)
    tracemalloc.start()
    out = resample_to_mpp(big, 0.5, 0.2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # 2500² px: scikit-image's float64 output alone would be 150 MB; the result is 19 MB and
    # the float32 bands a few times 16 MB
    assert out.shape == (2500, 2500, 3) and peak < 19e6 + 70e6, peak


# ------------------------------------------------------------------------------------------ output folders


@pytest.mark.parametrize("case", ["existing file", "under a file", "overlay.png is a folder"])
def test_an_output_folder_that_cannot_take_the_files_is_refused_before_the_analysis(tmp_path, capsys, field_png, case):
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    if case == "existing file":
        out, match = blocker, "is a file, not a folder"
    elif case == "under a file":
        out, match = blocker / "results", "is a file, so no folder can be made under it"
    else:
        out, match = tmp_path / "results", "overlay.png: is a folder"
        (out / "overlay.png").mkdir(parents=True)
    start = time.perf_counter()
    rc, err = run_main(capsys, "analyze", field_png, "--scenario", "cd3-ihc", "--mpp", "0.2", "--out", out,
                       "--no-store")
    refused(rc, err, match)
    assert time.perf_counter() - start < 10  # refused before any model runs
    assert blocker.read_text() == "keep me"
    if case == "overlay.png is a folder":
        assert sorted(p.name for p in out.iterdir()) == ["overlay.png"]  # no cells.csv, summary.json left behind


def test_a_5000_character_case_label_is_refused_before_the_analysis(tmp_path, capsys, field_png):
    rc, err = run_main(capsys, "analyze", field_png, "--scenario", "cd3-ihc", "--out", tmp_path / "o", "--report",
                       "--case", "B" * 5000)
    refused(rc, err, "5000 characters; use at most 200")
    assert not (tmp_path / "o").exists()


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    from core.errors import TILscopeError
    from core.io import write_output_folder

    def write(folder):
        (folder / "cells.csv").write_text("x")
        raise OSError(28, "No space left on device")

    with pytest.raises(TILscopeError, match="could not be written"):
        write_output_folder(tmp_path / "a" / "b" / "out", write)
    assert list(tmp_path.iterdir()) == []  # neither the folder, its temporary twin, nor the parents made for it
    existing = tmp_path / "kept"
    existing.mkdir()
    (existing / "cells.csv").write_text("old")
    with pytest.raises(TILscopeError):
        write_output_folder(existing, write)
    assert [p.name for p in existing.iterdir()] == ["cells.csv"] and (existing / "cells.csv").read_text() == "old"


# ------------------------------------------------------------------------------------------ stats


@pytest.fixture
def cells_csv(tmp_path) -> Path:
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 1000, (400, 2))
    roles = np.where(np.arange(400) % 3 == 0, "tumour", "immune")
    path = tmp_path / "cells.csv"
    lines = ["x_um,y_um,role,cell_class"] + [f"{x:.3f},{y:.3f},{r},{r}" for (x, y), r in zip(xy, roles)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _geojson(path: Path, rings_px, name="Tumor") -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings_px},
         "properties": {"objectType": "annotation", "classification": {"name": name}}}]}))
    return path


@pytest.mark.parametrize("args, match", [
    (["--radii-um", "a,b"], "'a' in 'a,b' is not a number"),
    (["--radii-um", "10,,20"], "separated by commas"),
    (["--radii-um", "-5"], "outside the allowed"),
    (["--n-simulations", "100000"], "100000 is outside the allowed 0 to 999"),
    (["--n-simulations", "many"], "not a whole number"),
    (["--margin-half-width-um", "nan"], "outside the allowed"),
    (["--seed", "-1"], "outside the allowed"),
    (["--mpp", "0"], "outside 0.05-20"),
], ids=["radii-letters", "radii-empty", "radii-negative", "simulations-high", "simulations-word", "margin-nan",
        "seed-negative", "mpp-zero"])
def test_stats_options_out_of_range_are_refused(tmp_path, capsys, cells_csv, args, match):
    rc, err = run_main(capsys, "stats", cells_csv, "--out", tmp_path / "o", *args)
    refused(rc, err, match)
    assert not (tmp_path / "o").exists()


def test_stats_refuses_coordinates_beyond_any_slide(tmp_path, capsys):
    table = tmp_path / "far.csv"
    table.write_text("x_um,y_um,role\n0,0,immune\n1e9,1e9,tumour\n5,7,immune\n1e9,3,tumour\n")
    rc, err = run_main(capsys, "stats", table, "--out", tmp_path / "o")
    refused(rc, err, "beyond the ±100000 µm")
    assert not (tmp_path / "o").exists()


def test_stats_refuses_a_folder_and_a_deeply_nested_geojson(tmp_path, capsys, cells_csv):
    rc, err = run_main(capsys, "stats", tmp_path, "--out", tmp_path / "o")
    refused(rc, err, "is a folder, not a file")
    deep = tmp_path / "deep.geojson"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    rc, err = run_main(capsys, "stats", cells_csv, "--regions", deep, "--mpp", "0.5", "--out", tmp_path / "o")
    refused(rc, err, "nests arrays or objects 100000 deep")
    rc, err = run_main(capsys, "stats", cells_csv, "--regions", deep, "--out", tmp_path / "o")
    refused(rc, err, "--regions needs --mpp")
    assert not (tmp_path / "o").exists()


def test_a_self_crossing_tumour_outline_is_repaired_with_a_warning(tmp_path, capsys, cells_csv):
    bowtie = _geojson(tmp_path / "bowtie.geojson", [[[0, 0], [2000, 2000], [2000, 0], [0, 2000], [0, 0]]])
    rc = main(["stats", str(cells_csv), "--regions", str(bowtie), "--mpp", "0.5", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 0 and "warning:" in err and "repaired into 2 polygon(s)" in err
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    areas = [r["area_mm2"] for r in stats["regions"]["per_region"] if r["kind"] == "tumour"]
    assert len(areas) == 2 and sum(areas) == pytest.approx(0.5, rel=1e-9), areas  # two triangles of 0.25 mm²
    assert stats["regions"]["by_kind"]["tumour"]["area_mm2"] == pytest.approx(0.5, rel=1e-9)
    assert any("repaired" in w for w in stats["warnings"])


def test_a_300000_vertex_region_takes_seconds(tmp_path, capsys, cells_csv):
    t = np.linspace(0, 2 * np.pi, 300_000, endpoint=False)
    r = 800 + 40 * np.sin(25 * t)
    ring = np.c_[1000 + r * np.cos(t), 1000 + r * np.sin(t)]
    ring = np.vstack([ring, ring[:1]]).round(3).tolist()
    big = _geojson(tmp_path / "big.geojson", [ring])
    start = time.perf_counter()
    rc = main(["stats", str(cells_csv), "--regions", str(big), "--mpp", "0.5", "--n-simulations", "9",
               "--out", str(tmp_path / "o")])
    elapsed = time.perf_counter() - start
    assert rc == 0, capsys.readouterr().err
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    area = [x["area_mm2"] for x in stats["regions"]["per_region"] if x["kind"] == "tumour"][0]
    assert area == pytest.approx(np.pi * 400**2 / 1e6, rel=0.01)
    assert elapsed < 180, elapsed  # a guard against the old quadratic repair (more than 600 s), not a speed target


def test_a_region_with_too_many_vertices_is_refused(tmp_path, capsys, cells_csv, monkeypatch):
    import core.spatial.regions as regions

    monkeypatch.setattr(regions, "MAX_REGION_VERTICES", 1000)
    t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    ring = np.c_[500 + 100 * np.cos(t), 500 + 100 * np.sin(t)].tolist()
    rc, err = run_main(capsys, "stats", cells_csv, "--regions", _geojson(tmp_path / "r.geojson", [ring + ring[:1]]),
                       "--mpp", "1", "--out", tmp_path / "o")
    refused(rc, err, "2001 vertices, more than the 1000 accepted")


# ------------------------------------------------------------------------------------------ images


def _float_tiff(path: Path, data: np.ndarray) -> Path:
    tifffile.imwrite(path, data.astype(np.float32), photometric="rgb")
    return path


@pytest.mark.parametrize("case, match", [
    ("folder", "is a folder, not a file"),
    ("missing", "no such file"),
    ("nan", "NaN or infinite"),
    ("too bright", "floating-point values up to 1e+06"),
    ("complex", "complex numbers"),
    ("no such page", "page 3 was asked for, but the file holds 2 pages"),
])
def test_broken_images_are_refused_in_one_line(tmp_path, capsys, case, match):
    rgb = np.random.default_rng(3).uniform(0, 1, (80, 90, 3))
    path = {"folder": tmp_path, "missing": tmp_path / "none.tif"}.get(case, tmp_path / "x.tif")
    extra = []
    if case == "nan":
        rgb[5, 5, 1] = np.nan
        _float_tiff(path, rgb)
    elif case == "too bright":
        _float_tiff(path, rgb * 1e6)
    elif case == "complex":
        tifffile.imwrite(path, (rgb[..., 0] + 1j).astype(np.complex64))
    elif case == "no such page":
        with tifffile.TiffWriter(path) as w:
            for _ in range(2):
                w.write((rgb * 255).astype(np.uint8), photometric="rgb", metadata=None)
        extra = ["--page", "3"]
    rc, err = run_main(capsys, "analyze", path, "--scenario", "cd3-ihc", "--out", tmp_path / "o", *extra)
    refused(rc, err, match)
    assert not (tmp_path / "o").exists()


def test_an_odd_but_valid_file_is_analysed_with_notes(tmp_path, capsys):
    """Page 2 of 2, float 0-255, a TIFF Orientation tag, malformed Aperio MPP (with --mpp given), a 200-character label."""
    rng = np.random.default_rng(4)
    grey = rng.uniform(60, 220, (96, 112))
    page2 = np.stack([grey, grey * 0.6, grey], axis=2)  # 0-255 floats: "no colour" when clipped to [0, 1]
    path = tmp_path / "odd.tif"
    with tifffile.TiffWriter(path) as w:
        w.write(np.zeros((20, 20, 3), np.uint8), photometric="rgb", metadata=None)
        w.write(page2.astype(np.float32), photometric="rgb", metadata=None, description="Aperio | MPP = 0.25.1",
                extratags=[(274, "H", 1, 6, False)])
    out = tmp_path / "out"
    rc = main(["analyze", str(path), "--page", "2", "--mpp", "0.2", "--scenario", "cd3-ihc", "--out", str(out),
               "--device", "cpu", "--no-store", "--report", "--outside-validated-use", "--case", "C" * 200])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    summary = json.loads((out / "summary.json").read_text())
    notes = " | ".join(summary["warnings"])
    assert "holds 2 images (pages): page 2 was read" in notes
    assert "Orientation tag says 6" in notes and "read as stored" in notes and "divided by 255" in notes
    assert "MPP" not in notes  # the malformed optional tag is ignored when --mpp is given
    assert summary["mpp"] == pytest.approx(0.2)
    assert np.asarray(Image.open(out / "overlay.png")).shape[:2] == (96, 112)  # as stored, as QuPath shows it
    assert (out / "report.pdf").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


# ------------------------------------------------------------------------------------------ integrity


def test_an_edited_model_card_is_refused(tmp_path, capsys, field_png, monkeypatch):
    import shutil

    import core.scenarios.spec as spec
    from core.scenarios.registry import get_scenario

    scenario = get_scenario("cd3-ihc")
    shutil.copy(spec.WEIGHTS_DIR / scenario.model_card, tmp_path / scenario.model_card)
    card = json.loads((tmp_path / scenario.model_card).read_text())
    card["intended_use"] = "Diagnosis of every cancer."
    (tmp_path / scenario.model_card).write_text(json.dumps(card, indent=2))
    monkeypatch.setattr(spec, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsError, match="edited or is not the registered version"):
        scenario.card()
    rc, err = run_main(capsys, "analyze", field_png, "--scenario", "cd3-ihc", "--out", tmp_path / "o")
    refused(rc, err, "model card cd3-ihc-cnn-v1.json has SHA-256")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_weights_with_other_tensors_raise_the_weights_error(change):
    import torch

    from core.scenarios.registry import get_scenario, runner_class
    from core.scenarios.weights import load_verified_state_dict

    scenario = get_scenario("cd3-ihc")
    state, metadata = load_verified_state_dict(scenario.weights_path, scenario.sha256)
    key = sorted(state)[0]
    if change == "extra":
        state["head.extra.weight"] = torch.zeros(3)
    elif change == "missing":
        del state[key]
    else:
        state[key] = torch.zeros(tuple(state[key].shape) + (2,))
    word = {"extra": "unexpected", "missing": "missing", "shape": "of the wrong shape"}[change]
    with pytest.raises(WeightsError, match=f"does not fit its network: 1 tensor\\(s\\) {word}"):
        runner_class(scenario)(scenario, torch.device("cpu"), state, metadata)
