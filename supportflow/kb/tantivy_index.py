"""The default keyword index: tantivy, embedded, on disk; nothing to run beside the bot.

Each build is its own folder `<name>-<build_id>/`; a small pointer file names the one being
served and is replaced atomically (a rename), which is this backend's alias swap.

A discarded build is first renamed out of the build namespace, then deleted: tantivy's own threads
can still be finishing with its files, and a deletion that races them must not leave a build that
looks alive. Whatever a deletion leaves behind is swept up on the next discard.
"""

import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import tantivy

from supportflow.errors import KnowledgeBaseError
from supportflow.kb.documents import Passage
from supportflow.kb.index import TITLE_BOOST, KeywordHit

WRITER_HEAP_BYTES = 50_000_000


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    builder.add_text_field("title", tokenizer_name="en_stem")
    builder.add_text_field("body", tokenizer_name="en_stem")
    return builder.build()


def plain_query(text: str) -> str:
    """Words only: the customer's text must never be read as query syntax (quotes, colons, AND)."""
    return " ".join(re.findall(r"\w+", text.lower()))


class TantivyIndex:
    def __init__(self, root: Path, name: str = "kb") -> None:
        self.root = root
        self.name = name
        self._open: dict[str, tantivy.Index] = {}

    def _folder(self, build_id: str) -> Path:
        return self.root / f"{self.name}-{build_id}"

    @property
    def _pointer(self) -> Path:
        return self.root / f"{self.name}.serving"

    def create(self, build_id: str, passages: Sequence[Passage]) -> None:
        folder = self._folder(build_id)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        index = tantivy.Index(_schema(), path=str(folder))
        writer = index.writer(WRITER_HEAP_BYTES, 1)
        for passage in passages:
            writer.add_document(tantivy.Document(id=passage.id, title=passage.title, body=passage.body))
        writer.commit()
        writer.wait_merging_threads()

    def _index(self, build_id: str) -> tantivy.Index:
        if build_id not in self._open:
            folder = self._folder(build_id)
            if not folder.exists():
                raise KnowledgeBaseError(f"the knowledge-base index {folder} does not exist; run `supportflow kb-index` to build it")
            self._open[build_id] = tantivy.Index.open(str(folder))
        return self._open[build_id]

    def search(self, query: str, limit: int, build_id: str | None = None) -> list[KeywordHit]:
        build_id = build_id or self.serving()
        if build_id is None:
            raise KnowledgeBaseError(f"no knowledge-base index is served under {self.root}; run `supportflow kb-index` first")
        words = plain_query(query)
        if not words:
            return []
        index = self._index(build_id)
        parsed, _ = index.parse_query_lenient(words, ["title", "body"], field_boosts={"title": TITLE_BOOST, "body": 1.0})
        searcher = index.searcher()
        return [
            KeywordHit(passage_id=searcher.doc(address)["id"][0], score=score) for score, address in searcher.search(parsed, limit).hits
        ]

    def promote(self, build_id: str) -> None:
        if not self._folder(build_id).exists():
            raise KnowledgeBaseError(f"cannot serve build {build_id}: {self._folder(build_id)} does not exist")
        temporary = self._pointer.with_suffix(f".tmp-{os.getpid()}")
        temporary.write_text(build_id)
        temporary.replace(self._pointer)
        for old in self.versions():
            if old != build_id:
                self.discard(old)

    def discard(self, build_id: str) -> None:
        self._open.pop(build_id, None)
        folder = self._folder(build_id)
        doomed = self.root / f".discarded-{folder.name}-{uuid.uuid4().hex[:8]}"
        try:
            folder.rename(doomed)
        except FileNotFoundError:
            return
        except OSError as error:
            raise KnowledgeBaseError(f"cannot discard knowledge-base build {build_id} at {folder}: {error}") from error
        self._sweep()

    def _sweep(self) -> None:
        """Delete renamed-away builds; one a deletion could not finish is retried next time."""
        for doomed in self.root.glob(f".discarded-{self.name}-*"):
            shutil.rmtree(doomed, ignore_errors=True)

    def serving(self) -> str | None:
        return self._pointer.read_text().strip() if self._pointer.exists() else None

    def versions(self) -> list[str]:
        prefix = f"{self.name}-"
        if not self.root.exists():
            return []
        return sorted(p.name[len(prefix) :] for p in self.root.iterdir() if p.is_dir() and p.name.startswith(prefix))
