"""The one typed place for configuration.

Every value can be set through an environment variable with the ``SUPPORTFLOW_`` prefix or a
``.env`` file. The defaults run on one machine with no server to start.
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SUPPORTFLOW_", env_file=".env", extra="ignore")

    # Data lake: a local folder, or s3://bucket/prefix through s3fs.
    lake_url: str = ".lake"
    s3_endpoint_url: str | None = None
    s3_connect_timeout_s: float = 5.0
    s3_max_attempts: int = 2

    # Data contracts and their human-readable report.
    contracts_dir: Path = PROJECT_ROOT / "data_contracts"
    gx_root: Path = Path(".")
    max_quarantine_fraction: float = Field(0.5, ge=0.0, le=1.0)

    # Ingest and validation spread large files over this many processes.
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    parallel_min_bytes: int = Field(16 << 20, description="Smaller inputs are processed in one process.")

    # Ingest.
    ingest_batch_rows: int = Field(100_000, gt=0)
    field_map: dict[str, str] = Field(
        default_factory=dict,
        description="Ticket field -> source column, for exports whose columns have other names.",
    )
    default_channel: str = "other"
    zendesk_intent_field_id: int | None = None

    # Training snapshot.
    snapshot_seed: int = 13
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)

    # Tracking and registry.
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    registered_model_name: str = "intent-classifier"
    target_precision: float = Field(0.90, gt=0.0, le=1.0)

    # Knowledge base.
    search_backend: Literal["tantivy", "elasticsearch"] = "tantivy"
    es_url: str | None = None
    kb_sources: list[Path] = Field(default_factory=lambda: [Path("kb/banking77")])  # files and folders the KB is built from
    kb_dir: Path = Path(".kb")  # builds on disk: the tantivy index and each build's vectors and manifest
    kb_index_name: str = "kb"  # the served name: the tantivy pointer file, or the Elasticsearch alias
    kb_model_cache: Path = Path(".cache/models")  # the embedding model's ONNX export
    kb_retrieval: str = Field("hybrid", description="A preset of supportflow.kb.retrieval.PRESETS.")
    kb_max_file_mb: float = Field(10.0, gt=0)
    kb_default_threshold: float = Field(0.5, description="Used only when no labelled questions can calibrate one.")
    kb_calibration_questions: int = Field(800, ge=0)
    kb_smoke_min_hit_rate: float = Field(0.8, ge=0.0, le=1.0)
    kb_experiment: str = "kb-index"

    # Dialogue (Rasa runs in its own Python 3.10 environment).
    rasa_venv: Path = PROJECT_ROOT / ".venv-rasa"
    rasa_url: str = "http://127.0.0.1:5005"

    # LLM: optional; without a key the bot answers from the knowledge base or hands off.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_timeout_s: float = 8.0
    openai_moderation_endpoint: bool = True

    # The bot and its channels.
    handoff_db_url: str = "sqlite:///handoff.db"
    classifier_url: str = "http://127.0.0.1:3001"
    bot_url: str = "http://127.0.0.1:3000"
    action_server_url: str = "http://127.0.0.1:5055"
    max_message_chars: int = 4000
    model_version: str | None = Field(None, description="The classifier version being served, for the turn log.")
    twilio_auth_token: SecretStr | None = None
    twilio_webhook_url: str | None = Field(None, description="The public URL Twilio calls; its signature covers it.")
    agent_token: SecretStr | None = Field(None, description="Bearer token for the agent API; unset means no token needed.")


@lru_cache
def get_settings() -> Settings:
    return Settings()
