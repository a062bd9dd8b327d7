"""Hard negatives for the CD3 CNN: windows the current model calls a CD3+ lymphocyte that are not one.

Usage::

    python -m core.training.cd3_negatives --weights weights/cd3-ihc-cnn-v1.safetensors \
        --out runs/cd3-hard-negatives.csv

Hard-negative mining (a departure from the gastric CD3 paper, whose negatives are the
hand-picked patches of §IV.A): the model's false positives on windows that hold no CD3+
lymphocyte at their centre, from four sources, all labelled 0 (not a lymphocyte):

``train-nonpositive-mosaic`` (a)
    Every negative (DAB-stained non-lymphocyte) and background (hematoxylin-only) patch of
    the **training** split, tiled into mosaics (seeded arrangements), slid over densely as
    the scenario does: every window there, at the tile centres and across the seams, is a
    negative.
``train-positive-offcentre`` (b)
    Each positive training patch at the centre of a 3 x 3 context of random training
    patches, cropped 70 x 70 px with the lymphocyte :data:`OFFCENTRE_MIN_PX` to
    :data:`OFFCENTRE_MAX_PX` px (2-4 µm) from the window centre: a detection there is a
    duplicate of the cell, not a cell. Neighbour centres are at least 50 px away.
``skimage-ihc`` (c)
    scikit-image's bundled ``immunohistochemistry()`` image (colon, FHL2: membranous DAB
    on epithelium, no CD3), at the sample catalogue's 0.5 µm/px, resampled to 0.2 µm/px.
``ki67-bladder1``, ``ki67-lung1`` (d)
    The IHC panel (Ki67, nuclear DAB of another antigen) of the two DeepLIIF tiles in
    ``../shared/data/ihc-ki67-deepliif/``, assumed 0.25 µm/px (40x; nuclei 27-35 px). That
    folder has no split of its own: both tiles come from DeepLIIF's *training* set, and
    both are used.

For (c) and (d) only the **top half** of each image (after resampling) is mined; the bottom
half is held out, so that how often the retrained model fires on membranous or nuclear
DAB of another antigen can still be measured on pixels it never trained on
(:func:`external_detections_per_mm2`).

The validation and tune splits of the CD3 patches are never read: only ``split ==
"train"`` rows enter, and :func:`check_train_only` raises when an index names any other
patch (it runs when mining ends and when a training run loads the index).

A window is mined when the model gives it P >= the mining threshold (default: the
weights' detection threshold); in dense maps, windows closer than
:data:`MINING_NMS_RADIUS_UM` to a more probable mined one are skipped (near-copies).
The result is a small CSV index (one row per window: where it comes from, its offset,
its score) from which :func:`load_hard_negatives` rebuilds the pixels exactly; nothing
large is stored. Mining is deterministic for a given weights file and seed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.errors import InputError

#: Distance (px at 0.2 µm/px) of the lymphocyte from the window centre in off-centre crops.
OFFCENTRE_MIN_PX = 10.0
OFFCENTRE_MAX_PX = 20.0
#: Spacing of windows mined from one dense map (3 µm = 15 px: one per 3 x 3 grid neighbourhood).
MINING_NMS_RADIUS_UM = 3.0
PATCH_PX = 70
#: Ki67 IHC tiles (DeepLIIF sample) and their assumed pixel size (40x; nuclei 27-35 px across).
KI67_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "ihc-ki67-deepliif"
KI67_MPP = 0.25
INDEX_COLUMNS = ("source", "label", "score", "x0", "y0", "seed", "patch", "neighbours", "dx", "dy", "distance_px")


class ValidationLeakError(RuntimeError):
    """A mined set names a patch outside the training split (validation or tune)."""


def training_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The ``train`` rows of the CD3 patch table, the only ones mining may read.

    Parameters
    ----------
    table : DataFrame of :func:`core.evaluation.datasets.cd3_patch_table`

    Returns
    -------
    DataFrame, ``split == "train"`` rows only, in the table's order.

    Raises
    ------
    InputError
        If the table has no ``split`` column or no training rows.
    """
    if "split" not in table.columns:
        raise InputError("the patch table has no 'split' column: build it with cd3_patch_table")
    train = table[table.split == "train"]
    if train.empty:
        raise InputError("the patch table has no training rows to mine")
    return train


def check_train_only(index: pd.DataFrame, table: pd.DataFrame) -> None:
    """Raise unless every CD3 patch an index names is a training patch.

    Parameters
    ----------
    index : DataFrame of :func:`mine` (columns ``patch``, ``neighbours``: data-relative
        paths, ``|``-separated)
    table : the full :func:`core.evaluation.datasets.cd3_patch_table`

    Raises
    ------
    ValidationLeakError
        Naming up to three offending patches and their split.
    """
    split_of = {_rel(p): s for p, s in zip(table.path, table.split)}
    named = set()
    for col in ("patch", "neighbours"):
        for value in index[col].fillna(""):
            named.update(v for v in str(value).split("|") if v)
    bad = sorted(p for p in named if split_of.get(p) != "train")
    if bad:
        raise ValidationLeakError(
            f"{len(bad)} mined patches are not in the training split, e.g. "
            + ", ".join(f"{p} ({split_of.get(p, 'unknown')})" for p in bad[:3])
            + ": the validation and tune splits must stay untouched; re-mine from the training split")


def _rel(path: str) -> str:
    """``.../cd3-ihc-gastric/negative/x.jpg`` → ``negative/x.jpg``."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


# ---------------------------------------------------------------------------------------- canvases


def nonpositive_mosaic(train: pd.DataFrame, seed: int) -> tuple[np.ndarray, list[str], int]:
    """All negative and background training patches in one seeded square-ish mosaic.

    Parameters
    ----------
    train : training rows (:func:`training_rows`)
    seed : int, seeds one ``numpy.random.Generator`` (arrangement, and the patches repeated
        to fill the last row)

    Returns
    -------
    pixels : (rows * 70, cols * 70, 3) uint8 RGB
    paths : list of str, the tiles row-major (data-relative paths)
    cols : int
    """
    from core.evaluation.datasets import read_patches

    paths = list(train[train.label == 0].path)
    if not paths:
        raise InputError("no negative or background training patches to mine")
    rng = np.random.default_rng(seed)
    cols = math.ceil(math.sqrt(len(paths)))
    rows = math.ceil(len(paths) / cols)
    fill = list(rng.choice(paths, rows * cols - len(paths), replace=False)) if rows * cols > len(paths) else []
    order = [(paths + fill)[i] for i in rng.permutation(rows * cols)]
    tiles = read_patches(order)
    pixels = tiles.reshape(rows, cols, PATCH_PX, PATCH_PX, 3).transpose(0, 2, 1, 3, 4).reshape(rows * PATCH_PX, cols * PATCH_PX, 3)
    return np.ascontiguousarray(pixels), [_rel(p) for p in order], cols


def offcentre_offsets() -> np.ndarray:
    """Integer (dx, dy) px with :data:`OFFCENTRE_MIN_PX` <= sqrt(dx² + dy²) <= :data:`OFFCENTRE_MAX_PX`.

    Returns
    -------
    (K, 2) int64, sorted
    """
    r = int(OFFCENTRE_MAX_PX)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    d = np.hypot(dx, dy)
    keep = (d >= OFFCENTRE_MIN_PX) & (d <= OFFCENTRE_MAX_PX)
    return np.stack([dx[keep], dy[keep]], axis=1).astype(np.int64)


def context_crop(centre: np.ndarray, neighbours: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """A 70 x 70 crop of a 3 x 3 context, shifted by (dx, dy) from the centre patch.

    Parameters
    ----------
    centre : (70, 70, 3) uint8, the patch whose cell is at (34.5, 34.5)
    neighbours : (8, 70, 70, 3) uint8, the surrounding tiles row-major without the centre
    dx, dy : int in [-70, 70], px; the crop's centre is the cell's centre + (dx, dy)

    Returns
    -------
    (70, 70, 3) uint8; the cell sits at (34.5 - dx, 34.5 - dy) in it.
    """
    tiles = list(neighbours[:4]) + [centre] + list(neighbours[4:])
    rows = [np.concatenate(tiles[3 * r : 3 * r + 3], axis=1) for r in range(3)]
    context = np.concatenate(rows, axis=0)
    return context[PATCH_PX + dy : 2 * PATCH_PX + dy, PATCH_PX + dx : 2 * PATCH_PX + dx]


def external_images() -> dict[str, tuple[np.ndarray, float]]:
    """The IHC images without CD3: name → ((H, W, 3) uint8 RGB, assumed µm/px).

    Raises
    ------
    InputError
        If the Ki67 tiles are missing from ``../shared/data/ihc-ki67-deepliif``.
    """
    from PIL import Image
    from skimage import data

    from core.samples import get_sample

    out = {"skimage-ihc": (np.asarray(data.immunohistochemistry()), float(get_sample("skimage-ihc").mpp))}
    for name in ("Bladder1", "Lung1"):
        path = KI67_DIR / f"{name}.png"
        if not path.is_file():
            raise InputError(f"{path} is missing: the Ki67 DeepLIIF tiles live in ../shared/data/ihc-ki67-deepliif")
        rgb = np.asarray(Image.open(path).convert("RGB"))
        out[f"ki67-{name.lower()}"] = (np.ascontiguousarray(rgb[:, :512]), KI67_MPP)  # panel 1: the IHC
    return out


def external_half(name: str, part: str = "mined") -> np.ndarray:
    """One half of an external image at 0.2 µm/px: the ``mined`` top half or the ``held-out`` bottom half.

    Returns
    -------
    (H', W', 3) uint8 RGB at 0.2 µm/px
    """
    from core.scenarios.base import resample_to_mpp

    if part not in ("mined", "held-out"):
        raise InputError(f"part must be 'mined' or 'held-out', got {part!r}")
    rgb, mpp = external_images()[name]
    work = resample_to_mpp(rgb, mpp, 0.2)  # uint8 stays uint8, as the scenario resamples
    cut = work.shape[0] // 2
    return np.ascontiguousarray(work[:cut] if part == "mined" else work[cut:])


# ---------------------------------------------------------------------------------------- mining


def _covered_tiles(x0: int, y0: int, order: list[str], cols: int) -> str:
    """``|``-joined tiles of a mosaic that the window at padded (x0, y0) covers.

    The window spans mosaic pixels [x0 - 35, x0 + 35) x [y0 - 35, y0 + 35) (the canvas is the
    mosaic mirrored by 35 px); pixels mirrored in from outside belong to border tiles already listed.
    """
    from core.scenarios.cd3_ihc import HALF

    rows = len(order) // cols
    c0, c1 = max(x0 - HALF, 0) // PATCH_PX, min(x0 + HALF - 1, cols * PATCH_PX - 1) // PATCH_PX
    r0, r1 = max(y0 - HALF, 0) // PATCH_PX, min(y0 + HALF - 1, rows * PATCH_PX - 1) // PATCH_PX
    return "|".join(order[r * cols + c] for r in range(r0, r1 + 1) for c in range(c0, c1 + 1))


def _mine_dense(model, pixels: np.ndarray, threshold: float) -> pd.DataFrame:
    """Windows of a dense map with P >= threshold, thinned to :data:`MINING_NMS_RADIUS_UM`."""
    from core.scenarios.cd3_ihc import suppress_within_radius

    prob = model.probability_map(pixels)
    ii, jj = suppress_within_radius(prob, threshold, MINING_NMS_RADIUS_UM / model.scenario.input_mpp)
    return pd.DataFrame({"x0": 8 * jj, "y0": 8 * ii, "score": prob[ii, jj].astype(np.float64)})


def mine(model, table: pd.DataFrame, seed: int = 0, threshold: float | None = None, mosaics: int = 2,
         offcentre_per_patch: int = 3, sources: tuple[str, ...] | None = None,
         progress=print) -> pd.DataFrame:
    """Mine the hard negatives of ``model`` (see the module docstring for the sources).

    Parameters
    ----------
    model : core.scenarios.cd3_ihc.CD3IHCModel (the weights being improved)
    table : the full :func:`core.evaluation.datasets.cd3_patch_table`; only its training rows are read
    seed : int, seeds one ``numpy.random.Generator`` for the mosaics, contexts and offsets
    threshold : float in [0, 1], P at or above which a window counts as a detection
        (default: the model's detection threshold)
    mosaics : int >= 0, seeded arrangements of the non-positive training patches (a)
    offcentre_per_patch : int >= 0, off-centre crops tried per positive training patch (b)
    sources : subset of ``("train-nonpositive-mosaic", "train-positive-offcentre", "skimage-ihc",
        "ki67-bladder1", "ki67-lung1")``; default all
    progress : callable(str) for one line per source, or None

    Returns
    -------
    DataFrame with :data:`INDEX_COLUMNS`: ``source``, ``label`` (0), ``score`` (P in [0, 1]),
    ``x0``, ``y0`` (top-left of the window in its canvas, px), ``seed`` (mosaic seed, or -1),
    ``patch`` (centre patch of an off-centre crop), ``neighbours`` (``|``-separated tiles the
    window covers or the context's 8 neighbours), ``dx``, ``dy``, ``distance_px`` (offset of
    the crop centre from the CD3+ cell, px; NaN elsewhere).

    Raises
    ------
    InputError
        If a parameter is out of range or a data set is missing.
    ValidationLeakError
        Never in correct use: the final :func:`check_train_only`.
    """
    from core.evaluation.datasets import read_patches

    all_sources = ("train-nonpositive-mosaic", "train-positive-offcentre", "skimage-ihc", "ki67-bladder1", "ki67-lung1")
    sources = all_sources if sources is None else tuple(sources)
    unknown = sorted(set(sources) - set(all_sources))
    if unknown:
        raise InputError(f"unknown hard-negative sources {unknown}; choose from {list(all_sources)}")
    threshold = float(model.threshold if threshold is None else threshold)
    if not 0.0 <= threshold <= 1.0 or mosaics < 0 or offcentre_per_patch < 0:
        raise InputError(f"threshold must be in [0, 1] (got {threshold}), mosaics and offcentre_per_patch >= 0 "
                         f"(got {mosaics}, {offcentre_per_patch})")
    say = progress or (lambda _: None)
    rng = np.random.default_rng(seed)
    train = training_rows(table)
    frames = []

    if "train-nonpositive-mosaic" in sources:
        for k in range(mosaics):
            mseed = int(rng.integers(0, 2**31 - 1))
            t0 = time.time()
            pixels, order, cols = nonpositive_mosaic(train, mseed)
            found = _mine_dense(model, pixels, threshold)
            covered = [_covered_tiles(x0, y0, order, cols) for x0, y0 in zip(found.x0, found.y0)]
            frames.append(found.assign(source="train-nonpositive-mosaic", seed=mseed, neighbours=covered))
            say(f"train-nonpositive-mosaic seed {mseed}: {len(found)} windows at P >= {threshold} "
                f"({pixels.shape[1]} x {pixels.shape[0]} px, {time.time() - t0:.0f} s)")

    if "train-positive-offcentre" in sources and offcentre_per_patch:
        t0 = time.time()
        pixels_all = read_patches(train.path)
        rel = [_rel(p) for p in train.path]
        positives = np.flatnonzero(train.label.to_numpy() == 1)
        offsets = offcentre_offsets()
        records, crops = [], []
        for i in positives:
            for _ in range(offcentre_per_patch):
                nb = rng.choice(len(train), 8, replace=True)
                dx, dy = offsets[rng.integers(len(offsets))]
                crops.append(context_crop(pixels_all[i], pixels_all[nb], int(dx), int(dy)))
                records.append({"patch": rel[i], "neighbours": "|".join(rel[j] for j in nb), "dx": int(dx),
                                "dy": int(dy), "distance_px": float(np.hypot(dx, dy))})
        scores = model.classify_patches(np.stack(crops)) if crops else np.zeros(0)
        found = pd.DataFrame(records).assign(score=scores.astype(np.float64))
        found = found[found.score >= threshold]
        frames.append(found.assign(source="train-positive-offcentre", seed=-1, x0=-1, y0=-1))
        say(f"train-positive-offcentre: {len(found)} of {len(records)} crops at P >= {threshold} "
            f"({time.time() - t0:.0f} s)")

    for name in ("skimage-ihc", "ki67-bladder1", "ki67-lung1"):
        if name in sources:
            t0 = time.time()
            pixels = external_half(name, "mined")
            found = _mine_dense(model, pixels, threshold)
            frames.append(found.assign(source=name, seed=-1))
            say(f"{name} (top half, {pixels.shape[1]} x {pixels.shape[0]} px at 0.2 µm/px): {len(found)} windows "
                f"at P >= {threshold} ({time.time() - t0:.0f} s)")

    index = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INDEX_COLUMNS)
    for col, fill in (("patch", ""), ("neighbours", ""), ("seed", -1), ("x0", -1), ("y0", -1), ("dx", 0), ("dy", 0),
                      ("distance_px", np.nan)):
        index[col] = index[col].fillna(fill) if col in index else fill
    index["label"] = 0
    index = index[list(INDEX_COLUMNS)].astype({"x0": int, "y0": int, "seed": int, "dx": int, "dy": int, "label": int})
    check_train_only(index, table)
    return index


# ---------------------------------------------------------------------------------------- rebuilding


def load_hard_negatives(index: pd.DataFrame | str | Path, table: pd.DataFrame) -> np.ndarray:
    """Rebuild the pixels of a mined index, row by row.

    Parameters
    ----------
    index : DataFrame of :func:`mine`, or the path of its CSV
    table : the full :func:`core.evaluation.datasets.cd3_patch_table` (to find the patches
        and check that the index names training patches only)

    Returns
    -------
    (N, 70, 70, 3) uint8 RGB, row order of the index; every label is 0.

    Raises
    ------
    ValidationLeakError
        If the index names a patch outside the training split.
    InputError
        If the index names a source it cannot rebuild.
    """
    from core.evaluation.datasets import read_patches
    from core.scenarios.cd3_ihc import pad_for_windows

    if not isinstance(index, pd.DataFrame):
        index = read_index(index)
    check_train_only(index, table)
    root = Path(table.path.iloc[0]).parents[1]
    out = np.zeros((len(index), PATCH_PX, PATCH_PX, 3), np.uint8)
    train = training_rows(table)
    for (source, seed), rows in index.groupby(["source", "seed"], sort=False):
        pos = index.index.get_indexer(rows.index)
        if source == "train-positive-offcentre":
            for k, r in zip(pos, rows.itertuples()):
                centre = read_patches([root / r.patch])[0]
                nb = read_patches([root / p for p in r.neighbours.split("|")])
                out[k] = context_crop(centre, nb, int(r.dx), int(r.dy))
            continue
        if source == "train-nonpositive-mosaic":
            pixels, order, cols = nonpositive_mosaic(train, int(seed))
            changed = [r.Index for r in rows.itertuples() if _covered_tiles(r.x0, r.y0, order, cols) != r.neighbours]
            if changed:
                raise InputError(f"{len(changed)} mosaic windows of seed {seed} no longer cover the tiles they were mined "
                                 "on: the CD3 training patches changed since mining; mine again")
            canvas = pad_for_windows(pixels)
        elif source in ("skimage-ihc", "ki67-bladder1", "ki67-lung1"):
            canvas = pad_for_windows(external_half(source, "mined"))
        else:
            raise InputError(f"cannot rebuild hard negatives of source {source!r}")
        for k, r in zip(pos, rows.itertuples()):
            out[k] = canvas[r.y0 : r.y0 + PATCH_PX, r.x0 : r.x0 + PATCH_PX]
    return out


def read_index(path: str | Path) -> pd.DataFrame:
    """Read a hard-negative index CSV written by :func:`main`.

    Raises
    ------
    InputError
        If the file is missing or lacks a column of :data:`INDEX_COLUMNS`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"hard-negative index {path} not found: mine it with "
                         f"python -m core.training.cd3_negatives --weights WEIGHTS --out {path}")
    index = pd.read_csv(path, dtype={"patch": str, "neighbours": str}, keep_default_na=False,
                        na_values={"distance_px": [""]})
    missing = sorted(set(INDEX_COLUMNS) - set(index.columns))
    if missing:
        raise InputError(f"{path} is not a hard-negative index: columns {missing} are missing")
    return index


def external_detections_per_mm2(model, part: str = "held-out") -> dict:
    """Detections per mm² of ``model`` at its operating point on the external IHC without CD3.

    Parameters
    ----------
    model : core.scenarios.cd3_ihc.CD3IHCModel
    part : ``"held-out"`` (bottom halves, never mined) or ``"mined"`` (top halves)

    Returns
    -------
    dict name → {"detections": int, "area_mm2": float, "per_mm2": float}; every detection
    there is a false CD3+ count.
    """
    out = {}
    for name in external_images():
        pixels = external_half(name, part)
        xy, _ = model.detect_at_operating_point(model.probability_map(pixels))
        area = pixels.shape[0] * pixels.shape[1] * 0.2**2 / 1e6
        out[name] = {"detections": int(len(xy)), "area_mm2": round(area, 5), "per_mm2": round(len(xy) / area, 1)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="weights whose false positives are mined")
    p.add_argument("--out", required=True, help="index CSV (a .meta.json with counts is written beside it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, help="P of a detection (default: the weights' detection threshold)")
    p.add_argument("--mosaics", type=int, default=2, help="seeded mosaics of the non-positive training patches")
    p.add_argument("--offcentre-per-patch", type=int, default=3, help="off-centre crops tried per positive training patch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=None, help="CD3 patch folder (default ../shared/data/cd3-ihc-gastric)")
    args = p.parse_args(argv)
    from core.evaluation.cd3_calibration import load_weights_model
    from core.evaluation.datasets import CD3_DATA_DIR, cd3_patch_table
    from core.scenarios.weights import sha256_file

    torch.set_num_threads(args.threads)
    table = cd3_patch_table(args.data or CD3_DATA_DIR)
    model = load_weights_model(args.weights)
    t0 = time.time()
    index = mine(model, table, args.seed, args.threshold, args.mosaics, args.offcentre_per_patch)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    index.to_csv(out, index=False, float_format="%.6g")
    meta = {
        "weights": str(args.weights), "weights_sha256": sha256_file(args.weights),
        "threshold": float(model.threshold if args.threshold is None else args.threshold),
        "seed": args.seed, "mosaics": args.mosaics, "offcentre_per_patch": args.offcentre_per_patch,
        "offcentre_px": [OFFCENTRE_MIN_PX, OFFCENTRE_MAX_PX], "mining_nms_radius_um": MINING_NMS_RADIUS_UM,
        "counts": {k: int(v) for k, v in index.source.value_counts().sort_index().items()},
        "total": int(len(index)), "mining_time_s": round(time.time() - t0, 1),
        "splits_read": ["train"], "external_part_mined": "top half of each image at 0.2 µm/px; bottom half held out",
    }
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
