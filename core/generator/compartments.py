"""The compartment recipe: synthetic sections of tumour, stroma, necrosis and glass, in H&E and eight IHC stains.

There is no public data with tissue-compartment masks in the project, so the CD-UNET scenario
(``tissue-compartments``) learns compartments from sections drawn here, with an exact
ground-truth label map (:data:`COMPARTMENT_LABELS`: background 0, tumour 1, stroma 2,
necrosis 3), together with weak labels from real images (:mod:`core.training.compartment_labels`).

A section (:func:`generate_compartments`) is laid out, peopled with cells, stained and scanned:

1. **Layout** (µm, at the recipe's mpp): glass (a smooth random field with a ramp, so tissue
   has an edge), tumour nests (a smooth field at the nest scale, thresholded to the drawn
   tumour share), gland lumina in some nests (colorectal glands; a lumen is not tissue and is
   labelled background), necrosis (comedo necrosis in the centres of nests or lumina, "dirty
   necrosis", or a geographic patch next to tumour), stroma (the rest of the tissue), lymphoid
   aggregates in the stroma (labelled stroma) and pen marks (labelled background, over glass
   or tissue). Holes and islands smaller than :attr:`CompartmentRecipe.min_region_um2` are
   merged into their surroundings, the resolution of a pathologist's outline.
2. **Cells**: tumour cells of the generator's tumour cell type (:data:`TUMOUR_CELL`, from
   :data:`core.generator.recipes.HE_MELANOMA`; polygonal cells on a jittered lattice with
   membranes, enlarged pleomorphic nuclei, nucleoli; columnar around lumina); lymphocytes of the
   generator's immune cell type (:data:`LYMPHOCYTE`) scattered in the stroma at a drawn stromal
   TIL share, inside nests and packed in aggregates; spindle cells (fibroblasts) along the
   collagen fibres; macrophages; in necrosis, nuclear fragments in clusters (karyorrhexis) and
   ghost nuclei on eosinophilic granular debris.
3. **Staining**: a concentration map per stain, rendered by Beer-Lambert with the stain
   vectors and concentrations estimated from the real images (:mod:`core.generator.stains`):
   haematoxylin on nuclei (and faintly on everything, as a counterstain), eosin on cytoplasm,
   collagen (oriented wavy fibres) and necrotic debris (H&E), and a chromogen per IHC marker
   on its target cells (:data:`STAINS`: the paper's CEA, CD163/CD68, CD8/CD3, FoxP3, Ki67/CD3,
   Ki67/CD8, PRF/CD3 and PD1, in brown, red, purple and yellow), plus non-specific chromogen in
   necrosis, as real IHC shows.
4. **Stain variation and scanning**: stain vectors drawn around the estimated ones with
   :attr:`CompartmentRecipe.vector_spread` times the covariance seen across real images,
   staining strengths x U(0.6, 1.5) per stain, the glass's white level and tint, Gaussian blur,
   sensor noise and 8-bit quantisation.

One ``numpy.random.Generator`` seeded once makes every draw: the same arguments give the same
section on every machine. A 256 x 256 section takes well under a second.

References
----------
CD-UNET paper (shared/papers/cd-unet-multistain-tissue-segmentation.txt), §2 (classes:
tumour, tissue, necrosis, background; nine stains and their colours); TNRD melanoma paper §2.2
(the generator's cells: ellipses with drawn semi-axes and colours); Ruifrok & Johnston 2001
(Beer-Lambert stain model); Salgado et al., Ann Oncol 2015 (stromal TILs: the share of stromal
area covered by mononuclear cells, which :attr:`CompartmentSection.stromal_til_percent` gives
exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from core.errors import InputError
from core.generator.geometry import add_coverage, ellipse_coverage, ring_coverage, smooth_field
from core.generator.recipes import HE_MELANOMA, CellType
from core.generator.stains import REFERENCE_VECTORS, unit
from core.generator.geometry import hex_lattice_points as _lattice, uniform_points_in_mask as _uniform_points

#: Label value of each compartment in a label map (the scenario's ``summary.json`` labels).
COMPARTMENT_LABELS = {"background": 0, "tumour": 1, "stroma": 2, "necrosis": 3}
#: Compartment names in label order.
COMPARTMENT_NAMES = tuple(COMPARTMENT_LABELS)
#: Pixel size of the generator's Table-1 recipes (the TNRD cards: a 7 µm nucleus is 14-16 px).
GENERATOR_MPP = 0.5

#: The generator's tumour cell type (:data:`HE_MELANOMA`, cells of 15-25 px semi-axes at 0.5 µm/px),
#: with carcinoma nuclei of 7-14 px (3.5-7 µm) semi-axes instead of 3-10 px, so that no tumour
#: nucleus is as small as a lymphocyte's.
TUMOUR_CELL: CellType = replace(HE_MELANOMA.cell_type("tumour"), nucleus_semi_axes_px=(7.0, 14.0))
#: The generator's immune cell type, restricted to small lymphocytes (5.5-8 px = 2.75-4 µm semi-axes).
LYMPHOCYTE: CellType = replace(HE_MELANOMA.cell_type("immune"), semi_axes_px=(5.5, 8.0))

#: Stain vectors and concentrations estimated by :func:`core.generator.stains.estimate_stain_statistics`
#: from the training parts of ``../shared/data`` (regenerate with ``python -m core.generator --estimate-stains``):
#: 234 H&E images (69 CRC, 80 BRCA-M2C, 75 CoNSeP tiles, 10 necrosis patches), 43 groups of 40
#: CD3 IHC patches and 2 Ki67 IHC panels; glass from 223 images.
STAIN_ESTIMATE = {
    "he": {
        "hematoxylin": {"mean": (0.6092, 0.734, 0.3001),
                        "cov": ((0.00484, -0.00469, -0.00287), (-0.00469, 0.00697, -0.00062), (-0.00287, -0.00062, 0.00906))},
        "eosin": {"mean": (0.4216, 0.8209, 0.3851),
                  "cov": ((0.00916, -0.00163, -0.00743), (-0.00163, 0.0043, -0.00606), (-0.00743, -0.00606, 0.02041))},
        "concentration": {"tumour_nucleus_h": (0.3048, 0.22), "immune_nucleus_h": (0.4989, 0.2889),
                          "stroma_nucleus_h": (0.2805, 0.2019), "stroma_e": (0.1967, 0.1096),
                          "tumour_cytoplasm_e": (0.2008, 0.0984), "necrosis_h": (0.172, 0.0218),
                          "necrosis_e": (0.2537, 0.0283)},
    },
    "ihc": {
        "hematoxylin": {"mean": (0.7584, 0.5917, 0.2733),
                        "cov": ((3e-05, -4e-05, 0.0), (-4e-05, 6e-05, -2e-05), (0.0, -2e-05, 5e-05))},
        "dab": {"mean": (0.3165, 0.5236, 0.791),
                "cov": ((0.00047, 0.00023, -0.00035), (0.00023, 0.00016, -0.0002), (-0.00035, -0.0002, 0.00028))},
        "concentration": {"dab_positive": (0.9389, 0.0641), "nucleus_h": (0.7659, 0.0477), "background_h": (0.1725, 0.0212)},
    },
    "glass": {"mean": (0.9564, 0.9027, 0.9536),
              "cov": ((0.000233, -2e-05, 0.000122), (-2e-05, 0.000768, -7.5e-05), (0.000122, -7.5e-05, 0.000277))},
}


@dataclass(frozen=True)
class MarkerRule:
    """One chromogen of an IHC stain and the cells it marks.

    Attributes
    ----------
    chromogen : {"dab", "red", "purple", "yellow"}
    target : {"lymphocyte", "tumour", "macrophage"}
    pattern : {"membrane", "nucleus", "cytoplasm", "granular"}
    positive_share : (float, float)
        Uniform range of the share of target cells that are positive (drawn per section).
    """

    chromogen: str
    target: str
    pattern: str
    positive_share: tuple[float, float]


#: The nine stains of the CD-UNET paper (§2): H&E and eight IHC assays with a haematoxylin counterstain.
STAINS: dict[str, tuple[MarkerRule, ...]] = {
    "he": (),
    "cea": (MarkerRule("dab", "tumour", "cytoplasm", (0.5, 1.0)),),
    "cd163-cd68": (MarkerRule("dab", "macrophage", "cytoplasm", (0.4, 0.8)),
                   MarkerRule("red", "macrophage", "cytoplasm", (0.3, 0.7))),
    "cd8-cd3": (MarkerRule("dab", "lymphocyte", "membrane", (0.2, 0.5)), MarkerRule("red", "lymphocyte", "membrane", (0.3, 0.7))),
    "foxp3": (MarkerRule("dab", "lymphocyte", "nucleus", (0.05, 0.3)),),
    "ki67-cd3": (MarkerRule("dab", "tumour", "nucleus", (0.1, 0.7)), MarkerRule("red", "lymphocyte", "membrane", (0.4, 0.8))),
    "ki67-cd8": (MarkerRule("purple", "tumour", "nucleus", (0.1, 0.7)),
                 MarkerRule("yellow", "lymphocyte", "membrane", (0.2, 0.5))),
    "prf-cd3": (MarkerRule("dab", "lymphocyte", "granular", (0.05, 0.3)),
                MarkerRule("red", "lymphocyte", "membrane", (0.4, 0.8))),
    "pd1": (MarkerRule("dab", "lymphocyte", "membrane", (0.05, 0.4)),),
}
#: Stain family of each stain (for per-family evaluation).
STAIN_FAMILY = {k: ("he" if k == "he" else "ihc") for k in STAINS}


@dataclass(frozen=True)
class CompartmentRecipe:
    """How compartment sections are drawn (every range is uniform, drawn once per section).

    Attributes
    ----------
    key : str
    mpp : float
        Pixel size of the sections, µm/px (the scenario's input mpp: 1.0, the paper's 10x).
    stains : tuple of str
        Keys of :data:`STAINS` drawn from.
    he_share : float in [0, 1]
        Probability of H&E; the IHC stains share the rest equally.
    glass_probability, glass_fraction : float, (float, float)
        Chance that a section has glass, and its share of the section then.
    tumour_fraction : (float, float)
        Share of the tissue in tumour nests (before lumina and necrosis).
    nest_scale_um : (float, float)
        Correlation length of the nest field (small: many small nests; large: sheets).
    gland_probability : float
        Chance that a nest is a gland with a lumen.
    lumen_rim_um : (float, float)
        Epithelium thickness around a lumen.
    necrosis_probability, necrosis_fraction : float, (float, float)
        Chance of necrosis, and its share of the tissue then.
    aggregate_probability : float
        Chance of one or two lymphoid aggregates in the stroma.
    aggregate_radius_um : (float, float)
    stromal_til_share : (float, float)
        Share of the stromal area covered by lymphocytes outside aggregates (the TILs Working
        Group's stromal TIL %, / 100), drawn as lo + (hi - lo) U² (most sections have few TILs,
        as most tumours do).
    collagen_density : (float, float)
        Multiplier of the stroma's eosin over its estimated median (the median mixes dense
        collagen with loose and oedematous stroma).
    intratumoral_lymphocytes_per_mm2 : (float, float)
    spindle_per_mm2, macrophages_per_mm2 : (float, float)
    fragment_clusters_per_mm2 : (float, float)
        Karyorrhectic clusters (2-6 fragments each) per mm² of necrosis.
    pen_probability : float
        Chance of pen strokes.
    vector_spread : float
        Stain vectors are drawn with this multiple of the covariance seen across real images
        (wide variation for the multistain claim).
    strength : (float, float)
        Multiplier of each stain's concentrations.
    blur_sigma_um, noise_sd : (float, float)
        Point-spread function and sensor noise (RGB in [0, 1]).
    min_region_um2 : float
        Holes and islands of a compartment smaller than this take their surroundings' label.
    """

    key: str = "compartments"
    mpp: float = 1.0
    stains: tuple[str, ...] = tuple(STAINS)
    he_share: float = 0.34
    glass_probability: float = 0.6
    glass_fraction: tuple[float, float] = (0.05, 0.45)
    tumour_fraction: tuple[float, float] = (0.15, 0.65)
    nest_scale_um: tuple[float, float] = (12.0, 45.0)
    gland_probability: float = 0.4
    lumen_rim_um: tuple[float, float] = (12.0, 22.0)
    necrosis_probability: float = 0.55
    necrosis_fraction: tuple[float, float] = (0.05, 0.3)
    aggregate_probability: float = 0.3
    aggregate_radius_um: tuple[float, float] = (25.0, 70.0)
    stromal_til_share: tuple[float, float] = (0.0, 0.35)
    intratumoral_lymphocytes_per_mm2: tuple[float, float] = (0.0, 1500.0)
    collagen_density: tuple[float, float] = (0.9, 2.2)
    spindle_per_mm2: tuple[float, float] = (800.0, 2500.0)
    macrophages_per_mm2: tuple[float, float] = (50.0, 400.0)
    fragment_clusters_per_mm2: tuple[float, float] = (8000.0, 25000.0)
    pen_probability: float = 0.12
    vector_spread: float = 1.5
    strength: tuple[float, float] = (0.6, 1.5)
    blur_sigma_um: tuple[float, float] = (0.2, 1.0)
    noise_sd: tuple[float, float] = (0.004, 0.025)
    min_region_um2: float = 150.0

    def stain_probabilities(self) -> np.ndarray:
        """(len(stains),) float64 probabilities: :attr:`he_share` for H&E, the rest split over the IHC stains."""
        n_ihc = sum(s != "he" for s in self.stains)
        if "he" not in self.stains:
            return np.full(len(self.stains), 1.0 / len(self.stains))
        if n_ihc == 0:
            return np.ones(1)
        return np.array([self.he_share if s == "he" else (1 - self.he_share) / n_ihc for s in self.stains])


#: The recipe the scenario is trained on.
COMPARTMENTS = CompartmentRecipe()


@dataclass
class CompartmentSection:
    """One synthetic section with its ground truth.

    Attributes
    ----------
    image : (H, W, 3) uint8 RGB
        The scanned section (the model input).
    labels : (H, W) uint8 in {0, 1, 2, 3}
        Ground-truth compartment of each pixel (:data:`COMPARTMENT_LABELS`).
    lymphocyte_mask : (H, W) bool
        Pixels covered by a lymphocyte (nucleus), for the exact stromal TIL %.
    cells : pandas.DataFrame
        One row per cell: ``x_px``, ``y_px`` (float64, pixel centres at integers), ``x_um``,
        ``y_um``, ``kind`` (tumour, lymphocyte, spindle, macrophage, fragment), ``role``
        (tumour, immune, stroma, other), ``compartment`` (label at the centre, int),
        ``semi_axis_a_um``, ``semi_axis_b_um`` (float64). µm follow the cell table's convention
        (:func:`core.cells.make_cell_table`): ``x_um = x_px * mpp``.
    stain : str
        Key of :data:`STAINS`.
    mpp : float, µm/px
    seed : int
    """

    image: np.ndarray
    labels: np.ndarray
    lymphocyte_mask: np.ndarray
    cells: pd.DataFrame
    stain: str
    mpp: float
    seed: int

    @property
    def stain_family(self) -> str:
        return STAIN_FAMILY[self.stain]

    def area_mm2(self, compartment: str) -> float:
        """Area of one compartment in mm²."""
        return float((self.labels == COMPARTMENT_LABELS[compartment]).sum()) * self.mpp**2 / 1e6

    @property
    def stromal_til_percent(self) -> float | None:
        """Exact stromal TIL %: lymphocyte-covered stromal area / stromal area x 100 (None without stroma)."""
        stroma = self.labels == COMPARTMENT_LABELS["stroma"]
        return None if not stroma.any() else 100.0 * float((self.lymphocyte_mask & stroma).sum()) / float(stroma.sum())


# ------------------------------------------------------------------------------------------ fields and shapes


def _clean(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Remove islands and fill holes smaller than ``min_px`` pixels."""
    from skimage.morphology import remove_small_holes, remove_small_objects

    if min_px < 2:
        return mask
    return remove_small_holes(remove_small_objects(mask, max_size=int(min_px)), max_size=int(min_px))


def _fibres(shape, angle: float, um: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 in [0, 1]: collagen bundles, noise smoothed along ``angle`` (6-12 µm) and across it (0.6 µm)."""
    h, w = shape
    side = int(math.ceil(math.hypot(h, w))) + 4
    z = rng.standard_normal((side, side)).astype(np.float32)
    z = ndimage.gaussian_filter(z, (0.7 * um, rng.uniform(4.0, 9.0) * um), mode="wrap")
    z = ndimage.rotate(z, math.degrees(angle), reshape=False, order=1, mode="wrap")
    y0, x0 = (side - h) // 2, (side - w) // 2
    z = z[y0 : y0 + h, x0 : x0 + w]
    z = z / max(float(z.std()), 1e-6)
    iso = smooth_field(shape, 1.0 * um, rng)
    return np.clip(0.5 + 0.22 * z + 0.1 * iso, 0.0, 1.0).astype(np.float32)


def _paint(target: np.ndarray, cx, cy, a, b, angle, value: float, mode: str = "max") -> np.ndarray | None:
    """Paint an anti-aliased ellipse of ``value`` into ``target`` (in place); returns its coverage box or None."""
    y0, x0, cov = ellipse_coverage(cx, cy, a, b, angle, target.shape)
    if cov.size == 0:
        return None
    sl = (slice(y0, y0 + cov.shape[0]), slice(x0, x0 + cov.shape[1]))
    if mode == "max":
        np.maximum(target[sl], cov * value, out=target[sl])
    else:
        target[sl] += cov * value
    return y0, x0, cov


def _draw_vector(mean, cov, spread: float, rng: np.random.Generator) -> np.ndarray:
    # unit vectors vary in a plane: their covariance is singular, so a small ridge keeps Cholesky defined
    cov = np.asarray(cov, np.float64) * spread + 1e-6 * np.eye(3)
    v = rng.multivariate_normal(np.asarray(mean, np.float64), cov, method="cholesky")
    return unit(np.abs(v))


def _jitter_vector(v, sd: float, rng: np.random.Generator) -> np.ndarray:
    return unit(np.abs(np.asarray(v, np.float64) + rng.normal(0.0, sd, 3)))


# ------------------------------------------------------------------------------------------ the section


def generate_compartments(shape: tuple[int, int] = (256, 256), seed: int = 0, stain: str | None = None,
                          recipe: CompartmentRecipe = COMPARTMENTS) -> CompartmentSection:
    """Generate one synthetic section of tissue compartments with its ground-truth label map.

    Parameters
    ----------
    shape : (H, W) int
        Size in pixels at ``recipe.mpp``, each side in [32, 4096].
    seed : int >= 0
        Seeds the one ``numpy.random.Generator`` used for everything.
    stain : str, optional
        A key of :data:`STAINS`; drawn from the recipe's stains when None.
    recipe : CompartmentRecipe

    Returns
    -------
    CompartmentSection
        ``image`` (H, W, 3) uint8 RGB, ``labels`` (H, W) uint8 in {0: background, 1: tumour,
        2: stroma, 3: necrosis}, the lymphocyte mask and the cell table.

    Raises
    ------
    InputError
        If the shape or seed is out of range or the stain is unknown.

    References
    ----------
    CD-UNET paper §2 (classes and stains); module docstring for the layout and rendering.

    Example
    -------
    >>> s = generate_compartments((128, 128), seed=3, stain="he")
    >>> s.image.shape, s.labels.dtype, set(s.labels.ravel()) <= {0, 1, 2, 3}
    ((128, 128, 3), dtype('uint8'), True)
    """
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError) as err:
        raise InputError(f"shape must be (height, width) in pixels, got {shape!r}") from err
    if not (32 <= h <= 4096 and 32 <= w <= 4096):
        raise InputError(f"shape must be between 32 and 4096 px per side, got {h} x {w}")
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if stain is not None and stain not in STAINS:
        raise InputError(f"unknown stain {stain!r}; known stains: {', '.join(STAINS)}")
    unknown = [s for s in recipe.stains if s not in STAINS]
    if unknown:
        raise InputError(f"recipe {recipe.key!r} names unknown stains {unknown}; known stains: {', '.join(STAINS)}")
    rng = np.random.default_rng(int(seed))
    stain = stain or str(rng.choice(list(recipe.stains), p=recipe.stain_probabilities()))
    mpp = float(recipe.mpp)
    um = 1.0 / mpp  # pixels per µm
    lay = _layout((h, w), recipe, rng, um)
    cells = _cells(lay, recipe, rng, um)
    image, lymph = _render(lay, cells, stain, recipe, rng, um)
    labels = lay["labels"]
    table = _cell_table(cells, labels, mpp)
    return CompartmentSection(image, labels, lymph, table, stain, mpp, int(seed))


def _layout(shape, recipe: CompartmentRecipe, rng: np.random.Generator, um: float) -> dict:
    """Glass, tumour nests, lumina, necrosis, stroma, aggregates, pen: masks and the label map."""
    h, w = shape
    u = lambda r: rng.uniform(*r)  # noqa: E731
    min_px = recipe.min_region_um2 * um * um
    # glass: a smooth field plus a ramp, so that tissue has an edge
    if rng.uniform() < recipe.glass_probability:
        f = smooth_field(shape, u((40.0, 120.0)) * um, rng)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = ((xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang)) / max(h, w)
        f = f + rng.uniform(0.0, 4.0) * ramp
        tissue = f > np.quantile(f, u(recipe.glass_fraction))
        tissue = _clean(tissue, min_px * 2)
    else:
        tissue = np.ones(shape, bool)
    # tumour nests
    nest = smooth_field(shape, u(recipe.nest_scale_um) * um, rng) + 0.25 * smooth_field(shape, 4.0 * um, rng)
    tumour = np.zeros(shape, bool)
    if tissue.any():
        tumour = tissue & (nest > np.quantile(nest[tissue], 1.0 - u(recipe.tumour_fraction)))
        tumour = _clean(tumour, min_px) & tissue
    # glands: lumina in some nests (epithelium of a drawn thickness around them)
    lumen = np.zeros(shape, bool)
    comp, n_comp = ndimage.label(tumour)
    if n_comp:
        gland = np.concatenate([[False], rng.uniform(size=n_comp) < recipe.gland_probability])
        g = gland[comp]
        if g.any():
            depth = ndimage.distance_transform_edt(g) / um
            lumen = g & (depth > u(recipe.lumen_rim_um))
            lumen = _clean(lumen, min_px)
            lumen &= g
    # necrosis: comedo (centres of nests / lumina: "dirty necrosis") or a geographic patch
    necrosis = np.zeros(shape, bool)
    if tissue.any() and rng.uniform() < recipe.necrosis_probability:
        frac = u(recipe.necrosis_fraction)
        n_target = frac * tissue.sum()
        if rng.uniform() < 0.5 and tumour.any():
            depth = ndimage.distance_transform_edt(tumour)
            inner = depth[tumour & ~lumen]
            lumen_nec = lumen if rng.uniform() < 0.6 else np.zeros(shape, bool)
            share = max(0.0, 1.0 - max(n_target - lumen_nec.sum(), 0) / max(len(inner), 1))
            q = np.quantile(inner, share) if len(inner) else np.inf
            necrosis = (lumen_nec | (tumour & (depth > max(q, 6.0 * um)))) & tissue
        else:
            near = ndimage.gaussian_filter(tumour.astype(np.float32), 25.0 * um)
            f = smooth_field(shape, u((20.0, 60.0)) * um, rng) + 2.0 * near
            necrosis = tissue & (f > np.quantile(f[tissue], 1.0 - frac))
        necrosis = _clean(necrosis, min_px) & tissue
    lumen &= ~necrosis
    tumour &= ~necrosis & ~lumen
    stroma = tissue & ~tumour & ~necrosis & ~lumen
    labels = np.zeros(shape, np.uint8)
    labels[tumour] = COMPARTMENT_LABELS["tumour"]
    labels[stroma] = COMPARTMENT_LABELS["stroma"]
    labels[necrosis] = COMPARTMENT_LABELS["necrosis"]
    # lymphoid aggregates (stroma)
    aggregates = np.zeros(shape, bool)
    if stroma.any() and rng.uniform() < recipe.aggregate_probability:
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = _uniform_points(stroma, 1, rng)[0]
            r = u(recipe.aggregate_radius_um) * um
            yy, xx = np.ogrid[0:h, 0:w]
            blob = ((xx - cx) / r) ** 2 + ((yy - cy) / (r * rng.uniform(0.6, 1.0))) ** 2 <= 1.0
            aggregates |= blob & stroma
    # pen strokes: background wherever they are
    pen = np.zeros(shape, np.float32)
    if rng.uniform() < recipe.pen_probability:
        pen = _pen_strokes(shape, rng, um)
        labels[pen > 0.5] = COMPARTMENT_LABELS["background"]
    return {"shape": shape, "tissue": tissue, "tumour": tumour, "lumen": lumen, "necrosis": necrosis,
            "stroma": stroma, "aggregates": aggregates, "pen": pen, "labels": labels}


def _pen_strokes(shape, rng: np.random.Generator, um: float) -> np.ndarray:
    """(H, W) float32 ink coverage in [0, 1] of one or two smooth marker strokes."""
    h, w = shape
    ink = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 3))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        ang = rng.uniform(0, 2 * np.pi)
        steps = int(2 * max(h, w))
        for _ in range(steps):
            ang += rng.normal(0.0, 0.03)
            x, y = x + np.cos(ang), y + np.sin(ang)
            ix, iy = int(round(x)), int(round(y))
            if 0 <= ix < w and 0 <= iy < h:
                ink[iy, ix] = True
    half = rng.uniform(4.0, 15.0) * um
    d = ndimage.distance_transform_edt(~ink)
    return np.clip(half - d + 0.5, 0.0, 1.0).astype(np.float32)


@dataclass
class _Cells:
    """Cells drawn for a section, in pixels."""

    tumour_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    tumour_nuclei: list = field(default_factory=list)  # (cx, cy, a, b, angle)
    tumour_site_id: np.ndarray | None = None  # (H, W) int32 nearest tumour-cell index, -1 outside nests
    tumour_membrane: np.ndarray | None = None  # (H, W) float32
    lymphocytes: list = field(default_factory=list)
    spindles: list = field(default_factory=list)
    macrophages: list = field(default_factory=list)  # (cx, cy, a, b, angle, nucleus_a)
    fragments: list = field(default_factory=list)
    ghosts: list = field(default_factory=list)
    fibre_angle: np.ndarray | None = None
    fibre_angles: tuple[float, float] = (0.0, 0.0)
    fibre_weight: np.ndarray | None = None


def _cells(lay: dict, recipe: CompartmentRecipe, rng: np.random.Generator, um: float) -> _Cells:
    h, w = lay["shape"]
    u = lambda r: rng.uniform(*r)  # noqa: E731
    px_per_gen = GENERATOR_MPP * um  # generator pixels → section pixels
    out = _Cells()
    tumour, stroma, necrosis, lumen = lay["tumour"], lay["stroma"], lay["necrosis"], lay["lumen"]
    mm2 = lambda m: float(m.sum()) / (um * um) / 1e6  # noqa: E731
    # tumour cells: the generator's tumour cell type on a jittered lattice (polygonal cells)
    # carcinoma cells are packed: lattice spacing 1.5 x the drawn cell semi-axis (cells 11-19 µm apart)
    cell_a = u(TUMOUR_CELL.semi_axes_px) * px_per_gen
    rim = np.zeros((h, w), bool)
    if lumen.any():  # gland epithelium is crowded (pseudostratified columnar cells): a denser lattice
        rim = tumour & (ndimage.distance_transform_edt(~lumen) < 30 * um)
    xy = np.r_[_lattice(tumour & ~rim, 1.5 * cell_a, 0.12, rng), _lattice(rim, 0.95 * cell_a, 0.12, rng)]
    out.tumour_xy = xy
    if len(xy):
        ys, xs = np.nonzero(tumour)
        d, idx = cKDTree(xy).query(np.c_[xs, ys], k=min(2, len(xy)))
        site = np.full((h, w), -1, np.int32)
        site[ys, xs] = idx[:, 0] if idx.ndim == 2 else idx
        memb = np.zeros((h, w), np.float32)
        if idx.ndim == 2:
            memb[ys, xs] = np.clip(1.0 - (d[:, 1] - d[:, 0]) / (0.8 * um), 0.0, 1.0)
        out.tumour_site_id, out.tumour_membrane = site, memb
        # columnar nuclei around lumina: long axis along the gradient of the distance to the lumen
        gy = gx = None
        if lumen.any():
            dl = ndimage.distance_transform_edt(~lumen)
            gy, gx = np.gradient(ndimage.gaussian_filter(dl, 2.0))
        na_lo, na_hi = (v * px_per_gen for v in TUMOUR_CELL.nucleus_semi_axes_px)
        for x, y in xy:
            a = rng.uniform(na_lo, na_hi)
            b = a * rng.uniform(0.55, 0.95)
            angle = rng.uniform(0, np.pi)
            ix, iy = int(np.clip(round(x), 0, w - 1)), int(np.clip(round(y), 0, h - 1))
            if gx is not None and dl[iy, ix] < 30 * um:
                angle = math.atan2(gy[iy, ix], gx[iy, ix]) + rng.normal(0, 0.2)
                b = a * rng.uniform(0.4, 0.6)
            off = rng.normal(0, 0.15 * cell_a, 2)
            out.tumour_nuclei.append((x + off[0], y + off[1], a, b, angle))
    # lymphocytes: stromal share, intratumoral density, aggregates
    la_lo, la_hi = (v * px_per_gen for v in LYMPHOCYTE.semi_axes_px)
    mean_area_px = math.pi * ((la_lo + la_hi) / 2) ** 2 * 0.85
    loose = stroma & ~lay["aggregates"]
    lo, hi = recipe.stromal_til_share
    n_str = int(round((lo + (hi - lo) * rng.uniform() ** 2) * loose.sum() / mean_area_px))
    lo, hi = recipe.intratumoral_lymphocytes_per_mm2
    n_tum = int(rng.poisson((lo + (hi - lo) * rng.uniform() ** 2) * mm2(tumour)))
    n_agg = int(round(0.55 * lay["aggregates"].sum() / mean_area_px))
    for mask, n in ((loose, n_str), (tumour, n_tum), (lay["aggregates"], n_agg)):
        for x, y in _uniform_points(mask, n, rng):
            a = rng.uniform(la_lo, la_hi)
            out.lymphocytes.append((x, y, a, a * rng.uniform(0.85, 1.0), rng.uniform(0, np.pi)))
    # collagen direction (also the spindle cells' axis): two bundle directions blended by a smooth field
    a1, a2 = rng.uniform(0, np.pi), rng.uniform(0, np.pi)
    out.fibre_weight = 1.0 / (1.0 + np.exp(-3.0 * smooth_field((h, w), 40.0 * um, rng)))
    out.fibre_angles = (a1, a2)
    out.fibre_angle = np.where(out.fibre_weight > 0.5, a1, a2).astype(np.float32)
    for x, y in _uniform_points(stroma & ~lay["aggregates"], int(rng.poisson(u(recipe.spindle_per_mm2) * mm2(stroma))), rng):
        ang = float(out.fibre_angle[int(np.clip(round(y), 0, h - 1)), int(np.clip(round(x), 0, w - 1))]) + np.pi / 2
        out.spindles.append((x, y, rng.uniform(4.0, 8.0) * um, rng.uniform(0.9, 1.7) * um, ang + rng.normal(0, 0.15)))
    for mask in (stroma, necrosis):
        n = int(rng.poisson(u(recipe.macrophages_per_mm2) * mm2(mask)))
        for x, y in _uniform_points(mask, n, rng):
            a = rng.uniform(5.0, 9.0) * um
            out.macrophages.append((x, y, a, a * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi), rng.uniform(2.5, 4.0) * um))
    # necrosis: karyorrhectic clusters of fragments (0.5-2 µm), ghost nuclei
    n_cl = int(rng.poisson(u(recipe.fragment_clusters_per_mm2) * mm2(necrosis)))
    centres = _uniform_points(necrosis, n_cl, rng)
    k = rng.integers(2, 7, len(centres))
    c = np.repeat(centres, k, axis=0)
    sizes = rng.uniform(0.5, 2.0, len(c)) * um
    out.fragments = [(x, y, a, a * 0.7, 0.0) for (x, y), a in zip(c + rng.normal(0, 2.5 * um, c.shape), sizes)]
    for x, y in _uniform_points(necrosis, int(rng.poisson(600.0 * mm2(necrosis))), rng):
        a = rng.uniform(3.0, 6.0) * um
        out.ghosts.append((x, y, a, a * rng.uniform(0.6, 0.95), rng.uniform(0, np.pi)))
    return out


def _render(lay: dict, cells: _Cells, stain: str, recipe: CompartmentRecipe, rng: np.random.Generator,
            um: float) -> tuple[np.ndarray, np.ndarray]:
    """Concentration maps → Beer-Lambert RGB, blur, noise: (H, W, 3) uint8 and the (H, W) bool lymphocyte mask."""
    h, w = lay["shape"]
    u = lambda r: rng.uniform(*r)  # noqa: E731
    he = stain == "he"
    est = STAIN_ESTIMATE["he" if he else "ihc"]
    c_he = STAIN_ESTIMATE["he"]["concentration"]

    def level(mean_sd, lo=0.05):
        m, sd = mean_sd
        return max(lo, float(rng.normal(m, 0.5 * sd)))

    strength = {k: u(recipe.strength) for k in ("h", "e", "dab", "red", "purple", "yellow")}
    tissue, stroma, necrosis = lay["tissue"], lay["stroma"], lay["necrosis"]
    H = np.zeros((h, w), np.float32)
    E = np.zeros((h, w), np.float32)
    chrom = {}
    # haematoxylin levels: H&E measured per object kind; IHC from its nucleus level, same ratios
    if he:
        lv_tum, lv_imm = level(c_he["tumour_nucleus_h"], 0.18), level(c_he["immune_nucleus_h"], 0.3)
        lv_str = level(c_he["stroma_nucleus_h"], 0.15)
        lv_bg = rng.uniform(0.02, 0.06)
    else:
        ci = est["concentration"]
        lv_imm = level(ci["nucleus_h"], 0.3) * 0.8
        lv_tum, lv_str = lv_imm * 0.61, lv_imm * 0.56
        lv_bg = level(ci["background_h"], 0.05) * 0.45
    lv_imm = max(lv_imm, 1.3 * lv_tum)  # lymphocytes are the darkest nuclei
    lv_tum = max(lv_tum, rng.uniform(0.55, 0.85) * lv_imm)  # crowded carcinoma nuclei are dark too (the
    # estimate is a median in 1.5 µm discs, which for large vesicular nuclei includes their pale centres)
    # background counterstain and eosin of the compartments
    tex = 1.0 + 0.25 * smooth_field((h, w), 1.0 * um, rng)
    H += lv_bg * tissue * tex
    wf = cells.fibre_weight
    fibres = wf * _fibres((h, w), cells.fibre_angles[0], um, rng) + (1 - wf) * _fibres((h, w), cells.fibre_angles[1], um, rng)
    loose = smooth_field((h, w), 20.0 * um, rng) > rng.uniform(0.3, 1.5)
    collagen = (0.35 + 1.3 * fibres) * np.where(loose, 0.45, 1.0) * u(recipe.collagen_density)
    debris = np.clip(1.0 + 0.35 * smooth_field((h, w), 1.5 * um, rng) + 0.25 * smooth_field((h, w), 8.0 * um, rng), 0.2, 2.0)
    site = cells.tumour_site_id
    if site is not None:
        per_cell = rng.uniform(0.75, 1.25, len(cells.tumour_xy)).astype(np.float32)
        cyto = np.where(site >= 0, per_cell[np.maximum(site, 0)], 0.0).astype(np.float32) * (1.0 + 0.5 * cells.tumour_membrane)
    else:
        cyto = np.zeros((h, w), np.float32)
    if he:
        E += level(c_he["stroma_e"], 0.08) * stroma * collagen
        E += level(c_he["tumour_cytoplasm_e"], 0.08) * cyto * tex
        H += 0.25 * lv_bg * cyto  # amphophilic carcinoma cytoplasm
        E += level(c_he["necrosis_e"], 0.12) * 1.2 * necrosis * debris
        H += level(c_he["necrosis_h"], 0.08) * 0.5 * necrosis * debris
    else:  # a counterstain shows cytoplasm and collagen only faintly
        # ... while necrotic debris takes the haematoxylin as a granular blue haze
        H += lv_bg * (0.5 * stroma * collagen + 0.6 * cyto) + max(lv_bg, 0.04) * 2.2 * necrosis * debris
    # nuclei
    nuc = np.zeros((h, w), np.float32)
    chromatin = 1.0 + 0.3 * smooth_field((h, w), 0.6 * um, rng)
    for cx, cy, a, b, ang in cells.tumour_nuclei:
        v = lv_tum * rng.uniform(0.7, 1.3)
        box = _paint(nuc, cx, cy, a, b, ang, v)
        if box is not None:  # vesicular nucleus: a darker nuclear membrane
            add_coverage(nuc, ring_coverage(box, ellipse_coverage(cx, cy, max(a - 0.8 * um, 0.5), max(b - 0.8 * um, 0.5), ang, (h, w))), 0.5 * v)
        if rng.uniform() < 0.5:  # nucleolus
            _paint(nuc, cx + rng.normal(0, 0.3 * a), cy + rng.normal(0, 0.3 * b), 0.7 * um, 0.7 * um, 0.0, lv_tum * 2.0)
    lymph_nuc = np.zeros((h, w), np.float32)
    for cx, cy, a, b, ang in cells.lymphocytes:
        _paint(lymph_nuc, cx, cy, a, b, ang, lv_imm * rng.uniform(0.85, 1.15))
    for cx, cy, a, b, ang in cells.spindles:
        _paint(nuc, cx, cy, a, b, ang, lv_str * rng.uniform(0.8, 1.3))
    macro_body = np.zeros((h, w), np.float32)
    for cx, cy, a, b, ang, na in cells.macrophages:
        _paint(macro_body, cx, cy, a, b, ang, 1.0)
        _paint(nuc, cx + rng.normal(0, 0.25 * a), cy + rng.normal(0, 0.25 * b), na, na * 0.8, ang, lv_str * 1.1)
    for cx, cy, a, b, ang in cells.ghosts:
        _paint(nuc, cx, cy, a, b, ang, lv_tum * rng.uniform(0.15, 0.35))
    if cells.fragments:  # small dense fragments: impulses of their area, blurred to their size (fast)
        frag = np.zeros((h, w), np.float32)
        f = np.asarray(cells.fragments)
        ix, iy = np.round(f[:, 0]).astype(int), np.round(f[:, 1]).astype(int)
        ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        np.add.at(frag, (iy[ok], ix[ok]), (np.pi * f[ok, 2] * f[ok, 3]) * rng.uniform(1.0, 1.6, int(ok.sum())))
        sig = 0.7 * um
        frag = ndimage.gaussian_filter(frag, sig) * lv_imm
        nuc += np.minimum(frag, 2.0 * lv_imm)
    H += (nuc + lymph_nuc) * chromatin
    if he:
        E += macro_body * level(c_he["tumour_cytoplasm_e"], 0.08) * 0.6 * (1.0 + 0.4 * smooth_field((h, w), 1.0 * um, rng))
    lymph_mask = lymph_nuc > 0.5 * lv_imm * 0.85
    # IHC chromogens on their targets
    for rule in STAINS[stain]:
        share = u(rule.positive_share)
        lvl = level(STAIN_ESTIMATE["ihc"]["concentration"]["dab_positive"], 0.3) * 0.75
        m = chrom.setdefault(rule.chromogen, np.zeros((h, w), np.float32))
        if rule.target == "lymphocyte":
            for cx, cy, a, b, ang in cells.lymphocytes:
                if rng.uniform() >= share:
                    continue
                v = lvl * rng.uniform(0.6, 1.2)
                if rule.pattern == "membrane":
                    box = ellipse_coverage(cx, cy, a + 1.0 * um, b + 1.0 * um, ang, (h, w))
                    inner = ellipse_coverage(cx, cy, max(a - 0.3 * um, 0.3), max(b - 0.3 * um, 0.3), ang, (h, w))
                    add_coverage(m, ring_coverage(box, inner), v)
                elif rule.pattern == "nucleus":
                    _paint(m, cx, cy, a, b, ang, v)
                else:  # granular: a few dots in the thin cytoplasm
                    for _ in range(int(rng.integers(2, 5))):
                        t = rng.uniform(0, 2 * np.pi)
                        gx, gy = cx + (a + 0.4 * um) * np.cos(t), cy + (b + 0.4 * um) * np.sin(t)
                        _paint(m, gx, gy, 0.5 * um, 0.5 * um, 0.0, v * 1.3)
        elif rule.target == "tumour":
            if rule.pattern == "nucleus":
                for cx, cy, a, b, ang in cells.tumour_nuclei:
                    if rng.uniform() < share:
                        _paint(m, cx, cy, a, b, ang, lvl * rng.uniform(0.6, 1.2))
            elif site is not None:
                pos = (rng.uniform(size=len(cells.tumour_xy)) < share).astype(np.float32)
                m += lvl * 0.6 * np.where(site >= 0, pos[np.maximum(site, 0)], 0.0).astype(np.float32) * cyto * tex
        elif rule.target == "macrophage":
            for cx, cy, a, b, ang, _ in cells.macrophages:
                if rng.uniform() < share:
                    _paint(m, cx, cy, a, b, ang, lvl * rng.uniform(0.4, 0.9) * (1.0 + 0.3 * rng.standard_normal()))
    if not he and chrom and rng.uniform() < 0.5:  # non-specific chromogen in necrosis
        k = next(iter(chrom))
        chrom[k] += necrosis * debris * rng.uniform(0.1, 0.35)
    # Beer-Lambert with drawn stain vectors and strengths
    spread = recipe.vector_spread
    v_h = _draw_vector(est["hematoxylin"]["mean"], est["hematoxylin"]["cov"], spread, rng)
    od = H[..., None] * (strength["h"] * v_h.astype(np.float32))
    if he:
        v_e = _draw_vector(est["eosin"]["mean"], est["eosin"]["cov"], spread, rng)
        for _ in range(20):  # two stains 25° apart at least, or the section has one colour
            if float(v_h @ v_e) < math.cos(math.radians(25.0)):
                break
            v_e = _draw_vector(est["eosin"]["mean"], est["eosin"]["cov"], spread, rng)
        od += E[..., None] * (strength["e"] * v_e.astype(np.float32))
    for k, m in chrom.items():
        if k == "dab":
            v = _draw_vector(est["dab"]["mean"], est["dab"]["cov"], spread, rng)
        else:
            v = _jitter_vector(REFERENCE_VECTORS[k][0], 0.05, rng)
        od += np.clip(m, 0, None)[..., None] * (strength[k] * v.astype(np.float32))
    pen = lay["pen"]
    if pen.any():
        ink = REFERENCE_VECTORS[str(rng.choice(["ink_blue", "ink_green", "ink_black", "ink_red"]))][0]
        od += (pen * rng.uniform(0.5, 1.4))[..., None] * (_jitter_vector(ink, 0.05, rng).astype(np.float32)
                                                           * (1.0 + 0.2 * smooth_field((h, w), 3.0 * um, rng)[..., None]))
    g = STAIN_ESTIMATE["glass"]
    white = np.clip(rng.multivariate_normal(g["mean"], np.asarray(g["cov"]) * spread + 1e-6 * np.eye(3), method="cholesky"),
                    0.8, 1.0)
    white = white / max(white.max(), 1e-6) * rng.uniform(0.93, 1.0)
    rgb = white.astype(np.float32) * np.power(np.float32(10.0), -np.clip(od, 0, None))
    blur = u(recipe.blur_sigma_um) * um
    rgb = ndimage.gaussian_filter(rgb, (blur, blur, 0))
    rgb += rng.normal(0.0, u(recipe.noise_sd), rgb.shape).astype(np.float32)
    image = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, lymph_mask


def _cell_table(cells: _Cells, labels: np.ndarray, mpp: float) -> pd.DataFrame:
    h, w = labels.shape
    rows = []
    for kind, role, items in (("tumour", "tumour", cells.tumour_nuclei), ("lymphocyte", "immune", cells.lymphocytes),
                              ("spindle", "stroma", cells.spindles),
                              ("macrophage", "other", [c[:5] for c in cells.macrophages]),
                              ("fragment", "other", cells.fragments)):
        for cx, cy, a, b, _ in items:
            rows.append((cx, cy, kind, role, a, b))
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in (("x_px", float), ("y_px", float), ("x_um", float),
                             ("y_um", float), ("kind", object), ("role", object), ("compartment", np.int64),
                             ("semi_axis_a_um", float), ("semi_axis_b_um", float))})
    a = np.array([r[0:2] for r in rows], np.float64)
    ix = np.clip(np.round(a[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.round(a[:, 1]).astype(int), 0, h - 1)
    return pd.DataFrame({
        "x_px": a[:, 0], "y_px": a[:, 1], "x_um": a[:, 0] * mpp, "y_um": a[:, 1] * mpp,
        "kind": pd.Series([r[2] for r in rows], dtype=object), "role": pd.Series([r[3] for r in rows], dtype=object),
        "compartment": labels[iy, ix].astype(np.int64),
        "semi_axis_a_um": np.array([r[4] for r in rows]) * mpp, "semi_axis_b_um": np.array([r[5] for r in rows]) * mpp,
    })
