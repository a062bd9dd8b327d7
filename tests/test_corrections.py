"""Manual corrections: add, delete, relabel, undo, replay and persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.cells import make_cell_table
from core.errors import InputError
from core.review.corrections import CorrectionLog
from core.spatial import SpatialParams, compute_spatial_stats


def cells():
    xy = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [200.0, 200.0]])
    return make_cell_table(xy, ["tumour-cell", "cd3-positive", "cd3-positive", "tumour-cell"],
                           ["tumour", "immune", "immune", "tumour"], np.full(4, 0.8), 0.5)


def test_add_delete_relabel_and_apply():
    log = CorrectionLog()
    new = log.add_cell(100.0, 120.0, "cd3-positive", "immune", mpp=0.5, user="s1", time="2026-01-02T03:04:05+00:00")
    assert new == -1
    log.delete_cell(0, user="s1")
    log.relabel_cell(2, "cd3-negative", "other", user="s2")
    original = cells()
    out = log.apply(original)
    assert len(original) == 4 and "edited" not in original.columns  # input untouched
    assert out["cell_id"].tolist() == [1, 2, 3, -1]
    assert out["edited"].tolist() == ["", "relabelled", "", "added"]
    row = out.set_index("cell_id").loc[-1]
    assert (row.x_px, row.y_px, row.x_um, row.y_um, row.role, row.probability) == (100.0, 120.0, 50.0, 60.0, "immune", 1.0)
    assert out.set_index("cell_id").loc[2, "cell_class"] == "cd3-negative"
    s = log.summary()
    assert (s["n_added"], s["n_deleted"], s["n_relabelled"], s["n_corrections"]) == (1, 1, 1, 3)
    assert log.n_corrections == 3 and s["users"] == ["s1", "s2"]


def test_undo_is_recorded_and_reverts():
    log = CorrectionLog()
    log.relabel_cell(1, "cd3-negative", "other", user="s1")
    a = log.add_cell(5, 5, "cd3-positive", "immune", mpp=None, user="s1")
    log.delete_cell(a, user="s1")  # deleting an added cell removes it
    assert log.n_corrections == 1
    undone = log.undo(user="s1")
    assert undone.op == "delete" and undone.undone_by == "s1"
    out = log.apply(cells())
    assert out["edited"].tolist() == ["", "relabelled", "", "", "added"]
    assert np.isnan(out["x_um"].iloc[-1])  # no mpp: µm unknown
    log.undo()
    log.undo()
    assert log.undo() is None and not log.can_undo
    assert log.apply(cells())["edited"].tolist() == ["", "", "", ""]
    assert log.n_corrections == 0 and log.summary()["n_edits"] == 3 and log.summary()["n_undone"] == 3


def test_json_round_trip():
    log = CorrectionLog()
    log.add_cell(1.5, 2.5, "cd3-positive", "immune", mpp=0.25, user="sessión-ü")
    log.relabel_cell(3, "cd3-positive", "immune", user="x")
    log.undo(user="x")
    text = log.to_json()
    json.loads(text)
    back = CorrectionLog.from_json(text)
    assert back.to_dict() == log.to_dict()
    assert back.apply(cells()).equals(log.apply(cells()))


def test_bad_edits_raise_input_error():
    log = CorrectionLog()
    with pytest.raises(InputError, match="role"):
        log.add_cell(1, 1, "x", "lymphocyte", mpp=0.5)
    with pytest.raises(InputError, match="finite"):
        log.add_cell(np.nan, 1, "x", "immune", mpp=0.5)
    with pytest.raises(InputError, match="integer"):
        log.delete_cell("3")
    log.delete_cell(2)
    with pytest.raises(InputError, match="already deleted"):
        log.delete_cell(2)
    with pytest.raises(InputError, match="deleted"):
        log.relabel_cell(2, "a", "immune")
    log.delete_cell(99)
    with pytest.raises(InputError, match="not in this cell table"):
        log.apply(cells())
    with pytest.raises(InputError, match="JSON"):
        CorrectionLog.from_json("{oops")
    with pytest.raises(InputError, match="malformed"):
        CorrectionLog.from_json({"edits": [{"op": "explode", "cell_id": 1}]})


def test_statistics_recompute_after_corrections():
    params = SpatialParams(n_simulations=0, ripley_radii_um=(0.0, 1.0), min_cells_per_role=1)  # a small fixture
    c = cells()
    before = compute_spatial_stats(c, params=params)
    log = CorrectionLog()
    log.add_cell(24.0, 20.0, "cd3-positive", "immune", mpp=0.5)  # at (12, 10) µm: 7, 5 µm from tumour cell 0
    log.delete_cell(2)
    after = compute_spatial_stats(log.apply(c), params=params)
    assert before["counts"]["by_role"]["immune"] == 2 and after["counts"]["by_role"]["immune"] == 2
    d_before = before["distances"]["immune_to_nearest_tumour_um"]["max_um"]
    d_after = after["distances"]["immune_to_nearest_tumour_um"]["max_um"]
    assert d_before == pytest.approx(np.hypot(10, 10))
    assert d_after == pytest.approx(np.hypot(7, 5))


def test_comments_and_previous_classes_are_kept_through_json():
    log = CorrectionLog()
    log.relabel_cell(1, "cd3-negative", "other", user="Dr A", comment="  faint   DAB, not a T cell ",
                     from_class="cd3-positive", from_role="immune")
    log.delete_cell(3, user="Dr A", from_class="tumour-cell", from_role="tumour")
    e = log.edits[0]
    assert e.comment == "faint DAB, not a T cell" and (e.from_class, e.from_role) == ("cd3-positive", "immune")
    back = CorrectionLog.from_json(log.to_json())
    assert back.edits[0].comment == e.comment and back.edits[1].from_class == "tumour-cell"
    # a log saved before comments existed still reads
    old = {"edits": [{"op": "delete", "cell_id": 2, "user": "session-1a2b", "time": "2025-01-01T00:00:00+00:00"}]}
    assert CorrectionLog.from_json(old).edits[0].comment is None
