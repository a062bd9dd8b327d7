"""Whole-slide speed and memory: he-til over synthetic slides of growing tissue area, end to end.

Usage: python benchmarks/bench_slides.py [--sizes 1,4,16,64] [--device cpu|cuda] [--threads 2]
                                         [--mpp 0.5] [--precision float32|bfloat16] [--keep DIR]

Each slide is a pyramidal tiled JPEG OME-TIFF (:func:`core.slides.synthetic.write_pyramid_tiff`,
levels 1, 4, 16, 64) at ``--mpp`` µm/px (default 0.5, a 20x scan), with a square of tissue of
the requested area (mm²) tiled from the H&E validation images (real texture) in 0.5 mm of glass.
Each size runs in its own process, so the peak resident memory (``ru_maxrss``) is that of one
slide: :func:`core.slides.analyze_slide` from the file to the written outputs (tissue
detection, every tile, Parquet parts, cells.csv/parquet, overlay, heat map), the model
loaded before the clock starts. Prints one row per size: tissue area, slide size, tiles,
cells, seconds, seconds per mm² of tissue, CPU seconds (all threads) per mm², peak RSS. The issue's aims: at most 4 s per mm²,
peak memory under 3 GB whatever the slide size (flat), time linear in the tissue area.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MARGIN_MM = 0.5


def texture() -> np.ndarray:
    """(2000, 2000, 3) uint8: 4 x 4 H&E validation images, seamless when tiled by mirroring."""
    from core.evaluation.datasets_he import read_he_split

    tiles = [im.pixels[:500, :500] for im in read_he_split("validation")][:16]
    rows = [np.concatenate([tiles[(4 * i + j) % len(tiles)] for j in range(4)], axis=1) for i in range(4)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def write_slide(path: Path, area_mm2: float, mpp: float) -> tuple[int, int]:
    """A slide with a square of ``area_mm2`` of tissue; returns its level-0 (width, height) px."""
    from core.slides.synthetic import write_pyramid_tiff

    tex = texture()
    period = tex.shape[0]
    side_px = int(round(math.sqrt(area_mm2) * 1e3 / mpp))
    margin_px = int(round(MARGIN_MM * 1e3 / mpp))
    size = side_px + 2 * margin_px
    t0, t1 = margin_px, margin_px + side_px

    def render(d, x0, y0, w, h):
        X0, Y0 = x0 * d, y0 * d
        if X0 >= t1 or Y0 >= t1 or (x0 + w) * d <= t0 or (y0 + h) * d <= t0:
            return None
        xs = ((np.arange(x0, x0 + w) + 0.5) * d).astype(np.int64)
        ys = ((np.arange(y0, y0 + h) + 0.5) * d).astype(np.int64)
        tile = tex[(ys % period)[:, None], (xs % period)[None, :]]  # coarser levels sample the texture
        inside = ((xs >= t0) & (xs < t1))[None, :] & ((ys >= t0) & (ys < t1))[:, None]
        out = np.full((h, w, 3), 243, np.uint8)
        out[inside] = tile[inside]
        return out

    write_pyramid_tiff(path, size, size, mpp, render, tile_px=512, downsamples=(1, 4, 16, 64))
    return size, size


def run_one(area_mm2: float, args) -> dict:
    """Write one slide, analyse it in this process, return its figures."""
    import torch

    from core.pipeline import load_model
    from core.slides import analyze_slide

    torch.set_num_threads(args.threads)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-slides-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tissue-{area_mm2:g}mm2.ome.tif"
    t = time.perf_counter()
    w, h = write_slide(path, area_mm2, args.mpp)
    write_s = time.perf_counter() - t
    model = load_model("he-til", args.device, args.precision)
    t, cpu = time.perf_counter(), time.process_time()
    summary = analyze_slide(path, "he-til", folder / f"out-{area_mm2:g}", model=model)
    seconds, cpu_s = time.perf_counter() - t, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    return {"area_mm2": summary["tissue_area_mm2"], "width_px": w, "height_px": h,
            "tiles": summary["tiles"]["with_tissue"], "cells": summary["n_cells"], "seconds": seconds, "cpu_s": cpu_s,
            "s_per_mm2": seconds / summary["tissue_area_mm2"], "peak_rss_gb": peak / 1e9, "write_s": write_s,
            "device": summary["device"], "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,4,16,64", help="tissue areas in mm², comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 pixel of the synthetic slides")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--keep", help="folder for the slides and outputs (default: a temporary folder)")
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)  # child process: one size, JSON on stdout
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args)))
        return 0
    print(f"he-til whole-slide analysis on {args.device}, {args.threads} threads, {args.precision}, "
          f"slides at {args.mpp} µm/px (model reads 0.55)")
    print(f"{'tissue mm²':>10} {'slide px':>13} {'tiles':>6} {'cells':>8} {'seconds':>8} {'s/mm²':>6} "
          f"{'CPU s/mm²':>9} {'peak RSS GB':>12}")
    for size in [float(s) for s in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "--one", str(size), "--device", args.device, "--threads", str(args.threads),
               "--mpp", str(args.mpp), "--precision", args.precision] + (["--keep", args.keep] if args.keep else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{size:>10g}  failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{r['area_mm2']:>10.2f} {r['width_px']:>6} x {r['height_px']:<6}{r['tiles']:>5} {r['cells']:>8} "
              f"{r['seconds']:>8.1f} {r['s_per_mm2']:>6.2f} {r['cpu_s'] / r['area_mm2']:>9.2f} "
              f"{r['peak_rss_gb']:>12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
