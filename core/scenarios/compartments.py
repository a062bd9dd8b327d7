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

The registry entry is ``tissue-compartments`` in :mod:`core.scenarios.registry` (its output of
kind ``regions``); a cell scenario uses the map through :func:`core.pipeline.run_analysis`
(``compartments="tissue-compartments"``): the map's tumour and stroma become the regions of the
spatial statistics, its tumour and stroma the tissue of the densities.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from core.errors import InputError
from core.io import ImageData
from core.nets.cd_unet import CLASSES, build, pad_to_multiple
from core.scenarios.base import Prediction, ScenarioModel, ScenarioOutput
from core.scenarios.registry import get_scenario
from core.spatial.predicted_compartments import (
    LABELS,
    MIN_REGION_AREA_UM2,
    compartment_areas_mm2,
    label_map_regions,
    labels_at,
    mask_polygons,
)
from core.tiling import Progress

#: Registry key.
KEY = "tissue-compartments"
#: Display colours, as the registry entry declares them (QuPath's Tumor and Stroma; necrosis amber; glass white).
COLORS = dict(get_scenario(KEY).class_colors)
#: Name of the dense output holding the class probabilities (declared in the registry entry).
PROBABILITIES = "compartment_probabilities"
#: Parts of a compartment smaller than this are left out of regions.geojson (the label map keeps them).
MIN_POLYGON_AREA_UM2 = MIN_REGION_AREA_UM2


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
    _regions: list | None = field(default=None, init=False, repr=False, compare=False)  # cache of :meth:`regions`
    _polygons: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # cache of :meth:`polygons`

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

    def polygons(self, value: int, min_area_px: float, simplify_px: float = 0.5) -> list:
        """:func:`mask_polygons` of the pixels labelled ``value``, traced once per map and arguments.

        ``regions.geojson`` and the regions of the spatial statistics read the same outlines.
        Returns a new list of the (outer, holes) rings (the rings themselves are shared: do not modify them).
        """
        key = (int(value), float(min_area_px), float(simplify_px))
        if key not in self._polygons:
            self._polygons[key] = mask_polygons(self.labels == value, min_area_px, simplify_px)
        return list(self._polygons[key])

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
            for k, (outer, holes) in enumerate(self.polygons(LABELS[name], min_px), start=1):
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

    @property
    def tissue(self) -> np.ndarray:
        """(H, W) bool: tumour or stroma, the tissue TIL densities are measured on (background and necrosis left out)."""
        return (self.labels == LABELS["tumour"]) | (self.labels == LABELS["stroma"])

    def tissue_mask(self):
        """The map's tissue (tumour and stroma) as the :class:`core.fitness.TissueMask` of the densities.

        Returns
        -------
        core.fitness.TissueMask at the map's own pixels (scale 1): its area is exactly the
        tumour + stroma area of :meth:`areas_mm2`.
        """
        from core.fitness import TissueMask

        mask = self.tissue
        return TissueMask(mask, 1.0, float(mask.mean()) if mask.size else 0.0,
                          "tumour and stroma of the predicted tissue compartments (background and necrosis left out)")

    def labels_at(self, xy_px: np.ndarray) -> np.ndarray:
        """(N,) int16 label under each (x, y) pixel position, -1 outside the map (:func:`labels_at`)."""
        return labels_at(self.labels, xy_px)

    def regions(self, min_area_um2: float = MIN_POLYGON_AREA_UM2) -> list:
        """The compartments as regions (µm) for the spatial statistics (:func:`label_map_regions`).

        Tumour and stroma parts become ``tumour`` and ``stroma`` regions, necrosis and background
        ``exclude`` regions; parts smaller than ``min_area_um2`` are left out.

        Raises
        ------
        InputError
            Without an mpp (regions are in µm).
        """
        if min_area_um2 != MIN_POLYGON_AREA_UM2:
            return label_map_regions(self.labels, self.mpp, min_area_um2, trace=self.polygons)
        if self._regions is None:  # traced once: the statistics, cells.geojson and the report read the same regions
            self._regions = label_map_regions(self.labels, self.mpp, min_area_um2, trace=self.polygons)
        return list(self._regions)

    def picture(self, rgb: np.ndarray, max_side_px: int | None = None, alpha: float = 0.5) -> np.ndarray:
        """The map over the image, each compartment in its colour and outlined, with a legend strip (and areas) below.

        Parameters
        ----------
        rgb : (H, W, 3) uint8, the image the map was made of (same size as :attr:`labels`)
        max_side_px : int, optional, longest side of the picture (the image is reduced, area filter)
        alpha : float in [0, 1], opacity of the colours

        Returns
        -------
        (h + legend, w, 3) uint8 RGB
        """
        from PIL import Image, ImageDraw, ImageFont

        from matplotlib import font_manager

        from core.outputs.figures import downscale, hex_to_rgb

        small, scale = downscale(np.asarray(rgb, np.uint8), max_side_px) if max_side_px else (np.asarray(rgb, np.uint8), 1.0)
        h, w = small.shape[:2]
        lab = self.labels if scale >= 1.0 else np.asarray(
            Image.fromarray(self.labels).resize((w, h), Image.Resampling.NEAREST))
        lut = np.array([hex_to_rgb(COLORS[name]) for name in LABELS], np.float32)
        blended = small.astype(np.float32) * (1 - alpha) + lut[lab] * alpha
        edge = np.zeros(lab.shape, bool)  # compartment borders, darkened so that the parts read apart on any stain
        edge[:-1] |= lab[:-1] != lab[1:]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        blended[edge] *= 0.25
        picture = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        size = max(11, round(w / 60))
        font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)  # as the report: it has "²" and "µ"
        strip = Image.new("RGB", (w, 2 * size + 8), (255, 255, 255))
        draw = ImageDraw.Draw(strip)
        areas = self.areas_mm2()
        x = 6
        for name in LABELS:
            text = name + (f" {areas[name]:.3f} mm²" if areas else "")
            draw.rectangle([x, size // 2 + 2, x + size, size // 2 + 2 + size], fill=hex_to_rgb(COLORS[name]),
                           outline=(0, 0, 0))
            draw.text((x + size + 5, size // 2), text, fill=(0, 0, 0), font=font)
            x += size + 14 + int(draw.textlength(text, font=font))
        return np.vstack([picture, np.asarray(strip)[:, :w]])


class CompartmentsModel(ScenarioModel):
    """CD-UNET (paper §3.2) with the dense tiler; probabilities → :class:`CompartmentMap`."""

    # NHWC layout: about a third faster on CPU for these convolutions (benchmarks/bench_compartments.py)
    channels_last = True
    # the fewest windows, shrunk to multiples of the U-Net's 16 px (no padding) and spread evenly
    balanced_windows = True
    window_multiple_px = 16

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # After the strict, SHA-256-checked load: batch normalisation folded into the convolutions
        # (the same function), then the NHWC layout.
        self.net.fuse_batch_norm_()
        self.net.to(memory_format=torch.channels_last)

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

    def regions_map(self, out: ScenarioOutput, image: ImageData) -> CompartmentMap:
        """The output of kind ``regions``: the compartment map of :meth:`analyze`'s output, at the image's size."""
        return CompartmentMap.from_probabilities(out.dense[PROBABILITIES], image.mpp)

    def compartments(self, image: ImageData, progress: Progress | None = None) -> tuple[CompartmentMap, ScenarioOutput]:
        """Run the scenario and return the compartment map at the image's size with the raw output."""
        out = self.analyze(image, progress)
        return self.regions_map(out, image), out

