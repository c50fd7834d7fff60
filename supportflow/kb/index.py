"""The keyword-search interface the knowledge base builds on, whatever engine serves it.

A build never touches what the bot is using: it creates a new versioned index, is smoke-queried
there, and only then does `promote` point the serving name at it in one atomic step and drop the
older versions. A build that dies part-way is discarded, and the previous version keeps serving.
"""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from supportflow.kb.documents import Passage

TITLE_BOOST = 2.0  # a query matching an article's title says more than one matching a word in its body


class KeywordHit(BaseModel):
    passage_id: str
    score: float


@runtime_checkable
class KeywordIndex(Protocol):
    """BM25 over title and body, versioned by build id, served under one name."""

    name: str

    def create(self, build_id: str, passages: Sequence[Passage]) -> None:
        """Index the passages as a new version; the serving version is untouched."""

    def search(self, query: str, limit: int, build_id: str | None = None) -> list[KeywordHit]:
        """BM25 hits, best first, from the serving version (or a given build, for smoke queries)."""

    def promote(self, build_id: str) -> None:
        """Serve this build, atomically, then remove the versions no bot can still be answering from: tantivy every
        other (a bot keeps the files it opened), Elasticsearch all but the one it replaced (a replica's questions go to
        the cluster until its next check moves it to the new build)."""

    def discard(self, build_id: str) -> None:
        """Remove a build that will not be served (a failed one)."""

    def serving(self) -> str | None:
        """The build id being served, or None before the first build: what a running bot checks to follow promotions."""

    def versions(self) -> list[str]:
        """Every build id that exists, served or not."""
