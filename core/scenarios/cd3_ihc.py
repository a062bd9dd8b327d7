"""Scenario ``cd3-ihc``: CD3+ lymphocytes in CD3 IHC (DAB + hematoxylin).

Method (gastric CD3 paper, §III.A): a patch classifier slid over the image, then
non-maximum suppression of the positive windows. Here the sliding window is
computed in one fully convolutional pass (the ``compact`` layout of
:mod:`core.nets.cd3_cnn`), which gives exactly the per-window numbers at a
stride of 8 px, block by block through the dense tiler (:func:`core.tiling.tile_dense`,
no blending: each block's windows carry their whole 70 px field), so memory stays
bounded for any image size.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torchvision.ops import nms

from core.errors import InputError
from core.nets.cd3_cnn import PATCH_SIZE_PX, STRIDE_PX, CD3CNN
from core.scenarios.base import Prediction, ScenarioModel
from core.tiling import Progress, tile_dense

HALF = PATCH_SIZE_PX // 2  # 35: window centre offset, and the reflection padding


class CD3IHCModel(ScenarioModel):
    """CD3 CNN with dense sliding-window inference and NMS.

    The network is a valid convolution: a window of 70 + 8 (n - 1) px gives n outputs, one
    per 70 px patch centred on an 8 px grid (``field_px``, ``output_stride_px``).
    """

    output_stride_px = STRIDE_PX
    field_px = PATCH_SIZE_PX

    def build(self, metadata: dict) -> torch.nn.Module:
        net = CD3CNN(metadata.get("layout", "compact"))
        if not net.fully_convolutional:
            raise InputError("the cd3-ihc scenario needs the fully convolutional 'compact' layout weights")
        self.mean = torch.tensor(json.loads(metadata["normalization_mean"]), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(json.loads(metadata["normalization_std"]), dtype=torch.float32).view(1, 3, 1, 1)
        self.mean_hwc = self.mean.numpy().reshape(1, 1, 3)
        self.std_hwc = self.std.numpy().reshape(1, 1, 3)
        self.threshold = float(metadata.get("threshold", 0.5))
        self.patch_threshold = float(metadata.get("patch_threshold", self.threshold))
        # NMS settings tuned with the weights win over the registry's defaults
        self.nms_box_um = float(metadata.get("nms_box_um", self.scenario.params["nms_box_um"]))
        self.nms_iou = float(metadata.get("nms_iou", self.scenario.params["nms_iou"]))
        return net

    def preprocess(self, window: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 RGB → (h, w, 3) float32 normalised with the training mean and std."""
        x = window.astype(np.float32) / np.float32(255.0)
        return (x - self.mean_hwc) / self.std_hwc

    def infer_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) normalised → (N, 1, n_h, n_w) P(CD3+ lymphocyte) per window."""
        return torch.softmax(self.net(batch), dim=1)[:, 1:2]

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

    def prepare(self, work: np.ndarray) -> np.ndarray:
        """Mirror the image by 35 px (and up to the 8 px grid) so windows centred at the border exist."""
        h, w = work.shape[:2]
        gh, gw = -(-h // STRIDE_PX), -(-w // STRIDE_PX)
        need_h = PATCH_SIZE_PX + STRIDE_PX * (gh - 1)
        need_w = PATCH_SIZE_PX + STRIDE_PX * (gw - 1)
        return np.pad(work, ((HALF, need_h - h - HALF), (HALF, need_w - w - HALF), (0, 0)), mode="reflect")

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
        maps = tile_dense(self.infer_window, self.prepare(pixels), self.tile_px, blend="none",
                          stride_px=self.output_stride_px, field_px=self.field_px, progress=progress)
        return maps[..., 0]

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

    def postprocess(self, maps: np.ndarray, work: np.ndarray) -> Prediction:
        """Stride-8 probability grid → cells by NMS (§III.A) and the probability map at ``work``'s size."""
        prob = maps[..., 0]
        box_px = self.nms_box_um / self.scenario.input_mpp
        xy, p = self.detect(prob, self.threshold, box_px, self.nms_iou)
        h, w = work.shape[:2]
        xy = np.clip(xy, 0, [w - 1, h - 1]) if len(xy) else xy  # refinement can step half a pixel outside
        return Prediction(xy, np.zeros(len(xy), np.int64), p, dense={"probability": _upsample_grid(prob, (h, w))})


def _upsample_grid(prob: np.ndarray, work_hw: tuple[int, int]) -> np.ndarray:
    """Stride-8 probability grid → (H, W) float32 map of the analysed image (bilinear).

    Grid point i sits at pixel 8 i - 0.5, so with ``align_corners=True`` output index k
    is grid position k / 8: half a pixel off, which no display shows.
    """
    t = torch.from_numpy(prob)[None, None]
    size = (STRIDE_PX * (prob.shape[0] - 1) + 1, STRIDE_PX * (prob.shape[1] - 1) + 1)
    full = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=True)[0, 0]
    pad = (0, max(0, work_hw[1] - size[1]), 0, max(0, work_hw[0] - size[0]))
    full = torch.nn.functional.pad(full[None, None], pad, mode="replicate")[0, 0]
    return full[: work_hw[0], : work_hw[1]].numpy().astype(np.float32)
