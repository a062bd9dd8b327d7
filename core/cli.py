"""Command line: ``python -m core {scenarios,analyze,classify-patches,stats,evaluate}``.

Shares every step with the app (:mod:`core.pipeline`: run → save → write). Bad input exits
with status 2 and one line on stderr that says what was wrong; no traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from core.errors import TILscopeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


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
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            synthetic = "  [trained on synthetic images]" if r["trained_on_synthetic"] else ""
            print(f"{r['key']:<20} {r['title']}  ({r['stain']}, {r['input_mpp']} µm/px){synthetic}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from core.io import load_image
    from core.pipeline import load_model, run_analysis, save_analysis, write_analysis, write_stored

    image = load_image(args.image, mpp=args.mpp)
    regions = _read_regions(args.regions, image.mpp)
    model = load_model(args.scenario, args.device, args.precision)
    result = run_analysis(image, args.scenario, model=model, regions=regions,
                          outside_validated_use=args.outside_validated_use,
                          antigen_confirmed=True if args.confirm_antigen else None)
    if args.no_store or result.scenario.trained_on_synthetic:
        if not args.no_store:
            print(f"not saved in the case history: the {result.scenario.title} model was trained on synthetic images "
                  "only (teaching and method development); the files are written below", file=sys.stderr)
        files = write_analysis(result, args.out, report=args.report, case_label=args.case or None)
    else:  # as the app does: saved in the case history, and the stored files written
        from core.outputs.store import CaseStore

        store = CaseStore()
        try:
            analysis_id = save_analysis(result, args.case or "unlabelled", store)
            files = write_stored(store, analysis_id, args.out, report=args.report)
        finally:
            store.close()
        print(f"saved as analysis {analysis_id} of case {args.case or 'unlabelled'!r} in the case history")
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
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return 0


def _read_regions(regions_path: str | None, mpp: float | None):
    """Regions of a GeoJSON file in µm, or None without a file."""
    if not regions_path:
        return None
    from core.errors import InputError
    from core.spatial.regions import read_regions_geojson

    if mpp is None:
        raise InputError("--regions needs the image's microns per pixel: pass --mpp")
    return read_regions_geojson(regions_path, mpp)


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

    cells, taken = spatial.read_cell_table_csv(args.cells)
    regions = None
    if args.regions:
        from core.spatial.regions import read_regions_geojson

        regions = read_regions_geojson(args.regions, args.mpp)
    params = spatial.SpatialParams(**_stats_params(args))
    stats = spatial.compute_spatial_stats(cells, regions, params, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").write_text(json.dumps({"input": taken, **stats}, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"read {len(cells)} cells from {args.cells} ({json.dumps(taken, ensure_ascii=False)})")
    print(f"wrote {out / 'stats.json'}")
    return 0


def _stats_params(args: argparse.Namespace) -> dict:
    params = {}
    if args.radii_um:
        params["radii_um"] = tuple(float(r) for r in args.radii_um.split(","))
    if args.margin_half_width_um is not None:
        params["margin_half_width_um"] = args.margin_half_width_um
    if args.n_simulations is not None:
        params["n_simulations"] = args.n_simulations
    return params


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from core.evaluation import evaluate

    print(json.dumps(evaluate(args.scenario, args), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="TILscope: count and locate TILs.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scenarios", help="list the scenario models")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_scenarios)

    a = sub.add_parser("analyze", help="analyse one image; write cells.csv, summary.json, overlay.png and the scenario's maps")
    a.add_argument("image")
    a.add_argument("--scenario", required=True, help="scenario key (see 'scenarios')")
    a.add_argument("--mpp", type=float, help="microns per pixel (overrides the file's metadata)")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    a.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                   help="numeric precision of inference: bfloat16 is faster on CPUs with AVX512-BF16/AMX, for scenarios validated at it (he-til)")
    a.add_argument("--regions", help="GeoJSON regions (tumour, stroma, exclude, margin) for the statistics")
    a.add_argument("--outside-validated-use", action="store_true",
                   help="run even when the image fails a fitness check (stain, magnification, tissue); the result is "
                        "marked as outside the validated use in every output")
    a.add_argument("--confirm-antigen", action="store_true",
                   help="the slide is stained for the antibody the scenario counts (e.g. CD3 for cd3-ihc)")
    a.add_argument("--report", action="store_true", help="also write report.pdf and cells.geojson (the files the app saves)")
    a.add_argument("--case", default="", help="case the analysis is saved under in the case history (default 'unlabelled')")
    a.add_argument("--no-store", action="store_true",
                   help="do not save the analysis in the case history ($TILSCOPE_DATA_DIR or $TILSCOPE_DATABASE_URL)")
    a.set_defaults(func=_cmd_analyze)

    c = sub.add_parser("classify-patches", help="classify single-cell patches; prints CSV path,probability,label")
    c.add_argument("paths", nargs="+", help="patch files or folders")
    c.add_argument("--scenario", required=True)
    c.add_argument("--device", default=None)
    c.set_defaults(func=_cmd_classify_patches)

    st = sub.add_parser("stats", help="spatial TIL statistics of a cell table (ours or a QuPath export)")
    st.add_argument("cells", help="cells.csv or a QuPath detection measurement export")
    st.add_argument("--regions", help="GeoJSON regions (coordinates in pixels, as QuPath writes them)")
    st.add_argument("--mpp", type=float, help="microns per pixel of the regions' pixel coordinates")
    st.add_argument("--out", required=True)
    st.add_argument("--radii-um", help="comma-separated radii for fractions within r, default 10,20,30,50")
    st.add_argument("--margin-half-width-um", type=float)
    st.add_argument("--n-simulations", type=int)
    st.add_argument("--seed", type=int, default=0)
    st.set_defaults(func=_cmd_stats)

    e = sub.add_parser("evaluate", help="evaluate a scenario on held-out data; prints JSON metrics")
    e.add_argument("--scenario", required=True)
    e.add_argument("--split", default="validation", help="data split to evaluate (cd3-ihc: validation)")
    e.add_argument("--data", help="data folder (default: ../shared/data/...)")
    e.add_argument("--mosaic", action="store_true", help="cd3-ihc: also detect cells on mosaics of held-out patches")
    e.add_argument("--synthetic", type=int, help="number of synthetic images (generator-trained scenarios)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default=None)
    e.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="he-til: numeric precision of inference")
    e.add_argument("--restained", action="store_true",
                   help="he-til: also score the split re-stained at fixed haematoxylin/eosin strengths (staining of other laboratories)")
    e.add_argument("--dataset", help="he-til: score one H&E source within 3 µm (crc, brca-m2c, consep) or all; default: the CRC model-card evaluation")
    e.set_defaults(func=_cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TILscopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
