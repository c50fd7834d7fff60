"""Ratings by SMS: after a bot answer, "Did this answer your question? Reply YES or NO", and the reply recorded.

A workspace switches it on (`channels.sms_feedback`). The question names no turn, so the bot remembers, per
conversation, which answer it asked about (in the handoff database: any bot worker may get the reply, and a restart
keeps it). The customer's next message settles it: a YES or NO is a rating of that answer, recorded as the
webchat's are (supportflow/bot/feedback.py) and never sent to the dialogue as a message; anything else is a new
question, and the question about the old answer lapses, as it does after `WINDOW`.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import String, create_engine, delete
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ANSWERS = frozenset({"kb", "llm"})  # the routes that answer a question: a greeting or a handoff is not rated
WINDOW = timedelta(hours=24)  # a YES or NO later than this is not taken as about an answer the customer saw long ago
YES, NO = frozenset({"yes", "y"}), frozenset({"no", "n"})


class _Base(DeclarativeBase):
    pass


class FeedbackAsk(_Base):
    __tablename__ = "sms_feedback_asks"

    conversation_id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the stored id
    turn_id: Mapped[str] = mapped_column(String(64))  # the answer the question is about
    asked_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


def rating(text: str) -> bool | None:
    """True for a YES, False for a NO (any case, a full stop or exclamation mark after it), None for anything else."""
    word = re.sub(r"[.!\s]+$", "", text.strip().lower())
    return True if word in YES else False if word in NO else None


class FeedbackAsks:
    """The answers whose customers were asked to rate them and have not replied yet, one per conversation."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(
            url, hide_parameters=True, connect_args={"check_same_thread": False} if url.startswith("sqlite") else {}
        )
        _Base.metadata.create_all(self.engine)

    def ask(self, conversation_id: str, turn_id: str) -> None:
        """The customer was asked about `turn_id`; a question about an earlier answer lapses."""
        with self._session() as session:
            session.merge(FeedbackAsk(conversation_id=conversation_id, turn_id=turn_id, asked_at=datetime.now(UTC)))
            session.commit()

    def settle(self, conversation_id: str, text: str) -> tuple[str, bool] | None:
        """The turn the customer's message rates and how, when it is a YES or NO to a question still open; None
        when it is not (a new question: it goes to the bot). Either way the question is closed."""
        with self._session() as session:
            asked = session.get(FeedbackAsk, conversation_id)
            if asked is None:
                return None
            turn_id, asked_at = asked.turn_id, asked.asked_at.replace(tzinfo=UTC)  # SQLite gives back naive UTC
            session.execute(delete(FeedbackAsk).where(FeedbackAsk.conversation_id == conversation_id))
            session.commit()
        helpful = rating(text)
        return (turn_id, helpful) if helpful is not None and asked_at > datetime.now(UTC) - WINDOW else None

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session
