"""What the knowledge base holds: documents, split into passages that keep their title.

A passage is the unit the index stores and the bot quotes. Long articles are cut at paragraph
and sentence boundaries so each passage fits the embedding model's window; every passage carries
its document's title, because the title is most of what tells a reader what the passage answers.
"""

import hashlib
import re
from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel

from supportflow.redact import Redactor

PASSAGE_CHARS = 1000  # about 200 words, inside all-MiniLM-L6-v2's 256-token window


class Document(BaseModel):
    id: str
    title: str
    body: str
    source: str
    url: str = ""
    updated_at: datetime | None = None
    intent: str | None = None  # the intent an article answers, where the source says so


class Passage(BaseModel):
    id: str  # "<document id>#<n>"
    doc_id: str
    title: str
    body: str
    source: str
    url: str = ""
    updated_at: datetime | None = None
    intent: str | None = None


class Skipped(BaseModel):
    """Something a build could not use, and why; the build report counts these."""

    item: str
    reason: str


def _sentences(paragraph: str) -> list[str]:
    return [part for part in re.split(r"(?<=[.!?])\s+", paragraph) if part]


def split_body(body: str, limit: int = PASSAGE_CHARS) -> list[str]:
    """Paragraphs packed into chunks of at most `limit` characters; an over-long paragraph is cut at sentences."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", body.strip()):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        if len(paragraph) <= limit:
            pieces.append(paragraph)
            continue
        for sentence in _sentences(paragraph):
            pieces.extend(sentence[start : start + limit] for start in range(0, len(sentence), limit))
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 2 + len(piece) <= limit:
            chunks[-1] = f"{chunks[-1]}\n\n{piece}"
        else:
            chunks.append(piece)
    return chunks


def to_passages(document: Document, limit: int = PASSAGE_CHARS) -> list[Passage]:
    fields = document.model_dump(exclude={"id", "body"})
    return [
        Passage(id=f"{document.id}#{n}", doc_id=document.id, body=chunk, **fields)
        for n, chunk in enumerate(split_body(document.body, limit))
    ]


def redact_document(document: Document, redactor: Redactor) -> Document:
    """The same PII redaction as ticket ingest: no e-mail, card, IBAN or phone number may be quoted to a customer."""
    return document.model_copy(update={"title": redactor.redact(document.title), "body": redactor.redact(document.body)})


def content_hash(passages: Iterable[Passage]) -> str:
    """A hash of what the index serves, so two builds of the same content can be told apart from two of different content."""
    digest = hashlib.sha256()
    for passage in sorted(passages, key=lambda p: p.id):
        for value in (passage.id, passage.title, passage.body, passage.url, passage.intent or ""):
            digest.update(value.encode("utf-8"))
            digest.update(b"\x1f")
    return digest.hexdigest()
