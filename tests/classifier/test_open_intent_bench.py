"""The open-intent benchmark's protocol pieces: ADB's draw of known intents, its figures over known + unknown, the
candidate scores' thresholds, and the runs a later call reuses."""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.open_intent
from bench.labelled_data import LabelledData
from bench.open_intent import UNKNOWN, flagged_at, keep_encoder, known_intents, nearest_neighbour_distance, open_figures, run_once
from supportflow.settings import get_settings


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


def test_a_candidate_score_is_thresholded_on_validation_and_paired_with_the_vocabulary_check() -> None:
    validation = {"distance": np.arange(1.0, 11.0), "confidence": np.linspace(0.1, 1.0, 10), "unfamiliar": np.zeros(10)}
    test = {"distance": np.array([5.0, 10.5, 2.0]), "confidence": np.array([0.5, 0.9, 0.05]), "unfamiliar": np.array([0.0, 0.0, 0.9])}
    # distance: above the 0.9 quantile of 1..10 (9.1) is out of scope; the third text is mostly unfamiliar words.
    assert flagged_at(validation, test, "distance", 0.9).tolist() == [False, True, True]
    # confidence runs the other way: below the 0.1 quantile of the validation confidences (0.19) is out of scope.
    assert flagged_at(validation, test, "confidence", 0.9).tolist() == [False, False, True]


def test_the_nearest_neighbour_distance_is_the_cosine_distance_to_the_kth_closest_training_message() -> None:
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    texts = np.array([[2.0, 0.0], [0.0, -1.0]])
    first = nearest_neighbour_distance(train, texts, 1)
    second = nearest_neighbour_distance(train, texts, 2)
    assert first == pytest.approx([0.0, 1.0])  # the same direction as a training message; orthogonal to the nearest
    assert second == pytest.approx([1 - 1 / np.sqrt(2), 1 + 1 / np.sqrt(2)])


def test_a_kept_run_is_reused_only_under_the_same_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[int] = []
    encoders: list[Path | None] = []

    def one_model(
        data: LabelledData, known: list[str], seed: int, args: argparse.Namespace, folder: Path, encoder: Path | None
    ) -> tuple[dict, dict[str, np.ndarray]]:
        """Stands in for a fine-tuning: what matters here is whether it is called, and on which kept encoder."""
        trained.append(seed)
        encoders.append(encoder)
        return {"seed": seed, "accuracy": 0.5}, {"test_distance": np.array([1.0, 2.0])}

    monkeypatch.setattr(bench.open_intent, "one_model", one_model)
    kept_encoders = tmp_path / "encoders"
    (kept_encoders / "known-0.25-seed-3" / "model").mkdir(parents=True)
    runs = tmp_path / "runs"
    args = argparse.Namespace(profile="full", quantile=0.95, variant="auto", limit=None, runs_dir=runs, fine_tuned=kept_encoders)
    frame = pd.DataFrame({"text": ["a"], "intent": ["x"]})
    data = LabelledData("desk", "Desk", frame, frame, "tests", 0)
    first = run_once(data, ["x"], 3, 0.25, args)
    assert trained == [3] and first["protocol"]["quantile"] == 0.95
    assert encoders == [kept_encoders / "known-0.25-seed-3" / "model"]  # this ratio and seed's, not another's
    kept = runs / "known-0.25-seed-3.json"
    assert json.loads(kept.read_text())["accuracy"] == 0.5
    assert np.load(kept.with_suffix(".npz"))["test_distance"].tolist() == [1.0, 2.0]
    assert run_once(data, ["x"], 3, 0.25, args) == first and trained == [3]
    args.quantile = 0.99
    run_once(data, ["x"], 3, 0.25, args)
    assert trained == [3, 3]
    # The same profile name with other settings (SUPPORTFLOW_FULL_PROFILE) is another protocol: trained again.
    monkeypatch.setenv("SUPPORTFLOW_FULL_PROFILE", '{"epochs": 7, "learning_rate": 2e-4, "contrastive_weight": 2.0}')
    get_settings.cache_clear()
    try:
        changed = run_once(data, ["x"], 3, 0.25, args)
    finally:
        monkeypatch.delenv("SUPPORTFLOW_FULL_PROFILE")
        get_settings.cache_clear()
    assert trained == [3, 3, 3] and changed["protocol"]["training"]["contrastive_weight"] == 2.0
    run_once(data, ["x"], 4, 0.25, args)
    assert encoders[-1] == kept_encoders / "known-0.25-seed-4" / "model"  # none there yet: where this run keeps it
    args.fine_tuned = None
    run_once(data, ["x"], 5, 0.25, args)
    assert encoders[-1] is None
    # Another data set is another protocol, whatever else it shares.
    before = len(trained)
    assert run_once(replace(data, name="other"), ["x"], 5, 0.25, args)["protocol"]["data"] == "other"
    assert len(trained) == before + 1


def test_a_kept_encoder_is_the_fine_tuned_weights_and_tokenizer_without_what_the_build_derived(tmp_path: Path) -> None:
    folder = tmp_path / "classifier"
    (folder / "onnx").mkdir(parents=True)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "classifier.json",
        "ood.npz",
        "lexical.npz",
    ):
        (folder / name).write_text(name)
    (folder / "onnx" / "model.onnx").write_text("onnx")
    home = tmp_path / "kept" / "known-0.5-seed-1" / "model"
    keep_encoder(folder, home, 487.5)
    assert sorted(path.name for path in home.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((home.parent / "meta.json").read_text()) == {"train_seconds": 487.5}
