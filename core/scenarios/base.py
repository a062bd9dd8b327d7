"""The one model interface every scenario implements.

Modelled on tiatoolbox's ``ModelABC``: pre-process an image into the model's input
contract (resampling to the scenario's mpp), infer under ``torch.inference_mode()``,
post-process into a cell table and masks. A page or command that can run one
scenario can run all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import torch

from core.io import ImageData
from core.registry import Scenario, load_verified_state_dict

#: ``progress(done, total)`` callback; ``core`` never imports a UI.
Progress = Callable[[int, int], None]


def pick_device(requested: str | None = None) -> torch.device:
    """Return the torch device to run on: CUDA when available, else CPU.

    Parameters
    ----------
    requested : {"cuda", "cpu", None}
        ``None`` chooses CUDA when ``torch.cuda.is_available()``.

    Raises
    ------
    core.errors.InputError
        If CUDA is requested but not available.
    """
    from core.errors import InputError

    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if requested not in ("cuda", "cpu"):
        raise InputError(f"unknown device {requested!r}; use 'cpu', 'cuda' or 'auto'")
    return torch.device(requested)


class ScenarioModel(ABC):
    """A scenario's network with its pre- and post-processing.

    Subclasses set up ``self.net`` in :meth:`build` and implement :meth:`analyze`.
    """

    def __init__(self, scenario: Scenario, device: torch.device, state_dict: dict, metadata: dict):
        self.scenario = scenario
        self.device = device
        self.metadata = metadata
        self.net = self.build(metadata)
        self.net.load_state_dict(state_dict, strict=True)
        self.net.to(device).eval()

    @classmethod
    def from_registry(cls, scenario: Scenario, device: torch.device) -> "ScenarioModel":
        """Load the scenario's registered weights (SHA-256 checked, ``strict=True``)."""
        state, metadata = load_verified_state_dict(scenario.weights_path, scenario.sha256)
        return cls(scenario, device, state, metadata)

    @abstractmethod
    def build(self, metadata: dict) -> torch.nn.Module:
        """Return the untrained network described by the weights' metadata."""

    @abstractmethod
    def analyze(self, image: ImageData, progress: Progress | None = None):
        """Run the scenario on one image.

        Returns
        -------
        cells : pandas.DataFrame
            Cell table in the pixels of ``image``.
        masks : dict of str to ndarray
        denoised : ndarray or None
        notes : list of str
        """


def resample_to_mpp(pixels: np.ndarray, mpp: float | None, target_mpp: float) -> tuple[np.ndarray, float]:
    """Resample (H, W, 3) uint8 RGB from ``mpp`` to ``target_mpp``.

    Returns the resampled image and the scale factor (new pixels per old pixel).
    With ``mpp`` None, or within 2 % of the target, the image is returned as is (scale 1).
    Anti-aliased (Gaussian) when downsampling (scikit-image ``rescale``).
    """
    if mpp is None:
        return pixels, 1.0
    scale = mpp / target_mpp
    if abs(scale - 1.0) < 0.02:
        return pixels, 1.0
    from skimage.transform import rescale

    out = rescale(pixels, scale, order=1, channel_axis=2, anti_aliasing=scale < 1, preserve_range=True)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), scale
