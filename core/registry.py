"""The scenario registry: one declarative entry per scenario model.

Each entry states the model's input contract in physical units (input mpp, patch
size, overlap), its classes with roles and display colours, and its weights file
with the SHA-256 it must match. The CLI, the app and saved analyses use the stable
keys. An unknown key raises :class:`UnknownScenarioError` listing the known keys;
there is no default model.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UnknownScenarioError, WeightsError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class CellClass:
    """One output class: ``name`` (cell_class), ``role`` (immune/tumour/stroma/other), hex ``color``."""

    name: str
    role: str
    color: str
    label: str


@dataclass(frozen=True)
class Scenario:
    """A registered scenario model and its input contract.

    Attributes
    ----------
    key : str
        Stable name, e.g. ``"cd3-ihc"``.
    title, stain, modality : str
        Display title, stain (e.g. "CD3 IHC (DAB + hematoxylin)"), ``"brightfield"`` or ``"fluorescence"``.
    input_mpp : float
        Microns per pixel the model was trained at; images are resampled to it.
    classes : tuple of CellClass
    weights : str
        File name under ``weights/``.
    sha256 : str
        Hex SHA-256 the weights file must have.
    model_card : str
        JSON model card file name under ``weights/``.
    runner : str
        ``"module:Class"`` of the :class:`core.scenarios.base.ScenarioModel` subclass.
    patch_size_px, overlap_px : int
        Model window and tile overlap at ``input_mpp``.
    trained_on_synthetic : bool
        True when the weights saw only generated images (shown in the UI).
    params : dict
        Scenario-specific post-processing parameters (thresholds, NMS box in µm...).
    caution : str
        What a user must know before trusting the results on their own slides (shown in the
        UI beside the scenario; "" for none).
    reads_colour : bool
        The model tells its stains apart by colour (H&E, DAB + hematoxylin, a coloured
        fluorescence composite), so an image without colour is refused; False for a
        single-channel scenario (e.g. Hoechst only).
    """

    key: str
    title: str
    stain: str
    modality: str
    input_mpp: float
    classes: tuple[CellClass, ...]
    weights: str
    sha256: str
    model_card: str
    runner: str
    patch_size_px: int
    overlap_px: int
    trained_on_synthetic: bool
    description: str
    params: dict[str, Any] = field(default_factory=dict)
    caution: str = ""
    reads_colour: bool = True

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / self.weights

    @property
    def class_colors(self) -> dict[str, str]:
        """Mapping cell_class → hex colour."""
        return {c.name: c.color for c in self.classes}

    @property
    def class_roles(self) -> dict[str, str]:
        """Mapping cell_class → role."""
        return {c.name: c.role for c in self.classes}

    def card(self) -> dict:
        """The model card (JSON) as a dict.

        Raises
        ------
        WeightsError
            If the card file is missing or not valid JSON.
        """
        path = WEIGHTS_DIR / self.model_card
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise WeightsError(f"model card {path} is missing for scenario {self.key!r}") from err
        except json.JSONDecodeError as err:
            raise WeightsError(f"model card {path} is not valid JSON ({err})") from err


def _tnrd_scenario(*, key: str, title: str, stain: str, modality: str, cell_class: CellClass, sha256: str,
                   marks: str, params: dict[str, Any]) -> Scenario:
    """A TNRD scenario (melanoma paper §2.1): 0.5 µm/px, 256 px tiles, one class read off the mask.

    Weights and card are ``weights/<key>-v1.safetensors`` and ``<key>-v1.json``; ``marks``
    completes the description ("... denoise the image and mark <marks>").
    """
    return Scenario(
        key=key,
        title=title,
        stain=stain,
        modality=modality,
        input_mpp=0.5,
        classes=(cell_class,),
        weights=f"{key}-v1.safetensors",
        sha256=sha256,
        model_card=f"{key}-v1.json",
        runner="core.scenarios.tnrd:TNRDModel",
        patch_size_px=256,
        overlap_px=48,
        trained_on_synthetic=True,
        description=(
            "TNRD variational network (melanoma paper §2.1): projected gradient steps on RGB + mask denoise the "
            f"image and mark {marks}; cells are read off the mask."
        ),
        params=params,
    )


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in [
        Scenario(
            key="cd3-ihc",
            title="CD3+ lymphocytes in CD3 IHC",
            stain="CD3 IHC (DAB + hematoxylin)",
            modality="brightfield",
            input_mpp=0.2,
            classes=(CellClass("cd3-positive", "immune", "#e8341c", "CD3+ lymphocyte"),),
            weights="cd3-ihc-cnn-v1.safetensors",
            sha256="7dd9c6bdce5e453293fdb2eddd414b62c9df9177ddae6ee9ce595f337fc6c345",
            model_card="cd3-ihc-cnn-v1.json",
            runner="core.scenarios.cd3_ihc:CD3IHCModel",
            patch_size_px=70,
            overlap_px=62,
            trained_on_synthetic=False,
            description=(
                "CNN of the gastric CD3 IHC paper (§III.C) run densely over the image at a stride "
                "of 8 px, then non-maximum suppression (§III.A)."
            ),
            params={"nms_box_um": 8.0, "nms_iou": 0.1},  # defaults; the weights carry their tuned values
        ),
        _tnrd_scenario(
            key="tnrd-if-melanoma",
            title="Immune cells touching melanoma cells (IF, TNRD)",
            stain="Immunofluorescence: CD45 red, gp100 green, DAPI blue",
            modality="fluorescence",
            cell_class=CellClass("classified-immune", "immune", "#ffd400", "Immune cell touching melanoma"),
            sha256="9188af7d43c9e57d1beae4115c20fbba28e47febe1933048743b8acf7811919f",
            marks="CD45+ cells in contact with gp100+ melanoma cells",
            params={"recipe": "if-melanoma", "min_area_px": 20, "min_distance_px": 6},
        ),
        Scenario(
            key="he-til",
            title="Tumour, immune and stromal cells in H&E",
            stain="H&E",
            modality="brightfield",
            input_mpp=0.55,
            classes=(
                CellClass("epithelial", "tumour", "#d62728", "Epithelial (tumour) nucleus"),
                CellClass("inflammatory", "immune", "#1f77b4", "Inflammatory (immune) nucleus"),
                CellClass("fibroblast", "stroma", "#2ca02c", "Fibroblast (stromal) nucleus"),
                CellClass("other", "other", "#ff9f1c", "Other nucleus"),
            ),
            weights="he-til-sdrdin-v3.safetensors",
            sha256="553e098d62b34d023e7680a219e0d59bdbadcb0c15e2fb7a7963e9ab2367acb5",
            model_card="he-til-sdrdin-v3.json",
            runner="core.scenarios.he_til:HETILModel",
            patch_size_px=1216,
            overlap_px=192,
            trained_on_synthetic=False,
            description=(
                "S-DRDIN (§2.3): one network detects nuclei and classifies them as epithelial, inflammatory, "
                "fibroblast or other; cells from the detection map by threshold, distance transform and local "
                "maxima, class by eq. 3 (§2.5). Trained on real colorectal H&E (CRCHistoPhenotypes)."
            ),
            caution=(
                "Validated on one centre's colorectal H&E at 20x only. On another centre's H&E (TCGA) the classes "
                "were seen to fail (gland nuclei called fibroblast): check the classes by eye, and give the true "
                "microns per pixel."
            ),
            params={"tile_px": 1024, "margin_px": 96},
        ),
        _tnrd_scenario(
            key="tnrd-he-melanoma",
            title="Immune cells in dense infiltrates (H&E, TNRD)",
            stain="H&E",
            modality="brightfield",
            cell_class=CellClass("classified-immune", "immune", "#00c853", "Immune cell in a dense infiltrate"),
            sha256="37b1ff9b996def7dbe6542264833cfce968e34e41049fa2746d38e4da842174c",
            marks="immune cells where the local immune-cell concentration exceeds 0.2",
            params={"recipe": "he-melanoma", "min_area_px": 8, "min_distance_px": 3},
        ),
    ]
}


def list_scenarios() -> list[Scenario]:
    """All registered scenarios, in registry order."""
    return list(SCENARIOS.values())


def get_scenario(key: str) -> Scenario:
    """Look up a scenario by key.

    Raises
    ------
    UnknownScenarioError
        If ``key`` is not registered; the message lists the known keys.
    """
    try:
        return SCENARIOS[key]
    except KeyError:
        raise UnknownScenarioError(
            f"unknown scenario {key!r}; known scenarios: {', '.join(SCENARIOS)}"
        ) from None


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_verified_state_dict(path: str | Path, expected_sha256: str) -> tuple[dict, dict]:
    """Load a safetensors state dict after checking its SHA-256.

    Parameters
    ----------
    path : path to a ``.safetensors`` file
    expected_sha256 : hex digest it must have

    Returns
    -------
    state_dict : dict of str to torch.Tensor (float tensors as float32)
    metadata : dict of str to str (the file's safetensors metadata)

    Raises
    ------
    WeightsError
        If the file is missing, its SHA-256 differs, or it is not a safetensors file.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing; reinstall TILscope or retrain the model")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise WeightsError(
            f"weights file {path.name} has SHA-256 {actual[:12]}…, expected {expected_sha256[:12]}…: "
            "the file is corrupt or not the registered version; restore it from the repository"
        )
    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise WeightsError(f"weights file {path.name} could not be read ({err})") from err
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return state, metadata


def runner_class(scenario: Scenario):
    """Import and return the ScenarioModel subclass named by ``scenario.runner``."""
    module_name, _, cls_name = scenario.runner.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)
