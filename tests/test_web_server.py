"""The HTTP protocol of ``voice-infra serve``: uvicorn's httptools parser behind a bound
on the request head (h11 refuses heads past 16 KiB by itself; httptools buffers any size)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from web_server import ServerThread

from voice_infra.web.server import MAX_HEAD_BYTES, http_protocol


async def echo_header_size(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = str(sum(len(value) for _, value in scope["headers"])).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def server() -> Any:
    assert http_protocol() != "h11", "the web extra installs httptools"
    with ServerThread(echo_header_size) as running:
        yield running


def _read_responses(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` responses (status line and body) from ``sock``."""
    data, responses = b"", []
    while len(responses) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        while b"\r\n\r\n" in data:
            head, rest = data.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0])
            if len(rest) < length:
                break
            responses.append(head.split(b"\r\n")[0] + b" " + rest[:length])
            data = rest[length:]
    return responses


def test_a_huge_header_line_is_refused_with_431_and_not_buffered(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 256 * 1024 * 1024:  # far more than any socket buffer holds
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:  # the server closed the connection: it stopped reading
            pass
        assert sent < 256 * 1024 * 1024, "the server kept reading an endless header"
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert f"request head over {MAX_HEAD_BYTES} bytes".encode() in answer


def test_heads_under_the_bound_pass_also_pipelined(server: ServerThread) -> None:
    big = b"v" * (MAX_HEAD_BYTES - 4096)  # near the bound, in one header
    first = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + b"b" * 300_000
    second = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(first + second + second)  # two heads begin inside the body's chunks
        responses = _read_responses(sock, 3)
    expected = str(len(big) + 1).encode()  # X-Big and Host's "x"
    assert [r.split(b" ", 1)[1] for r in responses] == [
        b"200 OK 7",
        b"200 OK " + expected,
        b"200 OK " + expected,  # Host + Content-Length
    ]
