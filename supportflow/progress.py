"""Progress of the long steps, shown where a person is looking: a bar in the terminal, a progress artifact in Prefect.

The stages report their long steps (files ingested and validated, training steps, passages embedded, bundles
built, smoke checks) through `Step`, and show nothing unless someone watches. The CLI opens `bars()` around a
command in a terminal, which draws one rich bar per step on stderr (stdout stays clean for `--json`). A step
that runs inside a Prefect flow or task run also keeps a progress artifact up to date, so the Prefect UI shows
the same progress; those updates are API calls, so they are sent at most every `PREFECT_EVERY_S` seconds.
Prefect is never imported here: a process that has not imported it cannot be inside a flow run, and the served
bot must not load it.
"""

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeRemainingColumn

PREFECT_EVERY_S = 2.0
_bars: Progress | None = None
_bars_wanted = False
log = logging.getLogger("supportflow.progress")


@contextmanager
def bars(enabled: bool = True) -> Iterator[None]:
    """Draw the steps that run inside this block as bars on stderr. The display starts with the first step, so a
    command with no long step (`chat`, `status`) writes nothing to the terminal but its own output."""
    global _bars_wanted, _bars
    _bars_wanted = enabled
    try:
        yield
    finally:
        _bars_wanted = False
        if _bars is not None:
            _bars.stop()
            _bars = None


def _shown() -> Progress | None:
    global _bars
    if _bars is None and _bars_wanted:
        _bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}", style="dim"),
            console=Console(stderr=True),
        )
        _bars.start()
    return _bars


def _in_prefect_run() -> bool:
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


class Step:
    """One long step: `with Step("embed passages", total=n) as step: ... step.advance(len(batch))`."""

    def __init__(self, description: str, total: float | None = None) -> None:
        self.description = description
        self.total = total
        self.completed = 0.0
        shown = _shown()
        self._task: TaskID | None = shown.add_task(description, total=total, detail="") if shown is not None else None
        self._artifact: UUID | None = None
        self._sent_at = 0.0
        if total and _in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            try:
                self._artifact = create_progress_artifact(progress=0.0, description=description)
            except Exception as error:  # the UI's progress is a courtesy: an API hiccup must not fail the step it shows
                log.warning("no progress artifact for %s: %s", description, error)

    def advance(self, amount: float = 1.0, detail: str | None = None) -> None:
        self.completed += amount
        self._show(detail)

    def describe(self, detail: str) -> None:
        """A note beside the bar (the loss, the file at hand) that moves nothing forward."""
        self._show(detail)

    def _show(self, detail: str | None, final: bool = False) -> None:
        if _bars is not None and self._task is not None:
            fields: dict[str, Any] = {} if detail is None else {"detail": detail}
            _bars.update(self._task, completed=self.completed, **fields)
        now = time.monotonic()
        if self._artifact is not None and self.total and (final or now - self._sent_at >= PREFECT_EVERY_S):
            from prefect.artifacts import update_progress_artifact

            try:
                update_progress_artifact(self._artifact, progress=min(100.0, 100.0 * self.completed / self.total))
            except Exception as error:  # as above: shown progress is not worth a failed step
                log.warning("progress of %s not sent to Prefect: %s", self.description, error)
                self._artifact = None
            self._sent_at = now

    def close(self) -> None:
        """The last state reaches the Prefect UI even when it came within the throttle's interval."""
        self._show(None, final=True)

    def __enter__(self) -> "Step":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()
