"""Validation against the contract, and the training snapshot it cuts."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from supportflow.ingest.load import ingest_file
from supportflow.ingest.tickets import wording_keys
from supportflow.lake import Lake
from supportflow.settings import Settings
from supportflow.validate import snapshot
from supportflow.validate.catalogue import load_catalogue
from supportflow.validate.contracts import load_contract
from supportflow.validate.snapshot import (
    SPLITS,
    assign_splits,
    deal_keys,
    latest_snapshot,
    read_split,
    split_cutoffs,
    split_rank,
    validate_lake,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_snapshot_is_stratified_complete_and_described_by_its_manifest(lake: Lake, settings: Settings, banking77_sample: Path) -> None:
    ingest_file(str(banking77_sample), lake, settings, source="banking77")

    manifest = validate_lake(lake, settings)

    report = manifest.validation
    assert (report.rows_read, report.accepted, report.quarantined) == (1540, 1540, 0)
    assert manifest.rows == {"train": 1232, "validation": 154, "test": 154}
    assert manifest.intents == 77
    catalogue = load_catalogue(ROOT / "examples" / "banking77" / "intents.yaml")
    assert (manifest.contract_version, manifest.intent_catalogue, manifest.intent_catalogue_version) == (
        "1.1.0",
        "banking77",
        catalogue.version,
    )
    assert manifest.snapshot_id == f"snap-{manifest.content_hash[:16]}"
    splits = {split: read_split(lake, manifest.snapshot_id, split) for split in SPLITS}
    ids = pd.concat([frame["ticket_id"] for frame in splits.values()])
    assert ids.is_unique and len(ids) == 1540
    for split, frame in splits.items():
        counts = frame["intent"].value_counts()
        assert len(counts) == 77, split
        assert counts.min() == counts.max(), split  # 20 per intent: 16 / 2 / 2
    assert latest_snapshot(lake) == manifest
    assert Path(report.data_docs.removeprefix("file://")).exists()


def test_validating_again_gives_the_same_snapshot_and_writes_nothing_new(lake: Lake, settings: Settings, banking77_sample: Path) -> None:
    ingest_file(str(banking77_sample), lake, settings)
    first = validate_lake(lake, settings)
    files = sorted(lake.fs.find(lake.path("snapshots")))

    second = validate_lake(lake, settings)

    assert second.snapshot_id == first.snapshot_id and second.created_at == first.created_at
    assert sorted(lake.fs.find(lake.path("snapshots"))) == files


def test_a_lake_validated_before_is_not_checked_again_until_a_file_or_a_setting_changes(
    local_lake: Lake, local_settings: Settings, banking77_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_file(str(banking77_sample), local_lake, local_settings)
    first = validate_lake(local_lake, local_settings)

    def checked_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("the contract's checks ran again on inputs validated before")

    with monkeypatch.context() as patch:
        patch.setattr(snapshot, "ContractChecker", checked_again)
        assert validate_lake(local_lake, local_settings) == first
        local_lake.write_json({"snapshot_id": "snap-elsewhere"}, "snapshots", "latest.json")
        assert validate_lake(local_lake, local_settings) == first and latest_snapshot(local_lake) == first
        with pytest.raises(AssertionError, match="checks ran again"):  # another seed: another split, checked
            validate_lake(local_lake, local_settings.model_copy(update={"snapshot_seed": local_settings.snapshot_seed + 1}))

    # A file written again under its own name (by hand, or a backup restored) is read again.
    path = local_lake.files("tickets")[0]
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)
    fewer = validate_lake(local_lake, local_settings)
    assert fewer.snapshot_id != first.snapshot_id and sum(fewer.rows.values()) == sum(first.rows.values()) - 1


def test_new_tickets_make_a_new_snapshot_and_the_old_one_stays(
    local_lake: Lake, local_settings: Settings, banking77_sample: Path, tmp_path: Path
) -> None:
    ingest_file(str(banking77_sample), local_lake, local_settings)
    first = validate_lake(local_lake, local_settings)
    more = tmp_path / "more.csv"
    pd.DataFrame({"text": ["where is my new card?"], "intent": ["card_arrival"]}).to_csv(more, index=False)
    ingest_file(str(more), local_lake, local_settings)

    second = validate_lake(local_lake, local_settings)

    assert second.snapshot_id != first.snapshot_id
    assert sum(second.rows.values()) == sum(first.rows.values()) + 1
    assert local_lake.exists("snapshots", first.snapshot_id, "manifest.json")
    assert latest_snapshot(local_lake).snapshot_id == second.snapshot_id


def test_splits_do_not_depend_on_the_order_of_the_rows() -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 1000, dtype=np.uint64)
    codes = rng.integers(0, 5, 1000)
    ranks = split_rank(keys, seed=13)
    splits = assign_splits(codes, ranks, split_cutoffs(codes, ranks, 0.1, 0.2, 2))
    order = rng.permutation(1000)
    shuffled = assign_splits(codes[order], ranks[order], split_cutoffs(codes[order], ranks[order], 0.1, 0.2, 2))
    assert (shuffled == splits[order]).all()
    for code in range(5):
        share = pd.Series(splits[codes == code]).value_counts(normalize=True)
        assert abs(share["test"] - 0.2) < 0.02 and abs(share["validation"] - 0.1) < 0.02
    other_seed = split_rank(keys, seed=14)
    assert not (assign_splits(codes, other_seed, split_cutoffs(codes, other_seed, 0.1, 0.2, 2)) == splits).all()


def test_tickets_that_say_the_same_thing_land_in_one_split(
    local_lake: Lake, local_settings: Settings, banking77_sample: Path, tmp_path: Path
) -> None:
    ingest_file(str(banking77_sample), local_lake, local_settings)
    wordings = ["Where is my new card?", "where is my new card", "WHERE IS MY NEW CARD!!", "Where  is my new card ?"]
    for part in range(2):  # the copies come in two files: grouping is over the lake, not over a file
        copies = pd.DataFrame(
            {"id": [f"copy-{part}-{i}" for i in range(20)], "text": [wordings[i % 4] for i in range(20)], "intent": "card_arrival"}
        )
        copies.to_csv(tmp_path / f"copies-{part}.csv", index=False)
        ingest_file(str(tmp_path / f"copies-{part}.csv"), local_lake, local_settings, source="copies")

    manifest = validate_lake(local_lake, local_settings)

    splits = {split: read_split(local_lake, manifest.snapshot_id, split) for split in SPLITS}
    holding = {split: int((frame["source"] == "copies").sum()) for split, frame in splits.items()}
    assert sorted(holding.values()) == [0, 0, 40], holding  # 40 of card_arrival's 60: dealt one by one, all three get some
    assert sum(manifest.rows.values()) == 1580


def test_deal_keys_group_only_what_is_said_the_same_way() -> None:
    keys = np.array([50, 10, 30, 20], dtype=np.uint64)
    wordings = wording_keys(pd.Series(["Refund, please!", "a different message", "refund please", "REFUND   please"]))
    assert deal_keys(keys, wordings).tolist() == [20, 10, 20, 20]


def test_wording_keys_group_texts_as_pythons_casefold_and_word_characters_define_them() -> None:
    """The keys are computed with Arrow's RE2 for speed; what counts as the same wording is still Python's own: texts
    are the same when `casefold()` and `[\\W_]+` (collapsed to one space, stripped) make them equal."""
    import re
    import sys
    import unicodedata

    def reference(texts: list[str]) -> list[str]:
        return [re.sub(r"[\W_]+", " ", text.casefold()).strip() for text in texts]

    assigned = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    texts = [f"a{ch}b" for ch in assigned]  # each character between two letters: a word character joins them, others split
    texts += ["Straße", "STRASSE", "ΣΊΣΥΦΟΣ", "σίσυφος", "  Où est   ma carte ?! ", "où est ma carte", "ÉTÉ_été", "été été", "", "—"]
    texts += pd.read_csv(Path(__file__).resolve().parents[2] / "examples" / "banking77" / "data" / "test.csv")["text"].tolist()
    keys = wording_keys(pd.Series([*texts, None]))
    same_key = pd.Series(range(len(texts) + 1)).groupby(keys).transform("min").tolist()
    same_words = pd.Series(range(len(texts) + 1)).groupby([*reference(texts), ""]).transform("min").tolist()
    assert same_key == same_words
    assert keys[texts.index("Straße")] == keys[texts.index("STRASSE")] and keys[-1] == keys[texts.index("")]
    assert len(wording_keys(pd.Series([], dtype=object))) == 0


def test_validation_in_worker_processes_gives_the_same_result(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    sample = pd.read_csv(Path(__file__).resolve().parents[2] / "examples" / "banking77" / "data" / "train.csv").groupby("category").head(24)
    sample.loc[sample.index[:4], "category"] = "not_an_intent"  # 4 tickets: outside the catalogue, and fewer than the minimum 5
    path = tmp_path / "sample.csv"
    sample.to_csv(path, index=False)
    ingest_file(str(path), local_lake, local_settings.model_copy(update={"ingest_batch_rows": 400}))
    assert len(local_lake.files("tickets")) == 5

    serial = validate_lake(local_lake, local_settings)
    parallel = validate_lake(local_lake, local_settings.model_copy(update={"workers": 2, "parallel_min_bytes": 1}))

    assert parallel.snapshot_id == serial.snapshot_id
    assert parallel.validation.model_dump(exclude={"data_docs"}) == serial.validation.model_dump(exclude={"data_docs"})
    assert serial.validation.by_rule == {"intent_in_catalogue": 4, "intent_min_examples": 4}
    assert serial.validation.quarantined == 4


def test_the_contract_files_are_the_source_of_truth(local_settings: Settings) -> None:
    contract = load_contract(local_settings)
    rules = {expectation["meta"]["rule"] for expectation in contract.suite["expectations"]}
    assert {
        "schema",
        "types",
        "unique_id",
        "text_not_blank",
        "text_length",
        "intent_in_catalogue",
        "channel_allowed",
        "intent_min_examples",
    } <= rules
    assert len(contract.catalogue.intents) == 77 and contract.version == "1.1.0"
