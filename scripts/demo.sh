#!/usr/bin/env bash
# The main job on the embedded default (fs storage + memory rate limiter), from nothing:
# creates .venv, installs the core, runs `voice-infra demo`. No server needed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/voice-infra demo "$@"
