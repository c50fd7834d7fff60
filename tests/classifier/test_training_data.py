"""Snapshots that cannot give a trustworthy classifier are refused before any training, with the reason."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from supportflow.classifier.fine_tune import fine_tune
from supportflow.classifier.splits import check_training_data
from supportflow.errors import TrainingDataError, TrainingDeviceError
from supportflow.settings import TrainingProfile

CATALOGUE = ("card_arrival", "exchange_rate", "change_pin")


def frame(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "intent"])


GOOD_TRAIN = frame(
    ("where is my card", "card_arrival"), ("card not here", "card_arrival"), ("rate?", "exchange_rate"), ("fx", "exchange_rate")
)
GOOD_HELD_OUT = frame(("card still missing", "card_arrival"), ("what rate", "exchange_rate"))


def check(train: pd.DataFrame, validation: pd.DataFrame = GOOD_HELD_OUT, test: pd.DataFrame = GOOD_HELD_OUT):
    return check_training_data(train, validation, test, CATALOGUE, min_examples=2, where="snapshot snap-test")


def test_a_good_snapshot_gives_the_sorted_label_map() -> None:
    splits = check(GOOD_TRAIN)
    assert splits.labels == ["card_arrival", "exchange_rate"]
    assert splits.label_ids("test") == [0, 1]


def test_single_intent_is_refused() -> None:
    with pytest.raises(TrainingDataError, match=r"single intent \(card_arrival\).*at least two"):
        check(GOOD_TRAIN[GOOD_TRAIN["intent"] == "card_arrival"])


def test_an_intent_with_too_few_training_examples_is_left_out_of_every_split_and_named() -> None:
    thin = pd.concat([GOOD_TRAIN, frame(("new pin please", "change_pin"))])
    held_out = pd.concat([GOOD_HELD_OUT, frame(("pin reset", "change_pin"))])

    splits = check(thin, validation=held_out, test=held_out)

    assert splits.left_out == {"change_pin": 1}
    assert splits.labels == ["card_arrival", "exchange_rate"]
    for split in ("train", "validation", "test"):
        assert "change_pin" not in set(getattr(splits, split)["intent"]), split


def test_leaving_out_thin_intents_that_leaves_one_intent_is_refused_with_both_named() -> None:
    thin = pd.concat([GOOD_TRAIN[GOOD_TRAIN["intent"] == "card_arrival"], frame(("new pin please", "change_pin"))])
    with pytest.raises(
        TrainingDataError, match=r"single intent \(card_arrival\) \(left out with fewer than 2 training examples: change_pin \(1\)\)"
    ):
        check(thin)


def test_labels_outside_the_catalogue_are_refused() -> None:
    with pytest.raises(TrainingDataError, match=r"test split has intents outside the catalogue: crypto_question.*intents\.yaml"):
        check(GOOD_TRAIN, test=pd.concat([GOOD_HELD_OUT, frame(("buy bitcoin", "crypto_question"))]))


def test_held_out_intent_without_training_examples_is_refused() -> None:
    with pytest.raises(TrainingDataError, match="validation split with no training example: change_pin"):
        check(GOOD_TRAIN, validation=pd.concat([GOOD_HELD_OUT, frame(("new pin", "change_pin"))]))


def test_empty_snapshot_split_is_refused() -> None:
    with pytest.raises(TrainingDataError, match="snap-test: the train split is empty"):
        check(GOOD_TRAIN.iloc[0:0])


@pytest.mark.slow
def test_flow_refuses_an_empty_lake_and_an_unreachable_store(classifier_env: Path, prefect_harness: None, monkeypatch) -> None:
    from flows.train import train
    from supportflow.errors import ContractError, RegistryError
    from supportflow.settings import get_settings

    with pytest.raises(ContractError, match="no training snapshot"):
        train()
    monkeypatch.setenv("SUPPORTFLOW_MLFLOW_TRACKING_URI", f"sqlite:///{classifier_env / 'missing-folder' / 'mlflow.db'}")
    get_settings.cache_clear()
    with pytest.raises(RegistryError, match=r"cannot be reached: the folder .*missing-folder does not exist"):
        train()
    monkeypatch.setenv("SUPPORTFLOW_MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    get_settings.cache_clear()
    with pytest.raises(RegistryError, match=r"MLflow store http://127\.0\.0\.1:9 cannot be reached"):
        train()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU, so training there is allowed")
def test_training_on_a_gpu_the_machine_lacks_is_refused_before_any_work(tmp_path: Path) -> None:
    profile = TrainingProfile(epochs=1, learning_rate=1e-3)
    with pytest.raises(TrainingDeviceError, match="no CUDA GPU"):
        fine_tune("no-such-base-model", check(GOOD_TRAIN), profile, 1, tmp_path / "model", device="cuda")
    assert not (tmp_path / "model").exists()
