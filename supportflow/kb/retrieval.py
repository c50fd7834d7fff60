"""Ranking passages for a question: BM25, dense similarity, and their fusion.

Each signal is a score per passage; a retrieval configuration weighs them. The signals:

- `bm25`: the keyword index's BM25 (title boosted) over its top candidates, 0 elsewhere.
- `bm25_article`: the same, divided by the best candidate's score (so it lies in [0, 1] like a cosine)
  and shared by every passage of an article (the best passage's score).
- `title`: cosine between the question and the article's title (an FAQ's question).
- `passage`: cosine between the question and the passage (title and body, embedded together).
- `article`: cosine between the question and the mean of the article's passage vectors: what the
  article as a whole is about, which is steadier than its single best passage.

An article is the set of passages that share a title (one long document, or the answers an FAQ
gives to one question). Weighted fusion of scores keeps how sure each signal is, which reciprocal
rank fusion throws away; scaling each signal to [0, 1] per question first lets a signal's spread for
this question count rather than its usual level. docs/kb.md has what each variant measured.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from supportflow.errors import KnowledgeBaseError
from supportflow.kb.documents import Passage
from supportflow.kb.embeddings import Embedder
from supportflow.kb.index import KeywordIndex

Signal = Literal["bm25", "bm25_article", "title", "passage", "article"]
DENSE_SIGNALS = ("title", "passage", "article")


class RetrievalConfig(BaseModel):
    fusion: Literal["weighted", "rrf"] = "weighted"
    weights: dict[Signal, float] = Field(default_factory=dict)
    normalise: Literal["none", "minmax"] = "none"  # per question, each signal scaled to [0, 1] before the weighted sum
    rrf_k: int = 60
    candidates: int = 100  # BM25 hits fetched per question


EQUAL_DENSE: dict[Signal, float] = {"title": 1 / 3, "article": 1 / 3, "passage": 1 / 3}
PRESETS: dict[str, RetrievalConfig] = {
    "bm25": RetrievalConfig(weights={"bm25": 1.0}),
    "dense_title": RetrievalConfig(weights={"title": 1.0}),
    "dense_passage": RetrievalConfig(weights={"passage": 1.0}),
    "dense_article": RetrievalConfig(weights={"article": 1.0}),
    "rrf_bm25_dense_title": RetrievalConfig(fusion="rrf", weights={"bm25": 1.0, "title": 1.0}),
    "weighted_bm25_dense_title": RetrievalConfig(weights={"title": 1.0, "bm25_article": 0.1}),
    "dense_title_article": RetrievalConfig(weights={"title": 0.5, "article": 0.5}),
    "dense_title_article_passage": RetrievalConfig(weights=EQUAL_DENSE),
    "hybrid_title_article": RetrievalConfig(weights={"title": 0.5, "article": 0.5, "bm25_article": 0.1}),
    "hybrid_raw_scores": RetrievalConfig(weights=EQUAL_DENSE | {"bm25_article": 0.1}),
    "dense_minmax": RetrievalConfig(weights=EQUAL_DENSE, normalise="minmax"),
    # The default: every signal scaled to [0, 1] per question, the dense ones with equal weight, BM25 a light vote (docs/kb.md).
    "hybrid": RetrievalConfig(weights=EQUAL_DENSE | {"bm25_article": 0.1}, normalise="minmax"),
}


class Answer(BaseModel):
    doc_id: str
    passage_id: str
    title: str
    body: str
    url: str
    source: str
    intent: str | None
    score: float

    @classmethod
    def of(cls, passage: Passage, score: float) -> "Answer":
        return cls(
            doc_id=passage.doc_id,
            passage_id=passage.id,
            title=passage.title,
            body=passage.body,
            url=passage.url,
            source=passage.source,
            intent=passage.intent,
            score=score,
        )


def article_keys(passages: Sequence[Passage]) -> np.ndarray:
    """Passages sharing a (case- and space-insensitive) title form one article."""
    keys: dict[str, int] = {}
    return np.array([keys.setdefault(" ".join(p.title.lower().split()), len(keys)) for p in passages], dtype=np.int64)


def article_vectors(passage_vectors: np.ndarray, articles: np.ndarray) -> np.ndarray:
    sums = np.zeros((int(articles.max()) + 1, passage_vectors.shape[1]), dtype=np.float32)
    np.add.at(sums, articles, passage_vectors)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-9)


def passage_text(passage: Passage) -> str:
    return f"{passage.title}\n{passage.body}"


def fuse(signals: dict[str, np.ndarray], config: RetrievalConfig, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per passage: the score to rank by, and a relevance comparable across questions (for the threshold).

    They differ when signals are normalised per question or fused by rank: the best passage then
    always scores near the top of the scale, however poor the match, so the relevance reported
    (and compared with the threshold) is the weighted sum of the raw signals.
    """
    active = [name for name, weight in config.weights.items() if weight]
    ranking = np.zeros(size, dtype=np.float32)
    relevance = np.zeros(size, dtype=np.float32)
    for name in active:
        weight, signal = config.weights[name], signals[name]
        relevance += weight * signal
        if config.fusion == "rrf":
            ranks = np.empty(size, dtype=np.float32)
            ranks[np.argsort(-signal, kind="stable")] = np.arange(1, size + 1)
            ranking += weight / (config.rrf_k + ranks)
        elif config.normalise == "minmax":
            low, high = float(signal.min()), float(signal.max())
            ranking += weight * (signal - low) / max(high - low, 1e-9)
        else:
            ranking += weight * signal
    return ranking, relevance


class Ranker:
    """What every served build shares: its passages and articles, and how scores become answers."""

    def __init__(self, passages: Sequence[Passage], build_id: str) -> None:
        self.passages = list(passages)
        self.position = {p.id: i for i, p in enumerate(self.passages)}
        self.articles = article_keys(self.passages)
        self.build_id = build_id

    def scores(self, query: str, config: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
        """Per passage of the build: the score to rank by (-inf for a passage not ranked at all) and its relevance."""
        raise NotImplementedError

    def answers(self, ranking: np.ndarray, relevance: np.ndarray, k: int, exclude: set[str] | None = None) -> list[Answer]:
        """The k best documents, each with its best passage and that passage's relevance."""
        out: list[Answer] = []
        seen: set[str] = set(exclude or ())
        for position in np.argsort(-ranking, kind="stable"):
            if not np.isfinite(ranking[position]):
                break  # a passage the search did not bring back (the sort puts them last)
            passage = self.passages[int(position)]
            if passage.doc_id in seen:
                continue
            seen.add(passage.doc_id)
            out.append(Answer.of(passage, float(relevance[position])))
            if len(out) == k:
                break
        return out

    def search(self, query: str, config: RetrievalConfig, k: int = 5) -> list[Answer]:
        return self.answers(*self.scores(query, config), k)


class Retriever(Ranker):
    """One served build: its passages, their vectors (in memory), and the keyword index they were built with."""

    def __init__(
        self,
        passages: Sequence[Passage],
        passage_vectors: np.ndarray,
        title_vectors: np.ndarray,
        keyword_index: KeywordIndex,
        embedder: Embedder | None,
        build_id: str,
    ) -> None:
        super().__init__(passages, build_id)
        self.passage_vectors = passage_vectors
        self.title_vectors = title_vectors  # one per article
        self.article_vectors = article_vectors(passage_vectors, self.articles)
        self.keyword_index = keyword_index
        self.embedder = embedder

    def signals(self, query: str, wanted: Sequence[str], candidates: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if {"bm25", "bm25_article"} & set(wanted):
            bm25 = np.zeros(len(self.passages), dtype=np.float32)
            for hit in self.keyword_index.search(query, candidates, build_id=self.build_id):
                bm25[self.position[hit.passage_id]] = hit.score
            out["bm25"] = bm25
            best = np.zeros(int(self.articles.max()) + 1, dtype=np.float32)
            np.maximum.at(best, self.articles, bm25)
            out["bm25_article"] = best[self.articles] / max(float(bm25.max()), 1e-9)
        if set(DENSE_SIGNALS) & set(wanted):
            if self.embedder is None:
                raise ValueError("dense signals need an embedder")
            vector = self.embedder.embed_query(query)
            if "title" in wanted:
                out["title"] = (self.title_vectors @ vector)[self.articles]
            if "passage" in wanted:
                out["passage"] = self.passage_vectors @ vector
            if "article" in wanted:
                out["article"] = (self.article_vectors @ vector)[self.articles]
        return out

    def scores(self, query: str, config: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
        active = [name for name, weight in config.weights.items() if weight]
        return fuse(self.signals(query, active, config.candidates), config, len(self.passages))


@dataclass(frozen=True)
class VectorHit:
    """One passage a hybrid search brought back: its BM25 score (0 when its words did not match) and its vectors."""

    passage_id: str
    bm25: float
    passage_vector: np.ndarray
    title_vector: np.ndarray  # its article's title
    article_vector: np.ndarray  # the normalised mean of its article's passage vectors


class VectorIndex(Protocol):
    """An index that holds the build's vectors and answers BM25 and kNN together (Elasticsearch)."""

    def vector_search(self, query: str, vector: np.ndarray, candidates: int, build_id: str) -> list[VectorHit]:
        """The passages that match the words or lie near the vector, with what ranking them needs."""


class IndexedRetriever(Ranker):
    """A served build whose vectors stay in the index: one hybrid request per question brings back the candidates with
    their BM25 scores and vectors, and the signals and their fusion are the in-memory `Retriever`'s, over those
    candidates. Only the question is embedded here, so a replica holds no vector file of the build.

    Two differences from `Retriever`, both about passages the search did not bring back: they are not ranked (a
    dense signal's per-question minimum and an article's best BM25 are taken over the candidates), and an article's
    best BM25 is its best returned passage's. The relevance of a returned passage, which the threshold is compared
    with, is the same sum of raw signals.
    """

    def __init__(self, passages: Sequence[Passage], index: VectorIndex, embedder: Embedder, build_id: str) -> None:
        super().__init__(passages, build_id)
        self.index = index
        self.embedder = embedder

    def signals(self, query: str, candidates: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The returned passages' positions in the build, and every signal over them (in that order)."""
        vector = self.embedder.embed_query(query)
        hits = self.index.vector_search(query, vector, candidates, self.build_id)
        return candidate_signals(hits, vector, self.position, self.articles)

    def scores(self, query: str, config: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
        rows, signals = self.signals(query, config.candidates)
        ranking = np.full(len(self.passages), -np.inf, dtype=np.float32)
        relevance = np.zeros(len(self.passages), dtype=np.float32)
        if len(rows):
            ranking[rows], relevance[rows] = fuse(signals, config, len(rows))
        return ranking, relevance


def candidate_signals(
    hits: Sequence[VectorHit], vector: np.ndarray, position: dict[str, int], articles: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """What `Retriever.signals` computes, for the passages a hybrid search returned: raw BM25, each article's best
    BM25 over the best one, and the cosines with the passage, its article's title and its article as a whole."""
    unknown = [hit.passage_id for hit in hits if hit.passage_id not in position]
    if unknown:
        raise KnowledgeBaseError(f"the index returned passages this build does not have ({unknown[:3]}); reopen the knowledge base")
    hits = sorted(hits, key=lambda hit: position[hit.passage_id])  # in the build's order, so ties break as in memory
    rows = np.array([position[hit.passage_id] for hit in hits], dtype=np.int64)
    if not len(rows):
        return rows, {}
    bm25 = np.array([hit.bm25 for hit in hits], dtype=np.float32)
    best = np.zeros(int(articles.max()) + 1, dtype=np.float32)
    np.maximum.at(best, articles[rows], bm25)
    signals = {"bm25": bm25, "bm25_article": best[articles[rows]] / max(float(bm25.max()), 1e-9)}
    signals["passage"] = np.stack([hit.passage_vector for hit in hits]).astype(np.float32) @ vector
    # An article's signals once per article, as in memory: its passages then tie exactly, and the build's order decides.
    keys = articles[rows]
    first = {int(key): i for i, key in reversed(list(enumerate(keys)))}
    for name, field in (("title", "title_vector"), ("article", "article_vector")):
        per_article = dict(zip(first, np.stack([getattr(hits[i], field) for i in first.values()]).astype(np.float32) @ vector, strict=True))
        signals[name] = np.array([per_article[int(key)] for key in keys], dtype=np.float32)
    return rows, signals
