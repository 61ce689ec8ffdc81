"""`CaptionStage`: live captions (and their translations) for one stream.

The stream hands every decoded audio frame to `on_audio` (decode thread: resample + copy only);
the stage's `StreamingTranscriber` turns it into `CaptionEvent`s on the stream's `EventBus`.

Params (the stream's params object, changeable mid-stream through `update_params`):

    {"captions": {"enabled": true, "language": "en", "translate_to": ["es"], "burn_in": true}}

Translation: finals only. Each final is published at once, untranslated (`revision` 0); when
its translations are in, the same caption is published as an *update*: same id, text and times,
`revision` 1, `translations` filled (with the translator's `translation_confidence` and
`translation_flags` per target), failed targets listed in `untranslated`. Sinks replace the
caption they hold, so a final is shown and kept once. Captions never wait for translation, and
partials are never translated.

`burned_in` on every event says whether the overlay also draws the caption into the video (the
stream's `captions.burn_in`, default on, as the overlay reads it), so a player shows one
rendition only: its own text track when false, nothing on top of the video when true.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator

from inference.asr.model import AsrModelPool, AsrSettings, english_only, pool_for_language
from inference.asr.streaming import StreamingTranscriber
from inference.asr.vocabulary import MAX_TERM_CHARS, MAX_TERMS, ScreenVocabulary, clean_terms, merged_terms
from inference.translate.base import same_language
from inference.translate.service import CaptionTranslation
from media.caption_filter import MAX_RULES, CaptionFilter, FilterRule, parse_rules
from media.events import CaptionEvent, StreamEvent, VisionEvent
from media.frames import AudioItem
from media.params import CAPTIONS_BURN_IN_DEFAULT, OVERLAY_ENABLED_DEFAULT
from media.stage import Stage, StageContext

log = logging.getLogger(__name__)

# (text, source_lang, target_lang[, session=manifest id]) -> (translated text or None, error or
# None); the result may also carry `.confidence` (0..1) and `.quality_flags` (the translation
# service's CaptionTranslation does)
TranslateFn = Callable[..., Awaitable[tuple[str | None, str | None]]]
# below this translator confidence a player greys the translation out
LOW_CONFIDENCE = 0.5


class CaptionParams(BaseModel):
    enabled: bool = True
    language: str | None = None  # None: the ASR settings' language; a code, or "auto" (detected per utterance)
    # with "auto": the languages detection may choose from (a bilingual speaker, followed per utterance)
    allowed_languages: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=8)]] = (
        Field(default_factory=list, max_length=16)
    )
    translate_to: list[str] = Field(default_factory=list, max_length=8)
    burn_in: bool = CAPTIONS_BURN_IN_DEFAULT  # as the overlay reads it
    # names and jargon to spell right (inference/asr/vocabulary.py); words read on screen join them
    vocabulary: list[
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TERM_CHARS)]
    ] = Field(default_factory=list, max_length=MAX_TERMS)
    screen_vocabulary: bool = True
    filter: list[FilterRule] = Field(default_factory=list, max_length=MAX_RULES)  # media/caption_filter.py

    _terms = field_validator("vocabulary", mode="after")(classmethod(lambda cls, v: clean_terms(v)))
    _rules = field_validator("filter", mode="before")(classmethod(lambda cls, v: parse_rules(v)))
    _language = field_validator("language", mode="after")(classmethod(lambda cls, v: _spoken_language(v)))
    _allowed = field_validator("allowed_languages", mode="after")(
        classmethod(lambda cls, v: list(dict.fromkeys(_spoken_language(code, auto=False) for code in v)))
    )


class CaptionStage(Stage):
    name = "captions"

    def __init__(
        self,
        pool: AsrModelPool,
        settings: AsrSettings | None = None,
        translate: TranslateFn | None = None,
        *,
        max_translations_in_flight: int = 8,
        translate_timeout: float = 10.0,
    ) -> None:
        self.pool = pool
        self.settings = settings or pool.settings
        self.translate = translate
        self._translate_takes_session = _accepts_keyword(translate, "session")
        self._overlay_enabled = True
        # off until the stream's params carry a "captions" object (then enabled defaults to true)
        self.params = CaptionParams(enabled=False)
        self.transcriber: StreamingTranscriber | None = None
        self.max_translations_in_flight = max_translations_in_flight
        self.translate_timeout = translate_timeout
        self._translation_tasks: set[asyncio.Task] = set()  # bounded by max_translations_in_flight
        self._control_tasks: set[asyncio.Task] = set()  # enable/disable requests (few, short)
        self.translations_done = 0
        self.translation_errors = 0
        self.translations_skipped = 0
        self.translations_low_confidence = 0
        self.last_translation_error: str | None = None
        self.unservable_pairs: set[str] = set()  # "de->fr": no backend serves it (bounded: 64)
        self._stopped = False
        self._filter = CaptionFilter()
        self.filtered_words = 0
        self.screen = ScreenVocabulary()  # what the OCR tagger read on this stream's video

    @property
    def enabled(self) -> bool:
        return self.params.enabled

    @property
    def _model_pool(self) -> AsrModelPool:
        """The pool of the model this stream's language uses."""
        return self.transcriber.pool if self.transcriber is not None else self.pool

    @property
    def burn_in(self) -> bool:
        return self.params.burn_in

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.pool.start_loading()  # in the pool's thread; /health can read pool.loading
        self.transcriber = StreamingTranscriber(
            self.pool,
            self.settings,
            on_event=self._on_caption,
            on_error=self._on_model_error,
            name=ctx.manifest_id,
        )
        self.transcriber.vocabulary = self._vocabulary
        ctx.events.add_listener(self._on_stream_event)
        self.update_params(ctx.params)
        self.transcriber.start()

    async def stop(self) -> None:
        self._stopped = True
        for task in list(self._control_tasks) + list(self._translation_tasks):
            task.cancel()
        for task in list(self._control_tasks) + list(self._translation_tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.transcriber is not None:
            await self.transcriber.close(finalize=self.params.enabled)

    # -- hooks --------------------------------------------------------------------------------

    def on_audio(self, item: AudioItem) -> None:
        if self.transcriber is not None and self.params.enabled and not self._stopped:
            self.transcriber.feed(item)

    def update_params(self, params: dict[str, Any]) -> None:
        self._overlay_enabled = bool(((params or {}).get("overlay") or {}).get("enabled", OVERLAY_ENABLED_DEFAULT))
        if "captions" not in (params or {}):
            return
        try:
            new = CaptionParams.model_validate(params["captions"] or {})
        except ValidationError as exc:
            log.warning("ignoring invalid caption params: %s", exc.errors(include_url=False))
            return
        old, self.params = self.params, new
        self._filter = CaptionFilter(new.filter)
        if self.transcriber is None:
            return
        self._apply_language(new)
        if old.enabled and not new.enabled:
            self._control(self.transcriber.finish())  # close the open caption as final
        elif new.enabled and not old.enabled:
            self._control(self.transcriber.areset())  # drop audio from before the pause

    def _apply_language(self, params: CaptionParams) -> None:
        """The stream's language picks its model (inference/asr/model.py `pool_for_language`)."""
        assert self.transcriber is not None
        language = params.language or self.settings.language
        pool = pool_for_language(self.pool, language)
        if pool is not self.transcriber.pool:
            pool.start_loading()  # the multilingual model loads on the first stream that needs it
        self.transcriber.set_pool(pool)
        self.transcriber.set_language(language, [code.lower() for code in params.allowed_languages])
        # Whisper's own speech translation into English needs the final's audio: kept (bounded)
        # only when English is a target and the speech may not be English
        self.transcriber.keep_speech = "en" in params.translate_to and language.lower() not in ("en", "eng")

    def _control(self, coro: Awaitable[Any]) -> None:
        loop = self.ctx.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:  # params may arrive from another thread
            asyncio.run_coroutine_threadsafe(_await(coro), loop)
            return
        if len(self._control_tasks) >= 4:
            log.warning("%s: caption control requests pile up; one ignored", self.ctx.manifest_id)
            coro.close()  # type: ignore[attr-defined]
            return
        task = loop.create_task(_await(coro))
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    # -- output -------------------------------------------------------------------------------

    def _on_caption(self, event: CaptionEvent) -> None:
        event.text = self._filtered(event.text)  # once, before every output (they read this event)
        event.burned_in = self._burned_in()
        self.ctx.events.publish(event)
        targets = [t for t in self.params.translate_to if t]
        if event.final and event.text and targets and self.translate is not None and not self._stopped:
            self._start_translation(event, targets)

    def _filtered(self, text: str) -> str:
        if not self._filter:
            return text
        text, matched = self._filter.apply(text)
        self.filtered_words += matched
        return text

    def _vocabulary(self) -> tuple[str, ...]:
        """The terms the next decode is given: the user's, then the screen's (asked per decode,
        so a params update or a new slide counts from the next utterance on)."""
        screen = self.screen.terms() if self.params.screen_vocabulary else []
        return merged_terms(self.params.vocabulary, screen)

    def _on_stream_event(self, event: StreamEvent) -> None:
        """Bus listener (on the loop): on-screen text read by the OCR tagger feeds the vocabulary."""
        if not isinstance(event, VisionEvent) or not self.params.screen_vocabulary:
            return
        lines = [str(getattr(tag, "words", "")) for tag in event.tags if tag.name == "text"]
        if lines:
            self.screen.observe(lines)

    def _burned_in(self) -> bool:
        return bool(self.params.burn_in and self._overlay_enabled)

    def _update(self, event: CaptionEvent, **changes: Any) -> CaptionEvent:
        """The next revision of a published final (same id, text and times)."""
        return replace(
            event, revision=event.revision + 1, emitted_at=time.time(), burned_in=self._burned_in(), **changes
        )

    def _start_translation(self, event: CaptionEvent, targets: list[str]) -> None:
        if len(self._translation_tasks) >= self.max_translations_in_flight:
            # overload: say so on the caption rather than queue without bound
            self.translations_skipped += 1
            self.ctx.events.publish(self._update(event, untranslated=list(targets)))
            return
        task = self.ctx.loop.create_task(self._translate_final(event, targets))
        self._translation_tasks.add(task)
        task.add_done_callback(self._translation_tasks.discard)

    async def _translate_final(self, event: CaptionEvent, targets: list[str]) -> None:
        # a pair nothing can serve was said once (status + the event that found it): not retried
        targets = [t for t in targets if _pair(event.lang, t) not in self.unservable_pairs]
        results = await asyncio.gather(*(self._translate_one(event, t) for t in targets))
        translations: dict[str, str] = {}
        confidence: dict[str, float] = {}
        flags: dict[str, list[str]] = {}
        untranslated: list[str] = []
        for target, result in zip(targets, results):
            text, error = result[0], result[1]
            score = getattr(result, "confidence", None)
            if score is not None:
                confidence[target] = round(float(score), 4)
            noticed = list(getattr(result, "quality_flags", None) or ())
            if noticed:
                flags[target] = noticed
            if text:
                translations[target] = self._filtered(text)  # of the filtered text, and filtered too
                self.translations_done += 1
                if score is not None and score < LOW_CONFIDENCE:
                    self.translations_low_confidence += 1
            else:
                untranslated.append(target)
                self.translation_errors += 1
                self.last_translation_error = error or "empty translation"
        if not self._stopped:
            self.ctx.events.publish(
                self._update(
                    event,
                    translations=translations,
                    untranslated=untranslated,
                    translation_confidence=confidence,
                    translation_flags=flags,
                )
            )

    async def _translate_one(self, event: CaptionEvent, target: str) -> tuple[str | None, str | None]:
        """The caption's text in `target`, from the language it was spoken in: the translation
        service first (Apertium pairs, LLM/Triton backends, with the stream's context), then
        Whisper's own speech translation for a target of English. A pair neither serves is
        recorded (status `unservable_translations`) and flagged once on the caption."""
        text, source = event.text, event.lang
        if same_language(source, target):
            return text, None
        result: tuple[str | None, str | None] = (None, "no translator configured")
        if self.translate is not None:
            result = await self._call_translator(text, source, target)
        if result[0]:
            return result
        if (
            _base(target) == "en"
            and self.transcriber is not None
            and self.transcriber.keep_speech
            and not english_only(self.transcriber.pool.settings.model)  # an .en model cannot translate
        ):
            spoken = await self.transcriber.translate_speech(event.id)
            if spoken:
                return CaptionTranslation(spoken, None, quality_flags=("speech_translation",), backend="whisper")
        error = result[1] or "empty translation"
        if error.startswith("unsupported_language_pair") and source != "und" and len(self.unservable_pairs) < 64:
            self.unservable_pairs.add(_pair(source, target))
            log.warning("%s: no translator serves %s", self.ctx.manifest_id, _pair(source, target))
            return CaptionTranslation(None, error, confidence=0.0, quality_flags=("unsupported_pair",))
        return result

    async def _call_translator(self, text: str, source: str, target: str) -> tuple[str | None, str | None]:
        assert self.translate is not None
        try:
            if self._translate_takes_session:
                call = self.translate(text, source, target, session=self.ctx.manifest_id)
            else:
                call = self.translate(text, source, target)
            return await asyncio.wait_for(call, self.translate_timeout)
        except TimeoutError:
            return None, f"translation to {target} timed out after {self.translate_timeout:.0f}s"
        except Exception as exc:  # the translator is someone else's code: never let it stop captions
            return None, f"{type(exc).__name__}: {exc}"

    def _on_model_error(self, message: str | None) -> None:
        report = getattr(self.ctx, "report_error", None)
        if report is not None:
            try:
                report(message)
            except Exception:
                log.exception("report_error failed")

    # -- stats --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self.transcriber.stats()) if self.transcriber else {}
        stats.update(
            enabled=self.params.enabled,
            language=self.transcriber.caption_language if self.transcriber else self.settings.language,
            language_setting=self.params.language or self.settings.language,
            allowed_languages=list(self.params.allowed_languages),
            model=self._model_pool.settings.model,
            english_only_model=english_only(self._model_pool.settings.model),
            unservable_translations=sorted(self.unservable_pairs),
            translate_to=list(self.params.translate_to),
            burn_in=self.params.burn_in,
            vocabulary=list(self.params.vocabulary),
            screen_vocabulary=self.screen.snapshot() if self.params.screen_vocabulary else [],
            filter_rules=len(self.params.filter),
            filtered_words=self.filtered_words,
            translations=self.translations_done,
            translation_errors=self.translation_errors,
            translations_skipped=self.translations_skipped,
            translations_low_confidence=self.translations_low_confidence,
            translations_in_flight=len(self._translation_tasks),
            last_translation_error=self.last_translation_error,
            model_loaded=self._model_pool.loaded,
            model_loading=self._model_pool.loading,
            model_load_error=self._model_pool.load_error,
        )
        return stats


def _spoken_language(code: str | None, auto: bool = True) -> str | None:
    """A language Whisper can be told or detect: its code ("es-MX" → "es"), or "auto"."""
    if code is None:
        return None
    code = code.strip().lower()
    if auto and code == "auto":
        return code
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # the model's own list (99 codes)

    base = _base(code)
    if base not in _LANGUAGE_CODES:
        raise ValueError(f"{code!r} is not a language the speech model knows (a code such as 'es', or 'auto')")
    return base


def _base(code: str) -> str:
    return code.replace("_", "-").split("-")[0].lower()


def _pair(source: str, target: str) -> str:
    return f"{source}->{target}"


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _accepts_keyword(fn: Any, name: str) -> bool:
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
