"""Reading an export in its own encoding without losing a byte, or losing track of where a bad one was.

An export whose bytes do not decode in its source's encoding (a cp1252 export read as UTF-8, say) must neither stop
the ingest nor be silently "repaired": the records that hold undecodable bytes are quarantined, each naming the byte
offset in the file of the bytes, and the rest of the file is read. So the parsers (Arrow's CSV reader, json) are
given the export as UTF-8 text in which each run of undecodable bytes has become a tag carrying its offset and the
bytes themselves. A tag is ASCII digits and hex between two Unicode noncharacters (U+FDD0, U+FDD1, which Unicode
keeps for a program's internal use): it is valid UTF-8, so no parser rejects the record that holds it, it holds no
delimiter, quote or newline, so records split where they would have, and text a person wrote never forms one.

Decoding is incremental, so memory does not grow with the file, and a record spread over lines (a quoted CSV field)
is no different from any other.
"""

import codecs
import io
import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import BinaryIO

from supportflow.errors import IngestError

DEFAULT_ENCODING = "utf-8"
TAG_OPEN, TAG_CLOSE = "\ufdd0", "\ufdd1"
_TAG = re.compile(f"{TAG_OPEN}([0-9]+):([0-9a-f]+){TAG_CLOSE}")
_ERRORS = "supportflow-tag-undecodable"
_READ_BYTES = 1 << 20

# Where in the file the bytes handed to the decoder begin; the error handler (global, as codecs wants) reads it.
_decoding_from: ContextVar[int] = ContextVar("supportflow_decoding_from")


@dataclass(frozen=True)
class BadBytes:
    offset: int  # in the file, from 0
    data: bytes

    def __str__(self) -> str:
        return f"byte offset {self.offset} ({' '.join(f'0x{byte:02x}' for byte in self.data)})"


def codec_name(encoding: str) -> str:
    """Python's name for a text encoding (`latin1` -> `iso8859-1`); anything else is refused here, before a file is opened."""
    try:
        b"a".decode(encoding, "ignore")  # a text encoding, not a bytes-to-bytes codec such as base64 (empty bytes skip the check)
        return codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(f"{encoding!r} is not a text encoding Python knows (e.g. utf-8, cp1252, latin-1, utf-16)") from None


def _tag(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    offset = _decoding_from.get() + error.start
    return f"{TAG_OPEN}{offset}:{error.object[error.start : error.end].hex()}{TAG_CLOSE}", error.end


codecs.register_error(_ERRORS, _tag)


class _Transcoder(io.RawIOBase):
    """The export's bytes decoded in `encoding` and handed on as UTF-8, undecodable runs tagged."""

    def __init__(self, raw: BinaryIO, encoding: str, path: str) -> None:
        super().__init__()
        name = codec_name(encoding)
        self._raw, self._path, self._codec = raw, path, name
        self._offset = 0  # file bytes read so far
        self._out, self._sent = memoryview(b""), 0
        self._done = False
        self.tagged = False  # whether any undecodable bytes (or the file's own U+FDD0) were met so far
        if name in ("utf-8", "utf-8-sig"):  # a byte-order mark is a signature, not text; skipped here to keep offsets exact
            name = "utf-8"
            head = raw.read(3)
            self._offset = 3 if head == codecs.BOM_UTF8 else 0
            self._head = head[self._offset :]
        else:
            self._head = b""
        self._decoder = codecs.getincrementaldecoder(name)(errors=_ERRORS)

    def readable(self) -> bool:
        return True

    def _decode_next(self) -> None:
        data = self._head + self._raw.read(_READ_BYTES)
        self._head = b""
        buffered = len(self._decoder.getstate()[0])  # bytes of a character the last chunk ended inside
        token = _decoding_from.set(self._offset - buffered)
        try:
            text = self._decoder.decode(data, final=not data)
            self._out, self._sent = memoryview(text.encode("utf-8")), 0
        except UnicodeError as error:  # not about some bytes but the whole stream (a UTF-16 export without its byte-order mark)
            raise IngestError(f"{self._path}: cannot be read as {self._codec}: {error}") from error
        finally:
            _decoding_from.reset(token)
        self.tagged = self.tagged or TAG_OPEN in text
        self._offset += len(data)
        self._done = not data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._sent == len(self._out) and not self._done:
            self._decode_next()
        size = min(len(buffer), len(self._out) - self._sent)
        buffer[:size] = self._out[self._sent : self._sent + size]
        self._sent += size
        return size


class DecodedExport(io.BufferedReader):
    """An export opened in binary, read as UTF-8 with its undecodable runs tagged: a file Arrow and `json` read."""

    def __init__(self, raw: BinaryIO, encoding: str, path: str) -> None:
        self._transcoder = _Transcoder(raw, encoding, path)
        super().__init__(self._transcoder, buffer_size=_READ_BYTES)

    @property
    def tagged(self) -> bool:
        """False while everything read so far decoded: the records parsed from it need no search for tags."""
        return self._transcoder.tagged


def bad_bytes(text: str) -> list[BadBytes]:
    if TAG_OPEN not in text:
        return []
    return [BadBytes(int(offset), bytes.fromhex(data)) for offset, data in _TAG.findall(text)]


def escaped(text: str) -> str:
    """The text with each tag back as the bytes it stands for, written `\\xe9`: storable, and nothing lost."""
    if TAG_OPEN not in text:
        return text
    return _TAG.sub(lambda match: "".join(f"\\x{byte:02x}" for byte in bytes.fromhex(match.group(2))), text)


def undecodable(found: list[BadBytes], encoding: str) -> str:
    """The quarantine reason: where the first bad bytes are, so a person can look at them, and what to change."""
    name = codec_name(encoding)
    more = f" and {len(found) - 1} more place{'s' if len(found) > 2 else ''}" if len(found) > 1 else ""
    hint = "set the source's encoding (e.g. cp1252)" if name == DEFAULT_ENCODING else "is the source's encoding right?"
    return f"bytes not valid {name} at {found[0]}{more}; {hint}"
