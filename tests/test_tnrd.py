"""TNRD network (eq. 1-4), projection, tiler, mask → cells, shipped weights, CLI and teaching page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from core.nets.tnrd import TNRD, rbf, rbf_eval, tnrd_loss
from core.scenarios.tnrd import mask_to_cells
from core.tiling import tile_dense

REPO = Path(__file__).resolve().parent.parent
TNRD_KEYS = ("tnrd-if-melanoma", "tnrd-he-melanoma")


def _small_net(dtype=torch.float64) -> TNRD:
    net = TNRD(n_steps=2, nf1=4, nf2=3, k1=5, k2=3, seed=1).to(dtype)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # activations away from the identity / quadratic start
        for s in net.steps:
            s.w1.add_(0.3 * torch.randn(s.w1.shape, generator=gen, dtype=dtype))
            s.w2.add_(0.3 * torch.randn(s.w2.shape, generator=gen, dtype=dtype))
            s.lam.fill_(0.7)
    return net


def test_explicit_gradient_eq3_equals_autograd_of_energy():
    net = _small_net()
    gen = torch.Generator().manual_seed(0)
    u = torch.rand((2, 4, 11, 9), generator=gen, dtype=torch.float64, requires_grad=True)
    f = torch.rand((2, 3, 11, 9), generator=gen, dtype=torch.float64)
    for t in range(2):
        (auto,) = torch.autograd.grad(net.energy(t, u, f), u)
        net.exact = True
        exact = net.gradient(t, u, f)
        net.exact = False
        tabulated = net.gradient(t, u, f)
        assert torch.allclose(exact, auto, rtol=1e-10, atol=1e-10)
        assert (tabulated - auto).abs().max() <= 2e-3 * auto.abs().max()
        assert auto.abs().max() > 0.1  # not a trivially zero gradient


def test_rbf_activation_and_its_autograd_match_the_exact_sums():
    net = _small_net()
    gen = torch.Generator().manual_seed(3)
    x = (1.5 * torch.randn((1, 3, 5, 5), generator=gen, dtype=torch.float64)).requires_grad_()
    w = torch.randn((3, 31), generator=gen, dtype=torch.float64, requires_grad=True)
    mu = net.mu.double()
    for order in (0, 1):
        y = rbf(x, w, net.table, order)
        gx, gw = torch.autograd.grad((y * y).sum(), (x, w))
        x2, w2 = x.detach().requires_grad_(), w.detach().requires_grad_()
        y2 = rbf_eval(x2, w2, mu, net.sigma, order)
        gx2, gw2 = torch.autograd.grad((y2 * y2).sum(), (x2, w2))
        scale = y2.abs().max()
        assert (y - y2).abs().max() <= 2e-3 * scale
        assert (gx - gx2).abs().max() <= 5e-3 * gx2.abs().max()
        assert (gw - gw2).abs().max() <= 5e-3 * gw2.abs().max()


def test_training_gradients_of_the_tabulated_network_match_the_exact_network():
    """Backpropagation through N_t steps: tabulated RBFs vs exact sums (mild regime, few clipped pixels)."""
    net = TNRD(n_steps=2, nf1=4, nf2=3, k1=5, k2=3, seed=1).double()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for s in net.steps:
            s.w1.add_(0.02 * torch.randn(s.w1.shape, generator=gen, dtype=torch.float64))
            s.w2.add_(0.02 * torch.randn(s.w2.shape, generator=gen, dtype=torch.float64))
    rgb = 0.3 + 0.4 * torch.rand((2, 3, 12, 12), generator=gen, dtype=torch.float64)
    m0 = 0.3 + 0.4 * torch.rand((2, 1, 12, 12), generator=gen, dtype=torch.float64)
    g_rgb, g_m = torch.rand_like(rgb), (torch.rand_like(m0) > 0.5).double()
    grads = []
    for exact in (True, False):
        net.exact = exact
        net.zero_grad()
        tnrd_loss(*net(rgb, m0), g_rgb, g_m).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    net.exact = False
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-2 * grads[0].abs().max()


def test_conv_transpose_is_the_adjoint_of_the_convolution():
    gen = torch.Generator().manual_seed(4)
    k = torch.randn((5, 4, 7, 7), generator=gen, dtype=torch.float64)
    u = torch.randn((1, 4, 13, 10), generator=gen, dtype=torch.float64)
    v = torch.randn((1, 5, 13, 10), generator=gen, dtype=torch.float64)
    lhs = (F.conv2d(u, k, padding=3) * v).sum()
    rhs = (u * F.conv_transpose2d(v, k, padding=3)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)


def test_projection_after_an_adam_step_keeps_filters_in_the_unit_ball_and_lambda_nonnegative():
    net = TNRD(n_steps=2, nf1=4, nf2=4, k1=5, k2=3, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=0.5)  # a large step leaves the admissible set
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand((2, 3, 24, 24), generator=gen)
    with torch.no_grad():
        for s in net.steps:
            s.lam.fill_(-0.2)
    out_rgb, out_m = net(rgb, generator=gen)
    loss = tnrd_loss(out_rgb, out_m, rgb, torch.ones_like(out_m))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert max(float(s.K1.detach().flatten(1).norm(dim=1).max()) for s in net.steps) > 1.0
    net.project_()
    for s in net.steps:
        assert float(s.K1.detach().flatten(1).norm(dim=1).max()) <= 1 + 1e-6
        assert float(s.K2.detach().flatten(1).norm(dim=1).max()) <= 1 + 1e-6
        assert float(s.lam.detach()) >= 0.0


def test_forward_shapes_range_and_determinism():
    net = TNRD(n_steps=3, nf1=4, nf2=4, k1=5, k2=3)
    rgb = torch.rand((1, 3, 20, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = net(rgb, generator=torch.Generator().manual_seed(1))
        b = net(rgb, generator=torch.Generator().manual_seed(1))
    assert a[0].shape == (1, 3, 20, 30) and a[1].shape == (1, 1, 20, 30)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert float(a[0].min()) >= 0 and float(a[0].max()) <= 1 and float(a[1].min()) >= 0 and float(a[1].max()) <= 1
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(1, 4, 8, 8))


@pytest.mark.parametrize("shape", [(100, 130, 4), (40, 40, 4), (64, 300, 4)])
def test_tiled_equals_untiled_for_pointwise_models(shape):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    calls = []
    out = tile_dense(lambda x: (calls.append(1), x + 1)[1], img, 48, 12, progress=None)
    np.testing.assert_allclose(out, img + 1, rtol=0, atol=1e-6)
    out2 = tile_dense(lambda x: x * 2 - x ** 2, img, 48, 12)
    np.testing.assert_allclose(out2, img * 2 - img ** 2, atol=1e-6)


def test_mask_to_cells_splits_touching_cells_and_drops_small_ones():
    yy, xx = np.mgrid[0:60, 0:80]
    mask = np.zeros((60, 80), np.float32)
    mask[(xx - 20) ** 2 + (yy - 30) ** 2 <= 8**2] = 1.0
    mask[(xx - 35) ** 2 + (yy - 30) ** 2 <= 8**2] = 0.9  # touches the first
    mask[(xx - 70) ** 2 + (yy - 10) ** 2 <= 1] = 1.0  # 5 px speck
    xy, mean, area, labels = mask_to_cells(mask, 0.5, min_area_px=10, min_distance_px=4)
    assert len(xy) == 2
    order = np.argsort(xy[:, 0])
    np.testing.assert_allclose(xy[order], [[20, 30], [35, 30]], atol=1.5)
    assert mean[order][0] == pytest.approx(1.0, abs=0.01) and mean[order][1] == pytest.approx(0.9, abs=0.01)
    assert labels.max() == 2 and (area >= 10).all()
    assert len(mask_to_cells(np.zeros((10, 10)), 0.5)[0]) == 0


@pytest.fixture(scope="module", params=TNRD_KEYS)
def model(request):
    from core.pipeline import load_model

    return load_model(request.param, "cpu")


def test_shipped_weights_smoke(model):
    from core.generator import generate
    from core.io import ImageData
    from core.evaluation.tnrd import recipe_for

    sec = generate(recipe_for(model.scenario.key), (96, 112), seed=10001)
    image = ImageData(sec.noisy_uint8, model.scenario.input_mpp, "s", "", "user")
    out = model.analyze(image)
    denoised, mask = out.restored["denoised"], out.dense["mask"]
    assert denoised.shape == (96, 112, 3) and denoised.dtype == np.uint8
    assert mask.shape == (96, 112) and mask.dtype == np.float32
    assert np.isfinite(mask).all() and 0 <= mask.min() and mask.max() <= 1
    assert set(out.cells["cell_class"]) <= {"classified-immune"} and set(out.cells["role"]) <= {"immune"}
    again = model.analyze(image)
    np.testing.assert_array_equal(again.restored["denoised"], denoised)
    np.testing.assert_array_equal(again.dense["mask"], mask)
    assert any("synthetic" in n for n in out.notes)


def test_cli_analyze_writes_denoised_and_mask_and_evaluate_prints_json(tmp_path, capsys, monkeypatch):
    key = "tnrd-if-melanoma"
    from PIL import Image

    import core.evaluation.tnrd
    from core.cli import main
    from core.generator import generate

    sec = generate("if-melanoma", (128, 128), seed=10002)
    Image.fromarray(sec.noisy_uint8).save(tmp_path / "if.png")
    assert main(["analyze", str(tmp_path / "if.png"), "--scenario", key, "--mpp", "0.5", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    for name in ("cells.csv", "summary.json", "overlay.png", "denoised.png", "mask.png"):
        assert (tmp_path / "out" / name).is_file(), name
    mask = np.asarray(Image.open(tmp_path / "out" / "mask.png"))
    assert mask.shape == (128, 128) and mask.dtype == np.uint8
    import pandas as pd

    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert set(cells["cell_class"]) <= {"classified-immune"}
    capsys.readouterr()
    monkeypatch.setattr(core.evaluation.tnrd, "EVAL_SHAPE", (96, 96))
    assert main(["evaluate", "--scenario", key, "--synthetic", "1", "--seed", "10003", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == [10003, 10003] and out["shape"] == [96, 96]
    for k in ("rgb_psnr_db", "input_rgb_psnr_db", "rgb_psnr_gain_db"):
        assert np.isfinite(out[k])
    assert out["mask_psnr_db"] > 0  # inf when both masks are empty
    assert {"precision", "recall", "f1", "tp", "fp", "fn"} <= set(out["cells"])


def test_evaluate_rejects_bad_arguments():
    from core.errors import InputError
    from core.evaluation.tnrd import evaluate_synthetic, recipe_for

    with pytest.raises(InputError, match="no synthetic recipe"):
        recipe_for("cd3-ihc")
    with pytest.raises(InputError, match="between 1 and 1000"):
        evaluate_synthetic("tnrd-if-melanoma", 0, 10000, model=object())


def test_teaching_page_generates_runs_and_scores():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "pages" / "teaching.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    at.slider(key="teach_size").set_value(128).run()
    next(b for b in at.button if b.label == "Generate and run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    labels = {m.label for m in at.metric}
    assert {"RGB PSNR", "Mask PSNR", "Precision", "Recall"} <= labels


def test_saved_analysis_keeps_the_denoised_image_and_the_mask(model, tmp_path):
    """The case store gets denoised.png and mask.png with the other exports, pixel for pixel."""
    import io

    from PIL import Image

    from core.pipeline import analyze
    from core.outputs.exports import save_result
    from core.generator import generate
    from core.io import ImageData
    from core.outputs.figures import mask_to_uint8
    from core.outputs.store import CaseStore
    from core.evaluation.tnrd import recipe_for

    sec = generate(recipe_for(model.scenario.key), (96, 96), seed=10004)
    result = analyze(ImageData(sec.noisy_uint8, model.scenario.input_mpp, "s.png", "", "user"), model.scenario.key, model=model)
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    analysis_id = save_result(result, "tnrd-case", store)
    names = {f["name"] for f in store.get_analysis(analysis_id)["files"]}
    assert {"denoised.png", "mask.png", "report.pdf", "cells.csv"} <= names
    denoised = np.asarray(Image.open(io.BytesIO(store.get_file(analysis_id, "denoised.png"))))
    mask = np.asarray(Image.open(io.BytesIO(store.get_file(analysis_id, "mask.png"))))
    np.testing.assert_array_equal(denoised, result.restored["denoised"])
    np.testing.assert_array_equal(mask, mask_to_uint8(result.dense["mask"].values))
