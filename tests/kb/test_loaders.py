"""Sources to documents, and every kind of bad input the issue names: each is skipped with a reason a person can act on."""

import json
from pathlib import Path

from supportflow.kb.documents import Document, split_body, to_passages
from supportflow.kb.loaders import html_to_text, load_sources

MAX_BYTES = 10 * 2**20


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with real text, built by hand so the test needs no PDF writer."""
    stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_each_source_format_becomes_documents(tmp_path: Path) -> None:
    (tmp_path / "faq.csv").write_text(
        "faq_id,question,answer,url\nf1,How do I close my account?,Go to Profile and tap Close account.,https://x/1\n"
    )
    (tmp_path / "faq.json").write_text(json.dumps([{"question": "Is there a fee?", "answer": "No, transfers are free.", "id": "f2"}]))
    (tmp_path / "article.md").write_text(
        "---\nid: a1\nintent: card_arrival\nupdated_at: 2026-01-02T00:00:00Z\n---\n"
        "# Where is my card?\n\nCards arrive in **five** days. See [delivery](https://x/d).\n"
    )
    page = "<html><head><title>Refunds</title></head><body><h1>Refunds</h1><p>Refunds take 5 days.</p></body></html>"
    (tmp_path / "page.html").write_text(page)
    (tmp_path / "manual.pdf").write_bytes(minimal_pdf("Insert the card chip first."))
    (tmp_path / "policy.txt").write_text("Privacy policy\nWe keep your data safe.\n")
    result = load_sources([tmp_path], MAX_BYTES)
    assert result.skipped == []
    by_id = {d.id: d for d in result.documents}
    assert set(by_id) == {"f1", "f2", "a1", "page", "manual", "policy"}
    assert by_id["f1"].title == "How do I close my account?" and by_id["f1"].url == "https://x/1"
    assert by_id["a1"].title == "Where is my card?" and by_id["a1"].intent == "card_arrival"
    assert by_id["a1"].body == "Cards arrive in five days. See delivery."
    assert by_id["a1"].updated_at.year == 2026
    assert by_id["page"].title == "Refunds" and by_id["page"].body == "Refunds\n\nRefunds take 5 days."
    assert "Insert the card chip first." in by_id["manual"].body
    assert by_id["policy"].title == "Privacy policy" and by_id["policy"].source == f"{tmp_path.name}/policy.txt"


def test_an_faq_spreadsheet_separated_by_semicolons_keeps_the_commas_in_its_answers(tmp_path: Path) -> None:
    (tmp_path / "faq.csv").write_text("id;question;answer\nf1;Is there a fee?;Yes, 1,50 € a month, billed monthly.\n")
    result = load_sources([tmp_path], MAX_BYTES)
    assert result.skipped == []
    (faq,) = result.documents
    assert (faq.id, faq.title, faq.body) == ("f1", "Is there a fee?", "Yes, 1,50 € a month, billed monthly.")


def test_an_faq_spreadsheet_s_headers_written_for_people_are_read_as_ticket_exports_are(tmp_path: Path) -> None:
    """ "Article ID" and "Updated-At" are the `article_id` and `updated_at` aliases, as "Ticket ID" is for tickets."""
    (tmp_path / "faq.csv").write_text(
        "Article ID,Question,Answer,Link,Updated-At,Intent\n"
        "kb-7,How do I close my account?,Write to us from the app.,https://help.example/kb-7,2026-03-01,close_account\n"
    )
    result = load_sources([tmp_path], MAX_BYTES)
    assert result.skipped == []
    (faq,) = result.documents
    assert (faq.id, faq.title, faq.body, faq.intent) == ("kb-7", "How do I close my account?", "Write to us from the app.", "close_account")
    assert faq.url == "https://help.example/kb-7"
    assert faq.updated_at is not None and faq.updated_at.date().isoformat() == "2026-03-01"


def test_html_loses_scripts_styles_and_markup_and_counts_the_scripts(tmp_path: Path) -> None:
    html = (
        "<html><head><script>steal()</script><style>p{color:red}</style></head>"
        "<body><h1>Card limits</h1><p onclick=\"evil()\">Daily limit is <b>500</b>.</p><script src='x.js'></script>"
        "<noscript>enable js</noscript></body></html>"
    )
    text, title, scripts = html_to_text(html)
    assert title == "Card limits"
    assert "steal" not in text and "evil" not in text and "color" not in text and "enable js" not in text and "<" not in text
    assert "Daily limit is 500." in text
    assert scripts == 3  # two script elements and one inline handler
    (tmp_path / "limits.html").write_text(html)
    result = load_sources([tmp_path], MAX_BYTES)
    assert len(result.documents) == 1 and result.sanitised == {"html_scripts_removed": 3}


def test_bad_inputs_are_skipped_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "blank.md").write_text("---\ntitle: Nothing here\n---\n\n   \n")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a PDF\x00\xff")
    with (tmp_path / "huge.txt").open("wb") as handle:
        handle.truncate(50 * 2**20)  # a 50 MB file (sparse, so the test stays cheap)
    (tmp_path / "latin1.md").write_bytes("# Café\n\nPrix en \xe9uros".encode("latin-1"))
    (tmp_path / "a.md").write_text("---\nid: same\n---\n# First\n\nThe first one.")
    (tmp_path / "b.md").write_text("---\nid: same\n---\n# Second\n\nThe second one.")
    (tmp_path / "faq.csv").write_text("question,answer\nGood?,Yes.\n,No question here\n")
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04")
    result = load_sources([tmp_path, tmp_path / "missing"], MAX_BYTES)
    reasons = {Path(s.item.split(" (")[0].split(":")[0]).name: s.reason for s in result.skipped}
    assert reasons["empty.md"] == "the file is empty"
    assert reasons["blank.md"] == "the document has no text"
    assert reasons["broken.pdf"].startswith("the PDF cannot be parsed")
    assert "50.0 MiB, over the 10 MiB limit" in reasons["huge.txt"]
    assert reasons["latin1.md"].startswith("not UTF-8 text (byte 0xe9")
    assert reasons["b.md"].startswith("duplicate id 'same', first seen in")
    assert reasons["faq.csv"] == "empty question or answer"
    assert reasons["notes.docx"].startswith("unsupported file type .docx")
    assert reasons["missing"] == "no such file or folder"
    assert sorted(d.id for d in result.documents) == ["faq-1", "same"]
    assert next(d for d in result.documents if d.id == "same").title == "First"


def test_long_articles_split_into_passages_that_keep_their_title() -> None:
    paragraph = "This sentence is about card delivery times and what to do. " * 10
    body = "\n\n".join([paragraph] * 5 + ["x" * 2500])
    document = Document(id="long", title="Card delivery", body=body, source="test")
    passages = to_passages(document, limit=1000)
    assert len(passages) > 3
    assert all(p.title == "Card delivery" and p.doc_id == "long" and len(p.body) <= 1000 for p in passages)
    assert [p.id for p in passages] == [f"long#{n}" for n in range(len(passages))]
    assert "".join(split_body(body)).replace("\n", "").replace(" ", "") == body.replace("\n", "").replace(" ", "")
