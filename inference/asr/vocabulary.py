"""`captions.vocabulary`: the names, product words and jargon a stream's captions should spell right.

Whisper copies spellings from the text in front of its transcript (the "previous text" slot after
`<|startofprev|>`). faster-whisper's `hotwords` put words there; so do we, per utterance: each
decode request carries its stream's terms, and the pool (`inference/asr/model.py`) puts as many as
fit, whole, in front of the stream's caption context. The slot holds at most 223 tokens (half of
Whisper's 448-token window, less one, as faster-whisper and OpenAI's decoder cut it); the context
(`ASR_PROMPT_TOKENS`) is given its tokens first and the terms get the rest, counted with the
model's own tokenizer (`fit_terms`). Terms the stream's user named come first, then what the
screen showed.

`ScreenVocabulary` is the second source: words the OCR tagger read on the stream's video (vision
on, `text` in its tag list). Each sighting adds 1 to a word's score, scores halve every
`half_life` seconds, so words seen recently and repeatedly win and a slide that went away decays
out; the list is capped. OCR noise is filtered: short tokens, anything with digits, and words
written in lowercase (common words: names and product words are capitalised on a slide).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Whisper's previous-text slot: max_length // 2 - 1 tokens (faster-whisper's `get_prompt`)
PROMPT_SLOT_TOKENS = 223
MAX_TERMS = 50
MAX_TERM_CHARS = 48
SEPARATOR = ", "

# screen (OCR) vocabulary
SCREEN_MAX_TERMS = 32  # words tracked
SCREEN_PROMPT_TERMS = 12  # of them, given to the decoder
SCREEN_HALF_LIFE_SECONDS = 60.0
SCREEN_MIN_SCORE = 1.5  # seen at least twice, recently
SCREEN_FORGET_SCORE = 0.2
SCREEN_MIN_CHARS = 4
SCREEN_MAX_PHRASE_WORDS = 3
# capitalised words a slide starts sentences with: not vocabulary
_COMMON = frozenset(
    """about after also and any are because been before but can could did does each for from had has
    have her here his how into its just like more most not now only other our out over said she should
    some such than that the their them then there these they this those through under very was were
    what when where which while who why will with would you your welcome thank thanks today agenda
    introduction summary questions next slide page chapter section""".split()
)
_TOKEN = re.compile(r"[^\W\d_][\w'’.-]*[^\W_]|[^\W\d_]")


def clean_terms(values: Iterable[str]) -> list[str]:
    """User terms: stripped, inner spaces collapsed, empty and repeated (case-insensitive) ones
    dropped. Count and length are checked by the params model, not silently cut here."""
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        term = " ".join(str(value).split())
        key = term.casefold()
        if term and key not in seen:
            seen.add(key)
            out.append(term)
    return out


def fit_terms(terms: Sequence[str], encode: Callable[[str], Sequence[int]], budget: int) -> tuple[list[int], list[str]]:
    """The tokens of `terms` joined (", "), taking whole terms in order while they fit `budget`
    tokens, and the terms that fit. Encoded as Whisper reads prompt text (leading space)."""
    if budget <= 0 or not terms:
        return [], []
    chosen: list[str] = []
    tokens: list[int] = []
    for term in terms[: MAX_TERMS + SCREEN_PROMPT_TERMS]:
        trial = list(encode(" " + SEPARATOR.join([*chosen, term])))
        if len(trial) > budget:
            continue  # a shorter term further on may still fit
        chosen.append(term)
        tokens = trial
    return tokens, chosen


@dataclass
class _Seen:
    term: str
    score: float
    at: float  # when the score was last brought up to date
    sightings: int


def screen_terms(line: str) -> list[str]:
    """Vocabulary candidates in one OCR line: runs of up to three capitalised (or mixed-case)
    words, e.g. a speaker's name; lowercase words, digits and short tokens are noise."""
    out: list[str] = []
    run: list[str] = []

    def close() -> None:
        if run:
            out.append(" ".join(run))
            run.clear()

    for token in _TOKEN.findall(line):
        word = token.strip(".-'’")
        if (
            len(word) < SCREEN_MIN_CHARS
            or any(c.isdigit() for c in word)
            or word.islower()
            or not word[0].isalpha()
            or word.casefold() in _COMMON
        ):
            close()
            continue
        if word.isupper() and len(word) > 5:  # a slide title in capitals: "SZCZEPANSKI" → "Szczepanski"
            word = word.capitalize()
        run.append(word)
        if len(run) == SCREEN_MAX_PHRASE_WORDS:
            close()
    close()
    return out


class ScreenVocabulary:
    """Words a stream's OCR read recently and repeatedly: a bounded, decaying list."""

    def __init__(
        self,
        max_terms: int = SCREEN_MAX_TERMS,
        half_life: float = SCREEN_HALF_LIFE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_terms = max_terms
        self.half_life = half_life
        self._clock = clock
        self._seen: dict[str, _Seen] = {}  # casefolded term → entry; at most max_terms
        self.lines_read = 0
        self.evicted = 0  # terms pushed out by the cap (decayed ones are not counted)

    def _decayed(self, entry: _Seen, now: float) -> float:
        return entry.score * math.pow(0.5, max(0.0, now - entry.at) / self.half_life)

    def observe(self, lines: Iterable[str], now: float | None = None) -> None:
        """One OCR look at a frame: each term counts once per look, however often it appears."""
        now = self._clock() if now is None else now
        terms: dict[str, str] = {}
        for line in list(lines)[:64]:  # a frame full of text: the first lines are enough
            self.lines_read += 1
            for term in screen_terms(line):
                terms.setdefault(term.casefold(), term)
        for key, term in terms.items():
            entry = self._seen.get(key)
            if entry is None:
                entry = self._seen[key] = _Seen(term, 0.0, now, 0)
            entry.score = self._decayed(entry, now) + 1.0
            entry.at, entry.sightings, entry.term = now, entry.sightings + 1, term
        self._prune(now)

    def _prune(self, now: float) -> None:
        for key in [k for k, e in self._seen.items() if self._decayed(e, now) < SCREEN_FORGET_SCORE]:
            del self._seen[key]
        if len(self._seen) > self.max_terms:
            ranked = sorted(self._seen.items(), key=lambda kv: self._decayed(kv[1], now), reverse=True)
            for key, _ in ranked[self.max_terms :]:
                del self._seen[key]
                self.evicted += 1

    def terms(self, limit: int = SCREEN_PROMPT_TERMS, now: float | None = None) -> list[str]:
        """The strongest terms (score ≥ SCREEN_MIN_SCORE), strongest first."""
        now = self._clock() if now is None else now
        scored = [(self._decayed(e, now), e.term) for e in self._seen.values()]
        return [t for s, t in sorted(scored, key=lambda st: st[0], reverse=True) if s >= SCREEN_MIN_SCORE][:limit]

    def snapshot(self, now: float | None = None) -> list[dict[str, object]]:
        """For the stream status: every tracked term with its current score."""
        now = self._clock() if now is None else now
        rows = [
            {"term": e.term, "score": round(self._decayed(e, now), 2), "sightings": e.sightings}
            for e in self._seen.values()
        ]
        return sorted(rows, key=lambda r: r["score"], reverse=True)  # type: ignore[arg-type, return-value]

    def clear(self) -> None:
        self._seen.clear()


def merged_terms(user: Sequence[str], screen: Sequence[str]) -> tuple[str, ...]:
    """User terms first, then screen terms not already named (case-insensitive)."""
    seen = {t.casefold() for t in user}
    return tuple([*user, *(t for t in screen if t.casefold() not in seen)])


class _HasVocabulary(Protocol):
    vocabulary: tuple[str, ...]
    hotwords: tuple[str, ...]


def with_vocabulary(decoder: Any, request: _HasVocabulary, context: list[int], language: str | None) -> list[int]:
    """The prompt tokens of one utterance: its stream's terms that fit beside the context, then
    the context (faster-whisper's `hotwords` order). Sets `request.hotwords` to the terms used."""
    if not request.vocabulary:
        request.hotwords = ()
        return context
    budget = PROMPT_SLOT_TOKENS - len(context)
    tokens, used = fit_terms(
        request.vocabulary, lambda text: decoder.prompt_tokens(text, language, PROMPT_SLOT_TOKENS + 1), budget
    )
    request.hotwords = tuple(used)
    return tokens + context
