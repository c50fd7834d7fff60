"""Ingest on both lakes: the local folder and S3 (a real moto server)."""

import json
from pathlib import Path

import pandas as pd
import pytest

from supportflow.errors import IngestError
from supportflow.ingest.load import NO_TEXT, existing_ticket_ids, ingest_file
from supportflow.ingest.markup import plain_text
from supportflow.ingest.tickets import TICKET_COLUMNS
from supportflow.lake import Lake
from supportflow.settings import Settings


def read_tickets(lake: Lake) -> pd.DataFrame:
    return pd.concat([lake.read_parquet(path) for path in lake.files("tickets")], ignore_index=True)


def test_csv_lands_in_the_lake_partitioned_by_ingest_day(lake: Lake, settings: Settings, banking77_sample: Path) -> None:
    report = ingest_file(str(banking77_sample), lake, settings, source="banking77")

    assert report.rows_read == report.written == 1540
    assert report.balanced
    assert all("/tickets/ingest_date=" in path for path in report.files_written)
    tickets = read_tickets(lake)
    assert list(tickets.columns) == TICKET_COLUMNS
    assert tickets["ticket_id"].is_unique
    assert set(tickets["source"]) == {"banking77"}
    assert tickets["intent"].nunique() == 77
    assert str(tickets["ingested_at"].dtype) == "datetime64[us, UTC]"


def test_ingesting_the_same_file_twice_adds_nothing(lake: Lake, settings: Settings, banking77_sample: Path) -> None:
    first = ingest_file(str(banking77_sample), lake, settings, source="banking77")
    second = ingest_file(str(banking77_sample), lake, settings, source="banking77")

    assert (second.written, second.duplicates, second.files_written) == (0, first.written, [])
    assert second.balanced
    assert len(read_tickets(lake)) == first.written
    assert len(existing_ticket_ids(lake)) == first.written


def test_ids_are_stable_and_depend_on_source_and_content(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tickets.csv"
    path.write_text("text,intent\nwhere is my card?,card_arrival\nwhere is my card?,lost_or_stolen_card\n")
    ingest_file(str(path), local_lake, local_settings, source="desk_a")
    ingest_file(str(path), local_lake, local_settings, source="desk_b")
    tickets = read_tickets(local_lake)
    assert len(tickets) == 4 and tickets["ticket_id"].is_unique

    again = ingest_file(str(path), local_lake, local_settings, source="desk_a")
    assert again.written == 0 and again.duplicates == 2


def test_pii_is_redacted_before_it_lands_and_counted(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "desk.csv"
    pd.DataFrame(
        {
            "text": [
                "my email is ann@example.com",
                "card 4111 1111 1111 1111 lost",
                "IBAN DE89370400440532013000",
                "call +44 20 7946 0958",
            ],
            "intent": ["edit_personal_details", "lost_or_stolen_card", "transfer_not_received_by_recipient", "contactless_not_working"],
            "entities": ["[]", "[]", "[]", "[]"],
            "response": ["we wrote to ann@example.com", "", "", ""],
        }
    ).to_csv(path, index=False)

    report = ingest_file(str(path), lake, settings)

    assert report.redactions == {"email": 2, "card": 1, "iban": 1, "phone": 1}
    stored = read_tickets(lake)
    assert "ann@example.com" not in " ".join(stored["text"]) + " ".join(stored["response"].dropna())
    assert set(stored["text"]) == {"my email is <EMAIL>", "card <CARD> lost", "IBAN <IBAN>", "call <PHONE>"}
    assert stored.loc[stored["text"] == "my email is <EMAIL>", "response"].item() == "we wrote to <EMAIL>"


def test_json_lines_with_malformed_lines_are_quarantined_with_line_and_reason(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    lines = [
        json.dumps({"text": "my card has not arrived", "intent": "card_arrival", "channel": "chat", "created_at": "2025-01-02T10:00:00Z"}),
        '{"text": "broken json", "intent": ',
        "",
        json.dumps(["a list, not a ticket"]),
        json.dumps({"message": "how do I top up?", "label": "top_up_failed", "entities": [{"entity": "amount", "value": "20"}]}),
        json.dumps({"text": {"nested": "object"}}),
        json.dumps({"text": "when?", "created_at": "not a date"}),
    ]
    path.write_text("\n".join(lines) + "\n")

    report = ingest_file(str(path), lake, settings, source="webchat")

    assert (report.rows_read, report.written, report.quarantined) == (6, 2, 4)
    assert report.balanced
    quarantine = pd.concat([lake.read_parquet(p) for p in lake.files("quarantine", "ingest")])
    reasons = dict(zip(quarantine["line"], quarantine["reason"], strict=True))
    assert reasons[2].startswith("malformed JSON")
    assert reasons[4] == "a line must hold a JSON object, found list"
    assert reasons[6] == "field 'text' must be a string, found dict"
    assert reasons[7] == "created_at is not a date: 'not a date'"
    assert quarantine.loc[quarantine["line"] == 2, "raw"].item() == lines[1]
    tickets = read_tickets(lake).set_index("text")
    assert tickets.loc["my card has not arrived", "channel"] == "webchat"
    assert tickets.loc["my card has not arrived", "created_at"] == pd.Timestamp("2025-01-02T10:00:00Z")
    assert json.loads(tickets.loc["how do I top up?", "entities"]) == [{"entity": "amount", "value": "20"}]
    assert tickets.loc["how do I top up?", "intent"] == "top_up_failed"


def test_zendesk_export_maps_subject_description_tags_fields_and_channel(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    export = {
        "tickets": [
            {
                "id": 101,
                "subject": "Card not here",
                "description": "I ordered a card two weeks ago, where is it?",
                "tags": ["vip", "intent:card_arrival"],
                "custom_fields": [{"id": 360001, "value": "gold"}, {"id": 360002, "value": None}],
                "created_at": "2025-03-01T09:30:00Z",
                "via": {"channel": "email"},
            },
            {
                "id": 102,
                "subject": "Top up failed",
                "description": "Top up failed",
                "tags": [],
                "custom_fields": [{"id": 42, "value": "top_up_failed"}],
                "created_at": "2025-03-02T09:30:00Z",
                "via": {"channel": "web"},
            },
        ]
    }
    path = tmp_path / "zendesk.json"
    path.write_text(json.dumps(export))
    settings = settings.model_copy(update={"zendesk_intent_field_id": 42})

    report = ingest_file(str(path), lake, settings, source="zendesk")

    assert report.format == "zendesk" and report.written == 2 and report.balanced
    tickets = read_tickets(lake).set_index("intent")
    first = tickets.loc["card_arrival"]
    assert first["text"] == "Card not here\nI ordered a card two weeks ago, where is it?"
    assert first["channel"] == "email"
    assert json.loads(first["entities"]) == [{"entity": "tag", "value": "vip"}, {"entity": "zendesk_field_360001", "value": "gold"}]
    second = tickets.loc["top_up_failed"]
    assert (second["text"], second["channel"]) == ("Top up failed", "webchat")


def test_a_zendesk_full_export_a_ticket_a_line_is_read_from_a_json_file(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    tickets = [{"id": i, "subject": f"parcel {i}", "description": "where is it?", "tags": ["intent:order_status"]} for i in range(3)]
    path = tmp_path / "export.json"
    path.write_text("\n".join(json.dumps(ticket) for ticket in tickets) + "\n")

    report = ingest_file(str(path), lake, settings)

    assert (report.format, report.written) == ("zendesk", 3)
    assert set(read_tickets(lake)["intent"]) == {"order_status"}


def test_an_export_read_in_the_wrong_format_says_which_to_use(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    zendesk = tmp_path / "export.json"
    zendesk.write_text(json.dumps({"tickets": [{"id": 1, "subject": "parcel", "description": "where is it?"}]}))
    with pytest.raises(IngestError, match=r"JSON, not CSV: read it with --format jsonl .* or --format zendesk"):
        ingest_file(str(zendesk), lake, settings, fmt="csv")
    with pytest.raises(IngestError, match="they look like Zendesk's tickets: read the file with --format zendesk"):
        ingest_file(str(zendesk), lake, settings, fmt="jsonl")
    assert not lake.files("tickets")


def test_a_field_mapping_reads_other_exports(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("Customer Message,Queue,When\nmy pin is blocked,pin_blocked,2025-05-05 12:00\n")
    settings = local_settings.model_copy(update={"field_map": {"text": "Customer Message", "intent": "Queue", "created_at": "When"}})

    report = ingest_file(str(path), local_lake, settings)

    assert report.written == 1 and report.ignored_columns == []
    ticket = read_tickets(local_lake).iloc[0]
    assert (ticket["text"], ticket["intent"]) == ("my pin is blocked", "pin_blocked")
    assert ticket["created_at"] == pd.Timestamp("2025-05-05 12:00", tz="UTC")


def test_spreadsheet_headers_are_read_without_a_field_mapping(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    """Headers written for people ("Ticket ID", "Ticket Description", "Ticket Type", "Created-At") are matched in
    lower case with spaces and hyphens as underscores."""
    path = tmp_path / "helpdesk.csv"
    path.write_text("Ticket ID,Ticket Description,Ticket Type,Created-At\n7,my pin is blocked,pin_blocked,2025-05-05 12:00\n")

    report = ingest_file(str(path), local_lake, local_settings)

    assert report.written == 1 and report.ignored_columns == []  # "Ticket ID" too: it is read as the export's own id
    ticket = read_tickets(local_lake).iloc[0]
    assert (ticket["text"], ticket["intent"]) == ("my pin is blocked", "pin_blocked")
    assert ticket["created_at"] == pd.Timestamp("2025-05-05 12:00", tz="UTC")


def test_large_files_are_spread_over_worker_processes(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    rows = 12_000
    frame = pd.DataFrame(
        {"text": [f"ticket number {i} about my card, mail me at u{i}@example.com" for i in range(rows)], "intent": "card_arrival"}
    )
    frame.to_csv(path, index=False)
    parallel = local_settings.model_copy(update={"workers": 2, "parallel_min_bytes": 1, "ingest_batch_rows": 2_500})

    report = ingest_file(str(path), local_lake, parallel)

    assert (report.rows_read, report.written, report.redactions) == (rows, rows, {"email": rows})
    assert len(report.files_written) == 5
    stored = read_tickets(local_lake)
    assert stored["ticket_id"].is_unique and len(stored) == rows


def ingest_quarantine(lake: Lake) -> pd.DataFrame:
    return pd.concat([lake.read_parquet(path) for path in lake.files("quarantine", "ingest")], ignore_index=True)


def other_desk_records(count: int) -> list[dict[str, str]]:
    """Another help desk's field names: none of them is a name the text is known by."""
    return [{"what_they_wrote": f"my card {i} has not arrived", "Category": "card_arrival"} for i in range(count)]


def test_json_lines_without_a_text_field_are_refused_naming_the_fields_and_nothing_lands(
    lake: Lake, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "other_desk.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in other_desk_records(40)))

    with pytest.raises(IngestError) as refused:
        ingest_file(str(path), lake, settings.model_copy(update={"ingest_batch_rows": 16}))

    message = str(refused.value)
    assert message.startswith(f"{path}: missing field for the ticket text (text or message or body or description)")
    assert "the records have the fields ['what_they_wrote', 'Category']" in message
    assert "field_map in supportflow.yaml or in SUPPORTFLOW_FIELD_MAP" in message and '{"text": "what_they_wrote"}' in message
    assert (lake.files("tickets"), lake.files("quarantine")) == ([], [])

    mapped = ingest_file(str(path), lake, settings.model_copy(update={"field_map": {"text": "what_they_wrote"}}))
    assert (mapped.written, mapped.duplicates, mapped.quarantined) == (40, 0, 0)
    assert set(read_tickets(lake)["intent"]) == {"card_arrival"}  # `Category` resolves to the intent by its alias


def test_a_zendesk_export_without_subject_or_description_is_refused_in_both_shapes(
    local_lake: Lake, local_settings: Settings, tmp_path: Path
) -> None:
    document, lines = tmp_path / "export.json", tmp_path / "export.jsonl"
    document.write_text(json.dumps({"tickets": other_desk_records(3)}))
    lines.write_text("".join(json.dumps(record) + "\n" for record in other_desk_records(3)))

    for path in (document, lines):
        with pytest.raises(
            IngestError, match=r"missing field for the ticket text \(a Zendesk ticket's subject or description\)"
        ) as refused:
            ingest_file(str(path), local_lake, local_settings, fmt="zendesk")
        assert "the tickets have the fields ['what_they_wrote', 'Category']" in str(refused.value)
        assert "CSV or JSON Lines" in str(refused.value)
    assert local_lake.files() == []


def test_one_record_with_a_text_field_is_enough_and_the_records_without_text_are_quarantined(
    local_lake: Lake, local_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.jsonl"
    records = [*other_desk_records(2), {"message": "where is my card?", "Category": "card_arrival"}]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))

    report = ingest_file(str(path), local_lake, local_settings)

    assert (report.rows_read, report.written, report.duplicates, report.quarantined) == (3, 1, 0, 2)
    assert list(ingest_quarantine(local_lake).sort_values("line")["line"]) == [1, 2]


def test_rows_without_text_are_quarantined_each_not_counted_as_duplicates(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    textless = ["", "   ", "\t \u3000", "<p></p>", "<p>&nbsp;</p><br>"]  # \u3000: an ideographic space
    path = tmp_path / "desk.csv"
    frame = pd.DataFrame({"text": [*textless, "my card is lost", "where is my card?"], "intent": "card_arrival"})
    frame.to_csv(path, index=False)

    report = ingest_file(str(path), lake, settings)

    assert (report.rows_read, report.written, report.duplicates, report.quarantined) == (7, 2, 0, 5)
    assert report.balanced
    quarantine = ingest_quarantine(lake).sort_values("line")
    assert list(quarantine["line"]) == [2, 3, 4, 5, 6]  # the header is line 1
    assert set(quarantine["reason"]) == {NO_TEXT}
    assert [json.loads(raw)["text"] for raw in quarantine["raw"]] == textless  # as the export had them
    assert sorted(read_tickets(lake)["text"]) == ["my card is lost", "where is my card?"]

    again = ingest_file(str(path), lake, settings)
    assert (again.written, again.duplicates, again.quarantined) == (0, 2, 5) and again.balanced


def test_tickets_without_text_in_json_lines_and_zendesk_are_quarantined(local_lake: Lake, local_settings: Settings, tmp_path: Path) -> None:
    lines = tmp_path / "chat.jsonl"
    lines.write_text(
        "".join(
            json.dumps(r) + "\n" for r in [{"text": None, "intent": "a"}, {"intent": "a"}, {"text": " ", "intent": "a"}, {"text": "hi"}]
        )
    )
    zendesk = tmp_path / "zendesk.json"
    zendesk.write_text(json.dumps([{"id": 1, "subject": "", "description": "  "}, {"id": 2, "subject": "Card", "description": ""}]))

    from_lines = ingest_file(str(lines), local_lake, local_settings)
    from_zendesk = ingest_file(str(zendesk), local_lake, local_settings)

    assert (from_lines.written, from_lines.duplicates, from_lines.quarantined) == (1, 0, 3)
    assert (from_zendesk.written, from_zendesk.duplicates, from_zendesk.quarantined) == (1, 0, 1)
    quarantine = ingest_quarantine(local_lake)
    assert set(quarantine["reason"]) == {NO_TEXT}
    assert json.loads(quarantine.loc[quarantine["source_file"] == str(zendesk), "raw"].item())["external_id"] == "1"


@pytest.mark.parametrize(
    ("markup", "plain"),
    [
        ("<p>Hello</p><p>my card &amp; PIN</p>", "Hello\nmy card & PIN"),
        ("first line<br>second<br/>third<BR />fourth", "first line\nsecond\nthird\nfourth"),
        ("<div>Hi,</div>\n\n<div>my  card</div>", "Hi,\nmy card"),
        ("my <b>card</b> was <span style='color: red'>declined</span>", "my card was declined"),
        ('see <a href="https://bank.example/help?a=1&amp;b=2" target=_blank>this page</a>', "see this page"),
        ("<table><tr><td>amount</td><td>20</td></tr></table>", "amount 20"),
        ("a&nbsp;&nbsp; b &#39;c&#x27; &lt;p&gt;", "a b 'c' <p>"),  # an escaped tag is the customer's text
        ("<html><head><style>p {margin: 0}</style></head><body><p>Hi</p><!-- sig --></body></html>", "Hi"),
        ("<p class=MsoNormal>Card<o:p></o:p></p>", "Card"),
        ("<p> </p>", ""),
    ],
)
def test_plain_text_takes_the_markup_out(markup: str, plain: str) -> None:
    assert plain_text(markup) == plain


@pytest.mark.parametrize(
    "text",
    [
        "my balance < 5 since a<b",
        "x <3 thanks",
        "my name is <Ann> and my email is <EMAIL>",
        "Q&A, AT&T; fish & chips",
        "two  spaces\n\nand lines  ",
        "&notaword; is not an entity",
    ],
)
def test_plain_text_leaves_text_without_markup_as_it_is(text: str) -> None:
    assert plain_text(text) == text


def test_an_html_ticket_lands_as_plain_redacted_text_with_the_id_of_the_same_text_plain(
    lake: Lake, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "helpdesk.csv"
    pd.DataFrame(
        {
            "text": ["<p>Hello</p><p>my card &amp; PIN, mail ann&#64;example.com</p>", "where is my card?"],
            "intent": ["card_arrival", "card_arrival"],
            "response": ["<p>Reset it&nbsp;in the app.</p>", "<p></p>"],
        }
    ).to_csv(path, index=False)
    plain = tmp_path / "helpdesk_plain.csv"
    pd.DataFrame(
        {"text": ["Hello\nmy card & PIN, mail ann@example.com"], "intent": ["card_arrival"], "response": ["Reset it in the app."]}
    ).to_csv(plain, index=False)

    report = ingest_file(str(path), lake, settings, source="desk")
    again = ingest_file(str(plain), lake, settings, source="desk")

    assert (report.written, report.redactions) == (2, {"email": 1})  # the address hidden in an entity is found too
    stored = read_tickets(lake).set_index("text")
    assert list(stored.index) == ["Hello\nmy card & PIN, mail <EMAIL>", "where is my card?"]
    assert stored.loc["Hello\nmy card & PIN, mail <EMAIL>", "response"] == "Reset it in the app."
    assert pd.isna(stored.loc["where is my card?", "response"])  # a response of markup alone is no response
    assert (again.written, again.duplicates) == (0, 1)  # one ticket, whether exported as HTML or as text
