"""Exactness across OS processes: several processes, one key, one limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis
from voice_infra_redis.testing import RedisServer

_WORKER = r"""
import asyncio, sys
import voice_infra as vi

url, prefix, key, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def main():
    limiter = vi.create_rate_limiter(vi.Settings(rate_limit={
        "backend": "redis", "url": url, "policies": ["100/minute"], "key_prefix": prefix,
        "socket_timeout": 5.0}))
    async with limiter:
        await limiter.get_remaining_requests(key)  # connected before the start signal
        print("ready", flush=True)
        sys.stdin.readline()
        calls_left = iter(range(calls))
        allowed = 0
        async def worker():
            nonlocal allowed
            for _ in calls_left:
                info = await limiter.check_rate_limit(key)
                assert not info.degraded
                allowed += info.allowed
        await asyncio.gather(*(worker() for _ in range(20)))
    print(allowed, flush=True)

asyncio.run(main())
"""


def test_exact_across_processes(redis_server: RedisServer, key_prefix: str) -> None:
    """1,200 checks from 4 OS processes (20 tasks each) on one key: exactly 100 pass."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_server.url, key_prefix, "user:shared", "300"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:  # all start together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in procs)
    counts = [int(out.strip()) for out, _ in outputs]
    assert sum(counts) == 100, counts
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.zcard(f"{key_prefix}:{{user:shared}}:60s") == 100
    finally:
        client.close()


def test_a_chosen_port_taken_before_the_bind_is_chosen_again(tmp_path: Path) -> None:
    """RedisServer picks a free port, then redis-server binds it: something else (a
    test's outgoing connection) may take it in between. The server then starts on
    another free port; a port the caller gave is kept (the error says why)."""
    import socket

    from voice_infra_redis.testing import RedisServer

    server = RedisServer(tmp_path / "chosen")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        taken = server.port
        server.start()
        try:
            assert server.port != taken and server.cli("PING") == "PONG"
        finally:
            server.stop()
        given = RedisServer(tmp_path / "given", port=taken)
        with pytest.raises(RuntimeError, match="redis-server exited"):
            given.start()
    assert "Address already in use" in (tmp_path / "given" / "redis.log").read_text()
