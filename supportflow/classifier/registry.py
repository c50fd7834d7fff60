"""MLflow's registry: register the model a training run logged (`logged_run.py`), and let only a better model serve.

A new version of `intent-classifier` gets the alias `challenger`. It takes `champion` only when its
test macro-F1 beats the current champion's on the same test split (the champion is re-scored when it
was measured on another snapshot); ties keep the champion. Aliases, not the deprecated stages. A
version is registered only after its run is complete, and deleted again if the gate cannot finish,
so the registry never holds a half-registered model and `champion` never points at a failed one.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from supportflow.classifier.artifacts import download_classifier
from supportflow.errors import RegistryError
from supportflow.settings import Settings
from supportflow.tracking import CHALLENGER, CHAMPION, connect

MODEL_NAME_IN_RUN = "model"


@dataclass(frozen=True)
class GateResult:
    version: str
    promoted: bool
    reason: str
    champion_version: str  # who serves after the gate
    champion_macro_f1: float | None  # the previous champion's figure on this test split


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no registered model yet, or no champion alias


def register_and_gate(
    client: MlflowClient,
    settings: Settings,
    run_id: str,
    model_uri: str,
    snapshot_id: str,
    test_macro_f1: float,
    score_on_test: Callable[[ModelVersion], float],
    registered_version: str | None = None,
) -> GateResult:
    """Register as `challenger`, then promote to `champion` only if strictly better on this test split.

    `score_on_test` re-scores a version on this run's test split; it is called for a champion that
    was measured on another snapshot.
    """
    name = settings.registered_model_name
    if registered_version is None:
        try:
            tags = {"snapshot_id": snapshot_id, "test_macro_f1": f"{test_macro_f1:.6f}"}
            registered = mlflow.register_model(model_uri, name, tags=tags)
        except MlflowException as error:
            raise RegistryError(f"registering {model_uri} as {name} in {settings.mlflow_tracking_uri} failed: {error.message}") from error
        registered_version = str(registered.version)  # an int in MLflow 3's entities, a string in its API
    version = registered_version  # a re-run gates the version a killed run registered, instead of registering another
    champion: ModelVersion | None = None
    try:
        client.set_registered_model_alias(name, CHALLENGER, version)
        champion = _champion(client, name)
        if champion is None:
            champion_f1, promoted, reason = None, True, "no champion yet"
        else:
            same_split = champion.tags.get("snapshot_id") == snapshot_id and "test_macro_f1" in champion.tags
            champion_f1 = float(champion.tags["test_macro_f1"]) if same_split else score_on_test(champion)
            promoted = test_macro_f1 > champion_f1
            verdict = "beats" if promoted else "does not beat"
            reason = (
                f"test macro-F1 {test_macro_f1:.4f} {verdict} champion v{champion.version}'s {champion_f1:.4f} on snapshot {snapshot_id}"
            )
        if promoted:
            if champion is not None:
                client.set_model_version_tag(name, version, "previous_champion", str(champion.version))
            client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "gate", "passed" if promoted else "failed")
        client.set_model_version_tag(name, version, "gate_reason", reason)
        client.set_tag(run_id, "gate", "passed" if promoted else "failed")
        client.set_tag(run_id, "gate_reason", reason)
    except Exception as error:
        _unregister(client, name, version, None if champion is None else str(champion.version))
        if isinstance(error, RegistryError):
            raise
        raise RegistryError(f"the promotion gate for {name} v{version} failed ({error}); the version was removed again") from error
    serving = version if promoted else str(champion.version)  # type: ignore[union-attr]
    return GateResult(version=version, promoted=promoted, reason=reason, champion_version=serving, champion_macro_f1=champion_f1)


def _unregister(client: MlflowClient, name: str, version: str, previous_champion: str | None) -> None:
    """Undo a registration whose gate did not finish, handing `champion` back if it had already moved."""
    current = _champion(client, name)
    if current is not None and str(current.version) == version:
        if previous_champion is None:
            client.delete_registered_model_alias(name, CHAMPION)
        else:
            client.set_registered_model_alias(name, CHAMPION, previous_champion)
    client.delete_model_version(name, version)


def rollback(settings: Settings) -> tuple[str, str]:
    """Move `champion` back to the version it replaced; returns (from version, to version)."""
    client = connect(settings)
    name = settings.registered_model_name
    champion = _champion(client, name)
    if champion is None:
        raise RegistryError(f"{name} has no champion in {settings.mlflow_tracking_uri}; nothing to roll back")
    previous = champion.tags.get("previous_champion")
    if not previous:
        raise RegistryError(f"{name} v{champion.version} is the first champion; there is no earlier version to roll back to")
    try:
        client.get_model_version(name, previous)
    except MlflowException as error:
        raise RegistryError(f"{name} v{previous}, the previous champion, no longer exists: {error.message}") from error
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, str(champion.version), "rolled_back_at", datetime.now(UTC).isoformat(timespec="seconds"))
    return str(champion.version), previous


def score_version(settings: Settings, version: str, texts: list[str], label_ids: Sequence[int], labels: list[str]) -> float:
    """A registered version's macro-F1 on the given split, matched by intent name (its label map may differ)."""
    # Scoring loads the version in torch: imported here, so that reading and moving aliases needs no training stack.
    from supportflow.classifier.evaluate_metrics import load_metric
    from supportflow.classifier.predict import IntentClassifier

    classifier = IntentClassifier(download_classifier(settings, version), threads=settings.train_threads)
    index = {label: i for i, label in enumerate(labels)}
    unknown = len(labels)  # an intent this split does not know counts as a wrong answer
    predicted = [index.get(result["intent"], unknown) for result in classifier.classify(texts, top_k=1)]
    return load_metric("macro_f1").compute(predictions=predicted, references=list(label_ids))["macro_f1"]


def registered_accuracy(settings: Settings, version: str) -> float:
    """The test accuracy a version was registered with: what its bundle must come close to in the smoke test."""
    client = connect(settings)
    run_id = client.get_model_version(settings.registered_model_name, version).run_id
    return client.get_run(run_id).data.metrics["test_accuracy"]


def find_trained(client: MlflowClient, settings: Settings, training_key: str) -> tuple[str, ModelVersion | None] | None:
    """A finished training run for this key, and its registered version if it got that far.

    The pipeline's resume: a run killed after training and logging must not train and register again.
    """
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.training_key = '{training_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    versions = client.search_model_versions(f"name = '{settings.registered_model_name}' and run_id = '{run_id}'")
    return run_id, (versions[0] if versions else None)
