"""Fuzz tests of the RESP2 reader of ``_resp.py`` (hypothesis).

Replies are generated as values, encoded to bytes and fed to the connection's protocol
object in arbitrary pieces, as the event loop would hand them over. Properties: every
reply decodes to its value, whatever the split; an error reply is a value like any other
(the next reply is read correctly); bytes that are not RESP2 fail the waiting request and
every later one with redis-py's ``InvalidResponse`` and drop the connection, at once
(never waiting for bytes that cannot make the reply valid); a reply cut short by the
server closing the connection fails with redis-py's ``ConnectionError``; a reply cut short
by a silent server fails with its ``TimeoutError`` after ``timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    InvalidResponse,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from voice_infra_redis._resp import MAX_DEPTH, RespClient, RespEndpoint, _Protocol

# -- a model of RESP2 replies ------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One generated reply: its bytes on the wire and the value the reader must give."""

    wire: bytes
    value: Any


_ERROR_CLASSES = {
    "ERR": ResponseError,
    "WRONGTYPE": ResponseError,
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "NOPERM": AuthenticationError,
}

# Simple strings and error messages may hold any byte but CR and LF.
_line_text = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def _integer(value: int) -> Reply:
    return Reply(b":%d\r\n" % value, value)


def _bulk(data: bytes) -> Reply:
    return Reply(b"$%d\r\n%s\r\n" % (len(data), data), data)


def _simple(text: bytes) -> Reply:
    return Reply(b"+%s\r\n" % text, text)


def _error(prefix: str, text: bytes) -> Reply:
    message = f"{prefix} {text.decode('utf-8', 'replace')}"
    return Reply(b"-%s %s\r\n" % (prefix.encode(), text), (_ERROR_CLASSES[prefix], message))


def _array(items: list[Reply]) -> Reply:
    return Reply(
        b"*%d\r\n" % len(items) + b"".join(i.wire for i in items), [i.value for i in items]
    )


_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(_integer),
    st.binary(max_size=40).map(_bulk),  # any bytes, CRLF and '$' included
    _line_text.map(_simple),
    st.builds(_error, st.sampled_from(sorted(_ERROR_CLASSES)), _line_text),
    st.just(Reply(b"$-1\r\n", None)),
    st.just(Reply(b"*-1\r\n", None)),
    st.just(Reply(b"$0\r\n\r\n", b"")),
)
replies = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4).map(_array), max_leaves=12
)


def _same(got: Any, expected: Any) -> bool:
    """``got`` (a reader's value) is ``expected`` (the model's)."""
    if isinstance(expected, tuple):  # an error reply: (class, message)
        return type(got) is expected[0] and str(got) == expected[1]
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(_same(g, e) for g, e in zip(got, expected, strict=True))
        )
    return type(got) is type(expected) and got == expected


# -- feeding the connection's protocol by hand ----------------------------------------------


class _Transport(asyncio.Transport):
    """Stands in for the socket: the reader under test never writes in these tests."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def write(self, data: bytes) -> None:
        pass


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # Futures and timers need a loop, not a running one: nothing here awaits.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _connection(
    loop: asyncio.AbstractEventLoop, requests: int
) -> tuple[_Protocol, _Transport, list[asyncio.Future[Any]]]:
    protocol = _Protocol(loop, timeout=60.0)
    transport = _Transport()
    protocol.connection_made(transport)
    futures = [protocol.send(b"") for _ in range(requests)]
    return protocol, transport, futures


def _feed(protocol: _Protocol, wire: bytes, cuts: list[int]) -> None:
    """Hand ``wire`` to the protocol in pieces ending at the sorted ``cuts``."""
    start = 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        if start < cut:
            protocol.data_received(wire[start:cut])
            start = cut


def _outcome(future: asyncio.Future[Any]) -> Any:
    assert future.done(), "the reader left a complete reply unanswered"
    return future.exception() or future.result()


def _check_decoded(loop: asyncio.AbstractEventLoop, sequence: list[Reply], cuts: list[int]) -> None:
    protocol, transport, futures = _connection(loop, len(sequence))
    wire = b"".join(reply.wire for reply in sequence)
    _feed(protocol, wire, cuts)
    for reply, future in zip(sequence, futures, strict=True):
        got = _outcome(future)
        assert _same(got, reply.value), (reply.wire, got)
    assert not protocol.pending and not protocol.buffer and not transport.aborted


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    sequence=st.lists(replies, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_replies_decode_whatever_the_split(
    loop: asyncio.AbstractEventLoop, sequence: list[Reply], cuts: list[int]
) -> None:
    """Several replies (errors among them) in one stream, cut anywhere: each request
    gets its own reply, error replies included, and nothing is left over."""
    _check_decoded(loop, sequence, cuts)


@settings(max_examples=60, deadline=None)
@given(sequence=st.lists(replies, min_size=1, max_size=3))
def test_replies_decode_split_at_every_byte_boundary(
    loop: asyncio.AbstractEventLoop, sequence: list[Reply]
) -> None:
    """Every single cut point, and one byte at a time."""
    size = sum(len(reply.wire) for reply in sequence)
    for cut in range(size + 1):
        _check_decoded(loop, sequence, [cut])
    _check_decoded(loop, sequence, list(range(size)))


def test_an_error_reply_does_not_desynchronise_the_next(loop: asyncio.AbstractEventLoop) -> None:
    sequence = [
        _error("ERR", b"unknown command"),
        _integer(7),
        _array([_error("WRONGTYPE", b"no"), _bulk(b"-ERR\r\n")]),
        _bulk(b"after"),
    ]
    _check_decoded(loop, sequence, [])
    _check_decoded(loop, sequence, list(range(sum(len(r.wire) for r in sequence))))


# -- bytes that are not RESP2 -----------------------------------------------------------------


def _not_a_length(text: bytes) -> bool:
    return not text.isdigit() and text != b"-1"


_bad_lengths = st.one_of(
    st.integers(max_value=-2).map(lambda n: b"%d" % n),  # negative, but not the null -1
    st.sampled_from([b"", b" 3", b"3 ", b"+3", b"1_0", b"0x10", b"\xd9\xa3", b"--1", b"-1 "]),
    st.binary(min_size=1, max_size=6).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b"") + b"x"
    ),
).filter(_not_a_length)
_bad_integers = st.one_of(
    st.sampled_from([b"", b"-", b"+", b" 1", b"1 ", b"1_000", b"1.5", b"--1", b"\xd9\xa3"]),
    st.binary(min_size=1, max_size=6).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b"") + b"x"
    ),
)
_type_bytes = st.integers(min_value=0, max_value=255).filter(lambda b: b not in b":$*+-")
malformed = st.one_of(
    # An unknown type byte (RESP3 types among them: this client speaks RESP2).
    st.builds(lambda t, rest: bytes([t]) + rest + b"\r\n", _type_bytes, _line_text),
    st.builds(lambda n: b"$" + n + b"\r\nabc\r\n", _bad_lengths),
    st.builds(lambda n: b"*" + n + b"\r\n:1\r\n", _bad_lengths),
    st.builds(lambda n: b":" + n + b"\r\n", _bad_integers),
    # A bulk string longer than its length says (no CRLF where it should end).
    st.builds(
        lambda data, extra: b"$%d\r\n%s%s\r\n" % (len(data), data, extra),
        st.binary(max_size=20),
        st.binary(min_size=2, max_size=4).filter(lambda b: not b.startswith(b"\r\n")),
    ),
    st.just(b"$536870913\r\n"),  # over Redis' 512 MiB bulk limit
    st.just(b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n"),  # nested too deep
)


@FUZZ
@given(
    before=st.lists(replies, max_size=3),
    bad=malformed,
    after=st.lists(replies, max_size=2),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_malformed_replies_raise_invalid_response_at_once(
    loop: asyncio.AbstractEventLoop,
    before: list[Reply],
    bad: bytes,
    after: list[Reply],
    cuts: list[int],
) -> None:
    """Replies before the bad one are answered; the bad one and every later request
    fail with InvalidResponse as soon as its bytes are in (whatever comes after them:
    a reader out of step must not hand later replies to the wrong requests), and the
    connection is dropped."""
    protocol, transport, futures = _connection(loop, len(before) + 1 + len(after))
    head = b"".join(reply.wire for reply in before)
    wire = head + bad + b"".join(reply.wire for reply in after)
    _feed(protocol, wire, cuts)
    for reply, future in zip(before, futures, strict=False):
        assert _same(_outcome(future), reply.value)
    for future in futures[len(before) :]:
        error = _outcome(future)
        assert isinstance(error, InvalidResponse), (bad, error)
    assert transport.aborted and not protocol.pending


@FUZZ
@given(sequence=st.lists(replies, min_size=1, max_size=3), data=st.data())
def test_a_reply_truncated_by_eof_fails_with_connection_error(
    loop: asyncio.AbstractEventLoop, sequence: list[Reply], data: st.DataObject
) -> None:
    """The server closes the connection inside the last reply: the complete replies are
    answered, the cut one fails with redis-py's ConnectionError (no request hangs)."""
    protocol, _transport, futures = _connection(loop, len(sequence))
    head = b"".join(reply.wire for reply in sequence[:-1])
    last = sequence[-1].wire
    cut = data.draw(st.integers(min_value=0, max_value=len(last) - 1), label="cut")
    _feed(protocol, head + last[:cut], [])
    for reply, future in zip(sequence[:-1], futures, strict=False):
        assert _same(_outcome(future), reply.value)
    assert not futures[-1].done()  # a valid prefix: the reader waits for more
    protocol.connection_lost(None)
    assert isinstance(_outcome(futures[-1]), RedisConnectionError)


def test_a_reply_nobody_asked_for_is_a_protocol_error(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport, futures = _connection(loop, 1)
    protocol.data_received(b":1\r\n:2\r\n")
    assert _outcome(futures[0]) == 1
    assert transport.aborted


# -- through a real connection ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_on_a_real_connection_errors_surface_and_the_client_reconnects() -> None:
    """A loopback server answering with canned bytes: an error reply is raised and the
    next reply on the same connection is read; a malformed reply raises InvalidResponse
    and the next request opens a new connection; a reply cut short by a silent server
    raises TimeoutError after the reply timeout."""
    script = iter(
        [
            b"-ERR boom\r\n",  # first connection
            b":42\r\n",
            b"$2\r\nabcd\r\n",  # malformed: 'cd' where the CRLF should be
            b"+OK\r\n",  # second connection
            b"$10\r\nabc",  # truncated, then silence
        ]
    )
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while await reader.read(65536):
                writer.write(next(script, b""))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(
        RespEndpoint.from_url(f"redis://127.0.0.1:{port}/0"), connect_timeout=1.0, timeout=0.3
    )
    try:
        with pytest.raises(ResponseError, match="boom"):
            await client.execute("PING")
        assert await client.execute("PING") == 42
        with pytest.raises(InvalidResponse):
            await client.execute("PING")
        assert await client.execute("PING") == b"OK"
        assert connections == 2
        started = time.perf_counter()
        with pytest.raises(RedisTimeoutError):
            await client.execute("PING")
        assert time.perf_counter() - started < 1.0
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
