"""The mIHC recipe: synthetic multiplex IHC sections of T-cell phenotypes (PD1, CD8, CD4, FOXP3).

There is no public labelled multiplex IHC the project can use, so the scenario
``mihc-tcell-phenotypes`` (S-DRDIN paper, §2.1) learns its six T-cell phenotypes from sections
drawn here, with exact ground truth: every cell's centre, phenotype and instance mask, and the
concentration map of every stain.

The stain (one brightfield section, S-DRDIN §2.1): a hematoxylin counterstain and one chromogen
per marker (:data:`CHROMOGENS`, :data:`MARKER_CHROMOGEN`):

==========  ===========  ============  ===============================================
marker      chromogen    localisation  optical-density (OD) unit vector, R G B; source
==========  ===========  ============  ===============================================
(counter)   hematoxylin  nucleus       (0.758, 0.592, 0.273) measured on the project's IHC
FOXP3       DAB (brown)  nucleus       (0.317, 0.524, 0.791) measured on the project's IHC
CD8         Fast Red     membrane      (0.214, 0.851, 0.478) Ruifrok & Johnston 2001
CD4         green        membrane      (0.675, 0.302, 0.675) **estimate** from its colour
PD1         teal         membrane      (0.980, 0.144, 0.133) **estimate**: methyl green's (R&J)
==========  ===========  ============  ===============================================

The paper does not say which chromogen shows which marker; this panel is an assumption, chosen
so that the nuclear marker (FOXP3) has the chromogen that stands out best against hematoxylin
in a nucleus (DAB, as FOXP3 IHC usually is) and the three membranous markers, which can share a
membrane (PD1+CD8+, PD1+CD4+), have chromogens far apart in OD space. Hematoxylin and DAB are the
means measured by :func:`core.generator.stains.estimate_stain_statistics` on the project's real
IHC images (cd3-ihc-gastric, ihc-ki67-deepliif; the values of
``core.generator.compartments.STAIN_ESTIMATE["ihc"]``); Ruifrok & Johnston's are
(0.650, 0.704, 0.286) and (0.268, 0.570, 0.776). Fast Red is Ruifrok & Johnston's measured vector
(scikit-image ``rgb_from_rbd``). No published OD vector exists for the green and teal
chromogens of multiplex kits: green is computed from a typical green chromogen colour, RGB
(0.45, 0.70, 0.45) on white (OD = -log10 RGB, normalised), and teal takes Ruifrok & Johnston's
methyl green (``rgb_from_gdx``), a blue-green dye of the same hue. Both are estimates.

Rendering (Beer-Lambert, Ruifrok & Johnston 2001): each stain k has a unit OD vector v_k (3,)
and a concentration map c_k (H, W) in OD units along it; the pixel's OD is ``sum_k c_k v_k``
(ODs add, so a cell with two markers shows their mixture) and its RGB ``white * 10 ** -OD``.

A section (:func:`generate_mihc`) is laid out (tumour nests in stroma, optional glass), peopled
(T cells, tumour cells on a jittered lattice, spindle stromal cells), stained and scanned:

- **T cells**: round lymphocytes of 3.0-4.2 µm radius with a nucleus filling 72-85 % of it; the
  phenotype drawn from the paper's class frequencies (Table 1, all 3674 annotations:
  :data:`CLASS_FREQUENCIES`); FOXP3 stains the nucleus, CD4, CD8 and PD1 a ring of 0.9 µm at the
  cell's edge (membrane) with patchy intensity along it. Staining intensity varies per section
  (chromogen strength) and per cell (log-normal, so some positive cells are dim). A share of
  the T cells lies next to another (clusters), a share inside tumour nests.
- **unstained cells**: tumour cells (large nuclei, faint counterstained cytoplasm) and stromal
  spindle cells; they carry hematoxylin only and belong to the background class, as unannotated
  cells in the paper's data.
- **stain and scanner variation**: stain vectors jittered per section, strengths per chromogen,
  a faint non-specific haze of each chromogen, the glass's white level per channel, Gaussian
  blur, sensor noise, 8-bit quantisation.

One ``numpy.random.Generator`` seeded once makes every draw: the same arguments give the same
section on every machine. A 256 x 256 section takes 0.1-0.3 s (measured on the shared 2-core CPU
under load; the test asks for under 1 s).

References
----------
S-DRDIN paper (shared/papers/s-drdin-mihc-detection-classification.txt), §2.1 and Table 1
(markers, phenotypes and their counts), §2.2 (0.44 µm/px, 224 x 224 patches); Ruifrok A.C.,
Johnston D.A., "Quantification of histochemical staining by color deconvolution", Anal Quant
Cytol Histol 23:291-299 (2001); TNRD melanoma paper §2.2 (the generator's ellipse cells).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import ndimage

from core.errors import InputError
from core.generator.geometry import add_coverage, ellipse_coverage, ring_coverage
from core.generator.geometry import hex_lattice_points as _lattice, uniform_points_in_mask as _uniform_points

#: Pixel size of the S-DRDIN paper's images (§2.2: 40x scans rescaled to 20x), µm/px.
MIHC_MPP = 0.44

#: The six phenotypes of Table 1, in class-index order (the class map's channels 0-5; 6 is background).
PHENOTYPES = ("CD8+", "CD4+FOXP3-", "CD4+FOXP3+", "PD1+CD4-CD8-", "PD1+CD4-CD8+", "PD1+CD4+CD8-")
#: The markers of the panel (§2.1), in the column order of Table 1.
MARKERS = ("PD1", "CD8", "CD4", "FOXP3")
#: Antigen expression of each phenotype (Table 1): marker → positive.
EXPRESSION: dict[str, dict[str, bool]] = {
    "CD8+": {"PD1": False, "CD8": True, "CD4": False, "FOXP3": False},
    "CD4+FOXP3-": {"PD1": False, "CD8": False, "CD4": True, "FOXP3": False},
    "CD4+FOXP3+": {"PD1": False, "CD8": False, "CD4": True, "FOXP3": True},
    "PD1+CD4-CD8-": {"PD1": True, "CD8": False, "CD4": False, "FOXP3": False},
    "PD1+CD4-CD8+": {"PD1": True, "CD8": True, "CD4": False, "FOXP3": False},
    "PD1+CD4+CD8-": {"PD1": True, "CD8": False, "CD4": True, "FOXP3": False},
}
#: Table 1 cell counts: phenotype → (training, validation, test).
TABLE1_COUNTS: dict[str, tuple[int, int, int]] = {
    "CD8+": (110, 33, 344), "CD4+FOXP3-": (380, 137, 515), "CD4+FOXP3+": (192, 110, 368),
    "PD1+CD4-CD8-": (33, 26, 21), "PD1+CD4-CD8+": (453, 183, 612), "PD1+CD4+CD8-": (50, 33, 74),
}
_TOTALS = np.array([sum(TABLE1_COUNTS[p]) for p in PHENOTYPES], np.float64)
#: Share of each phenotype over all 3674 annotated cells of Table 1 (PHENOTYPES order), summing to 1:
#: 0.133, 0.281, 0.182, 0.022, 0.340, 0.043.
CLASS_FREQUENCIES: tuple[float, ...] = tuple(float(v) for v in _TOTALS / _TOTALS.sum())


@dataclass(frozen=True)
class Chromogen:
    """One stain of the panel.

    Attributes
    ----------
    name : str
        ``"hematoxylin"``, ``"dab"``, ``"fast_red"``, ``"green"``, ``"teal"``.
    marker : str or None
        The marker it shows (:data:`MARKERS`); None for the counterstain.
    localisation : {"nucleus", "membrane"}
        Where it lies in a positive cell (hematoxylin: every nucleus).
    od_rgb : (3,) tuple of float
        Unit optical-density vector (absorbance per unit concentration in R, G, B), norm 1.
    colour : str
        What it looks like.
    source : str
        Where the vector comes from.
    estimate : bool
        True when no measured or published vector exists and the value is an estimate.
    """

    name: str
    marker: str | None
    localisation: str
    od_rgb: tuple[float, float, float]
    colour: str
    source: str
    estimate: bool


def _unit(v) -> tuple[float, float, float]:
    a = np.asarray(v, np.float64)
    a = a / np.linalg.norm(a)
    return tuple(round(float(x), 4) for x in a)


#: The five stains in concentration-map order (counterstain first).
CHROMOGENS: tuple[Chromogen, ...] = (
    Chromogen("hematoxylin", None, "nucleus", _unit((0.7584, 0.5917, 0.2733)), "blue",
              "measured: Macenko vectors of the project's real IHC (cd3-ihc-gastric, ihc-ki67-deepliif), "
              "core.generator.stains.estimate_stain_statistics", False),
    Chromogen("dab", "FOXP3", "nucleus", _unit((0.3165, 0.5236, 0.7910)), "brown",
              "measured: Macenko vectors of the project's real IHC (cd3-ihc-gastric, ihc-ki67-deepliif)", False),
    Chromogen("fast_red", "CD8", "membrane", _unit((0.2139, 0.8511, 0.4779)), "red",
              "Ruifrok & Johnston 2001, Fast Red (scikit-image rgb_from_rbd)", False),
    Chromogen("green", "CD4", "membrane", _unit((0.675, 0.302, 0.675)), "green",
              "estimate: OD of a green chromogen of RGB (0.45, 0.70, 0.45) on white, normalised", True),
    Chromogen("teal", "PD1", "membrane", _unit((0.9800, 0.1443, 0.1331)), "teal (blue-green)",
              "estimate: Ruifrok & Johnston 2001 methyl green (scikit-image rgb_from_gdx), a dye of the same hue", True),
)
#: Stain names in concentration-map order.
CHROMOGEN_NAMES: tuple[str, ...] = tuple(c.name for c in CHROMOGENS)
#: Marker → name of its chromogen.
MARKER_CHROMOGEN: dict[str, str] = {c.marker: c.name for c in CHROMOGENS if c.marker}


def stain_matrix() -> np.ndarray:
    """The nominal stain matrix: (5, 3) float64, row k the unit OD vector of :data:`CHROMOGENS` [k]."""
    return np.array([c.od_rgb for c in CHROMOGENS], np.float64)


@dataclass(frozen=True)
class MIHCRecipe:
    """How mIHC sections are drawn. Every (lo, hi) range is uniform, drawn once per section
    unless said otherwise; sizes in µm, densities per mm², concentrations in OD units.

    Attributes
    ----------
    key : str
    mpp : float
        Pixel size, µm/px (the paper's 0.44, §2.2).
    phenotype_frequencies : (6,) tuple of float
        Probability of each phenotype (:data:`PHENOTYPES` order), default Table 1.
    tcells_per_mm2 : (float, float)
        T-cell density over the section.
    intratumoral_share : (float, float)
        Share of the T cells inside tumour nests.
    cluster_share : float in [0, 1]
        Chance that a T cell is placed next to an earlier one (1.9-3 radii away).
    tcell_radius_um : (float, float)
        Radius of a T cell (per cell; the ellipse's axes differ by up to 10 %).
    nucleus_ratio : (float, float)
        Nucleus radius / cell radius of a T cell (per cell).
    membrane_width_um : float
        Width of the stained ring at a T cell's edge.
    tumour_fraction : (float, float)
        Share of the tissue in tumour nests.
    nest_scale_um : (float, float)
        Correlation length of the nest field.
    tumour_cell_radius_um, tumour_nucleus_um : (float, float)
        Semi-axes of tumour cells and their nuclei.
    stroma_cells_per_mm2 : (float, float)
        Density of spindle cells in the stroma.
    glass_probability : float
        Chance that part of the section is glass (no tissue).
    hematoxylin_tcell, hematoxylin_tumour, hematoxylin_stroma : (float, float)
        Hematoxylin concentration of nuclei (per cell, times a chromatin texture).
    hematoxylin_background : (float, float)
        Counterstain of the tissue between nuclei (per section).
    marker_od : dict marker → (float, float)
        Mean chromogen concentration of a positive cell's compartment (per section).
    cell_intensity_sd : float
        Log-normal standard deviation of a positive cell's intensity around the section's mean.
    membrane_patchiness : float
        Relative standard deviation of the intensity along a membrane ring.
    nonspecific_od : (float, float)
        Maximum of the smooth non-specific haze of each chromogen over the tissue.
    vector_jitter : float
        Standard deviation of each component of a stain's unit OD vector, per section.
    strength : (float, float)
        Multiplier of each stain's concentrations, per section and stain.
    white : (float, float)
        Glass intensity (RGB in [0, 1]), per section.
    white_tint_sd : float
        Standard deviation of each channel of the glass around that level (the glass's tint).
    blur_sigma_um : (float, float)
        Point-spread function (Gaussian sigma).
    noise_sd : (float, float)
        Sensor noise, RGB in [0, 1].
    """

    key: str = "mihc-tcell"
    mpp: float = MIHC_MPP
    phenotype_frequencies: tuple[float, ...] = CLASS_FREQUENCIES
    tcells_per_mm2: tuple[float, float] = (1200.0, 3600.0)
    intratumoral_share: tuple[float, float] = (0.05, 0.4)
    cluster_share: float = 0.4
    tcell_radius_um: tuple[float, float] = (3.0, 4.2)
    nucleus_ratio: tuple[float, float] = (0.72, 0.85)
    membrane_width_um: float = 0.9
    tumour_fraction: tuple[float, float] = (0.2, 0.6)
    nest_scale_um: tuple[float, float] = (12.0, 35.0)
    tumour_cell_radius_um: tuple[float, float] = (5.5, 8.5)
    tumour_nucleus_um: tuple[float, float] = (2.8, 4.8)
    stroma_cells_per_mm2: tuple[float, float] = (1500.0, 4000.0)
    glass_probability: float = 0.2
    hematoxylin_tcell: tuple[float, float] = (0.35, 0.7)
    hematoxylin_tumour: tuple[float, float] = (0.25, 0.55)
    hematoxylin_stroma: tuple[float, float] = (0.3, 0.6)
    hematoxylin_background: tuple[float, float] = (0.03, 0.09)
    marker_od: dict = field(default_factory=lambda: {"PD1": (0.25, 0.6), "CD8": (0.35, 0.8), "CD4": (0.2, 0.55),
                                                     "FOXP3": (0.35, 0.8)})
    cell_intensity_sd: float = 0.35
    membrane_patchiness: float = 0.35
    nonspecific_od: tuple[float, float] = (0.0, 0.04)
    vector_jitter: float = 0.03
    strength: tuple[float, float] = (0.75, 1.3)
    white: tuple[float, float] = (0.9, 1.0)
    white_tint_sd: float = 0.015
    blur_sigma_um: tuple[float, float] = (0.2, 0.6)
    noise_sd: tuple[float, float] = (0.004, 0.02)

    def without_variation(self) -> "MIHCRecipe":
        """A copy with no blur, no sensor noise, no haze, nominal stain vectors and strengths, white glass.

        For tests of the Beer-Lambert mixing and of colour unmixing: the image's OD is then exactly
        the concentrations times :func:`stain_matrix` (up to 8-bit quantisation).
        """
        return replace(self, vector_jitter=0.0, strength=(1.0, 1.0), white=(1.0, 1.0), white_tint_sd=0.0,
                       blur_sigma_um=(0.0, 0.0),
                       noise_sd=(0.0, 0.0), nonspecific_od=(0.0, 0.0))


#: The recipe the scenario is trained on.
MIHC_TCELL = MIHCRecipe()


@dataclass
class MIHCSection:
    """One synthetic mIHC section with its ground truth.

    Attributes
    ----------
    image : (H, W, 3) uint8 RGB
        The scanned section (the model input).
    concentrations : (H, W, 5) float32 >= 0
        Concentration of each stain (:data:`CHROMOGEN_NAMES` order) in OD units along its unit
        vector, before blur and noise: ``concentrations @ stain_matrix`` is the section's OD.
    stain_matrix : (5, 3) float64
        The unit OD vectors this section was rendered with (jittered around :func:`stain_matrix`).
    white : (3,) float64
        Glass intensity per channel, RGB in [0, 1].
    instance : (H, W) int32
        ``cell_id`` of the topmost cell at each pixel (T cells on top), 0 for none.
    cells : pandas.DataFrame
        One row per cell: ``cell_id`` (int64, as in ``instance``), ``x_px``, ``y_px`` (centre,
        pixel centres at integers, x = column), ``x_um``, ``y_um`` (``x_px * mpp``), ``kind``
        (``"tcell"``, ``"tumour"``, ``"stroma"``), ``role`` (immune, tumour, stroma),
        ``cell_class`` (the phenotype, :data:`PHENOTYPES`; ``""`` for unstained cells),
        ``class_index`` (int64, 0-5; -1 for unstained cells), one bool column per marker
        (``PD1``, ``CD8``, ``CD4``, ``FOXP3``), ``semi_axis_a_um``, ``semi_axis_b_um``,
        ``visible_area_px`` (int64, pixels in ``instance``).
    mpp : float, µm/px
    seed : int
    recipe : MIHCRecipe
    """

    image: np.ndarray
    concentrations: np.ndarray
    stain_matrix: np.ndarray
    white: np.ndarray
    instance: np.ndarray
    cells: pd.DataFrame
    mpp: float
    seed: int
    recipe: MIHCRecipe

    @property
    def tcells(self) -> pd.DataFrame:
        """The rows of the T cells (the six phenotypes)."""
        return self.cells[self.cells["class_index"] >= 0]

    @property
    def points_xy(self) -> np.ndarray:
        """(N, 2) float64 x, y in pixels of the T cells (the paper's dot annotations)."""
        return self.tcells[["x_px", "y_px"]].to_numpy(np.float64)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class index (0-5, :data:`PHENOTYPES`) of each T cell, in :attr:`points_xy` order."""
        return self.tcells["class_index"].to_numpy(np.int64)

    @property
    def optical_density(self) -> np.ndarray:
        """(H, W, 3) float64 OD of the clean section: ``concentrations @ stain_matrix`` (Beer-Lambert)."""
        return self.concentrations.astype(np.float64) @ self.stain_matrix


def beer_lambert_rgb(concentrations: np.ndarray, stains: np.ndarray, white=1.0) -> np.ndarray:
    """RGB transmitted through stains of the given concentrations (Beer-Lambert law).

    Parameters
    ----------
    concentrations : (..., K) float >= 0
        Concentration of each stain, OD units along its unit vector.
    stains : (K, 3) float
        Unit OD vector of each stain (rows).
    white : float or (3,) float in (0, 1]
        Incident (glass) intensity per channel.

    Returns
    -------
    (..., 3) float32 RGB in [0, 1]: ``white * 10 ** -(concentrations @ stains)``. ODs add, so
    the image of two stains is the product of their transmissions.

    References
    ----------
    Ruifrok & Johnston 2001 (Beer-Lambert stain model).
    """
    od = np.asarray(concentrations, np.float32) @ np.asarray(stains, np.float32)
    return np.clip(np.asarray(white, np.float32) * np.power(np.float32(10.0), -np.clip(od, 0, None)), 0.0, 1.0)


# ------------------------------------------------------------------------------------------ helpers


def _field(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field, (H, W) float32, mean 0 and standard deviation 1 (coarse grid for wide fields).

    Same noise as :func:`core.generator.geometry.smooth_field` but up-sampled at exactly i / f by
    gathering along each axis (no BLAS: cheap under load); the mIHC recipe's sections and tests
    were drawn with this interpolation, so it stays.
    """
    h, w = shape
    f = max(1, int(sigma_px // 4))
    gh, gw = -(-h // f) + 2, -(-w // f) + 2
    z = ndimage.gaussian_filter(rng.standard_normal((gh, gw)).astype(np.float32), max(sigma_px / f, 0.3), mode="wrap")
    if f > 1:
        z = _upsample_axis(_upsample_axis(z, h, f, 0), w, f, 1)
    else:
        z = z[:h, :w]
    return ((z - z.mean()) / max(float(z.std()), 1e-6)).astype(np.float32)


def _upsample_axis(z: np.ndarray, n_out: int, f: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``z`` along ``axis`` at positions i / f, i < ``n_out`` (float32)."""
    n_in = z.shape[axis]
    pos = np.arange(n_out, dtype=np.float64) / f
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    t = (pos - i0).astype(np.float32)
    shape = [1, 1]
    shape[axis] = n_out
    t = t.reshape(shape)
    return np.take(z, i0, axis=axis) * (1.0 - t) + np.take(z, i0 + 1, axis=axis) * t


def _ring(cx, cy, a, b, angle, width_px, shape):
    """(y0, x0, cov) of an elliptical ring of ``width_px`` centred on the ellipse's edge."""
    return ring_coverage(ellipse_coverage(cx, cy, a + width_px / 2, b + width_px / 2, angle, shape),
                         ellipse_coverage(cx, cy, max(a - width_px / 2, 0.3), max(b - width_px / 2, 0.3), angle, shape))


def _away_from(xy: np.ndarray, centres: np.ndarray, min_dist_px: float) -> np.ndarray:
    """The points of ``xy`` at least ``min_dist_px`` from every point of ``centres``."""
    if len(xy) == 0 or len(centres) == 0:
        return xy
    from scipy.spatial import cKDTree

    d, _ = cKDTree(centres).query(xy)
    return xy[d >= min_dist_px]


# ------------------------------------------------------------------------------------------ the section


def generate_mihc(shape: tuple[int, int] = (256, 256), seed: int = 0, recipe: MIHCRecipe = MIHC_TCELL) -> MIHCSection:
    """Generate one synthetic mIHC section (PD1, CD8, CD4, FOXP3 + hematoxylin) with its ground truth.

    Parameters
    ----------
    shape : (H, W) int
        Size in pixels at ``recipe.mpp`` (0.44 µm/px), each side in [32, 4096].
    seed : int >= 0
        Seeds the one ``numpy.random.Generator`` used for everything: the same arguments give
        the same section.
    recipe : MIHCRecipe

    Returns
    -------
    MIHCSection
        ``image`` (H, W, 3) uint8 RGB; T cells with their phenotype (class index 0-5), unstained
        tumour and stromal cells; instance mask; per-stain concentration maps (OD units).

    Raises
    ------
    InputError
        If the shape or seed is out of range, or the phenotype frequencies are not 6
        non-negative numbers with a positive sum.

    References
    ----------
    S-DRDIN paper §2.1, Table 1; module docstring for the stains and the rendering.

    Example
    -------
    >>> s = generate_mihc((128, 128), seed=3)
    >>> s.image.shape, s.concentrations.shape, s.labels.dtype
    ((128, 128, 3), (128, 128, 5), dtype('int64'))
    """
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError) as err:
        raise InputError(f"shape must be (height, width) in pixels, got {shape!r}") from err
    if not (32 <= h <= 4096 and 32 <= w <= 4096):
        raise InputError(f"shape must be between 32 and 4096 px per side, got {h} x {w}")
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    freq = np.asarray(recipe.phenotype_frequencies, np.float64)
    if freq.shape != (len(PHENOTYPES),) or (freq < 0).any() or freq.sum() <= 0:
        raise InputError(f"phenotype_frequencies must be {len(PHENOTYPES)} non-negative numbers with a positive sum "
                         f"({', '.join(PHENOTYPES)}), got {recipe.phenotype_frequencies!r}")
    freq = freq / freq.sum()
    rng = np.random.default_rng(int(seed))
    um = 1.0 / float(recipe.mpp)  # pixels per µm
    u = lambda r: float(rng.uniform(*r))  # noqa: E731
    area_mm2 = h * w / um**2 / 1e6

    # --- layout: glass, tumour nests, stroma
    tissue = np.ones((h, w), bool)
    if rng.uniform() < recipe.glass_probability:
        g = _field((h, w), 40.0 * um, rng)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        g = g + 3.0 * ((xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang)) / max(h, w)
        tissue = g < np.quantile(g, 1.0 - rng.uniform(0.05, 0.3))
    nest = _field((h, w), u(recipe.nest_scale_um) * um, rng)
    tumour = tissue & (nest > np.quantile(nest, 1.0 - u(recipe.tumour_fraction)))
    stroma = tissue & ~tumour

    # --- T cells: phenotype, size, place (clusters, intratumoral share), no overlap
    n_t = int(rng.poisson(u(recipe.tcells_per_mm2) * area_mm2 * float(tissue.mean())))
    share_in = u(recipe.intratumoral_share)
    t_xy, t_r = [], []
    tries = 0
    pixels = {name: np.flatnonzero(m) for name, m in (("tumour", tumour), ("stroma", stroma), ("tissue", tissue))}
    while len(t_xy) < n_t and tries < 40 * n_t + 40:
        tries += 1
        r = u(recipe.tcell_radius_um) * um
        if t_xy and rng.uniform() < recipe.cluster_share:
            k = int(rng.integers(len(t_xy)))
            d, a = rng.uniform(1.9, 3.0) * r, rng.uniform(0, 2 * np.pi)
            x, y = t_xy[k][0] + d * math.cos(a), t_xy[k][1] + d * math.sin(a)
        else:
            where = "tumour" if (rng.uniform() < share_in and len(pixels["tumour"])) else (
                "stroma" if len(pixels["stroma"]) else "tissue")
            flat = int(pixels[where][rng.integers(len(pixels[where]))])
            x, y = flat % w + rng.uniform(-0.5, 0.5), flat // w + rng.uniform(-0.5, 0.5)
        ix, iy = int(round(x)), int(round(y))
        if not (0 <= ix < w and 0 <= iy < h) or not tissue[iy, ix]:
            continue
        if t_xy:
            dd = np.hypot(*(np.asarray(t_xy) - (x, y)).T)
            if np.any(dd < (np.asarray(t_r) + r) * 0.95):
                continue
        t_xy.append((x, y))
        t_r.append(r)
    t_xy = np.asarray(t_xy, np.float64).reshape(-1, 2)
    t_r = np.asarray(t_r, np.float64)
    n_t = len(t_xy)
    t_class = rng.choice(len(PHENOTYPES), size=n_t, p=freq) if n_t else np.zeros(0, np.int64)

    # --- unstained cells: tumour lattice in nests, spindle cells in stroma, both away from T cells
    r_tum = recipe.tumour_cell_radius_um
    tum_xy = _lattice(tumour, 2.0 * 0.5 * (r_tum[0] + r_tum[1]) * um * 0.95, 0.12, rng)
    tum_xy = _away_from(tum_xy, t_xy, (0.5 * (r_tum[0] + r_tum[1]) + 3.0) * um)
    n_s = int(rng.poisson(u(recipe.stroma_cells_per_mm2) * area_mm2 * float(stroma.mean())))
    str_xy = _away_from(_uniform_points(stroma, n_s, rng), t_xy, 6.0 * um)

    # --- concentration maps
    conc = np.zeros((len(CHROMOGENS), h, w), np.float32)
    H = conc[0]
    chromatin = np.clip(1.0 + 0.25 * _field((h, w), 0.5 * um, rng), 0.3, None)
    texture = 1.0 + 0.3 * _field((h, w), 1.5 * um, rng) + 0.15 * _field((h, w), 6.0 * um, rng)
    H += u(recipe.hematoxylin_background) * tissue * np.clip(texture, 0.2, None)
    cells_rows = []
    instance = np.zeros((h, w), np.int32)

    def stamp(cid: int, box) -> None:
        y0, x0, cov = box
        if cov.size:
            instance[y0 : y0 + cov.shape[0], x0 : x0 + cov.shape[1]][cov >= 0.5] = cid

    lv_tum = u(recipe.hematoxylin_tumour)
    for x, y in tum_xy:
        a, b = u(r_tum) * um, u(r_tum) * um
        ang = rng.uniform(0, np.pi)
        cell = ellipse_coverage(x, y, a, b, ang, (h, w))
        add_coverage(H, cell, lv_tum * 0.15)  # faint counterstained cytoplasm
        na = min(u(recipe.tumour_nucleus_um) * um, 0.8 * min(a, b))
        nb = na * rng.uniform(0.7, 1.0)
        off = rng.normal(0, 0.1 * min(a, b), 2)
        add_coverage(H, ellipse_coverage(x + off[0], y + off[1], na, nb, ang, (h, w)), lv_tum * rng.uniform(0.8, 1.2), chromatin)
        cid = len(cells_rows) + 1
        stamp(cid, cell)
        cells_rows.append((cid, x, y, "tumour", "tumour", "", -1, (False,) * 4, a, b))
    lv_str = u(recipe.hematoxylin_stroma)
    for x, y in str_xy:
        a, b = rng.uniform(3.5, 7.0) * um, rng.uniform(0.8, 1.5) * um
        box = ellipse_coverage(x, y, a, b, rng.uniform(0, np.pi), (h, w))
        add_coverage(H, box, lv_str * rng.uniform(0.8, 1.2), chromatin)
        cid = len(cells_rows) + 1
        stamp(cid, box)
        cells_rows.append((cid, x, y, "stroma", "stroma", "", -1, (False,) * 4, a, b))
    # T cells: nucleus with hematoxylin (and DAB for FOXP3), membrane ring per membranous marker
    lv_t = u(recipe.hematoxylin_tcell)
    level = {m: u(recipe.marker_od[m]) for m in MARKERS}
    patch = np.clip(1.0 + recipe.membrane_patchiness * _field((h, w), 0.8 * um, rng), 0.1, None)
    ring_w = recipe.membrane_width_um * um
    for (x, y), r, k in zip(t_xy, t_r, t_class):
        a, b = r * rng.uniform(0.95, 1.05), r * rng.uniform(0.9, 1.0)
        ang = rng.uniform(0, np.pi)
        ratio = u(recipe.nucleus_ratio)
        nuc = ellipse_coverage(x, y, a * ratio, b * ratio, ang, (h, w))
        add_coverage(H, nuc, lv_t * rng.uniform(0.85, 1.15), chromatin)
        expr = EXPRESSION[PHENOTYPES[k]]
        ring = None
        for m in MARKERS:
            if not expr[m]:
                continue
            v = level[m] * float(np.exp(rng.normal(0.0, recipe.cell_intensity_sd)))
            target = conc[CHROMOGEN_NAMES.index(MARKER_CHROMOGEN[m])]
            if m == "FOXP3":
                add_coverage(target, nuc, v, chromatin)
            else:
                ring = ring or _ring(x, y, a, b, ang, ring_w, (h, w))
                add_coverage(target, ring, v, patch)
        cid = len(cells_rows) + 1
        stamp(cid, ellipse_coverage(x, y, a, b, ang, (h, w)))
        cells_rows.append((cid, x, y, "tcell", "immune", PHENOTYPES[k], int(k), tuple(expr[m] for m in MARKERS), a, b))
    # non-specific haze of each chromogen over the tissue
    lo, hi = recipe.nonspecific_od
    if hi > 0:
        for k in range(1, len(CHROMOGENS)):
            conc[k] += rng.uniform(lo, hi) * tissue * np.clip(0.5 + 0.5 * _field((h, w), 10.0 * um, rng), 0.0, None)

    # --- stain and scanner variation, Beer-Lambert, blur, noise, 8 bits
    strength = rng.uniform(*recipe.strength, size=len(CHROMOGENS)).astype(np.float32)
    conc *= strength[:, None, None]
    np.clip(conc, 0.0, None, out=conc)
    stains = stain_matrix()
    if recipe.vector_jitter > 0:
        stains = np.abs(stains + rng.normal(0.0, recipe.vector_jitter, stains.shape))
        stains = stains / np.linalg.norm(stains, axis=1, keepdims=True)
    white = np.clip(rng.uniform(*recipe.white) + rng.normal(0.0, recipe.white_tint_sd, 3), 0.5, 1.0)
    concentrations = np.ascontiguousarray(conc.transpose(1, 2, 0))
    rgb = beer_lambert_rgb(concentrations, stains, white)
    blur = u(recipe.blur_sigma_um) * um
    if blur > 0:
        rgb = ndimage.gaussian_filter(rgb, (blur, blur, 0))
    sd = u(recipe.noise_sd)
    if sd > 0:
        rgb = rgb + rng.normal(0.0, sd, rgb.shape).astype(np.float32)
    image = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)

    table = _cell_table(cells_rows, instance, recipe.mpp)
    return MIHCSection(image, concentrations, stains, white, instance, table, float(recipe.mpp), int(seed), recipe)


def _cell_table(rows: list, instance: np.ndarray, mpp: float) -> pd.DataFrame:
    n = len(rows)
    visible = np.bincount(instance.ravel(), minlength=n + 1)[1:] if n else np.zeros(0, np.int64)
    expr = np.array([r[7] for r in rows], bool).reshape(n, len(MARKERS))
    x = np.array([r[1] for r in rows], np.float64)
    y = np.array([r[2] for r in rows], np.float64)
    table = pd.DataFrame({
        "cell_id": np.array([r[0] for r in rows], np.int64),
        "x_px": x, "y_px": y, "x_um": x * mpp, "y_um": y * mpp,
        "kind": pd.Series([r[3] for r in rows], dtype=object),
        "role": pd.Series([r[4] for r in rows], dtype=object),
        "cell_class": pd.Series([r[5] for r in rows], dtype=object),
        "class_index": np.array([r[6] for r in rows], np.int64),
    })
    for i, m in enumerate(MARKERS):
        table[m] = expr[:, i]
    table["semi_axis_a_um"] = np.array([r[8] for r in rows], np.float64) * mpp
    table["semi_axis_b_um"] = np.array([r[9] for r in rows], np.float64) * mpp
    table["visible_area_px"] = visible[:n].astype(np.int64)
    return table
