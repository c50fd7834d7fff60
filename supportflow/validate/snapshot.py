"""Validate the lake's tickets against the contract and cut a versioned training snapshot.

The snapshot id is a hash of what went into it (accepted tickets, contract and catalogue versions,
split settings), so validating the same lake twice gives the same snapshot and writes nothing new.
A snapshot is complete once its manifest exists; the manifest is written last.

A lake whose ticket files are as they were when a snapshot was cut, under the same contract, catalogue and
settings, is not checked again: the snapshot is named by what was read (`_inputs_key`), so a pipeline run again
after a failure in a later stage, or on a schedule with nothing new, skips the contract's checks.
"""

import hashlib
import json
import posixpath
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from supportflow.digest import files_digest, text_digest
from supportflow.errors import ContractError
from supportflow.ingest import tickets as tickets_module
from supportflow.ingest.tickets import TICKET_SCHEMA, KnownIds, id_keys, wording_keys
from supportflow.lake import Lake, open_lake
from supportflow.parallel import ordered_map, process_pool
from supportflow.progress import Step
from supportflow.settings import Settings
from supportflow.validate.catalogue import IntentCatalogue
from supportflow.validate.contracts import MIN_EXAMPLES_RULE, Contract, ContractChecker, load_contract

SPLITS = ("train", "validation", "test")
CUT_FROM = "cut_from"  # snapshots/cut_from/<inputs key>.json: which snapshot a validation's inputs were cut into
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


NEVER_PREDICTED = (
    "never predicted (a message of one gets the closest learned intent's answer when the classifier is confident enough, else a person)"
)


class LeftOutIntent(BaseModel):
    """A catalogue intent the model will not learn, named so that nobody believes the bot recognises it."""

    intent: str
    stage: Literal["validate", "train"]  # quarantined by the contract, or left out by training after the split
    examples: int  # validate: its labelled tickets in the lake; train: its training examples after the split
    minimum: int  # what that count had to reach
    reason: str

    def line(self) -> str:
        return f"{self.intent}: {self.reason}"


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
    # Absent from snapshots cut before the long-tail rules (contract 1.1.0): None and empty there.
    min_examples_per_intent: int | None = None  # the contract's minimum, as its suite applied it
    min_train_examples_per_intent: int | None = None  # what the split keeps for training before holding any example out
    left_out: list[LeftOutIntent] = Field(default_factory=list)  # every catalogue intent the model will not learn

    def split_policy(self) -> str:
        """How the split treats a small intent, in words: so a reader knows why it has no test or validation example."""
        if self.min_train_examples_per_intent is None:
            return ""
        return (
            f"each intent keeps at least {self.min_train_examples_per_intent} examples for training; test and validation "
            f"({self.fractions['test']:.0%} and {self.fractions['validation']:.0%}, at least 1 each) take theirs only from the rest"
        )

    def lines(self) -> list[str]:
        report = self.validation
        catalogue = f"{self.intent_catalogue}@{self.intent_catalogue_version}"
        lines = [
            f"snapshot {self.snapshot_id} at {self.uri}",
            f"  rows read {report.rows_read:,} = accepted {report.accepted:,} + quarantined {report.quarantined:,} {report.by_rule or ''}",
            f"  splits {self.rows}, {self.intents} intents, contract {self.contract_version}, catalogue {catalogue}",
        ]
        if self.split_policy():
            lines.append(f"  held out: {self.split_policy()}")
        if self.left_out:
            lines.append(f"  {len(self.left_out)} intents left out, {NEVER_PREDICTED}:")
            lines += [f"    {intent.line()}" for intent in self.left_out]
        elif self.min_examples_per_intent is not None:
            lines.append("  every intent in the catalogue is learned")
        lines.append(f"  data docs: {report.data_docs}")
        return lines

    def markdown(self) -> str:
        report = self.validation
        text = (
            f"**Snapshot** `{self.snapshot_id}` (contract {self.contract_version}, "
            f"catalogue {self.intent_catalogue}@{self.intent_catalogue_version})\n\n"
            f"rows read {report.rows_read} = accepted {report.accepted} + quarantined {report.quarantined}\n\n"
            f"by rule: {report.by_rule}\n\nsplits: {self.rows}"
        )
        if self.split_policy():
            text += f"\n\nheld out: {self.split_policy()}"
        if self.left_out:
            text += f"\n\n**{len(self.left_out)} intents left out**: {NEVER_PREDICTED}.\n\n"
            text += "| intent | left out by | examples | minimum | why |\n|---|---|---|---|---|\n"
            text += "".join(f"| `{i.intent}` | {i.stage} | {i.examples} | {i.minimum} | {i.reason} |\n" for i in self.left_out)
        return f"{text}\n\ndata docs: {report.data_docs}"


def deal_keys(keys: np.ndarray, wordings: np.ndarray) -> np.ndarray:
    """The key each ticket is dealt to a split by: its id's, except that tickets saying the same thing share the
    lowest of their ids' keys, so they land in one split. Otherwise a message many customers send is learnt from
    its copies in train and then counted right in test, and the test figures promise what new messages will not get."""
    return pd.Series(keys).groupby(wordings, sort=False).transform("min").to_numpy(dtype=np.uint64)


def split_rank(keys: np.ndarray, seed: int) -> np.ndarray:
    """A seeded shuffle of the id keys (splitmix64): the order in which an intent's tickets are dealt to the splits."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def held_out(size: int, validation_fraction: float, test_fraction: float, min_train: int) -> tuple[int, int]:
    """How many of an intent's `size` examples go to test and to validation.

    Each split gets its share and at least one example, but only from what is left once training has `min_train`:
    a long-tail intent must be learned before it is measured (5 examples at 10% each: 1 test, 1 validation, 3 train).
    Validation gives way first, test next, so a small intent is still measured where there is one example to spare.
    """
    spare = max(0, size - min_train)
    n_test = min(max(1, round(size * test_fraction)), spare)
    n_validation = min(max(1, round(size * validation_fraction)), spare - n_test)
    return n_test, n_validation


def split_cutoffs(
    intent_codes: np.ndarray, ranks: np.ndarray, validation_fraction: float, test_fraction: float, min_train: int
) -> np.ndarray:
    """Per intent, the lowest rank that goes to validation and the lowest that goes to train.

    Stratified and independent of input order: each intent's tickets, ordered by rank, give the
    first share to test, the next to validation, the rest (never fewer than `min_train`, or all) to train.
    """
    if min_train < 1:
        raise ValueError(f"min_train must be at least 1, not {min_train}: an intent needs a training example to be learned")
    frame = pd.DataFrame({"intent": intent_codes, "rank": ranks}).sort_values(["intent", "rank"])
    cutoffs = np.zeros((int(intent_codes.max()) + 1 if len(intent_codes) else 0, 2), dtype=np.uint64)
    for code, group in frame.groupby("intent", sort=False):
        ordered = group["rank"].to_numpy()
        n_test, n_validation = held_out(len(ordered), validation_fraction, test_fraction, min_train)
        cutoffs[code] = (ordered[n_test], ordered[n_test + n_validation])  # train keeps at least one: both exist
    return cutoffs


def assign_splits(intent_codes: np.ndarray, ranks: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
    """Ranks are distinct but for tickets with one wording, which share theirs (split_rank is a bijection of keys):
    `<` against a cutoff rank puts such a group wholly in one split, the later one where the cutoff falls inside it,
    so train never gets less than its share."""
    split = np.full(len(ranks), "train", dtype=object)
    split[ranks < cutoffs[intent_codes, 1]] = "validation"
    split[ranks < cutoffs[intent_codes, 0]] = "test"
    return split


def _content_hash(keys: np.ndarray, contract: Contract, settings: Settings) -> str:
    digest = hashlib.sha256()
    inputs = [
        contract.version,
        contract.catalogue.version,
        contract.intent_minimum,
        settings.snapshot_seed,
        settings.validation_fraction,
        settings.test_fraction,
        settings.min_train_examples_per_intent,
        "one wording, one split",  # how tickets are dealt (deal_keys): a snapshot cut otherwise has another id
    ]
    digest.update(json.dumps(inputs).encode())
    digest.update(np.sort(keys).tobytes())
    return digest.hexdigest()


def latest_snapshot(lake: Lake) -> SnapshotManifest:
    if not lake.exists("snapshots", "latest.json"):
        raise ContractError(f"no training snapshot in the lake at {lake.uri('snapshots')}; run validate first")
    return _manifest(lake, lake.read_json("snapshots", "latest.json")["snapshot_id"])


def _manifest(lake: Lake, snapshot_id: str) -> SnapshotManifest:
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
    wordings: np.ndarray  # wording_keys of the rows' texts
    keep: np.ndarray
    labelled: np.ndarray
    intent_codes: np.ndarray
    rule_counts: dict[str, int]
    too_few: set[str]  # intents whose rows broke the minimum-examples rule
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
    frame["intent"] = contract.catalogue.spelling(frame["intent"])
    frame[DERIVED_SUPPORT] = frame["intent"].map(job.support).astype("float64")
    result = checker.check(frame, name)
    keys = id_keys(frame["ticket_id"])
    codes = frame["intent"].astype(pd.CategoricalDtype(list(contract.catalogue.intents))).cat.codes.to_numpy()
    keep = np.ones(len(frame), dtype=bool)
    keep[list(result.row_reasons)] = False
    too_few = set(frame["intent"].iloc[result.rule_rows.get(MIN_EXAMPLES_RULE, [])].dropna())
    labelled = frame["intent"].notna().to_numpy()
    check = _FileCheck(job.path, len(frame), keys, wording_keys(frame["text"]), keep, labelled, codes, result.rule_counts, too_few)
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
    deal_keys: np.ndarray  # theirs, as deal_keys gave them
    cutoffs: np.ndarray
    catalogue: IntentCatalogue
    seed: int
    settings: Settings


def _split_file(job: _SplitJob) -> dict[str, pa.Table]:
    """Deal one file's snapshot rows to the splits; runs in a worker process."""
    lake = open_lake(job.settings)
    with lake.fs.open(job.path, "rb") as handle:
        table = pq.read_table(handle).take(pa.array(job.rows))
    labels = table.column("intent").to_pandas()
    intents = job.catalogue.spelling(labels)
    if intents is not labels:  # some label was another spelling of its intent: the splits carry the catalogue's
        table = table.set_column(table.schema.get_field_index("intent"), "intent", pa.array(intents, pa.string()))
    codes = intents.astype(pd.CategoricalDtype(list(job.catalogue.intents))).cat.codes.to_numpy()
    splits = assign_splits(codes, split_rank(job.deal_keys, job.seed), job.cutoffs)
    return {split: table.filter(pa.array(splits == split)) for split in SPLITS}


def validate_lake(lake: Lake, settings: Settings, contract: Contract | None = None) -> SnapshotManifest:
    """Check every ticket in the lake, quarantine what breaks the contract, cut the snapshot."""
    contract = contract or load_contract(settings)
    versions = lake.versions("tickets")
    if not versions:
        raise ContractError(f"the lake has no tickets at {lake.uri('tickets')}; run ingest first")
    inputs = _inputs_key(versions, contract, settings)
    earlier = _cut_from(lake, inputs)
    if earlier is not None:
        return earlier
    files = list(versions)
    support: Counter[str] = Counter()
    size = 0
    for path in files:
        support.update(contract.catalogue.spelling(lake.read_parquet(path, columns=["intent"])["intent"]).dropna().tolist())
        size += lake.fs.size(path)
    checker = ContractChecker(contract, settings.gx_root)  # writes the suite and checkpoint the workers read
    _WORKER_TOOLS[_tools_key(settings, contract)] = (lake, checker)
    report = ValidationReport(lake_files=[lake.uri(p) for p in files])
    by_rule: Counter[str] = Counter()
    too_few: set[str] = set()
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
            too_few |= check.too_few
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
        dealt = deal_keys(keys, np.concatenate([check.wordings[mask] for check, mask in zip(checks, chosen, strict=True)]))
        ranks = split_rank(dealt, settings.snapshot_seed)
        min_train = settings.min_train_examples_per_intent
        cutoffs = split_cutoffs(codes, ranks, settings.validation_fraction, settings.test_fraction, min_train)
        accepted = Counter(contract.catalogue.intents[code] for code in codes.tolist())
        left_out = _left_out(contract, settings, support, too_few, accepted)
        content_hash = _content_hash(keys, contract, settings)
        snapshot_id = f"snap-{content_hash[:16]}"
        if lake.exists("snapshots", snapshot_id, "manifest.json"):
            _record_cut(lake, inputs, snapshot_id)
            return _manifest(lake, snapshot_id)
        ends = np.cumsum([int(mask.sum()) for mask in chosen])
        split_jobs = [
            _SplitJob(
                check.path,
                np.flatnonzero(mask),
                dealt[end - mask.sum() : end],
                cutoffs,
                contract.catalogue,
                settings.snapshot_seed,
                settings,
            )
            for check, mask, end in zip(checks, chosen, ends, strict=True)
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
        min_examples_per_intent=contract.intent_minimum,
        min_train_examples_per_intent=settings.min_train_examples_per_intent,
        left_out=left_out,
    )
    lake.write_json(manifest.model_dump(mode="json"), "snapshots", snapshot_id, "manifest.json")
    _record_cut(lake, inputs, snapshot_id)
    return manifest


def _record_cut(lake: Lake, inputs: str, snapshot_id: str) -> None:
    """Which snapshot these inputs were cut into (`_cut_from` reads it), and that it is the latest."""
    lake.write_json({"snapshot_id": snapshot_id}, "snapshots", CUT_FROM, f"{inputs}.json")
    lake.write_json({"snapshot_id": snapshot_id}, "snapshots", "latest.json")


def _inputs_key(versions: dict[str, str], contract: Contract, settings: Settings) -> str:
    """Everything a validation's outcome depends on: each ticket file as it is now (an agent's label written again
    under its ticket's name is another version), the suite, the catalogue with its aliases, the settings the rules
    and the split read, and the code that checks and splits (a rule changed there is another check)."""
    return text_digest(
        json.dumps(versions, sort_keys=True),
        files_digest([Path(__file__).parent, Path(tickets_module.__file__)]),
        json.dumps(contract.suite, sort_keys=True),
        repr(contract.catalogue),
        contract.min_examples_per_intent,
        settings.max_quarantine_fraction,
        settings.snapshot_seed,
        settings.validation_fraction,
        settings.test_fraction,
        settings.min_train_examples_per_intent,
    )


def _cut_from(lake: Lake, inputs: str) -> SnapshotManifest | None:
    """The snapshot these very inputs were cut into, made the latest again; None when they were never validated, or
    their snapshot is gone."""
    if not lake.exists("snapshots", CUT_FROM, f"{inputs}.json"):
        return None
    snapshot_id = lake.read_json("snapshots", CUT_FROM, f"{inputs}.json")["snapshot_id"]
    if not lake.exists("snapshots", snapshot_id, "manifest.json"):
        return None
    lake.write_json({"snapshot_id": snapshot_id}, "snapshots", "latest.json")
    return _manifest(lake, snapshot_id)


def _left_out(
    contract: Contract, settings: Settings, support: Counter[str], too_few: set[str], accepted: Counter[str]
) -> list[LeftOutIntent]:
    """Every catalogue intent the model will not learn, and why: the contract quarantined it, or the split leaves it fewer
    training examples than training needs. Sorted by count, highest first: where a few more labelled tickets pay soonest."""
    minimum = contract.intent_minimum or 1
    min_train = settings.min_train_examples_per_intent
    left: list[LeftOutIntent] = []
    for intent in contract.catalogue.intents:
        found, kept = support[intent], accepted[intent]
        if found == 0:
            reason = "no labelled ticket in the lake"
            left.append(LeftOutIntent(intent=intent, stage="validate", examples=0, minimum=minimum, reason=reason))
        elif intent in too_few:
            reason = f"{found} examples, fewer than the {minimum} the contract requires (quarantined)"
            left.append(LeftOutIntent(intent=intent, stage="validate", examples=found, minimum=minimum, reason=reason))
        elif kept == 0:
            reason = f"0 of its {found} examples passed the contract (quarantined by other rules)"
            left.append(LeftOutIntent(intent=intent, stage="validate", examples=0, minimum=minimum, reason=reason))
        else:
            n_test, n_validation = held_out(kept, settings.validation_fraction, settings.test_fraction, min_train)
            train = kept - n_test - n_validation
            if train < min_train:
                reason = f"{train} training examples, fewer than the {min_train} training needs (left out by training)"
                left.append(LeftOutIntent(intent=intent, stage="train", examples=train, minimum=min_train, reason=reason))
    return sorted(left, key=lambda entry: (-entry.examples, entry.intent))


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
