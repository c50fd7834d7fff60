"""The ratings area of the lake: what the drift monitor reads back of customers' ratings."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from supportflow.bot.feedback import Rating, read_ratings, record_rating
from supportflow.lake import Lake, open_lake
from supportflow.settings import Settings

NOON = datetime(2026, 3, 2, 12, tzinfo=UTC)


def lake_at(folder: Path) -> Lake:
    return open_lake(Settings(lake_url=str(folder)))


def test_a_window_reads_each_rated_turns_latest_rating_given_in_it(tmp_path: Path) -> None:
    lake = lake_at(tmp_path / "lake")
    given = [
        ("a" * 32, False, NOON - timedelta(days=1)),  # the day before: outside the window
        ("b" * 32, False, NOON),
        ("b" * 32, True, NOON + timedelta(minutes=5)),  # the customer changed their mind: this one counts
        ("c" * 32, False, NOON + timedelta(minutes=10)),
        ("c" * 32, False, NOON + timedelta(minutes=11)),  # the same click twice: one file, one rating
        ("d" * 32, True, NOON + timedelta(hours=2)),  # after the window
    ]
    for turn_id, helpful, at in given:
        record_rating(lake, Rating(turn_id=turn_id, conversation_id="c-1", channel="webchat", helpful=helpful, rated_at=at))
    assert len(lake.files("ratings")) == 5
    window = read_ratings(lake, NOON, NOON + timedelta(hours=1))
    assert window[["turn_id", "helpful"]].values.tolist() == [["b" * 32, True], ["c" * 32, False]]
    assert len(read_ratings(lake)) == 4 and read_ratings(lake_at(tmp_path / "empty")).empty
