"""The keyword-index contract: every backend must pass these, tantivy always, Elasticsearch when SUPPORTFLOW_ES_URL is set;
then what only Elasticsearch does: the build's vectors in the index, hybrid BM25 + kNN in one request, and a build
served from the cluster alone."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supportflow.errors import KnowledgeBaseError
from supportflow.kb.build import build_knowledge_base, open_knowledge_base
from supportflow.kb.documents import Passage
from supportflow.kb.elasticsearch_index import DIMENSIONS, ElasticsearchIndex
from supportflow.kb.index import KeywordIndex
from supportflow.settings import Settings

DEMO_KB = Path(__file__).resolve().parents[2] / "examples" / "banking77" / "kb"


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
    # Elasticsearch keeps the index the alias left until the next promote: replicas still on b1 finish their questions
    # there until their next check moves them; a tantivy bot keeps the files it opened, so b1's go at once.
    kept = isinstance(keyword_index, ElasticsearchIndex)
    assert keyword_index.versions() == (["b1", "b2"] if kept else ["b2"])
    assert keyword_index.search("exchange", 10)[0].passage_id == "fees#0"
    keyword_index.create("b3", PASSAGES[:1])
    keyword_index.promote("b3")
    assert keyword_index.versions() == (["b2", "b3"] if kept else ["b3"])


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


def test_elasticsearch_returns_each_hit_with_its_bm25_score_and_vectors(elasticsearch_index: ElasticsearchIndex) -> None:
    passage_vectors, title_vectors = unit_vectors(3, 5), unit_vectors(3, 6)
    elasticsearch_index.create("b1", PASSAGES, (passage_vectors, title_vectors))
    hits = {hit.passage_id: hit for hit in elasticsearch_index.vector_search("exchanging", passage_vectors[0], 3, "b1")}
    assert set(hits) == {"arrival#0", "pin#0", "fees#0"}  # three passages, every one within kNN's reach
    assert hits["fees#0"].bm25 > 0 and hits["arrival#0"].bm25 == hits["pin#0"].bm25 == 0.0  # only "exchanging" matched words
    assert np.allclose(hits["arrival#0"].passage_vector, passage_vectors[0], atol=1e-6)
    assert np.allclose(hits["pin#0"].title_vector, title_vectors[1], atol=1e-6)
    assert np.linalg.norm(hits["pin#0"].article_vector) == pytest.approx(1.0, abs=1e-5)
    assert [p.id for p in elasticsearch_index.passages("b1")] == [p.id for p in PASSAGES]


def test_an_elasticsearch_build_serves_from_the_cluster_with_no_build_folder(kb_settings: Settings, tmp_path: Path) -> None:
    """The build writes the vectors and the manifest into the index before the swap; a replica with an empty disk
    opens it and answers each question with one hybrid request, against the threshold the build calibrated."""
    url = os.environ.get("SUPPORTFLOW_ES_URL")
    if not url:
        pytest.skip("an Elasticsearch build needs a server: set SUPPORTFLOW_ES_URL (none can be installed here)")
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in ("card_arrival", "change_pin", "passcode_forgotten", "age_limit", "terminate_account", "exchange_rate"):
        shutil.copy(DEMO_KB / f"{name}.md", sources)
    on_elasticsearch = {"search_backend": "elasticsearch", "es_url": url, "kb_index_name": f"supportflow-build-{os.getpid()}"}
    settings = kb_settings.model_copy(update=on_elasticsearch | {"kb_sources": [sources]})
    index = ElasticsearchIndex(url, settings.kb_index_name)
    try:
        labelled = pd.read_csv(DEMO_KB.parent / "data" / "test.csv").rename(columns={"category": "intent"})
        report = build_knowledge_base(settings, labelled=labelled)  # smoked and calibrated through the cluster, as it serves
        assert index.serving() == report.build_id and report.smoke and report.smoke.hit_rate == 1.0
        assert report.calibration and report.calibration.source == "labelled tickets" and report.calibration.questions > 0
        assert not list(settings.kb_dir.rglob("*.npy"))  # the vectors went into the index, not the build's folder
        shutil.rmtree(settings.kb_dir)  # a replica on another machine: nothing of the build on its disk

        kb = open_knowledge_base(settings)

        assert kb.manifest.build_id == report.build_id
        assert kb.threshold == report.calibration.threshold
        reply = kb.reply("I ordered my card two weeks ago and it still hasn't come")
        assert reply.answers[0].doc_id == "card_arrival" and reply.answers[0].score > reply.answers[1].score
        assert "card_arrival" in {p.doc_id for p in kb.retriever.passages}
        assert not settings.kb_dir.exists()
    finally:
        for version in index.versions():
            index.discard(version)
