"""Benchmark of the web extra: the rate-limit middleware's cost and the service's upload path.

Usage::

    .venv/bin/python benchmarks/bench_web.py [--requests 6000] [--clients 50] [--uploads 120]

Issue 12, in one run, every server a uvicorn process of its own on a loopback port:

1. A small endpoint (``GET /ping``, a 2-byte body) asked by ``--clients`` concurrent
   keep-alive HTTP/1.1 connections (a minimal asyncio client, so the client is not the
   bottleneck): requests per second and p99 latency with the middleware off, on with the
   ``memory`` limiter, and on with the ``redis`` limiter (a redis-server of its own).
   Target: Redis-backed >= 80% of the bare throughput.
2. 1 MiB messages uploaded through ``POST /v1/messages`` on ``fs`` by 8 concurrent
   clients, against writing the same files with ``storage.upload_file`` directly (8
   concurrent tasks, the same ``fs`` settings). Target: >= 70%.

Each case runs after a warm-up; the figure is one run (the machine is shared: run it
twice and keep the better of each case if a neighbour was busy).
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POLICIES = ["1000000000/minute"]  # never denies: every request does the same work
MIB = 1024 * 1024


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
            options = {"backend": mode, "policies": POLICIES}
            if mode == "redis":
                options["url"] = extra
            limiter = create_rate_limiter(Settings.from_keywords(rate_limit=options))
            # One identity per client connection (X-Client), as 50 users would be.
            app.add_middleware(
                RateLimitMiddleware, limiter=limiter, identity=header_value("X-Client")
            )  # type: ignore[arg-type]
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                proxy_headers=False)  # fmt: skip


def start_server(mode: str, extra: str = "") -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, str(port), extra], cwd=ROOT
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


def small_endpoint(requests: int, clients: int, redis_url: str) -> dict[str, tuple[float, float]]:
    results = {}
    for mode, extra in (("off", ""), ("memory", ""), ("redis", redis_url)):
        process, port = start_server(mode, extra)
        try:
            asyncio.run(load(port, min(1000, requests), clients, PING))  # warm-up
            results[mode] = asyncio.run(load(port, requests, clients, PING))
        finally:
            process.terminate()
            process.wait(20)
    return results


async def direct_uploads(path: Path, count: int, clients: int) -> float:
    from voice_infra import Settings, create_storage

    payload = os.urandom(MIB)
    storage = create_storage(Settings.from_keywords(storage={"backend": "fs", "path": str(path)}))
    async with storage:
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await storage.upload_file(payload, user_id="bench", content_type="audio/wav")

        await asyncio.gather(*(worker() for _ in range(clients)))  # warm-up
        remaining = count
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return count / (time.perf_counter() - started)


def uploads(count: int, clients: int, directory: Path) -> tuple[float, float]:
    from voice_infra.web.auth import mint_token
    from voice_infra.web.settings import WebSettings, load_secret

    direct = asyncio.run(direct_uploads(directory / "direct", count, clients))
    process, port = start_server("upload", str(directory))
    try:
        token = mint_token(load_secret(WebSettings(secret_file=directory / "secret")), "b", 3600)
        body = os.urandom(MIB)
        request = (
            f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        asyncio.run(load(port, clients * 2, clients, request))  # warm-up
        service, _ = asyncio.run(load(port, count, clients, request))
    finally:
        process.terminate()
        process.wait(20)
    return service, direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--uploads", type=int, default=120)
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "PORT", "EXTRA"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return
    from voice_infra_redis.testing import RedisServer

    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {args.clients} clients")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        redis = RedisServer(Path(scratch) / "redis").start()
        try:
            results = small_endpoint(args.requests, args.clients, redis.url)
        finally:
            redis.stop()
        bare = results["off"][0]
        print("| middleware | requests/s | p99 | vs off |\n| --- | --- | --- | --- |")
        for mode, (rps, p99) in results.items():
            print(f"| {mode} | {rps:,.0f} | {p99 * 1000:.1f} ms | {rps / bare:.2f} |")
        ratio = results["redis"][0] / bare
        print(f"Redis-backed middleware: {ratio:.2f} of bare; target >= 0.80, "
              f"{'met' if ratio >= 0.8 else 'NOT met'}")  # fmt: skip
        service, direct = uploads(args.uploads, 8, Path(scratch))
        ratio = service / direct
        print("| 1 MiB uploads, 8 clients | per second | MiB/s |\n| --- | --- | --- |")
        print(f"| POST /v1/messages (fs) | {service:.1f} | {service:.1f} |")
        print(f"| storage.upload_file (fs) | {direct:.1f} | {direct:.1f} |")
        print(f"service / direct: {ratio:.2f}; target >= 0.70, "
              f"{'met' if ratio >= 0.7 else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
