"""Shared fixtures: every store in the test's own folder, settings on a temporary lake (a local folder, or a real
moto S3 server on 127.0.0.1), and one Prefect test harness per session (its API takes ~20 s to start).

No test may touch the working copy: a developer's `.env` and shell variables are kept out, every store setting
points into a temporary folder (`isolated_stores`, `stores_of_the_test`), and each test is failed if the working
copy's stores changed while it ran (`WorkingCopyGuard`, tests/store_guard.py).
"""

import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
for _variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_variable, "1")
# Before anything reads settings (collection imports the test modules): nothing the shell or a `.env` says reaches a
# test. A real OpenAI key would make paid calls, a store variable would point the tests at someone's registry.
# SUPPORTFLOW_ES_URL stays: it is how a developer opts in to the Elasticsearch contract tests (tests/kb/conftest.py).
KEPT_VARIABLES = {"SUPPORTFLOW_ES_URL"}
for _variable in [name for name in os.environ if name.startswith(("SUPPORTFLOW_", "OPENAI_", "MLFLOW_")) and name not in KEPT_VARIABLES]:
    del os.environ[_variable]
os.environ["SUPPORTFLOW_ENV_FILE"] = ""  # supportflow/settings.py: no dotenv file is read
# The CLI's background Prefect server (supportflow/prefect_server.py) is off: tests run flows under the test harness.
os.environ["SUPPORTFLOW_PREFECT_SERVER"] = "ephemeral"

from supportflow.lake import Lake, open_lake  # noqa: E402
from supportflow.processes import free_port  # noqa: E402
from supportflow.settings import Settings, get_settings  # noqa: E402
from tests.classifier.conftest import tiny_base  # noqa: E402, F401 - the tiny DistilBERT fixture, for every test folder
from tests.servers import (  # noqa: E402, F401 - real PostgreSQL and Redis, for every test folder
    postgres,
    redis_url,
    stop,
    wait_for_port,
)
from tests.store_guard import WorkingCopyGuard  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BANKING77 = ROOT / "examples" / "banking77" / "data"


def store_environment(folder: Path) -> dict[str, str]:
    """Every store a setting names, and MLflow's own default store, in `folder`."""
    registry = f"sqlite:///{folder / 'mlflow.db'}"
    return {
        "SUPPORTFLOW_LAKE_URL": str(folder / "lake"),
        "SUPPORTFLOW_GX_ROOT": str(folder / "gx"),
        "SUPPORTFLOW_MODELS_DIR": str(folder / "models"),
        "SUPPORTFLOW_MLFLOW_TRACKING_URI": registry,
        "SUPPORTFLOW_MLFLOW_ARTIFACT_ROOT": str(folder / "mlartifacts"),
        "SUPPORTFLOW_KB_DIR": str(folder / "kb"),
        "SUPPORTFLOW_RASA_PROJECT_DIR": str(folder / "rasa"),
        "SUPPORTFLOW_HANDOFF_DB_URL": f"sqlite:///{folder / 'handoff.db'}",
        "SUPPORTFLOW_BENTOML_HOME": str(folder / "bentoml"),
        "SUPPORTFLOW_RUN_DIR": str(folder / "run"),
        "SUPPORTFLOW_RESULTS_DIR": str(folder / "results"),
        "SUPPORTFLOW_DESKS_DIR": str(folder / "desks"),
        # MLflow's default is sqlite:///mlflow.db in the working directory: the demo's registry.
        "MLFLOW_TRACKING_URI": registry,
        "MLFLOW_REGISTRY_URI": registry,
    }


@pytest.fixture(scope="session", autouse=True)
def isolated_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The stores for the whole session, in a session folder: what module- and session-scoped fixtures (set up
    before any test's own fixtures) see unless they choose their own."""
    with pytest.MonkeyPatch.context() as patch:
        environment = store_environment(tmp_path_factory.mktemp("session-stores"))
        for name, value in environment.items():
            patch.setenv(name, value)
        # Every desk in the tests is small enough for out-of-fold calibration (five more fine-tunings per training);
        # tests/classifier/test_cross_fit.py asks for it, the others train as a large desk does.
        patch.setenv("SUPPORTFLOW_CROSS_FIT_FOLDS", "0")
        get_settings.cache_clear()
        yield environment
    get_settings.cache_clear()


@pytest.fixture(scope="module", autouse=True)
def stores_of_the_module(isolated_stores: dict[str, str], request: pytest.FixtureRequest) -> Iterator[None]:
    """The session's store settings again once a module's own fixtures have all been torn down (this one is set up
    before them, so it ends after them). `stores_of_the_test` gives a test fresh stores only where a setting still
    holds the session's value, so a module that left one changed would make every later test on its worker share
    that store: a full run once saw one test's release and registry in two other modules' tests, which passed alone.
    The leak is put right here and named in a warning, rather than left to fail a distant test."""
    yield
    leaked = sorted(name for name, value in isolated_stores.items() if os.environ.get(name) != value and name.startswith("SUPPORTFLOW_"))
    if leaked:
        warnings.warn(f"{request.module.__name__} left store settings changed, put back: {', '.join(leaked)}", stacklevel=1)
    # MLflow's setters write its MLFLOW_* variables past any monkeypatch (`stores_of_the_test` resets them per test).
    os.environ.update(isolated_stores)
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def stores_of_the_test(isolated_stores: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test's stores in a folder of its own, except those a wider fixture chose (a module's trained store stays
    in force for each of its tests); the environment is put back as the test found it, since the CLI's
    `--workspace` and MLflow's `set_tracking_uri` write variables that would otherwise reach the next test. Its own
    MonkeyPatch, not the test's `monkeypatch`: a test that calls `monkeypatch.undo()` midway would otherwise undo
    these settings too, and this fixture would then put the test's folders back for good."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in store_environment(tmp_path_factory.mktemp("stores")).items():
            if os.environ.get(name) == isolated_stores[name]:
                patch.setenv(name, value)
        # MLflow's own default follows the registry in force: a module fixture's `set_tracking_uri` outlives its module.
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            patch.setenv(name, os.environ["SUPPORTFLOW_MLFLOW_TRACKING_URI"])
        ours = ("SUPPORTFLOW_", "OPENAI_", "MLFLOW_")
        before = {name: value for name, value in os.environ.items() if name.startswith(ours)}
        get_settings.cache_clear()
        yield
        for name in [name for name in os.environ if name.startswith(ours) and name not in before]:
            del os.environ[name]
        os.environ.update(before)
    get_settings.cache_clear()


def pytest_configure(config: pytest.Config) -> None:
    """The working-copy guard, and Prefect's logging set up now: its console handler writes to sys.stderr as it was
    when Prefect first set up its logging. Set up here, that is the session's own capture, which outlives every test;
    set up inside a test that reads its output with `capsys`, it would write to that test's closed stream ever after,
    and a later test would read the logging module's "Logging error" traceback as its own."""
    from prefect.logging.configuration import setup_logging

    config.pluginmanager.register(WorkingCopyGuard(ROOT), "working-copy-guard")
    setup_logging()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real moto S3 server in its own process, answering on 127.0.0.1."""
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, server, "the moto server")
    yield f"http://127.0.0.1:{port}"
    stop(server)


def make_settings(tmp_path: Path, lake_url: str, **overrides: object) -> Settings:
    return Settings(lake_url=lake_url, gx_root=tmp_path / "gx", workers=1, **overrides)


@pytest.fixture(params=["local", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The same tests run on a local lake and on S3 (moto)."""
    if request.param == "local":
        return make_settings(tmp_path, str(tmp_path / "lake"))
    endpoint = request.getfixturevalue("s3_endpoint")
    import s3fs

    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
    return make_settings(tmp_path, f"s3://{bucket}/supportflow", s3_endpoint_url=endpoint)


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, str(tmp_path / "lake"))


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return open_lake(settings)


@pytest.fixture
def local_lake(local_settings: Settings) -> Lake:
    return open_lake(local_settings)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def banking77_sample(tmp_path: Path) -> Path:
    """1,540 BANKING77 training rows: 20 per intent, enough for the contract's minimum and the splits."""
    import pandas as pd

    frame = pd.read_csv(BANKING77 / "train.csv")
    sample = frame.groupby("category", group_keys=False).head(20)
    path = tmp_path / "banking77_sample.csv"
    sample.to_csv(path, index=False)
    return path
