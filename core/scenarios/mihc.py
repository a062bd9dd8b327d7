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
offered for clinical counting: the Analyze page lists it only when its "models trained on synthetic
images" switch is on, shows the chromogen maps of :func:`core.mihc_unmixing.chromogen_pictures`,
and saves a result as a teaching analysis only when the user confirms it). The registry entry is :func:`core.scenarios.mihc_spec.draft_scenario`
(a module without torch, so that importing the registry loads no network code).

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
from core.generator.mihc import PHENOTYPES
from core.mihc_unmixing import chromogen_columns  # noqa: F401 - the cell-table columns, re-exported
from core.nets.sdrdin import SDRDIN, probabilities
from core.scenarios.base import Prediction
from core.scenarios.he_til import HETILModel, PostprocessParams
from core.scenarios.mihc_spec import (  # noqa: F401 - the scenario's constants and entry, re-exported
    CARD_NAME, CELL_CLASSES, CHROMOGEN_DISC_UM, INPUT_MPP, KEY, PHENOTYPE_COLORS, WEIGHTS_NAME, draft_scenario)
from core.scenarios.spec import Scenario

#: Says in every result, the card and the page what the weights are.
SYNTHETIC_NOTE = ("trained on synthetic images only; not validated on real mIHC: research and teaching use, "
                  "not for counting on patient slides")


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
