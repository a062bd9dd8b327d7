"""Batch runs with --compartments (issue 18): each field is analysed with the compartment scenario too, its folder and
the case store get compartments.png and regions.geojson, cohort.csv its intratumoral and stromal densities; slides
and keys that are no compartment scenario are refused before anything runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import batch
from core.cli import main
from core.errors import InputError
from core.outputs.key_figures import key_figures
from core.outputs.store import CaseStore

COMP = "tissue-compartments"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A 320 x 320 px crop of the bundled real H&E sample (colorectal, 0.55 µm/px: stroma with lymphocytes) and a
    280 x 420 px two-level pyramidal OME-TIFF of it (a whole slide to core.slides)."""
    import tifffile

    from core.samples import get_sample

    folder = tmp_path_factory.mktemp("inputs")
    rgb = get_sample("he-crc").load().rgb
    Image.fromarray(rgb[:320, :320]).save(folder / "field 0.png")
    crop = np.ascontiguousarray(rgb[:280, :420])
    with tifffile.TiffWriter(folder / "slide 1.ome.tif", ome=True) as tif:
        tif.write(crop, tile=(128, 128), photometric="rgb", subifds=1, metadata={
            "PhysicalSizeX": 0.55, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.55, "PhysicalSizeYUnit": "µm"})
        tif.write(crop[::2, ::2].copy(), tile=(128, 128), photometric="rgb", subfiletype=1)
    return folder


def _cohort(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_batch_with_compartments_writes_them_and_fills_the_cohorts_compartment_densities(inputs, tmp_path):
    out = tmp_path / "out"
    [field] = batch.collect_inputs([inputs / "field 0.png"], mpp=0.55, case_prefix="B-")
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.sqlite3'}")
    client = batch.open_client(n_workers=1, dashboard_address=":0")
    try:
        first = batch.run_batch([field], "he-til", out, client=client, store=store, device="cpu",
                                outside_validated_use=True, compartments=COMP)
        [o] = first.outcomes
        assert (o.status, o.kind) == ("done", "field"), o.reason

        # The field's folder: what analyze --compartments writes, and a marker that names the compartment scenario.
        folder = out / "field_0"
        assert {"compartments.png", "regions.geojson", "cells.csv", "summary.json", "report.pdf"} <= {
            p.name for p in folder.iterdir()}
        labels = np.asarray(Image.open(folder / "compartments.png"))
        assert labels.shape == (320, 320) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}
        assert json.loads((folder / batch.COMPLETE_MARKER).read_text())["compartments"] == COMP
        summary = json.loads((folder / "summary.json").read_text())
        comp = summary["compartments"]
        assert comp["scenario"] == COMP and comp["regions_for_statistics"] == "predicted"
        assert summary["area_mm2"] == pytest.approx(comp["area_mm2"]["tumour"] + comp["area_mm2"]["stroma"])
        assert "predicted by the tissue-compartments model" in summary["spatial"]["compartments"]["source"]
        assert "predicted_compartments" in summary["spatial"]
        names = {f["properties"]["classification"]["name"] for f in json.loads(
            (folder / "regions.geojson").read_text())["features"]}
        assert "stroma" in names and names <= {"tumour", "stroma", "necrosis"}

        # cohort.csv: the densities on the predicted compartments, as the key figures of the saved record read them
        # (empty where a compartment is too small for its figure, never 0).
        [row] = _cohort(out / "cohort.csv")
        stats = summary["spatial"]["compartments"]
        assert stats["n_immune_stromal"] > 0 and stats["stromal_immune_density_per_mm2"] > 0  # lymphocytes in the stroma
        assert float(row["stromal_immune_density_per_mm2"]) == pytest.approx(stats["stromal_immune_density_per_mm2"],
                                                                             rel=1e-5)
        assert float(row["tissue_area_mm2"]) == pytest.approx(summary["area_mm2"], rel=1e-5)
        record = json.loads((folder / batch.STORE_FOLDER / "record.json").read_text())
        figures = {f.key: f.value for f in key_figures(record)}
        for column, key in (("intratumoral_immune_density_per_mm2", "compartments.intratumoral"),
                            ("stromal_til_wg_percent", "predicted_compartments.stromal_til")):
            assert key in figures, key
            if figures[key] is None:
                assert row[column] == "", column
            else:
                assert float(row[column]) == pytest.approx(figures[key], rel=1e-5), column

        # The case store holds the compartments with the analysis (what the Review page reopens).
        saved = store.get_analysis(int(row["analysis_id"]))
        assert {"compartments.png", "regions.geojson"} <= {f["name"] for f in saved["files"]}
        assert store.get_file(saved["id"], "compartments.png") == (folder / "compartments.png").read_bytes()
        assert saved["summary"]["compartments"]["scenario"] == COMP

        # A folder analysed with compartments is not taken for a run without them (no task is sent), and is
        # taken as complete by a rerun with them.
        plain = batch.run_batch([field], "he-til", out, client=object(), store=False)
        assert plain.outcomes[0].status == "failed"
        assert "was analysed with tissue-compartments, now --compartments is none" in plain.outcomes[0].reason
        again = batch.run_batch([field], "he-til", out, client=object(), store=store, compartments=COMP)
        assert again.outcomes[0].status == "skipped" and len(store.list_analyses()) == 1
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
        store.close()


def test_a_slide_among_the_inputs_is_refused_before_anything_runs(inputs, tmp_path):
    out = tmp_path / "out"
    both = batch.collect_inputs([inputs / "field 0.png", inputs / "slide 1.ome.tif"], mpp=0.55)
    with pytest.raises(InputError, match=r"not yet on whole slides, and 1 input\(s\) are whole slides: .*slide 1\.ome\.tif"):
        batch.run_batch(both, "he-til", out, client=object(), store=False, compartments=COMP)
    assert not out.exists()  # refused before the output folder was made or a task sent
    # Without --compartments the same inputs are accepted (the slide goes to the slide pipeline).
    batch.check_compartments("he-til", None, both)


def test_a_slide_task_with_compartments_fails_with_the_reason(inputs, tmp_path):
    """A task sent without run_batch's check (e.g. by another client) fails for the slide, with the reason."""
    [slide] = batch.collect_inputs([inputs / "slide 1.ome.tif"])
    task = batch._task(slide, "he-til", tmp_path, "cpu", True, None, COMP)
    res = batch.analyse_input(task)
    assert res["status"] == "failed" and "not yet on whole slides" in res["reason"]
    assert not (tmp_path / slide.input_id).exists() and not list(tmp_path.glob(".*partial-*"))


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.mark.parametrize("extra, message", [
    (["--compartments", "cd3-ihc"], "--compartments takes a tissue-compartment scenario"),
    (["--compartments", "tissue"], "unknown scenario 'tissue'; known scenarios:"),
    (["--compartments", COMP, "--scenario", COMP], "is itself a tissue-compartment scenario: leave --compartments out"),
    (["--compartments", COMP, "--scenario", "hoechst-lymphocytes"], "reads brightfield images"),
])
def test_cli_refuses_a_key_that_is_not_a_compartment_scenario_before_anything_runs(inputs, tmp_path, capsys, extra,
                                                                                     message):
    out = tmp_path / "out"
    argv = ["batch", str(inputs / "field 0.png"), "--out", str(out), "--no-store"]
    argv += extra if "--scenario" in extra else ["--scenario", "he-til", *extra]
    code, printed, err = _run(argv, capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 0
    assert printed == "" and not out.exists()


def test_cli_refuses_a_slide_with_compartments_before_the_cluster_starts(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code, printed, err = _run(["batch", str(inputs / "field 0.png"), str(inputs / "slide 1.ome.tif"), "--scenario",
                               "he-til", "--compartments", COMP, "--out", str(out), "--no-store"], capsys)
    assert code == 2 and err.count("\n") == 0 and "not yet on whole slides" in err and "slide 1.ome.tif" in err
    assert "batch without --compartments" in err and printed == "" and not out.exists()
