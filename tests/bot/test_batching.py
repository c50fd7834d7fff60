"""The classifier's batching learns its wait from calls that batched, so a burst leaves no wait behind."""

import pytest
from bentoml._internal.marshal import dispatcher

from supportflow.batching import LoneRequestsTeachNoWait, use_in_bentoml_dispatchers

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
