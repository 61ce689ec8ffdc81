"""The Triton backend against a real `tritonserver` (KServe v2 HTTP on loopback).

The server comes from nvidia-pytriton's wheel in its own Python 3.13 virtualenv
(`scripts/install_triton.sh`, run by `make test`), serving tests/triton_dictionary_model.py: a
small dictionary-based en→es model in Python on the CPU, with its own CONFIDENCE output.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inference.translate import TranslateSettings, TranslationService, TritonTranslator
from tests.triton_process import TRITON_PYTHON, start_triton_server, stop_triton_server

pytestmark = pytest.mark.skipif(
    not TRITON_PYTHON.exists(),
    reason="the Triton virtualenv is missing: run scripts/install_triton.sh (make test does)",
)


@pytest.fixture(scope="module")
def triton_url() -> Iterator[str]:
    proc, url = start_triton_server()
    try:
        yield url
    finally:
        stop_triton_server(proc)


async def test_translates_over_kserve_v2(triton_url: str) -> None:
    translator = TritonTranslator(triton_url, "translator")
    try:
        health = await translator.health()
        results = await translator.translate_batch(["The cat is black.", "Hello zorblax world"], "en", "es")
        single = await translator.translate("Good morning", "en", "es")
    finally:
        await translator.close()
    assert health["status"] == "healthy" and health["model_ready"] is True
    assert [r.text for r in results] == ["El gato es negro.", "Hola zorblax mundo"]
    # the model's own CONFIDENCE output: share of dictionary words
    assert results[0].backend_score == 1.0 and results[1].backend_score == pytest.approx(2 / 3, abs=1e-4)
    assert single.text == "Buenos días" and single.backend == "triton"
    assert translator.requests == 2  # a batch is one inference request


async def test_service_routes_pairs_and_falls_back(triton_url: str) -> None:
    settings = TranslateSettings(
        backends="triton,apertium", triton_url=triton_url, triton_model="translator", triton_pairs="en-es,en-fr"
    )
    service = TranslationService(settings)
    try:
        en_es = await service.translate("The dog is white.", "en", "es")
        es_en = await service.translate("El gato es negro.", "es", "en")  # not Triton's: Apertium's
        # Triton claims en-fr here, but the model refuses it: a backend error, then the next one
        en_fr = await service.translate("The dog is white.", "en", "fr")
        listing = await service.languages()
    finally:
        await service.close()
    assert en_es.backend == "triton" and en_es.text == "El perro es blanco." and en_es.confidence == 1.0
    assert es_en.backend == "apertium" and "cat" in es_en.text.lower()
    assert en_fr.untranslated and en_fr.text == "The dog is white."
    triton_slot = service.stats()["backends"][0]
    assert triton_slot["failed"] == 1 and "backend_error" in triton_slot["last_error"]
    assert listing["backends"][0]["pairs"] == [{"source": "en", "target": "es"}, {"source": "en", "target": "fr"}]
