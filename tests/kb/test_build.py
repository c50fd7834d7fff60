"""Building the knowledge base end to end with the real model and tantivy: answers, escalation, swaps and failed builds."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

import supportflow.kb.build as build_module
from supportflow.errors import KnowledgeBaseError
from supportflow.kb.build import build_knowledge_base, open_knowledge_base
from supportflow.settings import Settings

pytestmark = pytest.mark.slow  # most tests build the demo knowledge base (77 articles embedded), 20-35 s each on 2 cores

ROOT = Path(__file__).resolve().parents[2]
DEMO_KB = ROOT / "examples" / "banking77" / "kb"


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    """A copy of a slice of the demo knowledge base, so tests can add bad documents to it."""
    folder = tmp_path / "sources"
    folder.mkdir()
    for name in ("card_arrival", "change_pin", "passcode_forgotten", "age_limit", "terminate_account", "exchange_rate"):
        shutil.copy(DEMO_KB / f"{name}.md", folder)
    return folder


def test_demo_knowledge_base_answers_in_scope_and_escalates_out_of_scope(kb_settings: Settings) -> None:
    labelled = (
        pd.read_csv(ROOT / "examples" / "banking77" / "data" / "test.csv")
        .rename(columns={"category": "intent"})
        .sample(200, random_state=1)
    )
    report = build_knowledge_base(kb_settings, labelled=labelled)
    assert report.documents == 77 and report.skipped == []
    assert report.smoke and report.smoke.hit_rate == 1.0
    calibration = report.calibration
    assert calibration and calibration.source == "labelled tickets" and calibration.questions == 200
    assert 0.3 < calibration.threshold < 0.95
    assert calibration.accuracy and calibration.accuracy > 0.6  # most answer/escalate decisions right
    kb = open_knowledge_base(kb_settings)
    assert kb.manifest.build_id == report.build_id and kb.threshold == calibration.threshold
    reply = kb.reply("I ordered my card two weeks ago and it still hasn't come")
    assert reply.answers[0].doc_id == "card_arrival" and not reply.escalate
    assert reply.answers[0].score > reply.answers[1].score
    assert kb.reply("What is the best pizza topping?").escalate


def test_documents_are_redacted_and_contract_breaks_skipped(kb_settings: Settings, demo_copy: Path) -> None:
    (demo_copy / "contact.md").write_text("---\nid: contact\n---\n# Contact us\n\nWrite to help@bank.example or call +44 20 7946 0958.\n")
    stray = "---\nid: unknown\nintent: not_an_intent\n---\n# Stray\n\nAn article for an intent we do not have.\n"
    (demo_copy / "unknown.md").write_text(stray)
    (demo_copy / "empty.md").write_text("")
    (demo_copy / "hours.html").write_text("<h1>Opening hours</h1><script>track()</script><p>Support answers around the clock.</p>")
    (demo_copy / "broken.md").write_text("---\nid: [broken\n---\n# Broken\n\nA front matter a writer left open.\n")
    (demo_copy / "unwritten.md").write_text("---\nid: unwritten\ndraft: true\n---\n# Unwritten\n\nTo do.\n")
    report = build_knowledge_base(kb_settings, sources=[demo_copy])
    assert report.documents == 8
    assert report.redactions == {"email": 1, "phone": 1}
    assert report.sanitised == {"html_scripts_removed": 1}
    skipped = sorted((Path(s.item.split(" (")[0]).name, s.reason.split(":")[0]) for s in report.skipped)
    assert skipped == [
        ("broken.md", "the front matter is not valid YAML"),
        ("empty.md", "the file is empty"),
        ("unknown.md", "intent_in_catalogue"),
        ("unwritten.md", "a draft (`draft"),
    ]
    named = [line.strip() for line in report.lines() if line.startswith("    ")]  # each mistake by its file; a draft is none
    assert len(named) == 3 and any("broken.md: the front matter is not valid YAML" in line for line in named), named
    assert not any("unwritten.md" in line for line in named)
    assert report.by_rule == {"intent_in_catalogue": 1}
    assert report.calibration and report.calibration.source.startswith("default")
    contact = open_knowledge_base(kb_settings).search("how can I contact you", k=1)[0]
    assert contact.doc_id == "contact" and "help@" not in contact.body and "<EMAIL>" in contact.body and "<PHONE>" in contact.body


def test_a_build_failing_midway_leaves_the_previous_build_serving(
    kb_settings: Settings, demo_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_knowledge_base(kb_settings, sources=[demo_copy])
    before = open_knowledge_base(kb_settings).search("forgot my passcode", k=3)
    (demo_copy / "extra.md").write_text("# Savings\n\nOpen a savings pot in the app.\n")

    def embedding_dies(*args: object) -> None:
        raise MemoryError("the machine ran out of memory while embedding")

    with monkeypatch.context() as patch, pytest.raises(KnowledgeBaseError, match=r"failed \(MemoryError.*the previous build keeps serving"):
        patch.setattr(build_module, "embed_passages", embedding_dies)  # the keyword index of the new build is written by then
        build_knowledge_base(kb_settings, sources=[demo_copy])

    kb = open_knowledge_base(kb_settings)
    assert kb.manifest.build_id == first.build_id
    assert [a.doc_id for a in kb.search("forgot my passcode", k=3)] == [a.doc_id for a in before]
    assert sorted(p.name for p in (kb_settings.kb_dir / "builds").iterdir()) == [first.build_id]
    assert build_module.keyword_index(kb_settings).versions() == [first.build_id]

    second = build_knowledge_base(kb_settings, sources=[demo_copy])  # the next good build swaps in and clears the old one
    assert second.previous_build == first.build_id and second.documents == 7
    assert sorted(p.name for p in (kb_settings.kb_dir / "builds").iterdir()) == [second.build_id]
    assert open_knowledge_base(kb_settings).search("open a savings pot", k=1)[0].doc_id == "extra"


def test_a_build_with_nothing_usable_is_refused_and_the_previous_build_serves(
    kb_settings: Settings, demo_copy: Path, tmp_path: Path
) -> None:
    first = build_knowledge_base(kb_settings, sources=[demo_copy])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.md").write_text("")
    (bad / "broken.pdf").write_bytes(b"not a pdf")
    with pytest.raises(KnowledgeBaseError, match=r"no usable knowledge-base document.*empty\.md: the file is empty"):
        build_knowledge_base(kb_settings, sources=[bad])
    assert open_knowledge_base(kb_settings).manifest.build_id == first.build_id


def test_opening_before_any_build_says_what_to_run(kb_settings: Settings) -> None:
    with pytest.raises(KnowledgeBaseError, match="supportflow kb-index"):
        open_knowledge_base(kb_settings)


def test_the_init_skeletons_articles_answer_every_intent_in_its_catalogue(kb_settings: Settings, tmp_path: Path) -> None:
    from supportflow.workspace import skeleton

    desk = skeleton(tmp_path / "desk")
    ((files, _),) = desk.ticket_files()
    settings = kb_settings.model_copy(update={"workspace": desk.root, "kb_sources": []})

    report = build_knowledge_base(settings, labelled=pd.read_csv(files[0]))

    assert (report.documents, report.skipped, report.unanswered_intents) == (4, [], [])
    assert report.smoke and report.smoke.hit_rate == 1.0
    kb = open_knowledge_base(settings)
    assert kb.reply("I forgot my password and can't log in").answers[0].doc_id == "account_access"
    assert kb.reply("what time do you open on Saturday?").answers[0].doc_id == "contact_and_hours"
    assert "supportflow init" not in kb.reply("how do I cancel my booking").answers[0].body  # the note to the desk is not served


def test_the_catalogue_names_the_article_that_answers_an_intent(kb_settings: Settings, demo_copy: Path, tmp_path: Path) -> None:
    desk = tmp_path / "desk"
    shutil.copytree(
        ROOT / "examples" / "banking77",
        desk,
        ignore=lambda folder, names: ["data", "kb"] if Path(folder) == ROOT / "examples" / "banking77" else [],
    )
    catalogue = desk / "intents.yaml"
    catalogue.write_text(
        catalogue.read_text().replace("\n- card_delivery_estimate\n", "\n- name: card_delivery_estimate\n  article: card_arrival\n")
    )
    settings = kb_settings.model_copy(update={"workspace": desk, "kb_sources": [demo_copy]})

    report = build_knowledge_base(settings)

    kb = open_knowledge_base(settings)
    assert kb.answered_intents >= {"card_delivery_estimate", "change_pin"} and "card_arrival" not in kb.answered_intents
    assert "card_arrival" in report.unanswered_intents and "card_delivery_estimate" not in report.unanswered_intents
