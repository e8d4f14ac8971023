"""The lifecycle every backend gets from the core (docs/writing-plugins.md, "Lifecycle"),
and the helpers that keep a plugin short: enter_async_context, push_async_callback and
translate_errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.backends.memory import MemoryStorage, MemoryStorageSettings


class ConnectionStorage(MemoryStorage):
    """A backend written the usual way: ``open()`` starts a driver's connection thread
    (as aiosqlite does), ``aclose()`` stops it. ``fail_open`` makes ``open()`` raise
    after the thread started, as when the schema check finds a locked database."""

    def __init__(self, *, fail_open: bool = False, fail_close: bool = False) -> None:
        super().__init__(MemoryStorageSettings())
        self.fail_open, self.fail_close = fail_open, fail_close
        self.threads: list[threading.Thread] = []
        self.opens = self.closes = 0
        self._stop = threading.Event()

    async def open(self) -> None:
        self.opens += 1
        self._stop.clear()
        thread = threading.Thread(target=self._stop.wait, name="driver-connection")
        thread.start()
        self.threads.append(thread)
        await asyncio.sleep(0.01)  # others arrive while this open() is under way
        if self.fail_open:
            raise sqlite3.OperationalError("database is locked")
        await super().open()

    async def aclose(self) -> None:
        self.closes += 1
        self._stop.set()
        for thread in self.threads:
            await asyncio.to_thread(thread.join)
        await super().aclose()
        if self.fail_close:
            raise RuntimeError("close failed too")

    @property
    def leaked(self) -> list[threading.Thread]:
        return [thread for thread in self.threads if thread.is_alive()]


@pytest.mark.asyncio
async def test_aclose_runs_after_a_failed_open_and_the_error_propagates() -> None:
    storage = ConnectionStorage(fail_open=True)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        async with storage:
            pass
    assert (storage.opens, storage.closes, storage.leaked) == (1, 1, [])
    # Lazily opened by the first operation: the same.
    with pytest.raises(sqlite3.OperationalError):
        await storage.file_exists("a")
    assert (storage.opens, storage.closes, storage.leaked) == (2, 2, [])
    storage.fail_open = False  # the next use tries again, and works
    async with storage:
        assert not await storage.file_exists("a")
    assert storage.leaked == []


@pytest.mark.asyncio
async def test_open_runs_once_for_concurrent_first_users() -> None:
    storage = ConnectionStorage()
    try:
        results = await asyncio.gather(*(storage.file_exists(f"k{i}") for i in range(20)))
        assert results == [False] * 20
        assert storage.opens == 1
    finally:
        await storage.aclose()
    assert storage.leaked == []


@pytest.mark.asyncio
async def test_concurrent_first_users_of_a_failing_open_leak_nothing() -> None:
    storage = ConnectionStorage(fail_open=True)
    results = await asyncio.gather(
        *(storage.file_exists(f"k{i}") for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    assert storage.opens == storage.closes >= 1  # each waiter tries in turn, each cleans up
    assert storage.leaked == []


@pytest.mark.asyncio
async def test_an_error_of_aclose_is_logged_not_raised_over_the_open_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = ConnectionStorage(fail_open=True, fail_close=True)
    with (
        caplog.at_level(logging.WARNING, logger="voice_infra.base"),
        pytest.raises(sqlite3.OperationalError, match="locked"),
    ):
        await storage.get_file_info("a")
    assert storage.leaked == []
    [record] = caplog.records
    assert "aclose() after a failed open() raised too" in record.getMessage()
    assert "OperationalError" in record.getMessage()
    assert record.exc_info is not None and "close failed too" in str(record.exc_info[1])


@pytest.mark.asyncio
async def test_a_cancelled_open_is_closed_too() -> None:
    started = asyncio.Event()

    class Slow(ConnectionStorage):
        async def open(self) -> None:
            self.threads.append(threading.Thread(target=self._stop.wait))
            self.threads[-1].start()
            started.set()
            await asyncio.sleep(3600)  # a server that never answers

    storage = Slow()
    task = asyncio.create_task(storage.file_exists("a"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (storage.closes, storage.leaked) == (1, [])


@pytest.mark.asyncio
async def test_enter_async_context_and_push_async_callback_are_released_by_aclose() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def connection(name: str) -> AsyncIterator[str]:
        events.append(f"connect {name}")
        try:
            yield name
        finally:
            events.append(f"disconnect {name}")

    async def note(text: str) -> None:
        events.append(text)

    class Helped(MemoryStorage):
        fail = False

        async def open(self) -> None:
            self.db = await self.enter_async_context(connection("db"))
            self.push_async_callback(note, "callback")
            await self.enter_async_context(connection("cache"))
            if self.fail:
                raise vi.StorageUnavailableError("cache is cold")
            await super().open()

    storage = Helped(MemoryStorageSettings())
    async with storage:
        assert storage.db == "db"
    assert events == ["connect db", "connect cache", "disconnect cache", "callback",
                      "disconnect db"]  # fmt: skip
    events.clear()
    storage.fail = True
    with pytest.raises(vi.StorageUnavailableError):
        await storage.file_exists("a")
    assert events[-3:] == ["disconnect cache", "callback", "disconnect db"]
    events.clear()
    await storage.aclose()  # nothing held: nothing runs twice
    assert events == []


# -- translate_errors -----------------------------------------------------------------


def test_translate_errors_maps_the_first_matching_family_and_keeps_the_cause() -> None:
    mapping = {sqlite3.OperationalError: vi.StorageUnavailableError, sqlite3.Error: vi.StorageError}
    translate = vi.translate_errors(mapping, "SQLite database 'x.db'")
    with pytest.raises(vi.StorageUnavailableError) as caught, translate:
        raise sqlite3.OperationalError("database is locked")
    assert str(caught.value) == "SQLite database 'x.db': OperationalError: database is locked"
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert caught.value.retryable  # a StorageUnavailableError is a BackendUnavailableError
    with pytest.raises(vi.StorageError) as other, vi.translate_errors(mapping, "db"):
        raise sqlite3.IntegrityError("constraint")
    assert type(other.value) is vi.StorageError
    # Ours pass through; what the mapping does not name passes through unchanged.
    with pytest.raises(vi.ObjectNotFoundError), vi.translate_errors(mapping, "db"):
        raise vi.ObjectNotFoundError("missing")
    with pytest.raises(KeyError), vi.translate_errors(mapping, "db"):
        raise KeyError("bug")


@pytest.mark.asyncio
async def test_translate_errors_inside_an_async_generator() -> None:
    async def rows() -> AsyncIterator[int]:
        with vi.translate_errors({(OSError, TimeoutError): vi.StorageUnavailableError}, "fetch"):
            yield 1
            raise ConnectionResetError("peer reset")

    with pytest.raises(vi.StorageUnavailableError, match="fetch: ConnectionResetError"):
        _ = [row async for row in rows()]
    stream = rows()
    assert await anext(stream) == 1
    await stream.aclose()  # GeneratorExit is not translated


# Anything a URL's password can hold: no '/', '@' or whitespace.
_PASSWORD_CHARACTERS = st.characters(
    blacklist_characters="/@", blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")
)


@given(password=st.text(_PASSWORD_CHARACTERS, min_size=1))
def test_translate_errors_never_repeats_a_url_password(password: str) -> None:
    translate = vi.translate_errors({OSError: vi.StorageUnavailableError}, "server")
    with pytest.raises(vi.StorageUnavailableError) as caught, translate:
        raise OSError(f"cannot reach redis://user:{password}@127.0.0.1:6379/0")
    assert f":{password}@" not in str(caught.value)
    assert "redis://user:***@127.0.0.1:6379/0" in str(caught.value)
