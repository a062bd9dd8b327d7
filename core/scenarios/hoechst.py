"""Scenario ``hoechst-lymphocytes``: CD3+, CD8+ and CD20+ lymphocytes from a Hoechst (DNA) stain alone.

Method (Hoechst U-Net paper, ``shared/papers/hoechst-unet-lymphocyte-subtypes.txt``): a U-Net
with a ResNet34 encoder (:mod:`core.nets.hoechst_unet`) maps one Hoechst 33342 channel,
normalised per image (§3.3 "each Hoechst patch was normalised individually"), to a softmax
map per class (§3.4): background, CD3, CD8, CD20. Here:

1. **Input** (:func:`normalise_hoechst`): the Hoechst (or DAPI) channel, 8- or 16-bit or
   float, stretched between its 1st and 99.8th percentiles over the whole image to [0, 1]
   and clipped; the percentiles are of the image given (not of each window), so the result
   does not depend on how the image is tiled.
2. **Dense map**: 256 µm windows at 1.0 µm/px blended over 64 µm (:func:`core.tiling.tile_dense`),
   each window reflected at its bottom and right to a multiple of 32 px.
3. **Cells** (:func:`cells_from_probabilities`): connected regions of P(lymphocyte) =
   1 - P(background) >= 0.5, split where touching cells merge (watershed of the distance
   transform, :func:`core.scenarios.tnrd.mask_to_cells`), regions under 6 µm² dropped; each
   cell takes the subtype with the most probability mass over its pixels (the majority
   class, weighted by confidence), its ``probability`` the mean probability of that subtype
   over the cell. Every cell has role ``immune``.

The settings of steps 1 and 3 are fixed in advance (:class:`CellCallParams`), not tuned on
held-out tiles; the weights' metadata carries them.

The registry entry (:mod:`core.scenarios.registry`, ``hoechst-lymphocytes``) declares the
input, classes and outputs; it is marked ``research_only``: the registered v1 weights fall far
short of the issue's aim and do not beat simple baselines on CD8 (model card). A HiPe saliency
map per class (:meth:`HoechstModel.saliency_maps`, paper §5.1) is computed on demand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from core.errors import InputError
from core.nets.hoechst_unet import SIZE_MULTIPLE_PX, HoechstUNet
from core.scenarios.base import Prediction, ScenarioModel
from core.scenarios.registry import get_scenario
from core.scenarios.spec import Scenario

#: Scenario key (stable: CLI, registry, app, saved analyses).
KEY = "hoechst-lymphocytes"
#: Weights and card of the registered version (the registry entry is the one declaration).
WEIGHTS_NAME = get_scenario(KEY).weights
CARD_NAME = get_scenario(KEY).model_card
#: Pixel size of the training tiles (1128 px at 0.227 µm/px exported at 256 px).
INPUT_MPP = get_scenario(KEY).input_mpp
#: Percentiles of the per-image normalisation (§3.3: each patch normalised individually).
PERCENTILES = (1.0, 99.8)
#: Most pixels the percentiles are computed from (a regular subsample of larger images).
PERCENTILE_SAMPLE_PX = 1_000_000

#: The cell classes of the ``merged`` scheme, in the network's order after background.
CELL_CLASSES = get_scenario(KEY).classes


@dataclass(frozen=True)
class CellCallParams:
    """Turning the class map into cells; fixed before any held-out tile was scored.

    Attributes
    ----------
    threshold : float in (0, 1)
        A pixel is lymphocyte when 1 - P(background) >= this (0.5: more likely a lymphocyte
        of some subtype than not).
    min_area_um2 : float
        Regions smaller than this are dropped (the smallest 5 % of labelled cells in the data
        are 16 µm²; 6 µm² removes specks only).
    split_distance_um : float
        Watershed markers at least this far apart: touching cells whose centres are 3 µm or
        more apart are split (lymphocyte nuclei are about 6-7 µm across).
    """

    threshold: float = 0.5
    min_area_um2: float = 6.0
    split_distance_um: float = 3.0


# --------------------------------------------------------------------------- normalisation


def hoechst_percentiles(pixels: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """The low and high percentiles of a Hoechst image (from at most :data:`PERCENTILE_SAMPLE_PX` pixels).

    Parameters
    ----------
    pixels : (H, W) or (H, W, 1) array of any real dtype (uint8, uint16, float32...)
    percentiles : (low, high) in [0, 100], low < high

    Returns
    -------
    (lo, hi) : float, in the units of ``pixels``

    Raises
    ------
    InputError
        If the image is empty, has more than one channel, holds NaN or infinite values,
        or the percentiles are not 0 <= low < high <= 100.
    """
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"expected one Hoechst channel as an (H, W) or (H, W, 1) array, got shape {a.shape}")
    lo_q, hi_q = (float(p) for p in percentiles)
    if not 0.0 <= lo_q < hi_q <= 100.0:
        raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise InputError(f"Hoechst pixels of type {a.dtype} cannot be normalised; give integer or float values")
    step = max(1, int(np.ceil(np.sqrt(a.size / PERCENTILE_SAMPLE_PX))))
    sample = a[::step, ::step].astype(np.float64)
    if not np.isfinite(sample).all() or (step > 1 and np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all()):
        raise InputError("the Hoechst channel holds NaN or infinite values; replace them and export the image again")
    lo, hi = np.percentile(sample, (lo_q, hi_q))
    return float(lo), float(hi)


def normalise_hoechst(pixels: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """A Hoechst image stretched between its own percentiles to [0, 1] (paper §3.3, per image).

    ``(x - p_low) / (p_high - p_low)`` clipped to [0, 1], with the percentiles of this image
    (:func:`hoechst_percentiles`, default the 1st and 99.8th). The result is the same for the
    same picture stored as 8-bit, 16-bit (any significant bits) or float, up to the
    quantisation of the file: the stretch is invariant to a change of scale and offset.
    A uniform image (p_high = p_low) gives zeros.

    Parameters
    ----------
    pixels : (H, W) or (H, W, 1) uint8, uint16, other integer or float array (any range)
    percentiles : (low, high) in [0, 100]

    Returns
    -------
    (H, W) float32 in [0, 1]

    Raises
    ------
    InputError
        See :func:`hoechst_percentiles`.

    Examples
    --------
    >>> x = np.array([[0, 100], [200, 1000]], np.uint16)
    >>> normalise_hoechst(x, (0, 100)).round(2).tolist()
    [[0.0, 0.1], [0.2, 1.0]]
    """
    lo, hi = hoechst_percentiles(pixels, percentiles)
    a = np.asarray(pixels)
    if a.ndim == 3:
        a = a[..., 0]
    out = a.astype(np.float32)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros(a.shape, np.float32)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


# --------------------------------------------------------------------------- cells from the map


def cells_from_probabilities(prob: np.ndarray, mpp: float, params: CellCallParams = CellCallParams()
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cells and their subtype from the per-pixel class probabilities.

    Regions of ``1 - prob[..., 0] >= threshold`` are split into cells by a watershed of their
    distance transform (markers at least ``split_distance_um`` apart), cells under
    ``min_area_um2`` dropped (:func:`core.scenarios.tnrd.mask_to_cells`); each cell's subtype
    is the class with the largest summed probability over its pixels (the majority class,
    weighted by confidence), as the paper reads cells off its per-class maps (§4, "per-centroid").

    Parameters
    ----------
    prob : (H, W, K) float, softmax over background (plane 0) and K - 1 subtypes
    mpp : float, µm per pixel of ``prob``
    params : CellCallParams

    Returns
    -------
    xy : (N, 2) float64 centroids x, y in pixels
    class_index : (N,) int64 in [0, K - 1): the subtype (plane index - 1)
    probability : (N,) float64 in [0, 1], mean probability of that subtype over the cell
    labels : (H, W) int32 cell label image (0 none, cell i + 1 is row i)

    Raises
    ------
    InputError
        If ``prob`` is not (H, W, K) with K >= 2.
    """
    from core.scenarios.tnrd import mask_to_cells

    prob = np.asarray(prob, np.float32)
    if prob.ndim != 3 or prob.shape[2] < 2:
        raise InputError(f"expected (H, W, K) class probabilities with K >= 2, got shape {prob.shape}")
    foreground = 1.0 - prob[..., 0]
    xy, _, _, labels = mask_to_cells(foreground, params.threshold, params.min_area_um2 / mpp**2,
                                     max(1.0, params.split_distance_um / mpp))
    n = len(xy)
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0), labels
    idx = np.arange(1, n + 1)
    mass = np.stack([ndimage.sum_labels(prob[..., k], labels, idx) for k in range(1, prob.shape[2])], axis=1)
    area = ndimage.sum_labels(np.ones(labels.shape, np.float32), labels, idx)
    cls = mass.argmax(axis=1)
    p = mass[np.arange(n), cls] / np.maximum(area, 1)
    return xy, cls.astype(np.int64), np.clip(p, 0, 1).astype(np.float64), labels


def segment_nuclei(hoechst01: np.ndarray, mpp: float, min_area_um2: float = 10.0, split_distance_um: float = 3.0,
                   smooth_um: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nuclei of a normalised Hoechst image by a classical pipeline (for the baselines).

    Gaussian smoothing (sigma ``smooth_um``), Otsu's threshold, holes filled, touching nuclei
    split by a watershed of the distance transform, nuclei under ``min_area_um2`` dropped.
    Good enough for round lymphocyte nuclei; large, pale tumour nuclei may be split.

    Parameters
    ----------
    hoechst01 : (H, W) float in [0, 1] (:func:`normalise_hoechst`)
    mpp : float, µm per pixel
    min_area_um2, split_distance_um, smooth_um : float, µm² and µm

    Returns
    -------
    xy : (N, 2) float64 centroids x, y in pixels
    area_um2 : (N,) float64
    labels : (H, W) int32 nucleus label image (nucleus i + 1 is row i)
    """
    from skimage.filters import threshold_otsu

    from core.scenarios.tnrd import mask_to_cells

    img = ndimage.gaussian_filter(np.asarray(hoechst01, np.float32), smooth_um / mpp)
    if float(img.max() - img.min()) <= 1e-6:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(img.shape, np.int32)
    binary = ndimage.binary_fill_holes(img > threshold_otsu(img))
    xy, _, area_px, labels = mask_to_cells(binary.astype(np.float32), 0.5, min_area_um2 / mpp**2,
                                           max(1.0, split_distance_um / mpp))
    return xy, area_px.astype(np.float64) * mpp**2, labels


# --------------------------------------------------------------------------- the scenario


class HoechstModel(ScenarioModel):
    """U-Net (ResNet34 encoder) on the Hoechst channel with dense tiling and per-cell calls.

    The weights' metadata names the class scheme (``classes``), the normalisation
    percentiles and the cell-call settings; the registry's classes must contain every
    subtype the weights output (:data:`CELL_CLASSES` for the ``merged`` scheme).
    """

    def build(self, metadata: dict) -> torch.nn.Module:
        names = tuple(json.loads(metadata["classes"]))
        if names[0] != "background":
            raise ValueError(f"the first class must be background, got {names[0]!r}")
        registered = [c.name for c in self.scenario.classes]
        self.class_map = np.array([registered.index(n) for n in names[1:]], np.int64)  # ValueError if unknown
        self.class_names = names
        self.percentiles = tuple(float(p) for p in json.loads(metadata.get("percentiles", json.dumps(PERCENTILES))))
        params = json.loads(metadata.get("cell_calls", "{}"))
        self.params = CellCallParams(**params)
        decoder = tuple(json.loads(metadata.get("decoder_channels", "[256, 128, 64, 32, 16]")))
        return HoechstUNet(len(names), metadata.get("encoder", "resnet34"), decoder)

    @property
    def operating_point(self) -> dict:
        """The settings that turn the network's maps into cells, as written to ``summary.json``.

        Returns
        -------
        dict
            ``threshold`` (1 - P(background) in (0, 1) a lymphocyte pixel needs),
            ``min_area_um2`` (µm²), ``split_distance_um`` (µm), ``percentiles`` (the
            normalisation's low and high, in [0, 100]) and ``chosen_on`` (fixed before any
            held-out tile was scored).
        """
        return {**asdict(self.params), "percentiles": list(self.percentiles),
                "chosen_on": "fixed in advance (CellCallParams), not tuned on held-out tiles"}

    def prepare(self, work: np.ndarray) -> np.ndarray:
        """(H, W, 1) Hoechst of any dtype → (H, W, 1) float32 in [0, 1], percentiles of the whole image."""
        return normalise_hoechst(work, self.percentiles)[..., None]

    def preprocess(self, window: np.ndarray) -> np.ndarray:
        """(h, w, 1) float32 in [0, 1] → reflected at the bottom and right to multiples of 32 px."""
        h, w = window.shape[:2]
        ph, pw = -h % SIZE_MULTIPLE_PX, -w % SIZE_MULTIPLE_PX
        if ph or pw:
            window = np.pad(window, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
        return np.asarray(window, np.float32)

    def infer_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 1, h, w) normalised Hoechst → (N, K, h, w) softmax class probabilities (§3.4)."""
        return torch.softmax(self.net(batch).float(), dim=1)

    def probabilities(self, hoechst: np.ndarray, progress=None) -> np.ndarray:
        """Class probabilities of a Hoechst image at the scenario's mpp (for evaluation and saliency).

        Parameters
        ----------
        hoechst : (H, W) or (H, W, 1) any real dtype, at ``scenario.input_mpp``
        progress : callable(done, total), optional

        Returns
        -------
        (H, W, K) float32 summing to 1 over K (background first)
        """
        from core.tiling import tile_dense

        work = np.asarray(hoechst)
        work = work[..., None] if work.ndim == 2 else work
        return tile_dense(self.infer_window, self.prepare(work), self.tile_px, self.overlap_px,
                          blend=self.scenario.tiling.blend, progress=progress)

    def postprocess(self, maps: np.ndarray, work: np.ndarray) -> Prediction:
        """Blended class probabilities → cells (:func:`cells_from_probabilities`) and the two dense maps."""
        xy, cls, p, _ = cells_from_probabilities(maps, self.scenario.input_mpp, self.params)
        notes = []
        lo, hi = hoechst_percentiles(work, self.percentiles)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            notes.append("the Hoechst channel is uniform (no nuclei to see): no cells can be found")
        maps = np.clip(maps, 0.0, 1.0)  # blending can leave a float rounding above 1
        return Prediction(xy, self.class_map[cls], p, dense={"lymphocyte": 1.0 - maps[..., 0], "subtypes": maps},
                          notes=notes)

    def saliency(self, hoechst: np.ndarray, class_name: str, progress=None, max_evaluations: int = 400,
                 batch_size: int = 8) -> np.ndarray:
        """HiPe saliency of one subtype over a field (paper §5.1, Fig. 4: "fade", four initial cells).

        The model's answer is the mean softmax probability of ``class_name`` over the field;
        :func:`core.explain.hipe.hierarchical_perturbation` finds the regions whose fading
        (set to 0, no DNA signal) lowers it.

        Parameters
        ----------
        hoechst : (H, W) or (H, W, 1) any real dtype at ``scenario.input_mpp``, at most 512 px a side
        class_name : a subtype of the weights (e.g. ``"cd3"``) or ``"background"``
        progress : callable(done, total), optional, after each batch of perturbed images
        max_evaluations : int, most perturbed images evaluated: the cost is that many forward passes of
            the field (a 128 px field has at most 81 + 289 + 1089 windows over its 3 levels; the
            most salient are kept when the cap is reached)
        batch_size : int

        Returns
        -------
        (H, W) float32 >= 0, larger where fading the image lowered the class's probability more

        Raises
        ------
        InputError
            If the class is unknown or the field is larger than 512 px a side (crop a region).
        """
        from core.explain.hipe import hierarchical_perturbation

        if class_name not in self.class_names:
            raise InputError(f"unknown class {class_name!r}; the model's classes are {', '.join(self.class_names)}")
        work = np.asarray(hoechst)
        work = work[..., None] if work.ndim == 2 else work
        h, w = work.shape[:2]
        if max(h, w) > 512:
            raise InputError(f"the field is {w} x {h} px; saliency is computed on at most 512 x 512 px at "
                             f"{self.scenario.input_mpp} µm/px: crop a region of interest")
        x = torch.from_numpy(self.preprocess(self.prepare(work))).permute(2, 0, 1)[None].to(self.device)
        k = self.class_names.index(class_name)

        def answer(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return self.infer_batch(batch)[:, k, :h, :w].mean(dim=(1, 2))

        sal = hierarchical_perturbation(answer, x, initial_cells=4, perturbation="fade", batch_size=batch_size,
                                        max_evaluations=max_evaluations, progress=progress)
        return sal.saliency[:h, :w]

    def saliency_maps(self, hoechst: np.ndarray, classes: tuple[str, ...] | None = None, progress=None,
                      max_evaluations: int = 400) -> dict[str, np.ndarray]:
        """HiPe saliency of several classes (default every subtype), with one progress bar for all.

        Parameters
        ----------
        hoechst, max_evaluations : as :meth:`saliency` (the cap applies to each class)
        classes : class names, default the weights' subtypes (background excluded)
        progress : callable(done, total), optional; ``total`` bounds the evaluations of all classes

        Returns
        -------
        dict class name → (H, W) float32 >= 0
        """
        classes = tuple(classes or self.class_names[1:])
        out = {}
        for i, name in enumerate(classes):
            def report(done, total, i=i):
                if progress is not None:
                    progress(i * max_evaluations + done, i * max_evaluations + total + (len(classes) - i - 1) * max_evaluations)
            out[name] = self.saliency(hoechst, name, report, max_evaluations)
        return out


def model_from_file(weights: str | Path, device: str | torch.device = "cpu", scenario: Scenario | None = None
                    ) -> HoechstModel:
    """A :class:`HoechstModel` from any weights file (fold weights, a training run), SHA-256 taken from the file.

    Parameters
    ----------
    weights : path to a ``.safetensors`` file written by :mod:`core.training.hoechst`
    device : torch device or its name
    scenario : Scenario, optional; default the registered ``hoechst-lymphocytes`` entry

    Raises
    ------
    WeightsError
        If the file is missing, not safetensors, or does not fit the network.
    """
    from core.scenarios.weights import model_from_weights_file

    return model_from_weights_file(HoechstModel, scenario or get_scenario(KEY), weights, device,
                                   "python -m core.training.hoechst")
