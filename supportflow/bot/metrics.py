"""The bot's Prometheus metrics, registered through BentoML so they appear on its `/metrics`."""

import bentoml

from supportflow.bot.engine import CHANNELS

TURN_LATENCY = bentoml.metrics.Histogram(
    name="supportflow_turn_latency_seconds",
    documentation="Time from a customer's message to the bot's reply",
    labelnames=["channel", "route"],
    buckets=(0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INTENT_CONFIDENCE = bentoml.metrics.Histogram(
    name="supportflow_intent_confidence",
    documentation="Calibrated confidence of the predicted intent, per turn",
    buckets=tuple(round(0.1 * i, 1) for i in range(1, 11)),
)
TURNS = bentoml.metrics.Counter(name="supportflow_turns_total", documentation="Turns by route", labelnames=["channel", "route"])
FALLBACKS = bentoml.metrics.Counter(name="supportflow_fallbacks_total", documentation="Turns the bot could not answer itself (handoff)")
HANDOFFS = bentoml.metrics.Counter(
    name="supportflow_handoffs_total", documentation="Conversations handed to a person", labelnames=["reason"]
)
RATINGS = bentoml.metrics.Counter(
    name="supportflow_ratings_total",
    documentation="Customers' ratings of the bot's answers (rating: helpful or unhelpful)",
    labelnames=["channel", "rating"],
)
REJECTED = bentoml.metrics.Counter(
    name="supportflow_rejected_requests_total", documentation="Requests refused, by reason", labelnames=["reason"]
)


def channel_label(channel: str) -> str:
    """A label value from a known set: every distinct value is a new time series, so a caller's string is
    never one (a stream of made-up channels would grow the metrics without end)."""
    return channel if channel in CHANNELS else "unknown"
