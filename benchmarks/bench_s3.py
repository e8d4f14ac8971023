"""Benchmark of the S3 storage plugin against raw aiobotocore calls, on one moto server.

Usage::

    .venv/bin/python benchmarks/bench_s3.py [--rounds 9] [--calls 40] [--profile CASE]

moto's S3 server runs in a child process (its CPU does not share this process' GIL) on
a free loopback port. Both sides use one client each, built from the same
``client_config(settings)`` (pool, timeouts, retries, checksum options), against the
same bucket:

- put+get 10 KiB and 1 MiB: ``upload_file`` + ``download_file`` through the plugin,
  versus ``put_object`` (same body, same content type) + ``get_object`` reading the
  full body;
- presign: ``generate_presigned_url`` (GET, 1 hour) through the plugin versus the
  client's ``generate_presigned_url("get_object", ...)`` with the same parameters;
- for reference, the raw transfers again, also computing the SHA-256 of the body
  (``raw+sha256``): the checksum the plugin must compute for ``VoiceFileInfo.checksum``
  and the raw calls do not.

After a warm-up, each round alternates plugin and raw call by call (ABAB..., the side
going first swaps every round) so that drifts in machine load hit both alike. Medians
over all calls; the ratio plugin/raw is checked against the issue's targets (1.05 for
transfers, 1.10 for presigning). The SHA-256 the plugin computes for
``VoiceFileInfo.checksum`` (the raw calls compute none) is timed separately and shown.
``--profile CASE`` runs cProfile over the plugin side of one case instead.

Needs the test extra of the plugin (``pip install -e 'plugins/voice-infra-s3[test]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import hashlib
import importlib.metadata
import os
import platform
import pstats
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiobotocore.session import AioSession  # type: ignore[import-untyped]
from voice_infra_s3.backend import client_config
from voice_infra_s3.settings import S3StorageSettings

import voice_infra as vi

BUCKET = "voice-bench"
KIB = 1024
MIB = 1024 * KIB
KEYS = 8  # distinct keys per case and side, overwritten in turn

Op = Callable[[int], Awaitable[object]]


@dataclass
class Case:
    name: str
    target: float
    sides: dict[str, Op]  # "plugin", "raw" and optionally "raw+sha256"
    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, side: str) -> float:
        return statistics.median(self.samples[side])

    def ratio(self, side: str = "raw") -> float:
        return self.median("plugin") / self.median(side)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """``python -m moto.server`` in a child process; its endpoint, with the bucket."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.05)
        request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()
        yield endpoint
    finally:
        process.kill()
        process.wait(10)


def _body(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def _cases(storage: Any, client: Any) -> list[Case]:
    cases = []
    for label, size in (("10 KiB", 10 * KIB), ("1 MiB", MIB)):
        body = _body(size)

        async def plugin(i: int, body: bytes = body, size: int = size) -> object:
            key = f"plugin/{size}/{i % KEYS}"
            await storage.upload_file(body, object_key=key)
            data = await storage.download_file(key)
            assert len(data) == size
            return data

        async def raw(i: int, body: bytes = body, size: int = size, sha: bool = False) -> object:
            key = f"raw/{size}/{i % KEYS}"
            if sha:  # what the plugin must do for VoiceFileInfo.checksum
                hashlib.sha256(body).hexdigest()
            await client.put_object(
                Bucket=BUCKET, Key=key, Body=body, ContentType="application/octet-stream"
            )
            response = await client.get_object(Bucket=BUCKET, Key=key)
            async with response["Body"] as stream:
                data = await stream.read()
            assert len(data) == size
            return data

        sides: dict[str, Op] = {
            "plugin": plugin,
            "raw": raw,
            "raw+sha256": functools.partial(raw, sha=True),
        }
        cases.append(Case(f"put+get {label}", 1.05, sides))

    async def plugin_presign(i: int) -> object:
        return await storage.generate_presigned_url(f"plugin/presign/{i % KEYS}", 3600)

    async def raw_presign(i: int) -> object:
        return await client.generate_presigned_url(
            "get_object",
            Params={"Bucket": BUCKET, "Key": f"raw/presign/{i % KEYS}"},
            ExpiresIn=3600,
            HttpMethod="GET",
        )

    cases.append(Case("presign GET", 1.10, {"plugin": plugin_presign, "raw": raw_presign}))
    return cases


async def _timed(op: Op, i: int) -> float:
    start = time.perf_counter()
    await op(i)
    return time.perf_counter() - start


def _sha256_cost(size: int, repeat: int = 200) -> float:
    """Median seconds to hash ``size`` bytes in 1 MiB chunks (as UploadBody does)."""
    body = _body(size)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        digest = hashlib.sha256()
        for offset in range(0, size, MIB):
            digest.update(body[offset : offset + MIB])
        digest.hexdigest()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:8.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:8.1f} us"


async def run(args: argparse.Namespace, endpoint: str) -> int:
    options = {
        "backend": "s3",
        "endpoint_url": endpoint,
        "bucket": BUCKET,
        "access_key": "bench-access-key",
        "secret_key": "bench-secret-key",
        "region": "us-east-1",
    }
    storage = vi.create_storage(vi.Settings(storage=options))
    settings = storage.settings
    assert isinstance(settings, S3StorageSettings)
    session = AioSession()
    async with (
        storage,
        session.create_client(
            "s3",
            endpoint_url=endpoint,
            region_name=settings.region,
            config=client_config(settings),
            aws_access_key_id="bench-access-key",
            aws_secret_access_key="bench-secret-key",
        ) as client,
    ):
        cases = _cases(storage, client)
        for case in cases:  # warm-up: connections, models, caches
            case.samples = {side: [] for side in case.sides}
            for i in range(args.warmup):
                for op in case.sides.values():
                    await op(i)

        if args.profile:
            case = next(c for c in cases if c.name == args.profile)
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(args.calls * args.rounds):
                await case.sides["plugin"](i)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
            return 0

        for round_ in range(args.rounds):
            for case in cases:
                order = list(case.sides.items())
                if round_ % 2:
                    order.reverse()
                for i in range(args.calls):
                    for side, op in order:
                        case.samples[side].append(await _timed(op, i))

    print(
        f"# bench_s3 {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{_cpus()} CPUs, Python {platform.python_version()}, "
        f"aiobotocore {_version('aiobotocore')}, botocore {_version('botocore')}, "
        f"aiohttp {_version('aiohttp')}, moto {_version('moto')} (child process, http)"
    )
    print(f"# {args.rounds} rounds x {args.calls} calls per side, interleaved; medians")
    print(f"{'case':16s} {'plugin':>11s} {'raw':>11s} {'ratio':>6s} {'target':>7s}  result")
    for case in cases:
        ok = case.ratio() <= case.target
        print(
            f"{case.name:16s} {_fmt(case.median('plugin'))} {_fmt(case.median('raw'))} "
            f"{case.ratio():6.3f} {case.target:7.2f}  {'PASS' if ok else 'MISS'}"
        )
    print("# reference: raw calls that also compute the SHA-256 the plugin must compute")
    for case in cases:
        if "raw+sha256" in case.sides:
            print(
                f"{case.name:16s} {_fmt(case.median('plugin'))} "
                f"{_fmt(case.median('raw+sha256'))} {case.ratio('raw+sha256'):6.3f}"
                "  (plugin / raw+sha256)"
            )
    for label, size in (("10 KiB", 10 * KIB), ("1 MiB", MIB)):
        cost = _sha256_cost(size)
        raw_median = next(c for c in cases if c.name == f"put+get {label}").median("raw")
        print(
            f"# SHA-256 of {label} (VoiceFileInfo.checksum, plugin only): {_fmt(cost).strip()}"
            f" = {cost / raw_median:.1%} of the raw put+get"
        )
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=40, help="calls per side per round")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--profile", metavar="CASE", help="cProfile the plugin side of CASE")
    args = parser.parse_args()
    with moto_server() as endpoint:
        return asyncio.run(run(args, endpoint))


if __name__ == "__main__":
    sys.exit(main())
