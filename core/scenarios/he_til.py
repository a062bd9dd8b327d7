"""Scenario ``he-til``: tumour, immune and stromal cells in H&E with S-DRDIN.

Method (S-DRDIN paper, shared/papers/s-drdin-mihc-detection-classification.txt): one
network predicts a detection map (sigmoid) and a class map (softmax over epithelial,
inflammatory, fibroblast, other and background) (§2.3); cells are found on the detection
map by threshold, removal of small components, distance transform and local maxima, and
each cell's class is the arg-max of the class channels averaged over a square around it
(§2.5, eq. 3). All post-processing sizes are physical (µm), converted from the paper's
pixels at 0.44 µm/px.

Large images run in blocks (stardist ``big.py``): each block is a core tile plus a context
margin wider than the network's receptive field and the post-processing footprint; cells are
detected in the whole block and kept only when their centroid lies in the block's core, so
each cell belongs to exactly one block and the tiled result equals the untiled one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import ndimage as ndi

from core.cells import make_cell_table
from core.errors import InputError
from core.io import ImageData
from core.models.sdrdin import SDRDIN, SIZE_MULTIPLE_PX, probabilities
from core.scenarios.base import Progress, ScenarioModel, resample_to_mpp

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
    """S-DRDIN on H&E at 0.55 µm/px with block-wise inference and §2.5 post-processing."""

    #: Core tile side and context margin (px at the input mpp; multiples of 8). The margin
    #: covers the receptive field plus the post-processing footprint (see tests).
    tile_px: int = 1024
    margin_px: int = 96
    supported_precisions = ("float32", "bfloat16")

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
        self.mean = torch.tensor(json.loads(metadata["normalization_mean"]), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(json.loads(metadata["normalization_std"]), dtype=torch.float32).view(1, 3, 1, 1)
        self.params = PostprocessParams(threshold=float(metadata.get("threshold", 0.5)))
        if "class_window_um" in metadata:
            self.params = replace(self.params, class_window_um=float(metadata["class_window_um"]))
        self.tile_px = int(self.scenario.params.get("tile_px", self.tile_px))
        self.margin_px = int(self.scenario.params.get("margin_px", self.margin_px))
        # NHWC layout: about a third faster on CPU for these convolutions (benchmarks/bench_he_til.py);
        # the loaded weights keep it, since loading copies values into the existing tensors.
        return net.to(memory_format=torch.channels_last)

    def predict_maps(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network probabilities for one window.

        Parameters
        ----------
        pixels : (H, W, 3) uint8 RGB at the scenario's mpp; reflected at the bottom and right
            to a multiple of 8 px and cropped back.

        Returns
        -------
        detection_prob : (H, W) float32 in [0, 1]
        class_prob : (K + 1, H, W) float32, softmax over the K classes and background
        """
        h, w = pixels.shape[:2]
        ph, pw = -h % SIZE_MULTIPLE_PX, -w % SIZE_MULTIPLE_PX
        if ph or pw:
            pixels = np.pad(pixels, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        x = ((x - self.mean.to(self.device)) / self.std.to(self.device)).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.autocast():
            cls, det = probabilities(self.net(x))
        return (np.ascontiguousarray(det[0, :h, :w].float().cpu().numpy()),
                np.ascontiguousarray(cls[0, :, :h, :w].float().cpu().numpy()))

    def detect(self, pixels: np.ndarray, progress: Progress | None = None, params: PostprocessParams | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cells of a field at the scenario's mpp, block by block.

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
        params = params or self.params
        mpp = self.scenario.input_mpp
        h, w = pixels.shape[:2]
        t, m = self.tile_px, self.margin_px
        det_full = np.zeros((h, w), np.float32)
        blocks = [(y, x) for y in range(0, h, t) for x in range(0, w, t)]
        out_xy, out_lab, out_share, out_det = [], [], [], []
        for n, (y0, x0) in enumerate(blocks):
            wy0, wx0 = max(0, y0 - m), max(0, x0 - m)
            wy1, wx1 = min(h, y0 + t + m), min(w, x0 + t + m)
            det, cls = self.predict_maps(pixels[wy0:wy1, wx0:wx1])
            xy = detect_peaks(det, params, mpp)
            lab, share = classify_cells(cls[:-1], xy, params.in_pixels(mpp)["class_window_px"])
            gx, gy = xy[:, 0] + wx0, xy[:, 1] + wy0
            own = (gx >= x0) & (gx < x0 + t) & (gy >= y0) & (gy < y0 + t)
            out_xy.append(np.stack([gx[own], gy[own]], axis=1))
            out_lab.append(lab[own])
            out_share.append(share[own])
            col = np.clip(np.round(xy[own, 0]).astype(int), 0, det.shape[1] - 1)
            row = np.clip(np.round(xy[own, 1]).astype(int), 0, det.shape[0] - 1)
            out_det.append(det[row, col].astype(np.float64))
            cy1, cx1 = min(h, y0 + t), min(w, x0 + t)
            det_full[y0:cy1, x0:cx1] = det[y0 - wy0 : cy1 - wy0, x0 - wx0 : cx1 - wx0]
            if progress is not None:
                progress(n + 1, len(blocks))
        xy = np.concatenate(out_xy) if out_xy else np.zeros((0, 2))
        return (xy, np.concatenate(out_lab) if out_lab else np.zeros(0, np.int64),
                np.concatenate(out_share) if out_share else np.zeros(0),
                np.concatenate(out_det) if out_det else np.zeros(0), det_full)

    def analyze(self, image: ImageData, progress: Progress | None = None):
        notes = []
        work, _ = resample_to_mpp(image.pixels, image.mpp, self.scenario.input_mpp)
        if min(work.shape[:2]) < 2 * SIZE_MULTIPLE_PX:
            raise InputError(
                f"image is {image.pixels.shape[1]} x {image.pixels.shape[0]} px, "
                f"{work.shape[1]} x {work.shape[0]} px at {self.scenario.input_mpp} µm/px: "
                f"the H&E model needs at least {2 * SIZE_MULTIPLE_PX} px on each side"
            )
        if image.mpp is None:
            notes.append(
                f"mpp unknown: the image was analysed at its own pixel size, assumed to be the model's "
                f"{self.scenario.input_mpp} µm/px (20x); positions are in pixels and densities are not reported"
            )
        xy, lab, share, det_at, det_map = self.detect(work, progress)
        h, w = image.pixels.shape[:2]
        sy, sx = work.shape[0] / h, work.shape[1] / w
        xy_orig = np.clip((xy + 0.5) / np.array([sx, sy]) - 0.5, 0, [w - 1, h - 1]) if len(xy) else xy
        names = np.array([c.name for c in self.scenario.classes], dtype=object)
        roles = np.array([c.role for c in self.scenario.classes], dtype=object)
        cells = make_cell_table(xy_orig, names[lab], roles[lab], share, image.mpp)
        cells["detection_probability"] = det_at
        if det_map.shape != (h, w):
            t = torch.from_numpy(det_map)[None, None]
            det_map = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        return cells, {"probability": det_map.astype(np.float32)}, None, notes
