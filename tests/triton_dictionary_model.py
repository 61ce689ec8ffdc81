"""A real Triton Inference Server serving a tiny dictionary-based en→es translator (CPU).

Run with the Triton virtualenv's Python (scripts/install_triton.sh makes `.venv-triton`), not
the project's: pytriton starts the `tritonserver` binary its wheel ships and binds the Python
function below as a model through Triton's Python backend.

    .venv-triton/bin/python tests/triton_dictionary_model.py --http-port 8010 --grpc-port 8011

The model follows the tensor contract of inference/translate/triton.py:
TEXT, SOURCE_LANG, TARGET_LANG (BYTES [batch, 1]) → TRANSLATION (BYTES), CONFIDENCE (FP32):
the share of words found in the dictionary. Prints `READY_MARKER` on stdout once it serves.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

# unique, so it is found even inside a line of tritonserver's own log (they share the pipe)
READY_MARKER = "STREAMLENS-TRITON-READY"

EN_ES = {
    "hello": "hola",
    "world": "mundo",
    "the": "el",
    "cat": "gato",
    "dog": "perro",
    "is": "es",
    "black": "negro",
    "white": "blanco",
    "good": "buenos",
    "morning": "días",
    "house": "casa",
    "big": "grande",
    "small": "pequeño",
    "and": "y",
    "i": "yo",
    "like": "me gusta",
    "red": "rojo",
    "car": "coche",
    "a": "un",
    "she": "ella",
    "he": "él",
    "drives": "conduce",
    "it": "lo",
    "every": "cada",
    "day": "día",
    "thank": "gracias",
    "you": "tú",
    "water": "agua",
    "today": "hoy",
}
_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def translate_words(text: str) -> tuple[str, float]:
    tokens = _TOKEN_RE.findall(text)
    words = [t for t in tokens if t[0].isalnum()]
    known = 0
    out = []
    for token in tokens:
        lower = token.lower()
        if lower in EN_ES:
            known += 1
            word = EN_ES[lower]
            out.append(word.capitalize() if token[0].isupper() else word)
        else:
            out.append(token)
    sentence = " ".join(out)
    sentence = re.sub(r"\s+([.,!?;:])", r"\1", sentence)
    return sentence, (known / len(words) if words else 1.0)


@batch
def infer(TEXT: np.ndarray, SOURCE_LANG: np.ndarray, TARGET_LANG: np.ndarray) -> dict[str, np.ndarray]:
    translations, scores = [], []
    for text, source, target in zip(TEXT[:, 0], SOURCE_LANG[:, 0], TARGET_LANG[:, 0]):
        pair = (source.decode().lower(), target.decode().lower())
        if pair != ("en", "es"):
            raise ValueError(f"this model only translates en->es, not {pair[0]}->{pair[1]}")
        translated, score = translate_words(text.decode("utf-8"))
        translations.append([translated.encode("utf-8")])
        scores.append([score])
    return {"TRANSLATION": np.array(translations, dtype=np.object_), "CONFIDENCE": np.array(scores, dtype=np.float32)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--model-name", default="translator")
    args = parser.parse_args()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        allow_metrics=False,
        allow_gpu_metrics=False,
        allow_cpu_metrics=False,
        exit_timeout_secs=5,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.model_name,
            infer_func=infer,
            inputs=[
                Tensor(name="TEXT", dtype=bytes, shape=(1,)),
                Tensor(name="SOURCE_LANG", dtype=bytes, shape=(1,)),
                Tensor(name="TARGET_LANG", dtype=bytes, shape=(1,)),
            ],
            outputs=[
                Tensor(name="TRANSLATION", dtype=bytes, shape=(1,)),
                Tensor(name="CONFIDENCE", dtype=np.float32, shape=(1,)),
            ],
            config=ModelConfig(max_batch_size=64),
            strict=True,
        )
        triton.run()  # starts the server and loads the model, without blocking
        print(READY_MARKER, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            signal.pause()
        except (KeyboardInterrupt, SystemExit):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
