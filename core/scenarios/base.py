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


#: Inference precisions. ``float32`` is the default and what every model card's figures are
#: for; ``bfloat16`` (autocast: convolutions in bfloat16, weights float32) is an opt-in for the
#: scenarios whose card also reports their validation figures at it.
PRECISIONS = ("float32", "bfloat16")


def bfloat16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (CPU: AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def check_precision(precision: str, device: torch.device, supported: tuple[str, ...], scenario_key: str) -> str:
    """Validate an inference precision for a scenario on a device.

    Returns
    -------
    str, one of :data:`PRECISIONS`

    Raises
    ------
    core.errors.InputError
        If the precision is unknown, not validated for this scenario, or (bfloat16) not
        supported natively by the device, where it would be slower than float32.
    """
    from core.errors import InputError

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision not in supported:
        raise InputError(f"scenario {scenario_key!r} is validated at {', '.join(supported)} only; use --precision float32")
    if precision == "bfloat16" and not bfloat16_supported(device):
        raise InputError(f"this {device.type.upper()} has no native bfloat16 (needs AVX512-BF16 or AMX on CPU); "
                         "use --precision float32")
    return precision


class ScenarioModel(ABC):
    """A scenario's network with its pre- and post-processing.

    Subclasses set up ``self.net`` in :meth:`build` and implement :meth:`analyze`; a subclass
    that runs its network under :meth:`autocast` lists ``bfloat16`` in ``supported_precisions``.
    """

    #: Precisions this scenario's card has validation figures for.
    supported_precisions: tuple[str, ...] = ("float32",)

    def __init__(self, scenario: Scenario, device: torch.device, state_dict: dict, metadata: dict,
                 precision: str = "float32"):
        self.scenario = scenario
        self.device = device
        self.precision = check_precision(precision, device, self.supported_precisions, scenario.key)
        self.metadata = metadata
        self.net = self.build(metadata)
        self.net.load_state_dict(state_dict, strict=True)
        self.net.to(device).eval()

    @classmethod
    def from_registry(cls, scenario: Scenario, device: torch.device, precision: str = "float32") -> "ScenarioModel":
        """Load the scenario's registered weights (SHA-256 checked, ``strict=True``).

        Raises
        ------
        WeightsError, InputError (precision, see :func:`check_precision`)
        """
        state, metadata = load_verified_state_dict(scenario.weights_path, scenario.sha256)
        return cls(scenario, device, state, metadata, precision)

    def autocast(self):
        """Context for the network's forward pass: bfloat16 autocast when ``precision`` says so."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

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
