"""The registry entry of ``mihc-tcell-phenotypes`` and its constants, without the network.

:mod:`core.scenarios.registry` imports this module (it must not load torch or network code);
:mod:`core.scenarios.mihc` holds the model and re-exports these names. The method and the
post-processing are described there.
"""

from __future__ import annotations

from core.generator.mihc import MIHC_MPP, PHENOTYPES
from core.scenarios.spec import CellClass, InputSpec, OutputSpec, Scenario, Tiling, Use

__all__ = ["KEY", "WEIGHTS_NAME", "CARD_NAME", "INPUT_MPP", "CHROMOGEN_DISC_UM", "PHENOTYPE_COLORS", "CELL_CLASSES",
           "draft_scenario"]

#: Scenario key (stable: CLI, registry, app, saved analyses).
KEY = "mihc-tcell-phenotypes"
#: Weights and card under ``weights/`` (written by :mod:`core.training.mihc` and :mod:`core.training.mihc_card`).
WEIGHTS_NAME = "mihc-tcell-phenotypes-sdrdin-v1.safetensors"
CARD_NAME = "mihc-tcell-phenotypes-sdrdin-v1.json"
#: Input mpp: the paper's 20x (§2.2).
INPUT_MPP = MIHC_MPP
#: Radius of the disc in which each cell's chromogen levels are read, µm (a T cell of 3-4.2 µm and its membrane).
CHROMOGEN_DISC_UM = 4.5
#: Display colour of each phenotype (PHENOTYPES order): a colour-blind-safe set, none the colour of its chromogen.
PHENOTYPE_COLORS = ("#e41a1c", "#4daf4a", "#ff7f00", "#17becf", "#984ea3", "#ffd92f")
#: The scenario's classes, role immune, in the class map's channel order.
CELL_CLASSES = tuple(CellClass(name, "immune", color, f"{name} T cell") for name, color in zip(PHENOTYPES, PHENOTYPE_COLORS))

def draft_scenario(sha256: str = "", card_sha256: str = "") -> Scenario:
    """The registry entry of ``mihc-tcell-phenotypes`` (to be added to :mod:`core.scenarios.registry`).

    Parameters
    ----------
    sha256, card_sha256 : hex SHA-256 of ``weights/mihc-tcell-phenotypes-sdrdin-v1.safetensors`` and of
        its JSON card; empty strings are filled from the files in ``weights/`` when present (for
        evaluation and tests before the entry is registered).

    Returns
    -------
    Scenario
    """
    if not (sha256 and card_sha256):  # the registry passes both: it reads no file and imports nothing more
        from core.scenarios.spec import WEIGHTS_DIR
        from core.scenarios.weights import sha256_file

        if not sha256 and (WEIGHTS_DIR / WEIGHTS_NAME).is_file():
            sha256 = sha256_file(WEIGHTS_DIR / WEIGHTS_NAME)
        if not card_sha256 and (WEIGHTS_DIR / CARD_NAME).is_file():
            card_sha256 = sha256_file(WEIGHTS_DIR / CARD_NAME)
    return Scenario(
        key=KEY,
        title="T-cell phenotypes in multiplex IHC (PD1, CD8, CD4, FOXP3), synthetic-trained",
        stain="Multiplex IHC: PD1 teal, CD8 Fast Red, CD4 green, FOXP3 DAB, hematoxylin counterstain",
        modality="brightfield",
        description=(
            "S-DRDIN (§2.3) detects T cells and classifies them as CD8+, CD4+FOXP3-, CD4+FOXP3+, PD1+CD4-CD8-, "
            "PD1+CD4-CD8+ or PD1+CD4+CD8- (Table 1) in one pass; cells from the detection map by threshold, distance "
            "transform and local maxima, phenotype by eq. 3 (§2.5). Trained on synthetic mIHC sections only "
            "(core.generator.mihc); not validated on real mIHC."
        ),
        input=InputSpec(),
        input_mpp=INPUT_MPP,
        min_side_um=16 * INPUT_MPP,  # 16 px: two multiples of the network's 8 px size step
        tiling=Tiling("cells", tile_um=1024 * INPUT_MPP, overlap_um=96 * INPUT_MPP),  # 1024 px blocks, 96 px context
        classes=CELL_CLASSES,
        outputs=(
            OutputSpec("cells", "cells", "T cells with their phenotype (eq. 3), class confidence and chromogen levels"),
            OutputSpec("dense", "probability", "Detection probability of a T cell at each pixel (§2.3)",
                       meaning="probability", color="#e41a1c"),
        ),
        weights=WEIGHTS_NAME,
        sha256=sha256,
        model_card=CARD_NAME,
        card_sha256=card_sha256,
        runner="core.scenarios.mihc:MIHCModel",
        evaluation="mihc-synthetic",
        trained_on_synthetic=True,
        # the generator draws 0.44 µm/px sections; other pixel sizes are resampled to it
        use=Use(stain="dab-hematoxylin", mpp_range=(0.3, 0.6),
                stain_words="multiplex brightfield IHC with a hematoxylin counterstain (PD1 teal, CD8 Fast Red, CD4 "
                            "green, FOXP3 DAB)"),
        caution=("Trained on synthetic images only; not validated on real mIHC. The chromogen of each marker (PD1 teal, "
                 "CD8 Fast Red, CD4 green, FOXP3 DAB) is an assumption of the generator: a panel with other chromogens "
                 "is outside what it has seen."),
        params={"unmixing": "mihc-tcell", "chromogen_disc_um": CHROMOGEN_DISC_UM},
    )
