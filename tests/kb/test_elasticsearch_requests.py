"""What the Elasticsearch backend sends, checked without a server: the index mapping with its vectors, the one
request a hybrid search makes, and the documents a build stores (tests/kb/test_index_contract.py runs them against
a real cluster when SUPPORTFLOW_ES_URL is set)."""

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from supportflow.errors import KnowledgeBaseError
from supportflow.kb.documents import Passage
from supportflow.kb.elasticsearch_index import DIMENSIONS, PASSAGE_FIELDS, hybrid_body, index_mappings, keyword_query, passage_document
from supportflow.kb.embeddings import Embedder
from supportflow.kb.index import TITLE_BOOST


def test_the_mapping_indexes_both_vectors_for_knn_beside_the_bm25_fields() -> None:
    properties = index_mappings()["properties"]
    for field in ("passage_vector", "title_vector"):
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
