"""The unknown-questions benchmark's desk: a copy of a workspace that never heard of the intents it holds out."""

from pathlib import Path

import pandas as pd
import yaml

from bench.unknown_questions import desk_without, held_out_intents
from supportflow.kb.loaders import split_front_matter
from supportflow.validate.catalogue import load_catalogue

TASKLANE = Path(__file__).resolve().parents[2] / "examples" / "saas"


def test_the_held_out_intents_are_a_seeded_share_that_the_desk_s_dialogue_never_names() -> None:
    held, known = held_out_intents(TASKLANE, 0.25, seed=0)
    dialogue = " ".join(path.read_text() for path in (TASKLANE / "domain").rglob("*.yml"))
    assert len(held) == 4 and len(held) + len(known) == 18 and not set(held) & set(known)
    assert not any(intent in dialogue for intent in held)  # pricing_inquiry has a form: never held out
    assert held_out_intents(TASKLANE, 0.25, seed=0)[0] == held and held_out_intents(TASKLANE, 0.25, seed=1)[0] != held


def test_the_copy_has_no_ticket_entry_or_article_of_a_held_out_intent_and_they_are_returned_to_be_asked(tmp_path: Path) -> None:
    held, known = held_out_intents(TASKLANE, 0.25, seed=0)
    desk = tmp_path / "desk"
    unknown = desk_without(TASKLANE, desk, held)
    original = pd.concat([pd.read_csv(TASKLANE / "data" / name) for name in ("tickets.csv", "test.csv")])
    assert sorted(unknown["intent"].unique()) == held and len(unknown) == original["intent"].isin(held).sum()
    assert sorted(load_catalogue(desk / "intents.yaml").specs) == sorted(known)
    config = yaml.safe_load((desk / "supportflow.yaml").read_text())
    assert config["tickets"] == [{"path": "data/known_tickets.csv", "source": "tasklane"}]
    tickets = pd.read_csv(desk / "data" / "known_tickets.csv")
    assert set(tickets["intent"]) == set(known) and len(tickets) + len(unknown) == len(original)
    answered = {split_front_matter(path.read_text())[0].get("intent") for path in (desk / "kb").rglob("*.md")}
    assert answered == set(known)
    assert sorted(load_catalogue(TASKLANE / "intents.yaml").specs) == sorted(held + known)  # the workspace itself is untouched
