"""Scenario ``he-til``: tumour, immune and stromal cells in H&E with S-DRDIN.

Method (S-DRDIN paper, shared/papers/s-drdin-mihc-detection-classification.txt): one
network predicts a detection map (sigmoid) and a class map (softmax over epithelial,
inflammatory, fibroblast, other and background) (§2.3); cells are found on the detection
map by threshold, removal of small components, distance transform and local maxima, and
each cell's class is the arg-max of the class channels averaged over a square around it
(§2.5, eq. 3). All post-processing sizes are physical (µm), converted from the paper's
pixels at 0.44 µm/px.

Large images run through the cell tiler (:func:`core.tiling.detect_in_blocks`): each block
is a core tile plus a context margin wider than the network's receptive field and the
post-processing footprint; cells are detected in the whole block and kept only when their
centroid lies in the block's core, so each cell belongs to exactly one block and the tiled
result equals the untiled one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import ndimage as ndi

from core.errors import InputError
from core.nets.sdrdin import SDRDIN, SIZE_MULTIPLE_PX, probabilities
from core.scenarios.base import Prediction, ScenarioModel
from core.tiling import Progress, detect_in_blocks

#: Pixel size of the S-DRDIN paper's images (§2.2); its post-processing sizes are in these pixels.
PAPER_MPP = 0.44


@dataclass(frozen=True)
class PostprocessParams:
    """Post-processing of §2.5 in physical units (the paper's pixel values at 0.44 µm/px).

    Attributes
    ----------
    threshold : float in (0, 1)
        Detection probability threshold (tuned for F1 on the tuning images).
    min_area_um2 : float
        Connected components smaller than this are dropped: 50 px x 0.44² µm² = 9.68 µm².
    peak_window_um : float
        Side of the local-maximum window on the distance transform: 15 px x 0.44 = 6.6 µm.
    peak_dilation_um : float
        Radius of the disk that merges neighbouring maxima: 2 px x 0.44 = 0.88 µm.
    class_window_um : float
        Side of the square over which class probabilities are averaged (eq. 3): 49 px x 0.44 = 21.56 µm.
    """

    threshold: float = 0.5
    min_area_um2: float = 50 * PAPER_MPP**2
    peak_window_um: float = 15 * PAPER_MPP
    peak_dilation_um: float = 2 * PAPER_MPP
    class_window_um: float = 49 * PAPER_MPP

    def in_pixels(self, mpp: float) -> dict:
        """Sizes in pixels at ``mpp``: odd window sides, area in px, dilation radius >= 1 px."""
        def odd(v):
            n = int(round(v))
            return n if n % 2 else n + 1

        return {
            "min_area_px": self.min_area_um2 / mpp**2,
            "peak_window_px": odd(self.peak_window_um / mpp),
            "peak_dilation_px": max(1.0, self.peak_dilation_um / mpp),
            "class_window_px": odd(self.class_window_um / mpp),
        }


def detect_peaks(detection_prob: np.ndarray, params: PostprocessParams, mpp: float) -> np.ndarray:
    """Cell centroids from a detection probability map (S-DRDIN §2.5).

    Threshold; drop connected components (8-connectivity) smaller than ``min_area_um2``;
    Euclidean distance transform; local maxima in a ``peak_window_um`` square (on plateaus
    every pixel of the plateau is a maximum); dilate the maxima by a disk of
    ``peak_dilation_um`` so adjacent maxima merge; the centroids of the resulting blobs.

    Parameters
    ----------
    detection_prob : (H, W) float in [0, 1]
    params : PostprocessParams
    mpp : float
        Microns per pixel of the map.

    Returns
    -------
    (N, 2) float64 x, y in pixels of the map, ordered by y then x.
    """
    px = params.in_pixels(mpp)
    binary = np.asarray(detection_prob) >= params.threshold
    lab, n = ndi.label(binary, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros((0, 2))
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    keep = areas >= px["min_area_px"]
    keep[0] = False
    binary = keep[lab]
    if not binary.any():
        return np.zeros((0, 2))
    dist = ndi.distance_transform_edt(binary)
    peaks = binary & (dist >= ndi.maximum_filter(dist, size=px["peak_window_px"], mode="nearest"))
    r = px["peak_dilation_px"]
    ri = int(np.floor(r))
    yy, xx = np.mgrid[-ri : ri + 1, -ri : ri + 1]
    disk = xx**2 + yy**2 <= r**2
    blobs, _ = ndi.label(ndi.binary_dilation(peaks, structure=disk) & binary)
    # Centroids of the maxima themselves (the dilation only decides which maxima merge); a
    # blob cut off from its maximum by the mask holds no maximum and is not a cell.
    ids = np.unique(blobs[peaks])
    cy, cx = np.asarray(ndi.center_of_mass(peaks, blobs, ids)).reshape(-1, 2).T
    xy = np.stack([cx, cy], axis=1)
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    return xy[order]


def classify_cells(class_prob: np.ndarray, xy: np.ndarray, window_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Class of each cell by eq. 3: arg-max of the class channels averaged over a square.

    Parameters
    ----------
    class_prob : (K, H, W) float, the K cell-class channels (background excluded)
    xy : (N, 2) float x, y in pixels
    window_px : int, odd side of the square (clipped at the image border)

    Returns
    -------
    label : (N,) int64 in [0, K)
    share : (N,) float64 in [0, 1], the winning class's mean probability divided by the
        sum of the K means (the cell's class confidence)
    """
    k, h, w = class_prob.shape
    if len(xy) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    integral = np.zeros((k, h + 1, w + 1), np.float64)
    integral[:, 1:, 1:] = np.cumsum(np.cumsum(class_prob, axis=1, dtype=np.float64), axis=2)
    half = window_px // 2
    col = np.clip(np.round(xy[:, 0]).astype(int), 0, w - 1)
    row = np.clip(np.round(xy[:, 1]).astype(int), 0, h - 1)
    y0, y1 = np.maximum(row - half, 0), np.minimum(row + half + 1, h)
    x0, x1 = np.maximum(col - half, 0), np.minimum(col + half + 1, w)
    sums = integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]
    means = (sums / ((y1 - y0) * (x1 - x0))).T  # (N, K)
    label = means.argmax(axis=1)
    share = means[np.arange(len(xy)), label] / np.maximum(means.sum(axis=1), 1e-12)
    return label.astype(np.int64), share


class HETILModel(ScenarioModel):
    """S-DRDIN on H&E at 0.55 µm/px with block-wise inference and §2.5 post-processing.

    The registry's tiling (1024 px blocks with 96 px of context) is ``tile_px`` /
    ``overlap_px``; the margin covers the receptive field plus the post-processing
    footprint (see tests).
    """

    supported_precisions = ("float32", "bfloat16")
    # NHWC layout: about a third faster on CPU for these convolutions (benchmarks/bench_he_til.py)
    channels_last = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # After the strict, SHA-256-checked load: the same function with BN folded into the
        # convolutions, about 10 % faster on CPU (benchmarks/bench_he_til.py).
        self.net.fold_batch_norm_()

    def build(self, metadata: dict) -> torch.nn.Module:
        net = SDRDIN(int(metadata.get("n_classes", 4)), metadata.get("variant", "s-drdin"),
                     int(metadata.get("base_features", 16)))
        if not (net.has_detection and net.has_classification):
            raise InputError(f"the he-til scenario needs both branches; weights are variant {net.variant!r}")
        self.mean = np.asarray(json.loads(metadata["normalization_mean"]), np.float32).reshape(1, 1, 3)
        self.std = np.asarray(json.loads(metadata["normalization_std"]), np.float32).reshape(1, 1, 3)
        self.params = PostprocessParams(threshold=float(metadata.get("threshold", 0.5)))
        if "class_window_um" in metadata:
            self.params = replace(self.params, class_window_um=float(metadata["class_window_um"]))
        # the loaded weights keep the layout, since loading copies values into the existing tensors
        return net.to(memory_format=torch.channels_last)

    @property
    def margin_px(self) -> int:
        """Context around each block (the registry's overlap), px at the input mpp."""
        return self.overlap_px

    @margin_px.setter
    def margin_px(self, value: int) -> None:
        self.overlap_px = value

    def preprocess(self, window: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 RGB → normalised float32, reflected at the bottom and right to a multiple of 8 px."""
        h, w = window.shape[:2]
        ph, pw = -h % SIZE_MULTIPLE_PX, -w % SIZE_MULTIPLE_PX
        if ph or pw:
            window = np.pad(window, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
        return (window.astype(np.float32) / np.float32(255.0) - self.mean) / self.std

    def infer_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) → (N, 1 + K + 1, h, w): detection probability, then the softmax over K classes + background."""
        cls, det = probabilities(self.net(batch))
        return torch.cat([det.float()[:, None], cls.float()], dim=1)

    def predict_maps(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network probabilities for one window.

        Parameters
        ----------
        pixels : (H, W, 3) uint8 RGB at the scenario's mpp

        Returns
        -------
        detection_prob : (H, W) float32 in [0, 1]
        class_prob : (K + 1, H, W) float32, softmax over the K classes and background
        """
        maps = self.infer_window(pixels)
        return np.ascontiguousarray(maps[..., 0]), np.ascontiguousarray(maps[..., 1:].transpose(2, 0, 1))

    def postprocess_window(self, maps: np.ndarray, params: PostprocessParams | None = None):
        """One block's maps → its cells (§2.5): peaks of the detection map, class by eq. 3.

        Returns
        -------
        xy : (N, 2) float64 in the block's pixels
        columns : ``class_index`` (N,) int64, ``probability`` (N,) class confidence,
            ``detection_probability`` (N,) detection probability at each centroid
        dense : (h, w) float32 detection probability
        """
        params = params or self.params
        mpp = self.scenario.input_mpp
        det = np.ascontiguousarray(maps[..., 0])
        cls = np.ascontiguousarray(maps[..., 1:-1].transpose(2, 0, 1))
        xy = detect_peaks(det, params, mpp)
        lab, share = classify_cells(cls, xy, params.in_pixels(mpp)["class_window_px"])
        col = np.clip(np.round(xy[:, 0]).astype(int), 0, det.shape[1] - 1)
        row = np.clip(np.round(xy[:, 1]).astype(int), 0, det.shape[0] - 1)
        return xy, {"class_index": lab, "probability": share, "detection_probability": det[row, col].astype(np.float64)}, det

    def finish_cells(self, xy, columns, dense, work) -> Prediction:
        return Prediction(xy, columns["class_index"], columns["probability"],
                          {"detection_probability": columns["detection_probability"]}, {"probability": dense})

    def detect(self, pixels: np.ndarray, progress: Progress | None = None, params: PostprocessParams | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cells of a field at the scenario's mpp, block by block (for evaluation and tuning).

        Parameters
        ----------
        pixels : (H, W, 3) uint8 RGB at ``scenario.input_mpp``
        params : PostprocessParams, optional (default: the weights' tuned threshold)

        Returns
        -------
        xy : (N, 2) float64 x, y in pixels of ``pixels``
        label : (N,) int64 class index into ``scenario.classes``
        share : (N,) float64 class confidence in [0, 1]
        detection_at_cell : (N,) float64 detection probability at each centroid
        detection_prob : (H, W) float32 the stitched detection probability map
        """
        xy, cols, det = detect_in_blocks(lambda w: self.postprocess_window(self.infer_window(w), params), pixels,
                                         self.tile_px, self.margin_px, progress=progress)
        return xy, cols["class_index"], cols["probability"], cols["detection_probability"], det
