"""Plot builders: numbers behind the figures."""

import numpy as np
import pandas as pd

from core.outputs import plots


def test_heatmap_edge_squares_use_their_area_inside_the_image():
    # one immune cell every 10 µm over a 250 x 150 µm image: 10 000 cells/mm² everywhere
    xs, ys = np.meshgrid(np.arange(5, 250, 10.0), np.arange(5, 150, 10.0))
    cells = pd.DataFrame({"x_um": xs.ravel(), "y_um": ys.ravel(), "role": "immune"})
    fig = plots.density_heatmap(cells, 100.0, extent_um=(0, 0, 250, 150))
    z = np.asarray(fig.data[-1].z, dtype=float)
    assert z.shape == (2, 3)
    np.testing.assert_allclose(z, 10_000.0)


def test_cell_figure_shows_a_large_image_downsampled_with_cells_at_full_resolution():
    cells = pd.DataFrame({"x_px": [10.0, 4000.0], "y_px": [20.0, 30.0], "cell_class": ["a", "b"], "probability": [0.9, 0.8]})
    fig = plots.cell_figure(np.zeros((100, 4100, 3), np.uint8), cells, {"a": "#ff0000", "b": "#00ff00"})
    assert fig.data[0].z.shape[1] <= plots.DISPLAY_MAX_SIDE_PX and fig.data[0].dx == 3
    assert [list(t.x) for t in fig.data[1:]] == [[10.0], [4000.0]]
