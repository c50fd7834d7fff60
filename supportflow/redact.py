"""PII redaction with typed placeholders, applied before anything lands in the lake or leaves the process.

One combined pattern scans each text once; the callback only runs on a match, so clean text costs a single
regex scan. Order matters: an IBAN or a card number would otherwise also read as a phone.

The pattern is deliberately wide in what it looks at (any separator people type between digit groups, any
case, any script in an e-mail address) and the callback decides with what the number itself carries: a card
number's Luhn digit, an IBAN's ISO 13616 check digits, a phone's digit count, and the shapes of dates,
postcodes and amounts, which are never redacted. Digits are `[0-9]`, not `\\d`: Python's `\\d` takes every
script's digits and RE2's (the column pre-filter) only ASCII, and the pre-filter must never skip what the
pattern would redact.
"""

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PLACEHOLDERS = {"email": "<EMAIL>", "iban": "<IBAN>", "card": "<CARD>", "phone": "<PHONE>"}

PATTERN = re.compile(
    # Any script in the local part and the domain (josé.garcía@correo.es, user@bücher.de); a top-level domain of letters.
    r"(?P<email>[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,})"
    # Country code and check digits, then groups of four, in either case (de89 3704 0044 ...); the check digits decide.
    r"|(?P<iban>\b[A-Za-z]{2}[0-9]{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?\b)"
    # 13-19 digits, any grouping, with spaces (one to three), dots or dashes between them; the Luhn digit decides.
    r"|(?P<card>(?<!\w)[0-9](?:[ .-]{0,3}[0-9]){12,18}(?![\w]|[.,][0-9]|-\w))"
    # An optional +country code and (0) trunk, then groups of digits, some in brackets, split by a space, dot or dash;
    # not the tail of a reference (#, /, -) or of a decimal amount, nor followed by a decimal part, a time's colon or
    # the rest of a hyphenated reference (a build id: 20261201023600-cb74758a).
    r"|(?P<phone>(?<![\w+#/-])(?<![0-9][.,])(?:\+[0-9]{1,3}[ .-]?(?:\(0\)[ .-]?)?)?\(?[0-9]{1,5}\)?"
    r"(?:[ .-]?\(?[0-9]{2,5}\)?){1,6}(?![\w:]|[.,][0-9]|-\w))"
)

# A text the pattern could change holds an "@", an IBAN's start, or seven digits at most three characters apart (a
# card's or a phone's, whatever separates them). Written once, in the syntax Python's re and Arrow's RE2 share.
CANDIDATE = r"@|[A-Za-z]{2}[0-9]{2}|[0-9](?:[^0-9]{0,3}[0-9]){6}"
_CANDIDATE = re.compile(CANDIDATE)

# What reads as a phone by its digits but is not one: a date (with a time), a year range, a US ZIP+4 code.
_NOT_A_PHONE = re.compile(
    r"(?:[0-9]{4}[-./][0-9]{1,2}[-./][0-9]{1,2}|[0-9]{1,2}[-./][0-9]{1,2}[-./](?:[0-9]{2}){1,2})(?:[ T][0-9]{1,2}[.:][0-9]{2})?"
    r"|(?:19|20)[0-9]{2} ?- ?(?:19|20)[0-9]{2}"
    r"|[0-9]{5}-[0-9]{4}"
)
_SHORTEST_IBAN = 15  # Norway's
_IBAN_DIGITS = 12  # no country's IBAN has fewer (the Netherlands' has 12): four letters and words never pass


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _digit_count(text: str) -> int:
    return sum(char in "0123456789" for char in text)


def _iban_end(found: str) -> int:
    """Where the IBAN in an IBAN-shaped candidate ends, or 0 when it holds none.

    The pattern may run on into a following word of four letters ("BE68 5390 0754 7034 then"), so shorter
    candidates, ending where a group of four ends, are tried too: the longest whose check digits hold (ISO 13616,
    mod 97) and which has the digits every country's IBAN has is the IBAN. An order or tracking reference of the
    same shape fails the check and is left alone.
    """
    ends = [position + 1 for position, char in enumerate(found) if char != " "]  # where each kept character ends in `found`
    compact = found.replace(" ", "").upper()
    for length in range(len(compact), _SHORTEST_IBAN - 1, -1):
        candidate = compact[:length]
        if length != len(compact) and length % 4:
            continue
        if _digit_count(candidate) < _IBAN_DIGITS:
            continue
        rearranged = candidate[4:] + candidate[:4]
        if int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1:
            return ends[length - 1]
    return 0


class Redactor:
    """Redacts texts and keeps a running count of what it replaced, by type."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def _replace(self, match: re.Match[str]) -> str:
        kind = match.lastgroup or "phone"
        found = match.group(0)
        rest = ""
        if kind == "iban":
            end = _iban_end(found)
            if not end:
                return found
            found, rest = found[:end], found[end:]
        if kind == "card":
            digits = re.sub(r"[^0-9]", "", found)
            if not _luhn_ok(digits):
                # Not a card number (an order or account reference): a phone only if it is phone-sized.
                if len(digits) > 15:
                    return found
                kind = "phone"
        if kind == "phone" and (not 7 <= _digit_count(found) <= 15 or _NOT_A_PHONE.fullmatch(found)):
            return found
        self.counts[kind] += 1
        return PLACEHOLDERS[kind] + rest

    def scan(self, text: str) -> str:
        """The pattern over the whole text, with no pre-filter: what `redact` and `redact_all` must agree with."""
        return PATTERN.sub(self._replace, text)

    def redact(self, text: str) -> str:
        return self.scan(text) if _CANDIDATE.search(text) else text

    def redact_all(self, texts: Iterable[str | None]) -> list[str | None]:
        """Redact a column: Arrow finds the few texts that could hold PII, Python rewrites only those."""
        out = list(texts)
        if not out:
            return out
        candidates = pc.match_substring_regex(pa.array(out, pa.string()), CANDIDATE).fill_null(False)
        for position in np.flatnonzero(candidates.to_numpy(zero_copy_only=False)):
            out[position] = self.scan(out[position])
        return out


def redact(text: str) -> str:
    """Redact one text (for channels, the bot's stores and logs, and the knowledge base, which count elsewhere)."""
    return Redactor().redact(text)
