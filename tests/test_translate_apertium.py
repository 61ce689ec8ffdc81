"""Apertium translation with the real `apertium` + `apertium-eng-spa` Debian packages."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from httpapi.errors import status_of
from inference.translate import (
    ApertiumTranslator,
    TranslateSettings,
    TranslationError,
    TranslationService,
    UnsupportedLanguagePairError,
)
from inference.translate.apertium import strip_unknown_marks
from tests.conftest import wait_until


def _has_eng_spa() -> bool:
    if shutil.which("apertium") is None:
        return False
    listed = subprocess.run(["apertium", "-l"], capture_output=True, text=True, timeout=30).stdout
    return "eng-spa" in listed.split()


pytestmark = pytest.mark.skipif(not _has_eng_spa(), reason="apertium with the eng-spa pair is not installed")


@pytest.fixture
async def apertium():
    translator = ApertiumTranslator(timeout=30.0)
    yield translator
    await translator.close()


async def test_translates_known_sentences(apertium: ApertiumTranslator) -> None:
    hello = await apertium.translate("Hello world", "en", "es")
    cat = await apertium.translate("The cat is black", "en", "es")
    assert "Hola" in hello.text
    assert "gato" in cat.text and "negro" in cat.text
    assert (cat.source_language, cat.target_language) == ("en", "es")
    assert cat.model_info == "apertium:eng-spa"
    assert cat.usage is None and cat.cached is False


async def test_reverse_pair_and_regional_variant(apertium: ApertiumTranslator) -> None:
    back = await apertium.translate("El gato es negro", "es", "en")
    assert "cat" in back.text.lower() and "black" in back.text.lower()
    assert back.model_info == "apertium:spa-eng"
    if "spa-eng_US" in await apertium.available_pairs():
        us = await apertium.translate("El gato es negro", "es", "en-US")
        assert us.model_info == "apertium:spa-eng_US"
    three_letter = await apertium.translate("Hello world", "eng", "spa")
    assert "Hola" in three_letter.text


async def test_output_is_one_clean_line_without_unknown_marks(apertium: ApertiumTranslator) -> None:
    result = await apertium.translate("Hello\n wrold xyzzy.   I have a dog.", "en", "es")
    assert "*" not in result.text and "\n" not in result.text
    assert "xyzzy" in result.text  # unknown words pass through unmarked
    assert result.text == result.text.strip() and "  " not in result.text
    assert "perro" in result.text


def test_strip_unknown_marks_keeps_marks_the_source_had() -> None:
    assert strip_unknown_marks("Hola *wrold #ir @casa", "hello wrold") == "Hola wrold ir casa"
    assert strip_unknown_marks("Escribe a @john sobre #tema", "Write to @john about #tema") == (
        "Escribe a @john sobre #tema"
    )
    assert strip_unknown_marks("a@b.com", "a@b.com") == "a@b.com"


async def test_batch_is_one_subprocess_and_matches_single_translations(apertium: ApertiumTranslator) -> None:
    texts = ["Hello world", "The cat is black.", "", "Good morning!", "I have a dog", "Hello world"]
    await apertium.available_pairs()  # discovery is a call of its own; do it before counting
    calls_before = apertium.calls
    batch = await apertium.translate_batch(texts, "en", "es")
    assert apertium.calls == calls_before + 1  # every text went through one apertium run
    assert apertium.batch_split_fallbacks == 0
    assert len(batch) == len(texts)
    assert batch[2].text == ""
    singles = [(await apertium.translate(t, "en", "es")).text for t in texts]
    assert [r.text for r in batch] == singles
    assert "Hola" in batch[0].text and "gato" in batch[1].text and "perro" in batch[4].text


async def test_unsupported_pair_lists_the_available_pairs(apertium: ApertiumTranslator) -> None:
    with pytest.raises(UnsupportedLanguagePairError) as caught:
        await apertium.translate("Bonjour", "fr", "de")
    assert status_of(caught.value) == 400
    assert caught.value.code == "unsupported_language_pair"
    assert "eng-spa" in str(caught.value) and "fr->de" in str(caught.value)
    with pytest.raises(TranslationError) as bad_code:
        await apertium.translate("Hello", "english!", "es")
    assert bad_code.value.code == "invalid_language"


async def test_health_reports_pairs(apertium: ApertiumTranslator) -> None:
    health = await apertium.health()
    assert health["status"] == "healthy"
    assert "eng-spa" in health["pairs"]


async def test_missing_binary_is_an_error_value_not_a_crash() -> None:
    translator = ApertiumTranslator(binary="apertium-not-installed-here")
    health = await translator.health()
    assert health["status"] == "unhealthy"
    with pytest.raises(TranslationError) as caught:
        await translator.translate("Hello", "en", "es")
    assert caught.value.code == "backend_unavailable" and status_of(caught.value) == 503
    assert "not found" in str(caught.value)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def test_timeout_kills_the_whole_pipeline(tmp_path: Path) -> None:
    # A stand-in `apertium` script (a real subprocess) that lists a pair and then hangs in a
    # child process, as a stuck pipeline stage would.
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "apertium-hangs"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "-l" ]; then echo "  eng-spa"; exit 0; fi\nsleep 30 & echo $! > {pidfile}\nwait\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    translator = ApertiumTranslator(binary=str(script), timeout=0.5)
    with pytest.raises(TranslationError) as caught:
        await translator.translate("Hello", "en", "es")
    assert caught.value.code == "backend_timeout" and status_of(caught.value) == 504
    child = int(pidfile.read_text())
    await wait_until(lambda: not _pid_alive(child), timeout=5)  # the kernel reaps it
    assert not _pid_alive(child), "the hung pipeline child outlived the timeout"


async def test_service_with_apertium_caches_and_never_raises() -> None:
    service = TranslationService(TranslateSettings(backend="apertium"))
    try:
        text, error = await service.translate_for_captions("The cat is black", "en", "es")
        assert error is None and text is not None and "gato" in text
        calls = service.chain.slots[0].translator.calls  # type: ignore[attr-defined]
        again = await service.translate("The  cat is black", "en", "es")  # same text, other spacing
        assert again.cached is True and again.text == text
        assert service.chain.slots[0].translator.calls == calls  # type: ignore[attr-defined]
        assert service.stats()["cache_hits"] == 1

        text, error = await service.translate_for_captions("Bonjour", "fr", "de")
        assert text is None and error is not None and error.startswith("unsupported_language_pair")
        assert service.stats()["errors_by_code"] == {"unsupported_language_pair": 1}
        health = await service.health()
        assert health["status"] == "healthy" and health["backend"] == "apertium"
        assert health["breaker"]["state"] == "closed"  # the unsupported pair did not count against it
    finally:
        await service.close()


async def test_unknown_words_lower_the_confidence() -> None:
    service = TranslationService(TranslateSettings(backend="apertium"))
    try:
        known = await service.translate("The cat is black.", "en", "es")
        unknown = await service.translate("The zorbleflax is black.", "en", "es")
        caption = await service.translate_for_captions("The zorbleflax is black.", "en", "es")
    finally:
        await service.close()
    assert known.backend == "apertium" and known.quality_flags == () and known.confidence == 1.0
    # Apertium marked one of four words unknown (`*zorbleflax`); the mark is gone from the text
    assert "*" not in unknown.text and "zorbleflax" in unknown.text
    assert "unknown_words" in unknown.quality_flags
    assert unknown.confidence == 0.75
    assert caption.confidence == 0.75 and "unknown_words" in caption.quality_flags


async def test_language_support_lists_installed_pairs(apertium: ApertiumTranslator) -> None:
    support = await apertium.language_support()
    assert ("en", "es") in support.pairs and ("es", "en") in support.pairs and ("es", "en-US") in support.pairs
    assert support.any_pair is False
