"""tissue-compartments (CD-UNET, issue 18): network, compartment recipe, weak labels, training, evaluation, outputs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from core.errors import InputError
from core.generator.compartments import COMPARTMENT_LABELS, COMPARTMENTS, STAINS, generate_compartments
from core.nets.cd_unet import CLASSES, CDUNet, ColourDeconvolution
from core.spatial.predicted_compartments import (
    compartment_masks,
    compartment_statistics,
    label_map_regions,
    stromal_til_percent,
)
from core.training.compartment_labels import IGNORE, NOT_NECROSIS, LabelledField, field_labels, weak_compartment_labels

# ---------------------------------------------------------------------------------------------- network (§3.2)


def test_cd_unet_shapes_padding_and_the_two_1x1_colour_deconvolution_layers():
    net = CDUNet(base=4, depth=2).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        y = net(x)
        d = net.deconvolved(x)
    assert y.shape == (2, 4, 32, 48) and y.dtype == torch.float32  # zero padding keeps the size
    assert net.size_multiple == 4 and net.variant == "cd-unet" and CLASSES == ("background", "tumour", "stroma", "necrosis")
    cd = net.cd
    assert isinstance(cd, ColourDeconvolution)
    convs = [m for m in cd.modules() if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(6, 3, 1, 1), (3, 6, 1, 1)]  # 6 shades, then 3 channels
    for layer in (cd.layer1, cd.layer2):  # each 1 x 1 convolution: BN then ReLU
        assert [type(m) for m in layer] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert d.shape == (2, 3, 32, 48) and float(d.min()) >= 0.0
    # batch normalisation after every convolution except the logits
    n_conv = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in net.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert n_bn == n_conv - 1
    assert all(m.padding == (m.kernel_size[0] // 2,) * 2 for m in net.modules() if isinstance(m, nn.Conv2d))


def test_plain_unet_is_the_same_network_without_the_colour_deconvolution_segment():
    cd, plain = CDUNet(base=4, depth=2), CDUNet(base=4, depth=2, colour_deconvolution=False)
    assert plain.variant == "unet" and isinstance(plain.cd, nn.Identity)
    extra = sum(p.numel() for p in cd.cd.parameters())
    assert extra == (3 * 6 + 2 * 6) + (6 * 3 + 2 * 3)  # two 1x1 convs without bias + their BN affine
    assert cd.n_parameters() - plain.n_parameters() == extra
    with pytest.raises(RuntimeError):
        plain.deconvolved(torch.rand(1, 3, 8, 8))
    # paper width: the first U-Net level has 32 filters, half of the original 64
    assert CDUNet().config["base"] == 32 and CDUNet().down[0][0][0].out_channels == 32


def test_fusing_batch_norm_keeps_the_eval_function_in_both_layouts():
    torch.manual_seed(5)
    net = CDUNet(base=4, depth=2)
    for m in net.modules():  # running statistics and affine parameters away from their defaults
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    net.eval()
    x = torch.rand(2, 3, 24, 32)
    with torch.no_grad():
        before = net(x)
        net.fuse_batch_norm_()
        after = net(x)
        after_nhwc = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after_nhwc, before, atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="eval"):
        CDUNet(base=4, depth=2).train().fuse_batch_norm_()


# ---------------------------------------------------------------------------------------------- compartment recipe


def test_recipe_is_deterministic_and_labels_are_the_four_compartments():
    a = generate_compartments((96, 128), seed=5)
    b = generate_compartments((96, 128), seed=5)
    c = generate_compartments((96, 128), seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.cells.equals(b.cells) and a.stain == b.stain
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (96, 128, 3) and a.image.dtype == np.uint8
    assert a.labels.shape == (96, 128) and a.labels.dtype == np.uint8
    seen = set()
    for seed in range(12):
        s = generate_compartments((128, 128), seed=seed)
        assert set(np.unique(s.labels)) <= {0, 1, 2, 3}
        seen |= set(np.unique(s.labels).tolist())
        assert set(s.cells["compartment"]) <= {0, 1, 2, 3}
        lym = s.cells[s.cells["kind"] == "lymphocyte"]
        assert (lym["role"] == "immune").all()
        til = s.stromal_til_percent
        assert til is None or 0.0 <= til <= 100.0
    assert seen == {0, 1, 2, 3}
    assert COMPARTMENT_LABELS == {"background": 0, "tumour": 1, "stroma": 2, "necrosis": 3}
    with pytest.raises(InputError):
        generate_compartments((64, 64), 0, stain="not-a-stain")
    with pytest.raises(InputError):
        generate_compartments((8, 64), 0)


def test_every_stain_renders_fast_and_ihc_has_no_eosin():
    import time

    from core.generator.stains import concentrations

    times = []
    for k, stain in enumerate(STAINS):
        t = time.process_time()  # CPU time of this process: the test machine's other jobs do not count
        s = generate_compartments((256, 256), seed=40 + k, stain=stain)
        times.append(time.process_time() - t)
        assert s.stain == stain
    assert np.median(times) < 1.0, times  # well under a second per 256 x 256 section
    # two-stain deconvolution with the estimated H&E vectors: eosin in H&E stroma, none in IHC stroma
    hv, ev = (0.6092, 0.734, 0.3001), (0.4216, 0.8209, 0.3851)
    for seed in (3, 4):
        he = generate_compartments((128, 128), seed=seed, stain="he")
        ihc = generate_compartments((128, 128), seed=seed, stain="pd1")
        assert (he.labels == 2).any() and (ihc.labels == 2).any()
        e_he = np.median(concentrations(he.image, [hv, ev])[..., 1][he.labels == 2])
        e_ihc = np.median(concentrations(ihc.image, [hv, ev])[..., 1][ihc.labels == 2])
        assert e_he > 0.15 and e_ihc < 0.05, (e_he, e_ihc)


def test_pen_marks_and_glass_are_background():
    rec = replace(COMPARTMENTS, pen_probability=1.0, glass_probability=0.0, necrosis_probability=0.0)
    s = generate_compartments((128, 128), seed=2, stain="he", recipe=rec)
    assert (s.labels == 0).sum() > 50  # the ink strokes
    dark = s.image.mean(axis=-1) < 120
    assert (s.labels[dark & (s.labels == 0)]).size > 0
    rec = replace(COMPARTMENTS, glass_probability=1.0, pen_probability=0.0, glass_fraction=(0.3, 0.3))
    s = generate_compartments((128, 128), seed=4, stain="he", recipe=rec)
    glass = s.labels == 0
    assert 0.15 < glass.mean() < 0.6
    assert s.image[glass].mean() > s.image[~glass].mean() + 20  # glass is bright


# ---------------------------------------------------------------------------------------------- weak labels


def _clusters():
    rng = np.random.default_rng(0)
    tum = rng.uniform([10, 10], [40, 40], (30, 2))
    stro = rng.uniform([90, 90], [120, 120], (30, 2))
    mixed = np.r_[rng.uniform([10, 90], [40, 120], (6, 2)), rng.uniform([10, 90], [40, 120], (6, 2))]
    imm = rng.uniform([90, 10], [120, 40], (40, 2))
    xy = np.r_[tum, stro, mixed, imm]
    roles = np.array(["tumour"] * 30 + ["stroma"] * 30 + ["tumour"] * 6 + ["stroma"] * 6 + ["immune"] * 40)
    return xy, roles


def test_weak_label_rule_on_constructed_points():
    xy, roles = _clusters()
    lab = weak_compartment_labels((130, 130), xy, roles, mpp=1.0, radius_um=10.0, min_cells=3, purity=0.75)
    assert lab.dtype == np.uint8
    assert lab[25, 25] == COMPARTMENT_LABELS["tumour"]
    assert lab[105, 105] == COMPARTMENT_LABELS["stroma"]
    assert lab[105, 25] == IGNORE  # half tumour, half stroma: unknown
    assert lab[25, 105] == IGNORE  # immune cells do not vote
    assert lab[65, 65] == IGNORE  # no annotated nucleus nearby
    # the radius is in µm: at 0.5 µm/px the same points (in µm) give the same answer
    lab2 = weak_compartment_labels((260, 260), xy * 2, roles, mpp=0.5, radius_um=10.0)
    assert lab2[50, 50] == 1 and lab2[210, 210] == 2
    # one tumour nucleus is not enough
    one = weak_compartment_labels((40, 40), np.array([[20.0, 20.0]]), np.array(["tumour"]), 1.0, 10.0, min_cells=3)
    assert (one == IGNORE).all()
    with pytest.raises(InputError):
        weak_compartment_labels((40, 40), xy, roles[:3], 1.0)
    # glass overrides: a white field with tumour points is background
    rgb = np.full((130, 130, 3), 250, np.uint8)
    rgb[:60, :60] = (180, 90, 160)
    lab3 = field_labels(rgb, xy, roles, 1.0, radius_um=10.0)
    assert lab3[25, 25] == 1 and lab3[100, 100] == 0


# ---------------------------------------------------------------------------------------------- training


def test_set_cross_entropy_and_median_frequency_weights():
    from core.training.cd_unet import median_frequency_weights, set_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    assert torch.allclose(set_cross_entropy(logits, target), F.cross_entropy(logits, target), atol=1e-5)
    ign = target.clone()
    ign[0] = IGNORE
    assert torch.allclose(set_cross_entropy(logits, ign), F.cross_entropy(logits[1:], target[1:]), atol=1e-5)
    nn_ = torch.full((1, 5, 6), NOT_NECROSIS)
    p3 = torch.softmax(logits[:1], 1)[:, 3]
    assert torch.allclose(set_cross_entropy(logits[:1], nn_), (-torch.log(1 - p3)).mean(), atol=1e-5)
    assert float(set_cross_entropy(logits, torch.full_like(target, IGNORE))) == 0.0
    maps = [np.array([[0, 0, 0, 1]], np.uint8), np.array([[2, 2, 3, 3]], np.uint8)]
    w = median_frequency_weights(maps)
    # freq: background 3/4, tumour 1/4, stroma 2/4, necrosis 2/4; median 0.5
    np.testing.assert_allclose(w, [0.5 / 0.75, 2.0, 1.0, 1.0], rtol=1e-6)


def _args(tmp_path, **kw):
    from core.training.cd_unet import build_parser

    base = ["--base", "4", "--depth", "2", "--crop", "32", "--batch", "2", "--pool", "2", "--pool-size", "64",
            "--max-steps", "3", "--tune-per-stain", "0", "--eval-minutes", "100", "--threads", "1",
            "--out", str(tmp_path / "tc.safetensors")]
    args = build_parser().parse_args(base)
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_training_smoke_mixes_synthetic_real_and_necrosis_and_warm_starts(tmp_path):
    from core.evaluation.compartments import load_weights
    from core.training.cd_unet import train

    s = generate_compartments((48, 48), seed=9, stain="he")
    real = LabelledField("r", "crc", "fit", s.image, np.where(s.labels == 1, 1, IGNORE).astype(np.uint8),
                         np.array([[10.0, 10.0]]), np.array(["tumour"], dtype=object))
    nec = LabelledField("n", "necrosis", "train", s.image, np.full((48, 48), NOT_NECROSIS, np.uint8), np.zeros((0, 2)),
                        np.zeros(0, dtype=object))
    args = _args(tmp_path, sources=["crc"])
    res = train(args, real_fields={"crc": [real]}, necrosis=[nec], tune_fields={"crc": [real]})
    assert res["steps"] == 3 and res["accepted"] and "selection rule" not in res  # the rule is under its own key
    assert res["selection_rule"].startswith("score = 0.5 x synthetic macro F1")
    assert res["data"]["shares"] == {"synthetic": 0.6, "necrosis": 0.1, "real:crc": 0.3}
    rec = json.loads((tmp_path / "tc.train.json").read_text())
    assert rec["history"][-1]["tune"]["real"]["crc"]["n_tumour_cells"] == 1
    net, meta = load_weights(tmp_path / "tc.safetensors")
    assert meta["model"] == "CD-UNET" and json.loads(meta["classes"]) == list(CLASSES) and meta["mpp"] == "1.0"
    assert net.config == {"n_classes": 4, "base": 4, "depth": 2, "colour_deconvolution": True, "shades": 6}
    # the held-out evaluation and the model card built from the records
    from core.evaluation.compartments import evaluate_necrosis, evaluate_real, evaluate_synthetic
    from core.training.cd_unet_card import build_card

    ev = {"synthetic": evaluate_synthetic(net, per_stain=1, size_px=64, stains=("he", "pd1")),
          "real_weak_labels": evaluate_real(net, "validation", ("crc",), fields={"crc": [real]}),
          "real_necrosis": evaluate_necrosis(net, fields=[nec])}
    assert set(ev["synthetic"]["per_stain"]) == {"he", "pd1"} and ev["synthetic"]["stromal_til"]["n_sections"] <= 2
    assert ev["real_weak_labels"]["crc"]["judged"]["n_tumour_cells"] == 1
    card = build_card(tmp_path / "tc.safetensors", rec, ev, unet_evaluation=ev)
    for field in ("version", "training_data", "metrics", "intended_use", "limitations"):
        assert card[field]
    assert "not a diagnostic device" in card["intended_use"] and card["trained_on_synthetic"] is False
    assert card["metrics"]["paper_table2_testing_f1"]["cd-unet"]["necrosis"] == 0.80
    assert set(card["metrics"]["cd_unet_vs_unet"]["per_stain_macro_f1"]) == {"he", "pd1"}
    assert card["metrics"]["cd_unet_vs_unet"]["cd_unet_weights"] == "the shipped weights"
    # a separate from-scratch CD-UNET re-run at the U-Net's budget is what the held-out comparison then reads
    unet_rec = dict(rec, variant="unet")
    rerun = build_card(tmp_path / "tc.safetensors", dict(rec, init="runs/stage1.safetensors"), ev,
                       unet_evaluation=ev, unet_train=unet_rec, equal_cd_train=rec, equal_cd_evaluation=ev)
    vs = rerun["metrics"]["cd_unet_vs_unet"]
    assert vs["equal_budget"] and vs["cd_unet_weights"].startswith("a from-scratch re-run")
    assert "held-out synthetic sections, both trained" in rerun["limitations"][0]
    with pytest.raises(ValueError, match="needs the U-Net's training record"):
        build_card(tmp_path / "tc.safetensors", rec, ev, equal_cd_train=rec)
    # warm start: same configuration works, another one is refused
    args2 = _args(tmp_path, sources=["crc"], init=str(tmp_path / "tc.safetensors"), out=str(tmp_path / "tc2.safetensors"),
                  max_steps=1)
    res2 = train(args2, real_fields={"crc": [real]}, necrosis=[], tune_fields={"crc": [real]})
    assert res2["init_tune"] is not None and isinstance(res2["accepted"], bool)
    args3 = _args(tmp_path, variant="unet", init=str(tmp_path / "tc.safetensors"), out=str(tmp_path / "tc3.safetensors"))
    with pytest.raises(ValueError, match="configuration"):
        train(args3, real_fields={}, necrosis=[], tune_fields={})


def _record(variant, per_stain, seed=1, minutes=45.0):
    """A training record of core.training.cd_unet with what the card's comparison reads."""
    return {"variant": variant, "minutes": minutes, "seed": seed, "lr": 1e-3, "optimizer": "adam", "crop_px": 160,
            "batch": 8, "sources": ["crc"], "init": None, "steps": 100, "seconds_per_step": 2.0, "parameters": 10,
            "config": {"base": 16, "depth": 4}, "tune_sets": {"synthetic_per_stain": 2},
            "data": {"pool": 240, "pool_size_px": 320, "pool_seeds": [100000, 100239]},
            "best_tune": {"synthetic_macro_f1": float(np.mean(list(per_stain.values()))),
                          "synthetic_per_stain_macro_f1": per_stain,
                          "synthetic_per_class_f1": {"background": 0.9, "tumour": 0.5, "stroma": 0.8, "necrosis": 0.7},
                          "real": {"crc": {"tumour_cells_in_tumour": 0.5}}}}


def test_equal_budget_comparison_reads_the_unets_hardest_stains_and_refuses_unequal_budgets():
    from core.training.cd_unet_card import _unet_sentence, equal_budget_record, tune_comparison

    cd = _record("cd-unet", {"he": 0.70, "cea": 0.60, "pd1": 0.80, "foxp3": 0.75})
    unet = _record("unet", {"he": 0.72, "cea": 0.50, "pd1": 0.60, "foxp3": 0.65})
    t = tune_comparison(cd, unet)
    assert t["unet_hardest_stains"] == ["cea", "pd1", "foxp3"] and t["cd_unet_better_on_all_hardest"]
    assert t["per_stain_macro_f1"]["he"] == {"cd-unet": 0.70, "unet": 0.72}
    assert "better on the three stains the U-Net finds hardest (cea 0.60 vs 0.50" in _unet_sentence(t)
    worse = tune_comparison(_record("cd-unet", {"he": 0.70, "cea": 0.40, "pd1": 0.80, "foxp3": 0.75}), unet)
    assert not worse["cd_unet_better_on_all_hardest"] and "not better" in _unet_sentence(worse)
    # a later stage (warm start, other seed) is not the U-Net's equal; the first stage is found among the stages
    later = dict(_record("cd-unet", {"he": 0.9}, seed=2), init="runs/stage1.safetensors")
    assert equal_budget_record([cd, later], unet) is cd and equal_budget_record([later], unet) is None
    with pytest.raises(ValueError, match="seed, init differ"):
        tune_comparison(later, unet)
    with pytest.raises(ValueError, match="cd-unet and a unet"):
        tune_comparison(unet, cd)
    assert "has not been run" in _unet_sentence(None)
    heldout = {"cd_unet_better_on_all_hardest": False, "minutes": 45.0, "unet_hardest_stains": ["cea"],
               "per_stain_macro_f1": {"cea": {"cd-unet": 0.41, "unet": 0.52}},
               "per_class_f1": {"tumour": {"cd-unet": 0.7, "unet": 0.75}}}
    text = _unet_sentence(t, heldout)  # the held-out comparison wins over the tune-set one
    assert "held-out" in text and "not better" in text and "cea 0.41 vs 0.52" in text and "tumour 0.70 vs 0.75" in text
    slow = dict(cd, steps=25)  # the same minutes on a loaded machine: a quarter of the steps
    with pytest.raises(ValueError, match=r"steps \(25 vs 100\) differ"):
        tune_comparison(slow, unet)


# ---------------------------------------------------------------------------------------------- evaluation metrics


def test_confusion_f1_and_point_shares_on_constructed_maps():
    from core.evaluation.compartments import confusion, f1_from_confusion, macro_f1, point_shares

    truth = np.array([[0, 1, 1, 2], [2, 2, 3, IGNORE]], np.uint8)
    pred = np.array([[0, 1, 2, 2], [2, 1, 3, 0]], np.uint8)
    cm = confusion(pred, truth)
    assert cm.sum() == 7 and cm[1, 1] == 1 and cm[1, 2] == 1 and cm[2, 1] == 1
    f1 = f1_from_confusion(cm)
    assert f1["background"]["f1"] == 1.0 and f1["necrosis"]["f1"] == 1.0
    assert f1["tumour"]["f1"] == 0.5 and math.isclose(f1["stroma"]["f1"], 2 * 2 / (2 * 2 + 1 + 1), abs_tol=1e-4)
    assert macro_f1(f1) == round((1 + 0.5 + 4 / 6 + 1) / 4, 4)
    # a class absent from the truth but predicted: no F1 (left out of the macro mean), its false area kept
    cm2 = confusion(np.array([[0, 3]], np.uint8), np.array([[0, 0]], np.uint8))
    f2 = f1_from_confusion(cm2)
    assert f2["necrosis"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0, "predicted": 1}
    assert f2["tumour"]["precision"] is None and macro_f1(f2) == f2["background"]["f1"] == round(2 / 3, 4)
    from core.evaluation.compartments import _where_stromal_lymphocytes_go

    truth3 = np.full((10, 10), 2, np.uint8)
    truth3[:, 8:] = 1
    pred3 = truth3.copy()
    pred3[:, :3] = 1  # stroma on the left predicted as tumour
    lym = np.array([[1.0, 1], [1.2, 5], [5, 5], [6, 2], [9, 9]])  # two in the left strip, two in stroma, one in tumour
    assert _where_stromal_lymphocytes_go(truth3, pred3, lym) == {"background": 0.0, "tumour": 0.5, "stroma": 0.5, "necrosis": 0.0}
    assert _where_stromal_lymphocytes_go(truth3, pred3, lym[4:]) is None
    lab = np.zeros((20, 20), np.uint8)
    lab[:, :10] = 1
    lab[:, 10:] = 2
    xy = np.array([[2.0, 2], [5, 5], [15, 5], [12, 12], [3, 12], [18.4, 3]])
    roles = np.array(["tumour", "tumour", "tumour", "stroma", "stroma", "immune"])
    sh = point_shares(lab, xy, roles)
    assert sh == {"n_tumour": 3, "tumour_in_tumour": 2, "n_stroma": 2, "stroma_in_stroma": 1}


def test_stromal_til_percent_by_the_tils_working_group_definition():
    lab = np.full((100, 100), 2, np.uint8)  # all stroma, 1 µm/px
    lab[:, 80:] = 3  # necrosis is not stroma
    one = stromal_til_percent(lab, 1.0, np.array([[40.0, 50.0]]), immune_cell_area_um2=math.pi * 5**2)
    assert one["available"] and one["n_immune_in_stroma"] == 1
    assert abs(one["covered_area_mm2"] * 1e6 - math.pi * 25) < 12  # disc of radius 5 µm on the raster
    assert abs(one["percent"] - 100 * math.pi * 25 / 8000) < 0.2
    # two cells on the same spot cover it once; a cell in necrosis does not count
    two = stromal_til_percent(lab, 1.0, np.array([[40.0, 50.0], [40.0, 50.0], [90.0, 50.0]]), math.pi * 25)
    assert two["percent"] == one["percent"] and two["n_immune_in_stroma"] == 2
    full = stromal_til_percent(lab, 1.0, np.array([[x, y] for x in range(0, 80, 3) for y in range(0, 100, 3)], float))
    assert full["percent"] == 100.0
    none = stromal_til_percent(np.ones((10, 10), np.uint8), 1.0, np.zeros((0, 2)))
    assert not none["available"] and none["percent"] is None
    with pytest.raises(InputError):
        stromal_til_percent(lab, None, np.zeros((0, 2)))


def test_predicted_compartments_band_regions_and_densities():
    lab = np.full((200, 300), 2, np.uint8)
    lab[:, :150] = 1  # tumour left of x = 150 px, stroma right
    lab[:20, 250:] = 0  # a corner of glass
    mpp = 2.0
    m = compartment_masks(lab, mpp, band_width_um=100.0)
    # band of 100 µm = ±25 px around the border at x = 149.5
    cols = np.nonzero(m["margin"][100])[0]
    assert cols.min() == 125 and cols.max() == 174
    assert m["centre"][:, :124].all() and not m["centre"][:, 125:].any()
    assert not (m["margin"] & (lab == 0)).any()
    cells = pd.DataFrame({"x_px": [10.0, 140, 160, 200, 260, 280], "y_px": [50.0, 50, 50, 50, 10, 100],
                          "role": ["immune", "immune", "immune", "immune", "immune", "tumour"]})
    st = compartment_statistics(lab, mpp, cells, band_width_um=100.0)
    assert st["n_immune"] == {"tumour": 2, "stroma": 2, "margin": 2, "centre": 1}
    assert st["n_immune_excluded"] == 1
    assert math.isclose(st["areas_mm2"]["tumour"], 200 * 150 * 4 / 1e6)
    assert math.isclose(st["immune_density_per_mm2"]["tumour"], 2 / st["areas_mm2"]["tumour"])
    regions = label_map_regions(lab, mpp)
    kinds = sorted({r.kind for r in regions})
    assert kinds == ["exclude", "stroma", "tumour"]
    tum = [r for r in regions if r.kind == "tumour"]
    assert len(tum) == 1 and abs(tum[0].area_mm2 - st["areas_mm2"]["tumour"]) / st["areas_mm2"]["tumour"] < 0.01
    # the spatial statistics take them as drawn regions
    from core.spatial import SpatialParams, compute_spatial_stats

    cells_um = cells.assign(x_um=cells.x_px * mpp, y_um=cells.y_px * mpp)
    out = compute_spatial_stats(cells_um, regions, SpatialParams(n_simulations=0, window_um=(0, 0, 600, 400)))
    assert out["compartments"]["source"] == "tumour and stroma regions"
    assert out["compartments"]["n_immune_intratumoral"] == 2


def test_stromal_til_from_predicted_equals_ground_truth_compartments_when_they_agree():
    s = generate_compartments((160, 160), seed=21, stain="he")
    lym = s.cells[s.cells["kind"] == "lymphocyte"][["x_px", "y_px"]].to_numpy()
    a = stromal_til_percent(s.labels, s.mpp, lym)
    assert a["available"] and 0 <= a["percent"] <= 100
    worse = s.labels.copy()
    worse[worse == 2] = 1  # all stroma called tumour: no stroma left
    assert not stromal_til_percent(worse, s.mpp, lym)["available"]


# ---------------------------------------------------------------------------------------------- outputs


def test_outputs_labels_png_geojson_and_areas():
    import io

    from PIL import Image

    from core.scenarios.compartments import CompartmentMap
    from core.spatial.regions import read_regions_geojson

    lab = np.zeros((60, 80), np.uint8)
    lab[5:35, 5:45] = 1
    lab[5:35, 50:75] = 2
    lab[40:55, 10:30] = 3
    cm = CompartmentMap(lab, mpp=1.0)
    s = cm.summary()
    assert s["labels"] == {"background": 0, "tumour": 1, "stroma": 2, "necrosis": 3}
    assert math.isclose(s["area_mm2"]["tumour"], 30 * 40 / 1e6)
    assert math.isclose(s["area_mm2"]["necrosis"], 15 * 20 / 1e6)
    assert math.isclose(sum(s["area_mm2"].values()), 60 * 80 / 1e6)
    png = Image.open(io.BytesIO(cm.png()))
    assert png.mode == "L" and png.size == (80, 60)
    np.testing.assert_array_equal(np.asarray(png), lab)
    gj = json.loads(cm.exports()["regions.geojson"])
    names = sorted(f["properties"]["classification"]["name"] for f in gj["features"])
    assert names == ["necrosis", "stroma", "tumour"]
    assert all(f["properties"]["objectType"] == "annotation" and f["geometry"]["type"] == "Polygon" for f in gj["features"])
    tum = next(f for f in gj["features"] if f["properties"]["classification"]["name"] == "tumour")
    assert abs(tum["properties"]["measurements"]["area_mm2"] - 30 * 40 / 1e6) / (30 * 40 / 1e6) < 0.06
    back = read_regions_geojson(gj, 1.0)
    assert sorted(r.kind for r in back) == ["exclude", "stroma", "tumour"]
    # at a finer mpp the necrosis patch (75 µm²) is below the polygon minimum and is left out of the polygons only
    fine = CompartmentMap(lab, mpp=0.5)
    assert "necrosis" not in {f["properties"]["classification"]["name"] for f in fine.geojson()["features"]}
    assert math.isclose(fine.summary()["area_mm2"]["necrosis"], 15 * 20 * 0.25 / 1e6)
    assert CompartmentMap(lab, None).summary()["area_mm2"] is None
    # the GeoJSON and the statistics' regions read the same outlines, traced once per label
    import core.scenarios.compartments as comp

    calls = []
    real = comp.mask_polygons
    comp.mask_polygons = lambda mask, *a: calls.append(1) or real(mask, *a)
    try:
        once = CompartmentMap(lab, mpp=1.0)
        once.geojson(), once.regions()
    finally:
        comp.mask_polygons = real
    assert len(calls) == 4  # tumour, stroma, necrosis for both, glass for the regions only
    assert [r.name for r in once.regions()] == [r.name for r in cm.regions()]
    with pytest.raises(InputError):
        CompartmentMap.from_probabilities(np.zeros((4, 4, 3)), 1.0)


def test_traced_outlines_are_valid_and_follow_the_mask():
    """Simplified outlines of a ragged mask with holes: valid polygons whose inside is the mask away from its edges."""
    import shapely
    from scipy import ndimage

    from core.spatial.predicted_compartments import mask_polygons

    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.random((160, 200)), 3) > 0.5  # many parts, holes, one-pixel necks
    polygons = mask_polygons(mask, min_area_px=1, simplify_px=0.5)
    geoms = [shapely.Polygon(outer, holes) for outer, holes in polygons]
    assert geoms and all(g.is_valid and g.area > 0 for g in geoms)
    union = shapely.union_all(geoms)
    inner = ndimage.binary_erosion(mask, iterations=2)
    outer = ndimage.binary_dilation(mask, iterations=2)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    inside = shapely.contains_xy(union, xx.ravel(), yy.ravel()).reshape(mask.shape)
    assert inside[inner].all() and not inside[~outer].any()  # pixel centres agree beyond the outline's 2 px
    assert abs(union.area - mask.sum()) < 0.5 * (mask ^ ndimage.binary_erosion(mask)).sum() + 1


def test_registry_entry_follows_the_registry_rules():
    from core.cells import ROLES
    from core.evaluation import EVALUATIONS
    from core.scenarios.registry import get_scenario
    from core.scenarios.spec import DENSE_MEANINGS, OUTPUT_KINDS

    sc = get_scenario("tissue-compartments")
    assert sc.model_card == "tissue-compartments-cdunet-s4.json" and sc.weights == "tissue-compartments-cdunet-s4.safetensors"
    assert sc.tiling.tile_px(sc.input_mpp) == 1024 and sc.tiling.overlap_px(sc.input_mpp) == 64
    assert all(c.role in ROLES and c.color.startswith("#") for c in sc.classes)
    assert all(o.kind in OUTPUT_KINDS for o in sc.outputs) and sc.outputs_of("regions")
    assert all(o.meaning in DENSE_MEANINGS for o in sc.outputs_of("dense"))
    assert sc.evaluation in EVALUATIONS and not sc.trained_on_synthetic
    assert [c.name for c in sc.classes] == list(CLASSES)
    assert sc.use.stains == ("he", "dab-hematoxylin")


def test_scenario_runner_gives_probabilities_at_the_image_size():
    from core.io import ImageData
    from core.scenarios.compartments import PROBABILITIES, CompartmentsModel
    from core.scenarios.registry import get_scenario
    from core.training.cd_unet import metadata

    net = CDUNet(base=4, depth=2)
    spec = get_scenario("tissue-compartments")
    assert spec.key == "tissue-compartments" and spec.input_mpp == 1.0 and spec.tiling.kind == "dense"
    assert spec.output(PROBABILITIES).class_names == CLASSES
    model = CompartmentsModel(spec, torch.device("cpu"), net.state_dict(), metadata(net, np.ones(4)))
    model.tile_px, model.overlap_px = 48, 8  # several windows
    s = generate_compartments((64, 80), seed=1, stain="he")
    image = ImageData.from_rgb(s.image, mpp=0.5, name="syn.png")
    cmap, out = model.compartments(image)
    assert out.dense[PROBABILITIES].shape == (64, 80, 4)
    np.testing.assert_allclose(out.dense[PROBABILITIES].sum(-1), 1.0, atol=1e-4)
    assert cmap.labels.shape == (64, 80) and cmap.labels.dtype == np.uint8 and len(out.cells) == 0
    with pytest.raises(Exception):
        CompartmentsModel(spec, torch.device("cpu"), {}, metadata(net, np.ones(4)))
