"""``python -m core evaluate``: reproduce a model card's metrics on held-out data.

An *evaluation recipe* names how a scenario is measured: the held-out data it reads, the
matching rule and the metrics it reports. :func:`evaluate` looks up the scenario's recipe
(the registry entry's ``evaluation``, :func:`recipe_for`) and runs it from :data:`EVALUATIONS`.

Modules
-------
- :mod:`core.evaluation.metrics`: precision, recall, F1 and one-to-one point matching.
- :mod:`core.evaluation.datasets`, :mod:`core.evaluation.datasets_he`: readers of the real
  labelled data sets (CD3 IHC patches; H&E nuclei with class points).
- :mod:`core.evaluation.mosaic`: field images tiled from labelled patches, with known centres.
- :mod:`core.evaluation.cd3` (``cd3-patches``), :mod:`core.evaluation.he` (``he-points``; with
  ``--dataset``, :mod:`core.evaluation.he_sources_eval`, per H&E source),
  :mod:`core.evaluation.tnrd` (``tnrd-synthetic``), :mod:`core.evaluation.hoechst` (``hoechst-tiles``),
  :mod:`core.evaluation.compartments` (``compartments``: synthetic multistain sections, real weak
  labels, necrosis masks), :mod:`core.evaluation.mihc` (``mihc-synthetic``: held-out synthetic mIHC
  sections, S-DRDIN and its DRDIN variants): one module per recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from core.errors import InputError
from core.scenarios.registry import get_scenario

def recipe_for(key: str) -> str:
    """The evaluation recipe of scenario ``key`` (its registry entry's ``evaluation``), a key of :data:`EVALUATIONS`.

    Raises
    ------
    UnknownScenarioError
        If ``key`` is not registered.
    InputError
        If no evaluation is defined for the scenario's recipe.
    """
    from core.scenarios.registry import SCENARIOS

    if key not in SCENARIOS and key in PENDING_RECIPES:  # evaluated before its weights are registered
        return PENDING_RECIPES[key]
    recipe = get_scenario(key).evaluation
    if recipe not in EVALUATIONS:
        raise InputError(f"no evaluation is defined for scenario {key!r} yet")
    return recipe


def _float32_only(key: str, args: argparse.Namespace) -> None:
    """Refuse the he-til-only options (``--precision bfloat16``, ``--restained``, ``--dataset``) for ``key``."""
    precision = getattr(args, "precision", "float32") or "float32"
    if precision != "float32" or bool(getattr(args, "restained", False)):
        raise InputError(f"--precision bfloat16 and --restained are defined for he-til only, not {key!r}")
    if getattr(args, "dataset", None):
        from core.evaluation.he_sources import HE_SOURCES

        raise InputError(f"--dataset (an H&E source: {', '.join(HE_SOURCES)} or all) is defined for he-til only, "
                         f"not {key!r}; leave it out (use --data for another data folder)")


def _cd3_patches(key: str, args: argparse.Namespace) -> dict:
    from core.evaluation.cd3 import evaluate_cd3

    _float32_only(key, args)
    return evaluate_cd3(args.split, args.data, args.mosaic, args.device)


def _he_points(key: str, args: argparse.Namespace) -> dict:
    from core.evaluation.he import evaluate_he

    precision = getattr(args, "precision", "float32") or "float32"
    restained = bool(getattr(args, "restained", False))
    dataset = getattr(args, "dataset", None)
    model, weights = None, getattr(args, "weights", None)
    if weights:  # a training stage's candidate, before it is registered
        from core.pipeline import load_candidate

        model = load_candidate("he-til", weights, getattr(args, "device", None), precision)
    if dataset:  # per-source evaluation; without --dataset the CRC output of the model card, unchanged
        from core.evaluation.he_sources_eval import evaluate_he_dataset

        if restained:
            raise InputError("--restained is defined on the CRC evaluation only: leave out --dataset or --restained")
        out = evaluate_he_dataset(dataset, args.split, args.data, getattr(args, "device", None), model, precision=precision)
    else:
        out = evaluate_he(args.split, args.data, getattr(args, "device", None), model, precision=precision,
                          restained=restained)
    if model is not None:
        out["weights"] = {"file": Path(weights).name, "sha256": model.weights_sha256}
    return out


def _tnrd_synthetic(key: str, args: argparse.Namespace) -> dict:
    from core.evaluation.tnrd import evaluate_synthetic

    _float32_only(key, args)
    if not getattr(args, "synthetic", None):
        raise InputError(f"scenario {key!r} is evaluated on synthetic sections: pass --synthetic N (and --seed S >= 10000)")
    return evaluate_synthetic(key, args.synthetic, args.seed, getattr(args, "device", None))


def _hoechst_tiles(key: str, args: argparse.Namespace) -> dict:
    from core.evaluation.hoechst import evaluate_hoechst

    _float32_only(key, args)
    return evaluate_hoechst(args.split, args.data, getattr(args, "cv_record", None), getattr(args, "weights", None),
                            getattr(args, "device", None))


def _compartments(key: str, args: argparse.Namespace) -> dict:
    from core.evaluation.compartments import evaluate_weights

    _float32_only(key, args)
    return evaluate_weights(get_scenario(key).weights_path, per_stain=getattr(args, "synthetic", None) or 4,
                            device=getattr(args, "device", None) or "cpu")


def _mihc_synthetic(key: str, args: argparse.Namespace) -> dict:
    from core.evaluation.mihc import evaluate_mihc

    _float32_only(key, args)
    if not getattr(args, "synthetic", None):
        raise InputError(f"scenario {key!r} is evaluated on synthetic sections: pass --synthetic N (and --seed S, "
                         "10000 or more)")
    return evaluate_mihc(args.synthetic, args.seed, getattr(args, "device", None), getattr(args, "weights", None))


#: Evaluation recipes: name → function of (scenario key, parsed ``evaluate`` arguments)
#: returning the JSON-ready metrics.
EVALUATIONS: dict[str, Callable[[str, argparse.Namespace], dict]] = {
    "cd3-patches": _cd3_patches,
    "he-points": _he_points,
    "tnrd-synthetic": _tnrd_synthetic,
    "hoechst-tiles": _hoechst_tiles,
    "compartments": _compartments,
    "mihc-synthetic": _mihc_synthetic,
}
#: Recipes of scenarios whose weights are still being trained (not in the registry yet): key → recipe.
#: An entry leaves when its scenario is registered (the registry's ``evaluation`` then names it).
PENDING_RECIPES: dict[str, str] = {}


def evaluate(key: str, args: argparse.Namespace) -> dict:
    """Evaluate scenario ``key`` with its recipe (see :func:`core.evaluation.cd3.evaluate_cd3`,
    :func:`core.evaluation.he.evaluate_he`, :func:`core.evaluation.tnrd.evaluate_synthetic`).

    Parameters
    ----------
    key : str
        A registered scenario key.
    args : argparse.Namespace
        The ``python -m core evaluate`` arguments (``split``, ``data``, ``mosaic``,
        ``synthetic``, ``seed``, ``device``, ``precision``, ``restained``, ``dataset``).

    Returns
    -------
    dict
        JSON-ready metrics.

    Raises
    ------
    UnknownScenarioError, InputError
    """
    return EVALUATIONS[recipe_for(key)](key, args)


__all__ = ["EVALUATIONS", "evaluate", "recipe_for"]
