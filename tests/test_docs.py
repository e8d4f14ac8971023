"""The documentation keeps up with the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy

import voice_infra
from voice_infra import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _hookspec_names() -> list[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return [
        name
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, marker)
    ]


def test_every_hookspec_is_documented() -> None:
    names = _hookspec_names()
    assert names, "no hook specifications found"
    text = (DOCS / "writing-plugins.md").read_text()
    for name in names:
        assert f"### `{name}(register)`" in text, f"{name} has no section in writing-plugins.md"
        doc = inspect.cleandoc(getattr(hookspecs, name).__doc__ or "")
        assert doc and doc in text, f"the docs of {name} differ from its docstring"


def test_hookspecs_are_pluggy_specs() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    assert sorted(_hookspec_names()) == sorted(
        name for name in dir(manager.hook) if name.startswith("register_")
    )


def test_example_plugin_in_docs_matches_the_tested_files() -> None:
    text = (DOCS / "writing-plugins.md").read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)\n```", text, re.S)
    assert len(blocks) == 4
    for path, content in blocks:
        assert (ROOT / path).read_text().rstrip("\n") == content, f"{path} differs from the docs"


def test_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), f"README links to missing {target}"


def test_public_api_is_listed_and_documented() -> None:
    for name in voice_infra.__all__:
        obj = getattr(voice_infra, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"voice_infra.{name} has no docstring"
