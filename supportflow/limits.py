"""Bounds on what one caller can make a served process spend, as ASGI middlewares added with BentoML's
`add_asgi_middleware` (so they run before any route, BentoML's own included).

- `BodyLimit`: a request body over `max_request_bytes` is refused (413) before anything parses it; a body
  without a Content-Length is counted as it arrives and refused as soon as it is too long.
- `TurnLimit`: a turn (`/chat`, `/twilio`) holds one of the worker's threads while it waits on Rasa, and Rasa's
  actions call back into the same worker. Past `max_concurrent_turns` at once a turn is refused (503 with
  Retry-After) instead of queueing for a thread, so the threads never all wait on callbacks that cannot run.
"""

from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from supportflow.settings import Settings, get_settings

TURN_ROUTES = frozenset({"/chat", "/twilio", "/twilio/voice"})  # a call's speech is a turn too
RETRY_AFTER_S = 1


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        self.max_bytes = (settings or get_settings()).max_request_bytes

    def _too_large(self, size: int | str) -> JSONResponse:
        return JSONResponse({"detail": f"the request body is {size} bytes; at most {self.max_bytes:,} are accepted"}, 413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(f"{int(declared):,}")(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._too_large(f"over {self.max_bytes:,}")(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


class TurnLimit:
    """Counts the turns in flight on this worker's event loop (one per worker, so no lock is needed)."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None, routes: Iterable[str] = TURN_ROUTES) -> None:
        self.app = app
        self.limit = (settings or get_settings()).max_concurrent_turns
        self.routes = frozenset(routes)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            detail = f"the bot is answering {self.in_flight} messages at once, its limit: try again in a moment"
            await JSONResponse({"detail": detail}, 503, {"Retry-After": str(RETRY_AFTER_S)})(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
