"""Does Macenko stain normalisation at inference help he-til on other laboratories' H&E? (issue 15, item 2)

``python -m core.evaluation.he_stain_normalisation [--out FILE]`` scores the registered he-til
weights on each source's tune split (CRCHistoPhenotypes, BRCA-M2C, CoNSeP) twice: on the
images as they are, and on each image normalised to the stain appearance of the model's
training images with Macenko's method (torchstain, numpy backend), then applies the rule
written before the study was run (``runs/he-til-macenko.rule.txt``, repeated in
:data:`DECISION_RULE`) and only then scores the validation splits, with and without, for the
model card. Prints and writes JSON.

Method: Macenko M. et al., "A method for normalizing histology slides for quantitative
analysis", ISBI 2009: optical density, the plane of its two largest principal components,
the stain vectors at the 1st and 99th percentile angles, concentrations by least squares,
their 99th percentiles matched to the reference's. The reference is fitted once on the
mosaic of every CRC fit image (he-til v3 was trained on them); each evaluated image is
normalised alone, with its own stain vectors, as a field would be in the app.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

#: The rule, as written before the study (runs/he-til-macenko.rule.txt).
DECISION_RULE = (
    "Decision on the tune splits only, shipped he-til weights with their own class window, thresholds 0.15-0.60: "
    "Macenko is kept iff (a) the best-threshold score (mean over sources of detection F1 + immune F1 within 3 um) "
    "is higher with it than without, and (b) no source's detection F1 + immune F1 at that threshold falls by more "
    "than 0.02 against its value without Macenko at the no-Macenko best threshold. Validation splits are scored "
    "once, after the decision, with and without."
)
THRESHOLDS = tuple(np.round(np.arange(0.15, 0.601, 0.05), 2))
SOURCES = ("crc", "brca-m2c", "consep")
#: Transmitted light, alpha (percentile of the extreme angles) and beta (OD of transparent pixels): torchstain's defaults.
MACENKO_IO, MACENKO_ALPHA, MACENKO_BETA = 240, 1, 0.15
#: Largest per-source fall of detection F1 + immune F1 the rule tolerates.
MAX_SOURCE_DROP = 0.02


def reference_normaliser(images: list) -> object:
    """A torchstain Macenko normaliser fitted on the mosaic of ``images`` (the model's training domain).

    Parameters
    ----------
    images : list of :class:`core.evaluation.datasets_he.HEImage` (``pixels`` (H, W, 3) uint8 RGB)

    Returns
    -------
    torchstain.normalizers.MacenkoNormalizer (numpy backend) with ``HERef`` (3, 2) and ``maxCRef`` (2,)
    """
    import torchstain

    norm = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    pixels = np.concatenate([im.pixels.reshape(-1, 3) for im in images], axis=0)
    norm.fit(pixels.reshape(-1, 1, 3), Io=MACENKO_IO, alpha=MACENKO_ALPHA, beta=MACENKO_BETA)
    return norm


def normalise(norm, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """``rgb`` (H, W, 3) uint8 in the reference's stain appearance; (rgb unchanged, False) when it cannot be estimated.

    An image with too few stained pixels (e.g. mostly glass) has no defined stain plane;
    it is returned as it is and flagged, never silently altered.
    """
    import warnings

    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "mean of empty slice" on glass: flagged below
            out, _, _ = norm.normalize(rgb, Io=MACENKO_IO, alpha=MACENKO_ALPHA, beta=MACENKO_BETA, stains=False)
    except (np.linalg.LinAlgError, ValueError, IndexError):
        return rgb, False
    if not np.isfinite(out.astype(np.float32)).all():
        return rgb, False
    return np.ascontiguousarray(out, dtype=np.uint8), True


def _maps(runner, images, norm):
    out, failed = [], 0
    for im in images:
        px = im.pixels
        if norm is not None:
            px, ok = normalise(norm, px)
            failed += not ok
        out.append(runner.predict_maps(px))
    return out, failed


def _best(rows):
    return max(rows, key=lambda r: (r["score"], -abs(r["threshold"] - 0.5)))


def _sum(row, source):
    v = row["by_source"][source]
    return v["detection_f1"] + v["immune_f1"]


def decide(without: list[dict], with_: list[dict]) -> dict:
    """The rule (:data:`DECISION_RULE`) on two threshold sweeps of :func:`core.training.he_sources.score_sources`."""
    b0, b1 = _best(without), _best(with_)
    drops = {s: round(_sum(b0, s) - _sum(b1, s), 4) for s in b0["by_source"]}
    better = b1["score"] > b0["score"]
    guarded = all(d <= MAX_SOURCE_DROP for d in drops.values())
    return {"keep_macenko": bool(better and guarded), "score_without": b0["score"], "score_with": b1["score"],
            "threshold_without": b0["threshold"], "threshold_with": b1["threshold"],
            "source_drop": drops, "rule": DECISION_RULE}


def study(runner=None, sources=SOURCES) -> dict:
    """Tune-split decision, then validation scores with and without Macenko (module docstring).

    Returns
    -------
    dict: ``decision`` (:func:`decide`), ``tune`` and ``validation`` ({"without", "with"}:
    the best-threshold row for tune, the row at each arm's tune threshold for validation),
    ``failed_normalisations`` per split and source, ``reference`` (HERef, maxCRef), seconds.
    """
    from core.evaluation.he_sources import read_source_split
    from core.pipeline import load_model
    from core.training.he_sources import score_sources

    t0 = time.perf_counter()
    runner = runner or load_model("he-til", "cpu")
    norm = reference_normaliser(read_source_split("crc", "fit"))
    result = {"reference": {"HERef": np.round(norm.HERef, 5).tolist(), "maxCRef": np.round(norm.maxCRef, 5).tolist(),
                            "fitted_on": "every CRC fit image (one mosaic)"},
              "failed_normalisations": {}}
    sweeps = {}
    for split in ("tune", "validation"):
        images = {s: read_source_split(s, split) for s in sources}
        for arm, n in (("without", None), ("with", norm)):
            maps, failed = {}, {}
            for s, ims in images.items():
                maps[s], failed[s] = _maps(runner, ims, n)
            result["failed_normalisations"][f"{split}/{arm}"] = failed
            if split == "tune":
                sweeps[arm] = score_sources(runner, images, THRESHOLDS, maps)
            else:  # each arm at the threshold its tune sweep chose: validation is not tuned on
                thr = result["decision"][f"threshold_{arm}"]
                result.setdefault("validation", {})[arm] = score_sources(runner, images, [thr], maps)[0]
        if split == "tune":  # the decision is taken before any validation image is read
            result["decision"] = decide(sweeps["without"], sweeps["with"])
            result["tune"] = {arm: _best(rows) for arm, rows in sweeps.items()}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = study()
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
