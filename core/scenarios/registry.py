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
from core.scenarios.mihc_spec import draft_scenario as _mihc_scenario
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
                "maxima, class by eq. 3 (§2.5). Trained on real H&E of three sources: colorectal 20x "
                "(CRCHistoPhenotypes), TCGA breast (BRCA-M2C) and another lab's colorectal 40x (CoNSeP)."
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
            weights="he-til-sdrdin-v4.safetensors",
            sha256="e96ee2ed555d536a317feb2e0edc919e513f5d9309516cbaafe516040ce3ad48",
            model_card="he-til-sdrdin-v4.json",
            card_sha256="8564b9251cca7825aa88e9cdcc2f7ba5f99969c706be7395017abe6fdafa19c1",
            runner="core.scenarios.he_til:HETILModel",
            evaluation="he-points",
            trained_on_synthetic=False,
            # validated at 0.25 (CoNSeP), 0.5 (BRCA-M2C) and 0.55 µm/px (CRC), resampled to 0.55
            use=Use(stain="he", mpp_range=(0.2, 0.6), min_focus=0.003),
            caution=(
                "Checked on three labelled H&E sources (model card, within 3 µm): of the annotated immune cells it "
                "finds and calls immune 66 % on colorectal 20x, 69 % on another lab's colorectal 40x and 84 % on TCGA "
                "breast; about a third of its immune calls on colorectal are other cells. On the 40x colorectal slides "
                "it misses more than half of all nuclei, mostly tumour and stromal ones, so densities per mm² there are "
                "too low. Other organs and centres are unchecked: check the immune calls by eye, and give the true "
                "microns per pixel."
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
        Scenario(
            key="hoechst-lymphocytes",
            title="Lymphocyte subtypes from a Hoechst nuclear stain (research only)",
            stain="Hoechst 33342 / DAPI nuclear stain (one fluorescence channel)",
            modality="fluorescence",
            description=(
                "U-Net with a ResNet34 encoder (Hoechst U-Net paper §3.4) reads CD3+, CD8+ and CD20+ lymphocytes off the "
                "DNA stain alone, the channel stretched between its 1st and 99.8th percentiles (§3.3); cells are regions "
                "of P(lymphocyte) >= 0.5 split by a watershed, each with the subtype of most probability over its pixels. "
                "Trained on 12 tiles of one lung adenocarcinoma slide (cross-validated by tile position)."
            ),
            # one channel of any bit depth; a multi-channel file's Hoechst/DAPI plane is picked by name or index
            input=InputSpec(channels=("Hoechst",), dtype="uint16", value_range=(0.0, 65535.0), reads_colour=False),
            input_mpp=1.0,  # the training tiles: 1128 px at 0.227 µm/px exported at 256 px
            min_side_um=32.0,  # one 32 px window: the encoder's five stride-2 stages
            tiling=Tiling("dense", tile_um=256.0, overlap_um=64.0, blend="linear"),
            classes=(  # the weights' "merged" scheme, in the network's order after background
                CellClass("cd3", "immune", "#e8341c", "CD3+ T cell (CD8-negative)"),
                CellClass("cd8", "immune", "#ffb000", "CD8+ T cell"),
                CellClass("cd20", "immune", "#1f9bff", "CD20+ B cell"),
            ),
            outputs=(
                OutputSpec("cells", "cells", "Lymphocytes with their subtype (majority of the pixel classes over each cell)"),
                OutputSpec("dense", "lymphocyte", "P(lymphocyte of any subtype) at each pixel: 1 - P(background)",
                           meaning="probability", color="#ff00d4"),
                OutputSpec("dense", "subtypes", "Softmax of the U-Net per pixel over background, CD3, CD8 and CD20",
                           meaning="class_probabilities", class_names=("background", "cd3", "cd8", "cd20")),
            ),
            weights="hoechst-lymphocytes-unet-v1.safetensors",
            sha256="874d1f7dac6437f95df47d4a0cd4cf98c9712c521fe72583aef0a74415e32634",
            model_card="hoechst-lymphocytes-unet-v1.json",
            card_sha256="b189382eb08a99ca068df485fb49896024e8aa7daeba520ab15ffd955cd9277a",
            runner="core.scenarios.hoechst:HoechstModel",
            evaluation="hoechst-tiles",
            trained_on_synthetic=False,
            # trained on tiles at 1.0 µm/px; finer images (e.g. 0.227 µm/px scans) are resampled to it
            use=Use(stain="fluorescence", mpp_range=(0.2, 1.05)),
            # core.training.hoechst_card.caution of the card's cross-validated evaluation (tested to agree)
            caution=(
                "Subtypes are read from nuclear (DNA) morphology alone, by a model trained on 12 tiles (0.8 mm²) of one "
                "lung adenocarcinoma slide at 1 µm/px. Does NOT meet the project's aim (CD3 F1 >= 0.6 and better than "
                "every baseline on CD3 and CD8). Cross-validated over 12 tiles of one slide, per centroid within 4 µm: "
                "CD3 F1 0.20 (168 labelled cells), better than the simple baselines (every nucleus 0.11, nucleus-size "
                "rule 0.16); CD8 F1 0.00 (55 labelled cells), NOT better than the simple baselines (every nucleus 0.04, "
                "nucleus-size rule 0.05). CD20 B cells could not be learnt or checked (2 in the data)."
            ),
            # no params: the cell-call settings and the normalisation percentiles are in the weights' metadata
            research_only=True,  # far below its aim, CD8 not better than baselines: not for counting on patient cases
        ),
        Scenario(
            key="tissue-compartments",
            title="Tissue compartments: tumour, stroma, necrosis (H&E and IHC; research only)",
            stain="H&E, or IHC with a haematoxylin counterstain (DAB, red, purple, yellow chromogens)",
            modality="brightfield",
            description=(
                "CD-UNET (§3.2): two learned 1 x 1 colour-deconvolution layers in front of a U-Net label every pixel "
                "background (glass), tumour, stroma or necrosis at 1.0 µm/px (10x); trained on synthetic multistain "
                "sections, weak tumour / stroma labels from real classed cell points and real necrosis masks. Its "
                "regions can also give a cell scenario's statistics their compartments (--compartments)."
            ),
            input=_BRIGHTFIELD,
            input_mpp=1.0,
            min_side_um=32.0,  # 32 px: two steps of the network's 16 px size multiple
            # 1024 px windows (about 0.1 GB of activations each), 64 px ramps: 1.14x the pixels of the image
            # at slide scale where 512 px windows cost 1.31x, and a field up to 1 MP in one window
            tiling=Tiling("dense", tile_um=1024.0, overlap_um=64.0, blend="linear"),
            classes=(  # label values 0-3 of compartments.png, in this order
                CellClass("background", "other", "#ffffff", "Background (glass, artefacts)"),
                CellClass("tumour", "tumour", "#c80000", "Tumour"),
                CellClass("stroma", "stroma", "#96c896", "Stroma"),
                CellClass("necrosis", "other", "#e0a800", "Necrosis"),
            ),
            outputs=(
                OutputSpec("dense", "compartment_probabilities",
                           "Probability of background, tumour, stroma and necrosis at each pixel",
                           meaning="class_probabilities", class_names=("background", "tumour", "stroma", "necrosis")),
                OutputSpec("regions", "compartments", "Compartment of each pixel (compartments.png: 0 background, "
                           "1 tumour, 2 stroma, 3 necrosis) and its polygons (regions.geojson), areas in mm²"),
            ),
            weights="tissue-compartments-cdunet-s4.safetensors",
            sha256="8eda50fec5c3c88e45f8f1fef563da14be79d0dc2ef3a715760a16e95bc845c8",
            model_card="tissue-compartments-cdunet-s4.json",
            card_sha256="52498babb8ac8cb0f87de53ab7b56a7220d7796729d9b920929f0aaf378a185d",
            runner="core.scenarios.compartments:CompartmentsModel",
            evaluation="compartments",
            trained_on_synthetic=False,  # synthetic sections plus real weak labels and real necrosis masks
            research_only=True,  # stage-4 weights below the card's aims (tumour) on real and synthetic sections
            # validated on real H&E at 0.25-0.5 µm/px and synthetic sections at 1.0, resampled to 1.0 µm/px
            use=Use(stain="he", other_stains=("dab-hematoxylin",), mpp_range=(0.2, 1.1)),
            caution=(
                "Below the aims its card states (stage-4 weights): on real H&E 84 % of annotated tumour cells fall in "
                "the predicted tumour (aim 85 %), and on held-out synthetic sections tumour F1 is 0.81 (aim 0.85). "
                "Compartments were learned from synthetic sections and weak labels (tumour / stroma from annotated cell "
                "points; necrosis from crops of one TCGA slide). It takes some lymphocyte-rich stroma for tumour (a fifth "
                "of stromal lymphocytes on synthetic sections), so the stromal TIL % tends to read low and intratumoral "
                "immune density high: check the map over the image before trusting compartment densities or the stromal "
                "TIL %, and draw regions on the Review page where it is wrong."
            ),
        ),
        # Trained on synthetic mIHC sections only (issue #20): teaching and method development, never for counting.
        _mihc_scenario(sha256="a04794a5b79047d1cf5d749ecc52b4ed927d0e1d9324caa215f008a18b03e715",
                       card_sha256="6fa93c8717174be6434d7f6848dbf1322ccac09fad70d0ecde462d81a9f5f428"),
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
