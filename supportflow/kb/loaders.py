"""Knowledge-base sources to documents: FAQ files (CSV, JSON), Markdown and HTML articles, PDF manuals, text policy pages.

A file that cannot be used is skipped with its reason rather than failing the whole build: one bad
PDF in a folder of manuals should not keep the other articles from the bot. Every skip is counted
in the build report, so it is seen and fixed instead of lost.
"""

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from supportflow.ingest.fields import header_key
from supportflow.ingest.readers import csv_delimiter
from supportflow.kb.documents import Document, Skipped

SUFFIXES = {
    ".csv": "faq",
    ".json": "faq",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".txt": "text",
}
FIELD_ALIASES = {
    "id": ("id", "faq_id", "doc_id", "article_id"),
    "title": ("question", "title", "q"),
    "body": ("answer", "body", "a", "text"),
    "url": ("url", "link"),
    "updated_at": ("updated_at", "updated", "date"),
    "intent": ("intent",),
}


class SkipFile(Exception):
    """This file cannot become documents; the message says why."""


DRAFT = "a draft (`draft: true` in its front matter): not served until it is written and the flag removed"


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    sanitised: dict[str, int] = field(default_factory=dict)

    def skip(self, item: str, reason: str) -> None:
        self.skipped.append(Skipped(item=item, reason=reason))

    def count(self, what: str, n: int = 1) -> None:
        if n:
            self.sanitised[what] = self.sanitised.get(what, 0) + n


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "document"


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SkipFile(f"not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); re-save it as UTF-8") from error


def _modified(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)


def _pick(keyed: dict[str, Any], name: str) -> Any:
    """The first of `name`'s aliases with a value, in a record whose keys went through `header_key`."""
    return next((keyed[alias] for alias in FIELD_ALIASES[name] if keyed.get(alias) not in (None, "")), None)


def _faq_documents(records: list[dict[str, Any]], path: Path, source: str, result: LoadResult) -> list[Document]:
    documents = []
    for number, raw in enumerate(records, start=1):
        record = {header_key(str(key)): value for key, value in raw.items()}  # once a record, for all its fields
        title, body = _pick(record, "title"), _pick(record, "body")
        if not str(title or "").strip() or not str(body or "").strip():
            result.skip(f"{path}:{number}", "empty question or answer")
            continue
        try:
            documents.append(
                Document(
                    id=str(_pick(record, "id") or f"{slug(path.stem)}-{number}"),
                    title=str(title).strip(),
                    body=str(body).strip(),
                    source=source,
                    url=str(_pick(record, "url") or ""),
                    updated_at=_pick(record, "updated_at") or _modified(path),
                    intent=_pick(record, "intent"),
                )
            )
        except ValidationError as error:
            result.skip(f"{path}:{number}", f"unusable record: {error.errors()[0]['msg']}")
    return documents


def load_faq(path: Path, text: str, source: str, result: LoadResult) -> list[Document]:
    if path.suffix.lower() == ".csv":
        header = text.splitlines()[0] if text.strip() else ""
        reader = csv.DictReader(io.StringIO(text), delimiter=csv_delimiter(str(path), header))
        columns = {header_key(c) for c in reader.fieldnames or []}
        if not columns & set(FIELD_ALIASES["title"]) or not columns & set(FIELD_ALIASES["body"]):
            raise SkipFile(f"an FAQ CSV needs a question and an answer column; it has {sorted(columns)}")
        return _faq_documents(list(reader), path, source, result)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SkipFile(f"not valid JSON: {error}") from error
    records = data.get("faqs", data.get("items")) if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SkipFile('an FAQ JSON file is a list of {"question", "answer"} objects (or {"faqs": [...]})')
    return _faq_documents(records, path, source, result)


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", text, flags=re.DOTALL)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as error:
        raise SkipFile(f"the front matter is not valid YAML: {error}") from error
    if not isinstance(meta, dict):
        raise SkipFile("the front matter must be a YAML mapping")
    return meta, text[match.end() :]


def markdown_to_text(markdown: str) -> tuple[str, str | None]:
    """Plain text from Markdown, and its first level-1 heading (a title when the front matter has none)."""
    markdown = re.sub(r"<!--.*?-->", "", markdown, flags=re.DOTALL)  # a writer's notes: Markdown never shows them
    heading = re.search(r"^#\s+(.+)$", markdown, flags=re.MULTILINE)
    text = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    text = re.sub(r"^#\s+.+$", "", text, count=1, flags=re.MULTILINE) if heading else text
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^\s{0,3}#{1,6}\s*", "", text, flags=re.MULTILINE)
    text = re.sub(r"^\s*(?:[-*+]|\d+\.)\s+", "", text, flags=re.MULTILINE)
    text = re.sub(r"(\*\*|__|\*|_|`)(\S(?:.*?\S)?)\1", r"\2", text)
    text = re.sub(r"<[^>]+>", "", text)
    return text.strip(), heading.group(1).strip() if heading else None


def load_markdown(path: Path, text: str, source: str, result: LoadResult) -> list[Document]:
    meta, markdown = split_front_matter(text)
    if meta.get("draft") is True:  # `supportflow init` writes one per intent; a person finishes it before it serves
        raise SkipFile(DRAFT)
    body, heading = markdown_to_text(markdown)
    return [
        Document(
            id=str(meta.get("id") or slug(path.stem)),
            title=str(meta.get("title") or heading or path.stem.replace("_", " ")),
            body=body,
            source=source,
            url=str(meta.get("url") or ""),
            updated_at=meta.get("updated_at") or _modified(path),
            intent=meta.get("intent"),
        )
    ]


class _TextOfHtml(HTMLParser):
    """Visible text only: scripts, styles and other non-content elements are dropped with everything inside them."""

    HIDDEN = frozenset({"script", "style", "noscript", "template", "iframe", "object", "svg", "head"})
    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "table", "ul", "ol"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: str | None = None
        self.scripts = 0
        self._hidden = 0
        self._in_title = False
        self._in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.HIDDEN:
            self._hidden += 1
            self.scripts += tag == "script"
        elif tag == "h1":
            self._in_h1 = True
        if tag in self.BLOCKS:
            self.parts.append("\n\n")
        if any(name.startswith("on") for name, _ in attrs):
            self.scripts += 1  # inline event handlers are scripts too; attributes never reach the text

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag == "h1":
            self._in_h1 = False
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = (self.title or "") + data.strip()
        elif not self._hidden:
            if self._in_h1 and self.title is None:
                self.title = data.strip()
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str | None, int]:
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    text = re.sub(r"[ \t\r\f\v]+", " ", "".join(parser.parts))
    text = re.sub(r"\n\s*\n(\s*\n)*", "\n\n", text)
    return text.strip(), parser.title, parser.scripts


def load_html(path: Path, text: str, source: str, result: LoadResult) -> list[Document]:
    body, title, scripts = html_to_text(text)
    result.count("html_scripts_removed", scripts)
    return [Document(id=slug(path.stem), title=title or path.stem, body=body, source=source, updated_at=_modified(path))]


def load_pdf(path: Path, data: bytes, source: str) -> list[Document]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata and reader.metadata.title else None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as error:
        raise SkipFile(f"the PDF cannot be parsed ({type(error).__name__}: {error})") from error
    body = "\n\n".join(page.strip() for page in pages if page.strip())
    if not body:
        raise SkipFile("the PDF has no extractable text (a scan? run OCR first)")
    return [
        Document(id=slug(path.stem), title=str(title or path.stem.replace("_", " ")), body=body, source=source, updated_at=_modified(path))
    ]


def load_text(path: Path, text: str, source: str) -> list[Document]:
    lines = text.strip().splitlines()
    title = lines[0].strip() if lines else path.stem
    return [Document(id=slug(path.stem), title=title, body="\n".join(lines[1:]).strip(), source=source, updated_at=_modified(path))]


def load_file(path: Path, source: str, max_bytes: int, result: LoadResult) -> list[Document]:
    """One file to documents; raises SkipFile with the reason when it cannot be used."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SkipFile(f"unsupported file type {path.suffix or '(none)'}; supported: {', '.join(sorted(SUFFIXES))}")
    size = path.stat().st_size
    if size == 0:
        raise SkipFile("the file is empty")
    if size > max_bytes:
        raise SkipFile(
            f"the file is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit (SUPPORTFLOW_KB_MAX_FILE_MB); split it"
        )
    data = path.read_bytes()
    if kind == "pdf":
        return load_pdf(path, data, source)
    text = _decode(data)
    if not text.strip():
        raise SkipFile("the file has only whitespace")
    if kind == "faq":
        return load_faq(path, text, source, result)
    if kind == "markdown":
        return load_markdown(path, text, source, result)
    if kind == "html":
        return load_html(path, text, source, result)
    return load_text(path, text, source)


def _files(root: Path) -> Iterable[tuple[Path, str]]:
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            yield path, f"{root.name}/{path.relative_to(root).as_posix()}"
    else:
        yield root, root.name


def load_sources(paths: Iterable[str | Path], max_bytes: int) -> LoadResult:
    """Every file under the given files and folders; bad files, empty documents and repeated ids are skipped with a reason."""
    result = LoadResult()
    seen: dict[str, str] = {}
    for root in map(Path, paths):
        if not root.exists():
            result.skip(str(root), "no such file or folder")
            continue
        for path, source in _files(root):
            try:
                documents = load_file(path, source, max_bytes, result)
            except SkipFile as error:
                result.skip(str(path), str(error))
                continue
            except ValidationError as error:
                result.skip(str(path), f"unusable metadata: {error.errors()[0]['loc']} {error.errors()[0]['msg']}")
                continue
            for document in documents:
                if not document.body.strip() or not document.title.strip():
                    result.skip(f"{path} ({document.id})", "the document has no text")
                elif document.id in seen:
                    result.skip(
                        f"{path} ({document.id})", f"duplicate id {document.id!r}, first seen in {seen[document.id]}; ids must be unique"
                    )
                else:
                    seen[document.id] = source
                    result.documents.append(document)
    return result
