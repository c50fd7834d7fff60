"""Validate the lake's tickets against the contract and cut a versioned training snapshot.

The snapshot id is a hash of what went into it (accepted tickets, contract and catalogue versions,
split settings), so validating the same lake twice gives the same snapshot and writes nothing new.
A snapshot is complete once its manifest exists; the manifest is written last.
"""

import hashlib
import json
import posixpath
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from supportflow.errors import ContractError
from supportflow.ingest.tickets import TICKET_SCHEMA, KnownIds, id_keys
from supportflow.lake import Lake, open_lake
from supportflow.parallel import ordered_map, process_pool
from supportflow.progress import Step
from supportflow.settings import Settings
from supportflow.validate.contracts import Contract, ContractChecker, load_contract

SPLITS = ("train", "validation", "test")
DERIVED_SUPPORT = "intent_support"


class ValidationReport(BaseModel):
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    unlabelled: int = 0
    by_rule: dict[str, int] = Field(default_factory=dict)
    lake_files: list[str] = Field(default_factory=list)
    quarantine_files: list[str] = Field(default_factory=list)
    data_docs: str = ""

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.accepted + self.quarantined


class SnapshotManifest(BaseModel):
    snapshot_id: str
    created_at: datetime
    content_hash: str
    contract_version: str
    intent_catalogue: str
    intent_catalogue_version: str
    rows: dict[str, int]
    intents: int
    seed: int
    fractions: dict[str, float]
    validation: ValidationReport
    uri: str

    def lines(self) -> list[str]:
        report = self.validation
        catalogue = f"{self.intent_catalogue}@{self.intent_catalogue_version}"
        return [
            f"snapshot {self.snapshot_id} at {self.uri}",
            f"  rows read {report.rows_read:,} = accepted {report.accepted:,} + quarantined {report.quarantined:,} {report.by_rule or ''}",
            f"  splits {self.rows}, {self.intents} intents, contract {self.contract_version}, catalogue {catalogue}",
            f"  data docs: {report.data_docs}",
        ]

    def markdown(self) -> str:
        report = self.validation
        return (
            f"**Snapshot** `{self.snapshot_id}` (contract {self.contract_version}, "
            f"catalogue {self.intent_catalogue}@{self.intent_catalogue_version})\n\n"
            f"rows read {report.rows_read} = accepted {report.accepted} + quarantined {report.quarantined}\n\n"
            f"by rule: {report.by_rule}\n\nsplits: {self.rows}\n\ndata docs: {report.data_docs}"
        )


def split_rank(keys: np.ndarray, seed: int) -> np.ndarray:
    """A seeded shuffle of the id keys (splitmix64): the order in which an intent's tickets are dealt to the splits."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def split_cutoffs(intent_codes: np.ndarray, ranks: np.ndarray, validation_fraction: float, test_fraction: float) -> np.ndarray:
    """Per intent, the highest rank that goes to test and the highest that goes to validation.

    Stratified and independent of input order: each intent's tickets, ordered by rank, give the
    first share to test, the next to validation, the rest to train.
    """
    frame = pd.DataFrame({"intent": intent_codes, "rank": ranks}).sort_values(["intent", "rank"])
    cutoffs = np.zeros((int(intent_codes.max()) + 1 if len(intent_codes) else 0, 2), dtype=np.uint64)
    for code, group in frame.groupby("intent", sort=False):
        size = len(group)
        n_test = max(1, round(size * test_fraction))
        n_validation = max(1, round(size * validation_fraction))
        ordered = group["rank"].to_numpy()
        cutoffs[code] = (ordered[n_test - 1], ordered[min(n_test + n_validation, size) - 1])
    return cutoffs


def assign_splits(intent_codes: np.ndarray, ranks: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
    split = np.full(len(ranks), "train", dtype=object)
    to_validation = ranks <= cutoffs[intent_codes, 1]
    split[to_validation] = "validation"
    split[ranks <= cutoffs[intent_codes, 0]] = "test"
    return split


def _content_hash(keys: np.ndarray, contract: Contract, settings: Settings) -> str:
    digest = hashlib.sha256()
    inputs = [contract.version, contract.catalogue.version, settings.snapshot_seed, settings.validation_fraction, settings.test_fraction]
    digest.update(json.dumps(inputs).encode())
    digest.update(np.sort(keys).tobytes())
    return digest.hexdigest()


def latest_snapshot(lake: Lake) -> SnapshotManifest:
    if not lake.exists("snapshots", "latest.json"):
        raise ContractError(f"no training snapshot in the lake at {lake.uri('snapshots')}; run validate first")
    snapshot_id = lake.read_json("snapshots", "latest.json")["snapshot_id"]
    return SnapshotManifest.model_validate(lake.read_json("snapshots", snapshot_id, "manifest.json"))


def read_split(lake: Lake, snapshot_id: str, split: str) -> pd.DataFrame:
    return lake.read_parquet(lake.path("snapshots", snapshot_id, f"{split}.parquet"))


def _quarantine_frame(frame: pd.DataFrame, reasons: dict[int, list[str]], contract: Contract, lake_file: str) -> pd.DataFrame:
    positions = sorted(reasons)
    rejected = frame.iloc[positions].drop(columns=[DERIVED_SUPPORT], errors="ignore").copy()
    rejected["reasons"] = [json.dumps(reasons[p], ensure_ascii=False) for p in positions]
    rejected["contract_version"] = contract.version
    rejected["lake_file"] = lake_file
    rejected["quarantined_at"] = pd.Timestamp.now(tz="UTC")
    return rejected


@dataclass
class _FileCheck:
    """What validating one lake file found; masks are over the file's rows."""

    path: str
    rows: int
    keys: np.ndarray
    keep: np.ndarray
    labelled: np.ndarray
    intent_codes: np.ndarray
    rule_counts: dict[str, int]
    failure: str | None = None
    quarantine_file: str | None = None


@dataclass(frozen=True)
class _CheckJob:
    path: str
    settings: Settings
    contract: Contract
    support: dict[str, int]


_WORKER_TOOLS: dict[tuple[str, str], tuple[Lake, ContractChecker]] = {}


def _tools_key(settings: Settings, contract: Contract) -> tuple[str, str]:
    return settings.model_dump_json(), json.dumps(contract.suite, sort_keys=True)


def _worker_tools(settings: Settings, contract: Contract) -> tuple[Lake, ContractChecker]:
    """One lake handle and one GX checker per process, reused across its files.

    The validating process registers its own (fresh) checker first; forked workers inherit it.
    """
    key = _tools_key(settings, contract)
    if key not in _WORKER_TOOLS:
        _WORKER_TOOLS[key] = (open_lake(settings), ContractChecker(contract, settings.gx_root, prepare=False))
    return _WORKER_TOOLS[key]


def _check_file(job: _CheckJob) -> _FileCheck:
    """Validate one lake file and quarantine its failing rows; runs in a worker process."""
    lake, checker = _worker_tools(job.settings, job.contract)
    contract, settings = job.contract, job.settings
    name = posixpath.basename(job.path)
    frame = lake.read_parquet(job.path).reset_index(drop=True)
    frame[DERIVED_SUPPORT] = frame["intent"].map(job.support).astype("float64")
    result = checker.check(frame, name)
    keys = id_keys(frame["ticket_id"])
    codes = frame["intent"].astype(pd.CategoricalDtype(list(contract.catalogue.intents))).cat.codes.to_numpy()
    keep = np.ones(len(frame), dtype=bool)
    keep[list(result.row_reasons)] = False
    check = _FileCheck(job.path, len(frame), keys, keep, frame["intent"].notna().to_numpy(), codes, result.rule_counts)
    where = lake.uri(job.path)
    if result.batch_failures:
        check.failure = f"{where} breaks the contract {contract.name}@{contract.version}: " + "; ".join(result.batch_failures)
        return check
    share = len(result.row_reasons) / max(len(frame), 1)
    if share > settings.max_quarantine_fraction:
        worst = max(result.rule_counts, key=result.rule_counts.get)
        check.failure = (
            f"{where}: {len(result.row_reasons)} of {len(frame)} rows ({share:.0%}) break the contract "
            f"{contract.name}@{contract.version}, more than the {settings.max_quarantine_fraction:.0%} allowed; most often rule {worst!r}"
        )
        return check
    if result.row_reasons:
        rejected = _quarantine_frame(frame, result.row_reasons, contract, where)
        check.quarantine_file = lake.uri(lake.write_parquet(rejected, "quarantine", "validate", f"contract={contract.version}", name))
    return check


def _quarantine_duplicates(lake: Lake, contract: Contract, check: _FileCheck, positions: np.ndarray) -> str:
    """Rows whose id an earlier file already holds: rare (ingest deduplicates), but never silently dropped."""
    frame = lake.read_parquet(check.path).reset_index(drop=True)
    reasons = {int(p): ["unique_id: another ticket has the same id (in an earlier file)"] for p in positions}
    rejected = _quarantine_frame(frame, reasons, contract, lake.uri(check.path))
    name = posixpath.basename(check.path).removesuffix(".parquet")
    return lake.uri(lake.write_parquet(rejected, "quarantine", "validate", f"contract={contract.version}", f"{name}.duplicates.parquet"))


@dataclass(frozen=True)
class _SplitJob:
    path: str
    rows: np.ndarray  # the rows of the file that go into the snapshot
    cutoffs: np.ndarray
    intents: tuple[str, ...]
    seed: int
    settings: Settings


def _split_file(job: _SplitJob) -> dict[str, pa.Table]:
    """Deal one file's snapshot rows to the splits; runs in a worker process."""
    lake = open_lake(job.settings)
    with lake.fs.open(job.path, "rb") as handle:
        table = pq.read_table(handle).take(pa.array(job.rows))
    keys = id_keys(table.column("ticket_id").to_pylist())
    codes = table.column("intent").to_pandas().astype(pd.CategoricalDtype(list(job.intents))).cat.codes.to_numpy()
    splits = assign_splits(codes, split_rank(keys, job.seed), job.cutoffs)
    return {split: table.filter(pa.array(splits == split)) for split in SPLITS}


def validate_lake(lake: Lake, settings: Settings, contract: Contract | None = None) -> SnapshotManifest:
    """Check every ticket in the lake, quarantine what breaks the contract, cut the snapshot."""
    contract = contract or load_contract(settings.suite_dirs, settings.catalogue_file)
    files = lake.files("tickets")
    if not files:
        raise ContractError(f"the lake has no tickets at {lake.uri('tickets')}; run ingest first")
    support: Counter[str] = Counter()
    size = 0
    for path in files:
        support.update(lake.read_parquet(path, columns=["intent"])["intent"].dropna().tolist())
        size += lake.fs.size(path)
    checker = ContractChecker(contract, settings.gx_root)  # writes the suite and checkpoint the workers read
    _WORKER_TOOLS[_tools_key(settings, contract)] = (lake, checker)
    report = ValidationReport(lake_files=[lake.uri(p) for p in files])
    by_rule: Counter[str] = Counter()
    seen = KnownIds()
    checks: list[_FileCheck] = []
    pool = process_pool(settings.workers if size >= settings.parallel_min_bytes // 8 else 1)
    step = Step("validate", total=len(files))
    try:
        jobs = (_CheckJob(path, settings, contract, dict(support)) for path in files)
        for check in ordered_map(pool, _check_file, jobs, in_flight=settings.workers + 1):
            step.advance(detail=posixpath.basename(check.path))
            if check.failure:
                raise ContractError(check.failure)
            by_rule.update(check.rule_counts)
            if check.quarantine_file:
                report.quarantine_files.append(check.quarantine_file)
            repeated = np.flatnonzero(check.keep & seen.contains(check.keys))
            if len(repeated):
                report.quarantine_files.append(_quarantine_duplicates(lake, contract, check, repeated))
                check.keep[repeated] = False
                by_rule["unique_id"] += len(repeated)
            seen.add(check.keys[check.keep])
            report.rows_read += check.rows
            report.accepted += int(check.keep.sum())
            report.unlabelled += int((check.keep & ~check.labelled).sum())
            checks.append(check)
        report.quarantined = report.rows_read - report.accepted
        report.by_rule = dict(by_rule)
        report.data_docs = checker.build_docs()
        chosen = [check.keep & check.labelled for check in checks]
        if not any(mask.any() for mask in chosen):
            raise ContractError("no labelled ticket passed the contract: there is nothing to train on")
        keys = np.concatenate([check.keys[mask] for check, mask in zip(checks, chosen, strict=True)])
        codes = np.concatenate([check.intent_codes[mask] for check, mask in zip(checks, chosen, strict=True)])
        cutoffs = split_cutoffs(codes, split_rank(keys, settings.snapshot_seed), settings.validation_fraction, settings.test_fraction)
        content_hash = _content_hash(keys, contract, settings)
        snapshot_id = f"snap-{content_hash[:16]}"
        if lake.exists("snapshots", snapshot_id, "manifest.json"):
            lake.write_json({"snapshot_id": snapshot_id}, "snapshots", "latest.json")
            return SnapshotManifest.model_validate(lake.read_json("snapshots", snapshot_id, "manifest.json"))
        split_jobs = [
            _SplitJob(check.path, np.flatnonzero(mask), cutoffs, contract.catalogue.intents, settings.snapshot_seed, settings)
            for check, mask in zip(checks, chosen, strict=True)
            if mask.any()
        ]
        rows = _write_splits(lake, snapshot_id, ordered_map(pool, _split_file, split_jobs, in_flight=settings.workers + 1))
    finally:
        step.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        created_at=datetime.now(UTC),
        content_hash=content_hash,
        contract_version=contract.version,
        intent_catalogue=contract.catalogue.name,
        intent_catalogue_version=contract.catalogue.version,
        rows=rows,
        intents=len(np.unique(codes)),
        seed=settings.snapshot_seed,
        fractions={"validation": settings.validation_fraction, "test": settings.test_fraction},
        validation=report,
        uri=lake.uri("snapshots", snapshot_id),
    )
    lake.write_json(manifest.model_dump(mode="json"), "snapshots", snapshot_id, "manifest.json")
    lake.write_json({"snapshot_id": snapshot_id}, "snapshots", "latest.json")
    return manifest


def _write_splits(lake: Lake, snapshot_id: str, parts: Iterable[dict[str, pa.Table]]) -> dict[str, int]:
    """Stream the dealt rows into one Parquet file per split; the manifest, written after, marks completion."""
    lake.remove("snapshots", snapshot_id)  # a half-written snapshot from a run that died
    lake.fs.makedirs(lake.path("snapshots", snapshot_id), exist_ok=True)
    handles = {split: lake.fs.open(lake.path("snapshots", snapshot_id, f"{split}.parquet"), "wb") for split in SPLITS}
    writers = {split: pq.ParquetWriter(handles[split], TICKET_SCHEMA, compression="snappy") for split in SPLITS}
    rows = dict.fromkeys(SPLITS, 0)
    try:
        for part in parts:
            for split, table in part.items():
                if table.num_rows:
                    writers[split].write_table(table)
                    rows[split] += table.num_rows
    finally:
        for split in SPLITS:
            writers[split].close()
            handles[split].close()
    return rows
