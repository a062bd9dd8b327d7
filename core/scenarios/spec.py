"""The scenario contract: what a registry entry declares about one scenario model.

Everything a page, the report, the exporters, the evaluation and the store need to know
about a scenario is read from these declarations (tiatoolbox ``pretrained_model.yaml``;
timm ``PretrainedCfg``), in physical units: input mpp, tile and overlap in µm, channels
with dtype and value range, output kinds, classes with role and colour, weights with
their SHA-256, model card and evaluation recipe. This module imports nothing from the
rest of ``core.scenarios``, so the registry and the scenario base class both import it
without a cycle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import WeightsError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent.parent / "weights"

#: Kinds of output a scenario can declare (rendered by kind, never by scenario name).
OUTPUT_KINDS = ("cells", "dense", "restored", "regions")
#: Meanings of a dense output's values.
DENSE_MEANINGS = ("probability", "class_probabilities", "mask")


@dataclass(frozen=True)
class CellClass:
    """One output class: ``name`` (the table's cell_class), ``role`` (one of :data:`core.cells.ROLES`), hex ``color``, display ``label``."""

    name: str
    role: str
    color: str
    label: str


@dataclass(frozen=True)
class InputSpec:
    """The model's input: channel names in order, dtype and value range.

    Attributes
    ----------
    channels : tuple of str
        ``("red", "green", "blue")`` for a colour image (H&E, DAB + hematoxylin, an IF
        composite); marker names for a fluorescence scenario (e.g. ``("Hoechst",)``).
    dtype : str
        Dtype of the array handed to pre-processing, e.g. ``"uint8"``.
    value_range : (float, float)
    reads_colour : bool
        The model tells its stains apart by colour, so an image whose channels are all
        equal (a greyscale file, a blank field) is refused.
    """

    channels: tuple[str, ...] = ("red", "green", "blue")
    dtype: str = "uint8"
    value_range: tuple[float, float] = (0.0, 255.0)
    reads_colour: bool = True

    @property
    def is_rgb(self) -> bool:
        return self.channels == ("red", "green", "blue")


#: Stain families a scenario can declare it reads (:func:`core.fitness.read_stain` tells them apart).
STAIN_FAMILIES = ("he", "dab-hematoxylin", "fluorescence")


@dataclass(frozen=True)
class Use:
    """What the model was validated for: the checks of :func:`core.fitness.assess`.

    Attributes
    ----------
    stain : {"he", "dab-hematoxylin", "fluorescence"}
        Stain family the pixels must show (:func:`core.fitness.read_stain`); for a model
        validated on several families, the first of them (what a one-line caption names).
    other_stains : tuple of str
        Further families of :data:`STAIN_FAMILIES` the model reads as well, e.g.
        ``("dab-hematoxylin",)`` beside ``stain="he"`` for a model of H&E and of IHC with a
        hematoxylin counterstain (CD-UNET). Empty for a one-stain model.
    mpp_range : (float, float)
        Pixel sizes (µm/px) of the images the model was trained and validated on, with
        the resampling the pipeline does; outside it the run stops unless overridden.
    antigen : str or None
        The one antibody the model counts (e.g. "CD3"): colours cannot tell it from
        another DAB stain, so the user confirms it.
    min_focus : float or None
        Sharpness (:func:`core.fitness.focus_score`) below which a warning is given.
    stain_words : str or None
        How the messages name the stain when the family says too little, e.g. a multiplex
        IHC panel read under the ``dab-hematoxylin`` family (brightfield chromogens with a
        hematoxylin counterstain); None: the family's name (:data:`core.fitness.STAIN_LABELS`).
    """

    stain: str
    mpp_range: tuple[float, float]
    antigen: str | None = None
    min_focus: float | None = None
    other_stains: tuple[str, ...] = ()
    stain_words: str | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.stains if s not in STAIN_FAMILIES]
        if unknown:
            raise ValueError(f"Use: unknown stain famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                             f"known: {', '.join(STAIN_FAMILIES)}")
        if len(set(self.stains)) != len(self.stains):
            raise ValueError(f"Use: stain families listed twice in {self.stains}")

    @property
    def stains(self) -> tuple[str, ...]:
        """Every stain family the model reads: ``stain`` first, then ``other_stains``."""
        return (self.stain, *self.other_stains)


@dataclass(frozen=True)
class Tiling:
    """How a large image is cut for the network (both tilers are in :mod:`core.tiling`).

    Attributes
    ----------
    kind : {"dense", "cells"}
        ``"dense"``: a dense map blended over overlapping windows
        (:func:`core.tiling.tile_dense`); ``"cells"``: cell detection in blocks with
        context where each cell belongs to exactly one block (:func:`core.tiling.detect_in_blocks`).
    tile_um : float
        Window side (dense) or block core side (cells), µm at the input mpp.
    overlap_um : float
        Overlap of neighbouring windows (dense) or context margin around a block (cells), µm.
    blend : {"linear", "none"}
        Dense only: ``"linear"`` ramps across the overlap; ``"none"`` for a network whose
        windows carry their whole receptive field (each output comes from one window).
    """

    kind: str
    tile_um: float
    overlap_um: float
    blend: str = "linear"

    def tile_px(self, mpp: float) -> int:
        return int(round(self.tile_um / mpp))

    def overlap_px(self, mpp: float) -> int:
        return int(round(self.overlap_um / mpp))


@dataclass(frozen=True)
class OutputSpec:
    """One output a scenario produces.

    Attributes
    ----------
    kind : one of :data:`OUTPUT_KINDS`
        ``cells``: the cell table; ``dense``: an (H, W) or (H, W, K) float32 map at the
        image's size; ``restored``: an (H, W, 3) uint8 image (e.g. denoised); ``regions``:
        polygons (tissue compartments).
    name : str
        File stem of its export (``mask`` → ``mask.png``) and key in the result.
    description : str
        What the values mean, shown beside it and in the report.
    meaning : one of :data:`DENSE_MEANINGS` (dense only)
    class_names : tuple of str
        For ``class_probabilities``: the name of each of the K planes.
    color : str
        Hex display colour of a one-plane dense output drawn over the image.
    """

    kind: str
    name: str
    description: str
    meaning: str = ""
    class_names: tuple[str, ...] = ()
    color: str = "#ffd400"


@dataclass(frozen=True)
class Scenario:
    """A registered scenario model: its whole contract.

    Attributes
    ----------
    key : str
        Stable name, e.g. ``"cd3-ihc"`` (CLI, registry, app, saved analyses).
    title, stain, modality, description : str
        Display title, stain (e.g. "CD3 IHC (DAB + hematoxylin)"), ``"brightfield"`` or
        ``"fluorescence"``, and the method in one paragraph with its paper section.
    input : InputSpec
    input_mpp : float
        Microns per pixel the model was trained at; images are resampled to it.
    min_side_um : float
        Smallest image side the model can analyse, µm at ``input_mpp``.
    tiling : Tiling
    classes : tuple of CellClass
    outputs : tuple of OutputSpec
    weights, sha256, model_card, card_sha256 : str
        Weights file under ``weights/``, the hex SHA-256 it must have, its JSON card and
        the hex SHA-256 the card must have (the card's intended use and metrics go into
        reports, so an edited card is refused as an edited weights file is).
    runner : str
        ``"module:Class"`` of the :class:`core.scenarios.base.ScenarioModel` subclass.
    evaluation : str
        Recipe of ``python -m core evaluate`` (a key of :data:`core.evaluation.EVALUATIONS`).
    trained_on_synthetic : bool
        True when the weights saw only generated images (said in the UI and the report;
        never offered for clinical counting).
    use : Use
        What the model was validated for (stain, mpp range, antigen, focus): checked before a run.
    caution : str
        What a user must know before trusting the results on their own slides ("" for none).
    params : dict
        Scenario-specific post-processing defaults (the weights' metadata may override them).
    research_only : bool
        True for a model trained on real images whose validation fell short (it does not beat
        simple baselines, or misses the aim its card states): not fit for counting on patient
        cases. It stays on Analyze for research, marked "research only" where it is chosen, on
        its results and first in its reports, and is never listed among the validated models;
        ``caution`` says plainly why (the card's figures). Models trained on synthetic images
        only are ``trained_on_synthetic`` instead (listed on Analyze only when asked, saved as
        case analyses only when the user confirms it, marked as teaching analyses).
    """

    key: str
    title: str
    stain: str
    modality: str
    description: str
    input: InputSpec
    input_mpp: float
    min_side_um: float
    tiling: Tiling
    classes: tuple[CellClass, ...]
    outputs: tuple[OutputSpec, ...]
    weights: str
    sha256: str
    model_card: str
    card_sha256: str
    runner: str
    evaluation: str
    trained_on_synthetic: bool
    use: Use
    caution: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    research_only: bool = False

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / self.weights

    @property
    def validated_for_counting(self) -> bool:
        """Offered for counts on patient cases: trained on real images and validated (not synthetic-only, not research-only)."""
        return not (self.trained_on_synthetic or self.research_only)

    @property
    def reads_colour(self) -> bool:
        return self.input.reads_colour

    @property
    def class_colors(self) -> dict[str, str]:
        """Mapping cell_class → hex colour."""
        return {c.name: c.color for c in self.classes}

    @property
    def class_roles(self) -> dict[str, str]:
        """Mapping cell_class → role."""
        return {c.name: c.role for c in self.classes}

    @property
    def class_labels(self) -> dict[str, str]:
        """Mapping cell_class → display label."""
        return {c.name: c.label for c in self.classes}

    def output(self, name: str) -> OutputSpec:
        """The declared output called ``name``.

        Raises
        ------
        KeyError
            If the scenario declares no such output.
        """
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"scenario {self.key!r} declares no output {name!r}")

    def outputs_of(self, kind: str) -> tuple[OutputSpec, ...]:
        """The declared outputs of one kind, in declaration order."""
        return tuple(o for o in self.outputs if o.kind == kind)

    def card(self) -> dict:
        """The model card (JSON) as a dict, after checking its SHA-256 against :attr:`card_sha256`.

        Raises
        ------
        WeightsError
            If the card file is missing, its SHA-256 differs from the registered one (an
            edited or replaced card), or it is not valid JSON.
        """
        path = WEIGHTS_DIR / self.model_card
        try:
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise WeightsError(f"model card {path} is missing for scenario {self.key!r}") from err
        except OSError as err:
            raise WeightsError(f"model card {path} cannot be read ({err.strerror or err})") from err
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.card_sha256:
            raise WeightsError(
                f"model card {path.name} has SHA-256 {actual[:12]}…, expected {self.card_sha256[:12]}…: the card was "
                "edited or is not the registered version; restore it from the repository (a card regenerated by a card "
                "command needs its new SHA-256 in core/scenarios/registry.py)"
            )
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightsError(f"model card {path} is not valid JSON ({err})") from err
