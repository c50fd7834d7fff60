"""Replies written by an LLM, grounded in knowledge-base passages, and never trusted blindly.

Any OpenAI-compatible endpoint works (`openai_base_url`). The prompt gives the model only the top
passages and asks it to say when they do not hold the answer; a timeout, an error, an "I don't know",
a link off the knowledge base's domains, or a reply that fails moderation returns None, and the caller
falls back to the knowledge-base answer or to a human.

The provider is a third party: the customer's message is redacted before it is sent. The passages are sent
as the knowledge base serves them; the KB build redacted them already, and they are the desk's published
articles, not a customer's words. When the moderation endpoint is on (`openai_moderation_endpoint`) and cannot
be reached, the reply is refused rather than sent unchecked: a moderation that fails open is no moderation.
"""

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from openai import OpenAI, OpenAIError

from supportflow.redact import redact
from supportflow.settings import Settings

log = logging.getLogger(__name__)

DONT_KNOW = "I don't know"
# The desk's own words (who the assistant is) come from its workspace (`texts.llm_role`); these rules hold for any desk.
INSTRUCTIONS = (
    "Answer the customer's question using only the passages below. Be brief (at most three sentences), polite and "
    f"specific. If the passages do not contain the answer, reply exactly: {DONT_KNOW}. Personal details in the "
    "customer's message are replaced by placeholders such as <PHONE>; never repeat them. Never ask for passwords, "
    "PINs, card numbers, security codes or any other secret."
)

# The local moderation rules, checked on every reply, with or without the moderation endpoint: what no support bot may say.
LOCAL_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("asks for secrets", re.compile(r"\b(send|give|tell|share|provide)\b.{0,40}\b(password|pin|cvv|cvc|security code)\b", re.I)),
    ("promises money", re.compile(r"\b(guarantee|we will refund you in full|compensat\w+ of)\b", re.I)),
    ("abusive", re.compile(r"\b(idiot|stupid|shut up|damn you)\b", re.I)),
    ("leaks personal data", re.compile(r"<(EMAIL|PHONE|CARD|IBAN)>|[\w.+-]+@[\w-]+\.[\w.]+")),
)

# A link: an http(s) URL, or a bare domain name ("example.com", "help.example.co.uk"). A word that merely reads as a
# domain ("Node.js", "report.pdf") counts too: refusing it costs an extractive answer, missing a real link could send
# a customer anywhere.
_LINK = re.compile(
    r"\bhttps?://[^\s<>()\[\]{}\"'`]+"
    r"|(?<![\w@.-])(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PromptPassage:
    doc_id: str
    title: str
    text: str
    url: str = ""  # the article's address: its domain is one the reply may link to


def local_moderation(text: str) -> str | None:
    """The first local rule the text breaks, or None."""
    for name, pattern in LOCAL_RULES:
        if pattern.search(text):
            return name
    if redact(text) != text:
        return "leaks personal data"
    return None


def _host(link: str) -> str | None:
    """A link's host, lower-case, without `www.`; None when it has none."""
    host = urlsplit(link).hostname if "://" in link else link.lower()
    return host.rstrip(".").removeprefix("www.") if host else None


def _hosts(texts: Iterable[str]) -> set[str | None]:
    return {_host(match.group(0)) for text in texts for match in _LINK.finditer(text)}


def off_knowledge_base_links(reply: str, passages: list[PromptPassage]) -> list[str]:
    """The links in a reply whose host is not one of the knowledge base's: the passages' article addresses, and the
    links their articles give. A subdomain of one of those hosts is the same desk's; any other host is not."""
    allowed = {host for host in _hosts([p.url for p in passages] + [f"{p.title}\n{p.text}" for p in passages]) if host}
    return [
        match.group(0)
        for match in _LINK.finditer(reply)
        if not (host := _host(match.group(0))) or not any(host == known or host.endswith(f".{known}") for known in allowed)
    ]


def build_messages(question: str, passages: list[PromptPassage], role: str) -> list[dict[str, str]]:
    context = "\n\n".join(f"[{i}] {p.title}{f' ({p.url})' if p.url else ''}\n{p.text}" for i, p in enumerate(passages, start=1))
    return [
        {"role": "system", "content": f"You are {role}. {INSTRUCTIONS}\n\nPassages:\n{context}"},
        {"role": "user", "content": question},
    ]


class LLMResponder:
    def __init__(self, settings: Settings) -> None:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        self.enabled = key is not None
        self.model = settings.openai_model
        self.use_moderation_endpoint = settings.openai_moderation_endpoint
        self.client = (
            OpenAI(api_key=key, base_url=settings.openai_base_url, timeout=settings.openai_timeout_s, max_retries=0) if key else None
        )

    def reply(self, question: str, passages: list[PromptPassage], role: str) -> str | None:
        """A grounded reply, or None when the bot must not use the LLM for this turn. `role` is who the desk's
        workspace says the assistant is (`texts.llm_role`)."""
        if self.client is None or not passages:
            return None
        try:
            completion = self.client.chat.completions.create(
                model=self.model, messages=build_messages(redact(question), passages, role), temperature=0.2, max_tokens=200
            )
        except OpenAIError as error:  # the error's text is the provider's: its class says enough, and quotes nothing
            log.warning("LLM unavailable, falling back", extra={"error": type(error).__name__})
            return None
        text = (completion.choices[0].message.content or "").strip()
        if not text or DONT_KNOW.lower() in text.lower():
            return None
        if refused := self.refusal(text, passages):
            log.warning("LLM reply refused: %s", refused, extra={"reason": refused})
            return None
        return text

    def refusal(self, text: str, passages: list[PromptPassage]) -> str | None:
        """Why a reply must not be sent, or None: the local checks first (no call for a reply they refuse), then
        the moderation endpoint when it is on."""
        if links := off_knowledge_base_links(text, passages):
            return f"it links off the knowledge base's domains ({', '.join(links[:3])})"
        return local_moderation(text) or self.moderate(text)

    def moderate(self, text: str) -> str | None:
        """The moderation endpoint's verdict when it is on: a flag, or an endpoint that cannot say, refuses."""
        if not self.use_moderation_endpoint or self.client is None:
            return None
        try:
            results = self.client.moderations.create(input=text).results
        except OpenAIError as error:
            return f"the moderation endpoint could not be reached ({type(error).__name__})"
        if not results:
            return "the moderation endpoint gave no verdict"
        return "flagged by the moderation endpoint" if any(result.flagged for result in results) else None
