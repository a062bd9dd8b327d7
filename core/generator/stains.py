"""Stains as optical-density vectors, and their statistics estimated from the real images in ``../shared/data``.

The compartment recipe (:mod:`core.generator.compartments`) renders brightfield sections by
the Beer-Lambert law: each stain s has a unit optical-density (OD) vector v_s (3,) and a
concentration map c_s (H, W); the pixel's OD is ``sum_s c_s v_s`` plus the glass's own OD, and
its RGB is ``white * 10 ** (-OD)`` (Ruifrok & Johnston 2001). This is the model the CD-UNET
paper's colour-deconvolution layers are meant to learn (§3.2), so stain variation is drawn
where it happens: in the stain vectors (hue of a laboratory's haematoxylin), the
concentrations (staining strength) and the white level (scanner).

Estimation (:func:`estimate_stain_statistics`, ``python -m core.generator --estimate-stains``),
on the **training** parts only (never a validation split):

- **stain vectors** per image by Macenko's method (:func:`macenko_vectors`): OD of the pixels
  whose three channel ODs all exceed 0.15, projected on the plane of the two leading
  eigenvectors of their covariance; the 1st and 99th percentile angles give the two vectors;
  the one with the larger red-channel OD is the haematoxylin. H&E: the 70 train images of
  he-crc-cell-points, the 80 train patches of he-brca-m2c-points, one tile in four of the
  non-validation CoNSeP images and the 10 train patches of he-necrosis-tcga. DAB-haematoxylin:
  the CD3 IHC patches of cd3-ihc-gastric in groups of 40 (pixels pooled; the patches come from
  two micrographs only) and the IHC panel of the two ihc-ki67-deepliif tiles.
  Mean vector and the covariance of the unit vectors across images are kept.
- **concentrations** per image with its own vectors (least squares), as medians over pixels of
  one kind, then mean and standard deviation over images: haematoxylin in discs of radius
  1.5 µm around annotated tumour (epithelial), immune (lymphocyte / inflammatory) and stromal
  (fibroblast / spindle) nuclei; eosin more than 8 µm from every annotated nucleus and not
  glass (stroma); eosin in a ring 4-6 µm around tumour points and more than 3 µm from every
  nucleus (tumour cytoplasm); both stains inside the he-necrosis-tcga necrosis masks; DAB at
  the 90th percentile of the central 30 x 30 px of CD3-positive patches (stained lymphocyte),
  haematoxylin at the 90th percentile of the centre of "background" patches (unstained nucleus)
  and its median over whole patches (counterstained background).
- **glass**: pixels whose OD summed over channels is below 0.15, in images that have at least
  1 % of them: mean RGB and its covariance across images.

Stains with no real image in the project (a red chromogen, purple and yellow chromogens, pen
inks) take published or hand-chosen vectors, listed in :data:`REFERENCE_VECTORS` with their
source.

References
----------
Ruifrok A.C., Johnston D.A., "Quantification of histochemical staining by color
deconvolution", Anal Quant Cytol Histol 23:291-299 (2001) (vectors of scikit-image
``rgb_from_hed``, ``rgb_from_hax``, ``rgb_from_rbd``); Macenko M. et al., "A method for
normalizing histology slides for quantitative analysis", ISBI 2009; CD-UNET paper §2 (stains
and their colours), §3.2 (Beer-Lambert, learned colour deconvolution).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import InputError

#: OD below which a channel counts as unstained (Macenko's beta).
MACENKO_BETA = 0.15
#: Percentile of the extreme angles (Macenko's alpha).
MACENKO_ALPHA = 1.0

#: Unit OD vectors of stains without a real image in the project, and their source.
REFERENCE_VECTORS = {
    # Ruifrok & Johnston 2001 (scikit-image rgb_from_hed / rgb_from_hdx): fallback values only
    "hematoxylin_ruifrok": ((0.650, 0.704, 0.286), "Ruifrok & Johnston 2001 (scikit-image rgb_from_hed)"),
    "eosin_ruifrok": ((0.072, 0.990, 0.105), "Ruifrok & Johnston 2001 (scikit-image rgb_from_hed)"),
    "dab_ruifrok": ((0.268, 0.570, 0.776), "Ruifrok & Johnston 2001 (scikit-image rgb_from_hdx)"),
    # the red chromogen of the paper's double stains (CD3, CD68 in red): Fast Red
    "red": ((0.2139, 0.8511, 0.4779), "Fast Red, Ruifrok & Johnston 2001 (scikit-image rgb_from_rbd)"),
    "aec": ((0.2743, 0.6796, 0.6803), "AEC, Ruifrok & Johnston 2001 (scikit-image rgb_from_hax)"),
    # the paper's Ki67/CD8 double stain in purple and yellow: no published vector; chosen from the
    # colours RGB (0.50, 0.25, 0.60) and (0.95, 0.85, 0.35) (OD = -log10 RGB, normalised)
    "purple": ((0.4296, 0.8591, 0.3168), "hand-chosen from purple RGB (0.50, 0.25, 0.60)"),
    "yellow": ((0.0474, 0.1530, 0.9871), "hand-chosen from yellow RGB (0.95, 0.85, 0.35)"),
    # pen inks on slides (marker pens): hand-chosen from their colours
    "ink_blue": ((0.8000, 0.5000, 0.1500), "hand-chosen, blue marker (absorbs red and green)"),
    "ink_green": ((0.7500, 0.1500, 0.6400), "hand-chosen, green marker (absorbs red and blue)"),
    "ink_black": ((0.5774, 0.5774, 0.5774), "hand-chosen, black marker (neutral)"),
    "ink_red": ((0.1000, 0.7500, 0.6500), "hand-chosen, red marker (absorbs green and blue)"),
}


def unit(v) -> np.ndarray:
    """(3,) float64 vector scaled to unit length."""
    v = np.asarray(v, np.float64)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def rgb_to_od(rgb: np.ndarray, white: float = 1.0) -> np.ndarray:
    """Optical density of RGB pixels (Beer-Lambert).

    Parameters
    ----------
    rgb : (..., 3) uint8 or float in [0, 1]
    white : float in (0, 1], the incident light's intensity in the same units as float RGB

    Returns
    -------
    (..., 3) float64 OD >= 0, ``-log10(max(rgb, 1/255) / white)``
    """
    x = np.asarray(rgb)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    return np.maximum(-np.log10(np.maximum(x, 1.0 / 255.0) / white), 0.0)


def od_to_rgb(od: np.ndarray, white) -> np.ndarray:
    """RGB of an optical density: (..., 3) OD and a (3,) or scalar white level → (..., 3) float32 in [0, 1]."""
    return np.clip(np.asarray(white, np.float32) * np.power(np.float32(10.0), -od.astype(np.float32)), 0.0, 1.0)


def macenko_vectors(rgb: np.ndarray, beta: float = MACENKO_BETA, alpha: float = MACENKO_ALPHA,
                    min_pixels: int = 200) -> tuple[np.ndarray, np.ndarray] | None:
    """Two stain OD vectors of a brightfield image by Macenko's method.

    Parameters
    ----------
    rgb : (H, W, 3) or (N, 3) uint8 RGB
    beta : float, OD below which a channel is unstained (pixels with any channel below are left out)
    alpha : float, percentile of the extreme angles
    min_pixels : int, fewer stained pixels give None

    Returns
    -------
    (hematoxylin, other) : two (3,) float64 unit OD vectors with non-negative entries (the one
        with the larger red-channel OD first), or None when the image has too few stained pixels.

    References
    ----------
    Macenko et al., ISBI 2009.
    """
    od = rgb_to_od(np.asarray(rgb).reshape(-1, 3))
    od = od[(od > beta).all(axis=1)]
    if len(od) < min_pixels:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the two leading eigenvectors
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into the positive octant
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1, v2 = unit(np.abs(v1)), unit(np.abs(v2))
    return (v1, v2) if v1[0] >= v2[0] else (v2, v1)


def concentrations(rgb: np.ndarray, vectors: list[np.ndarray], white: float = 1.0) -> np.ndarray:
    """Stain concentrations of every pixel by least squares on the OD.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 or float RGB
    vectors : list of K (3,) unit OD vectors

    Returns
    -------
    (H, W, K) float64 concentrations (OD units along each vector; may be slightly negative)
    """
    od = rgb_to_od(rgb, white)
    m = np.stack([unit(v) for v in vectors], axis=1)  # (3, K)
    c, *_ = np.linalg.lstsq(m, od.reshape(-1, 3).T, rcond=None)
    return c.T.reshape(*od.shape[:-1], len(vectors))


def _discs(shape, xy, radius_px) -> np.ndarray:
    """(H, W) bool: discs of ``radius_px`` around the (N, 2) x, y points."""
    h, w = shape
    out = np.zeros((h, w), bool)
    r = int(np.ceil(radius_px))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = dx * dx + dy * dy <= radius_px * radius_px
    for x, y in np.asarray(xy, np.float64).reshape(-1, 2):
        cx, cy = int(round(x)), int(round(y))
        yy, xx = dy[disc] + cy, dx[disc] + cx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        out[yy[ok], xx[ok]] = True
    return out


def _point_images(data_root: Path, max_images: int | None):
    """(name, source, rgb uint8 native, mpp, xy px native, role per point) of the H&E train images with classed points."""
    import pandas as pd
    from PIL import Image

    from core.evaluation.datasets_he import HE_MPP, read_he_image
    from core.evaluation.he_sources import consep_image_split

    roles_crc = {0: "tumour", 1: "immune", 2: "stroma", 3: "other"}
    crc = sorted((data_root / "he-crc-cell-points" / "train").glob("img*"), key=lambda p: int(p.name[3:]))
    for f in crc[:max_images]:
        im = read_he_image(f)
        yield f.name, "crc", im.pixels, HE_MPP, im.points_xy, np.array([roles_crc.get(int(k), "other") for k in im.labels])
    brca_roles = {"tumour": "tumour", "lymphocyte": "immune", "stromal": "stroma"}
    for f in sorted((data_root / "he-brca-m2c-points" / "train").glob("*.png"))[:max_images]:
        t = pd.read_csv(f.with_suffix(".points.csv"))
        yield f.stem, "brca-m2c", np.asarray(Image.open(f).convert("RGB")), 0.5, t[["x_px", "y_px"]].to_numpy(float), \
            t["cell_class"].map(brca_roles).fillna("other").to_numpy()
    consep_roles = {"epithelial": "tumour", "inflammatory": "immune", "spindle": "stroma"}
    files = [f for f in sorted((data_root / "he-consep-tiles" / "train").glob("train_*_*.jpg"))
             if consep_image_split(int(f.stem.split("_")[1])) != "validation" and int(f.stem.split("_")[2]) % 4 == 0]
    for f in files[:max_images]:
        t = pd.read_csv(f.with_name(f.stem + ".points.csv"))
        yield f.stem, "consep", np.asarray(Image.open(f).convert("RGB")), 0.25, t[["x_px", "y_px"]].to_numpy(float), \
            t["cell_class"].map(consep_roles).fillna("other").to_numpy()


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return {"mean": round(float(v.mean()), 4) if len(v) else None, "sd": round(float(v.std()), 4) if len(v) else None,
            "n_images": int(len(v))}


def _vector_stats(vectors: list[np.ndarray]) -> dict:
    a = np.asarray(vectors, np.float64)
    return {"mean": np.round(unit(a.mean(axis=0)), 4).tolist(), "cov": np.round(np.cov(a.T), 5).tolist(), "n_images": len(a)}


def estimate_stain_statistics(data_root: str | Path, max_images: int | None = None) -> dict:
    """Estimate the compartment recipe's stain vectors, concentrations and glass colour (module docstring).

    Parameters
    ----------
    data_root : path
        The ``../shared/data`` folder (he-crc-cell-points, he-brca-m2c-points, he-consep-tiles,
        he-necrosis-tcga, cd3-ihc-gastric, ihc-ki67-deepliif); training parts only are read.
    max_images : int, optional
        At most this many images per data set (for tests).

    Returns
    -------
    dict
        ``he`` and ``ihc``: ``hematoxylin`` and ``eosin`` / ``dab`` vector statistics (``mean``
        (3,) unit OD vector, ``cov`` (3, 3) across images, ``n_images``); ``concentration``:
        per kind ``{"mean", "sd", "n_images"}`` of the per-image medians (OD units);
        ``glass``: ``mean`` RGB in [0, 1], ``cov`` (3, 3), ``n_images``; ``sources``: images read per data set.

    Raises
    ------
    InputError
        If ``data_root`` holds none of the data sets.
    """
    from PIL import Image
    from scipy import ndimage

    root = Path(data_root)
    if not (root / "he-crc-cell-points").is_dir():
        raise InputError(f"{root} does not hold he-crc-cell-points/: pass the ../shared/data folder")
    he_h, he_e, glass = [], [], []
    conc = {k: [] for k in ("tumour_nucleus_h", "immune_nucleus_h", "stroma_nucleus_h", "stroma_e",
                            "tumour_cytoplasm_e", "necrosis_h", "necrosis_e")}
    sources: dict[str, int] = {}

    def glass_of(rgb):
        od = rgb_to_od(rgb).sum(axis=-1)
        sel = od < MACENKO_BETA
        if sel.mean() >= 0.01:
            glass.append(rgb[sel].reshape(-1, 3).astype(np.float64).mean(axis=0) / 255.0)

    for name, source, rgb, mpp, xy, roles in _point_images(root, max_images):
        vec = macenko_vectors(rgb)
        if vec is None:
            continue
        sources[source] = sources.get(source, 0) + 1
        he_h.append(vec[0])
        he_e.append(vec[1])
        glass_of(rgb)
        c = concentrations(rgb, list(vec))
        shape = rgb.shape[:2]
        r = 1.5 / mpp
        for role, key in (("tumour", "tumour_nucleus_h"), ("immune", "immune_nucleus_h"), ("stroma", "stroma_nucleus_h")):
            sel = _discs(shape, xy[roles == role], r)
            if sel.sum() >= 20:
                conc[key].append(float(np.median(c[..., 0][sel])))
        marks = _discs(shape, xy, 0.0) if len(xy) else np.zeros(shape, bool)
        dist_um = ndimage.distance_transform_edt(~marks) * mpp
        tissue = rgb_to_od(rgb).sum(axis=-1) >= MACENKO_BETA
        sel = (dist_um > 8.0) & tissue
        if sel.sum() >= 100:
            conc["stroma_e"].append(float(np.median(c[..., 1][sel])))
        ring = (_discs(shape, xy[roles == "tumour"], 6.0 / mpp) & ~_discs(shape, xy[roles == "tumour"], 4.0 / mpp)
                & (dist_um > 3.0) & tissue)
        if ring.sum() >= 50:
            conc["tumour_cytoplasm_e"].append(float(np.median(c[..., 1][ring])))
    nec = sorted((root / "he-necrosis-tcga" / "small_nec_cnn_train_data").glob("image_*.png"))[:max_images]
    for f in nec:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        vec = macenko_vectors(rgb)
        if vec is None:
            continue
        sources["necrosis"] = sources.get("necrosis", 0) + 1
        he_h.append(vec[0])
        he_e.append(vec[1])
        glass_of(rgb)
        mask = np.asarray(Image.open(f.with_name(f.name.replace("image_", "mask_")))) > 127
        if mask.sum() >= 100:
            c = concentrations(rgb, list(vec))
            conc["necrosis_h"].append(float(np.median(c[..., 0][mask])))
            conc["necrosis_e"].append(float(np.median(c[..., 1][mask])))

    # DAB + haematoxylin: CD3 IHC patches in groups of 40, and the Ki67 IHC panels
    ihc_h, ihc_d = [], []
    iconc = {k: [] for k in ("dab_positive", "nucleus_h", "background_h")}
    cd3 = root / "cd3-ihc-gastric"
    pos = sorted((cd3 / "positive").glob("*.jpg"), key=lambda p: p.name)
    bkg = sorted((cd3 / "background").glob("*.jpg"), key=lambda p: p.name)
    n_groups = min(len(pos), len(bkg)) // 40
    if max_images:
        n_groups = min(n_groups, max_images)
    for g in range(n_groups):
        p_imgs = [np.asarray(Image.open(f).convert("RGB")) for f in pos[g * 40 : (g + 1) * 40]]
        b_imgs = [np.asarray(Image.open(f).convert("RGB")) for f in bkg[g * 40 : (g + 1) * 40]]
        vec = macenko_vectors(np.concatenate([i.reshape(-1, 3) for i in p_imgs + b_imgs]))
        if vec is None:
            continue
        sources["cd3-ihc"] = sources.get("cd3-ihc", 0) + 1
        ihc_h.append(vec[0])
        ihc_d.append(vec[1])
        pc = [concentrations(i, list(vec)) for i in p_imgs]
        bc = [concentrations(i, list(vec)) for i in b_imgs]
        iconc["dab_positive"].append(float(np.median([np.percentile(c[20:50, 20:50, 1], 90) for c in pc])))
        iconc["nucleus_h"].append(float(np.median([np.percentile(c[20:50, 20:50, 0], 90) for c in bc])))
        iconc["background_h"].append(float(np.median([np.median(c[..., 0]) for c in bc])))
    for f in sorted((root / "ihc-ki67-deepliif").glob("*.png"))[:max_images]:
        rgb = np.asarray(Image.open(f).convert("RGB"))[:, :512]
        vec = macenko_vectors(rgb)
        if vec is None:
            continue
        sources["ki67-ihc"] = sources.get("ki67-ihc", 0) + 1
        ihc_h.append(vec[0])
        ihc_d.append(vec[1])
        glass_of(rgb)
    g = np.asarray(glass, np.float64)
    return {
        "he": {"hematoxylin": _vector_stats(he_h), "eosin": _vector_stats(he_e),
               "concentration": {k: _summary(v) for k, v in conc.items()}},
        "ihc": {"hematoxylin": _vector_stats(ihc_h), "dab": _vector_stats(ihc_d),
                "concentration": {k: _summary(v) for k, v in iconc.items()}},
        "glass": {"mean": np.round(g.mean(axis=0), 4).tolist(), "cov": np.round(np.cov(g.T), 6).tolist(),
                  "n_images": int(len(g))} if len(g) >= 2 else None,
        "sources": sources,
    }
