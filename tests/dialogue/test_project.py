"""The Rasa project a desk gets: its own dialogue files, merged with what its catalogue implies, checked, and tested.

The example desks' projects are built, validated, trained and put through their conversation tests with the real
Rasa; mistakes in a desk's files are caught before Rasa runs, each named with its file and line.
"""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from supportflow.dialogue.build import read_conversation_tests
from supportflow.dialogue.project import DialogueFilesError, plan_dialogue, read_desk_dialogue, write_project
from supportflow.dialogue.rasa_cli import RasaCommandError, run_rasa_commands, validate_train_and_test
from supportflow.settings import Settings
from supportflow.validate.catalogue import load_catalogue
from supportflow.workspace import load_workspace, skeleton

ROOT = Path(__file__).resolve().parents[2]
DESKS = {  # the desk's folder, its tickets and their intent column (the SaaS desk's run in tests/loop/test_second_desk.py)
    "banking77": (ROOT / "examples" / "banking77", "data/train.csv", "category"),
    "saas": (ROOT / "examples" / "saas", "data/tickets.csv", "intent"),
    "skeleton": (ROOT / "supportflow" / "workspace_skeleton", "data/tickets.csv", "intent"),
}


@pytest.fixture
def desk(tmp_path: Path) -> Path:
    """A copy of the SaaS desk to break, without its tickets."""
    source = ROOT / "examples" / "saas"
    shutil.copytree(source, tmp_path / "desk", ignore=lambda folder, names: ["data"] if Path(folder) == source else [])
    return tmp_path / "desk"


def plan(root: Path) -> object:
    return plan_dialogue(load_catalogue(root / "intents.yaml"), read_desk_dialogue(root / "domain"))


def examples(name: str) -> dict[str, list[str]]:
    root, file, column = DESKS[name]
    frame = pd.read_csv(root / file)
    return {intent: group["text"].head(5).tolist() for intent, group in frame.groupby(column)}


def build(root: Path, folder: Path, name: str) -> Path:
    desk = load_workspace(root) if name != "skeleton" else skeleton(folder.parent / "skeleton-desk")
    catalogue, dialogue = load_catalogue(desk.catalogue_file), read_desk_dialogue(desk.dialogue_dir)
    return write_project(folder, catalogue, dialogue, examples(name), 0.5, "http://127.0.0.1:9/classify", desk.config.language)


def test_a_needed_slot_gets_a_generated_form_unless_the_desk_declared_it() -> None:
    banking = plan(ROOT / "examples" / "banking77")
    assert banking.asking["lost_or_stolen_card"] == "lost_or_stolen_card_form"
    assert banking.forms["lost_or_stolen_card_form"] == ["card_type"] and banking.inform_entities == ["card_type"]
    saas = plan(ROOT / "examples" / "saas")
    assert saas.asking == {"pricing_inquiry": "pricing_inquiry_form"} and saas.forms == {}  # Tasklane wrote its own form


def test_the_desks_files_are_copied_unchanged_and_its_own_rule_replaces_the_generated_one(desk: Path, tmp_path: Path) -> None:
    rules = desk / "domain" / "data" / "rules.yml"
    rules.write_text(
        'version: "3.1"\nrules:\n  - rule: outages get the status page\n'
        "    steps:\n      - intent: service_outage\n      - action: utter_status\n"
    )
    domain = desk / "domain" / "domain.yml"
    domain.write_text(domain.read_text() + "  utter_status:\n    - text: See status.tasklane.example for live status.\n")
    project = build(desk, tmp_path / "project", "saas")
    for original in (domain, rules, desk / "domain" / "tests" / "test_stories.yml"):
        copies = [p for p in project.rglob(original.name) if "workspace" in p.parts or p.parent.name == "tests"]
        assert any(copy.read_bytes() == original.read_bytes() for copy in copies), original
    generated = yaml.safe_load((project / "data" / "generated" / "rules.yml").read_text())["rules"]
    first_intents = [rule["steps"][0].get("intent") for rule in generated]
    assert "service_outage" not in first_intents and "password_reset" in first_intents
    generated_domain = yaml.safe_load((project / "domain" / "generated.yml").read_text())
    assert "pricing_inquiry_form" not in (generated_domain.get("forms") or {})
    # The intents the bot offered when unsure, kept by Rasa until the next turn answers or declines them.
    assert generated_domain["slots"]["offered_intents"] == {
        "type": "list",
        "influence_conversation": False,
        "mappings": [{"type": "custom"}],
    }


def test_mistakes_in_the_desks_files_name_the_file_and_line(desk: Path) -> None:
    rules = desk / "domain" / "data" / "rules.yml"
    rules.write_text('version: "3.1"\nrules:\n  - rule: thanks\n    steps:\n      - intent: thank_you\n      - action: utter_thanks\n')
    with pytest.raises(DialogueFilesError) as raised:
        plan(desk)
    assert f"{rules}:5: unknown intent 'thank_you'" in str(raised.value)
    assert f"{rules}:6: unknown action or response 'utter_thanks'" in str(raised.value)
    rules.unlink()
    tests = desk / "domain" / "tests" / "test_stories.yml"
    tests.write_text(
        tests.read_text().replace(
            "- product_name: Tasklane Automations\n      - action", "- product_nam: Tasklane Automations\n      - action"
        )
    )
    with pytest.raises(DialogueFilesError, match=rf"{tests}:\d+: unknown slot 'product_nam'"):
        plan(desk)


def test_what_rasa_says_about_the_build_folders_copies_names_the_desks_own_files(desk: Path, tmp_path: Path) -> None:
    """What only `rasa data validate` finds (a story conflict, a YAML it cannot read) is reported on the build folder's
    copies; the error the desk reads names the files it edits."""
    from supportflow.dialogue.project import workspace_path

    project = build(desk, tmp_path / "project", "saas")
    dialogue = read_desk_dialogue(desk / "domain")
    said = (
        f"`rasa data validate` failed in {project} (exit 1):\n"
        f"YamlSyntaxException: Failed to read '{project / 'data' / 'workspace' / 'nlu.yml'}'. in line 3\n"
        "Story structure conflict after intent 'pricing_inquiry' in 'data/workspace/nlu.yml' and 'domain/workspace/domain.yml'"
    )
    told = workspace_path(said, project, dialogue)
    assert f"Failed to read '{desk / 'domain' / 'data' / 'nlu.yml'}'. in line 3" in told
    assert f"in '{desk / 'domain' / 'data' / 'nlu.yml'}' and '{desk / 'domain' / 'domain.yml'}'" in told
    assert all((desk / "domain" / relative).is_file() for relative in ("data/nlu.yml", "domain.yml"))  # real files, named right


def test_a_needed_slot_must_be_declared_with_a_question_to_ask(desk: Path) -> None:
    catalogue = desk / "intents.yaml"
    catalogue.write_text(catalogue.read_text().replace("needs: [product_name]", "needs: [plan_name]"))
    with pytest.raises(DialogueFilesError, match=r"pricing_inquiry needs the slot 'plan_name', which no file .* declares"):
        plan(desk)
    catalogue.write_text(catalogue.read_text().replace("needs: [plan_name]", "needs: [product_name]"))
    domain = desk / "domain" / "domain.yml"
    domain.write_text(domain.read_text().replace("utter_ask_product_name", "utter_which_product"))
    with pytest.raises(
        DialogueFilesError, match=r"the slot 'product_name' has no question to ask: add a response `utter_ask_product_name`"
    ):
        plan(desk)


ORDER_NUMBER_DOMAIN = """
entities:
  - order_number
slots:
  order_number:
    type: text
    influence_conversation: false
    mappings:
      - type: from_entity
        entity: order_number
responses:
  utter_ask_order_number:
    - text: What is your order number?
"""


def order_number_desk(folder: Path) -> Path:
    """The skeleton with the slot its domain's comment describes, found in messages by a regex alone."""
    desk = skeleton(folder)
    domain = desk.dialogue_dir / "domain.yml"
    domain.write_text(domain.read_text() + ORDER_NUMBER_DOMAIN)
    (desk.dialogue_dir / "data").mkdir(exist_ok=True)
    regex = 'version: "3.1"\nnlu:\n  - regex: order_number\n    examples: |\n      - ORD-\\d{5}\n'
    (desk.dialogue_dir / "data" / "nlu.yml").write_text(regex)
    catalogue = desk.catalogue_file
    catalogue.write_text(catalogue.read_text().replace("  - name: cancellation\n", "  - name: cancellation\n    needs: [order_number]\n"))
    return desk.root


def test_an_entity_known_by_a_regex_alone_is_extracted(tmp_path: Path) -> None:
    """A slot filled from a pattern (an order number) with no lookup table: Rasa's regex extractor must run, or the
    form asks for a number the customer already gave, and again after they answer."""
    root = order_number_desk(tmp_path / "orders")
    desk = load_workspace(root)
    dialogue = read_desk_dialogue(desk.dialogue_dir)
    assert dialogue.regexes() == {"order_number": [r"ORD-\d{5}"]} and dialogue.lookup_values() == {}
    catalogue = load_catalogue(desk.catalogue_file)
    tickets = {"cancellation": ["please cancel order ord-48213 today", "cancel it"], "account_access": ["locked out again"]}
    project = write_project(tmp_path / "project", catalogue, dialogue, tickets, 0.5, "http://127.0.0.1:9/classify", "en")
    nlu = yaml.safe_load((project / "data" / "generated" / "nlu.yml").read_text())["nlu"]
    examples = {entry["intent"]: entry["examples"].splitlines() for entry in nlu}
    # Rasa's extractor learns a regex only for an entity it has seen marked in an example: the build marks the values.
    assert examples["cancellation"] == ["- please cancel order [ord-48213](order_number) today", "- cancel it"]
    assert examples["inform"] == ["- [ord-48213](order_number)"]
    with pytest.raises(DialogueFilesError, match=r"no example ticket holds a value that the regex of order_number matches"):
        write_project(tmp_path / "unmarked", catalogue, dialogue, {"cancellation": ["cancel it"]}, 0.5, "", "en")
    pipeline = yaml.safe_load((project / "config.yml").read_text())["pipeline"]
    assert {"name": "RegexEntityExtractor", "case_sensitive": False, "use_lookup_tables": True, "use_regexes": True} in pipeline
    assert plan_dialogue(catalogue, dialogue).inform_entities == ["order_number"]
    bare = skeleton(tmp_path / "bare")
    plain = write_project(tmp_path / "plain", load_catalogue(bare.catalogue_file), read_desk_dialogue(bare.dialogue_dir), {}, 0.5, "", "en")
    assert "RegexEntityExtractor" not in (plain / "config.yml").read_text()  # nothing to extract: no extractor


@pytest.mark.slow
@pytest.mark.parametrize("name", ["skeleton"])  # the example desks' run in every pipeline the loop tests build
def test_inits_skeleton_validates_trains_and_passes_its_conversation_tests(name: str, tmp_path: Path) -> None:
    settings = Settings(workspace=DESKS[name][0])
    project = build(DESKS[name][0], tmp_path / "project", name)
    built = validate_train_and_test(settings, project)
    assert built.model.is_file() and built.report is not None and "Story structure validation" in built.validation
    outcome = read_conversation_tests(project / "tests", built.report)
    assert outcome.stories >= 3 and outcome.failed == [], outcome


@pytest.mark.slow
def test_rasa_commands_in_one_process_stop_at_the_first_that_fails_and_name_it(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, rasa_venv=ROOT / ".venv-rasa")
    versions = run_rasa_commands(settings, tmp_path, [["--version"], ["--version"]])
    assert len(versions) == 2 and all(output.count("Rasa Version") == 1 for output in versions)
    with pytest.raises(RasaCommandError, match=r"`rasa no-such-command` failed in .* \(exit 2\)") as failed:
        run_rasa_commands(settings, tmp_path, [["--version"], ["no-such-command"], ["train", "--data", str(tmp_path / "none")]])
    assert failed.value.command == ("no-such-command",) and not (tmp_path / "models").exists()  # the third never ran


@pytest.mark.slow
def test_a_test_that_answers_an_intent_which_now_asks_for_a_slot_is_told_to_run_the_form(tmp_path: Path) -> None:
    """Init writes conversation tests in which the desk's intents are answered at once; once one of them `needs` a
    slot its form asks first, and the failure says where and why, not only which story."""
    from supportflow.dialogue.build import _where_they_went_wrong

    root = order_number_desk(tmp_path / "orders")
    tests = root / "domain" / "tests" / "test_stories.yml"
    story = "  - story: a cancellation\n    steps:\n      - intent: cancellation\n      - action: action_answer\n"
    tests.write_text(tests.read_text() + "\n" + story)
    desk = load_workspace(root)
    catalogue, dialogue = load_catalogue(desk.catalogue_file), read_desk_dialogue(desk.dialogue_dir)
    tickets = examples("skeleton")
    tickets["cancellation"] = [*tickets["cancellation"], "please cancel my order ORD-12345"]
    project = write_project(tmp_path / "project", catalogue, dialogue, tickets, 0.5, "http://127.0.0.1:9/classify", "en")
    built = validate_train_and_test(Settings(workspace=root), project)
    outcome = read_conversation_tests(project / "tests", built.report)

    assert [name.split(" (")[0] for name in outcome.failed] == ["a cancellation"]
    assert list(outcome.first_wrong.values()) == ["`action: action_answer`, where Rasa predicted `cancellation_form`"]
    assert "its steps in the test run the form first" in _where_they_went_wrong(outcome)


@pytest.mark.slow
def test_a_failing_conversation_test_is_reported_by_name(desk: Path, tmp_path: Path) -> None:
    tests = desk / "domain" / "tests" / "test_stories.yml"
    tests.write_text(
        tests.read_text().replace(
            "      - intent: ask_human # I'd like to talk to a person please\n      - action: action_handoff",
            "      - intent: ask_human # I'd like to talk to a person please\n      - action: action_answer",
        )
    )
    project = build(desk, tmp_path / "project", "saas")
    built = validate_train_and_test(Settings(workspace=desk), project)
    outcome = read_conversation_tests(project / "tests", built.report)
    assert [story.split(" (")[0] for story in outcome.failed] == ["a double charge, then a person"]
    ((story, step),) = outcome.first_wrong.items()  # the line to fix, as Rasa marked it
    assert story.startswith("a double charge, then a person") and step == "`action: action_answer`, where Rasa predicted `action_handoff`"
