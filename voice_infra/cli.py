"""The ``voice-infra`` command line.

Backends are imported only by the commands that build them, so ``voice-infra --help``
and ``voice-infra plugins`` stay fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import select
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from voice_infra.config import Settings, dump_json
from voice_infra.errors import BackendDependencyError, VoiceServiceError
from voice_infra.kinds import declared_kinds
from voice_infra.masking import mask_secret
from voice_infra.plugins import get_registry, validate_backend_settings, validate_layer_settings

__all__ = ["main"]

PROGRESS_THRESHOLD = 8 * 1024 * 1024  # show a progress bar for files larger than this


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


# -- plugins / config --------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    backends = list(registry.iter_backends())
    layers = [registry.layers[name] for name in sorted(registry.layers)]
    if args.json:
        print(json.dumps({
            "backends": [{"kind": kind.replace("_", "-"), "names": list(spec.names),
                          "distribution": spec.distribution, "version": spec.version,
                          "capabilities": sorted(spec.capabilities),
                          "description": spec.description}
                         for kind, spec in backends],
            "failures": [{"distribution": f.distribution, "version": f.version,
                          "entry_point": f.entry_point, "error": f.error}
                         for f in registry.failures],
            "conflicts": [{"kind": kind, "name": name,
                           "distributions": [s.distribution for s in specs]}
                          for (kind, name), specs in registry.conflicts.items()],
            "layers": [{"name": spec.name, "kinds": _layer_kinds(spec.kinds),
                        "distribution": spec.distribution, "version": spec.version,
                        "description": spec.description}
                       for spec in layers],
        }, indent=2))  # fmt: skip
        return 0
    rows = [
        (kind.replace("_", "-"), ", ".join(spec.names), spec.distribution, spec.version,
         ", ".join(sorted(spec.capabilities)) or "-", spec.description or "-")
        for kind, spec in backends
    ]  # fmt: skip
    print(_table(rows, ("kind", "name", "distribution", "version", "capabilities", "description")))
    if layers:
        print("\nlayers (a section's `layers` list, outermost first):")
        layer_rows = [(spec.name, ", ".join(_layer_kinds(spec.kinds)), spec.distribution,
                       spec.version, spec.description or "-") for spec in layers]  # fmt: skip
        print(_table(layer_rows, ("layer", "applies to", "distribution", "version", "description")))
    for name, clashing in registry.layer_conflicts.items():
        print(f"\nconflict: layer {name!r} is declared by "
              + " and ".join(s.distribution for s in clashing))  # fmt: skip
    for (kind, name), specs in registry.conflicts.items():
        print(f"\nconflict: {kind} backend {name!r} is declared by "
              + " and ".join(s.distribution for s in specs))  # fmt: skip
    if registry.failures:
        print("\nplugins that failed to load:")
        for failure in registry.failures:
            print(f"  {failure.describe()}")
    return 0


def _layer_kinds(kinds: Any) -> list[str]:
    """The kinds a layer applies to, as written in messages (every kind: ``any``)."""
    return [kind.replace("_", "-") for kind in kinds] or ["any"]


def cmd_config(args: argparse.Namespace) -> int:
    settings = Settings()
    rows = settings.describe()
    # The sources first: when a backend then refuses its section, the user sees where
    # each value came from right above the error.
    if args.json:
        print(dump_json(rows), flush=True)
    else:
        rows_shown = [(k, _show(k, v), o) for k, v, o in rows]
        print(_table(rows_shown, ("key", "value", "source")), flush=True)
    registry = get_registry()
    effective: dict[str, Any] = {}
    for kind in declared_kinds():
        section = settings.section(kind)
        spec = registry.get(kind.name, section.backend)
        model = validate_backend_settings(spec, kind.name, section.options())
        # model_dump(mode="json") renders SecretStr as '**********'.
        effective[kind.section] = {"backend": section.backend, **model.model_dump(mode="json")}
        if section.layers is not None:
            # The stack, outermost first, each layer with its effective options.
            stack = []
            for entry in section.layers:
                layer = registry.get_layer(kind.name, entry.name)
                options = validate_layer_settings(layer, kind.name, entry.options())
                stack.append({"name": entry.name, **options.model_dump(mode="json")})
            effective[kind.section]["layers"] = stack
    web = _web_settings()
    if web is not None:
        effective["web"] = web.model_dump(mode="json")
    if args.json:
        return 0
    print("\n# effective backend settings (defaults included), as TOML:")
    for section_name, values in effective.items():
        print(f"[{section_name}]")
        for key, value in values.items():
            shown = _show(key, value)
            # TOML has no null: an unset option is a comment, so the output stays valid.
            print(f"# {key} is unset" if shown is None else f"{key} = {_toml_value(shown)}")
    return 0


def _web_settings() -> Any:
    """The effective ``[web]`` settings of ``serve`` (validated: a bad value is a
    ConfigError here too), or None without the web extra."""
    try:
        settings_module = _web_module("settings")
    except BackendDependencyError:  # no web extra: serve is unavailable, its section too
        return None
    return settings_module.WebSettings()


def _toml_value(value: Any) -> str:
    """``value`` (str, number, bool, list, table) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value if item is not None) + "]"
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{ " + ", ".join(items) + " }"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _show(key: str, value: Any) -> Any:
    return mask_secret(key.rsplit(".", 1)[-1], value)


# -- doctor / demo -------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    return asyncio.run(_doctor(args.timeout))


Check = Callable[[str, Awaitable[Any]], Awaitable[tuple[bool, Any]]]


async def _doctor(check_timeout: float) -> int:
    from voice_infra.factory import create_backend
    from voice_infra.layers import iter_layers

    settings = Settings()
    failures = 0
    backend = ""  # the backend being checked, named in FAIL lines

    async def check(label: str, step: Awaitable[Any]) -> tuple[bool, Any]:
        nonlocal failures
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(step, check_timeout)
        except Exception as exc:  # a plugin may let anything escape: report, don't crash
            failures += 1
            print(f"FAIL  {label}: {_failure_reason(exc, backend, check_timeout)}")
            return False, None
        if isinstance(result, _ProbeFailure):
            failures += 1
            print(f"FAIL  {label}: {result}")
            return False, None
        print(f"ok    {label} ({(time.perf_counter() - started) * 1000:.1f} ms)")
        return True, result

    # Every declared kind: build it from its section and connect; the kinds the CLI
    # knows how to exercise get a probe as well.
    for kind in declared_kinds():
        name = settings.section(kind).backend
        try:
            built = create_backend(kind, settings)
        except VoiceServiceError as exc:
            print(f"FAIL  {kind.label} configuration: {exc}")
            failures += 1
            continue
        print(f"{kind.label}: {name}")
        backend = f"{kind.label} backend {name!r}"
        if (await check("connect", built.open()))[0] and kind.name in _PROBES:
            await _PROBES[kind.name](built, check)
        for layer in iter_layers(built):
            state = layer.state()
            if state is not None:  # a breaker's state after the probes
                print(f"      layer {layer.name}: {state}")
        await built.aclose()
    print("doctor: all checks passed" if not failures else f"doctor: {failures} check(s) failed")
    return 0 if not failures else 1


class _ProbeFailure(str):
    """A probe step's result that is a failure without an exception (wrong bytes...)."""


async def _probe_storage(storage: Any, check: Check) -> None:
    """Write, read back and delete a probe object."""
    key = f"voice-infra-doctor/{uuid.uuid4().hex}.txt"
    payload = b"voice-infra doctor probe"
    if not (await check("write probe", storage.upload_file(payload, object_key=key)))[0]:
        return

    async def read_back() -> Any:
        data = await storage.download_file(key)
        return data if data == payload else _ProbeFailure("content differs from what was written")

    await check("read probe", read_back())
    await check("delete probe", storage.delete_file(key))


async def _probe_rate_limiter(limiter: Any, check: Check) -> None:
    """One check on a probe key (answered by the backend, not the fail mode), then clear."""
    key = f"voice-infra-doctor:{uuid.uuid4().hex}"

    async def decide() -> Any:
        info = await limiter.check_rate_limit(key)
        return _ProbeFailure("answered without the backend (degraded)") if info.degraded else info

    await check("rate-limit check", decide())
    await check("clear probe key", limiter.clear_user_limit(key))


async def _probe_cache(cache: Any, check: Check) -> None:
    """Set, get back and delete a probe entry."""
    key = f"voice-infra-doctor:{uuid.uuid4().hex}"
    payload = b"voice-infra doctor probe"
    if not (await check("cache set", cache.set(key, payload, ttl=60)))[0]:
        return

    async def read_back() -> Any:
        data = await cache.get(key)
        if data is None:
            return _ProbeFailure("the entry just set is missing")
        return data if data == payload else _ProbeFailure("content differs from what was set")

    await check("cache get", read_back())

    async def remove() -> Any:
        return True if await cache.delete(key) else _ProbeFailure("delete found no entry")

    await check("cache delete", remove())


_PROBES: dict[str, Callable[[Any, Check], Awaitable[None]]] = {
    "storage": _probe_storage,
    "rate_limiter": _probe_rate_limiter,
    "cache": _probe_cache,
}


def _failure_reason(exc: BaseException, backend: str, check_timeout: float) -> str:
    """One line: what failed and why, with the cause a voice-infra error wraps."""
    if isinstance(exc, TimeoutError):
        return f"{backend} did not answer within {check_timeout:g} s (--timeout)"
    reason = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, VoiceServiceError | OSError):
        # Plugins should raise voice-infra errors; say whose code let this one escape.
        return f"{backend} raised {reason} (an error voice-infra does not define; report it)"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in str(exc):
        reason += f" (caused by {type(cause).__name__}: {cause})"
    return reason


def cmd_demo(args: argparse.Namespace) -> int:
    from voice_infra.demo import run_demo

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    settings = Settings()
    if args.metrics:
        settings = _with_metrics(settings)
    report = asyncio.run(
        run_demo(settings, users=args.users, messages=args.messages, on_progress=say)
    )
    print(report.render())
    if args.metrics:
        from prometheus_client import REGISTRY, generate_latest

        print("\n# Prometheus scrape:")
        print(generate_latest(REGISTRY).decode(), end="")
    return 0 if report.ok else 1


def _with_metrics(settings: Settings) -> Settings:
    """``settings`` with the ``metrics`` layer outermost in every section that lacks it."""
    from voice_infra.layers import LayerConfig

    changed: dict[str, Any] = {}
    for kind in declared_kinds():
        if kind.section not in type(settings).model_fields:
            continue  # sections of kinds the demo does not use
        section = settings.section(kind)
        layers = tuple(section.layers or ())
        if all(entry.name != "metrics" for entry in layers):
            layers = (LayerConfig(name="metrics"), *layers)
        changed[kind.section] = section.model_copy(update={"layers": layers})
    return settings.model_copy(update=changed)


# -- operator commands ----------------------------------------------------------------


class _ProgressBar:
    """A tqdm bar on stderr, drawn at the first byte moved: an upload the core refuses up
    front (too large, bad key) draws none. tqdm is imported only when a bar is drawn."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self._bar: Any = None

    def update(self, count: int) -> None:
        if self._bar is None:
            import shutil

            from tqdm import tqdm

            # A terminal reporting a size of 0 x 0 (a fresh pty) would hide the bar.
            size = shutil.get_terminal_size((80, 24))
            self._bar = tqdm(
                total=self.total, desc=self.label, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, ncols=size.columns or 80,
                nrows=size.lines or 24,
            )  # fmt: skip
        self._bar.update(count)

    def close(self) -> None:
        """End the bar's line, so whatever is printed next starts on a fresh one."""
        if self._bar is not None:
            self._bar.close()


def _progress_bar(total: int, label: str, quiet: bool) -> _ProgressBar | None:
    """A bar for files above PROGRESS_THRESHOLD, and only on a terminal: a bar's
    carriage returns would litter a log or a pipe."""
    if quiet or total <= PROGRESS_THRESHOLD or not sys.stderr.isatty():
        return None
    return _ProgressBar(total, label)


def _storage() -> Any:
    from voice_infra.factory import create_storage

    return create_storage(Settings())


def cmd_upload(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.is_file():  # a local file problem: exit 1, as docs/cli.md says
        problem = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(errno.ENOENT, f"upload source {problem}", str(path))

    async def run() -> int:
        async with _storage() as storage:
            with contextlib.ExitStack() as stack:
                handle = stack.enter_context(await asyncio.to_thread(path.open, "rb"))
                bar = _progress_bar(os.fstat(handle.fileno()).st_size, path.name, args.quiet)
                source: Any = handle
                if bar is not None:
                    stack.callback(bar.close)  # closed (ending its line) before any error
                    # The wrapper passes seek/tell through, so the core still learns the
                    # size up front and refuses a file over max_file_size before sending.
                    from tqdm.utils import CallbackIOWrapper

                    source = CallbackIOWrapper(bar.update, handle, "read")
                info = await storage.upload_file(
                    source, object_key=args.key, user_id=args.user,
                    content_type=args.content_type or _guess_type(path),
                )  # fmt: skip
        print(info.model_dump_json(indent=2))
        return 0

    return asyncio.run(run())


def _guess_type(path: Path) -> str:
    import mimetypes

    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def cmd_download(args: argparse.Namespace) -> int:
    basename = args.key.rsplit("/", 1)[-1]
    dest = Path(args.dest or basename)
    if dest.is_dir() or (args.dest or "").endswith(("/", os.sep)):
        dest = dest / basename  # like cp: into the directory, under the key's name
    if args.dest != "-" and not dest.parent.is_dir():
        # Checked here so the error names the destination, not the temporary file.
        if dest.parent.exists():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(dest.parent))
        raise FileNotFoundError(errno.ENOENT, "destination folder does not exist", str(dest.parent))

    async def run() -> int:
        async with _storage() as storage:
            info = await storage.get_file_info(args.key)
            if args.dest == "-":
                async for chunk in storage.stream_file(args.key):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                return 0
            temp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
            try:
                with contextlib.ExitStack() as stack:
                    try:
                        handle = stack.enter_context(temp.open("wb"))
                    except OSError as exc:  # name what the user asked for, not the temp
                        raise type(exc)(exc.errno, exc.strerror, str(dest)) from None
                    bar = _progress_bar(info.file_size, dest.name, args.quiet)
                    if bar is not None:
                        stack.callback(bar.close)
                    async for chunk in storage.stream_file(args.key):
                        await asyncio.to_thread(handle.write, chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                os.replace(temp, dest)
            finally:
                temp.unlink(missing_ok=True)
            print(f"{args.key} -> {dest} ({info.file_size} bytes)")
        return 0

    return asyncio.run(run())


def cmd_ls(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with _storage() as storage:
            async for info in storage.list_files(args.prefix):
                if args.long:
                    print(f"{info.file_size:>12}  {info.upload_time:%Y-%m-%d %H:%M:%S}  "
                          f"{info.content_type:<24} {info.object_key}")  # fmt: skip
                else:
                    print(info.object_key)
        return 0

    return asyncio.run(run())


def cmd_rm(args: argparse.Namespace) -> int:
    async def run() -> int:
        missing = 0
        async with _storage() as storage:
            for key in args.keys:
                if await storage.delete_file(key):
                    print(f"deleted {key}")
                else:
                    print(f"not found: {key}", file=sys.stderr)
                    missing += 1
        return 1 if missing else 0

    return asyncio.run(run())


def cmd_url(args: argparse.Namespace) -> int:
    from voice_infra.factory import create_storage
    from voice_infra.layers import unwrap
    from voice_infra.storage import SignedURLStorage

    settings = Settings()

    async def run() -> int:
        async with create_storage(settings) as storage:
            if args.method == "GET":
                # A download URL for a missing object is a typo to report, not to print
                # (and on fs, checking first keeps an empty store from being created).
                await storage.get_file_info(args.key)
            print(await storage.generate_presigned_url(args.key, args.expires_in, args.method))
            signed = unwrap(storage)
            if isinstance(signed, SignedURLStorage):
                # Such URLs point at the app, not at a server of ours: say so on stderr
                # (stdout stays the bare URL, for scripts).
                print(
                    f"note: the {settings.storage.backend!r} backend does not serve this URL: "
                    f"your app must answer requests under {signed.settings.presign_base_url} "
                    "by calling storage.verify_presigned_url(url, method) and then streaming "
                    "the object (see docs/storage.md, 'Presigned URLs'), or run "
                    "'voice-infra serve' (pip install 'voice-infra[web]'), which serves them",
                    file=sys.stderr,
                )
        return 0

    return asyncio.run(run())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use 90s, 30m, 24h or 7d")
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    seconds = float(match[1]) * factor
    if seconds > MAX_DURATION.total_seconds():
        raise argparse.ArgumentTypeError(
            f"duration {text!r} is too long: at most {MAX_DURATION.days} days"
        )
    return timedelta(seconds=seconds)


#: The longest duration the CLI takes (a token's --ttl, --older-than): 100 years.
MAX_DURATION = timedelta(days=36_500)


def positive_duration(text: str) -> timedelta:
    """:func:`parse_duration` of at least one second (a token's lifetime)."""
    duration = parse_duration(text)
    if duration.total_seconds() < 1:
        raise argparse.ArgumentTypeError(f"duration {text!r} is too short: at least 1s")
    return duration


def positive_seconds(text: str) -> float:
    """A finite number of seconds above zero (``--timeout``)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0 < seconds < 86_400 * 365:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"seconds must be above 0 (and finite), got {text!r}")
    return seconds


def port_number(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, got {port}")
    return port


def cmd_abort_uploads(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with _storage() as storage:
            aborted = await storage.abort_incomplete_uploads(args.older_than)
        for key in aborted:
            print(f"aborted incomplete upload of {key}")
        print(f"{len(aborted)} incomplete upload(s) aborted")
        return 0

    return asyncio.run(run())


# -- web ------------------------------------------------------------------------------------

_WEB_HINT = "install the web extra: pip install 'voice-infra[web]'"


def _web_module(name: str) -> Any:
    """``voice_infra.web.<name>``, or a clear error when the web extra is missing."""
    import importlib

    try:
        return importlib.import_module(f"voice_infra.web.{name}")
    except ImportError as exc:
        raise BackendDependencyError(f"{exc.name or exc} is not installed; {_WEB_HINT}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    app_module = _web_module("app")
    settings_module = _web_module("settings")
    server_module = _web_module("server")
    try:
        import uvicorn
    except ImportError:
        raise BackendDependencyError(f"uvicorn is not installed; {_WEB_HINT}") from None
    web = settings_module.WebSettings()
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = web.public_base_url or f"http://{host}:{args.port}"
    app = app_module.create_app(web, Settings(), public_base_url=base)
    print(f"voice-infra: serving on http://{host}:{args.port} (public URL {base})", flush=True)
    # The middleware has its own list of trusted proxies ([web] trusted_proxies): uvicorn
    # must not rewrite the client address from X-Forwarded-For before it.
    config = uvicorn.Config(app, host=args.host, port=args.port, proxy_headers=False,
                            ws="websockets-sansio", log_level=args.log_level,
                            http=server_module.http_protocol())  # fmt: skip
    # After uvicorn set its logging up: presigned URLs' signatures never reach the log.
    logging.getLogger("uvicorn.access").addFilter(server_module.MaskedAccessLog())
    uvicorn.Server(config).run()
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    auth = _web_module("auth")
    settings_module = _web_module("settings")
    web = settings_module.WebSettings()
    secret = settings_module.load_secret(web)
    ttl = web.token_ttl if args.ttl is None else round(args.ttl.total_seconds())
    print(auth.mint_token(secret, args.user, ttl))
    return 0


# -- entry point ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voice-infra",
        description="Pluggable storage and rate-limiter backends for voice services.",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML file (default: $VOICE_INFRA_CONFIG "
                        "or ./voice_infra.toml)")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser("plugins", help="list installed backends and plugin load failures")
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(handler=cmd_plugins)
    sub = commands.add_parser("config", help="show the effective configuration and its sources")
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(handler=cmd_config)
    sub = commands.add_parser("doctor", help="check that the configured backends answer")
    sub.add_argument("--timeout", type=positive_seconds, default=10.0,
                     help="seconds per check (10)")  # fmt: skip
    sub.set_defaults(handler=cmd_doctor)
    sub = commands.add_parser("demo", help="run the voice-message demo on the configured backends")
    sub.add_argument("--users", type=_positive_int, default=3, help="simulated users (3)")
    sub.add_argument("--messages", type=_positive_int, default=12,
                     help="recordings per user, in a burst (12)")  # fmt: skip
    sub.add_argument("--metrics", action="store_true",
                     help="add the metrics layer, print the Prometheus scrape")  # fmt: skip
    sub.set_defaults(handler=cmd_demo)

    sub = commands.add_parser("upload", help="upload a file")
    sub.add_argument("path")
    sub.add_argument("--key", help="object key (default: generated)")
    sub.add_argument("--user", help="user id for the generated key and metadata")
    sub.add_argument("--content-type")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.set_defaults(handler=cmd_upload)
    sub = commands.add_parser("download", help="download an object ('-' writes to stdout)")
    sub.add_argument("key")
    sub.add_argument("dest", nargs="?")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.set_defaults(handler=cmd_download)
    sub = commands.add_parser("ls", help="list objects under a prefix")
    sub.add_argument("prefix", nargs="?", default="")
    sub.add_argument("-l", "--long", action="store_true")
    sub.set_defaults(handler=cmd_ls)
    sub = commands.add_parser("rm", help="delete objects")
    sub.add_argument("keys", nargs="+")
    sub.set_defaults(handler=cmd_rm)
    sub = commands.add_parser("url", help="print a presigned URL")
    sub.add_argument("key")
    sub.add_argument("--expires-in", type=int, default=None, help="seconds (default: presign_ttl)")
    sub.add_argument("--method", choices=("GET", "PUT"), default="GET")
    sub.set_defaults(handler=cmd_url)
    sub = commands.add_parser("abort-uploads", help="abort incomplete multipart uploads")
    sub.add_argument("--older-than", type=parse_duration, default=timedelta(hours=24),
                     help="age such as 30m, 24h, 7d (default 24h)")  # fmt: skip
    sub.set_defaults(handler=cmd_abort_uploads)

    sub = commands.add_parser("serve", help="serve voice messages over HTTP (the web extra)")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sub.add_argument("--port", type=port_number, default=8000, help="port (8000)")
    sub.add_argument("--log-level", default="info",
                     choices=("critical", "error", "warning", "info", "debug"))  # fmt: skip
    sub.set_defaults(handler=cmd_serve)
    sub = commands.add_parser("token", help="mint a bearer token for the web service")
    sub.add_argument("user", help="the user id (the token's sub)")
    sub.add_argument("--ttl", type=positive_duration, default=None,
                     help="lifetime such as 30m, 24h, 7d (default [web] token_ttl)")  # fmt: skip
    sub.set_defaults(handler=cmd_token)
    return parser


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe or socket whose reader has closed it."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll, or stdout is no file
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.config:
        if not Path(args.config).expanduser().is_file():
            print(
                f"voice-infra: error: --config {args.config!r} does not name a file; "
                "fix the path or leave --config out",
                file=sys.stderr,
            )
            return 2
        os.environ["VOICE_INFRA_CONFIG"] = args.config
    try:
        return int(args.handler(args))
    except VoiceServiceError as exc:
        print(f"voice-infra: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():
            print(f"voice-infra: error: {exc}", file=sys.stderr)  # a socket, not stdout
            return 1
        # The reader went away (`voice-infra ls | head`): stop quietly, and keep Python
        # from reporting the same broken pipe again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # as a shell reports a process ended by SIGPIPE
    except OSError as exc:  # a local file: missing, unreadable, disk full...
        print(f"voice-infra: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("voice-infra: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
