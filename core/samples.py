"""Bundled sample images for the demo, the tests and teaching.

``samples/samples.json`` lists each sample: file, mpp, scenario it suits, a
description, and where ground truth exists, the file of known cell centres.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.io import ImageData, load_image

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"


@dataclass(frozen=True)
class Sample:
    """One bundled sample image."""

    key: str
    title: str
    file: str
    mpp: float | None
    mpp_note: str
    scenario: str
    description: str
    truth: str | None = None

    @property
    def path(self) -> Path:
        return self._resolve(self.file)

    def load(self) -> ImageData:
        """Read the sample as :class:`ImageData` (its catalogued mpp applied)."""
        image = load_image(self.path)
        if self.mpp is not None and image.mpp is None:
            image = image.with_mpp(self.mpp, source="sample catalogue")
        return image

    def truth_xy(self) -> np.ndarray | None:
        """(N, 2) float64 known CD3+ centres (x, y) in pixels, or None."""
        if not self.truth:
            return None
        return np.asarray(json.loads(self._resolve(self.truth).read_text())["positive_xy_px"], dtype=np.float64)

    @staticmethod
    def _resolve(name: str) -> Path:
        if name.startswith("skimage:"):
            import skimage

            return Path(skimage.__file__).parent / "data" / name.split(":", 1)[1]
        return SAMPLES_DIR / name


def list_samples() -> list[Sample]:
    """All bundled samples, from ``samples/samples.json``."""
    entries = json.loads((SAMPLES_DIR / "samples.json").read_text(encoding="utf-8"))
    return [Sample(**e) for e in entries]


def get_sample(key: str) -> Sample:
    """The sample called ``key``; KeyError lists the known keys."""
    for s in list_samples():
        if s.key == key:
            return s
    raise KeyError(f"unknown sample {key!r}; known: {[s.key for s in list_samples()]}")
