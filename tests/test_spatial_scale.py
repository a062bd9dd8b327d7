"""Slide-scale spatial code: density maps, Getis-Ord Gi* hot spots, cross-K on a subsample, Parquet cell tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from core.cells import make_cell_table
from core.cli import main
from core.errors import InputError
from core.outputs.exports import cells_csv, cells_parquet
from core.spatial import (
    SpatialParams,
    compute_spatial_stats,
    density_map,
    getis_ord_gi_star,
    hot_spots,
    immune_density_map,
    read_cell_table,
)
from core.spatial import point_processes


def table(xy_um, roles, mpp=0.5):
    xy_um = np.asarray(xy_um, dtype=float)
    return make_cell_table(xy_um / mpp, list(roles), list(roles), np.ones(len(xy_um)), mpp)


# --------------------------------------------------------------------------- density maps


def test_density_map_of_a_lattice_is_exact():
    g = np.arange(5.0, 1000.0, 10.0)  # one cell every 10 µm: 100 per 100 µm bin
    xx, yy = np.meshgrid(g, g)
    xy = np.c_[xx.ravel(), yy.ravel()]
    m = density_map(xy, bin_um=100.0, window_um=(0, 0, 1000, 1000))
    assert m.shape == (10, 10) and m.n_outside == 0
    assert (m.counts == 100).all()
    np.testing.assert_allclose(m.density_per_mm2, 10_000.0)  # 100 cells / 0.01 mm²
    xc, yc = m.bin_centres_um()
    np.testing.assert_allclose(xc, np.arange(50.0, 1000.0, 100.0))


def test_immune_density_map_counts_one_role_over_bins_with_any_cell():
    xy = np.array([[10, 10], [20, 20], [150, 10], [250, 10], [260, 20]], dtype=float)
    roles = ["immune", "immune", "tumour", "immune", "stroma"]
    m = immune_density_map(table(xy, roles), bin_um=100.0, window_um=(0, 0, 400, 100))
    assert m.counts.tolist() == [[2, 0, 1, 0]]
    assert m.tissue.tolist() == [[True, True, True, False]]  # the last bin holds no cell: glass
    assert m.density_per_mm2[0, :3].tolist() == [200.0, 0.0, 100.0] and math.isnan(m.density_per_mm2[0, 3])


def test_density_map_refuses_bad_arguments():
    xy = np.zeros((3, 2))
    with pytest.raises(InputError, match="bin_um"):
        density_map(xy, bin_um=0)
    with pytest.raises(InputError, match="window_um"):
        density_map(xy, window_um=(0, 0, -1, 5))
    with pytest.raises(InputError, match="tissue_mask has shape"):
        density_map(xy, bin_um=100, window_um=(0, 0, 200, 200), tissue_mask=np.ones((3, 3), bool))
    with pytest.raises(InputError, match="use larger bins"):
        density_map(np.array([[0.0, 0.0], [1e5, 1e5]]), bin_um=1.0)
    with pytest.raises(InputError, match="unknown role"):
        immune_density_map(table([[1, 1]], ["immune"]), role="lymphocyte")


# --------------------------------------------------------------------------- Getis-Ord Gi*


def brute_gi_star(x, mask, radius_bins):
    """Gi* straight from Ord & Getis (1995), one bin at a time: the reference for the filter version."""
    ny, nx = x.shape
    cells = [(i, j) for i in range(ny) for j in range(nx) if mask[i, j]]
    vals = np.array([x[c] for c in cells])
    n, mean = len(vals), vals.mean()
    s = math.sqrt((vals**2).mean() - mean**2)
    out = np.full(x.shape, np.nan)
    for i, j in cells:
        w = np.array([1.0 if (i - a) ** 2 + (j - b) ** 2 <= radius_bins**2 + 1e-9 else 0.0 for a, b in cells])
        num = (w * vals).sum() - mean * w.sum()
        den = s * math.sqrt((n * (w**2).sum() - w.sum() ** 2) / (n - 1))
        out[i, j] = num / den
    return out


@pytest.mark.parametrize("radius_bins", [1.0, 1.5, 2.3])
def test_gi_star_equals_the_formula_bin_by_bin(radius_bins):
    rng = np.random.default_rng(3)
    x = rng.poisson(5.0, (9, 12)).astype(float)
    mask = rng.random((9, 12)) > 0.2
    np.testing.assert_allclose(getis_ord_gi_star(x, mask, radius_bins=radius_bins), brute_gi_star(x, mask, radius_bins),
                               rtol=1e-10, atol=1e-12, equal_nan=True)


def test_gi_star_of_a_constant_grid_is_undefined():
    z = getis_ord_gi_star(np.full((5, 5), 7.0))
    assert np.isnan(z).all()
    with pytest.raises(InputError, match="radius_bins"):
        getis_ord_gi_star(np.ones((3, 3)), radius_bins=0)


def test_hot_spots_find_a_dense_cluster_and_nothing_in_uniform_tissue():
    rng = np.random.default_rng(0)
    background = rng.uniform(0, 3000, (45_000, 2))  # 5000 cells/mm²
    cluster = rng.uniform(1200, 1500, (4_500, 2))  # +10 000 cells/mm² in a 300 µm square
    xy = np.vstack([background, cluster])
    m = density_map(xy, bin_um=100.0, window_um=(0, 0, 3000, 3000))
    hs = hot_spots(m, neighbourhood_um=150.0)
    assert hs.hot[12:15, 12:15].all()  # the cluster's 9 bins
    hot_rows, hot_cols = np.nonzero(hs.hot)
    assert hot_rows.min() >= 11 and hot_rows.max() <= 15 and hot_cols.min() >= 11 and hot_cols.max() <= 15
    assert hs.summary["n_hot_bins"] == int(hs.hot.sum()) and hs.summary["neighbourhood_bins"] == 9
    assert hs.summary["fraction_of_cells_in_hot_bins"] > 0.09

    # Uniform tissue: the false discovery rate keeps false hot or cold spots to a rare neighbourhood.
    flagged = []
    for seed in range(10):
        xy = np.random.default_rng(100 + seed).uniform(0, 3000, (45_000, 2))
        quiet = hot_spots(density_map(xy, bin_um=100.0, window_um=(0, 0, 3000, 3000)))
        flagged.append(quiet.summary["n_hot_bins"] + quiet.summary["n_cold_bins"])
    assert sum(f > 0 for f in flagged) <= 3 and max(flagged) <= 9, flagged
    uniform = density_map(xy, bin_um=100.0, window_um=(0, 0, 3000, 3000))
    with pytest.raises(InputError, match="neighbourhood_um"):
        hot_spots(uniform, neighbourhood_um=50.0)


# --------------------------------------------------------------------------- cross-K on a subsample


def test_ripley_runs_on_a_documented_subsample_above_the_cap(monkeypatch):
    rng = np.random.default_rng(1)
    side = 1500.0
    xy = rng.uniform(0, side, (6000, 2))  # Poisson positions, random labels: K(r) = π r²
    roles = rng.choice(["tumour", "immune"], 6000, p=[0.7, 0.3])
    monkeypatch.setattr(point_processes, "RIPLEY_MAX_POINTS", 2000)
    params = SpatialParams(n_simulations=19, ripley_radii_um=(0.0, 10.0, 20.0, 30.0, 40.0, 50.0),
                           window_um=(0, 0, side, side))
    s = compute_spatial_stats(table(xy, roles), params=params, seed=4)
    rip = s["ripley"]
    sub = rip["subsample"]
    assert sub["n_tumour_used"] + sub["n_immune_used"] == 2000
    assert sub["n_tumour_total"] + sub["n_immune_total"] == 6000
    assert rip["n_tumour"] == sub["n_tumour_used"] and rip["n_immune"] == sub["n_immune_used"]
    assert any("random subsample" in w for w in s["warnings"]) and "subsample_note" in s["cross_g"]
    assert s["distances"]["n_immune"] == sub["n_immune_total"]  # the other statistics use every cell
    # K is unchanged by independent thinning: L(r) - r stays near 0 at every radius.
    assert np.max(np.abs(np.asarray(rip["L_minus_r_um"][1:]))) < 3.0
    from core.outputs.key_figures import key_figures

    [test_row] = [f for f in key_figures(s) if f.key == "ripley.global_p_value"]
    assert f"random subsample of {sub['n_tumour_used']} tumour" in test_row.setting  # every page and report says so
    again = compute_spatial_stats(table(xy, roles), params=params, seed=4)
    assert again["ripley"]["K_um2"] == rip["K_um2"]  # one seeded generator: reproducible


def test_thinning_keeps_every_cell_of_a_rare_type():
    t = np.zeros(10_000, bool)
    i = np.zeros(10_000, bool)
    t[:9_950] = True
    i[9_950:] = True
    kt, ki, info = point_processes._thinned(t, i, 1000, np.random.default_rng(0))
    assert ki.sum() == 50 and kt.sum() == 950 and not (kt & ~t).any() and not (ki & ~i).any()
    assert info["fraction_immune"] == 1.0 and info["fraction_tumour"] == pytest.approx(950 / 9950)


# --------------------------------------------------------------------------- Parquet cell tables


def test_cells_parquet_holds_the_csv_rows_at_full_precision(tmp_path):
    rng = np.random.default_rng(2)
    cells = table(rng.uniform(0, 500, (300, 2)), rng.choice(["immune", "tumour", "stroma"], 300))
    cells["cell_id"] = np.arange(300)
    path = tmp_path / "cells.parquet"
    path.write_bytes(cells_parquet(cells))
    back = pd.read_parquet(path)
    assert list(back.columns) == list(pd.read_csv(pd.io.common.BytesIO(cells_csv(cells))).columns)
    np.testing.assert_array_equal(back["x_um"].to_numpy(), cells["x_um"].to_numpy())  # not rounded
    assert back["role"].tolist() == cells["role"].tolist()
    assert cells_parquet(cells) == cells_parquet(cells.copy())  # deterministic bytes
    read, info = read_cell_table(path)
    assert info["separator"] == "parquet" and info["format"] == "tilscope" and len(read) == 300
    empty = pd.read_parquet(pd.io.common.BytesIO(cells_parquet(cells.iloc[:0])))
    assert len(empty) == 0 and list(empty.columns)[:7] == list(cells.columns)[:7]


def test_stats_reads_parquet_as_it_reads_csv(tmp_path, capsys):
    rng = np.random.default_rng(5)
    cells = table(np.round(rng.uniform(0, 800, (400, 2)), 3), rng.choice(["immune", "tumour"], 400))
    cells[["x_px", "y_px", "x_um", "y_um"]] = cells[["x_px", "y_px", "x_um", "y_um"]].round(3)
    (tmp_path / "cells.csv").write_bytes(cells_csv(cells))
    (tmp_path / "cells.parquet").write_bytes(cells_parquet(cells))
    for name in ("cells.csv", "cells.parquet"):
        assert main(["stats", str(tmp_path / name), "--out", str(tmp_path / name.replace(".", "-")),
                     "--n-simulations", "9"]) == 0
    a = json.loads((tmp_path / "cells-csv" / "stats.json").read_text())
    b = json.loads((tmp_path / "cells-parquet" / "stats.json").read_text())
    for s in (a, b):
        s.pop("input"), s.pop("runtime_s")
    assert a == b
    (tmp_path / "fake.parquet").write_text("x_um,y_um\n1,2\n")
    assert main(["stats", str(tmp_path / "fake.parquet"), "--out", str(tmp_path / "f")]) == 2
    assert "Parquet" in capsys.readouterr().err
