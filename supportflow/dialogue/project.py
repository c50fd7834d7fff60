"""Assemble the Rasa project: the desk's own dialogue files, merged with what derives from its catalogue and tickets.

A workspace's `domain/` folder is the editable part of a Rasa project, in Rasa's own formats: `domain.yml` (or
several domain files), `data/` (NLU lookup tables and synonyms, rules, stories) and `tests/` (conversation
tests). Those files are copied into the build folder as they are, never rewritten. Beside them the build generates
only what follows from the catalogue and the training data: the intent list, a few real NLU examples per intent,
the rule that routes each intent to the bot, and, for an intent that `needs` slots, a form that asks for them
before the bot answers. What the desk declared itself wins: a form, response or rule it wrote is not generated.

Every catalogue intent is answered by `action_answer` (the bot decides between the knowledge base, the LLM and a
person). The dialogue acts (greet, goodbye, affirm, deny, ask_human, inform, multiple_requests) are the bot's own,
in any desk; `inform` is a short message that names a value the bot asked for.
"""

import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from supportflow.bot.clarify import OFFERED_SLOT
from supportflow.dialogue.stores import endpoints_stores
from supportflow.errors import SupportflowError
from supportflow.validate.catalogue import RASA_RESERVED_INTENTS, IntentCatalogue

RASA_FILES = Path(__file__).resolve().parent / "rasa_files"
ASK_HUMAN = "ask_human"  # the dialogue act of a customer asking for a person
DIALOGUE_ACTS = ("greet", "goodbye", "affirm", "deny", ASK_HUMAN, "inform", "multiple_requests")
DIALOGUE_EXAMPLES = {
    "greet": ["hi", "hello", "hey there", "good morning"],
    "goodbye": ["bye", "goodbye", "thanks, bye", "that's all"],
    "affirm": ["yes", "yep", "sure", "correct"],
    "deny": ["no", "nope", "not really"],
    "ask_human": ["I want to talk to a human", "can I speak to an agent", "put me through to a real person"],
    "multiple_requests": ["I have two questions about my account and also about a payment", "can you help with this and also that"],
}
BOT_ACTIONS = ("action_answer", "action_handoff", "action_clarify")
PENDING_SLOT = "pending_intent"  # the request a form is collecting slots for
RASA_BUILT_IN_ACTIONS = frozenset(
    {
        "action_listen",
        "action_restart",
        "action_session_start",
        "action_default_fallback",
        "action_deactivate_loop",
        "action_revert_fallback_events",
        "action_default_ask_affirmation",
        "action_default_ask_rephrase",
        "action_two_stage_fallback",
        "action_unlikely_intent",
        "action_back",
        "action_extract_slots",
    }
)
RASA_BUILT_IN_INTENTS = frozenset({*RASA_RESERVED_INTENTS, "out_of_scope"})
EXAMPLES_PER_VALUE = 12  # `inform` examples drawn from each lookup table


class DialogueFilesError(SupportflowError):
    """The workspace's dialogue files disagree with each other or with the catalogue."""


@dataclass(frozen=True)
class Located:
    """A value read from a YAML file, with where it was written (for messages a person can act on)."""

    value: str
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class DeskDialogue:
    """The dialogue files of a workspace (`domain/`), read and merged, with where each step came from."""

    root: Path
    domain_files: list[Path] = field(default_factory=list)
    data_files: list[Path] = field(default_factory=list)
    test_files: list[Path] = field(default_factory=list)
    domain: dict[str, Any] = field(default_factory=dict)

    @property
    def slots(self) -> dict[str, Any]:
        return dict(self.domain.get("slots") or {})

    @property
    def forms(self) -> dict[str, Any]:
        return dict(self.domain.get("forms") or {})

    @property
    def responses(self) -> dict[str, Any]:
        return dict(self.domain.get("responses") or {})

    @property
    def intents(self) -> set[str]:
        return {next(iter(i)) if isinstance(i, dict) else str(i) for i in self.domain.get("intents") or []}

    @property
    def actions(self) -> set[str]:
        return {str(a) if not isinstance(a, dict) else next(iter(a)) for a in self.domain.get("actions") or []}

    @cached_property
    def data_documents(self) -> list[Any]:
        """The data files' contents, read once: the plan, the NLU and the config all look into them."""
        return [_read_yaml(path) for path in self.data_files]

    def lookup_values(self) -> dict[str, list[str]]:
        """Lookup tables by name (an entity's possible values), from the desk's NLU data."""
        return self._named_examples("lookup")

    def regexes(self) -> dict[str, list[str]]:
        """Regular expressions by name (an entity whose values follow a pattern, such as an order number)."""
        return self._named_examples("regex")

    def _named_examples(self, kind: str) -> dict[str, list[str]]:
        named: dict[str, list[str]] = {}
        for document in self.data_documents:
            for entry in (document or {}).get("nlu") or []:
                if isinstance(entry, dict) and kind in entry:
                    named.setdefault(str(entry[kind]), []).extend(_examples(entry.get("examples")))
        return named

    def patterns(self) -> dict[str, list[re.Pattern[str]]]:
        """`regexes()` compiled as Rasa's extractor matches them, without regard to case; one that does not compile is
        left out here and named by Rasa's own check when it trains."""
        compiled: dict[str, list[re.Pattern[str]]] = {}
        for entity, sources in self.regexes().items():
            for source in sources:
                try:
                    compiled.setdefault(entity, []).append(re.compile(source, re.IGNORECASE))
                except re.error:
                    continue
        return compiled

    def annotates(self, entity: str) -> bool:
        """Whether the desk's own NLU data mark a value of `entity` in an example (`[NW-12345](order_number)`)."""
        marked = re.compile(rf"\]\(\s*{re.escape(entity)}\s*\)|[\"']entity[\"']\s*:\s*[\"']{re.escape(entity)}[\"']")
        return any(
            marked.search(str(entry.get("examples") or ""))
            for document in self.data_documents
            for entry in (document or {}).get("nlu") or []
            if isinstance(entry, dict) and "intent" in entry
        )

    def handled_first(self) -> set[str]:
        """Intents the desk's own rules start with, outside any form: its rule replaces the generated one."""
        handled = set()
        for document in self.data_documents:
            for rule in (document or {}).get("rules") or []:
                steps = (rule.get("steps") or []) if isinstance(rule, dict) else []
                if steps and isinstance(steps[0], dict) and "intent" in steps[0] and not rule.get("condition"):
                    handled.add(str(steps[0]["intent"]))
        return handled


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DialogueFilesError(f"{path}: not valid YAML: {error}") from error


def _examples(block: object) -> list[str]:
    if isinstance(block, str):
        return [line.strip()[2:].strip() for line in block.splitlines() if line.strip().startswith("- ")]
    return []


def _merge(into: dict[str, Any], document: Mapping[str, Any], path: Path) -> None:
    for key, value in document.items():
        if key == "version":
            continue
        if isinstance(value, list):
            into.setdefault(key, []).extend(value)
        elif isinstance(value, dict):
            clash = set(into.get(key) or {}) & set(value)
            if clash:
                raise DialogueFilesError(f"{path}: {key} {sorted(clash)} are declared twice in the workspace's domain files")
            into.setdefault(key, {}).update(value)
        else:
            into[key] = value


def read_desk_dialogue(root: Path) -> DeskDialogue:
    """The workspace's `domain/` folder; a workspace without one gets the bot's default dialogue."""
    desk = DeskDialogue(root=root)
    if not root.is_dir():
        return desk
    for path in sorted(root.rglob("*.yml")) + sorted(root.rglob("*.yaml")):
        relative = path.relative_to(root).parts
        if relative[0] == "data":
            desk.data_files.append(path)
        elif relative[0] == "tests":
            desk.test_files.append(path)
        else:
            document = _read_yaml(path)
            if not isinstance(document, dict):
                raise DialogueFilesError(f"{path}: a domain file is a mapping (intents, entities, slots, responses, forms...)")
            desk.domain_files.append(path)
            _merge(desk.domain, document, path)
    return desk


def _step_nodes(root: yaml.Node) -> Iterator[yaml.MappingNode]:
    """Each step (and condition) of each rule and story in a composed data file."""
    if not isinstance(root, yaml.MappingNode):
        return
    blocks = [
        block
        for key, section in root.value
        if key.value in ("rules", "stories") and isinstance(section, yaml.SequenceNode)
        for block in section.value
        if isinstance(block, yaml.MappingNode)
    ]
    for block in blocks:
        for key, steps in block.value:
            if key.value in ("steps", "condition") and isinstance(steps, yaml.SequenceNode):
                yield from (step for step in steps.value if isinstance(step, yaml.MappingNode))


def _steps_with_lines(path: Path) -> Iterator[tuple[str, Located]]:
    """Every (kind, name) a rule, story or test story refers to, with its line, from the YAML node tree."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DialogueFilesError(f"{path}: not valid YAML: {error}") from error
    for step in _step_nodes(root):
        for key, value in step.value:
            if key.value in ("intent", "action", "active_loop") and isinstance(value, yaml.ScalarNode):
                if value.value not in ("", "null", "~"):
                    yield key.value, Located(value.value, path, key.start_mark.line + 1)
            elif key.value == "slot_was_set" and isinstance(value, yaml.SequenceNode):
                for item in value.value:
                    names = [k.value for k, _ in item.value] if isinstance(item, yaml.MappingNode) else [item.value]
                    for name in names:
                        yield "slot", Located(name, path, item.start_mark.line + 1)


@dataclass(frozen=True)
class DialoguePlan:
    """What the build generates for one catalogue and one desk's dialogue files."""

    intents: list[str]
    forms: dict[str, list[str]]  # form name -> the slots it asks for (generated for `needs`)
    asking: dict[str, str]  # catalogue intent -> the form that collects what it needs
    inform_entities: list[str]  # entities whose value alone makes a message `inform`


def _form_name(intent: str) -> str:
    return f"{intent}_form"


def plan_dialogue(catalogue: IntentCatalogue, desk: DeskDialogue) -> DialoguePlan:
    """Check the desk's files against the catalogue and each other; every mistake names its file and line."""
    slots, responses, declared_forms = desk.slots, desk.responses, desk.forms
    problems: list[str] = []
    forms: dict[str, list[str]] = {}
    asking: dict[str, str] = {}
    entities: list[str] = []
    for intent in catalogue.intents:
        needs = list(catalogue.needs(intent))
        if not needs:
            continue
        for slot in needs:
            if slot not in slots:
                catalogue_file = desk.root.parent / "intents.yaml"
                problems.append(f"{catalogue_file}: {intent} needs the slot {slot!r}, which no file in {desk.root} declares under `slots`")
            elif not ({f"utter_ask_{slot}", f"utter_ask_{_form_name(intent)}_{slot}"} & set(responses)) and (
                f"action_ask_{slot}" not in desk.actions
            ):
                problems.append(f"{desk.root}: the slot {slot!r} has no question to ask: add a response `utter_ask_{slot}`")
            for mapping in (slots.get(slot) or {}).get("mappings") or []:
                if mapping.get("type") == "from_entity" and mapping.get("entity") and mapping["entity"] not in entities:
                    entities.append(str(mapping["entity"]))
        form = _form_name(intent)
        declared = declared_forms.get(form)
        if declared is None:
            forms[form] = needs
        elif list((declared or {}).get("required_slots") or []) != needs:
            asked = (declared or {}).get("required_slots")
            problems.append(f"{desk.root}: the form {form} asks for {asked}, but intents.yaml says {intent} needs {needs}")
        asking[intent] = form
    known = {
        "intent": set(catalogue.intents) | set(DIALOGUE_ACTS) | desk.intents | RASA_BUILT_IN_INTENTS,
        "action": set(BOT_ACTIONS) | desk.actions | set(responses) | set(declared_forms) | set(forms) | RASA_BUILT_IN_ACTIONS,
        "active_loop": set(declared_forms) | set(forms),
        "slot": set(slots) | {PENDING_SLOT, OFFERED_SLOT, "requested_slot"},
    }
    for path in [*desk.data_files, *desk.test_files]:
        for kind, named in _steps_with_lines(path):
            if named.value not in known[kind]:
                what = {"intent": "intent", "action": "action or response", "active_loop": "form", "slot": "slot"}[kind]
                problems.append(
                    f"{named.where()}: unknown {what} {named.value!r} (not in the catalogue, the bot's dialogue acts or the domain files)"
                )
    if problems:
        raise DialogueFilesError("the workspace's dialogue files have problems:\n  " + "\n  ".join(problems))
    intents = [*catalogue.intents, *[act for act in DIALOGUE_ACTS if act not in catalogue.intents]]
    return DialoguePlan(intents=intents, forms=forms, asking=asking, inform_entities=entities)


class _Literal(str):
    pass


def _literal_representer(dumper: yaml.Dumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


yaml.add_representer(_Literal, _literal_representer, Dumper=yaml.SafeDumper)


def _literal_block(examples: Sequence[str]) -> _Literal:
    return _Literal("".join(f"- {' '.join(str(text).split())}\n" for text in examples))


def _dump(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120))


def _generated_domain(plan: DialoguePlan, desk: DeskDialogue) -> dict[str, Any]:
    pending: dict[str, Any] = {"type": "text", "influence_conversation": False}
    pending["mappings"] = [{"type": "from_intent", "intent": intent, "value": intent} for intent in plan.asking] or [{"type": "custom"}]
    domain: dict[str, Any] = {
        "version": "3.1",
        "intents": plan.intents,
        "entities": ["request"],
        "slots": {PENDING_SLOT: pending, OFFERED_SLOT: {"type": "list", "influence_conversation": False, "mappings": [{"type": "custom"}]}},
        "actions": list(BOT_ACTIONS),
        "session_config": {"session_expiration_time": 60, "carry_over_slots_to_new_session": False},
    }
    if plan.forms:
        domain["forms"] = {form: {"required_slots": slots} for form, slots in plan.forms.items()}
    if "utter_default" not in desk.responses:
        domain["responses"] = {"utter_default": [{"text": "Sorry, I didn't get that. Could you say it another way?"}]}
    return domain


def _generated_rules(plan: DialoguePlan, desk: DeskDialogue) -> list[dict[str, Any]]:
    handled = desk.handled_first()
    rules: list[dict[str, Any]] = []
    for intent in [*plan.intents]:
        if intent in handled or intent in ("ask_human", "multiple_requests"):
            continue
        form = plan.asking.get(intent)
        if form is None:
            rules.append({"rule": f"answer {intent}", "steps": [{"intent": intent}, {"action": "action_answer"}]})
            continue
        rules.append({"rule": f"{intent}: ask for what it needs", "steps": [{"intent": intent}, {"action": form}, {"active_loop": form}]})
        rules.append(
            {
                "rule": f"{intent}: answer once the form is complete",
                "condition": [{"active_loop": form}],
                "steps": [
                    {"action": form},
                    {"active_loop": None},
                    {"slot_was_set": [{"requested_slot": None}]},
                    {"action": "action_answer"},
                ],
            }
        )
    if "ask_human" not in handled:
        rules.append({"rule": "a person was asked for", "steps": [{"intent": "ask_human"}, {"action": "action_handoff"}]})
    if "multiple_requests" not in handled:
        rules.append({"rule": "two requests in one message", "steps": [{"intent": "multiple_requests"}, {"action": "action_clarify"}]})
    rules.append({"rule": "not understood", "steps": [{"intent": "nlu_fallback"}, {"action": "action_handoff"}]})
    return rules


def _generated_nlu(plan: DialoguePlan, desk: DeskDialogue, examples: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """The examples of each intent, with the values of entities the desk finds by a regex marked in them: Rasa's regex
    extractor uses a regex only for an entity it has seen marked in an example, so without these marks a slot known
    by its pattern alone (an order number) would never fill. A needed entity marked nowhere stops the build."""
    lookups = desk.lookup_values()
    patterns = {entity: found for entity, found in desk.patterns().items() if entity not in lookups}
    marked: dict[str, list[str]] = {entity: [] for entity in patterns}
    nlu = []
    for intent in plan.intents:
        texts = [" ".join(str(text).split()) for text in examples.get(intent, ())] or DIALOGUE_EXAMPLES.get(intent, [])
        if texts:
            nlu.append({"intent": intent, "examples": _literal_block([_mark(text, patterns, marked) for text in texts])})
    unmarked = [entity for entity in plan.inform_entities if entity in patterns and not marked[entity] and not desk.annotates(entity)]
    if unmarked:
        raise DialogueFilesError(
            f"{desk.root}: no example ticket holds a value that the regex of {', '.join(unmarked)} matches, and Rasa's extractor"
            f" uses a regex only for an entity it has seen marked in an example: mark one in data/nlu.yml, e.g. under its"
            f" intent `- where is my order [NW-12345]({unmarked[0]})`, or check the regex against the desk's tickets"
        )
    values = {entity: list(dict.fromkeys(found)) for entity, found in marked.items()} | lookups
    informs = [f"[{value}]({entity})" for entity in plan.inform_entities for value in values.get(entity, [])[:EXAMPLES_PER_VALUE]]
    if informs:
        nlu.append({"intent": "inform", "examples": _literal_block(informs)})
    return nlu


def _mark(text: str, patterns: Mapping[str, Sequence[re.Pattern[str]]], marked: dict[str, list[str]]) -> str:
    """`text` with the first value of each entity its regexes find marked as Rasa reads it, `[value](entity)`."""
    spans: list[tuple[int, int, str]] = []
    for entity, compiled in patterns.items():
        found = next((match for pattern in compiled if (match := pattern.search(text)) and match.group(0).strip()), None)
        if found and not any(start < found.end() and found.start() < end for start, end, _ in spans):
            spans.append((found.start(), found.end(), entity))
    for start, end, entity in sorted(spans, reverse=True):
        marked[entity].append(text[start:end])
        text = f"{text[:start]}[{text[start:end]}]({entity}){text[end:]}"
    return text


def _config(plan: DialoguePlan, desk: DeskDialogue, language: str, fallback_threshold: float, classifier_url: str) -> dict[str, Any]:
    pipeline: list[dict[str, Any]] = []
    if desk.lookup_values() or desk.regexes():
        extractor = {"name": "RegexEntityExtractor", "case_sensitive": False, "use_lookup_tables": True, "use_regexes": True}
        pipeline += [extractor, {"name": "EntitySynonymMapper"}]
    pipeline += [
        {"name": "supportflow_classifier.SupportflowClassifier", "url": classifier_url, "inform_entities": plan.inform_entities},
        {"name": "FallbackClassifier", "threshold": round(float(fallback_threshold), 4), "ambiguity_threshold": 0.0},
    ]
    return {
        "recipe": "default.v1",
        "language": language,
        "assistant_id": "supportflow",
        "pipeline": pipeline,
        "policies": [
            {"name": "MemoizationPolicy", "max_history": 5},
            {
                "name": "RulePolicy",
                "core_fallback_threshold": 0.3,
                "core_fallback_action_name": "action_handoff",
                "enable_fallback_prediction": True,
            },
        ],
    }


def _copy_tree(files: Sequence[Path], root: Path, into: Path) -> None:
    for path in files:
        target = into / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def write_project(
    folder: Path,
    catalogue: IntentCatalogue,
    desk: DeskDialogue,
    examples: Mapping[str, Sequence[str]],
    fallback_threshold: float,
    classifier_url: str,
    language: str = "en",
) -> Path:
    """(Re)write the build folder: the desk's files copied under `workspace/`, the generated ones under `generated/`."""
    plan = plan_dialogue(catalogue, desk)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _dump(folder / "domain" / "generated.yml", _generated_domain(plan, desk))
    _copy_tree(desk.domain_files, desk.root, folder / "domain" / "workspace")
    _dump(folder / "data" / "generated" / "nlu.yml", {"version": "3.1", "nlu": _generated_nlu(plan, desk, examples)})
    _dump(folder / "data" / "generated" / "rules.yml", {"version": "3.1", "rules": _generated_rules(plan, desk)})
    _copy_tree(desk.data_files, desk.root / "data", folder / "data" / "workspace")
    _copy_tree(desk.test_files, desk.root / "tests", folder / "tests")
    _dump(folder / "config.yml", _config(plan, desk, language, fallback_threshold, classifier_url))
    # Rasa substitutes ${VARIABLES} in its endpoint file: the action server's address, the internal token its
    # door asks for (rasa_sdk_plugins.py) and the stores (stores.py) are set at start-up. Selective domain: the actions never read the
    # domain, so Rasa need not serialise all of it into every call.
    action_endpoint = {
        "url": "${SUPPORTFLOW_ACTION_WEBHOOK_URL}",
        "headers": {"Authorization": "Bearer ${SUPPORTFLOW_INTERNAL_TOKEN}"},
        "enable_selective_domain": True,
    }
    _dump(folder / "endpoints.yml", {"action_endpoint": action_endpoint, **endpoints_stores()})
    _dump(folder / "credentials.yml", {"rest": None})
    shutil.copy(RASA_FILES / "supportflow_classifier.py", folder / "supportflow_classifier.py")
    shutil.copy(RASA_FILES / "rasa_speedups.py", folder / "rasa_speedups.py")
    shutil.copy(RASA_FILES / "rasa_sdk_plugins.py", folder / "rasa_sdk_plugins.py")
    (folder / "actions").mkdir()
    shutil.copy(RASA_FILES / "actions.py", folder / "actions" / "actions.py")
    (folder / "actions" / "__init__.py").write_text("")
    return folder


def workspace_path(text: str, folder: Path, desk: DeskDialogue) -> str:
    """Rasa's messages name the build folder's copies: point them back at the files the desk edits."""
    replacements = {
        str(folder / "domain" / "workspace"): str(desk.root),
        str(folder / "data" / "workspace"): str(desk.root / "data"),
        str(folder / "tests"): str(desk.root / "tests"),
        "domain/workspace/": f"{desk.root}/",
        "data/workspace/": f"{desk.root / 'data'}/",
    }
    for copy, original in replacements.items():
        text = text.replace(copy, original)
    return text
