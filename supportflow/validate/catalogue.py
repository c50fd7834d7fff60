"""The versioned intent catalogue (a workspace's `intents.yaml`): the intents tickets may carry, and what each needs.

Apart from the contracts module because the served bot reads it too, and must not import Great Expectations.
An intent is listed by name, or as a mapping that may add a description, the article that answers it, the
slots the bot must fill before answering (`needs`), and the labels exports give its tickets besides its name
(`aliases`).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from supportflow.errors import ContractError

if TYPE_CHECKING:  # the served bot reads the catalogue without loading pandas for it
    import pandas as pd

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


def usable_name(label: str) -> str:
    """An export's label as an intent name Rasa reads as one intent: help desks file tickets under paths
    ("Account/Login"), which becomes "Account - Login", the label kept as the intent's alias."""
    parts = [part.strip() for part in re.split(f"[{re.escape(RESERVED_IN_INTENT_NAMES)}]", label)]
    return " - ".join(part for part in parts if part)


def intent_key(name: str) -> str:
    """What makes two intent names the same intent: people type one label as "Order status", "order status",
    "Order  status" and "order_status" in one export (a custom field's value and its display name), and a catalogue
    keeps one of them."""
    return " ".join(name.replace("_", " ").replace("-", " ").split()).casefold()


def intent_title(name: str) -> str:
    """A name as a customer may read it (an offer's option, a draft article's title). A slug (`order_status`,
    `order-status`) gets its spaces back; a name people wrote with spaces ("VAT invoice", "Sign-in failed") keeps its
    own spelling, acronyms and hyphens included; either starts with a capital."""
    words = name.split() if " " in name.strip() else name.replace("_", " ").replace("-", " ").split()
    text = " ".join(words)
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class IntentSpec:
    name: str
    description: str = ""
    article: str | None = None  # the id of the article that answers it (default: the article whose `intent` names it)
    needs: tuple[str, ...] = ()  # slots to fill before answering
    aliases: tuple[str, ...] = ()  # what exports label its tickets besides its name: "Account/Login" for "Account - Login"


@dataclass(frozen=True)
class IntentCatalogue:
    name: str
    version: str
    intents: tuple[str, ...]
    specs: dict[str, IntentSpec] = field(default_factory=dict)

    def needs(self, intent: str) -> tuple[str, ...]:
        spec = self.specs.get(intent)
        return spec.needs if spec else ()

    def spelling(self, labels: "pd.Series") -> "pd.Series":
        """Tickets' labels as the catalogue names their intents: a label in another case or spacing ("lost or stolen
        card " for "Lost or stolen card") or one of an intent's aliases is its name; any other label is kept as it is,
        for the contract to judge."""
        names = {intent_key(alias): spec.name for spec in self.specs.values() for alias in spec.aliases}
        names |= {intent_key(name): name for name in self.intents}
        exact = set(self.intents)
        distinct = labels.dropna().unique()
        respelt = {label: names[intent_key(label)] for label in distinct if label not in exact and intent_key(label) in names}
        return labels.replace(respelt) if respelt else labels


def _spec(entry: object, path: Path) -> IntentSpec:
    if isinstance(entry, str):
        return IntentSpec(entry)
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        unknown = set(entry) - {"name", "description", "article", "needs", "aliases"}
        if unknown:
            raise ContractError(f"{path}: intent {entry['name']!r} has unknown keys {sorted(unknown)}")
        needs = entry.get("needs") or []
        if not isinstance(needs, list) or not all(isinstance(slot, str) for slot in needs):
            raise ContractError(f"{path}: intent {entry['name']!r}: `needs` must be a list of slot names")
        aliases = entry.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(alias, str) and alias.strip() for alias in aliases):
            raise ContractError(f"{path}: intent {entry['name']!r}: `aliases` must be a list of the labels exports give it")
        article = entry.get("article")
        description = str(entry.get("description") or "")
        return IntentSpec(entry["name"], description, str(article) if article else None, tuple(needs), tuple(aliases))
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
    if alike := _alike(specs):
        raise ContractError(
            f"{path}: {'; '.join(alike)} share a name or an alias (case, spacing, '_' and '-' aside, as labels are matched): keep one"
        )
    return IntentCatalogue(
        name=str(document["name"]), version=str(document["version"]), intents=intents, specs={spec.name: spec for spec in specs}
    )


def _alike(specs: list[IntentSpec]) -> list[str]:
    """Names and aliases that would read as one another: a ticket labelled with one could belong to two intents."""
    groups: dict[str, set[str]] = {}
    for spec in specs:
        for name in (spec.name, *spec.aliases):
            groups.setdefault(intent_key(name), set()).add(spec.name)
    return [" and ".join(repr(name) for name in sorted(group)) for group in groups.values() if len(group) > 1]
