"""Apertium: rule-based machine translation that runs offline on a CPU (the embedded default).

Each call runs `apertium <mode>` as an asyncio subprocess, so the event loop only moves bytes.
Apertium marks the words it could not translate (`*unknown`, `@untranslatable`, `#ungenerated`);
those marks are counted (the translation's confidence evidence, flag `unknown_words`) and then
removed from the text.
The `apertium` command pipes a chain of small tools; starting it costs ~0.2 s, which is why a
batch is sent as one call: texts are joined as paragraphs (blank-line separated), which Apertium
keeps apart, and the output is split back. If the split ever disagrees with the input count,
the batch is redone one text per call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
from collections.abc import Sequence
from typing import Any

from .base import (
    BoundedConcurrency,
    ContextTurn,
    LanguageSupport,
    TranslationError,
    TranslationResult,
    Translator,
    UnsupportedLanguagePairError,
    gather_all_or_cancel,
    split_language_code,
    to_iso639_1,
    to_iso639_3,
)
from .quality import known_word_score

log = logging.getLogger(__name__)

_MODE_RE = re.compile(r"^[a-z]{2,3}(_[A-Za-z0-9]+)?-[a-z]{2,3}(_[A-Za-z0-9]+)?$")
_PARAGRAPH_SPLIT_RE = re.compile(r"\n[ \t]*\n")
# Apertium marks unknown (*), untranslatable (@) and ungeneratable (#) words by prefixing them.
_MARKED_WORD_RE = re.compile(r"(?<![\w@#*])([*@#])(\w[\w'-]*)")
DEFAULT_MODES_DIR = "/usr/share/apertium/modes"


def strip_unknown_marks(translated: str, source: str) -> str:
    """Drop Apertium's word marks, but keep a mark the source itself had (e.g. '@name', '#tag')."""

    def unmark(match: re.Match[str]) -> str:
        marked = match.group(0)
        return marked if marked in source else match.group(2)

    return _MARKED_WORD_RE.sub(unmark, translated)


def _clean_output(translated: str, source: str) -> str:
    # Apertium adds spaces around sentence ends and at paragraph starts; captions want one line.
    return " ".join(strip_unknown_marks(translated, source).split())


def count_unknown_marks(translated: str, source: str) -> int:
    """Words Apertium marked as unknown/untranslatable, not counting marks the source had."""
    return sum(1 for m in _MARKED_WORD_RE.finditer(translated) if m.group(0) not in source)


def _result(raw: str, line: str, source_lang: str, target_lang: str, mode: str) -> TranslationResult:
    unknown = count_unknown_marks(raw, line)
    words = max(1, len(raw.split()))
    return TranslationResult(
        text=_clean_output(raw, line),
        source_language=source_lang,
        target_language=target_lang,
        model_info=f"apertium:{mode}",
        backend="apertium",
        backend_score=known_word_score(words, unknown),
        quality_flags=("unknown_words",) if unknown else (),
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ApertiumTranslator(Translator):
    name = "apertium"

    def __init__(
        self,
        *,
        binary: str = "apertium",
        data_dir: str | None = None,
        timeout: float = 10.0,
        max_concurrency: int = 2,
        max_pending: int = 64,
        batch_in_one_call: bool = True,
    ) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.timeout = timeout
        self.batch_in_one_call = batch_in_one_call
        self._limiter = BoundedConcurrency(max_concurrency, max_pending, "apertium")
        self._pairs: list[str] | None = None
        self._binary_path: str | None = None
        self._pairs_lock = asyncio.Lock()
        self.calls = 0
        self.failures = 0
        self.batch_split_fallbacks = 0

    @property
    def model_info(self) -> str:
        return "apertium"

    # --- pair discovery ------------------------------------------------------------------

    async def available_pairs(self) -> list[str]:
        """Installed translation modes, e.g. ['eng-spa', 'spa-eng', 'spa-eng_US'] (found once)."""
        if self._pairs is not None:
            return self._pairs
        async with self._pairs_lock:
            if self._pairs is None:
                self._pairs = await self._discover_pairs()
        return self._pairs

    async def _discover_pairs(self) -> list[str]:
        modes: set[str] = set()
        if self._resolved_binary() is not None:
            try:
                out = await self._run([*self._base_args(), "-l"], b"")
                modes.update(line.strip() for line in out.decode("utf-8", "replace").splitlines())
            except TranslationError as exc:
                log.warning("apertium -l failed (%s); reading the modes directory instead", exc)
        modes_dir = os.path.join(self.data_dir, "modes") if self.data_dir else DEFAULT_MODES_DIR
        if not modes and os.path.isdir(modes_dir):
            modes.update(f[: -len(".mode")] for f in os.listdir(modes_dir) if f.endswith(".mode"))
        pairs = sorted(m for m in modes if _MODE_RE.match(m))
        log.info("apertium pairs: %s", ", ".join(pairs) or "none")
        return pairs

    async def resolve_mode(self, source_lang: str, target_lang: str) -> str:
        """Map request codes ('en', 'es', 'en-US', 'eng') to an installed mode ('eng-spa')."""
        pairs = await self.available_pairs()
        src_base, _ = split_language_code(source_lang)
        tgt_base, tgt_region = split_language_code(target_lang)
        sources = dict.fromkeys([to_iso639_3(src_base), src_base])
        targets: list[str] = []
        for base in dict.fromkeys([to_iso639_3(tgt_base), tgt_base]):
            if tgt_region:
                targets.append(f"{base}_{tgt_region}")  # regional variant modes, e.g. spa-eng_US
            targets.append(base)
        for src in sources:
            for tgt in targets:
                if f"{src}-{tgt}" in pairs:
                    return f"{src}-{tgt}"
        raise UnsupportedLanguagePairError(source_lang, target_lang, pairs)

    # --- translation ---------------------------------------------------------------------

    async def language_support(self) -> LanguageSupport:
        pairs = []
        for mode in await self.available_pairs():
            source, _, target = mode.partition("-")
            pairs.append((to_iso639_1(source), to_iso639_1(target)))
        return LanguageSupport(pairs=tuple(pairs))

    async def translate(
        self, text: str, source_lang: str, target_lang: str, context: Sequence[ContextTurn] = ()
    ) -> TranslationResult:
        # Rule-based: every sentence is translated alone, so `context` is not used.
        self._require_binary()
        mode = await self.resolve_mode(source_lang, target_lang)
        line = _one_line(text)
        translated = await self._translate_raw(mode, line) if line else ""
        return _result(translated, line, source_lang, target_lang, mode)

    async def translate_batch(
        self, texts: Sequence[str], source_lang: str, target_lang: str
    ) -> list[TranslationResult]:
        self._require_binary()
        mode = await self.resolve_mode(source_lang, target_lang)
        lines = [_one_line(t) for t in texts]
        todo = [i for i, line in enumerate(lines) if line]
        outputs = [""] * len(lines)
        if len(todo) == 1 or (todo and not self.batch_in_one_call):
            parts = await gather_all_or_cancel([self._translate_raw(mode, lines[i]) for i in todo])
            for i, part in zip(todo, parts):
                outputs[i] = part
        elif todo:
            joined = "\n\n".join(lines[i] for i in todo) + "\n"
            raw = await self._translate_raw(mode, joined)
            parts = _PARAGRAPH_SPLIT_RE.split(raw.strip("\n"))
            if len(parts) != len(todo):
                # Never guess an alignment: redo one text per call.
                self.batch_split_fallbacks += 1
                log.warning("apertium batch split gave %d parts for %d texts; retrying per text", len(parts), len(todo))
                parts = await gather_all_or_cancel([self._translate_raw(mode, lines[i]) for i in todo])
            for i, part in zip(todo, parts):
                outputs[i] = part
        return [_result(out, line, source_lang, target_lang, mode) for out, line in zip(outputs, lines)]

    def _require_binary(self) -> None:
        if self._resolved_binary() is None:
            raise TranslationError(
                f"apertium binary {self.binary!r} not found; install the 'apertium' package",
                code="backend_unavailable",
            )

    async def _translate_raw(self, mode: str, text: str) -> str:
        self._require_binary()
        out = await self._limiter.run(lambda: self._run([*self._base_args(), mode], text.encode("utf-8")))
        return out.decode("utf-8", "replace")

    def _base_args(self) -> list[str]:
        binary = self._resolved_binary() or self.binary
        return [binary, "-d", self.data_dir] if self.data_dir else [binary]

    def _resolved_binary(self) -> str | None:
        if self._binary_path is None:
            self._binary_path = shutil.which(self.binary)  # remembered once found
        return self._binary_path

    async def _run(self, argv: list[str], stdin: bytes) -> bytes:
        self.calls += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, so a timeout kills the whole pipe
            )
        except OSError as exc:
            self.failures += 1
            raise TranslationError(f"cannot start apertium: {exc}", code="backend_unavailable") from exc
        timeout = self.timeout + len(stdin) / 50_000  # a big batch gets 1 s more per 50 kB
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            await _kill(proc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.failures += 1
            raise TranslationError(f"apertium did not answer within {timeout:.1f} s", code="backend_timeout") from exc
        if proc.returncode != 0:
            self.failures += 1
            detail = stderr.decode("utf-8", "replace").strip()[:300]
            raise TranslationError(f"apertium exited with {proc.returncode}: {detail}", code="backend_error")
        return stdout

    # --- status --------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        binary = self._resolved_binary()
        if binary is None:
            return {"status": "unhealthy", "error": f"{self.binary!r} not found on PATH"}
        try:
            pairs = await self.available_pairs()
        except Exception as exc:  # health never raises
            return {"status": "unhealthy", "binary": binary, "error": str(exc)}
        return {
            "status": "healthy" if pairs else "unhealthy",
            "binary": binary,
            "pairs": pairs,
            **({} if pairs else {"error": "no apertium language pairs installed"}),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failures": self.failures,
            "batch_split_fallbacks": self.batch_split_fallbacks,
            "concurrency": self._limiter.snapshot(),
        }


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # `apertium` is a shell script piping ~10 tools
        except (ProcessLookupError, PermissionError):
            try:
                proc.kill()
            except ProcessLookupError:
                pass
    try:
        await asyncio.wait_for(proc.wait(), 2.0)
    except (TimeoutError, asyncio.CancelledError):
        pass
