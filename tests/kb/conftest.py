"""Shared fixtures for the knowledge-base tests: one embedding model per session, real tantivy in tmp dirs."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from supportflow.kb.index import KeywordIndex
from supportflow.settings import Settings

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
DEMO_KB = ROOT / "examples" / "banking77" / "kb"
MODEL_CACHE = ROOT / "models" / "embedder"  # the ONNX export is reused across runs; it is never committed


@pytest.fixture
def kb_settings(tmp_path: Path) -> Settings:
    return Settings(
        kb_dir=tmp_path / "kb",
        gx_root=tmp_path / "gx",
        contracts_dir=ROOT / "data_contracts",
        kb_model_cache=MODEL_CACHE,
        kb_sources=[DEMO_KB],
        lake_url=str(tmp_path / "lake"),
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )


@pytest.fixture(params=["tantivy", "elasticsearch"])
def keyword_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeywordIndex]:
    """The same contract tests run against every backend; Elasticsearch only where a server is named."""
    if request.param == "tantivy":
        from supportflow.kb.tantivy_index import TantivyIndex

        yield TantivyIndex(tmp_path / "kb", name="kbtest")
        return
    url = os.environ.get("SUPPORTFLOW_ES_URL")
    if not url:
        pytest.skip("Elasticsearch contract tests need a server: set SUPPORTFLOW_ES_URL (none can be installed here)")
    from supportflow.kb.elasticsearch_index import ElasticsearchIndex

    index = ElasticsearchIndex(url, name=f"supportflow-test-{os.getpid()}")
    yield index
    for version in index.versions():
        index.discard(version)
