"""AppTest smoke tests of the Cases and Tumour board pages on a throwaway data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.outputs.store import CaseStore

REPO = Path(__file__).resolve().parents[1]
CASES = str(REPO / "pages" / "cases.py")
BOARD = str(REPO / "pages" / "tumour_board.py")
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ffff3f0005fe02fe"
    "a7356b8a0000000049454e44ae426082"
)


def summary(n: int, name: str) -> dict:
    return {
        "scenario": "cd3-ihc", "weights_sha256": "9f" * 32, "mpp": 0.5, "area_mm2": 0.1,
        "image": {"name": name, "sha256": "ab" * 32, "width_px": 800, "height_px": 500},
        "counts": {"cd3-positive": n}, "density_per_mm2": {"cd3-positive": n / 0.1},
    }


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TILSCOPE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def two_analyses(data_dir):
    store = CaseStore()
    a = store.save_analysis(
        "B-2024-0113", summary(40, "first.tif"), spatial={"immune_phenotype": "inflamed", "nn_median_um": 11.0},
        files={"overlay.png": PNG_1PX, "report.pdf": b"%PDF-1.4"},
    )
    b = store.save_analysis("C-7", summary(90, "second.tif"), spatial={"immune_phenotype": "excluded", "nn_median_um": 25.0})
    store.close()
    return a, b


def run(path: str, **state) -> AppTest:
    at = AppTest.from_file(path, default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def test_cases_page_empty(data_dir):
    at = run(CASES)
    assert not at.exception
    assert any("No analyses saved yet" in i.value for i in at.info)


def test_cases_page_lists_opens_and_searches(two_analyses):
    a, b = two_analyses
    at = run(CASES)
    assert not at.exception and not at.error
    options = at.selectbox[0].options  # newest first
    assert len(options) == 2
    assert options[0].startswith(f"#{b} · C-7 · second.tif") and options[1].startswith(f"#{a} · B-2024-0113")
    at.selectbox[0].set_value(a).run()
    assert not at.exception
    assert f"#{a} · B-2024-0113 · first.tif" in at.subheader[0].value
    assert any(m.label == "Cells" and m.value == "40" for m in at.metric)
    figures = [d.value for d in at.dataframe if "measure" in d.value.columns]  # as on the report and the board
    assert figures and figures[0].set_index("measure").loc["cd3-positive density", "value"] == "400 cells/mm²"
    at.text_input[0].input("second").run()
    assert len(at.selectbox[0].options) == 1 and "C-7" in at.selectbox[0].options[0]


def test_cases_page_delete_needs_confirmation(two_analyses):
    a, b = two_analyses
    at = run(CASES, open_analysis=a)
    button(at, "Delete analysis…").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    assert len(CaseStore().list_analyses()) == 2  # nothing deleted before confirming
    button(at, "Yes, delete it").click().run()
    assert not at.exception
    assert [r["id"] for r in CaseStore().list_analyses()] == [b]


def test_cases_page_adds_to_board(two_analyses):
    a, _ = two_analyses
    at = run(CASES, open_analysis=a)
    button(at, "Add to tumour board").click().run()
    assert at.session_state["board_ids"] == [a]


def test_tumour_board_compares_and_exports(two_analyses):
    a, b = two_analyses
    at = run(BOARD, board_ids=[a, b])
    assert not at.exception and not at.error
    assert at.multiselect[0].value == [a, b]
    table = at.dataframe[0].value  # key figures first
    assert list(table.loc["cd3-positive cells"]) == ["40", "90"]
    assert list(table.loc["cd3-positive density"]) == ["400 cells/mm²", "900 cells/mm²"]
    assert "spatial: immune_phenotype" not in table.index
    at.toggle[0].set_value(True).run()  # "Every statistic"
    table = at.dataframe[0].value
    assert list(table.loc["spatial: immune_phenotype"]) == ["inflamed", "excluded"]
    button(at, "Prepare comparison PDF").click().run()
    assert not at.exception
    ids, pdf = at.session_state["board_pdf"]
    assert ids == (a, b) and pdf.startswith(b"%PDF")


def test_tumour_board_empty_and_bad_database(data_dir, monkeypatch):
    at = run(BOARD)
    assert not at.exception and any("No analyses saved yet" in i.value for i in at.info)
    monkeypatch.setenv("TILSCOPE_DATABASE_URL", "not a url")
    for page in (BOARD, CASES):
        at = run(page)
        assert not at.exception
        assert any("not a database URL" in e.value for e in at.error)


def test_cases_page_sends_an_analysis_to_review(two_analyses):
    a, _ = two_analyses
    at = run(CASES, open_analysis=a)
    assert not at.exception
    button(at, "Review this analysis").click().run()
    assert not at.exception and at.session_state["review_request"] == a


def test_cases_page_shows_the_reviewed_state_who_did_it_and_the_original(data_dir):
    """An analysis saved by one user and reviewed by another, through the review session."""
    from core import review as rv
    from core.outputs.exports import save_result
    from core.spatial import SpatialParams
    from tests.test_review import small_result

    store = CaseStore()
    aid = save_result(small_result(), "B-9", store, created_by="Dr Ana Silva")
    session = rv.open_saved_analysis(store, aid)
    session.delete_at(20.0, 50.0, 5.0, user="Dr Jo Park", comment="stain deposit")
    rv.save_review(store, session, user="Dr Jo Park", comment="second read", params=SpatialParams(n_simulations=0))
    store.close()
    at = run(CASES, open_analysis=aid, user_name="Dr Lee")
    assert not at.exception and not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cells"] == "13" and metrics["Manual corrections"] == "1"
    assert any("Analysed by Dr Ana Silva" in m.value and "reviewed by Dr Jo Park" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert table.loc[table["id"] == aid, "reviewed by"].iloc[0].startswith("Dr Jo Park")
    frames = [d.value for d in at.dataframe]
    before = next(f for f in frames if "detected" in f.columns)
    assert before.set_index("class").loc["cd3-positive", "detected"] == 10
    assert before.set_index("class").loc["cd3-positive", "reviewed"] == 9
    audit = next(f for f in frames if "what changed" in f.columns)
    assert list(audit["action"]) == ["review saved", "delete", "analysis saved"]
    assert list(audit["user"]) == ["Dr Jo Park", "Dr Jo Park", "Dr Ana Silva"]
    assert list(audit["why"])[:2] == ["second read", "stain deposit"]
    assert audit["what changed"].iloc[1] == "cell 0 (cd3-positive) deleted"
    labels = {b.label for b in at.get("download_button")}
    assert {"report.pdf", "report.pdf (before review)", "cells.csv (before review)"} <= labels
    assert "source-image.png (before review)" not in labels
    # the spatial statistics table starts with statistics, not the schema or the thresholds
    stats = next(f for f in frames if "statistic" in f.columns)
    assert not stats["statistic"].str.startswith(("schema", "params")).any()


def test_cases_page_says_when_saving_did_not_finish(data_dir):
    """An analysis whose files were never written (the app stopped in between) is not shown as saved."""
    store = CaseStore()
    done = store.save_analysis("B-1", summary(40, "first.tif"), files={"report.pdf": b"%PDF-1.4"})
    cut = store.save_analysis("B-2", summary(50, "second.tif"), complete=False)  # numbers only, as after a kill
    store.close()
    at = run(CASES, open_analysis=cut)
    assert not at.exception
    assert any("Saving did not finish" in e.value for e in at.error)
    assert at.selectbox[0].options[0].endswith("saving did not finish")
    table = at.dataframe[0].value
    assert dict(zip(table["id"], table["status"])) == {done: "saved", cut: "saving did not finish"}
    assert button(at, "Review this analysis").disabled
    button(at, "Delete analysis…").click().run()
    button(at, "Yes, delete it").click().run()
    assert [r["id"] for r in CaseStore().list_analyses()] == [done]
    at = run(CASES, open_analysis=done)
    assert not at.exception and not at.error and "status" not in at.dataframe[0].value.columns


def test_md_escape_shows_user_text_literally():
    from pages._text import WORD_JOINER, md_escape

    raw = "**B-1** <img src=x> [Re-login](http://evil.example) ![i](y) :red[r] $x$ `c` ~~s~~ a_b | & www.e.org a@b.org"
    out = md_escape(raw)
    for marker in ("**", " <img", "[Re-login]", "![", "`c`", "~~", "$x$", " a_b ", "http://", "www.", "a@b"):
        assert marker not in out, marker
    unescaped = out.replace(WORD_JOINER, "")
    for ch in "*<>[]`~$_|&":
        unescaped = unescaped.replace("\\" + ch, ch)
    assert unescaped == raw  # nothing else changes: the page shows exactly what was typed
    assert md_escape("12. B-7\n# h\n- x\n> q") == "12\\. B-7\n\\# h\n\\- x\n\\> q"  # block markers
    assert md_escape(None) == "" and md_escape("B-2024-0113 (left).tif") == "B-2024-0113 (left).tif"


def test_cases_page_shows_a_hostile_case_label_as_text(data_dir):
    from pages._text import md_escape

    label = "**bold** <img src=http://127.0.0.1:9/x.png> [Re-login here](http://evil.example)"
    store = CaseStore()
    aid = store.save_analysis(label, summary(40, "![i](http://127.0.0.1:9/y.png).tif"), created_by="[Dr](http://e.example)")
    store.close()
    at = run(CASES, open_analysis=aid)
    assert not at.exception and not at.error
    assert md_escape(label) in at.subheader[0].value and "[Re-login here](" not in at.subheader[0].value
    assert "![i](" not in at.subheader[0].value
    assert any("Analysed by \\[Dr\\](http:" in m.value for m in at.markdown)
    assert at.selectbox[0].options[0].startswith(f"#{aid} · {label}")  # options are plain text: shown as typed
