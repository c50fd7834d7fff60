"""What the Elasticsearch backend sends and how it reads the answers, checked without a server: the index mapping with
its vectors, the one request a served question makes, the hits it maps a response to, the documents a build stores,
and that ranking those hits follows the same rules as ranking the build in memory (tests/kb/test_index_contract.py
runs against a real cluster when SUPPORTFLOW_ES_URL is set)."""

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from supportflow.errors import KnowledgeBaseError
from supportflow.kb.build import holds_vectors
from supportflow.kb.documents import Passage
from supportflow.kb.elasticsearch_index import (
    BM25_QUERY,
    DIMENSIONS,
    PASSAGE_FIELDS,
    VECTOR_FIELDS,
    ElasticsearchIndex,
    hybrid_body,
    index_mappings,
    index_settings,
    keyword_query,
    passage_document,
    served_body,
    vector_hits,
)
from supportflow.kb.embeddings import Embedder
from supportflow.kb.index import TITLE_BOOST
from supportflow.kb.retrieval import PRESETS, IndexedRetriever, Retriever, VectorHit, article_keys, article_vectors
from supportflow.kb.tantivy_index import TantivyIndex


def test_the_mapping_indexes_both_vectors_for_knn_beside_the_bm25_fields() -> None:
    properties = index_mappings()["properties"]
    for field in VECTOR_FIELDS:
        assert properties[field] == {"type": "dense_vector", "dims": Embedder.dimensions, "index": True, "similarity": "dot_product"}
    assert Embedder.dimensions == DIMENSIONS  # the embedder's unit vectors: dot product is their cosine
    assert properties["title"] == properties["body"] == {"type": "text", "analyzer": "english"}
    assert set(PASSAGE_FIELDS) <= set(properties) and properties["position"]["type"] == "integer"
    assert index_mappings(8)["properties"]["passage_vector"]["dims"] == 8


def test_a_hybrid_search_is_one_request_with_bm25_and_knn() -> None:
    vector = np.linspace(-1, 1, DIMENSIONS, dtype=np.float32)
    body = hybrid_body("when will my card arrive", vector, limit=5, candidates=50, keyword_boost=0.2, vector_boost=0.8)
    assert json.loads(json.dumps(body)) == body  # what the client sends as JSON, numpy's floats included
    assert body["size"] == 5 and body["_source"] == ["id"]
    assert body["query"] == {"bool": {"should": [keyword_query("when will my card arrive")], "boost": 0.2}}
    assert keyword_query("x")["multi_match"]["fields"] == [f"title^{TITLE_BOOST}", "body"]  # the keyword search's own query
    knn = body["knn"]
    assert (knn["field"], knn["k"], knn["num_candidates"], knn["boost"]) == ("passage_vector", 5, 50, 0.8)
    assert knn["query_vector"] == pytest.approx(vector.tolist())


@pytest.mark.parametrize(
    ("vector", "limit", "candidates", "reason"),
    [
        ([], 5, 50, "finite query vector"),
        ([0.1, float("nan")], 5, 50, "finite query vector"),
        ([0.1, 0.2], 0, 50, "limit"),
        ([0.1, 0.2], 60, 50, "limit"),
    ],
)
def test_a_hybrid_search_refuses_a_bad_vector_or_sizes(vector: list[float], limit: int, candidates: int, reason: str) -> None:
    with pytest.raises(KnowledgeBaseError, match=reason):
        hybrid_body("card", vector, limit=limit, candidates=candidates)


def test_a_stored_passage_is_the_passage_with_its_vectors() -> None:
    passage = Passage(
        id="pin#0",
        doc_id="pin",
        title="Change your PIN",
        body="At an ATM.",
        source="kb/pin.md",
        url="https://help.example/pin",
        updated_at=datetime(2026, 1, 2, tzinfo=UTC),
        intent="change_pin",
    )
    passage_vector, title_vector = np.full(DIMENSIONS, 0.5, dtype=np.float32), np.full(DIMENSIONS, -0.25, dtype=np.float32)
    document = passage_document(passage, 3, passage_vector, title_vector)
    assert json.loads(json.dumps(document)) == document
    assert Passage.model_validate({key: value for key, value in document.items() if key in Passage.model_fields}) == passage
    assert (
        document["position"] == 3 and document["passage_vector"] == [0.5] * DIMENSIONS and document["title_vector"] == [-0.25] * DIMENSIONS
    )
    assert "passage_vector" not in passage_document(passage, 3, None, None)  # a BM25-only build


def test_a_new_index_keeps_its_vectors_in_source_where_the_cluster_would_drop_them() -> None:
    assert index_settings((9, 2)) == index_settings((10, 0)) == {"number_of_shards": 1, "index.mapping.exclude_source_vectors": False}
    assert index_settings((8, 15)) == index_settings((9, 1)) == {"number_of_shards": 1}  # a setting they do not know


def test_a_served_question_is_one_request_bm25_named_and_knn_over_each_vector() -> None:
    vector = np.linspace(-1, 1, DIMENSIONS, dtype=np.float32)
    body = served_body("when will my card arrive", vector, candidates=20)
    assert json.loads(json.dumps(body)) == body
    (keyword,) = body["query"]["bool"]["should"]
    assert keyword["multi_match"] == keyword_query("when will my card arrive")["multi_match"] | {"_name": BM25_QUERY}
    assert [(knn["field"], knn["k"], knn["num_candidates"]) for knn in body["knn"]] == [(field, 20, 100) for field in VECTOR_FIELDS]
    assert all(knn["query_vector"] == pytest.approx(vector.tolist()) for knn in body["knn"])
    assert body["size"] == 80  # room for every passage the four searches find, however little they overlap
    assert body["_source"] == ["id", *VECTOR_FIELDS]  # the vectors come back; the texts are in the replica's memory
    with pytest.raises(KnowledgeBaseError, match="finite query vector"):
        served_body("card", [float("inf")], candidates=20)
    with pytest.raises(KnowledgeBaseError, match="at least one candidate"):
        served_body("card", vector, candidates=0)


def hit_source(pid: str, value: float) -> dict:
    return {"id": pid} | {field: [value] * 4 for field in VECTOR_FIELDS}


def test_a_response_maps_to_hits_with_their_bm25_score_and_vectors() -> None:
    response = {  # the shape Elasticsearch 8.8+ answers with include_named_queries_score=true
        "hits": {
            "total": {"value": 2, "relation": "eq"},
            "hits": [
                {"_index": "kb-b1", "_id": "a#0", "_score": 3.1, "_source": hit_source("a#0", 0.5), "matched_queries": {"bm25": 2.4}},
                {"_index": "kb-b1", "_id": "b#0", "_score": 0.9, "_source": hit_source("b#0", -0.5)},  # found by kNN alone
            ],
        }
    }
    first, second = vector_hits(response)
    assert (first.passage_id, first.bm25, second.passage_id, second.bm25) == ("a#0", 2.4, "b#0", 0.0)
    assert first.passage_vector.dtype == np.float32 and first.article_vector.tolist() == [0.5] * 4
    assert second.title_vector.tolist() == [-0.5] * 4
    as_list = {"hits": {"hits": [{"_source": hit_source("a#0", 0.5), "matched_queries": ["bm25"]}]}}  # an older cluster
    with pytest.raises(KnowledgeBaseError, match=r"8\.8 or later"):
        vector_hits(as_list)
    bm25_only = {"hits": {"hits": [{"_source": {"id": "a#0"}, "matched_queries": {"bm25": 1.0}}]}}
    with pytest.raises(KnowledgeBaseError, match="indexed without its vectors"):
        vector_hits(bm25_only)


PASSAGES = [
    Passage(id=f"{doc}#{n}", doc_id=doc, title=title, body=body, source="test")
    for doc, n, title, body in [
        ("arrival", 0, "My card has not arrived", "Cards are delivered within five business days."),
        ("arrival", 1, "My card has not arrived", "If it is late, order a new card in the app."),
        ("pin", 0, "Change your PIN", "You can change the PIN at an ATM. Your card arrives with a PIN letter."),
        ("fees", 0, "Exchange fees", "Exchanging currencies is free on weekdays."),
        ("fees", 1, "Exchange fees", "At weekends a small fee applies to every exchange."),
        ("limits", 0, "Card limits", "Your daily card limit is shown in the app."),
    ]
]


def unit_rows(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, DIMENSIONS)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class QueryEmbedder:
    """Embeds every question as one fixed unit vector: the ranking, not the model, is under test."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def embed_query(self, text: str) -> np.ndarray:
        return self.vector


class ReturnedByIndex:
    """What a cluster holding the build would send back, computed here: the given passages with their vectors as
    `ElasticsearchIndex.create` stores them and BM25 scores from tantivy (each engine's BM25 is its own)."""

    def __init__(self, bm25: TantivyIndex, passage_vectors: np.ndarray, title_vectors: np.ndarray, returned: list[int]) -> None:
        articles = article_keys(PASSAGES)
        self.bm25, self.returned = bm25, returned
        self.vectors = (passage_vectors, title_vectors[articles], article_vectors(passage_vectors, articles)[articles])
        self.requests: list[tuple[str, str]] = []

    def vector_search(self, query: str, vector: np.ndarray, candidates: int, build_id: str) -> list[VectorHit]:
        self.requests.append((query, build_id))
        scores = {hit.passage_id: hit.score for hit in self.bm25.search(query, candidates, build_id=build_id)}
        hits = [VectorHit(PASSAGES[i].id, scores.get(PASSAGES[i].id, 0.0), *(v[i] for v in self.vectors)) for i in self.returned]
        return hits[::-1]  # in no particular order: the ranking must not depend on the cluster's


@pytest.fixture
def bm25(tmp_path: Path) -> TantivyIndex:
    index = TantivyIndex(tmp_path / "kb", name="kbtest")
    index.create("b1", PASSAGES)
    return index


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("question", ["when will my card arrive", "exchange fees at the weekend", "pizza"])
def test_hits_from_the_index_rank_and_score_as_the_build_in_memory_does(bm25: TantivyIndex, preset: str, question: str) -> None:
    passage_vectors, title_vectors, query = unit_rows(6, 1), unit_rows(4, 2), unit_rows(1, 3)[0]
    in_memory = Retriever(PASSAGES, passage_vectors, title_vectors, bm25, QueryEmbedder(query), "b1")  # type: ignore[arg-type]
    index = ReturnedByIndex(bm25, passage_vectors, title_vectors, returned=list(range(len(PASSAGES))))
    served = IndexedRetriever(PASSAGES, index, QueryEmbedder(query), "b1")  # type: ignore[arg-type]
    config = PRESETS[preset]
    expected, got = in_memory.scores(question, config), served.scores(question, config)
    assert np.allclose(got[1], expected[1], atol=1e-6)  # the relevance the calibrated threshold is compared with
    assert np.allclose(got[0], expected[0], atol=1e-6)
    answers, expected_answers = served.search(question, config, k=3), in_memory.search(question, config, k=3)
    assert [a.model_copy(update={"score": 0.0}) for a in answers] == [a.model_copy(update={"score": 0.0}) for a in expected_answers]
    assert [a.score for a in answers] == pytest.approx([a.score for a in expected_answers], abs=1e-6)
    assert index.requests == [(question, "b1")] * 2  # one request per question, to the served build


def test_passages_the_index_did_not_return_are_never_answered(bm25: TantivyIndex) -> None:
    passage_vectors, title_vectors, query = unit_rows(6, 1), unit_rows(4, 2), unit_rows(1, 3)[0]
    index = ReturnedByIndex(bm25, passage_vectors, title_vectors, returned=[0, 3])
    served = IndexedRetriever(PASSAGES, index, QueryEmbedder(query), "b1")  # type: ignore[arg-type]
    ranking, relevance = served.scores("when will my card arrive", PRESETS["hybrid"])
    assert np.isfinite(ranking).tolist() == [True, False, False, True, False, False]
    answers = served.search("when will my card arrive", PRESETS["hybrid"], k=5)
    assert sorted(a.passage_id for a in answers) == ["arrival#0", "fees#0"]
    assert {a.passage_id: a.score for a in answers} == pytest.approx({"arrival#0": relevance[0], "fees#0": relevance[3]})
    nothing = IndexedRetriever(PASSAGES, ReturnedByIndex(bm25, passage_vectors, title_vectors, returned=[]), QueryEmbedder(query), "b1")  # type: ignore[arg-type]
    assert nothing.search("anything", PRESETS["hybrid"]) == []  # then the bot escalates


def test_a_hit_from_another_build_is_an_error_not_a_wrong_answer(bm25: TantivyIndex) -> None:
    class Swapped(ReturnedByIndex):
        def vector_search(self, query: str, vector: np.ndarray, candidates: int, build_id: str) -> list[VectorHit]:
            hit = super().vector_search(query, vector, candidates, build_id)[0]
            return [VectorHit("new#0", hit.bm25, hit.passage_vector, hit.title_vector, hit.article_vector)]

    served = IndexedRetriever(PASSAGES, Swapped(bm25, unit_rows(6, 1), unit_rows(4, 2), [0]), QueryEmbedder(unit_rows(1, 3)[0]), "b1")  # type: ignore[arg-type]
    with pytest.raises(KnowledgeBaseError, match="reopen the knowledge base"):
        served.search("card", PRESETS["hybrid"])


def test_only_elasticsearch_keeps_the_vectors_in_the_index(bm25: TantivyIndex) -> None:
    assert not holds_vectors(bm25)  # tantivy: the vectors stay in the build's folder
    assert holds_vectors(ElasticsearchIndex.__new__(ElasticsearchIndex))  # no server to construct one against here


def test_a_stored_passage_carries_its_articles_mean_vector() -> None:
    passage_vectors, title_vectors = unit_rows(6, 1), unit_rows(4, 2)
    articles = article_keys(PASSAGES)
    means = article_vectors(passage_vectors, articles)
    document = passage_document(PASSAGES[4], 4, passage_vectors[4], title_vectors[articles[4]], means[articles[4]])
    assert document["article_vector"] == pytest.approx(means[2].tolist(), rel=0, abs=5e-9) and articles[4] == 2
    assert all(len(repr(value)) <= 11 for value in document["passage_vector"])  # 8 decimals, not a double's 17 digits
    assert np.linalg.norm(document["article_vector"]) == pytest.approx(1.0)
