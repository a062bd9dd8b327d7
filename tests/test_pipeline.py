"""One pipeline for every door: the CLI writes byte for byte what the app saves and downloads."""

import json
import time
from datetime import datetime, timezone

import pytest

import core.results
from core.cli import main
from core.io import load_image
from core.outputs.store import CaseStore
from core.pipeline import load_model, run_analysis, save_analysis
from core.samples import get_sample


class _FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz or timezone.utc)


@pytest.fixture
def frozen_clock(monkeypatch):
    """Timestamps and run times are the only bytes allowed to differ between two runs: freeze them."""
    monkeypatch.setattr(core.results, "datetime", _FrozenDatetime)
    monkeypatch.setattr(time, "perf_counter", lambda: 0.0)


@pytest.mark.parametrize("key, sample", [("cd3-ihc", "cd3-mosaic"), ("he-til", "he-crc")])
def test_cli_files_are_the_apps_downloads_byte_for_byte(tmp_path, monkeypatch, frozen_clock, key, sample):
    path = get_sample(sample).path
    # The CLI, with its own case store.
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path / "cli-store"))
    out = tmp_path / "cli"
    assert main(["analyze", str(path), "--scenario", key, "--out", str(out), "--report", "--case", "C-1",
                 "--device", "cpu"]) == 0
    cli_files = {p.name: p.read_bytes() for p in out.iterdir()}
    # The Analyze page's path: read the upload, run, save, download what the store keeps.
    image = load_image(path.read_bytes(), name=path.name)
    result = run_analysis(image, key, model=load_model(key, "cpu"))
    store = CaseStore(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    analysis_id = save_analysis(result, "C-1", store)
    app_files = {f["name"]: store.get_file(analysis_id, f["name"]) for f in store.get_analysis(analysis_id)["files"]}
    store.close()
    assert set(cli_files) == set(app_files) >= {"cells.csv", "summary.json", "overlay.png", "report.pdf",
                                                "cells.geojson", "probability.png"}
    for name in sorted(app_files):
        assert cli_files[name] == app_files[name], f"{name} differs between the CLI and the app"
    summary = json.loads(cli_files["summary.json"])
    assert summary["created_at"].startswith("2026-01-02T03:04:05") and summary["case_label"] == "C-1"


def test_cli_without_the_case_store_writes_the_same_maps_and_table(tmp_path, monkeypatch, frozen_clock):
    path = get_sample("cd3-mosaic").path
    assert main(["analyze", str(path), "--scenario", "cd3-ihc", "--out", str(tmp_path / "a"), "--no-store",
                 "--device", "cpu"]) == 0
    assert main(["analyze", str(path), "--scenario", "cd3-ihc", "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    b = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert set(a) == set(b) == {"cells.csv", "cells.parquet", "summary.json", "overlay.png", "probability.png"}
    for name in ("cells.csv", "cells.parquet", "overlay.png", "probability.png"):
        assert a[name] == b[name]
