"""Known-answer tests of the distances between immune classes (core.spatial.class_distances)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.cells import make_cell_table
from core.errors import InputError
from core.outputs.key_figures import MAX_CLASS_DISTANCE_FIGURES, key_figure_rows, key_figures
from core.spatial import SpatialParams, SpatialStats, compute_spatial_stats
from core.spatial.class_distances import class_distances_section
from core.spatial.regions import Region

FAST = SpatialParams(n_simulations=0, ripley_radii_um=(0.0, 10.0, 20.0))


def table(xy_um, classes, roles, mpp=0.5):
    xy_um = np.asarray(xy_um, dtype=float)
    return make_cell_table(xy_um / mpp, list(classes), list(roles), np.ones(len(xy_um)), mpp)


def square(x0, y0, side):
    return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], dtype=float)


def pairs_of(section):
    return {(p["from"], p["to"]): p for p in section["pairs"]}


def three_classes():
    """A cells on a 1000 µm lattice; a B cell exactly 5 µm right of each, a C cell exactly 50 µm above."""
    g = np.arange(4) * 1000.0 + 100.0
    a = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    xy = np.vstack([a, a + [5.0, 0.0], a + [0.0, 50.0]])
    classes = ["A"] * len(a) + ["B"] * len(a) + ["C"] * len(a)
    return xy, classes


def test_known_distances_give_exact_medians_and_fractions():
    xy, classes = three_classes()
    s = compute_spatial_stats(table(xy, classes, ["immune"] * len(xy)), params=FAST)
    sec = s["immune_class_distances"]
    assert sec["available"] is True
    assert sec["classes"] == ["A", "B", "C"] and sec["n_by_class"] == {"A": 16, "B": 16, "C": 16}
    assert sec["radii_um"] == [10.0, 20.0, 30.0]
    assert isinstance(sec["definition"], str) and sec["definition"]
    p = pairs_of(sec)
    assert set(p) == {(x, y) for x in "ABC" for y in "ABC" if x != y}  # every ordered pair, none to itself
    ab, ac, cb = p[("A", "B")], p[("A", "C")], p[("C", "B")]
    assert ab["n_from"] == 16 and ab["n_to"] == 16
    assert ab["median_um"] == pytest.approx(5.0) and ab["q25_um"] == pytest.approx(5.0) and ab["q75_um"] == pytest.approx(5.0)
    assert ab["fraction_within"] == {"10": 1.0, "20": 1.0, "30": 1.0} and ab["n_within"] == {"10": 16, "20": 16, "30": 16}
    assert ac["median_um"] == pytest.approx(50.0)
    assert ac["fraction_within"] == {"10": 0.0, "20": 0.0, "30": 0.0}
    assert cb["median_um"] == pytest.approx(math.hypot(5.0, 50.0))
    # The whole result is JSON (plain Python types).
    assert json.loads(json.dumps(sec)) == sec


def test_pairs_are_asymmetric():
    """One B cell with A cells at exactly 5, 15 and 25 µm around it: A → B differs from B → A."""
    centres = np.array([[100.0, 100.0], [1100.0, 100.0]])
    xy, classes = [], []
    for c in centres:
        xy += [c, c + [5.0, 0.0], c + [0.0, 15.0], c + [-25.0, 0.0]]
        classes += ["B", "A", "A", "A"]
    sec = class_distances_section(np.array(xy), np.array(["immune"] * len(xy)), np.array(classes),
                                  SpatialParams(class_distance_radii_um=(10.0, 20.0, 30.0)))
    p = pairs_of(sec)
    ab, ba = p[("A", "B")], p[("B", "A")]
    assert (ab["n_from"], ab["n_to"], ba["n_from"], ba["n_to"]) == (6, 2, 2, 6)
    assert ab["median_um"] == pytest.approx(15.0) and ba["median_um"] == pytest.approx(5.0)
    assert ab["min_um"] == pytest.approx(5.0) and ab["max_um"] == pytest.approx(25.0)
    assert ab["fraction_within"] == pytest.approx({"10": 1 / 3, "20": 2 / 3, "30": 1.0})
    assert ba["fraction_within"] == {"10": 1.0, "20": 1.0, "30": 1.0}


def test_one_immune_class_is_unavailable_with_a_reason():
    xy, _ = three_classes()
    s = compute_spatial_stats(table(xy, ["cd3-positive"] * len(xy), ["immune"] * len(xy)), params=FAST)
    sec = s["immune_class_distances"]
    assert sec["available"] is False and "at least 2 classes" in sec["reason"] and "'cd3-positive'" in sec["reason"]
    assert not [f for f in key_figures(s) if f.key.startswith("immune_class_distances")]
    # Without a cell_class column every immune cell is "immune": one class.
    cells = table(xy, ["x"] * len(xy), ["immune"] * len(xy)).drop(columns=["cell_class"])
    assert compute_spatial_stats(cells, params=FAST)["immune_class_distances"]["available"] is False
    no_immune = class_distances_section(np.zeros((2, 2)), np.array(["tumour"] * 2), np.array(["t", "u"]), FAST)
    assert no_immune == {"available": False, "reason": no_immune["reason"]} and "no immune cells" in no_immune["reason"]


def test_tumour_cells_are_ignored_even_with_an_immune_class_name():
    xy, classes = three_classes()
    a = xy[: len(xy) // 3]
    # Tumour cells 1 µm from every A cell, one of them labelled "B" like the immune class.
    xy2 = np.vstack([xy, a + [1.0, 0.0], a + [0.0, 1.0]])
    classes2 = classes + ["B"] * len(a) + ["tumour-cell"] * len(a)
    roles2 = ["immune"] * len(xy) + ["tumour"] * (2 * len(a))
    sec = compute_spatial_stats(table(xy2, classes2, roles2), params=FAST)["immune_class_distances"]
    assert sec["classes"] == ["A", "B", "C"] and sec["n_by_class"]["B"] == 16
    assert pairs_of(sec)[("A", "B")]["median_um"] == pytest.approx(5.0)


def test_cells_in_exclusion_regions_are_dropped():
    # A at the origin of each block; B at 5 µm (inside the exclusion) and at 40 µm (outside).
    xy, classes = [], []
    for x0 in (100.0, 1100.0):
        xy += [[x0, 100.0], [x0 + 5.0, 100.0], [x0 + 40.0, 100.0]]
        classes += ["A", "B", "B"]
    cells = table(xy, classes, ["immune"] * len(xy))
    before = compute_spatial_stats(cells, params=FAST)["immune_class_distances"]
    assert pairs_of(before)[("A", "B")]["median_um"] == pytest.approx(5.0)
    excl = [Region("glass", "exclude", square(x0 + 3.0, 97.0, 4.0)) for x0 in (100.0, 1100.0)]
    s = compute_spatial_stats(cells, excl, params=FAST)
    after = s["immune_class_distances"]
    assert s["counts"]["n_excluded_by_regions"] == 2
    assert after["n_by_class"] == {"A": 2, "B": 2}
    assert pairs_of(after)[("A", "B")]["median_um"] == pytest.approx(40.0)
    assert pairs_of(after)[("A", "B")]["fraction_within"] == {"10": 0.0, "20": 0.0, "30": 0.0}


def test_spatial_stats_round_trip_with_and_without_the_section():
    xy, classes = three_classes()
    d = compute_spatial_stats(table(xy, classes, ["immune"] * len(xy)), params=FAST)
    assert "immune_class_distances" in SpatialStats.SECTIONS
    assert list(d).index("immune_class_distances") == list(d).index("morisita_horn") + 1
    s = SpatialStats.from_dict(d)
    assert s.immune_class_distances == d["immune_class_distances"]
    assert s.to_dict() == d and json.dumps(s.to_dict(), ensure_ascii=False) == json.dumps(d, ensure_ascii=False)
    stored = json.loads(json.dumps(d))  # as the case store reads it back
    assert SpatialStats.from_dict(stored).to_dict() == stored
    # A dict saved before the section existed: read, and given back without it.
    old = {k: v for k, v in d.items() if k != "immune_class_distances"}
    back = SpatialStats.from_dict(old)
    assert back.immune_class_distances is None and back.extra == {}
    assert back.to_dict() == old and "immune_class_distances" not in back.to_dict()
    with pytest.raises(InputError, match="'immune_class_distances' must be a dict"):
        SpatialStats.from_dict({**d, "immune_class_distances": [1, 2]})


@pytest.mark.parametrize("radii", [(-1.0,), (0.0, 10.0), (float("nan"),), (float("inf"),), (), (10.0, 10.0), 10.0,
                                   ("10",)])
def test_invalid_class_distance_radii_are_refused(radii):
    xy, classes = three_classes()
    with pytest.raises(InputError, match="class_distance_radii_um"):
        compute_spatial_stats(table(xy, classes, ["immune"] * len(xy)),
                              params=SpatialParams(n_simulations=0, class_distance_radii_um=radii))


def test_radii_are_recorded_with_the_other_settings():
    p = SpatialParams(class_distance_radii_um=(12.5, 40.0))
    assert p.validate().to_dict()["class_distance_radii_um"] == [12.5, 40.0]
    xy, classes = three_classes()
    s = compute_spatial_stats(table(xy, classes, ["immune"] * len(xy)),
                              params=SpatialParams(n_simulations=0, class_distance_radii_um=(12.5, 40.0)))
    assert s["params"]["class_distance_radii_um"] == [12.5, 40.0]
    assert pairs_of(s["immune_class_distances"])[("A", "B")]["fraction_within"] == {"12.5": 1.0, "40": 1.0}


def test_a_large_table_with_six_classes_runs():
    rng = np.random.default_rng(7)
    n = 200_000
    xy = rng.uniform(0, 20_000, (n, 2))
    names = np.array(["CD8+", "CD4+FOXP3-", "CD4+FOXP3+", "PD1+CD4-CD8-", "PD1+CD4-CD8+", "PD1+CD4+CD8-", "tumour-cell"])
    pick = rng.choice(len(names), n, p=[0.3, 0.2, 0.05, 0.05, 0.1, 0.1, 0.2])
    cls = names[pick]
    role = np.where(cls == "tumour-cell", "tumour", "immune")
    sec = class_distances_section(xy, role, cls, SpatialParams())
    assert sec["available"] is True and len(sec["classes"]) == 6
    assert sum(sec["n_by_class"].values()) == int((role == "immune").sum())
    assert sec["n_by_class"]["CD8+"] == int((cls == "CD8+").sum())
    assert len(sec["pairs"]) == 30
    for p in sec["pairs"]:
        assert p["n_from"] == sec["n_by_class"][p["from"]] and p["n_to"] == sec["n_by_class"][p["to"]]
        fr = list(p["fraction_within"].values())
        assert 0.0 <= fr[0] <= fr[1] <= fr[2] <= 1.0
        assert p["q25_um"] <= p["median_um"] <= p["q75_um"]


def test_key_figures_give_one_row_per_ordered_pair():
    xy, classes = [], []
    for x0 in (100.0, 1100.0, 2100.0):  # PD1+CD4-CD8+ at 5 µm and 15 µm from one CD4+FOXP3+ cell
        xy += [[x0, 100.0], [x0 + 5.0, 100.0], [x0, 115.0]]
        classes += ["CD4+FOXP3+", "PD1+CD4-CD8+", "PD1+CD4-CD8+"]
    s = compute_spatial_stats(table(xy, classes, ["immune"] * len(xy)), params=FAST)
    figs = [f for f in key_figures(s) if f.key.startswith("immune_class_distances")]
    assert [f.measure for f in figs] == ["CD4+FOXP3+ → nearest PD1+CD4-CD8+, median",
                                         "PD1+CD4-CD8+ → nearest CD4+FOXP3+, median"]
    rows = {r["measure"]: r for r in key_figure_rows(s)}
    row = rows["PD1+CD4-CD8+ → nearest CD4+FOXP3+, median"]
    assert row["value"] == "10.0 µm"  # median of 5 and 15
    assert row["setting"] == "share within 10 / 20 / 30 µm: 50.0 / 100.0 / 100.0 %; 6 PD1+CD4-CD8+ and 3 CD4+FOXP3+ cells"
    assert rows["CD4+FOXP3+ → nearest PD1+CD4-CD8+, median"]["value"] == "5.0 µm"
    # The same rows from the typed result.
    assert [f.key for f in key_figures(SpatialStats.from_dict(s))] == [f.key for f in key_figures(s)]


def test_key_figures_keep_the_pairs_from_the_two_most_numerous_classes_above_four_classes():
    rng = np.random.default_rng(1)
    counts = {"a": 5, "b": 40, "c": 10, "d": 30, "e": 3}
    classes = [c for c, n in counts.items() for _ in range(n)]
    xy = rng.uniform(0, 500, (len(classes), 2))
    s = compute_spatial_stats(table(xy, classes, ["immune"] * len(xy)), params=FAST)
    assert len(s["immune_class_distances"]["pairs"]) == 20 > MAX_CLASS_DISTANCE_FIGURES
    figs = [f for f in key_figures(s) if f.key.startswith("immune_class_distances")]
    assert len(figs) == 8 and {f.measure.split(" → ")[0] for f in figs} == {"b", "d"}
    assert all("the full table of 20 pairs is in the statistics" in f.setting for f in figs)
    assert all("(b, d)" in f.setting for f in figs)


def test_the_page_table_lists_every_pair_with_its_shares():
    from core.outputs.key_figures import class_distance_table

    xy, classes = three_classes()
    s = compute_spatial_stats(table(xy, classes, ["immune"] * len(xy)), params=FAST)
    rows = {(r["from"], r["to"]): r for r in class_distance_table(s)}
    assert len(rows) == 6
    assert rows[("A", "B")]["median (µm)"] == 5.0 and rows[("A", "B")]["within 10 µm (%)"] == 100.0
    assert rows[("A", "C")]["within 30 µm (%)"] == 0.0 and rows[("A", "C")]["IQR (µm)"] == "50.0 – 50.0"
    assert class_distance_table(SpatialStats.from_dict(s)) == class_distance_table(s)  # typed or dict
    one = compute_spatial_stats(table(xy[:16], ["A"] * 16, ["immune"] * 16), params=FAST)
    assert class_distance_table(one) == [] and class_distance_table(None) == []
