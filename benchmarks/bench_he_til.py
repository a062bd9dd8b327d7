"""Whole-image speed of the he-til scenario (S-DRDIN + §2.5 post-processing) on CPU.

Usage: python benchmarks/bench_he_til.py [--device cpu|cuda] [--sizes 500,1000,2000] [--threads 2]
                                        [--precisions float32,bfloat16] [--default-allocator]

Fields are tiled from the validation H&E images (real texture) at the model's 0.55 µm/px.
Prints seconds and seconds per megapixel of the full analysis (network in 1024 px blocks
with a 96 px context margin, post-processing, cell table), and of the network alone, at each
numeric precision (bfloat16 is skipped, with a line saying so, where the device lacks it).
``--default-allocator`` leaves glibc's malloc as it is, to measure what
:func:`core.allocator.tune_allocator` (called by ``load_model``) gains.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import best_seconds  # noqa: E402
from core.allocator import tune_allocator  # noqa: E402
from core.pipeline import analyze, load_model  # noqa: E402
from core.evaluation.datasets_he import read_he_split  # noqa: E402
from core.io import ImageData  # noqa: E402
from core.scenarios.base import bfloat16_supported, pick_device  # noqa: E402


def field(side: int, tiles: list[np.ndarray]) -> np.ndarray:
    """A side x side RGB field tiled from validation images ((500, 500, 3) uint8 each)."""
    n = side // 500 + 1
    rows = [np.concatenate([tiles[(i * n + j) % len(tiles)] for j in range(n)], axis=1) for i in range(n)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:side, :side])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="500,1000,2000")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--default-allocator", action="store_true", help="do not tune glibc malloc (baseline)")
    args = p.parse_args(argv)
    if args.default_allocator:
        os.environ["TILSCOPE_DEFAULT_ALLOCATOR"] = "1"
    allocator_state = tune_allocator()
    torch.set_num_threads(args.threads)
    tiles = [im.pixels for im in read_he_split("validation")]
    print(f"he-til on {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, allocator: {allocator_state}")
    print(f"{'precision':>9} {'side px':>8} {'MP':>6} {'analyse s':>10} {'s/MP':>7} {'network s/MP':>13} {'cells':>6}")
    for precision in args.precisions.split(","):
        if precision == "bfloat16" and not bfloat16_supported(pick_device(args.device)):
            print(f"{precision:>9}  skipped: no native bfloat16 on this {args.device}")
            continue
        model = load_model("he-til", args.device, precision)
        for side in (int(s) for s in args.sizes.split(",")):
            img = field(side, tiles)
            image = ImageData(img, 0.55, f"field-{side}", "", "user")
            holder = {}
            total = best_seconds(lambda: holder.setdefault("r", analyze(image, "he-til", model=model)), args.repeat)
            net = best_seconds(lambda: model.predict_maps(img[: min(side, 1216), : min(side, 1216)]), args.repeat)
            net_mp = min(side, 1216) ** 2 / 1e6
            mp = side * side / 1e6
            print(f"{precision:>9} {side:>8} {mp:>6.2f} {total:>10.2f} {total / mp:>7.2f} {net / net_mp:>13.2f} {len(holder['r'].cells):>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
