"""Where the flows' cached stages keep their results: the lake's `prefect-results/` area.

Prefect finds a cached stage by reading the result stored under its cache key, so the cache lives wherever the
results do. Prefect's default is a folder in the local Prefect home, which a Kubernetes flow run (a new pod each
time) never sees again: a resumed run would redo every finished stage. On the lake (a local folder, or S3 at scale)
every run, on any machine, reads the same results. The storage is one of Prefect's public filesystem blocks, saved
on the Prefect API under a name derived from the lake's address (Prefect refers to result storage by its saved
block) and given to the tasks per run (`Task.with_options`), so each run uses the lake its settings name.
"""

import hashlib
from pathlib import Path
from typing import TypeVar

from prefect import Task
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem

from supportflow.lake import storage_options
from supportflow.settings import Settings

RESULTS_AREA = "prefect-results"
CachedTask = TypeVar("CachedTask", bound=Task)


def result_storage(settings: Settings) -> WritableFileSystem:
    """The lake's results area as a Prefect filesystem: fsspec with the lake's own options (endpoint, timeouts)."""
    url = settings.lake_url.rstrip("/")
    if "://" not in url or url.startswith("file://"):
        return LocalFileSystem(basepath=str(Path(url.removeprefix("file://")).resolve() / RESULTS_AREA))
    return RemoteFileSystem(basepath=f"{url}/{RESULTS_AREA}", settings=storage_options(settings))


def on_the_lake(task: CachedTask, settings: Settings) -> CachedTask:
    """The task with its results (and so its cache) on the lake. Called inside a flow run: it saves the block."""
    storage = result_storage(settings)
    where = storage.basepath.encode()
    storage.save(f"supportflow-results-{hashlib.blake2b(where, digest_size=6).hexdigest()}", overwrite=True)
    return task.with_options(result_storage=storage)
