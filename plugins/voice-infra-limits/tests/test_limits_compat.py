"""``voice_infra_limits/_limits_compat.py``: the storages ``limits`` offers, from public
names only, checked against what ``limits.storage.storage_from_string`` builds.

If a test here fails after a ``limits`` upgrade, ``limits`` changed how storage classes
declare their URI schemes: adapt ``_limits_compat.py`` before raising the ``limits`` cap
in the plugin's ``pyproject.toml``.
"""

from __future__ import annotations

import importlib

import pytest
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from voice_infra_limits._limits_compat import async_storage_classes

CHANGED = "limits changed how storages declare their schemes (see _limits_compat.py)"

#: Every scheme docs/limits.md offers.
DOCUMENTED = {
    "async+memory", "async+redis", "async+rediss", "async+redis+unix", "async+redis+cluster",
    "async+redis+sentinel", "async+valkey", "async+valkeys", "async+valkey+unix",
    "async+valkey+cluster", "async+valkey+sentinel", "async+memcached", "async+mongodb",
    "async+mongodb+srv",
}  # fmt: skip


def test_every_documented_scheme_is_found() -> None:
    missing = DOCUMENTED - set(async_storage_classes())
    assert not missing, f"{CHANGED}: no storage class declares {sorted(missing)}"


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("async+memory://", {}),
        ("async+redis://127.0.0.1:1", {"implementation": "redispy"}),
        ("async+rediss://127.0.0.1:1", {"implementation": "redispy"}),
        ("async+redis+unix:///tmp/none.sock", {"implementation": "redispy"}),
        ("async+redis+cluster://127.0.0.1:1", {"implementation": "redispy"}),
        ("async+redis+sentinel://127.0.0.1:1/service", {"implementation": "redispy"}),
    ],
)
@pytest.mark.asyncio
async def test_storage_from_string_builds_the_class_found(
    uri: str, options: dict[str, str]
) -> None:
    """For every scheme whose driver is installed here (no connection is made)."""
    scheme = uri.partition("://")[0]
    storage = storage_from_string(uri, **options)
    assert type(storage) is async_storage_classes()[scheme], CHANGED


def test_an_unknown_scheme_is_refused_by_limits_too() -> None:
    assert "async+nosuch" not in async_storage_classes()
    with pytest.raises(ConfigurationError, match="unknown storage scheme"):
        storage_from_string("async+nosuch://h")


def test_agrees_with_the_private_registry_while_there_is_one() -> None:
    """While limits keeps its private registry, the public derivation must agree with
    it exactly (so storage_from_string accepts what settings validation accepts)."""
    try:
        private = importlib.import_module("limits._storage_scheme")
    except ImportError:  # pragma: no cover - only once limits drops the module
        pytest.skip("limits has no private scheme registry any more; the other tests hold")
    registry = {k: v for k, v in private.SCHEMES.items() if k.startswith("async+")}
    assert registry == async_storage_classes(), CHANGED


def test_the_plugin_imports_no_private_module_of_limits() -> None:
    """No ``limits._x`` import anywhere in the plugin (it used limits._storage_scheme)."""
    import ast
    from pathlib import Path

    import voice_infra_limits

    found = []
    for path in Path(voice_infra_limits.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "limits" and any(p.startswith("_") for p in parts[1:]):
                    found.append(f"{path.name}:{node.lineno}: {name}")
    assert not found, found
