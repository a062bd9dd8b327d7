"""``python -m core.generator``: estimate the H&E colours, or write a sample section."""

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
    p.add_argument("--sample", help="write a sample section: RECIPE:SEED:OUT.png")
    args = p.parse_args(argv)
    if args.estimate_he:
        print(json.dumps(estimate_he_colours(args.estimate_he), indent=1))
    if args.sample:
        from PIL import Image

        key, seed, out = args.sample.split(":", 2)
        s = generate(key, (500, 500), int(seed))
        row = np.concatenate([s.noisy, s.clean, np.repeat(s.mask[..., None], 3, 2)], axis=1)
        Image.fromarray((row * 255 + 0.5).astype(np.uint8)).save(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
