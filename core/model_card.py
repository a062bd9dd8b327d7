"""Model cards: the JSON beside each weights file, and its Markdown rendering for people.

Every weights file ``weights/<stem>.safetensors`` has its card as ``weights/<stem>.json``
(machine-readable, MONAI-bundle-like metadata: read by the registry, the app and the
report) and as ``weights/<stem>.model_card.md`` (the same card for a reader: intended use and
limitations first, then the held-out metrics, training data and training, the departures
from the paper, and everything else). The Markdown is generated from the JSON, never
edited by hand; ``python -m core.model_card`` re-renders every card in ``weights/``, and a
test checks they agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: Sections in reading order (a clinician's first questions first); other keys follow in the JSON's order.
SECTION_ORDER = (
    ("intended_use", "Intended use"),
    ("limitations", "Limitations"),
    ("metrics", "Metrics on held-out data"),
    ("training_data", "Training data"),
    ("training", "Training"),
    ("departures_from_paper", "Departures from the paper"),
    ("architecture", "Architecture"),
    ("input", "Input"),
    ("output", "Output"),
    ("thresholds", "Thresholds"),
    ("inference_precisions", "Inference precisions"),
    ("benchmark_cpu", "Speed (CPU benchmark)"),
    ("references", "References"),
)
_HEADER_KEYS = ("name", "scenario", "version", "weights_file", "weights_sha256", "weights_dtype", "trained_on_synthetic")


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("\n", " ")


def _is_scalar(value) -> bool:
    return not isinstance(value, (dict, list))


def _table(rows: list[dict]) -> list[str]:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [_scalar(r[c]) if _is_scalar(r.get(c)) else json.dumps(r[c], ensure_ascii=False) for c in cols]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def _is_record_table(value) -> bool:
    """A dict of flat records with the same keys (e.g. per-class metrics): shown as a table."""
    if not isinstance(value, dict) or len(value) < 2:
        return False
    recs = list(value.values())
    return all(isinstance(r, dict) and r and all(map(_is_scalar, r.values())) and r.keys() == recs[0].keys() for r in recs)


def _block(value, indent: int = 0) -> list[str]:
    """Markdown lines for any JSON value (nested bullets; lists of flat records as tables)."""
    pad = "  " * indent
    if isinstance(value, str) and "\n" in value:
        return ["```", *value.rstrip("\n").split("\n"), "```"]
    if _is_scalar(value):
        return [pad + _scalar(value)]
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and all(_is_scalar(x) or isinstance(x, list) and all(map(_is_scalar, x))
                                                     for x in v.values()) for v in value) and indent == 0:
            return _table(value)
        lines = []
        for v in value:
            if _is_scalar(v):
                lines.append(f"{pad}- {_scalar(v)}")
            else:
                lines.append(f"{pad}-")
                lines.extend(_block(v, indent + 1))
        return lines
    lines = []
    for k, v in value.items():
        if isinstance(v, str) and "\n" in v:  # preformatted text (a benchmark table)
            lines += [f"{pad}- **{k}**:", "", *[pad + "      " + row for row in v.rstrip("\n").split("\n")], ""]
        elif _is_record_table(v):
            lines += [f"{pad}- **{k}**:", "", *[pad + "  " + row for row in _table([{"": name, **rec} for name, rec in v.items()])], ""]
        elif _is_scalar(v):
            lines.append(f"{pad}- **{k}**: {_scalar(v)}")
        elif isinstance(v, list) and all(map(_is_scalar, v)) and len(v) <= 12 and sum(len(_scalar(x)) for x in v) < 200:
            lines.append(f"{pad}- **{k}**: " + ", ".join(_scalar(x) for x in v))
        else:
            lines.append(f"{pad}- **{k}**:")
            lines.extend(_block(v, indent + 1))
    return lines


def render_markdown(card: dict) -> str:
    """The card as Markdown.

    Parameters
    ----------
    card : dict
        A model card as written beside the weights (``weights/<stem>.json``).

    Returns
    -------
    str
        Markdown: a title and header lines (scenario, version, file, SHA-256, synthetic-data
        warning), then one section per top-level key, in :data:`SECTION_ORDER` first. No key
        of the card is left out.
    """
    title = card.get("name") or card.get("weights_file") or "model"
    lines = [f"# Model card: {title}", "",
             "_Generated from the JSON card beside the weights (`python -m core.model_card`); do not edit by hand._", ""]
    lines += [f"- **{key}**: `{_scalar(card[key])}`" for key in _HEADER_KEYS[1:-1] if key in card]
    if "trained_on_synthetic" in card:
        lines.append(f"- **trained_on_synthetic**: {_scalar(card['trained_on_synthetic'])}")
    if card.get("trained_on_synthetic"):
        lines += ["", "> **Trained on synthetic data.** Its figures come from the project's generator, not from "
                      "annotated patient images: check its output by eye on real slides."]
    titles = dict(SECTION_ORDER)
    keys = [k for k, _ in SECTION_ORDER if k in card] + [k for k in card if k not in titles and k not in _HEADER_KEYS]
    for key in keys:
        lines += ["", f"## {titles.get(key, key.replace('_', ' ').capitalize())}", ""]
        lines += _block(card[key])
    return "\n".join(lines) + "\n"


def markdown_path(weights: Path | str) -> Path:
    """``weights/<stem>.model_card.md``: where the Markdown card of ``weights/<stem>.safetensors`` lives."""
    return Path(weights).with_suffix(".model_card.md")


def write_card(weights: Path, card: dict) -> tuple[Path, Path]:
    """Write ``card`` beside ``weights`` as ``<stem>.json`` and ``<stem>.model_card.md``; returns both paths."""
    weights = Path(weights)
    js, md = weights.with_suffix(".json"), markdown_path(weights)
    js.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md.write_text(render_markdown(card), encoding="utf-8")
    return js, md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.model_card",
                                description="Re-render weights/<stem>.model_card.md from every weights/<stem>.json card.")
    p.add_argument("--weights-dir", default=str(Path(__file__).resolve().parent.parent / "weights"))
    args = p.parse_args(argv)
    for weights in sorted(Path(args.weights_dir).glob("*.safetensors")):
        card = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
        md = markdown_path(weights)
        md.write_text(render_markdown(card), encoding="utf-8")
        print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
