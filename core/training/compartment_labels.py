"""Compartment labels from real images: weak tumour / stroma masks from classed cell points, real necrosis masks, glass.

No data set in ``../shared/data`` has tissue-compartment masks. Three kinds of real label are
made here for CD-UNET (``tissue-compartments``), each with its limits, all at the model's
1.0 µm/px and as uint8 label maps whose values are in :data:`LABEL_SETS`:

**Weak tumour / stroma labels** (:func:`weak_compartment_labels`) from the classed nucleus
points of the three H&E sets (he-crc-cell-points, he-brca-m2c-points, he-consep-tiles; read by
:mod:`core.evaluation.he_sources`). The rule, for every pixel: count the annotated *tumour*
nuclei (epithelial / tumour) n_t and *stromal* nuclei (fibroblast / stromal / spindle) n_s
whose centres lie within ``radius_um`` (default 20 µm, two to three cell diameters). The pixel
is **tumour** when n_t >= ``min_cells`` (3) and n_t >= ``purity`` (0.75) (n_t + n_s), **stroma**
when n_s >= ``min_cells`` and n_s >= ``purity`` (n_t + n_s), and **unknown** (ignored by the
loss, :data:`IGNORE`) otherwise. Immune and other nuclei do not vote: lymphocytes sit in both
compartments.

Limits of the rule: boundaries are only known to about ``radius_um``, so a thin stromal strand
between nests, or a single tumour cell in stroma, stays unknown or takes its neighbours' label;
areas without annotated nuclei (lumina, fat, necrosis, dense lymphoid tissue) are unknown;
"epithelial" in the colorectal sets includes non-malignant epithelium (normal crypts become
"tumour") and "fibroblast" / "spindle" includes smooth muscle and endothelium; annotations
that skip nuclei leave holes; nothing is labelled necrosis. They teach where tumour and stroma
are, not their exact borders, and they are evaluated the same way (share of annotated tumour
cells in predicted tumour, stromal cells in predicted stroma), which does not depend on the
rule.

**Glass** (:func:`glass_mask`): pixels whose optical density summed over R, G, B, smoothed
over 2 µm, is below 0.15 (the unstained threshold of Macenko et al.), in connected areas of
at least 150 µm² (smaller gaps between cells keep their label). Glass overrides the weak
labels: a white gland lumen is background, as on the synthetic sections.

**Real necrosis** (:func:`necrosis_fields`): the 20 TCGA patches of he-necrosis-tcga with
their necrosis masks (label 3); the rest of a patch is **not necrosis** (:data:`NOT_NECROSIS`,
a partial label: background, tumour or stroma; the loss is -log of their summed probability),
glass inside it background. The patches are heavily overlapping crops of one or two necrotic
regions (their README): their figures are a check of the class, not an accuracy claim. Their
pixel size is not given; they are read as TCGA 20x, 0.5 µm/px.

Splits: the weak-label fields keep each source's ``fit`` / ``tune`` / ``validation`` parts of
:mod:`core.evaluation.he_sources` (CoNSeP by source image); the necrosis patches keep their
``train`` / ``validation`` folders. Nothing in a validation split is trained or tuned on.

CoNSeP's 256 px tiles (0.25 µm/px; 16 overlapping tiles per 1000 x 1000 image) are put back
together before labelling (:func:`consep_images`): tile positions come from the nuclei two
tiles share (their instance ids are those of the whole image), so the rule sees whole fields
of about 250 x 250 µm rather than 64 µm tiles.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.generator.compartments import COMPARTMENT_LABELS, COMPARTMENTS

#: Pixel size of every label map here and of the network's input (µm/px; CD-UNET §2: 10x).
MODEL_MPP = COMPARTMENTS.mpp
#: Unknown pixel: no loss (the ignore index of the cross-entropy).
IGNORE = 255
#: Partial label "not necrosis": background, tumour or stroma.
NOT_NECROSIS = 4
#: The classes each label value allows (a set for a partial label; all four for unknown).
LABEL_SETS: dict[int, tuple[int, ...]] = {0: (0,), 1: (1,), 2: (2,), 3: (3,), NOT_NECROSIS: (0, 1, 2), IGNORE: (0, 1, 2, 3)}
#: Weak-label rule defaults (module docstring).
WEAK_RADIUS_UM = 20.0
WEAK_MIN_CELLS = 3
WEAK_PURITY = 0.75
#: Glass: OD summed over channels below this, after smoothing over GLASS_SMOOTH_UM, in areas >= GLASS_MIN_AREA_UM2.
GLASS_OD_SUM = 0.15
GLASS_SMOOTH_UM = 2.0
GLASS_MIN_AREA_UM2 = 150.0
#: Assumed pixel size of the he-necrosis-tcga patches (TCGA 20x; not stated by the data set).
NECROSIS_MPP = 0.5
DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"
#: Roles of the he_sources class indices (epithelial, inflammatory, fibroblast, other; -1 none).
_ROLE_OF_CLASS = {0: "tumour", 1: "immune", 2: "stroma", 3: "other", -1: "unknown"}


@dataclass
class LabelledField:
    """One real field with compartment labels at :data:`MODEL_MPP`.

    Attributes
    ----------
    name : str
    source : str
        ``crc``, ``brca-m2c``, ``consep`` or ``necrosis``.
    split : str
    pixels : (H, W, 3) uint8 RGB at 1.0 µm/px
    labels : (H, W) uint8, values in :data:`LABEL_SETS`
    points_xy : (N, 2) float64 x, y in pixels of ``pixels`` (empty for necrosis)
    roles : (N,) str: tumour, immune, stroma, other or unknown
    """

    name: str
    source: str
    split: str
    pixels: np.ndarray
    labels: np.ndarray
    points_xy: np.ndarray
    roles: np.ndarray


def glass_mask(rgb: np.ndarray, mpp: float, od_threshold: float = GLASS_OD_SUM, smooth_um: float = GLASS_SMOOTH_UM,
               min_area_um2: float = GLASS_MIN_AREA_UM2) -> np.ndarray:
    """Glass (no tissue) of a brightfield image by an optical-density threshold.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 RGB
    mpp : float > 0, µm/px
    od_threshold : float, summed OD below which a (smoothed) pixel is glass
    smooth_um : float >= 0, Gaussian smoothing of the OD, µm
    min_area_um2 : float >= 0, smaller glass areas are not glass

    Returns
    -------
    (H, W) bool

    Raises
    ------
    InputError
        If ``rgb`` is not (H, W, 3) or ``mpp`` is not positive.
    """
    from scipy import ndimage
    from skimage.morphology import remove_small_objects

    from core.generator.stains import rgb_to_od

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"glass_mask needs an (H, W, 3) RGB image, got shape {rgb.shape}")
    if not mpp or mpp <= 0:
        raise InputError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
    od = rgb_to_od(rgb).sum(axis=-1)
    if smooth_um > 0:
        od = ndimage.gaussian_filter(od, smooth_um / mpp)
    glass = od < od_threshold
    return remove_small_objects(glass, max_size=max(int(min_area_um2 / mpp**2), 1))


def weak_compartment_labels(shape: tuple[int, int], points_xy: np.ndarray, roles: np.ndarray, mpp: float,
                            radius_um: float = WEAK_RADIUS_UM, min_cells: int = WEAK_MIN_CELLS,
                            purity: float = WEAK_PURITY) -> np.ndarray:
    """Weak tumour / stroma labels from classed nucleus points (the rule of the module docstring).

    Parameters
    ----------
    shape : (H, W) of the label map, pixels at ``mpp``
    points_xy : (N, 2) float x, y in those pixels
    roles : (N,) str; ``"tumour"`` and ``"stroma"`` vote, other roles are ignored
    mpp : float > 0, µm/px
    radius_um : float > 0, neighbourhood radius
    min_cells : int >= 1, votes needed
    purity : float in (0.5, 1], share of the votes the winning compartment needs

    Returns
    -------
    (H, W) uint8: 1 tumour, 2 stroma, :data:`IGNORE` unknown

    Raises
    ------
    InputError
        If the points and roles differ in length or a parameter is out of range.

    Example
    -------
    >>> xy = np.array([[10.0, 10], [12, 10], [10, 12], [60, 60], [62, 60], [60, 62]])
    >>> lab = weak_compartment_labels((80, 80), xy, np.array(["tumour"] * 3 + ["stroma"] * 3), 1.0, 8.0)
    >>> int(lab[10, 10]), int(lab[60, 60]), int(lab[35, 35])
    (1, 2, 255)
    """
    from core.generator.concentration import _convolve_same

    xy = np.asarray(points_xy, np.float64).reshape(-1, 2)
    roles = np.asarray(roles).astype(str)
    if len(xy) != len(roles):
        raise InputError(f"{len(xy)} points but {len(roles)} roles: give one role per point")
    if radius_um <= 0 or min_cells < 1 or not (0.5 < purity <= 1.0) or mpp <= 0:
        raise InputError(f"need radius_um > 0, min_cells >= 1, purity in (0.5, 1] and mpp > 0; got {radius_um}, "
                         f"{min_cells}, {purity}, {mpp}")
    h, w = (int(v) for v in shape)
    r = radius_um / mpp
    k = int(np.ceil(r))
    dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
    disc = (dx * dx + dy * dy <= r * r).astype(np.float64)
    counts = []
    for role in ("tumour", "stroma"):
        imp = np.zeros((h, w), np.float64)
        sel = xy[roles == role]
        ix, iy = np.round(sel[:, 0]).astype(int), np.round(sel[:, 1]).astype(int)
        ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        np.add.at(imp, (iy[ok], ix[ok]), 1.0)
        counts.append(np.rint(_convolve_same(imp, disc)) if ok.any() else imp)
    n_t, n_s = counts
    total = n_t + n_s
    out = np.full((h, w), IGNORE, np.uint8)
    out[(n_t >= min_cells) & (n_t >= purity * total)] = COMPARTMENT_LABELS["tumour"]
    out[(n_s >= min_cells) & (n_s >= purity * total)] = COMPARTMENT_LABELS["stroma"]
    return out


def field_labels(rgb: np.ndarray, points_xy: np.ndarray, roles: np.ndarray, mpp: float, **rule) -> np.ndarray:
    """Weak tumour / stroma labels with glass (:func:`glass_mask`) as background over them: (H, W) uint8."""
    labels = weak_compartment_labels(rgb.shape[:2], points_xy, roles, mpp, **rule)
    labels[glass_mask(rgb, mpp)] = COMPARTMENT_LABELS["background"]
    return labels


def _to_model_mpp(pixels: np.ndarray, xy: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample an image and its points (pixel-centre convention of core.scenarios.base) to :data:`MODEL_MPP`."""
    from core.scenarios.base import resample_to_mpp

    work = resample_to_mpp(pixels, mpp, MODEL_MPP)
    sy, sx = work.shape[0] / pixels.shape[0], work.shape[1] / pixels.shape[1]
    xy = (np.asarray(xy, np.float64).reshape(-1, 2) + 0.5) * np.array([sx, sy]) - 0.5
    return work, xy


def consep_images(split: str, data: str | Path | None = None) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """CoNSeP source images rebuilt from their tiles, at their own 0.25 µm/px.

    Tile offsets are the mean displacement of the nuclei (instance ids) two tiles share, chained
    breadth first; a tile that shares no nucleus with the others (sparse fields) takes its place
    in the tiling the shared nuclei reveal (:func:`_consep_nominal`); overlapping pixels keep the
    first tile's value; a nucleus seen in several tiles keeps its first position.

    Parameters
    ----------
    split : {"fit", "tune", "validation", "train"}, by source image (:func:`core.evaluation.he_sources.consep_image_split`)
    data : the he-consep-tiles folder (default ``../shared/data/he-consep-tiles``)

    Returns
    -------
    list of (name, (H, W, 3) uint8 RGB, (N, 2) float64 x, y px, (N,) int64 class index of
    :data:`core.evaluation.he_sources.SOURCES` ``consep`` mapping, -1 for none)

    Raises
    ------
    InputError
        For an unknown split or a missing folder.
    """
    import pandas as pd
    from PIL import Image

    from core.evaluation.he_sources import SOURCES, consep_image_split

    if split not in ("fit", "tune", "validation", "train"):
        raise InputError(f"unknown split {split!r}; choose fit, tune, validation or train")
    root = Path(data) if data else DATA_ROOT / "he-consep-tiles"
    files = sorted((root / "train").glob("train_*_*.jpg"))
    if not files:
        raise InputError(f"no CoNSeP tiles in {root / 'train'} (it lives in ../shared/data beside the checkout)")
    by_image: dict[int, list[Path]] = {}
    for f in files:
        n = int(f.stem.split("_")[1])
        s = consep_image_split(n)
        if s == split or (split == "train" and s != "validation"):
            by_image.setdefault(n, []).append(f)
    mapping = SOURCES["consep"][2]
    out = []
    for n, tiles in sorted(by_image.items()):
        tiles = sorted(tiles, key=lambda p: int(p.stem.split("_")[2]))
        pts = [pd.read_csv(t.with_name(t.stem + ".points.csv")) for t in tiles]
        ks = [int(t.stem.split("_")[2]) for t in tiles]
        pos: dict[int, np.ndarray] = {}
        for start in range(len(tiles)):  # each group of tiles linked by shared nuclei, from its first tile
            if start in pos:
                continue
            pos[start] = _consep_nominal(ks[start])
            queue = [start]
            while queue:
                i = queue.pop(0)
                for j in range(len(tiles)):
                    if j in pos:
                        continue
                    m = pts[i].merge(pts[j], on="instance_id")
                    if len(m):
                        pos[j] = pos[i] + np.array([(m.x_px_x - m.x_px_y).mean(), (m.y_px_x - m.y_px_y).mean()])
                        queue.append(j)
        placed = sorted(pos)
        origin = np.min([pos[j] for j in placed], axis=0)
        offs = {j: np.round(pos[j] - origin).astype(int) for j in placed}
        imgs = {j: np.asarray(Image.open(tiles[j]).convert("RGB")) for j in placed}
        hh = max(offs[j][1] + imgs[j].shape[0] for j in placed)
        ww = max(offs[j][0] + imgs[j].shape[1] for j in placed)
        canvas = np.zeros((hh, ww, 3), np.uint8)
        filled = np.zeros((hh, ww), bool)
        seen: dict[int, tuple[float, float, int]] = {}
        for j in placed:
            x0, y0 = offs[j]
            th, tw = imgs[j].shape[:2]
            free = ~filled[y0 : y0 + th, x0 : x0 + tw]
            canvas[y0 : y0 + th, x0 : x0 + tw][free] = imgs[j][free]
            filled[y0 : y0 + th, x0 : x0 + tw] = True
            for row in pts[j].itertuples(index=False):
                if row.instance_id not in seen:
                    seen[row.instance_id] = (row.x_px + x0, row.y_px + y0, mapping.get(row.cell_class, -1))
        arr = np.array(list(seen.values()), np.float64).reshape(-1, 3)
        out.append((f"consep_{n}", canvas, arr[:, :2], arr[:, 2].astype(np.int64)))
    return out


#: Tile origins along each axis (px at 0.25 µm/px), read off the nuclei neighbouring tiles share.
_CONSEP_STEPS = (0, 246, 492, 719)


def _consep_nominal(k: int) -> np.ndarray:
    """(2,) float x, y origin of CoNSeP tile ``k`` (0-15) in its image: tiles 0-8 fill a 3 x 3 grid row by
    row, 9-11 the fourth row, 12-14 the fourth column, 15 the corner."""
    col, row = (k % 3, k // 3) if k < 9 else (k - 9, 3) if k < 12 else (3, k - 12) if k < 15 else (3, 3)
    return np.array([_CONSEP_STEPS[col], _CONSEP_STEPS[row]], np.float64)


def weak_label_fields(source: str, split: str, data: str | Path | None = None, **rule) -> list[LabelledField]:
    """The fields of one H&E source and split at 1.0 µm/px with weak tumour / stroma labels and glass.

    Parameters
    ----------
    source : {"crc", "brca-m2c", "consep"}
    split : {"fit", "tune", "validation", "train"}
    data : that source's data folder (default under ``../shared/data``)
    **rule : ``radius_um``, ``min_cells``, ``purity`` of :func:`weak_compartment_labels`

    Returns
    -------
    list of LabelledField

    Raises
    ------
    InputError
        For an unknown source or split, or missing data.
    """
    from core.evaluation.he_sources import SOURCES, read_source_split

    if source not in SOURCES:
        raise InputError(f"unknown H&E source {source!r}; choose one of {', '.join(SOURCES)}")
    items = []
    if source == "consep":
        for name, rgb, xy, cls in consep_images(split, data):
            items.append((name, rgb, xy, cls, SOURCES["consep"][1]))
    else:
        from core.evaluation.datasets_he import HE_MPP

        for im in read_source_split(source, split, data):  # already at 0.55 µm/px
            items.append((im.name, im.pixels, im.points_xy, im.labels, HE_MPP))
    out = []
    for name, rgb, xy, cls, mpp in items:
        work, wxy = _to_model_mpp(rgb, xy, mpp)
        roles = np.array([_ROLE_OF_CLASS.get(int(c), "unknown") for c in cls], dtype=object)
        out.append(LabelledField(name, source, split, work, field_labels(work, wxy, roles, MODEL_MPP, **rule), wxy,
                                 roles))
    return out


def necrosis_fields(split: str, data: str | Path | None = None) -> list[LabelledField]:
    """The he-necrosis-tcga patches at 1.0 µm/px: necrosis 3, glass 0, the rest :data:`NOT_NECROSIS`.

    Parameters
    ----------
    split : {"train", "validation"}
        The data set's own folders (``small_nec_cnn_train_data``, ``small_nec_cnn_val_data``).
    data : the he-necrosis-tcga folder (default under ``../shared/data``)

    Returns
    -------
    list of LabelledField (no points)

    Raises
    ------
    InputError
        For an unknown split or missing data.
    """
    from PIL import Image

    folder = {"train": "small_nec_cnn_train_data", "validation": "small_nec_cnn_val_data"}.get(split)
    if folder is None:
        raise InputError(f"unknown necrosis split {split!r}; choose train or validation")
    root = (Path(data) if data else DATA_ROOT / "he-necrosis-tcga") / folder
    files = sorted(root.glob("image_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise InputError(f"no image_N.png in {root} (it lives in ../shared/data beside the checkout)")
    out = []
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        mask = np.asarray(Image.open(f.with_name(f.name.replace("image_", "mask_"))).convert("L")) > 127
        work, _ = _to_model_mpp(rgb, np.zeros((0, 2)), NECROSIS_MPP)
        m, _ = _to_model_mpp(mask[..., None].astype(np.uint8) * 255, np.zeros((0, 2)), NECROSIS_MPP)
        labels = np.full(work.shape[:2], NOT_NECROSIS, np.uint8)
        labels[glass_mask(work, MODEL_MPP)] = COMPARTMENT_LABELS["background"]
        labels[m[..., 0] > 127] = COMPARTMENT_LABELS["necrosis"]
        out.append(LabelledField(f.stem, "necrosis", split, work, labels, np.zeros((0, 2)), np.zeros(0, dtype=object)))
    return out


def label_digest(fields: list[LabelledField]) -> str:
    """Short SHA-256 of the fields' names and label maps (recorded with a training run)."""
    d = hashlib.sha256()
    for f in fields:
        d.update(f.name.encode())
        d.update(np.ascontiguousarray(f.labels).tobytes())
    return d.hexdigest()[:16]


def label_shares(fields: list[LabelledField]) -> dict:
    """Share of each label value over the fields' pixels.

    Returns
    -------
    dict: ``background``, ``tumour``, ``stroma``, ``necrosis``, ``not_necrosis``, ``unknown`` → share in [0, 1]
    """
    counts = np.zeros(256, np.int64)
    for f in fields:
        counts += np.bincount(f.labels.ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    names = {0: "background", 1: "tumour", 2: "stroma", 3: "necrosis", NOT_NECROSIS: "not_necrosis", IGNORE: "unknown"}
    return {v: round(float(counts[k]) / total, 4) for k, v in names.items()}
