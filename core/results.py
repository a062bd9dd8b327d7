"""The result of one analysis, shared by the CLI, the app, statistics and reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.io import ImageData


@dataclass
class AnalysisResult:
    """Everything one scenario run produced.

    Attributes
    ----------
    scenario_key : str
        Registry key, e.g. ``"cd3-ihc"``.
    image : ImageData
        The analysed image ((H, W, 3) uint8 RGB, mpp, name, SHA-256).
    cells : pandas.DataFrame
        Cell table (:data:`core.cells.CELL_COLUMNS`), coordinates in the pixels of
        ``image`` and in µm.
    summary : dict
        JSON-ready run summary: scenario, weights SHA-256, mpp, image size, counts
        and densities per class, analysed area, runtime, device, warnings.
    masks : dict of str to ndarray
        Named dense outputs at the image's size, e.g. ``"probability"``: (H, W)
        float32 in [0, 1].
    denoised : ndarray or None
        (H, W, 3) uint8 RGB when the scenario denoises.
    warnings : list of str
        Messages for the user (e.g. "mpp unknown: densities not reported").
    """

    scenario_key: str
    image: ImageData
    cells: pd.DataFrame
    summary: dict[str, Any]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    denoised: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
