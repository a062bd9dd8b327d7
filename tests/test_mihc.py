"""Scenario mihc-tcell-phenotypes: the mIHC generator recipe, colour unmixing, S-DRDIN with 7 classes,
training smoke, evaluation on constructed predictions, the scenario model and its card."""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.evaluation.mihc import (MATCH_RADIUS_UM, TRAIN_SEED_BASE, TUNE_SEEDS, check_eval_seeds, evaluate_mihc,
                                  score_cells)
from core.generator.mihc import (CHROMOGEN_NAMES, CHROMOGENS, CLASS_FREQUENCIES, EXPRESSION, MARKER_CHROMOGEN, MARKERS,
                                 MIHC_MPP, MIHC_TCELL, PHENOTYPES, TABLE1_COUNTS, beer_lambert_rgb, generate_mihc,
                                 stain_matrix)
from core.mihc_unmixing import cell_levels, cell_levels_from_rgb, optical_density, unmix
from core.nets.sdrdin import SDRDIN, VARIANTS
from core.scenarios.mihc_spec import CHROMOGEN_DISC_UM, KEY

CLEAN = MIHC_TCELL.without_variation()
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# --- the recipe ---------------------------------------------------------------------------------


def test_recipe_is_deterministic_and_seeded():
    a, b = generate_mihc((128, 160), seed=7), generate_mihc((128, 160), seed=7)
    assert a.image.shape == (128, 160, 3) and a.image.dtype == np.uint8
    assert a.concentrations.shape == (128, 160, 5) and a.concentrations.dtype == np.float32
    assert a.instance.shape == (128, 160) and a.instance.dtype == np.int32
    assert np.array_equal(a.image, b.image) and np.array_equal(a.concentrations, b.concentrations)
    assert np.array_equal(a.instance, b.instance) and a.cells.equals(b.cells)
    assert not np.array_equal(a.image, generate_mihc((128, 160), seed=8).image)
    # ground truth: T cells with a phenotype, unstained tumour and stromal cells of the background class
    assert set(a.cells["kind"]) <= {"tcell", "tumour", "stroma"}
    t = a.tcells
    assert len(t) > 0 and (t["role"] == "immune").all() and set(t["cell_class"]) <= set(PHENOTYPES)
    assert (a.cells.loc[a.cells["kind"] != "tcell", "class_index"] == -1).all()
    assert a.points_xy.shape == (len(t), 2) and a.labels.dtype == np.int64
    # each T cell's marker columns are its phenotype's expression (Table 1)
    for _, row in t.iterrows():
        assert {m: bool(row[m]) for m in MARKERS} == EXPRESSION[row["cell_class"]]
    # instance ids refer to the table
    assert set(np.unique(a.instance)) - {0} <= set(a.cells["cell_id"])


def test_generation_is_fast():
    generate_mihc((256, 256), seed=0)
    times = []
    for seed in range(3):
        t0 = time.perf_counter()
        generate_mihc((256, 256), seed=seed)
        times.append(time.perf_counter() - t0)
    assert min(times) < 1.0, times


def test_bad_arguments_are_refused():
    with pytest.raises(InputError, match="between 32 and 4096"):
        generate_mihc((16, 16))
    with pytest.raises(InputError, match="seed"):
        generate_mihc((64, 64), seed=-1)
    from dataclasses import replace

    with pytest.raises(InputError, match="phenotype_frequencies"):
        generate_mihc((64, 64), recipe=replace(MIHC_TCELL, phenotype_frequencies=(1.0, 0.0)))


def test_stain_vectors_are_documented_unit_vectors():
    v = stain_matrix()
    assert v.shape == (5, 3) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3) and (v >= 0).all()
    assert CHROMOGEN_NAMES == ("hematoxylin", "dab", "fast_red", "green", "teal")
    assert MARKER_CHROMOGEN == {"FOXP3": "dab", "CD8": "fast_red", "CD4": "green", "PD1": "teal"}
    # FOXP3 nuclear, the others membranous (§2.1); estimates say so
    loc = {c.marker: c.localisation for c in CHROMOGENS if c.marker}
    assert loc == {"FOXP3": "nucleus", "CD8": "membrane", "CD4": "membrane", "PD1": "membrane"}
    assert {c.name for c in CHROMOGENS if c.estimate} == {"green", "teal"}
    assert all(c.source for c in CHROMOGENS)
    # every stain triple is invertible (the unmixing needs it)
    from itertools import combinations

    assert max(np.linalg.cond(v[list(c)]) for c in combinations(range(5), 3)) < 50


def test_beer_lambert_ods_add():
    rng = np.random.default_rng(0)
    v = stain_matrix()
    c1 = np.zeros((20, 5), np.float32)
    c2 = np.zeros((20, 5), np.float32)
    c1[:, 4] = rng.uniform(0, 0.8, 20)  # teal (PD1)
    c2[:, 2] = rng.uniform(0, 0.8, 20)  # Fast Red (CD8)
    od = lambda c: -np.log10(beer_lambert_rgb(c, v).astype(np.float64))  # noqa: E731
    assert np.allclose(od(c1 + c2), od(c1) + od(c2), atol=1e-5)
    assert np.allclose(od(c1 + c2), (c1 + c2) @ v, atol=1e-5)


def test_double_positive_cell_shows_the_sum_of_its_chromogens():
    s = generate_mihc((256, 256), seed=3, recipe=CLEAN)
    cells = s.tcells[s.tcells["cell_class"] == "PD1+CD4-CD8+"]
    assert len(cells) > 0
    teal, red = CHROMOGEN_NAMES.index("teal"), CHROMOGEN_NAMES.index("fast_red")
    mem = (s.concentrations[..., teal] > 0.05) & (s.concentrations[..., red] > 0.05)
    own = np.isin(s.instance, cells["cell_id"].to_numpy()) | (s.concentrations[..., teal] > 0)
    sel = mem & own
    assert sel.sum() > 20
    image_od = optical_density(s.image, 1.0)[sel].astype(np.float64)
    c = s.concentrations[sel].astype(np.float64)
    total = c @ s.stain_matrix
    keep = total.max(axis=1) < 1.0  # 8-bit rounding: |dOD| <= 0.434 * 0.5 / 255 / I <= 0.0085 where I >= 0.1
    assert keep.mean() > 0.5 and np.abs(image_od[keep] - total[keep]).max() < 0.009
    # ... which is the PD1 chromogen's OD plus the CD8 chromogen's plus the rest
    parts = sum(np.outer(c[:, k], s.stain_matrix[k]) for k in range(5))
    assert np.allclose(parts, total)
    assert (c[:, teal] > 0).all() and (c[:, red] > 0).all()


def test_localisation_nucleus_vs_membrane():
    s = generate_mihc((320, 320), seed=11, recipe=CLEAN)
    dab, green = CHROMOGEN_NAMES.index("dab"), CHROMOGEN_NAMES.index("green")
    for _, row in s.tcells.iterrows():
        x, y = int(round(row["x_px"])), int(round(row["y_px"]))
        if not (2 <= x < 318 and 2 <= y < 318):
            continue
        centre = s.concentrations[y - 1 : y + 2, x - 1 : x + 2]
        if row["FOXP3"]:
            assert centre[..., dab].min() > 0.05  # nuclear FOXP3
        else:
            assert centre[..., dab].max() < 0.01
        if row["CD4"]:  # membranous: nothing at the centre, a ring around it
            r = row["semi_axis_a_um"] / MIHC_MPP
            assert centre[..., green].max() < 0.01
            yy, xx = np.mgrid[0:320, 0:320]
            ring = np.abs(np.hypot(xx - row["x_px"], yy - row["y_px"]) - r) < 0.8
            assert s.concentrations[..., green][ring].mean() > 0.05


def test_class_frequencies_near_table1():
    labels = np.concatenate([generate_mihc((448, 448), seed=s).labels for s in range(20000, 20012)])
    assert len(labels) > 600
    share = np.bincount(labels, minlength=6) / len(labels)
    expected = np.asarray(CLASS_FREQUENCIES)
    totals = np.array([sum(TABLE1_COUNTS[p]) for p in PHENOTYPES])
    assert np.allclose(expected, totals / 3674)
    assert np.abs(share - expected).max() < 0.04, dict(zip(PHENOTYPES, share.round(3)))
    from scipy.stats import chisquare

    assert chisquare(np.bincount(labels, minlength=6), expected * len(labels)).pvalue > 0.001
    assert share[PHENOTYPES.index("PD1+CD4-CD8-")] < share[PHENOTYPES.index("PD1+CD4+CD8-")] < share[0]


# --- colour unmixing ----------------------------------------------------------------------------


def test_unmixing_recovers_concentrations():
    s = generate_mihc((256, 256), seed=3, recipe=CLEAN)
    m = unmix(s.image, white=1.0)
    assert m.concentrations.shape == (256, 256, 5) and m.concentrations.dtype == np.float32
    assert (m.concentrations >= 0).all() and m.names == CHROMOGEN_NAMES
    err = np.abs(m.concentrations - s.concentrations).mean(axis=(0, 1))
    assert err.max() < 0.02, err  # OD units
    # the per-cell levels tell each T cell's markers apart
    levels = cell_levels(m, s.points_xy, 4.5 / MIHC_MPP)
    truth = s.tcells[list(MARKERS)].to_numpy()
    for j, marker in enumerate(MARKERS):
        k = CHROMOGEN_NAMES.index(MARKER_CHROMOGEN[marker])
        assert (levels[truth[:, j], k] > 0.1).all() and (levels[~truth[:, j], k] < 0.1).all(), marker
    # the disc-only path gives the same levels as the whole-image maps
    assert np.allclose(cell_levels_from_rgb(s.image, s.points_xy, 4.5 / MIHC_MPP, white=1.0), levels, atol=1e-5)


def test_unmixing_with_stain_variation_and_noise_still_separates_markers():
    from scipy.stats import mannwhitneyu

    secs = [generate_mihc((320, 320), seed=s) for s in (5, 6, 7)]  # jittered vectors, strengths, haze, blur, noise
    levels = np.concatenate([cell_levels_from_rgb(s.image, s.points_xy, 4.5 / MIHC_MPP) for s in secs])
    truth = np.concatenate([s.tcells[list(MARKERS)].to_numpy() for s in secs])
    for j, marker in enumerate(MARKERS):
        k = CHROMOGEN_NAMES.index(MARKER_CHROMOGEN[marker])
        pos, neg = levels[truth[:, j], k], levels[~truth[:, j], k]
        auc = mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))
        # measured: PD1 0.85, CD8 0.91, CD4 0.98, FOXP3 1.00 (teal lies 30° from hematoxylin)
        assert auc > 0.8, (marker, auc)


def test_unmixing_is_non_negative_least_squares():
    from scipy.optimize import nnls

    rng = np.random.default_rng(1)
    v = stain_matrix()
    c = np.zeros((300, 5))
    for i in range(300):  # one or two stains per pixel, as a membrane or a nucleus
        ks = rng.choice(5, size=rng.integers(1, 3), replace=False)
        c[i, ks] = rng.uniform(0.3, 1.0, len(ks))
    rgb = beer_lambert_rgb(c, v).reshape(1, 300, 3)
    m = unmix(rgb, white=1.0, sparsity_od=0.0)
    od = optical_density(rgb, 1.0).reshape(-1, 3).astype(np.float64)
    ref = np.array([nnls(v.T, o)[1] for o in od])
    mine = np.linalg.norm(od - m.concentrations.reshape(-1, 5).astype(np.float64) @ v, axis=1)
    assert np.abs(mine - ref).max() < 1e-3
    # on noise-free mixtures of at most two stains the sparse solution is the true one (a weak mixture, e.g. 0.16
    # Fast Red + 0.17 teal, can instead be read as 0.27 hematoxylin within the sparsity penalty)
    assert np.abs(unmix(rgb, white=1.0).concentrations.reshape(-1, 5) - c).max() < 1e-3


def test_unmixing_refuses_bad_input():
    with pytest.raises(InputError, match="RGB"):
        unmix(np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="non-negative"):
        unmix(np.zeros((8, 8, 3), np.uint8), stains=[[1, -1, 0]])
    with pytest.raises(InputError, match="max_stains"):
        unmix(np.zeros((8, 8, 3), np.uint8), max_stains=4)
    with pytest.raises(InputError, match="no chromogen"):
        unmix(np.full((8, 8, 3), 200, np.uint8)).map("CD3")


def test_paired_bootstrap_of_rare_class_f1():
    from core.evaluation.mihc import RARE_CLASSES, paired_bootstrap_f1

    k = len(PHENOTYPES)
    r = PHENOTYPES.index(RARE_CLASSES[0])
    good = np.zeros((20, k, k), np.int64)
    good[:, r, r] = 5  # model A: every rare cell right
    bad = good.copy()
    bad[:, r, r], bad[:, r, 0] = 3, 2  # model B: 2 of 5 called CD8+ in every section
    out = paired_bootstrap_f1(good, bad, n_boot=500)
    f1_b = 2 * 3 / (5 + 3)  # recall 3/5, precision 3/3
    assert out[RARE_CLASSES[0]]["difference"] == pytest.approx(1.0 - f1_b, abs=1e-4)
    assert out[RARE_CLASSES[0]]["ci95"][0] > 0 and out[RARE_CLASSES[0]]["share_a_at_least_b"] == 1.0
    same = paired_bootstrap_f1(good, good, n_boot=100)[RARE_CLASSES[0]]
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(InputError, match="shapes"):
        paired_bootstrap_f1(good, good[:3, :2])


def test_chromogen_pictures_show_each_stain_where_it_is_and_stay_bounded():
    from core.mihc_unmixing import chromogen_pictures

    s = generate_mihc((256, 256), seed=3, recipe=CLEAN)
    pictures = chromogen_pictures(s.image)
    assert len(pictures) == len(CHROMOGEN_NAMES) + 1 and all(p.shape == (256, 256, 3) and p.dtype == np.uint8
                                                                 for _, p, _ in pictures)
    for k, name in enumerate(CHROMOGEN_NAMES):  # darker where the section holds more of that stain
        darkness = 255.0 - pictures[k][1].astype(np.float64).mean(axis=2)
        strong = s.concentrations[..., k] > 0.3
        if strong.any():
            assert darkness[strong].mean() > darkness[s.concentrations[..., k] < 0.02].mean() + 30, name
    small = chromogen_pictures(s.image, max_pixels=4096)  # reduced first: time and memory bounded
    assert small[0][1].shape == (64, 64, 3)
    with pytest.raises(InputError, match="RGB"):
        chromogen_pictures(np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="max_pixels"):
        chromogen_pictures(s.image, max_pixels=10)


def test_phenotype_levels_follow_the_true_markers():
    import pandas as pd

    from core.mihc_unmixing import chromogen_columns, phenotype_levels

    s = generate_mihc((320, 320), seed=3, recipe=CLEAN)
    levels = cell_levels_from_rgb(s.image, s.points_xy, CHROMOGEN_DISC_UM / MIHC_MPP, white=1.0)
    cells = pd.DataFrame(levels, columns=list(chromogen_columns().values()))
    cells["cell_class"] = s.tcells["cell_class"].to_numpy()
    table = phenotype_levels(cells).set_index("phenotype")
    assert table["cells"].sum() == len(cells)
    if "CD8+" in table.index and "CD4+FOXP3+" in table.index:
        assert table.loc["CD8+", "CD8 (fast red), median OD"] > 0.1 > table.loc["CD4+FOXP3+", "CD8 (fast red), median OD"]
        assert table.loc["CD4+FOXP3+", "FOXP3 (dab), median OD"] > 0.1 > table.loc["CD8+", "FOXP3 (dab), median OD"]
    with pytest.raises(InputError, match="no column cd8_od"):
        phenotype_levels(cells.drop(columns=["cd8_od"]))


def test_cli_saves_a_synthetic_result_only_when_told(tmp_path, monkeypatch, capsys):
    from core.cli import main
    from core.outputs.store import CaseStore
    from core.samples import get_sample

    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path / "data"))
    sample = str(get_sample("mihc-synthetic").path)
    assert main(["analyze", sample, "--scenario", KEY, "--out", str(tmp_path / "a"), "--case", "T-1"]) == 0
    assert "not saved in the case history" in capsys.readouterr().err
    assert CaseStore().list_analyses() == []
    assert main(["analyze", sample, "--scenario", KEY, "--out", str(tmp_path / "b"), "--case", "T-1",
                 "--save-synthetic", "--report"]) == 0
    rows = CaseStore().list_analyses()
    assert len(rows) == 1 and rows[0]["scenario_key"] == KEY
    summary = CaseStore().get_analysis(rows[0]["id"])["summary"]
    assert summary["synthetic_save_confirmed"] is True and summary["trained_on_synthetic"] is True
    from core.outputs.report_pdf import report_cautions

    assert any("teaching or method-development" in line for line in report_cautions(summary))


# --- network and training -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_has_seven_class_channels(variant):
    net = SDRDIN(n_classes=len(PHENOTYPES), variant=variant, base_features=4).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 48))
    if variant == "drdin-detection":
        assert out["class_logits"] is None
    else:
        assert out["class_logits"].shape == (2, 7, 32, 48) and out["class_logits"].dtype == torch.float32
    if variant == "drdin-classification":
        assert out["detection_logits"] is None
    else:
        assert out["detection_logits"].shape == (2, 1, 32, 48)


def test_targets_weight_the_rare_classes_most():
    from core.training.mihc import example
    from core.training.sdrdin import class_weights

    _, cls, det = example(123, 96, 2.2 / MIHC_MPP)
    assert cls.shape == (96, 96) and set(np.unique(cls)) <= set(range(7)) and (cls == 6).mean() > 0.5
    assert np.array_equal(det == 1, cls < 6)
    w = class_weights(torch.from_numpy(cls)[None], 7)
    present = [k for k in range(6) if (cls == k).any()]
    assert all(w[k] > w[6] for k in present)  # eq. 1: a class's weight is the inverse of its pixel share


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A two-step training of a tiny S-DRDIN (the smoke test and the weights the other tests use)."""
    from core.training.mihc import main

    out = tmp_path_factory.mktemp("mihc") / "mihc-tcell-phenotypes-sdrdin-v1.safetensors"
    rc = main(["train", "--base", "4", "--size", "64", "--batch", "2", "--max-steps", "2", "--minutes", "2",
               "--tune-sections", "1", "--tune-size", "64", "--pool", "2", "--fresh", "1", "--seed", "3",
               "--eval-thresholds", "0.5", "--threads", "1", "--out", str(out)])
    assert rc == 0
    return out


def test_training_smoke(smoke_run):
    from safetensors import safe_open

    from core.training.mihc import SELECTION_RULE, STREAM_SEEDS

    rec = json.loads(smoke_run.with_suffix(".train.json").read_text())
    assert rec["steps"] == 2 and rec["selection_rule"] == SELECTION_RULE
    assert rec["train_seeds"][0] == TRAIN_SEED_BASE + 3 * STREAM_SEEDS and rec["sections_seen"] >= 4
    assert rec["tune_seeds"] == [TUNE_SEEDS[0], TUNE_SEEDS[0]]
    assert all(np.isfinite(h["loss_terms"]).all() for h in rec["history"])
    with safe_open(str(smoke_run), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["n_classes"] == "6" and json.loads(meta["classes"]) == list(PHENOTYPES) + ["background"]
    assert meta["trained_on_synthetic"] == "true" and 0 < float(meta["threshold"]) < 1


# --- evaluation ---------------------------------------------------------------------------------


def test_scores_of_constructed_predictions():
    truth_xy = np.array([[10.0, 10.0], [50.0, 10.0], [90.0, 10.0], [10.0, 60.0]])
    truth_lab = np.array([0, 3, 4, 4])
    r = MATCH_RADIUS_UM / MIHC_MPP  # 10 px
    perfect = score_cells([(truth_xy + 2.0, truth_lab)], [(truth_xy, truth_lab)], r)
    assert perfect["detection"]["f1"] == 1.0 and perfect["classification"]["weighted_f1"] == 1.0
    # one cell missed, one false positive far away, one PD1+CD4-CD8+ called PD1+CD4-CD8-
    pred_xy = np.array([[10.0, 10.0], [50.0, 10.0], [90.0, 10.0], [200.0, 200.0]])
    pred_lab = np.array([0, 3, 3, 1])
    s = score_cells([(pred_xy, pred_lab)], [(truth_xy, truth_lab)], r)
    assert (s["detection"]["tp"], s["detection"]["fp"], s["detection"]["fn"]) == (3, 1, 1)
    assert s["detection"]["f1"] == pytest.approx(0.75)
    pc = s["classification"]["per_class"]
    assert pc["PD1+CD4-CD8-"]["precision"] == 0.5 and pc["PD1+CD4-CD8+"]["recall"] == 0.0
    # weighted F1 over the 3 matched cells: CD8+ 1.0 (1 cell), PD1+CD4-CD8- 2/3 (1), PD1+CD4-CD8+ 0 (1)
    assert s["classification"]["weighted_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert s["detection_recall_per_class"]["PD1+CD4-CD8+"] == {"recall": 0.5, "support": 2}
    # a detection-only model: no classification
    assert score_cells([(pred_xy, None)], [(truth_xy, truth_lab)], r)["classification"] is None
    # beyond the radius nothing matches
    assert score_cells([(truth_xy + 11.0, truth_lab)], [(truth_xy, truth_lab)], r)["detection"]["tp"] == 0


def test_evaluation_seeds_never_touch_training_or_tuning():
    assert check_eval_seeds(40, 10000) == (10000, 10040)
    for n, seed in ((10, 4995), (1, 5500), (5, 9000), (2, TRAIN_SEED_BASE - 1)):
        with pytest.raises(InputError, match="evaluation seeds"):
            check_eval_seeds(n, seed)


def test_evaluate_command_dispatch_and_refusals(smoke_run):
    from core.evaluation import evaluate, recipe_for

    assert recipe_for("mihc-tcell-phenotypes") == "mihc-synthetic"
    args = argparse.Namespace(synthetic=None, seed=10000, device="cpu", weights=str(smoke_run), precision="float32",
                              restained=False, dataset=None)
    with pytest.raises(InputError, match="--synthetic"):
        evaluate("mihc-tcell-phenotypes", args)
    args.synthetic, args.seed = 2, 5000
    with pytest.raises(InputError, match="evaluation seeds"):
        evaluate("mihc-tcell-phenotypes", args)


def test_evaluation_runs_sdrdin_and_its_variants(smoke_run, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from core.training.mihc import metadata

    folder = tmp_path / "w"
    folder.mkdir()
    main = folder / smoke_run.name
    shutil.copy(smoke_run, main)
    # ablation weights beside it (untrained: the test checks the plumbing, not the figures)
    for variant in ("drdin-detection", "drdin-classification"):
        net = SDRDIN(6, variant, 4)
        save_file(net.state_dict(), str(folder / f"mihc-tcell-phenotypes-{variant}-v1.safetensors"),
                  metadata=metadata([0.8] * 3, [0.15] * 3, 0.5, variant, 4))
    out = evaluate_mihc(1, 10000, "cpu", main, shape=(96, 96))
    json.dumps(out)
    assert set(out["models"]) == {"s-drdin", "drdin-detection", "drdin-classification", "drdin-detection+classification"}
    assert out["models"]["drdin-detection"]["classification"] is None
    assert out["headline"]["paper_detection_f1"] == 0.835 and out["headline"]["paper_classification_weighted_f1"] == 0.867
    assert set(out["rare_classes"]["s-drdin"]) == {"PD1+CD4-CD8-", "PD1+CD4+CD8-"}
    assert out["ablation_missing"] == ["s-drdin-gradient"] and out["seeds"] == [10000, 10000]
    assert "synthetic" in out["warning"]


# --- scenario, real IHC, card -------------------------------------------------------------------


def test_scenario_is_synthetic_and_the_registry_entry_when_added_is_the_draft():
    """Until trained weights are registered, evaluation finds the recipe as pending; once registered, the registry's
    entry must be exactly :func:`draft_scenario`."""
    from core.evaluation import PENDING_RECIPES, recipe_for
    from core.scenarios.mihc import KEY, draft_scenario
    from core.scenarios.registry import SCENARIOS

    sc = draft_scenario("-", "-")
    assert sc.key == KEY and sc.trained_on_synthetic
    assert [c.name for c in sc.classes] == list(PHENOTYPES) and {c.role for c in sc.classes} == {"immune"}
    assert sc.input_mpp == MIHC_MPP and sc.tiling.tile_px(sc.input_mpp) == 1024 and sc.tiling.overlap_px(sc.input_mpp) == 96
    assert "not validated on real mIHC" in sc.caution and sc.params["unmixing"] == "mihc-tcell"
    if KEY in SCENARIOS:
        entry = SCENARIOS[KEY]
        assert entry == draft_scenario(entry.sha256, entry.card_sha256)
        assert KEY not in PENDING_RECIPES, "remove the pending recipe once the scenario is registered"
    else:
        assert PENDING_RECIPES[KEY] == "mihc-synthetic"
    assert recipe_for(KEY) == "mihc-synthetic"


def test_scenario_model_on_a_synthetic_and_a_real_ihc_image(smoke_run):
    from PIL import Image

    from core.io import ImageData
    from core.scenarios.mihc import chromogen_columns, model_from_file

    model = model_from_file(smoke_run)
    s = generate_mihc((128, 128), seed=10001)
    out = model.analyze(ImageData(s.image, MIHC_MPP, "synthetic", "", "user"))
    cells = out.cells
    assert set(cells["cell_class"]) <= set(PHENOTYPES) and (cells["role"] == "immune").all()
    for col in chromogen_columns().values():
        assert col in cells.columns and (cells[col] >= 0).all()
    assert out.dense["probability"].shape == (128, 128)
    assert any("not validated on real mIHC" in n for n in out.notes)
    # a real brightfield IHC image (DAB + hematoxylin, 0.5 µm/px) runs, and its chromogens unmix
    f = sorted((SHARED_DATA / "ihc-ki67-deepliif").glob("*.png"))[0]
    rgb = np.asarray(Image.open(f).convert("RGB"))[:256, :256]
    real = model.analyze(ImageData(rgb, 0.5, f.name, "", "user"))
    assert real.dense["probability"].shape == (256, 256)
    maps = unmix(rgb)
    assert maps.concentrations.shape == (256, 256, 5) and np.isfinite(maps.concentrations).all()
    # its brown is DAB and its blue hematoxylin, not the membrane chromogens
    total = maps.concentrations.reshape(-1, 5).sum(axis=0)
    assert total[CHROMOGEN_NAMES.index("hematoxylin")] + total[CHROMOGEN_NAMES.index("dab")] > 0.5 * total.sum()


def test_detection_only_weights_give_no_phenotypes(tmp_path):
    from safetensors.torch import save_file

    from core.io import ImageData
    from core.scenarios.mihc import model_from_file
    from core.training.mihc import metadata

    path = tmp_path / "det.safetensors"
    save_file(SDRDIN(6, "drdin-detection", 4).state_dict(), str(path),
              metadata=metadata([0.8] * 3, [0.15] * 3, 0.5, "drdin-detection", 4))
    with pytest.raises(InputError, match="drdin-detection"):
        model_from_file(path).analyze(ImageData(generate_mihc((64, 64), 1).image, MIHC_MPP, "x", "", "user"))


def test_model_card_says_synthetic_only(smoke_run, tmp_path):
    from core.model_card import render_markdown
    from core.training.mihc_card import build_card

    rec = json.loads(smoke_run.with_suffix(".train.json").read_text())
    evaluation = {"seeds": [10000, 10039], "shape": [448, 448], "n_cells": 3000, "models": {}, "rare_classes": {},
                  "headline": {"detection_f1": 0.9, "classification_weighted_f1": 0.88}}
    card = build_card(smoke_run, rec, evaluation, earlier=[rec])
    phrase = "trained on synthetic images only; not validated on real mIHC"
    assert phrase in card["intended_use"] and card["limitations"][0].lower().startswith(phrase.lower())
    assert card["trained_on_synthetic"] is True and card["scenario"] == "mihc-tcell-phenotypes"
    assert len(card["training"]["command"]) == 2 and "--init" in card["training"]["command"][1]
    assert "python -m core evaluate --scenario mihc-tcell-phenotypes --synthetic 40 --seed 10000" == card["metrics"]["reproduce"]
    md = render_markdown(card)
    assert "Trained on synthetic data" in md and "Trained on synthetic images only; not validated on real mIHC" in md


def test_a_teaching_section_is_scored_per_phenotype_against_its_truth():
    from core.evaluation.mihc import chromogen_truth_pictures, teaching_section

    with pytest.raises(InputError, match="256 to 512"):
        teaching_section(1, 100)
    d = teaching_section(424243, 256)
    per, cells = d["per_phenotype"], d["result"].cells
    assert per["true_cells"].sum() == len(d["section"].points_xy) == len(d["truth_cells"])
    assert per["model_cells"].sum() == cells["cell_class"].isin(per["phenotype"]).sum()
    assert (per["called_right"] <= per["found"]).all() and (per["found"] <= per["true_cells"]).all()
    assert d["scores"]["detection"]["tp"] == per["found"].sum()
    pictures = chromogen_truth_pictures(d["section"])
    assert len(pictures) == 5 and all(t.shape == u.shape == (256, 256, 3) for _, t, u in pictures)
    # the true FOXP3 picture is white (no chromogen) wherever no FOXP3 concentration was laid down
    foxp3 = d["section"].concentrations[..., 1]
    assert (pictures[1][1][foxp3 == 0] == 255).all()
