"""`make bench`: run every benchmark, one after the other, each in its own process.

    .venv/bin/python -m bench [--quick] [--only pipeline,webrtc,captions,vision,analysis,security]

Every benchmark prints its own tables (with its goals beside the figures); none passes or fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BENCHES = {
    "pipeline": (["-m", "bench.bench_pipeline"], ["--quick"]),
    "webrtc": (["bench/bench_webrtc.py"], ["--seconds", "8"]),
    "captions": (["bench/bench_captions.py"], ["--streams", "1,4", "--seconds", "15"]),
    "vision": (["bench/bench_vision.py"], ["--seconds", "2"]),
    "translate": (["bench/bench_translate.py"], ["--requests", "10", "--captions", "150"]),
    "analysis": (["bench/bench_analysis.py"], ["--minutes", "2", "--live-seconds", "4"]),
    "security": (["bench/bench_security.py"], ["--seconds", "20"]),
    "outputs": (["-m", "bench.bench_outputs"], ["--quick"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs where a benchmark offers them")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    args = parser.parse_args()
    failures = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        command, quick_args = BENCHES[name]
        argv = [sys.executable, *command, *(quick_args if args.quick else [])]
        print(f"\n===== {name}: {' '.join(argv[1:])}", flush=True)
        start = time.monotonic()
        result = subprocess.run(argv, cwd=ROOT)
        print(f"===== {name} finished in {time.monotonic() - start:.0f} s (exit {result.returncode})", flush=True)
        if result.returncode != 0:
            failures.append(name)
    if failures:
        print(f"benchmarks that could not run: {', '.join(failures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
