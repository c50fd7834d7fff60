"""The open-intent benchmark's protocol pieces: ADB's draw of known intents and its figures over known + unknown."""

import pytest

from bench.open_intent import UNKNOWN, known_intents, open_figures


def test_the_draw_takes_adb_s_share_of_intents_reproducibly_per_seed() -> None:
    intents = [f"intent_{n:02d}" for n in range(77)]
    assert [len(known_intents(intents, ratio, 0)) for ratio in (0.25, 0.5, 0.75)] == [19, 38, 58]
    first = known_intents(intents, 0.25, 0)
    assert first == known_intents(intents, 0.25, 0) and first != known_intents(intents, 0.25, 1)
    assert len(set(first)) == 19 and set(first) <= set(intents)


def test_figures_count_the_unknown_class_as_one_more_intent() -> None:
    gold = ["a", "a", "b", UNKNOWN, UNKNOWN]
    predicted = ["a", UNKNOWN, "b", UNKNOWN, "a"]
    figures = open_figures(predicted, gold, ["a", "b"])
    # a: precision 1/2, recall 1/2; b: 1 and 1; unknown: precision 1/2, recall 1/2.
    assert figures == pytest.approx(
        {"accuracy": 0.6, "macro_f1": 2 / 3, "known_accuracy": 2 / 3, "unknown_recall": 0.5, "f1_unknown": 0.5, "f1_known": 0.75}
    )
