"""Issue 21: hard-negative mining, the calibrated operating point, and its way into summary.json.

Fast: synthetic 70 x 70 patches in a temporary folder and a randomly initialised CD3 CNN;
no shipped weights, no real data set.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.evaluation import cd3_calibration as cal
from core.nets.cd3_cnn import CD3CNN
from core.scenarios.cd3_ihc import CD3IHCModel
from core.scenarios.registry import get_scenario
from core.training import cd3_negatives as neg

META = {"layout": "compact", "normalization_mean": "[0.5, 0.5, 0.5]", "normalization_std": "[0.25, 0.25, 0.25]",
        "threshold": "0.37", "nms_radius_um": "4.5", "operating_point_chosen_on": "test"}


def _model(meta=META, seed=0):
    torch.manual_seed(seed)
    return CD3IHCModel(get_scenario("cd3-ihc"), torch.device("cpu"), CD3CNN("compact").state_dict(), dict(meta))


@pytest.fixture
def patch_table(tmp_path):
    """A CD3-like patch table: every positive patch has a red 2 x 2 'cell' at its centre (34-35, 34-35).

    Train: 4 positive, 3 negative, 3 background; tune and validation: 2 of each class, whose
    pixels are blue so that any of them in a mined crop would show.
    """
    rng = np.random.default_rng(0)
    rows = []
    k = 0
    for split, n_pos, n_neg, n_bg in (("train", 4, 3, 3), ("tune", 2, 2, 2), ("validation", 2, 2, 2)):
        for folder, n, label in (("positive", n_pos, 1), ("negative", n_neg, 0), ("background", n_bg, 0)):
            for _ in range(n):
                k += 1
                px = rng.integers(100, 200, (70, 70, 3)).astype(np.uint8)
                px[..., 0] = np.minimum(px[..., 0], 150)  # red 255 only at the cell
                if split != "train":
                    px[..., 2] = 255
                if label:
                    px[34:36, 34:36] = (255, 0, 0)
                path = tmp_path / folder / f"{folder}_{k}.jpg"
                path.parent.mkdir(exist_ok=True)
                Image.fromarray(px).save(path.with_suffix(".png"))
                path = path.with_suffix(".png")
                rows.append({"path": str(path), "id": k, "folder": folder, "label": label, "group": f"g/{k}",
                             "split": split})
    return pd.DataFrame(rows)


def _red_centre(crop):
    """(x, y) centre of the red 2 x 2 cell in a crop."""
    ys, xs = np.nonzero((crop[..., 0] == 255) & (crop[..., 1] == 0) & (crop[..., 2] == 0))
    return xs.mean(), ys.mean()


def test_offcentre_crops_put_the_cell_10_to_20_px_off_centre_and_are_negatives(patch_table):
    model = _model()
    index = neg.mine(model, patch_table, seed=3, threshold=0.0, offcentre_per_patch=5,
                     sources=("train-positive-offcentre",), progress=None)
    assert len(index) == 4 * 5  # threshold 0: every crop is a detection, so every crop is mined
    assert (index.label == 0).all() and (index.source == "train-positive-offcentre").all()
    assert index.distance_px.between(neg.OFFCENTRE_MIN_PX, neg.OFFCENTRE_MAX_PX).all()
    np.testing.assert_allclose(index.distance_px, np.hypot(index.dx, index.dy))
    crops = neg.load_hard_negatives(index, patch_table)
    assert crops.shape == (20, 70, 70, 3) and crops.dtype == np.uint8
    for crop, r in zip(crops, index.itertuples()):
        x, y = _red_centre(crop)  # the cell sits at (34.5 - dx, 34.5 - dy): off centre by the recorded offset
        assert (x, y) == pytest.approx((34.5 - r.dx, 34.5 - r.dy))
        assert np.hypot(x - 34.5, y - 34.5) >= neg.OFFCENTRE_MIN_PX
    again = neg.mine(model, patch_table, seed=3, threshold=0.0, offcentre_per_patch=5,
                     sources=("train-positive-offcentre",), progress=None)
    pd.testing.assert_frame_equal(index, again)  # seeded: the same set every time


def test_offcentre_offsets_cover_the_annulus_only():
    off = neg.offcentre_offsets()
    d = np.hypot(off[:, 0], off[:, 1])
    assert d.min() >= 10 and d.max() <= 20 and len(off) > 800  # every integer offset of the annulus


def test_mosaic_mining_keeps_confident_windows_and_rebuilds_them(patch_table):
    model = _model()
    index = neg.mine(model, patch_table, seed=1, threshold=0.0, mosaics=1, sources=("train-nonpositive-mosaic",),
                     progress=None)
    assert len(index) > 0 and (index.label == 0).all()
    # windows thinned to the mining radius: none closer than 3 µm (15 px) to another of the same mosaic
    xy = index[["x0", "y0"]].to_numpy(float)
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)) + np.eye(len(xy)) * 1e9
    assert d.min() > neg.MINING_NMS_RADIUS_UM / 0.2
    crops = neg.load_hard_negatives(index, patch_table)
    np.testing.assert_allclose(model.classify_patches(crops), index.score, atol=1e-4)  # the very windows scored
    assert not (crops[..., 0] == 255).any()  # only non-positive tiles: no CD3+ cell anywhere


def test_mining_never_reads_validation_or_tune(patch_table, monkeypatch):
    import core.evaluation.datasets as datasets

    read = []
    original = datasets.read_patches
    monkeypatch.setattr(datasets, "read_patches", lambda paths: read.extend(map(str, paths)) or original(paths))
    index = neg.mine(_model(), patch_table, seed=0, threshold=0.0, mosaics=1, offcentre_per_patch=2,
                     sources=("train-nonpositive-mosaic", "train-positive-offcentre"), progress=None)
    neg.load_hard_negatives(index, patch_table)
    split_of = dict(zip(patch_table.path, patch_table.split))
    assert read and {split_of[p] for p in read} == {"train"}
    named = {p for col in ("patch", "neighbours") for v in index[col] for p in v.split("|") if p}
    assert named and all(p.split("/")[0] in ("positive", "negative", "background") for p in named)


def test_an_index_naming_a_validation_patch_is_refused(patch_table):
    index = neg.mine(_model(), patch_table, seed=0, threshold=0.0, offcentre_per_patch=1,
                     sources=("train-positive-offcentre",), progress=None)
    val = patch_table[patch_table.split == "validation"].path.iloc[0]
    bad = index.copy()
    bad.loc[0, "patch"] = neg._rel(val)
    with pytest.raises(neg.ValidationLeakError, match="validation"):
        neg.check_train_only(bad, patch_table)
    with pytest.raises(neg.ValidationLeakError):
        neg.load_hard_negatives(bad, patch_table)


def test_index_round_trips_through_csv(patch_table, tmp_path):
    index = neg.mine(_model(), patch_table, seed=0, threshold=0.0, offcentre_per_patch=1, mosaics=1,
                     sources=("train-nonpositive-mosaic", "train-positive-offcentre"), progress=None)
    path = tmp_path / "hn.csv"
    index.to_csv(path, index=False)
    np.testing.assert_array_equal(neg.load_hard_negatives(neg.read_index(path), patch_table),
                                  neg.load_hard_negatives(index, patch_table))
    with pytest.raises(neg.InputError, match="cd3_negatives"):
        neg.read_index(tmp_path / "missing.csv")


def test_validation_halves_split_by_source_block(patch_table):
    table = patch_table.copy()
    table.loc[table.split == "validation", "group"] = ["a", "a", "b", "b", "c", "c"]  # pairs share a block
    halves = cal.validation_halves(table)
    cal_paths, rep_paths = set(halves["calibration"].path), set(halves["reporting"].path)
    assert not cal_paths & rep_paths
    assert cal_paths | rep_paths == set(table[table.split == "validation"].path)
    assert not set(halves["calibration"].group) & set(halves["reporting"].group)


def test_calibration_picks_the_known_best_point():
    rows = []
    for thr in (0.3, 0.5, 0.7):
        for radius in (3.0, 4.0, 5.0):
            rows.append({"threshold": thr, "nms_radius_um": radius, "tp": 80, "fp": 20, "fn": 20})
    scores = pd.DataFrame(rows)
    best_row = (scores.threshold == 0.5) & (scores.nms_radius_um == 4.0)
    scores.loc[best_row, ["tp", "fp", "fn"]] = [95, 5, 5]
    scores["precision"] = scores.tp / (scores.tp + scores.fp)
    scores["recall"] = scores.tp / (scores.tp + scores.fn)
    scores["f1"] = 2 * scores.tp / (2 * scores.tp + scores.fp + scores.fn)
    best = cal.pick_operating_point(scores.sample(frac=1, random_state=0))
    assert (best["threshold"], best["nms_radius_um"]) == (0.5, 4.0) and best["f1"] == pytest.approx(0.95)
    # a tie in F1 goes to the higher precision, then the higher threshold, then the smaller radius
    tie = scores.copy()
    tie.loc[best_row, ["f1", "precision"]] = [0.8, 0.8]
    tie.loc[(tie.threshold == 0.7) & (tie.nms_radius_um == 3.0), "precision"] = 0.9
    assert (cal.pick_operating_point(tie)["threshold"], cal.pick_operating_point(tie)["nms_radius_um"]) == (0.7, 3.0)
    flat = scores.assign(f1=0.8, precision=0.8)
    assert (cal.pick_operating_point(flat)["threshold"], cal.pick_operating_point(flat)["nms_radius_um"]) == (0.7, 3.0)
    with pytest.raises(cal.InputError):
        cal.pick_operating_point(scores.iloc[:0])


def test_score_grid_counts_a_constructed_map():
    """Two cells, one peak each plus a weaker duplicate 16 px away: the radius decides whether it is a false positive."""
    prob = np.zeros((20, 20), np.float32)
    prob[5, 5], prob[5, 7] = 0.9, 0.6  # cell 1 and its duplicate 16 px (3.2 µm) to the right
    prob[15, 15] = 0.8  # cell 2
    truth = np.array([[8 * 5 - 0.5, 8 * 5 - 0.5], [8 * 15 - 0.5, 8 * 15 - 0.5]])
    scores = cal.score_grid(_model(), [(prob, truth)], thresholds=(0.5, 0.7), radii_um=(3.0, 4.0), match_radius_um=2.0)
    get = lambda t, r: scores[(scores.threshold == t) & (scores.nms_radius_um == r)].iloc[0]  # noqa: E731
    assert (get(0.5, 3.0).tp, get(0.5, 3.0).fp, get(0.5, 3.0).fn) == (2, 1, 0)  # duplicate survives a 3 µm radius
    assert (get(0.5, 4.0).tp, get(0.5, 4.0).fp) == (2, 0)  # and not a 4 µm one
    assert (get(0.7, 3.0).tp, get(0.7, 3.0).fp) == (2, 0)  # or a threshold above it
    best = cal.pick_operating_point(scores)
    assert best["f1"] == 1.0 and (best["threshold"], best["nms_radius_um"]) == (0.7, 3.0)


def test_cross_fitting_scores_each_half_at_the_point_chosen_on_the_other():
    """Half A wants a high threshold (a 0.6 duplicate), half B a low one (a true cell at 0.4): each is scored at the other's."""
    def one(cells):
        prob = np.zeros((20, 20), np.float32)
        truth = []
        for (r, c), p, real in cells:
            prob[r, c] = p
            if real:
                truth.append([8 * c - 0.5, 8 * r - 0.5])
        return [(prob, np.array(truth, float).reshape(-1, 2))]

    a = one([((5, 5), 0.9, True), ((5, 12), 0.6, False), ((15, 15), 0.9, True)])  # a false peak at 0.6
    b = one([((5, 5), 0.9, True), ((15, 15), 0.4, True)])  # a true cell at 0.4
    out = cal.cross_fit_maps(_model(), a, b, thresholds=(0.3, 0.5, 0.7), radii_um=(3.0,))
    assert out["a_to_b"]["chosen"]["threshold"] == 0.7 and out["b_to_a"]["chosen"]["threshold"] == 0.3
    assert (out["a_to_b"]["held_out"]["tp"], out["a_to_b"]["held_out"]["fn"]) == (1, 1)  # B's 0.4 cell missed at 0.7
    assert (out["b_to_a"]["held_out"]["tp"], out["b_to_a"]["held_out"]["fp"]) == (2, 1)  # A's 0.6 peak counted at 0.3
    assert (out["pooled"]["tp"], out["pooled"]["fp"], out["pooled"]["fn"]) == (3, 1, 1)


def test_operating_point_flows_from_metadata_into_summary(tmp_path):
    from safetensors.torch import save_file

    from core.io import ImageData
    from core.pipeline import analyze, write_analysis

    weights = tmp_path / "cd3.safetensors"
    torch.manual_seed(0)
    save_file(CD3CNN("compact").state_dict(), str(weights), metadata={k: v for k, v in META.items()
                                                                       if k not in ("threshold", "nms_radius_um")}
              | {"threshold": "0.5", "nms_box_um": "8.0", "nms_iou": "0.1"})
    model = cal.load_weights_model(weights)
    assert model.operating_point["nms_radius_um"] is None  # v1-style metadata: box NMS, said so
    cal.write_operating_point(weights, {"threshold": 0.42, "nms_radius_um": 5.5, "chosen_on": "calibration half"})
    model = cal.load_weights_model(weights)
    assert (model.threshold, model.nms_radius_um) == (0.42, 5.5)
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    result = analyze(ImageData(pixels, 0.2, "field", "", "user"), "cd3-ihc", model=model)
    op = result.summary["operating_point"]
    assert op == {"threshold": 0.42, "nms_radius_um": 5.5, "chosen_on": "calibration half"}
    files = write_analysis(result, tmp_path / "out")
    assert json.loads(files["summary.json"].read_text())["operating_point"] == op
    with pytest.raises(cal.InputError, match="out of range"):
        cal.write_operating_point(weights, {"threshold": 1.5, "nms_radius_um": 4.0})


def test_external_ihc_is_mined_on_its_top_half_only():
    """The bottom half of each IHC image without CD3 stays out of mining, to measure specificity on."""
    for name, (rgb, mpp) in neg.external_images().items():
        top, bottom = neg.external_half(name, "mined"), neg.external_half(name, "held-out")
        h = round(rgb.shape[0] * mpp / 0.2)
        assert top.shape[0] + bottom.shape[0] == h and top.shape[1] == bottom.shape[1] == round(rgb.shape[1] * mpp / 0.2)
        assert top.dtype == np.uint8 and abs(top.shape[0] - bottom.shape[0]) <= 1


def test_hard_negative_mix_draws_each_source_group_with_its_share():
    from core.training.cd3 import mix_weights, parse_mix

    sources = np.array(["skimage-ihc"] * 90 + ["ki67-lung1"] * 5 + ["ki67-bladder1"] * 5 + ["train-positive-offcentre"] * 10)
    w, drawn = mix_weights(sources, parse_mix("train-positive-offcentre=0.5,skimage-ihc=0.25,ki67=0.25,absent=1"))
    assert drawn == {"train-positive-offcentre": 0.5, "skimage-ihc": 0.25, "ki67": 0.25}
    assert float(w[sources == "train-positive-offcentre"].sum()) == pytest.approx(0.5)
    assert float(w[np.char.startswith(sources, "ki67")].sum()) == pytest.approx(0.25)
    with pytest.raises(neg.InputError, match="NAME=SHARE"):
        parse_mix("ki67")
