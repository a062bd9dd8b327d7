"""Benchmark of core.spatial.compute_spatial_stats on synthetic tissue (CPU).

Cells are spread uniformly at 5000 cells/mm² (a dense carcinoma field), 60 % tumour,
25 % immune, 15 % stroma, with a tumour region, a stroma region and one exclusion, and
99 random relabellings for the envelopes. Prints seconds per n and the growth exponent
log(t2/t1) / log(n2/n1) between consecutive sizes (1 = linear; n log n reads as
slightly above 1).

    python benchmarks/bench_spatial.py [--sizes 1000 10000 100000] [--simulations 99]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cells import make_cell_table  # noqa: E402
from core.spatial import SpatialParams, compute_spatial_stats  # noqa: E402
from core.spatial.regions import Region  # noqa: E402

DENSITY_PER_MM2 = 5000.0
MPP = 0.5


def synthetic(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    side_um = math.sqrt(n / DENSITY_PER_MM2) * 1000.0
    xy = rng.uniform(0, side_um, (n, 2))
    roles = rng.choice(["tumour", "immune", "stroma"], n, p=[0.6, 0.25, 0.15])
    cells = make_cell_table(xy / MPP, roles, roles, np.ones(n), MPP)
    s = side_um
    regions = [
        Region("tumour", "tumour", np.array([[0.1, 0.1], [0.55, 0.12], [0.6, 0.7], [0.15, 0.8]]) * s),
        Region("stroma", "stroma", np.array([[0.62, 0.1], [0.95, 0.1], [0.95, 0.9], [0.65, 0.9]]) * s),
        Region("pen mark", "exclude", np.array([[0.3, 0.3], [0.35, 0.3], [0.35, 0.35], [0.3, 0.35]]) * s),
    ]
    return cells, regions, (0.0, 0.0, side_um, side_um)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--simulations", type=int, default=99)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    print(f"{'n cells':>10} {'seconds':>9} {'exponent':>9} {'pairs<=rmax':>12}  (simulations={args.simulations}, "
          f"{DENSITY_PER_MM2:g} cells/mm²)")
    prev = None
    for n in args.sizes:
        cells, regions, window = synthetic(n)
        params = SpatialParams(n_simulations=args.simulations, window_um=window)
        best = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            stats = compute_spatial_stats(cells, regions, params, seed=0)
            best = min(best, time.perf_counter() - t0)
        expo = "" if prev is None else f"{math.log(best / prev[1]) / math.log(n / prev[0]):9.2f}"
        print(f"{n:>10d} {best:>9.2f} {expo:>9} {stats['ripley'].get('n_pairs_within_rmax', 0):>12d}")
        prev = (n, best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
