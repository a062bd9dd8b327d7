"""Stochastic tissue generator: synthetic stained sections with exact ground truth.

The training-data engine for every TILscope model that has no public labelled data
(melanoma immunofluorescence, multiplex IHC, tissue compartments). It implements the
generator of the TNRD melanoma paper (§2.2, Table 1):

- every cell and nucleus is an ellipse whose two semi-axes and inclination are drawn
  from uniform distributions;
- cells are placed at random or fill the regions of a random Voronoi tessellation;
- overlap with chosen cell types (and centres inside other cells) can be excluded;
- nuclei are visible only for a share of the cells (60 % in Table 1);
- cell and nucleus colours are drawn from multivariate normal distributions;
- structured (spatially correlated) noise is added to cells and background, with
  colour covariances estimated from real images.

A stain is a *recipe* (:class:`StainRecipe`), a frozen dataclass of cell types
(:class:`CellType`), colours and noise; :func:`generate` turns a recipe, an image
shape and a seed into a :class:`SyntheticSection`, the same one for the same
arguments on every machine (one ``numpy.random.Generator`` seeded once).

Ground truth per section: the clean RGB image, the noisy RGB image the model sees,
the paper's classification mask (local cell concentration in circular
neighbourhoods, §2.2), an instance mask and a cell table with every cell's centroid,
type, role, semi-axes and concentration, so that detection and classification models
can train on it too.

Colours. The H&E recipe's means and covariances were estimated from the 70 training
images of ``../shared/data/he-crc-cell-points`` (real H&E with nucleus points) by
:func:`estimate_he_colours`: pixels in discs of radius 3 px around *inflammatory*
points give the immune nucleus colour, around *epithelial* points the tumour nucleus
colour; a ring 7-11 px around epithelial points, more than 6 px from every marked
nucleus and not dark (mean RGB >= 0.55), gives the tumour cytoplasm; pixels more than
15 px from every marked nucleus and not white lumen (mean RGB <= 0.92) give the
background (stroma). Between-cell covariances come from per-cell mean colours,
within-cell (texture) covariances from the pixels' deviations from their cell mean.
There is no real melanoma IF image in the project's data; the IF recipe's values
(CD45 red, gp100 green, DAPI blue on a dark background) are chosen by hand to match
the paper's description and Fig. 2 and are documented on :data:`IF_MELANOMA`.

References
----------
TNRD melanoma paper (shared/papers/tnrd-variational-network-melanoma.txt), §2.2 and
Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from core.errors import InputError

#: Table 1 counts are per image of this many pixels (500 x 500).
REFERENCE_AREA_PX = 500 * 500


@dataclass(frozen=True)
class ColorModel:
    """A multivariate normal colour, RGB in [0, 1].

    Attributes
    ----------
    mean : (3,) tuple of float in [0, 1]
        Expected RGB colour.
    between_cov : (3, 3) nested tuple of float
        Covariance of one object's colour around ``mean`` (drawn once per cell).
    within_cov : (3, 3) nested tuple of float
        Covariance of the structured noise inside one object (pixel texture).
    """

    mean: tuple[float, float, float]
    between_cov: tuple[tuple[float, ...], ...]
    within_cov: tuple[tuple[float, ...], ...]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One colour: (3,) float64 RGB, clipped to [0, 1]."""
        return np.clip(rng.multivariate_normal(self.mean, np.asarray(self.between_cov), method="cholesky"), 0.0, 1.0)


@dataclass(frozen=True)
class CellType:
    """One kind of cell in a recipe (one row of the paper's Table 1).

    Attributes
    ----------
    name : str
        ``"tumour"``, ``"immune"``, ``"stroma"``...
    role : str
        One of :data:`core.cells.ROLES`.
    semi_axes_px : (float, float)
        Uniform range of both semi-axes of the cell ellipse, pixels.
    color : ColorModel
        Cell body colour.
    nucleus_semi_axes_px : (float, float) or None
        Uniform range of the nucleus semi-axes, pixels (clipped to 0.95 times the
        cell's); None for cells drawn without a separate nucleus.
    nucleus_color : ColorModel or None
    nucleus_visible : float in [0, 1]
        Probability that a cell's nucleus is visible (Table 1: 60 %).
    count : int
        Cells per 500 x 500 px for ``placement="random"`` (scaled with the image area).
    placement : {"random", "voronoi"}
        Uniform centres over the image, or filling Voronoi regions.
    voronoi_regions : int
        Regions of the tessellation this type fills (``placement="voronoi"``).
    scattered : int
        Extra cells per 500 x 500 px placed at random inside the *other* types'
        Voronoi regions (isolated cells), before those regions are filled.
    avoid : tuple of str
        Cell types this type must not overlap (its own name for "no overlapping").
    """

    name: str
    role: str
    semi_axes_px: tuple[float, float]
    color: ColorModel
    nucleus_semi_axes_px: tuple[float, float] | None = None
    nucleus_color: ColorModel | None = None
    nucleus_visible: float = 0.6
    count: int = 0
    placement: str = "random"
    voronoi_regions: int = 0
    scattered: int = 0
    avoid: tuple[str, ...] = ()


@dataclass(frozen=True)
class StainRecipe:
    """A stain: cell types, background, noise and the classification rule.

    Attributes
    ----------
    key : str
        Recipe name, e.g. ``"if-melanoma"``.
    modality : {"fluorescence", "brightfield"}
    cell_types : tuple of CellType
        Drawn in this order (later types on top).
    background : ColorModel
    voronoi_total : int
        Regions of the Voronoi tessellation per 500 x 500 px (Table 1: 7).
    classify_type : str
        The cell type that can be classified (``"immune"``).
    concentration_of : str
        Cell type whose area fraction in the neighbourhood is the concentration:
        ``"tumour"`` (scenario 1, contact with melanoma cells) or ``"immune"``
        (scenario 2, dense infiltrates).
    radius_px : float
        Radius of the circular neighbourhood around each cell's centroid, pixels.
    threshold : float
        Concentration above which a cell is classified (mask 1.0): 0.4 (scenario 1)
        or 0.2 (scenario 2).
    half_band : (float, float) or None
        Concentrations in this closed range get mask 0.5 (scenario 1: [0.2, 0.4]).
    blur_sigma_px : float
        Gaussian point-spread function applied to the noisy image.
    texture_sigma_px : float
        Correlation length of the structured noise.
    texture_gain : float
        Multiplier of the within-object covariances for the structured noise.
    white_noise : float
        Standard deviation of additive white noise per channel.
    """

    key: str
    modality: str
    cell_types: tuple[CellType, ...]
    background: ColorModel
    classify_type: str
    concentration_of: str
    radius_px: float
    threshold: float
    half_band: tuple[float, float] | None = None
    voronoi_total: int = 7
    blur_sigma_px: float = 1.0
    texture_sigma_px: float = 2.0
    texture_gain: float = 1.0
    white_noise: float = 0.05

    def cell_type(self, name: str) -> CellType:
        """The cell type called ``name``.

        Raises
        ------
        InputError
            If the recipe has no such type.
        """
        for ct in self.cell_types:
            if ct.name == name:
                return ct
        raise InputError(f"recipe {self.key!r} has no cell type {name!r}; it has {[c.name for c in self.cell_types]}")

    def with_counts(self, **counts: int) -> "StainRecipe":
        """A copy with other cell numbers per 500 x 500 px, e.g. ``with_counts(immune=80)``.

        For Voronoi-placed types the number is the count of ``scattered`` cells.

        Raises
        ------
        InputError
            If a name is not a cell type of the recipe or a count is negative.
        """
        types = []
        names = {c.name for c in self.cell_types}
        unknown = sorted(set(counts) - names)
        if unknown:
            raise InputError(f"recipe {self.key!r} has no cell type(s) {unknown}; it has {sorted(names)}")
        for ct in self.cell_types:
            if ct.name in counts:
                n = int(counts[ct.name])
                if n < 0:
                    raise InputError(f"cell count for {ct.name!r} must be >= 0, got {n}")
                ct = replace(ct, scattered=n) if ct.placement == "voronoi" else replace(ct, count=n)
            types.append(ct)
        return replace(self, cell_types=tuple(types))

    def with_noise(self, factor: float) -> "StainRecipe":
        """A copy with structured and white noise multiplied by ``factor`` >= 0.

        Raises
        ------
        InputError
            If ``factor`` is negative.
        """
        if factor < 0:
            raise InputError(f"noise factor must be >= 0, got {factor}")
        return replace(self, texture_gain=self.texture_gain * factor, white_noise=self.white_noise * factor)


@dataclass
class SyntheticSection:
    """One generated section and its ground truth.

    Attributes
    ----------
    clean : (H, W, 3) float32 RGB in [0, 1]
        Noise-free image (the denoising target g_rgb of eq. 4).
    noisy : (H, W, 3) float32 RGB in [0, 1]
        Blurred image with structured and white noise (the model input u0_rgb).
    mask : (H, W) float32 in {0, 0.5, 1}
        Classification mask g_m: 1 on the pixels of classified immune cells, 0.5 on
        those of cells in the half band (scenario 1 only), 0 elsewhere.
    instance : (H, W) int32
        ``cell_id`` of the topmost cell at each pixel, 0 for background.
    cells : pandas.DataFrame
        One row per cell: ``cell_id`` (int, as in ``instance``), ``x_px``, ``y_px``
        (centroid of the whole ellipse, pixels, x = column; may lie outside the image
        for cells cut by the border), ``type``, ``role``, ``semi_axis_a_px``,
        ``semi_axis_b_px``, ``angle_rad``, ``nucleus_visible`` (bool),
        ``visible_area_px`` (pixels in ``instance``), ``concentration`` (in [0, 1],
        NaN for types that are not classified), ``mask_value`` (0, 0.5 or 1) and
        ``classified`` (mask_value == 1).
    recipe : StainRecipe
    seed : int
    """

    clean: np.ndarray
    noisy: np.ndarray
    mask: np.ndarray
    instance: np.ndarray
    cells: pd.DataFrame
    recipe: StainRecipe
    seed: int

    @property
    def noisy_uint8(self) -> np.ndarray:
        """The noisy image as (H, W, 3) uint8 RGB, as a microscope would save it."""
        return np.clip(self.noisy * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def classified_xy(self, value: float = 1.0) -> np.ndarray:
        """(N, 2) float64 x, y in pixels of the cells whose mask value is ``value``."""
        rows = self.cells[np.isclose(self.cells["mask_value"], value)]
        return rows[["x_px", "y_px"]].to_numpy(np.float64)


def _cov(diag, off=0.0):
    """Symmetric 3x3 covariance with variances ``diag`` and correlation ``off`` between channels."""
    d = np.sqrt(np.asarray(diag, float))
    c = np.full((3, 3), off) + (1 - off) * np.eye(3)
    m = c * np.outer(d, d)
    return tuple(tuple(float(v) for v in row) for row in m)


def _as_cov(m) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(m))


# --- Scenario 1: melanoma immunofluorescence (CD45 red, gp100 green, DAPI blue) -------------
#: Hand-chosen values (no real IF melanoma data in the project): a dark background
#: (0.04, 0.04, 0.06); gp100+ melanoma cytoplasm green (0.12, 0.55, 0.12); melanoma
#: nuclei "light blue" (DAPI over gp100: 0.25, 0.55, 0.85); CD45+ immune cells red
#: (0.75, 0.12, 0.10) with blue nuclei (0.20, 0.15, 0.80); stroma / dedifferentiated
#: melanoma cells DAPI-only blue (0.10, 0.12, 0.55). Between-cell standard deviations
#: 0.05-0.08 per channel, within-cell texture standard deviations about 0.06, strongly
#: correlated across channels (illumination).
IF_MELANOMA = StainRecipe(
    key="if-melanoma",
    modality="fluorescence",
    cell_types=(
        CellType(
            "tumour", "tumour", (20, 35),
            ColorModel((0.12, 0.55, 0.12), _cov([0.03**2, 0.07**2, 0.03**2], 0.3), _cov([0.03**2, 0.07**2, 0.03**2], 0.6)),
            nucleus_semi_axes_px=(8, 12),
            nucleus_color=ColorModel((0.25, 0.55, 0.85), _cov([0.04**2, 0.06**2, 0.07**2], 0.3), _cov([0.03**2, 0.05**2, 0.06**2], 0.6)),
            count=60, placement="random",
        ),
        CellType(
            "stroma", "stroma", (5, 15),
            ColorModel((0.10, 0.12, 0.55), _cov([0.03**2, 0.03**2, 0.08**2], 0.3), _cov([0.02**2, 0.02**2, 0.06**2], 0.6)),
            count=40, placement="random", avoid=("stroma", "immune"),
        ),
        CellType(
            "immune", "immune", (8, 20),
            ColorModel((0.75, 0.12, 0.10), _cov([0.08**2, 0.03**2, 0.03**2], 0.3), _cov([0.07**2, 0.02**2, 0.02**2], 0.6)),
            nucleus_semi_axes_px=(7, 8),
            nucleus_color=ColorModel((0.20, 0.15, 0.80), _cov([0.04**2, 0.03**2, 0.07**2], 0.3), _cov([0.03**2, 0.02**2, 0.06**2], 0.6)),
            count=40, placement="random", avoid=("immune", "stroma"),
        ),
    ),
    background=ColorModel((0.04, 0.04, 0.06), _cov([0.01**2] * 3, 0.5), _cov([0.03**2] * 3, 0.7)),
    classify_type="immune",
    concentration_of="tumour",
    radius_px=25.0,
    threshold=0.4,
    half_band=(0.2, 0.4),
    blur_sigma_px=1.2,
    texture_sigma_px=2.5,
    texture_gain=1.0,
    white_noise=0.06,
)

# --- Scenario 2: H&E melanoma ---------------------------------------------------------------
#: Estimated by :func:`estimate_he_colours` from the 70 training images of
#: ``he-crc-cell-points`` (see the module docstring; regenerate with
#: ``python -m core.generator --estimate-he``).
HE_ESTIMATE = {
    "immune_nucleus": {"mean": (0.512, 0.3664, 0.6928),
                       "between_cov": ((0.0071, 0.0064, 0.0041), (0.0064, 0.0065, 0.0043), (0.0041, 0.0043, 0.0038)),
                       "within_cov": ((0.017, 0.0165, 0.0119), (0.0165, 0.0164, 0.0118), (0.0119, 0.0118, 0.0093)),
                       "n_objects": 4708},
    "tumour_nucleus": {"mean": (0.639, 0.4911, 0.7797),
                       "between_cov": ((0.0114, 0.013, 0.0079), (0.013, 0.0159, 0.0097), (0.0079, 0.0097, 0.0065)),
                       "within_cov": ((0.0131, 0.0134, 0.0097), (0.0134, 0.0139, 0.01), (0.0097, 0.01, 0.0079)),
                       "n_objects": 5395},
    "tumour_cytoplasm": {"mean": (0.7619, 0.6085, 0.847),
                         "between_cov": ((0.0024, 0.0029, 0.001), (0.0029, 0.0049, 0.002), (0.001, 0.002, 0.0011)),
                         "within_cov": ((0.0107, 0.0119, 0.007), (0.0119, 0.0141, 0.0079), (0.007, 0.0079, 0.0053)),
                         "n_objects": 5392},
    "background": {"mean": (0.8428, 0.6898, 0.8522),
                   "between_cov": ((0.0007, 0.0008, 0.0002), (0.0008, 0.0041, 0.002), (0.0002, 0.002, 0.0014)),
                   "within_cov": ((0.0066, 0.0078, 0.0048), (0.0078, 0.0116, 0.0065), (0.0048, 0.0065, 0.0047)),
                   "n_objects": 70},
}


def _he_color(name: str) -> ColorModel:
    e = HE_ESTIMATE[name]
    return ColorModel(tuple(e["mean"]), _as_cov(e["between_cov"]), _as_cov(e["within_cov"]))


HE_MELANOMA = StainRecipe(
    key="he-melanoma",
    modality="brightfield",
    cell_types=(
        CellType(
            "immune", "immune", (4, 8), _he_color("immune_nucleus"),
            placement="voronoi", voronoi_regions=2, scattered=30, avoid=("immune", "tumour"),
        ),
        CellType(
            "tumour", "tumour", (15, 25), _he_color("tumour_cytoplasm"),
            nucleus_semi_axes_px=(3, 10), nucleus_color=_he_color("tumour_nucleus"),
            placement="voronoi", voronoi_regions=5, avoid=("immune", "tumour"),
        ),
    ),
    background=_he_color("background"),
    classify_type="immune",
    concentration_of="immune",
    radius_px=20.0,
    threshold=0.2,
    half_band=None,
    blur_sigma_px=1.0,
    texture_sigma_px=1.5,
    texture_gain=0.7,
    white_noise=0.04,
)

#: Recipes by key. IHC DAB, Hoechst and multiplex IHC recipes are to come.
RECIPES: dict[str, StainRecipe] = {r.key: r for r in (IF_MELANOMA, HE_MELANOMA)}


def get_recipe(key: str) -> StainRecipe:
    """The recipe called ``key``.

    Raises
    ------
    InputError
        If ``key`` is unknown; the message lists the known recipes.
    """
    try:
        return RECIPES[key]
    except KeyError:
        raise InputError(f"unknown stain recipe {key!r}; known recipes: {', '.join(RECIPES)}") from None


# --- Geometry -----------------------------------------------------------------------------------


def ellipse_coverage(cx: float, cy: float, a: float, b: float, angle: float, shape: tuple[int, int]):
    """Anti-aliased coverage of an ellipse on a pixel grid, in its bounding box.

    Parameters
    ----------
    cx, cy : float
        Centre, pixels (x = column, pixel centres at integers).
    a, b : float > 0
        Semi-axes along the rotated x and y axes, pixels.
    angle : float
        Inclination of the ``a`` axis to the x axis, radians.
    shape : (H, W)

    Returns
    -------
    (y0, x0, cov) : the box's top-left pixel and (h, w) float32 coverage in [0, 1]
        (empty when the ellipse misses the image).
    """
    r = max(a, b) + 1.5
    h, w = shape
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, h)
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, w)
    if y1 <= y0 or x1 <= x0:
        return 0, 0, np.zeros((0, 0), np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    rho = np.sqrt(u * u + v * v)
    # signed distance to the boundary along the ray, approximately (1 - rho) * radius there
    radius = 1.0 / np.sqrt((np.where(rho > 0, u / np.maximum(rho, 1e-9), 1) / a) ** 2
                           + (np.where(rho > 0, v / np.maximum(rho, 1e-9), 0) / b) ** 2)
    cov = np.clip((1.0 - rho) * radius + 0.5, 0.0, 1.0).astype(np.float32)
    return y0, x0, cov


def voronoi_labels(shape: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """Label map of a Voronoi tessellation of ``n`` uniform random sites.

    Returns
    -------
    (H, W) int32 in [0, n)
    """
    h, w = shape
    sites = rng.uniform([0, 0], [w, h], size=(n, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    d = (xx[None] - sites[:, 0, None, None]) ** 2 + (yy[None] - sites[:, 1, None, None]) ** 2
    return np.argmin(d, axis=0).astype(np.int32)


def smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Spatially correlated unit-variance Gaussian noise.

    Returns
    -------
    (H, W, 3) float32, each channel independent, standard deviation about 1, Gaussian
    autocorrelation of width ``sigma_px``.
    """
    z = rng.standard_normal((shape[0], shape[1], 3)).astype(np.float32)
    if sigma_px <= 0:
        return z
    out = ndimage.gaussian_filter(z, (sigma_px, sigma_px, 0), mode="wrap")
    return out / max(float(out.std()), 1e-6)


def concentration_map(target: np.ndarray, radius_px: float) -> np.ndarray:
    """Local area fraction of ``target`` in a disc of radius ``radius_px`` around each pixel.

    The disc is truncated at the image border and the fraction taken over its part
    inside the image.

    Parameters
    ----------
    target : (H, W) bool or float in [0, 1]
    radius_px : float > 0

    Returns
    -------
    (H, W) float32 in [0, 1]

    References
    ----------
    TNRD melanoma paper, §2.2 ("volumetric measure of cells in circular neighbourhoods").
    """
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (xx * xx + yy * yy <= radius_px * radius_px).astype(np.float64)
    num = _convolve_same(np.asarray(target, np.float64), disc)
    den = _convolve_same(np.ones(target.shape), disc)
    return np.clip(num / np.maximum(den, 1e-9), 0.0, 1.0).astype(np.float32)


def _convolve_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded 2-D convolution, output the size of ``image`` (FFT; odd square kernel)."""
    from scipy import fft

    h, w = image.shape
    k = kernel.shape[0]
    shape = (fft.next_fast_len(h + k - 1, real=True), fft.next_fast_len(w + k - 1, real=True))
    full = fft.irfft2(fft.rfft2(image, shape) * fft.rfft2(kernel, shape), shape)
    c = k // 2
    return full[c : c + h, c : c + w]


def cell_concentrations(target: np.ndarray, xy_px: np.ndarray, radius_px: float) -> np.ndarray:
    """Concentration of ``target`` in the disc around each cell centroid (paper §2.2).

    Parameters
    ----------
    target : (H, W) bool or float in [0, 1]
        Pixels of the cells whose concentration counts (tumour cells in scenario 1,
        immune cells in scenario 2).
    xy_px : (N, 2) float
        Cell centroids x, y in pixels (rounded to the nearest pixel, clipped to the image).
    radius_px : float > 0

    Returns
    -------
    (N,) float64 in [0, 1]
    """
    xy = np.asarray(xy_px, float).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros(0)
    h, w = target.shape
    cmap = concentration_map(target, radius_px)
    ix = np.clip(np.round(xy[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.round(xy[:, 1]).astype(int), 0, h - 1)
    return cmap[iy, ix].astype(np.float64)


def classify_concentrations(conc: np.ndarray, threshold: float, half_band: tuple[float, float] | None) -> np.ndarray:
    """Mask value of each cell from its concentration (paper §2.2).

    Parameters
    ----------
    conc : (N,) float in [0, 1]
    threshold : float
        Concentrations strictly above it give 1.0.
    half_band : (lo, hi) or None
        Concentrations in [lo, hi] give 0.5 (scenario 1: [0.2, 0.4]).

    Returns
    -------
    (N,) float32 in {0, 0.5, 1}
    """
    conc = np.asarray(conc, np.float64)
    out = np.where(conc > threshold, 1.0, 0.0)
    if half_band is not None:
        lo, hi = half_band
        out = np.where((conc >= lo) & (conc <= hi), 0.5, out)
    return out.astype(np.float32)


# --- Generation ---------------------------------------------------------------------------------


@dataclass
class _Cell:
    type: str
    role: str
    cx: float
    cy: float
    a: float
    b: float
    angle: float
    nucleus: tuple[float, float, float, float, float] | None = None  # cx, cy, a, b, angle
    color: np.ndarray | None = None
    nucleus_color: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def _scaled(n: float, area: int) -> int:
    return int(round(n * area / REFERENCE_AREA_PX))


def _draw_shape(ct: CellType, rng: np.random.Generator) -> tuple[float, float, float]:
    a, b = rng.uniform(ct.semi_axes_px[0], ct.semi_axes_px[1], size=2)
    return float(a), float(b), float(rng.uniform(0, np.pi))


def _fits(blocking: list[np.ndarray], cx, cy, a, b, angle, shape) -> tuple[bool, tuple]:
    """Whether an ellipse avoids every occupied pixel of ``blocking``, and its coverage box."""
    y0, x0, cov = ellipse_coverage(cx, cy, a, b, angle, shape)
    if cov.size == 0:
        return False, (y0, x0, cov)
    inside = cov >= 0.5
    sl = (slice(y0, y0 + cov.shape[0]), slice(x0, x0 + cov.shape[1]))
    ix, iy = int(np.clip(round(cx), 0, shape[1] - 1)), int(np.clip(round(cy), 0, shape[0] - 1))
    for occ in blocking:
        # overlap, or the centre inside another cell
        if occ[iy, ix] or np.any(occ[sl][inside]):
            return False, (y0, x0, cov)
    return True, (y0, x0, cov)


def generate(recipe: StainRecipe | str, shape: tuple[int, int] = (500, 500), seed: int = 0) -> SyntheticSection:
    """Generate one synthetic stained section with its ground truth.

    Parameters
    ----------
    recipe : StainRecipe or str
        The stain (a recipe key such as ``"if-melanoma"`` or ``"he-melanoma"``).
    shape : (H, W) int
        Image size in pixels, each side in [16, 4096]. Cell numbers of Table 1 are per
        500 x 500 px and scale with the area.
    seed : int >= 0
        Seeds the one ``numpy.random.Generator`` used for everything: the same
        arguments give the same section.

    Returns
    -------
    SyntheticSection

    Raises
    ------
    InputError
        If the shape or seed is out of range or the recipe is unknown.

    References
    ----------
    TNRD melanoma paper, §2.2 and Table 1.

    Example
    -------
    >>> s = generate("if-melanoma", (128, 128), seed=1)
    >>> s.noisy.shape, s.mask.dtype
    ((128, 128, 3), dtype('float32'))
    """
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError) as err:
        raise InputError(f"shape must be (height, width) in pixels, got {shape!r}") from err
    if not (16 <= h <= 4096 and 16 <= w <= 4096):
        raise InputError(f"shape must be between 16 and 4096 px per side, got {h} x {w}")
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(int(seed))
    area = h * w
    occ = {ct.name: np.zeros((h, w), bool) for ct in recipe.cell_types}
    cells: list[_Cell] = []

    def place(ct: CellType, sampler, tries: int, target: int | None, max_failures: int = 60) -> int:
        placed, failures = 0, 0
        blocking = [occ[name] for name in ct.avoid]
        while (target is None or placed < target) and failures < max_failures and tries > 0:
            tries -= 1
            cx, cy = sampler()
            a, b, angle = _draw_shape(ct, rng)
            ok, (y0, x0, cov) = _fits(blocking, cx, cy, a, b, angle, (h, w))
            if not ok:
                failures += 1
                continue
            failures = 0
            occ[ct.name][y0 : y0 + cov.shape[0], x0 : x0 + cov.shape[1]] |= cov >= 0.5
            cells.append(_Cell(ct.name, ct.role, float(cx), float(cy), a, b, angle))
            placed += 1
        return placed

    # Voronoi regions for the types that fill them
    vor_types = [ct for ct in recipe.cell_types if ct.placement == "voronoi"]
    region_of: dict[str, np.ndarray] = {}
    if vor_types:
        n_total = max(len(vor_types), int(round(recipe.voronoi_total * area / REFERENCE_AREA_PX)))
        labels = voronoi_labels((h, w), n_total, rng)
        order = rng.permutation(n_total)
        wanted = np.array([ct.voronoi_regions for ct in vor_types], float)
        counts = np.maximum(1, np.round(wanted / wanted.sum() * n_total)).astype(int)
        while counts.sum() > n_total:
            counts[np.argmax(counts)] -= 1
        start = 0
        for ct, k in zip(vor_types, counts):
            region_of[ct.name] = np.isin(labels, order[start : start + k])
            start += k
        # unassigned regions (rounding) go to the last type
        if start < n_total:
            region_of[vor_types[-1].name] |= np.isin(labels, order[start:])

    def region_sampler(region: np.ndarray):
        ys, xs = np.nonzero(region)

        def sample():
            if len(xs) == 0:
                return rng.uniform(0, w), rng.uniform(0, h)
            k = rng.integers(len(xs))
            return xs[k] + rng.uniform(-0.5, 0.5), ys[k] + rng.uniform(-0.5, 0.5)

        return sample

    def uniform_sampler():
        return rng.uniform(-0.5, w - 0.5), rng.uniform(-0.5, h - 0.5)

    # scattered cells first (isolated cells inside the other types' regions), then fills
    for ct in vor_types:
        if ct.scattered > 0:
            others = np.zeros((h, w), bool)
            for name, reg in region_of.items():
                if name != ct.name:
                    others |= reg
            n = _scaled(ct.scattered, area)
            place(ct, region_sampler(others), tries=50 * n + 50, target=n)
    for ct in recipe.cell_types:
        if ct.placement == "random":
            n = _scaled(ct.count, area)
            place(ct, uniform_sampler, tries=50 * n + 50, target=n)
        elif ct.placement == "voronoi":
            place(ct, region_sampler(region_of[ct.name]), tries=20000, target=None, max_failures=400)
        else:
            raise InputError(f"cell type {ct.name!r} has placement {ct.placement!r}; use 'random' or 'voronoi'")

    # drawing order follows the recipe's type order (later types on top)
    type_rank = {ct.name: i for i, ct in enumerate(recipe.cell_types)}
    cells.sort(key=lambda c: type_rank[c.type])
    for c in cells:
        ct = recipe.cell_type(c.type)
        c.color = ct.color.draw(rng)
        if ct.nucleus_semi_axes_px is not None and rng.uniform() < ct.nucleus_visible:
            na, nb = rng.uniform(*ct.nucleus_semi_axes_px, size=2)
            na, nb = min(na, 0.95 * c.a), min(nb, 0.95 * c.b)
            # nucleus somewhere inside the cell: offset up to half the free room
            off = rng.uniform(0, 0.5) * np.array([c.a - na, c.b - nb]) * rng.choice([-1, 1], 2)
            ca, sa = np.cos(c.angle), np.sin(c.angle)
            ncx = c.cx + off[0] * ca - off[1] * sa
            ncy = c.cy + off[0] * sa + off[1] * ca
            c.nucleus = (float(ncx), float(ncy), float(na), float(nb), c.angle + float(rng.uniform(-0.3, 0.3)))
            c.nucleus_color = ct.nucleus_color.draw(rng)

    # compose: clean image, object-class map for structured noise, instance map
    bg = recipe.background.draw(rng)
    clean = np.broadcast_to(bg.astype(np.float32), (h, w, 3)).copy()
    # object class per pixel: 0 background, 1 + 2*i cell body of type i, 2 + 2*i nucleus of type i
    objclass = np.zeros((h, w), np.int16)
    instance = np.zeros((h, w), np.int32)
    target_union = np.zeros((h, w), np.float32)
    full_masks: dict[int, tuple[int, int, np.ndarray]] = {}
    for cid, c in enumerate(cells, start=1):
        y0, x0, cov = ellipse_coverage(c.cx, c.cy, c.a, c.b, c.angle, (h, w))
        if cov.size == 0:
            continue
        sl = (slice(y0, y0 + cov.shape[0]), slice(x0, x0 + cov.shape[1]))
        alpha = cov[..., None]
        clean[sl] = clean[sl] * (1 - alpha) + c.color.astype(np.float32) * alpha
        inside = cov >= 0.5
        instance[sl][inside] = cid
        objclass[sl][inside] = 1 + 2 * type_rank[c.type]
        if c.type == recipe.concentration_of:
            target_union[sl] = np.maximum(target_union[sl], inside.astype(np.float32))
        full_masks[cid] = (y0, x0, inside)
        if c.nucleus is not None:
            ny0, nx0, ncov = ellipse_coverage(*c.nucleus, (h, w))
            if ncov.size:
                # clip the nucleus to its own cell's ellipse
                cell_cov = np.zeros_like(ncov)
                ys = slice(max(ny0, y0), min(ny0 + ncov.shape[0], y0 + cov.shape[0]))
                xs = slice(max(nx0, x0), min(nx0 + ncov.shape[1], x0 + cov.shape[1]))
                if ys.stop > ys.start and xs.stop > xs.start:
                    cell_cov[ys.start - ny0 : ys.stop - ny0, xs.start - nx0 : xs.stop - nx0] = cov[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
                ncov = np.minimum(ncov, cell_cov)
                nsl = (slice(ny0, ny0 + ncov.shape[0]), slice(nx0, nx0 + ncov.shape[1]))
                na = ncov[..., None]
                clean[nsl] = clean[nsl] * (1 - na) + c.nucleus_color.astype(np.float32) * na
                objclass[nsl][ncov >= 0.5] = 2 + 2 * type_rank[c.type]

    # classification (paper §2.2): concentration in a disc around each classifiable cell
    n = len(cells)
    conc = np.full(n, np.nan)
    mask_value = np.zeros(n, np.float32)
    cls_idx = [i for i, c in enumerate(cells) if c.type == recipe.classify_type]
    if cls_idx:
        xy = np.array([[cells[i].cx, cells[i].cy] for i in cls_idx])
        conc[cls_idx] = cell_concentrations(target_union, xy, recipe.radius_px)
        mask_value[cls_idx] = classify_concentrations(conc[cls_idx], recipe.threshold, recipe.half_band)
    lut = np.concatenate([[0.0], mask_value]).astype(np.float32)
    mask = lut[instance]

    # noisy image: point-spread blur, structured noise per object class, white noise
    noisy = ndimage.gaussian_filter(clean, (recipe.blur_sigma_px, recipe.blur_sigma_px, 0)) if recipe.blur_sigma_px > 0 else clean.copy()
    if recipe.texture_gain > 0:
        z = smooth_noise((h, w), recipe.texture_sigma_px, rng)
        models = [recipe.background]
        for ct in recipe.cell_types:
            models += [ct.color, ct.nucleus_color or ct.color]
        chol = np.stack([np.linalg.cholesky(np.asarray(m.within_cov) + 1e-9 * np.eye(3)) for m in models]).astype(np.float32)
        noisy = noisy + recipe.texture_gain * np.einsum("hwij,hwj->hwi", chol[objclass], z)
    if recipe.white_noise > 0:
        noisy = noisy + rng.normal(0.0, recipe.white_noise, size=noisy.shape).astype(np.float32)
    noisy = np.clip(noisy, 0.0, 1.0).astype(np.float32)

    visible = np.bincount(instance.ravel(), minlength=n + 1)[1:]
    table = pd.DataFrame(
        {
            "cell_id": np.arange(1, n + 1, dtype=np.int64),
            "x_px": [c.cx for c in cells],
            "y_px": [c.cy for c in cells],
            "type": pd.Series([c.type for c in cells], dtype=object),
            "role": pd.Series([c.role for c in cells], dtype=object),
            "semi_axis_a_px": [c.a for c in cells],
            "semi_axis_b_px": [c.b for c in cells],
            "angle_rad": [c.angle for c in cells],
            "nucleus_visible": [c.nucleus is not None for c in cells],
            "visible_area_px": visible.astype(np.int64),
            "concentration": conc,
            "mask_value": mask_value.astype(np.float64),
            "classified": mask_value == 1.0,
        }
    )
    return SyntheticSection(np.clip(clean, 0, 1).astype(np.float32), noisy, mask.astype(np.float32), instance, table, recipe, int(seed))


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


def main(argv=None) -> int:
    """``python -m core.generator --estimate-he [DIR]`` prints the H&E colour estimate as JSON."""
    import argparse
    import json

    p = argparse.ArgumentParser(description="Synthetic tissue generator utilities")
    p.add_argument("--estimate-he", nargs="?", const=str(Path(__file__).resolve().parents[2] / "shared/data/he-crc-cell-points/train"),
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
