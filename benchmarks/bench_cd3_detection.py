"""Whole-image CD3 detection speed: dense (fully convolutional) vs naive per-window sliding window.

Usage: python benchmarks/bench_cd3_detection.py [--device cpu|cuda] [--sizes 512,1024,2048]

Prints a table of seconds and seconds per megapixel at the model's 0.2 µm/px. The naive
baseline crops every 70 x 70 window on the same 8 px grid and classifies them in batches;
it is timed on a 256 x 256 field and scaled by the number of windows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.analysis import analyze, load_model  # noqa: E402
from core.io import ImageData  # noqa: E402
from core.samples import get_sample  # noqa: E402


def field(side: int) -> np.ndarray:
    """A side x side RGB field tiled from the bundled CD3 mosaic (real IHC texture)."""
    tile = get_sample("cd3-mosaic").load().pixels
    reps = (side // tile.shape[0] + 1, side // tile.shape[1] + 1, 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:side, :side])


def time_it(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def naive_seconds_per_window(model, side: int = 256, batch: int = 256) -> float:
    image = field(side)
    padded = np.pad(image, ((35, 35), (35, 35), (0, 0)), mode="reflect")
    starts = range(0, side, 8)
    windows = np.stack([padded[y : y + 70, x : x + 70] for y in starts for x in starts])
    seconds = time_it(lambda: model.classify_patches(windows, batch=batch), repeat=1)
    return seconds / len(windows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default=None)
    p.add_argument("--sizes", default="512,1024,2048")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    model = load_model("cd3-ihc", args.device)
    per_window = naive_seconds_per_window(model)
    print(f"device: {model.device}, torch threads: {torch.get_num_threads()}")
    print(f"{'field px':>10} {'MP':>6} {'dense s':>9} {'s/MP':>7} {'cells':>6} {'naive s (est.)':>15} {'naive/dense':>12}")
    for side in map(int, args.sizes.split(",")):
        image = ImageData(field(side), 0.2, f"field-{side}", "", "user")
        cells = []
        seconds = time_it(lambda: cells.append(analyze(image, "cd3-ihc", model=model).summary["n_cells"]), args.repeat)
        mp = side * side / 1e6
        naive = per_window * (side // 8) ** 2
        print(f"{side:>10} {mp:>6.2f} {seconds:>9.2f} {seconds / mp:>7.2f} {cells[-1]:>6} {naive:>15.1f} {naive / seconds:>12.1f}")


if __name__ == "__main__":
    main()
