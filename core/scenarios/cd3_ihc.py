"""Scenario ``cd3-ihc``: CD3+ lymphocytes in CD3 IHC (DAB + hematoxylin).

Method (gastric CD3 paper, §III.A): a patch classifier slid over the image, then
non-maximum suppression of the positive windows. Here the sliding window is
computed in one fully convolutional pass (the ``compact`` layout of
:mod:`core.nets.cd3_cnn`), which gives exactly the per-window numbers at a
stride of 8 px, block by block through the dense tiler (:func:`core.tiling.tile_dense`,
no blending: each block's windows carry their whole 70 px field), so memory stays
bounded for any image size.

The operating point (detection ``threshold`` and ``nms_radius_um``) is read from the
weights' metadata, where :mod:`core.evaluation.cd3_calibration` writes it; it is not a
constant of the code. Weights without ``nms_radius_um`` (v1) carry the square-box NMS
they were tuned with (``nms_box_um``, ``nms_iou``) and are run with it unchanged.
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
        # The operating point travels with the weights (no default: a KeyError is a WeightsError)
        self.threshold = float(metadata["threshold"])
        self.patch_threshold = float(metadata.get("patch_threshold", self.threshold))
        if "nms_radius_um" in metadata:
            self.nms_radius_um: float | None = float(metadata["nms_radius_um"])
            self.nms_box_um = self.nms_iou = None
        else:  # v1 weights: square-box NMS, as tuned and reported in their card
            self.nms_radius_um = None
            self.nms_box_um, self.nms_iou = float(metadata["nms_box_um"]), float(metadata["nms_iou"])
        if not (0.0 <= self.threshold <= 1.0) or not (self.nms_radius_um is None or 0.0 <= self.nms_radius_um < np.inf):
            raise ValueError(f"operating point out of range: threshold {self.threshold} (0-1), "
                             f"nms_radius_um {self.nms_radius_um} (>= 0)")
        self.operating_point_chosen_on = metadata.get("operating_point_chosen_on")
        return net

    @property
    def operating_point(self) -> dict:
        """The detection operating point, as written to ``summary.json``.

        Returns
        -------
        dict
            ``threshold`` (P(CD3+ lymphocyte) in [0, 1] a window needs to be a cell),
            ``nms_radius_um`` (µm; no two cells closer; None for v1 weights, which carry
            ``nms_box_um`` and ``nms_iou`` instead) and ``chosen_on`` (where it was
            calibrated, from the weights' metadata; None when not recorded).
        """
        op = {"threshold": self.threshold, "nms_radius_um": self.nms_radius_um}
        if self.nms_radius_um is None:
            op |= {"nms_box_um": self.nms_box_um, "nms_iou": self.nms_iou}
        return op | {"chosen_on": self.operating_point_chosen_on}

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
        return pad_for_windows(work)

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

    def detect(self, prob: np.ndarray, threshold: float, nms_radius_px: float) -> tuple[np.ndarray, np.ndarray]:
        """Non-maximum suppression of the positive windows within a radius (paper §III.A).

        Parameters
        ----------
        prob : (n_h, n_w) float32 in [0, 1]
            :meth:`probability_map`: P(lymphocyte) of the window centred at (8 j - 0.5, 8 i - 0.5).
        threshold : float in [0, 1]
            Grid points with P >= ``threshold`` are candidates.
        nms_radius_px : float >= 0
            Pixels of the analysed image: a candidate within this distance of a more probable
            kept one is dropped (:func:`suppress_within_radius`), so kept cells are more than
            ``nms_radius_px`` apart before refinement.

        Returns
        -------
        xy : (N, 2) float64 centroids x, y in pixels of the analysed (resampled) image; each kept
            centre is refined to the probability-weighted mean of the above-threshold points in
            its 3 x 3 grid neighbourhood
        p : (N,) float64 window probabilities, in decreasing order
        """
        ii, jj = suppress_within_radius(prob, threshold, nms_radius_px)
        return _refine(prob, threshold, ii, jj), prob[ii, jj].astype(np.float64)

    def detect_boxes(self, prob: np.ndarray, threshold: float, box_px: float, iou: float) -> tuple[np.ndarray, np.ndarray]:
        """The v1 weights' NMS: square boxes of side ``box_px`` around each candidate window.

        Boxes overlapping a more probable one by IoU > ``iou`` are dropped
        (``torchvision.ops.nms``); kept centres are refined as in :meth:`detect`. Kept for
        weights without ``nms_radius_um`` in their metadata, whose card was measured with it.

        Returns
        -------
        xy : (N, 2) float64 pixels; p : (N,) float64
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
        return _refine(prob, threshold, ii[keep], jj[keep]), scores[keep].astype(np.float64)

    def detect_at_operating_point(self, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`detect` (or :meth:`detect_boxes` for v1 weights) at the weights' operating point.

        Returns
        -------
        xy : (N, 2) float64 pixels of the analysed image; p : (N,) float64
        """
        mpp = self.scenario.input_mpp
        if self.nms_radius_um is None:
            return self.detect_boxes(prob, self.threshold, self.nms_box_um / mpp, self.nms_iou)
        return self.detect(prob, self.threshold, self.nms_radius_um / mpp)

    def postprocess(self, maps: np.ndarray, work: np.ndarray) -> Prediction:
        """Stride-8 probability grid → cells by NMS (§III.A) and the probability map at ``work``'s size."""
        prob = maps[..., 0]
        xy, p = self.detect_at_operating_point(prob)
        h, w = work.shape[:2]
        xy = np.clip(xy, 0, [w - 1, h - 1]) if len(xy) else xy  # refinement can step half a pixel outside
        return Prediction(xy, np.zeros(len(xy), np.int64), p, dense={"probability": _upsample_grid(prob, (h, w))})


def pad_for_windows(work: np.ndarray) -> np.ndarray:
    """Mirror an image by 35 px (and up to the 8 px grid) so windows centred at its border exist.

    Parameters
    ----------
    work : (H, W, 3) array at 0.2 µm/px, H, W >= 36 (``numpy.pad`` reflect needs more than 35 px)

    Returns
    -------
    (70 + 8 (ceil(H / 8) - 1), 70 + 8 (ceil(W / 8) - 1), 3) array of ``work``'s dtype; grid point
    (i, j) of :meth:`CD3IHCModel.probability_map` is the window ``[8 i : 8 i + 70, 8 j : 8 j + 70]``.
    """
    h, w = work.shape[:2]
    gh, gw = -(-h // STRIDE_PX), -(-w // STRIDE_PX)
    need_h = PATCH_SIZE_PX + STRIDE_PX * (gh - 1)
    need_w = PATCH_SIZE_PX + STRIDE_PX * (gw - 1)
    return np.pad(work, ((HALF, need_h - h - HALF), (HALF, need_w - w - HALF), (0, 0)), mode="reflect")


def suppress_within_radius(prob: np.ndarray, threshold: float, radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression of grid points within a radius (paper §III.A).

    Candidates are the grid points with ``prob >= threshold``, visited by decreasing
    probability (ties: row, then column); a candidate is kept unless a kept one lies within
    ``radius_px`` (distance <= radius, grid points 8 px apart).

    Parameters
    ----------
    prob : (n_h, n_w) float array in [0, 1], one value per window on the 8 px grid
    threshold : float in [0, 1]
    radius_px : float >= 0, pixels of the analysed image (0 keeps every candidate)

    Returns
    -------
    ii, jj : (N,) int64 grid rows and columns of the kept points, by decreasing probability

    Raises
    ------
    ValueError
        If ``radius_px`` is negative or not finite.
    """
    if not np.isfinite(radius_px) or radius_px < 0:
        raise ValueError(f"NMS radius must be a finite number >= 0 px, got {radius_px}")
    prob = np.asarray(prob)
    ii, jj = np.nonzero(prob >= threshold)
    if len(ii) == 0:
        return ii.astype(np.int64), jj.astype(np.int64)
    order = np.lexsort((jj, ii, -prob[ii, jj]))
    k = int(radius_px // STRIDE_PX)
    dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
    disk = (dy * dy + dx * dx) * STRIDE_PX**2 <= radius_px**2
    blocked = np.zeros((prob.shape[0] + 2 * k, prob.shape[1] + 2 * k), bool)
    kept = []
    for idx in order:
        i, j = ii[idx], jj[idx]
        if blocked[i + k, j + k]:
            continue
        kept.append(idx)
        blocked[i : i + 2 * k + 1, j : j + 2 * k + 1] |= disk
    kept = np.asarray(kept, np.int64)
    return ii[kept].astype(np.int64), jj[kept].astype(np.int64)


def _refine(prob: np.ndarray, threshold: float, ii: np.ndarray, jj: np.ndarray) -> np.ndarray:
    """Kept grid points → (N, 2) float64 x, y px: probability-weighted mean of their 3 x 3 above-threshold neighbours."""
    if len(ii) == 0:
        return np.zeros((0, 2))
    padded = np.pad(np.where(prob >= threshold, prob, 0.0).astype(np.float64), 1)
    dy, dx = np.mgrid[-1:2, -1:2]
    win = np.stack([padded[ii + 1 + a, jj + 1 + b] for a, b in zip(dy.ravel(), dx.ravel())], axis=1)  # (N, 9)
    wsum = win.sum(axis=1)
    wsum = np.where(wsum > 0, wsum, np.inf)  # threshold 0 on a zero plateau: the grid point itself
    cx = STRIDE_PX * jj - 0.5 + STRIDE_PX * (win * dx.ravel()).sum(axis=1) / wsum
    cy = STRIDE_PX * ii - 0.5 + STRIDE_PX * (win * dy.ravel()).sum(axis=1) / wsum
    return np.stack([cx, cy], axis=1)


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
