"""Scenario ``tissue-compartments``: CD-UNET segments tumour, stroma, necrosis and background in H&E and IHC.

Method (CD-UNET paper, shared/papers/cd-unet-multistain-tissue-segmentation.txt, §3.2): the
image, resampled to 1.0 µm/px (the paper's 10x, §2), goes window by window through CD-UNET
(:mod:`core.nets.cd_unet`: a learned colour-deconvolution segment of two 1 x 1 convolutions in
front of a half-width U-Net); the windows' class probabilities are blended over their overlap
(:func:`core.tiling.tile_dense`), resized to the input image and each pixel takes its most
probable class.

Outputs (:class:`CompartmentMap`), for the pipeline's writers:

- ``compartments.png``: the label map at the input image's size, 8-bit grey, pixel value = the
  class's label in :data:`LABELS` (``{"background": 0, "tumour": 1, "stroma": 2, "necrosis": 3}``);
- ``regions.geojson``: the tumour, stroma and necrosis areas as polygons in the image's pixels,
  QuPath annotations classified ``tumour``, ``stroma`` and ``necrosis`` (TILscope reads them back
  as tumour, stroma and exclusion regions);
- ``summary.json["compartments"]``: the labels, the area of each compartment in mm² (pixel count
  x mpp², None without an mpp), its share of the image, and how they were measured.

Background is glass and what is not tissue to score (pen marks, white gland lumina); necrosis and
background are what the TIL statistics leave out (:mod:`core.spatial.predicted_compartments`).

The registry entry (:func:`scenario_spec`) is added to :mod:`core.scenarios.registry` once
trained weights and their card are in ``weights/``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import InputError
from core.io import ImageData
from core.nets.cd_unet import CLASSES, build, pad_to_multiple
from core.scenarios.base import Prediction, ScenarioModel, ScenarioOutput
from core.scenarios.spec import CellClass, InputSpec, OutputSpec, Scenario, Tiling, Use
from core.spatial.predicted_compartments import LABELS, compartment_areas_mm2, mask_polygons
from core.tiling import Progress

#: Display colours (QuPath's Tumor and Stroma; necrosis amber; glass white).
COLORS = {"background": "#ffffff", "tumour": "#c80000", "stroma": "#96c896", "necrosis": "#e0a800"}
#: Name of the dense output holding the class probabilities.
PROBABILITIES = "compartment_probabilities"
#: Parts of a compartment smaller than this are left out of regions.geojson (the label map keeps them).
MIN_POLYGON_AREA_UM2 = 150.0
#: Registry key.
KEY = "tissue-compartments"


@dataclass
class CompartmentMap:
    """A compartment label map of one image, with its writers.

    Attributes
    ----------
    labels : (H, W) uint8 in {0, 1, 2, 3} (:data:`LABELS`), the input image's pixels
    mpp : float or None, µm/px of that image
    """

    labels: np.ndarray
    mpp: float | None

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, mpp: float | None) -> "CompartmentMap":
        """Arg-max of (H, W, 4) class probabilities (plane order :data:`LABELS`).

        Raises
        ------
        InputError
            If the array is not (H, W, 4).
        """
        p = np.asarray(probabilities)
        if p.ndim != 3 or p.shape[2] != len(LABELS):
            raise InputError(f"compartment probabilities must be (H, W, {len(LABELS)}), got shape {p.shape}")
        return cls(np.argmax(p, axis=-1).astype(np.uint8), mpp)

    def areas_mm2(self) -> dict[str, float] | None:
        """Area of each compartment in mm² (pixel count x mpp²), None without an mpp."""
        return None if not self.mpp else compartment_areas_mm2(self.labels, self.mpp)

    def summary(self) -> dict:
        """``summary.json["compartments"]``.

        Returns
        -------
        dict: ``labels`` (exactly :data:`LABELS`), ``area_mm2`` per compartment (None without an
        mpp), ``area_px``, ``fraction`` of the image, ``mpp``, ``method``
        """
        counts = np.bincount(self.labels.ravel(), minlength=4)[:4]
        total = max(int(counts.sum()), 1)
        return {
            "labels": dict(LABELS),
            "area_mm2": self.areas_mm2(),
            "area_px": {k: int(counts[v]) for k, v in LABELS.items()},
            "fraction": {k: round(float(counts[v]) / total, 6) for k, v in LABELS.items()},
            "mpp": self.mpp,
            "method": "CD-UNET (paper §3.2) class probabilities at 1.0 µm/px, resized to the image, arg-max per pixel; "
                      "areas are pixel counts x mpp²",
        }

    def png(self) -> bytes:
        """``compartments.png``: the label map as an 8-bit grey PNG of the image's size (values 0-3)."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(self.labels, dtype=np.uint8), mode="L").save(buf, format="PNG")
        return buf.getvalue()

    def geojson(self, min_area_um2: float = MIN_POLYGON_AREA_UM2) -> dict:
        """``regions.geojson``: tumour, stroma and necrosis polygons as QuPath annotations (image pixels).

        Each connected part of a compartment is one Polygon Feature (holes as inner rings) with
        ``properties.objectType = "annotation"``, ``classification = {"name": "tumour" | "stroma" |
        "necrosis", "color": [r, g, b]}``, ``tilscope_kind`` (tumour, stroma, exclude) and
        ``measurements`` {"area_mm2" (None without mpp), "area_px"}; parts smaller than
        ``min_area_um2`` (or 150 px without an mpp) are left out. Background is not exported.
        """
        from core.spatial.regions import _rgb

        min_px = (min_area_um2 / self.mpp**2) if self.mpp else MIN_POLYGON_AREA_UM2
        features = []
        for name, kind in (("tumour", "tumour"), ("stroma", "stroma"), ("necrosis", "exclude")):
            for k, (outer, holes) in enumerate(mask_polygons(self.labels == LABELS[name], min_px), start=1):
                import shapely

                area_px = float(shapely.Polygon(outer, holes).area)
                rings = [np.vstack([r, r[:1]]).round(3).tolist() for r in [outer, *holes]]
                features.append({
                    "type": "Feature", "id": f"{name}-{k}",
                    "geometry": {"type": "Polygon", "coordinates": rings},
                    "properties": {"objectType": "annotation", "name": f"{name.capitalize()} {k}",
                                   "classification": {"name": name, "color": _rgb(COLORS[name])},
                                   "tilscope_kind": kind, "isLocked": False,
                                   "measurements": {"area_px": round(area_px, 1),
                                                    "area_mm2": None if not self.mpp else area_px * self.mpp**2 / 1e6}},
                })
        return {"type": "FeatureCollection", "features": features}

    def exports(self) -> dict[str, bytes]:
        """``{"compartments.png": ..., "regions.geojson": ...}`` as bytes (deterministic)."""
        return {"compartments.png": self.png(),
                "regions.geojson": json.dumps(self.geojson(), separators=(",", ":")).encode("utf-8")}


class CompartmentsModel(ScenarioModel):
    """CD-UNET (paper §3.2) with the dense tiler; probabilities → :class:`CompartmentMap`."""

    def build(self, metadata: dict) -> torch.nn.Module:
        try:
            config = json.loads(metadata["config"])
        except (KeyError, json.JSONDecodeError) as err:
            raise InputError("CD-UNET weights lack their 'config' metadata; retrain with "
                             "python -m core.training.cd_unet") from err
        if json.loads(metadata.get("classes", json.dumps(list(CLASSES)))) != list(CLASSES):
            raise ValueError(f"weights classes {metadata.get('classes')} are not {list(CLASSES)}")
        return build(config)

    def preprocess(self, window: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 RGB → (h, w, 3) float32 RGB in [0, 1] (the paper's scaling, §3)."""
        return np.asarray(window, np.float32) / 255.0

    def infer_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) → (N, 4, h, w) class probabilities (mirror-padded to a multiple of 2^depth, cropped back)."""
        x, (h, w) = pad_to_multiple(batch, self.net.size_multiple)
        return torch.softmax(self.net(x), dim=1)[:, :, :h, :w]

    def postprocess(self, maps: np.ndarray, work: np.ndarray) -> Prediction:
        """Blended probabilities → a Prediction with no cells and the dense output :data:`PROBABILITIES`."""
        probs = np.clip(maps, 0, None)
        probs = probs / np.maximum(probs.sum(axis=-1, keepdims=True), 1e-6)
        return Prediction(np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0), dense={PROBABILITIES: probs.astype(np.float32)})

    def compartments(self, image: ImageData, progress: Progress | None = None) -> tuple[CompartmentMap, ScenarioOutput]:
        """Run the scenario and return the compartment map at the image's size with the raw output."""
        out = self.analyze(image, progress)
        return CompartmentMap.from_probabilities(out.dense[PROBABILITIES], image.mpp), out


def scenario_spec(sha256: str, card_sha256: str, weights: str = "tissue-compartments-cdunet-v1.safetensors") -> Scenario:
    """The registry entry of ``tissue-compartments`` (add it to :data:`core.scenarios.registry.SCENARIOS` with real weights).

    Parameters
    ----------
    sha256, card_sha256 : hex SHA-256 of the weights file and of its JSON card
    weights : file name under ``weights/`` (the card is the same stem ``.json``)
    """
    return Scenario(
        key=KEY,
        title="Tissue compartments: tumour, stroma, necrosis (H&E and IHC)",
        stain="H&E, or IHC with a haematoxylin counterstain (DAB, red, purple, yellow chromogens)",
        modality="brightfield",
        description=(
            "CD-UNET (§3.2): two learned 1 x 1 colour-deconvolution layers in front of a U-Net label every pixel "
            "background (glass), tumour, stroma or necrosis at 1.0 µm/px (10x); trained on synthetic multistain "
            "sections, weak tumour / stroma labels from real classed cell points and real necrosis masks."
        ),
        input=InputSpec(),
        input_mpp=1.0,
        min_side_um=32.0,  # 32 px: two steps of the network's 16 px size multiple
        tiling=Tiling("dense", tile_um=512.0, overlap_um=64.0, blend="linear"),  # 512 px windows, 64 px ramps
        classes=tuple(CellClass(name, role, COLORS[name], label) for name, role, label in (
            ("background", "other", "Background (glass, artefacts)"), ("tumour", "tumour", "Tumour"),
            ("stroma", "stroma", "Stroma"), ("necrosis", "other", "Necrosis"))),
        outputs=(
            OutputSpec("dense", PROBABILITIES, "Probability of background, tumour, stroma and necrosis at each pixel",
                       meaning="class_probabilities", class_names=CLASSES),
            OutputSpec("regions", "compartments", "Compartment of each pixel (compartments.png: 0 background, 1 tumour, "
                       "2 stroma, 3 necrosis) and its polygons (regions.geojson), areas in mm²"),
        ),
        weights=weights,
        sha256=sha256,
        model_card=weights.replace(".safetensors", ".json"),
        card_sha256=card_sha256,
        runner="core.scenarios.compartments:CompartmentsModel",
        evaluation="compartments",
        trained_on_synthetic=False,  # synthetic sections plus real weak labels and real necrosis masks
        use=Use(stain="he", mpp_range=(0.2, 1.1), min_focus=None),
        caution=(
            "Compartments were learned from synthetic sections and weak labels (tumour / stroma from annotated cell "
            "points; necrosis from 20 crops of one TCGA slide): check the map over the image before trusting "
            "compartment densities or the stromal TIL %, and draw regions on the Review page where it is wrong."
        ),
    )
