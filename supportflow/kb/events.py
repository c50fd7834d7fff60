"""Tell Prefect that the knowledge base's sources changed, so the `kb-index-on-change` deployment rebuilds it.

The deployment's trigger (prefect.yaml) waits for `supportflow.kb.changed` on a `supportflow.kb.*` resource and
passes the event's `sources` to `kb_index`; an event without sources rebuilds from the configured ones.
"""

from collections.abc import Sequence

from supportflow.errors import KnowledgeBaseError
from supportflow.settings import Settings

KB_CHANGED = "supportflow.kb.changed"


def kb_resource_id(settings: Settings) -> str:
    return f"supportflow.kb.{settings.kb_index_name}"


def emit_kb_changed(settings: Settings, sources: Sequence[str] = ()) -> str:
    """Send the event to the Prefect server now (not through a background worker: the CLI exits right after);
    returns the event's id. Without a server the event would go nowhere, so that is an error, not a no-op.
    Sources are paths as the worker that runs `kb_index` sees them (relative to SUPPORTFLOW_HOME), so they are
    passed on as given; `kb_index` names any it cannot read."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.asyncutils import run_coro_as_sync

    if not PREFECT_API_URL.value():
        raise KnowledgeBaseError("no Prefect server to tell: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) and deploy prefect.yaml")
    event = Event(
        event=KB_CHANGED,
        resource={"prefect.resource.id": kb_resource_id(settings), "prefect.resource.name": settings.kb_index_name},
        payload={"sources": list(sources)},
    )

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    try:
        run_coro_as_sync(send())  # also from code already inside an event loop
    except OSError as error:
        raise KnowledgeBaseError(f"the Prefect server at {PREFECT_API_URL.value()} did not take the event: {error}") from error
    return str(event.id)
