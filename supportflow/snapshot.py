"""Validate the lake's tickets against the contract and cut a versioned training snapshot.

The snapshot id is a hash of what went into it (accepted tickets, contract and catalogue versions,
split settings), so validating the same lake twice gives the same snapshot and writes nothing new.
A snapshot is complete once its manifest exists; the manifest is written last.
"""

import hashlib
import json
import posixpath
import uuid
from collections import Counter
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from supportflow.contracts import Contract, ContractChecker, load_contract
from supportflow.errors import ContractError
from supportflow.lake import Lake
from supportflow.settings import Settings
from supportflow.tickets import TICKET_SCHEMA

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


def _split_rank(seed: int, ticket_id: str) -> str:
    return hashlib.blake2b(f"{seed}:{ticket_id}".encode(), digest_size=8).hexdigest()


def assign_splits(labelled: pd.DataFrame, seed: int, validation_fraction: float, test_fraction: float) -> pd.Series:
    """Stratified, seeded and independent of input order: per intent, rank by a seeded hash of the id."""
    ranked = labelled.assign(rank=[_split_rank(seed, tid) for tid in labelled["ticket_id"]]).sort_values(["intent", "rank"])
    position = ranked.groupby("intent").cumcount()
    size = ranked.groupby("intent")["ticket_id"].transform("size")
    n_test = (size * test_fraction).round().clip(lower=1)
    n_validation = (size * validation_fraction).round().clip(lower=1)
    split = pd.Series("train", index=ranked.index)
    split[position < n_test] = "test"
    split[(position >= n_test) & (position < n_test + n_validation)] = "validation"
    return pd.Series(split.values, index=ranked["ticket_id"].values)


def _content_hash(ids: pd.Series, contract: Contract, settings: Settings) -> str:
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [contract.version, contract.catalogue.version, settings.snapshot_seed, settings.validation_fraction, settings.test_fraction]
        ).encode()
    )
    for ticket in sorted(ids):
        digest.update(ticket.encode())
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
    rejected = frame.iloc[positions].drop(columns=[DERIVED_SUPPORT]).copy()
    rejected["reasons"] = [json.dumps(reasons[p], ensure_ascii=False) for p in positions]
    rejected["contract_version"] = contract.version
    rejected["lake_file"] = lake_file
    rejected["quarantined_at"] = pd.Timestamp.now(tz="UTC")
    return rejected


def validate_lake(lake: Lake, settings: Settings, contract: Contract | None = None) -> SnapshotManifest:
    """Check every ticket in the lake, quarantine what breaks the contract, cut the snapshot."""
    contract = contract or load_contract(settings.contracts_dir)
    files = lake.files("tickets")
    if not files:
        raise ContractError(f"the lake has no tickets at {lake.uri('tickets')}; run ingest first")
    support = Counter()
    for path in files:
        support.update(lake.read_parquet(path, columns=["intent"])["intent"].dropna().tolist())

    checker = ContractChecker(contract, settings.gx_root)
    report = ValidationReport(lake_files=[lake.uri(p) for p in files])
    staging = lake.path("snapshots", "_staging", uuid.uuid4().hex)
    staged: list[str] = []
    labelled: list[pd.DataFrame] = []
    seen: set[str] = set()
    by_rule: Counter[str] = Counter()
    try:
        for number, path in enumerate(files):
            name = posixpath.basename(path)
            frame = lake.read_parquet(path).reset_index(drop=True)
            frame[DERIVED_SUPPORT] = frame["intent"].map(support).astype("float64")
            result = checker.check(frame, name)
            if result.batch_failures:
                raise ContractError(
                    f"{lake.uri(path)} breaks the contract {contract.name}@{contract.version}: " + "; ".join(result.batch_failures)
                )
            reasons = result.row_reasons
            for position in frame.index[frame["ticket_id"].isin(seen)]:
                reasons.setdefault(int(position), []).append("unique_id: another ticket has the same id (in an earlier file)")
            share = len(reasons) / max(len(frame), 1)
            if len(frame) and share > settings.max_quarantine_fraction:
                worst = max(result.rule_counts, key=result.rule_counts.get) if result.rule_counts else "unique_id"
                raise ContractError(
                    f"{lake.uri(path)}: {len(reasons)} of {len(frame)} rows ({share:.0%}) break the contract "
                    f"{contract.name}@{contract.version}, more than the {settings.max_quarantine_fraction:.0%} allowed; "
                    f"most often rule {worst!r}"
                )
            by_rule.update(result.rule_counts)
            report.rows_read += len(frame)
            if reasons:
                rejected = _quarantine_frame(frame, reasons, contract, lake.uri(path))
                report.quarantine_files.append(
                    lake.uri(lake.write_parquet(rejected, "quarantine", "validate", f"contract={contract.version}", name))
                )
                report.quarantined += len(rejected)
            accepted = frame.drop(index=list(reasons)).drop(columns=[DERIVED_SUPPORT])
            report.accepted += len(accepted)
            seen.update(accepted["ticket_id"])
            report.unlabelled += int(accepted["intent"].isna().sum())
            accepted = accepted[accepted["intent"].notna()]
            if len(accepted):
                part = posixpath.join(staging, f"part-{number:05d}.parquet")
                lake.fs.makedirs(staging, exist_ok=True)
                with lake.fs.open(part, "wb") as handle:
                    pq.write_table(pa.Table.from_pandas(accepted, schema=TICKET_SCHEMA, preserve_index=False), handle)
                staged.append(part)
                labelled.append(accepted[["ticket_id", "intent"]])
        report.by_rule = dict(by_rule)
        report.data_docs = checker.build_docs()
        if not labelled:
            raise ContractError("no labelled ticket passed the contract: there is nothing to train on")
        return _write_snapshot(lake, settings, contract, report, staged, pd.concat(labelled, ignore_index=True))
    finally:
        if lake.fs.exists(staging):
            lake.fs.rm(staging, recursive=True)


def _write_snapshot(
    lake: Lake, settings: Settings, contract: Contract, report: ValidationReport, staged: list[str], labelled: pd.DataFrame
) -> SnapshotManifest:
    content_hash = _content_hash(labelled["ticket_id"], contract, settings)
    snapshot_id = f"snap-{content_hash[:16]}"
    if lake.exists("snapshots", snapshot_id, "manifest.json"):
        lake.write_json({"snapshot_id": snapshot_id}, "snapshots", "latest.json")
        return SnapshotManifest.model_validate(lake.read_json("snapshots", snapshot_id, "manifest.json"))
    lake.remove("snapshots", snapshot_id)  # a half-written snapshot from a run that died
    split_of = assign_splits(labelled, settings.snapshot_seed, settings.validation_fraction, settings.test_fraction)
    lake.fs.makedirs(lake.path("snapshots", snapshot_id), exist_ok=True)
    handles = {split: lake.fs.open(lake.path("snapshots", snapshot_id, f"{split}.parquet"), "wb") for split in SPLITS}
    writers = {split: pq.ParquetWriter(handles[split], TICKET_SCHEMA, compression="zstd") for split in SPLITS}
    rows = dict.fromkeys(SPLITS, 0)
    try:
        for part in staged:
            with lake.fs.open(part, "rb") as handle:
                table = pq.read_table(handle)
            splits = split_of.loc[table.column("ticket_id").to_pylist()].to_numpy()
            for split in SPLITS:
                mask = pa.array(splits == split)
                chunk = table.filter(mask)
                if chunk.num_rows:
                    writers[split].write_table(chunk)
                    rows[split] += chunk.num_rows
    finally:
        for split in SPLITS:
            writers[split].close()
            handles[split].close()
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        created_at=datetime.now(UTC),
        content_hash=content_hash,
        contract_version=contract.version,
        intent_catalogue=contract.catalogue.name,
        intent_catalogue_version=contract.catalogue.version,
        rows=rows,
        intents=int(labelled["intent"].nunique()),
        seed=settings.snapshot_seed,
        fractions={"validation": settings.validation_fraction, "test": settings.test_fraction},
        validation=report,
        uri=lake.uri("snapshots", snapshot_id),
    )
    lake.write_json(manifest.model_dump(mode="json"), "snapshots", snapshot_id, "manifest.json")
    lake.write_json({"snapshot_id": snapshot_id}, "snapshots", "latest.json")
    return manifest
