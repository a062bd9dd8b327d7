"""Batch runs on a Dask cluster: a killed worker, idempotent outputs, cohort.csv, the case store, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import batch
from core.cli import main
from core.outputs.store import CaseStore


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> Path:
    """Three 210 x 280 px crops of the bundled CD3 IHC mosaic (real patches), a 280 x 420 px crop of it as a
    two-level pyramidal OME-TIFF (a whole slide to core.slides), and one file that is not an image."""
    import tifffile

    from core.samples import get_sample

    folder = tmp_path_factory.mktemp("inputs")
    rgb = get_sample("cd3-mosaic").load().rgb
    for k, (y, x) in enumerate([(0, 0), (210, 280), (420, 560)]):
        Image.fromarray(rgb[y : y + 210, x : x + 280]).save(folder / f"field {k}.png")
    crop = np.ascontiguousarray(rgb[:280, :420])
    with tifffile.TiffWriter(folder / "slide 3.ome.tif", ome=True) as tif:
        tif.write(crop, tile=(128, 128), photometric="rgb", subifds=1, metadata={
            "PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.2, "PhysicalSizeYUnit": "µm"})
        tif.write(crop[::2, ::2].copy(), tile=(128, 128), photometric="rgb", subfiletype=1)
    (folder / "broken.png").write_text("not an image")
    return folder


def _cohort(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_killed_worker_leaves_every_input_done_exactly_once_and_a_rerun_skips_all(fields, tmp_path, monkeypatch):
    out = tmp_path / "out"
    inputs = batch.collect_inputs([fields / "field 0.png", fields / "field 1.png", fields / "field 2.png",
                                   fields / "slide 3.ome.tif", fields / "broken.png"], mpp=0.2, case_prefix="B-")
    assert [i.input_id for i in inputs] == ["field_0", "field_1", "field_2", "slide_3", "broken"]
    # The first attempt of field_1 kills its own worker process after writing part of its files.
    monkeypatch.setenv(batch.FAULT_ENV, "crash-once:field_1")
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.sqlite3'}")
    client = batch.open_client(n_workers=2, dashboard_address=":0")
    try:
        assert len(client.scheduler_info()["workers"]) == 2
        lines: list[str] = []
        first = batch.run_batch(inputs, "cd3-ihc", out, client=client, store=store, device="cpu", echo=lines.append)
        assert (out / ".fault-field_1").exists(), "the fault was not injected: the test would prove nothing"
        assert {o.input.input_id: o.status for o in first.outcomes} == {
            "field_0": "done", "field_1": "done", "field_2": "done", "slide_3": "done", "broken": "failed"}
        assert not first.all_succeeded and "not an image" in first.outcomes[4].reason
        assert len(lines) == 6 and lines[0].startswith("Dask: 2 worker(s)")

        # Exactly one complete folder per good input, nothing half-written left behind.
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".fault")) == [
            "cohort.csv", "field_0", "field_1", "field_2", "slide_3"]
        tokens = {}
        for name in ("field_0", "field_1", "field_2"):
            marker = json.loads((out / name / batch.COMPLETE_MARKER).read_text())
            assert marker["input"] == str(fields / f"{name.replace('_', ' ')}.png") and marker["scenario"] == "cd3-ihc"
            tokens[name] = marker["token"]
            cells = pd.read_csv(out / name / "cells.csv")
            pd.testing.assert_frame_equal(pd.read_parquet(out / name / "cells.parquet")[cells.columns], cells,
                                          check_exact=False, atol=5e-4)
            summary = json.loads((out / name / "summary.json").read_text())
            assert summary["n_cells"] == len(cells) > 0 and summary["case_label"] == f"B-{name.replace('_', ' ')}"

        rows = _cohort(out / "cohort.csv")
        assert [r["id"] for r in rows] == ["field_0", "field_1", "field_2", "slide_3", "broken"]
        assert [r["status"] for r in rows] == ["done", "done", "done", "done", "failed"]
        assert "not an image" in rows[4]["reason"] and rows[4]["n_cells"] == ""
        for r in rows[:4]:
            n = len(pd.read_parquet(out / r["id"] / "cells.parquet"))
            assert int(r["n_cells"]) == int(r["count_immune"]) == n > 0  # cd3-positive cells are the immune role
            assert float(r["density_immune_per_mm2"]) == pytest.approx(n / float(r["tissue_area_mm2"]), rel=1e-3)
            assert r["kind"] == ("slide" if r["id"] == "slide_3" else "field")
            assert r["scenario"] == "cd3-ihc" and float(r["mpp"]) == 0.2

        # The case store holds each analysis once, complete, under its case label.
        saved = store.list_analyses()
        assert sorted(a["case_label"] for a in saved) == ["B-field 0", "B-field 1", "B-field 2", "B-slide 3"]
        assert all(a["complete"] for a in saved)
        assert sorted(int(r["analysis_id"]) for r in rows[:4]) == sorted(a["id"] for a in saved)
        slide = store.get_analysis(int(rows[3]["analysis_id"]))
        assert {"cells.parquet", "summary.json", "overlay.png"} <= {f["name"] for f in slide["files"]}
        assert "cells.csv" not in {f["name"] for f in slide["files"]}  # the Review page reviews fields only
        one = store.get_analysis(int(rows[1]["analysis_id"]))
        assert {"cells.csv", "cells.parquet", "summary.json", "overlay.png", "report.pdf"} <= {f["name"] for f in one["files"]}
        assert [f["name"] for f in one["originals"]] == ["source-image.png"]  # so it can be reviewed
        assert store.get_file(one["id"], "cells.csv") == (out / "field_1" / "cells.csv").read_bytes()

        # A rerun computes and saves nothing again; the bad input fails again with its reason.
        second = batch.run_batch(inputs, "cd3-ihc", out, client=client, store=store, device="cpu")
        assert [o.status for o in second.outcomes] == ["skipped", "skipped", "skipped", "skipped", "failed"]
        assert len(store.list_analyses()) == 4
        for name, token in tokens.items():
            assert json.loads((out / name / batch.COMPLETE_MARKER).read_text())["token"] == token
        again = _cohort(out / "cohort.csv")
        assert [r["status"] for r in again] == ["skipped", "skipped", "skipped", "skipped", "failed"]
        assert [r["analysis_id"] for r in again][:4] == [r["analysis_id"] for r in rows[:4]]
        assert [r["n_cells"] for r in again] == [r["n_cells"] for r in rows]
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
        store.close()


def test_a_folder_of_another_input_is_not_taken_for_this_one(fields, tmp_path):
    out = tmp_path / "out"
    (out / "field_0").mkdir(parents=True)
    (out / "field_0" / batch.COMPLETE_MARKER).write_text(json.dumps(
        {"schema": batch.MARKER_SCHEMA, "input": "/elsewhere/field_0.png", "scenario": "cd3-ihc", "mpp_given": None}))
    [inp] = batch.collect_inputs([fields / "field 0.png"])
    task = {"path": str(inp.path), "scenario": "cd3-ihc", "mpp": None}
    done, why = batch.completed(out / inp.input_id, task)
    assert not done and "another input (/elsewhere/field_0.png)" in why
    result = batch.run_batch([inp], "cd3-ihc", out, client=object(), store=False)  # no task is sent
    assert result.outcomes[0].status == "failed" and "another input" in result.outcomes[0].reason


def test_input_ids_are_stable_safe_and_distinct(tmp_path):
    paths = [Path("/a/slide 1.svs"), Path("/b/slide 1.svs"), Path("/a/x.ome.tif"), Path("/a/cohort.csv.png")]
    ids = batch.input_ids(paths)
    assert ids == batch.input_ids(paths)  # stable
    assert ids[0].startswith("slide_1-") and ids[1].startswith("slide_1-") and ids[0] != ids[1]
    assert ids[2] == "x" and ids[3] == "_cohort.csv"


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_invocations_exit_2_with_one_line_before_any_cluster_starts(fields, tmp_path, capsys):
    out = str(tmp_path / "out")
    no_path = tmp_path / "no-path.csv"
    no_path.write_text("file,mpp\nfield 0.png,0.2\n")
    code, err = _run(["batch", "--manifest", str(no_path), "--scenario", "cd3-ihc", "--out", out], capsys)
    assert code == 2 and err.count("\n") == 0 and "no 'path' column" in err

    missing = tmp_path / "missing.csv"
    missing.write_text(f"path,mpp,case\n{fields / 'field 0.png'},0.2,C-1\nnot-there.png,,C-2\n")
    code, err = _run(["batch", "--manifest", str(missing), "--scenario", "cd3-ihc", "--out", out], capsys)
    assert code == 2 and err.count("\n") == 0 and "not found: not-there.png" in err

    bad_mpp = tmp_path / "bad-mpp.csv"
    bad_mpp.write_text(f"path,mpp\n{fields / 'field 0.png'},fast\n")
    code, err = _run(["batch", "--manifest", str(bad_mpp), "--scenario", "cd3-ihc", "--out", out], capsys)
    assert code == 2 and "line 2" in err and "not a number" in err

    code, err = _run(["batch", str(fields / "field 0.png"), "--scenario", "cd3-nope", "--out", out], capsys)
    assert code == 2 and err.count("\n") == 0 and "cd3-ihc" in err  # the known keys are listed

    code, err = _run(["batch", str(fields / "field 0.png"), str(fields / "field 0.png"), "--scenario", "cd3-ihc",
                      "--out", out], capsys)
    assert code == 2 and "listed twice" in err
    assert not Path(out).exists()  # nothing was written


def test_manifest_mpp_and_case_columns_are_used(fields, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,mpp,case\n{fields / 'field 0.png'},0.25,Patient 7\n\"{fields / 'field 1.png'}\",,\n")
    a, b = batch.collect_inputs(manifest=manifest, mpp=0.2, case_prefix="S-")
    assert (a.case, a.mpp) == ("Patient 7", 0.25)
    assert (b.case, b.mpp) == ("S-field 1", 0.2)
