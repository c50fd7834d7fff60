"""The tests keep out of the working copy: what the session gives every test (tests/conftest.py), and the guard
that `make test` and every test run (tests/store_guard.py), each shown catching a write."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from supportflow.settings import PROJECT_ROOT, Settings, get_settings
from tests.store_guard import STORES, changes, fingerprint, main

ROOT = Path(__file__).resolve().parent.parent


def test_every_store_of_a_test_is_in_a_temporary_folder_and_no_dotenv_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    stores = {
        "lake": Path(settings.lake_url),
        "gx": settings.gx_root,
        "models": settings.models_dir,
        "registry": Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")),
        "artifacts": Path(str(settings.mlflow_artifact_root)),
        "kb": settings.kb_dir,
        "rasa": settings.rasa_project_dir,
        "handoffs": Path(settings.handoff_db_url.removeprefix("sqlite:///")),
        "bundles": settings.bentoml_home,
        "run": settings.run_dir,
        "results": settings.results_dir,
        "desks": settings.desks_dir,
    }
    inside = {name: path for name, path in stores.items() if path.resolve().is_relative_to(PROJECT_ROOT)}
    assert not inside, f"stores in the working copy: {inside}"
    assert os.environ["MLFLOW_TRACKING_URI"] == settings.mlflow_tracking_uri  # MLflow's own default too
    assert settings.openai_api_key is None and not [name for name in os.environ if name.startswith("OPENAI_")]

    # A developer's .env in the working directory: read by default, never by a test.
    (tmp_path / ".env").write_text("SUPPORTFLOW_OPENAI_API_KEY=sk-real-and-paid\nSUPPORTFLOW_LAKE_URL=/their/lake\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().openai_api_key is None and Settings().lake_url == settings.lake_url
    monkeypatch.delenv("SUPPORTFLOW_ENV_FILE")
    assert Settings().openai_api_key.get_secret_value() == "sk-real-and-paid"  # the switch is what keeps it out


def test_a_desk_other_than_the_demo_keeps_its_stores_in_the_tests_folder_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPPORTFLOW_LAKE_URL")  # a store left to the desk's default: under the desks folder, in tmp
    monkeypatch.delenv("SUPPORTFLOW_RESULTS_DIR")
    settings = Settings(workspace=ROOT / "examples" / "saas")
    assert Path(settings.lake_url) == settings.desks_dir / "saas" / "lake"
    assert settings.results_dir == settings.desks_dir / "saas" / "results"  # its evaluations too, not the project's results
    assert not settings.desks_dir.resolve().is_relative_to(PROJECT_ROOT)


def test_variables_a_test_leaks_do_not_reach_the_next_one_part_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's --workspace and MLflow's set_tracking_uri write os.environ directly, past any monkeypatch; part two,
    the next test, must not see them."""
    import mlflow

    from supportflow.cli import main

    assert main(["--workspace", str(ROOT / "examples" / "saas"), "stop"]) == 0
    assert capsys.readouterr().out == "nothing was running\n"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert os.environ["SUPPORTFLOW_WORKSPACE"] == str(ROOT / "examples" / "saas")
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'elsewhere.db'}"


def test_variables_a_test_leaks_do_not_reach_the_next_one_part_two() -> None:
    assert "SUPPORTFLOW_WORKSPACE" not in os.environ and get_settings().workspace == ROOT / "examples" / "banking77"
    assert os.environ["MLFLOW_TRACKING_URI"] == get_settings().mlflow_tracking_uri  # this test's own store


def make_stores(root: Path) -> None:
    (root / ".lake" / "snapshots").mkdir(parents=True)
    (root / ".lake" / "snapshots" / "latest.json").write_text('{"snapshot_id": "snap-1"}')
    (root / "mlflow.db").write_bytes(b"registry")
    (root / ".run" / "logs").mkdir(parents=True)
    (root / ".run" / "logs" / "bot.log").write_text("a running bot writes here\n")
    (root / "bench" / "results").mkdir(parents=True)
    (root / "bench" / "results" / "pipeline.json").write_text("{}")
    (root / "models").mkdir()
    (root / "models" / "weights.bin").write_bytes(b"not a store")


def test_the_fingerprint_covers_the_stores_and_catches_a_same_size_rewrite(tmp_path: Path) -> None:
    make_stores(tmp_path)
    before = fingerprint(tmp_path)
    assert set(before) == {".lake", ".lake/snapshots", ".lake/snapshots/latest.json", "mlflow.db", ".run", ".run/logs", "bench/results"} | {
        "bench/results/pipeline.json"
    }
    assert {".lake", "mlflow.db", ".run", "bench/results"} <= set(STORES)

    # The same size and modification time, other bytes: only the content hash sees it.
    pointer = tmp_path / ".lake" / "snapshots" / "latest.json"
    stat = pointer.stat()
    pointer.write_text('{"snapshot_id": "snap-2"}')
    os.utime(pointer, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (tmp_path / ".run" / "logs" / "bot.log").write_text("more lines\n")  # a log grows: not a change
    (tmp_path / "models" / "weights.bin").write_bytes(b"elsewhere")  # not a store: not a change
    (tmp_path / ".kb").mkdir()
    (tmp_path / "mlflow.db").unlink()

    assert changes(before, fingerprint(tmp_path)) == ["added    .kb", "changed  .lake/snapshots/latest.json", "removed  mlflow.db"]
    assert changes(fingerprint(tmp_path, content=False), fingerprint(tmp_path, content=False)) == []


def test_make_tests_check_fails_with_the_changed_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy, saved = tmp_path / "copy", tmp_path / "fingerprint.json"
    copy.mkdir()
    make_stores(copy)
    assert main(["save", str(saved), "--root", str(copy)]) == 0
    assert main(["check", str(saved), "--root", str(copy)]) == 0
    (copy / "bench" / "results" / "pipeline.json").write_text('{"rewritten": true}')
    assert main(["check", str(saved), "--root", str(copy)]) == 1
    assert capsys.readouterr().err == f"the tests changed the working copy's stores in {copy}:\n  changed  bench/results/pipeline.json\n"


def test_the_guard_fails_the_test_that_writes_into_the_working_copy(tmp_path: Path) -> None:
    """A session of two tests against a stand-in working copy: the one that writes into its lake fails, by name."""
    copy, session = tmp_path / "copy", tmp_path / "session"
    copy.mkdir()
    session.mkdir()
    make_stores(copy)
    (session / "conftest.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path

        from tests.store_guard import WorkingCopyGuard


        def pytest_configure(config):
            config.pluginmanager.register(WorkingCopyGuard(Path({str(copy)!r})))
        """)
    )
    (session / "test_inner.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path


        def test_writes_into_the_lake():
            (Path({str(copy)!r}) / ".lake" / "tickets.parquet").write_bytes(b"rows")


        def test_keeps_to_its_folder(tmp_path):
            (tmp_path / "lake.parquet").write_bytes(b"rows")
        """)
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(session)],
        cwd=session,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 passed, 1 error" in done.stdout  # pytest counts a test whose teardown fails as passed, then in error
    assert f"test_inner.py::test_writes_into_the_lake wrote into the working copy's stores ({copy}):\n  added    .lake/tickets.parquet" in (
        done.stdout
    )
    assert "ERROR test_inner.py::test_writes_into_the_lake" in done.stdout and "test_keeps_to_its_folder" not in done.stdout
