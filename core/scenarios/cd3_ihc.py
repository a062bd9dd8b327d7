"""Scenario ``cd3-ihc``: CD3+ lymphocytes in CD3 IHC (DAB + hematoxylin).

Method (gastric CD3 paper, §III.A): a patch classifier slid over the image, then
non-maximum suppression of the positive windows. Here the sliding window is
computed in one fully convolutional pass (the ``compact`` layout of
:mod:`core.models.cd3_cnn`), which gives exactly the per-window numbers at a
stride of 8 px, block by block so memory stays bounded for any image size.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torchvision.ops import nms

from core.cells import make_cell_table
from core.errors import InputError
from core.io import ImageData
from core.models.cd3_cnn import PATCH_SIZE_PX, STRIDE_PX, CD3CNN
from core.scenarios.base import Progress, ScenarioModel, resample_to_mpp

HALF = PATCH_SIZE_PX // 2  # 35: window centre offset, and the reflection padding
#: Output grid points per block side; a block's input is 62 + 8 * BLOCK_GRID px.
BLOCK_GRID = 96


class CD3IHCModel(ScenarioModel):
    """CD3 CNN with dense sliding-window inference and NMS."""

    def build(self, metadata: dict) -> torch.nn.Module:
        net = CD3CNN(metadata.get("layout", "compact"))
        if not net.fully_convolutional:
            raise InputError("the cd3-ihc scenario needs the fully convolutional 'compact' layout weights")
        self.mean = torch.tensor(json.loads(metadata["normalization_mean"]), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(json.loads(metadata["normalization_std"]), dtype=torch.float32).view(1, 3, 1, 1)
        self.threshold = float(metadata.get("threshold", 0.5))
        self.patch_threshold = float(metadata.get("patch_threshold", self.threshold))
        # NMS settings tuned with the weights win over the registry's defaults
        self.nms_box_um = float(metadata.get("nms_box_um", self.scenario.params["nms_box_um"]))
        self.nms_iou = float(metadata.get("nms_iou", self.scenario.params["nms_iou"]))
        return net

    def _normalise(self, x_uint8: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 → (N, 3, H, W) float32 normalised, on the model's device."""
        x = torch.from_numpy(np.ascontiguousarray(x_uint8)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean.to(self.device)) / self.std.to(self.device)

    def classify_patches(self, patches: np.ndarray, batch: int = 256) -> np.ndarray:
        """P(CD3+ lymphocyte) for (N, 70, 70, 3) uint8 RGB patches at 0.2 µm/px.

        Returns
        -------
        (N,) float32 in [0, 1]

        Raises
        ------
        InputError
            If the patches are not 70 x 70 RGB.
        """
        patches = np.asarray(patches)
        if patches.ndim != 4 or patches.shape[1:] != (PATCH_SIZE_PX, PATCH_SIZE_PX, 3):
            raise InputError(
                f"expected (N, 70, 70, 3) RGB patches, got shape {patches.shape}: crop 70 x 70 px "
                f"around each cell at {self.scenario.input_mpp} µm/px"
            )
        out = []
        with torch.inference_mode():
            for i in range(0, len(patches), batch):
                logits = self.net(self._normalise(patches[i : i + batch]))
                out.append(torch.softmax(logits.reshape(len(logits), 2), dim=1)[:, 1].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def probability_map(self, pixels: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """P(lymphocyte) for every 70 x 70 window centred on an 8 px grid.

        Parameters
        ----------
        pixels : (H, W, 3) uint8 RGB at the scenario's input mpp, H, W >= 1

        Returns
        -------
        (ceil(H / 8), ceil(W / 8)) float32 in [0, 1]
            Entry (i, j) is the window centred at pixel (x, y) = (8 j - 0.5, 8 i - 0.5);
            the image is mirrored by 35 px at its borders so windows at the edge exist.
        """
        h, w = pixels.shape[:2]
        gh, gw = -(-h // STRIDE_PX), -(-w // STRIDE_PX)
        need_h = PATCH_SIZE_PX + STRIDE_PX * (gh - 1)
        need_w = PATCH_SIZE_PX + STRIDE_PX * (gw - 1)
        padded = np.pad(pixels, ((HALF, need_h - h - HALF), (HALF, need_w - w - HALF), (0, 0)), mode="reflect")
        prob = np.zeros((gh, gw), np.float32)
        blocks = [(i, j) for i in range(0, gh, BLOCK_GRID) for j in range(0, gw, BLOCK_GRID)]
        with torch.inference_mode():
            for n, (i, j) in enumerate(blocks):
                ni, nj = min(BLOCK_GRID, gh - i), min(BLOCK_GRID, gw - j)
                y0, x0 = STRIDE_PX * i, STRIDE_PX * j
                tile = padded[y0 : y0 + PATCH_SIZE_PX + STRIDE_PX * (ni - 1), x0 : x0 + PATCH_SIZE_PX + STRIDE_PX * (nj - 1)]
                logits = self.net(self._normalise(tile[None]))
                prob[i : i + ni, j : j + nj] = torch.softmax(logits, dim=1)[0, 1].float().cpu().numpy()
                if progress is not None:
                    progress(n + 1, len(blocks))
        return prob

    def detect(self, prob: np.ndarray, threshold: float, box_px: float, iou: float) -> tuple[np.ndarray, np.ndarray]:
        """Non-maximum suppression of the positive windows (paper §III.A).

        Each grid point with P >= ``threshold`` is a square box of side ``box_px``
        (about one nucleus) centred on its window; boxes overlapping a more probable
        one by IoU > ``iou`` are dropped (``torchvision.ops.nms``). A kept centre is
        refined to the probability-weighted mean of the above-threshold points in its
        3 x 3 grid neighbourhood.

        Returns
        -------
        xy : (N, 2) float64 centroids in pixels of the analysed (resampled) image
        p : (N,) float64 window probabilities
        """
        ii, jj = np.nonzero(prob >= threshold)
        if len(ii) == 0:
            return np.zeros((0, 2)), np.zeros(0)
        cx = STRIDE_PX * jj - 0.5
        cy = STRIDE_PX * ii - 0.5
        scores = prob[ii, jj]
        half = box_px / 2
        boxes = torch.tensor(np.stack([cx - half, cy - half, cx + half, cy + half], 1), dtype=torch.float32)
        keep = nms(boxes, torch.tensor(scores, dtype=torch.float32), iou).numpy()
        padded = np.pad(np.where(prob >= threshold, prob, 0.0), 1)
        xy = np.zeros((len(keep), 2))
        for k, idx in enumerate(keep):
            i, j = ii[idx], jj[idx]
            win = padded[i : i + 3, j : j + 3]
            wsum = win.sum()
            dy, dx = np.mgrid[-1:2, -1:2]
            xy[k] = (cx[idx] + STRIDE_PX * (win * dx).sum() / wsum, cy[idx] + STRIDE_PX * (win * dy).sum() / wsum)
        return xy, scores[keep].astype(np.float64)

    def analyze(self, image: ImageData, progress: Progress | None = None):
        notes = []
        work, _ = resample_to_mpp(image.pixels, image.mpp, self.scenario.input_mpp)
        sy = work.shape[0] / image.pixels.shape[0]
        sx = work.shape[1] / image.pixels.shape[1]
        if min(work.shape[:2]) < PATCH_SIZE_PX:
            raise InputError(
                f"image is {image.pixels.shape[1]} x {image.pixels.shape[0]} px, "
                f"{work.shape[1]} x {work.shape[0]} px at {self.scenario.input_mpp} µm/px: "
                f"the CD3 model needs at least {PATCH_SIZE_PX} px (14 µm) on each side"
            )
        if image.mpp is None:
            notes.append(
                f"mpp unknown: the image was analysed at its own pixel size, assumed to be the model's "
                f"{self.scenario.input_mpp} µm/px; positions are in pixels and densities are not reported"
            )
        prob = self.probability_map(work, progress)
        box_px = self.nms_box_um / self.scenario.input_mpp
        xy, p = self.detect(prob, self.threshold, box_px, self.nms_iou)
        xy_orig = xy / np.array([sx, sy])
        h, w = image.pixels.shape[:2]
        xy_orig = np.clip(xy_orig, 0, [w - 1, h - 1])  # refinement can step half a pixel outside
        cls = self.scenario.classes[0]
        cells = make_cell_table(xy_orig, cls.name, cls.role, p, image.mpp)
        prob_full = _upsample_grid(prob, work.shape[:2], (h, w))
        return cells, {"probability": prob_full}, None, notes


def _upsample_grid(prob: np.ndarray, work_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Stride-8 probability grid → (H, W) float32 map of the original image (bilinear).

    Grid point i sits at pixel 8 i - 0.5, so with ``align_corners=True`` output index k
    is grid position k / 8: half a pixel off, which no display shows.
    """
    t = torch.from_numpy(prob)[None, None]
    size = (STRIDE_PX * (prob.shape[0] - 1) + 1, STRIDE_PX * (prob.shape[1] - 1) + 1)
    full = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=True)[0, 0]
    pad = (0, max(0, work_hw[1] - size[1]), 0, max(0, work_hw[0] - size[0]))
    full = torch.nn.functional.pad(full[None, None], pad, mode="replicate")[0, 0]
    full = full[: work_hw[0], : work_hw[1]]
    if tuple(full.shape) != tuple(out_hw):
        full = torch.nn.functional.interpolate(full[None, None], size=out_hw, mode="bilinear", align_corners=False)[0, 0]
    return full.numpy().astype(np.float32)
