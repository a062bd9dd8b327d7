"""Text a user typed or a file brought in, shown literally in the pages (not a page: no UI here).

Streamlit renders Markdown in ``st.markdown``, ``st.caption``, ``st.info`` / ``st.success`` /
``st.warning`` / ``st.error``, ``st.subheader`` and friends, in widget labels and help
tooltips, radio options, tab and expander labels, button labels and ``st.image`` captions:
links, images (fetched by every browser that shows them), emphasis, ``:red[...]`` colours,
``$...$`` formulas and ``:shortcode:`` icons. A case label, image or file name, user name,
note, region or class name, an error message quoting any of them, or model-card text goes
through :func:`md_escape` before it is put into such a string. Raw HTML is never rendered there
(Streamlit shows it as text), and no page passes user text to ``unsafe_allow_html``.

Selectbox and multiselect options (``format_func``), ``st.text``, ``st.code`` and dataframes
show plain text: user text goes there unescaped (an escape would show as a backslash).
"""

from __future__ import annotations

import re
from typing import Any

#: Word joiner (U+2060): invisible and zero-width. Put after ``:`` and ``@`` and inside
#: ``www.``, it stops Streamlit's GitHub-flavoured autolinks (``http://…``, ``www.…``,
#: ``a@b.org``), ``:shortcode:`` icons and ``:red[…]`` directives, some of which act on the
#: text after backslash escapes are resolved, so a backslash alone cannot stop them.
WORD_JOINER = "\u2060"

#: Characters with a meaning anywhere in a line: emphasis, links and images, raw HTML and
#: autolinks, entities, code, strikethrough, formulas, tables, the escape itself.
_INLINE = re.compile(r"([\\`*_\[\]<>&~$|])")
#: Block markers, which mean something only at the start of a line: headings, quotes, lists,
#: setext underlines, ordered lists ("1." / "1)").
_LINE_START = re.compile(r"^([ \t]*)([#>+=-]|\d{1,9}(?=[.)]))", re.MULTILINE)
_WWW = re.compile(r"(www)(\.)", re.IGNORECASE)


def md_escape(text: Any) -> str:
    r"""``text`` as Markdown that Streamlit displays literally: no link, image, emphasis, colour or formula.

    The characters with a Markdown meaning get a backslash (CommonMark's escape): ``\``,
    the backtick, ``*``, ``_``, ``[``, ``]``, ``<``, ``>``, ``&``, ``~``, ``$`` and ``|``
    anywhere, and a heading, quote or list marker at the start of a line. A :data:`WORD_JOINER`
    follows each ``:`` and ``@`` and sits inside ``www.``, so a URL or e-mail address stays
    text, not a link. Other characters are left as they are, so "B-2024-0113 (left).tif" reads
    the same in the page's source.

    Parameters
    ----------
    text : any
        The user's text (``None`` gives ``""``; anything else is ``str()``-ed).

    Returns
    -------
    str
        Markdown that renders as ``text`` (plus invisible word joiners).

    Examples
    --------
    >>> md_escape("**B-1** [x](y)") == r"\*\*B-1\*\* \[x\](y)"
    True
    >>> md_escape("# 1. <b>") == r"\# 1. \<b\>"
    True
    """
    if text is None:
        return ""
    out = _INLINE.sub(r"\\\1", str(text))
    out = _LINE_START.sub(lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2)[0].isdigit() else "\\" + m.group(2)),
                          out)
    out = out.replace(":", ":" + WORD_JOINER).replace("@", "@" + WORD_JOINER)
    return _WWW.sub(r"\1" + WORD_JOINER + r"\2", out)
