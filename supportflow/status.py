"""What is in production, gathered from where each stage records it, for `supportflow status`.

Every part is read, never created or repaired: on an empty store each says that nothing is there yet
instead of failing, and a part that cannot be read (a registry or search service down) says why while
the others are still reported.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from pydantic import BaseModel

from supportflow.errors import SupportflowError
from supportflow.lake import open_lake
from supportflow.release.promote import Release, current_release
from supportflow.settings import Settings

if TYPE_CHECKING:
    from supportflow.release.stack import RecordedStack


class ClassifierStatus(BaseModel):
    production: str | None = None  # registry versions behind @production and @champion
    champion: str | None = None
    note: str | None = None


class KnowledgeBaseStatus(BaseModel):
    backend: str
    build: str | None = None
    note: str | None = None


class DialogueStatus(BaseModel):
    model: str | None = None
    source: str | None = None  # "release": the bot bundle carries it; "local": the last `supportflow pipeline` left it
    note: str | None = None  # the running Rasa serves another model (it refused this one)


class ServiceStatus(BaseModel):
    name: str
    url: str
    health_url: str
    healthy: bool


class PrefectStatus(BaseModel):
    api_url: str | None = None
    ui_url: str | None = None
    source: str | None = None  # "background server" (supportflow/prefect_server.py) or "PREFECT_API_URL"


class ProductionStatus(BaseModel):
    release: Release | None
    classifier: ClassifierStatus
    knowledge_base: KnowledgeBaseStatus
    dialogue: DialogueStatus
    services: list[ServiceStatus]
    supervisor: int | None = None  # the process keeping the background stack serving
    prefect: PrefectStatus


def _classifier(settings: Settings) -> ClassifierStatus:
    from supportflow.release.production import alias_version
    from supportflow.tracking import CHAMPION, PRODUCTION, connect

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return ClassifierStatus(note=f"no registry yet ({uri}): nothing trained")  # opening it would create one
    client = connect(settings, check=False)
    versions: dict[str, str | None] = {}
    for alias in (PRODUCTION, CHAMPION):
        try:
            versions[alias] = alias_version(settings, alias, client)[0]
        except SupportflowError:
            versions[alias] = None
    note = None if versions[CHAMPION] else f"{settings.registered_model_name} has no @{CHAMPION}: nothing trained"
    return ClassifierStatus(production=versions[PRODUCTION], champion=versions[CHAMPION], note=note)


def _knowledge_base(settings: Settings) -> KnowledgeBaseStatus:
    from supportflow.kb.build import keyword_index

    status = KnowledgeBaseStatus(backend=settings.search_backend)
    try:
        status.build = keyword_index(settings).serving()
    except SupportflowError as error:
        status.note = str(error)
        return status
    if status.build is None:
        status.note = f"no build served as {settings.kb_index_name!r}: run `supportflow kb-index`"
    return status


def _dialogue(settings: Settings, release: Release | None, stack: "RecordedStack | None") -> DialogueStatus:
    from supportflow.release.bundle import dialogue_archive

    local = settings.rasa_project_dir / "models" / "supportflow.tar.gz"
    if release is not None:
        status, archive = DialogueStatus(model=release.bundles.dialogue_model, source="release"), None
        try:
            archive = dialogue_archive(settings, release.bundles.dialogue_model)
        except SupportflowError as error:
            status.note = str(error)
    elif local.exists():
        status, archive = DialogueStatus(model=str(local), source="local"), local
    else:
        return DialogueStatus()
    if stack is not None and stack.dialogue_model and archive is not None and Path(stack.dialogue_model) != archive:
        status.note = (
            f"the running Rasa serves {stack.dialogue_model}, not this model: it refused it (see {settings.run_dir / 'logs'}/rasa.log); "
            "`supportflow serve --background` starts it on this one"
        )
    return status


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _services(stack: "RecordedStack | None") -> list[ServiceStatus]:
    if stack is None:
        return []
    services = []
    for name, health_url in stack.health.items():
        url = httpx.URL(health_url).copy_with(path="/")
        services.append(ServiceStatus(name=name, url=str(url).rstrip("/"), health_url=health_url, healthy=_answers(health_url)))
    return services


def _prefect(settings: Settings) -> PrefectStatus:
    from supportflow.prefect_server import configured_api_url, recorded_server

    server = recorded_server(settings)
    if server is not None:
        return PrefectStatus(api_url=server.api_url, ui_url=server.ui_url, source="background server")
    configured = configured_api_url()
    if configured is not None:
        return PrefectStatus(api_url=configured, ui_url=configured.removesuffix("/api"), source="PREFECT_API_URL")
    return PrefectStatus()


def production_status(settings: Settings) -> ProductionStatus:
    from supportflow.release.stack import recorded_stack

    release, stack = current_release(open_lake(settings)), recorded_stack(settings)
    return ProductionStatus(
        release=release,
        classifier=_classifier(settings),
        knowledge_base=_knowledge_base(settings),
        dialogue=_dialogue(settings, release, stack),
        services=_services(stack),
        supervisor=_supervisor(stack),
        prefect=_prefect(settings),
    )


def _supervisor(stack: "RecordedStack | None") -> int | None:
    """The background stack's supervisor, while it runs."""
    import psutil

    return stack.supervisor if stack is not None and stack.supervisor and psutil.pid_exists(stack.supervisor) else None
