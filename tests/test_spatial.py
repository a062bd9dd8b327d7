"""Known-answer tests of core.spatial (lattices, Poisson and clustered processes, known areas)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from core.cells import make_cell_table
from core.errors import InputError
from core.spatial import (
    SCHEMA,
    SpatialParams,
    SpatialStats,
    class_to_role,
    compute_spatial_stats,
    cell_spatial_table,
    distance_to_segments_um,
    morisita_horn,
    read_cell_table_csv,
    signed_distance_to_border_um,
    spatial_stats,
)
from core.spatial.regions import Region

FAST = SpatialParams(n_simulations=19, ripley_radii_um=(0.0, 10.0, 20.0, 30.0, 40.0, 50.0))


def table(xy_um, roles, mpp=0.5):
    xy_um = np.asarray(xy_um, dtype=float)
    return make_cell_table(xy_um / mpp, list(roles), list(roles), np.ones(len(xy_um)), mpp)


def square(x0, y0, side):
    return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], dtype=float)


def lattice_case():
    """Tumour cells every 200 µm; around each, immune cells at exactly 5, 15, 25 and 45 µm."""
    g = np.arange(10) * 200.0 + 100.0
    tx, ty = np.meshgrid(g, g)
    tum = np.c_[tx.ravel(), ty.ravel()]
    offsets = np.array([[5.0, 0.0], [0.0, 15.0], [-25.0, 0.0], [0.0, -45.0]])
    imm = (tum[:, None, :] + offsets[None]).reshape(-1, 2)
    xy = np.vstack([tum, imm])
    roles = ["tumour"] * len(tum) + ["immune"] * len(imm)
    return xy, roles


def test_lattice_distances_and_fractions_are_exact():
    xy, roles = lattice_case()
    s = compute_spatial_stats(table(xy, roles), params=FAST)
    d = s["distances"]
    assert d["n_immune"] == 400 and d["n_tumour"] == 100
    rows = {r["radius_um"]: r for r in d["within_radius"]}
    assert [rows[r]["n_immune_within"] for r in (10, 20, 30, 50)] == [100, 200, 300, 400]
    assert [rows[r]["fraction_immune_within"] for r in (10, 20, 30, 50)] == [0.25, 0.5, 0.75, 1.0]
    assert [rows[r]["immune_per_tumour_cell_within"] for r in (10, 20, 30, 50)] == [1.0, 2.0, 3.0, 4.0]
    summ = d["immune_to_nearest_tumour_um"]
    assert summ["min_um"] == pytest.approx(5.0, abs=1e-9)
    assert summ["max_um"] == pytest.approx(45.0, abs=1e-9)
    assert summ["mean_um"] == pytest.approx((5 + 15 + 25 + 45) / 4, abs=1e-9)
    # ECDF at the histogram edges equals the exact fractions.
    ecdf = dict(zip(d["ecdf"]["radius_um"], d["ecdf"]["fraction"]))
    assert ecdf[10.0] == 0.25 and ecdf[30.0] == 0.75 and ecdf[50.0] == 1.0
    assert sum(d["histogram"]["counts"]) == 400


def test_result_is_strict_json_with_params():
    xy, roles = lattice_case()
    s = compute_spatial_stats(table(xy, roles), params=FAST)
    text = json.dumps(s, allow_nan=False)  # raises on NaN / numpy types
    assert "radii_um" in s["params"] and s["params"]["margin_half_width_um"] == 500.0
    assert json.loads(text)["schema"] == "tilscope.spatial/1"


def _strip_runtime(obj):
    if isinstance(obj, dict):
        return {k: _strip_runtime(v) for k, v in obj.items() if k not in ("runtime_s", "area_method")}
    if isinstance(obj, list):
        return [_strip_runtime(v) for v in obj]
    return obj


def _assert_close(a, b, path="", rel=1e-9):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}", rel)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-9), path
    else:
        assert a == b, path


def test_same_tissue_at_two_mpp_gives_same_figures():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 1200, (800, 2))
    roles = rng.choice(["immune", "tumour", "stroma"], 800).tolist()
    regions = [Region("T", "tumour", square(200, 200, 600)), Region("S", "stroma", square(850, 100, 300))]
    params = SpatialParams(n_simulations=9, ripley_radii_um=(0.0, 25.0, 50.0), margin_half_width_um=100.0, window_um=(0, 0, 1200, 1200))
    a = compute_spatial_stats(table(xy, roles, mpp=0.25), regions, params, seed=7)
    b = compute_spatial_stats(table(xy, roles, mpp=0.5), regions, params, seed=7)
    _assert_close(_strip_runtime(a), _strip_runtime(b))


def test_region_areas_densities_and_exclusions_are_exact():
    # Immune cells on a 50 µm lattice at cell centres 25, 75, ... (never on an edge).
    g = np.arange(25.0, 2000.0, 50.0)
    gx, gy = np.meshgrid(g, g)
    xy = np.c_[gx.ravel(), gy.ravel()]
    roles = ["immune"] * len(xy)
    regions = [
        Region("T", "tumour", square(0, 0, 1000)),
        Region("S", "stroma", square(1000, 0, 1000)),
        Region("X", "exclude", square(300, 300, 100)),
    ]
    s = compute_spatial_stats(table(xy, roles), regions, FAST)
    per = {r["name"]: r for r in s["regions"]["per_region"]}
    assert per["T"]["area_mm2"] == pytest.approx(0.99, abs=1e-12)
    assert per["S"]["area_mm2"] == pytest.approx(1.0, abs=1e-12)
    assert per["T"]["counts_by_role"]["immune"] == 400 - 4
    assert per["T"]["density_per_mm2_by_role"]["immune"] == pytest.approx(396 / 0.99, rel=1e-12)
    assert per["S"]["density_per_mm2_by_role"]["immune"] == pytest.approx(400.0, rel=1e-12)
    assert s["counts"]["n_excluded_by_regions"] == 4
    c = s["compartments"]
    assert c["intratumoral_immune_density_per_mm2"] == pytest.approx(400.0, rel=1e-12)
    assert c["ratio_intratumoral_to_stromal"] == pytest.approx(1.0, rel=1e-12)
    til = s["stromal_til_proxy"]
    assert til["percent"] == pytest.approx(100 * 400 * 38.5 / 1e6, rel=1e-12)
    assert "proxy" in til["label"] and "Salgado" in til["label"]


def test_partially_overlapping_exclusion_is_subtracted():
    regions = [Region("T", "tumour", square(0, 0, 1000)), Region("X", "exclude", square(900, 900, 200))]
    xy = np.array([[500.0, 500.0], [1500.0, 1500.0]])
    s = compute_spatial_stats(table(xy, ["immune", "tumour"]), regions, FAST)
    per = {r["name"]: r for r in s["regions"]["per_region"]}
    assert per["T"]["area_mm2"] == pytest.approx(1.0 - 0.01, rel=2e-3)
    assert per["T"]["area_method"].startswith("raster")


def test_poisson_random_labels_stay_in_envelope_and_k_is_pi_r2():
    rng = np.random.default_rng(11)
    n = 1500
    xy = rng.uniform(0, 1000, (n, 2))
    roles = rng.choice(["immune", "tumour"], n).tolist()
    params = SpatialParams(n_simulations=39, ripley_radii_um=tuple(float(r) for r in range(0, 101, 10)), window_um=(0, 0, 1000, 1000))
    s = compute_spatial_stats(table(xy, roles), params=params, seed=1)
    rip = s["ripley"]
    assert rip["global_test"]["inside_global_envelope"] is True
    assert rip["global_test"]["global_p_value"] > 0.05
    k = np.array(rip["K_um2"][1:])
    r = np.array(rip["radius_um"][1:])
    assert np.all(np.abs(k / (math.pi * r**2) - 1) < 0.2)
    lo, hi = np.array(rip["L_minus_r_envelope_lo_um"]), np.array(rip["L_minus_r_envelope_hi_um"])
    assert np.all(lo <= hi)
    g = s["cross_g"]
    assert g["G"][0] == 0.0 and all(0 <= v <= 1 for v in g["G"] if v is not None)
    assert np.all(np.diff([v for v in g["G"] if v is not None]) >= -0.05)


def test_clustered_immune_cells_leave_the_envelope():
    rng = np.random.default_rng(5)
    tum = rng.uniform(0, 1000, (500, 2))
    parents = tum[rng.integers(0, 500, 600)]
    ang = rng.uniform(0, 2 * np.pi, 600)
    rad = rng.uniform(2, 8, 600)
    imm = parents + np.c_[rad * np.cos(ang), rad * np.sin(ang)]
    imm = imm[(imm >= 0).all(1) & (imm <= 1000).all(1)]
    xy = np.vstack([tum, imm])
    roles = ["tumour"] * len(tum) + ["immune"] * len(imm)
    params = SpatialParams(n_simulations=39, ripley_radii_um=(0.0, 5.0, 10.0, 20.0, 40.0), window_um=(0, 0, 1000, 1000))
    s = compute_spatial_stats(table(xy, roles), params=params)
    rip = s["ripley"]
    assert rip["global_test"]["inside_global_envelope"] is False
    assert rip["global_test"]["global_p_value"] == pytest.approx(1 / 40)
    i10 = rip["radius_um"].index(10.0)
    assert rip["L_minus_r_um"][i10] > rip["L_minus_r_envelope_hi_um"][i10]
    gi = s["cross_g"]["radius_um"].index(10.0)
    assert s["cross_g"]["G"][gi] > s["cross_g"]["G_envelope_hi"][gi]


def test_monte_carlo_uses_one_seeded_generator():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 500, (400, 2))
    roles = rng.choice(["immune", "tumour"], 400).tolist()
    cells = table(xy, roles)
    a = compute_spatial_stats(cells, params=FAST, seed=4)["ripley"]
    b = compute_spatial_stats(cells, params=FAST, seed=4)["ripley"]
    c = compute_spatial_stats(cells, params=FAST, seed=5)["ripley"]
    assert a["L_minus_r_envelope_hi_um"] == b["L_minus_r_envelope_hi_um"]
    assert a["L_minus_r_envelope_hi_um"] != c["L_minus_r_envelope_hi_um"]
    assert a["L_minus_r_um"] == c["L_minus_r_um"]  # the observed curve does not depend on the seed


def test_invasive_margin_areas_and_signed_distances():
    g = np.arange(25.0, 5000.0, 50.0)
    gx, gy = np.meshgrid(g, g)
    xy = np.c_[gx.ravel(), gy.ravel()]
    roles = ["immune"] * len(xy)
    regions = [Region("T", "tumour", square(1000, 1000, 3000))]
    params = SpatialParams(n_simulations=0, ripley_radii_um=(0.0, 10.0), window_um=(0, 0, 5000, 5000))
    s = compute_spatial_stats(table(xy, roles), regions, params)
    im = s["invasive_margin"]
    # CT: the 2000 µm inner square; IM: the 500 µm offset of the 3000 µm square (rounded
    # corners: 3000² + 4·3000·500 + π·500²) minus CT.
    im_area = (3000**2 + 4 * 3000 * 500 + math.pi * 500**2) / 1e6 - 4.0
    assert im["ct"]["area_mm2"] == pytest.approx(4.0, rel=2e-3)
    assert im["im"]["area_mm2"] == pytest.approx(im_area, rel=2e-3)
    ox = np.maximum(np.abs(xy - 2500.0) - 1500.0, 0)
    outside_d = np.hypot(ox[:, 0], ox[:, 1])
    inside_d = (1500.0 - np.abs(xy - 2500.0)).min(1)
    sd_true = np.where(outside_d > 0, outside_d, -inside_d)
    assert im["ct"]["n_immune"] == int((sd_true < -500).sum()) == 40 * 40
    assert im["im"]["n_immune"] == int((np.abs(sd_true) <= 500).sum())
    assert im["ct"]["immune_density_per_mm2"] == pytest.approx(400.0, rel=0.01)
    assert im["immunoscore_like"]["name"] == "Immunoscore-like"
    assert im["immunoscore_like"]["score_0_to_2"] is None
    sd, source = signed_distance_to_border_um(np.array([[2500.0, 2500.0], [500.0, 2500.0], [1010.0, 2000.0]]), regions)
    assert source == "tumour regions"
    np.testing.assert_allclose(sd, [-1500.0, 500.0, -10.0], atol=1e-9)
    p2 = SpatialParams(n_simulations=0, ripley_radii_um=(0.0, 10.0), window_um=(0, 0, 5000, 5000), immunoscore_cutoffs_per_mm2=(300.0, 500.0))
    s2 = compute_spatial_stats(table(xy, roles), regions, p2)
    assert s2["invasive_margin"]["immunoscore_like"]["score_0_to_2"] == 1


def test_margin_region_defines_the_border_and_cell_table_columns():
    regions = [Region("T", "tumour", square(0, 0, 100)), Region("M", "margin", square(0, 0, 200))]
    cells = table(np.array([[150.0, 100.0], [300.0, 100.0], [50.0, 50.0]]), ["immune", "immune", "tumour"])
    out = cell_spatial_table(cells, regions, SpatialParams(margin_half_width_um=60.0))
    np.testing.assert_allclose(out["border_distance_um"], [-50.0, 100.0, -50.0])
    assert out["zone"].tolist() == ["IM", "outside", "IM"]
    assert out["compartment"].tolist() == ["", "", "tumour"]
    np.testing.assert_allclose(out["nearest_tumour_um"].to_numpy()[:2], [np.hypot(100, 50), np.hypot(250, 50)])


def test_distance_to_segments_matches_brute_force():
    rng = np.random.default_rng(0)
    th = np.linspace(0, 2 * np.pi, 300, endpoint=False)
    ring = np.c_[500 + 300 * np.cos(th) + 20 * np.sin(9 * th), 500 + 250 * np.sin(th)]
    a, b = ring, np.roll(ring, -1, axis=0)
    p = rng.uniform(0, 1000, (2000, 2))
    got = distance_to_segments_um(p, a, b)
    ab = b - a
    t = np.clip(np.einsum("nkj,kj->nk", p[:, None] - a[None], ab) / (ab**2).sum(1), 0, 1)
    brute = np.linalg.norm(p[:, None] - (a[None] + t[..., None] * ab[None]), axis=2).min(1)
    np.testing.assert_allclose(got, brute, rtol=0, atol=1e-9)


def test_phenotype_calls_follow_printed_thresholds():
    regions = [Region("T", "tumour", square(0, 0, 1000)), Region("S", "stroma", square(1000, 0, 1000))]
    base = np.array([[500.0, 500.0], [1500.0, 500.0]])
    def call(n_t, n_s):
        rng = np.random.default_rng(0)
        xy = np.vstack([base, rng.uniform(10, 990, (n_t, 2)), rng.uniform(10, 990, (n_s, 2)) + [1000, 0]])
        roles = ["tumour", "stroma"] + ["immune"] * (n_t + n_s)
        return compute_spatial_stats(table(xy, roles), regions, FAST)["phenotype"]
    p = call(150, 0)
    assert p["call"] == "inflamed" and "100" in p["rule"]
    assert p["thresholds"]["inflamed_min_intratumoral_per_mm2"] == 100.0
    assert call(10, 200)["call"] == "excluded"
    assert call(10, 10)["call"] == "desert"


def test_morisita_horn_limits():
    assert morisita_horn([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert morisita_horn([1, 0, 0], [0, 0, 5]) == 0.0
    assert morisita_horn([0, 0], [1, 1]) is None


def test_without_mpp_says_statistics_need_one():
    cells = make_cell_table(np.array([[1.0, 2.0], [3.0, 4.0]]), "x", ["immune", "tumour"], np.ones(2), None)
    s = compute_spatial_stats(cells)
    assert s["available"] is False and "mpp" in s["reason"]
    json.dumps(s, allow_nan=False)


def test_grid_compartments_without_regions_and_bad_input():
    rng = np.random.default_rng(1)
    tum = rng.uniform(0, 500, (300, 2))
    stro = rng.uniform(0, 500, (300, 2)) + [600, 0]
    imm = rng.uniform(0, 500, (100, 2)) + [600, 0]
    xy = np.vstack([tum, stro, imm])
    roles = ["tumour"] * 300 + ["stroma"] * 300 + ["immune"] * 100
    s = compute_spatial_stats(table(xy, roles), params=FAST)
    c = s["compartments"]
    assert c["source"].startswith("grid")
    assert c["n_immune_intratumoral"] == 0 and c["n_immune_stromal"] == 100
    # 0.25 mm² of tumour is under the 0.5 mm² a call needs: "not enough tissue", not a call
    assert c["tumour_area_mm2"] < 0.5
    assert s["phenotype"]["call"] is None and "not enough tissue" in s["phenotype"]["reason"]
    small = replace(FAST, min_compartment_area_mm2=0.2)
    assert compute_spatial_stats(table(xy, roles), params=small)["phenotype"]["call"] == "excluded"
    with pytest.raises(InputError, match="role"):
        compute_spatial_stats(pd.DataFrame({"x_um": [1.0], "y_um": [1.0]}))
    with pytest.raises(InputError, match="radii_um"):
        compute_spatial_stats(table(xy, roles), params=SpatialParams(radii_um=(-1.0,)))


def test_read_qupath_and_tilscope_tables(tmp_path):
    q = tmp_path / "detections.tsv"
    q.write_text(
        "Image\tName\tClass\tCentroid X µm\tCentroid Y µm\n"
        "a.svs\tx\tTumor\t10.5\t20\n"
        "a.svs\tx\tImmune cells\t11\t21\n"
        "a.svs\tx\tStroma\t30\t40\n"
        "a.svs\tx\t\t1\t2\n"
        "a.svs\tx\tTumor: Positive\t3\t4\n",
        encoding="utf-8",
    )
    cells, info = read_cell_table_csv(q)
    assert info["format"] == "qupath"
    assert info["columns"]["x_um"] == "Centroid X µm" and info["columns"]["cell_class"] == "Class"
    assert cells["role"].tolist() == ["tumour", "immune", "stroma", "other", "tumour"]
    assert cells["x_um"].tolist() == [10.5, 11.0, 30.0, 1.0, 3.0]
    assert info["class_to_role"]["Immune cells"] == "immune"
    ours = tmp_path / "cells.csv"
    table(np.array([[1.0, 2.0], [3.0, 4.0]]), ["immune", "tumour"]).to_csv(ours, index=False)
    c2, info2 = read_cell_table_csv(ours)
    assert info2["format"] == "tilscope" and c2["role"].tolist() == ["immune", "tumour"]
    assert c2["x_px"].tolist() == [2.0, 6.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="centroid"):
        read_cell_table_csv(bad)
    assert class_to_role("cd3-positive") == "immune" and class_to_role("cd3-negative") == "other"
    assert class_to_role("Positive") == "immune" and class_to_role("Necrosis") == "other"


def test_plots_build_from_stats():
    from core.outputs import plots
    from core.spatial.heatmaps import immune_density_map

    xy, roles = lattice_case()
    regions = [Region("T", "tumour", square(0, 0, 1000)), Region("S", "stroma", square(1000, 0, 1000))]
    cells = table(xy, roles)
    s = compute_spatial_stats(cells, regions, FAST)
    fig = plots.distance_figure(s)
    assert len(fig.data) == 2 and sum(1 for sh in fig.layout.shapes) == 2 * 4  # r lines in both panels
    assert len(plots.ripley_figure(s, "L").data) == 4 and len(plots.ripley_figure(s, "G").data) == 2
    dmap = immune_density_map(cells, bin_um=100.0, window_um=(0, 0, 2100, 2100), whole_window=True)
    hm = plots.density_heatmap(dmap, image=np.zeros((4200, 4200, 3), np.uint8), mpp=0.5)
    assert hm.data[-1].type == "heatmap" and hm.data[0].type == "image"
    z = np.asarray(hm.data[-1].z, dtype=float)
    assert z.shape == (21, 21) and np.nansum(z) * 0.01 == pytest.approx(400)  # the 400 immune cells, 0.01 mm² squares
    assert z[1, 1] == pytest.approx(200.0)  # tumour cell (100, 100): immune cells at +5 µm in x and +15 µm in y
    bar = plots.region_density_figure(s)
    assert list(bar.data[0].x)[:2] == ["T (tumour)", "S (stroma)"]
    empty = plots.distance_figure({"available": False, "reason": "needs an mpp"})
    assert empty.layout.annotations[0].text == "needs an mpp"


def test_headline_shows_the_median_distance():
    from core.outputs.key_figures import key_figure_rows as spatial_headline

    xy, roles = lattice_case()  # immune cells at 5, 15, 25 and 45 µm: median 20 µm
    rows = {r["measure"]: r for r in spatial_headline(compute_spatial_stats(table(xy, roles), params=FAST))}
    assert rows["immune → nearest tumour cell, median"]["value"] == "20.0 µm"
    assert rows["immune cells within 20 µm of a tumour cell"]["value"] == "50.0 %"


def _zero_runtime(d):
    return {**d, "runtime_s": 0.0} if "runtime_s" in d else d


def test_spatial_stats_round_trip_keeps_the_json_byte_for_byte():
    xy, roles = lattice_case()
    regions = [Region("T", "tumour", square(0, 0, 1000)), Region("S", "stroma", square(1000, 0, 1000))]
    cells = table(xy, roles)
    d = compute_spatial_stats(cells, regions, FAST, seed=2)
    s = SpatialStats.from_dict(d)
    assert s.schema == SCHEMA == "tilscope.spatial/1" and s.available is True and s.reason is None
    assert s.phenotype == d["phenotype"] and s.ripley == d["ripley"] and s.warnings == d["warnings"]
    assert s.extra == {}
    # Same keys in the same order: the JSON text, not only the dict, is unchanged.
    assert json.dumps(s.to_dict(), ensure_ascii=False) == json.dumps(d, ensure_ascii=False)
    assert SpatialStats.from_dict(s.to_dict()) == s
    typed = spatial_stats(cells, regions, FAST, seed=2)
    assert isinstance(typed, SpatialStats)
    assert json.dumps(_zero_runtime(typed.to_dict())) == json.dumps(_zero_runtime(d))
    # to_dict hands out a copy.
    s.to_dict()["phenotype"]["call"] = "changed"
    assert s.phenotype["call"] == d["phenotype"]["call"] != "changed"
    # The whole-result "unavailable" layout (no mpp) round-trips too.
    no_mpp = compute_spatial_stats(make_cell_table(np.array([[1.0, 2.0]]), "x", ["immune"], np.ones(1), None))
    back = SpatialStats.from_dict(no_mpp)
    assert back.available is False and "mpp" in back.reason and back.distances is None
    assert json.dumps(back.to_dict()) == json.dumps(no_mpp)


def test_spatial_stats_reads_dicts_the_store_kept():
    xy, roles = lattice_case()
    stored = compute_spatial_stats(table(xy, roles), params=FAST)
    stored["corrections"] = {"n_corrections": 2, "users": ["s"]}  # what review_statistics adds
    stored = json.loads(json.dumps(stored))  # as read back from the store's JSON column
    s = SpatialStats.from_dict(stored)
    assert s.extra == {"corrections": {"n_corrections": 2, "users": ["s"]}}
    assert s.to_dict() == stored and list(s.to_dict())[-1] == "corrections"
    # Without a schema key and unavailable: read with the current layout.
    old = {"available": False, "reason": "spatial statistics need µm coordinates, but the image has no mpp"}
    s = SpatialStats.from_dict(old)
    assert s.available is False and s.reason == old["reason"] and s.counts is None and s.extra == {}
    assert s.to_dict() == {"schema": SCHEMA, **old}
    # Without "available" (readers always took that as unavailable); unknown keys are kept.
    legacy = {"thresholds": {"radius_um": 30.0}, "immune_phenotype": "inflamed"}
    s = SpatialStats.from_dict(legacy)
    assert s.available is False and s.extra == legacy
    assert s.to_dict() == {"schema": SCHEMA, "available": False, **legacy}


def test_spatial_stats_refuses_an_unknown_schema_and_wrong_types():
    xy, roles = lattice_case()
    d = compute_spatial_stats(table(xy, roles), params=FAST)
    with pytest.raises(InputError, match=r"schema 'tilscope\.spatial/2'.*\['tilscope\.spatial/1'\]"):
        SpatialStats.from_dict({**d, "schema": "tilscope.spatial/2"})
    with pytest.raises(InputError, match="schema"):
        SpatialStats.from_dict({"schema": "something-else/1", "available": True})
    with pytest.raises(InputError, match="schema"):
        SpatialStats(schema="tilscope.spatial/0", available=False)
    with pytest.raises(InputError, match="'ripley' must be a dict"):
        SpatialStats.from_dict({**d, "ripley": [1.0, 2.0]})
    with pytest.raises(InputError, match="'warnings' must be a list of str"):
        SpatialStats.from_dict({**d, "warnings": "none"})
    with pytest.raises(InputError, match="must be a dict"):
        SpatialStats.from_dict([("available", True)])


def test_distance_statistics_need_enough_cells_of_each_role():
    rng = np.random.default_rng(3)
    xy = np.vstack([rng.uniform(0, 300, (40, 2)), rng.uniform(0, 300, (5, 2))])
    roles = ["tumour"] * 40 + ["immune"] * 5
    s = compute_spatial_stats(table(xy, roles), params=FAST)
    assert s["distances"]["available"] is False and "too few cells" in s["distances"]["reason"]
    assert s["ripley"]["available"] is False and "at least 10" in s["ripley"]["reason"]
    s1 = compute_spatial_stats(table(xy, roles), params=replace(FAST, min_cells_per_role=5))
    assert s1["distances"]["available"] and s1["distances"]["n_immune"] == 5
