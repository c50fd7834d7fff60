"""Long steps show their progress: bars in a terminal, a progress artifact in the Prefect UI."""

import asyncio

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.runtime import flow_run

from supportflow import progress
from supportflow.progress import Step, bars


def test_bars_follow_each_step_and_nothing_is_drawn_without_them() -> None:
    with bars(enabled=True):
        assert progress._bars is None  # no step yet: the terminal is left alone
        step = Step("embed", total=10)
        step.advance(4, detail="batch 1")
        step.advance(6)
        shown = progress._bars
        assert shown is not None
        (task,) = shown.tasks
        assert (task.description, task.completed, task.total, task.fields["detail"]) == ("embed", 10, 10, "batch 1")
    assert progress._bars is None
    quiet = Step("embed", total=3)  # no bars open: counted, drawn nowhere
    quiet.advance(3)
    assert quiet.completed == 3


def test_a_step_inside_a_flow_run_keeps_a_prefect_progress_artifact(prefect_harness: None) -> None:
    @flow
    def work() -> str:
        with Step("validate", total=4) as step:
            for _ in range(4):
                step.advance()
        return str(flow_run.id)

    run_id = work()

    async def artifacts() -> list:
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))

    (artifact,) = [a for a in asyncio.run(artifacts()) if a.type == "progress"]
    assert artifact.description == "validate"
    assert float(artifact.data) == 100.0  # the last update is sent even inside the throttle's interval
