"""A terminal conversation with the served bot, for `supportflow chat`: the same `/chat` requests the webchat
page sends, so what a person sees here is what a customer gets (knowledge-base answers, clarifications,
handoffs), turn log included."""

import httpx
from pydantic import BaseModel

from supportflow.errors import SupportflowError
from supportflow.settings import Settings


class BotUnavailableError(SupportflowError):
    """No bot answers where one was expected."""


class BotReply(BaseModel):
    conversation_id: str | None = None
    conversation_token: str | None = None  # only in the reply that started the conversation
    replies: list[str] = []
    route: str | None = None
    intent: str | None = None
    detail: str | None = None  # the bot's reason when it refused the message (too long, empty)


def served_bot_url(settings: Settings) -> str:
    """The bot of the stack `supportflow serve --background` (or the demo) left running."""
    from supportflow.release.stack import recorded_stack

    stack = recorded_stack(settings)
    if stack is None:
        raise BotUnavailableError("no bot is serving: start one with `supportflow serve --background` (or pass --url)")
    return stack.bot_url


class BotConversation:
    """One conversation, started by the first message: the bot issues its id and the token that later messages
    show (`X-Conversation-Token`), so each session starts with no history and no one else can join it."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        self.conversation_id: str | None = None
        self.token: str | None = None
        self.client = httpx.Client(timeout=timeout)

    def check(self) -> None:
        """Fail before the person types anything if no bot is ready at the URL (BentoML's `/readyz`)."""
        try:
            ready = self.client.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError as error:
            start = "start one with `supportflow serve --background`"
            raise BotUnavailableError(f"no bot answers at {self.url} ({type(error).__name__}): {start}") from error
        if not ready:
            raise BotUnavailableError(f"the bot at {self.url} is not ready yet (/readyz): try again in a moment")

    def send(self, message: str) -> BotReply:
        if self.conversation_id is None:
            body, headers = {"message": message}, {}
        else:
            body, headers = {"conversation_id": self.conversation_id, "message": message}, {"X-Conversation-Token": self.token or ""}
        try:
            response = self.client.post(f"{self.url}/chat", json=body, headers=headers)
        except httpx.HTTPError as error:
            raise BotUnavailableError(f"the bot at {self.url} stopped answering ({type(error).__name__}: {error})") from error
        try:
            reply = BotReply.model_validate(response.json())
        except ValueError as error:
            raise BotUnavailableError(f"the bot at {self.url} answered HTTP {response.status_code} without a reply") from error
        if reply.conversation_token is not None:
            self.conversation_id, self.token = reply.conversation_id, reply.conversation_token
        return reply

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "BotConversation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
