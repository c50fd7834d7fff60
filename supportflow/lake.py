"""The data lake: one fsspec filesystem with a fixed set of areas.

A local folder by default, ``s3://bucket/prefix`` through s3fs at scale. Writes are atomic (a
local file is written under a temporary name and renamed; an S3 PUT is atomic already), so a
run that dies part-way never leaves a half-written file for the next stage to read.
"""

import io
import json
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from supportflow.digest import text_digest
from supportflow.errors import LakeUnavailableError
from supportflow.settings import Settings


@dataclass(frozen=True)
class Lake:
    fs: AbstractFileSystem
    root: str
    url: str

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """A location a person can paste: with the scheme for object stores."""
        path = self.path(*parts)
        return path if self.is_local else f"{_protocols(self.fs)[0]}://{path}"

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def files(self, *parts: str, suffix: str = ".parquet") -> list[str]:
        """Complete files under a folder, sorted; temporary files of unfinished writes are skipped."""
        base = self.path(*parts)
        if not self.fs.exists(base):
            return []
        return sorted(p for p in self.fs.find(base) if p.endswith(suffix))

    def versions(self, *parts: str, suffix: str = ".parquet") -> dict[str, str]:
        """`files`, each with a token that changes whenever the file is written again (a digest of its listing: size,
        times, ETag): one listing, not a request per file."""
        base = self.path(*parts)
        if not self.fs.exists(base):
            return {}
        found = self.fs.find(base, detail=True)
        return {path: text_digest(json.dumps(found[path], sort_keys=True, default=str)) for path in sorted(found) if path.endswith(suffix)}

    def write_bytes(self, data: bytes, *parts: str) -> str:
        target = self.path(*parts)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return target
        temporary = f"{target}.tmp-{uuid.uuid4().hex}"
        self.fs.pipe_file(temporary, data)
        self.fs.mv(temporary, target)
        return target

    def write_parquet(self, frame: pd.DataFrame | pa.Table, *parts: str) -> str:
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="snappy")
        return self.write_bytes(buffer.getvalue(), *parts)

    def write_json(self, obj: Any, *parts: str) -> str:
        return self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), *parts)

    def read_json(self, *parts: str) -> Any:
        with self.fs.open(self.path(*parts), "rb") as handle:
            return json.load(handle)

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pd.DataFrame:
        with self.fs.open(path, "rb") as handle:
            return pq.read_table(handle, columns=columns).to_pandas()

    def remove(self, *parts: str) -> None:
        target = self.path(*parts)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def storage_options(settings: Settings) -> dict[str, Any]:
    if not settings.lake_url.startswith(("s3://", "s3a://")):
        return {}
    return {
        "endpoint_url": settings.s3_endpoint_url,
        "config_kwargs": {
            "connect_timeout": settings.s3_connect_timeout_s,
            "read_timeout": max(settings.s3_connect_timeout_s, 30.0),
            "retries": {"max_attempts": settings.s3_max_attempts, "mode": "standard"},
        },
    }


def open_lake(settings: Settings) -> Lake:
    """Open the lake and prove it answers, so a dead endpoint fails here with its address."""
    try:
        fs, root = fsspec.core.url_to_fs(settings.lake_url, **storage_options(settings))
        if hasattr(fs, "retries"):
            # s3fs retries on its own on top of botocore; bounded, a dead endpoint fails in seconds.
            fs.retries = settings.s3_max_attempts
        if "file" in _protocols(fs):
            fs.makedirs(root, exist_ok=True)
        else:
            fs.ls(root.split("/", 1)[0], refresh=True)
    except Exception as error:
        where = settings.lake_url
        if settings.s3_endpoint_url:
            where += f" (endpoint {settings.s3_endpoint_url})"
        raise LakeUnavailableError(f"the lake at {where} cannot be reached: {type(error).__name__}: {error}") from error
    return Lake(fs=fs, root=root.rstrip("/"), url=settings.lake_url)
