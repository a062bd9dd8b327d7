"""S-DRDIN (scenario he-til): architecture, stop-gradient, loss, post-processing, tiling, CLI."""

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from core.evaluation.datasets_he import HE_DATA_DIR, IGNORE_LABEL, disk_targets
from core.nets.sdrdin import SDRDIN, VARIANTS
from core.scenarios.registry import SCENARIOS, get_scenario
from core.scenarios.he_til import HETILModel, PostprocessParams, classify_cells, detect_peaks
from core.training.sdrdin import class_weights, pixel_weighted_cross_entropy, sdrdin_loss



# --- architecture -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes_of_every_variant(variant):
    net = SDRDIN(n_classes=4, variant=variant, base_features=8).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 48, 64))
    if variant == "drdin-detection":
        assert out["class_logits"] is None
    else:
        assert out["class_logits"].shape == (2, 5, 48, 64) and out["class_logits"].dtype == torch.float32
    if variant == "drdin-classification":
        assert out["detection_logits"] is None
    else:
        assert out["detection_logits"].shape == (2, 1, 48, 64)


def test_encoder_has_four_blocks_and_three_average_poolings():
    net = SDRDIN(4, "s-drdin", 8)
    feats = net.encode(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 64, 64), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
    # 2 x 2 average pooling: a constant image stays constant through the pooling steps
    assert len(net.encoder) == 4


def test_bad_size_and_unknown_variant_are_refused():
    with pytest.raises(ValueError, match="multiples of 8"):
        SDRDIN(4, "s-drdin", 8)(torch.randn(1, 3, 50, 64))
    with pytest.raises(ValueError, match="s-drdin-gradient"):
        SDRDIN(4, "s-drdin-nope", 8)


def _reference_forward(net, x):
    """The network as §2.3 draws it: up-sample, concatenate the skip, inception block; the
    detection head over the concatenation of both branches' last features."""

    def block(b, t):
        a, r3, r5, p = torch.split(b.reduce(t), b.branch_channels, dim=1)
        y = torch.cat([a, b.conv3(F.relu(r3)), b.conv5b(F.relu(b.conv5a(F.relu(r5)))), b.pool(p)], dim=1)
        return F.relu(b.norm(y))

    def decode(decoder, feats, skips):
        t = feats[3]
        for b, skip in zip(decoder.blocks, skips):
            t = block(b, torch.cat([F.interpolate(t, size=skip.shape[-2:], mode="bilinear"), skip], dim=1))
        return t

    feats = []
    for i, b in enumerate(net.encoder):
        x = block(b, F.avg_pool2d(x, 2) if i else x)
        feats.append(x)
    cf = decode(net.class_decoder, feats, feats[2::-1])
    det = decode(net.detection_decoder, feats, feats[2::-1])
    return net.class_head(cf), net.detection_head(torch.cat([det, cf], dim=1))


def _with_running_statistics(net):
    """Random batch-norm affine parameters and running statistics, as a trained network has."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g))
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.2)
    return net


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_decoders_compute_the_concatenation_they_skip(mode):
    # The decoders reduce before up-sampling and the head sums convolutions of its two inputs;
    # values and gradients must be those of the concatenating network (§2.3).
    torch.manual_seed(2)
    net = _with_running_statistics(SDRDIN(4, "s-drdin-gradient", 8))
    net.train(mode == "train")
    x = torch.randn(2, 3, 40, 56)
    out = net(x)
    ref_cls, ref_det = _reference_forward(net, x)
    torch.testing.assert_close(out["class_logits"], ref_cls, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["detection_logits"], ref_det, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(out["detection_logits"].sum() + out["class_logits"].square().sum(), net.parameters())
    ref = torch.autograd.grad(ref_det.sum() + ref_cls.square().sum(), net.parameters())
    # Float rounding differs between the two orders of summation; the gradients of biases
    # that feed training-mode BN are 0 in exact arithmetic, so compare at the gradients' scale.
    scale = max(float(r.abs().max()) for r in ref)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=2e-6 * scale, rtol=1e-3)


def test_folding_batch_norm_keeps_the_eval_function():
    torch.manual_seed(3)
    net = _with_running_statistics(SDRDIN(4, "s-drdin", 8)).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        before = net(x)
        net.fold_batch_norm_()
        after = net(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for key in ("class_logits", "detection_logits"):
        torch.testing.assert_close(after[key], before[key], atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="eval"):
        SDRDIN(4, "s-drdin", 8).train().fold_batch_norm_()


@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_writes_the_concatenation_in_place_with_the_same_values(channels_last):
    """Without autograd each block writes its branches over its reductions instead of concatenating."""
    torch.manual_seed(4)
    net = _with_running_statistics(SDRDIN(4, "s-drdin", 8)).eval()
    x = torch.randn(2, 3, 40, 56)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with_autograd = net(x)  # the concatenating path
    with torch.inference_mode():
        in_place = net(x)
    for key in ("class_logits", "detection_logits"):
        assert torch.equal(in_place[key], with_autograd[key].detach())
    # training still differentiates through the concatenation
    net.train()
    net(x)["class_logits"].sum().backward()
    assert all(p.grad is not None for p in net.encoder[0].parameters())


def _encoder_grads(net, loss):
    net.zero_grad()
    loss.backward(retain_graph=True)
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.encoder.parameters()]


def _only_skip_paths(net):
    """Zero the weights through which the detection loss reaches the encoder other than the skips.

    The detection branch reads the encoder through (i) its skips, (ii) the bottleneck it
    up-samples and (iii) the classification branch's last features. Zeroing the weights that
    read (ii) in its first block and (iii) in its head leaves the skips as the only path.
    """
    f4 = net.encoder[3].norm.num_features
    f1 = net.encoder[0].norm.num_features
    with torch.no_grad():
        net.detection_decoder.blocks[0].reduce.weight[:, :f4] = 0
        net.detection_head[0].weight[:, f1:] = 0
    return net


def test_stop_gradient_blocks_the_detection_skips():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    det_target = (torch.rand(2, 32, 32) > 0.8).float()
    sd = _only_skip_paths(SDRDIN(4, "s-drdin", 8).train())
    sg = SDRDIN(4, "s-drdin-gradient", 8).train()
    sg.load_state_dict(sd.state_dict(), strict=True)
    det_sd = F.binary_cross_entropy_with_logits(sd(x)["detection_logits"][:, 0], det_target)
    det_sg = F.binary_cross_entropy_with_logits(sg(x)["detection_logits"][:, 0], det_target)
    assert torch.allclose(det_sd, det_sg)  # same weights, same function
    # S-DRDIN: not one encoder weight gets gradient from the detection loss through the skips.
    assert all(torch.count_nonzero(g) == 0 for g in _encoder_grads(sd, det_sd))
    # S-DRDIN-gradient: the same skips carry gradient into the weights of encoder blocks 1-3.
    skip_blocks = [n.startswith(("0.", "1.", "2.")) and n.endswith("weight") for n, _ in sg.encoder.named_parameters()]
    assert all(torch.count_nonzero(g) > 0 for g, use in zip(_encoder_grads(sg, det_sg), skip_blocks) if use)
    # The detection branch's skip inputs are detached in S-DRDIN only.
    assert not any(s.requires_grad for s in sd.detection_skips(sd.encode(x)))
    assert all(s.requires_grad for s in sg.detection_skips(sg.encode(x)))


def test_classification_gradients_do_not_depend_on_the_stop():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    cls_target = torch.randint(0, 5, (2, 32, 32))
    sd = SDRDIN(4, "s-drdin", 8).train()
    sg = SDRDIN(4, "s-drdin-gradient", 8).train()
    sg.load_state_dict(sd.state_dict(), strict=True)
    c_sd = pixel_weighted_cross_entropy(sd(x)["class_logits"], cls_target)
    c_sg = pixel_weighted_cross_entropy(sg(x)["class_logits"], cls_target)
    for a, b in zip(_encoder_grads(sd, c_sd), _encoder_grads(sg, c_sg)):
        assert torch.allclose(a, b, atol=1e-6)


# --- training targets and loss ------------------------------------------------------------


def test_disk_targets_have_background_and_detection_as_channel_max():
    pts = np.array([[10.0, 10.0], [30.0, 12.0], [20.0, 30.0]])
    labels = np.array([0, 2, -1])
    cls, det = disk_targets((40, 40), pts, labels, radius_px=3.0)
    assert cls[10, 10] == 0 and cls[12, 30] == 2 and cls[30, 20] == IGNORE_LABEL
    assert cls[0, 0] == 4  # background channel = inversion of the detection mask
    np.testing.assert_array_equal(det == 1, cls != 4)
    yy, xx = np.mgrid[:40, :40]
    np.testing.assert_array_equal(cls == 0, (xx - 10) ** 2 + (yy - 10) ** 2 <= 9)
    assert int((cls == 0).sum()) == 29  # lattice points in a disk of radius 3


def test_class_weights_follow_eq1():
    target = torch.full((2, 10, 10), 4, dtype=torch.long)
    target[0, :2, :5] = 0  # 10 px of class 0
    target[1, :1, :5] = 1  # 5 px of class 1
    target[1, 9, 9] = IGNORE_LABEL
    w = class_weights(target, 5)
    n = (200 - 1) / 2  # valid pixels per image, B = 2, N_c = 5
    expected = torch.tensor([n * 5 * 2 / 10, n * 5 * 2 / 5, 0.0, 0.0, n * 5 * 2 / 184])
    assert torch.allclose(w, expected)


def test_weighted_cross_entropy_balances_classes_and_ignores_unlabelled():
    target = torch.full((1, 8, 8), 4, dtype=torch.long)
    target[0, 0, :4] = 1
    target[0, 7, 7] = IGNORE_LABEL
    # uniform prediction: every present class contributes log(5), whatever its pixel count
    loss = pixel_weighted_cross_entropy(torch.zeros(1, 5, 8, 8), target)
    assert loss.item() == pytest.approx(2 * math.log(5), rel=1e-5)
    # = sum over present classes of the mean NLL of that class's pixels
    logits = torch.randn(1, 5, 8, 8)
    nll = F.cross_entropy(logits, target.clamp(min=0), reduction="none")
    expected = nll[target == 1].mean() + nll[target == 4].mean()
    assert pixel_weighted_cross_entropy(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    # the combined loss adds the detection BCE
    out = {"class_logits": logits, "detection_logits": torch.zeros(1, 1, 8, 8)}
    terms = sdrdin_loss(out, target, (target != 4).float())
    assert terms["detection"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert terms["total"].item() == pytest.approx(expected.item() + math.log(2), rel=1e-5)


# --- post-processing ----------------------------------------------------------------------


def _blob_map(shape, centres, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape)
    for x, y in centres:
        out = np.maximum(out, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
    return out


def test_postprocess_finds_known_peaks_and_drops_specks():
    mpp = 0.55
    centres = [(20.0, 20.0), (60.0, 25.0), (40.0, 60.0), (52.0, 60.0)]  # the last two touch
    prob = _blob_map((90, 90), centres, sigma=3.5)
    prob[80, 80] = prob[80, 81] = 0.9  # a 2 px speck, well below 9.68 µm² (32 px)
    params = PostprocessParams(threshold=0.5)
    px = params.in_pixels(mpp)
    assert px == {"min_area_px": pytest.approx(50 * 0.44**2 / 0.55**2), "peak_window_px": 13,
                  "peak_dilation_px": pytest.approx(1.6), "class_window_px": 39}
    xy = detect_peaks(prob, params, mpp)
    assert len(xy) == 4
    d = np.linalg.norm(xy[:, None] - np.array(centres)[None], axis=2)
    assert np.all(d.min(axis=1) <= 1.0) and len(set(d.argmin(axis=1))) == 4
    assert len(detect_peaks(np.zeros((30, 30)), params, mpp)) == 0


def test_class_of_a_cell_is_the_argmax_of_the_square_average():
    k = np.zeros((4, 60, 60))
    k[1, :, :30] = 0.6  # inflammatory on the left
    k[0, :, :30] = 0.4
    k[0, :, 30:] = 0.9  # epithelial on the right
    k[3, 10, 10] = 50.0  # one hot pixel of "other" outweighs inside the square
    xy = np.array([[10.0, 10.0], [50.0, 40.0], [20.0, 40.0]])
    label, share = classify_cells(k, xy, window_px=5)
    assert label.tolist() == [3, 0, 1]
    assert share[1] == pytest.approx(1.0) and share[2] == pytest.approx(0.6)


# --- tiling -------------------------------------------------------------------------------


class StubNet(torch.nn.Module):
    """Analytic S-DRDIN stand-in: darkness, smoothed, as detection; colour decides the class."""

    def fold_batch_norm_(self):
        return self  # no batch normalisation to fold

    def forward(self, x):
        dark = -x.mean(dim=1, keepdim=True)
        det = 12 * (F.avg_pool2d(dark, 5, 1, 2, count_include_pad=False) + 0.65)
        red = F.avg_pool2d(x[:, :1] - x[:, 2:3], 9, 1, 4, count_include_pad=False)
        cls = torch.cat([red, -red, torch.zeros_like(red), torch.zeros_like(red) - 1, -2 * det], dim=1)
        return {"class_logits": cls, "detection_logits": det}


def _scenario():
    return get_scenario("he-til")


class StubModel(HETILModel):
    def build(self, metadata):
        self.mean = np.zeros((1, 1, 3), np.float32)
        self.std = np.ones((1, 1, 3), np.float32)
        self.params = PostprocessParams(threshold=0.5)
        return StubNet()


def _nuclei_field(h, w, n, seed):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 230, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(n):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        colour = (200, 40, 120) if rng.random() < 0.5 else (40, 40, 200)
        img[(xx - x) ** 2 + (yy - y) ** 2 <= rng.uniform(16, 36)] = colour
    return img


def _assert_same_cells(a, b):
    assert len(a[0]) == len(b[0]) > 0
    oa, ob = np.lexsort(a[0].T[::-1]), np.lexsort(b[0].T[::-1])
    np.testing.assert_allclose(a[0][oa], b[0][ob], atol=1e-4)
    np.testing.assert_array_equal(a[1][oa], b[1][ob])


def test_tiled_equals_untiled_with_an_analytic_model():
    img = _nuclei_field(300, 420, 160, seed=1)
    model = StubModel(_scenario(), torch.device("cpu"), {}, {})
    model.tile_px, model.margin_px = 4096, 96
    whole = model.detect(img)
    model.tile_px = 96  # 4 x 5 blocks, cells on every seam
    tiled = model.detect(img)
    _assert_same_cells(whole, tiled)
    np.testing.assert_allclose(whole[4], tiled[4], atol=1e-6)
    assert len(np.unique(np.round(tiled[0]), axis=0)) == len(tiled[0])  # no cell twice


def test_tiled_equals_untiled_with_the_shipped_network():
    from core.pipeline import load_model
    from core.evaluation.datasets_he import read_he_split

    model = load_model("he-til", "cpu")
    img = read_he_split("validation")[0].pixels[:400, :456]
    model.tile_px = 4096
    whole = model.detect(img)
    model.tile_px = 192  # larger than one tile: 3 x 3 blocks
    tiled = model.detect(img)
    _assert_same_cells(whole, tiled)


# --- product ------------------------------------------------------------------------------


def test_cli_analyze_writes_the_cd3_files_with_he_classes(tmp_path):
    import pandas as pd

    from core.cli import main

    png = HE_DATA_DIR / "validation" / "img4" / "img4.png"
    out = tmp_path / "out"
    assert main(["analyze", str(png), "--scenario", "he-til", "--mpp", "0.55", "--out", str(out), "--device", "cpu"]) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) > 50
    assert set(cells.cell_class) <= {"epithelial", "inflammatory", "fibroblast", "other"}
    assert set(cells.role) <= {"tumour", "immune", "stroma", "other"}
    roles = dict(zip(cells.cell_class, cells.role))
    assert all({"epithelial": "tumour", "inflammatory": "immune", "fibroblast": "stroma", "other": "other"}[c] == r
               for c, r in roles.items())
    assert cells.probability.between(0, 1).all() and not cells[["x_px", "y_px"]].isna().any().any()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == "he-til" and summary["n_cells"] == len(cells)
    assert get_scenario("he-til").caution in summary["warnings"]  # the caution travels with the results
    assert (out / "overlay.png").is_file()


def test_evaluation_scores_known_matches():
    from core.evaluation.datasets_he import HEImage
    from core.evaluation.he import score_detections

    im = HEImage("x", np.zeros((10, 10, 3), np.uint8), np.array([[0.0, 0], [10, 0], [20, 0], [30, 0]]), np.array([0, 1, -1, 1]))
    pred = np.array([[1.0, 0], [10, 2], [20, 9], [50, 50]])  # 2 matched within 6 px, 2 false positives
    s = score_detections([(pred, np.array([0, 0, 1, 1]))], [im], 6.0)
    assert (s["detection"]["tp"], s["detection"]["fp"], s["detection"]["fn"]) == (2, 2, 2)
    c = s["classification"]
    assert c["n"] == 2 and c["per_class"]["epithelial"]["precision"] == 0.5
    assert c["weighted_f1"] == pytest.approx(0.5 * (2 / 3) + 0.5 * 0.0)


def test_evaluation_reproduces_the_model_card():
    from core.pipeline import load_model
    from core.evaluation.he import evaluate_he

    card = SCENARIOS["he-til"].card()
    got = evaluate_he("validation", model=load_model("he-til", "cpu"))
    for radius, want in card["metrics"]["validation"]["radii"].items():
        det, cls = got["radii"][radius]["detection"], got["radii"][radius]["classification"]
        # counts may differ by a cell or two where a pixel sits on the threshold on another CPU
        assert abs(det["tp"] - want["detection"]["tp"]) <= 3 and abs(det["fp"] - want["detection"]["fp"]) <= 3
        assert det["f1"] == pytest.approx(want["detection"]["f1"], abs=2e-3)
        assert cls["weighted_f1"] == pytest.approx(want["classification"]["weighted_f1"], abs=3e-3)


def test_bfloat16_evaluation_reproduces_the_model_card():
    from core.pipeline import load_model
    from core.evaluation.he import evaluate_he
    from core.scenarios.base import bfloat16_supported

    if not bfloat16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no native bfloat16")
    card = SCENARIOS["he-til"].card()
    assert card["inference_precisions"] == ["float32", "bfloat16"]
    got = evaluate_he("validation", model=load_model("he-til", "cpu", "bfloat16"))
    assert got["inference_precision"] == "bfloat16"
    for radius, want in card["metrics"]["validation_bfloat16"]["radii"].items():
        det, cls = got["radii"][radius]["detection"], got["radii"][radius]["classification"]
        assert det["f1"] == pytest.approx(want["detection"]["f1"], abs=3e-3)
        assert cls["weighted_f1"] == pytest.approx(want["classification"]["weighted_f1"], abs=4e-3)


def test_bootstrap_interval_resamples_images():
    from core.evaluation.he import bootstrap_ci, match_images, pool_matches
    from core.evaluation.datasets_he import HEImage

    truth = np.array([[10.0, 10], [40, 10], [70, 10], [100, 10]])
    good = HEImage("good", np.zeros((20, 120, 3), np.uint8), truth, np.array([1, 1, 0, 2]))
    bad = HEImage("bad", np.zeros((20, 120, 3), np.uint8), truth, np.array([1, 1, 0, 2]))
    results = [(truth + 1, np.array([1, 1, 0, 2])), (truth[:1] + 1, np.array([0]))]  # all found / one found, misclassified
    rows = match_images(results, [good, bad], 6.0)
    assert [r[:3] for r in rows] == [(4, 0, 0), (1, 0, 3)]
    point = pool_matches(rows)
    ci = bootstrap_ci(rows, n_resamples=300, seed=1)
    assert ci["unit"] == "image" and ci["level"] == 0.95
    lo, hi = ci["detection_f1"]
    assert 0 < lo < point["detection"]["f1"] < hi == 1.0  # a resample of only "good" images scores 1
    same = bootstrap_ci([rows[0], rows[0]], n_resamples=50)
    assert same["detection_f1"] == [1.0, 1.0] and same["inflammatory_f1"] == [1.0, 1.0]


# --- stain variation and numeric precision --------------------------------------------------


def test_hed_stain_jitter_changes_stain_strength_not_geometry():
    from core.training.sdrdin import hed_stain_jitter

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0.2, 0.95, (4, 3, 24, 24))).float()
    g = torch.Generator().manual_seed(0)
    same = hed_stain_jitter(x, 0.0, g)
    assert same is x
    a, b = hed_stain_jitter(x, 0.3, g), hed_stain_jitter(x, 0.3, g)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, b)  # a new staining per call
    # the re-staining is a per-image monotone map of optical density: where a pixel is darker
    # than another in the original, mostly it stays darker (nuclei stay nuclei)
    od, od_a = -torch.log10(x).sum(1).flatten(1), -torch.log10(a.clamp(min=1 / 255)).sum(1).flatten(1)
    rank = lambda t: t.argsort(1).argsort(1).float()  # noqa: E731
    corr = [float(np.corrcoef(rank(od)[i], rank(od_a)[i])[0, 1]) for i in range(4)]
    assert min(corr) > 0.8


def test_focus_sampling_puts_the_focus_class_in_the_crops():
    from core.evaluation.datasets_he import HEImage
    from core.training.sdrdin import CropSampler

    # one inflammatory nucleus (label 1) in a corner of a 200 px image, epithelial elsewhere
    pts = np.array([[12.0, 15.0], [150, 150], [100, 60], [60, 170]])
    image = HEImage("synthetic", np.full((200, 200, 3), 200, np.uint8), pts, np.array([1, 0, 0, 0]))
    uniform = CropSampler([image], 3.0, 48, torch.Generator().manual_seed(0), jitter=0.0)
    focused = CropSampler([image], 3.0, 48, torch.Generator().manual_seed(0), jitter=0.0, focus_label=1, focus_share=1.0)
    _, cu, _ = uniform.batch(40)
    _, cf, _ = focused.batch(40)
    has = lambda c: [(c[i] == 1).any().item() for i in range(len(c))]  # noqa: E731
    assert all(has(cf))  # every focused crop holds the inflammatory nucleus
    assert sum(has(cu)) < 20  # a uniform crop holds it only sometimes
    # the nucleus is not always at the crop centre
    where = [tuple(torch.nonzero(cf[i] == 1).float().mean(0).round().tolist()) for i in range(len(cf))]
    assert len(set(where)) > 5
    with pytest.raises(ValueError, match="no nucleus of the focus class"):
        CropSampler([image], 3.0, 48, torch.Generator(), focus_label=3, focus_share=0.5)


def test_weight_averaging_ships_the_mean_of_the_snapshots(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from core.training import sdrdin as training
    from core.training import sdrdin_card

    snapshots = []
    update = torch.optim.swa_utils.AveragedModel.update_parameters

    def record(self, model):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return update(self, model)

    monkeypatch.setattr(torch.optim.swa_utils.AveragedModel, "update_parameters", record)
    monkeypatch.setattr(training, "SWA_BN_BATCHES", 4)
    out = tmp_path / "w.safetensors"
    assert training.main(["train", "--minutes", "5", "--max-steps", "7", "--base", "4", "--crop", "32", "--batch", "2",
                          "--swa-start", "0", "--swa-every", "2", "--eval-minutes", "100", "--eval-thresholds", "0.5",
                          "--threads", "1", "--out", str(out)]) == 0
    record_json = json.loads(out.with_suffix(".train.json").read_text())
    assert len(snapshots) == 3 == record_json["swa_n_averaged"]  # steps 2, 4 and 6 of 7
    shipped = load_file(str(out))
    for name, value in shipped.items():
        if "running" in name or "num_batches" in name:
            continue
        torch.testing.assert_close(value, torch.stack([s[name] for s in snapshots]).mean(0))
    # batch-norm statistics are re-estimated for the averaged weights, not kept from the last step
    bn = next(k for k in shipped if k.endswith("running_var"))
    assert not torch.allclose(shipped[bn], snapshots[-1][bn])
    assert "--swa-start 0 --swa-every 2" in sdrdin_card._train_command(record_json, "w.safetensors")


def test_restain_scales_haematoxylin_and_keeps_unstained_pixels():
    from skimage.color import hed2rgb, rgb2hed

    from core.evaluation.he import restain_he

    rng = np.random.default_rng(1)
    conc = rng.uniform(0, 1, (16, 16, 3)) * [0.08, 0.05, 0.005]  # an H&E-like image
    img = np.round(hed2rgb(conc) * 255).astype(np.uint8)
    np.testing.assert_allclose(restain_he(img, 1.0, 1.0).astype(int), img.astype(int), atol=1)
    darker = restain_he(img, 1.5, 1.0)
    h0, h1 = rgb2hed(img)[..., 0], rgb2hed(darker)[..., 0]
    assert h1.mean() == pytest.approx(1.5 * h0.mean(), rel=0.1)
    assert rgb2hed(darker)[..., 1].mean() == pytest.approx(rgb2hed(img)[..., 1].mean(), rel=0.1)
    white = np.full((4, 4, 3), 255, np.uint8)
    np.testing.assert_array_equal(restain_he(white, 0.5, 2.0), white)


def test_precision_is_checked_and_recorded():
    from core.errors import InputError
    from core.scenarios.base import bfloat16_supported, check_precision

    cpu = torch.device("cpu")
    assert check_precision("float32", cpu, ("float32",), "cd3-ihc") == "float32"
    with pytest.raises(InputError, match="unknown precision"):
        check_precision("fp8", cpu, ("float32", "bfloat16"), "he-til")
    with pytest.raises(InputError, match="validated at float32 only"):
        check_precision("bfloat16", cpu, ("float32",), "cd3-ihc")
    if not bfloat16_supported(cpu):
        with pytest.raises(InputError, match="no native bfloat16"):
            check_precision("bfloat16", cpu, ("float32", "bfloat16"), "he-til")


def test_bfloat16_analysis_is_recorded_and_close_to_float32():
    from core.pipeline import analyze, load_model
    from core.evaluation.datasets_he import read_he_split
    from core.io import ImageData
    from core.scenarios.base import bfloat16_supported

    if not bfloat16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no native bfloat16")
    pixels = read_he_split("validation")[0].pixels[:256, :256]
    image = ImageData(pixels, 0.55, "crop", "", "user")
    full = analyze(image, "he-til", model=load_model("he-til", "cpu"))
    fast = analyze(image, "he-til", model=load_model("he-til", "cpu", "bfloat16"))
    assert full.summary["inference_precision"] == "float32" and fast.summary["inference_precision"] == "bfloat16"
    assert abs(len(fast.cells) - len(full.cells)) <= 0.05 * len(full.cells) + 2


# --- three sources (core/training/he_sources.py) ------------------------------------------------


def _image(name, source, annotated, n=12, side=200, seed=0):
    from core.evaluation.datasets_he import HEImage

    rng = np.random.default_rng(seed)
    return HEImage(name, rng.integers(0, 255, (side, side, 3), dtype=np.uint8), rng.uniform(10, side - 10, (n, 2)),
                   rng.integers(0, len(annotated), n).astype(np.int64), source, annotated)


def test_multi_source_sampler_draws_sources_evenly_and_says_what_each_annotates():
    from core.training.he_sources import MultiSourceSampler

    by_source = {"crc": [_image(f"c{i}", "crc", (0, 1, 2, 3), seed=i) for i in range(8)],
                 "brca-m2c": [_image("b0", "brca-m2c", (0, 1, 2), seed=9)]}
    sampler = MultiSourceSampler(by_source, 4.0, 64, torch.Generator().manual_seed(0), scale_jitter=0.15,
                                 blur_share=0.5, jpeg_share=0.5)
    seen, shapes = [], set()
    for _ in range(40):
        x, ct, dt, allowed = sampler.batch(4)
        shapes.add((tuple(x.shape), tuple(ct.shape), tuple(dt.shape), tuple(allowed.shape)))
        seen += [bool(a[3]) for a in allowed]  # "other" is annotated by crc only
        assert x.min() >= 0 and x.max() <= 1 and set(torch.unique(dt).tolist()) <= {0.0, 1.0}
    assert shapes == {((4, 3, 64, 64), (4, 64, 64), (4, 64, 64), (4, 5))}
    share_brca = 1 - np.mean(seen)
    assert 0.35 < share_brca < 0.65  # one BRCA image against eight CRC images, yet half the crops


def test_unannotated_classes_leave_the_softmax():
    from core.training.he_sources import mask_unannotated
    from core.training.sdrdin import pixel_weighted_cross_entropy

    logits = torch.zeros(2, 5, 4, 4, requires_grad=True)
    allowed = torch.tensor([[True] * 5, [True, True, True, False, True]])
    masked = mask_unannotated(logits, allowed)
    p = torch.softmax(masked, 1)
    assert torch.allclose(p[0, :, 0, 0], torch.full((5,), 0.2)) and p[1, 3].max() < 1e-6
    target = torch.full((2, 4, 4), 1, dtype=torch.long)
    pixel_weighted_cross_entropy(masked, target).backward()
    assert logits.grad[1, 3].abs().max() == 0 and logits.grad[0, 3].abs().max() > 0


def test_training_stage_smoke_writes_weights_and_its_record(tmp_path):
    """Two steps of the he-til training command: a score after the last step, the weights it chose, the record."""
    import json

    from safetensors.torch import load_file

    from core.training.sdrdin import main as train_main

    out = tmp_path / "sd.safetensors"
    assert train_main(["train", "--max-steps", "2", "--minutes", "5", "--base", "8", "--crop", "64", "--batch", "2",
                       "--eval-minutes", "100", "--eval-thresholds", "0.3", "--threads", "1", "--out", str(out)]) in (0, None)
    record = json.loads(out.with_suffix(".train.json").read_text())
    assert record["steps"] == 2 and [h["step"] for h in record["history"]] == [2]  # scored once, after the last step
    net = SDRDIN(4, "s-drdin", 8)
    net.load_state_dict(load_file(out), strict=True)


def test_distillation_is_zero_on_the_teachers_own_outputs_and_pulls_towards_them():
    from core.training.he_sources import distillation_loss

    g = torch.Generator().manual_seed(0)
    teacher = {"class_logits": torch.randn(2, 5, 8, 8, generator=g), "detection_logits": torch.randn(2, 1, 8, 8, generator=g)}
    same = distillation_loss({k: v.clone() for k, v in teacher.items()}, teacher)
    assert set(same) == {"distil_class", "distil_detection"}
    assert all(abs(float(v)) < 1e-5 for v in same.values())
    student = {k: torch.zeros_like(v, requires_grad=True) for k, v in teacher.items()}
    terms = distillation_loss(student, teacher)
    assert all(float(v.detach()) > 0.01 for v in terms.values())
    sum(terms.values()).backward()
    # a gradient step moves the student's logits towards the teacher's
    moved = {k: student[k].detach() - 0.5 * student[k].grad for k in teacher}
    assert sum(distillation_loss(moved, teacher).values()) < sum(terms.values())


def test_the_teacher_uses_its_own_normalisation_and_gives_no_gradient(tmp_path):
    from safetensors.torch import save_file

    from core.training.he_sources import Teacher
    from core.training.sdrdin import metadata

    net = SDRDIN(4, "s-drdin", 8).eval()
    path = tmp_path / "t.safetensors"
    mean, std = np.array([0.8, 0.7, 0.85], np.float32), np.array([0.15, 0.2, 0.1], np.float32)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=metadata(mean, std, 0.3, "s-drdin", 8))
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    out = Teacher(str(path))(x)
    ref = net((x - torch.as_tensor(mean).view(1, 3, 1, 1)) / torch.as_tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(out["class_logits"], ref["class_logits"], atol=1e-5)
    assert not out["class_logits"].requires_grad


def test_guarded_selection_prefers_rows_that_keep_the_guarded_source():
    from core.training.he_sources import guarded_best, guards_hold

    def row(thr, score, crc):
        return {"threshold": thr, "score": score, "by_source": {"crc": {"detection_f1": crc, "immune_f1": 0.0},
                                                                  "consep": {"detection_f1": 0.5, "immune_f1": 0.5}}}

    ref = row(0.3, 1.0, 0.80)
    rows = [row(0.25, 1.40, 0.79), row(0.3, 1.35, 0.81), row(0.35, 1.30, 0.85)]
    assert not guards_hold(rows[0], [ref], ["crc"]) and guards_hold(rows[1], [ref], ["crc"])
    assert guards_hold(rows[0], [ref], None)
    best, held = guarded_best(rows, [ref], ["crc"])
    assert held and best["threshold"] == 0.3
    best, held = guarded_best(rows[:1], [ref], ["crc"])
    assert not held and best["threshold"] == 0.25  # none holds: the best score, flagged


def test_guard_margin_lets_a_small_shortfall_pass_and_records_it():
    from core.training.he_sources import guarded_best, guards_hold

    def row(thr, score, crc):
        return {"threshold": thr, "score": score, "by_source": {"crc": {"detection_f1": crc, "immune_f1": 0.6}}}

    ref = row(0.3, 1.0, 0.80)
    assert not guards_hold(row(0.25, 1.4, 0.76), [ref], ["crc"])
    assert guards_hold(row(0.25, 1.4, 0.76), [ref], ["crc"], {"crc": 0.05})  # 0.04 short, margin 0.05
    assert not guards_hold(row(0.25, 1.4, 0.74), [ref], ["crc"], {"crc": 0.05})  # 0.06 short
    best, held = guarded_best([row(0.25, 1.4, 0.76), row(0.3, 1.2, 0.81)], [ref], ["crc"], {"crc": 0.05})
    assert held and best["threshold"] == 0.25


def test_bootstrap_se_of_pooled_f1_follows_the_spread_over_images():
    from core.training.he_sources import _f1_sum, bootstrap_se

    same = np.tile([[40, 10, 10, 20, 5, 5]], (10, 1))
    assert bootstrap_se(same) == pytest.approx(0.0, abs=1e-12)  # identical images: no spread
    assert _f1_sum(same.sum(axis=0)) == pytest.approx(0.8 + 0.8)
    mixed = np.array([[40, 10, 10, 20, 5, 5], [10, 40, 40, 2, 20, 20]] * 5)
    se = bootstrap_se(mixed)
    assert 0.05 < se < 0.5
    assert bootstrap_se(mixed, seed=0) == se  # reproducible
    assert bootstrap_se(mixed[:1]) == 0.0


def test_image_counts_pool_to_score_sources():
    from core.scenarios.he_til import PostprocessParams
    from core.training.he_sources import image_counts, score_sources

    runner = type("Runner", (), {"scenario": type("S", (), {"input_mpp": 0.5})(), "params": PostprocessParams()})()
    det = np.zeros((40, 40), np.float32)
    for x, y in [(10, 10), (30, 10), (20, 30)]:
        det[y - 3 : y + 4, x - 3 : x + 4] = 0.9  # 7 x 7 px blobs at 0.5 µm/px: above the minimum area
    cls = np.zeros((5, 40, 40), np.float32)
    cls[1] = 1.0  # inflammatory everywhere
    im = type("Im", (), {"points_xy": np.array([[10.0, 10.0], [30.0, 10.0], [5.0, 35.0]]),
                         "labels": np.array([1, 0, 1])})()
    maps = {"crc": [(det, cls), (det, cls)]}
    counts = image_counts(runner, {"crc": [im, im]}, [0.5], maps)[0.5]["crc"]
    assert counts.shape == (2, 6)
    assert counts[0].tolist() == [2, 1, 1, 1, 2, 1]  # two of three nuclei found; one of two lymphocytes
    row = score_sources(runner, {"crc": [im, im]}, [0.5], maps)[0]
    assert row["by_source"]["crc"]["detection_f1"] == pytest.approx(2 / 3)
    assert row["by_source"]["crc"]["immune_f1"] == pytest.approx(0.4)
    assert row["score"] == pytest.approx(2 / 3 + 0.4, abs=1e-4)


def test_distillation_needs_the_sources_it_distils(tmp_path):
    from core.training.sdrdin import main as train_main

    with pytest.raises(SystemExit, match="--distill needs --sources"):
        train_main(["train", "--max-steps", "1", "--base", "8", "--crop", "64", "--batch", "2", "--threads", "1",
                    "--distill", "weights/he-til-sdrdin-v3.safetensors", "--out", str(tmp_path / "x.safetensors")])


def test_the_card_gives_the_multi_source_and_distillation_options_of_a_stage():
    from core.training import sdrdin_card

    record = {"minutes": 70, "base_features": 32, "crop_px": 160, "batch": 6, "lr": 2e-4, "seed": 9, "eval_minutes": 14,
              "eval_thresholds": [0.2, 0.3], "stain_jitter": 0.3, "sources": ["crc", "brca-m2c", "consep"],
              "source_weights": [3.0, 1.0, 1.5], "scale_jitter": 0.15, "blur_share": 0.25, "jpeg_share": 0.25,
              "class_window_um": 6.6, "baseline": "weights/he-til-sdrdin-v3.safetensors", "guard_sources": ["crc"],
              "guard_select": True, "distill": "weights/he-til-sdrdin-v3.safetensors", "distill_sources": ["crc"],
              "distill_weight": 1.0, "guard_margins": {"crc": {"se": 0.12, "margin": 0.05, "threshold": 0.25}}}
    command = sdrdin_card._train_command(record, "he-til-sdrdin-v4.safetensors", "<stage 7 weights>")
    for part in ("--sources crc brca-m2c consep", "--source-weights 3 1 1.5", "--class-window-um 6.6", "--guard-sources crc",
                 "--guard-select", "--guard-margin 0.05", "--distill weights/he-til-sdrdin-v3.safetensors --distill-sources crc --distill-weight 1",
                 "--init <stage 7 weights>"):
        assert part in command
    assert "--sources" not in sdrdin_card._train_command({k: v for k, v in record.items() if k != "sources"}, "w.safetensors")


def test_a_candidate_is_loaded_strictly_and_tied_to_its_own_hash(tmp_path):
    from safetensors.torch import save_file

    from core.errors import InputError, WeightsError
    from core.pipeline import load_candidate
    from core.scenarios.weights import sha256_file
    from core.training.sdrdin import metadata

    net = SDRDIN(4, "s-drdin", 8).eval()
    mean, std = np.array([0.8, 0.7, 0.85], np.float32), np.array([0.15, 0.2, 0.1], np.float32)
    path = tmp_path / "stage.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=metadata(mean, std, 0.3, "s-drdin", 8))
    model = load_candidate("he-til", path, "cpu")
    assert model.weights_sha256 == sha256_file(path) and model.params.threshold == pytest.approx(0.3)
    maps = model.infer_window(np.full((48, 48, 3), 200, np.uint8))
    assert maps.shape[:2] == (48, 48) and np.isfinite(maps).all()  # one detection + K + 1 class maps per pixel
    state = net.state_dict()
    state.pop(next(k for k in state if k.endswith("weight")))  # a tensor missing: strict loading refuses it
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"),
              metadata=metadata(mean, std, 0.3, "s-drdin", 8))
    with pytest.raises(WeightsError):
        load_candidate("he-til", tmp_path / "bad.safetensors", "cpu")
    with pytest.raises(InputError, match="does not exist"):
        load_candidate("he-til", tmp_path / "none.safetensors", "cpu")


def test_the_card_sets_the_per_source_validation_beside_the_previous_versions():
    from core.training.sdrdin_card import add_previous_comparison

    def source(det, imm, recall):
        return {"detection": {"f1": det}, "roles": {"immune": {"f1": imm}, "tumour": {"f1": 0.5}, "stroma": {"f1": 0.4}},
                "immune_recall": recall}

    previous = {"weights_file": "he-til-sdrdin-v3.safetensors", "version": "3.0.0",
                "metrics": {"validation_by_source": {"crc": source(0.76, 0.66, 0.60), "brca-m2c": source(0.83, 0.44, 0.32)}}}
    card = {"limitations": ["per source ...", "mpp"],
            "metrics": {"validation_by_source": {"crc": source(0.756, 0.667, 0.66), "brca-m2c": source(0.868, 0.782, 0.84),
                                                 "consep": source(0.6, 0.68, 0.69)}}}
    add_previous_comparison(card, previous)
    table = card["metrics"]["validation_by_source_vs_previous"]["by_source"]
    assert set(table) == {"crc", "brca-m2c"}  # only sources both versions were scored on
    assert table["brca-m2c"]["immune_f1"] == {"previous": 0.44, "this": 0.782}
    assert card["limitations"][1].startswith("Against he-til-sdrdin-v3.safetensors (version 3.0.0)")
    assert "brca-m2c: detection F1 0.83 → 0.87, immune F1 0.44 → 0.78, immune nuclei found and called immune 32% → 84%" \
        in card["limitations"][1]
    with pytest.raises(ValueError, match="per-source validation"):
        add_previous_comparison(card, {"metrics": {}})
