"""The bot-level evaluation's rule and arithmetic, on bodies shaped exactly as the bot's /chat sends them; the
replay through a served bot is in tests/bot/test_stack.py, the release's in tests/loop/test_loop.py."""

import json
from pathlib import Path

import mlflow
import pytest

from supportflow.errors import IngestError
from supportflow.release.resolution import (
    ExampleOutcome,
    LabelledExamples,
    OutcomeCounts,
    ResolutionError,
    ResolutionReport,
    judge,
    labelled_export,
    log_resolution,
    results_file,
)
from supportflow.settings import Settings
from supportflow.tracking import connect

ROOT = Path(__file__).resolve().parents[2]


def chat_body(route: str, intent: str | None, answer_intent: str | None = None, kb_doc_id: str | None = None) -> dict:
    """What bentos/bot/service.py `_respond` returns for a turn."""
    return {
        "conversation_id": "web-Jx3d9fQ0aLmZ8pTq1VbN2cRs",
        "conversation_token": "q0Vb8xN2cRsJx3d9fQ0aLmZ8pTq1VbN2cRsJx3d9fQ0",
        "replies": ["..."],
        "route": route,
        "intent": intent,
        "confidence": 0.9 if intent else None,
        "kb_doc_id": kb_doc_id,
        "answer_intent": answer_intent,
        "request_id": "0123456789abcdef",
    }


@pytest.mark.parametrize(
    ("status", "body", "outcome", "label"),
    [
        (200, chat_body("kb", "card_arrival", "card_arrival", "card_arrival"), "answered_right", "card_arrival"),
        (200, chat_body("llm", "card_arrival", "card_arrival", "card_arrival"), "answered_right", "card_arrival"),
        # the intent was recognised, but the reply came from another article: the customer read the wrong answer
        (200, chat_body("kb", "card_arrival", "exchange_rate", "exchange_rate"), "answered_wrong", "exchange_rate"),
        (200, chat_body("kb", "exchange_rate", "exchange_rate", "exchange_rate"), "answered_wrong", "exchange_rate"),
        # an article that names no intent: the predicted intent decides
        (200, chat_body("kb", "card_arrival", None, "faq-12"), "answered_right", "card_arrival"),
        (200, chat_body("kb", "change_pin", None, "faq-12"), "answered_wrong", "change_pin"),
        (200, chat_body("kb", None, None, "faq-12"), "answered_wrong", "(no intent)"),
        (200, chat_body("handoff", "card_arrival"), "handed_off", "handoff"),
        (503, chat_body("handoff", None), "handed_off", "handoff"),  # a part is down: the customer is handed off
        (200, chat_body("clarify", "multiple_requests"), "clarified", "clarify"),
        (200, chat_body("dialogue", "lost_or_stolen_card"), "clarified", "clarify"),  # a slot question first
    ],
)
def test_each_reply_counts_as_one_outcome(status: int, body: dict, outcome: str, label: str) -> None:
    verdict = judge("card_arrival", status, body)
    assert (verdict.outcome, verdict.label, verdict.detail) == (outcome, label, None)


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (500, "Internal Server Error", "HTTP 500: Internal Server Error"),
        (413, {"detail": "the message is 5,000 characters long", "request_id": "r"}, "HTTP 413: the message is 5,000 characters long"),
        (503, {"detail": "upstream timeout"}, "HTTP 503: upstream timeout"),  # a 503 that is no handoff
        (200, chat_body("unknown", "card_arrival"), "HTTP 200 with route 'unknown': not the /chat contract"),
        (200, "<html>a proxy page</html>", "HTTP 200 with route None: not the /chat contract"),
    ],
)
def test_a_reply_that_fits_no_outcome_is_an_error_with_its_reason(status: int, body: object, detail: str) -> None:
    assert judge("card_arrival", status, body).model_dump() == {"outcome": "error", "label": None, "detail": detail}


def outcome(gold: str, status: int | None, body: dict | None, number: int = 0) -> ExampleOutcome:
    verdict = judge(gold, status, body) if status is not None else None
    said = body or {}
    return ExampleOutcome(
        conversation_id=f"web-{number}",
        text=f"message {number}",
        gold_intent=gold,
        status=status,
        route=said.get("route"),
        intent=said.get("intent"),
        answer_intent=said.get("answer_intent"),
        kb_doc_id=said.get("kb_doc_id"),
        **(verdict.model_dump() if verdict else {"outcome": "error", "detail": "no reply: ConnectTimeout: timed out"}),
    )


@pytest.fixture
def report() -> ResolutionReport:
    replies = [
        ("card_arrival", 200, chat_body("kb", "card_arrival", "card_arrival")),
        ("card_arrival", 200, chat_body("kb", "card_arrival", "card_arrival")),
        ("card_arrival", 200, chat_body("kb", "card_arrival", "card_delivery_estimate")),
        ("card_arrival", 200, chat_body("handoff", "card_arrival")),
        ("change_pin", 200, chat_body("kb", "change_pin", "change_pin")),
        ("change_pin", 200, chat_body("clarify", "multiple_requests")),
        ("change_pin", 503, chat_body("handoff", None)),
        ("change_pin", 500, {"detail": "boom"}),
        ("exchange_rate", 200, chat_body("kb", "exchange_rate", "card_delivery_estimate")),
        ("exchange_rate", None, None),
    ]
    outcomes = [outcome(gold, status, body, number) for number, (gold, status, body) in enumerate(replies)]
    return ResolutionReport.from_outcomes(outcomes, "the test split of snapshot snap-1", "banking77", "3", "kb-20240101", 12.5)


def test_the_four_outcomes_add_up_to_n_and_errors_are_counted_apart(report: ResolutionReport) -> None:
    assert (report.answered_right, report.answered_wrong, report.clarified, report.handed_off, report.errors) == (3, 2, 1, 2, 2)
    assert report.n == 8
    assert report.answered_right_rate == pytest.approx(3 / 8) and report.handed_off_rate == pytest.approx(2 / 8)
    assert report.answered_wrong_rate + report.clarified_rate == pytest.approx(3 / 8)
    assert report.error_details == ["change_pin: HTTP 500: boom", "exchange_rate: no reply: ConnectTimeout: timed out"]


def test_per_intent_counts_and_the_confusion_follow_each_gold_intent(report: ResolutionReport) -> None:
    assert report.by_intent["card_arrival"].model_dump() == {
        "answered_right": 2,
        "answered_wrong": 1,
        "clarified": 0,
        "handed_off": 1,
        "errors": 0,
        "n": 4,
    }
    assert (report.by_intent["change_pin"].n, report.by_intent["change_pin"].errors) == (3, 1)
    assert report.confusion == {
        "card_arrival": {"card_arrival": 2, "card_delivery_estimate": 1, "handoff": 1},
        "change_pin": {"change_pin": 1, "clarify": 1, "handoff": 1},
        "exchange_rate": {"card_delivery_estimate": 1},
    }
    assert sum(count for labels in report.confusion.values() for count in labels.values()) == report.n
    frame = report.confusion_frame()
    assert list(frame.columns) == ["card_arrival", "card_delivery_estimate", "change_pin", "clarify", "handoff"]
    assert frame.loc["exchange_rate"].tolist() == [0, 1, 0, 0, 0]
    assert [intent for intent, _ in report.weakest_intents()] == ["exchange_rate", "change_pin", "card_arrival"]
    always_right = OutcomeCounts(answered_right=3)
    perfect = report.model_copy(update={"by_intent": {**report.by_intent, "card_arrival": always_right}})
    assert [intent for intent, _ in perfect.weakest_intents()] == ["exchange_rate", "change_pin"]  # always right: not listed
    assert report.wrong_answers() == [("card_arrival", "card_delivery_estimate", 1), ("exchange_rate", "card_delivery_estimate", 1)]


def test_the_report_reads_for_a_person_and_survives_the_release_record(report: ResolutionReport) -> None:
    lines = report.lines()
    assert lines[0].startswith("8 messages of the test split of snapshot snap-1 (banking77)") and "classifier v3" in lines[0]
    assert lines[1].split() == ["answered", "right", "3", "37.5%"] and lines[4].split() == ["handed", "off", "2", "25.0%"]
    assert any(line.startswith("  errors: 2 messages") for line in lines)
    assert "card_arrival -> card_delivery_estimate (1)" in lines[-1]
    assert "| answered right | 3 | 37.5% |" in report.markdown() and "**2 errors**" in report.markdown()
    stored = json.loads(report.model_dump_json())
    assert stored["n"] == 8 and stored["answered_right_rate"] == 0.375
    assert ResolutionReport.model_validate(stored) == report  # read back from the lake, the computed figures are recomputed


def test_messages_outside_the_catalogue_are_counted_with_the_rest_and_apart() -> None:
    """What a desk asks of its bot on questions it has no article for: a handoff, never another intent's answer."""
    replies = [
        ("card_arrival", chat_body("kb", "card_arrival", "card_arrival")),
        ("out_of_scope", chat_body("handoff", None)),
        ("out_of_scope", chat_body("kb", "card_arrival", "card_arrival")),
        ("pizza", chat_body("handoff", "card_arrival")),
        ("pizza", chat_body("dialogue", None)),
    ]
    outcomes = [outcome(gold, 200, body, number) for number, (gold, body) in enumerate(replies)]
    report = ResolutionReport.from_outcomes(outcomes, "export.csv", "banking77", "3", "kb-1", 1.0, catalogue={"card_arrival", "change_pin"})
    assert (report.n, report.answered_right, report.answered_wrong, report.handed_off, report.clarified) == (5, 1, 1, 2, 1)
    assert report.outside_catalogue is not None
    assert report.outside_catalogue.model_dump() == {
        "answered_right": 0,
        "answered_wrong": 1,
        "clarified": 1,
        "handed_off": 2,
        "errors": 0,
        "n": 4,
    }
    summary = "outside the catalogue (no article answers them): 4 messages, handed off 2 (50.0%), answered wrongly 1 (25.0%), clarified 1"
    assert f"  {summary}" in report.lines()
    assert "**outside the catalogue** (no article answers them): 4 messages" in report.markdown()
    assert ResolutionReport.model_validate(json.loads(report.model_dump_json())) == report
    inside = ResolutionReport.from_outcomes(outcomes[:1], "export.csv", "banking77", "3", "kb-1", 1.0, catalogue={"card_arrival"})
    assert inside.outside_catalogue is None and not any("outside the catalogue" in line for line in inside.lines())


def test_labelled_exports_are_read_as_ingest_reads_them(tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text(
        "message,category\n"
        "my card has not arrived,card_arrival\n"
        "how do I change my PIN?,Change_PIN\n"
        "no label here,\n"
        ',"exchange_rate"\n'
        "a row,with,too many fields\n"
        "is the app down?,app_outage\n"
        "<p>my new card &amp; PIN?</p>,card_arrival\n"
    )
    examples = labelled_export(Settings(), str(export))
    assert examples.frame.to_dict("records") == [
        {"text": "my card has not arrived", "intent": "card_arrival"},
        {"text": "how do I change my PIN?", "intent": "change_pin"},  # the catalogue's spelling of the intent
        {"text": "is the app down?", "intent": "app_outage"},  # kept: real traffic, which no answer can get right
        {"text": "my new card & PIN?", "intent": "card_arrival"},  # as ingest lands it
    ]
    assert examples.source == (
        f"{export} (1 unreadable lines skipped, 2 rows without a text or an intent skipped, "
        "1 labelled with intents the catalogue lacks, which none can answer right: 'app_outage' (1))"
    )
    jsonl = tmp_path / "export.jsonl"
    jsonl.write_text('{"asked": "what rate do you use?", "filed_under": "exchange_rate"}\n')
    mapped = labelled_export(Settings(), str(jsonl), field_map={"text": "asked", "intent": "filed_under"})
    assert mapped.frame.to_dict("records") == [{"text": "what rate do you use?", "intent": "exchange_rate"}]
    with pytest.raises(IngestError, match=r"missing field for the ticket text .* the fields \['asked', 'filed_under'\]"):
        labelled_export(Settings(), str(jsonl))  # refused as ingest refuses it
    windows = tmp_path / "windows.csv"  # a spreadsheet saved on Windows: evaluated in its encoding, as ingest reads it
    windows.write_bytes("text,intent\nmy café card is blocked,card_blocked\n".encode("cp1252"))
    assert labelled_export(Settings(), str(windows), encoding="cp1252").frame.to_dict("records") == [
        {"text": "my café card is blocked", "intent": "card_blocked"}
    ]


def test_a_limit_is_a_seeded_sample() -> None:
    import pandas as pd

    examples = LabelledExamples(pd.DataFrame({"text": [f"m{i}" for i in range(50)], "intent": ["a"] * 50}), "fifty")
    first, again = examples.sample(10, seed=13), examples.sample(10, seed=13)
    assert first.frame.equals(again.frame) and len(first.frame) == 10 and first.source == "fifty, a seeded sample of 10"
    assert examples.sample(0, seed=13) is examples and examples.sample(80, seed=13) is examples
    with pytest.raises(ResolutionError, match="must be 0"):
        examples.sample(-1, seed=13)


def test_the_results_file_and_the_mlflow_run(report: ResolutionReport, tmp_path: Path) -> None:
    settings = Settings(
        results_dir=tmp_path / "results",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        mlflow_artifact_root=str(tmp_path / "mlartifacts"),
    )
    path = results_file(settings, report, "v3-abc")
    assert path == tmp_path / "results" / "resolution_banking77.json"
    figures = json.loads(path.read_text())
    assert {k: figures[k] for k in ("answered_right", "answered_wrong", "clarified", "handed_off", "n", "errors")} == {
        "answered_right": 3,
        "answered_wrong": 2,
        "clarified": 1,
        "handed_off": 2,
        "n": 8,
        "errors": 2,
    }
    assert (figures["classifier_version"], figures["kb_build"], figures["release_id"]) == ("3", "kb-20240101", "v3-abc")
    assert figures["handed_off_rate"] == 0.25 and figures["evaluated_at"].startswith(str(report.evaluated_at.year))

    first = log_resolution(settings, report, "v3-abc", evaluated_by="release")
    assert log_resolution(settings, report, "v3-abc", evaluated_by="release") == first  # a re-run of the release flow
    assert log_resolution(settings, report, "v3-abc") != first  # `supportflow evaluate` of the same release: a new run
    run = connect(settings).get_run(first)
    assert run.data.metrics["answered_right"] == 3 and run.data.metrics["answered_right_rate"] == 0.375
    assert run.data.metrics["n"] == 8 and run.data.metrics["errors"] == 2
    tags = run.data.tags
    assert (tags["release_id"], tags["classifier_version"], tags["workspace"], tags["evaluated_by"]) == (
        "v3-abc",
        "3",
        "banking77",
        "release",
    )
    confusion = Path(mlflow.artifacts.download_artifacts(run_id=first, artifact_path="resolution/confusion.csv", dst_path=str(tmp_path)))
    assert confusion.read_text().splitlines()[0] == "gold_intent,card_arrival,card_delivery_estimate,change_pin,clarify,handoff"
    by_intent = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/resolution/by_intent.json")
    assert "gold_intent" in by_intent["columns"]


def test_a_release_keeps_its_resolution_and_shows_it(report: ResolutionReport) -> None:
    from datetime import UTC, datetime

    from supportflow.release.bundle import Bundles
    from supportflow.release.promote import Release, ReleaseSummary, SmokeReport

    bundles = Bundles(
        classifier="supportflow-classifier:v3-abc",
        bot="supportflow-bot:v3-abc",
        classifier_model="supportflow-intent-classifier:v3",
        dialogue_model="supportflow-dialogue:def",
        classifier_version="3",
        serving_variant="int8",
        kb_build="kb-20240101",
        labels={},
    )
    smoke = SmokeReport(
        passed=True,
        classifier_version="3",
        examples=60,
        accuracy=0.9,
        expected_accuracy=0.92,
        chat_route="kb",
        failure=None,
        seconds=40,
        resolution=report,
    )
    release = Release(release_id="v3-abc", bundles=bundles, smoke=smoke, promoted_at=datetime.now(UTC))
    stored = Release.model_validate_json(release.model_dump_json())  # as releases/production.json holds it
    assert stored.resolution == report and stored.resolution.n == 8
    summary = ReleaseSummary(bundles=bundles, smoke=smoke, release=stored, resolution_run_id="0123abcd")
    lines = summary.lines()
    assert lines[3].startswith("  resolution: 8 messages of the test split") and "    in MLflow: run 0123abcd" in lines
    assert lines[-1].startswith("production release v3-abc")
    assert "**Resolution** of 8 messages" in summary.markdown()
    before = Release.model_validate({**release.model_dump(mode="json"), "smoke": smoke.model_dump(mode="json", exclude={"resolution"})})
    assert before.resolution is None  # a release recorded before evaluations existed still reads


def test_an_offer_is_answered_as_a_customer_would_and_the_reply_to_the_choice_counts() -> None:
    """The customer picks the number of the intent they meant, or says none of those; what /chat receives is checked."""
    import httpx

    from supportflow.release.resolution import NONE_OF_THOSE, _ask

    sent: list[tuple[dict, str | None]] = []

    def bot(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append((body, request.headers.get("X-Conversation-Token")))
        if "conversation_id" not in body:  # the first message: unsure, an offer of two
            return httpx.Response(200, json={**chat_body("clarify", "nlu_fallback"), "offered": ["card_arrival", "change_pin"]})
        if body["message"] == "2":
            return httpx.Response(200, json=chat_body("kb", "nlu_fallback", "change_pin", "change_pin"))
        return httpx.Response(200, json=chat_body("handoff", "nlu_fallback"))

    with httpx.Client(transport=httpx.MockTransport(bot)) as client:
        picked = _ask(client, "http://bot", "evaluate-x-1", "how do I change my pin", "change_pin")
        missed = _ask(client, "http://bot", "evaluate-x-2", "what is the exchange rate", "exchange_rate")

    assert (picked.outcome, picked.offered) == ("answered_right", ["card_arrival", "change_pin"])
    assert missed.outcome == "handed_off"
    first_body = chat_body("clarify", None)
    assert [body["message"] for body, _ in sent] == ["how do I change my pin", "2", "what is the exchange rate", NONE_OF_THOSE]
    assert sent[1] == ({"conversation_id": first_body["conversation_id"], "message": "2"}, first_body["conversation_token"])
    report = ResolutionReport.from_outcomes([picked, missed], "test", "banking77", "1", "kb-1", 1.0)
    assert (report.offers, report.offers_with_gold, report.right_after_offer) == (2, 1, 1)
    assert "  unsure, offered a choice: 2 (1 held the intent meant; 1 then answered right)" in report.lines()


def test_a_slot_known_by_a_regex_alone_is_answered_with_a_value_it_finds_in_the_messages(tmp_path: Path) -> None:
    from supportflow.release.resolution import slot_answers
    from tests.dialogue.test_project import order_number_desk

    root = order_number_desk(tmp_path / "orders")
    messages = ["where is my parcel", "any news on order #ord-48213 please", "ORD-99999 again"]
    assert slot_answers(Settings(workspace=root), messages) == {"What is your order number?": "ord-48213"}
    assert slot_answers(Settings(workspace=root), ["no number here"]) == {}  # nothing to answer with: it stays clarified


def test_a_slot_question_is_answered_with_a_value_the_desk_accepts_and_the_reply_to_it_counts(tmp_path: Path) -> None:
    """The demo desk's card forms ask "physical or virtual?": the customer answers with the first card type its
    domain lists, and the answer that follows is judged; a question the desk gives no values for stays clarified."""
    import httpx

    from supportflow.release.resolution import _ask, slot_answers

    answers = slot_answers(Settings(workspace=ROOT / "examples" / "banking77"))
    question = "Is this about your physical card or a virtual card?"
    assert answers == {question: "physical"}
    sent: list[tuple[dict, str | None]] = []

    def bot(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append((body, request.headers.get("X-Conversation-Token")))
        if "conversation_id" not in body:
            asked = question if "card" in body["message"] else "Which account?"
            return httpx.Response(200, json={**chat_body("dialogue", None), "replies": [asked]})
        answered = chat_body("kb", "card_type", "card_not_working", "card_not_working")
        return httpx.Response(200, json={**answered, "conversation_token": None})

    with httpx.Client(transport=httpx.MockTransport(bot)) as client:
        filled = _ask(client, "http://bot", "evaluate-x-1", "my card won't work", "card_not_working", answers)
        unknown = _ask(client, "http://bot", "evaluate-x-2", "an account question", "edit_personal_details", answers)

    assert (filled.outcome, filled.slot_answers, filled.answer_intent) == ("answered_right", ["physical"], "card_not_working")
    assert (unknown.outcome, unknown.slot_answers) == ("clarified", [])
    first = chat_body("dialogue", None)
    assert sent[1] == ({"conversation_id": first["conversation_id"], "message": "physical"}, first["conversation_token"])
    assert len(sent) == 3  # the unanswerable question got no reply
    report = ResolutionReport.from_outcomes([filled, unknown], "test", "banking77", "1", "kb-1", 1.0)
    assert (report.slot_questions, report.right_after_slot, report.answered_right, report.clarified) == (1, 1, 1, 1)
    assert "  asked a slot question first: 1 (1 answered right once answered)" in report.lines()
