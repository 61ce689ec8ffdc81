"""Caption policy for streaming speech: where utterances are cut, and what text is kept.

Pure logic on numbers and strings, no model and no audio, so every rule here is unit-testable.

* An utterance is the audio between two pauses the VAD heard (plus a little padding). It is
  decoded as partials while it is spoken and decoded once more, whole, when it ends: that decode
  is its final. Utterances tile the stream's timeline without gaps or overlaps, so every word of
  the audio is in exactly one final (no commit bookkeeping that could drop or repeat a clause).
* `quietest_cut` picks where speech without a pause is cut once it grows too long: at the window
  the VAD found least speech-like, never in the half just after the utterance began.
* Hallucination guards: `cut_repetition`, `is_hallucination_phrase` and `clean_hypothesis`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str  # as spoken, with punctuation, no surrounding spaces

    @property
    def key(self) -> str:
        """Comparison form: case and punctuation do not make two words differ."""
        return word_key(self.text)


def word_key(text: str) -> str:
    return re.sub(r"[^\w']", "", text.lower())


def join_words(words: Iterable[Word]) -> str:
    return " ".join(w.text for w in words if w.text).strip()


SENTENCE_END = re.compile(r"[.!?…。！？]['\")\]]*$")


def quietest_cut(probabilities: Sequence[tuple[int, float]], start: int, end: int, min_fraction: float = 0.5) -> int:
    """Sample index at which to cut the speech [start, end): the middle of the VAD window with
    the lowest speech probability in the later part of it (from `min_fraction` of the way on),
    so the cut falls into a breath or a gap between words rather than inside one.
    `probabilities` are (window start index, probability) pairs in time order."""
    earliest = start + int((end - start) * min_fraction)
    candidates = [(p, index) for index, p in probabilities if earliest <= index < end]
    if not candidates:
        return end
    _, index = min(candidates, key=lambda c: (c[0], -c[1]))  # ties: the later window
    return min(end, index + 256)  # middle of a 512-sample window


def clean_hypothesis(text: str, doubtful: bool = False) -> tuple[str, bool]:
    """The caption text of one decode: known no-speech phrases removed, a decoding loop cut to
    its first occurrence. Returns (text, looped)."""
    if is_hallucination_phrase(text, doubtful=doubtful):
        return "", False
    words = [Word(0.0, 0.0, w) for w in text.split()]
    kept, looped = cut_repetition(words)
    kept, repeated = cut_repeated_phrase(kept)
    return join_words(kept), looped or repeated


def cut_repeated_phrase(words: Sequence[Word], min_ngram: int = 5, max_ngram: int = 12) -> tuple[list[Word], bool]:
    """A phrase of `min_ngram`+ words said twice back to back is a decoding loop, not speech:
    keep the first time. Returns (words, cut)."""
    keys = [w.key for w in words]
    for i in range(len(keys)):
        for n in range(min_ngram, max_ngram + 1):
            if i + 2 * n > len(keys):
                break
            if keys[i : i + n] == keys[i + n : i + 2 * n] and all(keys[i : i + n]):
                return list(words[: i + n]), True
    return list(words), False


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
