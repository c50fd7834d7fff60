"""Shared fixtures: settings on a temporary lake (a local folder, or a real moto S3 server on
127.0.0.1), and one Prefect test harness per session (its API takes ~20 s to start)."""

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The CLI's background Prefect server (supportflow/prefect_server.py) is off: tests run flows under the test harness.
os.environ["SUPPORTFLOW_PREFECT_SERVER"] = "ephemeral"
for _variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_variable, "1")

from supportflow.lake import Lake, open_lake  # noqa: E402
from supportflow.processes import free_port  # noqa: E402
from supportflow.settings import Settings  # noqa: E402
from tests.classifier.conftest import tiny_base  # noqa: E402, F401 - the tiny DistilBERT fixture, for every test folder

ROOT = Path(__file__).resolve().parent.parent
BANKING77 = ROOT / "examples" / "banking77" / "data"


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
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the moto server did not start") from None
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The whole-loop modules first: `make test` spreads test files over two workers (pytest-xdist, `--dist loadfile`),
    and the longest files started last would leave one worker running them alone at the end."""
    items.sort(key=lambda item: 0 if item.path.parent.name == "loop" else 1)
