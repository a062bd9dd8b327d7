"""Whole-image CD3 detection speed: dense (fully convolutional) vs the alternatives.

Usage: python benchmarks/bench_cd3_detection.py [--device cpu|cuda] [--sizes 512,1024,2048]
       [--weights runs/cd3-v2.safetensors]  (weights not yet registered, e.g. before shipping them)

Prints two tables at the model's 0.2 µm/px:

1. seconds and seconds per megapixel of the shipped dense detection, against a naive
   per-window sliding window at the same 8 px stride (every 70 x 70 window cropped and
   classified in batches; timed on a 256 x 256 field and scaled by the number of windows);
2. dense versus "candidate nuclei first" (DAB blobs from colour deconvolution, then one
   patch classification per candidate) on mosaics of held-out patches: time and F1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import best_seconds  # noqa: E402
from core.pipeline import analyze, load_model  # noqa: E402
from core.io import ImageData  # noqa: E402
from core.samples import get_sample  # noqa: E402


def field(side: int) -> np.ndarray:
    """A side x side RGB field tiled from the bundled CD3 mosaic (real IHC texture)."""
    tile = get_sample("cd3-mosaic").load().rgb
    reps = (side // tile.shape[0] + 1, side // tile.shape[1] + 1, 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:side, :side])


def naive_seconds_per_window(model, side: int = 256, batch: int = 256) -> float:
    image = field(side)
    padded = np.pad(image, ((35, 35), (35, 35), (0, 0)), mode="reflect")
    starts = range(0, side, 8)
    windows = np.stack([padded[y : y + 70, x : x + 70] for y in starts for x in starts])
    seconds = best_seconds(lambda: model.classify_patches(windows, batch=batch), repeat=1)
    return seconds / len(windows)


def detect_candidates(model, pixels: np.ndarray, sigma_px: float = 8.0, min_distance_px: int = 14) -> np.ndarray:
    """Candidate-first detection: maxima of smoothed hematoxylin + DAB optical density
    (``rgb2hed``; sigma and spacing chosen on tune mosaics), then one patch classification
    centred on each candidate."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max

    hed = rgb2hed(pixels)
    signal = gaussian_filter(hed[..., 0] + hed[..., 2], sigma_px)
    peaks = peak_local_max(signal, min_distance=min_distance_px, threshold_abs=float(np.percentile(signal, 60)))
    padded = np.pad(pixels, ((35, 35), (35, 35), (0, 0)), mode="reflect")
    patches = np.stack([padded[y : y + 70, x : x + 70] for y, x in peaks]) if len(peaks) else np.zeros((0, 70, 70, 3), np.uint8)
    prob = model.classify_patches(patches) if len(patches) else np.zeros(0)
    keep = prob >= model.patch_threshold
    return peaks[keep][:, ::-1].astype(float)


def compare_on_mosaics(model, seeds=(101, 102)) -> None:
    from core.evaluation.datasets import cd3_patch_table
    from core.evaluation.cd3 import CD3_MATCH_RADIUS_UM
    from core.evaluation.metrics import detection_metrics
    from core.evaluation.mosaic import build_mosaic

    table = cd3_patch_table()
    val = table[table.split == "validation"]
    print(f"\n{'method':>12} {'s/MP':>7} {'precision':>10} {'recall':>7} {'F1':>6}   (mosaics of validation patches)")
    for name in ("dense", "candidates"):
        tp = fp = fn = 0
        seconds = mp = 0.0
        for seed in seeds:
            m = build_mosaic(val, 12, 12, seed=seed)
            t0 = time.perf_counter()
            if name == "dense":
                xy = analyze(ImageData(m.pixels, 0.2, "m", "", "user"), "cd3-ihc", model=model).cells[["x_px", "y_px"]].to_numpy()
            else:
                xy = detect_candidates(model, m.pixels)
            seconds += time.perf_counter() - t0
            mp += m.pixels.shape[0] * m.pixels.shape[1] / 1e6
            d = detection_metrics(xy, m.positive_xy, CD3_MATCH_RADIUS_UM / 0.2)
            tp, fp, fn = tp + d["tp"], fp + d["fp"], fn + d["fn"]
        p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        print(f"{name:>12} {seconds / mp:>7.2f} {p:>10.3f} {r:>7.3f} {2 * p * r / max(p + r, 1e-9):>6.3f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default=None)
    p.add_argument("--sizes", default="512,1024,2048")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--weights", help="a CD3 weights file instead of the registered one")
    p.add_argument("--no-mosaics", action="store_true", help="skip the dense-vs-candidates table")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.weights:
        from core.evaluation.cd3_calibration import load_weights_model

        model = load_weights_model(args.weights, args.device or "cpu")
    else:
        model = load_model("cd3-ihc", args.device)
    print(f"operating point: {model.operating_point}")
    per_window = naive_seconds_per_window(model)
    print(f"device: {model.device}, torch threads: {torch.get_num_threads()}")
    print(f"{'field px':>10} {'MP':>6} {'dense s':>9} {'s/MP':>7} {'cells':>6} {'naive s (est.)':>15} {'naive/dense':>12}")
    for side in map(int, args.sizes.split(",")):
        image = ImageData(field(side), 0.2, f"field-{side}", "", "user")
        cells = []
        seconds = best_seconds(lambda: cells.append(analyze(image, "cd3-ihc", model=model).summary["n_cells"]), args.repeat)
        mp = side * side / 1e6
        naive = per_window * (side // 8) ** 2
        print(f"{side:>10} {mp:>6.2f} {seconds:>9.2f} {seconds / mp:>7.2f} {cells[-1]:>6} {naive:>15.1f} {naive / seconds:>12.1f}")
    if not args.no_mosaics:
        compare_on_mosaics(model)


if __name__ == "__main__":
    main()
