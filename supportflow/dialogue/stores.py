"""Where Rasa keeps its conversations (the tracker store) and the locks that keep one conversation's turns in order.

The generated `endpoints.yml` names both stores through environment variables, which Rasa substitutes when it
starts, so one built project (and the image that carries it) serves one machine and a cluster alike:
- the tracker store is always SQL: by default a SQLite file in the run folder, so a restarted Rasa continues every
  open conversation with its slots; at scale a PostgreSQL database all Rasa replicas share;
- the lock store is Rasa's in-memory one, unless a Redis URL is given: replicas must share their locks, or two
  messages of one conversation could be processed at once on two servers.

`store_environment` turns the settings into those variables; Rasa started outside supportflow (a container) is
given the same variables by its manifest (docs/operations.md).
"""

from pathlib import Path
from urllib.parse import unquote, urlsplit

from supportflow.errors import SupportflowError
from supportflow.settings import Settings

TRACKER_STORE_URL = "SUPPORTFLOW_RASA_TRACKER_STORE_URL"
LOCK_STORE_TYPE = "SUPPORTFLOW_RASA_LOCK_STORE"
LOCK_STORE_HOST = "SUPPORTFLOW_RASA_LOCK_STORE_HOST"
LOCK_STORE_PORT = "SUPPORTFLOW_RASA_LOCK_STORE_PORT"
LOCK_STORE_DB = "SUPPORTFLOW_RASA_LOCK_STORE_DB"
LOCK_STORE_PASSWORD = "SUPPORTFLOW_RASA_LOCK_STORE_PASSWORD"
TRACKER_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2")  # what Rasa's environment has drivers for
DEFAULT_TRACKER_FILE = "rasa-trackers.db"
# Rasa's in-memory lock store reads none of the other variables; they are set because every one must be.
IN_MEMORY_LOCKS = {LOCK_STORE_TYPE: "in_memory", LOCK_STORE_HOST: "", LOCK_STORE_PORT: "0", LOCK_STORE_DB: "0", LOCK_STORE_PASSWORD: ""}


class DialogueStoreError(SupportflowError):
    """A Rasa store setting Rasa could not use."""


def endpoints_stores() -> dict[str, dict[str, str]]:
    """The stores' part of `endpoints.yml`: every value is substituted by Rasa from the environment at start-up."""
    return {
        "tracker_store": {"type": "SQL", "url": f"${{{TRACKER_STORE_URL}}}"},
        "lock_store": {
            "type": f"${{{LOCK_STORE_TYPE}}}",  # in_memory or redis: Rasa's own names
            "url": f"${{{LOCK_STORE_HOST}}}",
            "port": f"${{{LOCK_STORE_PORT}}}",
            "db": f"${{{LOCK_STORE_DB}}}",
            "password": f"${{{LOCK_STORE_PASSWORD}}}",
        },
    }


def tracker_store_url(settings: Settings) -> str:
    """The configured tracker store, checked: a URL whose driver Rasa's environment lacks fails here, with the reason,
    rather than in Rasa's start-up log."""
    url = settings.rasa_tracker_store_url or f"sqlite:///{(Path(settings.run_dir) / DEFAULT_TRACKER_FILE).resolve()}"
    scheme = url.partition("://")[0]
    if scheme not in TRACKER_SCHEMES:
        raise DialogueStoreError(
            f"SUPPORTFLOW_RASA_TRACKER_STORE_URL must start with one of {', '.join(s + '://' for s in TRACKER_SCHEMES)} "
            f"(the drivers Rasa's environment has); it starts with {scheme[:32]!r}"
        )
    return url


def store_environment(settings: Settings) -> dict[str, str]:
    """The variables the generated `endpoints.yml` asks for, from the settings."""
    environment = {TRACKER_STORE_URL: tracker_store_url(settings)}
    if settings.rasa_lock_store_url is None:
        return environment | IN_MEMORY_LOCKS
    parts = urlsplit(settings.rasa_lock_store_url)
    database = parts.path.strip("/") or "0"
    if parts.scheme != "redis" or not parts.hostname or not database.isdigit():
        raise DialogueStoreError(
            "SUPPORTFLOW_RASA_LOCK_STORE_URL must look like redis://[:password@]host[:port][/database number] "
            "(Rasa's lock store reads no TLS setting from the environment)"
        )
    return environment | {
        LOCK_STORE_TYPE: "redis",
        LOCK_STORE_HOST: parts.hostname,
        LOCK_STORE_PORT: str(parts.port or 6379),
        LOCK_STORE_DB: database,
        LOCK_STORE_PASSWORD: unquote(parts.password or ""),
    }
