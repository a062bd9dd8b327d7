"""Plot builders: numbers behind the figures."""

import numpy as np
import pandas as pd
import pytest

from core import plots


def test_heatmap_edge_squares_use_their_area_inside_the_image():
    # one immune cell every 10 µm over a 250 x 150 µm image: 10 000 cells/mm² everywhere
    xs, ys = np.meshgrid(np.arange(5, 250, 10.0), np.arange(5, 150, 10.0))
    cells = pd.DataFrame({"x_um": xs.ravel(), "y_um": ys.ravel(), "role": "immune"})
    fig = plots.density_heatmap(cells, 100.0, extent_um=(0, 0, 250, 150))
    z = np.asarray(fig.data[-1].z, dtype=float)
    assert z.shape == (2, 3)
    np.testing.assert_allclose(z, 10_000.0)
