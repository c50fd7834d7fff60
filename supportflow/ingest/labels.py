"""Labels people give after the fact (an agent resolving a handoff, or labelling a turn from the review queue) land in
the lake as labelled tickets, through this one door, so the next training run learns from them like any export.

A label's ticket id is a hash of its content, and its file is named by it: the same message given the same intent
twice, from a handoff and then from the review queue, lands once.
"""

from datetime import UTC, datetime

import pandas as pd

from supportflow.ingest.tickets import to_table, to_tickets
from supportflow.lake import Lake
from supportflow.redact import Redactor

AGENT_LABEL_SOURCE = "agent_label"


def write_label(lake: Lake, text: str, intent: str, channel: str) -> str:
    """Land one labelled message as a ticket (`source=agent_label`); returns its ticket id."""
    now = datetime.now(UTC)
    raw = pd.DataFrame({"text": [text], "intent": [intent], "channel": [channel]})
    tickets = to_tickets(raw, AGENT_LABEL_SOURCE, "other", Redactor(), now)
    ticket_id = str(tickets["ticket_id"].iloc[0])
    name = f"{AGENT_LABEL_SOURCE}-{ticket_id}.parquet"
    if not lake.fs.glob(lake.path("tickets", "*", name)):  # given before: the lake keeps one
        lake.write_parquet(to_table(tickets), "tickets", f"ingest_date={now:%Y-%m-%d}", name)
    return ticket_id
