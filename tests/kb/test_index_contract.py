"""The keyword-index contract: every backend must pass these, tantivy always, Elasticsearch when SUPPORTFLOW_ES_URL is set;
then what only Elasticsearch does: the build's vectors in the index, and hybrid BM25 + kNN in one request."""

import os
from collections.abc import Iterator

import numpy as np
import pytest

from supportflow.errors import KnowledgeBaseError
from supportflow.kb.documents import Passage
from supportflow.kb.elasticsearch_index import DIMENSIONS, ElasticsearchIndex
from supportflow.kb.index import KeywordIndex
from supportflow.settings import Settings


def passage(pid: str, title: str, body: str) -> Passage:
    return Passage(id=f"{pid}#0", doc_id=pid, title=title, body=body, source="test")


PASSAGES = [
    passage("arrival", "My card has not arrived", "Cards are delivered within five business days."),
    passage("pin", "Change your PIN", "You can change the PIN at an ATM. Your card arrives with a PIN letter."),
    passage("fees", "Exchange fees", "Exchanging currencies is free on weekdays."),
]


def test_bm25_finds_by_title_and_body_with_english_stemming(keyword_index: KeywordIndex) -> None:
    keyword_index.create("b1", PASSAGES)
    keyword_index.promote("b1")
    hits = keyword_index.search("when will my cards arrive", 10)
    assert hits[0].passage_id == "arrival#0"  # title match ("card", "arrived") outranks the PIN body's "card arrives"
    assert {h.passage_id for h in hits} == {"arrival#0", "pin#0"}
    assert hits[0].score > hits[1].score > 0
    assert keyword_index.search("exchanging", 10)[0].passage_id == "fees#0"  # stems match: exchanging ~ exchange


def test_query_syntax_in_customer_text_is_harmless(keyword_index: KeywordIndex) -> None:
    keyword_index.create("b1", PASSAGES)
    keyword_index.promote("b1")
    hits = keyword_index.search('what\'s "PIN" AND (title:change OR -fees)?', 10)
    assert hits and hits[0].passage_id == "pin#0"
    assert keyword_index.search("?!", 10) == []


def test_promote_swaps_serving_build_and_removes_old_ones(keyword_index: KeywordIndex) -> None:
    assert keyword_index.serving() is None
    keyword_index.create("b1", PASSAGES[:1])
    keyword_index.promote("b1")
    keyword_index.create("b2", PASSAGES)
    # b2 exists but b1 still serves until the swap
    assert keyword_index.serving() == "b1"
    assert keyword_index.search("exchange", 10) == []
    assert keyword_index.search("exchange", 10, build_id="b2")[0].passage_id == "fees#0"
    keyword_index.promote("b2")
    assert keyword_index.serving() == "b2"
    assert keyword_index.versions() == ["b2"]
    assert keyword_index.search("exchange", 10)[0].passage_id == "fees#0"


def test_discarded_build_leaves_serving_build_alone(keyword_index: KeywordIndex) -> None:
    keyword_index.create("b1", PASSAGES)
    keyword_index.promote("b1")
    keyword_index.create("b2", PASSAGES[:1])
    keyword_index.discard("b2")
    assert keyword_index.versions() == ["b1"]
    assert keyword_index.serving() == "b1"
    assert keyword_index.search("exchange", 10)[0].passage_id == "fees#0"


def test_searching_before_any_build_is_a_clear_error(keyword_index: KeywordIndex) -> None:
    with pytest.raises(KnowledgeBaseError):
        keyword_index.search("card", 10)


def test_elasticsearch_misconfigured_or_down_is_a_clear_error(kb_settings: Settings) -> None:
    from supportflow.kb.build import keyword_index

    with pytest.raises(KnowledgeBaseError, match="needs SUPPORTFLOW_ES_URL"):
        keyword_index(kb_settings.model_copy(update={"search_backend": "elasticsearch", "es_url": None}))
    down = kb_settings.model_copy(update={"search_backend": "elasticsearch", "es_url": "http://127.0.0.1:9"})  # nothing listens on port 9
    with pytest.raises(KnowledgeBaseError, match=r"Elasticsearch at http://127\.0\.0\.1:9: ConnectionError"):
        keyword_index(down)


@pytest.fixture
def elasticsearch_index() -> Iterator[ElasticsearchIndex]:
    url = os.environ.get("SUPPORTFLOW_ES_URL")
    if not url:
        pytest.skip("the vectors in Elasticsearch need a server: set SUPPORTFLOW_ES_URL (none can be installed here)")
    index = ElasticsearchIndex(url, name=f"supportflow-vectors-{os.getpid()}")
    yield index
    for version in index.versions():
        index.discard(version)


def unit_vectors(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, DIMENSIONS)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_elasticsearch_keeps_a_builds_vectors_and_serves_them_after_the_alias_swap(elasticsearch_index: ElasticsearchIndex) -> None:
    passage_vectors, title_vectors = unit_vectors(3, 1), unit_vectors(3, 2)
    elasticsearch_index.create("b1", PASSAGES[:1], (passage_vectors[:1], title_vectors[:1]))
    elasticsearch_index.promote("b1")
    elasticsearch_index.create("b2", PASSAGES, (passage_vectors, title_vectors))
    assert [p.id for p in elasticsearch_index.stored()[0]] == ["arrival#0"]  # b1 serves until the swap
    elasticsearch_index.promote("b2")
    passages, stored_passages, stored_titles = elasticsearch_index.stored()
    assert passages == PASSAGES  # in the build's order, which the vectors' rows follow
    assert np.allclose(stored_passages, passage_vectors, atol=1e-6) and np.allclose(stored_titles, title_vectors, atol=1e-6)
    with pytest.raises(KnowledgeBaseError, match="do not fit"):
        elasticsearch_index.create("b3", PASSAGES, (passage_vectors[:2], title_vectors))


def test_elasticsearch_answers_bm25_and_knn_in_one_hybrid_request(elasticsearch_index: ElasticsearchIndex) -> None:
    passage_vectors = unit_vectors(3, 3)
    elasticsearch_index.create("b1", PASSAGES, (passage_vectors, unit_vectors(3, 4)))
    elasticsearch_index.promote("b1")
    by_vector = elasticsearch_index.hybrid_search("", passage_vectors[2], 1)
    assert [hit.passage_id for hit in by_vector] == ["fees#0"]  # kNN alone: the passage whose vector it is
    both = elasticsearch_index.hybrid_search("when will my cards arrive", passage_vectors[2], 3, keyword_boost=1.0, vector_boost=1.0)
    assert {"arrival#0", "fees#0"} <= {hit.passage_id for hit in both}  # one by its words, one by its vector
