"""What the bot keeps in memory between requests, bounded in size and age.

Every conversation id a caller sends, and every request id an action answers, would otherwise stay in the
process for good: a stream of fresh ids is a slow memory leak, and an attacker's fast one. Both maps are
cachetools' TTL caches (least recently used first when full), behind a lock because the bot's requests run
on many threads.
"""

import threading
from collections import deque
from typing import Generic, TypeVar

from cachetools import TTLCache

TRANSCRIPT_TURNS = 20  # what a handoff shows the agent: the conversation's last messages

Value = TypeVar("Value")


class Expiring(Generic[Value]):
    """A thread-safe map whose entries go when `ttl_s` passed since they were last set, or when `size` newer
    ones push them out."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._cache: TTLCache[str, Value] = TTLCache(maxsize=size, ttl=ttl_s)
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._cache

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    def get(self, key: str) -> Value | None:
        with self._lock:
            return self._cache.get(key)

    def put(self, key: str, value: Value) -> None:
        with self._lock:
            self._cache[key] = value

    def pop(self, key: str) -> Value | None:
        with self._lock:
            return self._cache.pop(key, None)


class Transcripts:
    """Each conversation's last messages, for the agent who takes it over."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._recent: Expiring[deque[tuple[str, str]]] = Expiring(size, ttl_s)
        self._lock = threading.Lock()

    def add(self, conversation_id: str, speaker: str, text: str) -> None:
        with self._lock:  # read, append and set again as one step: setting it again restarts its clock
            recent = self._recent.get(conversation_id) or deque(maxlen=TRANSCRIPT_TURNS)
            recent.append((speaker, text))
            self._recent.put(conversation_id, recent)

    def of(self, conversation_id: str) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._recent.get(conversation_id) or ())

    def __contains__(self, conversation_id: object) -> bool:
        return conversation_id in self._recent

    def __len__(self) -> int:
        return len(self._recent)
