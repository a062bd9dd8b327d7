"""Reader of the H&E colorectal nuclei with class points (CRCHistoPhenotypes).

Data set layout (``../shared/data/he-crc-cell-points/README.md``): ``{train,validation}/imgN/``
holds ``imgN.png`` ((500, 500, 3) uint8 RGB, about 0.55 µm/px) and MATLAB files whose key
``detection`` is an (N, 2) float array of nucleus centres as x, y in pixels:
``imgN_detection.mat`` (every nucleus) and ``imgN_{epithelial,inflammatory,fibroblast,others}.mat``
(the nuclei that also carry that class). Not every nucleus has a class.

Also builds the training targets of S-DRDIN §2.2 (disks around each dot).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError

HE_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "he-crc-cell-points"
HE_MPP = 0.55
#: Class names in channel order, their file stems, and the roles they map to.
HE_CLASSES = ("epithelial", "inflammatory", "fibroblast", "other")
HE_FILE_STEMS = ("epithelial", "inflammatory", "fibroblast", "others")
HE_ROLES = ("tumour", "immune", "stroma", "other")
#: Label of a pixel of a nucleus without a class in the classification target (ignored by the loss).
IGNORE_LABEL = -1
#: Share of train/ images held out as the tuning set (threshold, checkpoint choice).
TUNE_FRACTION = 0.15


@dataclass
class HEImage:
    """One annotated field.

    Attributes
    ----------
    name : str
        Folder name, e.g. ``"img1"``.
    pixels : (H, W, 3) uint8 RGB
    points_xy : (N, 2) float64 x, y in pixels: every annotated nucleus
    labels : (N,) int64
        Class index into :data:`HE_CLASSES` per nucleus, ``-1`` where it has none.
    source : str
        Which data set it comes from (:data:`core.evaluation.he_sources.HE_SOURCES`).
    annotated : tuple of int
        Class indices its source annotates (the loss leaves the others out).
    """

    name: str
    pixels: np.ndarray
    points_xy: np.ndarray
    labels: np.ndarray
    source: str = "crc"
    annotated: tuple[int, ...] = (0, 1, 2, 3)


def _load_points(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        pts = loadmat(str(path))["detection"]
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"could not read nucleus points from {path} ({err}); expected a .mat file with key 'detection'") from err
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def read_he_image(folder: str | Path) -> HEImage:
    """Read one ``imgN/`` folder.

    Each class point is assigned to the nearest detection point within 2 px (the class
    files repeat the detection coordinates); a class point with no such partner is added
    as a nucleus of its own.

    Raises
    ------
    InputError
        If the image or its ``_detection.mat`` is missing.
    """
    from PIL import Image
    from scipy.spatial import cKDTree

    folder = Path(folder)
    name = folder.name
    png = folder / f"{name}.png"
    if not png.is_file():
        raise InputError(f"{png} is missing: each imgN/ folder must hold imgN.png")
    pixels = np.asarray(Image.open(png).convert("RGB"))
    det = _load_points(folder / f"{name}_detection.mat")
    labels = np.full(len(det), -1, dtype=np.int64)
    extra_xy, extra_lab = [], []
    tree = cKDTree(det) if len(det) else None
    for k, stem in enumerate(HE_FILE_STEMS):
        f = folder / f"{name}_{stem}.mat"
        if not f.is_file():
            continue
        for p in _load_points(f):
            if tree is not None:
                d, j = tree.query(p)
                if d <= 2.0:
                    labels[j] = k
                    continue
            extra_xy.append(p)
            extra_lab.append(k)
    if extra_xy:
        det = np.concatenate([det, np.asarray(extra_xy)])
        labels = np.concatenate([labels, np.asarray(extra_lab, dtype=np.int64)])
    return HEImage(name, pixels, det, labels)


def he_folders(split: str, data: str | Path | None = None) -> list[Path]:
    """Image folders of one split.

    Parameters
    ----------
    split : {"train", "validation", "fit", "tune"}
        ``fit`` and ``tune`` partition ``train/``: ``tune`` is the held-out tuning set
        (:data:`TUNE_FRACTION` of the images, chosen by SHA-1 of the folder name), ``fit``
        the rest. Validation is never used for training or tuning.

    Raises
    ------
    InputError
        For an unknown split or a missing data folder.
    """
    root = Path(data) if data else HE_DATA_DIR
    if split not in ("train", "validation", "fit", "tune"):
        raise InputError(f"unknown split {split!r}; choose train, fit, tune or validation")
    base = root / ("validation" if split == "validation" else "train")
    if not base.is_dir():
        raise InputError(f"H&E data folder {base} is missing; pass --data pointing at he-crc-cell-points/")
    folders = sorted((p for p in base.iterdir() if p.is_dir() and p.name.startswith("img")), key=lambda p: int(p.name[3:]))
    if split in ("fit", "tune"):
        is_tune = [_tune_hash(p.name) < TUNE_FRACTION for p in folders]
        folders = [p for p, t in zip(folders, is_tune) if t == (split == "tune")]
    return folders


def _tune_hash(name: str) -> float:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0x100000000


def read_he_split(split: str, data: str | Path | None = None) -> list[HEImage]:
    """All images of a split (see :func:`he_folders`)."""
    return [read_he_image(f) for f in he_folders(split, data)]


def disk_targets(shape: tuple[int, int], points_xy: np.ndarray, labels: np.ndarray, radius_px: float,
                 n_classes: int = len(HE_CLASSES)) -> tuple[np.ndarray, np.ndarray]:
    """Classification and detection targets of S-DRDIN §2.2.

    A disk of ``radius_px`` around each dot. The classification target is the class index
    (channel of M_c) inside the disks, ``n_classes`` (the background channel, the inversion of
    M_d) outside them, and :data:`IGNORE_LABEL` inside disks of nuclei without a class. The
    detection target M_d is the channel-wise maximum of the disks: 1 inside any disk.
    Where disks of different nuclei overlap, the later point wins the class.

    Parameters
    ----------
    shape : (H, W)
    points_xy : (N, 2) float x, y in pixels
    labels : (N,) int in [-1, n_classes)
    radius_px : float

    Returns
    -------
    class_target : (H, W) int64 in {-1, 0, ..., n_classes}
    detection_target : (H, W) float32 in {0, 1}
    """
    h, w = shape
    cls = np.full((h, w), n_classes, dtype=np.int64)
    det = np.zeros((h, w), dtype=np.float32)
    r = int(np.ceil(radius_px))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    for (x, y), lab in zip(np.asarray(points_xy).reshape(-1, 2), labels):
        cx, cy = int(round(x)), int(round(y))
        inside = (dx + cx - x) ** 2 + (dy + cy - y) ** 2 <= radius_px**2
        yy, xx = dy[inside] + cy, dx[inside] + cx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        yy, xx = yy[ok], xx[ok]
        det[yy, xx] = 1.0
        cls[yy, xx] = lab if lab >= 0 else IGNORE_LABEL
    return cls, det
