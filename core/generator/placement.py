"""Placement of the cells of a recipe, and each cell's colour and nucleus.

Cells are placed at uniform random centres or fill the regions of a random Voronoi
tessellation; overlap with chosen cell types (and centres inside other cells) is excluded
by rejection. Each placed cell then gets its colour and, with the recipe's probability, a
visible nucleus somewhere inside it (TNRD melanoma paper, §2.2 and Table 1).

All draws come from the one ``numpy.random.Generator`` passed in, in a fixed order, so the
same seed gives the same cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError
from core.generator.geometry import ellipse_coverage, voronoi_labels
from core.generator.recipes import REFERENCE_AREA_PX, CellType, StainRecipe


@dataclass
class PlacedCell:
    """One placed cell: ellipse in pixels (x = column), colours and nucleus once drawn."""

    type: str
    role: str
    cx: float
    cy: float
    a: float
    b: float
    angle: float
    nucleus: tuple[float, float, float, float, float] | None = None  # cx, cy, a, b, angle
    color: np.ndarray | None = None
    nucleus_color: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def _scaled(n: float, area: int) -> int:
    return int(round(n * area / REFERENCE_AREA_PX))


def _draw_shape(ct: CellType, rng: np.random.Generator) -> tuple[float, float, float]:
    a, b = rng.uniform(ct.semi_axes_px[0], ct.semi_axes_px[1], size=2)
    return float(a), float(b), float(rng.uniform(0, np.pi))


def _fits(blocking: list[np.ndarray], cx, cy, a, b, angle, shape) -> tuple[bool, tuple]:
    """Whether an ellipse avoids every occupied pixel of ``blocking``, and its coverage box."""
    y0, x0, cov = ellipse_coverage(cx, cy, a, b, angle, shape)
    if cov.size == 0:
        return False, (y0, x0, cov)
    inside = cov >= 0.5
    sl = (slice(y0, y0 + cov.shape[0]), slice(x0, x0 + cov.shape[1]))
    ix, iy = int(np.clip(round(cx), 0, shape[1] - 1)), int(np.clip(round(cy), 0, shape[0] - 1))
    for occ in blocking:
        # overlap, or the centre inside another cell
        if occ[iy, ix] or np.any(occ[sl][inside]):
            return False, (y0, x0, cov)
    return True, (y0, x0, cov)


def place_cells(recipe: StainRecipe, shape: tuple[int, int], rng: np.random.Generator) -> list[PlacedCell]:
    """Place the cells of every type of ``recipe`` on an image of ``shape`` (H, W) pixels.

    Voronoi-filling types first get their regions and their ``scattered`` cells (inside the
    other types' regions); then each type is placed in recipe order. Cell numbers are per
    500 x 500 px and scale with the image area.

    Returns
    -------
    list of PlacedCell
        In drawing order (the recipe's type order; later types on top); colours and nuclei
        not yet drawn (:func:`draw_appearance`).

    Raises
    ------
    InputError
        If a cell type has an unknown placement.
    """
    h, w = shape
    area = h * w
    occ = {ct.name: np.zeros((h, w), bool) for ct in recipe.cell_types}
    cells: list[PlacedCell] = []

    def place(ct: CellType, sampler, tries: int, target: int | None, max_failures: int = 60) -> int:
        placed, failures = 0, 0
        blocking = [occ[name] for name in ct.avoid]
        while (target is None or placed < target) and failures < max_failures and tries > 0:
            tries -= 1
            cx, cy = sampler()
            a, b, angle = _draw_shape(ct, rng)
            ok, (y0, x0, cov) = _fits(blocking, cx, cy, a, b, angle, (h, w))
            if not ok:
                failures += 1
                continue
            failures = 0
            occ[ct.name][y0 : y0 + cov.shape[0], x0 : x0 + cov.shape[1]] |= cov >= 0.5
            cells.append(PlacedCell(ct.name, ct.role, float(cx), float(cy), a, b, angle))
            placed += 1
        return placed

    # Voronoi regions for the types that fill them
    vor_types = [ct for ct in recipe.cell_types if ct.placement == "voronoi"]
    region_of: dict[str, np.ndarray] = {}
    if vor_types:
        n_total = max(len(vor_types), int(round(recipe.voronoi_total * area / REFERENCE_AREA_PX)))
        labels = voronoi_labels((h, w), n_total, rng)
        order = rng.permutation(n_total)
        wanted = np.array([ct.voronoi_regions for ct in vor_types], float)
        counts = np.maximum(1, np.round(wanted / wanted.sum() * n_total)).astype(int)
        while counts.sum() > n_total:
            counts[np.argmax(counts)] -= 1
        start = 0
        for ct, k in zip(vor_types, counts):
            region_of[ct.name] = np.isin(labels, order[start : start + k])
            start += k
        # unassigned regions (rounding) go to the last type
        if start < n_total:
            region_of[vor_types[-1].name] |= np.isin(labels, order[start:])

    def region_sampler(region: np.ndarray):
        ys, xs = np.nonzero(region)

        def sample():
            if len(xs) == 0:
                return rng.uniform(0, w), rng.uniform(0, h)
            k = rng.integers(len(xs))
            return xs[k] + rng.uniform(-0.5, 0.5), ys[k] + rng.uniform(-0.5, 0.5)

        return sample

    def uniform_sampler():
        return rng.uniform(-0.5, w - 0.5), rng.uniform(-0.5, h - 0.5)

    # scattered cells first (isolated cells inside the other types' regions), then fills
    for ct in vor_types:
        if ct.scattered > 0:
            others = np.zeros((h, w), bool)
            for name, reg in region_of.items():
                if name != ct.name:
                    others |= reg
            n = _scaled(ct.scattered, area)
            place(ct, region_sampler(others), tries=50 * n + 50, target=n)
    for ct in recipe.cell_types:
        if ct.placement == "random":
            n = _scaled(ct.count, area)
            place(ct, uniform_sampler, tries=50 * n + 50, target=n)
        elif ct.placement == "voronoi":
            place(ct, region_sampler(region_of[ct.name]), tries=20000, target=None, max_failures=400)
        else:
            raise InputError(f"cell type {ct.name!r} has placement {ct.placement!r}; use 'random' or 'voronoi'")

    # drawing order follows the recipe's type order (later types on top)
    type_rank = {ct.name: i for i, ct in enumerate(recipe.cell_types)}
    cells.sort(key=lambda c: type_rank[c.type])
    return cells


def draw_appearance(recipe: StainRecipe, cells: list[PlacedCell], rng: np.random.Generator) -> None:
    """Draw each cell's colour and, with probability ``nucleus_visible``, its nucleus (in place).

    A nucleus's semi-axes are clipped to 0.95 times the cell's, and its centre lies inside
    the cell, offset by up to half the free room.
    """
    for c in cells:
        ct = recipe.cell_type(c.type)
        c.color = ct.color.draw(rng)
        if ct.nucleus_semi_axes_px is not None and rng.uniform() < ct.nucleus_visible:
            na, nb = rng.uniform(*ct.nucleus_semi_axes_px, size=2)
            na, nb = min(na, 0.95 * c.a), min(nb, 0.95 * c.b)
            # nucleus somewhere inside the cell: offset up to half the free room
            off = rng.uniform(0, 0.5) * np.array([c.a - na, c.b - nb]) * rng.choice([-1, 1], 2)
            ca, sa = np.cos(c.angle), np.sin(c.angle)
            ncx = c.cx + off[0] * ca - off[1] * sa
            ncy = c.cy + off[0] * sa + off[1] * ca
            c.nucleus = (float(ncx), float(ncy), float(na), float(nb), c.angle + float(rng.uniform(-0.3, 0.3)))
            c.nucleus_color = ct.nucleus_color.draw(rng)
