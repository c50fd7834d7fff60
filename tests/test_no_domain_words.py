"""No desk's words in the package: the example desks' intent names, texts and dialogue live in their workspaces.

A support team must get its own bot without editing Python, so nothing in `supportflow/` or `bentos/` may know
an example desk's intents, the bot's texts in its voice, the questions its forms ask, or the values its slots take.
"""

import re
from pathlib import Path

import pytest

from supportflow.dialogue.project import read_desk_dialogue
from supportflow.validate.catalogue import load_catalogue
from supportflow.workspace import load_workspace

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path.parent for path in (ROOT / "examples").glob("*/supportflow.yaml"))


def desk_words(root: Path) -> set[str]:
    """The identifiers and sentences that belong to one desk."""
    desk = load_workspace(root)
    words = set(load_catalogue(desk.catalogue_file).intents)
    words |= {text for text in desk.config.texts.model_dump(exclude_unset=True).values() if text}  # its own, not the defaults
    words |= set(desk.config.demo_questions)
    dialogue = read_desk_dialogue(desk.dialogue_dir)
    words |= set(dialogue.slots) | {str(e) for e in dialogue.domain.get("entities") or []} | set(dialogue.forms)
    words |= {str(r["text"]) for variants in dialogue.responses.values() for r in variants if isinstance(r, dict) and "text" in r}
    words |= {value for values in dialogue.lookup_values().values() for value in values if len(value) > 4}
    return words


def package_sources() -> list[Path]:
    return [
        path
        for folder in ("supportflow", "bentos")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".html", ".yaml", ".yml", ".md", ".j2")
    ]


def test_there_are_example_desks_to_check() -> None:
    assert {path.name for path in EXAMPLES} >= {"banking77", "saas"}


@pytest.mark.parametrize("root", EXAMPLES, ids=lambda path: path.name)
def test_no_example_desk_word_is_in_the_package(root: Path) -> None:
    words = desk_words(root)
    assert len(words) > 15  # the catalogue at least: an empty set would make the scan vacuous
    found = []
    for path in package_sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        for word in words:
            pattern = re.escape(word) if " " in word else rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])"
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {word!r}")
    assert not found, "desk words in the package (move them into the workspace):\n" + "\n".join(found)
