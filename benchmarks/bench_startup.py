"""Start-up cost of plugin discovery: `voice-infra plugins` against a bare baseline.

Runs, interleaved in one process, N times each:
  baseline: python -c "import pluggy, pydantic_settings"
  plugins:  voice-infra plugins   (the console script; every installed plugin discovered)
and prints the median wall time of each and their ratio. Target: ratio <= 1.5.

    .venv/bin/python benchmarks/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The installed console script, as users run it (falls back to -m outside a venv).
_SCRIPT = Path(sys.executable).with_name("voice-infra")
_CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "voice_infra.cli"]

COMMANDS = {
    "baseline": [sys.executable, "-c", "import pluggy, pydantic_settings"],
    "voice-infra plugins": [*_CLI, "plugins"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    timings: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():  # warm the page cache
        subprocess.run(command, check=True, capture_output=True)
    for _ in range(args.runs):
        for name, command in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            timings[name].append(time.perf_counter() - started)
    listing = subprocess.run(
        [*COMMANDS["voice-infra plugins"], "--json"], capture_output=True, text=True, check=True
    )
    found = json.loads(listing.stdout)["backends"]
    backends = [f"{b['kind']}:{b['names'].split(',')[0]}" for b in found]
    base = statistics.median(timings["baseline"])
    print(f"backends discovered: {', '.join(backends)}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<22} median {median * 1000:7.1f} ms   ratio {median / base:5.2f}")
    ratio = statistics.median(timings["voice-infra plugins"]) / base
    print(f"target ratio <= 1.50: {'met' if ratio <= 1.5 else 'MISSED'} ({ratio:.2f})")


if __name__ == "__main__":
    main()
