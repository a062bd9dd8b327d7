"""TNRD speed on CPU: seconds per megapixel of inference and the time of one training iteration.

Usage: python benchmarks/bench_tnrd.py [--scenario tnrd-if-melanoma] [--sizes 256,512] [--threads 2]
       [--train-crop 96 --train-batch 2]

Prints, for the shipped weights' configuration:

1. whole-image analysis (resampling skipped: the image is at the model's mpp; tiled
   inference with blending; mask → cells) on synthetic sections of each size:
   seconds and seconds per megapixel (best of ``--repeat``);
2. one training iteration (forward through N_t explicit steps, loss eq. 4, backward,
   Adam step, projection) on a batch of crops: seconds (median of ``--iterations``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.pipeline import analyze, load_model  # noqa: E402
from core.evaluation.tnrd import recipe_for  # noqa: E402
from core.generator import generate  # noqa: E402
from core.io import ImageData  # noqa: E402
from core.nets.tnrd import TNRD, tnrd_loss  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="tnrd-if-melanoma")
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-crop", type=int, default=96)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.scenario, "cpu")
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        sec = generate(recipe_for(args.scenario), (side, side), seed=20000 + side)
        image = ImageData(sec.noisy_uint8, model.scenario.input_mpp, "bench", "", "user")
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            analyze(image, args.scenario, model=model)
            best = min(best, time.perf_counter() - t0)
        rows.append({"side_px": side, "seconds": round(best, 3), "seconds_per_megapixel": round(best / (side * side / 1e6), 2)})
    net = TNRD(**model.net.config)
    net.load_state_dict(model.net.state_dict(), strict=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    c, b = args.train_crop, args.train_batch
    times = []
    for _ in range(args.iterations):
        x, g, m = torch.rand((b, 3, c, c), generator=gen), torch.rand((b, 3, c, c), generator=gen), torch.rand((b, 1, c, c), generator=gen)
        t0 = time.perf_counter()
        out_rgb, out_m = net(x, generator=gen)
        loss = tnrd_loss(out_rgb, out_m, g, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.project_()
        times.append(time.perf_counter() - t0)
    result = {
        "scenario": args.scenario, "config": model.net.config, "threads": args.threads, "torch": torch.__version__,
        "inference": rows,
        "train_iteration": {"crop_px": c, "batch": b, "seconds_median": round(statistics.median(times), 3)},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.scenario}  config {model.net.config}  CPU threads {args.threads}")
        print(f"{'side px':>8} {'seconds':>9} {'s/MP':>8}")
        for r in rows:
            print(f"{r['side_px']:>8} {r['seconds']:>9.3f} {r['seconds_per_megapixel']:>8.2f}")
        print(f"one training iteration (batch {b} of {c} x {c} px crops): {statistics.median(times):.3f} s (median of {len(times)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
