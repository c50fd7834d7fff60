"""The shared secret of the routes only the services themselves may call.

The Rasa action server calls the bot's `/internal/answer` (which skips the channels' checks and may open
handoffs and LLM calls), Prometheus reads `/metrics`, the promotion on one machine replaces Rasa's model, and Rasa
calls the action server. None of these is for customers, yet all sit on ports customers can reach unless the
network says otherwise, so each needs the same bearer token, `internal_token`. On one machine (every service
on loopback) the stack makes a random one per start when none is configured; anywhere else the services
refuse to start without a real one.
"""

import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

from pydantic import SecretStr
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from supportflow.errors import SupportflowError
from supportflow.keys import SecretKeyError, checked_secret
from supportflow.settings import Settings, get_settings

INTERNAL_PREFIXES = ("/internal/",)
INTERNAL_PATHS = frozenset({"/metrics"})
MIN_TOKEN_CHARS = 24


class InternalAuthError(SupportflowError):
    """The internal token is missing where it is required, or is a placeholder."""


def is_loopback(host: str | None) -> bool:
    """Whether an address is reachable only from this machine; an unknown one (None) is not."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname)


def on_one_machine(settings: Settings) -> bool:
    """Whether every service talks to the others over loopback: then no other machine can reach them, and a
    token made at start-up (and shared through the environment) is enough."""
    return all(is_loopback_url(url) for url in (settings.bot_url, settings.classifier_url, settings.rasa_url, settings.action_server_url))


def refuse_placeholder(name: str, value: str) -> None:
    """A secret that is short or a template's placeholder is refused with the reason, never used (the same rule as
    the server key's, supportflow/keys.py)."""
    try:
        checked_secret(name, SecretStr(value), MIN_TOKEN_CHARS)
    except SecretKeyError as error:
        raise InternalAuthError(str(error)) from None


def internal_token(settings: Settings) -> str | None:
    """The configured token, checked; None only on one machine, where the stack makes one."""
    token = settings.internal_token
    if token is None:
        if on_one_machine(settings):
            return None
        raise InternalAuthError(
            "SUPPORTFLOW_INTERNAL_TOKEN is required when the services are not all on loopback "
            f"(bot {settings.bot_url}, rasa {settings.rasa_url}, actions {settings.action_server_url}, "
            f"classifier {settings.classifier_url})"
        )
    refuse_placeholder("SUPPORTFLOW_INTERNAL_TOKEN", token.get_secret_value())
    return token.get_secret_value()


def new_internal_token() -> str:
    return secrets.token_hex(32)  # hex: safe in a command line, a URL's query and a header alike


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def is_internal(path: str) -> bool:
    return path in INTERNAL_PATHS or path.startswith(INTERNAL_PREFIXES)


def presents(authorization: str | None, token: str) -> bool:
    """Constant time: how much of a guess matched must not show in how long the refusal took."""
    return authorization is not None and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


class InternalRoutes:
    """ASGI middleware, added with BentoML's `add_asgi_middleware` so it also covers BentoML's own `/metrics`:
    internal routes need `Authorization: Bearer <internal token>`. With no token configured (a bot started by
    hand on one machine) they are closed: the action server's callbacks then fail, and the bot hands off."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        self.token = internal_token(settings or get_settings())  # at server start: a bad token stops it there

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_internal(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        if self.token is not None and presents(authorization, self.token):
            await self.app(scope, receive, send)
            return
        reason = "needs `Authorization: Bearer <internal token>`" if self.token else "is closed: no internal token is configured"
        refusal = JSONResponse({"detail": f"{scope['path']} is internal and {reason}"}, 401, {"WWW-Authenticate": "Bearer"})
        await refusal(scope, receive, send)
