"""The promotion gate on a real MLflow registry (SQLite in the test's folder), without training: a tie keeps the
champion, on the same test split and when the champion is re-scored on a new one; only a strictly better model
wins. (The gate after real trainings, and a gate that cannot finish, are in test_train_flow.py.)"""

from collections.abc import Callable

import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from supportflow.classifier.registry import GateResult, register_and_gate
from supportflow.settings import Settings, get_settings
from supportflow.tracking import CHALLENGER, CHAMPION, connect


def registered(client: MlflowClient, settings: Settings, snapshot_id: str, macro_f1: float) -> tuple[str, str]:
    """A finished training run and its model version, tagged as training tags them (no weights: the gate reads tags)."""
    experiment = client.get_experiment_by_name("gate") or client.get_experiment(client.create_experiment("gate"))
    run = client.create_run(experiment.experiment_id)
    client.set_terminated(run.info.run_id)
    name = settings.registered_model_name
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    tags = {"snapshot_id": snapshot_id, "test_macro_f1": f"{macro_f1:.6f}"}
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags)
    return run.info.run_id, str(version.version)


def test_a_tie_keeps_the_champion_and_only_a_better_model_wins() -> None:
    settings = get_settings()
    client = connect(settings)
    name = settings.registered_model_name
    rescored: list[str] = []

    def not_needed(version: ModelVersion) -> float:
        raise AssertionError(f"v{version.version} was measured on this split: nothing to re-score")

    def rescore_to_a_tie(version: ModelVersion) -> float:
        rescored.append(str(version.version))
        return 0.8

    def gate(snapshot_id: str, macro_f1: float, score_on_test: Callable[[ModelVersion], float]) -> GateResult:
        run_id, version = registered(client, settings, snapshot_id, macro_f1)
        return register_and_gate(client, settings, run_id, "unused", snapshot_id, macro_f1, score_on_test, registered_version=version)

    first = gate("snap-a", 0.8, not_needed)
    assert first.promoted and first.reason == "no champion yet"

    tie = gate("snap-a", 0.8, not_needed)
    assert not tie.promoted and tie.champion_version == "1" and tie.champion_macro_f1 == pytest.approx(0.8)
    assert tie.reason == "test macro-F1 0.8000 does not beat champion v1's 0.8000 on snapshot snap-a"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == tie.version == "2"
    assert client.get_model_version(name, "2").tags["gate"] == "failed"

    retied = gate("snap-b", 0.8, rescore_to_a_tie)  # a new split: the champion is re-scored on it, and ties again
    assert rescored == ["1"] and not retied.promoted and retied.champion_version == "1"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"

    better = gate("snap-a", 0.8001, not_needed)
    assert better.promoted and better.champion_version == better.version == "4"
    assert client.get_model_version(name, "4").tags["previous_champion"] == "1"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "4"
