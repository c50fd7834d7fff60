"""The drift_monitor flow under the Prefect test harness, on a real lake and MLflow on SQLite.

The registry holds `intent-classifier` v1 (champion) whose training run carries the drift reference,
and v2 whose run has none (trained before the monitor existed). The turn log holds one window per case;
the emitted events are read back from the harness's events API, as a deployment trigger would see them.
"""

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from supportflow.bot.turns import Turn, TurnLog
from supportflow.drift.figures import DriftReference, DriftReport
from supportflow.errors import DriftReferenceError, SupportflowError
from tests.drift.conftest import START, register, use_store, window

pytestmark = pytest.mark.slow  # the drift monitor flow under Prefect's test harness, on a registry and 461 logged turns

FAMILIAR, SPIKE, ONE_TURN, EMPTY, UNMONITORED = (START + timedelta(hours=h) for h in range(5))


def end_of(start: object) -> str:
    return (start + timedelta(hours=1)).isoformat()  # type: ignore[operator]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, reference: DriftReference, texts: dict, prefect_harness: None) -> Iterator[Path]:
    from supportflow.lake import open_lake
    from supportflow.settings import get_settings

    folder = tmp_path_factory.mktemp("drift")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPPORTFLOW_LAKE_URL", str(folder / "lake"))
        client = use_store(patch, f"sqlite:///{folder / 'mlflow.db'}")
        patch.setenv("SUPPORTFLOW_MLFLOW_ARTIFACT_ROOT", str(folder / "mlartifacts"))
        get_settings.cache_clear()
        settings = get_settings()
        mlflow.create_experiment("intent-classifier", artifact_location=str(folder / "mlartifacts"))
        assert register(client, reference) == "1" and register(client, None) == "2"
        client.set_registered_model_alias("intent-classifier", "champion", "1")

        rng = np.random.default_rng(11)
        log = TurnLog(open_lake(settings), flush_every=10_000)
        spike = np.where(rng.random(200) < 0.45, 0.2, rng.beta(6, 1.2, size=200))
        frames = [
            window(rng, texts, 200, FAMILIAR),
            window(rng, texts, 200, SPIKE, confidences=spike),
            window(rng, texts, 1, ONE_TURN, confidences=np.array([0.1])),
            window(rng, texts, 60, UNMONITORED, model_version="2"),
        ]
        for frame in frames:
            for row in frame.to_dict("records"):
                log.record(Turn(**{key: value for key, value in row.items() if value is not None and value == value}))
        log.flush()
        try:
            yield folder
        finally:
            get_settings.cache_clear()


def drift_events(event_id: str | None = None) -> list:
    """Drift events on the test API, newest first (other tests of the session emit some too)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter, EventNameFilter, EventOrder

    from supportflow.drift.events import DRIFT_EVENT

    chosen = EventFilter(event=EventNameFilter(name=[DRIFT_EVENT]), order=EventOrder.DESC)
    if event_id is not None:
        chosen.id = EventIDFilter(id=[event_id])
    with get_client(sync_client=True) as client:
        return client.read_events(chosen, limit=50).events


def logged_run(run_id: str) -> tuple[object, set[str], dict]:
    from supportflow.drift.tracking import REPORT_ARTIFACT
    from supportflow.settings import get_settings

    client = MlflowClient(get_settings().mlflow_tracking_uri, registry_uri=get_settings().mlflow_tracking_uri)
    run = client.get_run(run_id)
    artifacts = {a.path for folder in ("report", "plots") for a in client.list_artifacts(run_id, folder)}
    return run, artifacts, mlflow.artifacts.load_dict(f"runs:/{run_id}/{REPORT_ARTIFACT}")


def drift_runs() -> dict[str, object]:
    """The drift experiment's runs by their window's end."""
    from supportflow.settings import get_settings

    settings = get_settings()
    client = MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.drift_experiment)
    return {run.data.params["window_end"]: run for run in client.search_runs([experiment.experiment_id])}


@pytest.fixture(scope="module")
def familiar(store: Path) -> DriftReport:
    """The familiar window, monitored once per module, before the spike (whose event must not be followed by one
    naming this window's run)."""
    from flows.drift_monitor import drift_monitor

    return drift_monitor(window_hours=1.0, end=end_of(FAMILIAR), retrain=True)


def test_familiar_traffic_is_reported_in_mlflow_without_an_event(familiar: DriftReport) -> None:
    report = familiar
    assert report.status == "ok" and not report.drifted and report.n_turns == 200
    assert report.reference_version == "1" and report.retraining == "requested, not needed: no drift"
    run = drift_runs()[end_of(FAMILIAR)]
    run, artifacts, logged = logged_run(run.info.run_id)
    assert run.data.tags["status"] == "ok" and run.data.tags["drifted"] == "false" and "drift_event_id" not in run.data.tags
    assert run.data.metrics["fallback_rate"] == pytest.approx(report.fallback_rate)
    assert run.data.metrics["n_turns"] == 200 and "confidence_psi" in run.data.metrics and "oov_rate" in run.data.metrics
    assert run.data.params["threshold.max_fallback_rate"] == "0.3" and run.data.params["threshold.min_turns"] == "50"
    assert {"report/drift_report.json", "plots/confidence.png", "plots/intent_mix.png"} <= artifacts
    assert logged["status"] == "ok" and logged["confidence_psi"] == pytest.approx(report.confidence_psi)


def test_a_fallback_spike_emits_the_drift_event(store: Path, familiar: DriftReport) -> None:
    from flows.drift_monitor import drift_monitor

    report = drift_monitor(window_hours=1.0, end=end_of(SPIKE))
    assert report.drifted and report.status == "drift" and report.fallback_rate > 0.3
    assert report.retraining == "left to the deployment triggered by supportflow.drift.detected"
    run = drift_runs()[end_of(SPIKE)]
    assert run.data.tags["drifted"] == "true" and run.data.tags["retraining"] == report.retraining
    event_id = run.data.tags["drift_event_id"]

    deadline, found = time.monotonic() + 60, []
    while not found and time.monotonic() < deadline:
        found = drift_events(event_id)
        time.sleep(0.5)
    assert found, "the drift event never reached the Prefect API"
    event = found[0]
    assert event.resource.id == "supportflow.model.intent-classifier" and event.resource["supportflow.model.version"] == "1"
    assert event.payload["mlflow_run_id"] == run.info.run_id
    assert event.payload["window_start"].startswith("2026-11-20T10:00") and event.payload["window_end"].startswith("2026-11-20T11:00")
    assert event.payload["figures"]["fallback_rate"] == pytest.approx(report.fallback_rate)
    assert event.payload["breaches"] == report.breaches
    # Only drift is announced: the events, read after the spike's arrived, name the spike's run and never the
    # familiar window's (monitored first, by the `familiar` fixture).
    assert not familiar.drifted
    familiar_run = drift_runs()[end_of(FAMILIAR)].info.run_id
    named = [event.payload.get("mlflow_run_id") for event in drift_events()]
    assert run.info.run_id in named and familiar_run not in named


def test_one_turn_and_an_empty_window_give_a_clear_report_and_no_alarm(store: Path) -> None:
    from flows.drift_monitor import drift_monitor

    one = drift_monitor(window_hours=1.0, end=end_of(ONE_TURN), retrain=True)
    assert one.status == "too few turns" and not one.drifted and one.fallback_rate == 1.0
    assert one.retraining == "requested, not needed: no drift"
    empty = drift_monitor(window_hours=1.0, end=end_of(EMPTY))
    assert empty.status == "empty window" and not empty.drifted and empty.n_turns == 0
    runs = drift_runs()
    assert runs[end_of(ONE_TURN)].data.tags["status"] == "too few turns"
    assert runs[end_of(EMPTY)].data.tags["status"] == "empty window" and runs[end_of(EMPTY)].data.metrics["n_turns"] == 0
    assert "drift_event_id" not in runs[end_of(ONE_TURN)].data.tags | runs[end_of(EMPTY)].data.tags


def test_a_model_without_a_reference_is_a_clear_error(store: Path) -> None:
    from flows.drift_monitor import drift_monitor

    with pytest.raises(DriftReferenceError, match=r"intent-classifier v2 \(MLflow run \w+\) has no reference/drift_reference.json"):
        drift_monitor(window_hours=1.0, end=end_of(UNMONITORED))


def test_bad_window_arguments_are_clear_errors(store: Path) -> None:
    from flows.drift_monitor import drift_monitor

    with pytest.raises(SupportflowError, match="window_hours must be positive"):
        drift_monitor(window_hours=0)
    with pytest.raises(SupportflowError, match="not an ISO date-time"):
        drift_monitor(end="yesterday")


def test_the_cli_prints_the_report_and_errors_without_a_traceback(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.cli import main

    assert main(["drift", "--end", end_of(ONE_TURN)]) == 0
    out = capsys.readouterr().out
    assert "too few turns in 2026-11-20 11:00-12:00 UTC (1 turns)" in out and "would breach: fallback rate 100.0%" in out
    assert "fallback_rate 1.000" in out and "retraining: not requested" in out

    assert main(["drift", "--end", end_of(UNMONITORED)]) == 2
    err = capsys.readouterr().err
    assert "\nsupportflow: error: intent-classifier v2 (MLflow run" in err and "retrain it" in err and "Traceback" not in err


def test_turns_without_a_version_are_compared_with_production_else_the_champion(store: Path) -> None:
    from supportflow.drift.tracking import load_reference
    from supportflow.settings import get_settings

    settings = get_settings()
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    assert load_reference(settings, None).model_version == "1"  # no release yet: the champion
    client.set_registered_model_alias("intent-classifier", "production", "2")
    try:
        with pytest.raises(DriftReferenceError, match=r"intent-classifier v2 "):
            load_reference(settings, None)
    finally:
        client.delete_registered_model_alias("intent-classifier", "production")
