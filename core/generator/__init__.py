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

Modules
-------
- :mod:`core.generator.recipes`: :class:`StainRecipe`, :class:`CellType`, :class:`ColorModel`
  and the shipped recipes (:data:`RECIPES`, :func:`get_recipe`).
- :mod:`core.generator.geometry`: anti-aliased ellipses and Voronoi tessellations.
- :mod:`core.generator.placement`: where the cells go, their colours and nuclei.
- :mod:`core.generator.rendering`: the clean image, blur and structured noise.
- :mod:`core.generator.concentration`: the classification rule (local concentration).
- :mod:`core.generator.synthesis`: :func:`generate` and :class:`SyntheticSection`.
- :mod:`core.generator.colours`: :func:`estimate_he_colours` (``python -m core.generator --estimate-he``).
- :mod:`core.generator.compartments`: the compartment recipe (tumour nests, stroma, necrosis,
  lymphoid aggregates, glass, pen marks in H&E and eight IHC stains) with its ground-truth label
  map, :func:`generate_compartments` (CD-UNET scenario ``tissue-compartments``).
- :mod:`core.generator.stains`: stains as optical-density vectors and
  :func:`estimate_stain_statistics` (``python -m core.generator --estimate-stains``).
- :mod:`core.generator.mihc`: the multiplex IHC recipe (PD1, CD8, CD4, FOXP3 chromogens + hematoxylin,
  Beer-Lambert, the six T-cell phenotypes of the S-DRDIN paper's Table 1), :func:`core.generator.mihc.generate_mihc`
  (scenario ``mihc-tcell-phenotypes``).

References
----------
TNRD melanoma paper (shared/papers/tnrd-variational-network-melanoma.txt), §2.2 and
Table 1.
"""

from core.generator.colours import estimate_he_colours
from core.generator.compartments import (
    COMPARTMENT_LABELS,
    COMPARTMENTS,
    STAINS,
    CompartmentRecipe,
    CompartmentSection,
    generate_compartments,
)
from core.generator.concentration import cell_concentrations, classify_concentrations, concentration_map
from core.generator.geometry import ellipse_coverage, voronoi_labels
from core.generator.recipes import (
    HE_ESTIMATE,
    HE_MELANOMA,
    IF_MELANOMA,
    RECIPES,
    REFERENCE_AREA_PX,
    CellType,
    ColorModel,
    StainRecipe,
    get_recipe,
)
from core.generator.rendering import smooth_noise
from core.generator.stains import estimate_stain_statistics
from core.generator.synthesis import SyntheticSection, generate

__all__ = [
    "COMPARTMENT_LABELS",
    "COMPARTMENTS",
    "STAINS",
    "CompartmentRecipe",
    "CompartmentSection",
    "estimate_stain_statistics",
    "generate_compartments",
    "HE_ESTIMATE",
    "HE_MELANOMA",
    "IF_MELANOMA",
    "RECIPES",
    "REFERENCE_AREA_PX",
    "CellType",
    "ColorModel",
    "StainRecipe",
    "SyntheticSection",
    "cell_concentrations",
    "classify_concentrations",
    "concentration_map",
    "ellipse_coverage",
    "estimate_he_colours",
    "generate",
    "get_recipe",
    "smooth_noise",
    "voronoi_labels",
]
