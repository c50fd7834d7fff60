"""The flows under Prefect's test harness, and the CLI a person runs."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from supportflow.lake import open_lake
from supportflow.settings import Settings, get_settings


@pytest.fixture
def configured(local_settings: Settings, monkeypatch: pytest.MonkeyPatch, prefect_harness: None) -> Settings:
    """Point the flows (which read settings from the environment) at a temporary lake."""
    monkeypatch.setenv("SUPPORTFLOW_LAKE_URL", local_settings.lake_url)
    monkeypatch.setenv("SUPPORTFLOW_GX_ROOT", str(local_settings.gx_root))
    monkeypatch.setenv("SUPPORTFLOW_WORKERS", "1")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_the_ingest_and_validate_flows_are_safe_to_rerun(configured: Settings, banking77_sample: Path, tmp_path: Path) -> None:
    """What the pipeline's first two stages do, run twice: nothing lands twice and the snapshot is the same one
    (the whole pipeline, killed in every stage and run again, is tests/loop/test_loop.py)."""
    from flows.ingest import ingest
    from flows.validate import validate

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "my card never came", "intent": "card_arrival"}\nnot json\n')
    paths = [str(banking77_sample), str(bad)]

    first_ingest, first_snapshot = ingest(paths, source="desk"), validate()
    second_ingest, second_snapshot = ingest(paths, source="desk"), validate()

    assert [r.written for r in first_ingest] == [1540, 1] and [r.quarantined for r in first_ingest] == [0, 1]
    assert [r.written for r in second_ingest] == [0, 0] and [r.duplicates for r in second_ingest] == [1540, 1]
    assert second_snapshot.snapshot_id == first_snapshot.snapshot_id
    assert first_snapshot.validation.accepted == 1541
    lake = open_lake(configured)
    assert sum(len(lake.read_parquet(p)) for p in lake.files("tickets")) == 1541


def test_the_cli_prints_a_clear_error_without_a_traceback(configured: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.cli import main

    status = main(["ingest", str(tmp_path / "missing.csv")])

    captured = capsys.readouterr()
    assert status == 2
    assert f"supportflow: error: {tmp_path / 'missing.csv'}: no such file" in captured.err
    assert "Traceback" not in captured.out + captured.err


def test_the_cli_ingests_and_validates(configured: Settings, banking77_sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.cli import main

    assert main(["ingest", str(banking77_sample), "--source", "banking77"]) == 0
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "read 1,540 = written 1,540 + duplicates 0 + quarantined 0" in out
    assert "rows read 1,540 = accepted 1,540 + quarantined 0" in out
    assert "data docs: file://" in out
    assert os.path.exists(Path(configured.lake_url) / "snapshots" / "latest.json")
    assert len(pd.read_parquet(Path(configured.lake_url) / "tickets")) == 1540


@pytest.mark.slow  # imports every flow, and with them torch, transformers and MLflow: about 30 s
def test_every_deployment_in_prefect_yaml_points_at_a_flow() -> None:
    import importlib

    import yaml
    from prefect import Flow

    config = yaml.safe_load((Path(__file__).parent.parent / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        module, name = deployment["entrypoint"].removesuffix(".py").replace(".py:", ":").split(":")
        flow = getattr(importlib.import_module(module.replace("/", ".")), name)
        assert isinstance(flow, Flow), deployment["name"]


def test_the_cli_ingests_an_export_in_the_encoding_it_is_given(
    configured: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from supportflow.cli import main

    export = tmp_path / "windows.csv"
    export.write_bytes("text,intent\nmy café order is late,order_status\nwhere is my order?,order_status\n".encode("cp1252"))

    assert main(["ingest", str(export), "--encoding", "cp1252", "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert (report["encoding"], report["written"], report["quarantined"]) == ("cp1252", 2, 0)
