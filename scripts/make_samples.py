"""Build the bundled CD3 mosaic sample from held-out (validation) patches.

Usage: python scripts/make_samples.py  (writes samples/cd3-ihc-mosaic.tif and its truth JSON)
"""

import json
from pathlib import Path

import tifffile

from core.evaluation.datasets import cd3_patch_table
from core.evaluation.mosaic import build_mosaic

OUT = Path(__file__).resolve().parent.parent / "samples"
MPP = 0.2


def main() -> None:
    table = cd3_patch_table()
    mosaic = build_mosaic(table[table.split == "validation"], 10, 14, seed=2026)
    OUT.mkdir(exist_ok=True)
    # XResolution in pixels per centimetre: 1e4 / mpp, so readers recover 0.2 µm/px.
    tifffile.imwrite(
        OUT / "cd3-ihc-mosaic.tif", mosaic.pixels, photometric="rgb", compression="zlib",
        resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER",
    )
    truth = {"mpp": MPP, "positive_xy_px": mosaic.positive_xy.round(2).tolist(),
             "source": "validation split of shared/data/cd3-ihc-gastric, seed 2026, 10 x 14 tiles"}
    (OUT / "cd3-ihc-mosaic.truth.json").write_text(json.dumps(truth))


if __name__ == "__main__":
    main()
