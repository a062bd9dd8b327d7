"""hoechst-lymphocytes (issue 19): network, normalisation, cell calls, HiPe, training, evaluation, channels, CLI.

Most tests use the registered entry with weights trained here for two steps on two tiles
(a smoke model: the contract is checked, not the accuracy); the registered v1 weights run in
tests/test_scenarios.py and the browser test (tests/test_browser_hoechst.py).
"""

from __future__ import annotations

import json
import shutil
import socket
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.evaluation.hoechst import (HOECHST_DATA_DIR, HoechstTile, Nuclei, bootstrap_intervals, pooled_metrics,
                                     rule_prediction, tile_counts, true_cells, tune_size_rule)
from core.nets.hoechst_unet import CLASS_SCHEMES, HoechstUNet, label_to_class
from core.scenarios.hoechst import (KEY, CellCallParams, cells_from_probabilities, model_from_file, normalise_hoechst,
                                    segment_nuclei)
from core.scenarios.registry import get_scenario

TILES = sorted(HOECHST_DATA_DIR.glob("*.tif"))


def _disk(shape, cx, cy, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# --------------------------------------------------------------------------- network


def test_network_shapes_classes_and_no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network tried to reach the internet")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    torch.manual_seed(0)
    net = HoechstUNet(4).eval()
    assert net.unet.encoder.conv1.in_channels == 1  # ResNet34 stem for one Hoechst channel
    assert 24.0e6 < sum(p.numel() for p in net.parameters()) < 25.0e6  # ResNet34 U-Net, 4 classes
    with torch.inference_mode():
        out = net(torch.rand(2, 1, 64, 96))
    assert out.shape == (2, 4, 64, 96) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 1, 64, 80))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.rand(1, 3, 64, 64))
    assert HoechstUNet(5, "resnet18", (16, 16, 16, 16, 16)).unet.segmentation_head[0].out_channels == 5
    # the data's labels 0-4 → background, CD3, CD8 (both CD3 levels), CD20
    labels = np.array([[0, 1, 2], [3, 4, 0]])
    assert label_to_class(labels, "merged").tolist() == [[0, 2, 1], [3, 2, 0]]
    assert label_to_class(labels, "paper").tolist() == labels.tolist()
    assert CLASS_SCHEMES["merged"] == ("background", "cd3", "cd8", "cd20")
    with pytest.raises(ValueError, match="outside 0-4"):
        label_to_class(np.array([[5]]), "merged")


# --------------------------------------------------------------------------- normalisation


def test_normalisation_is_the_same_for_8_16_bit_and_float():
    rng = np.random.default_rng(0)
    picture = rng.gamma(2.0, 1.0, (64, 64))
    picture[20:30, 20:30] += 20  # bright nuclei above the 99.8th percentile
    p8 = np.clip(picture / picture.max() * 255, 0, 255).round().astype(np.uint8)
    p16 = p8.astype(np.uint16) * 257  # the same picture in 16 bits
    p12 = p8.astype(np.uint16) * 16  # 12-bit data in 16-bit words
    pf = p8.astype(np.float32) / 255.0
    ref = normalise_hoechst(p8)
    assert ref.dtype == np.float32 and ref.shape == (64, 64) and ref.min() == 0.0 and ref.max() == 1.0
    for other in (p16, p12, pf, p16[..., None]):
        np.testing.assert_allclose(normalise_hoechst(other), ref, atol=1e-5)
    lo, hi = np.percentile(p8.astype(float), (1.0, 99.8))
    np.testing.assert_allclose(ref, np.clip((p8 - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert not normalise_hoechst(np.full((8, 8), 700, np.uint16)).any()  # uniform: zeros, no division by zero
    with pytest.raises(InputError, match="NaN"):
        normalise_hoechst(np.array([[0.0, np.nan], [1.0, 2.0]], np.float32))
    with pytest.raises(InputError, match="one Hoechst channel"):
        normalise_hoechst(np.zeros((8, 8, 3), np.uint16))


# --------------------------------------------------------------------------- cells from the map


def test_cell_calls_on_a_synthetic_map_with_known_cells():
    shape = (80, 100)
    prob = np.zeros(shape + (4,), np.float32)
    prob[..., 0] = 1.0
    cells = [((20, 20), 1), ((60, 20), 2), ((40, 60), 3), ((76, 60), 1), ((82, 60), 1)]  # the last two overlap
    for (cx, cy), k in cells:
        d = _disk(shape, cx, cy, 3.5)
        prob[d] = 0.0
        prob[d, 0] = 0.1
        prob[d, k] = 0.7
        prob[d, 1 + k % 3] += 0.2  # a runner-up class in every cell
    prob[5, 90] = (0.0, 0.0, 1.0, 0.0)  # a one-pixel speck, under 6 µm²
    xy, cls, p, labels = cells_from_probabilities(prob, mpp=1.0)
    assert len(xy) == 5
    order = np.lexsort((xy[:, 1], xy[:, 0]))
    np.testing.assert_allclose(xy[order], [[20, 20], [40, 60], [60, 20], [76, 60], [82, 60]], atol=1.0)
    assert cls[order].tolist() == [0, 2, 1, 0, 0]  # subtype index: cd3, cd20, cd8, cd3, cd3
    np.testing.assert_allclose(p, 0.7, atol=0.05)  # mean probability of the called subtype (disk rims included)
    assert labels.max() == 5 and labels[5, 90] == 0
    # with a smaller area limit the speck is a cell
    assert len(cells_from_probabilities(prob, mpp=1.0, params=CellCallParams(min_area_um2=0.5))[0]) == 6


def test_nuclei_segmentation_finds_round_nuclei():
    img = np.zeros((64, 64), np.float32)
    centres = [(15, 15), (45, 15), (30, 45)]
    for cx, cy in centres:
        img[_disk(img.shape, cx, cy, 4)] = 1.0
    xy, area, labels = segment_nuclei(img, mpp=1.0)
    assert len(xy) == 3 and labels.max() == 3
    np.testing.assert_allclose(np.sort(xy[:, 0]), [15, 30, 45], atol=1.0)
    np.testing.assert_allclose(area, np.pi * 16, rtol=0.2)


# --------------------------------------------------------------------------- HiPe


def test_hipe_on_a_toy_model_whose_answer_is_known():
    from core.explain.hipe import hierarchical_perturbation

    torch.manual_seed(0)
    x = torch.rand(1, 1, 64, 64) + 0.5
    square = (slice(20, 28), slice(36, 44))
    calls = []
    r = hierarchical_perturbation(lambda b: b[:, 0, 20:28, 36:44].mean(dim=(1, 2)), x,
                                  progress=lambda d, t: calls.append((d, t)))
    s = r.saliency
    assert s.shape == (64, 64) and s.dtype == np.float32 and s.min() >= 0
    iy, ix = np.unravel_index(s.argmax(), s.shape)
    assert 20 <= iy < 28 and 36 <= ix < 44  # the most salient pixel is where the answer is read
    assert s[square].mean() > 5 * s.mean()
    assert s[:8, :8].max() == 0 and s[56:, :16].max() == 0  # fading far from the square changes nothing
    assert r.masks_per_level[0] == 81 and len(r.masks_per_level) == 2  # 8 x 8 grid: 9 x 9 windows; then refined
    assert r.masks_per_level[1] < 17 ** 2  # only the salient windows are refined
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(d <= t for d, t in calls) and done[-1] == r.evaluations
    capped = hierarchical_perturbation(lambda b: b[:, 0, 20:28, 36:44].mean(dim=(1, 2)), x, max_evaluations=30)
    assert capped.evaluations == 30 and capped.truncated
    with pytest.raises(InputError, match="perturbation"):
        hierarchical_perturbation(lambda b: b.mean(dim=(1, 2, 3)), x, perturbation="noise")


# --------------------------------------------------------------------------- training (smoke) and the scenario


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Weights trained for 2 steps (plus 1 pre-training step) on one tile, and a second tile held out."""
    from core.evaluation.hoechst import read_tiles
    from core.training.hoechst import _add_common, train_model

    import argparse

    data = tmp_path_factory.mktemp("tiles")
    for tif in TILES[1:3]:
        shutil.copy(tif, data / tif.name)
        shutil.copy(tif.with_name(tif.stem + "_labels.png"), data)
    p = argparse.ArgumentParser()
    _add_common(p)
    # a lighter encoder and decoder than the paper's keep the smoke run fast; the scenario reads both from the metadata
    args = p.parse_args(["--data", str(data), "--max-steps", "2", "--minutes", "0", "--crop", "64", "--batch", "2",
                         "--pretrain-minutes", "0.001", "--log-every", "1", "--device", "cpu", "--encoder", "resnet18",
                         "--decoder-channels", "32", "16", "16", "16", "8"])
    tiles = read_tiles(data)
    out = tmp_path_factory.mktemp("weights") / "smoke.safetensors"
    record = train_model(args, tiles[:1], tiles[1:], out)
    return Namespace(data=data, tiles=tiles, weights=out, record=record)


def test_training_smoke_writes_weights_metadata_and_record(smoke):
    from safetensors import safe_open

    rec = smoke.record
    assert rec["steps"] == 2 and rec["pretrain"]["steps"] >= 1
    assert rec["fit_tiles"] == [smoke.tiles[0].name] and rec["held_out_tiles"] == [smoke.tiles[1].name]
    assert rec["classes"] == ["background", "cd3", "cd8", "cd20"] and rec["class_weights"][0] == 1.0
    assert max(rec["class_weights"]) <= 25 and "Pre-registered selection rule" in rec["selection_rule"]
    assert set(rec["held_out_centroid"]) == {"cd3", "cd8", "cd20"}
    assert json.loads(smoke.weights.with_suffix(".train.json").read_text())["steps"] == 2
    with safe_open(str(smoke.weights), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["classes"]) == ["background", "cd3", "cd8", "cd20"]
    assert json.loads(meta["percentiles"]) == [1.0, 99.8] and meta["encoder"] == "resnet18"


def test_crop_sampler_augments_within_range_and_keeps_labels_aligned(smoke):
    from core.training.hoechst import CropSampler, load_training_tiles

    tiles = load_training_tiles(smoke.tiles, "merged")
    sampler = CropSampler(tiles, 64, torch.Generator().manual_seed(0), focus_share=1.0)
    x, y = sampler.batch(6)
    assert x.shape == (6, 1, 64, 64) and y.shape == (6, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3} and (y > 0).any(axis=(1, 2)).all()  # every crop holds a cell
    with pytest.raises(ValueError, match="multiple of 32"):
        CropSampler(tiles, 50, torch.Generator())


def test_scenario_analyze_gives_the_cell_table_and_maps(smoke):
    from core.io import ImageData, load_image, pick_channel

    model = model_from_file(smoke.weights)
    tile = pick_channel(load_image(TILES[2]), "H3342", "Hoechst")
    image = ImageData(tile.data[:160, :128], tile.mpp, tile.name, tile.sha256, channel_names=("Hoechst",))
    out = model.analyze(image)
    assert list(out.cells.columns[:7]) == ["x_px", "y_px", "x_um", "y_um", "cell_class", "role", "probability"]
    assert set(out.cells["role"]) <= {"immune"} and set(out.cells["cell_class"]) <= {"cd3", "cd8", "cd20"}
    assert out.dense["lymphocyte"].shape == (160, 128) and out.dense["subtypes"].shape == (160, 128, 4)
    np.testing.assert_allclose(out.dense["subtypes"].sum(axis=-1), 1.0, atol=1e-4)
    assert np.isfinite(out.dense["subtypes"]).all()
    again = model.analyze(image)
    np.testing.assert_array_equal(out.dense["subtypes"], again.dense["subtypes"])  # deterministic
    calls = []
    maps = model.saliency_maps(image.data[:64, :64, 0], progress=lambda d, t: calls.append((d, t)), max_evaluations=4)
    assert list(maps) == ["cd3", "cd8", "cd20"] and all(m.shape == (64, 64) and m.min() >= 0 for m in maps.values())
    assert calls[-1] == (12, 12) and all(d <= t for d, t in calls)  # one bar over the three classes
    with pytest.raises(InputError, match="unknown class"):
        model.saliency(image.data[:64, :64, 0], "cd4")


# --------------------------------------------------------------------------- evaluation


def test_evaluation_counts_on_a_constructed_case():
    shape = (128, 128)
    truth = np.zeros(shape, np.int64)
    for cx, cy, k in [(10, 10, 1), (40, 10, 1), (100, 100, 2), (70, 30, 3)]:
        truth[_disk(shape, cx, cy, 3)] = k
    xy, cls = true_cells(truth, 4)
    assert len(xy) == 4 and sorted(cls.tolist()) == [0, 0, 1, 2]
    pred_map = np.zeros(shape, np.int64)
    pred_map[_disk(shape, 10, 10, 3)] = 1  # CD3 right
    pred_map[_disk(shape, 100, 100, 3)] = 1  # CD8 called CD3
    pred_xy = np.array([[11.0, 10.0], [100.0, 102.0], [120.0, 5.0]])  # third: a CD3 where there is no cell
    pred_cls = np.array([0, 0, 0])
    c = tile_counts(pred_map, pred_xy, pred_cls, truth, 4, mpp=1.0)
    assert c["centroid"].tolist() == [[1, 2, 1], [0, 0, 1], [0, 0, 1]]
    disk_px = int(_disk(shape, 10, 10, 3).sum())
    assert c["pixel"][0].tolist() == [disk_px, disk_px, disk_px] and c["pixel"][1].tolist() == [0, 0, disk_px]
    # presence in 64 µm windows (2 x 2 per tile): CD3 predicted in 3 windows, present in 1 of them, absent from 1
    assert c["presence"][0].tolist() == [1, 2, 0, 1] and c["n_true"].tolist() == [2, 1, 1]
    names = ("cd3", "cd8", "cd20")
    m = pooled_metrics([c, c], names)
    assert m["centroid"]["cd3"]["tp"] == 2 and m["centroid"]["cd3"]["f1"] == pytest.approx(0.4)  # P 1/3, R 1/2
    ci = bootstrap_intervals([c, c, c], names, {"same": [c, c, c]}, n_resamples=50)
    assert ci["centroid"]["cd3"] == [pytest.approx(0.4), pytest.approx(0.4)]  # identical tiles: no spread
    assert ci["centroid_f1_minus_same"]["cd3"] == [0.0, 0.0] and ci["unit"] == "tile"


def test_size_rule_baseline_learns_small_nuclei():
    rng = np.random.default_rng(1)
    shape = (96, 96)
    hoechst = rng.integers(200, 260, shape).astype(np.uint16)
    labels = np.zeros(shape, np.uint8)
    small = [(15, 15), (15, 50), (50, 80), (80, 15)]
    big = [(50, 35), (80, 60)]
    for cx, cy in small:
        hoechst[_disk(shape, cx, cy, 3)] = 3000
        labels[_disk(shape, cx, cy, 3)] = 2  # CD3
    for cx, cy in big:
        hoechst[_disk(shape, cx, cy, 7)] = 2500
    tile = HoechstTile("synthetic", 0, 0, hoechst, labels, 1.0, ("Hoechst",))
    xy, area, lab = segment_nuclei(normalise_hoechst(hoechst), 1.0)
    nuclei = Nuclei(xy, area, lab)
    assert len(xy) == 6
    rule = tune_size_rule([tile], [nuclei], 0, "merged")
    assert rule["train_centroid_f1"] == 1.0 and rule["area_range_um2"][1] < np.pi * 49
    _, pxy, pcls = rule_prediction(nuclei, 0, None)
    assert len(pxy) == 6 and set(pcls.tolist()) == {0}  # "every nucleus is CD3"


def test_cross_validation_evaluation_and_model_card(smoke, tmp_path):
    from core.evaluation import evaluate
    from core.model_card import render_markdown
    from core.training.hoechst_card import build_card, caution

    rec = {"data": str(smoke.data), "classes": "merged",
           "folds": [{"fold": i, "held_out": [t.name], "weights": str(smoke.weights), "train_json": "x"}
                     for i, t in enumerate(smoke.tiles)], "selection_rule": "fixed"}
    cv = tmp_path / "cv.json"
    cv.write_text(json.dumps(rec))
    args = Namespace(split="validation", data=str(smoke.data), cv_record=str(cv), weights=None, device="cpu",
                     precision="float32", restained=False, dataset=None)
    result = evaluate(KEY, args)  # the registered recipe, on the smoke folds
    assert result["n_tiles"] == 2 and result["subtypes"] == ["cd3", "cd8", "cd20"]
    assert set(result["model"]) >= {"pixel", "centroid", "presence"} and result["aim"]["cd3_centroid_f1_at_least"] == 0.6
    assert set(result["baselines"]["all_nuclei"]["cd3"]) == {"pixel", "centroid", "presence"}
    assert result["comparison"]["cd3"]["n_true_cells"] == sum(r["true_cells"]["cd3"] for r in result["per_tile"])
    assert result["published"]["per_centroid"]["cd3"]["f1"] == 0.96
    json.dumps(result)  # JSON-ready
    train = dict(smoke.record, minutes=0)
    card = build_card(smoke.weights, train, rec, result, [smoke.record] * 2)
    text = render_markdown(card)
    assert text.index("## Intended use") < text.index("## Limitations") < text.index("## Metrics on held-out data")
    assert "NOT meet the project's aim" in card["limitations"][0] or "Meets the project's aim" in card["limitations"][0]
    assert "Research use, not a diagnostic device" in card["intended_use"] and "CD20" in caution(result)
    bad = Namespace(**{**vars(args), "split": "test"})
    with pytest.raises(InputError, match="--split validation"):
        evaluate(KEY, bad)


# --------------------------------------------------------------------------- channels: files, picker, CLI


def _write_stacks(folder: Path) -> tuple[Path, Path]:
    import tifffile

    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (3, 64, 64), dtype=np.uint16)
    imagej = folder / "panel_imagej.tif"
    tifffile.imwrite(imagej, data, imagej=True, resolution=(1.0, 1.0),
                     metadata={"axes": "CYX", "Labels": ["DAPI", "CD3", "CD8"], "unit": "um"})
    ome = folder / "panel.ome.tif"
    tifffile.imwrite(ome, data, metadata={"axes": "CYX", "Channel": {"Name": ["Hoechst 33342", "CD20", "CD3"]},
                                          "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return imagej, ome


def test_multichannel_16_bit_tiff_channel_names_and_picking(tmp_path):
    from core.io import ImageData, load_image, pick_channel, resolve_channel
    from core.scenarios.base import check_input

    imagej, ome = _write_stacks(tmp_path)
    ij = load_image(imagej)
    assert ij.channel_names == ("DAPI", "CD3", "CD8") and ij.data.dtype == np.uint16 and ij.data.shape == (64, 64, 3)
    assert ij.mpp == pytest.approx(1.0)
    om = load_image(ome)
    assert om.channel_names == ("Hoechst 33342", "CD20", "CD3") and om.mpp == pytest.approx(0.5)
    assert resolve_channel(ij, "dapi") == "DAPI" and resolve_channel(ij, "2") == "CD8" and resolve_channel(om, 0) == "Hoechst 33342"
    with pytest.raises(InputError, match="indices 0 to 2"):
        resolve_channel(ij, "3")
    with pytest.raises(InputError, match="0: DAPI, 1: CD3, 2: CD8"):
        resolve_channel(ij, "PD1")
    picked = pick_channel(ij, "0", "Hoechst")
    assert picked.channel_names == ("Hoechst",) and picked.data.dtype == np.uint16
    np.testing.assert_array_equal(picked.data[..., 0], ij.data[..., 0])
    assert any("DAPI as Hoechst" in n for n in picked.notes)
    scenario = get_scenario(KEY)
    check_input(picked, scenario)
    check_input(ImageData(ij.data[..., :1], 1.0, "grey.tif", ""), scenario)  # a one-plane image whatever its name
    with pytest.raises(InputError, match="--channel NAME or INDEX"):
        check_input(ij, scenario)
    rgb = ImageData(np.zeros((64, 64, 3), np.uint8) + np.array([200, 120, 180], np.uint8), 1.0, "he.png", "")
    with pytest.raises(InputError, match="colour \\(RGB\\) image: upload the channel"):
        check_input(rgb, scenario)  # a brightfield scan is not a Hoechst image


def test_channel_picker_choices_and_the_picked_source(tmp_path):
    from core.pipeline import ImageSource, prepare_image
    from core.scenarios.base import channel_choices

    scenario = get_scenario(KEY)
    assert channel_choices(scenario, ("CD3", "DAPI", "CD8")) == (("CD3", "DAPI", "CD8"), 1)  # the nuclear stain
    assert channel_choices(scenario, ("H3342", "FITC", "Cy3", "Cy5", "AF751"))[1] == 0
    assert channel_choices(scenario, ("CD3", "hoechst")) == (("CD3", "hoechst"), 1)  # its own name first
    assert channel_choices(scenario, ("CD3", "CD8"))[1] == 0  # no nuclear name: the first, shown to be changed
    assert channel_choices(scenario, ("grey",)) is None and channel_choices(scenario, ("red", "green", "blue")) is None
    assert channel_choices(get_scenario("he-til"), ("CD3", "DAPI")) is None  # an RGB model picks no channel
    _, ome = _write_stacks(tmp_path)
    whole = prepare_image(ImageSource(path=str(ome), name="panel.ome.tif"), KEY, fitness=False)
    assert whole.channel_names == ("Hoechst 33342", "CD20", "CD3") and "pick the Hoechst channel" in whole.refused
    picked = prepare_image(ImageSource(path=str(ome), name="panel.ome.tif", channel="CD3"), KEY, fitness=False)
    assert picked.refused is None and picked.channel_names == whole.channel_names  # the file's channels, for the picker
    with pytest.raises(InputError, match="no channel named 'PD1'"):
        prepare_image(ImageSource(path=str(ome), name="panel.ome.tif", channel="PD1"), KEY, fitness=False)


def test_cli_analyze_picks_the_channel_and_writes_the_cell_table(smoke, tmp_path, monkeypatch):
    import pandas as pd

    from dataclasses import replace

    from core import cli
    from core.scenarios import registry, spec
    from core.scenarios.hoechst import CARD_NAME, WEIGHTS_NAME
    from core.scenarios.weights import sha256_file

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    shutil.copy(smoke.weights, weights_dir / WEIGHTS_NAME)
    (weights_dir / CARD_NAME).write_text(json.dumps({"name": "smoke", "version": "0.0.0"}))
    monkeypatch.setattr(spec, "WEIGHTS_DIR", weights_dir)
    monkeypatch.setitem(registry.SCENARIOS, KEY, replace(get_scenario(KEY), sha256=sha256_file(weights_dir / WEIGHTS_NAME),
                                                         card_sha256=sha256_file(weights_dir / CARD_NAME)))
    out = tmp_path / "out"
    rc = cli.main(["analyze", str(TILES[2]), "--scenario", KEY, "--channel", "0", "--no-store", "--out", str(out)])
    assert rc == 0
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells["role"]) <= {"immune"} and set(cells["cell_class"]) <= {"cd3", "cd8", "cd20"}
    assert (out / "lymphocyte.png").is_file() and (out / "subtypes.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert "H3342 as Hoechst" in json.dumps(summary, ensure_ascii=False)
    assert cli.main(["analyze", str(TILES[2]), "--scenario", KEY, "--channel", "9", "--no-store",
                     "--out", str(tmp_path / "o2")]) == 2
    assert cli.main(["analyze", str(TILES[2]), "--scenario", KEY, "--no-store", "--out", str(tmp_path / "o3")]) == 2


def test_the_registered_entry_fits_its_weights_and_says_it_is_research_only():
    """The entry's classes are the weights' subtypes, its caution is the card's evaluation in words, and it is
    marked research only (the v1 weights miss the aim and do not beat the baselines on CD8)."""
    from safetensors import safe_open

    from core.evaluation import PENDING_RECIPES, recipe_for
    from core.training.hoechst_card import caution

    sc = get_scenario(KEY)
    with safe_open(str(sc.weights_path), framework="pt") as fh:
        meta = fh.metadata()
    assert [c.name for c in sc.classes] == json.loads(meta["classes"])[1:]
    assert sc.output("subtypes").class_names == tuple(json.loads(meta["classes"]))
    assert float(meta["mpp"]) == sc.input_mpp and {c.role for c in sc.classes} == {"immune"}
    assert sc.input.channels == ("Hoechst",) and not sc.input.is_rgb and not sc.reads_colour
    evaluation = json.loads((sc.weights_path.parent / "hoechst-lymphocytes-unet-v1.cv-evaluation.json").read_text())
    assert sc.caution == caution(evaluation) and "NOT better than the simple baselines" in sc.caution
    card = sc.card()
    assert card["metrics"]["aim"]["met"] is False and card["limitations"][0].startswith("Does NOT meet")
    assert sc.research_only and not sc.trained_on_synthetic and not sc.validated_for_counting
    assert KEY not in PENDING_RECIPES and recipe_for(KEY) == "hoechst-tiles"


def test_model_from_file_and_the_shared_loader(smoke, tmp_path):
    from core.errors import WeightsError
    from core.scenarios.weights import sha256_file

    model = model_from_file(smoke.weights)
    assert model.scenario.weights == smoke.weights.name and model.scenario.sha256 == sha256_file(smoke.weights)
    assert model.scenario.classes == get_scenario(KEY).classes  # the registered entry, with the file's name and hash
    assert model.operating_point["threshold"] == 0.5 and model.operating_point["percentiles"] == [1.0, 99.8]
    with pytest.raises(WeightsError, match="missing; train it with python -m core.training.hoechst"):
        model_from_file(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="could not be read"):
        model_from_file(bad)


# --------------------------------------------------------------------------- saliency on demand (page and report)


def test_saliency_field_is_the_window_with_the_most_cells():
    import pandas as pd

    from core.explain.saliency import saliency_field
    from core.io import ImageData

    data = np.arange(600 * 400, dtype=np.uint16).reshape(600, 400, 1)
    image = ImageData(data, 0.5, "big.tif", "", "user", channel_names=("Hoechst",))
    cells = pd.DataFrame({"x_px": [390.0, 395.0, 380.0, 10.0], "y_px": [590.0, 560.0, 580.0, 10.0]})
    field = saliency_field(image, cells, input_mpp=1.0, max_side_px=128)  # 128 px at 1 µm/px = 256 px at 0.5
    assert field.box_px == (144, 344, 400, 600) and not field.whole  # flush with the corner holding 3 cells
    assert field.image.shape == (256, 256) and field.image.mpp == 0.5 and field.image.channel_names == ("Hoechst",)
    np.testing.assert_array_equal(field.image.data, data[344:600, 144:400])
    small = saliency_field(ImageData(data[:100, :90], 0.5, "s.tif", "", "user", channel_names=("Hoechst",)), None, 1.0)
    assert small.whole and small.box_px == (0, 0, 90, 100)


def test_saliency_maps_pictures_report_section_and_refusals(tmp_path):
    import subprocess

    from core.explain.saliency import SaliencyMaps, compute_saliency, saliency_field, supports_saliency
    from core.io import ImageData
    from core.outputs.report_pdf import build_report_pdf

    assert supports_saliency(KEY) and not supports_saliency("cd3-ihc")
    sc = get_scenario(KEY)
    hot = np.zeros((40, 50), np.float32)
    hot[10:20, 30:40] = 0.02
    maps = SaliencyMaps(KEY, {"cd3": hot, "cd8": np.zeros((40, 50), np.float32)}, dict(sc.class_labels),
                        dict(sc.class_colors), np.full((40, 50, 3), 40, np.uint8), (0, 0, 50, 40), True, 1.0, 81)
    pictures = maps.pictures()
    assert [t for t, _, _ in pictures] == ["Saliency (HiPe): CD3+ T cell (CD8-negative)", "Saliency (HiPe): CD8+ T cell"]
    cd3 = pictures[0][1]
    assert cd3.shape == (40, 50, 3) and cd3.dtype == np.uint8
    assert tuple(cd3[15, 35]) != (40, 40, 40) and tuple(cd3[0, 0]) == (40, 40, 40)  # coloured where salient only
    assert "0.02" in pictures[0][2] and "nothing in it supports this class" in pictures[1][2]
    assert "At most 81 perturbed images per class" in maps.method_text() and "the whole image (50 x 40 px" in maps.method_text()
    pdf = build_report_pdf({"summary": {"scenario": KEY, "n_cells": 0, "counts": {}}}, sections=[maps.report_section()])
    (tmp_path / "r.pdf").write_bytes(pdf)
    text = " ".join(subprocess.run(["pdftotext", str(tmp_path / "r.pdf"), "-"], capture_output=True, text=True,
                                   check=True).stdout.split())
    assert "Saliency (HiPe)" in text and "Hierarchical perturbation" in text and "CD8+ T cell" in text
    assert "Research only" in text  # the report of a research-only scenario says so first
    field = saliency_field(ImageData(np.zeros((64, 64, 1), np.uint16), 1.0, "f.tif", "", "user",
                                     channel_names=("Hoechst",)), None, 1.0)
    with pytest.raises(InputError, match="at least 81 perturbed images"):
        compute_saliency(field, KEY, ("cd3",), 40)
    with pytest.raises(InputError, match="unknown class"):
        compute_saliency(field, KEY, ("cd4",), 81)
    with pytest.raises(InputError, match="computes no saliency"):
        compute_saliency(field, "cd3-ihc", None, 81)
