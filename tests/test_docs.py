"""The documentation keeps up with the code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

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
    """Each declared kind's registration hook, and the layers' hook, is a documented
    hookspec taking exactly ``register``, and pluggy accepts them as the project's hook
    specifications."""
    from voice_infra.kinds import declared_kinds

    expected = [kind.hook for kind in declared_kinds()] + ["register_layers"]
    assert sorted(_hookspec_names()) == sorted(expected)
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for name in _hookspec_names():
        caller = getattr(manager.hook, name)
        assert caller.spec is not None, f"{name} is not registered as a hookspec"
        assert caller.spec.argnames == ("register",)


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


def _public_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(voice_infra.__path__, "voice_infra.")]
    return [voice_infra, *(importlib.import_module(name) for name in names)]


def test_public_api_is_listed_and_documented() -> None:
    """Every name a module lists in ``__all__`` exists and has a docstring, and so do the
    public methods and properties of its classes (contract tests are named, not
    documented)."""
    undocumented = []
    for module in _public_modules():
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)  # AttributeError: listed but missing
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not inspect.getdoc(obj):
                undocumented.append(f"{module.__name__}.{name}")
            if not inspect.isclass(obj):
                continue
            for attribute, value in vars(obj).items():
                if attribute.startswith(("_", "test_")) or not (
                    inspect.isfunction(value) or isinstance(value, property | classmethod)
                ):
                    continue
                if not inspect.getdoc(getattr(obj, attribute)):
                    undocumented.append(f"{module.__name__}.{name}.{attribute}")
    assert undocumented == []


def test_the_package_exports_what_plugin_authors_need() -> None:
    for name in ("ServerRateLimiterSettings", "FailModeGuard", "PolicyState", "decide",
                 "validate_rate_limit_key", "validate_presign_ttl", "validate_content_type",
                 "user_key_segment", "validate_object_key", "hookimpl", "BackendSpec"):  # fmt: skip
        assert name in voice_infra.__all__, name


def test_documented_test_fixtures_build_isolated_settings() -> None:
    """Every Python example of the test kit's docs (and of the contract module's
    docstring) builds settings with ``Settings.from_keywords``: ``Settings()`` would read
    the developer's ``VOICE_INFRA_*`` variables and voice_infra.toml."""
    from voice_infra.testing import contracts

    examples = [
        (name, block)
        for name in ("testing.md", "writing-plugins.md")
        for block in re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)
    ]
    examples.append(("voice_infra.testing.contracts", contracts.__doc__ or ""))
    constructors = re.compile(r"(?<![\w.])(?:vi\.)?Settings(\.\w+)?\(")
    found = [(where, call[1]) for where, block in examples for call in constructors.finditer(block)]
    assert len(found) >= 4, found  # the example plugin's test, testing.md, the docstring
    assert [where for where, method in found if method != ".from_keywords"] == []


def test_every_kind_is_documented() -> None:
    """Every declared kind has its section, hook, capabilities and base class in
    docs/architecture.md, and its section in docs/configuration.md."""
    from voice_infra.kinds import declared_kinds

    architecture = (DOCS / "architecture.md").read_text()
    configuration = (DOCS / "configuration.md").read_text()
    for kind in declared_kinds():
        assert f"[{kind.section}]" in architecture and kind.hook in architecture, kind.name
        assert kind.base.split(":")[1] in architecture, kind.name
        for flag in kind.capabilities:
            assert f"`{flag}`" in architecture, (kind.name, flag)
        assert f"[{kind.section}]" in configuration, kind.name
