"""Shared fixtures of the core's tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from voice_infra.plugins import reset_registry

EXAMPLES = Path(__file__).parent / "example_plugins"
# The example distributions are installed into directories of their own by the
# `example_sites` fixture and put on sys.path only by the tests that want them.
collect_ignore = ["example_plugins"]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's voice_infra.toml, VOICE_INFRA_* variables or data."""
    for name in list(os.environ):
        if name.startswith("VOICE_INFRA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture(scope="session")
def example_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each example distribution pip-installed (really) into a directory of its own."""
    root = tmp_path_factory.mktemp("example-sites")

    def install(project: Path) -> tuple[str, Path]:
        target = root / project.name
        # Built from a copy: setuptools leaves build/ and *.egg-info in the directory it
        # builds, and a stale build/lib would be installed with the next run's files.
        source = root / "src" / project.name
        shutil.copytree(project, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--disable-pip-version-check", "--target", str(target), str(source)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return project.name, target

    projects = sorted(p for p in EXAMPLES.iterdir() if (p / "pyproject.toml").is_file())
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(install, projects))


@pytest.fixture
def layer_registry(voice_plugin_registry: Any) -> Any:
    """The test kit's isolated registry (built-in backends and layers) plus the test plugin
    of tests/layer_fakes.py: ``flaky`` backends that fail on demand, the ``journal`` layer."""
    import layer_fakes

    voice_plugin_registry.register(layer_fakes.Plugin(), name="layer-fakes")
    return voice_plugin_registry
