"""The scenario registry: one declarative entry per scenario model.

Each entry is a :class:`core.scenarios.spec.Scenario`: the model's input contract in
physical units (channels, input mpp, tile and overlap in µm), its output kinds, classes with
roles and display colours, its weights file with the SHA-256 it must match, its model card
with the SHA-256 it must match, and evaluation recipe. The CLI, the app and saved analyses use the stable keys. An unknown
key raises :class:`UnknownScenarioError` listing the known keys; there is no default model.

Adding a scenario: its network (``core/nets/``), its scenario module (``core/scenarios/``,
a :class:`~core.scenarios.base.ScenarioModel` subclass), one entry here, weights + card in
``weights/``, and tests. Pages, the report and the exporters read the entry; none names a
scenario.
"""

from __future__ import annotations

import importlib

from core.errors import UnknownScenarioError
from core.scenarios.spec import CellClass, InputSpec, OutputSpec, Scenario, Tiling, Use

#: The IF composite of the melanoma paper: three colour planes of one RGB file.
_IF_COMPOSITE = InputSpec(channels=("red", "green", "blue"))
_BRIGHTFIELD = InputSpec()


def _tnrd_scenario(*, key: str, title: str, stain: str, modality: str, cell_class: CellClass, sha256: str,
                   card_sha256: str, marks: str, params: dict, input_spec: InputSpec, use: Use) -> Scenario:
    """A TNRD scenario (melanoma paper §2.1): 0.5 µm/px, 128 µm windows blended over 24 µm, one class off the mask.

    Weights and card are ``weights/<key>-v1.safetensors`` and ``<key>-v1.json``; ``marks``
    completes the description ("... denoise the image and mark <marks>").
    """
    return Scenario(
        key=key,
        title=title,
        stain=stain,
        modality=modality,
        description=(
            "TNRD variational network (melanoma paper §2.1): projected gradient steps on RGB + mask denoise the "
            f"image and mark {marks}; cells are read off the mask."
        ),
        input=input_spec,
        input_mpp=0.5,
        min_side_um=8.0,  # 16 px
        tiling=Tiling("dense", tile_um=128.0, overlap_um=24.0, blend="linear"),  # 256 px windows, 48 px overlap
        classes=(cell_class,),
        outputs=(
            OutputSpec("cells", "cells", "Immune cells read off the classification mask"),
            OutputSpec("restored", "denoised", "The image denoised by the variational network (RGB)"),
            OutputSpec("dense", "mask", f"Classification mask: 1 on {marks}, 0 elsewhere", meaning="mask",
                       color=cell_class.color),
        ),
        weights=f"{key}-v1.safetensors",
        sha256=sha256,
        model_card=f"{key}-v1.json",
        card_sha256=card_sha256,
        runner="core.scenarios.tnrd:TNRDModel",
        evaluation="tnrd-synthetic",
        trained_on_synthetic=True,
        use=use,
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
            description=(
                "CNN of the gastric CD3 IHC paper (§III.C) run densely over the image at a stride "
                "of 8 px, then non-maximum suppression (§III.A)."
            ),
            input=_BRIGHTFIELD,
            input_mpp=0.2,
            min_side_um=14.0,  # one 70 px window
            # 96 x 96 output windows (8 px stride) per block; each window carries its 70 px field of view
            tiling=Tiling("dense", tile_um=153.6, overlap_um=0.0, blend="none"),
            classes=(CellClass("cd3-positive", "immune", "#e8341c", "CD3+ lymphocyte"),),
            outputs=(
                OutputSpec("cells", "cells", "CD3+ lymphocytes (window centres kept by non-maximum suppression)"),
                OutputSpec("dense", "probability", "P(CD3+ lymphocyte) of the 14 µm window centred on each pixel",
                           meaning="probability", color="#e8341c"),
            ),
            weights="cd3-ihc-cnn-v1.safetensors",
            sha256="7dd9c6bdce5e453293fdb2eddd414b62c9df9177ddae6ee9ce595f337fc6c345",
            model_card="cd3-ihc-cnn-v1.json",
            card_sha256="be4f91ba5f03d6173d117983f8075f4836d97f18bb284fbf925a5f79e6fb9709",
            runner="core.scenarios.cd3_ihc:CD3IHCModel",
            evaluation="cd3-patches",
            trained_on_synthetic=False,
            # trained and validated on 0.2 µm/px patches (40x); the antibody cannot be read from the colours
            use=Use(stain="dab-hematoxylin", mpp_range=(0.15, 0.3), antigen="CD3", min_focus=0.003),
            # no params: the operating point (threshold, nms_radius_um) is in the weights' metadata
        ),
        _tnrd_scenario(
            key="tnrd-if-melanoma",
            title="Immune cells touching melanoma cells (IF, TNRD)",
            stain="Immunofluorescence: CD45 red, gp100 green, DAPI blue",
            modality="fluorescence",
            cell_class=CellClass("classified-immune", "immune", "#ffd400", "Immune cell touching melanoma"),
            sha256="9188af7d43c9e57d1beae4115c20fbba28e47febe1933048743b8acf7811919f",
            card_sha256="8509b50583a50a13eca1d7660dfae58924c4b0c150d286f00d601cd25af8b450",
            marks="CD45+ cells in contact with gp100+ melanoma cells",
            params={"recipe": "if-melanoma", "min_area_px": 20, "min_distance_px": 6},
            input_spec=_IF_COMPOSITE,
            use=Use(stain="fluorescence", mpp_range=(0.3, 0.7)),
        ),
        Scenario(
            key="he-til",
            title="Tumour, immune and stromal cells in H&E",
            stain="H&E",
            modality="brightfield",
            description=(
                "S-DRDIN (§2.3): one network detects nuclei and classifies them as epithelial, inflammatory, "
                "fibroblast or other; cells from the detection map by threshold, distance transform and local "
                "maxima, class by eq. 3 (§2.5). Trained on real colorectal H&E (CRCHistoPhenotypes)."
            ),
            input=_BRIGHTFIELD,
            input_mpp=0.55,
            min_side_um=8.8,  # 16 px: two multiples of the network's 8 px size step
            tiling=Tiling("cells", tile_um=563.2, overlap_um=52.8),  # 1024 px blocks, 96 px context
            classes=(
                CellClass("epithelial", "tumour", "#d62728", "Epithelial (tumour) nucleus"),
                CellClass("inflammatory", "immune", "#1f77b4", "Inflammatory (immune) nucleus"),
                CellClass("fibroblast", "stroma", "#2ca02c", "Fibroblast (stromal) nucleus"),
                CellClass("other", "other", "#ff9f1c", "Other nucleus"),
            ),
            outputs=(
                OutputSpec("cells", "cells", "Nuclei with their class (eq. 3) and class confidence"),
                OutputSpec("dense", "probability", "Detection probability of a nucleus at each pixel (§2.3)",
                           meaning="probability", color="#1f77b4"),
            ),
            weights="he-til-sdrdin-v3.safetensors",
            sha256="553e098d62b34d023e7680a219e0d59bdbadcb0c15e2fb7a7963e9ab2367acb5",
            model_card="he-til-sdrdin-v3.json",
            card_sha256="f45bb082d7e935eeb0de4fe9d9b095defbbe9ba1cccf59e3216702008888a4db",
            runner="core.scenarios.he_til:HETILModel",
            evaluation="he-points",
            trained_on_synthetic=False,
            # validated at 0.25 (CoNSeP), 0.5 (BRCA-M2C) and 0.55 µm/px (CRC), resampled to 0.55
            use=Use(stain="he", mpp_range=(0.2, 0.6), min_focus=0.003),
            caution=(
                "Checked on three labelled H&E sources (model card, within 3 µm): of the annotated immune cells it "
                "finds and calls immune 60 % on colorectal 20x (the training lab), 66 % on another lab's colorectal "
                "40x, and only 32 % on TCGA breast, where half the lymphocytes are found but called another class; on "
                "the 40x colorectal slides it misses more than half of all nuclei. Immune counts on other laboratories' "
                "slides are underestimates: check the immune calls by eye, and give the true microns per pixel."
            ),
        ),
        _tnrd_scenario(
            key="tnrd-he-melanoma",
            title="Immune cells in dense infiltrates (H&E, TNRD)",
            stain="H&E",
            modality="brightfield",
            cell_class=CellClass("classified-immune", "immune", "#00c853", "Immune cell in a dense infiltrate"),
            sha256="37b1ff9b996def7dbe6542264833cfce968e34e41049fa2746d38e4da842174c",
            card_sha256="03a49cdfb2000e92b004d2cbcf608940b4934400f0174e50259aa930f229eb39",
            marks="immune cells where the local immune-cell concentration exceeds 0.2",
            params={"recipe": "he-melanoma", "min_area_px": 8, "min_distance_px": 3},
            input_spec=_BRIGHTFIELD,
            use=Use(stain="he", mpp_range=(0.3, 0.7)),
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


def runner_class(scenario: Scenario):
    """Import and return the ScenarioModel subclass named by ``scenario.runner``.

    Imported at call time, so importing the registry loads no network code.
    """
    module_name, _, cls_name = scenario.runner.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)
