"""What the served requests are spared: a batching wait left behind by a burst, and per-request logs and spans."""

import re

import pytest
from bentoml._internal.marshal import dispatcher

from supportflow.classifier import batching
from supportflow.classifier.batching import BatchingPatchError, LoneRequestsTeachNoWait, use_in_bentoml_dispatchers
from supportflow.services import bentoml_service_config
from supportflow.settings import Settings

BURST_WAIT = 0.026  # what 32 connections taught BentoML's optimizer here
LATE_LONE_WAIT = 0.024  # a lone request held back for most of that, then woken late


def learnt_wait(optimizer: dispatcher.Optimizer) -> float:
    for _ in range(60):  # past the first samples, which the optimizer skips
        optimizer.log_outbound(n=8, wait=BURST_WAIT, duration=0.01)
    optimizer.trigger_refresh()
    assert optimizer.wait == pytest.approx(BURST_WAIT)
    for _ in range(60):  # the burst is over: one request at a time
        optimizer.log_outbound(n=1, wait=LATE_LONE_WAIT, duration=0.004)
    optimizer.trigger_refresh()
    return optimizer.wait


def test_lone_requests_keep_bentoml_s_learnt_wait_up_and_teach_ours_nothing() -> None:
    assert learnt_wait(dispatcher.Optimizer(max_latency=2.0)) == pytest.approx(LATE_LONE_WAIT)
    assert learnt_wait(LoneRequestsTeachNoWait(max_latency=2.0)) == 0.0


def test_batching_endpoints_built_after_the_switch_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher, "Optimizer", dispatcher.Optimizer)  # undone after the test
    use_in_bentoml_dispatchers()
    cork = dispatcher.CorkDispatcher(2000, 64, fallback=lambda: None)
    assert isinstance(cork.optimizer, LoneRequestsTeachNoWait)
    # the per-item cost model still learns from every call, lone ones included
    for n in (1, 2, 4, 1, 8, 1, 16, 32, 1):
        cork.optimizer.log_outbound(n=n, wait=0.01, duration=0.001 * n + 0.002)
    cork.optimizer.trigger_refresh()
    assert cork.optimizer.o_a == pytest.approx(0.001) and cork.optimizer.o_b == pytest.approx(0.002)


def test_the_dispatcher_polls_at_the_interval_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher, "Optimizer", dispatcher.Optimizer)
    monkeypatch.setattr(dispatcher.CorkDispatcher, "TICKET_INTERVAL", dispatcher.CorkDispatcher.TICKET_INTERVAL)
    use_in_bentoml_dispatchers(poll_interval_s=0.005)
    assert dispatcher.CorkDispatcher.TICKET_INTERVAL == 0.005


@pytest.mark.parametrize("installed", ["1.5.0", "1.3.9", "2.0.0"])
def test_the_patch_refuses_a_bentoml_it_was_not_measured_on(installed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher, "Optimizer", dispatcher.Optimizer)
    monkeypatch.setattr(batching, "bentoml_version", lambda: installed)
    with pytest.raises(
        BatchingPatchError, match=re.escape(f"BentoML {batching.PATCHED_FOR}'s dispatcher, and BentoML {installed} is installed")
    ):
        use_in_bentoml_dispatchers()
    assert dispatcher.Optimizer is not LoneRequestsTeachNoWait  # nothing was patched


def test_the_patch_refuses_a_dispatcher_without_the_hooks_it_replaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher, "Optimizer", type("Optimizer", (), {}))  # a BentoML whose optimizer changed shape
    with pytest.raises(BatchingPatchError, match="has no log_outbound"):
        use_in_bentoml_dispatchers()


@pytest.mark.parametrize("on", [False, True])
def test_access_log_and_spans_follow_the_settings_in_a_config_bentoml_accepts(on: bool) -> None:
    from _bentoml_sdk.service.config import validate
    from opentelemetry.util.http import ExcludeList

    config = validate(bentoml_service_config(Settings(access_log=on, trace_requests=on)))
    assert config["logging"]["access"]["enabled"] is on
    excluded = ExcludeList(config["tracing"].get("excluded_urls", []))  # as BentoML builds it for its middleware
    assert excluded.url_disabled("http://127.0.0.1:3001/classify") is not on
