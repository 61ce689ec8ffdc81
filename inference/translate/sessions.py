"""Translation sessions: the recent history of one conversation (an API caller's `session_id`,
or one live stream's captions into one target language).

Everything is bounded: at most `max_sessions` sessions (the least recently used one is evicted
past that, counted), at most `max_history` entries per session, and a session unused for `ttl`
seconds expires. Context for the next sentence is built from complete sentences only: entries
that are fragments ("and then he", without a sentence end) are joined with the entries after
them until a sentence ends, so a prompt never carries half a thought.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from media.lru import LRU

from .base import ContextTurn, TranslationError, TranslationResult

SESSION_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,160}$"
_SESSION_ID_RE = re.compile(SESSION_ID_PATTERN)
# Sentence ends in the scripts captions come in (Latin, CJK, Arabic, Devanagari), closing quotes allowed.
_SENTENCE_END_RE = re.compile(r"[.!?…。！？؟।]['\"”’»)\]]*\s*$")


def is_complete_sentence(text: str) -> bool:
    return bool(_SENTENCE_END_RE.search(text.strip()))


def check_session_id(session_id: str) -> str:
    if not _SESSION_ID_RE.match(session_id):
        raise TranslationError(
            f"invalid session id {session_id[:40]!r}: 1-160 characters of letters, digits and ._:@-",
            code="invalid_session_id",
            retryable=False,
        )
    return session_id


@dataclass(frozen=True)
class HistoryEntry:
    source: str
    translation: str
    source_lang: str
    target_lang: str
    backend: str
    confidence: float | None
    untranslated: bool
    at: float  # wall-clock time (for display)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TranslationSession:
    session_id: str
    max_history: int
    created_at: float  # wall clock
    last_used: float  # monotonic, for expiry
    entries: deque[HistoryEntry] = field(default_factory=deque)
    translations: int = 0
    # The service's BoundedConcurrency(1): one translation at a time, so sentences go in order.
    gate: Any = None

    def add(self, result: TranslationResult, source_text: str) -> None:
        self.entries.append(
            HistoryEntry(
                source=" ".join(source_text.split()),
                translation=result.text,
                source_lang=result.source_language,
                target_lang=result.target_language,
                backend=result.backend,
                confidence=result.confidence,
                untranslated=result.untranslated,
                at=time.time(),
            )
        )
        while len(self.entries) > self.max_history:
            self.entries.popleft()
        self.translations += 1

    def context(self, source_lang: str, target_lang: str, sentences: int, max_chars: int) -> tuple[ContextTurn, ...]:
        """The last `sentences` complete sentences translated into `target_lang` (untranslated
        ones left out), fragments joined, at most `max_chars` of source + translation."""
        if sentences <= 0:
            return ()
        turns: list[ContextTurn] = []
        sources: list[str] = []
        translations: list[str] = []
        for entry in self.entries:
            if entry.untranslated or entry.target_lang.lower() != target_lang.lower():
                sources, translations = [], []  # a gap: the fragments around it do not join
                continue
            if source_lang != "auto" and entry.source_lang.lower() != source_lang.lower():
                sources, translations = [], []
                continue
            sources.append(entry.source)
            translations.append(entry.translation)
            if is_complete_sentence(entry.source):
                turns.append(ContextTurn(" ".join(sources), " ".join(translations)))
                sources, translations = [], []
        chosen: list[ContextTurn] = []
        used = 0
        for turn in reversed(turns[-sentences:]):
            used += len(turn.source) + len(turn.translation)
            if used > max_chars:
                break
            chosen.append(turn)
        return tuple(reversed(chosen))

    def snapshot(self, now: float, ttl: float) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "created_at": self.created_at,
            "expires_in_s": round(max(0.0, ttl - (now - self.last_used)), 1),
            "translations": self.translations,
            "history": [e.as_dict() for e in self.entries],
        }


class SessionStore:
    def __init__(
        self, max_sessions: int, max_history: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_sessions = max(1, max_sessions)
        self.max_history = max(1, max_history)
        self.ttl = ttl
        self._clock = clock
        self._sessions: LRU[str, TranslationSession] = LRU(self.max_sessions)
        self.created = 0
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        # Least recently used first: stop at the first one still alive.
        while self._sessions:
            oldest = self._sessions.oldest()
            if oldest is None or now - oldest.last_used < self.ttl:
                break
            self._sessions.pop_oldest()
            self.expired += 1

    def get(self, session_id: str) -> TranslationSession | None:
        """The live session, without touching its expiry."""
        self._expire(self._clock())
        return self._sessions.get(session_id)

    def open(self, session_id: str) -> TranslationSession:
        """The session (created when new), marked as just used."""
        check_session_id(session_id)
        now = self._clock()
        self._expire(now)
        session = self._sessions.get(session_id)
        if session is None:
            session = TranslationSession(session_id, self.max_history, created_at=time.time(), last_used=now)
            self.evicted += self._sessions.put(session_id, session)
            self.created += 1
        session.last_used = now
        self._sessions.refresh(session_id)
        return session

    def delete(self, session_id: str) -> bool:
        self._expire(self._clock())
        return self._sessions.pop(session_id) is not None

    def snapshot(self, session_id: str) -> dict[str, Any] | None:
        session = self.get(session_id)
        return None if session is None else session.snapshot(self._clock(), self.ttl)

    def stats(self) -> dict[str, int]:
        self._expire(self._clock())
        return {
            "active": len(self._sessions),
            "max_sessions": self.max_sessions,
            "created": self.created,
            "expired": self.expired,
            "evicted": self.evicted,
        }
