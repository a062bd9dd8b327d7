"""Spatial statistics, heat maps and cell-table I/O at slide scale: seconds and peak memory (CPU).

Synthetic sections at 5000 cells/mm² (60 % tumour, 25 % immune, 15 % stroma, uniform, with a
tumour and a stroma region and one exclusion, as benchmarks/bench_spatial.py), 0.1, 1 and 5
million cells (20 to 1000 mm², a whole slide). Each size runs in a fresh process, so its peak
resident memory (RSS, ``ru_maxrss``) is its own. Columns:

- ``stats s``: :func:`core.spatial.compute_spatial_stats` with 99 relabellings (cross-K/L/G
  on a random subsample above ``RIPLEY_MAX_POINTS`` tumour + immune cells);
- ``map+Gi* s``: immune cells/mm² in 100 µm bins and Getis-Ord Gi* hot spots (150 µm);
- ``parquet w/r s``, ``csv w/r s``: writing ``cells.parquet`` / ``cells.csv`` (the exporters)
  and reading each back (:func:`core.spatial.read_cell_table`);
- ``peak RSS MB``: the process's peak, table included.

    python benchmarks/bench_spatial_scale.py [--sizes 100000 1000000 5000000] [--simulations 99]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def one(n: int, n_sim: int) -> dict:
    """Run every step on n synthetic cells in this process; return the timings and peak RSS."""
    from bench_spatial import synthetic

    from core.outputs.exports import cells_csv, cells_parquet
    from core.spatial import SpatialParams, compute_spatial_stats, hot_spots, immune_density_map, read_cell_table

    cells, regions, window = synthetic(n)
    out: dict = {"n": n}
    t0 = time.perf_counter()
    stats = compute_spatial_stats(cells, regions, SpatialParams(n_simulations=n_sim, window_um=window), seed=0)
    out["stats_s"] = time.perf_counter() - t0
    out["ripley_subsample"] = bool((stats["ripley"] or {}).get("subsample"))
    out["ripley_available"] = bool((stats["ripley"] or {}).get("available"))
    t0 = time.perf_counter()
    dmap = immune_density_map(cells, bin_um=100.0, window_um=window)
    hs = hot_spots(dmap, neighbourhood_um=150.0)
    out["map_s"] = time.perf_counter() - t0
    out["n_bins"] = int(dmap.counts.size)
    out["n_hot_bins"] = hs.summary["n_hot_bins"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pq = Path(tmp) / "cells.parquet"
        pq.write_bytes(cells_parquet(cells))
        t1 = time.perf_counter()
        read_cell_table(pq)
        out["parquet_w_s"], out["parquet_r_s"] = t1 - t0, time.perf_counter() - t1
        out["parquet_mb"] = pq.stat().st_size / 1e6
        t0 = time.perf_counter()
        (Path(tmp) / "cells.csv").write_bytes(cells_csv(cells))
        t1 = time.perf_counter()
        read_cell_table(Path(tmp) / "cells.csv")
        out["csv_w_s"], out["csv_r_s"] = t1 - t0, time.perf_counter() - t1
        out["csv_mb"] = (Path(tmp) / "cells.csv").stat().st_size / 1e6
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    ap.add_argument("--simulations", type=int, default=99)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.simulations)))
        return 0
    print(f"{'n cells':>10} {'stats s':>8} {'map+Gi* s':>9} {'parquet w/r s':>13} {'csv w/r s':>11} "
          f"{'parquet MB':>10} {'csv MB':>7} {'peak RSS MB':>11}  ripley")
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--simulations", str(args.simulations)],
                              capture_output=True, text=True, cwd=Path(__file__).parent)
        if proc.returncode:
            print(f"{n:>10d} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rip = "subsample" if r["ripley_subsample"] else ("all cells" if r["ripley_available"] else "not available")
        print(f"{n:>10d} {r['stats_s']:>8.1f} {r['map_s']:>9.2f} {r['parquet_w_s']:>6.1f}/{r['parquet_r_s']:<6.1f} "
              f"{r['csv_w_s']:>5.1f}/{r['csv_r_s']:<5.1f} {r['parquet_mb']:>10.1f} {r['csv_mb']:>7.1f} {r['peak_rss_mb']:>11.0f}  {rip}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
