"""Plugin discovery and backend selection.

Every distribution's entry points in the ``voice_infra`` group are loaded (the core's
own built-in backends included). Each plugin is loaded and asked for its backends on
its own, so one broken plugin is recorded as a :class:`PluginFailure` instead of
taking the application down; it raises only when its backend is selected, or at once
in strict mode (``VOICE_INFRA_STRICT_PLUGINS=1``). ``VOICE_INFRA_PLUGINS`` limits which
distributions load: a comma-separated list of names, the empty string meaning the
built-ins only.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
import re
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pluggy
from pydantic import BaseModel, ValidationError

from voice_infra import hookspecs
from voice_infra.errors import (
    BackendDependencyError,
    BackendNotFoundError,
    ConfigError,
    DuplicateBackendError,
    PluginLoadError,
    VoiceServiceError,
)
from voice_infra.hookspecs import hookspec
from voice_infra.kinds import (
    KindSpec,
    check_capabilities,
    declared_kinds,
    get_kind,
    kind_declared,
    public_name,
)
from voice_infra.layers import Layer, LayerConfig, LayerSettings, LayerSpec
from voice_infra.masking import hide_in_logs, mask_secret, redact, secret_fragments

__all__ = [
    "BackendKind",
    "BackendSpec",
    "LayerSpec",
    "PluginFailure",
    "PluginRegistry",
    "get_registry",
    "reset_registry",
]

#: A backend kind's name (``"storage"``, ``"rate_limiter"``...): see :mod:`voice_infra.kinds`.
BackendKind = str
ENTRY_POINT_GROUP = "voice_infra"
CORE_DISTRIBUTION = "voice-infra"


def _add_hookspec(manager: pluggy.PluginManager, kind: KindSpec) -> None:
    """Give ``manager`` the hook of a kind declared outside :mod:`voice_infra.hookspecs`
    (the built-in kinds' hooks, with their documentation, live there)."""
    if hasattr(manager.hook, kind.hook):
        return

    def register_backends(register: Callable[[BackendSpec], None]) -> None:
        """Declare backends of this kind by calling ``register(BackendSpec(...))``."""

    register_backends.__name__ = kind.hook
    namespace = type(f"{kind.name}_hookspecs", (), {kind.hook: hookspec(register_backends)})
    manager.add_hookspecs(namespace)


_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass
class BackendSpec:
    """A backend declared by a plugin (see :mod:`voice_infra.hookspecs`).

    ``factory`` and ``settings_model`` may be import strings (``"pkg.mod:Name"``) so
    that discovering the backend imports nothing heavy.
    """

    name: str
    factory: str | Callable[[Any], Any]
    settings_model: str | type[BaseModel]
    capabilities: Iterable[str] = ()
    aliases: Iterable[str] = ()
    description: str = ""
    install_hint: str | None = None
    #: Filled in by discovery: who provides this backend.
    distribution: str = field(default="(registered directly)", compare=False)
    version: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self.capabilities = frozenset(self.capabilities)
        self.aliases = tuple(self.aliases)
        for name in (self.name, *self.aliases):
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ValueError(
                    f"backend name {name!r} is invalid: use lower-case letters, digits, '_' "
                    "and '-', starting with a letter"
                )

    @property
    def names(self) -> tuple[str, ...]:
        """The backend's name followed by its aliases."""
        return (self.name, *cast(tuple[str, ...], self.aliases))

    def load_settings_model(self) -> type[BaseModel]:
        """The settings model, imported if given as an import string."""
        model = self.settings_model
        return _import_object(model, self) if isinstance(model, str) else model

    def load_factory(self) -> Callable[[Any], Any]:
        """The factory, imported if given as an import string."""
        factory = self.factory
        return _import_object(factory, self) if isinstance(factory, str) else factory


def _import_object(reference: str, spec: BackendSpec | LayerSpec) -> Any:
    module_name, _, attribute = reference.partition(":")
    what = "layer" if isinstance(spec, LayerSpec) else "backend"
    origin = f"{what} {spec.name!r} (from {spec.distribution})"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        names_itself = module_name == missing or module_name.startswith(f"{missing}.")
        if names_itself and spec.install_hint is None:
            # The module the spec names is absent and the plugin names no package that
            # provides it: most likely a wrong import string or a broken install.
            raise PluginLoadError(
                f"{origin} names the module {module_name!r}, which cannot be imported; "
                "reinstall the plugin, or report this to its author"
            ) from exc
        hint = spec.install_hint or f"pip install {missing}"
        raise BackendDependencyError(
            f"{origin} needs the Python package providing {missing!r}, which is not "
            f"installed; install it with: {hint}"
        ) from exc
    except Exception as exc:  # an error inside the plugin's module
        raise PluginLoadError(
            f"{origin} failed to import {module_name!r}: {type(exc).__name__}: {exc}; "
            "report this to the plugin's author"
        ) from exc
    try:
        obj = module
        for part in filter(None, attribute.split(".")):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise PluginLoadError(
            f"{origin} names {reference!r}, which does not exist; report this to the "
            "plugin's author"
        ) from exc
    return obj


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, or whose hook raised."""

    distribution: str
    version: str
    entry_point: str
    error: str
    exception: BaseException = field(repr=False, compare=False)

    def describe(self) -> str:
        """One line for reports: distribution, version, entry point and error."""
        name = f"{self.distribution} {self.version}".strip()
        return f"{name} ({self.entry_point}): {self.error}"


def _strict_from_env() -> bool:
    return os.environ.get("VOICE_INFRA_STRICT_PLUGINS", "").lower() in ("1", "true", "yes")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class PluginRegistry:
    """A pluggy plugin manager plus the backends its plugins declared.

    ``PluginRegistry()`` starts empty; :meth:`load_entry_points` discovers installed
    plugins (what :func:`get_registry` does for the application). Tests build their own
    registry and :meth:`register` plugin objects on it directly.
    """

    def __init__(self, *, strict: bool | None = None) -> None:
        self.strict = _strict_from_env() if strict is None else strict
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        #: Per kind name: backend name (and alias) -> spec. Kinds declared after this
        #: registry was made get their table (and hook) on first use.
        self.backends: dict[BackendKind, dict[str, BackendSpec]] = _Tables()
        self.failures: list[PluginFailure] = []
        #: Distributions with ``voice_infra`` entry points that ``VOICE_INFRA_PLUGINS``
        #: (or ``allowed``) left out.
        self.skipped: list[str] = []
        self.conflicts: dict[tuple[BackendKind, str], list[BackendSpec]] = {}
        #: Layer name -> spec (hook ``register_layers``), and names two plugins declare.
        self.layers: dict[str, LayerSpec] = {}
        self.layer_conflicts: dict[str, list[LayerSpec]] = {}

    # -- discovery -------------------------------------------------------------------

    def load_entry_points(self, allowed: Iterable[str] | None = None) -> None:
        """Load every plugin in the ``voice_infra`` entry-point group.

        ``allowed`` (default: ``VOICE_INFRA_PLUGINS`` when set) names the distributions
        to load besides the core's built-ins.
        """
        if allowed is None and "VOICE_INFRA_PLUGINS" in os.environ:
            allowed = os.environ["VOICE_INFRA_PLUGINS"].split(",")
        wanted = None if allowed is None else {_normalise(n.strip()) for n in allowed if n.strip()}
        seen: set[str] = set()
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            dist_name = dist.metadata["Name"] if dist is not None else "(unknown)"
            version = dist.version if dist is not None else ""
            seen.add(_normalise(dist_name))
            if wanted is not None and _normalise(dist_name) not in wanted | {CORE_DISTRIBUTION}:
                if dist_name not in self.skipped:
                    self.skipped.append(dist_name)
                continue
            plugin_name = f"{dist_name}:{entry_point.name}"
            if self.manager.has_plugin(plugin_name):
                continue  # the same distribution seen twice on sys.path
            try:
                plugin = entry_point.load()
            except Exception as exc:
                self._record_failure(dist_name, version, entry_point.name, exc)
                continue
            self.register(
                plugin, name=plugin_name, distribution=dist_name, version=version,
                entry_point=entry_point.name,
            )  # fmt: skip
        for unknown in sorted((wanted or set()) - seen):
            logger.warning(
                "VOICE_INFRA_PLUGINS names %r, but no installed distribution of that name "
                "has voice_infra entry points (installed: %s)",
                unknown, ", ".join(sorted(seen)),
            )  # fmt: skip

    def register(
        self,
        plugin: object,
        *,
        name: str | None = None,
        distribution: str = "(registered directly)",
        version: str = "",
        entry_point: str = "",
    ) -> None:
        """Register a plugin object and collect the backends its hooks declare.

        A failing plugin is recorded in :attr:`failures` (raised in strict mode);
        a duplicate backend name raises :class:`DuplicateBackendError` in strict mode
        and is otherwise recorded, raising when that name is selected.
        """
        label = entry_point or name or repr(plugin)
        kinds = declared_kinds()
        for kind in kinds:  # before registering: check_pending must know every kind's hook
            _add_hookspec(self.manager, kind)
        try:
            registered_name = self.manager.register(plugin, name=name)
            self.manager.check_pending()
        except Exception as exc:
            if self.manager.is_registered(plugin):
                self.manager.unregister(plugin)
            self._record_failure(distribution, version, label, exc)
            return
        for kind in kinds:
            for impl in getattr(self.manager.hook, kind.hook).get_hookimpls():
                if impl.plugin_name != registered_name:
                    continue
                declared: list[BackendSpec] = []

                def collect(
                    spec: BackendSpec,
                    _declared: list[BackendSpec] = declared,
                    _kind: KindSpec = kind,
                ) -> None:
                    if not isinstance(spec, BackendSpec):
                        raise TypeError(f"register() takes a BackendSpec, got {spec!r}")
                    check_capabilities(_kind, spec.capabilities, f"backend {spec.name!r}")
                    _declared.append(spec)

                try:
                    impl.function(register=collect)
                except Exception as exc:
                    self._record_failure(distribution, version, label, exc)
                    continue
                for spec in declared:
                    spec.distribution, spec.version = distribution, version
                    self._add(kind.name, spec)
        if registered_name is not None:
            self._collect_layers(registered_name, distribution, version, label)

    def _collect_layers(
        self, registered_name: str, distribution: str, version: str, label: str
    ) -> None:
        for impl in self.manager.hook.register_layers.get_hookimpls():
            if impl.plugin_name != registered_name:
                continue
            declared: list[LayerSpec] = []

            def collect(spec: LayerSpec, _declared: list[LayerSpec] = declared) -> None:
                if not isinstance(spec, LayerSpec):
                    raise TypeError(f"register() takes a LayerSpec, got {spec!r}")
                _declared.append(spec)

            try:
                impl.function(register=collect)
            except Exception as exc:
                self._record_failure(distribution, version, label, exc)
                continue
            for spec in declared:
                spec.distribution, spec.version = distribution, version
                self._add_layer(spec)

    def _add_layer(self, spec: LayerSpec) -> None:
        existing = self.layers.get(spec.name) or next(
            iter(self.layer_conflicts.get(spec.name, [])), None
        )
        if existing is None:
            self.layers[spec.name] = spec
            return
        error = DuplicateBackendError(
            f"layer {spec.name!r} is declared by both {existing.distribution} and "
            f"{spec.distribution}; uninstall one of them or limit plugins with "
            "VOICE_INFRA_PLUGINS"
        )
        if self.strict:
            raise error
        self.layers.pop(spec.name, None)
        self.layer_conflicts.setdefault(spec.name, [existing]).append(spec)

    def _record_failure(
        self, distribution: str, version: str, entry_point: str, exc: BaseException
    ) -> None:
        failure = PluginFailure(
            distribution, version, entry_point, f"{type(exc).__name__}: {exc}", exc
        )
        if self.strict:
            raise PluginLoadError(f"plugin failed to load: {failure.describe()}") from exc
        logger.warning("voice-infra plugin failed to load: %s", failure.describe())
        self.failures.append(failure)

    def _add(self, kind: BackendKind, spec: BackendSpec) -> None:
        table = self.backends[kind]
        for name in spec.names:
            existing = table.get(name) or next(iter(self.conflicts.get((kind, name), [])), None)
            if existing is None:
                table[name] = spec
                continue
            error = DuplicateBackendError(
                f"{kind.replace('_', '-')} backend {name!r} is declared by both "
                f"{existing.distribution} and {spec.distribution}; uninstall one of them "
                "or limit plugins with VOICE_INFRA_PLUGINS"
            )
            if self.strict:
                raise error
            table.pop(name, None)
            self.conflicts.setdefault((kind, name), [existing]).append(spec)

    # -- selection -------------------------------------------------------------------

    def get(self, kind: BackendKind, name: str) -> BackendSpec:
        """The backend ``name`` of ``kind``, or a helpful error."""
        table = self.backends[kind]
        if name in table:
            return table[name]
        section = get_kind(kind).section
        if (kind, name) in self.conflicts:
            specs = self.conflicts[(kind, name)]
            raise DuplicateBackendError(
                f"[{section}] backend {name!r} is declared by "
                + " and ".join(f"{s.distribution} {s.version}".strip() for s in specs)
                + "; uninstall one of them or limit plugins with VOICE_INFRA_PLUGINS"
            )
        installed = sorted(table)
        known = get_kind(kind).known_distributions
        message = f"[{section}] backend {name!r} is not installed"
        if name in known:
            message += f"; install it with: pip install {known[name]}."
        else:
            # Cutoff 0.5, not difflib's 0.6: two-letter names one keystroke off ('s4'
            # for 's3') score 0.5.
            close = difflib.get_close_matches(name, sorted({*installed, *known}), n=1, cutoff=0.5)
            if close and close[0] not in table:
                message += (
                    f"; did you mean {close[0]!r}? It is not installed either; install it "
                    f"with: pip install {known[close[0]]}."
                )
            else:
                message += f"; did you mean {close[0]!r}?" if close else "."
        message += f" Installed {get_kind(kind).label} backends: {', '.join(installed) or 'none'}."
        related = [f for f in self.failures if name in f.distribution or name in f.entry_point]
        if related:
            raise PluginLoadError(
                message
                + " A plugin that may provide it failed to load: "
                + "; ".join(f.describe() for f in related)
            ) from related[0].exception
        if self.failures:
            message += " Plugins that failed to load: " + "; ".join(
                f.describe() for f in self.failures
            )
        if self.skipped:
            message += (
                " VOICE_INFRA_PLUGINS left out these installed plugins: "
                f"{', '.join(self.skipped)}; add the one you need to it, or unset it."
            )
        raise BackendNotFoundError(message)

    def build(self, kind: BackendKind, name: str, options: Mapping[str, Any]) -> Any:
        """Validate ``options`` with the backend's settings model and build the backend."""
        spec = self.get(kind, name)
        settings = validate_backend_settings(spec, kind, options)
        # Client libraries may log the credentials they send (botocore at DEBUG).
        hide_in_logs(settings_secrets(type(settings), options))
        factory = spec.load_factory()
        clean: BaseException | None = None
        try:
            built = factory(settings)
        except Exception as exc:
            # The factory's error, or one of its causes, may quote an option (a URL...).
            secrets = settings_secrets(type(settings), options)
            if isinstance(exc, VoiceServiceError):
                if not _leaks(exc, secrets):
                    raise  # the factory's own, already explained error
                error: BaseException = exc
            else:
                error = PluginLoadError(
                    f"backend {spec.name!r} from {spec.distribution} failed to build: "
                    f"{type(exc).__name__}: {exc}; report this to the plugin's author"
                )
                if not _leaks(exc, secrets) and not _leaks(error, secrets):
                    raise error from exc
            clean = _redacted(error, secrets)
        if clean is not None:
            raise clean  # outside the except block: without the chain that holds a secret
        expected = get_kind(kind).base_class()
        if not isinstance(built, expected):
            raise PluginLoadError(
                f"backend {spec.name!r} from {spec.distribution} built {type(built).__name__}, "
                f"not a {expected.__name__}; report this to the plugin's author"
            )
        backend: Any = built
        check_capabilities(kind, type(backend)._declared_capabilities or (), type(built).__name__)
        backend.backend_name = spec.name
        backend.capabilities = backend.adjust_capabilities(frozenset(spec.capabilities))
        return backend

    def get_layer(self, kind: BackendKind, name: str) -> LayerSpec:
        """The layer ``name`` for a section of ``kind``, or a helpful error (unknown name,
        declared twice, or a layer that does not apply to the kind)."""
        spec = get_kind(kind)
        where = f"[{spec.section}] layers"
        if name in self.layer_conflicts:
            raise DuplicateBackendError(
                f"{where}: layer {name!r} is declared by "
                + " and ".join(f"{s.distribution} {s.version}".strip()
                               for s in self.layer_conflicts[name])
                + "; uninstall one of them or limit plugins with VOICE_INFRA_PLUGINS"
            )  # fmt: skip
        layer = self.layers.get(name)
        if layer is None:
            installed = sorted(n for n, s in self.layers.items() if s.applies_to(spec.name))
            close = difflib.get_close_matches(name, installed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise BackendNotFoundError(
                f"{where}: no layer {name!r} is installed{hint} Layers for {spec.label} "
                f"backends: {', '.join(installed) or 'none'}."
            )
        if not layer.applies_to(spec.name):
            kinds = ", ".join(get_kind(k).label if kind_declared(k) else k
                              for k in tuple(layer.kinds))  # fmt: skip
            raise ConfigError(
                f"{where}: layer {name!r} does not apply to {spec.label} backends (it "
                f"applies to: {kinds}); remove it from [{spec.section}]"
            )
        if spec.layered is None:
            raise ConfigError(
                f"{where}: {spec.label} backends take no layers; remove 'layers' from "
                f"[{spec.section}]"
            )
        return layer

    def build_layers(self, kind: BackendKind, entries: Iterable[LayerConfig]) -> list[Layer]:
        """Validate each entry of a section's ``layers`` (outermost first) and build its
        layer; raises before anything is built when one is wrong."""
        specs = [(self.get_layer(kind, entry.name), entry) for entry in entries]
        settings = [validate_layer_settings(spec, kind, entry.options()) for spec, entry in specs]
        layers: list[Layer] = []
        for (spec, _), options in zip(specs, settings, strict=True):
            layer = spec.load_factory()(options)
            if not isinstance(layer, Layer):
                raise PluginLoadError(
                    f"layer {spec.name!r} from {spec.distribution} built "
                    f"{type(layer).__name__}, not a voice_infra.layers.Layer; report this to "
                    "the plugin's author"
                )
            layer.name = spec.name
            layers.append(layer)
        return layers

    def iter_backends(self) -> Iterable[tuple[BackendKind, BackendSpec]]:
        """Every backend once (aliases folded), by kind then name."""
        for kind in (k.name for k in declared_kinds()):
            seen: set[int] = set()
            for name in sorted(self.backends[kind]):
                spec = self.backends[kind][name]
                if id(spec) not in seen:
                    seen.add(id(spec))
                    yield kind, spec


def validate_backend_settings(
    spec: BackendSpec, kind: BackendKind, options: Mapping[str, Any]
) -> BaseModel:
    """Validate a config section's options with the backend's own settings model."""
    model = spec.load_settings_model()
    expected = get_kind(kind).settings_base_class()
    if not (isinstance(model, type) and issubclass(model, expected)):
        raise PluginLoadError(
            f"backend {spec.name!r} from {spec.distribution} declares the settings model "
            f"{model!r}, which is not a subclass of {public_name(get_kind(kind).settings_base)}; "
            "report this to the plugin's author"
        )
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        error = config_error(
            exc, section=get_kind(kind).section, backend=spec.name, model=model,
            secrets=settings_secrets(model, options),
        )  # fmt: skip
    raise error  # outside the except block: the ValidationError must not be the context


def validate_layer_settings(
    spec: LayerSpec, kind: BackendKind, options: Mapping[str, Any]
) -> LayerSettings:
    """Validate a ``layers`` entry's options with the layer's own settings model."""
    model = spec.load_settings_model()
    if not (isinstance(model, type) and issubclass(model, LayerSettings)):
        raise PluginLoadError(
            f"layer {spec.name!r} from {spec.distribution} declares the settings model "
            f"{model!r}, which is not a subclass of voice_infra.layers.LayerSettings; "
            "report this to the plugin's author"
        )
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        error = config_error(
            exc, section=get_kind(kind).section, backend=None, model=model, layer=spec.name
        )
    raise error  # outside the except block, as for backends


def settings_secrets(model: type[BaseModel], options: Mapping[str, Any]) -> set[str]:
    """The secret texts in a section's ``options`` (for :func:`~voice_infra.masking.redact`):
    what the masking rule masks, plus the whole value of every option the backend's
    settings model declares secret (``SecretStr``), whatever its name."""
    secrets = secret_fragments("", options)
    for name, value in options.items():
        if _is_secret(model, name):
            secrets |= secret_fragments("password", value)
    return secrets


def config_error(
    exc: ValidationError,
    *,
    section: str,
    backend: str | None,
    model: type[BaseModel],
    secrets: Iterable[str] = (),
    layer: str | None = None,
) -> ConfigError:
    """A :class:`ConfigError` for pydantic's ``exc`` that carries no rejected secret: the
    readable message of :func:`format_validation_error` and pydantic's findings without
    their inputs, with ``secrets`` (and anything the masking rule masks in the inputs)
    redacted from both. Raise it outside the ``except`` block, so that ``exc`` is not its
    ``__context__``."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    secrets = set(secrets) | secret_fragments("", [error.get("input") for error in exc.errors()])
    message = redact(
        format_validation_error(exc, section=section, backend=backend, model=model, layer=layer),
        secrets,
    )
    kept = [
        {"loc": error["loc"], "msg": redact(error["msg"], secrets), "type": error["type"]}
        for error in errors
    ]
    return ConfigError(message, errors=kept)


def format_validation_error(
    exc: ValidationError,
    *,
    section: str,
    backend: str | None,
    model: type[BaseModel],
    layer: str | None = None,
) -> str:
    """pydantic's errors as readable lines naming the section, backend (or layer), key and
    a fix."""
    where = f"[{section}]" + (f" (backend {backend!r})" if backend else "")
    if layer is not None:
        where = f"[{section}] layers (layer {layer!r})"
    lines = [f"invalid configuration in {where}:"]
    fields = sorted(model.model_fields)
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(section)"
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(error["loc"][0]), fields, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            owner = f"for layer {layer!r}" if layer else f"for {backend!r}" if backend else "here"
            lines.append(f"  {key}: unknown key; {hint}valid keys {owner}: {', '.join(fields)}")
        else:
            # A validator's message may quote part of the value (a URL's path or port,
            # cut out of a password that broke the URL apart): never a secret of it.
            name = str(error["loc"][-1]) if error["loc"] else ""
            fragments = secret_fragments(name, error.get("input"))
            if _is_secret(model, str(error["loc"][0]) if error["loc"] else ""):
                fragments |= secret_fragments("password", error.get("input"))
            message = redact(error["msg"].removeprefix("Value error, "), fragments)
            if error["type"] == "missing":
                lines.append(f"  {key}: required key is missing")
            elif _is_secret(model, str(error["loc"][0]) if error["loc"] else ""):
                lines.append(f"  {key}: {message}")  # never echo a secret's value
            else:
                shown = mask_secret(name, error.get("input"))
                lines.append(f"  {key}: {message} (got {shown!r})")
    return "\n".join(lines)


def _leaks(error: BaseException, secrets: set[str]) -> bool:
    """Whether ``error``'s formatted traceback (causes and contexts included) shows one of
    ``secrets``."""
    chain = "".join(traceback.format_exception(error))
    return any(len(secret) >= 4 and secret in chain for secret in secrets)


def _redacted(error: BaseException, secrets: set[str]) -> BaseException:
    """A new error of ``error``'s class whose message is redacted, without its chain."""
    try:
        return type(error)(redact(str(error), secrets))
    except Exception:  # an error class that takes other arguments
        return PluginLoadError(redact(f"{type(error).__name__}: {error}", secrets))


def _is_secret(model: type[BaseModel], name: str) -> bool:
    info = model.model_fields.get(name)
    return info is not None and "Secret" in repr(info.annotation)


_registry: PluginRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> PluginRegistry:
    """The application's registry, discovered from entry points on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            registry = PluginRegistry()
            registry.load_entry_points()
            _registry = registry
        return _registry


def reset_registry() -> None:
    """Forget the discovered plugins (the next :func:`get_registry` discovers again)."""
    global _registry
    with _registry_lock:
        _registry = None


class _Tables(dict[str, dict[str, "BackendSpec"]]):
    """Backend tables per kind name, made on first use (for kinds declared later)."""

    def __missing__(self, kind: str) -> dict[str, BackendSpec]:
        get_kind(kind)  # an unknown kind is a KeyError naming the declared ones
        table: dict[str, BackendSpec] = {}
        self[kind] = table
        return table
