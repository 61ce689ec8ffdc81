"""Commit policy for streaming captions: LocalAgreement-2 plus caption segmentation.

Pure logic on timed words, no model and no audio, so every rule here is unit-testable with
scripted hypotheses.

* `LocalAgreement` (after ufal/whisper_streaming): the whole audio buffer is re-transcribed every
  chunk; a word is committed once two consecutive hypotheses agree on it (longest common prefix of
  the unconfirmed words). Committed words never change.
* `CaptionAssembler` groups committed words into caption segments with a stable id. The current
  segment is published as a *partial* (committed words + the unconfirmed tail, may change) and
  becomes *final* (immutable) at a sentence end, at a pause (VAD), or when it grows too long.
* `choose_trim_time` picks where the audio buffer may be cut so decoding cost stays flat.
* Hallucination guards: `cut_repetition` and `is_hallucination_phrase`.

Times are seconds on one monotonic timeline chosen by the caller.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str  # as spoken, with punctuation, no surrounding spaces

    @property
    def key(self) -> str:
        """Comparison form: case and punctuation do not make two hypotheses disagree."""
        return word_key(self.text)


def word_key(text: str) -> str:
    return re.sub(r"[^\w']", "", text.lower())


def join_words(words: Iterable[Word]) -> str:
    return " ".join(w.text for w in words if w.text).strip()


SENTENCE_END = re.compile(r"[.!?…。！？]['\")\]]*$")


# a word that starts this long before the last commit is a re-transcription of committed audio
COMMITTED_SLACK = 0.1
MAX_OVERLAP_NGRAM = 5


def drop_already_committed(words: Sequence[Word], committed_tail: Sequence[Word], last_time: float) -> list[Word]:
    """The part of a new hypothesis that is not already committed: words starting after the last
    commit, minus a repeat of the committed tail at its head (Whisper often re-transcribes the
    last committed words with slightly shifted times)."""
    fresh = [w for w in words if w.start > last_time - COMMITTED_SLACK]
    if fresh and committed_tail and abs(fresh[0].start - last_time) < 1.0:
        tail = list(committed_tail)
        for n in range(min(len(tail), len(fresh), MAX_OVERLAP_NGRAM), 0, -1):
            if [w.key for w in tail[-n:]] == [w.key for w in fresh[:n]]:
                return fresh[n:]
    return fresh


class LocalAgreement:
    """LocalAgreement-2 hypothesis buffer.

    `insert` takes the newest hypothesis (absolute word times), `flush` commits the longest common
    prefix with the previous one and keeps the rest as the unconfirmed tail.

    `right_context`: a word is committed only once even the older of the two agreeing hypotheses
    saw at least this much audio after it. Whisper's guesses for the last second of a buffer are
    its worst (it lacks right context); two early hypotheses can agree on the same wrong words."""

    def __init__(self, history: int = 64, right_context: float = 0.0) -> None:
        self.right_context = right_context
        self.last_committed_time = 0.0
        self.committed_in_buffer: deque[Word] = deque(maxlen=history)
        self._previous: list[Word] = []  # unconfirmed tail of the previous hypothesis
        self._previous_audio_end: float | None = None
        self._current: list[Word] | None = None  # newest hypothesis, None until one is inserted
        self._current_audio_end: float | None = None

    def insert(self, words: Sequence[Word], audio_end: float | None = None) -> None:
        """The newest hypothesis; `audio_end` = end of the audio it was decoded from."""
        self._current = drop_already_committed(words, self.committed_in_buffer, self.last_committed_time)
        self._current_audio_end = audio_end

    def flush(self) -> list[Word]:
        """Commit the words the two latest hypotheses agree on; returns them."""
        if self._current is None:
            return []
        current = self._current
        limit = None
        if self.right_context > 0 and self._previous_audio_end is not None:
            limit = self._previous_audio_end - self.right_context
        n = 0
        while (
            n < len(current)
            and n < len(self._previous)
            and current[n].key == self._previous[n].key
            and (limit is None or current[n].end <= limit)
        ):
            n += 1
        committed = current[:n]
        self._previous = current[n:]
        self._previous_audio_end = self._current_audio_end
        self._current = None
        self._remember(committed)
        return committed

    def commit_all(self) -> list[Word]:
        """Commit the newest hypothesis as it stands (pause, hard buffer cap, end of stream); with
        no hypothesis since the last flush (e.g. the model was busy), the unconfirmed tail."""
        committed = self._current if self._current is not None else self._previous
        self._current, self._previous = None, []
        self._remember(committed)
        return committed

    def tail(self) -> list[Word]:
        """The unconfirmed words of the latest hypothesis (partial text, may change)."""
        return list(self._previous)

    def trim(self, time: float) -> None:
        """The audio before `time` left the buffer: forget committed words that lie in it."""
        while self.committed_in_buffer and self.committed_in_buffer[0].end <= time:
            self.committed_in_buffer.popleft()

    def clear_buffer(self) -> None:
        """The whole buffer was dropped (after a pause): keep only the commit time."""
        self.committed_in_buffer.clear()
        self._current, self._previous = None, []
        self._previous_audio_end = self._current_audio_end = None

    def _remember(self, committed: list[Word]) -> None:
        if committed:
            self.committed_in_buffer.extend(committed)
            self.last_committed_time = max(self.last_committed_time, committed[-1].end)


@dataclass(frozen=True)
class CaptionUpdate:
    id: int
    text: str
    final: bool
    start: float
    end: float


class CaptionAssembler:
    """Turns committed words and the unconfirmed tail into partial/final caption updates.

    One segment id covers a caption from its first partial to its final. A final is emitted once
    per id and never again; the next words get a new id. Committed words that are not final yet
    have only been shown as partials, so the last pass over a whole utterance (`close_with`) may
    still replace them: only finals are immutable."""

    def __init__(
        self,
        id_factory: Callable[[], int] | None = None,
        max_words: int = 40,
        max_seconds: float = 15.0,
        split_sentences: bool = True,
    ) -> None:
        self._new_id = id_factory or itertools.count(1).__next__
        self.max_words = max_words
        self.max_seconds = max_seconds
        self.split_sentences = split_sentences
        self._pending: list[Word] = []  # committed, not yet published as final
        self._id: int | None = None
        self._last_partial = ""
        self._last_span = (0.0, 0.0)
        self.final_words: deque[Word] = deque(maxlen=64)  # the newest words published as final
        self.final_time = 0.0  # end of the last final word
        self.finals = 0
        self.partials = 0
        self.retracted_chars = 0  # flicker: characters removed between partials of one id

    @property
    def current_id(self) -> int | None:
        return self._id

    @property
    def current_text(self) -> str:
        return self._last_partial

    def update(self, committed: Sequence[Word], tail: Sequence[Word]) -> list[CaptionUpdate]:
        updates: list[CaptionUpdate] = []
        for word in committed:
            self._pending.append(word)
            if self._segment_complete(word):
                updates.append(self._final(self._pending))
                self._pending = []
        words = self._pending + list(tail)
        if words:
            text = join_words(words)
            if text != self._last_partial:
                updates.append(self._partial(words, text))
        return updates

    def close(self, committed: Sequence[Word] = ()) -> list[CaptionUpdate]:
        """End of a speech segment: everything committed so far becomes final."""
        updates = self.update(committed, ())
        if self._pending:
            updates.append(self._final(self._pending))
            self._pending = []
        elif self._id is not None and self._last_partial:
            # the partial was shown but its words vanished from the final hypothesis: close the
            # id with an empty final so sinks can clear it
            updates.append(CaptionUpdate(self._id, "", True, *self._last_span))
            self.finals += 1
            self._id, self._last_partial = None, ""
        return updates

    def close_with(self, hypothesis: Sequence[Word], audio_start: float = 0.0) -> list[CaptionUpdate]:
        """End of an utterance with a fresh hypothesis of the audio from `audio_start` on: the
        committed-but-not-final words inside that audio are replaced by the hypothesis (words
        before it stay, the hypothesis did not hear them), and all of it becomes final. An empty
        hypothesis keeps what was committed."""
        keep = [w for w in self._pending if w.end <= audio_start + COMMITTED_SLACK]
        last_time = max(self.final_time, keep[-1].end if keep else 0.0)
        fresh = drop_already_committed(hypothesis, list(self.final_words) + keep, last_time)
        if fresh:
            self._pending = keep
        return self.close(fresh)

    def words_before(self, time: float) -> list[Word]:
        """Published-final and committed words that end before `time` (prompt material)."""
        return [w for w in list(self.final_words) + self._pending if w.end <= time]

    def _segment_complete(self, word: Word) -> bool:
        if self.split_sentences and SENTENCE_END.search(word.text):
            return True
        if len(self._pending) >= self.max_words:
            return True
        return word.end - self._pending[0].start >= self.max_seconds

    def _ensure_id(self) -> int:
        if self._id is None:
            self._id = self._new_id()
            self._last_partial = ""
        return self._id

    def _partial(self, words: Sequence[Word], text: str) -> CaptionUpdate:
        segment_id = self._ensure_id()
        common = len(_common_prefix(self._last_partial, text))
        self.retracted_chars += len(self._last_partial) - common
        self._last_partial = text
        self._last_span = (words[0].start, words[-1].end)
        self.partials += 1
        return CaptionUpdate(segment_id, text, False, words[0].start, words[-1].end)

    def _final(self, words: Sequence[Word]) -> CaptionUpdate:
        segment_id = self._ensure_id()
        update = CaptionUpdate(segment_id, join_words(words), True, words[0].start, words[-1].end)
        self.final_words.extend(words)
        self.final_time = max(self.final_time, words[-1].end)
        self._id, self._last_partial = None, ""
        self.finals += 1
        return update


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def choose_trim_time(
    buffer_start: float,
    buffer_end: float,
    segment_ends: Sequence[float],
    last_committed_time: float,
    trim_seconds: float,
    final_time: float = 0.0,
) -> float | None:
    """Where to cut the audio buffer once it is longer than `trim_seconds`.

    Only at a boundary Whisper can restart from cleanly: the end of a Whisper segment (not the
    last one, which is still being spoken) whose words are all committed, or the end of the last
    final caption (a sentence end). Cutting mid-sentence makes Whisper skip the words at the new
    start, so with no such boundary the buffer keeps growing until the hard cap forces a final.
    None when the buffer is short enough or no boundary lies inside it."""
    if buffer_end - buffer_start <= trim_seconds:
        return None
    candidates = [e for e in segment_ends[:-1] if buffer_start < e <= last_committed_time]
    if buffer_start < final_time < buffer_end:
        candidates.append(final_time)
    return max(candidates) if candidates else None


def cut_repetition(words: Sequence[Word], max_repeats: int = 3, max_ngram: int = 4) -> tuple[list[Word], bool]:
    """Cut a decoding loop: when an n-gram (n ≤ max_ngram) repeats back to back more than
    `max_repeats` times, keep its first occurrence and drop the rest of the hypothesis.
    Returns (words, looped)."""
    keys = [w.key for w in words]
    for i in range(len(keys)):
        for n in range(1, max_ngram + 1):
            gram = keys[i : i + n]
            if len(gram) < n or not any(gram):
                break
            repeats = 1
            while keys[i + repeats * n : i + (repeats + 1) * n] == gram:
                repeats += 1
            if repeats > max_repeats:
                return list(words[: i + n]), True
    return list(words), False


# Phrases Whisper produces from silence or noise (subtitle credits in its training data).
HALLUCINATION_PHRASES = frozenset(
    {
        "thanks for watching",
        "thank you for watching",
        "thanks for watching and see you next time",
        "thank you so much for watching",
        "thank you very much for watching",
        "please subscribe",
        "please subscribe to my channel",
        "like and subscribe",
        "don't forget to like and subscribe",
        "see you in the next video",
        "subtitles by the amara org community",
        "transcription by castingwords",
    }
)
# Also said by real people: dropped only when the model itself doubts the segment.
WEAK_HALLUCINATION_PHRASES = frozenset({"you", "thank you", "bye", "thanks", "okay", "so"})
_HALLUCINATION_PREFIXES = ("subtitles by", "subtitled by", "captions by", "amara org")


def is_hallucination_phrase(text: str, doubtful: bool = False) -> bool:
    """True when a whole segment is one of Whisper's well-known no-speech phrases. `doubtful`
    (e.g. a raised no-speech probability) extends the check to short phrases people also say."""
    norm = re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text.lower())).strip()
    if not norm:
        return True
    if norm in HALLUCINATION_PHRASES or norm.startswith(_HALLUCINATION_PREFIXES):
        return True
    return doubtful and norm in WEAK_HALLUCINATION_PHRASES
