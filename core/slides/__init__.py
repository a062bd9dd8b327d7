"""Whole-slide images: reading (:mod:`.reader`), tissue detection (:mod:`.tissue`) and the
streaming, resumable tiled analysis (:mod:`.run`, :func:`analyze_slide`).

``from core.slides import is_slide`` stays light (numpy only): the analysis and its
dependencies (pandas, shapely, torch) are imported when :func:`analyze_slide` is first used.
"""

from core.slides.reader import Level, Slide, is_slide, open_slide

__all__ = ["Level", "Slide", "is_slide", "open_slide", "analyze_slide", "detect_tissue", "SlideTissue"]


def __getattr__(name: str):
    if name == "analyze_slide":
        from core.slides.run import analyze_slide

        return analyze_slide
    if name in ("detect_tissue", "SlideTissue"):
        from core.slides import tissue

        return getattr(tissue, name)
    raise AttributeError(f"module 'core.slides' has no attribute {name!r}")
