"""Batched Whisper decoding of short utterances on CTranslate2, with the encoder sized to the audio.

faster-whisper pads every call to Whisper's 30 s window, so a 3 s utterance pays for ten times
the encoder work it needs. CTranslate2's Whisper encoder accepts any even number of mel frames up
to 3000, so here each batch is padded only to its longest utterance plus `pad_seconds` of
silence, and the utterances of several streams share one `encode` + one `generate` call.

Whisper trained on 30 s windows; with a short one it tends to start the utterance over once the
speech ends. Timestamp tokens stay on (they make it close its segment at the end of speech) and
guards drop what it makes up in the padding: a segment that starts after the audio's speech
ended, and a repeat of the utterance's opening words (in a later segment or inside one).

Each utterance may carry the last tokens of the stream's previous captions as context (as
Whisper's own `condition_on_previous_text` does offline): measured on 16 espeak-ng sentences with
beam 3, WER 0.069 without and 0.031 with 24 tokens of context, for ~10 % more decoder time.

A final may also carry a `Lead`: the audio of the caption before it, in front of its own, with
that caption's text forced as the transcript's first segment. Offline, Whisper reads a sentence
in a window that also holds the speech around it; a lone utterance window misses that, and on
the captions bench's eight 60 s streams the finals were 0.033 WER worse than offline on average.
With the lead they were level with offline (+0.001). It costs decoder time: CTranslate2 decodes a
forced prefix step by step (632 instead of 384 ms for a final with a 3.6 s lead, beam 3, one
thread), and rows whose prefixes differ in length cannot share a generate call.

Measured with bench/bench_captions.py --compare-models (16 sentences, 2 loaded cores): tiny.en
one utterance at a time in 30 s windows 0.25 CPU s per audio second, in utterance windows
batched by 4 0.03-0.04, at the same or better WER.
"""

from __future__ import annotations

import difflib
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame
MAX_FRAMES = 3000  # Whisper's 30 s window
TIME_PRECISION = 0.02  # seconds per timestamp token
# tokens allowed per second of audio (English speech is ~4 tokens/s, plus timestamps)
TOKENS_PER_SECOND = 6
MAX_NEW_TOKENS = 200
WHISPER_MAX_LENGTH = 448  # the decoder's positions: prompt and transcript together
# a segment starting this close to the end of the audio (or later) is made up in the padding
LATE_SEGMENT_SECONDS = 0.25
OPENING_WORDS = 3


@dataclass(frozen=True)
class DecodedSegment:
    start: float  # seconds from the start of the utterance audio
    end: float
    text: str


@dataclass(frozen=True)
class Lead:
    """Audio in front of an utterance whose transcript is known (the stream's previous caption):
    the decoder hears `seconds` of it before the utterance and is told it said `text`."""

    text: str
    seconds: float


@dataclass
class Decoded:
    """One utterance's hypothesis."""

    text: str
    segments: list[DecodedSegment]
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float
    language: str
    dropped_segments: int = 0
    language_probability: float | None = None  # None: the language was given, not detected


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _norm_words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


class ShortWindowDecoder:
    """Decodes batches of utterances with one loaded `faster_whisper.WhisperModel`. Stateless
    between calls; safe to call from several threads (CTranslate2 runs them on its workers)."""

    def __init__(self, model: Any, pad_seconds: float = 1.0) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model = model
        self.pad_seconds = pad_seconds
        self.multilingual = bool(model.model.is_multilingual)
        self._tokenizers: dict[str, Any] = {}
        self._Tokenizer = Tokenizer
        base = self._tokenizer("en")
        self.suppress_tokens = list(get_suppressed_tokens(base, [-1]))

    def _tokenizer(self, language: str, task: str = "transcribe") -> Any:
        lang = (language or "en") if self.multilingual else "en"
        task = task if self.multilingual else "transcribe"
        key = f"{lang}:{task}"
        tok = self._tokenizers.get(key)
        if tok is None:
            tok = self._Tokenizer(
                self.model.hf_tokenizer,
                self.multilingual,
                task=task,
                language=lang if self.multilingual else None,
            )
            if len(self._tokenizers) < 64:  # bounded: a handful of languages and tasks per process
                self._tokenizers[key] = tok
        return tok

    def features(self, audio: np.ndarray, frames: int) -> np.ndarray:
        """Log-mel features of `audio` followed by silence, exactly `frames` long."""
        samples = frames * HOP
        padded = np.zeros(samples, dtype=np.float32)
        take = min(len(audio), samples)
        padded[:take] = audio[:take]
        mel = self.model.feature_extractor(padded)
        if mel.shape[1] < frames:
            mel = np.pad(mel, ((0, 0), (0, frames - mel.shape[1])), mode="edge")
        return mel[:, :frames]

    def window_frames(self, audio_samples: int) -> int:
        frames = int(np.ceil((audio_samples + self.pad_seconds * SAMPLE_RATE) / HOP))
        frames += frames % 2  # the encoder's stride-2 convolution wants an even count
        return min(MAX_FRAMES, max(100, frames))

    def prompt_tokens(self, text: str, language: str | None, limit: int) -> list[int]:
        """The last `limit` tokens of `text` (previous captions), as decoding context."""
        text = text.strip()
        if not text or limit <= 0:
            return []
        return list(self._tokenizer(language or "en").encode(" " + text))[-limit:]

    def lead_tokens(self, lead: Lead | None, language: str) -> list[int]:
        """The forced opening of the transcript: the lead's text as one timestamped segment that
        ends where the utterance begins, then the opening timestamp of the utterance's own first
        segment (empty without a lead). Ending on the closing timestamp alone left Whisper free to
        end the transcript there: 6 of 120 finals came back empty and were decoded again; with the
        opening timestamp forced too, none did, and the finals were closer to offline (mean gap
        +0.032 → +0.024 on eight 60 s streams, decoded by hand)."""
        if lead is None or not lead.text.strip() or lead.seconds <= 0:
            return []
        tok = self._tokenizer(language)
        last = tok.timestamp_begin + min(1500, int(round(lead.seconds / TIME_PRECISION)))
        return [tok.timestamp_begin, *tok.encode(" " + lead.text.strip()), last, last]

    def decode(
        self,
        audios: list[np.ndarray],
        language: str | None,
        beam_size: int,
        contexts: list[list[int]] | None = None,
        leads: list[Lead | None] | None = None,
        allowed: list[tuple[str, ...] | None] | None = None,
        task: str = "transcribe",
    ) -> list[Decoded]:
        """Decode `audios` (each ≤ 29 s, a lead's audio included), in as few model calls as
        CTranslate2 allows. `contexts`: per utterance, tokens of what was said before it;
        `leads`: per utterance, the known audio in front of it (its segments' times are then
        from the utterance's own start). Without a `language` (multilingual model) each
        utterance's language is detected, among its `allowed` languages when it has some;
        `task="translate"` is Whisper's own speech translation into English."""
        if not audios:
            return []
        contexts = contexts or [[] for _ in audios]
        leads = leads or [None for _ in audios]
        allowed = allowed or [None for _ in audios]
        languages = self._languages_of(audios, language)
        probabilities: list[float | None] = [None] * len(audios)
        # an utterance heard after its lead is detected on its own audio first: the lead may be
        # in the language the speaker just left (a bilingual speaker is followed per utterance)
        ahead = [i for i, (lang, lead) in enumerate(zip(languages, leads)) if not lang and lead is not None]
        if ahead:
            found = self.detect(
                [audios[i][int(leads[i].seconds * SAMPLE_RATE) :] for i in ahead],  # type: ignore[union-attr]
                [allowed[i] for i in ahead],
            )
            for i, (lang, probability) in zip(ahead, found):
                languages[i], probabilities[i] = lang, probability
        prefixes = [self.lead_tokens(lead, lang or "en") for lead, lang in zip(leads, languages)]  # one vocabulary
        # one call per prompt shape: CTranslate2 wants the start-of-transcript token at the same
        # place in every row, and rows of different prefix lengths decode wrongly when batched
        groups: dict[tuple[str, int, int], list[int]] = {}
        for i, (context, prefix, lang) in enumerate(zip(contexts, prefixes, languages)):
            groups.setdefault((lang, len(context), len(prefix)), []).append(i)
        out: list[Decoded | None] = [None] * len(audios)
        for (lang, _, _), rows in groups.items():
            decoded = self._decode_group(
                [audios[i] for i in rows],
                lang,
                beam_size,
                [contexts[i] for i in rows],
                [prefixes[i] for i in rows],
                [leads[i] for i in rows],
                [allowed[i] for i in rows],
                task,
            )
            for i, result in zip(rows, decoded):
                if probabilities[i] is not None:
                    result.language_probability = probabilities[i]
                out[i] = result
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def detect(self, audios: list[np.ndarray], allowed: list[tuple[str, ...] | None]) -> list[tuple[str, float | None]]:
        """(language, probability) of each utterance, from its own encoder window."""
        if not self.multilingual:
            return [("en", None)] * len(audios)
        from faster_whisper.transcribe import get_ctranslate2_storage

        frames = max(self.window_frames(len(a)) for a in audios)
        batch = np.stack([self.features(a, frames) for a in audios]).astype(np.float32)
        encoder_output = self.model.model.encode(get_ctranslate2_storage(batch), to_cpu=False)
        return self._languages(encoder_output, None, allowed)

    def _languages_of(self, audios: list[np.ndarray], language: str | None) -> list[str]:
        if not self.multilingual:
            return ["en"] * len(audios)
        if language and language != "auto":
            return [language] * len(audios)
        return [""] * len(audios)  # detected per call from the encoder output

    def _decode_group(
        self,
        audios: list[np.ndarray],
        language: str,
        beam_size: int,
        contexts: list[list[int]],
        prefixes: list[list[int]],
        leads: list[Lead | None],
        allowed: list[tuple[str, ...] | None] | None = None,
        task: str = "transcribe",
    ) -> list[Decoded]:
        """One encoder pass and one generate call for utterances whose prompts have one shape."""
        from faster_whisper.transcribe import get_ctranslate2_storage

        frames = max(self.window_frames(len(a)) for a in audios)
        batch = np.stack([self.features(a, frames) for a in audios]).astype(np.float32)
        encoder_output = self.model.model.encode(get_ctranslate2_storage(batch), to_cpu=False)
        found = self._languages(encoder_output, language or None, allowed or [None] * len(audios))
        languages = [lang for lang, _ in found]
        prompts = []
        for lang, context, prefix in zip(languages, contexts, prefixes):
            tok = self._tokenizer(lang, task)
            prompts.append(([tok.sot_prev, *context] if context else []) + list(tok.sot_sequence) + prefix)
        max_new = min(MAX_NEW_TOKENS, int(frames * HOP / SAMPLE_RATE * TOKENS_PER_SECOND) + 12)
        results = self.model.model.generate(
            encoder_output,
            prompts,
            beam_size=beam_size,
            max_length=min(WHISPER_MAX_LENGTH, len(prompts[0]) + max_new),  # a long vocabulary prompt
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self.suppress_tokens,
            max_initial_timestamp_index=50,
        )
        out = []
        for audio, (lang, probability), result, prefix, lead in zip(audios, found, results, prefixes, leads):
            tokens = list(result.sequences_ids[0])
            if prefix and tokens[: len(prefix)] == prefix:  # the forced lead comes back first
                tokens = tokens[len(prefix) - 1 :]  # from the utterance's forced opening timestamp
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else 0.0
            offset = lead.seconds if prefix and lead is not None else 0.0
            decoded = self._parse(
                tokens,
                lang,
                len(audio) / SAMPLE_RATE,
                result.no_speech_prob,
                avg_logprob,
                offset,
                lead.text if prefix and lead is not None else "",
            )
            decoded.language_probability = probability
            out.append(decoded)
        return out

    def _languages(
        self, encoder_output: Any, language: str | None, allowed: list[tuple[str, ...] | None]
    ) -> list[tuple[str, float | None]]:
        """Per row (language, probability): the given language (probability None), or the most
        likely one, among the row's allowed languages when it has some (their probabilities
        renormalised over the allowed ones)."""
        n = len(allowed)
        if not self.multilingual:
            return [("en", None)] * n
        if language and language != "auto":
            return [(language, None)] * n
        detected = self.model.model.detect_language(encoder_output)
        out: list[tuple[str, float | None]] = []
        for langs, only in zip(detected, allowed):
            scores = [(token.strip("<|>"), float(p)) for token, p in langs]
            if only:
                kept = [(code, p) for code, p in scores if code in only]
                if not kept:  # none of them is a Whisper language: the first allowed, undetected
                    out.append((only[0], None))
                    continue
                total = sum(p for _, p in kept) or 1.0
                out.append((kept[0][0], round(kept[0][1] / total, 4)))
            else:
                out.append((scores[0][0], round(scores[0][1], 4)))
        return out

    def _parse(
        self,
        tokens: list[int],
        language: str,
        audio_seconds: float,
        no_speech: float,
        avg_logprob: float,
        offset: float = 0.0,
        lead_text: str = "",
    ) -> Decoded:
        """Segments of one hypothesis; `offset`: seconds of lead audio before the utterance (its
        segments' times are returned from the utterance's start, and a segment that ends inside
        the lead, or words that repeat `lead_text`, are the lead read again, dropped)."""
        tok = self._tokenizer(language)
        begin, eot = tok.timestamp_begin, tok.eot
        raw: list[tuple[float, float | None, list[int]]] = []
        start: float | None = None
        text_ids: list[int] = []
        for t in tokens:
            if t >= begin:
                time = (t - begin) * TIME_PRECISION
                if text_ids:
                    raw.append((start if start is not None else time, time, text_ids))
                    text_ids, start = [], None
                else:
                    start = time
            elif t < eot:
                if start is None:
                    start = raw[-1][1] if raw and raw[-1][1] is not None else 0.0
                text_ids.append(t)
        if text_ids:  # cut off by max_length: no closing timestamp
            raw.append((start or 0.0, None, text_ids))
        segments: list[DecodedSegment] = []
        dropped = 0
        opening: list[str] | None = None
        for seg_start, seg_end, ids in raw:
            text = tok.decode(ids).strip()
            if lead_text:
                unrepeated = strip_lead_repeat(text, lead_text)
                dropped += unrepeated != text
                text = unrepeated
            words = _norm_words(text)
            if not words:
                continue
            late = seg_start >= audio_seconds - LATE_SEGMENT_SECONDS
            repeat = opening is not None and len(words) >= OPENING_WORDS and words[:OPENING_WORDS] == opening
            in_lead = offset > 0 and seg_end is not None and seg_end <= offset + LATE_SEGMENT_SECONDS
            if late or repeat or in_lead:
                dropped += 1
                continue
            if opening is None:
                opening = words[:OPENING_WORDS]
            end = seg_end if seg_end is not None else audio_seconds
            segments.append(DecodedSegment(max(0.0, seg_start - offset), min(end, audio_seconds) - offset, text))
        text = " ".join(s.text for s in segments).strip()
        restarted = cut_restart(text)
        if restarted != text:
            dropped += 1
            text = restarted
        return Decoded(text, segments, float(no_speech), float(avg_logprob), compression_ratio(text), language, dropped)


# a later sentence this similar to the first one (difflib ratio of their words) is Whisper replaying
# the utterance, not new speech: "The bridge will open to traffic next spring. The new bridge will
# open to traffic next spring." (0.94) came from one 3 s sentence in bench/bench_captions.py
RESTART_SIMILARITY = 0.85
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _word_keys(words: list[str]) -> list[str]:
    return [re.sub(r"[^\w']", "", w.lower()) for w in words]


def strip_lead_repeat(text: str, lead_text: str) -> str:
    """Whisper reading the forced lead again as the utterance's opening (it does, over an
    utterance that is mostly silence): the words that nearly repeat the lead are dropped."""
    lead = _word_keys(lead_text.split())
    if len(lead) < OPENING_WORDS:
        return text
    words = text.split()
    head = _word_keys(words[: len(lead)])
    if difflib.SequenceMatcher(None, lead, head).ratio() >= RESTART_SIMILARITY:
        return " ".join(words[len(lead) :])
    return text


def cut_restart(text: str) -> str:
    """Whisper starting the utterance over: its opening words come back later in the text, or a
    later sentence nearly repeats the first. Keep the text before the replay."""
    words = text.split()
    keys = _word_keys(words)
    opening = keys[:OPENING_WORDS]
    if len(opening) < OPENING_WORDS or not all(opening):
        return text
    for i in range(OPENING_WORDS, len(keys) - OPENING_WORDS + 1):
        if keys[i : i + OPENING_WORDS] == opening:
            return " ".join(words[:i])
    sentences = _SENTENCE_END.split(text.strip())
    first = _norm_words(sentences[0])
    for index in range(1, len(sentences)):
        later = _norm_words(sentences[index])
        if len(later) >= OPENING_WORDS and difflib.SequenceMatcher(None, first, later).ratio() >= RESTART_SIMILARITY:
            return " ".join(sentences[:index])
    return text
