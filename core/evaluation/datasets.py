"""Reader of the CD3 IHC gastric patches, one of the real labelled data sets in ``../shared/data/``.

Nothing is downloaded: these functions only read folders that already exist.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.errors import InputError

#: Default location of the CD3 IHC gastric patches, relative to the repository root.
CD3_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cd3-ihc-gastric"
CD3_FOLDERS = {"positive": 1, "negative": 0, "background": 0}
#: Fractions of the deterministic split: train / tune (epoch and threshold choice) / validation (reported).
SPLIT_FRACTIONS = {"train": 0.70, "tune": 0.10, "validation": 0.20}
#: Side, in source pixels, of the blocks that keep neighbouring (overlapping) patches in one split.
SPLIT_BLOCK_PX = 512


def cd3_patch_table(data_dir: str | Path = CD3_DATA_DIR) -> pd.DataFrame:
    """List the CD3 patches with their label and deterministic split.

    The split keeps patches from the same 512 x 512 px block of the same source
    micrograph together (their boxes overlap, so a random split would leak
    pixels between train and validation). Patches without metadata form their own
    group. A group's split is chosen from the SHA-1 of its key, so it does not
    depend on file order or on a random generator.

    Returns
    -------
    pandas.DataFrame
        Columns ``path`` (str), ``id`` (int), ``folder`` (positive / negative /
        background), ``label`` (1 = CD3+ lymphocyte, 0 = not), ``group`` (str, the
        source block the split is drawn by: ``image_name/bx/by`` or ``id/<id>``) and
        ``split`` (train / tune / validation).

    Raises
    ------
    InputError
        If the folder does not hold the expected sub-folders.
    """
    root = Path(data_dir)
    rows = []
    for folder, label in CD3_FOLDERS.items():
        sub = root / folder
        if not sub.is_dir():
            raise InputError(f"{sub} is missing: expected the CD3 data set with {sorted(CD3_FOLDERS)} folders")
        for path in sorted(sub.glob("*.jpg")):
            rows.append({"path": str(path), "id": int(path.stem.split("_")[-1]), "folder": folder, "label": label})
    table = pd.DataFrame(rows)
    meta_path = root / "metadata.csv"
    groups = {}
    if meta_path.is_file():
        meta = pd.read_csv(meta_path)
        for rec in meta.itertuples():
            bx = int(min(rec.pixel_north_east_x, rec.pixel_south_west_x)) // SPLIT_BLOCK_PX
            by = int(min(rec.pixel_north_east_y, rec.pixel_south_west_y)) // SPLIT_BLOCK_PX
            groups[int(rec.id)] = f"{rec.image_name}/{bx}/{by}"
    table["group"] = [groups.get(i, f"id/{i}") for i in table["id"]]
    table["split"] = [_split_of(k) for k in table["group"]]
    return table


def _split_of(group_key: str) -> str:
    u = int(hashlib.sha1(group_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name, frac in SPLIT_FRACTIONS.items():
        edge += frac
        if u < edge:
            return name
    return "validation"


def read_patches(paths) -> np.ndarray:
    """Read RGB patches into one (N, H, W, 3) uint8 array (all must share a size)."""
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return np.stack(arrays) if arrays else np.zeros((0, 70, 70, 3), np.uint8)
