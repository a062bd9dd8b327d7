"""Hierarchical perturbation (HiPe) saliency maps, model-agnostic and bounded in cost.

Reference: J. Cooper, O. Arandjelović, D. J. Harrison, "Believe the HiPe: Hierarchical
perturbation for fast, robust, and model-agnostic saliency mapping", Pattern Recognition
2022 (arXiv:2103.05108), as used by the Hoechst U-Net paper (§5.1, Fig. 4: the softmaxed
output, "fade" perturbation, four initial cells).

The method: the image is covered by a grid of ``n x n`` cells; every window of 2 x 2
neighbouring cells (windows overlap by one cell; those at the border are clipped) is
perturbed in turn, and the drop of the model's answer, ``relu(answer(image) -
answer(perturbed))``, is added to the saliency of the window's pixels. The grid is then
refined (``2n x 2n``) and only the windows whose current saliency reaches a threshold (the
mid-range, ``min + (max - min) / 2``, or the mean) are perturbed again, so the cost goes to
the salient regions. Perturbations: ``fade`` (set to 0), ``mean`` (the window's mean) or
``blur`` (a Gaussian-blurred copy).

The implementation is ours (torch + NumPy), written from the paper; it reproduces the
reference implementation's grid, window and threshold rules. Its cost is bounded by
``max_evaluations`` perturbed images: when a level would exceed it, the most salient windows
of that level are kept and the result says it was truncated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from core.errors import InputError

#: Perturbations of a window.
PERTURBATIONS = ("fade", "mean", "blur")
#: How the saliency threshold of a level is set.
THRESHOLD_MODES = ("mid-range", "mean")


@dataclass
class HiPeResult:
    """A saliency map with how it was computed.

    Attributes
    ----------
    saliency : (H, W) float32 >= 0
        Summed drops of the answer over every perturbed window covering each pixel (in the
        answer's units, e.g. probability).
    answer : float
        The model's answer on the unperturbed image.
    masks_per_level : list of int
        Windows perturbed at each grid level (level 1 has ``2 * initial_cells`` cells a side).
    thresholds : list of float
        Saliency threshold applied at each level (0 at level 1, where every window is perturbed).
    evaluations : int
        Perturbed images evaluated (the cost, plus one unperturbed image).
    truncated : bool
        ``max_evaluations`` was reached: the last level kept only its most salient windows.
    """

    saliency: np.ndarray
    answer: float
    masks_per_level: list[int] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    evaluations: int = 0
    truncated: bool = False


def default_max_depth(side_px: int, initial_cells: int) -> int:
    """Levels of the reference implementation: ``log2(side / initial_cells) - 2``, at least 1.

    For a 256 px image and 4 initial cells: 4 levels, grids of 8, 16, 32 and 64 cells (4 px).
    """
    return max(1, int(np.log2(max(side_px, 1) / max(initial_cells, 1))) - 2)


def _cell_index(n_px: int, n_cells: int) -> np.ndarray:
    """(n_px,) int: the grid cell of each pixel, as nearest-neighbour upsampling of the grid assigns it."""
    return np.minimum((np.arange(n_px) * n_cells) // n_px, n_cells - 1)


def _cell_max(saliency: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """(n, n) maximum of ``saliency`` over the pixels of each grid cell."""
    out = np.full((n, n), -np.inf, np.float64)
    np.maximum.at(out, (rows[:, None], cols[None, :]), saliency)
    return out


def hierarchical_perturbation(
    answer: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    initial_cells: int = 4,
    max_depth: int | None = None,
    perturbation: str = "fade",
    threshold_mode: str = "mid-range",
    batch_size: int = 8,
    max_evaluations: int = 2000,
    progress: Callable[[int, int], None] | None = None,
) -> HiPeResult:
    """HiPe saliency of one answer of a model (Cooper et al. 2022, §3; Hoechst U-Net paper §5.1).

    Parameters
    ----------
    answer : callable
        ``(B, C, H, W)`` float tensor → ``(B,)`` tensor: the model's answer to explain for each
        image, e.g. the mean softmax probability of one class over the field. Called without
        gradients.
    image : (1, C, H, W) float tensor, the input as the model takes it
    initial_cells : int >= 1
        Cells a side before the first refinement (the paper: four).
    max_depth : int >= 1, optional
        Grid levels; default :func:`default_max_depth`.
    perturbation : one of :data:`PERTURBATIONS`
        ``fade`` sets the window to 0 (for a Hoechst image normalised to [0, 1]: no DNA signal).
    threshold_mode : one of :data:`THRESHOLD_MODES`
    batch_size : int >= 1, perturbed images per call of ``answer``
    max_evaluations : int >= 1, most perturbed images evaluated in all
    progress : callable(done, total), optional
        Called after each batch; ``total`` is ``done`` plus an upper bound of the evaluations
        still to come (it can shrink as levels select fewer windows).

    Returns
    -------
    HiPeResult

    Raises
    ------
    InputError
        If ``image`` is not (1, C, H, W), or an option is out of range.

    Examples
    --------
    >>> x = torch.rand(1, 1, 64, 64)
    >>> r = hierarchical_perturbation(lambda b: b[:, 0, 20:28, 36:44].mean(dim=(1, 2)), x)
    >>> r.saliency[0:8, 0:8].max() == 0.0   # far from the square the answer reads
    True
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise InputError(f"HiPe explains one image of shape (1, C, H, W), got {tuple(image.shape)}")
    if perturbation not in PERTURBATIONS:
        raise InputError(f"unknown perturbation {perturbation!r}; use one of {', '.join(PERTURBATIONS)}")
    if threshold_mode not in THRESHOLD_MODES:
        raise InputError(f"unknown threshold mode {threshold_mode!r}; use one of {', '.join(THRESHOLD_MODES)}")
    if initial_cells < 1 or batch_size < 1 or max_evaluations < 1 or (max_depth is not None and max_depth < 1):
        raise InputError("initial_cells, batch_size, max_evaluations and max_depth must be at least 1")
    _, _, h, w = image.shape
    depth_max = max_depth or default_max_depth(min(h, w), initial_cells)
    with torch.no_grad():
        base = float(answer(image).reshape(-1)[0])
        substrate = None
        if perturbation == "blur":
            from torchvision.transforms.functional import gaussian_blur

            k = int(np.sqrt(max(h, w))) | 1  # odd kernel of about sqrt(side), as the reference
            substrate = gaussian_blur(image, [k, k])
    saliency = np.zeros((h, w), np.float64)
    result = HiPeResult(saliency.astype(np.float32), base)
    n = initial_cells
    done = 0
    for level in range(1, depth_max + 1):
        n *= 2
        if min(h, w) < n:  # cells smaller than a pixel
            break
        rows, cols = _cell_index(h, n), _cell_index(w, n)
        threshold = 0.0
        if level > 1:
            threshold = (float(saliency.mean()) if threshold_mode == "mean"
                         else float(saliency.min() + (saliency.max() - saliency.min()) / 2))
        cell_max = _cell_max(saliency, rows, cols, n)
        windows = []  # (local saliency, y1, y2, x1, x2) in cells
        for cy in range(-1, n):
            for cx in range(-1, n):
                y1, y2, x1, x2 = max(0, cy), min(cy + 2, n), max(0, cx), min(cx + 2, n)
                local = float(cell_max[y1:y2, x1:x2].max()) if level > 1 else 0.0
                if level == 1 or local >= threshold:
                    windows.append((local, y1, y2, x1, x2))
        if level > 1 and saliency.max() <= 0:  # nothing salient to refine
            break
        left = max_evaluations - done
        if len(windows) > left:
            windows = sorted(windows, key=lambda t: -t[0])[:left]
            result.truncated = True
        if not windows:
            break
        result.masks_per_level.append(len(windows))
        result.thresholds.append(threshold)
        bound_later = sum(min((2 ** j * n + 1) ** 2, max_evaluations) for j in range(1, depth_max - level + 1))
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            regions = np.zeros((len(chunk), h, w), bool)
            for i, (_, y1, y2, x1, x2) in enumerate(chunk):
                regions[i] = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
            region_t = torch.from_numpy(regions).to(image.device)[:, None]
            batch = image.expand(len(chunk), *image.shape[1:])
            with torch.no_grad():
                if perturbation == "fade":
                    perturbed = batch * (~region_t).to(image.dtype)
                elif perturbation == "blur":
                    perturbed = torch.where(region_t, substrate.expand_as(batch), batch)
                else:
                    counts = region_t.sum(dim=(2, 3), keepdim=True).clamp(min=1)
                    means = (batch * region_t).sum(dim=(2, 3), keepdim=True) / counts
                    perturbed = torch.where(region_t, means.expand_as(batch), batch)
                drops = torch.relu(base - answer(perturbed).reshape(-1).float()).cpu().numpy().astype(np.float64)
            saliency += np.tensordot(drops, regions, axes=1)
            done += len(chunk)
            if progress is not None:
                remaining = len(windows) - start - len(chunk)
                progress(done, done + min(remaining + bound_later, max_evaluations - done))
        if result.truncated:
            break
    result.saliency = saliency.astype(np.float32)
    result.evaluations = done
    return result
