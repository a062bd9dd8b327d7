"""tissue-compartments (CD-UNET) speed on CPU: seconds per megapixel, against the issue's aim of < 1 s/MP.

Usage: python benchmarks/bench_compartments.py [--sizes 512,1024,2048] [--mpp 1.0,0.5] [--threads 2]
       [--repeat 2] [--json OUT.json]

For each size and pixel size, a synthetic multistain section (:func:`core.generator.compartments.
generate_compartments`, H&E) is analysed as the pipeline does it:

1. ``network``: resampling to the model's 1.0 µm/px, tiled inference (512 µm windows blended over
   64 µm), probabilities resized to the image (:func:`core.pipeline.analyze`);
2. ``outputs``: arg-max label map, ``compartments.png``, ``regions.geojson`` polygons and the
   regions (µm) the spatial statistics use (:class:`core.scenarios.compartments.CompartmentMap`).

Prints one row per input: its megapixels (MP) as given and at the model's mpp, the best of
``--repeat`` wall times of both parts, and seconds per megapixel of the input (what the aim is
stated in) and of the model's grid. On a machine busy with other work the wall time says little,
so the process's CPU time of the same run is printed too: CPU seconds / threads is what the wall
time would be with the cores to itself and perfect parallelism (a lower bound), CPU seconds
what it would be on one core (an upper bound). ``--json`` also writes the rows (for the model
card's ``--benchmark``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.generator.compartments import generate_compartments  # noqa: E402
from core.io import ImageData  # noqa: E402
from core.pipeline import analyze, load_model  # noqa: E402
from core.scenarios.compartments import KEY, CompartmentMap  # noqa: E402
from core.scenarios.registry import get_scenario  # noqa: E402

#: The issue's aim: seconds per megapixel of input on 2 CPU cores.
AIM_S_PER_MP = 1.0


def _section(side: int, mpp: float) -> ImageData:
    """A synthetic H&E section of ``side`` x ``side`` px at ``mpp`` (drawn at 1.0 µm/px and resized)."""
    from PIL import Image

    model_side = max(64, int(round(side * mpp)))
    sec = generate_compartments((model_side, model_side), seed=77_000 + side, stain="he")
    rgb = sec.image if model_side == side else np.asarray(Image.fromarray(sec.image).resize((side, side),
                                                                                            Image.Resampling.BILINEAR))
    return ImageData.from_rgb(rgb, mpp, f"bench-{side}.png")


def _best(fn, repeat: int) -> tuple[float, float, object]:
    """(best wall seconds, CPU seconds of that call, its value) of ``repeat`` calls of ``fn()``."""
    out, best, cpu = None, float("inf"), float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, used = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, cpu = wall, used
    return best, cpu, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="512,1024,2048", help="image sides in pixels")
    p.add_argument("--mpp", default="1.0,0.5", help="pixel sizes of the inputs, µm/px")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(KEY, "cpu")
    scenario = get_scenario(KEY)
    rows = []
    for mpp in (float(m) for m in args.mpp.split(",")):
        for side in (int(s) for s in args.sizes.split(",")):
            image = _section(side, mpp)
            if not rows:
                analyze(image, KEY, model=model)  # warm-up (allocator, kernels), once
            t_net, c_net, result = _best(lambda: analyze(image, KEY, model=model), args.repeat)

            def outputs():
                cmap = CompartmentMap(result.compartments.labels, result.compartments.mpp)  # regions traced anew
                return cmap.exports(), cmap.regions()

            t_out, c_out, _ = _best(outputs, args.repeat)
            mp = side * side / 1e6
            model_mp = mp * (mpp / scenario.input_mpp) ** 2
            total, cpu = t_net + t_out, c_net + c_out
            rows.append({"side_px": side, "mpp": mpp, "megapixels": round(mp, 3),
                         "megapixels_at_model_mpp": round(model_mp, 3), "network_s": round(t_net, 3),
                         "outputs_s": round(t_out, 3), "total_s": round(total, 3), "cpu_s": round(cpu, 3),
                         "s_per_megapixel": round(total / mp, 3),
                         "cpu_s_per_thread_per_megapixel": round(cpu / args.threads / mp, 3),
                         "s_per_megapixel_at_model_mpp": round(total / model_mp, 3)})
    print(f"tissue-compartments on CPU, {args.threads} threads ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f}); aim < {AIM_S_PER_MP:g} s/MP")
    head = ("side px", "µm/px", "MP", "MP@1µm", "network s", "outputs s", "total s", "CPU s", "s/MP",
            "CPU s/thr/MP", "s/MP@1µm")
    print(" | ".join(f"{h:>12}" for h in head))
    for r in rows:
        print(" | ".join(f"{v:>12}" for v in (r["side_px"], r["mpp"], r["megapixels"], r["megapixels_at_model_mpp"],
                                              r["network_s"], r["outputs_s"], r["total_s"], r["cpu_s"],
                                              r["s_per_megapixel"], r["cpu_s_per_thread_per_megapixel"],
                                              r["s_per_megapixel_at_model_mpp"])))
    if args.json:
        record = {"threads": args.threads, "device": "cpu", "load_average": round(os.getloadavg()[0], 2),
                  "aim_s_per_megapixel": AIM_S_PER_MP, "rows": rows,
                  "command": "python benchmarks/bench_compartments.py " + " ".join(argv or sys.argv[1:])}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
