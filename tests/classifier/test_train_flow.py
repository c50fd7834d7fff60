"""The train flow end to end on a tiny lake: the MLflow run, registry aliases, the gate, rollback, serving, the notebook.

One tiny store is trained once for the module (training is the slow part); the tests then read it,
and the last one moves its aliases.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import nbformat
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from nbclient import NotebookClient

from supportflow.errors import RegistryError
from tests.classifier.conftest import ROOT, TINY_INTENTS, classifier_settings, tiny_rows

pytestmark = pytest.mark.slow


class Store:
    def __init__(self, folder: Path, snapshot_id: str, first: object) -> None:
        self.folder, self.snapshot_id, self.first = folder, snapshot_id, first


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, prefect_harness: None) -> Iterator[Store]:
    from flows.train import train
    from supportflow.ingest.load import ingest_file
    from supportflow.lake import open_lake
    from supportflow.settings import get_settings
    from supportflow.validate.snapshot import validate_lake

    with classifier_settings(tmp_path_factory.mktemp("store"), tiny_base) as folder:
        settings = get_settings()
        source = folder / "tickets.csv"
        tiny_rows().to_csv(source, index=False)
        lake = open_lake(settings)
        ingest_file(str(source), lake, settings, source="banking77")
        snapshot_id = validate_lake(lake, settings).snapshot_id
        yield Store(folder, snapshot_id, train())


def test_first_version_is_champion_and_its_run_is_complete(store: Store) -> None:
    from supportflow.settings import get_settings
    from supportflow.tracking import CHALLENGER, CHAMPION

    first, settings = store.first, get_settings()
    client = MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    name = settings.registered_model_name
    assert first.promoted and first.version == "1" and first.champion_version == "1"
    assert first.gate_reason == "no champion yet"
    assert 0.5 < first.test_accuracy <= 1.0  # eight intents: chance is 0.125
    assert 0.0 < first.coverage_at_threshold <= 1.0
    assert client.get_model_version_by_alias(name, CHAMPION).version == 1
    assert client.get_model_version_by_alias(name, CHALLENGER).version == 1

    run = client.get_run(first.run_id)
    assert run.data.params["snapshot_id"] == store.snapshot_id
    assert run.data.params["profile.epochs"] == "12.0"
    assert run.data.metrics["test_macro_f1"] == pytest.approx(first.test_macro_f1)
    for metric in ("temperature", "threshold", "test_coverage_at_threshold", "onnx_fp32_test_accuracy", "onnx_int8_test_accuracy"):
        assert metric in run.data.metrics
    assert run.data.tags["gate"] == "passed"
    # ONNX parity with torch, top-1 accuracy on the test split: the fp32 export is faithful (within 0.5 points);
    # int8 may drift more on a tiny model, and then serving must not choose it.
    drop = {variant: first.test_accuracy - run.data.metrics[f"onnx_{variant}_test_accuracy"] for variant in ("fp32", "int8")}
    assert abs(drop["fp32"]) <= 0.005
    chosen = run.data.tags["serving_variant"]
    assert chosen in {"fp32", "int8"} and drop[chosen] <= 0.005
    # Nor may the chosen variant's detector hand off more in-scope messages, sent one by one as the bot sends them.
    alarms = run.data.metrics[f"onnx_{chosen}_test_out_of_scope_rate"] - run.data.metrics["test_out_of_scope_rate"]
    assert alarms <= 0.01
    artifacts = {a.path for folder in ("plots", "reports", "snapshot", "reference") for a in client.list_artifacts(first.run_id, folder)}
    expected = {"plots/confusion_matrix.png", "plots/reliability_diagram.png", "reports/per_intent.json", "snapshot/manifest.json"}
    expected |= {"reference/drift_reference.json"}  # what the drift monitor compares traffic with
    expected |= {"plots/risk_coverage.png", "reports/risk_coverage.json"}
    assert expected <= artifacts
    # The risk-coverage table holds the served threshold's row, on validation, as the card states it.
    curve = pd.DataFrame(**mlflow.artifacts.load_dict(f"runs:/{first.run_id}/reports/risk_coverage.json"))
    served = curve[(curve["split"] == "validation") & (curve["threshold"] >= run.data.metrics["threshold"] - 1e-6)]  # JSON rounding
    coverage = served["coverage"].max() if len(served) else 0.0  # a threshold above every confidence routes nothing
    assert coverage == pytest.approx(run.data.metrics["validation_coverage_at_threshold"])
    assert 0 <= run.data.metrics["test_coverage_at_097"] <= 1 and "test_precision_at_097" in run.data.metrics
    assert mlflow.artifacts.load_dict(f"runs:/{first.run_id}/snapshot/manifest.json")["snapshot_id"] == store.snapshot_id
    # The logged model carries its label map, temperature and threshold.
    card = mlflow.artifacts.load_dict(f"models:/{name}/1/artifacts/classifier/classifier.json")
    assert card["labels"] == sorted(TINY_INTENTS) and card["threshold"] == pytest.approx(first.threshold)
    assert card["temperature"] > 0
    # ...the wrong-answer budget the threshold kept, and the share of all test messages it answered wrongly.
    assert card["max_wrong_answers"] == settings.max_wrong_answers
    assert run.data.params["max_wrong_answers"] == str(settings.max_wrong_answers)
    assert first.wrong_at_threshold == pytest.approx((1 - first.precision_at_threshold) * first.coverage_at_threshold)
    # The drift monitor finds the served version's training reference, calibrated like its card.
    from supportflow.drift.tracking import load_reference
    from supportflow.lake import open_lake
    from supportflow.validate.snapshot import read_split

    reference = load_reference(get_settings(), None)
    validation = read_split(open_lake(get_settings()), store.snapshot_id, "validation")
    assert reference.model_version == "1" and reference.run_id == first.run_id and reference.labels == card["labels"]
    assert reference.threshold == pytest.approx(card["threshold"]) and len(reference.confidences) == len(validation)
    assert {"card", "pin"} <= set(reference.vocabulary) and 0 <= reference.oov_rate < 0.2


def test_training_the_same_snapshot_again_resumes_instead_of_retraining(store: Store) -> None:
    from flows.train import train
    from supportflow.settings import get_settings

    again = train()
    settings = get_settings()
    client = MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    assert again.version == store.first.version and again.run_id == store.first.run_id
    assert "resumed" in again.gate_reason and again.test_macro_f1 == pytest.approx(store.first.test_macro_f1)
    assert [v.version for v in client.search_model_versions(f"name='{settings.registered_model_name}'")] == [1]


def test_notebook_reads_the_runs(store: Store) -> None:
    from supportflow.settings import get_settings

    notebook = nbformat.read(ROOT / "notebooks" / "model_comparison.ipynb", as_version=4)
    assert os.environ["SUPPORTFLOW_MLFLOW_TRACKING_URI"] == get_settings().mlflow_tracking_uri  # the kernel inherits the store
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    text = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert f"latest run: {store.first.run_id}" in text
    assert "card_arrival" in text or "exchange_rate" in text  # the per-intent table names intents


def test_gate_keeps_champion_rolls_back_and_serves(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from flows.train import train
    from supportflow.classifier.inference import onnx_tokenizer
    from supportflow.classifier.registry import register_and_gate, rollback, score_version
    from supportflow.classifier.served import load_serving_classifier
    from supportflow.lake import open_lake
    from supportflow.settings import get_settings
    from supportflow.tracking import CHALLENGER, CHAMPION, connect
    from supportflow.validate.snapshot import read_split

    first = store.first
    name = get_settings().registered_model_name

    # A weaker model (a fraction of an epoch, the head alone: the other readers would carry it) registers as challenger
    # only; the champion keeps serving.
    monkeypatch.setenv("SUPPORTFLOW_QUICK_PROFILE", '{"epochs": 0.05, "learning_rate": 1e-5, "max_length": 32}')
    monkeypatch.setenv("SUPPORTFLOW_CLASSIFIER_READERS", "[]")
    get_settings.cache_clear()
    second = train()
    settings = get_settings()
    client = connect(settings)
    assert second.version == "2" and not second.promoted
    assert "does not beat champion v1" in second.gate_reason
    assert client.get_model_version_by_alias(name, CHAMPION).version == 1
    assert client.get_model_version_by_alias(name, CHALLENGER).version == 2
    assert client.get_model_version(name, "2").tags["gate"] == "failed"
    assert client.get_run(second.run_id).data.tags["gate_reason"] == second.gate_reason

    # A gate that cannot finish (the champion cannot be re-scored) removes the new version again.
    client.set_model_version_tag(name, "1", "snapshot_id", "another-snapshot")

    def broken_scoring(version: ModelVersion) -> float:
        raise RuntimeError("champion artifacts unreadable")

    with pytest.raises(RegistryError, match=r"gate .* failed"):
        register_and_gate(client, settings, second.run_id, f"runs:/{second.run_id}/model", store.snapshot_id, 0.99, broken_scoring)
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'")) == [1, 2]
    assert client.get_model_version_by_alias(name, CHAMPION).version == 1

    # A champion measured on another snapshot is re-scored on this test split; a better model wins.
    test = read_split(open_lake(settings), store.snapshot_id, "test")
    labels = sorted(TINY_INTENTS)

    def rescore(version: ModelVersion) -> float:
        return score_version(settings, str(version.version), test["text"].tolist(), [labels.index(i) for i in test["intent"]], labels)

    won = register_and_gate(client, settings, first.run_id, f"models:/{name}/1", store.snapshot_id, first.test_macro_f1 + 0.01, rescore)
    assert won.promoted and won.champion_macro_f1 == pytest.approx(first.test_macro_f1, abs=1e-6)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == won.version

    # Rollback moves the champion back to the version it replaced, and no further than the first.
    assert rollback(settings) == (won.version, "1")
    assert client.get_model_version_by_alias(name, CHAMPION).version == 1
    with pytest.raises(RegistryError, match="first champion"):
        rollback(settings)

    # Serving loads what the registry names (before any release, the champion) and answers the design's ranking contract.
    served = load_serving_classifier(settings)
    assert served.version == "1"
    answers = served.classify(["I am still waiting on my card", "what is the exchange rate"], top_k=None)
    assert [a["intent"] for a in answers] == ["card_arrival", "exchange_rate"]
    for answer in answers:
        confidences = [entry["confidence"] for entry in answer["ranking"]]
        assert answer["confidence"] == confidences[0] == max(confidences)
        assert sum(confidences) == pytest.approx(1.0, abs=1e-5)
        assert len(answer["ranking"]) == len(TINY_INTENTS)

    # The ONNX variants are served without transformers: the folder's tokenizer.json gives the same ids and masks.
    texts = ["", "Où est ma CARTE?!", "my card " * 40, *test["text"].head(50)]
    expected = AutoTokenizer.from_pretrained(str(served.folder))(texts, padding=True, truncation=True, max_length=served.card.max_length)
    encodings = onnx_tokenizer(served.folder, served.card.max_length).encode_batch(texts)
    assert [e.ids for e in encodings] == expected["input_ids"]
    assert [e.attention_mask for e in encodings] == expected["attention_mask"]
