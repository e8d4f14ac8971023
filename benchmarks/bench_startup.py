"""Start-up cost of plugin discovery: `voice-infra plugins` against a bare baseline.

Runs, interleaved in one process, N times each:
  baseline: python -c "import pluggy, pydantic_settings"
  plugins:  voice-infra plugins   (the console script; every installed plugin discovered)
and prints, for each, the median wall time from start to exit and the median CPU time
the process used (user + system, from the child's rusage), and both ratios against the
baseline. Target (issue 2, "process time"): ratio <= 1.5, checked on both.

    .venv/bin/python benchmarks/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
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
TARGET = 1.5


def run_once(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``command``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command} exited with {process.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    wall: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpu: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():  # warm the page cache
        run_once(command)
    for _ in range(args.runs):
        for name, command in COMMANDS.items():
            seconds, cpu_seconds = run_once(command)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    listing = subprocess.run(
        [*COMMANDS["voice-infra plugins"], "--json"], capture_output=True, text=True, check=True
    )
    found = json.loads(listing.stdout)["backends"]
    backends = [f"{b['kind']}:{b['names'].split(',')[0]}" for b in found]
    print(f"backends discovered: {', '.join(backends)}")
    print(f"{args.runs} runs each, interleaved; medians")
    ratios = {}
    for label, table in (("wall", wall), ("cpu", cpu)):
        base = statistics.median(table["baseline"])
        for name, values in table.items():
            median = statistics.median(values)
            print(f"{label:<4} {name:<22} {median * 1000:7.1f} ms   ratio {median / base:5.2f}")
        ratios[label] = statistics.median(table["voice-infra plugins"]) / base
    met = all(ratio <= TARGET for ratio in ratios.values())
    shown = ", ".join(f"{label} {ratio:.2f}" for label, ratio in ratios.items())
    print(f"target ratio <= {TARGET:.2f}: {'met' if met else 'MISSED'} ({shown})")


if __name__ == "__main__":
    main()
