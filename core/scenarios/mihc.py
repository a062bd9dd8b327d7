"""Scenario ``mihc-tcell-phenotypes``: six T-cell phenotypes in multiplex IHC with S-DRDIN (trained on synthetic sections).

The S-DRDIN paper's own use (shared/papers/s-drdin-mihc-detection-classification.txt): one
brightfield section stained for PD1, CD8, CD4 and FOXP3, in which each cell's phenotype is its
combination of chromogens (§2.1, Table 1): CD8+, CD4+FOXP3-, CD4+FOXP3+, PD1+CD4-CD8-,
PD1+CD4-CD8+ and PD1+CD4+CD8-. One network predicts a detection map (sigmoid) and a class map
(softmax over the six phenotypes and background) (§2.3); cells are the peaks of the detection
map and each cell's phenotype the arg-max of the class channels averaged over a square around
it (§2.5, eq. 3). Post-processing sizes are physical (µm): the paper's pixels at its 0.44 µm/px,
which is also this scenario's input mpp, so they are the paper's pixel values
(:class:`core.scenarios.he_til.PostprocessParams`: 50 px area, 15 x 15 px maxima window, 2 px
dilation, 49 x 49 px class square).

Every cell is reported with ``cell_class`` its phenotype and role ``immune``, its class
confidence and detection probability, and, for "why this call", the level of each chromogen
around it (:func:`core.mihc_unmixing.cell_levels_from_rgb`: 90th percentile of the unmixed
concentration in a disc of :data:`CHROMOGEN_DISC_UM`, OD units): columns ``pd1_od``, ``cd8_od``,
``cd4_od``, ``foxp3_od`` and ``hematoxylin_od``. The per-pixel chromogen maps for the page come
from :func:`core.mihc_unmixing.unmix` (the registry entry's ``params["unmixing"]`` says which
panel).

No public labelled mIHC exists that the project can use: the weights are trained on the
generator's mIHC recipe (:mod:`core.generator.mihc`) only, marked ``trained_on_synthetic`` (never
offered for clinical counting: the Analyze page lists it under Teaching, and its results are not
saved as case analyses). Until trained weights exist, :func:`draft_scenario` gives the registry
entry this module is written against; the lead adds it to :mod:`core.scenarios.registry`.

Large images run through the cell tiler as ``he-til`` does (blocks of 1024 px with 96 px of
context; each cell in exactly one block).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.errors import InputError
from core.generator.mihc import CHROMOGENS, MIHC_MPP, PHENOTYPES
from core.nets.sdrdin import SDRDIN, probabilities
from core.scenarios.base import Prediction
from core.scenarios.he_til import HETILModel, PostprocessParams
from core.scenarios.spec import CellClass, InputSpec, OutputSpec, Scenario, Tiling, Use

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
#: Says in every result, the card and the page what the weights are.
SYNTHETIC_NOTE = ("trained on synthetic images only; not validated on real mIHC: research and teaching use, "
                  "not for counting on patient slides")


def chromogen_columns() -> dict[str, str]:
    """Cell-table column per stain: ``{"hematoxylin": "hematoxylin_od", "dab": "foxp3_od", ...}`` (markers by marker name)."""
    return {c.name: (f"{c.marker.lower()}_od" if c.marker else f"{c.name}_od") for c in CHROMOGENS}


class MIHCModel(HETILModel):
    """S-DRDIN on multiplex IHC at 0.44 µm/px: block-wise inference, §2.5 post-processing, chromogen levels per cell.

    Loads any of the paper's variants (for the ablation of :mod:`core.evaluation.mihc`);
    ``drdin-classification`` reads its detection map as 1 - P(background), ``drdin-detection``
    has no phenotypes and is refused by :meth:`predict` (the evaluation scores its detections only).
    """

    supported_precisions = ("float32",)

    def build(self, metadata: dict) -> torch.nn.Module:
        n = int(metadata.get("n_classes", len(PHENOTYPES)))
        if n != len(PHENOTYPES):
            raise ValueError(f"the weights have {n} classes, the scenario {len(PHENOTYPES)} phenotypes")
        net = SDRDIN(n, metadata.get("variant", "s-drdin"), int(metadata.get("base_features", 16)))
        self.mean = np.asarray(json.loads(metadata["normalization_mean"]), np.float32).reshape(1, 1, 3)
        self.std = np.asarray(json.loads(metadata["normalization_std"]), np.float32).reshape(1, 1, 3)
        self.params = PostprocessParams(threshold=float(metadata.get("threshold", 0.5)))
        if "class_window_um" in metadata:
            self.params = replace(self.params, class_window_um=float(metadata["class_window_um"]))
        self.variant = net.variant
        return net.to(memory_format=torch.channels_last)

    def infer_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) → (N, 1 + 6 + 1, h, w): detection probability, then the softmax over 6 phenotypes + background.

        ``drdin-classification``: detection = 1 - P(background); ``drdin-detection``: the class
        planes are 0 with background 1.
        """
        cls, det = probabilities(self.net(batch))
        if det is None:
            det = 1.0 - cls[:, -1]
        if cls is None:
            cls = torch.zeros((det.shape[0], len(PHENOTYPES) + 1, *det.shape[1:]), dtype=det.dtype, device=det.device)
            cls[:, -1] = 1.0
        return torch.cat([det.float()[:, None], cls.float()], dim=1)

    def predict(self, work: np.ndarray, progress=None) -> Prediction:
        """Cells of an image at 0.44 µm/px (base skeleton), refused for weights without a classification branch.

        Raises
        ------
        InputError
            For ``drdin-detection`` weights (no phenotypes).
        """
        if self.variant == "drdin-detection":
            raise InputError("weights of variant drdin-detection have no classification branch: they give no phenotypes "
                             "(use them with python -m core evaluate for the ablation)")
        return super().predict(work, progress)

    def finish_cells(self, xy, columns, dense, work) -> Prediction:
        """Cells of every block → the prediction, with each cell's chromogen levels (why this call)."""
        from core.mihc_unmixing import cell_levels_from_rgb

        levels = cell_levels_from_rgb(work, xy, CHROMOGEN_DISC_UM / self.scenario.input_mpp)
        extra = {"detection_probability": columns["detection_probability"]}
        for k, col in enumerate(chromogen_columns().values()):
            extra[col] = levels[:, k].astype(np.float64)
        return Prediction(xy, columns["class_index"], columns["probability"], extra, {"probability": dense},
                          notes=[f"mIHC T-cell phenotypes: {SYNTHETIC_NOTE}"])


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
        use=Use(stain="dab-hematoxylin", mpp_range=(0.3, 0.6)),
        caution=("Trained on synthetic images only; not validated on real mIHC. The chromogen of each marker (PD1 teal, "
                 "CD8 Fast Red, CD4 green, FOXP3 DAB) is an assumption of the generator: a panel with other chromogens "
                 "is outside what it has seen."),
        params={"unmixing": "mihc-tcell", "chromogen_disc_um": CHROMOGEN_DISC_UM},
    )


def model_from_file(weights: str | Path, device: str | torch.device = "cpu", scenario: Scenario | None = None) -> MIHCModel:
    """An :class:`MIHCModel` from any weights file of :mod:`core.training.mihc` (SHA-256 taken from the file).

    Parameters
    ----------
    weights : path to a ``.safetensors`` file
    device : torch device or its name
    scenario : Scenario, optional; default :func:`draft_scenario`

    Raises
    ------
    WeightsError
        If the file is missing, not safetensors, or does not fit the network.
    """
    from core.scenarios.weights import model_from_weights_file

    return model_from_weights_file(MIHCModel, scenario or draft_scenario("-", "-"), weights, device,
                                   "python -m core.training.mihc train")


def model_from_net(net: SDRDIN, metadata: dict, device: str | torch.device = "cpu") -> MIHCModel:
    """An :class:`MIHCModel` around an in-memory network (tuning during training); ``net`` is not modified.

    Parameters
    ----------
    net : SDRDIN with 6 classes
    metadata : the weights' metadata (:func:`core.training.mihc.metadata`)
    """
    return MIHCModel(draft_scenario("-", "-"), torch.device(device), net.state_dict(), metadata)
