"""The agents who may use the agent API: a name and the hash of a token, in the handoff database.

An agent is who their token says: the name an answer or a resolution is recorded under comes from the
credential, never from the request. Tokens are 256 random bits (`secrets.token_urlsafe`), so a plain SHA-256
keeps them safe at rest (a slow password hash guards guessable secrets, and costs every request); each
presented token is compared with every stored hash in constant time.

Bound to loopback with no agent registered, the API serves the developer at the keyboard as `local`; reachable
from elsewhere it needs a registered agent, and the bot refuses to start without one (`require_agents`).
"""

import hashlib
import hmac
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import String, create_engine, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from supportflow.errors import SupportflowError
from supportflow.internal_auth import is_loopback

LOCAL_AGENT = "local"  # who uses the API on a loopback-bound bot with no agent registered
DEMO_AGENT = "demo"  # the agent `supportflow demo` signs a newcomer in as
DEMO_TOKEN_FILE = "demo_agent_token"  # in the run folder, 0600: the demo prints it on every run
AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AgentError(SupportflowError):
    """An agent that cannot be added or removed, or an agent API that must not start."""


class _Base(DeclarativeBase):
    pass


class Agent(_Base):
    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


class AgentRecord(BaseModel):
    name: str
    created_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Agents:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, connect_args={"check_same_thread": False} if url.startswith("sqlite") else {})
        _Base.metadata.create_all(self.engine)

    def add(self, name: str) -> str:
        """Register an agent; returns their token, which is stored only as a hash, so it is shown this once."""
        if not AGENT_NAME.match(name) or name == LOCAL_AGENT:
            raise AgentError(f"agent name {name!r}: 1-64 letters, digits or ._- (starting with a letter or digit), and not {LOCAL_AGENT!r}")
        token = secrets.token_urlsafe(32)
        with Session(self.engine) as session:
            if session.get(Agent, name) is not None:
                raise AgentError(f"agent {name!r} exists: remove it first to issue a new token")
            session.add(Agent(name=name, token_sha256=_digest(token)))
            session.commit()
        return token

    def remove(self, name: str) -> None:
        with Session(self.engine) as session:
            if session.execute(delete(Agent).where(Agent.name == name)).rowcount == 0:
                raise AgentError(f"no agent {name!r}")
            session.commit()

    def registered(self) -> list[AgentRecord]:
        with Session(self.engine) as session:
            return [AgentRecord(name=a.name, created_at=a.created_at) for a in session.scalars(select(Agent).order_by(Agent.name))]

    def identify(self, token: str | None, open_when_none: bool) -> str | None:
        """The agent a token belongs to, or None. With no agent registered and `open_when_none` (a loopback-bound
        bot), the local developer. Every stored hash is compared, in constant time, whatever matches first."""
        with Session(self.engine) as session:
            stored = session.execute(select(Agent.name, Agent.token_sha256)).all()
        if not stored:
            return LOCAL_AGENT if open_when_none else None
        presented = _digest(token or "").encode()
        found = None
        for name, digest in stored:
            if hmac.compare_digest(presented, digest.encode()):
                found = name
        return found if token else None


def demo_agent_token(agents: Agents, run_dir: Path) -> str | None:
    """The demo agent's token, registering the agent on first use. A token is shown only once, so the demo keeps it
    (0600, in the run folder beside the server key) to print again; None when an agent named `demo` exists whose
    token is not kept there (registered by hand: it was shown to whoever did)."""
    path = run_dir / DEMO_TOKEN_FILE
    if any(agent.name == DEMO_AGENT for agent in agents.registered()):
        return path.read_text().strip() if path.exists() else None
    token = agents.add(DEMO_AGENT)
    run_dir.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a stale token of a removed demo agent
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token)
    return token


def require_agents(agents: Agents, bind_host: str | None) -> None:
    """Refuse to serve an agent API that anyone who reaches the bot could use."""
    if not is_loopback(bind_host) and not agents.registered():
        where = f"SUPPORTFLOW_BIND_HOST={bind_host}" if bind_host else "SUPPORTFLOW_BIND_HOST is unset, so the bot may be reachable"
        raise AgentError(
            f"the agent API would be open to anyone ({where}) and no agent is registered: add one with "
            "`supportflow agent add NAME` (it prints the agent's token once), or serve the bot on 127.0.0.1"
        )
