"""Building the knowledge base: load, validate, index, smoke-query, calibrate, then swap.

Everything up to the swap happens beside the serving build, under a new build id; the swap is
the keyword index's atomic promote. Any failure before it discards the new build and leaves the
previous one serving, so the bot is never without an index and never serves half of one.

Where a build's vectors live depends on the backend: with tantivy, in the build's folder beside the
index (`.npy` files, ranked in memory); with Elasticsearch, in the index itself with the manifest,
so a replica opens and serves the build from the cluster alone (`retrieval.IndexedRetriever`).
"""

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from supportflow.errors import KnowledgeBaseError, SupportflowError
from supportflow.kb.documents import Document, Passage, Skipped, content_hash, redact_document, to_passages
from supportflow.kb.embeddings import Embedder, embedder
from supportflow.kb.index import KeywordIndex
from supportflow.kb.loaders import DRAFT, LoadResult, load_sources
from supportflow.kb.retrieval import PRESETS, Answer, IndexedRetriever, Ranker, RetrievalConfig, Retriever, article_keys, passage_text
from supportflow.kb.threshold import Calibration, LabelledQuestion, calibrate
from supportflow.lake import open_lake
from supportflow.redact import Redactor
from supportflow.settings import Settings
from supportflow.validate.catalogue import IntentCatalogue, load_catalogue
from supportflow.workspace import kb_sources

if TYPE_CHECKING:
    from supportflow.kb.elasticsearch_index import ElasticsearchIndex

KB_SUITE = "kb_documents.suite.json"
SKIPS_NAMED = 10  # skipped files named one by one in the report's lines
DOCUMENT_COLUMNS = ["id", "title", "body", "source", "url", "updated_at", "intent"]
T = TypeVar("T")
# How deep `KnowledgeBase.article_for` looks for the best passage of an intent's own article before it takes the
# article's first: far enough for a long article's passages, bounded for a knowledge base of thousands.
ARTICLE_SEARCH_DEPTH = 20


class SmokeResult(BaseModel):
    questions: int
    hits: int
    hit_rate: float


class BuildReport(BaseModel):
    build_id: str
    created_at: datetime
    backend: str
    index_name: str
    sources: list[str]
    retrieval: str
    documents: int = 0
    passages: int = 0
    content_hash: str = ""
    skipped: list[Skipped] = Field(default_factory=list)
    sanitised: dict[str, int] = Field(default_factory=dict)
    redactions: dict[str, int] = Field(default_factory=dict)
    by_rule: dict[str, int] = Field(default_factory=dict)
    smoke: SmokeResult | None = None
    calibration: Calibration | None = None
    previous_build: str | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    unanswered_intents: list[str] = Field(default_factory=list)  # catalogue intents no served article answers: the bot hands off

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(item.reason.split(" (")[0].split(":")[0] for item in self.skipped))

    def lines(self) -> list[str]:
        lines = [f"build {self.build_id} ({self.backend}, {self.retrieval}): {self.documents} documents, {self.passages} passages"]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}: {self.skipped_by_reason}")
            mistakes = [item for item in self.skipped if item.reason != DRAFT]  # a draft is skipped on purpose
            lines += [f"    {item.item}: {item.reason}" for item in mistakes[:SKIPS_NAMED]]
            if len(mistakes) > SKIPS_NAMED:
                lines.append(f"    and {len(mistakes) - SKIPS_NAMED} more (the build's manifest lists every one)")
        if self.unanswered_intents:
            names = ", ".join(self.unanswered_intents[:10]) + (" ..." if len(self.unanswered_intents) > 10 else "")
            lines.append(f"  no article for {len(self.unanswered_intents)} intents, so the bot hands them off: {names}")
        if self.calibration:
            measured = self.calibration.accuracy
            right = f", {measured:.0%} right decisions on {self.calibration.questions} questions" if measured else ""
            lines.append(f"  answer/escalate threshold {self.calibration.threshold:.3f} ({self.calibration.source}{right})")
        return lines

    def markdown(self) -> str:
        skipped = "\n".join(f"| {item.item} | {item.reason} |" for item in self.skipped) or "| - | - |"
        return (
            f"**Build** `{self.build_id}` ({self.backend}, retrieval {self.retrieval}) replaced `{self.previous_build}`\n\n"
            f"documents {self.documents}, passages {self.passages}, content hash `{self.content_hash[:16]}`\n\n"
            f"threshold {self.calibration.threshold if self.calibration else '-'}, timings {self.timings_s}\n\n"
            f"intents with no article (handed off): {', '.join(self.unanswered_intents) or 'none'}\n\n"
            f"| skipped | reason |\n|---|---|\n{skipped}"
        )


def labelled_questions(settings: Settings) -> tuple[pd.DataFrame | None, str]:
    """The latest snapshot's validation split, which calibrates the answer/escalate threshold, or why there is none."""
    from supportflow.validate.snapshot import latest_snapshot, read_split  # the validate stage, which the served bot never needs

    try:
        lake = open_lake(settings)
        snapshot = latest_snapshot(lake).snapshot_id
        return read_split(lake, snapshot, "validation")[["text", "intent"]], f"the validation split of snapshot {snapshot}"
    except SupportflowError as error:
        return None, f"no labelled questions to calibrate the threshold ({error}); the default threshold is used"


def keyword_index(settings: Settings) -> KeywordIndex:
    if settings.search_backend == "elasticsearch":
        if not settings.es_url:
            raise KnowledgeBaseError("SUPPORTFLOW_SEARCH_BACKEND=elasticsearch needs SUPPORTFLOW_ES_URL (e.g. http://localhost:9200)")
        from supportflow.kb.elasticsearch_index import ElasticsearchIndex

        return ElasticsearchIndex(settings.es_url, settings.kb_index_name)
    from supportflow.kb.tantivy_index import TantivyIndex

    return TantivyIndex(settings.kb_dir, settings.kb_index_name)


def retrieval_config(settings: Settings) -> RetrievalConfig:
    if settings.kb_retrieval not in PRESETS:
        raise KnowledgeBaseError(f"SUPPORTFLOW_KB_RETRIEVAL={settings.kb_retrieval!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[settings.kb_retrieval]


def _timed(report: BuildReport, step: str, work: Callable[[], T]) -> T:
    start = time.perf_counter()
    try:
        return work()
    finally:
        report.timings_s[step] = round(time.perf_counter() - start, 3)


def load_documents(sources: Sequence[Path], settings: Settings, catalogue: IntentCatalogue) -> tuple[LoadResult, dict[str, int]]:
    """Documents from the sources, PII redacted the same way as tickets. An intent whose catalogue entry names its
    `article` is answered by that article, whatever intent the article's own front matter names: the catalogue is
    where a desk decides which answer each request gets."""
    result = load_sources(sources, max_bytes=int(settings.kb_max_file_mb * 2**20))
    redactor = Redactor()
    answering = {spec.article: spec.name for spec in catalogue.specs.values() if spec.article}
    result.documents = [
        redact_document(document, redactor).model_copy(update={"intent": answering.get(document.id, document.intent)})
        for document in result.documents
    ]
    return result, dict(redactor.counts)


def validate_documents(documents: list[Document], settings: Settings) -> tuple[list[Document], list[Skipped], dict[str, int]]:
    """The knowledge-base contract (data_contracts/kb_documents.suite.json): breaking rows are skipped with the rule's reason."""
    from supportflow.validate.contracts import (  # Great Expectations is slow to import; serving never needs it
        ContractChecker,
        load_contract,
    )

    if not documents:
        return [], [], {}
    contract = load_contract(settings, KB_SUITE)
    frame = pd.DataFrame([d.model_dump() for d in documents], columns=DOCUMENT_COLUMNS)
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True)
    result = ContractChecker(contract, settings.gx_root).check(frame, "kb-build")
    if result.batch_failures:
        raise KnowledgeBaseError(
            f"the documents break the contract {contract.name}@{contract.version}: " + "; ".join(result.batch_failures)
        )
    skipped = [
        Skipped(item=f"{documents[p].source} ({documents[p].id})", reason="; ".join(r)) for p, r in sorted(result.row_reasons.items())
    ]
    kept = [d for p, d in enumerate(documents) if p not in result.row_reasons]
    return kept, skipped, result.rule_counts


def build_folder(settings: Settings, build_id: str) -> Path:
    return settings.kb_dir / "builds" / build_id


def embed_passages(passages: Sequence[Passage], model: Embedder) -> tuple[np.ndarray, np.ndarray]:
    """Vectors per passage (title and body together) and per article title."""
    articles = article_keys(passages)
    first = {int(a): i for i, a in reversed(list(enumerate(articles)))}
    titles = [passages[first[a]].title for a in range(len(first))]
    return model.embed([passage_text(p) for p in passages]), model.embed(titles)


def write_build(folder: Path, passages: Sequence[Passage], passage_vectors: np.ndarray, title_vectors: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "passages.jsonl").open("w", encoding="utf-8") as handle:
        for passage in passages:
            handle.write(passage.model_dump_json() + "\n")
    np.save(folder / "passage_vectors.npy", passage_vectors)
    np.save(folder / "title_vectors.npy", title_vectors)


def read_retriever(folder: Path, index: KeywordIndex, model: Embedder | None, build_id: str) -> Retriever:
    with (folder / "passages.jsonl").open(encoding="utf-8") as handle:
        passages = [Passage.model_validate_json(line) for line in handle]
    return Retriever(passages, np.load(folder / "passage_vectors.npy"), np.load(folder / "title_vectors.npy"), index, model, build_id)


def holds_vectors(index: KeywordIndex) -> TypeGuard["ElasticsearchIndex"]:
    """Whether the build's vectors go into the index (Elasticsearch) rather than the build's folder (tantivy)."""
    from supportflow.kb.elasticsearch_index import ElasticsearchIndex

    return isinstance(index, ElasticsearchIndex)


def smoke_query(retriever: Ranker, config: RetrievalConfig, min_hit_rate: float, sample: int = 50) -> SmokeResult:
    """Ask the new build for some of its own titles: each should bring back its own article first."""
    step = max(1, len(retriever.passages) // sample)
    probes = retriever.passages[::step][:sample]
    hits = sum(1 for p in probes if (top := retriever.search(p.title, config, k=1)) and top[0].title == p.title)
    result = SmokeResult(questions=len(probes), hits=hits, hit_rate=hits / max(len(probes), 1))
    if result.hit_rate < min_hit_rate:
        raise KnowledgeBaseError(
            f"smoke query failed on build {retriever.build_id}: only {hits} of {len(probes)} titles found their own article "
            f"(at least {min_hit_rate:.0%} required); the previous build keeps serving"
        )
    return result


def questions_for(documents: Sequence[Document], labelled: pd.DataFrame, limit: int) -> list[LabelledQuestion]:
    """Labelled tickets (text, intent) as calibration questions, for the intents some article answers."""
    by_intent: dict[str, set[str]] = {}
    for document in documents:
        if document.intent:
            by_intent.setdefault(document.intent, set()).add(document.id)
    usable = labelled[labelled["intent"].isin(list(by_intent))]
    usable = usable.sample(n=min(limit, len(usable)), random_state=13) if len(usable) else usable
    return [LabelledQuestion(text=text, relevant=by_intent[intent]) for text, intent in zip(usable["text"], usable["intent"], strict=True)]


def build_knowledge_base(
    settings: Settings,
    sources: Sequence[Path] | None = None,
    labelled: pd.DataFrame | None = None,
    index: KeywordIndex | None = None,
) -> BuildReport:
    """One full build; returns its report once it serves. `labelled` (text, intent) calibrates the threshold."""
    sources = list(sources or kb_sources(settings))
    config = retrieval_config(settings)
    index = index or keyword_index(settings)
    started = datetime.now(UTC)
    report = BuildReport(
        build_id="",
        created_at=started,
        backend=settings.search_backend,
        index_name=settings.kb_index_name,
        sources=[str(s) for s in sources],
        retrieval=settings.kb_retrieval,
        previous_build=index.serving(),
    )
    catalogue = load_catalogue(settings.catalogue_file)
    loaded, report.redactions = _timed(report, "load", lambda: load_documents(sources, settings, catalogue))
    report.sanitised = loaded.sanitised
    documents, invalid, report.by_rule = _timed(report, "validate", lambda: validate_documents(loaded.documents, settings))
    report.skipped = loaded.skipped + invalid
    if not documents:
        reasons = "; ".join(f"{s.item}: {s.reason}" for s in report.skipped[:5]) or "no files found"
        raise KnowledgeBaseError(
            f"no usable knowledge-base document in {', '.join(report.sources)} ({reasons}); the previous build keeps serving"
        )
    passages = [p for d in documents for p in to_passages(d)]
    report.documents, report.passages, report.content_hash = len(documents), len(passages), content_hash(passages)
    report.unanswered_intents = sorted(set(catalogue.intents) - {d.intent for d in documents if d.intent})
    report.build_id = f"{started:%Y%m%d%H%M%S}-{report.content_hash[:8]}"
    folder = build_folder(settings, report.build_id)
    try:
        retriever: Ranker
        if holds_vectors(index):  # the vectors go into the index, and the build is smoked and calibrated as it will serve
            model = embedder(settings.kb_model_cache)
            vectors = _timed(report, "embed", lambda: embed_passages(passages, model))
            _timed(report, "index", lambda: index.create(report.build_id, passages, vectors))
            retriever = IndexedRetriever(passages, index, model, report.build_id)
        else:
            _timed(report, "index", lambda: index.create(report.build_id, passages))
            model = embedder(settings.kb_model_cache)
            vectors = _timed(report, "embed", lambda: embed_passages(passages, model))
            _timed(report, "write", lambda: write_build(folder, passages, *vectors))
            retriever = Retriever(passages, vectors[0], vectors[1], index, model, report.build_id)
        report.smoke = _timed(report, "smoke", lambda: smoke_query(retriever, config, settings.kb_smoke_min_hit_rate))
        questions = questions_for(documents, labelled, settings.kb_calibration_questions) if labelled is not None else []
        if questions:
            report.calibration = _timed(report, "calibrate", lambda: calibrate(retriever, config, questions, "labelled tickets"))
        else:
            report.calibration = Calibration(
                threshold=settings.kb_default_threshold, source="default: no labelled questions for these documents"
            )
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text(report.model_dump_json(indent=2))
        if holds_vectors(index):
            index.write_manifest(report.build_id, report.model_dump(mode="json"))
        _timed(report, "swap", lambda: index.promote(report.build_id))
    except BaseException as error:
        index.discard(report.build_id)
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(error, SupportflowError | KeyboardInterrupt):
            raise
        raise KnowledgeBaseError(
            f"knowledge-base build {report.build_id} failed ({type(error).__name__}: {error}); the previous build keeps serving"
        ) from error
    for old in (settings.kb_dir / "builds").iterdir():
        if old.name != report.build_id:
            shutil.rmtree(old, ignore_errors=True)
    (folder / "manifest.json").write_text(report.model_dump_json(indent=2))
    return report


class Reply(BaseModel):
    answers: list[Answer]
    threshold: float
    escalate: bool  # nothing scores above the threshold: hand the question to a person


class KnowledgeBase:
    """The served build: search it, and decide between answering and escalating."""

    def __init__(self, retriever: Ranker, manifest: BuildReport, config: RetrievalConfig) -> None:
        self.retriever = retriever
        self.manifest = manifest
        self.config = config
        # A build whose articles name intents promises one per intent it answers; one without intents (an FAQ
        # export) is searched for every question instead.
        self.answered_intents = frozenset(p.intent for p in retriever.passages if p.intent)
        # How the bot names an intent to a customer when it offers a choice: the title of the article that answers it.
        self.intent_titles = {p.intent: p.title for p in reversed(retriever.passages) if p.intent}

    @property
    def build_id(self) -> str:
        """The build its searches go to: what `/status` reports and what a turn it answered records."""
        return self.retriever.build_id

    @property
    def threshold(self) -> float:
        return self.manifest.calibration.threshold if self.manifest.calibration else 0.0

    def search(self, question: str, k: int = 3) -> list[Answer]:
        return self.retriever.search(question, self.config, k)

    def reply(self, question: str, k: int = 3) -> Reply:
        answers = self.search(question, k)
        return Reply(answers=answers, threshold=self.threshold, escalate=not answers or answers[0].score < self.threshold)

    def article_for(self, intent: str, question: str) -> Answer | None:
        """The passage of the article that answers `intent` closest to `question`, whatever outranks it in a search
        over every article: the best of its passages among the first `ARTICLE_SEARCH_DEPTH` hits, else its first
        passage (score 0). None when no article names the intent."""
        for hit in self.search(question, ARTICLE_SEARCH_DEPTH):
            if hit.intent == intent:
                return hit
        first = next((p for p in self.retriever.passages if p.intent == intent), None)
        return None if first is None else Answer.of(first, 0.0)


def open_knowledge_base(settings: Settings, index: KeywordIndex | None = None, build_id: str | None = None) -> KnowledgeBase:
    """The served build, or `build_id`: a bot following promotions names the build it just saw served, so a promote
    between that look and this open cannot hand it another build than the one it recorded."""
    index = index or keyword_index(settings)
    build_id = build_id or index.serving()
    if build_id is None:
        raise KnowledgeBaseError(f"no knowledge base is served as {settings.kb_index_name!r}; run `supportflow kb-index` first")
    if holds_vectors(index):  # everything from the cluster: no file of the build on this replica's disk
        manifest = BuildReport.model_validate(index.manifest(build_id))
        config = PRESETS.get(manifest.retrieval, retrieval_config(settings))
        retriever = IndexedRetriever(index.passages(build_id), index, embedder(settings.kb_model_cache), build_id)
        return KnowledgeBase(retriever, manifest, config)
    folder = build_folder(settings, build_id)
    if not (folder / "manifest.json").exists():
        raise KnowledgeBaseError(f"build {build_id} is served but {folder} is missing; rebuild with `supportflow kb-index`")
    manifest = BuildReport.model_validate(json.loads((folder / "manifest.json").read_text()))
    config = PRESETS.get(manifest.retrieval, retrieval_config(settings))
    return KnowledgeBase(read_retriever(folder, index, embedder(settings.kb_model_cache), build_id), manifest, config)
