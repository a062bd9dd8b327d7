"""Estimation of the H&E recipe's colour models from real H&E with nucleus points.

``python -m core.generator --estimate-he [DIR]`` prints the estimate as JSON; the values are
kept in :data:`core.generator.recipes.HE_ESTIMATE`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from core.errors import InputError


def estimate_he_colours(data_dir: str | Path, max_images: int | None = None) -> dict:
    """Estimate the H&E recipe's colour models from real H&E with nucleus points.

    Parameters
    ----------
    data_dir : path
        A ``he-crc-cell-points/train`` folder: ``imgN/imgN.png`` (500 x 500 RGB) with
        ``imgN_epithelial.mat``, ``imgN_inflammatory.mat`` and ``imgN_detection.mat``
        (key ``detection``: (N, 2) x, y pixels).
    max_images : int, optional
        Use only the first images (sorted by name).

    Returns
    -------
    dict
        For ``immune_nucleus``, ``tumour_nucleus``, ``tumour_cytoplasm`` and
        ``background``: ``mean`` (3,), ``between_cov`` (3, 3) and ``within_cov``
        (3, 3), RGB in [0, 1], rounded to 4 decimals; and ``n_objects`` per class.

    Raises
    ------
    InputError
        If the folder holds no such images.
    """
    import scipy.io as sio
    from PIL import Image

    folders = sorted(p for p in Path(data_dir).iterdir() if p.is_dir() and (p / f"{p.name}.png").is_file())
    if max_images:
        folders = folders[:max_images]
    if not folders:
        raise InputError(f"no imgN/imgN.png folders found in {data_dir}")
    groups: dict[str, list[np.ndarray]] = {k: [] for k in ("immune_nucleus", "tumour_nucleus", "tumour_cytoplasm", "background")}
    for folder in folders:
        img = np.asarray(Image.open(folder / f"{folder.name}.png").convert("RGB"), np.float64) / 255.0
        h, w = img.shape[:2]

        def pts(kind):
            f = folder / f"{folder.name}_{kind}.mat"
            return sio.loadmat(f)["detection"].reshape(-1, 2) if f.is_file() else np.zeros((0, 2))

        allpts = pts("detection")
        marks = np.zeros((h, w), bool)
        if len(allpts):
            ix = np.clip(np.round(allpts[:, 0]).astype(int), 0, w - 1)
            iy = np.clip(np.round(allpts[:, 1]).astype(int), 0, h - 1)
            marks[iy, ix] = True
        dist = ndimage.distance_transform_edt(~marks)
        yy, xx = np.mgrid[0:h, 0:w]
        for kind, key in (("inflammatory", "immune_nucleus"), ("epithelial", "tumour_nucleus")):
            for x, y in pts(kind):
                sel = (xx - x) ** 2 + (yy - y) ** 2 <= 9
                if sel.sum() >= 9:
                    groups[key].append(img[sel])
        for x, y in pts("epithelial"):
            d2 = (xx - x) ** 2 + (yy - y) ** 2
            sel = (d2 >= 49) & (d2 <= 121) & (dist > 6) & (img.mean(axis=2) >= 0.55)
            if sel.sum() >= 20:
                groups["tumour_cytoplasm"].append(img[sel])
        sel = (dist > 15) & (img.mean(axis=2) <= 0.92) & (img.mean(axis=2) >= 0.55)
        if sel.sum() >= 100:
            px = img[sel]
            groups["background"].append(px[:: max(1, len(px) // 2000)])
    out = {}
    for key, objs in groups.items():
        if not objs:
            continue
        means = np.array([o.mean(axis=0) for o in objs])
        dev = np.concatenate([o - o.mean(axis=0) for o in objs])
        r4 = lambda a: np.round(a, 4).tolist()  # noqa: E731
        out[key] = {"mean": r4(means.mean(axis=0)), "between_cov": r4(np.cov(means.T)), "within_cov": r4(np.cov(dev.T)),
                    "n_objects": len(objs)}
    return out
