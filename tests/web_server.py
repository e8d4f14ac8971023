"""Helpers of the web tests: an ASGI app served by uvicorn on a free loopback port, in a
thread of the test process (the app's event loop is the server's own)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from voice_infra.web.server import http_protocol


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerThread:
    """``with ServerThread(app) as server:`` serves ``app`` at ``server.url``."""

    def __init__(self, app: Any, port: int | None = None, **options: Any) -> None:
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default; the middleware has
        # its own list of trusted proxies.
        self.port = port or free_port()
        # The HTTP protocol of voice-infra serve unless a test picks another.
        options.setdefault("http", http_protocol())
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
            ws="websockets-sansio", proxy_headers=False, **options,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "uvicorn did not stop"
