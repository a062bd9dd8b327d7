"""``python -m core analyze SLIDE ...``: the command line's door to :func:`core.slides.run.analyze_slide`.

Called by :func:`core.cli._cmd_analyze` when :func:`core.slides.is_slide` takes the input for a
whole slide. Same conventions as a field: bad input raises a
:class:`~core.errors.TILscopeError` (the CLI prints ``error: ...`` and exits 2); the files
appear in ``--out`` only when all are written. An interrupted run (Ctrl-C, a crash, a full
disk) keeps its finished tiles in ``<out>.partial/``: the same command resumes it.
"""

from __future__ import annotations

import argparse
import sys

from core.errors import InputError

__all__ = ["analyze_slide_command"]


def analyze_slide_command(args: argparse.Namespace) -> int:
    """Run ``analyze`` on a whole slide; print the counts and the files written.

    Options that have no meaning for a slide yet (``--page`` other than 1, ``--regions``,
    ``--report``, ``--case``) are refused with a message; the analysis is not saved in the
    case history (the store keeps field analyses; say so on stderr).

    Returns
    -------
    int, 0

    Raises
    ------
    InputError, ImageReadError, UnknownScenarioError, WeightsError, TILscopeError
        See :func:`core.slides.run.analyze_slide`.
    """
    from core.slides.run import SLIDE_FILES, analyze_slide, partial_folder

    refused = []
    if getattr(args, "page", 1) not in (None, 1):
        refused.append("--page (a slide's pyramid levels are not pages)")
    if getattr(args, "regions", None):
        refused.append("--regions (use --roi and --exclude; statistics by region are for fields)")
    if getattr(args, "report", False):
        refused.append("--report (the PDF report is made for fields)")
    if (getattr(args, "case", "") or "").strip():
        refused.append("--case (slide analyses are not saved in the case history yet)")
    if refused:
        raise InputError(f"{args.image}: is a whole slide, for which these options are not available yet: "
                         f"{'; '.join(refused)}. Run without them")

    last = [-1]
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if tty:  # one line, rewritten
            print(f"\rtiles {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        elif done == total or done - last[0] >= max(1, total // 20):  # a log: a line every 5 %
            last[0] = done
            print(f"tiles {done}/{total}", file=sys.stderr, flush=True)

    try:
        summary = analyze_slide(args.image, args.scenario, args.out, mpp=args.mpp, roi=getattr(args, "roi", None),
                                exclude=getattr(args, "exclude", None), progress=progress, device=args.device,
                                precision=args.precision, outside_validated_use=args.outside_validated_use,
                                antigen_confirmed=True if args.confirm_antigen else None)
    except KeyboardInterrupt:
        print(f"\nthe finished tiles are kept in {partial_folder(args.out)}: run the same command again to resume",
              file=sys.stderr)
        raise
    if not getattr(args, "no_store", False):
        print("not saved in the case history: whole-slide analyses are written to --out only", file=sys.stderr)
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
