"""Command line: ``python -m core {scenarios,analyze,classify-patches,stats,evaluate,batch}``.

Shares every step with the app (:mod:`core.pipeline`: run → save → write). Bad input exits
with status 2 and one line on stderr, ``error: ...``, that says what was wrong and how to fix
it; no traceback. Every numeric option has its range (:data:`OPTION_RANGES`, checked while
the arguments are parsed), and the output folder is checked before any analysis runs; the
files are written into a temporary folder and moved into place when all are written
(:func:`core.io.write_output_folder`), so a failure leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

from core.errors import InputError, TILscopeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}

#: Ranges of the numeric options (inclusive), stated in ``--help`` and the README.
OPTION_RANGES = {
    "page": (1, 100_000),
    "n_simulations": (0, 999),
    "radius_um": (0.0, 1000.0),  # each of --radii-um, > 0
    "n_radii": (1, 20),
    "margin_half_width_um": (0.0, 5000.0),  # > 0
    "seed": (0, 2**32 - 1),
    "synthetic": (1, 1000),
    "workers": (1, 256),  # batch --workers
}
#: Longest case label (the case store's limit).
CASE_LABEL_MAX_CHARS = 200
#: Largest cell table read by ``stats``, in bytes (1 GiB: about 10 million cells).
MAX_CELL_TABLE_BYTES = 1024**3
#: Most patch files classified in one call.
MAX_PATCHES = 20_000


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: ``error: ...`` on stderr, exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"error: {message}; see '{self.prog} --help'", file=sys.stderr)
        raise SystemExit(2)


def _int_in(name: str):
    lo, hi = OPTION_RANGES[name]

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (allowed: {lo} to {hi})") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside the allowed {lo} to {hi}")
        return value

    return parse


def _float_in(name: str, lo_open: bool = True):
    lo, hi = OPTION_RANGES[name]

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or (value <= lo if lo_open else value < lo) or value > hi:
            raise argparse.ArgumentTypeError(f"{text} is outside the allowed {'more than ' if lo_open else ''}{lo:g} "
                                             f"to {hi:g}")
        return value

    return parse


def _mpp(text: str) -> float:
    from core.io import PLAUSIBLE_MPP_RANGE, check_mpp

    lo, hi = PLAUSIBLE_MPP_RANGE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of microns per pixel ({lo} to {hi})") from None
    try:
        return check_mpp(value)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _radii(text: str) -> tuple[float, ...]:
    """``--radii-um 10,20,30``: 1 to 20 radii, each more than 0 and at most 1000 µm."""
    lo, hi = OPTION_RANGES["radius_um"]
    n_lo, n_hi = OPTION_RANGES["n_radii"]
    parts = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give radii in µm separated by commas, e.g. 10,20,30,50")
    if not n_lo <= len(parts) <= n_hi:
        raise argparse.ArgumentTypeError(f"{len(parts)} radii given; give {n_lo} to {n_hi}")
    values = []
    for t in parts:
        try:
            v = float(t)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{t!r} in {text!r} is not a number: give radii in µm separated by commas, e.g. 10,20,30,50") from None
        if not math.isfinite(v) or not lo < v <= hi:
            raise argparse.ArgumentTypeError(f"radius {t} µm is outside the allowed more than {lo:g} to {hi:g} µm")
        values.append(v)
    return tuple(values)


def _check_case_label(label: str) -> str:
    text = (label or "").strip()
    if len(text) > CASE_LABEL_MAX_CHARS:
        raise InputError(f"the case label has {len(text)} characters; use at most {CASE_LABEL_MAX_CHARS} (--case)")
    if text and not text.isprintable():
        raise InputError("the case label holds control characters (e.g. a line break); type it again with letters, "
                         "digits, spaces and punctuation (--case)")
    return text


def _analysis_file_names(scenario, report: bool, compartments: bool = False) -> list[str]:
    """The files ``analyze`` writes for ``scenario`` (to check the output folder before the run)."""
    from core.outputs.exports import COMPARTMENT_FILES, REPORT_FILES

    names = ["cells.csv", "summary.json", "overlay.png"]
    names += [f"{o.name}.png" for o in scenario.outputs if o.kind in ("dense", "restored")]
    names += list(COMPARTMENT_FILES) if compartments or scenario.outputs_of("regions") else []
    return names + (list(REPORT_FILES) if report else [])


def _cmd_scenarios(args: argparse.Namespace) -> int:
    from core.scenarios.registry import list_scenarios

    rows = []
    for s in list_scenarios():
        rows.append(
            {
                "key": s.key,
                "title": s.title,
                "stain": s.stain,
                "input_mpp": s.input_mpp,
                "input_channels": list(s.input.channels),
                "classes": [c.name for c in s.classes],
                "outputs": [f"{o.kind}:{o.name}" for o in s.outputs],
                "weights": s.weights,
                "weights_present": s.weights_path.is_file(),
                "trained_on_synthetic": s.trained_on_synthetic,
                "research_only": s.research_only,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max((len(r["key"]) for r in rows), default=0)
        for r in rows:
            synthetic = "  [trained on synthetic images]" if r["trained_on_synthetic"] else ""
            print(f"{r['key']:<{width}}  {r['title']}  ({r['stain']}, {r['input_mpp']} µm/px){synthetic}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from core.slides import is_slide

    if is_slide(args.image):  # a whole slide: streamed tile by tile (core.slides.command)
        if args.compartments:
            raise InputError("--compartments works on fields (images up to the 100-megapixel field limit), not yet on "
                             "whole slides: run without it, or export a field of the slide")
        from core.slides.command import analyze_slide_command

        return analyze_slide_command(args)
    from core.io import check_output_folder, load_image
    from core.pipeline import (check_input, compartment_scenario, load_model, run_analysis, save_analysis,
                               write_analysis, write_stored)
    from core.scenarios.base import check_precision, pick_device
    from core.scenarios.registry import get_scenario, runner_class

    # Everything that can be refused is refused before the analysis runs.
    scenario = get_scenario(args.scenario)
    case = _check_case_label(args.case)
    comp = compartment_scenario(args.compartments, args.scenario)  # a key that is no compartment scenario: refused
    check_output_folder(args.out, _analysis_file_names(scenario, args.report, comp is not None))
    scenario.card()  # an edited model card is refused (its intended use goes into the report)
    if comp is not None:
        comp.card()
    check_precision(args.precision, pick_device(args.device), runner_class(scenario).supported_precisions, scenario.key)
    image = load_image(args.image, mpp=args.mpp, page=args.page)
    if args.channel is not None:
        from core.scenarios.base import pick_input_channel

        image = pick_input_channel(image, scenario, args.channel)
    check_input(image, args.scenario)  # channels, colour, size at the model's mpp: before the model is loaded
    regions, region_notes = _read_regions(args.regions, image.mpp)
    if comp is not None:
        check_input(image, comp.key)
    model = load_model(args.scenario, args.device, args.precision)
    comp_model = load_model(comp.key, args.device) if comp is not None else None
    result = run_analysis(image, args.scenario, model=model, regions=regions,
                          outside_validated_use=args.outside_validated_use,
                          antigen_confirmed=True if args.confirm_antigen else None,
                          compartments=comp.key if comp is not None else None, compartments_model=comp_model)
    result.warnings.extend(region_notes)
    synthetic = result.scenario.trained_on_synthetic
    if args.no_store or (synthetic and not args.save_synthetic):
        if not args.no_store:
            print(f"not saved in the case history: the {result.scenario.title} model was trained on synthetic images "
                  "only (teaching and method development); the files are written below (--save-synthetic saves it "
                  "as a teaching analysis)", file=sys.stderr)
        files = write_analysis(result, args.out, report=args.report, case_label=case or None)
    else:  # as the app does: saved in the case history, and the stored files written
        from core.outputs.store import CaseStore

        store = CaseStore()
        try:
            analysis_id = save_analysis(result, case or "unlabelled", store, confirm_synthetic=bool(synthetic))
            files = write_stored(store, analysis_id, args.out, report=args.report)
        finally:
            store.close()
        print(f"saved as analysis {analysis_id} of case {case or 'unlabelled'!r} in the case history")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for w in result.outside_validated_use:
        print(f"OUTSIDE THE VALIDATED USE: {w}", file=sys.stderr)
    s = result.summary
    density = s["density_per_mm2"]
    counts = ", ".join(
        f"{k}: {v}" + (f" ({density[k]:.1f} cells/mm²)" if density else "") for k, v in s["counts"].items()
    )
    print(f"{image.name}: {s['n_cells']} cells [{counts}] in {s['runtime_s']:.2f} s on {s['device']}")
    if s.get("compartments"):
        c = s["compartments"]
        areas = ", ".join(f"{k} {v:.4f} mm²" for k, v in (c["area_mm2"] or {}).items()) or "areas need the mpp"
        used = {"predicted": "these compartments", "drawn": "the given regions"}.get(c["regions_for_statistics"],
                                                                                    "no regions (no statistics)")
        print(f"compartments ({c.get('scenario')}): {areas}; statistics on {used}")
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return 0


def _read_regions(regions_path: str | None, mpp: float | None):
    """(regions of a GeoJSON file in µm, notes on repaired outlines), or (None, []) without a file."""
    if not regions_path:
        return None, []
    from core.spatial.regions import read_regions_geojson

    if mpp is None:
        raise InputError("--regions needs the image's microns per pixel (the regions are in pixels): pass --mpp")
    regions = read_regions_geojson(regions_path, mpp)
    notes = list(dict.fromkeys(r.note for r in regions if r.note))
    return regions, notes


def _patch_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise TILscopeError(f"{p}: no such file or folder")
    if not files:
        raise TILscopeError(f"no image files found in {', '.join(paths)}")
    return files


def _cmd_classify_patches(args: argparse.Namespace) -> int:
    import numpy as np

    from core.pipeline import load_model
    from core.io import load_image

    model = load_model(args.scenario, args.device)
    if not hasattr(model, "classify_patches"):
        raise TILscopeError(f"scenario {args.scenario!r} does not classify single-cell patches; use 'analyze'")
    files = _patch_files(args.paths)
    if len(files) > MAX_PATCHES:
        raise InputError(f"{len(files)} patch files, more than the {MAX_PATCHES} classified in one call; split them "
                         "into several folders")
    arrays = [load_image(f).rgb for f in files]
    odd = [(f, a.shape) for f, a in zip(files, arrays) if a.shape != (70, 70, 3)]
    if odd:
        f, shape = odd[0]
        raise TILscopeError(
            f"{f}: patch is {shape[1]} x {shape[0]} px; cd3-ihc patches must be 70 x 70 px at 0.2 µm/px, "
            f"centred on the cell ({len(odd)} file(s) of another size)"
        )
    patches = np.stack(arrays)
    probs = model.classify_patches(patches)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["path", "probability", "label"])
    for f, p in zip(files, probs):
        writer.writerow([str(f), f"{p:.4f}", "positive" if p >= model.patch_threshold else "negative"])
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from core import spatial
    from core.io import check_output_folder, write_output_folder
    from core.spatial.regions import check_coordinates_um

    check_output_folder(args.out, ["stats.json"])
    table = Path(args.cells)
    if table.is_dir():
        raise InputError(f"{table}: is a folder, not a file; give the cell table (cells.csv or a QuPath export)")
    if table.is_file() and table.stat().st_size > MAX_CELL_TABLE_BYTES:
        raise InputError(f"{table}: the cell table is {table.stat().st_size / 1024**3:.1f} GiB, more than the "
                         f"{MAX_CELL_TABLE_BYTES / 1024**3:.0f} GiB accepted; split it by region or slide")
    cells, taken = spatial.read_cell_table(args.cells)  # .parquet by its suffix, else CSV/TSV
    check_coordinates_um(cells[["x_um", "y_um"]].to_numpy(dtype=float), f"cell table {table.name}")
    regions, notes = None, []
    if args.regions:
        if args.mpp is None:
            raise InputError("--regions needs --mpp: the regions' coordinates are pixels (as QuPath writes them) and "
                             "are converted to µm with it")
        regions, notes = _read_regions(args.regions, args.mpp)
    params = spatial.SpatialParams(**_stats_params(args))
    stats = spatial.compute_spatial_stats(cells, regions, params, seed=args.seed)
    if notes and isinstance(stats.get("warnings"), list):
        stats["warnings"] = notes + stats["warnings"]
    text = json.dumps({"input": taken, **stats}, indent=2, ensure_ascii=False)

    def write(folder: Path) -> list[Path]:
        path = folder / "stats.json"
        path.write_text(text, encoding="utf-8")
        return [path]

    files = write_output_folder(args.out, write)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(f"read {len(cells)} cells from {args.cells} ({json.dumps(taken, ensure_ascii=False)})")
    print(f"wrote {files['stats.json']}")
    return 0


def _stats_params(args: argparse.Namespace) -> dict:
    params = {}
    if args.radii_um:
        params["radii_um"] = args.radii_um
    if args.margin_half_width_um is not None:
        params["margin_half_width_um"] = args.margin_half_width_um
    if args.n_simulations is not None:
        params["n_simulations"] = args.n_simulations
    return params


def _cmd_batch(args: argparse.Namespace) -> int:
    from core.batch import batch_command  # the batch logic lives in core.batch

    return batch_command(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from core.evaluation import evaluate

    print(json.dumps(evaluate(args.scenario, args), indent=2))
    return 0


def _cmd_users(args: argparse.Namespace) -> int:
    from core.auth import users_main  # (python -m core users reaches it without importing this module's models)

    return users_main(args.arguments)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m core", description="TILscope: count and locate TILs.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scenarios", help="list the scenario models")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_scenarios)

    a = sub.add_parser("analyze", help="analyse one image; write cells.csv, summary.json, overlay.png and the scenario's maps")
    a.add_argument("image")
    a.add_argument("--scenario", required=True, help="scenario key (see 'scenarios')")
    a.add_argument("--mpp", type=_mpp, help="microns per pixel, 0.05 to 20 (overrides the file's metadata)")
    a.add_argument("--channel", help="the channel a single-channel scenario reads (e.g. Hoechst for hoechst-lymphocytes): "
                   "its name in the file (OME or ImageJ labels) or its index from 0")
    a.add_argument("--page", type=_int_in("page"), default=1,
                   help="page (image) of a multi-page file to analyse, from 1 (default 1)")
    a.add_argument("--out", required=True,
                   help="output folder (created; files of the same names replaced; written whole or not at all)")
    a.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    a.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                   help="numeric precision of inference: bfloat16 is faster on CPUs with AVX512-BF16/AMX, for scenarios validated at it (he-til)")
    a.add_argument("--regions", help="GeoJSON regions (tumour, stroma, exclude, margin) for the statistics")
    a.add_argument("--compartments", metavar="KEY",
                   help="also run a tissue-compartment scenario (tissue-compartments) on the image: its tumour, stroma, "
                        "necrosis and background give the statistics their regions (--regions overrides them) and the "
                        "densities their tissue; writes compartments.png and regions.geojson")
    a.add_argument("--roi", help="whole slides: GeoJSON region of interest (level-0 pixels, as QuPath exports); only "
                   "tissue inside it is analysed")
    a.add_argument("--exclude", help="whole slides: GeoJSON regions (level-0 pixels) left out of the tissue")
    a.add_argument("--outside-validated-use", action="store_true",
                   help="run even when the image fails a fitness check (stain, magnification, tissue); the result is "
                        "marked as outside the validated use in every output")
    a.add_argument("--confirm-antigen", action="store_true",
                   help="the slide is stained for the antibody the scenario counts (e.g. CD3 for cd3-ihc)")
    a.add_argument("--report", action="store_true", help="also write report.pdf and cells.geojson (the files the app saves)")
    a.add_argument("--case", default="", help="case the analysis is saved under in the case history (default "
                   f"'unlabelled'; at most {CASE_LABEL_MAX_CHARS} characters)")
    a.add_argument("--no-store", action="store_true",
                   help="do not save the analysis in the case history ($TILSCOPE_DATA_DIR or $TILSCOPE_DATABASE_URL)")
    a.add_argument("--save-synthetic", action="store_true",
                   help="a model trained on synthetic images only (e.g. mihc-tcell-phenotypes): save its result in the "
                        "case history anyway, marked as a teaching analysis (you confirm its numbers are not counts for "
                        "the case); without it such a result is only written to --out")
    a.set_defaults(func=_cmd_analyze)

    c = sub.add_parser("classify-patches", help="classify single-cell patches; prints CSV path,probability,label")
    c.add_argument("paths", nargs="+", help="patch files or folders")
    c.add_argument("--scenario", required=True)
    c.add_argument("--device", default=None)
    c.set_defaults(func=_cmd_classify_patches)

    st = sub.add_parser("stats", help="spatial TIL statistics of a cell table (ours or a QuPath export)")
    st.add_argument("cells", help="cells.csv, cells.parquet or a QuPath detection measurement export")
    st.add_argument("--regions", help="GeoJSON regions (coordinates in pixels, as QuPath writes them)")
    st.add_argument("--mpp", type=_mpp, help="microns per pixel of the regions' pixel coordinates, 0.05 to 20")
    st.add_argument("--out", required=True, help="output folder for stats.json")
    st.add_argument("--radii-um", type=_radii,
                    help="comma-separated radii for fractions within r: 1 to 20 radii, each more than 0 and at most "
                         "1000 µm; default 10,20,30,50")
    st.add_argument("--margin-half-width-um", type=_float_in("margin_half_width_um"),
                    help="half-width of the invasive margin, more than 0 and at most 5000 µm (default 500)")
    st.add_argument("--n-simulations", type=_int_in("n_simulations"),
                    help="Monte-Carlo relabellings of the envelopes, 0 to 999 (default 99)")
    st.add_argument("--seed", type=_int_in("seed"), default=0, help="seed of the envelopes, 0 to 2^32 - 1")
    st.set_defaults(func=_cmd_stats)

    e = sub.add_parser("evaluate", help="evaluate a scenario on held-out data; prints JSON metrics")
    e.add_argument("--scenario", required=True)
    e.add_argument("--split", default="validation", help="data split to evaluate (cd3-ihc: validation)")
    e.add_argument("--data", help="data folder (default: ../shared/data/...)")
    e.add_argument("--mosaic", action="store_true", help="cd3-ihc: also detect cells on mosaics of held-out patches")
    e.add_argument("--synthetic", type=_int_in("synthetic"),
                   help="number of synthetic images, 1 to 1000 (generator-trained scenarios)")
    e.add_argument("--seed", type=_int_in("seed"), default=0)
    e.add_argument("--device", default=None)
    e.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="he-til: numeric precision of inference")
    e.add_argument("--restained", action="store_true",
                   help="he-til: also score the split re-stained at fixed haematoxylin/eosin strengths (staining of other laboratories)")
    e.add_argument("--dataset", help="he-til: score one H&E source within 3 µm (crc, brca-m2c, consep) or all; default: the CRC model-card evaluation")
    e.add_argument("--cv-record", help="hoechst-lymphocytes: the cross-validation record (cv.json of python -m "
                   "core.training.hoechst cv) scored out of fold (--split validation)")
    e.add_argument("--weights", help="he-til: a training stage's .safetensors to score before it is registered "
                   "(its SHA-256 goes into the output); hoechst-lymphocytes --split all: weights file to score on every tile of --data "
                   "(default the registered weights); mihc-tcell-phenotypes: the S-DRDIN weights (ablation variants: "
                   "the other mihc-tcell-phenotypes-*.safetensors beside them)")
    e.set_defaults(func=_cmd_evaluate)

    b = sub.add_parser("batch", help="analyse many images or slides on a Dask cluster: DIR/<id>/ per input, DIR/cohort.csv; "
                       "exit 0 all done, 3 some failed")
    b.add_argument("inputs", nargs="*", help="image or slide files, or folders of them")
    b.add_argument("--manifest", help="CSV with a 'path' column and optional 'mpp' and 'case' columns")
    b.add_argument("--scenario", required=True, help="scenario key (see 'scenarios')")
    b.add_argument("--out", required=True, help="output folder: one sub-folder per input, cohort.csv; rerun to resume")
    b.add_argument("--scheduler", help="address of a running Dask scheduler (default: a LocalCluster on this machine)")
    b.add_argument("--workers", type=_int_in("workers"),
                   help="LocalCluster worker processes, 1 to 256, one thread each (default: half the cores, at most one "
                        "per 4 GiB of memory)")
    b.add_argument("--memory-limit", default="auto", help="memory limit per LocalCluster worker, e.g. 4GB (default auto: "
                   "the machine's memory divided by the workers)")
    b.add_argument("--mpp", type=_mpp, help="microns per pixel, 0.05 to 20, for inputs without their own (manifest mpp)")
    b.add_argument("--case-prefix", default="", help="case label = this prefix + the file stem (unless the manifest "
                   "gives a case)")
    b.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    b.add_argument("--outside-validated-use", action="store_true",
                   help="analyse images that fail a fitness check; their results are marked so")
    b.add_argument("--confirm-antigen", action="store_true",
                   help="the slides are stained for the antibody the scenario counts (e.g. CD3 for cd3-ihc)")
    b.add_argument("--compartments", metavar="KEY",
                   help="also run a tissue-compartment scenario (tissue-compartments) on each field, as analyze does: "
                        "compartments.png and regions.geojson per input, densities and statistics (cohort.csv's "
                        "intratumoral and stromal densities) on the predicted compartments; fields only (a batch "
                        "with whole slides is refused)")
    b.add_argument("--no-store", action="store_true", help="do not save the analyses in the case history")
    b.set_defaults(func=_cmd_batch)

    u = sub.add_parser("users", add_help=False, help="sign-in users of the app: add, passwd, remove, list "
                       "('python -m core users -h' for their options)")
    u.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    u.set_defaults(func=_cmd_users)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status.

    0 on success; 2 with one line ``error: ...`` on stderr for bad input (argument,
    file, image, output folder); 130 when interrupted; 141, silently, when the reader of
    the output closed it (``| head``); 1 with one line for an unexpected
    failure (a bug: set ``TILSCOPE_DEBUG=1`` to see its traceback).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a reader gone away is met by the handler below, not at exit
        return code
    except TILscopeError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: not enough memory for this input; use a smaller image or table, or fewer simulations",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped reading (``| head``): nothing went wrong, nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit does not fail again
        return 141  # as a shell reports a command stopped by SIGPIPE
    except OSError as err:
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"error: {where}{err.strerror or err}; check the path, its permissions and the free space", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: one line, not a traceback, unless asked for
        if os.environ.get("TILSCOPE_DEBUG"):
            raise
        print(f"error: unexpected failure ({_one_line(err) or 'no details'}); please report it with the command "
              "you ran (TILSCOPE_DEBUG=1 shows the details)", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
