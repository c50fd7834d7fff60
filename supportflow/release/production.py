"""What production serves: the registry version the `production` alias names, and following it.

A release sets `production` only after its bundle passed the smoke test (supportflow/release/promote.py). On
one machine the running services follow the alias, so a promotion or a rollback reaches them within
`release_poll_seconds` with no restart and no failed request; where rollouts replace images
(Kubernetes), `follow_production` is off and each pod keeps the model its bundle carries.
"""

import logging
import threading
from collections.abc import Callable

from mlflow import MlflowClient

from supportflow.errors import RegistryError
from supportflow.settings import Settings
from supportflow.tracking import CHAMPION, PRODUCTION, connect

log = logging.getLogger("supportflow.release.production")


def alias_version(settings: Settings, alias: str, client: MlflowClient | None = None) -> tuple[str, str]:
    """The aliased version and the serving variant its training run chose."""
    client = client or connect(settings, check=False)
    try:
        version = client.get_model_version_by_alias(settings.registered_model_name, alias)
    except Exception as error:
        raise RegistryError(
            f"{settings.registered_model_name} has no @{alias} in {settings.mlflow_tracking_uri}: train one first"
        ) from error
    variant = client.get_run(version.run_id).data.tags.get("serving_variant", "torch")
    return str(version.version), variant


def served_version(settings: Settings, client: MlflowClient | None = None) -> tuple[str, str]:
    """The `production` release's version, or before the first release the champion."""
    try:
        return alias_version(settings, PRODUCTION, client)
    except RegistryError:
        return alias_version(settings, CHAMPION, client)


class ProductionFollower(threading.Thread):
    """Polls the alias and calls `on_change(version, variant)` when it moves; errors are logged, never raised,
    so a registry outage leaves the current model serving."""

    def __init__(self, settings: Settings, current: str | None, on_change: Callable[[str, str], None]) -> None:
        super().__init__(name="production-follower", daemon=True)
        self.settings, self.current, self.on_change = settings, current, on_change
        self.client = connect(settings, check=False)  # one client: no new store per poll
        self.stopped = threading.Event()

    def start(self) -> None:
        """Checks once right away (the registry client's imports and caches then belong to start-up), then polls."""
        self.check()
        super().start()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.release_poll_seconds):
            self.check()

    def check(self) -> None:
        try:
            version, variant = served_version(self.settings, self.client)
            if version != self.current:
                log.info("production moved from v%s to v%s: loading it", self.current, version)
                self.on_change(version, variant)
                self.current = version
        except Exception as error:  # keep serving what we have
            log.warning("could not follow production: %s", error)

    def stop(self) -> None:
        self.stopped.set()
