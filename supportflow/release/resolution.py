"""How often the bot resolves what customers ask: the measure a desk trusts, taken through `/chat` itself.

The classifier's accuracy says how often an intent is recognised; a customer meets the whole bot, where a
recognised intent may still be answered from another article, asked a slot question first, or handed off. So
a labelled test set is replayed through the served bot's `/chat`, each message as the first turn of a new
conversation, and every reply is counted as one of four outcomes:

- answered right: the reply came from the knowledge base or the LLM, from the article for the gold intent;
- answered wrong: it came from another intent's article;
- clarified: the bot asked something back that the customer cannot answer (a slot question without values);
- handed off: a person takes over (low confidence, no article, a part that is down).

A message labelled with an intent the catalogue lacks ("out_of_scope", a topic the desk does not answer) can only
be handed off, which is what it should get, or answered wrongly; such messages are counted with the rest, and
apart as well (`outside_catalogue`), which is how a desk measures whether the bot recognises what it cannot answer.

When the bot is unsure and offers a few intents to choose from (or asks which of two requests first), the
customer answers as a real one would: with the number of the one they meant, or "none of those" when it is not
there; the reply to that answer is what counts. The report says how many offers were made and how many of them
ended answered right.

When the desk's dialogue asks a slot question before it answers (a form's `utter_ask_<slot>`), the customer
answers it too, with a value the desk's domain accepts for that slot (the first of its entity's lookup table, or
for an entity known by a regex alone, the first value the regex finds in the replayed messages); which one does
not change the outcome, since the answer is for the request that started the form. A question the desk gives no
values for stays clarified.

A reply that fits none (an HTTP error, a broken body) is an error: counted and reported apart, never dropped.
The release stage runs this on the candidate bundles while its smoke test serves them; `supportflow
evaluate` runs it on the production bundles or on any running bot.
"""

import json
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import mlflow
import pandas as pd
from pydantic import BaseModel, Field, computed_field

from supportflow.errors import SupportflowError
from supportflow.ingest.decoding import DEFAULT_ENCODING
from supportflow.lake import open_lake
from supportflow.progress import Step
from supportflow.settings import Settings
from supportflow.tracking import connect, start_run
from supportflow.validate.catalogue import load_catalogue

Outcome = Literal["answered_right", "answered_wrong", "clarified", "handed_off", "error"]
OUTCOMES: tuple[Outcome, ...] = ("answered_right", "answered_wrong", "clarified", "handed_off")
HANDOFF, CLARIFY = "handoff", "clarify"  # the confusion's columns for replies that answer nothing
NO_INTENT = "(no intent)"  # an answer whose article names no intent, from a bot that predicted none
ANSWER_ROUTES, CLARIFY_ROUTES = ("kb", "llm"), ("clarify", "dialogue")
CHAT_TIMEOUT_S = 60.0
REQUEST_PREFIX = "evaluate"  # an evaluation's request ids: how its turns are told apart in a bot's turn log


class ResolutionError(SupportflowError):
    """The test set or the bot cannot be evaluated as asked."""


class Verdict(BaseModel):
    """One reply judged: its outcome, the confusion column it falls in (None for an error), and why it is an error."""

    outcome: Outcome
    label: str | None = None
    detail: str | None = None


def judge(gold_intent: str, status: int, body: Any) -> Verdict:
    """The outcome of one `/chat` reply to a message whose intent is `gold_intent`.

    An answer is right when the article it came from answers the gold intent (`answer_intent`); an article that
    names no intent falls back on the intent the bot predicted. A 503 with a handoff is the bot handing off while
    a part it needs is down, which is what the customer got; any other non-200 is an error.
    """
    route = body.get("route") if isinstance(body, Mapping) else None
    if status == 503 and route == "handoff":
        return Verdict(outcome="handed_off", label=HANDOFF)
    if status != 200:
        detail = body.get("detail") if isinstance(body, Mapping) else None
        return Verdict(outcome="error", detail=f"HTTP {status}: {detail or str(body)[:200]}")
    if route in ANSWER_ROUTES:
        answered = body.get("answer_intent") or body.get("intent")
        return Verdict(outcome="answered_right" if answered == gold_intent else "answered_wrong", label=answered or NO_INTENT)
    if route == "handoff":
        return Verdict(outcome="handed_off", label=HANDOFF)
    if route in CLARIFY_ROUTES:
        return Verdict(outcome="clarified", label=CLARIFY)
    return Verdict(outcome="error", detail=f"HTTP 200 with route {route!r}: not the /chat contract")


class ExampleOutcome(BaseModel):
    """One labelled message, what `/chat` replied, and how it counts."""

    conversation_id: str  # as the bot issued it; empty when no reply came
    text: str
    gold_intent: str
    status: int | None  # None: no HTTP reply at all
    route: str | None = None
    intent: str | None = None
    answer_intent: str | None = None
    kb_doc_id: str | None = None
    outcome: Outcome
    label: str | None = None
    detail: str | None = None
    offered: list[str] = Field(default_factory=list)  # what the bot offered to choose from; the outcome is the reply to the choice
    slot_answers: list[str] = Field(default_factory=list)  # what the customer answered the slot questions with, in order


class OutcomeCounts(BaseModel):
    answered_right: int = 0
    answered_wrong: int = 0
    clarified: int = 0
    handed_off: int = 0
    errors: int = 0  # replies that fit no outcome: not in n

    @computed_field  # type: ignore[prop-decorator]
    @property
    def n(self) -> int:
        """The examples that got an outcome; the four counts add up to it."""
        return self.answered_right + self.answered_wrong + self.clarified + self.handed_off

    def rate(self, outcome: Outcome) -> float:
        return getattr(self, outcome) / self.n if self.n else 0.0

    def count(self, outcome: Outcome) -> None:
        if outcome == "error":
            self.errors += 1
        else:
            setattr(self, outcome, getattr(self, outcome) + 1)


class ResolutionReport(OutcomeCounts):
    """The four outcomes over the test set, per gold intent, and where each gold intent's messages went."""

    source: str  # the labelled examples, as a person would name them
    workspace: str
    classifier_version: str | None = None
    kb_build: str | None = None
    evaluated_at: datetime
    seconds: float
    by_intent: dict[str, OutcomeCounts] = Field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = Field(default_factory=dict)  # gold intent -> answering intent, handoff or clarify -> count
    error_details: list[str] = Field(default_factory=list)  # the first few errors, each with its gold intent
    offers: int = 0  # messages the bot was unsure of and offered a choice for (their outcome is the reply to the choice)
    offers_with_gold: int = 0  # ...where the intent the customer meant was among the options
    right_after_offer: int = 0  # ...that ended answered right
    slot_questions: int = 0  # messages the bot asked a slot question about, answered by the simulated customer
    right_after_slot: int = 0  # ...that ended answered right
    outside_catalogue: OutcomeCounts | None = None  # the messages whose intent the catalogue lacks (None: none was asked)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def answered_right_rate(self) -> float:
        return self.rate("answered_right")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def answered_wrong_rate(self) -> float:
        return self.rate("answered_wrong")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def clarified_rate(self) -> float:
        return self.rate("clarified")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def handed_off_rate(self) -> float:
        return self.rate("handed_off")

    @classmethod
    def from_outcomes(
        cls,
        outcomes: list[ExampleOutcome],
        source: str,
        workspace: str,
        classifier_version: str | None,
        kb_build: str | None,
        seconds: float,
        catalogue: Collection[str] | None = None,
    ) -> "ResolutionReport":
        """`catalogue`: the desk's intents; a message labelled with another is counted in `outside_catalogue` too."""
        report = cls(
            source=source,
            workspace=workspace,
            classifier_version=classifier_version,
            kb_build=kb_build,
            evaluated_at=datetime.now(UTC),
            seconds=round(seconds, 2),
        )
        by_intent: dict[str, OutcomeCounts] = defaultdict(OutcomeCounts)
        confusion: dict[str, Counter[str]] = defaultdict(Counter)
        for example in outcomes:
            report.count(example.outcome)
            if example.offered:
                report.offers += 1
                report.offers_with_gold += example.gold_intent in example.offered
                report.right_after_offer += example.outcome == "answered_right"
            if example.slot_answers:
                report.slot_questions += 1
                report.right_after_slot += example.outcome == "answered_right"
            by_intent[example.gold_intent].count(example.outcome)
            if catalogue is not None and example.gold_intent not in catalogue:
                report.outside_catalogue = report.outside_catalogue or OutcomeCounts()
                report.outside_catalogue.count(example.outcome)
            if example.label is not None:
                confusion[example.gold_intent][example.label] += 1
            elif len(report.error_details) < 10:
                report.error_details.append(f"{example.gold_intent}: {example.detail}")
        report.by_intent = dict(sorted(by_intent.items()))
        report.confusion = {gold: dict(sorted(labels.items())) for gold, labels in sorted(confusion.items())}
        return report

    def weakest_intents(self, top: int = 5) -> list[tuple[str, OutcomeCounts]]:
        """The gold intents least often answered right (those always answered right are left out), the first place a
        desk looks: an article to rewrite, an intent to split."""
        ranked = sorted(self.by_intent.items(), key=lambda item: (item[1].rate("answered_right"), -item[1].n, item[0]))
        return [(intent, counts) for intent, counts in ranked if counts.answered_right < counts.n][:top]

    def wrong_answers(self, top: int = 5) -> list[tuple[str, str, int]]:
        """The most frequent (gold intent, answering intent) pairs where the reply came from another intent's article."""
        pairs = [
            (gold, label, count)
            for gold, labels in self.confusion.items()
            for label, count in labels.items()
            if label not in (gold, HANDOFF, CLARIFY)
        ]
        return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))[:top]

    def confusion_frame(self) -> pd.DataFrame:
        """The confusion as a table: one row per gold intent, one column per outcome label, counts in the cells."""
        frame = pd.DataFrame.from_dict(self.confusion, orient="index").fillna(0).astype(int)
        frame.index.name = "gold_intent"
        return frame.reindex(sorted(frame.columns), axis=1)

    def intent_frame(self) -> pd.DataFrame:
        rows = [
            {"gold_intent": intent, **counts.model_dump(), "answered_right_rate": round(counts.rate("answered_right"), 4)}
            for intent, counts in self.by_intent.items()
        ]
        return pd.DataFrame(rows)

    def lines(self) -> list[str]:
        version = f"classifier v{self.classifier_version}" if self.classifier_version else "classifier version unknown"
        lines = [
            f"{self.n} messages of {self.source} ({self.workspace}), each a new conversation through /chat;"
            f" {version}, knowledge base {self.kb_build or 'unknown'}"
        ]
        for outcome in OUTCOMES:
            lines.append(f"  {outcome.replace('_', ' '):<15} {getattr(self, outcome):>6}  {self.rate(outcome):6.1%}")
        if self.offers:
            lines.append(
                f"  unsure, offered a choice: {self.offers} ({self.offers_with_gold} held the intent meant;"
                f" {self.right_after_offer} then answered right)"
            )
        if self.slot_questions:
            lines.append(f"  asked a slot question first: {self.slot_questions} ({self.right_after_slot} answered right once answered)")
        if self.outside_catalogue is not None and self.outside_catalogue.n:
            lines.append(f"  outside the catalogue (no article answers them): {self.outside_catalogue_summary()}")
        if self.errors:
            lines.append(f"  errors: {self.errors} messages got no usable reply (not in the figures), e.g. {self.error_details[0]}")
        weakest = ", ".join(f"{intent} {c.answered_right}/{c.n}" for intent, c in self.weakest_intents())
        if weakest:
            lines.append(f"  least often answered right: {weakest}")
        wrong = ", ".join(f"{gold} -> {label} ({count})" for gold, label, count in self.wrong_answers())
        if wrong:
            lines.append(f"  answered from another intent's article: {wrong}")
        return lines

    def outside_catalogue_summary(self) -> str:
        outside = self.outside_catalogue or OutcomeCounts()
        return (
            f"{outside.n} messages, handed off {outside.handed_off}"
            f" ({outside.rate('handed_off'):.1%}), answered wrongly {outside.answered_wrong} ({outside.rate('answered_wrong'):.1%}),"
            f" clarified {outside.clarified}"
        )

    def markdown(self) -> str:
        figures = "\n".join(f"| {o.replace('_', ' ')} | {getattr(self, o)} | {self.rate(o):.1%} |" for o in OUTCOMES)
        weakest = "\n".join(
            f"| {intent} | {c.answered_right} | {c.answered_wrong} | {c.clarified} | {c.handed_off} | {c.errors} |"
            for intent, c in self.weakest_intents(10)
        )
        wrong = ", ".join(f"`{gold}` -> `{label}` ({count})" for gold, label, count in self.wrong_answers()) or "none"
        errors = f"\n\n**{self.errors} errors** (not in the figures): {'; '.join(self.error_details[:3])}" if self.errors else ""
        if self.outside_catalogue is not None and self.outside_catalogue.n:
            errors += f"\n\n**outside the catalogue** (no article answers them): {self.outside_catalogue_summary()}"
        return (
            f"**Resolution** of {self.n} messages of {self.source} through `/chat` (classifier v{self.classifier_version},"
            f" knowledge base `{self.kb_build}`)\n\n| outcome | messages | share |\n|---|---|---|\n{figures}{errors}\n\n"
            f"least often answered right:\n\n| gold intent | right | wrong | clarified | handed off | errors |\n|---|---|---|---|---|---|\n"
            f"{weakest}\n\nanswered from another intent's article: {wrong}"
        )


@dataclass(frozen=True)
class LabelledExamples:
    """Messages with their gold intents (columns `text`, `intent`), and where they came from."""

    frame: pd.DataFrame
    source: str

    def sample(self, limit: int, seed: int) -> "LabelledExamples":
        """A seeded sample of `limit` (0: all), so two runs with the same settings ask the same messages."""
        if limit < 0:
            raise ResolutionError(f"a sample of {limit} messages: the limit must be 0 (all) or more")
        if not limit or limit >= len(self.frame):
            return self
        return LabelledExamples(self.frame.sample(n=limit, random_state=seed), f"{self.source}, a seeded sample of {limit}")


def snapshot_test_split(settings: Settings) -> LabelledExamples:
    """The latest snapshot's test split: messages no model was trained or calibrated on."""
    from supportflow.validate.snapshot import latest_snapshot, read_split

    lake = open_lake(settings)
    snapshot = latest_snapshot(lake).snapshot_id
    frame = read_split(lake, snapshot, "test")[["text", "intent"]].dropna()
    return LabelledExamples(frame.reset_index(drop=True), f"the test split of snapshot {snapshot}")


def labelled_export(
    settings: Settings,
    path: str,
    fmt: Literal["csv", "jsonl", "zendesk"] | None = None,
    field_map: dict[str, str] | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> LabelledExamples:
    """A labelled export, read as ingest reads it (its format, the field map, its encoding); rows without a text or
    an intent cannot be judged and are counted in the source's name rather than dropped unseen."""
    from supportflow.ingest.markup import plain_text
    from supportflow.ingest.readers import open_source

    columns = settings.with_field_map(field_map).field_map
    opened = open_source(path, fmt, settings.ingest_batch_rows, columns, settings.zendesk_intent_field_id, encoding)
    frames, unreadable, unlabelled = [], 0, 0
    for batch in opened.batches:
        unreadable += len(batch.rejects)
        records = batch.records
        if "intent" not in records or "text" not in records:
            unlabelled += len(records)
            continue
        texts = records["text"].astype("string").map(plain_text, na_action="ignore")  # as the message would land
        pairs = pd.DataFrame({"text": texts.str.strip(), "intent": records["intent"].astype("string").str.strip()})
        usable = pairs["text"].fillna("").ne("") & pairs["intent"].fillna("").ne("")
        unlabelled += int((~usable).sum())
        frames.append(pairs[usable].astype(str))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["text", "intent"])
    if frame.empty:
        raise ResolutionError(
            f"{path}: no message has both a text and an intent, so there is nothing to evaluate; "
            'name the columns with --field-map (e.g. \'{"text": "message", "intent": "category"}\')'
        )
    skipped = [
        f"{count} {what} skipped"
        for count, what in ((unreadable, "unreadable lines"), (unlabelled, "rows without a text or an intent"))
        if count
    ]
    catalogue = load_catalogue(settings.catalogue_file)
    frame["intent"] = catalogue.spelling(frame["intent"])  # "card arrival" is the catalogue's "Card arrival"
    unknown = Counter(intent for intent in frame["intent"] if intent not in catalogue.specs)
    if unknown:  # kept: such messages are real traffic, and the bot can only hand them off or answer them wrongly
        named = ", ".join(f"{intent!r} ({count})" for intent, count in unknown.most_common(5))
        skipped.append(f"{unknown.total()} labelled with intents the catalogue lacks, which none can answer right: {named}")
    return LabelledExamples(frame, path + (f" ({', '.join(skipped)})" if skipped else ""))


NONE_OF_THOSE = "none of those"  # the simulated customer's answer to an offer that misses what they meant
MAX_SLOT_ANSWERS = 3  # slot questions answered in one conversation before its reply counts as it stands


def slot_answers(settings: Settings, texts: Iterable[str] = ()) -> dict[str, str]:
    """What the simulated customer says to each slot question the desk's forms ask, by the question's text
    (`utter_ask_<slot>`): the first value of the lookup table of an entity that fills the slot, or for an entity
    the desk knows by a pattern alone (an order number), the first value in `texts` that the pattern matches."""
    from supportflow.dialogue.project import read_desk_dialogue
    from supportflow.workspace import workspace

    desk = read_desk_dialogue(workspace(settings).dialogue_dir)
    values_of = {entity: values[:1] for entity, values in desk.lookup_values().items() if values}
    texts = list(texts)
    for entity, patterns in desk.patterns().items():
        if entity not in values_of:
            found = (match.group(0) for text in texts for pattern in patterns if (match := pattern.search(text)))
            values_of[entity] = [value for value in found if value.strip()][:1]
    answers: dict[str, str] = {}
    for slot, spec in desk.slots.items():
        mappings = (spec or {}).get("mappings") or [] if isinstance(spec, dict) else []
        entities = [str(m["entity"]) for m in mappings if isinstance(m, dict) and m.get("type") == "from_entity" and m.get("entity")]
        values = [value for entity in entities for value in values_of.get(entity, [])]
        for response in desk.responses.get(f"utter_ask_{slot}") or [] if values else []:
            if isinstance(response, dict) and response.get("text"):
                answers[str(response["text"]).strip()] = values[0]
    return answers


def _ask(
    client: httpx.Client, bot_url: str, request_id: str, text: str, gold_intent: str, answers: Mapping[str, str] | None = None
) -> ExampleOutcome:
    """The message as the first turn of a new conversation: the bot names it (`conversation_id` in the outcome).
    An offer to choose from is answered (the number of the gold intent, or "none of those"), a slot question with
    the value `answers` gives for its text (`slot_answers`), and the reply to the last answer counts."""
    example = {"text": text, "gold_intent": gold_intent}
    try:
        reply = client.post(f"{bot_url}/chat", json={"message": text}, headers={"X-Request-ID": request_id})
    except httpx.HTTPError as error:
        return ExampleOutcome(
            **example, conversation_id="", status=None, outcome="error", detail=f"no reply: {type(error).__name__}: {error}"
        )
    status, body = _read(reply)
    said = body if isinstance(body, Mapping) else {}
    conversation_id = str(said.get("conversation_id") or "")
    token = str(said.get("conversation_token") or "")  # issued with the first reply only
    offered = [str(intent) for intent in said.get("offered") or []] if status == 200 else []
    if offered:
        choice = str(offered.index(gold_intent) + 1) if gold_intent in offered else NONE_OF_THOSE
        headers = {"X-Request-ID": f"{request_id}-choice", "X-Conversation-Token": token}
        try:
            status, body = _read(
                client.post(f"{bot_url}/chat", json={"conversation_id": conversation_id, "message": choice}, headers=headers)
            )
        except httpx.HTTPError as error:
            status, body = 0, f"no reply to the choice: {type(error).__name__}: {error}"
        said = body if isinstance(body, Mapping) else {}
    given: list[str] = []
    while status == 200 and said.get("route") == "dialogue" and len(given) < MAX_SLOT_ANSWERS:
        asked = [str(reply).strip() for reply in said.get("replies") or []]
        value = next((answers[question] for question in asked if answers and question in answers), None)
        if value is None:
            break
        given.append(value)
        headers = {"X-Request-ID": f"{request_id}-slot{len(given)}", "X-Conversation-Token": token}
        try:
            turn = {"conversation_id": conversation_id, "message": value}
            status, body = _read(client.post(f"{bot_url}/chat", json=turn, headers=headers))
        except httpx.HTTPError as error:
            status, body = 0, f"no reply to the slot answer: {type(error).__name__}: {error}"
        said = body if isinstance(body, Mapping) else {}
    verdict = judge(gold_intent, status, body)
    return ExampleOutcome(
        **example,
        conversation_id=conversation_id,
        status=status,
        route=said.get("route"),
        intent=said.get("intent"),
        answer_intent=said.get("answer_intent"),
        kb_doc_id=said.get("kb_doc_id"),
        offered=offered,
        slot_answers=given,
        **verdict.model_dump(),
    )


def _read(reply: httpx.Response) -> tuple[int, Any]:
    try:
        return reply.status_code, reply.json()
    except ValueError:
        return reply.status_code, reply.text


def replay(bot_url: str, examples: pd.DataFrame, concurrency: int, answers: Mapping[str, str] | None = None) -> list[ExampleOutcome]:
    """Each message as the first turn of its own new conversation (its request id unique to this run), a few at once
    as customers write; the outcomes come back in the examples' order."""
    run = uuid.uuid4().hex[:8]
    bot_url = bot_url.rstrip("/")
    step = Step("evaluate through /chat", total=len(examples))
    try:
        with httpx.Client(timeout=CHAT_TIMEOUT_S) as client, ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [
                pool.submit(_ask, client, bot_url, f"{REQUEST_PREFIX}-{run}-{number}", str(text), str(intent), answers)
                for number, (text, intent) in enumerate(zip(examples["text"], examples["intent"], strict=True))
            ]
            right = 0
            for future in as_completed(futures):
                right += future.result().outcome == "answered_right"
                step.advance(detail=f"{right} answered right")
            return [future.result() for future in futures]
    finally:
        step.close()


@dataclass(frozen=True)
class Replay:
    """What an evaluation produced: the report, every message's outcome (which the report only counts), and the
    release the bot served, where that is known."""

    report: ResolutionReport
    outcomes: list[ExampleOutcome]
    release_id: str | None = None


def evaluate_bot(settings: Settings, bot_url: str, examples: LabelledExamples, classifier_version: str | None = None) -> Replay:
    """Replay the examples through the bot at `bot_url`. Its turns land in that bot's turn log and handoff queue:
    a bot started for the evaluation (`scratch_stack`) keeps them out of production's."""
    from supportflow.workspace import workspace

    started = time.perf_counter()
    try:
        served = httpx.get(f"{bot_url.rstrip('/')}/status", timeout=30).raise_for_status().json()
    except (httpx.HTTPError, ValueError) as error:
        raise ResolutionError(f"no supportflow bot answers at {bot_url} ({type(error).__name__}: {error})") from error
    outcomes = replay(bot_url, examples.frame, settings.evaluate_concurrency, slot_answers(settings, examples.frame["text"]))
    report = ResolutionReport.from_outcomes(
        outcomes,
        examples.source,
        workspace(settings).config.name,
        classifier_version or served.get("model_version"),
        served.get("knowledge_base"),
        time.perf_counter() - started,
        set(load_catalogue(settings.catalogue_file).specs),
    )
    return Replay(report, outcomes)


def evaluate_production(settings: Settings, examples: LabelledExamples, on_start: Callable[[], None] | None = None) -> Replay:
    """The production release's bundles, started on spare ports against scratch stores, asked every example;
    `on_start` is told once the stack starts, so a person knows why the wait."""
    from supportflow.release.promote import current_release
    from supportflow.release.stack import scratch_stack

    release = current_release(open_lake(settings))
    if release is None:
        raise ResolutionError("nothing is released yet: run the pipeline first, or evaluate a running bot with --bot-url")
    if on_start is not None:
        on_start()
    with scratch_stack(settings, release.bundles, settings.run_dir / "evaluate-logs") as stack:
        replayed = evaluate_bot(settings, stack.bot_url, examples, release.bundles.classifier_version)
    return Replay(replayed.report, replayed.outcomes, release.release_id)


def results_file(settings: Settings, report: ResolutionReport, release_id: str | None = None) -> Path:
    """`resolution_<desk>.json` in the results folder: the figures a desk compares from one release to the next."""
    path = settings.results_dir / f"resolution_{report.workspace}.json"
    figures = {**report.model_dump(mode="json", exclude={"by_intent", "confusion", "seconds"}), "release_id": release_id}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return path


def log_resolution(
    settings: Settings,
    report: ResolutionReport,
    release_id: str | None = None,
    evaluated_by: Literal["release", "cli"] = "cli",
    outcomes: list[ExampleOutcome] | None = None,
) -> str:
    """One MLflow run in `resolution_experiment`: the counts and rates as metrics, the confusion and the per-intent
    table (and with `outcomes` every message), tagged with the desk, the classifier version and the release. The
    release flow logs each release once: a re-run of it finds the run it logged and returns that."""
    experiment = settings.resolution_experiment
    if evaluated_by == "release" and release_id is not None:
        client = connect(settings)
        existing = client.get_experiment_by_name(experiment)
        if existing is not None:
            filter_string = f"tags.release_id = '{release_id}' and tags.evaluated_by = 'release'"
            runs = client.search_runs([existing.experiment_id], filter_string, max_results=1)
            if runs:
                return runs[0].info.run_id
    name = f"{evaluated_by}-{release_id or report.workspace}-{report.evaluated_at:%Y%m%d-%H%M%S}"
    with start_run(settings, experiment, name) as run:
        tags = {"workspace": report.workspace, "classifier_version": report.classifier_version, "kb_build": report.kb_build}
        tags |= {"release_id": release_id, "evaluated_by": evaluated_by}
        mlflow.set_tags({key: value for key, value in tags.items() if value is not None})
        mlflow.log_param("source", report.source[:500])
        counted = (*OUTCOMES, "errors", "n", "offers", "offers_with_gold", "right_after_offer", "slot_questions", "right_after_slot")
        metrics = {outcome: getattr(report, outcome) for outcome in counted}
        mlflow.log_metrics({**metrics, **{f"{outcome}_rate": report.rate(outcome) for outcome in OUTCOMES}, "seconds": report.seconds})
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            report.confusion_frame().to_csv(folder / "confusion.csv")
            report.intent_frame().to_csv(folder / "by_intent.csv", index=False)
            if outcomes is not None:
                pd.DataFrame([outcome.model_dump() for outcome in outcomes]).to_csv(folder / "examples.csv", index=False)
            mlflow.log_artifacts(scratch, "resolution")
        if report.by_intent:
            mlflow.log_table(report.intent_frame(), "resolution/by_intent.json")
        mlflow.log_dict(report.model_dump(mode="json"), "resolution/report.json")
        return run.info.run_id
