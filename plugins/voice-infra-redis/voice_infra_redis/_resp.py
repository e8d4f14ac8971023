"""A minimal, multiplexed RESP2 client for the single-node hot path.

Why not redis-py's connection pool here: measured on this machine, borrowing and
returning a pooled connection and redis-py's generic command machinery cost more than
the Redis work of a whole decision (PING through redis-py ~85 us, the same PING on a
bare connection ~56 us, Lua work ~8 us). This client keeps ONE connection per limiter
and pipelines every concurrent request on it (Redis answers in order), so:

- a check is one ``transport.write`` of pre-encoded bytes and one parsed reply;
- under concurrency, requests written in the same event-loop iteration leave in one
  ``send`` and their replies arrive in one ``recv`` (automatic pipelining);
- there is no pool to size or starve.

Scope is deliberately small: RESP2 replies (simple strings, errors, integers, bulk
strings, arrays), AUTH/SELECT at connect, TLS, unix sockets, a connect timeout and a
per-request reply timeout. Errors are redis-py's exception classes, so callers handle
one set: an error reply raises its ``ResponseError`` subclass and the connection goes
on; bytes that are not RESP2 (unknown type byte, a length that is not digits or ``-1``,
a bulk string not followed by CRLF, arrays nested deeper than :data:`MAX_DEPTH`) raise
``InvalidResponse`` and drop the connection, since every later reply would be misread
(``tests/test_resp_reader.py`` fuzzes this with hypothesis). Redis Cluster (MOVED/ASK
redirects) and Sentinel stay with redis-py (see ``transport.py``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    InvalidResponse,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RespClient", "RespEndpoint", "encode_command"]

_CRLF = b"\r\n"


def encode_command(*args: bytes | str | int) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _error(message: str) -> RedisError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith("LOADING"):
        return BusyLoadingError(message)
    if message.startswith("READONLY"):
        return ReadOnlyError(message)
    if message.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
        return AuthenticationError(message)
    return ResponseError(message)


class _Incomplete(Exception):
    pass


#: Deepest nesting of arrays accepted in a reply (hiredis stops at 7; the script
#: replies one flat array): bounds the parser's recursion on hostile input.
MAX_DEPTH = 16
#: Longest bulk string accepted: Redis' own ``proto-max-bulk-len`` default (512 MiB).
MAX_BULK = 512 * 1024 * 1024


def _invalid(what: str, line: bytes | bytearray) -> InvalidResponse:
    return InvalidResponse(f"Protocol error: {what} in reply line {bytes(line)[:40]!r}")


def _length(line: bytearray, kind: str, limit: int) -> int:
    """The count of a ``$`` or ``*`` header: ASCII digits, or exactly ``-1`` (null).
    Python's ``int()`` would also take ``" 3"``, ``"+3"`` and ``"1_0"``; RESP does not."""
    text = line[1:]
    if text.isdigit():
        value = int(text)
        if value > limit:
            raise _invalid(f"{kind} length over {limit}", line)
        return value
    if text == b"-1":
        return -1
    raise _invalid(f"bad {kind} length", line)


def _parse(buf: bytearray, pos: int, depth: int = 0) -> tuple[Any, int]:
    """One RESP2 reply from ``buf`` at ``pos``: ``(value, next position)``.

    Raises :class:`_Incomplete` when more bytes are needed (nothing is consumed: the
    caller parses again from ``pos`` once more bytes came), and redis-py's
    :class:`~redis.exceptions.InvalidResponse` on bytes that are not RESP2 (the
    connection is then out of step and must be dropped). Error replies are returned as
    redis-py exception instances, not raised, so an error inside an array stays in place.
    """
    end = buf.find(_CRLF, pos)
    if end < 0:
        raise _Incomplete
    line = buf[pos:end]
    kind = buf[pos] if end > pos else 0
    if kind == 58:  # ':' integer: optional sign, then digits
        digits = line[2:] if len(line) > 1 and line[1] in b"+-" else line[1:]
        if not digits.isdigit():
            raise _invalid("bad integer", line)
        return int(line[1:]), end + 2
    if kind == 36:  # '$' bulk string
        length = _length(line, "bulk string", MAX_BULK)
        if length < 0:
            return None, end + 2
        stop = end + 2 + length
        if len(buf) < stop + 2:
            raise _Incomplete
        if buf[stop : stop + 2] != _CRLF:
            raise _invalid(f"bulk string longer than its length {length}", line)
        return bytes(buf[end + 2 : stop]), stop + 2
    if kind == 42:  # '*' array
        count = _length(line, "array", 2**32)
        pos = end + 2
        if count < 0:
            return None, pos
        if depth >= MAX_DEPTH:
            raise _invalid(f"arrays nested deeper than {MAX_DEPTH}", line)
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if kind == 43:  # '+' simple string
        return bytes(line[1:]), end + 2
    if kind == 45:  # '-' error
        return _error(line[1:].decode("utf-8", "replace")), end + 2
    raise _invalid("unexpected reply type (this client speaks RESP2)", line)


class _Protocol(asyncio.Protocol):
    """One connection: requests go out in order, replies resolve futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.watchdog: asyncio.TimerHandle | None = None
        self.lost: BaseException | None = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports (uvicorn's default loop where
        # uvloop is installed) implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        pending = self.pending
        try:
            while pos < len(buf):
                value, pos = _parse(buf, pos)
                if not pending:
                    raise InvalidResponse("Protocol error: a reply nobody asked for")
                future = pending.popleft()[0]
                if not future.done():  # a cancelled caller's reply is dropped
                    future.set_result(value)
        except _Incomplete:
            pass
        except InvalidResponse as exc:
            # Out of step with the server: every later reply would go to the wrong
            # request. Drop the connection; the next request opens a new one.
            self.abort(exc)
            return
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = RedisConnectionError(
                f"connection to Redis lost: {exc}" if exc else "Redis closed the connection"
            )
        self._fail_pending(self.lost)

    # -- requests -------------------------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue ``packed`` (one or more commands' bytes: one future per reply is the
        caller's job for multi-command writes) and return the reply's future."""
        future = self.loop.create_future()
        now = self.loop.time()
        self.pending.append((future, now))
        self.outgoing.append(packed)
        if not self.flush_scheduled:
            # Everything written during this loop iteration leaves in one send().
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        if self.watchdog is None:
            self.watchdog = self.loop.call_at(now + self.timeout, self._watch)
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.outgoing and self.transport is not None and self.lost is None:
            data = b"".join(self.outgoing) if len(self.outgoing) > 1 else self.outgoing[0]
            self.outgoing.clear()
            self.transport.write(data)

    def _watch(self) -> None:
        """One timer per connection (not per request): abort when the oldest unanswered
        request is older than the timeout (the replies would come out of order after)."""
        self.watchdog = None
        if not self.pending or self.lost is not None:
            return
        deadline = self.pending[0][1] + self.timeout
        if self.loop.time() >= deadline:
            self.abort(RedisTimeoutError(f"Redis did not answer within {self.timeout} s"))
        else:
            self.watchdog = self.loop.call_at(deadline, self._watch)

    def abort(self, exc: BaseException) -> None:
        """Close the connection and fail every request waiting on it with ``exc``."""
        if self.lost is None:
            self.lost = exc
        if self.transport is not None:
            self.transport.abort()
        self._fail_pending(self.lost)

    def _fail_pending(self, exc: BaseException) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.outgoing.clear()
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(exc)
                # A caller may have gone (cancelled); do not warn "never retrieved".
                future.exception()


@dataclass(frozen=True)
class RespEndpoint:
    """Where and how to connect, parsed from a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    ssl_context: ssl.SSLContext | None

    @classmethod
    def from_url(cls, url: str) -> RespEndpoint:
        """Parse ``url``; query options: ``db``, ``ssl_cert_reqs`` (none/optional/required),
        ``ssl_ca_certs`` (CA bundle path), ``ssl_check_hostname`` (true/false)."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if parts.scheme == "unix":
            return cls(None, 0, unquote(parts.path), int(query.get("db", 0)), username,
                       password or query.get("password"), None)  # fmt: skip
        db_text = parts.path.strip("/") or query.get("db", "0")
        context = None
        if parts.scheme == "rediss":
            context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
            reqs = query.get("ssl_cert_reqs", "required").lower()
            check = query.get("ssl_check_hostname", "true").lower() not in ("false", "0", "no")
            if reqs == "none":
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                context.check_hostname = check
                if reqs == "optional":
                    context.verify_mode = ssl.CERT_OPTIONAL
        return cls(parts.hostname or "localhost", parts.port or 6379, None, int(db_text),
                   username, password, context)  # fmt: skip


class RespClient:
    """One multiplexed connection to one Redis server, (re)connected on demand."""

    def __init__(self, endpoint: RespEndpoint, *, connect_timeout: float, timeout: float) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._closed = False

    async def execute_packed(self, packed: bytes) -> Any:
        """Send one pre-encoded command and return its reply (raise its error)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connect()
        reply = await protocol.send(packed)
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def execute(self, *args: bytes | str | int) -> Any:
        """Send one command and return its reply."""
        return await self.execute_packed(encode_command(*args))

    async def _connect(self) -> _Protocol:
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        if self._connecting is not None:
            # Another task is connecting: share its outcome (one connect, not N).
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            protocol = await self._open_connection(loop)
        except BaseException as exc:
            connecting, self._connecting = self._connecting, None
            # Tasks sharing this attempt see a connection error, never the
            # CancelledError of the task that happened to start the attempt.
            shared = exc
            if not isinstance(exc, Exception):
                shared = RedisConnectionError("connecting to Redis was interrupted")
            connecting.set_exception(shared)
            connecting.exception()  # retrieved, even if nobody else waited
            raise
        self._protocol = protocol
        connecting, self._connecting = self._connecting, None
        connecting.set_result(protocol)
        return protocol

    async def _open_connection(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        endpoint = self.endpoint
        where = endpoint.path or f"{endpoint.host}:{endpoint.port}"
        protocol = _Protocol(loop, self.timeout)
        try:
            async with asyncio.timeout(self.connect_timeout):
                if endpoint.path is not None:
                    await loop.create_unix_connection(lambda: protocol, endpoint.path)
                else:
                    assert endpoint.host is not None
                    await loop.create_connection(
                        lambda: protocol, endpoint.host, endpoint.port,
                        ssl=endpoint.ssl_context,
                        server_hostname=endpoint.host if endpoint.ssl_context else None,
                    )  # fmt: skip
        except TimeoutError as exc:
            raise RedisTimeoutError(f"connecting to Redis at {where} timed out") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {where}: {exc}") from exc
        try:
            handshake = []
            if endpoint.password is not None:
                auth = (
                    (endpoint.username, endpoint.password)
                    if endpoint.username
                    else (endpoint.password,)
                )
                handshake.append(protocol.send(encode_command("AUTH", *auth)))
            if endpoint.db:
                handshake.append(protocol.send(encode_command("SELECT", endpoint.db)))
            for reply in await asyncio.gather(*handshake):
                if isinstance(reply, RedisError):
                    raise reply
        except BaseException:
            protocol.abort(RedisConnectionError("handshake with Redis failed"))
            raise
        return protocol

    async def aclose(self) -> None:
        """Close the connection; pending requests fail with ConnectionError."""
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.lost = protocol.lost or RedisConnectionError("the Redis client was closed")
            protocol.transport.close()
            protocol._fail_pending(protocol.lost)
            await asyncio.sleep(0)  # let the transport finish closing
