"""Customers' ratings of the bot's answers: helpful or not, each naming the turn it rates.

A rating is a record of the turn log beside the turn itself, in the lake's `ratings/` area, joined to the
turn by `turn_id`; the drift monitor counts the unhelpful share of a window as a signal
(supportflow/drift/figures.py). Ratings are rare next to turns and a customer waits on nothing else, so each
is written as it comes, in a file named after its content: a repeated click rewrites the same file, and a
changed mind is a second file whose later `rated_at` wins.
"""

from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field

from supportflow.lake import Lake

RATING_SCHEMA = pa.schema(
    [
        ("turn_id", pa.string()),
        ("conversation_id", pa.string()),
        ("channel", pa.string()),
        ("helpful", pa.bool_()),
        ("rated_at", pa.timestamp("us", tz="UTC")),
    ]
)


class Rating(BaseModel):
    turn_id: str
    conversation_id: str  # the stored id (supportflow/keys.py), as in the turn log
    channel: str
    helpful: bool
    rated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def record_rating(lake: Lake, rating: Rating) -> str:
    """Write one rating to `ratings/date=YYYY-MM-DD/<turn_id>-<helpful|unhelpful>.parquet`; returns its path."""
    table = pa.Table.from_pylist([rating.model_dump()], schema=RATING_SCHEMA)
    verdict = "helpful" if rating.helpful else "unhelpful"
    return lake.write_parquet(table, "ratings", f"date={rating.rated_at:%Y-%m-%d}", f"{rating.turn_id}-{verdict}.parquet")


def read_ratings(lake: Lake, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
    """Each rated turn's latest rating given in [start, end)."""
    frames = []
    for path in lake.files("ratings"):
        day = path.split("date=")[1][:10]
        if (start is not None and day < f"{start.astimezone(UTC):%Y-%m-%d}") or (
            end is not None and day > f"{end.astimezone(UTC):%Y-%m-%d}"
        ):
            continue
        frames.append(lake.read_parquet(path))
    ratings = pd.concat(frames, ignore_index=True) if frames else pa.Table.from_pylist([], schema=RATING_SCHEMA).to_pandas()
    if start is not None:
        ratings = ratings[ratings["rated_at"] >= pd.Timestamp(start)]
    if end is not None:
        ratings = ratings[ratings["rated_at"] < pd.Timestamp(end)]
    return ratings.sort_values("rated_at").drop_duplicates("turn_id", keep="last").reset_index(drop=True)
