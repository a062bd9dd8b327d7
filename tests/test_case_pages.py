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


@pytest.fixture
def team(data_dir):
    """A user file (ana and cleo analysts of group 'path', vic a viewer of it, ben an analyst alone) and their cases."""
    from core.auth import User, UserFile

    users = UserFile()
    for name, role, groups in (("ana", "analyst", ["path"]), ("vic", "viewer", ["path"]), ("ben", "analyst", []),
                               ("root", "admin", [])):
        users.add(name, role, groups, password=f"{name}-long-password")
    store = CaseStore()
    shared = store.for_actor(User("ana", "analyst", ("path",))).save_analysis(
        "A-shared", summary(40, "a.tif"), group="path", files={"report.pdf": b"%PDF-1.4"})
    own = store.for_actor(User("ben", "analyst", ())).save_analysis("B-own", summary(50, "b.tif"))
    store.close()
    return shared, own


def signed_in(name: str):
    from core.auth import UserFile

    return {"auth_user": UserFile().get(name).user(), "auth_via": "password"}


def test_cases_page_shows_each_user_their_cases_and_rights(team):
    shared, own = team
    at = run(CASES, **signed_in("vic"))  # a viewer of group 'path'
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["id"]) == [shared] and list(table["shared with group"]) == ["path"]
    assert button(at, "Delete analysis…").disabled and button(at, "Save note").disabled
    at = run(CASES, **signed_in("ben"))
    assert list(at.dataframe[0].value["id"]) == [own]
    assert not button(at, "Delete analysis…").disabled
    button(at, "Delete analysis…").click().run()
    button(at, "Yes, delete it").click().run()
    assert not at.exception and [r["id"] for r in CaseStore().list_analyses()] == [shared]
    assert CaseStore().audit_log(own)[0]["user"] == "ben"
    at = run(CASES, **signed_in("root"), open_analysis=shared)  # an admin sees all and may delete
    assert list(at.dataframe[0].value["id"]) == [shared] and not button(at, "Delete analysis…").disabled


def test_pages_ask_for_a_sign_in_once_there_are_users(team):
    from core.auth import UserFile

    for page in (CASES, BOARD):
        at = run(page)
        assert not at.exception and not at.dataframe  # nothing from the case store before signing in
        assert any("Sign in" in i.value for i in at.info)
    at = run(CASES)
    name, password = at.sidebar.text_input[0], at.sidebar.text_input[1]
    name.input("ana")
    password.input("wrong password!")
    at.sidebar.button[0].click().run()
    assert [e.value for e in at.sidebar.error] == ["Wrong name or password."] and not at.dataframe
    for _ in range(5):  # the limiter: five failures, then a wait, even with the right password
        at.sidebar.text_input[0].input("ana")
        at.sidebar.text_input[1].input("still wrong!!")
        at.sidebar.button[0].click().run()
    at.sidebar.text_input[0].input("ana")
    at.sidebar.text_input[1].input("ana-long-password")
    at.sidebar.button[0].click().run()
    assert any("Too many failed sign-ins" in e.value for e in at.sidebar.error) and not at.dataframe
    at = run(CASES)
    at.sidebar.text_input[0].input("cleo")  # another name is not held up by ana's failures; unknown: same words
    at.sidebar.text_input[1].input("whatever password")
    at.sidebar.button[0].click().run()
    assert [e.value for e in at.sidebar.error] == ["Wrong name or password."]
    UserFile().add("dee", "analyst", ["path"], password="dee-long-password")
    at = run(CASES)
    at.sidebar.text_input[0].input("Dee")  # names are matched regardless of case
    at.sidebar.text_input[1].input("dee-long-password")
    at.sidebar.button[0].click().run()
    assert not at.exception and list(at.dataframe[0].value["id"]) == [team[0]]
    assert any(t.value == "dee" for t in at.sidebar.text)


def test_every_page_refuses_to_serve_the_network_without_users(data_dir):
    from streamlit import config

    CaseStore().save_analysis("B-1", summary(40, "first.tif"))
    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        for page in ("cases.py", "tumour_board.py", "analyze.py", "review.py", "home.py", "teaching.py"):
            at = run(str(REPO / "pages" / page))
            assert not at.exception, page
            assert len(at.error) == 1 and "python -m core users add" in at.error[0].value, page
            assert not at.dataframe and not at.button, page
    finally:
        config.set_option("server.address", before)


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


def test_sign_in_through_an_oidc_provider(team, monkeypatch):
    """With [auth] in the secrets: a sign-in button (st.login); the provider's e-mail address gets its role from the user file."""
    import streamlit

    from core.auth import UserFile

    secrets = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 40, "client_id": "tilscope",
               "client_secret": "s", "server_metadata_url": "https://login.example.org/.well-known/openid-configuration"}
    at = AppTest.from_file(CASES, default_timeout=60)
    at.secrets["auth"] = secrets
    at.run()
    assert not at.exception and not at.dataframe
    assert [b.label for b in at.sidebar.button] == ["Sign in with your organisation's account", "Sign in"]
    UserFile().add("ana.silva@hospital.org", "analyst", ["path"], password=None)
    for email, ids in (("Ana.Silva@hospital.org", [team[0]]), ("stranger@example.org", [])):
        monkeypatch.setattr(streamlit, "user", {"is_logged_in": True, "email": email, "name": "Someone"})
        at = AppTest.from_file(CASES, default_timeout=60)
        at.secrets["auth"] = secrets
        at.run()
        assert not at.exception, at.exception
        assert [t.value for t in at.sidebar.text][:1] == [email.lower()]
        if ids:  # an analyst of group 'path'
            assert list(at.dataframe[0].value["id"]) == ids
        else:  # not in the user file: a viewer of no group sees nothing
            assert any("No analyses saved yet" in i.value for i in at.info) and not at.dataframe
