#!/usr/bin/env bash
# The whole test suite from nothing: creates .venv, installs the core and every plugin
# under plugins/ with their test extras, then runs ruff, mypy and pytest.
# Tests start their own servers (redis-server processes, moto's S3 server) on free
# loopback ports; redis-server, chromium and chromium-driver (the web page's browser test)
# are installed from Debian's packages when missing; the test's screenshot goes to
# test-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "installing redis-server (needed by the Redis plugin's tests)"
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "installing chromium and chromium-driver (needed by the web page's browser test)"
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
plain=(-e .)
with_extras=(-e ".[dev]")
for plugin in plugins/*/; do
    [ -f "${plugin}pyproject.toml" ] || continue
    plain+=(-e "${plugin%/}")
    with_extras+=(-e "${plugin%/}[test]")
done
# Two passes: a plugin's test extra may name another first-party plugin (voice-infra-limits
# runs its Redis tests with voice-infra-redis's RedisServer). pip looks such a name up on the
# index unless that plugin is already installed or comes earlier on the command line, so the
# plain editables go in first and the extras second.
pip_install=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip_install[@]}" "${plain[@]}"
"${pip_install[@]}" "${with_extras[@]}"

.venv/bin/ruff check .
.venv/bin/mypy

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure, not a pass" >&2
    exit 1
fi
exit "$status"
