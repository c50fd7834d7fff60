"""A running bot follows the knowledge base the `kb_index` flow promotes, without a restart.

The check runs on a background thread, not on a request. Opening a build takes from a fraction of a second
(tantivy: the passages and vectors read from disk) to seconds (Elasticsearch: every passage scrolled from the
cluster); a check made on a request would make that customer wait for it, and would need a lock so that the
requests arriving meanwhile neither wait too nor open the same build again. A thread has neither problem, and
it is what the served classifier already does for its production alias (`release.production.ProductionFollower`).

Every `kb_refresh_seconds` the thread asks the backend which build is served (`KeywordIndex.serving()`: the tantivy
pointer file, the Elasticsearch alias). A new one is opened completely, and asked one question, before anything
changes: the question opens tantivy's files (which the next promote deletes; an open file outlives its deletion)
and proves the cluster answers for the new index. Only then is it handed over, as one reference assignment. A turn
reads that reference once (`SupportBot.answer`), so it finishes on the build it started with and never mixes two.

A build that cannot be opened (its folder gone, a corrupt manifest, the cluster down) leaves the served one in
place. The reason is logged once per build id, not at every check, and the open is tried again at the next
check: a cluster that comes back, or a build whose files are restored, is then served without a restart. A bot
that started before any build was promoted (every question goes to a person) picks up the first one the same way.
"""

import logging
import threading
from collections.abc import Callable

from supportflow.kb.build import KnowledgeBase, keyword_index, open_knowledge_base
from supportflow.kb.index import KeywordIndex
from supportflow.settings import Settings

log = logging.getLogger("supportflow.kb")


class KnowledgeFollower:
    """Opens the build the backend serves whenever it is not the one handed out last, and hands it to `on_change`."""

    def __init__(self, settings: Settings, on_change: Callable[[KnowledgeBase], None], index: KeywordIndex | None = None) -> None:
        self.settings = settings
        self.on_change = on_change
        self.current: str | None = None  # the build handed out last, by `open_promoted` or `check`
        self._index = index  # asked which build is served; each build is opened through an index of its own
        self._reported: str | None = None  # the problem logged last: each is logged once, not at every check
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def _report(self, problem: str, level: int, message: str, *args: object) -> None:
        if problem != self._reported:
            log.log(level, message, *args, extra={"serving": self.current})
            self._reported = problem

    def open_promoted(self) -> KnowledgeBase | None:
        """The promoted build, opened and asked one question, when it is not `current`; None when it is, when no
        build is promoted, or when it cannot be opened (logged once per build, tried again at the next call)."""
        try:
            self._index = self._index or keyword_index(self.settings)
            served = self._index.serving()
        except Exception as error:  # the cluster is down or refuses: keep what is served
            self._report("unreachable", logging.ERROR, "cannot tell which knowledge-base build is served: %s", error)
            return None
        if served is None:
            self._report("none", logging.WARNING, "no knowledge-base build is served as %r", self.settings.kb_index_name)
            return None
        if served == self.current:
            self._reported = None
            return None
        try:
            # A fresh index per build: the keyword index keeps each build it searched open, and the old build's
            # files must go with the old knowledge base, once its last turn is done with it.
            knowledge = open_knowledge_base(self.settings, build_id=served)
            knowledge.search(knowledge.retriever.passages[0].title, k=1)
        except Exception as error:
            self._report(served, logging.ERROR, "knowledge-base build %s cannot be served: %s", served, error)
            return None
        self._reported = None
        self.current = served
        return knowledge

    def check(self) -> KnowledgeBase | None:
        """One check: the new build handed to `on_change` (and returned), or None when nothing changed."""
        previous = self.current
        knowledge = self.open_promoted()
        if knowledge is not None:
            try:
                self.on_change(knowledge)
            except BaseException:
                self.current = previous  # not handed over: the next check opens it again
                raise
            log.info("now serving knowledge-base build %s", knowledge.build_id, extra={"build": knowledge.build_id, "previous": previous})
        return knowledge

    def start(self) -> "KnowledgeFollower":
        """Checks every `kb_refresh_seconds`; with 0 the bot keeps the build it has until it restarts."""
        if self.settings.kb_refresh_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="knowledge-follower", daemon=True)
            self._thread.start()
        return self

    def _follow(self) -> None:
        while not self._stopped.wait(self.settings.kb_refresh_seconds):
            try:
                self.check()
            except Exception:  # `on_change` failed: the next check tries again, the thread lives on
                log.exception("following the knowledge base failed; the served build is unchanged")

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
