"""A replica serving an Elasticsearch build with no file of it on disk, through the official client.

No cluster can run here, so a local HTTP server answers the few calls a replica makes (the alias, the mapping's
manifest, a scroll over the passages, one search per question) from documents the test stores as
`ElasticsearchIndex.create` would. It does not rank: its search returns every stored passage with BM25 scores the
test names, as a cluster would for a build this small. What is under test is what the client sends and how the
replica ranks what comes back; tests/kb/test_index_contract.py runs the cluster's side when SUPPORTFLOW_ES_URL is set.
"""

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from supportflow.kb.build import BuildReport, KnowledgeBase, Retriever, embed_passages, open_knowledge_base
from supportflow.kb.elasticsearch_index import VECTOR_FIELDS, passage_document, served_body
from supportflow.kb.embeddings import embedder
from supportflow.kb.index import KeywordHit
from supportflow.kb.retrieval import PRESETS, article_keys, article_vectors
from supportflow.kb.serving import KnowledgeFollower
from supportflow.kb.threshold import Calibration
from supportflow.settings import Settings
from tests.kb.test_index_contract import PASSAGES

BM25 = {"arrival#0": 3.2, "pin#0": 1.1}  # what the cluster's BM25 gives "when will my card arrive", named here


class StoredBuild:
    """Answers a replica's calls for the builds it holds (`kb-b1` at first) and the alias `kb` (on `b1` until a test
    moves it, as a promote does), and records every search it is sent and the index it went to."""

    def __init__(self, documents: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
        self.builds = {"b1": (documents, manifest)}
        self.alias = "b1"
        self.searches: list[tuple[dict[str, list[str]], dict[str, Any]]] = []
        self.searched: list[str] = []
        build = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, payload: dict[str, Any] | None = None) -> None:
                data = json.dumps(payload or {}).encode()
                self.send_response(200)
                self.send_header("X-Elastic-Product", "Elasticsearch")  # the client refuses a server without it
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self) -> None:
                self.reply() if self.path.startswith("/_alias/kb") else self.send_error(404)

            def do_DELETE(self) -> None:
                self.reply({"succeeded": True, "num_freed": 1})  # the scroll cleared

            def do_GET(self) -> None:
                answers = {
                    "/": {"version": {"number": "9.1.0"}, "tagline": "You Know, for Search"},
                    "/_alias/kb": {f"kb-{build.alias}": {"aliases": {"kb": {}}}},
                } | {f"/kb-{b}/_mapping": {f"kb-{b}": {"mappings": {"_meta": {"manifest": m}}}} for b, (_, m) in build.builds.items()}
                path = urlparse(self.path).path
                self.reply(answers[path]) if path in answers else self.send_error(404)

            def do_POST(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                if url.path == "/_search/scroll":
                    self.reply(
                        {"_scroll_id": "s1", "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}, "hits": {"hits": []}}
                    )
                elif (searched := url.path.removeprefix("/kb-").removesuffix("/_search")) in build.builds:
                    self.reply(build.search(searched, parse_qs(url.query), body))
                else:
                    self.send_error(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def search(self, build_id: str, params: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        shards = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
        documents = self.builds[build_id][0]
        if "scroll" in params:  # the replica reading the passages at start, without their vectors
            excluded = set(params["_source_excludes"][0].split(","))
            hits = [{"_id": d["id"], "_source": {k: v for k, v in d.items() if k not in excluded}} for d in documents[::-1]]
            return {"_scroll_id": "s1", "_shards": shards, "hits": {"hits": hits}}
        self.searches.append((params, body))
        self.searched.append(f"kb-{build_id}")
        hits = [
            {"_id": d["id"], "_source": {k: d[k] for k in body["_source"]}}
            | ({"matched_queries": {"bm25": BM25[d["id"]]}} if d["id"] in BM25 else {})
            for d in documents
        ]
        return {"_shards": shards, "hits": {"hits": hits}}


class NamedBM25:
    """The same BM25 scores, as the in-memory path's keyword index would give them."""

    name = "kb"

    def search(self, query: str, limit: int, build_id: str | None = None) -> list[KeywordHit]:
        return [KeywordHit(passage_id=pid, score=score) for pid, score in BM25.items()]


@pytest.fixture
def stored(kb_settings: Settings) -> Iterator[tuple[StoredBuild, np.ndarray, np.ndarray]]:
    passage_vectors, title_vectors = embed_passages(PASSAGES, embedder(kb_settings.kb_model_cache))
    articles = article_keys(PASSAGES)
    means = article_vectors(passage_vectors, articles)
    documents = [
        passage_document(p, i, passage_vectors[i], title_vectors[a], means[a])
        for i, (p, a) in enumerate(zip(PASSAGES, articles, strict=True))
    ]
    calibration = Calibration(threshold=0.3, source="labelled tickets", questions=40)
    manifest = BuildReport(
        build_id="b1",
        created_at=datetime.now(UTC),
        backend="elasticsearch",
        index_name="kb",
        sources=[],
        retrieval="hybrid",
        calibration=calibration,
    )
    build = StoredBuild(documents, manifest.model_dump(mode="json"))
    yield build, passage_vectors, title_vectors
    build.httpd.shutdown()


def test_a_replica_serves_the_build_from_the_index_alone_one_request_a_question(
    kb_settings: Settings, stored: tuple[StoredBuild, np.ndarray, np.ndarray]
) -> None:
    build, passage_vectors, title_vectors = stored
    settings = kb_settings.model_copy(update={"search_backend": "elasticsearch", "es_url": build.url})
    assert not settings.kb_dir.exists()  # no build folder, no vectors on this replica's disk

    kb = open_knowledge_base(settings)
    reply = kb.reply("when will my card arrive")

    assert kb.manifest.build_id == "b1" and kb.threshold == 0.3 and kb.retriever.passages == PASSAGES
    ((params, body),) = build.searches
    assert params["include_named_queries_score"] == ["true"]
    vector = embedder(settings.kb_model_cache).embed_query("when will my card arrive")
    assert body == served_body("when will my card arrive", vector, PRESETS["hybrid"].candidates)
    in_memory = Retriever(PASSAGES, passage_vectors, title_vectors, NamedBM25(), embedder(settings.kb_model_cache), "b1")  # type: ignore[arg-type]
    expected = in_memory.search("when will my card arrive", PRESETS["hybrid"], k=3)
    assert [(a.passage_id, round(a.score, 5)) for a in reply.answers] == [(a.passage_id, round(a.score, 5)) for a in expected]
    assert reply.answers[0].doc_id == "arrival" and not reply.escalate
    assert not settings.kb_dir.exists()
    assert set(VECTOR_FIELDS) <= set(body["_source"])


def test_a_replica_follows_the_alias_to_the_next_build_and_keeps_its_build_when_the_next_cannot_be_opened(
    kb_settings: Settings, stored: tuple[StoredBuild, np.ndarray, np.ndarray]
) -> None:
    """The alias moves (a promote on the cluster): the replica's next check opens the new index from the cluster and
    serves it; a question on the old build still goes to the old index, which the promote keeps. An alias moved to an
    index the replica cannot read (here: no manifest) leaves the build it serves in place."""
    build, _, _ = stored
    documents, manifest = build.builds["b1"]
    calibration = Calibration(threshold=0.4, source="labelled tickets", questions=40)
    build.builds["b2"] = (documents[1:], manifest | {"build_id": "b2", "calibration": calibration.model_dump(mode="json")})
    settings = kb_settings.model_copy(update={"search_backend": "elasticsearch", "es_url": build.url, "kb_refresh_seconds": 0})
    served: list[KnowledgeBase] = []
    follower = KnowledgeFollower(settings, served.append)
    first = follower.open_promoted()
    assert first is not None and first.build_id == "b1" and follower.check() is None

    build.alias = "b2"
    assert follower.check() is not None
    (second,) = served
    assert (second.build_id, second.threshold, len(second.retriever.passages)) == ("b2", 0.4, 2)
    assert second.reply("when will my card arrive").answers[0].doc_id == "pin" and build.searched[-1] == "kb-b2"
    assert first.reply("when will my card arrive").answers[0].doc_id == "arrival" and build.searched[-1] == "kb-b1"

    build.alias = "b3"  # no such index: its mapping is a 404
    assert follower.check() is None and served == [second] and follower.current == "b2"
