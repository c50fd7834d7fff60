"""The versioned intent catalogue (a workspace's `intents.yaml`): the intents tickets may carry, and what each needs.

Apart from the contracts module because the served bot reads it too, and must not import Great Expectations.
An intent is listed by name, or as a mapping that may add a description, the article that answers it, and the
slots the bot must fill before answering (`needs`).
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from supportflow.errors import ContractError

# Rasa reads "faq/ask_hours" as the retrieval intent "faq" and looks for responses named after it, and each intent's
# draft article is a file named after it: a slash in an intent's name would break both, so a desk renames it.
RESERVED_IN_INTENT_NAMES = "/"
# Intents Rasa acts on itself, whatever a desk's rules say: the first three run Rasa's own action (the conversation
# restarts, undoes a turn, starts a session), and `nlu_fallback` is what the bot hands off as not understood.
RASA_RESERVED_INTENTS = {
    "restart": "restarts the conversation",
    "back": "undoes the last turn",
    "session_start": "starts a session",
    "nlu_fallback": "marks a message not understood, which the bot hands off",
}


def intent_name_problem(name: str) -> str | None:
    """Why an intent cannot be called `name`, or None when it can."""
    if not name.strip():
        return "an intent's name is empty"
    if name in RASA_RESERVED_INTENTS:
        return f"intent {name!r} is Rasa's own: it {RASA_RESERVED_INTENTS[name]} instead of being answered"
    reserved = sorted({character for character in name if character in RESERVED_IN_INTENT_NAMES})
    if reserved:
        return f"intent {name!r} has {' and '.join(repr(c) for c in reserved)} in its name, which Rasa reserves for retrieval intents"
    return None


@dataclass(frozen=True)
class IntentSpec:
    name: str
    description: str = ""
    article: str | None = None  # the id of the article that answers it (default: the article whose `intent` names it)
    needs: tuple[str, ...] = ()  # slots to fill before answering


@dataclass(frozen=True)
class IntentCatalogue:
    name: str
    version: str
    intents: tuple[str, ...]
    specs: dict[str, IntentSpec] = field(default_factory=dict)

    def needs(self, intent: str) -> tuple[str, ...]:
        spec = self.specs.get(intent)
        return spec.needs if spec else ()


def _spec(entry: object, path: Path) -> IntentSpec:
    if isinstance(entry, str):
        return IntentSpec(entry)
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        unknown = set(entry) - {"name", "description", "article", "needs"}
        if unknown:
            raise ContractError(f"{path}: intent {entry['name']!r} has unknown keys {sorted(unknown)}")
        needs = entry.get("needs") or []
        if not isinstance(needs, list) or not all(isinstance(slot, str) for slot in needs):
            raise ContractError(f"{path}: intent {entry['name']!r}: `needs` must be a list of slot names")
        article = entry.get("article")
        return IntentSpec(entry["name"], str(entry.get("description") or ""), str(article) if article else None, tuple(needs))
    raise ContractError(f"{path}: each intent is a name or a mapping with a `name`, not {entry!r}")


def load_catalogue(path: Path) -> IntentCatalogue:
    if not path.is_file():
        raise ContractError(f"{path}: the intent catalogue is missing")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ContractError(f"{path}: not valid YAML: {error}") from error
    for key in ("name", "version", "intents"):
        if key not in document:
            raise ContractError(f"{path}: `{key}` is required")
    specs = [_spec(entry, path) for entry in document.get("intents") or ()]
    intents = tuple(spec.name for spec in specs)
    if problems := [problem for name in intents if (problem := intent_name_problem(name))]:
        raise ContractError(f"{path}: {'; '.join(problems)}: rename it here and in the tickets that carry it")
    if not intents or len(set(intents)) != len(intents):
        raise ContractError(f"{path}: the catalogue must list distinct intents")
    return IntentCatalogue(
        name=str(document["name"]), version=str(document["version"]), intents=intents, specs={spec.name: spec for spec in specs}
    )
