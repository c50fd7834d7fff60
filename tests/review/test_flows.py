"""The review-queue and knowledge-gap flows under Prefect's test harness, on a temporary lake and MLflow store."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient

from supportflow.bot.turns import Turn, TurnLog
from supportflow.lake import open_lake
from supportflow.review.gaps import NO_ANSWER, read_report
from supportflow.review.queue import read_queue
from supportflow.review.tracking import REPORT_ARTIFACT
from supportflow.settings import get_settings
from tests.review.conftest import MODEL_CACHE, answered

pytestmark = pytest.mark.slow  # Prefect's test harness (its API takes ~20 s to start) and the MiniLM embedder


def no_answer(text: str) -> Turn:
    return Turn(conversation_id="c", channel="webchat", text=text, route="handoff", handoff_reason="nothing relevant in the knowledge base")


@pytest.fixture
def store(prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SUPPORTFLOW_KB_MODEL_CACHE", str(MODEL_CACHE))
    get_settings.cache_clear()
    settings = get_settings()
    log = TurnLog(open_lake(settings))
    old = datetime.now(UTC) - timedelta(days=30)  # outside the week the flows read
    for turn in (
        answered("where is my new card, it has not come yet", [("card_arrival", 0.46), ("card_delivery_estimate", 0.44)]),
        answered("my top-up did not go through", [("top_up_failed", 0.55), ("exchange_rate", 0.15)]),
        answered("my top up failed last month", [("top_up_failed", 0.5), ("exchange_rate", 0.45)], received_at=old),
        no_answer("can I buy bitcoin with my account"),
        no_answer("do you sell crypto currency like bitcoin"),
        no_answer("I would like a loan to buy a car"),
    ):
        log.record(turn)
    log.flush()
    return Path(settings.lake_url)


def test_the_flows_write_the_queue_and_the_report_where_the_bot_reads_them(store: Path, capsys: pytest.CaptureFixture) -> None:
    from supportflow.cli import main

    assert main(["review-queue"]) == 0
    lake = open_lake(get_settings())
    queue = read_queue(lake)
    assert [item.text for item in queue.items] == ["where is my new card, it has not come yet", "my top-up did not go through"]
    assert queue.turns_considered == 5  # the week's turns; last month's top-up is outside the window

    assert main(["gaps", "--json"]) == 0
    report = read_report(lake)
    assert report.questions == 3 and [t.count for t in report.topics] == [2, 1]
    assert report.topics[0].reasons == {NO_ANSWER: 2} and "bitcoin" in report.topics[0].topic
    assert '"topic": "I would like a loan to buy a car"' in capsys.readouterr().out

    client = MlflowClient(get_settings().mlflow_tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("knowledge-gaps").experiment_id])
    assert run.data.metrics == {"questions": 3.0, "topics": 2.0}
    logged = client.download_artifacts(run.info.run_id, REPORT_ARTIFACT, str(store.parent / "downloaded"))
    assert Path(logged).exists() and "bitcoin" in Path(logged).read_text()
