"""The server's secret key, and what is derived from it: webchat conversation tokens and the keyed hashes that
stand for conversation ids wherever they are stored or logged.

A conversation token is an HMAC of its id, so any replica holding the same key checks it without shared state;
a stored id is an HMAC too, so a turn log, a handoff queue or a Rasa tracker holds no phone number, and the
same phone still maps to the same stored id on its next message. Each use has its own label in the HMAC, so a
token is never a stored id nor the other way round.
"""

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from supportflow.errors import SupportflowError
from supportflow.settings import Settings

MIN_KEY_CHARS = 32  # 32 characters of a random token: far beyond guessing
# Words that mark a value copied from a template (deploy/k8s/secrets.example.yaml) rather than a real secret.
PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me", "replace-me", "replaceme", "your-", "example", "placeholder", "xxxx")
KEY_FILE = "secret_key"
WEBCHAT_PREFIX = "web-"  # the ids the server issues; sms: and whatsapp: ids come only from the signed Twilio route


class SecretKeyError(SupportflowError):
    """A configured secret that is a placeholder, empty or too short, or a key file that cannot be used."""


def checked_secret(variable: str, secret: SecretStr, min_chars: int = MIN_KEY_CHARS) -> str:
    """The secret's value, or a refusal that names the variable and why: a placeholder left from a template is
    public knowledge, so accepting it would be accepting no secret at all."""
    value = secret.get_secret_value().strip()
    if not value:
        raise SecretKeyError(
            f"{variable} is empty: set a random value (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    if any(word in value.lower() for word in PLACEHOLDER_WORDS):
        raise SecretKeyError(f"{variable} is a placeholder copied from a template: set a real random value")
    if len(value) < min_chars:
        raise SecretKeyError(f"{variable} is {len(value)} characters long; at least {min_chars} random characters are needed")
    return value


def key_file(settings: Settings) -> Path:
    return settings.run_dir / KEY_FILE


def server_key(settings: Settings) -> bytes:
    """The configured `SUPPORTFLOW_SECRET_KEY`; unset, a random key generated once on this machine and kept (0600)
    in the run folder, so conversations and stored ids survive a restart. Replicas on several machines must be
    given the same configured key."""
    if settings.secret_key is not None:
        return checked_secret("SUPPORTFLOW_SECRET_KEY", settings.secret_key).encode()
    path = key_file(settings)
    if not path.exists():
        _create_key_file(path)
    if path.stat().st_mode & 0o077:
        raise SecretKeyError(f"{path} can be read by other users (mode {path.stat().st_mode & 0o777:o}): `chmod 600 {path}`")
    return checked_secret(str(path), SecretStr(path.read_text())).encode()


def _create_key_file(path: Path) -> None:
    """Written under a temporary name and linked into place: two workers starting together agree on one key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        with contextlib.suppress(FileExistsError):  # another worker won the race: its key is the key
            os.link(temporary, path)
    finally:
        temporary.unlink()


@dataclass(frozen=True)
class ConversationKeys:
    """Conversation tokens and stored ids, both keyed by the server key."""

    key: bytes

    def _mac(self, label: str, conversation_id: str) -> bytes:
        return hmac.new(self.key, f"{label}\0{conversation_id}".encode(), hashlib.sha256).digest()

    def stored_id(self, conversation_id: str) -> str:
        """What the turn log, logs, handoff queue and Rasa know a conversation by (128 bits of a keyed hash)."""
        return "c-" + self._mac("stored-id", conversation_id)[:16].hex()

    def token(self, conversation_id: str) -> str:
        return base64.urlsafe_b64encode(self._mac("webchat-token", conversation_id)).decode().rstrip("=")

    def new_webchat_conversation(self) -> tuple[str, str]:
        """An unguessable id and its token, for a customer starting a webchat conversation."""
        conversation_id = WEBCHAT_PREFIX + secrets.token_urlsafe(18)
        return conversation_id, self.token(conversation_id)

    def new_turn_id(self, stored_id: str) -> str:
        """A turn's id (32 hex, the shape of a uuid's): 64 random bits and 64 of an HMAC binding them to the
        conversation, so any replica can tell, with no shared state, a turn it issued to this conversation from
        one made up or taken from another (a customer's rating names one)."""
        nonce = secrets.token_hex(8)
        return nonce + self._mac("turn-id", f"{stored_id}\0{nonce}")[:8].hex()

    def issued_turn(self, stored_id: str, turn_id: str) -> bool:
        """Whether `turn_id` is one `new_turn_id` issued for this conversation (compared in constant time)."""
        if len(turn_id) != 32 or not all(c in "0123456789abcdef" for c in turn_id):
            return False
        expected = self._mac("turn-id", f"{stored_id}\0{turn_id[:16]}")[:8].hex()
        return hmac.compare_digest(expected.encode(), turn_id[16:].encode())

    def owns_webchat_conversation(self, conversation_id: str, token: str | None) -> bool:
        """Whether the token is the one this server issued for this webchat id (compared in constant time)."""
        if token is None or not conversation_id.startswith(WEBCHAT_PREFIX):
            return False
        return hmac.compare_digest(self.token(conversation_id).encode(), token.encode())


def conversation_keys(settings: Settings) -> ConversationKeys:
    return ConversationKeys(server_key(settings))
