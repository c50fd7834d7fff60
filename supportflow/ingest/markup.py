"""Help-desk exports often carry a message body as HTML; a ticket, and the model trained on it, wants the words.

Only what is unmistakably markup is taken out: a tag needs an HTML element's name and a well-formed shape (`<p>`,
`</p>`, `<br/>`, `<a href="...">`), and an entity its closing semicolon, so a customer's "balance < 5", "a<b",
"<EMAIL>" (a redaction placeholder, should redacted text come back in) or "Q&A" is text, not markup. A text with no
tag and no entity comes back unchanged, whitespace and all, so a plain ticket keeps its content and its id.
"""

import html
import re
from html.entities import html5

# Tags that end a line of text where they stand; a table's cells are parted by a space; other tags (inline ones: <span>,
# <b>, <a>) join what surrounds them. A name in none of these (<EMAIL>, <name>) is not a tag.
_BLOCK_TAGS = (
    "address|article|aside|blockquote|body|br|dd|div|dl|dt|fieldset|figcaption|figure|footer|form|h[1-6]|header|hr|html|li"
    "|main|nav|ol|p|pre|section|table|tbody|tfoot|thead|tr|ul"
)
_CELL_TAGS = "td|th"
_INLINE_TAGS = (
    "a|abbr|b|bdi|bdo|big|button|caption|center|cite|code|col|colgroup|data|del|details|dfn|em|font|i|img|input|ins|kbd"
    "|label|legend|link|mark|meta|q|s|samp|small|source|span|strike|strong|sub|summary|sup|time|tt|u|var|wbr"
    "|o:p"  # Outlook's paragraph mark
)
_ATTRIBUTE = r"""\s+[^\s"'<>/=]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+))?"""
_TAG = re.compile(rf"</?(?:(?P<block>{_BLOCK_TAGS})|(?P<cell>{_CELL_TAGS})|{_INLINE_TAGS})(?![\w:-])(?:{_ATTRIBUTE})*\s*/?>", re.IGNORECASE)
# Elements whose content is never text a customer wrote: a mail client's stylesheet, a script, the document's head.
_HIDDEN = re.compile(r"<(script|style|head)\b[^<>]*>.*?</\1\s*>|<!--.*?-->|<![A-Za-z][^<>]*>", re.IGNORECASE | re.DOTALL)
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_LINE_BREAK = re.compile(r"\s*\n\s*")
_SPACES = re.compile(r"[^\S\n]+")


def _boundary(tag: re.Match[str]) -> str:
    return "\n" if tag["block"] else " " if tag["cell"] else ""


def _character(entity: re.Match[str]) -> str:
    """A named entity only by its whole name: `html.unescape` alone reads "&notaword;" as "¬aword;" (HTML's legacy
    names need no semicolon), and a word a customer wrote after an ampersand is not an entity."""
    found = entity.group(0)
    return html.unescape(found) if found[1] == "#" else html5.get(found[1:], found)


def plain_text(value: str) -> str:
    """`value` as plain text: hidden elements and comments dropped, block tags and <br> a line break, other tags
    removed, entities unescaped, each run of whitespace one space (or one line break, where it held one).

    Entities are unescaped after the tags are gone, so an escaped tag (`&lt;p&gt;`) stays in the text as the
    customer typed it."""
    if "<" not in value and "&" not in value:
        return value
    text = _TAG.sub(_boundary, _HIDDEN.sub(" ", value))
    text = _ENTITY.sub(_character, text)
    if text == value:  # neither a tag nor an entity: a plain message, kept as it is
        return value
    return _SPACES.sub(" ", _LINE_BREAK.sub("\n", text)).strip()
