"""The action server's door: every route but `/health` needs the internal token.

rasa-sdk has no authentication of its own, and whoever can call its `/webhook` can make the actions call the
bot with the internal token on any conversation's behalf. rasa-sdk's plugin hook is the public way in: at
start-up it imports a module named `rasa_sdk_plugins` when one is importable (the project folder is on
PYTHONPATH) and calls `init_hooks`. Rasa sends the token on each call (`headers` in endpoints.yml).
Runs in Rasa's Python 3.10 environment; with SUPPORTFLOW_INTERNAL_TOKEN unset every call is refused.
"""

import hmac
import logging
import os
import sys
from typing import Optional

import pluggy
from sanic import Sanic
from sanic.request import Request
from sanic.response import HTTPResponse, json

log = logging.getLogger(__name__)
hookimpl = pluggy.HookimplMarker("rasa_sdk")
OPEN_PATHS = frozenset({"/health"})  # the probes'


@hookimpl
def attach_sanic_app_extensions(app: Sanic) -> None:
    token = os.environ.get("SUPPORTFLOW_INTERNAL_TOKEN", "")
    if not token:
        log.error("SUPPORTFLOW_INTERNAL_TOKEN is not set: the action server refuses every call")
    expected = f"Bearer {token}".encode()

    async def require_token(request: Request) -> Optional[HTTPResponse]:
        if request.path in OPEN_PATHS:
            return None
        given = request.headers.get("authorization", "").encode()
        if token and hmac.compare_digest(given, expected):
            return None
        return json({"error": "the action server needs `Authorization: Bearer <internal token>`"}, status=401)

    app.register_middleware(require_token, "request")


def init_hooks(manager: pluggy.PluginManager) -> None:
    manager.register(sys.modules[__name__])
