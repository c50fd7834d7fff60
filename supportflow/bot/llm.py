"""Replies written by an LLM, grounded in knowledge-base passages, and never trusted blindly.

Any OpenAI-compatible endpoint works (`openai_base_url`). The prompt gives the model only the top
passages and asks it to say when they do not hold the answer; a timeout, an error, an "I don't know"
or a reply that fails moderation returns None, and the caller falls back to the knowledge-base answer
or to a human.
"""

import logging
import re
from dataclasses import dataclass

from openai import OpenAI, OpenAIError

from supportflow.redact import redact
from supportflow.settings import Settings

log = logging.getLogger(__name__)

DONT_KNOW = "I don't know"
SYSTEM_PROMPT = (
    "You are a customer-support assistant for a bank. Answer the customer's question using only the "
    "passages below. Be brief (at most three sentences), polite and specific. If the passages do not "
    f"contain the answer, reply exactly: {DONT_KNOW}. Never ask for passwords, PINs or full card numbers."
)

# The local moderation rules, used when the moderation endpoint is not available: what a bank's bot must never say.
LOCAL_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("asks for secrets", re.compile(r"\b(send|give|tell|share|provide)\b.{0,40}\b(password|pin|cvv|cvc|security code)\b", re.I)),
    ("promises money", re.compile(r"\b(guarantee|we will refund you in full|compensat\w+ of)\b", re.I)),
    ("abusive", re.compile(r"\b(idiot|stupid|shut up|damn you)\b", re.I)),
    ("leaks personal data", re.compile(r"<(EMAIL|PHONE|CARD|IBAN)>|[\w.+-]+@[\w-]+\.[\w.]+")),
)


@dataclass(frozen=True)
class PromptPassage:
    doc_id: str
    title: str
    text: str


def local_moderation(text: str) -> str | None:
    """The first local rule the text breaks, or None."""
    for name, pattern in LOCAL_RULES:
        if pattern.search(text):
            return name
    if redact(text) != text:
        return "leaks personal data"
    return None


def build_messages(question: str, passages: list[PromptPassage]) -> list[dict[str, str]]:
    context = "\n\n".join(f"[{i}] {p.title}\n{p.text}" for i, p in enumerate(passages, start=1))
    return [
        {"role": "system", "content": f"{SYSTEM_PROMPT}\n\nPassages:\n{context}"},
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

    def reply(self, question: str, passages: list[PromptPassage]) -> str | None:
        """A grounded reply, or None when the bot must not use the LLM for this turn."""
        if self.client is None or not passages:
            return None
        try:
            completion = self.client.chat.completions.create(
                model=self.model, messages=build_messages(question, passages), temperature=0.2, max_tokens=200
            )
        except OpenAIError as error:
            log.warning("LLM unavailable, falling back: %s", error)
            return None
        text = (completion.choices[0].message.content or "").strip()
        if not text or DONT_KNOW.lower() in text.lower():
            return None
        if flagged := self.moderate(text):
            log.warning("LLM reply withheld by moderation: %s", flagged)
            return None
        return text

    def moderate(self, text: str) -> str | None:
        """Why a reply must not be sent, or None. The moderation endpoint when enabled, local rules always."""
        if self.use_moderation_endpoint and self.client is not None:
            try:
                result = self.client.moderations.create(input=text).results[0]
                if result.flagged:
                    return "flagged by the moderation endpoint"
            except OpenAIError as error:
                log.info("moderation endpoint unavailable, local rules only: %s", error)
        return local_moderation(text)
