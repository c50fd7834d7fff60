"""A desk's words live in its workspace: both example desks load, and a broken workspace names what is wrong."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from supportflow.dialogue.project import plan_dialogue, read_desk_dialogue
from supportflow.errors import ContractError
from supportflow.settings import Settings
from supportflow.validate.catalogue import load_catalogue
from supportflow.workspace import WorkspaceError, kb_sources, load_workspace

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["banking77", "saas"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_desk_is_a_complete_workspace(name: str) -> None:
    desk = load_workspace(ROOT / "examples" / name)
    catalogue = load_catalogue(desk.root / "intents.yaml")
    exports = desk.ticket_files()
    assert exports, "the pipeline would have nothing to ingest"
    labels: set[str] = set()
    for files, source in exports:
        for file in files:
            frame = pd.read_csv(file)
            labels |= set(frame[source.field_map.get("intent", "intent")])
    assert labels == set(catalogue.intents)  # every intent has tickets, and no ticket's intent is outside the catalogue
    articles = {
        line.split(":", 1)[1].strip()
        for path in desk.kb_sources()[0].glob("*.md")
        for line in path.read_text().splitlines()[:8]
        if line.startswith("intent:")
    }
    assert articles == set(catalogue.intents)  # one article per intent
    assert desk.config.texts.greeting and desk.config.demo_questions


def test_the_desks_speak_in_their_own_words() -> None:
    banking, saas = (load_workspace(ROOT / "examples" / name).config.texts for name in EXAMPLES)
    assert "cards" in banking.greeting and "Tasklane" in saas.greeting
    assert saas.handoff != banking.handoff  # saas says it its own way; banking keeps the default


def test_the_kb_sources_are_the_workspaces_unless_set(tmp_path: Path) -> None:
    desk = ROOT / "examples" / "saas"
    assert kb_sources(Settings(workspace=desk)) == [desk / "kb"]
    assert kb_sources(Settings(workspace=desk, kb_sources=[tmp_path])) == [tmp_path]


def test_a_missing_workspace_or_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="does not exist"):
        load_workspace(tmp_path / "nowhere")
    with pytest.raises(WorkspaceError, match=r"supportflow\.yaml is missing"):
        load_workspace(tmp_path)
    (tmp_path / "supportflow.yaml").write_text("name: shop\n")
    with pytest.raises(ContractError, match=rf"{tmp_path / 'intents.yaml'}: the intent catalogue is missing"):
        load_catalogue(Settings(workspace=tmp_path).catalogue_file)


def test_a_wrong_key_and_an_unmatched_source_name_the_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "supportflow.yaml").write_text("name: shop\ntexts:\n  greting: hi\n")
    with pytest.raises(WorkspaceError, match=r"supportflow\.yaml: texts\.greting: Extra inputs"):
        load_workspace(tmp_path)
    (tmp_path / "supportflow.yaml").write_text("name: shop\ntickets:\n  - path: exports/*.csv\n")
    with pytest.raises(WorkspaceError, match=r"ticket source 'exports/\*\.csv' matches no file"):
        load_workspace(tmp_path).ticket_files()
    (tmp_path / "supportflow.yaml").write_text("name: shop\ntickets:\n  - path: export.csv\n    field_map: {txt: message}\n")
    with pytest.raises(WorkspaceError, match=r"supportflow\.yaml: tickets\.0\.field_map: 'txt' is not a ticket field"):
        load_workspace(tmp_path)
    (tmp_path / "supportflow.yaml").write_text("name: [unclosed\n")
    with pytest.raises(WorkspaceError, match="not valid YAML"):
        load_workspace(tmp_path)


def test_a_catalogue_may_say_what_each_intent_needs_and_rejects_what_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "intents.yaml"
    path.write_text("name: shop\nversion: 1\nintents:\n- order_status\n- name: pricing_inquiry\n  needs: [product_name]\n")
    catalogue = load_catalogue(path)
    assert catalogue.intents == ("order_status", "pricing_inquiry")
    assert (catalogue.needs("pricing_inquiry"), catalogue.needs("order_status")) == (("product_name",), ())
    path.write_text("name: shop\nversion: 1\nintents:\n- name: pricing_inquiry\n  needz: [product_name]\n")
    with pytest.raises(ContractError, match="unknown keys"):
        load_catalogue(path)
    path.write_text("name: shop\nintents: [a]\n")
    with pytest.raises(ContractError, match="`version` is required"):
        load_catalogue(path)


def test_a_desk_sets_its_own_promises_unless_the_setting_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supportflow.workspace import with_desk_promises

    monkeypatch.delenv("SUPPORTFLOW_TARGET_PRECISION", raising=False)
    monkeypatch.delenv("SUPPORTFLOW_MAX_WRONG_ANSWERS", raising=False)
    monkeypatch.delenv("SUPPORTFLOW_PRECISION_CONFIDENCE", raising=False)
    config = tmp_path / "supportflow.yaml"
    config.write_text("name: shop\n")
    defaults = with_desk_promises(Settings(workspace=tmp_path))
    assert (defaults.target_precision, defaults.max_wrong_answers) == (
        Settings.model_fields["target_precision"].default,
        Settings.model_fields["max_wrong_answers"].default,
    )
    assert defaults.precision_confidence == Settings.model_fields["precision_confidence"].default
    config.write_text("name: shop\ntarget_precision: 0.9\nmax_wrong_answers: 0.01\nprecision_confidence: 0\n")
    desk = with_desk_promises(Settings(workspace=tmp_path))
    assert (desk.target_precision, desk.max_wrong_answers, desk.precision_confidence) == (0.9, 0.01, 0.0)
    monkeypatch.setenv("SUPPORTFLOW_TARGET_PRECISION", "0.95")  # an operator's word wins over the desk's file
    operator = with_desk_promises(Settings(workspace=tmp_path))
    assert (operator.target_precision, operator.max_wrong_answers) == (0.95, 0.01)
    config.write_text("name: shop\ntarget_precision: 1.5\n")
    with pytest.raises(WorkspaceError, match=r"supportflow\.yaml: target_precision: Input should be less than or equal to 1"):
        load_workspace(tmp_path)
    config.write_text("name: shop\nprecision_confidence: 1\n")  # no finite validation split vouches with certainty
    with pytest.raises(WorkspaceError, match=r"supportflow\.yaml: precision_confidence: Input should be less than 1"):
        load_workspace(tmp_path)


def test_init_scaffolds_a_workspace_from_a_labelled_export_with_drafts_that_are_never_served(tmp_path: Path) -> None:
    from supportflow.kb.loaders import load_sources
    from supportflow.workspace import scaffold

    export = tmp_path / "export.csv"
    frame = pd.DataFrame(
        {"message": [f"question {i} about {topic}" for topic in ("refunds", "logins", "exports") for i in range(12)]}
        | {"category": ["refund"] * 12 + ["login"] * 12 + ["export"] * 12}
    )
    frame.loc[0, "message"] = "Hi team, question 0 about refunds: I sent it back a week ago and heard nothing since. Best, Jo"
    frame.iloc[:30].to_csv(export, index=False)  # export: 6 tickets, the others 12
    desk = scaffold(tmp_path / "desk", export, None, {"text": "message", "intent": "category"}, Settings()).workspace

    catalogue = load_catalogue(desk.catalogue_file)
    assert catalogue.intents == ("refund", "login", "export")  # most tickets first
    assert "- export  # 6 tickets" in desk.catalogue_file.read_text()
    ((files, source),) = desk.ticket_files()
    assert files == [str(desk.root / "data" / "export.csv")] and source.field_map == {"text": "message", "intent": "category"}
    assert desk.config.demo_questions[0] == "question 1 about refunds"  # the shortest of the first few: a question to show
    loaded = load_sources(desk.kb_sources(), 10 << 20)
    assert loaded.documents == []  # drafts only: nothing a customer could be answered with
    assert sorted(Path(s.item).stem for s in loaded.skipped) == ["export", "login", "refund"]
    assert all("draft" in s.reason for s in loaded.skipped)
    dialogue = read_desk_dialogue(desk.dialogue_dir)  # the default dialogue files, with tests on the desk's own intents
    tested = {
        step.get("intent")
        for story in yaml.safe_load((desk.dialogue_dir / "tests" / "test_stories.yml").read_text())["stories"]
        for step in story["steps"]
    }
    assert {"refund", "login", "ask_human"} <= tested
    assert plan_dialogue(catalogue, dialogue).asking == {}


def test_init_folds_labels_that_differ_only_in_case_and_drafts_hold_no_personal_details(tmp_path: Path) -> None:
    """An export typed by people: one category as "Lost or stolen card" and "lost or stolen  card", messages with
    HTML, emails and phone numbers. The catalogue gets one intent under the spelling most tickets use; the draft's
    examples are redacted and plain; and a writer who removes `draft: true` but keeps them serves only the answer."""
    from supportflow.kb.loaders import load_sources
    from supportflow.workspace import scaffold

    texts = [f"<p>I lost my card {i}, mail me at jo{i}@example.com &amp; thanks</p>" for i in range(9)]
    labels = ["Lost or stolen card"] * 5 + ["lost or stolen  card"] * 3 + ["ATM support"]
    export = tmp_path / "export.csv"
    pd.DataFrame({"text": texts, "intent": labels}).to_csv(export, index=False)

    made = scaffold(tmp_path / "desk", export, None, {}, Settings())

    assert load_catalogue(made.workspace.catalogue_file).intents == ("Lost or stolen card", "ATM support")
    assert made.intents.counts == {"Lost or stolen card": 8, "ATM support": 1}
    assert made.intents.respelt == {"Lost or stolen card": {"lost or stolen card": 3}}
    assert made.below_minimum == {"ATM support": 1}
    draft = (made.workspace.root / "kb" / "Lost or stolen card.md").read_text()
    assert "I lost my card 0, mail me at <EMAIL> & thanks" in draft
    assert "example.com" not in draft and "<p>" not in draft
    assert "title: ATM support" in (made.workspace.root / "kb" / "ATM support.md").read_text()  # the acronym kept
    written = draft.replace("draft: true\n", "").replace(
        "# Lost or stolen card\n", "# Lost or stolen card\n\nReport a lost card in the app.\n"
    )
    (made.workspace.root / "kb" / "Lost or stolen card.md").write_text(written)
    (served,) = load_sources(made.workspace.kb_sources(), 10 << 20).documents
    assert served.title == "Lost or stolen card" and "Report a lost card in the app." in served.body
    assert "I lost my card" not in served.body and "What customers asked" not in served.body


def test_init_reads_a_zendesk_exports_intent_field_counts_the_unlabelled_and_tests_without_anchors(tmp_path: Path) -> None:
    """Zendesk desks keep the intent in a custom field (its value `order_status`, or its display name "Order Status")
    or a tag. Init is told the field, folds the two spellings into one intent, says how many tickets carry none, and
    writes the field on the source, so `ingest PATH` and `evaluate --file` read the desk's next export the same way."""
    from supportflow.workspace import export_intent_field, scaffold

    def ticket(number: int, value: str | None, tags: list[str]) -> dict:
        fields = [{"id": 360001, "value": value}, {"id": 7, "value": "web"}]
        text = {"subject": f"Question {number}", "description": f"where is parcel {number}?"}
        return {"id": number, **text, "tags": tags, "custom_fields": fields}

    tickets = [ticket(i, "order_status", []) for i in range(6)] + [ticket(10 + i, "Order Status", []) for i in range(3)]
    tickets += [ticket(20 + i, None, ["intent:returns"]) for i in range(4)] + [ticket(30 + i, None, []) for i in range(2)]
    export = tmp_path / "export.json"
    export.write_text("\n".join(json.dumps(t) for t in tickets) + "\n")  # Zendesk's full export: a ticket a line, in a .json file

    blind = scaffold(tmp_path / "blind", export, None, {}, Settings())
    assert (blind.intents.counts, blind.unlabelled) == ({"returns": 4}, 11)  # without the field, only the tags

    made = scaffold(tmp_path / "desk", export, None, {}, Settings(), zendesk_intent_field_id=360001)

    assert made.intents.counts == {"order_status": 9, "returns": 4} and made.unlabelled == 2
    assert made.intents.respelt == {"order_status": {"Order Status": 3}}
    assert made.workspace.config.tickets[0].zendesk_intent_field_id == 360001
    settings = Settings(workspace=made.workspace.root)
    assert export_intent_field(settings) == 360001 and export_intent_field(settings, 9) == 9
    assert export_intent_field(Settings(workspace=blind.workspace.root)) is None
    stories = (made.workspace.dialogue_dir / "tests" / "test_stories.yml").read_text()
    assert "&id" not in stories and "*id" not in stories  # each step written out, as a person would
    with pytest.raises(WorkspaceError, match="--field-map does not apply"):
        scaffold(tmp_path / "mapped", export, None, {"text": "body"}, Settings())


def test_init_never_writes_into_a_folder_with_files_and_needs_labelled_tickets(tmp_path: Path) -> None:
    from supportflow.workspace import scaffold

    export = tmp_path / "export.csv"
    export.write_text("text\nwhere is my order\n")
    with pytest.raises(WorkspaceError, match="no ticket has both a text and an intent"):
        scaffold(tmp_path / "desk", export, None, {}, Settings())
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    export.write_text("text,intent\nwhere is my order,order_status\n")
    with pytest.raises(WorkspaceError, match="not empty"):
        scaffold(taken, export, None, {}, Settings())
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_an_intent_rasa_would_misread_is_renamed_or_refused_before_init_writes_anything(tmp_path: Path) -> None:
    """Help-desk categories are often paths ("Account/Login"); Rasa would read one as a retrieval intent, and its draft
    article as a file in a folder: init names the intent "Account - Login" and keeps the export's label as its alias,
    so the export is ingested as it is. An intent named `restart` would restart the conversation instead of being
    answered: refused whole, so the user can rename it and run init again on the same folder."""
    from supportflow.workspace import scaffold

    export = tmp_path / "export.csv"
    export.write_text("text,intent\nI cannot log in,Account/Login\nlocked out,Account/Login\nrefund please,Billing & Refunds\n")
    made = scaffold(tmp_path / "desk", export, None, {}, Settings())
    written = load_catalogue(made.workspace.catalogue_file)
    assert written.intents == ("Account - Login", "Billing & Refunds") and made.intents.aliases == {"Account - Login": "Account/Login"}
    assert written.specs["Account - Login"].aliases == ("Account/Login",)
    assert written.spelling(pd.Series(["Account/Login", "account/login", "Billing & Refunds"])).tolist() == [
        "Account - Login",
        "Account - Login",
        "Billing & Refunds",
    ]
    assert (made.workspace.root / "kb" / "Account - Login.md").is_file()
    export.write_text("text,intent\nturn it off and on,restart\nrefund please,Billing & Refunds\n")
    with pytest.raises(WorkspaceError, match=r"intent 'restart' is Rasa's own.*\(1 tickets\): rename those intents"):
        scaffold(tmp_path / "other", export, None, {}, Settings())
    assert not (tmp_path / "other").exists()
    catalogue = tmp_path / "intents.yaml"
    catalogue.write_text("name: shop\nversion: 1\nintents:\n- order_status\n- name: faq/opening_hours\n")
    with pytest.raises(ContractError, match=rf"{catalogue}: intent 'faq/opening_hours' has '/' in its name"):
        load_catalogue(catalogue)
    catalogue.write_text("name: shop\nversion: 1\nintents:\n- order_status\n- restart\n")  # "restart my router", say
    with pytest.raises(ContractError, match=rf"{catalogue}: intent 'restart' is Rasa's own: it restarts the conversation"):
        load_catalogue(catalogue)


def test_init_writes_a_catalogue_that_reads_back_whatever_the_exports_labels_look_like(tmp_path: Path) -> None:
    """Category numbers, "no", "null" or "Billing: refunds" are labels YAML would read as something else if written bare."""
    from supportflow.workspace import scaffold

    labels = ["1", "no", "null", "Billing: refunds", "refund #2", "on", "3.5", "~", "refund"]
    export = tmp_path / "export.csv"
    pd.DataFrame({"text": [f"question {n} about it" for n in range(len(labels))], "intent": labels}).to_csv(export, index=False)
    desk = scaffold(tmp_path / "desk", export, None, {}, Settings()).workspace
    assert load_catalogue(desk.catalogue_file).intents == tuple(labels)
    assert "- refund  # 1 tickets: fewer than 5, not learned until it has more" in desk.catalogue_file.read_text()  # plain stays plain


def test_init_from_an_export_in_another_encoding_records_it_on_the_source(tmp_path: Path) -> None:
    from supportflow.workspace import scaffold

    export = tmp_path / "export.csv"
    export.write_bytes("text,intent\nmy café order is late,order_status\nwhere is my order?,order_status\n".encode("cp1252"))

    desk = scaffold(tmp_path / "desk", export, None, {}, Settings(), encoding="cp1252").workspace

    ((_, source),) = desk.ticket_files()
    assert source.encoding == "cp1252"
    assert "my café order is late" in (desk.root / "kb" / "order_status.md").read_text()


def test_init_without_an_export_writes_a_small_working_skeleton(tmp_path: Path) -> None:
    from supportflow.workspace import BotTexts, skeleton

    desk = skeleton(tmp_path / "corner-shop")

    assert load_workspace(desk.root) == desk
    assert desk.config.name == "corner-shop" and desk.config.texts == BotTexts()  # the defaults, written out to edit
    lines = (desk.root / "supportflow.yaml").read_text().splitlines()
    for text in BotTexts.model_fields:
        at = next(number for number, line in enumerate(lines) if line.startswith(f"  {text}: "))
        assert lines[at - 1].startswith("  # "), f"{text} has no comment saying when the bot says it"
    catalogue = load_catalogue(desk.catalogue_file)
    assert catalogue.name == "corner-shop" and len(catalogue.intents) == 4
    assert all(catalogue.specs[intent].description for intent in catalogue.intents)
    ((files, _),) = desk.ticket_files()
    tickets = pd.read_csv(files[0])
    assert set(tickets["intent"]) == set(catalogue.intents) and tickets["text"].is_unique
    articles = {path.stem: path.read_text() for path in (desk.root / "kb").glob("*.md")}
    assert set(articles) == set(catalogue.intents)
    assert all(f"\nintent: {intent}\n" in text and "draft" not in text.split("---")[1] for intent, text in articles.items())
    assert sorted(path.name for path in desk.root.iterdir()) == ["data", "domain", "intents.yaml", "kb", "supportflow.yaml"]


def test_the_skeletons_tickets_pass_ingest_and_the_data_contracts(tmp_path: Path) -> None:
    from supportflow.ingest.load import ingest_file
    from supportflow.lake import open_lake
    from supportflow.validate.snapshot import validate_lake
    from supportflow.workspace import skeleton
    from tests.conftest import make_settings

    desk = skeleton(tmp_path / "desk")
    settings = make_settings(tmp_path, str(tmp_path / "lake"), workspace=desk.root)
    lake = open_lake(settings)

    reports = [ingest_file(file, lake, settings, source.source, source.format) for files, source in desk.ticket_files() for file in files]
    manifest = validate_lake(lake, settings)

    assert [(r.rows_read, r.written, r.quarantined) for r in reports] == [(64, 64, 0)]
    assert (manifest.validation.accepted, manifest.validation.quarantined, manifest.intents) == (64, 0, 4)
    assert manifest.intent_catalogue == "desk" and all(rows > 0 for rows in manifest.rows.values())


def test_init_refuses_a_folder_with_files_for_the_skeleton_too(tmp_path: Path) -> None:
    from supportflow.workspace import skeleton

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="not empty"):
        skeleton(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_each_desk_keeps_its_own_stores_unless_a_store_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults themselves (the test session points every store elsewhere): only Settings objects, nothing written."""
    from supportflow.settings import PROJECT_ROOT
    from tests.conftest import store_environment

    for name in store_environment(tmp_path):
        monkeypatch.delenv(name, raising=False)
    demo = Settings(workspace=ROOT / "examples" / "banking77")
    other = Settings(workspace=tmp_path / "shop")
    assert demo.lake_url == ".lake" and demo.mlflow_tracking_uri == "sqlite:///mlflow.db"
    desk = PROJECT_ROOT / ".desks" / "shop"
    assert other.lake_url == str(desk / "lake") and other.mlflow_tracking_uri == f"sqlite:///{desk / 'mlflow.db'}"
    assert (other.kb_dir, other.rasa_project_dir, other.bentoml_home, other.run_dir) == (
        desk / "kb",
        desk / "rasa",
        desk / "bentoml",
        desk / "run",
    )
    assert other.handoff_db_url == f"sqlite:///{desk / 'handoff.db'}"
    placed = Settings(workspace=tmp_path / "shop", lake_url=str(tmp_path / "lake"))
    assert placed.lake_url == str(tmp_path / "lake") and placed.kb_dir == desk / "kb"
    moved = Settings(workspace=tmp_path / "shop", desks_dir=tmp_path / "desks")  # SUPPORTFLOW_DESKS_DIR: all desks elsewhere
    assert moved.lake_url == str(tmp_path / "desks" / "shop" / "lake") and moved.bentoml_home == tmp_path / "desks" / "shop" / "bentoml"


def test_an_intent_reads_as_a_title_its_desk_would_write() -> None:
    from supportflow.validate.catalogue import intent_title

    assert intent_title("card_arrival") == intent_title("card-arrival") == "Card arrival"  # a slug gets its spaces
    assert intent_title("ATM support") == "ATM support"  # people's own spelling stays
    assert intent_title(" Top-up  failed ") == "Top-up failed"
    assert intent_title("passcode forgotten") == "Passcode forgotten"
