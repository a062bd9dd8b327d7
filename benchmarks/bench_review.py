"""Latency of a review edit (add, delete, relabel, undo a cell) on a 1 MP field (CPU).

A synthetic H&E-like field of 1000 x 1000 px at 0.5 µm/px (0.25 mm²) with a few thousand
he-til cells (epithelial / inflammatory / fibroblast / other) and a tumour, a stroma and an
exclusion region. For each kind of edit it times what the Review page does between a click
and the redrawn page, step by step, and prints the median and the worst of ``--edits``
edits in milliseconds:

* ``edit``: the edit itself (:class:`core.review.ReviewSession`: one cell's row and the
  counts updated);
* ``live numbers``: counts, densities and per-region figures (``live_statistics``) and the
  class table (``reviewed_summary``);
* ``view``: the view drawn at fit zoom (``render_view``) and encoded as the JPEG the browser
  gets;
* ``cell table``: the reviewed cell table the page lists;
* ``page total``: the sum, what one edit costs the page (the browser's round trip comes on
  top, about 0.1-0.2 s on localhost);

then, for comparison, the full spatial statistics (run on demand and when saving) and
what an edit cost before sessions: replaying the whole log and recomputing the full
statistics.

    python benchmarks/bench_review.py [--cells 3000] [--edits 40] [--simulations 99]
"""

from __future__ import annotations

import argparse
import io
import statistics as st
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cells import make_cell_table  # noqa: E402
from core.io import ImageData  # noqa: E402
from core.results import AnalysisResult, RunInfo  # noqa: E402
from core.review import ReviewSession, correction_classes, fit_zoom, render_view, view_frame  # noqa: E402
from core.scenarios.registry import get_scenario  # noqa: E402
from core.spatial import SpatialParams, compute_spatial_stats  # noqa: E402
from core.spatial.regions import Region  # noqa: E402

SIDE_PX = 1000
MPP = 0.5


def field(n_cells: int, seed: int = 0) -> tuple[AnalysisResult, list[Region]]:
    """A 1 MP field with ``n_cells`` he-til cells and three regions (tumour, stroma, exclusion)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(120, 250, size=(SIDE_PX, SIDE_PX, 3), dtype=np.uint8)
    xy = rng.uniform(5, SIDE_PX - 5, (n_cells, 2))
    classes = rng.choice(["epithelial", "inflammatory", "fibroblast", "other"], n_cells, p=[0.5, 0.25, 0.2, 0.05])
    roles = np.array([{"epithelial": "tumour", "inflammatory": "immune", "fibroblast": "stroma", "other": "other"}[c]
                      for c in classes])
    cells = make_cell_table(xy, classes, roles, rng.uniform(0.5, 1, n_cells), MPP)
    run = RunInfo("he-til", "H&E TILs", "w.safetensors", "0" * 64, "3", False, "cpu", "float32", 1.0, "bench", "bench")
    result = AnalysisResult(ImageData.from_rgb(pixels, MPP, "bench.png", "ab" * 32), cells, run, get_scenario("he-til"))
    s = SIDE_PX * MPP
    regions = [
        Region("Tumour 1", "tumour", np.array([[0.05, 0.05], [0.55, 0.08], [0.6, 0.7], [0.1, 0.8]]) * s),
        Region("Stroma 1", "stroma", np.array([[0.62, 0.1], [0.95, 0.1], [0.95, 0.9], [0.65, 0.9]]) * s),
        Region("Exclude 1", "exclude", np.array([[0.3, 0.3], [0.4, 0.3], [0.4, 0.4], [0.3, 0.4]]) * s),
    ]
    return result, regions


def jpeg(view: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(view).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=3000)
    ap.add_argument("--edits", type=int, default=40)
    ap.add_argument("--simulations", type=int, default=99)
    args = ap.parse_args(argv)
    result, regions = field(args.cells)
    params = SpatialParams(n_simulations=args.simulations)
    session = ReviewSession(result, regions=regions)
    colors = {c["name"]: c["color"] for c in correction_classes(result.scenario.classes)}
    frame = view_frame(result.image.shape, fit_zoom(result.image.shape, 900, 640), None, 900, 640)
    session.live_statistics(params)
    session.reviewed_summary()
    rng = np.random.default_rng(1)
    steps = ("edit", "live numbers", "view", "cell table", "page total")
    rows: dict[str, dict[str, list[float]]] = {}
    for op in ("add", "delete", "relabel", "undo"):
        times = {k: [] for k in steps}
        for _ in range(args.edits):
            x, y = rng.uniform(10, SIDE_PX - 10, 2)
            t0 = time.perf_counter()
            if op == "add":
                session.add_at(x, y, "inflammatory", "immune", user="bench")
            elif op == "delete":
                session.delete_at(x, y, 30.0, user="bench")
            elif op == "relabel":
                session.relabel_at(x, y, 30.0, str(rng.choice(["epithelial", "inflammatory"])),
                                   "immune", user="bench")
            else:
                session.undo(user="bench")
            t1 = time.perf_counter()
            session.live_statistics(params)
            session.reviewed_summary()
            t2 = time.perf_counter()
            jpeg(render_view(result.image.rgb, frame, session.cells(), colors, session.regions, MPP, session.deleted_xy_px()))
            t3 = time.perf_counter()
            session.cells()
            t4 = time.perf_counter()
            for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                times[k].append(v * 1000)
        rows[op] = times
    print(f"Review edit latency, {SIDE_PX} x {SIDE_PX} px field ({SIDE_PX * SIDE_PX / 1e6:g} MP, {MPP} µm/px), "
          f"{args.cells} cells, 3 regions; median / worst of {args.edits} edits, ms")
    print(f"{'edit':<8}" + "".join(f"{k:>20}" for k in steps))
    for op, times in rows.items():
        print(f"{op:<8}" + "".join(f"{st.median(times[k]):>10.1f} / {max(times[k]):>6.1f}" for k in steps))
    t0 = time.perf_counter()
    session.statistics(params)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    compute_spatial_stats(session.log.apply(result.cells), regions, session.params(params))
    before = time.perf_counter() - t0
    print(f"\nfull spatial statistics (on demand, and when saving; {args.simulations} relabellings): {full * 1000:.0f} ms")
    print(f"an edit before review sessions (replay the {len(session.log.edits)}-edit log + full statistics): "
          f"{before * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
