"""Benchmark of the web extra: the rate-limit middleware's cost and the service's upload path.

Usage::

    .venv/bin/python benchmarks/bench_web.py [--rounds 9] [--pin] [--http h11]

Issue 12, in one run, every server a uvicorn process of its own on a loopback port, all
started once and measured in interleaved rounds (the order reversed every other round),
so that the machine's drifts (these 2-vCPU machines swing by a third within a minute) hit
every case alike; each figure is the median over the rounds:

1. A small endpoint (``GET /ping``, a 2-byte body) asked by ``--clients`` concurrent
   keep-alive HTTP/1.1 connections (a minimal asyncio client, so the client is not the
   bottleneck), ``--requests`` per round: requests per second and p99 latency with the
   middleware off, on with a limiter that answers at once with a decision made in
   advance (``fixed``: the middleware's own cost, the ceiling of every limiter), on with
   the ``memory`` limiter, and on with the ``redis`` limiter (a redis-server of its
   own); with each, the server process's CPU time per request (user and system, from
   ``/proc``), which the machine's noise moves less than the rates. Target: Redis-backed
   >= 80% of the bare throughput.
2. 1 MiB messages uploaded through ``POST /v1/messages`` on ``fs`` by 8 concurrent
   clients, against writing the same files with ``storage.upload_file`` directly (8
   concurrent tasks, the same ``fs`` settings), ``--uploads`` per round. Target: >= 70%.

``--pin`` runs the small endpoint's servers on CPU 0 and the load generator and
redis-server on the others: the figure is then the server's own capacity, not a share of
two cores with its clients (the uploads are not pinned: both sides write from threads).
The first line says which event loop and HTTP parser uvicorn used (uvloop and httptools
when installed, as the web extra does; ``--http h11`` for the pure-Python parser).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POLICIES = ["1000000000/minute"]  # never denies: every request does the same work
MIB = 1024 * 1024
T = TypeVar("T")
# The HTTP implementation the servers use (--http), passed to them in their environment.
HTTP_ENV = "VOICE_INFRA_BENCH_HTTP"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the servers (run in child processes) ---------------------------------------------------


def serve(mode: str, port: int, extra: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from voice_infra import Settings, create_rate_limiter
    from voice_infra.web.app import create_app
    from voice_infra.web.middleware import RateLimitMiddleware, header_value
    from voice_infra.web.server import http_protocol
    from voice_infra.web.settings import WebSettings

    if mode == "upload":
        web = WebSettings(
            secret_file=Path(extra) / "secret", max_upload_size=2 * MIB,
            upload_policies=POLICIES, rate_limit=True,
        )  # fmt: skip
        core = Settings.from_keywords(
            storage={"backend": "fs", "path": str(Path(extra) / "service")},
            rate_limit={"backend": "memory", "policies": POLICIES},
        )
        app = create_app(web, core, public_base_url=f"http://127.0.0.1:{port}")
    else:

        async def ping(request: object) -> PlainTextResponse:
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/ping", ping)])
        if mode != "off":
            options = {"backend": "memory" if mode == "fixed" else mode, "policies": POLICIES}
            if mode == "redis":
                options["url"] = extra
            limiter: Any = create_rate_limiter(Settings.from_keywords(rate_limit=options))
            if mode == "fixed":
                limiter = FixedDecision(limiter)
            # One identity per client connection (X-Client), as 50 users would be.
            app.add_middleware(
                RateLimitMiddleware, limiter=limiter, identity=header_value("X-Client")
            )  # type: ignore[arg-type]
    # "auto": what voice-infra serve runs (httptools behind its head bound, else h11).
    http: Any = os.environ.get(HTTP_ENV, "auto")
    if http == "auto":
        http = http_protocol()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                proxy_headers=False, http=http)  # fmt: skip


class FixedDecision:
    """A limiter that answers every check with one decision made in advance: the
    middleware's own cost (identity, header fields, the wrapped ``send``) with no backend,
    the ceiling of any limiter's ratio to the bare endpoint."""

    def __init__(self, limiter: Any) -> None:
        import asyncio

        self.policies = limiter.policies
        self.decision = asyncio.run(limiter.check_rate_limit("header:bench"))

    async def check_rate_limit(self, key: str, cost: int = 1) -> Any:
        return self.decision


def start_server(
    mode: str, extra: str = "", cpus: set[int] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, __file__, "--serve", mode, str(port), extra]
    process = subprocess.Popen(
        command, cwd=ROOT, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    )
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"server {mode} did not start") from None
            time.sleep(0.05)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(20)


# -- the client -------------------------------------------------------------------------------


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> int:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def load(port: int, requests: int, clients: int, request: bytes) -> tuple[float, float]:
    """(requests per second, p99 seconds) of ``requests`` sent by ``clients`` connections."""
    latencies: list[float] = []
    remaining = requests

    async def client(number: int) -> None:
        nonlocal remaining
        data = request.replace(b"\r\n\r\n", f"\r\nX-Client: c{number}\r\n\r\n".encode(), 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * MIB)
        try:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                status = await _request(reader, writer, data)
                latencies.append(time.perf_counter() - started)
                assert status in (200, 201), status
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    elapsed = time.perf_counter() - started
    p99 = statistics.quantiles(latencies, n=100)[98]
    return len(latencies) / elapsed, p99


PING = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def interleaved(cases: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Each case's results over ``rounds``, cases taken in turn (reversed every other round)."""
    results: dict[str, list[T]] = {name: [] for name in cases}
    order = list(cases)
    for round_ in range(rounds):
        for name in order if round_ % 2 == 0 else reversed(order):
            results[name].append(cases[name]())
    return results


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user and system) of every thread of process ``pid`` so far, to the
    nanosecond (Linux ``/proc/PID/task/*/schedstat``; None elsewhere)."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
    except (OSError, ValueError):
        return None
    return total / 1e9


def measured(process: subprocess.Popen[bytes], port: int, requests: int, clients: int
             ) -> tuple[float, float, float | None]:  # fmt: skip
    """(requests/s, p99 s, the server's CPU seconds per request) of one load run."""
    before = process_cpu_seconds(process.pid)
    rps, p99 = asyncio.run(load(port, requests, clients, PING))
    after = process_cpu_seconds(process.pid)
    cpu = None if before is None or after is None else (after - before) / requests
    return rps, p99, cpu


def small_endpoint(
    requests: int, clients: int, rounds: int, redis_url: str, cpus: set[int] | None
) -> dict[str, tuple[float, float, float | None]]:
    """Per mode: median requests/s, p99 seconds and server CPU seconds per request."""
    servers = {mode: start_server(mode, extra, cpus)
               for mode, extra in (("off", ""), ("fixed", ""), ("memory", ""),
                                   ("redis", redis_url))}  # fmt: skip
    try:
        for _, port in servers.values():
            asyncio.run(load(port, min(1000, requests), clients, PING))  # warm-up
        runs = interleaved({
            mode: (lambda process=process, port=port: measured(process, port, requests, clients))
            for mode, (process, port) in servers.items()
        }, rounds)  # fmt: skip
    finally:
        stop([process for process, _ in servers.values()])
    summary: dict[str, tuple[float, float, float | None]] = {}
    for mode, results in runs.items():
        cpus_used = [r[2] for r in results if r[2] is not None]
        summary[mode] = (
            statistics.median(r[0] for r in results),
            statistics.median(r[1] for r in results),
            statistics.median(cpus_used) if cpus_used else None,
        )
    return summary


async def direct_uploads(storage: Any, payload: bytes, count: int, clients: int) -> float:
    """Uploads per second of ``count`` ``storage.upload_file`` calls by ``clients`` tasks."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await storage.upload_file(payload, user_id="bench", content_type="audio/wav")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return count / (time.perf_counter() - started)


def uploads(
    count: int, clients: int, rounds: int, directory: Path, cpus: set[int] | None
) -> tuple[float, float]:
    from voice_infra import Settings, create_storage
    from voice_infra.web.auth import mint_token
    from voice_infra.web.settings import WebSettings, load_secret

    payload = os.urandom(MIB)
    loop = asyncio.new_event_loop()
    storage = create_storage(
        Settings.from_keywords(storage={"backend": "fs", "path": str(directory / "direct")})
    )
    process, port = start_server("upload", str(directory), cpus)
    try:
        loop.run_until_complete(storage.open())
        token = mint_token(load_secret(WebSettings(secret_file=directory / "secret")), "b", 3600)
        request = (
            f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        loop.run_until_complete(direct_uploads(storage, payload, clients * 2, clients))  # warm-up
        asyncio.run(load(port, clients * 2, clients, request))  # warm-up
        runs = interleaved({
            "service": lambda: asyncio.run(load(port, count, clients, request))[0],
            "direct": lambda: loop.run_until_complete(
                direct_uploads(storage, payload, count, clients)),
        }, rounds)  # fmt: skip
    finally:
        stop([process])
        loop.run_until_complete(storage.aclose())
        loop.close()
    return statistics.median(runs["service"]), statistics.median(runs["direct"])


def server_stack(http: str) -> str:
    """The event loop and HTTP parser uvicorn uses ("auto": the fast ones when installed)."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn loop={loop} http={http}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--uploads", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--http", choices=["auto", "httptools", "h11"], default="auto",
                        help="uvicorn's HTTP parser (auto: httptools if installed)")  # fmt: skip
    parser.add_argument("--pin", action="store_true",
                        help="servers on CPU 0, the rest elsewhere")  # fmt: skip
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "PORT", "EXTRA"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return
    from voice_infra_redis.testing import RedisServer

    os.environ[HTTP_ENV] = args.http
    server_cpus = others = None
    if args.pin:
        every = sorted(os.sched_getaffinity(0))
        if len(every) < 2:
            parser.error("--pin needs at least two CPUs")
        server_cpus, others = {every[0]}, set(every[1:])
        os.sched_setaffinity(0, others)  # redis-server, started from here, inherits it
    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {args.clients} clients, {server_stack(args.http)}, "
          f"{args.rounds} rounds{', pinned' if args.pin else ''}")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        redis = RedisServer(Path(scratch) / "redis").start()
        try:
            results = small_endpoint(
                args.requests, args.clients, args.rounds, redis.url, server_cpus
            )
        finally:
            redis.stop()
        bare = results["off"][0]
        print("| middleware | requests/s | p99 | vs off | server CPU per request |\n"
              "| --- | --- | --- | --- | --- |")  # fmt: skip
        for mode, (rps, p99, cpu) in results.items():
            used = "n/a" if cpu is None else f"{cpu * 1e6:.0f} us"
            print(f"| {mode} | {rps:,.0f} | {p99 * 1000:.1f} ms | {rps / bare:.2f} | {used} |")
        ratio = results["redis"][0] / bare
        print(f"Redis-backed middleware: {ratio:.2f} of bare; target >= 0.80, "
              f"{'met' if ratio >= 0.8 else 'NOT met'}")  # fmt: skip
        if args.pin:  # the uploads' fs threads need every CPU, for both sides alike
            os.sched_setaffinity(0, set(every))
        service, direct = uploads(args.uploads, 8, args.rounds, Path(scratch), None)
        ratio = service / direct
        print("| 1 MiB uploads, 8 clients | per second | MiB/s |\n| --- | --- | --- |")
        print(f"| POST /v1/messages (fs) | {service:.1f} | {service:.1f} |")
        print(f"| storage.upload_file (fs) | {direct:.1f} | {direct:.1f} |")
        print(f"service / direct: {ratio:.2f}; target >= 0.70, "
              f"{'met' if ratio >= 0.7 else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
