"""Stain recipes of the synthetic tissue generator: cell types, colours, noise, classification rule.

A stain is a *recipe* (:class:`StainRecipe`), a frozen dataclass of cell types
(:class:`CellType`, one row of the TNRD melanoma paper's Table 1), colours
(:class:`ColorModel`) and noise. :data:`RECIPES` holds the shipped ones by key.

Colours. The H&E recipe's means and covariances were estimated from the 70 training
images of ``../shared/data/he-crc-cell-points`` (real H&E with nucleus points) by
:func:`core.generator.colours.estimate_he_colours`: pixels in discs of radius 3 px around
*inflammatory* points give the immune nucleus colour, around *epithelial* points the tumour
nucleus colour; a ring 7-11 px around epithelial points, more than 6 px from every marked
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

from dataclasses import dataclass, replace

import numpy as np

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
#: Estimated by :func:`core.generator.colours.estimate_he_colours` from the 70 training images of
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
