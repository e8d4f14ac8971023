"""Throw-away ``redis-server`` processes for tests: single servers, small clusters, and a
master watched by a sentinel.

Each server listens on a free loopback port, keeps nothing on disk (``--save ""
--appendonly no``), works in its own directory and is killed by :meth:`RedisServer.stop`.
Used by this plugin's tests; handy for applications testing against a real Redis.

The pytest fixtures at the end (``redis_server``, ``own_redis_server``, ``key_prefix``)
are shared by the tests of the ``redis`` and ``limits`` plugins: import them into a
``conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

__all__ = [
    "RedisCluster3",
    "RedisSentinel1",
    "RedisServer",
    "SentinelServer",
    "free_cluster_port",
    "free_port",
    "key_prefix",
    "make_self_signed_certificate",
    "own_redis_server",
    "redis_server",
    "redis_server_available",
    "require_redis_server",
]


def redis_server_available() -> bool:
    """True when ``redis-server`` and ``redis-cli`` are on PATH."""
    return bool(shutil.which("redis-server") and shutil.which("redis-cli"))


def free_port() -> int:
    """A loopback TCP port nobody listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too, both below the
    kernel's ephemeral range where it can: an outgoing connection of the tests (a
    client, moto, uvicorn) cannot then take either between this choice and the bind."""
    rng = random.SystemRandom()
    top = _ephemeral_low() - 10_000
    low, high = (10_000, top) if top > 11_000 else (20_000, 55_000)
    for _ in range(200):
        port = rng.randrange(low, high)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _ping(port: int, timeout: float = 0.2, tls: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        if tls is None:
            raw.sendall(b"PING\r\n")
            return raw.recv(64)
        with tls.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64)


def make_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` for 127.0.0.1/localhost, made with the ``openssl`` command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return cert, key


class _PortTaken(RuntimeError):
    """redis-server could not bind its port: something took it after it was chosen."""


class RedisServer:
    """One ``redis-server`` on ``127.0.0.1:<port>`` (a free port unless given)."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        unix_socket: bool = False,
        tls: tuple[Path, Path] | None = None,
        choose_port: Callable[[], int] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # A port of our choosing may be taken between the choice and the bind: the first
        # start() then chooses again (a port the caller gave is kept, unless it gave a
        # way to choose another; once started, restarts keep it).
        self._choose_port = choose_port or (None if port else free_port)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.unix_socket = self.directory / "redis.sock" if unix_socket else None
        self.tls = tls  # (certificate, key): serve TLS only, on ``port``
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("server not running")
        return self.process.pid

    def _command(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING (on another free port when the
        one chosen was taken meanwhile, unless the caller gave the port)."""
        for attempt in range(4):
            try:
                self._start(timeout)
            except _PortTaken:
                if self._choose_port is None or attempt == 3:
                    raise
                self.port = self._choose_port()
            else:
                self._choose_port = None  # started: a restart keeps the port
                return self
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> RedisServer:
        args = self._command()
        if self.unix_socket is not None:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        context = None
        if self.tls is not None:
            cert, key = self.tls
            args[1:3] = ["--port", "0"]
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                     "--tls-auth-clients", "no"]  # fmt: skip
            context = ssl.create_default_context(cafile=str(cert))
        args += self.extra_args
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log_text = (self.directory / "redis.log").read_text(errors="replace")
                error = _PortTaken if "Address already in use" in log_text else RuntimeError
                raise error(
                    f"redis-server exited with {self.process.returncode}; see "
                    f"{self.directory / 'redis.log'}"
                )
            with contextlib.suppress(OSError):
                if _ping(self.port, tls=context).startswith(
                    (b"+PONG", b"-NOAUTH")
                ):  # up (maybe locked)
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash."""
        self.stop(graceful=False)

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the server (SIGTERM, or SIGKILL) and wait for it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
            process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self.pid, signal.SIGCONT)

    def cli(self, *args: str) -> str:
        """Run ``redis-cli -p <port> args...`` and return its output."""
        result = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return result.stdout.strip()


class RedisCluster3:
    """A three-master Redis Cluster (no replicas) on free loopback ports."""

    def __init__(self, directory: Path) -> None:
        self.servers = [
            RedisServer(
                Path(directory) / f"node{index}",
                free_cluster_port(),
                choose_port=free_cluster_port,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(Path(directory) / f"node{index}" / "nodes.conf"),
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for index in range(3)
        ]

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self, timeout: float = 30.0) -> RedisCluster3:
        """Start the nodes, join them with ``redis-cli --cluster create``, wait until ok."""
        try:
            for server in self.servers:
                server.start()
            subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *[f"127.0.0.1:{s.port}" for s in self.servers],
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout, check=True,
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            while not all("cluster_state:ok" in s.cli("CLUSTER", "INFO") for s in self.servers):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


class SentinelServer(RedisServer):
    """One Redis Sentinel (``redis-server <conf> --sentinel``) on a free loopback port,
    monitoring ``service_name`` at ``127.0.0.1:<master_port>`` with a quorum of 1."""

    def __init__(self, directory: Path, service_name: str, master_port: int) -> None:
        super().__init__(directory)
        self.service_name = service_name
        self.master_port = master_port

    def _command(self) -> list[str]:
        # Sentinel rewrites its configuration file: it must be a file of its own.
        conf = self.directory / "sentinel.conf"
        name = self.service_name
        conf.write_text(
            f"sentinel monitor {name} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {name} 5000\n"
            "sentinel resolve-hostnames no\n"
        )
        return [
            "redis-server", str(conf), "--sentinel", "--port", str(self.port),
            "--bind", "127.0.0.1", "--dir", str(self.directory), "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip

    def master_address(self) -> str:
        """``SENTINEL get-master-addr-by-name``: the master this sentinel reports."""
        return self.cli("SENTINEL", "get-master-addr-by-name", self.service_name)


class RedisSentinel1:
    """A Redis master and one sentinel watching it (no replica), on free loopback ports.

    :attr:`url` is the ``redis+sentinel://`` URL of the ``redis`` rate limiter.
    """

    def __init__(self, directory: Path, service_name: str = "vimaster") -> None:
        self.master = RedisServer(Path(directory) / "master")
        self.sentinel = SentinelServer(Path(directory) / "sentinel", service_name, self.master.port)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.sentinel.service_name}/0"

    def start(self, timeout: float = 10.0) -> RedisSentinel1:
        """Start the master, then the sentinel; wait until the sentinel names the master."""
        try:
            self.master.start(timeout)
            self.sentinel.start(timeout)
            expected = f"127.0.0.1\n{self.master.port}"
            deadline = time.monotonic() + timeout
            while self.sentinel.master_address() != expected:
                if time.monotonic() > deadline:
                    raise RuntimeError("the sentinel does not report the master")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.sentinel.stop()
        self.master.stop()


# -- pytest fixtures (import them into a conftest.py) ------------------------------------


def require_redis_server() -> None:
    """Skip the calling test when ``redis-server``/``redis-cli`` are not installed."""
    if not redis_server_available():  # pragma: no cover - depends on the machine
        pytest.skip("redis-server/redis-cli are not installed")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server (TCP and a unix socket) shared by the tests that do not stop it; they
    use keys of their own (``key_prefix``)."""
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis-shared"), unix_socket=True).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server for one test, which may kill, pause or restart it."""
    require_redis_server()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of the test's own, so tests can inspect exactly their keys."""
    return f"t{uuid.uuid4().hex[:12]}"
