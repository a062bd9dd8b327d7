"""Shared fixtures: small synthetic images and the real CD3 data set when present."""

from __future__ import annotations

import numpy as np
import pytest

from core.datasets import CD3_DATA_DIR


@pytest.fixture(scope="session")
def cd3_table():
    """The CD3 patch table with its split; skipped where ../shared/data is absent."""
    if not CD3_DATA_DIR.is_dir():
        pytest.skip(f"CD3 data set not found at {CD3_DATA_DIR} (it lives in ../shared/data beside the checkout)")
    from core.datasets import cd3_patch_table

    return cd3_patch_table()


@pytest.fixture(scope="session")
def cd3_model():
    """The shipped cd3-ihc model on CPU."""
    from core.analysis import load_model

    return load_model("cd3-ihc", "cpu")


@pytest.fixture
def rgb_image():
    """(64, 80, 3) uint8 RGB with a gradient, for I/O tests."""
    y, x = np.mgrid[0:64, 0:80]
    return np.stack([x * 3, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
