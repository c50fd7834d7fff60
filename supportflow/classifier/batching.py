"""BentoML's adaptive batching without its sticky wait for lone requests.

BentoML's dispatcher holds a request back while `queue length * (its wait + poll interval + per-item cost)`
stays under 0.95 of the average wait it has logged, and it logs every outbound call's wait, lone requests'
included. A lone request therefore waits about 0.95 of the average, minus half a poll, plus however late the
event loop wakes it, and that wait is fed back into the average. Where the loop wakes late by more than half
a poll plus the per-item cost, the average has a fixed point above zero: (lateness - poll / 2 - per-item
cost) / 0.05, about 28 ms for 1.4 ms of lateness. Measured here: after a burst at 32 connections a lone
`/classify` kept waiting 26-29 ms instead of the ~4 ms it takes.

A request dispatched alone waited for company that never came; its wait says nothing about how long
company takes to arrive. Logging it as no wait removes the fixed point, and the learnt wait then comes from
calls that did batch, which is what the average is for.

BentoML has no public API for its dispatcher, so this patches its internals (`bentoml._internal.marshal`). The
patch is applied only to the BentoML versions it was measured on (PATCHED_FOR, the pin of pyproject.toml); on any
other the service refuses to start with the reason, rather than patch code that may have changed underneath.
"""

from importlib.metadata import version

from bentoml._internal.marshal import dispatcher
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from supportflow.errors import SupportflowError

PATCHED_FOR = SpecifierSet(">=1.4,<1.5")


class BatchingPatchError(SupportflowError):
    """The installed BentoML is not one the batching patch was written and measured for."""


def bentoml_version() -> str:
    return version("bentoml")


def _check_patchable() -> None:
    installed = bentoml_version()
    if Version(installed) not in PATCHED_FOR:
        raise BatchingPatchError(
            f"supportflow/classifier/batching.py patches BentoML {PATCHED_FOR}'s dispatcher, and BentoML {installed} is installed: "
            "re-measure the lone-request wait on it (tests/bot/test_serving_overhead.py) and widen PATCHED_FOR, or drop the patch"
        )
    missing = [
        name
        for name, owner in (("log_outbound", dispatcher.Optimizer), ("TICKET_INTERVAL", dispatcher.CorkDispatcher))
        if not hasattr(owner, name)
    ]
    if missing:
        raise BatchingPatchError(f"BentoML {installed}'s dispatcher has no {', '.join(missing)}: the batching patch does not apply")


class LoneRequestsTeachNoWait(dispatcher.Optimizer):
    def log_outbound(self, n: int, wait: float, duration: float) -> None:
        super().log_outbound(n=n, wait=wait if n > 1 else 0.0, duration=duration)


def use_in_bentoml_dispatchers(poll_interval_s: float | None = None) -> None:
    """Every batching endpoint built after this call learns its wait from batched calls only, and, given
    `poll_interval_s`, its dispatcher polls a queue that many seconds apart (BentoML's default: 1 ms)."""
    _check_patchable()
    dispatcher.Optimizer = LoneRequestsTeachNoWait
    if poll_interval_s is not None:
        dispatcher.CorkDispatcher.TICKET_INTERVAL = poll_interval_s
