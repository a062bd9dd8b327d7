"""Plot builders: numbers behind the figures."""

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from core.outputs import plots
from core.spatial.heatmaps import immune_density_map


def test_heatmap_of_the_whole_image_divides_edge_squares_by_their_area_inside_it():
    # one immune cell every 10 µm over a 250 x 150 µm image: 10 000 cells/mm² everywhere, the cut edge squares too
    xs, ys = np.meshgrid(np.arange(5, 250, 10.0), np.arange(5, 150, 10.0))
    cells = pd.DataFrame({"x_um": xs.ravel(), "y_um": ys.ravel(), "role": "immune"})
    dmap = immune_density_map(cells, bin_um=100.0, window_um=(0, 0, 250, 150), whole_window=True)
    fig = plots.density_heatmap(dmap, analysed_area="the whole image")
    heat = fig.data[-1]
    z = np.asarray(heat.z, dtype=float)
    assert z.shape == (2, 3)
    np.testing.assert_allclose(z, 10_000.0)
    # hover: cells and analysed mm² of each square (the corner square is 50 x 50 µm inside the image)
    custom = np.asarray(heat.customdata, dtype=float)
    assert custom[..., 0].tolist() == [[100, 100, 50], [50, 50, 25]]
    np.testing.assert_allclose(custom[1, 2, 1], 0.0025)
    assert (heat.x0, heat.dx, heat.y0, heat.dy) == (50.0, 100.0, 50.0, 100.0)  # square centres in µm
    assert fig.layout.yaxis.autorange == "reversed" and "the whole image" in fig.layout.title.text


def test_heatmap_divides_by_the_tissue_in_each_square_and_leaves_glass_empty():
    # a 300 x 200 µm image in 100 µm squares; tissue mask at 10 µm/px: x < 150 µm, plus a 10 µm strip at x = 200-210
    tissue = np.zeros((20, 30), bool)
    tissue[:, :15] = True
    tissue[:, 20] = True
    xy = [(20, 20), (50, 50), (80, 80),  # square (0, 0): whole tissue, 3 cells in 0.01 mm²
          (110, 20), (140, 90),  # square (0, 1): half tissue, 2 cells in 0.005 mm²
          (120, 150),  # square (1, 1): 1 cell in 0.005 mm²
          (250, 50)]  # square (0, 2): a 10 % strip of tissue
    cells = pd.DataFrame({"x_um": [p[0] for p in xy] + [50.0], "y_um": [p[1] for p in xy] + [150.0],
                          "role": ["immune"] * len(xy) + ["tumour"]})  # square (1, 0): tissue without immune cells
    window = (0, 0, 300, 200)
    strict = immune_density_map(cells, bin_um=100.0, window_um=window, tissue_px=tissue, tissue_mpp=10.0,
                                min_tissue_fraction=0.25)
    z = np.asarray(plots.density_heatmap(strict).data[-1].z, dtype=float)
    np.testing.assert_allclose(z, [[300.0, 400.0, np.nan], [0.0, 200.0, np.nan]])  # glass and the strip: NaN, not 0
    any_tissue = immune_density_map(cells, bin_um=100.0, window_um=window, tissue_px=tissue, tissue_mpp=10.0)
    z = np.asarray(plots.density_heatmap(any_tissue).data[-1].z, dtype=float)
    np.testing.assert_allclose(z, [[300.0, 400.0, 1000.0], [0.0, 200.0, 0.0]])  # 1 cell / 0.001 mm² of strip


def test_heatmap_draws_the_image_underneath_in_um():
    cells = pd.DataFrame({"x_um": [10.0], "y_um": [10.0], "role": ["immune"]})
    dmap = immune_density_map(cells, bin_um=50.0, window_um=(0, 0, 100, 100), whole_window=True)
    fig = plots.density_heatmap(dmap, image=np.zeros((25, 25, 3), np.uint8), mpp=4.0)
    assert [t.type for t in fig.data] == ["image", "heatmap"]
    assert (fig.data[0].dx, fig.data[0].x0) == (4.0, 2.0)  # 25 px x 4 µm = the 100 µm image
    np.testing.assert_allclose(np.asarray(fig.data[1].z, dtype=float), [[400.0, 0.0], [0.0, 0.0]])


def test_heatmap_refuses_a_cell_table_and_an_image_without_mpp():
    cells = pd.DataFrame({"x_um": [10.0], "y_um": [10.0], "role": ["immune"]})
    with pytest.raises(InputError, match="DensityMap"):
        plots.density_heatmap(cells)
    dmap = immune_density_map(cells, bin_um=50.0, window_um=(0, 0, 100, 100), whole_window=True)
    with pytest.raises(InputError, match="mpp"):
        plots.density_heatmap(dmap, image=np.zeros((25, 25, 3), np.uint8))
    with pytest.raises(InputError, match="window_um"):
        immune_density_map(cells, whole_window=True)
    with pytest.raises(InputError, match="tissue_mpp"):
        immune_density_map(cells, window_um=(0, 0, 100, 100), tissue_px=np.ones((10, 10), bool))


def test_cell_figure_shows_a_large_image_downsampled_with_cells_at_full_resolution():
    cells = pd.DataFrame({"x_px": [10.0, 4000.0], "y_px": [20.0, 30.0], "cell_class": ["a", "b"], "probability": [0.9, 0.8]})
    fig = plots.cell_figure(np.zeros((100, 4100, 3), np.uint8), cells, {"a": "#ff0000", "b": "#00ff00"})
    assert fig.data[0].z.shape[1] <= plots.DISPLAY_MAX_SIDE_PX and fig.data[0].dx == 3
    assert [list(t.x) for t in fig.data[1:]] == [[10.0], [4000.0]]
