"""The one typed place for configuration.

Every value can be set through an environment variable with the ``SUPPORTFLOW_`` prefix or a
``.env`` file (``SUPPORTFLOW_ENV_FILE`` names another; empty, none is read). The defaults run on one
machine with no server to start.
"""

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as UnparsedSetting

from supportflow.errors import SettingsError
from supportflow.ingest.fields import field_map_problem

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_WORKSPACE = PROJECT_ROOT / "examples" / "banking77"  # the default desk, whose stores are the project's own
ENV_PREFIX = "SUPPORTFLOW_"
ENV_FILE_VARIABLE = "SUPPORTFLOW_ENV_FILE"  # the dotenv file read besides the environment (default .env); empty: none


class TrainingProfile(BaseModel):
    """How hard to fine-tune: `quick` for the demo and CI, `full` for the benchmark and production."""

    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(64, gt=8)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    layer_lr_decay: float = Field(1.0, gt=0, le=1, description="Each lower encoder layer learns at this fraction of the one above.")
    freeze_word_embeddings: bool = Field(False, description="Keep the 30k-row vocabulary matrix fixed: a third less work per step on CPU.")
    contrastive_weight: float = Field(
        0.0, ge=0, description="Weight of the supervised contrastive loss on the pooled embedding beside cross-entropy (0: none)."
    )
    logit_adjustment: float = Field(
        0.0,
        ge=0,
        description="Cross-entropy on the logits plus this times each intent's log share of the training messages (the"
        " logit-adjusted loss; 0: plain cross-entropy). The head then learns the rare intents as if all were equally common.",
    )
    seed: int = 13


class DriftThresholds(BaseModel):
    """When the drift monitor raises the alarm; each figure is documented in docs/drift.md.

    The statistical figures need both an effect size and a p-value: on a window of 50 turns, PSI over
    ten bins and the Jensen-Shannon distance over 77 intents are large from sampling noise alone (the
    latter ~0.6), so the intent-mix effect size is the distance beyond the median of that noise.
    """

    min_turns: int = Field(50, ge=1, description="Fewer turns in the window: figures are reported, no alarm is raised.")
    max_fallback_rate: float = Field(0.30, ge=0, le=1, description="The issue's default: retrain when fallbacks exceed 30% of turns.")
    max_handoff_rate: float | None = Field(None, ge=0, le=1, description="None: the handoff rate is reported, never alarmed on.")
    confidence_bins: int = Field(10, ge=2, description="Fixed equal-width bins on [0, 1] for the confidence PSI.")
    max_confidence_psi: float = Field(0.25, gt=0, description="The conventional 'significant shift' level of the PSI.")
    max_intent_mix_js_excess: float = Field(
        0.10, gt=0, le=1, description="Jensen-Shannon distance (base 2) between intent mixes beyond what sampling alone gives."
    )
    significance: float = Field(0.01, gt=0, lt=1, description="KS and intent-mix p-values must be below this too.")
    max_oov_increase: float = Field(0.10, ge=0, le=1, description="Out-of-vocabulary rate above the reference's by more than this.")
    max_unhelpful_rate: float | None = Field(
        0.5, ge=0, le=1, description="Customers rated more than this share of the answers they rated unhelpful (None: report only)."
    )
    min_ratings: int = Field(20, ge=1, description="Fewer ratings in the window: the unhelpful share is reported, never alarmed on.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    # Data lake: a local folder, or s3://bucket/prefix through s3fs.
    lake_url: str = ".lake"
    s3_endpoint_url: str | None = None
    s3_connect_timeout_s: float = 5.0
    s3_max_attempts: int = 2

    # The desk: its ticket sources, articles, intent catalogue and the bot's texts (supportflow/workspace.py).
    workspace: Path = DEMO_WORKSPACE  # another desk's stores default to <desks_dir>/<its folder>/ (see _desk_stores)
    desks_dir: Path = Field(PROJECT_ROOT / ".desks", description="Where each desk other than the demo keeps its stores, a folder each.")

    # Data contracts and their human-readable report: the project's suites, where the workspace overrides none.
    contracts_dir: Path = PROJECT_ROOT / "data_contracts"
    gx_root: Path = Path(".")
    max_quarantine_fraction: float = Field(0.5, ge=0.0, le=1.0)
    min_examples_per_intent: int = Field(
        5,
        ge=1,
        description="The ticket contract's minimum per intent (its `min_examples_per_intent` suite parameter): an intent with fewer "
        "labelled tickets is quarantined and never learned, and the validation report names it. Low because real desks have a long "
        "tail of rare intents (bench/long_tail.py measures what 5 and 10 examples give).",
    )

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

    # Intent classifier. base_model: a hub name (used when the hub answers), or a local folder holding a
    # DistilBERT checkpoint or a BERT one to convert; offline the packaged all-MiniLM-L6-v2 is converted.
    base_model: str = "distilbert-base-uncased"
    models_dir: Path = PROJECT_ROOT / "models"  # converted base weights (any desk's) and training scratch, wherever a command runs
    train_profile: Literal["quick", "full"] = "quick"
    # One thread by default: on 2 cores shared with other jobs, 2 threads stalled on each other (5 s a step
    # against 0.4 s with one, measured); on dedicated cores 2 is faster.
    train_threads: int = Field(1, ge=1)
    # Where fine-tuning runs. The bars are measured on "cpu"; "cuda" uses an NVIDIA GPU when the machine has one (the
    # trained model is saved and then read back on the CPU, so evaluation, export and serving are the same either way).
    train_device: Literal["cpu", "cuda"] = "cpu"
    # The split keeps this many of an intent's examples for training before it holds any out; training leaves out an intent
    # that still has fewer (the contract's minimum is lower, or other rules quarantined its tickets); validation names it.
    min_train_examples_per_intent: int = Field(2, ge=1)
    quick_profile: TrainingProfile = TrainingProfile(
        epochs=1, learning_rate=2e-4, batch_size=32, max_length=48, freeze_word_embeddings=True
    )
    # The logit-adjusted loss: BANKING77's served model 0.9406 to 0.9422, its 5-example intents on the long tail 0.72 to
    # 0.76 macro-F1 (docs/classifier.md, "A logit-adjusted loss").
    full_profile: TrainingProfile = TrainingProfile(
        epochs=7,
        learning_rate=2e-4,
        batch_size=32,
        max_length=64,
        label_smoothing=0.1,
        layer_lr_decay=0.9,
        freeze_word_embeddings=True,
        logit_adjustment=1.0,
    )
    onnx_parity_tolerance: float = Field(0.005, ge=0, description="Largest top-1 accuracy drop allowed for an ONNX variant.")
    onnx_alarm_tolerance: float = Field(
        0.01, ge=0, description="Largest rise allowed in the share of in-scope test messages an ONNX variant's detector flags."
    )

    # Tracking and registry.
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    registered_model_name: str = "intent-classifier"
    # The product promise: the answers the bot routes on its own are this precise (on validation); below the
    # threshold it offers choices or hands off. Every run logs the whole risk-coverage curve to choose from.
    target_precision: float = Field(0.97, gt=0.0, le=1.0)
    # ...and at most this share of all messages gets another intent's answer (bounded from validation so that it holds
    # in expectation on new messages; 1: no bound). At 97% precision and 90% coverage the first promise alone allows
    # 2.7%; supportflow/classifier/calibrate.py.
    max_wrong_answers: float = Field(0.02, gt=0.0, le=1.0)
    # How sure the validation messages must make the first promise: the threshold's precision reaches the target at
    # this one-sided confidence bound, so it holds on new messages about this often (0: the validation precision itself,
    # which holds about half the time); supportflow/classifier/calibrate.py.
    precision_confidence: float = Field(0.9, ge=0.0, lt=1.0)
    # The unknown-intent detector flags this share of in-scope validation messages' distances as in scope (0.95: about
    # one in-scope message in twenty is handed off as unknown); supportflow/classifier/ood.py.
    ood_quantile: float = Field(0.99, gt=0.0, lt=1.0)
    # How far the encoder's answers are freed from how common each intent was in the history: 1, every intent equally
    # likely before a message is read (the rare ones get answered); 0, the history's frequencies. fusion.prior_offsets.
    class_balance: float = Field(1.0, ge=0.0, le=1.0)
    # The readers beside the fine-tuned head (docs/classifier.md, "Three readers"): fewer only for comparisons.
    classifier_readers: list[Literal["lexical", "prototypes", "sentence_prototypes", "sentence_neighbours"]] = Field(
        default_factory=lambda: ["lexical", "prototypes", "sentence_prototypes", "sentence_neighbours"]
    )
    # A desk with at most `cross_fit_max_examples` training and validation messages chooses its threshold, and weighs
    # the readers, on all of them read out of fold (this many fine-tunings) rather than on its validation split alone,
    # whose few dozen messages promise too much (supportflow/classifier/cross_fit.py); folds 0: never.
    cross_fit_folds: int = Field(5, ge=0, le=20)
    cross_fit_max_examples: int = Field(1000, ge=0)
    mlflow_experiment: str = "intent-classifier"
    mlflow_artifact_root: str | None = Field(None, description="Where new experiments keep artifacts; default: MLflow's (./mlartifacts).")

    # Knowledge base.
    search_backend: Literal["tantivy", "elasticsearch"] = "tantivy"
    es_url: str | None = None
    kb_sources: list[Path] = Field(default_factory=list)  # files and folders the KB is built from; none: the workspace's
    kb_dir: Path = Path(".kb")  # builds on disk: the tantivy index and each build's vectors and manifest
    kb_index_name: str = "kb"  # the served name: the tantivy pointer file, or the Elasticsearch alias
    kb_model_cache: Path = PROJECT_ROOT / "models" / "embedder"  # the embedding model's ONNX export, shared by every desk
    kb_retrieval: str = Field("hybrid", description="A preset of supportflow.kb.retrieval.PRESETS.")
    kb_max_file_mb: float = Field(10.0, gt=0)
    kb_default_threshold: float = Field(0.5, description="Used only when no labelled questions can calibrate one.")
    kb_calibration_questions: int = Field(800, ge=0)
    kb_smoke_min_hit_rate: float = Field(0.8, ge=0.0, le=1.0)
    kb_experiment: str = "kb-index"
    kb_refresh_seconds: float = Field(
        30.0,
        ge=0,
        description="How often a running bot asks which knowledge-base build is served, and swaps in a newly promoted one"
        " (supportflow/kb/serving.py); 0: never, the build it opened at start serves until it restarts.",
    )

    # Dialogue (Rasa runs in its own Python 3.10 environment).
    rasa_venv: Path = PROJECT_ROOT / ".venv-rasa"
    rasa_url: str = "http://127.0.0.1:5005"
    rasa_project_dir: Path = PROJECT_ROOT / ".rasa"  # generated from the catalogue; never edited by hand
    rasa_tracker_store_url: str | None = Field(
        None,
        description="Where Rasa keeps conversations and their slots (supportflow/dialogue/stores.py): a postgresql:// URL shared by "
        "Rasa replicas; unset: a SQLite file in run_dir, which a restarted Rasa continues from.",
    )
    rasa_lock_store_url: str | None = Field(
        None, description="redis://[:password@]host[:port][/db]: the conversation locks Rasa replicas share; unset: Rasa's in-memory locks."
    )
    dialogue_experiment: str = "dialogue"

    # LLM: optional; without a key the bot answers from the knowledge base or hands off.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_timeout_s: float = 8.0
    openai_moderation_endpoint: bool = True  # every reply through the provider's moderation too; unreachable: refused

    # Serving the classifier.
    serving_variant: Literal["auto", "torch", "fp32", "int8"] = "auto"
    # One thread: measured on 2 shared cores, a second intra-op thread made one short message 2-3x slower.
    serving_threads: int = Field(1, ge=1)
    # BentoML's per-request access log and OpenTelemetry spans, on both services. Off by default: measured on
    # 2 cores they were 0.4 ms of a 1.0 ms no-op request, and the bot logs every turn itself, with its request id.
    access_log: bool = False
    trace_requests: bool = Field(False, description="OpenTelemetry spans per request, for a tracing exporter BentoML is given.")

    # The bot and its channels.
    handoff_db_url: str = "sqlite:///handoff.db"
    classifier_url: str = "http://127.0.0.1:3001"
    bot_url: str = "http://127.0.0.1:3000"
    action_server_url: str = "http://127.0.0.1:5055"
    max_message_chars: int = 4000
    # Below the threshold: offer the customer the classifier's close top intents (at most this many; 0: hand off at
    # once) when together they hold `offer_min_share` of the probability; the pick is answered, anything else handed off.
    offer_options: int = Field(3, ge=0)
    offer_min_share: float = Field(0.6, gt=0.0, le=1.0)
    turn_flush_every: int = Field(50, ge=1, description="Turns buffered before they are written to the lake.")
    turn_flush_seconds: float = Field(30.0, gt=0, description="...or at least this often, so the drift monitor sees a quiet bot.")
    model_version: str | None = Field(None, description="The classifier version being served, for the turn log.")
    twilio_auth_token: SecretStr | None = None
    twilio_webhook_url: str | None = Field(
        None, description="The public URL Twilio calls; its signature covers it. `/status` and `/voice` after it are the other two."
    )
    # Agents' replies to SMS and WhatsApp customers, pushed through Twilio's Messages API (supportflow/bot/delivery.py).
    twilio_account_sid: str | None = Field(None, description="Unset: agents' replies wait for the customer's next message.")
    twilio_api_base_url: str = Field("https://api.twilio.com", description="Where the Messages API is reached (a proxy, a test server).")
    twilio_send_attempts: int = Field(8, ge=1, description="Tries of one reply before it is marked failed.")
    twilio_retry_base_s: float = Field(2.0, gt=0, description="The wait after a failed try, doubled after each one...")
    twilio_retry_max_s: float = Field(600.0, gt=0, description="...up to this.")
    agent_token: SecretStr | None = Field(
        None, description="Retired: agents authenticate with their own tokens (`supportflow agent add`); set, the bot refuses to start."
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Signs webchat conversation tokens and keys the hashes stored for conversation ids (supportflow/keys.py); "
        "unset: a random key kept in run_dir (one machine). Replicas need the same one. Placeholders are refused.",
    )
    bind_host: str | None = Field(
        None,
        description="The address the bot listens on. `supportflow serve` binds it (unset: 127.0.0.1) and tells the bot; a bot "
        "started otherwise that is not told assumes it is reachable from anywhere, so its agent API needs registered agents.",
    )
    handoff_retention_days: float = Field(30.0, gt=0, description="Resolved handoffs, transcripts included, are deleted after this.")
    internal_token: SecretStr | None = Field(
        None,
        description="The shared secret of the internal routes (the bot's /internal/answer and both services' /metrics, Rasa's "
        "HTTP API, the action server): required unless every service is on loopback, where the stack makes one per start.",
    )
    # Bounds on what one caller can make a service spend (supportflow/limits.py, docs/bot.md).
    max_request_bytes: int = Field(64 * 1024, gt=0, description="Larger request bodies are refused (413) before they are parsed.")
    max_concurrent_turns: int = Field(
        32,
        ge=1,
        le=39,
        description="Turns (/chat, /twilio) one bot worker serves at once, below AnyIO's 40 threads; more: 503 + Retry-After.",
    )
    conversations_in_memory: int = Field(10_000, ge=1, description="Recent transcripts the bot keeps for handoffs; the oldest go first.")
    conversation_memory_s: float = Field(24 * 3600, gt=0, description="A transcript untouched this long is forgotten.")
    turn_buffer_max: int = Field(100_000, ge=1, description="Turns kept while the lake is down; beyond, the oldest are dropped (logged).")

    # Bundles and releases: `bentoml build` output, the smoke test, and what production serves.
    bentoml_home: Path = PROJECT_ROOT / ".bentoml"
    run_dir: Path = PROJECT_ROOT / ".run"  # the background stack's pids, ports and logs
    prefect_server: Literal["background", "ephemeral"] = Field(
        "background",
        description="The CLI's Prefect API: one local server started once and reused (supportflow/prefect_server.py), "
        "or Prefect's own ephemeral server started and stopped by every command.",
    )
    follow_production: bool = Field(
        True, description="Served classifier and bot follow the `production` alias (one machine); off where rollouts replace images."
    )
    release_poll_seconds: float = Field(10.0, gt=0)
    smoke_examples: int = Field(60, ge=1, description="Test examples the smoke test classifies through the new bundle.")
    smoke_max_accuracy_drop: float = Field(0.1, ge=0, le=1, description="Largest drop from the registered test accuracy on them.")
    # Bot-level evaluation (supportflow/release/resolution.py): labelled messages replayed through /chat, each as a new
    # conversation, counted as answered right or wrong, clarified or handed off.
    evaluate_examples: int = Field(
        0, ge=0, description="Test examples a release replays through its candidate bot while the smoke test serves it; 0: the whole split."
    )
    evaluate_concurrency: int = Field(4, ge=1, description="Conversations replayed at once: a few customers writing together.")
    resolution_experiment: str = "bot-resolution"
    results_dir: Path = Field(
        PROJECT_ROOT / "bench" / "results",
        description="Where `supportflow evaluate` writes resolution_<desk>.json (another desk: in its own stores).",
    )
    # Drift monitor: thresholds as one JSON object in SUPPORTFLOW_DRIFT, its reports in this MLflow experiment.
    drift: DriftThresholds = DriftThresholds()
    drift_experiment: str = "drift-monitor"
    gaps_experiment: str = "knowledge-gaps"  # the knowledge-gap reports (flows/knowledge_gaps.py)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """`SUPPORTFLOW_ENV_FILE`, read when the settings are made (not when this module is imported), so a test
        session can turn `.env` off: a developer's `.env` holds real keys and stores, which must never reach a test."""
        chosen = os.environ.get(ENV_FILE_VARIABLE)
        if chosen is None:
            return init_settings, env_settings, dotenv_settings, file_secret_settings
        dotenv = (DotEnvSettingsSource(settings_cls, env_file=chosen),) if chosen else ()
        return init_settings, env_settings, *dotenv, file_secret_settings

    @field_validator("field_map")
    @classmethod
    def _names_ticket_fields(cls, field_map: dict[str, str]) -> dict[str, str]:
        """A misspelt field (`{"txt": "Message"}`) would be ignored, and the column read under an alias or not at all."""
        if problem := field_map_problem(field_map):
            raise ValueError(problem)
        return field_map

    @model_validator(mode="after")
    def _desk_stores(self) -> "Settings":
        """Another desk than the demo keeps its stores apart, under `<desks_dir>/<workspace folder>/`: two desks on one
        machine must never share a lake, a registry or a release (one desk's tickets would fail the other's
        catalogue, and one desk's champion would be the gate of the other's model). A store set explicitly stays
        where it is set."""
        if self.workspace.resolve() == DEMO_WORKSPACE:
            return self
        root = self.desks_dir / self.workspace.resolve().name
        scoped: dict[str, object] = {
            "lake_url": str(root / "lake"),
            "gx_root": root,
            "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "mlflow_artifact_root": str(root / "mlartifacts"),
            "kb_dir": root / "kb",
            "rasa_project_dir": root / "rasa",
            "handoff_db_url": f"sqlite:///{root / 'handoff.db'}",
            "bentoml_home": root / "bentoml",
            "run_dir": root / "run",
            "results_dir": root / "results",  # a desk's evaluations are its own, not the project's benchmark results
        }
        for name, value in scoped.items():
            if name not in self.model_fields_set:
                object.__setattr__(self, name, value)
        return self

    @property
    def catalogue_file(self) -> Path:
        """The desk's versioned intent catalogue."""
        return self.workspace / "intents.yaml"

    @property
    def suite_dirs(self) -> list[Path]:
        """Where data-contract suites are looked up, first match wins: the workspace's overrides, then the project's."""
        return [self.workspace / "data_contracts", self.contracts_dir]

    def with_field_map(self, field_map: dict[str, str] | None) -> "Settings":
        """These settings reading one more export's columns: its own mapping on top of the configured one."""
        return self.model_copy(update={"field_map": {**self.field_map, **field_map}}) if field_map else self

    def training_profile(self) -> TrainingProfile:
        return self.full_profile if self.train_profile == "full" else self.quick_profile

    def anchored(self) -> "Settings":
        """The same settings with every relative location made absolute from here, for a child process that
        runs elsewhere (a bento serves from its own folder)."""
        update: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Path):
                update[name] = value.resolve()
            elif isinstance(value, list) and value and all(isinstance(item, Path) for item in value):
                update[name] = [item.resolve() for item in value]
            elif isinstance(value, str) and value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
                update[name] = f"sqlite:///{Path(value.removeprefix('sqlite:///')).resolve()}"
        if "://" not in self.lake_url:
            update["lake_url"] = str(Path(self.lake_url).resolve())
        return self.model_copy(update=update)


def settings_problem(error: ValidationError) -> str:
    """Each refused value as the variable a person sets, and why; never the value itself, which may be a secret."""
    lines = []
    for problem in error.errors():
        name = f"{ENV_PREFIX}{str(problem['loc'][0]).upper()}" if problem["loc"] else "the settings"
        lines.append(f"{name}: {problem['msg'].removeprefix('Value error, ')}")
    return "invalid settings (environment or .env):\n  " + "\n  ".join(lines)


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(settings_problem(error)) from None
    except UnparsedSetting as error:  # a structured setting (a field map, a list) that is not JSON
        field = re.search(r'field "(\w+)"', str(error))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "a setting"
        raise SettingsError(f"invalid settings (environment or .env):\n  {name}: not valid JSON ({error.__cause__})") from None
