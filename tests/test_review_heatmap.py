"""The Review page's density heat map: immune cells per mm² of the tissue in each square, glass empty."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.cells import make_cell_table
from core.fitness import TissueMask
from core.io import ImageData
from core.results import AnalysisResult, RunInfo
from core.scenarios.registry import get_scenario
from core.spatial.regions import Region

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "review.py")


def half_tissue_result() -> AnalysisResult:
    """A 400 x 200 px image (200 x 100 µm at 0.5 µm/px) whose tissue is x < 75 µm; 3 immune cells on it."""
    mpp = 0.5
    pixels = np.full((200, 400, 3), 235, np.uint8)
    mask = np.zeros((20, 40), bool)  # 10 image px = 5 µm per mask pixel
    mask[:, :15] = True
    cells = pd.concat([
        make_cell_table(np.array([[20.0, 40.0], [60.0, 100.0], [120.0, 160.0]]), "cd3-positive", "immune",
                        np.full(3, 0.9), mpp),
        make_cell_table(np.array([[100.0, 20.0]]), "cd3-negative", "other", np.ones(1), mpp),
    ], ignore_index=True)
    run = RunInfo("cd3-ihc", "CD3", "w.safetensors", "0" * 64, "1", False, "cpu", "float32", 0.1, "test", "test",
                  created_at="2026-01-01T00:00:00+00:00")
    return AnalysisResult(ImageData(pixels, mpp, "half.png", "cd" * 32, "user"), cells, run, get_scenario("cd3-ihc"),
                          tissue=TissueMask(mask, 10.0, float(mask.mean()), "test mask: x < 75 µm"))


def plotly_array(value) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed array {"dtype", "bdata" (base64), "shape"}."""
    if isinstance(value, dict):
        shape = tuple(int(n) for n in str(value.get("shape", "-1")).split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.array(value, dtype=float)


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TILSCOPE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path))
    return tmp_path


def heat_map_z(at: AppTest) -> np.ndarray:
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return plotly_array(next(t for c in charts for t in c["data"] if t["type"] == "heatmap")["z"])


def test_review_heat_map_is_per_mm2_of_tissue_with_glass_and_exclusions_cut_out(data_dir):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["analysis"] = half_tissue_result()
    at.session_state["user_name"] = "Dr Test"
    at.run()
    assert not at.exception, at.exception
    at.toggle(key="review_plots").set_value(True).run()
    assert not at.exception, at.exception
    z = heat_map_z(at)
    # 100 µm squares: the first holds 7 500 µm² of tissue and 3 immune cells (400, not 300, per mm²); the second is glass
    assert z.shape == (1, 2)
    assert z[0, 0] == pytest.approx(3 / 0.0075) and np.isnan(z[0, 1])
    captions = " ".join(c.value for c in at.caption)
    assert "immune cells per mm² of the tissue in each square" in captions
    # an exclusion over x < 45 µm takes 2 cells and 4 500 µm² of tissue out: 1 cell in 0.003 mm²
    at.session_state["review_session"].add_regions([Region("bubble", "exclude", [[0, 0], [45, 0], [45, 100], [0, 100]])],
                                                   user="Dr Test")
    at.run()
    assert not at.exception, at.exception
    z = heat_map_z(at)
    assert z[0, 0] == pytest.approx(1 / 0.003) and np.isnan(z[0, 1])
