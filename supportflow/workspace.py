"""The workspace: everything that belongs to one desk, in one folder its team owns.

The package holds no desk's words. A desk's ticket sources, knowledge-base articles, intent catalogue and the
bot's texts live in a workspace (`SUPPORTFLOW_WORKSPACE`, or `--workspace`), in files its people already know
how to edit: `supportflow.yaml` for the desk itself, `intents.yaml` for the versioned catalogue, `kb/` for the
articles, `data/` for the exports. Paths inside a workspace are relative to it, so a workspace can be moved,
copied or kept in its own repository. Every file is checked when it is read, and a mistake names the file and
what is wrong with it.
"""

import glob
import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from supportflow.errors import SupportflowError
from supportflow.ingest.decoding import DEFAULT_ENCODING, codec_name
from supportflow.ingest.fields import field_map_problem
from supportflow.ingest.markup import plain_text
from supportflow.redact import Redactor
from supportflow.settings import Settings
from supportflow.validate.catalogue import intent_key, intent_name_problem, intent_title, usable_name

CONFIG_FILE = "supportflow.yaml"
BUNDLED_WORKSPACE = "workspace"  # the folder, inside a bundle's dialogue model, holding the desk's texts and catalogue
SKELETON = "workspace_skeleton"  # the package data `supportflow init` copies when it is given no export
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")  # a phone number as Twilio dials it: +, country code, number


class WorkspaceError(SupportflowError):
    pass


class TicketSource(BaseModel):
    """One labelled ticket export: a file or a glob, how to read it, and which columns mean what."""

    model_config = ConfigDict(extra="forbid")
    path: str
    format: Literal["csv", "jsonl", "zendesk"] | None = None  # default: from the file's suffix
    source: str | None = None  # the source system's name (default: the file's name)
    field_map: dict[str, str] = Field(default_factory=dict)  # ticket field -> column, e.g. {"intent": "category"}
    encoding: str = DEFAULT_ENCODING  # the export's text encoding, e.g. cp1252 for a spreadsheet saved on Windows
    # A Zendesk export's custom field holding the intent (over SUPPORTFLOW_ZENDESK_INTENT_FIELD_ID); tags `intent:<name>` work without
    zendesk_intent_field_id: int | None = None

    @field_validator("field_map")
    @classmethod
    def _known_fields(cls, field_map: dict[str, str]) -> dict[str, str]:
        if problem := field_map_problem(field_map):
            raise ValueError(problem)
        return field_map

    @model_validator(mode="after")
    def _known_encoding(self) -> "TicketSource":
        """A misspelt encoding is refused when the workspace is read, not after a pipeline run has started."""
        try:
            codec_name(self.encoding)
        except ValueError as error:
            raise ValueError(f"the ticket source {self.path!r}: encoding {error}") from None
        return self


class BotTexts(BaseModel):
    """What the bot says in the desk's own voice; `{options}` in `multiple_requests` lists the requests it heard.
    Every word about the desk's domain lives here, `llm_role` included, never in the package."""

    model_config = ConfigDict(extra="forbid")
    greeting: str = "Hello! What can I help you with today?"
    goodbye: str = "Thanks for getting in touch. Have a good day!"
    anything_else: str = "Is there anything else I can help with?"
    clarification: str = "Thanks. What would you like help with?"  # a value given with no request waiting for it
    handoff: str = "I'm passing you to a colleague, who will reply here shortly."
    outage: str = "Sorry, I can't answer right now. I've passed your message to a colleague, who will reply here shortly."
    with_agent: str = "A colleague has your conversation and will reply here shortly."
    multiple_requests: str = "I can help with each of those, one at a time. Which should we start with: {options}?"
    offer: str = "I'm not sure I understood. Is it about {options}? You can answer with a number."  # unsure between a few
    offer_one: str = "I'm not sure I understood. Is it about: {option}?"  # unsure, one likely reading
    no_speech: str = "Sorry, I didn't catch that. What can I help you with?"  # on a call, when the caller said nothing
    feedback_question: str = "Did this answer your question? Reply YES or NO"  # after an answer by SMS, when `sms_feedback` is on
    feedback_thanks: str = "Thanks for telling us."  # to a YES or NO that rated an answer
    # Not said to customers: who the LLM (when one is configured) is told it is, in the prompt that writes answers from
    # the desk's articles ("You are <llm_role>."), so the desk's domain lives here and not in the code.
    llm_role: str = "a customer-support assistant"


class Channels(BaseModel):
    """The desk's phone channels through Twilio: where a handed-off call goes, and whether SMS answers ask for a rating."""

    model_config = ConfigDict(extra="forbid")
    agent_phone: str | None = None  # where a call is put through (<Dial>) when the bot hands it to a person
    sms_feedback: bool = False  # after each answer by SMS, ask whether it answered the question (a YES/NO rating)

    @field_validator("agent_phone")
    @classmethod
    def _dialable(cls, number: str | None) -> str | None:
        """Checked when the workspace is read, not found out when a caller is waiting to be put through."""
        if number is not None and not E164.match(number):
            raise ValueError(f"agent_phone must be an E.164 number such as +15550100123 (+, country code, number); got {number!r}")
        return number


class WorkspaceConfig(BaseModel):
    """`supportflow.yaml`."""

    model_config = ConfigDict(extra="forbid")
    name: str
    language: str = "en"
    tickets: list[TicketSource] = Field(default_factory=list)
    kb: list[str] = Field(default_factory=lambda: ["kb"])
    # How precise the answers the bot gives on its own must be (on validation); below the threshold chosen for it the
    # bot offers choices or hands off. A desk knows what a wrong answer costs it. Default: the setting's (0.97).
    target_precision: float | None = Field(None, gt=0.0, le=1.0)
    # The share of all its customers' messages a desk accepts to see answered wrongly. Default: the setting's (0.02).
    max_wrong_answers: float | None = Field(None, gt=0.0, le=1.0)
    # How often the precision must hold on new messages (a confidence bound on validation). Default: the setting's (0.9).
    precision_confidence: float | None = Field(None, ge=0.0, lt=1.0)
    texts: BotTexts = Field(default_factory=BotTexts)
    channels: Channels = Field(default_factory=Channels)
    demo_questions: list[str] = Field(default_factory=list)  # what `supportflow demo` asks the served bot


class Workspace(BaseModel):
    root: Path
    config: WorkspaceConfig

    @property
    def catalogue_file(self) -> Path:
        return self.root / "intents.yaml"

    @property
    def dialogue_dir(self) -> Path:
        """The desk's Rasa files (domain, data, conversation tests); the build merges what it generates with them."""
        return self.root / "domain"

    def resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else self.root / candidate

    def kb_sources(self) -> list[Path]:
        return [self.resolve(path) for path in self.config.kb]

    def ticket_files(self) -> list[tuple[list[str], TicketSource]]:
        """The files of each ticket source, globs expanded; a source that matches nothing is an error, since
        silently training on less than the desk meant to is worse than stopping."""
        sources = []
        for source in self.config.tickets:
            pattern = str(self.resolve(source.path))
            matched = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
            matched = [path for path in matched if Path(path).is_file()]
            if not matched:
                raise WorkspaceError(f"{self.root / CONFIG_FILE}: the ticket source {source.path!r} matches no file")
            sources.append((matched, source))
        return sources


def _problem(error: ErrorDetails) -> str:
    """Pydantic's message, less the "Value error, " it puts before a check's own sentence."""
    raised = error.get("ctx", {}).get("error")
    return str(raised) if error["type"] == "value_error" and raised is not None else error["msg"]


def load_workspace(root: Path) -> Workspace:
    root = root.expanduser().resolve()
    path = root / CONFIG_FILE
    if not root.is_dir():
        raise WorkspaceError(f"the workspace {root} does not exist: set SUPPORTFLOW_WORKSPACE (or --workspace) to a workspace folder")
    if not path.is_file():
        raise WorkspaceError(f"{path} is missing: every workspace has one (`supportflow init` writes a skeleton)")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise WorkspaceError(f"{path} is not valid YAML: {error}") from error
    try:
        config = WorkspaceConfig.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {_problem(e)}" for e in error.errors())
        raise WorkspaceError(f"{path}: {problems}") from error
    return Workspace(root=root, config=config)


def workspace(settings: Settings) -> Workspace:
    return load_workspace(settings.workspace)


def export_intent_field(settings: Settings, named: int | None = None) -> int | None:
    """The Zendesk custom field that holds the intent in an export given on the command line (`ingest PATH`,
    `evaluate --file`): the one named, else SUPPORTFLOW_ZENDESK_INTENT_FIELD_ID, else the one the desk's own Zendesk
    ticket sources name, so the desk's next export is read as its first was."""
    if named is not None:
        return named
    if settings.zendesk_intent_field_id is not None:
        return settings.zendesk_intent_field_id
    fields = {source.zendesk_intent_field_id for source in workspace(settings).config.tickets} - {None}
    return fields.pop() if len(fields) == 1 else None


PROMISES = ("target_precision", "max_wrong_answers", "precision_confidence")  # what the classifier's threshold is chosen for


def with_desk_promises(settings: Settings) -> Settings:
    """The settings with the desk's promises: each one's environment variable where it is set (an operator's word, or
    a test's), else the workspace's, else the setting's default."""
    config = workspace(settings).config
    chosen = {
        name: getattr(config, name) for name in PROMISES if name not in settings.model_fields_set and getattr(config, name) is not None
    }
    return settings.model_copy(update=chosen)


def kb_sources(settings: Settings) -> list[Path]:
    """The knowledge base's sources: `SUPPORTFLOW_KB_SOURCES` where set, else the workspace's."""
    return list(settings.kb_sources) if settings.kb_sources else workspace(settings).kb_sources()


def _refuse_a_folder_with_files(folder: Path) -> None:
    """`init` never writes into a folder that has files, so nobody's workspace is overwritten."""
    if folder.exists() and any(folder.iterdir()):
        raise WorkspaceError(f"{folder} is not empty: `supportflow init` writes only into a new or empty folder")


def _copy_skeleton(source: Traversable, target: Path, values: dict[str, str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_dir():
            _copy_skeleton(entry, target / entry.name, values)
        elif entry.name.endswith(".yaml"):  # the desk's name and the default texts go in here
            (target / entry.name).write_text(string.Template(entry.read_text(encoding="utf-8")).substitute(values), encoding="utf-8")
        else:
            (target / entry.name).write_bytes(entry.read_bytes())


def skeleton(folder: Path) -> Workspace:
    """A small working workspace for a desk with no labelled export yet: four intents any desk has, enough example
    tickets for the data contract, one article each, and the bot's default texts written out with what each is for.
    A desk starts from something that passes every check and replaces the examples with its own, instead of
    learning the file formats from errors."""
    _refuse_a_folder_with_files(folder)
    values = {"name": folder.name, **BotTexts().model_dump()}
    quoted = {key: json.dumps(value, ensure_ascii=False) for key, value in values.items()}  # a JSON string is a YAML string
    _copy_skeleton(files("supportflow") / SKELETON, folder, quoted)
    return load_workspace(folder)


def _yaml_string(text: str) -> str:
    """`text` as YAML reads it back as this string: bare where it can be, else quoted. Exports label tickets with
    category numbers, "no", "null" or "Billing: refunds", which bare YAML reads as numbers, booleans, nothing or a
    mapping, and the catalogue `init` wrote would not load."""
    return text if yaml.safe_load(f"- {text}  # count") == [text] else json.dumps(text, ensure_ascii=False)


def _catalogue_entry(intent: str, alias: str | None) -> str:
    if alias is None:
        return _yaml_string(intent)
    return "{" + f"name: {json.dumps(intent, ensure_ascii=False)}, aliases: [{json.dumps(alias, ensure_ascii=False)}]" + "}"


def _article_draft(intent: str, examples: list[str]) -> str:
    """The examples sit in an HTML comment: a writer sees them beside the answer they write, and neither the
    knowledge base nor a Markdown viewer shows them, should the writer leave them when removing `draft: true`."""
    asked = "\n".join(f"- {text.replace('--', '- -')}" for text in examples)
    title = intent_title(intent)
    meta = yaml.safe_dump({"id": intent, "title": title, "intent": intent, "draft": True}, sort_keys=False, allow_unicode=True)
    return (
        f"---\n{meta}---\n\n# {title}\n\n"
        "Draft: write the answer a customer asking this needs, then remove `draft: true` above. Until then the article is\n"
        "not served and the knowledge-base build lists it as a draft.\n\n"
        f"<!-- What customers asked (from the export, personal details redacted; never served):\n{asked}\n-->\n"
    )


@dataclass(frozen=True)
class ExportIntents:
    """An export's labels as a catalogue sees them: spellings that differ only in case, spacing, '_' or '-' are one intent,
    named as most of its tickets name it, and the others are kept to be reported."""

    counts: Counter[str]  # intent -> labelled tickets with a text
    examples: dict[str, list[str]]  # intent -> the first few messages, redacted and without markup
    respelt: dict[str, dict[str, int]]  # intent -> the other spellings folded into it, with their counts
    aliases: dict[str, str]  # intent -> the export's label, where that cannot be an intent's name (see `usable_name`)

    @classmethod
    def of(cls, labelled: Iterable[tuple[str, str]]) -> "ExportIntents":
        spellings: dict[str, Counter[str]] = {}
        firsts: dict[str, list[str]] = {}
        for text, label in labelled:
            key = intent_key(label)
            spellings.setdefault(key, Counter())[" ".join(label.split())] += 1
            if len(firsts.setdefault(key, [])) < 5 and text not in firsts[key]:
                firsts[key].append(text)
        counts: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}
        respelt: dict[str, dict[str, int]] = {}
        aliases: dict[str, str] = {}
        redactor = Redactor()
        for key, spelt in spellings.items():
            label = spelt.most_common(1)[0][0]
            intent = usable_name(label)
            counts[intent] += spelt.total()
            cleaned = [" ".join(text.split())[:200] for text in redactor.redact_all([plain_text(t) for t in firsts[key]])]
            examples[intent] = (examples.get(intent, []) + cleaned)[:5]  # "Account/Login" and "Account - Login" are one
            if others := {spelling: n for spelling, n in spelt.items() if spelling != label}:
                respelt[intent] = others
            if intent != label:
                aliases[intent] = label
        return cls(counts, examples, respelt, aliases)


@dataclass(frozen=True)
class Scaffolded:
    workspace: Workspace
    intents: ExportIntents
    below_minimum: dict[str, int]  # intents with fewer tickets than the data contract's minimum: not learned yet
    unlabelled: int  # tickets with a text and no intent: ingested, never learned from


def scaffold(
    folder: Path,
    export: Path,
    fmt: Literal["csv", "jsonl", "zendesk"] | None,
    field_map: dict[str, str],
    settings: Settings,
    encoding: str = DEFAULT_ENCODING,
    zendesk_intent_field_id: int | None = None,
) -> Scaffolded:
    """A workspace from a labelled ticket export: the export copied into `data/`, the catalogue with each intent's
    count, one draft article per intent (never served until a person writes it), and the bot's default texts written
    out to edit. It never writes into a folder that already has files, so nobody's workspace is overwritten."""
    import shutil

    from supportflow.ingest.readers import open_source

    _refuse_a_folder_with_files(folder)
    intent_field = zendesk_intent_field_id if zendesk_intent_field_id is not None else settings.zendesk_intent_field_id
    opened = open_source(str(export), fmt, settings.ingest_batch_rows, field_map, intent_field, encoding)
    if opened.format == "zendesk" and field_map:
        fields = "subject, description, tags, custom_fields"
        raise WorkspaceError(f"{export}: a Zendesk export is read by Zendesk's own fields ({fields}): --field-map does not apply")
    unlabelled = 0

    def labelled() -> Iterator[tuple[str, str]]:
        nonlocal unlabelled
        for batch in opened.batches:
            if "text" not in batch.records:
                continue
            texts = batch.records["text"].tolist()
            intents = batch.records["intent"].tolist() if "intent" in batch.records else [None] * len(texts)
            for text, intent in zip(texts, intents, strict=True):
                if text is None or not str(text).strip():
                    continue
                if intent is None or not str(intent).strip():
                    unlabelled += 1
                else:
                    yield str(text), str(intent)

    found = ExportIntents.of(labelled())
    counts, examples = found.counts, found.examples
    if not counts:
        how = (
            "a Zendesk ticket's intent is its tag `intent:<name>` or the custom field --intent-field-id names"
            if opened.format == "zendesk"
            else 'name the columns with --field-map (e.g. \'{"text": "message", "intent": "category"}\')'
        )
        raise WorkspaceError(f"{export}: no ticket has both a text and an intent, so there is nothing to build a catalogue from; {how}")
    if problems := [f"{problem} ({counts[intent]} tickets)" for intent in counts if (problem := intent_name_problem(intent))]:
        raise WorkspaceError(f"{export}: {'; '.join(problems)}: rename those intents in the export, then run init again")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "kb").mkdir()
    shutil.copyfile(export, folder / "data" / export.name)
    source = {
        "path": f"data/{export.name}",
        **({"format": fmt} if fmt else {}),
        **({"field_map": field_map} if field_map else {}),
        **({"encoding": opened.encoding} if opened.encoding != DEFAULT_ENCODING else {}),
        **({"zendesk_intent_field_id": intent_field} if opened.format == "zendesk" and intent_field is not None else {}),
    }
    ranked = counts.most_common()
    config = {
        "name": folder.name,
        "language": "en",
        "tickets": [source],
        "kb": ["kb"],
        "texts": BotTexts().model_dump(),
        "demo_questions": [_demo_question(examples[intent]) for intent, _ in ranked[:3]],
    }
    (folder / CONFIG_FILE).write_text(
        "# This desk's workspace, written by `supportflow init`; paths are relative to this folder.\n"
        "# Edit the texts in your desk's voice; add ticket sources as the desk exports more.\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)
    )
    minimum = settings.min_examples_per_intent
    lines = [
        f"- {_catalogue_entry(intent, found.aliases.get(intent))}  # {count} tickets"
        + (f": fewer than {minimum}, not learned until it has more" if count < minimum else "")
        for intent, count in ranked
    ]
    (folder / "intents.yaml").write_text(
        f"# The intent catalogue, from {export.name}: each intent with its ticket count. Versioned: bump `version` on any change.\n"
        f"name: {folder.name}\nversion: 1.0.0\nintents:\n" + "\n".join(lines) + "\n"
    )
    for intent, _ in ranked:
        (folder / "kb" / f"{intent}.md").write_text(_article_draft(intent, examples[intent]))
    _default_dialogue(folder / "domain", [intent for intent, _ in ranked[:2]])
    below_minimum = {intent: count for intent, count in ranked if count < minimum}
    return Scaffolded(load_workspace(folder), found, below_minimum, unlabelled)


def _demo_question(examples: list[str]) -> str:
    """The shortest of an intent's first messages that still says something: a ticket's subject glued to its body,
    greetings and signatures make a poor question to show a desk its bot."""
    worded = [text for text in examples if len(text.split()) >= 3] or examples
    return min(worded, key=len)


def _default_dialogue(folder: Path, intents: list[str]) -> None:
    """The skeleton's domain file (how to declare a slot, in comments) and conversation tests on the desk's own intents."""
    (folder / "tests").mkdir(parents=True)
    (folder / "domain.yml").write_bytes((files("supportflow") / SKELETON / "domain" / "domain.yml").read_bytes())
    asked = [step for intent in intents for step in ({"intent": intent}, {"action": "action_answer"})]
    stories = [
        {"story": "a greeting, then questions", "steps": [{"intent": "greet"}, {"action": "action_answer"}, *asked]},
        {"story": "asking for a person", "steps": [*map(dict, asked[:2]), {"intent": "ask_human"}, {"action": "action_handoff"}]},
    ]
    (folder / "tests" / "test_stories.yml").write_text(
        "# Conversation tests: `rasa test` runs them against every dialogue model the pipeline builds; a failing story\n"
        "# stops the build. Each step is what a message was recognised as, then what the bot did.\n"
        + yaml.safe_dump({"version": "3.1", "stories": stories}, sort_keys=False, allow_unicode=True)
    )
