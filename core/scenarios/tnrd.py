"""Scenarios ``tnrd-if-melanoma`` and ``tnrd-he-melanoma``: TNRD denoising + classification.

Method (TNRD melanoma paper, §2.1): the variational network of
:mod:`core.nets.tnrd` evolves the noisy RGB image together with a mask channel
that starts as uniform noise; it returns a denoised image and a classification mask
that is 1 on immune cells that matter (scenario 1: touching melanoma cells in
CD45/gp100/DAPI immunofluorescence; scenario 2: in dense infiltrates in H&E).

Inference here: the image is resampled to the scenario's mpp, split into
overlapping windows that are blended with linear ramps (the dense-map tiler,
:func:`core.tiling.tile_dense`), and the mask is turned into cells (:func:`mask_to_cells`):
connected regions of mask >= threshold, split where touching cells merge
(watershed on the distance transform), regions below a minimum area dropped. Every
region becomes a row of the cell table with role ``immune`` and cell_class
``classified-immune``; its ``probability`` is the mean mask value over the region.

The weights were trained on synthetic images only (:mod:`core.generator`).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from scipy import ndimage

from core.errors import InputError
from core.nets.tnrd import TNRD
from core.scenarios.base import Prediction, ScenarioModel
from core.tiling import Progress, tile_dense

#: Seed of the uniform-noise initial mask u0_m (fixed, so results are reproducible).
MASK_SEED = 0


def mask_to_cells(mask: np.ndarray, threshold: float = 0.5, min_area_px: float = 10.0,
                  min_distance_px: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cells from a classification mask.

    Regions of ``mask >= threshold`` are split into cells by a watershed of the
    distance transform from its maxima at least ``min_distance_px`` apart (touching
    cells merge into one region otherwise); cells smaller than ``min_area_px`` are
    dropped.

    Parameters
    ----------
    mask : (H, W) float in [0, 1]
    threshold : float in (0, 1]
    min_area_px : float >= 0
    min_distance_px : float >= 1
        About the smallest semi-axis of the cells to separate.

    Returns
    -------
    xy : (N, 2) float64 centroids x, y in pixels
    mean_value : (N,) float64 mean mask value over each cell, in [0, 1]
    area_px : (N,) int64
    labels : (H, W) int32 cell label image (0 = none), labels 1..N in the order of ``xy``
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mask = np.asarray(mask, np.float32)
    binary = mask >= threshold
    if not binary.any():
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0, np.int64), np.zeros(mask.shape, np.int32)
    regions, _ = ndimage.label(binary)
    dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(binary), 1.0)
    peaks = peak_local_max(dist, min_distance=max(1, int(round(min_distance_px))), labels=regions, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # every region gets at least one marker
    missing = sorted(set(np.unique(regions[binary])) - set(np.unique(regions[markers > 0])))
    for r in missing:
        yy, xx = np.nonzero(regions == r)
        k = np.argmax(dist[yy, xx])
        markers[yy[k], xx[k]] = markers.max() + 1
    labels = watershed(-dist, markers, mask=binary).astype(np.int32)
    n = int(labels.max())
    idx = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(mask), labels, idx)
    keep = area >= max(min_area_px, 1)
    if n == 0 or not keep.any():
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0, np.int64), np.zeros(mask.shape, np.int32)
    com = np.array(ndimage.center_of_mass(np.ones_like(mask), labels, idx[keep])).reshape(-1, 2)
    mean = np.asarray(ndimage.mean(mask, labels, idx[keep]), np.float64)
    relabel = np.zeros(n + 1, np.int32)
    relabel[idx[keep]] = np.arange(1, int(keep.sum()) + 1)
    return com[:, ::-1].astype(np.float64), mean, area[keep].astype(np.int64), relabel[labels]


class TNRDModel(ScenarioModel):
    """TNRD variational network (paper §2.1) with tiled inference and mask → cells."""

    def build(self, metadata: dict) -> torch.nn.Module:
        try:
            config = json.loads(metadata["config"])
        except (KeyError, json.JSONDecodeError) as err:
            raise InputError("TNRD weights lack their 'config' metadata; retrain with python -m core.training.tnrd") from err
        self.threshold = float(metadata.get("threshold", 0.5))
        self.min_area_px = float(metadata.get("min_area_px", self.scenario.params.get("min_area_px", 10)))
        self.min_distance_px = float(metadata.get("min_distance_px", self.scenario.params.get("min_distance_px", 3)))
        return TNRD(**config)

    def prepare(self, work: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB → (H, W, 4) float32: RGB in [0, 1] and the initial mask u0_m.

        The initial mask is uniform noise drawn for the whole image from a generator seeded
        with :data:`MASK_SEED`, then cut into the same windows as the image, so the result
        does not depend on how the image is tiled except through each window's context.
        """
        return stack_with_mask_noise(work.astype(np.float32) / 255.0)

    def preprocess(self, window: np.ndarray) -> np.ndarray:
        return window

    def infer_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 4, h, w) RGB + mask → (N, 4, h, w) denoised RGB + classification mask (§2.1)."""
        out_rgb, out_m = self.net(batch[:, :3], batch[:, 3:4])
        return torch.cat([out_rgb, out_m], 1)

    def infer(self, rgb: np.ndarray, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Denoise and classify an image at the scenario's mpp.

        Parameters
        ----------
        rgb : (H, W, 3) float32 RGB in [0, 1]

        Returns
        -------
        denoised : (H, W, 3) float32 in [0, 1]
        mask : (H, W) float32 in [0, 1]
        """
        out = tile_dense(self.infer_window, stack_with_mask_noise(rgb), self.tile_px, self.overlap_px,
                         blend=self.scenario.tiling.blend, progress=progress)
        return np.clip(out[..., :3], 0, 1), np.clip(out[..., 3], 0, 1)

    def postprocess(self, maps: np.ndarray, work: np.ndarray) -> Prediction:
        """Blended RGB + mask → the denoised image, the mask and its cells (:func:`mask_to_cells`)."""
        denoised, mask = np.clip(maps[..., :3], 0, 1), np.clip(maps[..., 3], 0, 1)
        xy, mean, _, _ = mask_to_cells(mask, self.threshold, self.min_area_px, self.min_distance_px)
        return Prediction(xy, np.zeros(len(xy), np.int64), np.clip(mean, 0, 1), dense={"mask": mask},
                          restored={"denoised": denoised},
                          notes=["TNRD weights were trained on synthetic images only (research use, not a diagnostic device)"])


def stack_with_mask_noise(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] → (H, W, 4) float32 with the seeded uniform-noise initial mask."""
    h, w = rgb.shape[:2]
    gen = torch.Generator().manual_seed(MASK_SEED)
    noise = torch.rand((h, w), generator=gen).numpy()[..., None]
    return np.concatenate([rgb.astype(np.float32), noise.astype(np.float32)], axis=2)
