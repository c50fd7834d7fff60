"""Exports in other encodings: read right when the source names its encoding; read with the wrong one, exactly the
records with undecodable bytes are quarantined, each naming the byte offset of the bytes, and the rest lands."""

import json
from pathlib import Path

import pandas as pd
import pytest

from supportflow.cli import main
from supportflow.errors import IngestError
from supportflow.ingest.load import ingest_file
from supportflow.lake import Lake
from supportflow.pipeline import ticket_exports
from supportflow.settings import Settings
from supportflow.workspace import WorkspaceError, load_workspace

# What a desk writes: accents, the euro sign, typographic quotes, all outside ASCII and all in cp1252.
TICKETS = [
    ("my card payment was declined at the café", "declined_card_payment"),
    ("where is my card? I ordered it two weeks ago", "card_arrival"),
    ("I was charged 5 € twice for one transfer", "extra_charge_on_statement"),
    ("the app says “pending” for days,\nand nobody answers my emails", "pending_transfer"),  # a quoted field over two lines
    ("how do I change my PIN?", "change_pin"),
    ("I can’t top up with my Visa", "top_up_failed"),
]
NON_ASCII = {0, 2, 3, 5}  # the tickets whose cp1252 bytes are not UTF-8


def read_tickets(lake: Lake) -> pd.DataFrame:
    return pd.concat([lake.read_parquet(path) for path in lake.files("tickets")], ignore_index=True)


def ingest_quarantine(lake: Lake) -> pd.DataFrame:
    return pd.concat([lake.read_parquet(path) for path in lake.files("quarantine", "ingest")], ignore_index=True)


def first_non_ascii(data: bytes, start: int) -> int:
    return next(offset for offset in range(start, len(data)) if data[offset] >= 0x80)


def csv_export(path: Path, encoding: str, bom: bytes = b"") -> bytes:
    frame = pd.DataFrame(TICKETS, columns=["text", "intent"])
    data = bom + frame.to_csv(index=False, lineterminator="\r\n").encode(encoding)
    path.write_bytes(data)
    return data


def test_a_cp1252_csv_is_read_right_with_its_encoding(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "desk.csv"
    csv_export(path, "cp1252")

    report = ingest_file(str(path), lake, settings, encoding="cp1252")

    assert (report.rows_read, report.written, report.quarantined, report.encoding) == (6, 6, 0, "cp1252")
    assert sorted(read_tickets(lake)["text"]) == sorted(text for text, _ in TICKETS)
    assert report.lines()[0].startswith(f"{path} (cp1252): read 6")


def test_the_same_csv_read_as_utf8_quarantines_exactly_the_undecodable_rows_with_their_byte_offsets(
    lake: Lake, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "desk.csv"
    data = csv_export(path, "cp1252")

    report = ingest_file(str(path), lake, settings)

    assert (report.rows_read, report.written, report.duplicates, report.quarantined) == (6, 2, 0, 4)
    assert report.balanced
    assert sorted(read_tickets(lake)["text"]) == sorted(text for i, (text, _) in enumerate(TICKETS) if i not in NON_ASCII)
    quarantine = ingest_quarantine(lake).sort_values("line")
    starts = [data.index(TICKETS[i][0][:8].encode("cp1252")) for i in sorted(NON_ASCII)]
    offsets = [first_non_ascii(data, start) for start in starts]
    more = ["", "", " and 1 more place", ""]  # “pending” has two
    assert list(quarantine["reason"]) == [
        f"bytes not valid utf-8 at byte offset {offset} (0x{data[offset]:02x}){also}; set the source's encoding (e.g. cp1252)"
        for offset, also in zip(offsets, more, strict=True)
    ]
    assert [data[offset] for offset in offsets] == [0xE9, 0x80, 0x93, 0x92]  # é, €, “ (on the field's first line), ’
    assert json.loads(quarantine["raw"].iloc[0]) == {
        "text": "my card payment was declined at the caf\\xe9",
        "intent": "declined_card_payment",
    }
    assert quarantine["source_file"].unique().tolist() == [str(path)]


def test_bad_bytes_on_a_later_line_of_a_quoted_field_are_found_there(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "multiline.csv"
    data = b'text,intent\n"first line is plain,\nsecond line says caf\xe9",card_arrival\nafter it,change_pin\n'
    path.write_bytes(data)

    report = ingest_file(str(path), local_lake, local_settings)

    assert (report.written, report.quarantined) == (1, 1)
    assert read_tickets(local_lake)["text"].tolist() == ["after it"]
    offset = data.index(b"\xe9")
    assert f"at byte offset {offset} (0xe9)" in ingest_quarantine(local_lake)["reason"].item()


def test_a_row_with_too_many_fields_and_bad_bytes_is_quarantined_not_fatal(
    local_lake: Lake, local_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "both.csv"
    path.write_bytes(b"text,intent\ncaf\xe9,card_arrival,extra\nfine,change_pin\n")

    report = ingest_file(str(path), local_lake, local_settings)

    assert (report.rows_read, report.written, report.quarantined) == (2, 1, 1)
    rejected = ingest_quarantine(local_lake).iloc[0]
    assert (rejected["reason"], rejected["raw"]) == ("expected 2 fields, found 3", "caf\\xe9,card_arrival,extra")


def test_a_utf8_csv_with_a_byte_order_mark_reads_its_header_and_counts_the_mark_in_offsets(
    local_lake: Lake, local_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "excel.csv"
    data = csv_export(path, "utf-8", bom=b"\xef\xbb\xbf") + b"stray \xff byte,card_arrival\r\n"
    path.write_bytes(data)

    report = ingest_file(str(path), local_lake, local_settings)

    assert (report.rows_read, report.written, report.quarantined, report.ignored_columns) == (7, 6, 1, [])
    assert sorted(read_tickets(local_lake)["text"]) == sorted(text for text, _ in TICKETS)
    offset = data.index(b"\xff")
    assert f"at byte offset {offset} (0xff)" in ingest_quarantine(local_lake)["reason"].item()


def test_offsets_stay_exact_deep_into_a_file_read_in_many_chunks(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    """Past the decoder's reads (1 MiB) and Arrow's blocks, and over many batches."""
    rows = [f"ticket {i}: where is my card? it has been {i % 30} days,card_arrival\n".encode() for i in range(60_000)]
    bad = {7_000, 31_337, 59_999}
    for i in bad:
        rows[i] = rows[i].replace(b"where", b"wh\xe8re")
    data = b"text,intent\n" + b"".join(rows)
    path = tmp_path / "large.csv"
    path.write_bytes(data)
    settings = local_settings.model_copy(update={"ingest_batch_rows": 5_000})

    report = ingest_file(str(path), local_lake, settings)

    assert (report.rows_read, report.written, report.quarantined) == (60_000, 60_000 - len(bad), len(bad))
    expected = sorted(i for i, byte in enumerate(data) if byte == 0xE8)
    found = sorted(int(reason.split("byte offset ")[1].split(" ")[0]) for reason in ingest_quarantine(local_lake)["reason"])
    assert found == expected and expected[-1] > 3 << 20


def test_a_utf16_tab_separated_export_is_read_with_its_encoding(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    """What a spreadsheet's "Unicode text" export is: UTF-16 with a byte-order mark, tab-separated."""
    path = tmp_path / "unicode.txt"
    path.write_bytes(pd.DataFrame(TICKETS, columns=["text", "intent"]).to_csv(index=False, sep="\t").encode("utf-16"))

    report = ingest_file(str(path), local_lake, local_settings, encoding="utf-16")

    assert (report.written, report.quarantined) == (6, 0)
    assert sorted(read_tickets(local_lake)["text"]) == sorted(text for text, _ in TICKETS)


def jsonl_export(path: Path, encoding: str) -> bytes:
    lines = [json.dumps({"text": text, "intent": intent}, ensure_ascii=False) for text, intent in TICKETS]
    data = ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes(data)
    return data


def test_json_lines_in_latin1_read_right_and_read_as_utf8_quarantine_the_lines_with_offsets(
    local_lake: Lake, local_settings: Settings, tmp_path: Path
) -> None:
    tickets = [(text.replace("€", "EUR").replace("“", '"').replace("”", '"').replace("’", "'"), intent) for text, intent in TICKETS]
    path = tmp_path / "chat.jsonl"
    lines = [json.dumps({"text": text, "intent": intent}, ensure_ascii=False) for text, intent in tickets]
    data = ("\n".join(lines) + "\n").encode("latin-1")
    path.write_bytes(data)

    as_utf8 = ingest_file(str(path), local_lake, local_settings, source="chat")

    assert (as_utf8.rows_read, as_utf8.written, as_utf8.quarantined) == (6, 5, 1) and as_utf8.balanced
    rejected = ingest_quarantine(local_lake).iloc[0]
    offset = data.index(b"\xe9")
    assert rejected["line"] == 1
    assert rejected["reason"].startswith(f"bytes not valid utf-8 at byte offset {offset} (0xe9);")
    assert rejected["raw"] == lines[0].replace("é", "\\xe9")

    as_latin1 = ingest_file(str(path), local_lake, local_settings, source="chat", encoding="latin-1")

    assert (as_latin1.written, as_latin1.duplicates, as_latin1.quarantined) == (1, 5, 0)
    assert sorted(read_tickets(local_lake)["text"]) == sorted(text for text, _ in tickets)


def test_cp1252_json_lines_read_right(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    data = jsonl_export(path, "cp1252")

    report = ingest_file(str(path), local_lake, local_settings, encoding="cp1252")
    assert (report.written, report.quarantined) == (6, 0)

    path.write_bytes(data.replace(b"\x80", b"\x81"))  # a byte cp1252 leaves undefined
    again = ingest_file(str(path), local_lake, local_settings, encoding="cp1252")
    assert (again.duplicates, again.quarantined) == (5, 1)
    reason = ingest_quarantine(local_lake)["reason"].item()
    offset = data.index(b"\x80")
    assert reason == f"bytes not valid cp1252 at byte offset {offset} (0x81); is the source's encoding right?"


def zendesk_export(path: Path, encoding: str) -> bytes:
    tickets = [
        {"id": 100 + i, "subject": text.split(" ")[0], "description": text, "tags": [f"intent:{intent}"], "via": {"channel": "email"}}
        for i, (text, intent) in enumerate(TICKETS)
    ]
    data = json.dumps({"tickets": tickets}, ensure_ascii=False, indent=1).encode(encoding)
    path.write_bytes(data)
    return data


def test_a_zendesk_export_in_cp1252_reads_right_and_as_utf8_quarantines_the_tickets_with_offsets(
    local_lake: Lake, local_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "zendesk.json"
    data = zendesk_export(path, "cp1252")

    as_utf8 = ingest_file(str(path), local_lake, local_settings, source="zendesk")

    assert (as_utf8.rows_read, as_utf8.written, as_utf8.quarantined) == (6, 2, 4) and as_utf8.balanced
    quarantine = ingest_quarantine(local_lake).sort_values("line")
    assert quarantine["line"].tolist() == [i + 1 for i in sorted(NON_ASCII)]  # the ticket's place in the export
    offsets = [int(reason.split("byte offset ")[1].split(" ")[0]) for reason in quarantine["reason"]]
    assert offsets == [first_non_ascii(data, data.index(f'"id": {100 + i}'.encode())) for i in sorted(NON_ASCII)]
    assert "caf\\xe9" in quarantine["raw"].iloc[0]

    as_cp1252 = ingest_file(str(path), local_lake, local_settings, source="zendesk", encoding="cp1252")

    assert (as_cp1252.written, as_cp1252.duplicates, as_cp1252.quarantined) == (4, 2, 0)
    assert sorted(read_tickets(local_lake)["intent"]) == sorted(intent for _, intent in TICKETS)


def test_re_ingesting_an_export_in_its_encoding_duplicates_nothing(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "desk.csv"
    csv_export(path, "cp1252")

    first = ingest_file(str(path), local_lake, local_settings, encoding="cp1252")
    second = ingest_file(str(path), local_lake, local_settings, encoding="cp1252")

    assert (second.written, second.duplicates, second.files_written) == (0, first.written, [])
    assert len(read_tickets(local_lake)) == 6


def test_an_unknown_encoding_is_refused_clearly_everywhere_it_can_be_named(
    local_lake: Lake, local_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "desk.csv"
    csv_export(path, "cp1252")
    with pytest.raises(IngestError, match=r"desk\.csv: 'cp-1252x' is not a text encoding Python knows"):
        ingest_file(str(path), local_lake, local_settings, encoding="cp-1252x")
    with pytest.raises(IngestError, match="'base64' is not a text encoding"):  # a codec, but bytes to bytes
        ingest_file(str(path), local_lake, local_settings, encoding="base64")

    (tmp_path / "supportflow.yaml").write_text("name: shop\ntickets:\n  - path: desk.csv\n    encoding: latin-9x\n")
    with pytest.raises(WorkspaceError, match=r"supportflow\.yaml: tickets\.0: the ticket source 'desk\.csv': encoding 'latin-9x' is not"):
        load_workspace(tmp_path)

    with pytest.raises(SystemExit) as exited:
        main(["ingest", str(path), "--encoding", "latin-9x"])
    assert exited.value.code == 2
    assert "argument --encoding: 'latin-9x' is not a text encoding Python knows" in capsys.readouterr().err


def test_a_workspace_source_names_its_encoding_and_the_pipeline_passes_it_on(tmp_path: Path) -> None:
    csv_export(tmp_path / "desk.csv", "cp1252")
    (tmp_path / "supportflow.yaml").write_text("name: shop\ntickets:\n  - path: desk.csv\n    encoding: Windows-1252\n  - path: desk.csv\n")

    ((_, windows), (_, default)) = ticket_exports(Settings(workspace=tmp_path), None, None)

    assert (windows.encoding, default.encoding) == ("Windows-1252", "utf-8")


@pytest.mark.parametrize("delimiter", [";", "|"])
def test_an_export_separated_by_semicolons_or_bars_is_read_by_its_header(
    delimiter: str, local_lake: Lake, local_settings: Settings, tmp_path: Path
) -> None:
    """Excel's "CSV" where the comma is the decimal mark separates columns with ';', so the texts hold commas
    ("5,50 €") that must stay inside their field; a bar-separated dump is read the same way."""
    tickets = [(text.replace("5 €", "5,50 €"), intent) for text, intent in TICKETS]
    path = tmp_path / "export.csv"
    path.write_bytes(pd.DataFrame(tickets, columns=["text", "intent"]).to_csv(index=False, sep=delimiter).encode("cp1252"))

    report = ingest_file(str(path), local_lake, local_settings, encoding="cp1252")

    assert (report.written, report.quarantined) == (6, 0)
    landed = read_tickets(local_lake)
    assert sorted(zip(landed["text"], landed["intent"], strict=True)) == sorted(tickets)
