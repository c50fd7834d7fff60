"""prefect.yaml as `prefect deploy` reads it: Prefect's own models, the flows the entrypoints name, and the
triggers running for real on a Prefect server (the session's test harness): an event in, a flow run out."""

import asyncio
import copy
import inspect
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "prefect.yaml"
RAW = yaml.safe_load(PREFECT_YAML.read_text())
DEPLOYMENTS = {deployment["name"]: deployment for deployment in RAW["deployments"]}


def load_entrypoint(entrypoint: str) -> Any:
    """The flow an entrypoint names; a missing file fails with the reason rather than skipping."""
    from prefect.flows import Flow, load_flow_from_entrypoint

    path = ROOT / entrypoint.split(":")[0]
    if not path.exists():
        pytest.fail(
            f"prefect.yaml names {entrypoint} but {path.relative_to(ROOT)} does not exist"
            + (" (the drift monitor comes from the issue-6 drift branch: merge it)" if "drift_monitor" in entrypoint else "")
        )
    flow = load_flow_from_entrypoint(f"{path}:{entrypoint.split(':')[1]}")
    assert isinstance(flow, Flow), f"{entrypoint} is not a Prefect flow"
    return flow


def test_prefect_yaml_is_read_by_prefects_own_model() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    model = PrefectYamlModel.model_validate(RAW)
    assert {d.name for d in model.deployments} >= {"pipeline-nightly", "drift-monitor-hourly", "retrain-on-drift", "kb-index-on-change"}
    for deployment in model.deployments:
        assert deployment.work_pool is not None and deployment.work_pool.name == "supportflow-process", deployment.name
        limit = deployment.concurrency_limit
        if limit is not None and not isinstance(limit, int):
            ConcurrencyLimitStrategy(limit.collision_strategy)
    schedules = {
        d["name"]: [CronSchedule(cron=s["cron"], timezone=s["timezone"]) for s in d.get("schedules", [])] for d in RAW["deployments"]
    }
    assert schedules["pipeline-nightly"][0].cron == "0 2 * * *"  # nightly
    assert schedules["drift-monitor-hourly"][0].cron.split()[1:] == ["*", "*", "*", "*"]  # every hour
    assert not schedules["retrain-on-drift"] and not schedules["kb-index-on-change"]  # events only
    kubernetes = RAW["definitions"]["work_pools"]["kubernetes"]
    assert kubernetes["name"] == "supportflow-k8s" and kubernetes["job_variables"]["image"].startswith("supportflow-pipeline")


@pytest.mark.parametrize("name", list(DEPLOYMENTS))
def test_entrypoint_is_a_flow_that_takes_the_deployment_parameters(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    flow = load_entrypoint(deployment["entrypoint"])
    parameters = deployment.get("parameters") or {}
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(parameters) <= accepted, f"{name}: {sorted(set(parameters) - accepted)} are not parameters of {deployment['entrypoint']}"
    flow.validate_parameters(parameters)  # Prefect's own check, casting to the annotated types


def test_the_drift_monitor_deployment_matches_the_agreed_signature() -> None:
    flow = load_entrypoint(DEPLOYMENTS["drift-monitor-hourly"]["entrypoint"])
    signature = inspect.signature(flow.fn).parameters
    assert {"window_hours", "end", "retrain"} <= set(signature), "drift_monitor(window_hours, end, retrain) is what prefect.yaml relies on"
    assert DEPLOYMENTS["drift-monitor-hourly"]["parameters"] == {"window_hours": 1.0, "retrain": False}


def test_triggers_validate_against_prefects_deployment_trigger_models() -> None:
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    expected = {"retrain-on-drift": "supportflow.drift.detected", "kb-index-on-change": "supportflow.kb.changed"}
    for name, event in expected.items():
        (trigger,) = _initialize_deployment_triggers(name, copy.deepcopy(DEPLOYMENTS[name]["triggers"]))
        assert isinstance(trigger, DeploymentEventTrigger) and trigger.expect == {event}
        trigger.set_deployment_id(uuid4())
        automation = trigger.as_automation()  # the automation `prefect deploy` creates
        assert automation.actions[0].type == "run-deployment" and automation.enabled
    triggered = {name for name, d in DEPLOYMENTS.items() if d.get("triggers")}
    assert triggered == set(expected)


async def _deploy_with_triggers(client: Any, name: str) -> UUID:
    """What `prefect deploy` does for one deployment, minus the work pool: the deployment, then its automations."""
    from prefect.cli.deploy._triggers import _create_deployment_triggers, _initialize_deployment_triggers
    from prefect.utilities.callables import parameter_schema

    deployment = DEPLOYMENTS[name]
    flow = load_entrypoint(deployment["entrypoint"])
    deployment_id = await client.create_deployment(
        flow_id=await client.create_flow(flow),
        name=name,
        entrypoint=deployment["entrypoint"],
        parameters=deployment.get("parameters") or {},
        parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
        enforce_parameter_schema=True,  # the server checks the rendered parameters against the flow's signature
    )
    await _create_deployment_triggers(client, deployment_id, _initialize_deployment_triggers(name, copy.deepcopy(deployment["triggers"])))
    return deployment_id


async def _runs_of(client: Any, deployment_id: UUID, at_least: int, timeout: float = 60) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    while True:
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        if len(runs) >= at_least or time.monotonic() > deadline:
            return runs
        await asyncio.sleep(0.5)


async def _emit(event: str, resource_id: str, payload: dict | None = None) -> None:
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    async with get_events_client() as client:
        await client.emit(Event(event=event, resource={"prefect.resource.id": resource_id}, payload=payload or {}))


def test_events_start_the_triggered_deployments_with_their_parameters(prefect_harness: None, capsys: pytest.CaptureFixture) -> None:
    from prefect.client.orchestration import get_client

    from supportflow.cli import main

    async def deploy() -> tuple[UUID, UUID]:
        async with get_client() as client:
            return await _deploy_with_triggers(client, "kb-index-on-change"), await _deploy_with_triggers(client, "retrain-on-drift")

    async def emit_and_collect(kb_id: UUID, retrain_id: UUID) -> tuple[list[Any], list[Any]]:
        await _emit("supportflow.kb.changed", "supportflow.kb")  # the bare form the docs give (no payload)
        # another system's event of the same name does not retrain; the drift monitor's does
        await _emit("supportflow.drift.detected", "elsewhere.model.x", {"fallback_rate": 0.9})
        await _emit("supportflow.drift.detected", "supportflow.model.intent-classifier", {"fallback_rate": 0.42, "window_hours": 1.0})
        async with get_client() as client:
            kb_runs = await _runs_of(client, kb_id, 2)
            await _runs_of(client, retrain_id, 1)
            await asyncio.sleep(2)  # time for a wrongly matched event to show up as a second run
            return kb_runs, await _runs_of(client, retrain_id, 1)

    kb_id, retrain_id = asyncio.run(deploy())
    assert main(["kb-changed", "examples/banking77/kb"]) == 0
    kb_runs, retrain_runs = asyncio.run(emit_and_collect(kb_id, retrain_id))
    assert "emitted supportflow.kb.changed" in capsys.readouterr().out
    assert sorted(str(run.parameters["sources"]) for run in kb_runs) == ["['examples/banking77/kb']", "[]"]
    assert [run.parameters for run in retrain_runs] == [{"paths": []}]
    assert all(run.state_name == "Scheduled" for run in kb_runs + retrain_runs)


def test_kb_changed_without_a_prefect_server_says_what_to_set(capsys: pytest.CaptureFixture) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from supportflow.cli import main

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["kb-changed"]) == 2
    assert "set PREFECT_API_URL" in capsys.readouterr().err


def test_kb_changed_with_the_server_down_names_it(capsys: pytest.CaptureFixture) -> None:
    import socket

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from supportflow.cli import main

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
        assert main(["kb-changed"]) == 2
    assert f"the Prefect server at http://127.0.0.1:{port}/api did not take the event" in capsys.readouterr().err
