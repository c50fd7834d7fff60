"""Twilio's SMS and WhatsApp webhook: a signed, form-encoded POST in, TwiML out.

The signature is checked with the `twilio` package's own RequestValidator against the public URL
Twilio called (behind a proxy that is not the URL the server sees, so it is configurable).
"""

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse


@dataclass(frozen=True)
class InboundMessage:
    conversation_id: str
    channel: str  # sms or whatsapp
    text: str
    media_count: int
    customer: str  # Twilio's From, as Twilio writes it (whatsapp:+...): where an agent's reply goes
    desk: str  # Twilio's To: the desk's number the customer wrote to, which replies are sent from


def is_signed_by_twilio(auth_token: str, url: str, form: dict[str, str], signature: str | None) -> bool:
    return bool(signature) and RequestValidator(auth_token).validate(url, form, signature)


def parse(form: dict[str, str]) -> InboundMessage:
    sender = form.get("From", "")
    channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
    return InboundMessage(
        conversation_id=f"{channel}:{sender.removeprefix('whatsapp:')}",
        channel=channel,
        text=(form.get("Body") or "").strip(),
        media_count=int(form.get("NumMedia") or 0),
        customer=sender,
        desk=form.get("To", ""),
    )


def twiml(replies: list[str]) -> str:
    response = MessagingResponse()
    for reply in replies:
        response.message(reply)
    return str(response)


def public_url(webhook_url: str | None, route_suffix: str, called: str) -> str:
    """The URL Twilio signed for a request to `/twilio<route_suffix>`: the configured public URL of `/twilio` with the
    suffix and the query Twilio called it with (a `<Gather>` action's own query is signed too), or, with none
    configured, the URL the server saw."""
    if webhook_url is None:
        return called
    scheme, host, path = urlsplit(webhook_url)[:3]
    return urlunsplit((scheme, host, path.rstrip("/") + route_suffix, urlsplit(called).query, ""))
