"""Command line: scenarios, analyze, classify-patches, evaluate and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.cells import CELL_COLUMNS
from core.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "core", *map(str, args)], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=300,
    )


def test_scenarios_lists_cd3(capsys):
    assert main(["scenarios", "--json"]) == 0
    keys = [r["key"] for r in json.loads(capsys.readouterr().out)]
    assert "cd3-ihc" in keys


def test_analyze_writes_cells_summary_overlay(tmp_path, capsys):
    from core.samples import get_sample

    sample = get_sample("cd3-mosaic")
    out = tmp_path / "out"
    assert main(["analyze", str(sample.path), "--scenario", "cd3-ihc", "--out", str(out), "--device", "cpu"]) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert list(cells.columns[: len(CELL_COLUMNS)]) == list(CELL_COLUMNS)
    assert set(cells.role) == {"immune"} and set(cells.cell_class) == {"cd3-positive"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == "cd3-ihc" and summary["mpp"] == pytest.approx(0.2)
    assert summary["mpp_source"] == "tiff-resolution"
    assert summary["n_cells"] == len(cells) == summary["counts"]["cd3-positive"]
    area_mm2 = 700 * 980 * 0.2**2 / 1e6
    assert summary["area_mm2"] == pytest.approx(area_mm2)
    assert summary["density_per_mm2"]["cd3-positive"] == pytest.approx(len(cells) / area_mm2)
    assert len(summary["weights_sha256"]) == 64 and summary["device"] == "cpu"
    np.testing.assert_allclose(cells.x_um, cells.x_px * 0.2, atol=2e-3)
    overlay = np.asarray(Image.open(out / "overlay.png"))
    assert overlay.shape == (700, 980, 3)
    assert "cells" in capsys.readouterr().out


def test_analyze_without_mpp_reports_pixels_only(tmp_path, capsys):
    from core.samples import get_sample

    png = tmp_path / "field.png"
    Image.fromarray(get_sample("cd3-mosaic").load().rgb[:210, :280]).save(png)
    assert main(["analyze", str(png), "--scenario", "cd3-ihc", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["mpp"] is None and summary["density_per_mm2"] is None and summary["area_mm2"] is None
    assert any("mpp unknown" in w for w in summary["warnings"])
    cells = pd.read_csv(tmp_path / "o" / "cells.csv")
    assert cells.x_um.isna().all()


def test_classify_patches_prints_csv(cd3_table, capsys):
    val = cd3_table[cd3_table.split == "validation"]
    paths = list(val[val.label == 1].path.sample(20, random_state=0)) + list(val[val.label == 0].path.sample(20, random_state=0))
    assert main(["classify-patches", "--scenario", "cd3-ihc", "--device", "cpu", *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,probability,label" and len(lines) == 41
    rows = [line.rsplit(",", 2) for line in lines[1:]]
    assert [r[0] for r in rows] == paths
    assert all(label in ("positive", "negative") and 0 <= float(p) <= 1 for _, p, label in rows)
    # validation recall 0.99 and specificity 0.89 in the model card
    assert sum(label == "positive" for _, _, label in rows[:20]) >= 18
    assert sum(label == "negative" for _, _, label in rows[20:]) >= 15


def test_classify_patches_refuses_wrong_size(tmp_path, capsys):
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "p.png")
    assert main(["classify-patches", "--scenario", "cd3-ihc", str(tmp_path)]) == 2
    assert "70 x 70" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "empty"), (b"hello, not an image", "not an image TILscope can read"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "truncated|readable")],
    ids=["empty", "not-image", "truncated"],
)
def test_bad_images_exit_2_with_one_line(tmp_path, content, expected):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    proc = run_cli("analyze", bad, "--scenario", "cd3-ihc", "--out", tmp_path / "o")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in proc.stderr
    import re

    assert re.search(expected, err[0])


def test_unknown_scenario_and_too_many_pixels(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(png)
    proc = run_cli("analyze", png, "--scenario", "nope", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "known scenarios: cd3-ihc" in proc.stderr
    proc = run_cli("analyze", png, "--scenario", "cd3-ihc", "--out", tmp_path / "o", env={"TILSCOPE_MAX_PIXELS": "5000"})
    assert proc.returncode == 2 and "megapixels" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_file_and_tiny_image(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "none.png"), "--scenario", "cd3-ihc", "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((20, 30, 3), (150, 90, 60), np.uint8)).save(tiny)
    assert main(["analyze", str(tiny), "--scenario", "cd3-ihc", "--mpp", "0.2", "--out", str(tmp_path)]) == 2
    assert "at least 70 px" in capsys.readouterr().err


@pytest.mark.parametrize("scenario", ["he-til", "cd3-ihc"])
def test_an_image_without_colour_is_refused_before_any_output(tmp_path, capsys, scenario):
    field = np.random.default_rng(0).integers(40, 230, (120, 140), dtype=np.uint8)
    grey = tmp_path / "grey.png"
    Image.fromarray(field).save(grey)  # a one-channel file, repeated into RGB on loading
    assert main(["analyze", str(grey), "--scenario", scenario, "--mpp", "0.5", "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "grey.png: the image has no colour" in err and "upload the colour (RGB) image" in err
    assert not (tmp_path / "o").exists()
    # The same pixels with colour are read; noise is no stain the model was validated for, so it runs
    # only when asked to, marked as outside the validated use.
    coloured = tmp_path / "colour.png"
    Image.fromarray(np.stack([field, (field * 0.6).astype(np.uint8), field], axis=2)).save(coloured)
    args = ["analyze", str(coloured), "--scenario", scenario, "--mpp", "0.5", "--out", str(tmp_path / "c"), "--device", "cpu"]
    if scenario == "cd3-ihc":
        assert main(args) == 2 and "outside what the" in capsys.readouterr().err
        assert not (tmp_path / "c").exists()
    assert main(args + ["--outside-validated-use"]) == 0
    assert (tmp_path / "c" / "cells.csv").is_file()
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert isinstance(summary["outside_validated_use"], list)
    if scenario == "cd3-ihc":
        assert any("0.15 to 0.3 µm/px" in why for why in summary["outside_validated_use"])


def test_a_single_channel_scenario_accepts_grey():
    from dataclasses import replace

    from core.errors import InputError
    from core.io import ImageData
    from core.scenarios.base import check_colour
    from core.scenarios.registry import SCENARIOS

    cd3 = SCENARIOS["cd3-ihc"]
    for grey in (ImageData(np.full((32, 32, 3), 128, np.uint8), 0.5, "g.png", "", "user"),
                 ImageData(np.full((32, 32), 128, np.uint8), 0.5, "g.png", "", "user")):
        with pytest.raises(InputError, match="no colour"):
            check_colour(grey, cd3)
        check_colour(grey, replace(cd3, input=replace(cd3.input, reads_colour=False)))


def test_bfloat16_is_refused_for_a_scenario_not_validated_at_it(tmp_path, capsys):
    png = tmp_path / "a.png"
    Image.fromarray(np.full((100, 100, 3), 200, np.uint8)).save(png)
    assert main(["analyze", str(png), "--scenario", "cd3-ihc", "--precision", "bfloat16", "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "validated at float32 only" in err and "--precision float32" in err
    assert not (tmp_path / "o").exists()


def test_bad_options_exit_2_with_one_line(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(png)
    for args, expected in ((["--mpp", "abc"], "not a number of microns per pixel"),
                           (["--mpp", "350"], "outside 0.05-20"),
                           (["--page", "0"], "outside the allowed 1 to")):
        proc = run_cli("analyze", png, "--scenario", "cd3-ihc", "--out", tmp_path / "o", *args)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error:") and expected in err[0], proc.stderr
    assert not (tmp_path / "o").exists()


def test_output_cut_short_by_its_reader_is_not_reported_as_an_error():
    """``python -m core scenarios | head -1``: the closed pipe is the reader's choice, not a failure to report."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written: every write meets a broken pipe
    try:
        done = subprocess.run([sys.executable, "-m", "core", "scenarios"], stdout=write_end, stderr=subprocess.PIPE,
                              cwd=str(Path(__file__).resolve().parent.parent), timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr == b"", done.stderr
    assert done.returncode == 141
