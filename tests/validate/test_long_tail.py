"""The long tail: every intent with at least the contract's minimum of examples is learned, and each one left out is named."""

import json
from pathlib import Path

import pandas as pd
import pytest

from supportflow.classifier.training import load_training_splits
from supportflow.errors import ContractError
from supportflow.ingest.load import ingest_file
from supportflow.lake import Lake, open_lake
from supportflow.settings import Settings
from supportflow.validate.contracts import load_contract
from supportflow.validate.snapshot import NEVER_PREDICTED, SPLITS, held_out, read_split, validate_lake

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CSV = ROOT / "examples" / "banking77" / "data" / "train.csv"
# BANKING77 intents with as many tickets each: two well-supported ones, one at the minimum, one below it.
SIZES = {"card_arrival": 12, "exchange_rate": 12, "change_pin": 5, "lost_or_stolen_card": 4}


@pytest.fixture
def desk(tmp_path: Path) -> Path:
    """A workspace whose catalogue is the four intents above plus one that no ticket carries."""
    folder = tmp_path / "desk"
    folder.mkdir()
    intents = [*SIZES, "terminate_account"]
    (folder / "intents.yaml").write_text("name: long-tail\nversion: 1.0.0\nintents:\n" + "".join(f"  - {i}\n" for i in intents))
    return folder


@pytest.fixture
def export(tmp_path: Path) -> Path:
    frame = pd.read_csv(TRAIN_CSV)
    rows = pd.concat([frame[frame["category"] == intent].head(n) for intent, n in SIZES.items()])
    path = tmp_path / "long_tail.csv"
    rows.to_csv(path, index=False)
    return path


def desk_settings(tmp_path: Path, desk: Path, **overrides: object) -> Settings:
    return Settings(lake_url=str(tmp_path / "lake"), gx_root=tmp_path / "gx", workers=1, workspace=desk, **overrides)


def validated(settings: Settings, export: Path) -> tuple[Lake, object]:
    lake = open_lake(settings)
    ingest_file(str(export), lake, settings, source="desk")
    return lake, validate_lake(lake, settings)


def test_small_intents_keep_enough_examples_for_training() -> None:
    assert held_out(5, 0.1, 0.1, min_train=2) == (1, 1)  # 3 left to train on
    assert held_out(20, 0.1, 0.1, min_train=2) == (2, 2)
    assert held_out(3, 0.1, 0.1, min_train=2) == (1, 0)  # validation gives way first, so the intent is still measured
    assert held_out(2, 0.1, 0.1, min_train=2) == (0, 0)
    assert held_out(5, 0.4, 0.4, min_train=3) == (2, 0)
    for size in range(1, 40):
        n_test, n_validation = held_out(size, 0.1, 0.1, min_train=3)
        assert size - n_test - n_validation >= min(size, 3)


def test_an_intent_at_the_minimum_is_learned_and_one_below_it_is_named(tmp_path: Path, desk: Path, export: Path) -> None:
    settings = desk_settings(tmp_path, desk)
    assert settings.min_examples_per_intent == 5

    lake, manifest = validated(settings, export)

    frames = {split: read_split(lake, manifest.snapshot_id, split) for split in SPLITS}
    at_minimum = {split: int((frame["intent"] == "change_pin").sum()) for split, frame in frames.items()}
    assert at_minimum == {"train": 3, "validation": 1, "test": 1}
    assert not any((frame["intent"] == "lost_or_stolen_card").any() for frame in frames.values())
    assert manifest.validation.by_rule == {"intent_min_examples": 4}
    rejected = lake.read_parquet(lake.files("quarantine", "validate")[0])
    reasons = {reason for row in rejected["reasons"] for reason in json.loads(row)}
    assert reasons == {
        "intent_min_examples: the intent has fewer than 5 examples, too few to learn: the model leaves it out and the bot never "
        "predicts it (got 4.0)"
    }
    left_out = [(i.intent, i.stage, i.examples, i.minimum) for i in manifest.left_out]
    assert left_out == [("lost_or_stolen_card", "validate", 4, 5), ("terminate_account", "validate", 0, 5)]
    assert (manifest.min_examples_per_intent, manifest.min_train_examples_per_intent) == (5, 2)

    _, splits = load_training_splits(settings)  # what training reads: the intent at the minimum is one of the model's labels
    assert splits.labels == ["card_arrival", "change_pin", "exchange_rate"] and splits.left_out == {}

    lines = "\n".join(manifest.lines())
    assert f"2 intents left out, {NEVER_PREDICTED}:" in lines
    assert "    lost_or_stolen_card: 4 examples, fewer than the 5 the contract requires (quarantined)" in lines
    assert "    terminate_account: no labelled ticket in the lake" in lines
    assert "each intent keeps at least 2 examples for training" in lines
    assert "| `lost_or_stolen_card` | validate | 4 | 5 |" in manifest.markdown()
    stored = json.loads(lake.fs.cat(lake.path("snapshots", manifest.snapshot_id, "manifest.json")))
    assert [entry["intent"] for entry in stored["left_out"]] == ["lost_or_stolen_card", "terminate_account"]


def test_the_minimum_is_a_setting_and_training_names_what_it_leaves_out(tmp_path: Path, desk: Path, export: Path) -> None:
    settings = desk_settings(tmp_path, desk, min_examples_per_intent=1, min_train_examples_per_intent=5)

    lake, manifest = validated(settings, export)

    assert manifest.validation.quarantined == 0
    frames = {split: read_split(lake, manifest.snapshot_id, split) for split in SPLITS}
    small = {split: int((frame["intent"] == "lost_or_stolen_card").sum()) for split, frame in frames.items()}
    assert small == {"train": 4, "validation": 0, "test": 0}  # below training's minimum: nothing held out of it
    left_out = [(i.intent, i.stage, i.examples, i.minimum) for i in manifest.left_out]
    assert left_out == [("lost_or_stolen_card", "train", 4, 5), ("terminate_account", "validate", 0, 1)]
    assert "    lost_or_stolen_card: 4 training examples, fewer than the 5 training needs (left out by training)" in manifest.lines()

    _, splits = load_training_splits(settings)
    assert splits.left_out == {"lost_or_stolen_card": 4}
    assert splits.labels == ["card_arrival", "change_pin", "exchange_rate"]


def test_a_workspace_suite_with_its_own_number_still_works(tmp_path: Path, desk: Path, export: Path) -> None:
    """A suite written before the parameter (contract 1.0.0 wrote `min_value: 10`) keeps its own minimum."""
    suite = json.loads((ROOT / "data_contracts" / "tickets.suite.json").read_text())
    suite["meta"]["contract_version"] = "1.0.0-desk"
    rule = next(e for e in suite["expectations"] if e["meta"]["rule"] == "intent_min_examples")
    rule["kwargs"]["min_value"] = 10
    rule["meta"]["reason"] = "the intent has fewer than 10 examples"
    (desk / "data_contracts").mkdir()
    (desk / "data_contracts" / "tickets.suite.json").write_text(json.dumps(suite))
    settings = desk_settings(tmp_path, desk)

    _, manifest = validated(settings, export)

    assert manifest.contract_version == "1.0.0-desk" and manifest.min_examples_per_intent == 10
    assert manifest.validation.by_rule == {"intent_min_examples": 9}
    assert [(i.intent, i.examples, i.minimum) for i in manifest.left_out] == [
        ("change_pin", 5, 10),
        ("lost_or_stolen_card", 4, 10),
        ("terminate_account", 0, 10),
    ]


def test_a_suite_naming_an_unknown_parameter_is_refused(tmp_path: Path, desk: Path) -> None:
    suite = json.loads((ROOT / "data_contracts" / "tickets.suite.json").read_text())
    rule = next(e for e in suite["expectations"] if e["meta"]["rule"] == "intent_min_examples")
    rule["kwargs"]["min_value"] = {"$PARAMETER": "min_tickets"}
    (desk / "data_contracts").mkdir()
    (desk / "data_contracts" / "tickets.suite.json").write_text(json.dumps(suite))

    with pytest.raises(ContractError, match=r"unknown suite parameters \['min_tickets'\]; the parameters given are"):
        load_contract(desk_settings(tmp_path, desk))


def test_the_validate_command_prints_every_intent_left_out(
    tmp_path: Path, desk: Path, export: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from supportflow.cli import main
    from supportflow.settings import get_settings

    settings = desk_settings(tmp_path, desk)
    ingest_file(str(export), open_lake(settings), settings, source="desk")
    for name, value in {"LAKE_URL": settings.lake_url, "GX_ROOT": settings.gx_root, "WORKSPACE": desk, "WORKERS": 1}.items():
        monkeypatch.setenv(f"SUPPORTFLOW_{name}", str(value))
    get_settings.cache_clear()
    try:
        assert main(["validate"]) == 0
    finally:
        get_settings.cache_clear()

    printed = capsys.readouterr().out
    assert f"2 intents left out, {NEVER_PREDICTED}:" in printed
    listed = [line.strip() for line in printed.splitlines() if line.startswith("      ")]
    assert listed == [
        "lost_or_stolen_card: 4 examples, fewer than the 5 the contract requires (quarantined)",
        "terminate_account: no labelled ticket in the lake",
    ]


def test_labels_in_another_case_or_spacing_count_for_the_catalogue_intent(tmp_path: Path, desk: Path, export: Path) -> None:
    """People type one category as "Lost_or_stolen_card", " lost_or_stolen_card" and "lost or stolen card"; a ticket's
    label names the catalogue intent whatever its case, spacing and underscores, so those tickets are learned (here
    they lift the intent to the minimum) and land in the splits under the catalogue's spelling. A label that is
    another word stays outside."""
    frame = pd.read_csv(export)
    extra = (
        pd.read_csv(TRAIN_CSV)
        .query("category == 'lost_or_stolen_card'")
        .iloc[4:8]
        .assign(category=["LOST_OR_STOLEN_CARD", "  Lost_or_stolen_card ", "lost or stolen card", "lost card"])
    )
    pd.concat([frame, extra]).to_csv(export, index=False)
    settings = desk_settings(tmp_path, desk)

    lake, manifest = validated(settings, export)

    splits = pd.concat([read_split(lake, manifest.snapshot_id, split) for split in SPLITS])
    assert (splits["intent"] == "lost_or_stolen_card").sum() == 7
    assert set(splits["intent"]) == set(SIZES)  # every intent in the catalogue's spelling
    assert manifest.validation.by_rule == {"intent_in_catalogue": 1, "intent_min_examples": 1}  # "lost card": another word
    assert [i.intent for i in manifest.left_out] == ["terminate_account"]


def test_a_catalogue_listing_one_intent_twice_in_different_case_is_refused(tmp_path: Path) -> None:
    from supportflow.validate.catalogue import load_catalogue

    catalogue = tmp_path / "intents.yaml"
    catalogue.write_text("name: desk\nversion: 1\nintents:\n- Card arrival\n- card  arrival\n- refund\n")
    with pytest.raises(ContractError, match=r"'Card arrival' and 'card  arrival' share a name or an alias"):
        load_catalogue(catalogue)
    catalogue.write_text("name: desk\nversion: 1\nintents:\n- Order status\n- order_status\n")  # a field's value and its name
    with pytest.raises(ContractError, match=r"'Order status' and 'order_status' share a name or an alias"):
        load_catalogue(catalogue)
