"""PDF building blocks shared by the analysis report and the tumour-board comparison.

fpdf2 with the DejaVu Sans font that ships with matplotlib, so "µm" and "mm²" print; the
research-use statement is in every page's footer. :func:`new_pdf` fixes the creation date
(from the analysis's own time, not the clock), so the same record gives the same bytes.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import core
from core.outputs import records as rec
from core.outputs.key_figures import format_value

#: Printed on every report page and on the comparison.
RESEARCH_USE = "Research use only, not for diagnostic decisions."
#: Creation date of a PDF whose record has no time.
FIXED_CREATION_DATE = datetime(2000, 1, 1, tzinfo=timezone.utc)


def _font_paths() -> tuple[Path, Path]:
    import matplotlib

    base = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return base / "DejaVuSans.ttf", base / "DejaVuSans-Bold.ttf"


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (or a datetime) as an aware datetime (naive read as UTC); None if unreadable."""
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value))
        except (TypeError, ValueError):
            return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def new_pdf(orientation: str = "P", created_at: Any = None):
    """An A4 fpdf2 document with the fonts, margins and research-use footer.

    Parameters
    ----------
    orientation : {"P", "L"}
    created_at : str or datetime, optional
        Written as the PDF's creation date (and so into its file id); default
        :data:`FIXED_CREATION_DATE`, so the bytes never depend on the clock.
    """
    from fpdf import FPDF

    class _PDF(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("DejaVu", "", 7)
            self.set_text_color(110)
            self.cell(0, 5, f"TILscope {core.__version__} · {RESEARCH_USE} · page {self.page_no()}/{{nb}}", align="C")
            self.set_text_color(0)

    pdf = _PDF(orientation=orientation, unit="mm", format="A4")
    regular, bold = _font_paths()
    pdf.add_font("DejaVu", "", str(regular))
    pdf.add_font("DejaVu", "B", str(bold))
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(15, 15, 15)
    pdf.set_creator(f"TILscope {core.__version__}")
    pdf.set_creation_date(parse_time(created_at) or FIXED_CREATION_DATE)
    return pdf


def heading(pdf, text: str, size: int = 12, need_mm: float = 24.0) -> None:
    """A section heading, on a new page unless ``need_mm`` more fit below it."""
    if pdf.get_y() + 9 + need_mm > pdf.h - 18:
        pdf.add_page()
    pdf.ln(2)
    pdf.set_font("DejaVu", "B", size)
    pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 9)


def banner(pdf, text: str = RESEARCH_USE) -> None:
    """A red-framed one-line statement across the page (the research-use statement)."""
    pdf.set_fill_color(253, 236, 234)
    pdf.set_draw_color(192, 57, 43)
    pdf.set_text_color(150, 30, 20)
    pdf.set_font("DejaVu", "B", 10)
    pdf.cell(0, 8, text, border=1, fill=True, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.set_draw_color(0)
    pdf.set_fill_color(255)
    pdf.ln(2)


def alert_box(pdf, text: str, font_size: float = 9.5) -> None:
    """A red box with one statement a reader must see first (e.g. "Outside the validated use: ...")."""
    pdf.set_fill_color(253, 236, 234)
    pdf.set_draw_color(192, 57, 43)
    pdf.set_line_width(0.5)
    pdf.set_text_color(150, 30, 20)
    pdf.set_font("DejaVu", "B", font_size)
    pdf.multi_cell(0, font_size * 0.5, text, border=1, fill=True, padding=1.2, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_line_width(0.2)
    pdf.set_text_color(0)
    pdf.set_draw_color(0)
    pdf.set_fill_color(255)
    pdf.set_font("DejaVu", "", 9)
    pdf.ln(1.5)


def caution_box(pdf, lines: list[str], font_size: float = 9) -> None:
    """An amber box listing what a reader must know before trusting the numbers."""
    if not lines:
        return
    pdf.set_fill_color(255, 244, 214)
    pdf.set_draw_color(200, 140, 0)
    pdf.set_font("DejaVu", "B" if font_size >= 9 else "", font_size)
    text = "\n".join(f"⚠ {line}" for line in lines)
    pdf.multi_cell(0, font_size * 0.5, text, border=1, fill=True, padding=1, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_draw_color(0)
    pdf.set_fill_color(255)
    pdf.set_font("DejaVu", "", 9)
    pdf.ln(2)


def table(pdf, rows: list[list[str]], col_widths: tuple[float, ...], header: bool = True, font_size: float = 8.5,
          width: float | None = None, align: str = "CENTER", line_height: float | None = None,
          first_column_bold: bool = False) -> None:
    """A table with a shaded heading row and alternating row shading.

    Parameters
    ----------
    rows : list of list of str
        The first row is the heading when ``header``.
    col_widths : tuple of float
        Relative column widths (fpdf2 scales them to ``width``).
    width : float, optional
        Table width in mm (default: between the margins); ``align`` ("LEFT", "CENTER",
        "RIGHT") places a narrower table.
    line_height : float, optional
        Line height in mm (default about half the font size).
    first_column_bold : bool
        Print the first column in bold (label / value tables).
    """
    from fpdf.fonts import FontFace

    pdf.set_font("DejaVu", "", font_size)
    bold = FontFace(emphasis="BOLD")
    with pdf.table(
        col_widths=col_widths,
        width=width,
        align=align,
        first_row_as_headings=header,
        line_height=line_height or max(3.6, font_size * 0.54),
        padding=(0.8, 1, 0.8, 1),
        headings_style=FontFace(emphasis="BOLD", fill_color=(230, 236, 245)),
        cell_fill_color=(246, 247, 249),
        cell_fill_mode="ROWS",
        text_align="LEFT",
        v_align="TOP",
    ) as t:
        for i, row in enumerate(rows):
            r = t.row()
            for j, value in enumerate(row):
                r.cell(str(value), style=bold if first_column_bold and j == 0 and (i > 0 or not header) else None)
    pdf.ln(1)


def bullets(pdf, lines: list[str], font_size: float = 8.5) -> None:
    """``lines`` as a bulleted list across the page."""
    pdf.set_font("DejaVu", "", font_size)
    for line in lines:
        pdf.multi_cell(0, font_size * 0.52, f"• {line}", align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)


def shorten(text: Any, max_chars: int = 120, note: bool = True) -> str:
    """``text`` as one line of at most about ``max_chars`` characters, saying when it was shortened.

    Parameters
    ----------
    text : any
        Written with ``str``; runs of white space become one space.
    max_chars : int
        Characters kept before "…".
    note : bool
        Append "(N characters, shortened)" to a shortened text.

    Examples
    --------
    >>> shorten("x" * 5000, 20)
    'xxxxxxxxxxxxxxxxxxxx… (5,000 characters, shortened)'
    """
    text = " ".join(str(text).split())
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars].rstrip()}…" + (f" ({len(text):,} characters, shortened)" if note else "")


def image_size_mm(png: bytes, max_w: float, max_h: float) -> tuple[float, float]:
    """Width and height in mm of ``png`` scaled to fit ``max_w`` x ``max_h`` mm."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        w_px, h_px = im.size
    scale = min(max_w / w_px, max_h / h_px)
    return w_px * scale, h_px * scale


def image(pdf, png: bytes, max_w: float, max_h: float, caption: str = "") -> None:
    """``png`` centred, at most ``max_w`` x ``max_h`` mm, with an optional caption below."""
    w, h = image_size_mm(png, max_w, max_h)
    if pdf.get_y() + h + (8 if caption else 0) > pdf.h - 18:
        pdf.add_page()
    pdf.image(io.BytesIO(png), x=(pdf.w - w) / 2, y=pdf.get_y(), w=w, h=h)
    pdf.set_y(pdf.get_y() + h + 1)
    if caption:
        pdf.set_font("DejaVu", "", 8)
        pdf.set_text_color(70)
        pdf.multi_cell(0, 4, caption, align="C", new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0)
        pdf.set_font("DejaVu", "", 9)
    pdf.ln(1)


def date_text(value: Any) -> str:
    """An ISO 8601 time as "YYYY-MM-DD HH:MM UTC" ("n/a" if missing)."""
    if not value:
        return "n/a"
    try:
        dt = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if dt.tzinfo is not None:
        return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return dt.strftime("%Y-%m-%d %H:%M")


def text_list(value: Any) -> list[str]:
    """A str, list or dict (flattened "key: value") as lines of text."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [f"{k}: {format_value(v)}" for k, v in rec.flatten_scalars(value).items()]
    return [str(v) for v in value]


def pdf_bytes(pdf, path: str | Path | None = None) -> bytes:
    """The finished PDF's bytes, also written to ``path`` when given."""
    data = bytes(pdf.output())
    if path is not None:
        Path(path).write_bytes(data)
    return data
