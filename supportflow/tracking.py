"""MLflow, the store of record for every stage: one way to reach it, one way to open a run, one set of alias names.

Every stage logs somewhere in the same store (the classifier's training runs and registry, the knowledge base's
builds, the dialogue models, the drift reports), so how the store is reached lives here once: a client that
names its registry explicitly (MLflow's process-wide registry URI may point at another store in the same
process), a reachability check that fails before any compute is spent, and runs opened in experiments that
keep their artifacts under `mlflow_artifact_root` when one is set.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run

from supportflow.errors import RegistryError
from supportflow.settings import Settings

CHAMPION = "champion"  # the best version by the promotion gate
CHALLENGER = "challenger"  # the newest registered version
PRODUCTION = "production"  # the version the promoted release serves


def connect(settings: Settings, check: bool = True) -> MlflowClient:
    """A client on the configured store, which also becomes the process's store for `mlflow.start_run` and
    `models:/` URIs. With `check`, an unreachable store fails here with a message a person can act on."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if settings.s3_endpoint_url and (settings.mlflow_artifact_root or "").startswith("s3://"):
        # Artifacts written straight to a bucket on an S3-compatible server (MinIO) go where the lake's do: MLflow's
        # S3 client reads its endpoint from this variable only. One set explicitly is kept.
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        if database.parent.is_dir():
            create_whole(database)
        elif check:
            raise RegistryError(f"the MLflow store {uri} cannot be reached: the folder {database.parent} does not exist")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if check:
        try:
            client.search_experiments(max_results=1)
        except Exception as error:  # connection refused, DNS, SQLite open errors, HTTP 5xx, ...
            raise RegistryError(
                f"the MLflow store {uri} cannot be reached ({type(error).__name__}: {str(error)[:200]}); "
                "start it or fix SUPPORTFLOW_MLFLOW_TRACKING_URI"
            ) from error
    return client


def create_whole(database: Path) -> None:
    """Create a missing SQLite store beside its path and link it into place once every migration has run.

    MLflow creates its schema in many DDL statements that SQLite commits one by one, so a process killed while
    a fresh store is being made would leave a half-migrated file that every later run fails on ("index ...
    already exists"). A link, unlike a rename, never replaces a store another process made in the meantime.
    """
    if database.exists():
        return
    side = database.with_name(f".{database.name}.{os.getpid()}.creating")
    side.unlink(missing_ok=True)
    try:
        MlflowClient(tracking_uri=f"sqlite:///{side}").search_experiments(max_results=1)
        with suppress(FileExistsError):  # another process made it first; theirs is as whole as ours
            os.link(side, database)
    finally:
        side.unlink(missing_ok=True)


@contextmanager
def start_run(settings: Settings, experiment: str, run_name: str) -> Iterator[Run]:
    """A run in `experiment` on the configured store. An experiment created here keeps its artifacts under
    `mlflow_artifact_root` (a bucket at scale); an existing one keeps the location it was created with."""
    connect(settings)
    if settings.mlflow_artifact_root and mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=settings.mlflow_artifact_root)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        yield run
