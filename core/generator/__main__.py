"""``python -m core.generator``: estimate the H&E colours or the stain statistics, or write a sample section."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.generator.colours import estimate_he_colours
from core.generator.synthesis import generate


def main(argv=None) -> int:
    """``python -m core.generator --estimate-he [DIR]`` prints the H&E colour estimate as JSON."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m core.generator", description="Synthetic tissue generator utilities")
    p.add_argument("--estimate-he", nargs="?", const=str(Path(__file__).resolve().parents[3] / "shared/data/he-crc-cell-points/train"),
                   help="estimate H&E colours from he-crc-cell-points/train")
    p.add_argument("--estimate-stains", nargs="?", const=str(Path(__file__).resolve().parents[3] / "shared/data"),
                   help="estimate the compartment recipe's stain vectors and concentrations from ../shared/data")
    p.add_argument("--sample", help="write a sample section: RECIPE:SEED:OUT.png")
    p.add_argument("--sample-compartments", help="write a compartment section and its labels: STAIN:SEED:OUT.png")
    args = p.parse_args(argv)
    if args.estimate_he:
        print(json.dumps(estimate_he_colours(args.estimate_he), indent=1))
    if args.estimate_stains:
        from core.generator.stains import estimate_stain_statistics

        print(json.dumps(estimate_stain_statistics(args.estimate_stains), indent=1))
    if args.sample_compartments:
        from PIL import Image

        from core.generator.compartments import generate_compartments

        stain, seed, out = args.sample_compartments.split(":", 2)
        s = generate_compartments((384, 384), int(seed), stain=stain or None)
        lut = np.array([[255, 255, 255], [200, 0, 0], [150, 200, 150], [224, 168, 0]], np.uint8)
        Image.fromarray(np.concatenate([s.image, lut[s.labels]], axis=1)).save(out)
    if args.sample:
        from PIL import Image

        key, seed, out = args.sample.split(":", 2)
        s = generate(key, (500, 500), int(seed))
        row = np.concatenate([s.noisy, s.clean, np.repeat(s.mask[..., None], 3, 2)], axis=1)
        Image.fromarray((row * 255 + 0.5).astype(np.uint8)).save(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
