"""``python -m core analyze SLIDE ...``: the command line's door to :func:`core.slides.run.analyze_slide`.

Called by :func:`core.cli._cmd_analyze` when :func:`core.slides.is_slide` takes the input for a
whole slide. Same conventions as a field: bad input raises a
:class:`~core.errors.TILscopeError` (the CLI prints ``error: ...`` and exits 2); the files
appear in ``--out`` only when all are written; the analysis is saved in the case history under
``--case`` (default ``unlabelled``) unless ``--no-store`` (:func:`core.slides.records.save_slide_analysis`,
the record the app's Slides page saves). An interrupted run (Ctrl-C, a crash, a full disk)
keeps its finished tiles in ``<out>.partial/``: the same command resumes it.
"""

from __future__ import annotations

import argparse
import sys

from core.errors import InputError

__all__ = ["analyze_slide_command"]


def analyze_slide_command(args: argparse.Namespace) -> int:
    """Run ``analyze`` on a whole slide, save it in the case history; print the counts and the files written.

    Options that have no meaning for a slide yet (``--page`` other than 1, ``--regions``,
    ``--report``) are refused with a message, as is a case label the store would refuse,
    before anything runs. Unless ``--no-store``, the analysis is saved under ``--case``
    (default ``unlabelled``) with the output folder's files (:mod:`core.slides.records`).

    Returns
    -------
    int, 0

    Raises
    ------
    InputError, ImageReadError, UnknownScenarioError, WeightsError, TILscopeError
        See :func:`core.slides.run.analyze_slide`; StoreError when the case history cannot
        be written (the files are in ``--out`` by then).
    """
    from core.cli import _check_case_label
    from core.slides.run import SLIDE_FILES, analyze_slide, partial_folder

    refused = []
    if getattr(args, "page", 1) not in (None, 1):
        refused.append("--page (a slide's pyramid levels are not pages)")
    if getattr(args, "regions", None):
        refused.append("--regions (use --roi and --exclude; statistics by region are for fields)")
    if getattr(args, "report", False):
        refused.append("--report (the PDF report is made for fields)")
    if refused:
        raise InputError(f"{args.image}: is a whole slide, for which these options are not available yet: "
                         f"{'; '.join(refused)}. Run without them")
    case = _check_case_label(getattr(args, "case", "") or "")
    store = None
    if not getattr(args, "no_store", False):
        from core.outputs.store import CaseStore

        store = CaseStore()  # a database that cannot be opened is said before the slide is analysed

    last = [-1]
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if tty:  # one line, rewritten
            print(f"\rtiles {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        elif done == total or done - last[0] >= max(1, total // 20):  # a log: a line every 5 %
            last[0] = done
            print(f"tiles {done}/{total}", file=sys.stderr, flush=True)

    summary = None
    try:
        summary = analyze_slide(args.image, args.scenario, args.out, mpp=args.mpp, roi=getattr(args, "roi", None),
                                exclude=getattr(args, "exclude", None), progress=progress, device=args.device,
                                precision=args.precision, outside_validated_use=args.outside_validated_use,
                                antigen_confirmed=True if args.confirm_antigen else None)
    except KeyboardInterrupt:
        print(f"\nthe finished tiles are kept in {partial_folder(args.out)}: run the same command again to resume",
              file=sys.stderr)
        raise
    finally:
        if summary is None and store is not None:
            store.close()
    if store is not None:
        from core.slides.records import save_slide_analysis

        try:
            params = {"roi": str(args.roi) if getattr(args, "roi", None) else None,
                      "exclude": str(args.exclude) if getattr(args, "exclude", None) else None,
                      "mpp_given": args.mpp, "outputs": str(args.out)}
            analysis_id, _ = save_slide_analysis(store, args.out, summary, case, params=params)
        finally:
            store.close()
        print(f"saved as analysis {analysis_id} of case {case or 'unlabelled'!r} in the case history")
    for w in summary.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    for w in summary.get("outside_validated_use", []):
        print(f"OUTSIDE THE VALIDATED USE: {w}", file=sys.stderr)
    density = summary["density_per_mm2"]
    counts = ", ".join(f"{k}: {v} ({density[k]:.1f} cells/mm²)" for k, v in summary["counts"].items())
    tiles = summary["tiles"]
    print(f"{summary['image']['name']}: {summary['n_cells']} cells [{counts}] in {summary['tissue_area_mm2']:.3f} mm² "
          f"of tissue, {tiles['with_tissue']} tiles, {summary['runtime_s']:.1f} s on {summary['device']}"
          + (" (resumed)" if summary.get("resumed") else ""))
    print(f"wrote {', '.join(str(args.out) + '/' + n for n in SLIDE_FILES)}")
    return 0
