"""Every kind of bad input gets a clear error or a quarantine entry with its reason; nothing is lost."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from supportflow.cli import main
from supportflow.errors import ContractError, IngestError, LakeUnavailableError, SettingsError
from supportflow.ingest.load import NO_TEXT, ingest_file
from supportflow.ingest.tickets import to_table
from supportflow.lake import Lake, open_lake
from supportflow.settings import Settings, get_settings
from supportflow.validate.snapshot import validate_lake


def quarantined(lake: Lake, *area: str) -> pd.DataFrame:
    return pd.concat([lake.read_parquet(path) for path in lake.files("quarantine", *area)], ignore_index=True)


def test_a_path_that_does_not_exist(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(IngestError, match=r"nope\.csv: no such file"):
        ingest_file(str(missing), local_lake, local_settings)


def test_an_empty_file(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    for name in ("empty.csv", "empty.jsonl", "empty.json"):
        path = tmp_path / name
        path.write_bytes(b"")
        with pytest.raises(IngestError, match=rf"{name}: the file is empty"):
            ingest_file(str(path), local_lake, local_settings)


def test_a_csv_without_a_text_column_names_the_file_and_what_it_has(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "no_text.csv"
    path.write_text("subject_line,intent\nhello,card_arrival\n")
    with pytest.raises(IngestError, match=r"no_text\.csv: missing column for the ticket text .*\['subject_line', 'intent'\]"):
        ingest_file(str(path), local_lake, local_settings)


def test_extra_columns_are_reported_and_rows_with_the_wrong_field_count_quarantined(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "extra.csv"
    rows = [
        "text,intent,agent_name,priority",
        "my card is lost,lost_or_stolen_card,Ann,high",
        '"one, two",card_arrival',
        "ok then,card_arrival,Bo,low",
    ]
    path.write_text("\n".join(rows) + "\n")

    report = ingest_file(str(path), lake, settings)

    assert report.ignored_columns == ["agent_name", "priority"]
    assert (report.rows_read, report.written, report.quarantined) == (3, 2, 1)
    rejected = quarantined(lake, "ingest").iloc[0]
    assert rejected["reason"] == "expected 4 fields, found 2"
    assert "one, two" in rejected["raw"]


def test_non_utf8_bytes_are_quarantined_with_the_bytes_kept(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,intent\nmy card is lost,lost_or_stolen_card\ncaf\xe9 card declined,declined_card_payment\n")

    report = ingest_file(str(path), lake, settings)

    assert (report.written, report.quarantined) == (1, 1)
    rejected = quarantined(lake, "ingest").iloc[0]
    assert rejected["reason"] == "bytes not valid utf-8 at byte offset 51 (0xe9); set the source's encoding (e.g. cp1252)"
    assert json.loads(rejected["raw"]) == {"text": "caf\\xe9 card declined", "intent": "declined_card_payment"}


def test_non_utf8_json_line(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "fine", "intent": "card_arrival"}\n{"text": "caf\xe9"}\n')
    report = ingest_file(str(path), local_lake, local_settings)
    assert (report.written, report.quarantined) == (1, 1)
    assert quarantined(local_lake, "ingest").iloc[0]["reason"].startswith("bytes not valid utf-8 at byte offset 56 (0xe9)")


def test_a_malformed_zendesk_export_is_a_clear_error(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text('{"tickets": [{"id": 1, "subject": "x"')
    with pytest.raises(IngestError, match=r"export\.json: not a Zendesk JSON export: .* line 1"):
        ingest_file(str(path), local_lake, local_settings)
    path.write_text('{"users": []}')
    with pytest.raises(IngestError, match="a list of tickets or an object with 'tickets'"):
        ingest_file(str(path), local_lake, local_settings)


def test_a_five_megabyte_text_lands_then_is_quarantined_by_the_length_rule(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    sample = pd.read_csv(Path(__file__).parent.parent / "examples" / "banking77" / "data" / "train.csv").groupby("category").head(12)
    huge = pd.DataFrame({"text": ["card " * 1_000_000], "category": ["card_arrival"]})
    path = tmp_path / "huge.csv"
    pd.concat([sample, huge]).to_csv(path, index=False)

    report = ingest_file(str(path), lake, settings)
    manifest = validate_lake(lake, settings)

    assert report.written == len(sample) + 1
    assert manifest.validation.quarantined == 1 and manifest.validation.by_rule == {"text_length": 1}
    rejected = quarantined(lake, "validate").iloc[0]
    assert len(rejected["text"]) == 5_000_000
    assert json.loads(rejected["reasons"])[0].startswith("text_length: the text is not between 2 and 5000 characters")


def test_empty_blank_unknown_and_unlabelled_rows_each_get_their_reason(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    sample = pd.read_csv(Path(__file__).parent.parent / "examples" / "banking77" / "data" / "train.csv").groupby("category").head(12)
    bad = pd.DataFrame(
        {
            "text": ["", "   \t ", "what is a flux capacitor", "hello, is anyone there?", "my card is lost", "x"],
            "category": ["card_arrival", "card_arrival", "time_travel", "", "lost_or_stolen_card", "card_arrival"],
            "channel": ["email", "email", "email", "email", "pigeon", "email"],
        }
    )
    path = tmp_path / "mixed.csv"
    pd.concat([sample.assign(channel="email"), bad]).to_csv(path, index=False)

    ingested = ingest_file(str(path), lake, settings)
    manifest = validate_lake(lake, settings)
    report = manifest.validation

    assert ingested.quarantined == 2 and set(quarantined(lake, "ingest")["reason"]) == {NO_TEXT}  # "" and "   \t ": no text to land
    assert report.rows_read == report.accepted + report.quarantined == len(sample) + len(bad) - 2
    assert report.unlabelled == 1  # "hello, is anyone there?" has no intent: valid, but not for training
    rejected = quarantined(lake, "validate")
    reasons = {text: " | ".join(json.loads(r)) for text, r in zip(rejected["text"], rejected["reasons"], strict=True)}
    assert set(reasons) == {"what is a flux capacitor", "my card is lost", "x"}
    assert "intent_in_catalogue" in reasons["what is a flux capacitor"] and "'time_travel'" in reasons["what is a flux capacitor"]
    assert "add the intent to the workspace's intents.yaml" in reasons["what is a flux capacitor"]  # and how to keep them
    assert "intent_min_examples" in reasons["what is a flux capacitor"]
    assert "channel_allowed" in reasons["my card is lost"] and "'pigeon'" in reasons["my card is lost"]
    assert "text_length" in reasons["x"]
    train = pd.read_parquet(lake.fs.open(lake.path("snapshots", manifest.snapshot_id, "train.parquet")))
    assert not set(train["text"]) & set(reasons)


def test_tickets_without_text_that_reach_the_lake_another_way_are_quarantined_by_validation(
    local_lake: Lake, local_settings: Settings, banking77_sample: Path
) -> None:
    """Ingest never lands a ticket without text; the contract's rules still stop one written by other means."""
    ingest_file(str(banking77_sample), local_lake, local_settings)
    (landed,) = local_lake.files("tickets")
    tickets = local_lake.read_parquet(landed)
    tickets.loc[[0, 1], "text"] = [None, " \t "]  # as an older version, or a hand-written file, could have left them
    local_lake.fs.rm(landed)
    local_lake.write_parquet(to_table(tickets), "tickets", "ingest_date=2099-01-01", "edited.parquet")

    report = validate_lake(local_lake, local_settings).validation

    assert report.quarantined == 2 and report.by_rule == {"text_present": 1, "text_not_blank": 1}
    reasons = quarantined(local_lake, "validate").set_index("ticket_id")["reasons"].map(lambda found: " | ".join(json.loads(found)))
    assert "text_present" in reasons[tickets.loc[0, "ticket_id"]]
    assert "text_not_blank" in reasons[tickets.loc[1, "ticket_id"]]


def test_duplicate_ids_in_the_lake_are_quarantined_not_trained_on(
    local_lake: Lake, local_settings: Settings, banking77_sample: Path
) -> None:
    ingest_file(str(banking77_sample), local_lake, local_settings)
    original = local_lake.files("tickets")[0]
    copy = local_lake.read_parquet(original).head(5)
    local_lake.write_parquet(copy, "tickets", "ingest_date=2099-01-01", "copied.parquet")  # ids repeated by hand

    report = validate_lake(local_lake, local_settings).validation

    assert report.quarantined == 5 and report.by_rule == {"unique_id": 5}
    assert report.rows_read == report.accepted + report.quarantined


def test_most_rows_failing_stops_the_run_naming_file_and_rule(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "wrong_catalogue.csv"
    pd.DataFrame({"text": [f"question {i}" for i in range(40)], "intent": ["weather_forecast"] * 30 + ["card_arrival"] * 10}).to_csv(
        path, index=False
    )
    ingest_file(str(path), local_lake, local_settings)

    with pytest.raises(
        ContractError, match=r"ingest_date=.*\.parquet: 30 of 40 rows \(75%\) break the contract tickets@1\.1\.0.*'intent_in_catalogue'"
    ):
        validate_lake(local_lake, local_settings)
    assert not local_lake.exists("snapshots", "latest.json")


def test_a_lake_file_with_a_missing_column_stops_the_run(local_lake: Lake, local_settings: Settings, banking77_sample: Path) -> None:
    ingest_file(str(banking77_sample), local_lake, local_settings)
    broken = local_lake.read_parquet(local_lake.files("tickets")[0]).drop(columns=["channel"])
    local_lake.write_parquet(broken, "tickets", "ingest_date=2099-01-01", "broken.parquet")

    with pytest.raises(
        ContractError,
        match=r"broken\.parquet breaks the contract tickets@1\.1\.0: rule 'schema': .*\(missing \['channel'\], unexpected \[\]\)$",
    ):
        validate_lake(local_lake, local_settings)


def test_an_s3_endpoint_that_does_not_answer_fails_fast_with_its_address(tmp_path: Path) -> None:
    settings = Settings(
        lake_url="s3://lake/prefix", s3_endpoint_url="http://127.0.0.1:9", s3_connect_timeout_s=1, s3_max_attempts=1, gx_root=tmp_path
    )
    started = time.monotonic()
    with pytest.raises(LakeUnavailableError, match=r"the lake at s3://lake/prefix \(endpoint http://127\.0\.0\.1:9\) cannot be reached"):
        open_lake(settings)
    assert time.monotonic() - started < 30


def test_nothing_to_validate_is_a_clear_error(local_lake: Lake, local_settings: Settings) -> None:
    with pytest.raises(ContractError, match=r"the lake has no tickets at .*; run ingest first"):
        validate_lake(local_lake, local_settings)


@pytest.fixture()
def fresh_settings() -> Iterator[None]:
    """`get_settings` read again from the environment each test sets, and restored after."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('{"txt": "Customer Message"}', r"SUPPORTFLOW_FIELD_MAP: 'txt' is not a ticket field; the fields are text, intent"),
        ('{"text": 3}', r"SUPPORTFLOW_FIELD_MAP: Input should be a valid string"),
        ('{text: "Customer Message"}', r"SUPPORTFLOW_FIELD_MAP: not valid JSON \(Expecting property name"),
    ],
)
def test_a_field_map_setting_that_names_no_ticket_field_is_refused(
    value: str, reason: str, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    monkeypatch.setenv("SUPPORTFLOW_FIELD_MAP", value)
    with pytest.raises(SettingsError, match=reason):
        get_settings()


def test_every_refused_setting_is_named_and_its_value_never_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fresh_settings: None
) -> None:
    monkeypatch.setenv("SUPPORTFLOW_TRAIN_PROFILE", "overnight-zz9")
    monkeypatch.setenv("SUPPORTFLOW_TRAIN_THREADS", "0")
    assert main(["validate"]) == 2
    printed = capsys.readouterr().err
    assert "SUPPORTFLOW_TRAIN_PROFILE: Input should be 'quick' or 'full'" in printed
    assert "SUPPORTFLOW_TRAIN_THREADS: Input should be greater than or equal to 1" in printed
    assert "overnight-zz9" not in printed and "Traceback" not in printed
