"""The three labelled H&E sources of he-til (readers, splits) and their per-source evaluation.

The data sets live in ../shared/data beside the checkout; a missing one fails these tests
(:func:`core.evaluation.he_sources.read_source_split` raises). The evaluation tests use a stub
model with fixed points, so no network runs here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.cli import main
from core.errors import InputError
from core.evaluation import he_sources_eval
from core.evaluation.datasets_he import HE_MPP, HEImage, he_folders
from core.evaluation.he_sources import (DATA_ROOT, SOURCES, _brca_files, _consep_files, annotated_classes,
                                        consep_image_split, read_source_split)
from core.evaluation.he_sources_eval import MATCH_RADIUS_UM, evaluate_he_dataset, evaluate_he_source, image_counts


def _root(source: str):
    root = DATA_ROOT / SOURCES[source][0]
    if not root.is_dir():
        pytest.fail(f"H&E data set {root} not found (it lives in ../shared/data beside the checkout)")
    return root


# --- readers ---------------------------------------------------------------------------------

def test_brca_classes_and_pixel_centre_mapping():
    im = read_source_split("brca-m2c", "validation")[0]
    path = _root("brca-m2c") / "validation" / f"{im.name}.png"
    table = pd.read_csv(path.with_suffix(".points.csv"))
    w, h = Image.open(path).size
    hh, ww = im.pixels.shape[:2]
    assert im.pixels.dtype == np.uint8 and im.pixels.shape[2] == 3
    assert abs(ww / w - 0.5 / HE_MPP) < 0.01  # 0.5 µm/px to 0.55
    expected = {"tumour": 0, "lymphocyte": 1, "stromal": 2}
    assert im.labels.tolist() == [expected[c] for c in table["cell_class"]]
    # integer coordinates are pixel centres: x in the file → (x + 0.5) * W'/W - 0.5 here
    x, y = table["x_px"].to_numpy(float), table["y_px"].to_numpy(float)
    want = np.stack([(x + 0.5) * ww / w - 0.5, (y + 0.5) * hh / h - 0.5], axis=1)
    want = np.clip(want, 0, [ww - 1, hh - 1])
    np.testing.assert_allclose(im.points_xy, want, atol=1e-9)
    row = int(np.argmax(x > 100))  # one point away from the border, by hand
    assert im.points_xy[row, 0] == pytest.approx((x[row] + 0.5) * ww / w - 0.5)
    assert im.source == "brca-m2c" and im.annotated == (0, 1, 2) == annotated_classes("brca-m2c")


def test_consep_tiles_are_rescaled_from_0_25_to_0_55_um():
    images = read_source_split("consep", "validation")
    im = images[0]
    path = _root("consep") / "train" / f"{im.name}.jpg"
    table = pd.read_csv(path.with_name(f"{im.name}.points.csv"))
    w, h = Image.open(path).size
    assert (w, h) == (256, 256)
    hh, ww = im.pixels.shape[:2]
    assert ww / w == pytest.approx(0.25 / HE_MPP, abs=0.005)  # ~0.4545: 256 px → ~116 px
    sx = ww / w
    want = np.clip((table[["x_px", "y_px"]].to_numpy(float) + 0.5) * sx - 0.5, 0, ww - 1)
    np.testing.assert_allclose(im.points_xy, want, atol=1e-9)
    mapping = {"epithelial": 0, "inflammatory": 1, "spindle": 2, "other": 3}
    assert im.labels.tolist() == [mapping[c] for c in table["cell_class"]]
    assert im.annotated == (0, 1, 2, 3) and all(i.source == "consep" for i in images)


def test_crc_keeps_its_classes_and_unclassed_nuclei():
    images = read_source_split("crc", "validation")
    labels = np.concatenate([im.labels for im in images])
    assert set(labels.tolist()) <= {-1, 0, 1, 2, 3} and (labels == -1).any() and (labels == 1).any()
    assert all(im.source == "crc" and im.annotated == (0, 1, 2, 3) for im in images)


def test_splits_hold_out_validation_and_keep_consep_source_images_together():
    def consep_images(split):
        return {int(f.stem.split("_")[1]) for f in _consep_files(split, _root("consep"))}

    fit, tune, val = consep_images("fit"), consep_images("tune"), consep_images("validation")
    assert fit and tune and val
    assert not (fit & tune) and not (fit & val) and not (tune & val)
    assert consep_images("train") == fit | tune and len(fit | tune | val) == 27
    assert all(consep_image_split(n) == "validation" for n in val)

    brca = {s: {f.stem for f in _brca_files(s, _root("brca-m2c"))} for s in ("fit", "tune", "validation")}
    assert not (brca["validation"] & (brca["fit"] | brca["tune"])) and not (brca["fit"] & brca["tune"])
    assert len(brca["validation"]) == 10

    _root("crc")
    crc = {s: {p.name for p in he_folders(s)} for s in ("fit", "tune", "validation")}
    assert crc["validation"] and not (crc["validation"] & (crc["fit"] | crc["tune"])) and not (crc["fit"] & crc["tune"])


def test_a_missing_data_folder_is_an_error(tmp_path):
    with pytest.raises(InputError, match="missing"):
        read_source_split("consep", "validation", tmp_path / "none")
    with pytest.raises(InputError, match="unknown H&E source"):
        read_source_split("lizard", "validation")


# --- the role metric on a hand-made case -----------------------------------------------------

R_PX = MATCH_RADIUS_UM / HE_MPP  # 5.45 px

# Image "a": six nuclei (immune, immune, tumour, stroma, unclassed, immune) and seven predictions.
A = HEImage("a", np.zeros((64, 256, 3), np.uint8),
            np.array([[10, 10], [30, 10], [50, 10], [70, 10], [90, 10], [110, 10]], float),
            np.array([1, 1, 0, 2, -1, 1]), "crc", (0, 1, 2, 3))
A_PRED = (np.array([[11, 10], [31, 11], [50, 12], [71, 10], [90, 11], [150, 10], [200, 50]], float),
          np.array([1, 0, 0, 1, 1, 1, 2]))
# p0 immune on immune: TP immune; p1 tumour on immune: FP tumour, FN immune (misclassified);
# p2 tumour on tumour: TP tumour; p3 immune on stroma: FP immune, FN stroma (misclassified);
# p4 immune on the unclassed nucleus: no role; p5 immune, p6 stroma unmatched: FP; nucleus 5 unmatched: FN immune.
# Image "b": a tumour nucleus 4 px from an immune one, one immune prediction 1 px from the tumour
# nucleus: detection pairs it with the tumour nucleus (FP immune, FN tumour, FN immune unmatched);
# matching immune predictions to immune nuclei alone would have counted it TP.
B = HEImage("b", np.zeros((64, 256, 3), np.uint8), np.array([[130, 30], [134, 30]], float), np.array([0, 1]),
            "crc", (0, 1, 2, 3))
B_PRED = (np.array([[131, 30]], float), np.array([1]))


class StubModel:
    """Returns fixed predictions per image (by its name), as ``HETILModel.detect`` does: xy, label, ..."""

    precision = "float32"

    def __init__(self, by_width):
        self.by_width = by_width
        self.calls = 0

    def detect(self, pixels):
        self.calls += 1
        xy, lab = self.by_width[pixels.shape[0]]
        return xy, lab, np.ones(len(xy)), np.ones(len(xy)), np.zeros(pixels.shape[:2], np.float32)


def test_image_counts_of_the_hand_made_case():
    c = image_counts(*A_PRED, A, R_PX)
    assert c[:4].tolist() == [5, 2, 1, 2]  # detection tp, fp, fn; immune nuclei found (any class)
    immune = c[4 + 8 * 1: 4 + 8 * 2].tolist()
    assert immune == [1, 1, 1, 1, 1, 1, 2, 2]  # tp, fp_mis, fp_unm, fn_mis, fn_unm; variant tp, fp, fn
    tumour = c[4: 4 + 8].tolist()
    assert tumour == [1, 1, 0, 0, 0, 1, 1, 0]
    stroma = c[4 + 8 * 2: 4 + 8 * 3].tolist()
    assert stroma == [0, 0, 1, 1, 0, 0, 1, 1]
    assert c[4 + 8 * 3:].tolist() == [0] * 8  # nothing is "other"


def test_role_metrics_pooled_over_images(monkeypatch):
    a, b = HEImage(**vars(A)), HEImage(**vars(B))
    b.pixels = np.zeros((32, 256, 3), np.uint8)  # the stub tells the images apart by height
    monkeypatch.setattr(he_sources_eval, "read_source_split", lambda source, split, data=None: [a, b])
    model = StubModel({64: A_PRED, 32: B_PRED})
    out = evaluate_he_source("crc", "validation", model=model, bootstrap=50)
    assert model.calls == 2
    assert out["match_radius_um"] == 3.0 and out["n_images"] == 2 and out["n_annotated_nuclei"] == 8
    assert out["n_classified_nuclei"] == 7
    det = out["detection"]
    assert (det["tp"], det["fp"], det["fn"]) == (6, 2, 2) and det["f1"] == 0.75
    imm = out["roles"]["immune"]
    assert (imm["tp"], imm["fp"], imm["fn"]) == (1, 3, 3)
    assert (imm["fp_misclassified"], imm["fp_unmatched"], imm["fn_misclassified"], imm["fn_unmatched"]) == (2, 1, 1, 2)
    assert imm["precision"] == imm["recall"] == imm["f1"] == 0.25
    assert imm["f_c_hovernet"] == round(2 / 11, 4)  # 2TP / (2TP + 2FP_mis + 2FN_mis + FP_unm + FN_unm)
    assert imm["f1_role_matching"] == 0.5  # immune predictions matched to immune nuclei alone
    tum = out["roles"]["tumour"]
    assert (tum["tp"], tum["fp"], tum["fn"], tum["f1"]) == (1, 1, 1, 0.5)
    st = out["roles"]["stroma"]
    assert (st["tp"], st["fp"], st["fn"], st["f1"]) == (0, 1, 1, 0.0)
    assert list(out["roles"]) == ["immune", "tumour", "stroma", "other"]
    assert out["immune_recall"] == 0.25 and out["immune_detected_share"] == 0.5
    ci = out["bootstrap_95ci"]
    assert ci["unit"] == "image" and ci["n_units"] == 2 and ci["n_resamples"] == 50
    for key, value in (("detection_f1", 0.75), ("immune_f1", 0.25), ("tumour_f1", 0.5)):
        assert ci[key][0] <= value <= ci[key][1]
    assert "role_metric" in out and "published" in out


def test_a_source_without_other_reports_no_other_role(monkeypatch):
    a = HEImage(**vars(A))
    a.labels = np.where(a.labels == -1, 2, a.labels)
    a.source, a.annotated = "brca-m2c", (0, 1, 2)
    monkeypatch.setattr(he_sources_eval, "read_source_split", lambda source, split, data=None: [a])
    out = evaluate_he_source("brca-m2c", model=StubModel({64: A_PRED}), bootstrap=20)
    assert list(out["roles"]) == ["immune", "tumour", "stroma"] and "other_f1" not in out["bootstrap_95ci"]
    assert out["published"]["mcspatnet_abousamra_2021"]["detection_f1"] == "not found"


def test_all_sources_share_one_model_and_average(monkeypatch):
    monkeypatch.setattr(he_sources_eval, "read_source_split", lambda source, split, data=None: [HEImage(**vars(A))])
    model = StubModel({64: A_PRED})
    out = evaluate_he_dataset("all", model=model, bootstrap=10)
    assert list(out["sources"]) == ["crc", "brca-m2c", "consep"] and model.calls == 3
    assert out["mean_over_sources"]["detection_f1"] == out["sources"]["crc"]["detection"]["f1"]
    assert out["mean_over_sources"]["immune_f1"] == out["sources"]["consep"]["roles"]["immune"]["f1"]
    with pytest.raises(InputError, match="--data"):
        evaluate_he_dataset("all", data="somewhere", model=model)
    with pytest.raises(InputError, match="crc, brca-m2c, consep or all"):
        evaluate_he_dataset("lizard", model=model)


# --- command line ----------------------------------------------------------------------------

def test_dataset_is_refused_outside_he_til(capsys):
    assert main(["evaluate", "--scenario", "cd3-ihc", "--dataset", "crc"]) == 2
    err = capsys.readouterr().err
    assert "--dataset" in err and "he-til only" in err and "cd3-ihc" in err and "Traceback" not in err


def test_he_til_refuses_an_unknown_dataset_and_restained_with_dataset(capsys):
    assert main(["evaluate", "--scenario", "he-til", "--dataset", "lizard"]) == 2
    assert "choose one of crc, brca-m2c, consep or all" in capsys.readouterr().err
    assert main(["evaluate", "--scenario", "he-til", "--dataset", "crc", "--restained"]) == 2
    assert "--restained" in capsys.readouterr().err


def test_the_per_source_evaluation_reproduces_the_model_card():
    """Every per-source figure in the he-til card comes out of `evaluate --dataset all` with the shipped weights."""
    import json

    from core.evaluation.he_sources_eval import evaluate_he_dataset
    from core.scenarios.registry import get_scenario

    card = get_scenario("he-til").card()
    out = json.loads(json.dumps(evaluate_he_dataset("all", "validation", device="cpu")))
    assert out["sources"] == card["metrics"]["validation_by_source"]
    assert out["mean_over_sources"] == card["metrics"]["validation_mean_over_sources"]


def _he_like(seed: int, h_strength: float, e_strength: float) -> np.ndarray:
    """(96, 96, 3) uint8 H&E-like image: nuclei and background haematoxylin over eosin, Beer-Lambert mixing."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    h = 0.25 + 0.1 * rng.random((96, 96))
    for cx, cy in rng.uniform(8, 88, (25, 2)):
        h += 1.2 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 18.0)
    e = 0.6 + 0.5 * rng.random((96, 96))
    od = (h_strength * h[..., None] * np.array([0.65, 0.70, 0.29])
          + e_strength * e[..., None] * np.array([0.07, 0.99, 0.11]))  # scikit-image's H and E vectors
    return np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8)


def test_macenko_brings_a_restained_image_back_to_the_reference_and_the_rule_guards_each_source():
    from core.evaluation import he_stain_normalisation as sn

    reference = HEImage("ref", _he_like(0, 1.0, 1.0), np.zeros((0, 2)), np.zeros(0, np.int64))
    norm = sn.reference_normaliser([reference])
    assert norm.HERef.shape == (3, 2) and norm.maxCRef.shape == (2,)
    target = _he_like(1, 1.0, 1.0).astype(float)
    for h, e in ((0.7, 0.75), (1.3, 1.3)):  # the same tissue, stained weaker or stronger
        restained = _he_like(1, h, e)
        out, ok = sn.normalise(norm, restained)
        assert ok and out.dtype == np.uint8 and out.shape == restained.shape
        assert np.abs(out - target).mean() < 0.3 * np.abs(restained - target).mean()
    glass = np.full((32, 32, 3), 242, np.uint8)  # no stained pixel: left as it is, flagged
    same, ok = sn.normalise(norm, glass)
    assert not ok and same is glass

    def row(thr, a, b):
        return {"threshold": thr, "score": (a + b) / 2,
                "by_source": {"crc": {"detection_f1": a, "immune_f1": 0.0}, "consep": {"detection_f1": b, "immune_f1": 0.0}}}

    without = [row(0.3, 0.80, 0.50)]
    assert sn.decide(without, [row(0.3, 0.79, 0.60)])["keep_macenko"]  # better mean, crc within 0.02
    refused = sn.decide(without, [row(0.25, 0.70, 0.75)])  # better mean but crc falls by 0.10
    assert not refused["keep_macenko"] and refused["source_drop"]["crc"] == pytest.approx(0.10)
    assert not sn.decide(without, [row(0.3, 0.80, 0.49)])["keep_macenko"]


def test_the_stain_study_lands_in_the_card_with_its_decision():
    from core.training.sdrdin_card import add_stain_study

    def row(det, imm):
        return {"threshold": 0.2, "score": det + imm, "by_source": {"crc": {"detection_f1": det, "immune_f1": imm}}}

    study = {"decision": {"keep_macenko": False, "score_without": 1.4, "score_with": 1.3, "threshold_without": 0.2,
                          "threshold_with": 0.2, "source_drop": {"crc": 0.1}, "rule": "r"},
             "tune": {"without": row(0.8, 0.6), "with": row(0.75, 0.55)},
             "validation": {"without": row(0.79, 0.61), "with": row(0.7, 0.5)},
             "reference": {"HERef": [[0.5, 0.2], [0.8, 0.9], [0.3, 0.2]], "maxCRef": [2.0, 1.0]},
             "failed_normalisations": {"tune/with": {"crc": 0}}}
    card = add_stain_study({"metrics": {}, "limitations": []}, study)
    m = card["metrics"]["stain_normalisation_at_inference"]
    assert m["decision"]["keep_macenko"] is False and m["validation"]["with"]["by_source"]["crc"]["detection_f1"] == 0.7
    assert "is not used" in card["limitations"][0] and "crc: detection F1 0.79 → 0.70" in card["limitations"][0]
