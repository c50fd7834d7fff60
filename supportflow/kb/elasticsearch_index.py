"""The keyword index on Elasticsearch, through the official client, for a knowledge base shared by many bots.

Each build is an index `<name>-<build_id>` filled with the bulk helpers; the alias `<name>` is
moved to it in one `update_aliases` call (remove and add together, atomic on the cluster), so a
rebuild never leaves the bot without an index; the index the alias left is kept until the next promote
(replicas still on it finish their questions there), and older ones are deleted.

A build may carry its vectors too (`dense_vector` fields, HNSW-indexed for kNN): each passage's own vector, its
article's title vector and its article's mean vector, beside the passage itself, and the build's manifest (with its
calibrated threshold) in the index's mapping `_meta`. The served knowledge base (`retrieval.IndexedRetriever`) then
asks `vector_search` for BM25 and kNN in one request and ranks what comes back; no replica reads a file of the build.
The request bodies and the reading of responses are plain functions, so they are checked without a server.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from supportflow.errors import KnowledgeBaseError
from supportflow.kb.documents import Passage
from supportflow.kb.index import TITLE_BOOST, KeywordHit
from supportflow.kb.retrieval import VectorHit, article_keys, article_vectors

DIMENSIONS = 384  # all-MiniLM-L6-v2's (supportflow/kb/embeddings.py)
PASSAGE_FIELDS = ("doc_id", "source", "url", "updated_at", "intent")
VECTOR_FIELDS = ("passage_vector", "title_vector", "article_vector")
BM25_QUERY = "bm25"  # the keyword clause's name, under which each hit reports its BM25 score


def index_mappings(dimensions: int = DIMENSIONS) -> dict[str, Any]:
    """BM25 text fields, the passage as stored, and the two vectors; unit vectors, so `dot_product` is the cosine."""
    vector = {"type": "dense_vector", "dims": dimensions, "index": True, "similarity": "dot_product"}
    return {
        "properties": {
            "id": {"type": "keyword"},
            "position": {"type": "integer"},  # the passage's place in the build, which the vectors' rows follow
            "title": {"type": "text", "analyzer": "english"},
            "body": {"type": "text", "analyzer": "english"},
            "doc_id": {"type": "keyword"},
            "source": {"type": "keyword", "index": False},
            "url": {"type": "keyword", "index": False},
            "updated_at": {"type": "date"},
            "intent": {"type": "keyword"},
            "passage_vector": vector,
            "title_vector": vector,
            "article_vector": vector,
        }
    }


MAPPINGS = index_mappings()


def index_settings(server: tuple[int, int]) -> dict[str, Any]:
    """One shard (a knowledge base is small); from 9.2 a new index leaves vectors out of `_source` unless told not
    to, and serving reads them from there, so the setting is named where it exists (older clusters refuse it)."""
    return {"number_of_shards": 1} | ({"index.mapping.exclude_source_vectors": False} if server >= (9, 2) else {})


def keyword_query(query: str) -> dict[str, Any]:
    return {"multi_match": {"query": query, "fields": [f"title^{TITLE_BOOST}", "body"], "type": "most_fields"}}


def hybrid_body(
    query: str, vector: Sequence[float], limit: int, candidates: int = 100, keyword_boost: float = 0.1, vector_boost: float = 1.0
) -> dict[str, Any]:
    """One search request: BM25 over title and body and kNN over the passage vectors, each hit scored by the sum of
    its boosted BM25 score and boosted kNN similarity (a hit of only one side gets only that side's)."""
    values = [float(value) for value in vector]
    if not values or not all(np.isfinite(values)):
        raise KnowledgeBaseError(f"a hybrid search needs a finite query vector, got {len(values)} values")
    if limit < 1 or candidates < limit:
        raise KnowledgeBaseError(f"a hybrid search needs 1 <= limit <= candidates, got limit {limit} and candidates {candidates}")
    return {
        "size": limit,
        "query": {"bool": {"should": [keyword_query(query)], "boost": keyword_boost}},
        "knn": {"field": "passage_vector", "query_vector": values, "k": limit, "num_candidates": candidates, "boost": vector_boost},
        "_source": ["id"],
    }


def served_body(query: str, vector: Sequence[float], candidates: int) -> dict[str, Any]:
    """The one request that serves a question: BM25 (named, so each hit reports its own BM25 score) and a kNN search
    over each of the three vectors, each bringing back up to `candidates` passages; the hits carry their vectors, so
    the ranking signals are computed from them (`retrieval.candidate_signals`), not from the cluster's summed score."""
    values = [float(value) for value in vector]
    if not values or not all(np.isfinite(values)):
        raise KnowledgeBaseError(f"a hybrid search needs a finite query vector, got {len(values)} values")
    if candidates < 1:
        raise KnowledgeBaseError(f"a hybrid search needs at least one candidate, got {candidates}")
    keyword = keyword_query(query)
    keyword["multi_match"]["_name"] = BM25_QUERY
    return {
        "size": candidates * (len(VECTOR_FIELDS) + 1),  # every passage any of the four searches found
        "query": {"bool": {"should": [keyword]}},
        "knn": [
            {"field": field, "query_vector": values, "k": candidates, "num_candidates": max(candidates, 100)} for field in VECTOR_FIELDS
        ],
        "_source": ["id", *VECTOR_FIELDS],
    }


def vector_hits(response: Mapping[str, Any]) -> list[VectorHit]:
    """The hits of a `served_body` request (sent with `include_named_queries_score`), as the ranking needs them."""
    hits = []
    for hit in response["hits"]["hits"]:
        source, matched = hit["_source"], hit.get("matched_queries") or {}
        if not isinstance(matched, Mapping):
            raise KnowledgeBaseError("the hybrid search needs each clause's score: Elasticsearch 8.8 or later, include_named_queries_score")
        missing = [field for field in VECTOR_FIELDS if field not in source]
        if missing:
            raise KnowledgeBaseError(f"passage {source.get('id')} has no {', '.join(missing)}: the build was indexed without its vectors")
        vectors = [np.asarray(source[field], dtype=np.float32) for field in VECTOR_FIELDS]
        hits.append(VectorHit(source["id"], float(matched.get(BM25_QUERY, 0.0)), *vectors))
    return hits


def passage_document(
    passage: Passage,
    position: int,
    passage_vector: np.ndarray | None,
    title_vector: np.ndarray | None,
    article_vector: np.ndarray | None = None,
) -> dict:
    document = {"id": passage.id, "position": position, "title": passage.title, "body": passage.body}
    document |= {field: getattr(passage, field) for field in PASSAGE_FIELDS}
    if passage.updated_at is not None:
        document["updated_at"] = passage.updated_at.isoformat()
    for field, vector in zip(VECTOR_FIELDS, (passage_vector, title_vector, article_vector), strict=True):
        # 8 decimals: half the JSON of a double's 17 digits, each component off by under 5e-9, a cosine by under 1e-7
        if vector is not None:
            document[field] = [round(value, 8) for value in vector.astype(float).tolist()]
    return document


class ElasticsearchIndex:
    def __init__(self, url: str, name: str = "kb", timeout_s: float = 10.0) -> None:
        from elasticsearch import Elasticsearch

        self.url = url
        self.name = name
        self.client = Elasticsearch(url, request_timeout=timeout_s)
        number = self._call(self.client.info)["version"]["number"]
        self.server = tuple(int(part) for part in number.split("-")[0].split(".")[:2])

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from elastic_transport import TransportError
        from elasticsearch import ApiError

        try:
            return method(*args, **kwargs)
        except (ApiError, TransportError) as error:
            raise KnowledgeBaseError(f"Elasticsearch at {self.url}: {type(error).__name__}: {error}") from error

    def _index_name(self, build_id: str) -> str:
        return f"{self.name}-{build_id}"

    def create(self, build_id: str, passages: Sequence[Passage], vectors: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """`vectors`: the build's passage vectors (one row per passage) and title vectors (one row per article, in
        the order `retrieval.article_keys` numbers them); without them the index holds BM25 only."""
        from elasticsearch import helpers

        rows: list[tuple[np.ndarray | None, ...]] = [(None, None, None)] * len(passages)
        if vectors is not None:
            passage_vectors, title_vectors = vectors
            articles = article_keys(passages)
            if passage_vectors.shape != (len(passages), DIMENSIONS) or title_vectors.shape != (int(articles.max()) + 1, DIMENSIONS):
                raise KnowledgeBaseError(
                    f"vectors of shape {passage_vectors.shape} and {title_vectors.shape} do not fit {len(passages)} passages "
                    f"of {int(articles.max()) + 1} articles in {DIMENSIONS} dimensions"
                )
            means = article_vectors(passage_vectors, articles)
            rows = [(passage_vectors[i], title_vectors[articles[i]], means[articles[i]]) for i in range(len(passages))]
        index = self._index_name(build_id)
        if self._call(self.client.indices.exists, index=index):
            self._call(self.client.indices.delete, index=index)
        self._call(self.client.indices.create, index=index, settings=index_settings(self.server), mappings=MAPPINGS)

        def actions() -> Iterator[dict[str, Any]]:
            for position, (passage, vectors) in enumerate(zip(passages, rows, strict=True)):
                yield {"_index": index, "_id": passage.id, "_source": passage_document(passage, position, *vectors)}

        indexed, errors = self._call(helpers.bulk, self.client, actions(), raise_on_error=False, refresh="wait_for")
        if errors:
            raise KnowledgeBaseError(f"Elasticsearch at {self.url}: {len(errors)} passages failed to index into {index}, e.g. {errors[0]}")
        if indexed != len(passages):
            raise KnowledgeBaseError(f"Elasticsearch at {self.url}: indexed {indexed} of {len(passages)} passages into {index}")

    def search(self, query: str, limit: int, build_id: str | None = None) -> list[KeywordHit]:
        index = self._index_name(build_id) if build_id else self.name
        if not query.strip():
            return []
        response = self._call(
            self.client.search,
            index=index,
            size=limit,
            query=keyword_query(query),
            source=["id"],
        )
        return [KeywordHit(passage_id=hit["_source"]["id"], score=float(hit["_score"])) for hit in response["hits"]["hits"]]

    def hybrid_search(
        self, query: str, vector: Sequence[float], limit: int, build_id: str | None = None, **boosts: float
    ) -> list[KeywordHit]:
        """BM25 and kNN in one request (`hybrid_body`), best first; a build indexed without vectors finds nothing by kNN."""
        index = self._index_name(build_id) if build_id else self.name
        body = hybrid_body(query, vector, limit, max(limit, 100), **boosts)
        response = self._call(
            self.client.search, index=index, size=body["size"], query=body["query"], knn=body["knn"], source=body["_source"]
        )
        return [KeywordHit(passage_id=hit["_source"]["id"], score=float(hit["_score"])) for hit in response["hits"]["hits"]]

    def vector_search(self, query: str, vector: np.ndarray, candidates: int, build_id: str) -> list[VectorHit]:
        """One request (`served_body`) to the build's index: the passages BM25 or kNN found, with their vectors."""
        body = served_body(query, vector, candidates)
        response = self._call(
            self.client.search,
            index=self._index_name(build_id),
            size=body["size"],
            query=body["query"],
            knn=body["knn"],
            source=body["_source"],
            include_named_queries_score=True,
        )
        return vector_hits(response)

    def passages(self, build_id: str) -> list[Passage]:
        """A build's passages in the build's order, without their vectors: what a served build keeps in memory."""
        from elasticsearch import helpers

        index = self._index_name(build_id)
        found = self._call(
            lambda: list(helpers.scan(self.client, index=index, query={"query": {"match_all": {}}}, source_excludes=list(VECTOR_FIELDS)))
        )
        return [_passage(hit) for hit in sorted(found, key=_position)]

    def write_manifest(self, build_id: str, manifest: Mapping[str, Any]) -> None:
        """Keep the build's manifest (its calibrated threshold above all) in the index itself, before it serves."""
        self._call(self.client.indices.put_mapping, index=self._index_name(build_id), meta={"manifest": dict(manifest)})

    def manifest(self, build_id: str) -> dict[str, Any]:
        index = self._index_name(build_id)
        mappings = self._call(self.client.indices.get_mapping, index=index).body
        meta = next(iter(mappings.values()), {}).get("mappings", {}).get("_meta", {})
        if "manifest" not in meta:
            raise KnowledgeBaseError(f"Elasticsearch at {self.url}: {index} holds no build manifest; rebuild with `supportflow kb-index`")
        return meta["manifest"]

    def stored(self, build_id: str | None = None) -> tuple[list[Passage], np.ndarray, np.ndarray]:
        """A build's passages and vectors as the index holds them (the serving build by default)."""
        from elasticsearch import helpers

        index = self._index_name(build_id) if build_id else self.name
        hits = sorted(self._call(lambda: list(helpers.scan(self.client, index=index, query={"query": {"match_all": {}}}))), key=_position)
        if not hits or "passage_vector" not in hits[0]["_source"]:
            raise KnowledgeBaseError(f"Elasticsearch at {self.url}: {index} holds no vectors (built without them, or empty)")
        passages = [_passage(hit) for hit in hits]
        passage_vectors = np.array([hit["_source"]["passage_vector"] for hit in hits], dtype=np.float32)
        articles = article_keys(passages)
        first = {int(article): i for i, article in reversed(list(enumerate(articles)))}
        title_vectors = np.array([hits[first[a]]["_source"]["title_vector"] for a in range(len(first))], dtype=np.float32)
        return passages, passage_vectors, title_vectors

    def promote(self, build_id: str) -> None:
        """The index the alias leaves stays until the next promote: a replica answers from the build it opened until its
        next check moves it (supportflow/kb/serving.py), and a question sent to a deleted index would fail. Older
        indices are deleted."""
        index = self._index_name(build_id)
        old = [name for name in self._aliased() if name != index]
        actions = [{"remove": {"index": name, "alias": self.name}} for name in old] + [{"add": {"index": index, "alias": self.name}}]
        self._call(self.client.indices.update_aliases, actions=actions)
        kept = {build_id} | {name[len(self.name) + 1 :] for name in old}
        for version in self.versions():
            if version not in kept:
                self.discard(version)

    def _aliased(self) -> list[str]:
        if not self._call(self.client.indices.exists_alias, name=self.name):
            return []
        return sorted(self._call(self.client.indices.get_alias, name=self.name).body)

    def discard(self, build_id: str) -> None:
        self._call(self.client.indices.delete, index=self._index_name(build_id), ignore_unavailable=True)

    def serving(self) -> str | None:
        aliased = self._aliased()
        return aliased[0][len(self.name) + 1 :] if aliased else None

    def versions(self) -> list[str]:
        found = self._call(self.client.indices.get, index=f"{self.name}-*", allow_no_indices=True, expand_wildcards="open")
        return sorted(name[len(self.name) + 1 :] for name in found.body)


def _position(hit: dict[str, Any]) -> int:
    return int(hit["_source"]["position"])


def _passage(hit: dict[str, Any]) -> Passage:
    return Passage.model_validate({key: value for key, value in hit["_source"].items() if key in Passage.model_fields})
