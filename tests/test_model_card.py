"""Model cards: every shipped weights file has its JSON card and the Markdown rendered from it."""

import json
from pathlib import Path

import pytest

from core.model_card import markdown_path, render_markdown, write_card

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
SHIPPED = sorted(WEIGHTS.glob("*.safetensors"))


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("weights", SHIPPED, ids=[w.stem for w in SHIPPED])
def test_markdown_card_is_current_and_complete(weights):
    card = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
    md = markdown_path(weights)
    assert md.exists(), f"{md.name} missing: run python -m core.model_card"
    text = md.read_text(encoding="utf-8")
    assert text == render_markdown(card), f"{md.name} is stale: run python -m core.model_card"
    flat = text.replace("\n", " ")
    missing = [s for s in _strings(list(card.values())) if " ".join(s.split()) not in " ".join(flat.split()).replace("\\|", "|")]
    assert not missing, f"left out of {md.name}: {missing[:3]}"
    assert text.index("## Intended use") < text.index("## Limitations") < text.index("## Metrics on held-out data")


def test_synthetic_card_carries_the_warning_and_write_card_writes_both(tmp_path):
    card = {"name": "toy", "scenario": "toy-key", "trained_on_synthetic": True, "intended_use": "teaching",
            "limitations": ["a", "b"], "metrics": {"per_class": {"x": {"f1": 0.5, "n": 3}, "y": {"f1": 0.25, "n": 4}}},
            "benchmark_cpu": "size s/MP\n500 1.0\n", "extra_field": {"k": [1, 2]}}
    js, md = write_card(tmp_path / "toy-v1.safetensors", card)
    assert md.name == "toy-v1.model_card.md"
    assert json.loads(js.read_text(encoding="utf-8")) == card
    text = md.read_text(encoding="utf-8")
    assert "**Trained on synthetic data.**" in text
    assert "| x | 0.5 | 3 |" in text  # a dict of records is a table
    assert "```\nsize s/MP\n500 1.0\n```" in text  # preformatted text stays as it is
    assert "## Extra field" in text and "- **k**: 1, 2" in text
    real = render_markdown({**card, "trained_on_synthetic": False})
    assert "Trained on synthetic data" not in real
