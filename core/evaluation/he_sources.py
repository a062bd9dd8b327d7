"""The three labelled H&E sources of he-til, read at the model's 0.55 µm/px with classes mapped.

=============  ===========================  ==========  ================================================
source         data set (``../shared/data``)  mpp         classes → model classes (role)
=============  ===========================  ==========  ================================================
``crc``        he-crc-cell-points           0.55        epithelial (tumour), inflammatory (immune),
               (CRCHistoPhenotypes, one                 fibroblast (stroma), other; some nuclei unclassed
               lab, colorectal, 20x)
``brca-m2c``   he-brca-m2c-points           ~0.5        tumour → epithelial, lymphocyte → inflammatory,
               (TCGA breast, many centres)              stromal → fibroblast; no "other" class
``consep``     he-consep-tiles              0.25        epithelial → epithelial, inflammatory →
               (CoNSeP, UHCW colorectal,                inflammatory, spindle → fibroblast, other → other
               40x, 256 px tiles)
=============  ===========================  ==========  ================================================

Every image is resampled to 0.55 µm/px (linear, Gaussian anti-aliasing when shrinking:
:func:`core.scenarios.base.resample_to_mpp`, the path the scenario takes at run time) and
its points with the pixel-centre convention of :func:`core.scenarios.base.to_image_xy`.
``annotated`` lists the model classes a source annotates; the training loss leaves the
others out for that source's images (BRCA-M2C never says "other").

Splits: ``validation`` is each source's own held-out part (CRC and BRCA-M2C: the authors'
``validation/``; CoNSeP: the tiles of 6 of its 27 source images, chosen by SHA-1 of the
image number, since tiles of one image overlap). ``tune`` (threshold and stage choice) and
``fit`` partition the rest, again by source image for CoNSeP. Nothing in ``validation`` is
trained or tuned on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.evaluation.datasets_he import HE_CLASSES, HE_MPP, HEImage, read_he_split

DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"
#: Source key → (folder under ``../shared/data``, its mpp, its class name → model class index).
SOURCES = {
    "crc": ("he-crc-cell-points", HE_MPP, {c: i for i, c in enumerate(HE_CLASSES)}),
    "brca-m2c": ("he-brca-m2c-points", 0.5, {"tumour": 0, "lymphocyte": 1, "stromal": 2}),
    "consep": ("he-consep-tiles", 0.25, {"epithelial": 0, "inflammatory": 1, "spindle": 2, "other": 3}),
}
HE_SOURCES = tuple(SOURCES)
#: CoNSeP source images held out for validation / tuning (shares of 27, by SHA-1 of "consep-<n>").
CONSEP_VALIDATION_SHARE = 0.22
CONSEP_TUNE_SHARE = 0.15
#: Share of BRCA-M2C train/ patches held out as its tuning set.
BRCA_TUNE_SHARE = 0.12
SPLITS = ("fit", "tune", "validation", "train")


def _hash01(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0x100000000


def annotated_classes(source: str) -> tuple[int, ...]:
    """Model class indices the source annotates (the loss ignores the others for its images)."""
    return tuple(sorted(set(SOURCES[source][2].values())))


def _resampled(name: str, pixels: np.ndarray, xy: np.ndarray, labels: np.ndarray, mpp: float, source: str) -> HEImage:
    from core.scenarios.base import resample_to_mpp, to_image_xy

    work = resample_to_mpp(pixels, mpp, HE_MPP)
    if work.shape[:2] != pixels.shape[:2]:
        # inverse of to_image_xy: from the file's pixels to the resampled image's pixels
        sy, sx = work.shape[0] / pixels.shape[0], work.shape[1] / pixels.shape[1]
        xy = (np.asarray(xy, np.float64) + 0.5) * np.array([sx, sy]) - 0.5
        xy = to_image_xy(xy, work.shape[:2], work.shape[:2])
    return HEImage(name, work, np.asarray(xy, np.float64).reshape(-1, 2), np.asarray(labels, np.int64), source,
                   annotated_classes(source))


def _brca_files(split: str, root: Path) -> list[Path]:
    base = root / ("validation" if split == "validation" else "train")
    files = sorted(base.glob("*.png"))
    if split in ("fit", "tune"):
        files = [f for f in files if (_hash01("brca-" + f.stem) < BRCA_TUNE_SHARE) == (split == "tune")]
    return files


def _read_brca(path: Path) -> HEImage:
    import pandas as pd
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"))
    table = pd.read_csv(path.with_suffix(".points.csv"))
    mapping = SOURCES["brca-m2c"][2]
    unknown = set(table["cell_class"]) - set(mapping)
    if unknown:
        raise InputError(f"{path.name}: unknown BRCA-M2C classes {sorted(unknown)}")
    labels = table["cell_class"].map(mapping).to_numpy()
    return _resampled(path.stem, pixels, table[["x_px", "y_px"]].to_numpy(float), labels, SOURCES["brca-m2c"][1],
                      "brca-m2c")


def consep_image_split(image_number: int) -> str:
    """``validation``, ``tune`` or ``fit`` for CoNSeP source image ``image_number`` (all its tiles together)."""
    u = _hash01(f"consep-{image_number}")
    if u < CONSEP_VALIDATION_SHARE:
        return "validation"
    return "tune" if u < CONSEP_VALIDATION_SHARE + CONSEP_TUNE_SHARE else "fit"


def _consep_files(split: str, root: Path) -> list[Path]:
    files = sorted((root / "train").glob("train_*_*.jpg"), key=lambda p: tuple(int(v) for v in p.stem.split("_")[1:]))
    if split == "train":
        return [f for f in files if consep_image_split(int(f.stem.split("_")[1])) != "validation"]
    return [f for f in files if consep_image_split(int(f.stem.split("_")[1])) == split]


def _read_consep(path: Path) -> HEImage:
    import pandas as pd
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"))
    table = pd.read_csv(path.with_name(path.stem + ".points.csv"))
    mapping = SOURCES["consep"][2]
    labels = table["cell_class"].map(mapping).fillna(-1).astype(np.int64).to_numpy()
    return _resampled(path.stem, pixels, table[["x_px", "y_px"]].to_numpy(float), labels, SOURCES["consep"][1], "consep")


def read_source_split(source: str, split: str, data: str | Path | None = None) -> list[HEImage]:
    """The images of one source and split at 0.55 µm/px, classes mapped to the model's.

    Parameters
    ----------
    source : one of :data:`HE_SOURCES`
    split : {"fit", "tune", "validation", "train"} (``train`` = fit + tune)
    data : folder of that source's data set (default ``../shared/data/<folder>``)

    Returns
    -------
    list of HEImage (``source`` and ``annotated`` set); CoNSeP tiles are 256 px at 0.25 µm/px,
    so about 116 px here.

    Raises
    ------
    InputError
        For an unknown source or split, or a missing data folder.
    """
    if source not in SOURCES:
        raise InputError(f"unknown H&E source {source!r}; choose one of {', '.join(HE_SOURCES)}")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    folder, _, _ = SOURCES[source]
    root = Path(data) if data else DATA_ROOT / folder
    if not root.is_dir():
        raise InputError(f"H&E data folder {root} is missing (it lives in ../shared/data beside the checkout)")
    if source == "crc":
        images = read_he_split(split, root)
        for im in images:
            im.source, im.annotated = "crc", annotated_classes("crc")
        return images
    if source == "brca-m2c":
        return [_read_brca(f) for f in _brca_files(split, root)]
    return [_read_consep(f) for f in _consep_files(split, root)]


def mosaic_tiles(images: list[HEImage], per_side: int = 2) -> list[HEImage]:
    """Small tiles of one source image laid side by side (training crops need 160 px; a CoNSeP tile is ~116 px).

    Tiles are grouped by their source image (name ``train_I_K``) in order and put
    ``per_side`` x ``per_side`` into one mosaic, their points shifted with them; a group that
    does not fill a mosaic is dropped. Tile borders become seams inside the mosaic, as a
    field's own tissue edges are; no nucleus is moved or relabelled.
    """
    groups: dict[str, list[HEImage]] = {}
    for im in images:
        groups.setdefault(im.name.rsplit("_", 1)[0], []).append(im)
    out = []
    n = per_side * per_side
    for key, tiles in groups.items():
        for start in range(0, len(tiles) - n + 1, n):
            part = tiles[start : start + n]
            th = min(t.pixels.shape[0] for t in part)
            tw = min(t.pixels.shape[1] for t in part)
            canvas = np.zeros((th * per_side, tw * per_side, 3), np.uint8)
            xy, lab = [], []
            for k, t in enumerate(part):
                r, c = divmod(k, per_side)
                canvas[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = t.pixels[:th, :tw]
                keep = (t.points_xy[:, 0] < tw - 0.5) & (t.points_xy[:, 1] < th - 0.5)
                xy.append(t.points_xy[keep] + [c * tw, r * th])
                lab.append(t.labels[keep])
            out.append(HEImage(f"{key}_mosaic{start // n}", canvas, np.concatenate(xy), np.concatenate(lab),
                               part[0].source, part[0].annotated))
    return out
