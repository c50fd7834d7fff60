"""The kb_index Prefect flow: builds, swaps and leaves a record of the build in MLflow."""

from collections.abc import Iterator

import mlflow
import pytest

from supportflow.settings import Settings, get_settings

pytestmark = pytest.mark.slow  # two builds of the demo knowledge base through the flow, about 35 s


@pytest.fixture
def prefect_api(prefect_harness: None) -> None:
    """The session's Prefect test API (one per session: tests/conftest.py)."""


@pytest.fixture
def env_settings(kb_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The flow reads settings from the environment, like the CLI does."""
    for name in ("kb_dir", "gx_root", "contracts_dir", "kb_model_cache", "lake_url", "mlflow_tracking_uri"):
        monkeypatch.setenv(f"SUPPORTFLOW_{name.upper()}", str(getattr(kb_settings, name)))
    monkeypatch.setenv("SUPPORTFLOW_KB_SOURCES", f'["{kb_settings.kb_sources[0]}"]')
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_kb_index_flow_builds_the_demo_kb_records_it_in_mlflow_and_kb_search_asks_it(
    prefect_api: None, env_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`supportflow kb-search` asks what the flow built (no build of its own): before the first build, and after."""
    from flows.kb_index import kb_index
    from supportflow.cli import main

    assert main(["kb-search", "where", "is", "my", "card"]) == 2
    assert "supportflow kb-index" in capsys.readouterr().err  # nothing built yet: what to run

    report = kb_index()
    assert report.documents == 77 and report.previous_build is None
    assert report.calibration and report.calibration.source.startswith("default")  # the empty lake has no snapshot to calibrate on
    mlflow.set_tracking_uri(env_settings.mlflow_tracking_uri)
    runs = mlflow.search_runs(experiment_names=[env_settings.kb_experiment], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["build_id"] == report.build_id and run.data.tags["content_hash"] == report.content_hash
    assert run.data.metrics["documents"] == 77 and run.data.metrics["passages"] == report.passages
    assert run.data.metrics["seconds_embed"] > 0 and run.data.metrics["smoke_hit_rate"] == 1.0

    again = kb_index()  # same content: a new build id, same hash, the old build swapped out
    assert again.previous_build == report.build_id and again.content_hash == report.content_hash
    assert sorted(p.name for p in (env_settings.kb_dir / "builds").iterdir()) == [again.build_id]

    capsys.readouterr()
    assert main(["kb-search", "-k", "2", "my", "new", "card", "has", "still", "not", "arrived"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  Q: my new card has still not arrived" and len(lines) == 4  # the question, two answers, the verdict
    assert all(line.startswith("    ") and line.endswith("]") for line in lines[1:3])
    assert "[card_arrival]" in lines[1] and lines[3].startswith("    -> answer from card_arrival: ")
