"""Field images built from real labelled patches, with known cell centres.

The gastric source micrographs are not public, so detection is checked on
mosaics: real 70 x 70 px CD3 IHC patches tiled edge to edge, where every
positive patch puts one CD3+ lymphocyte at a known centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.evaluation.datasets import read_patches

PATCH = 70


@dataclass
class Mosaic:
    """A mosaic image and its ground truth.

    Attributes
    ----------
    pixels : (rows * 70, cols * 70, 3) uint8 RGB
    positive_xy : (P, 2) float64 centres (x, y) in pixels of the positive patches
    labels : (rows, cols) int array, 1 where the tile is a positive patch
    paths : list of the patch files, row-major
    """

    pixels: np.ndarray
    positive_xy: np.ndarray
    labels: np.ndarray
    paths: list[str]


def build_mosaic(table: pd.DataFrame, rows: int, cols: int, seed: int, positive_fraction: float = 0.5) -> Mosaic:
    """Tile randomly drawn patches of ``table`` into a ``rows`` x ``cols`` mosaic.

    Parameters
    ----------
    table : DataFrame with ``path`` and ``label`` columns (e.g. the validation split
        of :func:`core.evaluation.datasets.cd3_patch_table`)
    rows, cols : int >= 1
    seed : int, seeds one ``numpy.random.Generator``
    positive_fraction : float in [0, 1], share of tiles drawn from positive patches

    Returns
    -------
    Mosaic
        Positive centres at (70 c + 34.5, 70 r + 34.5), the centre of the tile.
    """
    rng = np.random.default_rng(seed)
    n = rows * cols
    n_pos = int(round(n * positive_fraction))
    pos = table[table.label == 1].path.to_numpy()
    neg = table[table.label == 0].path.to_numpy()
    chosen = list(rng.choice(pos, n_pos, replace=n_pos > len(pos))) + list(rng.choice(neg, n - n_pos, replace=n - n_pos > len(neg)))
    labels = np.array([1] * n_pos + [0] * (n - n_pos))
    order = rng.permutation(n)
    chosen = [chosen[i] for i in order]
    labels = labels[order].reshape(rows, cols)
    patches = read_patches(chosen)
    pixels = patches.reshape(rows, cols, PATCH, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(rows * PATCH, cols * PATCH, 3)
    rr, cc = np.nonzero(labels)
    xy = np.stack([cc * PATCH + (PATCH - 1) / 2, rr * PATCH + (PATCH - 1) / 2], axis=1).astype(np.float64)
    return Mosaic(np.ascontiguousarray(pixels), xy, labels, [str(p) for p in chosen])
