"""Conformance suites every backend passes.

Subclass a contract in your plugin's tests and supply the one fixture it needs::

    import pytest
    import voice_infra as vi
    from voice_infra.testing import StorageContract, RateLimiterContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage_backend(self):
            settings = vi.Settings.from_keywords(storage={"backend": "mystore", ...})
            return vi.create_storage(settings)

    class TestMyLimiter(RateLimiterContract):
        @pytest.fixture
        def rate_limiter_factory(self):
            def build(policies):
                return vi.create_rate_limiter(vi.Settings.from_keywords(
                    rate_limit={"backend": "mylimiter", "policies": policies}
                ))
            return build

    class TestMyCache(CacheContract):
        @pytest.fixture
        def cache_factory(self):
            def build(**options):  # key_prefix, default_ttl, max_ttl, max_value_size
                return vi.create_cache(vi.Settings.from_keywords(
                    cache={"backend": "mycache", **options}
                ))
            return build

``Settings.from_keywords`` reads no ``VOICE_INFRA_*`` variable and no TOML file, so the
developer's environment cannot change what is tested. Fixtures return backends *not
yet opened*; the suites open and close them. Tests of optional features are skipped
when the backend lacks the capability flag, with a reason naming the flag and how to
declare it (the test kit's pytest plugin lists them at the end of the run). Every test
uses keys of its own, so a shared server needs no reset. Tests and fixtures run in a
function-scoped event loop whatever ``asyncio_default_*_loop_scope`` says.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from voice_infra.cache import MAX_CACHE_KEY_BYTES, CacheBackend
from voice_infra.errors import (
    CacheValueTooLargeError,
    InvalidByteRangeError,
    InvalidCacheKeyError,
    InvalidCacheTTLError,
    InvalidCacheValueError,
    InvalidCostError,
    InvalidMetadataError,
    InvalidObjectKeyError,
    InvalidPresignedURLError,
    InvalidRateLimitKeyError,
    ObjectChangedError,
    ObjectNotFoundError,
    RateLimitExceededError,
)
from voice_infra.layers import unwrap
from voice_infra.models import VoiceFileInfo
from voice_infra.ratelimit import RateLimiter
from voice_infra.storage import SignedURLStorage, StorageBackend
from voice_infra.testing.helpers import opened_backends

try:
    import pytest_asyncio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "voice_infra.testing needs pytest-asyncio: pip install 'voice-infra[test]'"
    ) from exc

__all__ = ["INVALID_OBJECT_KEYS", "CacheContract", "RateLimiterContract", "StorageContract"]

# The kit's own tests and fixtures pin their event loop, so they work whatever loop
# scopes the plugin's pytest configuration sets for its own async code.
asyncio_test = pytest.mark.asyncio(loop_scope="function")
kit_fixture = pytest_asyncio.fixture(loop_scope="function")

# Each invalid key with (a pattern of) what the error must say about it.
_INVALID_OBJECT_KEY_MESSAGES = {
    "": "non-empty string",
    "/absolute": "must not start with '/'",
    "../escape": "'..' path segment",
    "a/../../escape": "'..' path segment",
    "a/./b": "'.' or '..' path segment",
    "a//b": "empty, '.' or '..' path segment",
    "trailing/": "must not end with '/'",
    "nul\x00byte": r"control or format character U\+0000",
    "new\nline": r"control or format character U\+000A",
    "x" * 1025: "1025 bytes long; S3 allows at most 1024",
    "é" * 513: "1026 bytes long",  # 1026 bytes in UTF-8
}
# Refused for new objects only: reads and deletes accept them, so that objects stored
# under them before the rule tightened (or by other tools) stay reachable.
_UNWRITABLE_OBJECT_KEY_MESSAGES = {
    "c1\x85control": r"control or format character U\+0085",
    "bidi\u202eoverride": r"U\+202E \(RIGHT-TO-LEFT OVERRIDE\)",
    "line\u2028separator": r"U\+2028 \(LINE SEPARATOR\)",
    "soft\u00adhyphen": r"U\+00AD \(SOFT HYPHEN\)",
}
INVALID_OBJECT_KEYS = [*_INVALID_OBJECT_KEY_MESSAGES, *_UNWRITABLE_OBJECT_KEY_MESSAGES]

# Names (under a test's prefix) that a prefix match must take literally: wildcards and
# escapes of SQL LIKE, globs and regular expressions, names differing only in case, and
# multi-byte characters whose UTF-8 byte order differs from UTF-16's or a collation's.
LITERAL_LISTING_NAMES = [
    "rec/a.wav", "Rec/b.wav", "REC/c.wav", "re%/d.wav", "re_/e.wav", "rex/f.wav",
    "a_c", "abc", "aXc", "a%c", "a%%", "a*c", "a?c", "a[b]c", "a[^b]c", "ab]c", "a\\c",
    "a\\%c", "a.c", "a^c", "a$c", "a+c", "a(c)", "a{1}c", "a|c", "a-c", "a/c", "a0",
    "ABC", "Abc", "aBc", "abC", "ß", "ss", "SS", "é", "e\u0301", "f", "Z",
    "\ue000", "\U0001f600", "\U0001f600x", "日本", "日本語", "ü ñ", "ü_ñ",
]  # fmt: skip


#: Every capability skip reason starts with this (the pytest plugin collects them).
SKIP_PREFIX = "voice-infra:"
NO_CAPABILITIES_DECLARED = "declares no capabilities at all"


def _require(backend: StorageBackend | RateLimiter | CacheBackend, capability: str) -> None:
    """Skip the calling test, saying which flag is missing and how to declare it."""
    if capability in backend.capabilities:
        return
    cls = type(unwrap(backend)).__name__
    name = f"{backend.backend_name!r} ({cls})" if backend.backend_name else cls
    how = (
        f"declare it on the class (capabilities = frozenset({{{capability!r}, ...}})) "
        "or in BackendSpec(capabilities=...)"
    )
    if backend.capabilities_declared:
        reason = (
            f"{SKIP_PREFIX} backend {name} lacks the {capability!r} capability (not "
            "declared, or turned off by its settings), so this optional test does not "
            f"apply; if the backend has the feature, {how}"
        )
    else:
        reason = (
            f"{SKIP_PREFIX} backend {name} {NO_CAPABILITIES_DECLARED} (built without the "
            f"registry, and its class declares none), so the {capability!r} tests are "
            f"skipped; {how}, or capabilities = frozenset() if it has no optional feature"
        )
    pytest.skip(reason)


def _http(method: str, url: str, data: bytes | None = None) -> bytes:
    """One plain HTTP request, as a browser or ``curl`` would send it (run in a thread)."""
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        # urllib labels a body application/x-www-form-urlencoded, which some servers
        # parse as a form (moto then stores an empty object): say what it is.
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()[:300]
        where = url.split("?", 1)[0]
        raise AssertionError(
            f"presigned {method} of {where} answered HTTP {exc.code}: {body!r}"
        ) from None


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[start : start + size]


class StorageContract:
    """The behaviour every storage backend shares. Supply ``storage_backend``."""

    #: Bytes uploaded by the ``multipart``-gated tests: above the backend's multipart
    #: threshold as configured by your ``storage_backend`` fixture.
    multipart_upload_size = 20 * 1024 * 1024

    @pytest.fixture
    def storage_backend(self) -> StorageBackend:
        raise NotImplementedError("override the storage_backend fixture in your subclass")

    @kit_fixture
    async def storage(self, storage_backend: StorageBackend) -> AsyncIterator[StorageBackend]:
        async with storage_backend as opened:
            yield opened

    @pytest.fixture
    def prefix(self) -> str:
        return f"contract/{uuid.uuid4().hex}"

    # -- upload / download ---------------------------------------------------------

    @asyncio_test
    async def test_upload_returns_complete_info(self, storage: StorageBackend, prefix: str) -> None:
        data = b"RIFF" + bytes(range(256)) * 4
        before = datetime.now(UTC)
        info = await storage.upload_file(
            data, object_key=f"{prefix}/a.wav", content_type="audio/wav",
            metadata={"duration-ms": "1200"},
        )  # fmt: skip
        assert info.object_key == f"{prefix}/a.wav"
        assert info.bucket_name == storage.bucket_name
        assert info.file_size == len(data)
        assert info.content_type == "audio/wav"
        assert info.checksum == hashlib.sha256(data).hexdigest()
        assert info.metadata == {"duration-ms": "1200"}
        assert info.upload_time.utcoffset() is not None
        assert abs((info.upload_time - before).total_seconds()) < 60

    @asyncio_test
    async def test_bytes_round_trip(self, storage: StorageBackend, prefix: str) -> None:
        data = b"\x00\x01voice\xff" * 1000
        await storage.upload_file(data, object_key=f"{prefix}/bytes.bin")
        assert await storage.download_file(f"{prefix}/bytes.bin") == data

    @asyncio_test
    async def test_empty_object_round_trip(self, storage: StorageBackend, prefix: str) -> None:
        info = await storage.upload_file(b"", object_key=f"{prefix}/empty")
        assert info.file_size == 0
        assert await storage.download_file(f"{prefix}/empty") == b""
        assert (await storage.get_file_info(f"{prefix}/empty")).file_size == 0

    @asyncio_test
    async def test_upload_from_path(
        self, storage: StorageBackend, prefix: str, tmp_path: Path
    ) -> None:
        source = tmp_path / "clip.wav"
        source.write_bytes(b"RIFF-from-path" * 500)
        info = await storage.upload_file(source, object_key=f"{prefix}/p.wav")
        assert info.file_size == source.stat().st_size
        assert await storage.download_file(f"{prefix}/p.wav") == source.read_bytes()
        info = await storage.upload_file(str(source), object_key=f"{prefix}/s.wav")
        assert await storage.download_file(f"{prefix}/s.wav") == source.read_bytes()

    @asyncio_test
    async def test_upload_from_file_object(self, storage: StorageBackend, prefix: str) -> None:
        data = b"file-object" * 333
        info = await storage.upload_file(io.BytesIO(data), object_key=f"{prefix}/f.bin")
        assert info.file_size == len(data)
        assert await storage.download_file(f"{prefix}/f.bin") == data

    @asyncio_test
    async def test_upload_from_async_iterable(self, storage: StorageBackend, prefix: str) -> None:
        data = bytes(range(256)) * 12_289  # ~3 MiB, not a multiple of any chunk size
        info = await storage.upload_file(_chunks(data, 65_521), object_key=f"{prefix}/it.bin")
        assert info.file_size == len(data)
        assert info.checksum == hashlib.sha256(data).hexdigest()
        assert await storage.download_file(f"{prefix}/it.bin") == data

    @pytest.mark.parametrize(
        "source", ["bytes", "path", "file-object", "async-iterable", "multipart-stream"]
    )
    @asyncio_test
    async def test_checksum_is_sha256_of_stored_bytes(
        self, storage: StorageBackend, prefix: str, tmp_path: Path, source: str
    ) -> None:
        """``upload_file``'s result and ``get_file_info`` both report the SHA-256 of the
        stored bytes, whatever the source; ``download_file`` returns exactly those bytes."""
        key = f"{prefix}/sum-{source}.bin"
        data = bytes(range(251)) * 4099  # ~1 MiB, not a multiple of any chunk size
        body: Any = data
        if source == "multipart-stream":
            _require(storage, "multipart")  # a stream larger than a part
            data = bytes(range(251)) * (self.multipart_upload_size // 251 + 1)
            body = _chunks(data, 1024 * 1024)
        elif source == "path":
            body = tmp_path / "source.bin"
            body.write_bytes(data)
        elif source == "file-object":
            body = io.BytesIO(data)
        elif source == "async-iterable":
            body = _chunks(data, 65_521)
        expected = hashlib.sha256(data).hexdigest()
        uploaded = await storage.upload_file(body, object_key=key)
        assert uploaded.checksum == expected, "upload_file's result has the wrong checksum"
        stored = await storage.get_file_info(key)
        assert stored.checksum == expected, (
            f"get_file_info reports checksum {stored.checksum!r}, not the SHA-256 of the "
            f"bytes uploaded ({expected}); store it with the object"
        )
        assert stored.file_size == len(data)
        digest, size = hashlib.sha256(), 0
        async for chunk in storage.stream_file(key):
            digest.update(chunk)
            size += len(chunk)
        assert (size, digest.hexdigest()) == (len(data), expected), "stored bytes differ"
        if len(data) <= 4 * 1024 * 1024:
            assert await storage.download_file(key) == data

    @asyncio_test
    async def test_checksum_follows_overwrite(self, storage: StorageBackend, prefix: str) -> None:
        key = f"{prefix}/sum-over.bin"
        await storage.upload_file(b"first version", object_key=key)
        await storage.upload_file(b"second", object_key=key)
        expected = hashlib.sha256(b"second").hexdigest()
        assert (await storage.get_file_info(key)).checksum == expected
        listed = [info async for info in storage.list_files(key)]
        assert [info.object_key for info in listed] == [key]
        # A listing may leave the checksum out (None); one it reports must be right.
        assert listed[0].checksum in (None, expected)

    @asyncio_test
    async def test_overwrite_replaces_content(self, storage: StorageBackend, prefix: str) -> None:
        key = f"{prefix}/over.bin"
        await storage.upload_file(b"first version", object_key=key, content_type="text/plain")
        await storage.upload_file(b"second", object_key=key, content_type="audio/wav")
        assert await storage.download_file(key) == b"second"
        info = await storage.get_file_info(key)
        assert (info.file_size, info.content_type) == (6, "audio/wav")

    @asyncio_test
    async def test_failed_upload_leaves_nothing(self, storage: StorageBackend, prefix: str) -> None:
        key = f"{prefix}/broken.bin"

        async def failing() -> AsyncIterator[bytes]:
            yield b"x" * 100_000
            raise OSError("microphone unplugged")

        with pytest.raises(OSError, match="microphone unplugged"):
            await storage.upload_file(failing(), object_key=key)
        assert not await storage.file_exists(key)
        assert [i async for i in storage.list_files(prefix)] == []

    @asyncio_test
    async def test_failed_overwrite_keeps_previous(
        self, storage: StorageBackend, prefix: str
    ) -> None:
        key = f"{prefix}/keep.bin"
        await storage.upload_file(b"good", object_key=key)

        async def failing() -> AsyncIterator[bytes]:
            yield b"bad"
            raise OSError("stream broke")

        with pytest.raises(OSError):
            await storage.upload_file(failing(), object_key=key)
        assert await storage.download_file(key) == b"good"

    @asyncio_test
    async def test_generated_key_layout(self, storage: StorageBackend) -> None:
        info = await storage.upload_file(b"RIFF", user_id="42", content_type="audio/wav")
        try:
            today = info.upload_time
            prefix = re.escape(storage.settings.key_prefix)
            pattern = rf"^{prefix}/42/\d{{4}}/\d{{2}}/\d{{2}}/[0-9a-f]{{32}}\.wav$"
            assert re.match(pattern, info.object_key), info.object_key
            assert f"/{today:%Y}/" in info.object_key
            assert info.metadata.get("user-id") == "42"
            assert await storage.download_file(info.object_key) == b"RIFF"
        finally:
            await storage.delete_file(info.object_key)

    @asyncio_test
    async def test_generated_keys_do_not_collide(self, storage: StorageBackend) -> None:
        keys = {storage.generate_object_key("u/../1", "audio/ogg") for _ in range(1000)}
        assert len(keys) == 1000
        assert all(".." not in key.split("/") and key.endswith(".ogg") for key in keys)

    @asyncio_test
    async def test_unicode_and_nested_keys(self, storage: StorageBackend, prefix: str) -> None:
        keys = [f"{prefix}/ü ñ/a b%20.wav", f"{prefix}/a", f"{prefix}/a/b", f"{prefix}/a.b/c"]
        for index, key in enumerate(keys):
            await storage.upload_file(str(index).encode(), object_key=key)
        for index, key in enumerate(keys):
            assert await storage.download_file(key) == str(index).encode()
        listed = [info.object_key async for info in storage.list_files(prefix)]
        assert listed == sorted(keys, key=lambda k: k.encode())

    # -- info, exists, delete -------------------------------------------------------

    @asyncio_test
    async def test_info_matches_upload(self, storage: StorageBackend, prefix: str) -> None:
        uploaded = await storage.upload_file(
            b"abc" * 100, object_key=f"{prefix}/i.ogg", content_type="audio/ogg",
            metadata={"lang": "en", "speaker": "s-1"},
        )  # fmt: skip
        info = await storage.get_file_info(f"{prefix}/i.ogg")
        assert info.object_key == uploaded.object_key
        assert info.file_size == 300
        assert info.content_type == "audio/ogg"
        assert info.metadata == {"lang": "en", "speaker": "s-1"}
        assert info.upload_time.utcoffset() is not None

    @asyncio_test
    async def test_exists_and_delete(self, storage: StorageBackend, prefix: str) -> None:
        key = f"{prefix}/d.bin"
        assert not await storage.file_exists(key)
        await storage.upload_file(b"x", object_key=key)
        assert await storage.file_exists(key)
        assert await storage.delete_file(key) is True
        assert not await storage.file_exists(key)
        assert await storage.delete_file(key) is False

    @asyncio_test
    async def test_missing_object_raises_not_found(
        self, storage: StorageBackend, prefix: str
    ) -> None:
        key = f"{prefix}/missing.wav"
        with pytest.raises(ObjectNotFoundError, match=r"missing\.wav"):
            await storage.download_file(key)
        with pytest.raises(ObjectNotFoundError):
            await storage.get_file_info(key)
        with pytest.raises(ObjectNotFoundError):
            async for _ in storage.stream_file(key):
                pass

    # -- streaming and listing ---------------------------------------------------------

    @asyncio_test
    async def test_stream_file_in_chunks(self, storage: StorageBackend, prefix: str) -> None:
        data = bytes(range(256)) * 1024  # 256 KiB
        await storage.upload_file(data, object_key=f"{prefix}/s.bin")
        chunks = [c async for c in storage.stream_file(f"{prefix}/s.bin", chunk_size=65_536)]
        assert b"".join(chunks) == data
        assert all(0 < len(chunk) <= 65_536 for chunk in chunks)
        assert len(chunks) >= 4

    @asyncio_test
    async def test_stream_file_stopped_early(self, storage: StorageBackend, prefix: str) -> None:
        data = b"z" * 300_000
        await storage.upload_file(data, object_key=f"{prefix}/early.bin")
        for _ in range(20):  # a leak of connections or handles would show up here
            stream = storage.stream_file(f"{prefix}/early.bin", chunk_size=1024)
            first = await anext(stream)
            await stream.aclose()
            assert first == b"z" * len(first)
        assert await storage.download_file(f"{prefix}/early.bin") == data

    @asyncio_test
    async def test_stream_range(self, storage: StorageBackend, prefix: str) -> None:
        """``stream_range`` works on every backend (``range_read`` only says it is cheap,
        and a backend that declares it reads the range itself)."""
        if "range_read" in storage.capabilities:
            assert type(unwrap(storage))._read_range is not StorageBackend._read_range, (
                "the backend declares range_read but does not override _read_range"
            )
        data = bytes(range(256)) * 40  # 10240 bytes
        key = f"{prefix}/range.bin"
        await storage.upload_file(data, object_key=key)

        async def read(start: int, end: int | None = None, chunk_size: int | None = None) -> bytes:
            chunks = [c async for c in storage.stream_range(key, start, end, chunk_size=chunk_size)]
            if chunk_size is not None:
                assert all(len(c) <= chunk_size for c in chunks)
            return b"".join(chunks)

        assert await read(100, 199) == data[100:200]
        assert await read(0, 0) == data[:1]
        assert await read(9000) == data[9000:]
        assert await read(1000, 5000, chunk_size=1024) == data[1000:5001]
        assert await read(10000, 99999) == data[10000:]  # past the end: stops there
        assert await read(len(data)) == b""  # starts at the end: nothing
        assert await read(len(data) + 50, len(data) + 60) == b""
        for start, end in ((-1, None), (5, 4), (1.5, None), (None, None), (0, "9")):
            with pytest.raises(InvalidByteRangeError, match=r"byte range|whole number"):
                await read(start, end)  # type: ignore[arg-type]
        with pytest.raises(ObjectNotFoundError):
            async for _ in storage.stream_range(f"{prefix}/missing", 0):
                pass

    @asyncio_test
    async def test_stream_range_of_an_expected_version(
        self, storage: StorageBackend, prefix: str
    ) -> None:
        """``stream_range(expected=info)`` reads the version ``info`` describes, or raises
        ``ObjectChangedError`` before the first byte once the object was replaced or
        deleted (a server that promised that version's ``Content-Length`` and ``ETag``
        must not send another's bytes)."""
        if "versioned_read" in storage.capabilities:
            assert type(unwrap(storage))._open_range is not StorageBackend._open_range, (
                "the backend declares versioned_read but does not override _open_range"
            )
        key = f"{prefix}/versioned.bin"
        first = bytes(range(256)) * 8
        await storage.upload_file(first, object_key=key)
        before = await storage.get_file_info(key)

        async def read(expected: VoiceFileInfo, start: int = 0, end: int | None = None) -> bytes:
            chunks = storage.stream_range(key, start, end, expected=expected, chunk_size=512)
            return b"".join([chunk async for chunk in chunks])

        assert await read(before) == first
        assert await read(before, 10, 19) == first[10:20]
        for _ in range(10):  # stopped early: the opened file or response is released
            stream = storage.stream_range(key, 0, expected=before, chunk_size=256)
            assert await anext(stream) == first[:256]
            await stream.aclose()
        second = b"second version"
        await storage.upload_file(second, object_key=key)
        received: list[bytes] = []
        with pytest.raises(ObjectChangedError, match=r"versioned\.bin"):
            async for chunk in storage.stream_range(key, 0, expected=before):
                received.append(chunk)
        assert received == []  # refused before any byte
        after = await storage.get_file_info(key)
        assert await read(after) == second
        assert await storage.delete_file(key)
        with pytest.raises(ObjectChangedError):
            await read(after)

    @asyncio_test
    async def test_versioned_read_never_mixes_versions(
        self, storage: StorageBackend, prefix: str
    ) -> None:
        """With ``versioned_read``, readers racing a writer that keeps replacing the
        object get, for each info they read, that version's bytes or
        ``ObjectChangedError``: never another version's bytes."""
        _require(storage, "versioned_read")
        key = f"{prefix}/raced.bin"
        versions = [b"a" * 10, b"b" * 90_000]
        await storage.upload_file(versions[0], object_key=key)
        started = time.perf_counter()
        info = await storage.get_file_info(key)
        assert b"".join([c async for c in storage.stream_range(key, 0, expected=info)])
        one_read = time.perf_counter() - started
        done = False
        served = changed = 0

        async def writer() -> None:
            turn = 1
            while not done:
                await storage.upload_file(versions[turn % 2], object_key=key)
                turn += 1
                # Now at once, now after about one read: replacements land anywhere in
                # a read, and some reads have a window to finish in (an in-process
                # backend's upload never suspends by itself).
                await asyncio.sleep(one_read * (turn % 3))

        async def reader() -> None:
            nonlocal served, changed
            for _ in range(15):
                info = await storage.get_file_info(key)
                try:
                    data = b"".join([c async for c in storage.stream_range(key, 0, expected=info)])
                except ObjectChangedError:
                    changed += 1
                    continue
                served += 1
                assert len(data) == info.file_size
                assert hashlib.sha256(data).hexdigest() == info.checksum

        writing = asyncio.ensure_future(writer())
        try:
            await asyncio.gather(*(reader() for _ in range(3)))
        finally:
            done = True
            await writing
        assert served + changed == 45 and served > 0

    @asyncio_test
    async def test_multipart_upload_round_trips(self, storage: StorageBackend, prefix: str) -> None:
        _require(storage, "multipart")
        threshold = getattr(storage.settings, "multipart_threshold", None)
        assert threshold is None or self.multipart_upload_size > threshold, (
            f"multipart_upload_size ({self.multipart_upload_size}) must exceed the "
            f"backend's multipart_threshold ({threshold}), or this test sends one PUT"
        )
        data = bytes(range(256)) * (self.multipart_upload_size // 256)
        key = f"{prefix}/multipart.bin"
        info = await storage.upload_file(_chunks(data, 1024 * 1024), object_key=key)
        assert info.file_size == len(data)
        assert info.checksum == hashlib.sha256(data).hexdigest()
        digest = hashlib.sha256()
        async for chunk in storage.stream_file(key):
            digest.update(chunk)
        assert digest.hexdigest() == info.checksum
        assert (await storage.get_file_info(key)).file_size == len(data)

    @asyncio_test
    async def test_failed_multipart_upload_leaves_nothing(
        self, storage: StorageBackend, prefix: str
    ) -> None:
        _require(storage, "multipart")
        key = f"{prefix}/broken-multipart.bin"

        async def fails_late() -> AsyncIterator[bytes]:
            async for chunk in _chunks(b"\x01" * self.multipart_upload_size, 1024 * 1024):
                yield chunk
            raise OSError("source failed after the last part")

        with pytest.raises(OSError, match="after the last part"):
            await storage.upload_file(fails_late(), object_key=key)
        assert not await storage.file_exists(key)
        # (Whether parts were left behind is backend-specific: the S3 plugin's own tests
        # list incomplete uploads with a raw client. Aborting here would touch uploads
        # of other users of a shared bucket.)

    @asyncio_test
    async def test_list_files_by_prefix(self, storage: StorageBackend, prefix: str) -> None:
        keys = [f"{prefix}/list/{i:03d}.wav" for i in range(25)]
        await asyncio.gather(*(storage.upload_file(b"w", object_key=k) for k in keys))
        await storage.upload_file(b"other", object_key=f"{prefix}/other/1.wav")
        listed = [info async for info in storage.list_files(f"{prefix}/list/")]
        assert [i.object_key for i in listed] == keys
        assert all(i.file_size == 1 for i in listed)
        partial = [i.object_key async for i in storage.list_files(f"{prefix}/list/00")]
        assert partial == keys[:10]
        assert [i async for i in storage.list_files(f"{prefix}/nothing-here/")] == []

    @asyncio_test
    async def test_list_prefixes_need_not_be_keys(
        self, storage: StorageBackend, prefix: str
    ) -> None:
        for name in (".hidden", "..twice", "plain"):
            await storage.upload_file(b"x", object_key=f"{prefix}/{name}")

        async def keys(under: str) -> list[str]:
            return [info.object_key async for info in storage.list_files(under)]

        assert await keys(f"{prefix}/.") == [f"{prefix}/..twice", f"{prefix}/.hidden"]
        assert await keys(f"{prefix}/..") == [f"{prefix}/..twice"]
        # No valid key starts like these: nothing is listed (and nothing outside is walked).
        for impossible in (f"/{prefix}", f"{prefix}/../", f"{prefix}//", f"{prefix}/./"):
            assert await keys(impossible) == []
        assert await keys(f"{prefix}/\u202e") == []  # readable rule: a prefix, but no match
        for bad in (f"{prefix}/\x00", f"{prefix}/\x7f", "x" * 1025):
            with pytest.raises(InvalidObjectKeyError, match="prefix"):
                await keys(bad)

    @asyncio_test
    async def test_list_prefix_is_literal_and_byte_ordered(
        self, storage: StorageBackend, prefix: str
    ) -> None:
        """A prefix matches exactly, byte for byte: ``_``, ``%``, ``*``, ``?``, ``[`` and
        ``\\`` are no wildcards or escapes, case matters, and a listing comes in UTF-8
        byte order (``Z`` < ``a`` < ``é`` < U+E000 < U+1F600)."""
        keys = [f"{prefix}/{name}" for name in LITERAL_LISTING_NAMES]
        for index, key in enumerate(keys):  # one at a time: a modest server copes
            await storage.upload_file(str(index).encode(), object_key=key)
        # Every prefix of every name, character by character, and a few that match none.
        prefixes = {f"{prefix}/{name[:end]}" for name in LITERAL_LISTING_NAMES
                    for end in range(len(name) + 1)}  # fmt: skip
        prefixes |= {f"{prefix}/{p}" for p in ("R", "re", "a_", "a%", "A", "E", "ss", "\u00e9t")}
        wrong = []
        for under in sorted(prefixes):
            expected = sorted((k for k in keys if k.startswith(under)), key=str.encode)
            listed = [info.object_key async for info in storage.list_files(under)]
            if listed != expected:
                wrong.append(f"list_files({under!r}) gave {listed!r}, expected {expected!r}")
        assert not wrong, f"{len(wrong)} of {len(prefixes)} prefixes listed wrongly:\n" + (
            "\n".join(wrong[:8])
        )

    @asyncio_test
    async def test_concurrent_uploads(self, storage: StorageBackend, prefix: str) -> None:
        payloads = {f"{prefix}/c/{i}": f"payload-{i}".encode() * (i + 1) for i in range(30)}
        await asyncio.gather(
            *(storage.upload_file(data, object_key=key) for key, data in payloads.items())
        )
        downloaded = await asyncio.gather(*(storage.download_file(key) for key in payloads))
        assert downloaded == list(payloads.values())

    # -- validation ----------------------------------------------------------------------

    @pytest.mark.parametrize(("key", "message"), list(_INVALID_OBJECT_KEY_MESSAGES.items()))
    @asyncio_test
    async def test_invalid_keys_rejected(
        self, storage: StorageBackend, key: str, message: str
    ) -> None:
        with pytest.raises(InvalidObjectKeyError, match=message):
            await storage.upload_file(b"x", object_key=key)
        with pytest.raises(InvalidObjectKeyError, match=message):
            await storage.download_file(key)
        with pytest.raises(InvalidObjectKeyError, match=message):
            await storage.get_file_info(key)
        with pytest.raises(InvalidObjectKeyError, match=message):
            await storage.delete_file(key)
        with pytest.raises(InvalidObjectKeyError, match=message):
            await storage.generate_presigned_url(key)

    @pytest.mark.parametrize(("key", "message"), list(_UNWRITABLE_OBJECT_KEY_MESSAGES.items()))
    @asyncio_test
    async def test_keys_refused_for_writing_are_still_readable(
        self, storage: StorageBackend, prefix: str, key: str, message: str
    ) -> None:
        key = f"{prefix}/{key}"
        with pytest.raises(InvalidObjectKeyError, match=message):
            await storage.upload_file(b"x", object_key=key)
        # Never stored, so reading finds nothing, and deleting has nothing to delete.
        with pytest.raises(ObjectNotFoundError):
            await storage.download_file(key)
        assert not await storage.file_exists(key)
        assert await storage.delete_file(key) is False

    @asyncio_test
    async def test_invalid_metadata_rejected(self, storage: StorageBackend, prefix: str) -> None:
        for metadata in ({"Upper": "x"}, {"ok": "naïve"}, {"ok": "line\nbreak"}, {"k": "v" * 3000}):
            with pytest.raises(InvalidMetadataError):
                await storage.upload_file(b"x", object_key=f"{prefix}/m", metadata=metadata)
        assert not await storage.file_exists(f"{prefix}/m")

    # -- presigned URLs --------------------------------------------------------------------

    @asyncio_test
    async def test_presigned_url(self, storage: StorageBackend, prefix: str) -> None:
        _require(storage, "presign")
        key = f"{prefix}/url.wav"
        await storage.upload_file(b"RIFF", object_key=key)
        url = await storage.generate_presigned_url(key, expires_in=3600)
        assert url.startswith(("http://", "https://"))
        assert "url.wav" in url
        put_url = await storage.generate_presigned_url(key, expires_in=60, method="PUT")
        assert put_url != url
        assert await storage.generate_presigned_url(key, expires_in=7 * 24 * 3600)

    async def redeem_presigned_get(self, storage: StorageBackend, url: str, key: str) -> bytes:
        """What a client gets from the presigned GET ``url`` of ``key``.

        A :class:`~voice_infra.SignedURLStorage` (``memory``, ``fs``) has its URLs served
        by the application, which checks them with ``verify_presigned_url`` and then reads
        the object: that is done here. Any other backend's URL is fetched with a plain HTTP
        client. Override this (and :meth:`redeem_presigned_put`) for a backend whose URLs
        are redeemed some other way.
        """
        signed = unwrap(storage)  # the backend inside any layers
        if isinstance(signed, SignedURLStorage):
            assert signed.verify_presigned_url(url, "GET") == key
            return await storage.download_file(key)
        return await asyncio.to_thread(_http, "GET", url)

    async def redeem_presigned_put(
        self, storage: StorageBackend, url: str, key: str, data: bytes
    ) -> None:
        """Upload ``data`` through the presigned PUT ``url`` of ``key`` (see
        :meth:`redeem_presigned_get`)."""
        signed = unwrap(storage)  # the backend inside any layers
        if isinstance(signed, SignedURLStorage):
            assert signed.verify_presigned_url(url, "PUT") == key
            await storage.upload_file(data, object_key=key)
            return
        await asyncio.to_thread(_http, "PUT", url, data)

    @pytest.mark.parametrize("name", ["url.wav", "ü ñ+%20 [x]&y=z#.wav"])
    @asyncio_test
    async def test_presigned_urls_are_redeemed(
        self, storage: StorageBackend, prefix: str, name: str
    ) -> None:
        """A presigned GET gives the object's bytes; a presigned PUT stores new ones."""
        _require(storage, "presign")
        key = f"{prefix}/{name}"
        data = b"RIFF" + bytes(range(256)) * 64
        await storage.upload_file(data, object_key=key)
        url = await storage.generate_presigned_url(key, expires_in=600)
        assert url.startswith(("http://", "https://")), url
        assert await self.redeem_presigned_get(storage, url, key) == data
        replacement = b"RIFF-put" + bytes(range(255, -1, -1)) * 64
        put_url = await storage.generate_presigned_url(key, expires_in=600, method="PUT")
        await self.redeem_presigned_put(storage, put_url, key, replacement)
        assert await storage.download_file(key) == replacement
        assert (await storage.get_file_info(key)).file_size == len(replacement)
        fresh = f"{prefix}/new-{name}"  # a PUT URL may name an object that does not exist
        put_url = await storage.generate_presigned_url(fresh, expires_in=600, method="PUT")
        await self.redeem_presigned_put(storage, put_url, fresh, data)
        assert await storage.download_file(fresh) == data
        signed = unwrap(storage)  # the backend inside any layers
        if isinstance(signed, SignedURLStorage):  # the application's check refuses misuse
            with pytest.raises(InvalidPresignedURLError):
                signed.verify_presigned_url(url, "PUT")
            unique = prefix.rsplit("/", 1)[-1]
            tampered = url.replace(unique, unique[::-1], 1)  # another object's key
            assert tampered != url
            with pytest.raises(InvalidPresignedURLError):
                signed.verify_presigned_url(tampered, "GET")

    @pytest.mark.parametrize("ttl", [0, -5, 7 * 24 * 3600 + 1, 1.5, "60"])
    @asyncio_test
    async def test_presign_ttl_out_of_range(
        self, storage: StorageBackend, prefix: str, ttl: Any
    ) -> None:
        _require(storage, "presign")
        with pytest.raises(InvalidPresignedURLError, match="expires_in"):
            await storage.generate_presigned_url(f"{prefix}/x.wav", expires_in=ttl)

    @asyncio_test
    async def test_presign_method_validated(self, storage: StorageBackend, prefix: str) -> None:
        _require(storage, "presign")
        with pytest.raises(InvalidPresignedURLError, match="method"):
            await storage.generate_presigned_url(f"{prefix}/x.wav", method="DELETE")  # type: ignore[arg-type]


RateLimiterFactory = Callable[[Sequence[str]], RateLimiter]


class RateLimiterContract:
    """The behaviour every rate-limiter backend shares. Supply ``rate_limiter_factory``:
    a callable taking a list of policy strings and returning an unopened limiter."""

    #: Allowed slack on timing assertions (seconds); backends over a network may raise it.
    timing_tolerance = 0.05

    @pytest.fixture
    def rate_limiter_factory(self) -> RateLimiterFactory:
        raise NotImplementedError("override the rate_limiter_factory fixture in your subclass")

    @kit_fixture
    async def limiter_for(
        self, rate_limiter_factory: RateLimiterFactory
    ) -> AsyncIterator[Callable[..., Any]]:
        async with opened_backends(lambda *policies: rate_limiter_factory(list(policies))) as build:
            yield build

    @pytest.fixture
    def key(self) -> str:
        return f"contract:{uuid.uuid4().hex}"

    @asyncio_test
    async def test_allows_up_to_limit_then_denies(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("5/minute")
        results = [await limiter.check_rate_limit(key) for _ in range(6)]
        assert [r.allowed for r in results] == [True] * 5 + [False]
        assert [r.remaining for r in results] == [4, 3, 2, 1, 0, 0]
        assert all(r.limit == 5 and r.policy == "5/minute" for r in results)
        assert all(not r.degraded for r in results)
        assert results[0].retry_after == 0
        windows = 1 if "exact" in limiter.capabilities else 2  # a counter may need two
        assert 0 < results[-1].retry_after <= 60 * windows

    @asyncio_test
    async def test_keys_are_independent(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("2/minute")
        assert [await limiter.is_allowed(key) for _ in range(3)] == [True, True, False]
        assert await limiter.is_allowed(key + ":other")

    @asyncio_test
    async def test_window_slides(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("3/second")
        for _ in range(3):
            assert (await limiter.check_rate_limit(key)).allowed
        denied = await limiter.check_rate_limit(key)
        assert not denied.allowed
        # An exact log frees capacity within one window; a window counter within two.
        windows = 1.0 if "exact" in limiter.capabilities else 2.0
        assert 0 < denied.retry_after <= windows + self.timing_tolerance
        await asyncio.sleep(denied.retry_after + self.timing_tolerance)
        assert (await limiter.check_rate_limit(key)).allowed

    @asyncio_test
    async def test_retry_after_is_accurate(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("2/second")
        await limiter.check_rate_limit(key)
        await asyncio.sleep(0.3)
        await limiter.check_rate_limit(key)
        denied = await limiter.check_rate_limit(key)
        assert not denied.allowed
        started = time.monotonic()
        wait_until = started + denied.retry_after
        reset_in = (denied.reset_at - datetime.now(UTC)).total_seconds()
        assert denied.retry_after - self.timing_tolerance <= reset_in <= 2.0 + self.timing_tolerance
        if denied.retry_after > 2 * self.timing_tolerance:
            await asyncio.sleep(max(0.0, wait_until - time.monotonic() - 2 * self.timing_tolerance))
            assert not (await limiter.get_rate_limit_info(key)).allowed
        await asyncio.sleep(max(0.0, wait_until - time.monotonic() + self.timing_tolerance))
        assert (await limiter.check_rate_limit(key)).allowed

    @asyncio_test
    async def test_denied_requests_consume_nothing(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("2/second", "5/minute")
        _require(limiter, "exact")  # window-counter estimates blur across window edges
        assert [await limiter.is_allowed(key) for _ in range(4)] == [True, True, False, False]
        denied = await limiter.check_rate_limit(key)
        assert denied.policy == "2/second"
        await asyncio.sleep(1.0 + self.timing_tolerance)
        # The per-minute policy saw only the 2 allowed requests: 3 remain, 2 fit this second.
        assert [await limiter.is_allowed(key) for _ in range(3)] == [True, True, False]
        await asyncio.sleep(1.0 + self.timing_tolerance)
        first = await limiter.check_rate_limit(key)
        assert first.allowed and first.policy == "5/minute" and first.remaining == 0
        blocked = await limiter.check_rate_limit(key)
        assert not blocked.allowed and blocked.policy == "5/minute"

    @asyncio_test
    async def test_cost_counts_n(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("5/minute")
        first = await limiter.check_rate_limit(key, cost=3)
        assert first.allowed and first.remaining == 2
        assert not (await limiter.check_rate_limit(key, cost=3)).allowed
        last = await limiter.check_rate_limit(key, cost=2)
        assert last.allowed and last.remaining == 0

    @pytest.mark.parametrize("cost", [0, -1, 1.5, True, "2", 6])
    @asyncio_test
    async def test_invalid_cost_refused(self, limiter_for: Any, key: str, cost: Any) -> None:
        limiter = await limiter_for("5/minute", "100/hour")
        with pytest.raises(InvalidCostError, match="cost"):
            await limiter.check_rate_limit(key, cost=cost)
        assert await limiter.get_remaining_requests(key) == 5

    @pytest.mark.parametrize(
        ("bad_key", "message"),
        [
            ("", "non-empty string"),
            (None, "non-empty string"),
            ("x" * 513, "513 characters long; at most 512"),
            ("tab\tkey", r"control or format character U\+0009"),
            ("user\u202e24", r"U\+202E \(RIGHT-TO-LEFT OVERRIDE\)"),
            ("c1\x9bkey", r"control or format character U\+009B"),
        ],
    )
    @asyncio_test
    async def test_invalid_keys_refused(self, limiter_for: Any, bad_key: Any, message: str) -> None:
        limiter = await limiter_for("5/minute")
        with pytest.raises(InvalidRateLimitKeyError, match=message):
            await limiter.check_rate_limit(bad_key)
        with pytest.raises(InvalidRateLimitKeyError, match=message):
            await limiter.clear_user_limit(bad_key)

    @asyncio_test
    async def test_queries_do_not_consume(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("3/minute")
        assert await limiter.get_remaining_requests(key) == 3
        await limiter.check_rate_limit(key)
        for _ in range(5):
            assert await limiter.get_remaining_requests(key) == 2
        reset = await limiter.get_reset_time(key)
        assert reset.utcoffset() is not None
        assert 0 < (reset - datetime.now(UTC)).total_seconds() <= 120 + self.timing_tolerance

    @asyncio_test
    async def test_clear_user_limit(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("2/minute", "10/hour")
        await limiter.check_rate_limit(key)
        await limiter.check_rate_limit(key)
        assert not await limiter.is_allowed(key)
        await limiter.clear_user_limit(key)
        assert await limiter.get_remaining_requests(key) == 2
        assert await limiter.is_allowed(key)

    @asyncio_test
    async def test_enforce_raises_with_info(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("1/minute")
        assert (await limiter.enforce(key)).allowed
        with pytest.raises(RateLimitExceededError) as caught:
            await limiter.enforce(key)
        assert caught.value.info.allowed is False
        assert caught.value.info.policy == "1/minute"

    @asyncio_test
    async def test_concurrent_checks_are_exact(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("10/minute")
        results = await asyncio.gather(*(limiter.check_rate_limit(key) for _ in range(60)))
        assert sum(r.allowed for r in results) == 10

    @asyncio_test
    async def test_info_is_json_serialisable(self, limiter_for: Any, key: str) -> None:
        limiter = await limiter_for("5/minute")
        info = await limiter.check_rate_limit(key)
        restored = type(info).model_validate_json(info.model_dump_json())
        assert restored == info


CacheFactory = Callable[..., CacheBackend]

# Keys every cache must keep apart: a backend that escapes, tags or hashes keys (Redis
# Cluster hash tags, file names...) must stay injective on them.
DISTINCT_CACHE_KEYS = [
    "a}b", "#a%7Db", "#a}b", "a%7Db", "{a}", "{a", "a{b}c", "a:b", "a%b", "a%25b", "#",
    "##", "%", "}", "{}", "a b", "A", "a", "\u00e9", "e\u0301", "\u65e5\u672c\u8a9e",
    "\U0001f600", "a/b", "a\\b", "a*", "a?", "[a]",
]  # fmt: skip


class CacheContract:
    """The behaviour every cache backend shares. Supply ``cache_factory``: a callable
    taking the options every cache accepts (``key_prefix``, ``default_ttl``,
    ``max_ttl``, ``max_value_size``) as keywords and returning an unopened cache."""

    #: Allowed slack on expiry timing (seconds); backends over a network may raise it.
    timing_tolerance = 0.05
    #: The TTL of the expiry tests (seconds): short, yet above the backend's precision.
    short_ttl = 0.2

    @pytest.fixture
    def cache_factory(self) -> CacheFactory:
        raise NotImplementedError("override the cache_factory fixture in your subclass")

    @kit_fixture
    async def cache_for(self, cache_factory: CacheFactory) -> AsyncIterator[Callable[..., Any]]:
        async with opened_backends(cache_factory) as build:
            yield build

    @kit_fixture
    async def cache(self, cache_for: Callable[..., Any]) -> CacheBackend:
        return await cache_for()  # type: ignore[no-any-return]

    @pytest.fixture
    def key(self) -> str:
        return f"contract:{uuid.uuid4().hex}"

    @asyncio_test
    async def test_missing_key_is_none(self, cache: CacheBackend, key: str) -> None:
        assert await cache.get(key) is None

    @asyncio_test
    async def test_set_get_delete_round_trip(self, cache: CacheBackend, key: str) -> None:
        await cache.set(key, b"hello", 60)
        assert await cache.get(key) == b"hello"
        assert await cache.get(key) == b"hello"  # reading does not consume
        assert await cache.delete(key) is True
        assert await cache.get(key) is None
        assert await cache.delete(key) is False

    @asyncio_test
    async def test_delete_missing_is_false(self, cache: CacheBackend, key: str) -> None:
        assert await cache.delete(key) is False

    @asyncio_test
    async def test_binary_values_round_trip(self, cache: CacheBackend, key: str) -> None:
        values = {
            "all-bytes": bytes(range(256)) * 4,
            "empty": b"",
            "resp-like": b"$-1\r\n*2\r\n:1\r\n-ERR x\r\n+OK\r\n",
            "nul": b"\x00",
            "large": hashlib.sha256(key.encode()).digest() * 32768,  # 1 MiB
        }
        for name, value in values.items():
            await cache.set(f"{key}:{name}", value, 60)
        for name, value in values.items():
            got = await cache.get(f"{key}:{name}")
            assert got == value, name
            assert type(got) is bytes, name

    @asyncio_test
    async def test_bytes_like_values_are_copied(self, cache: CacheBackend, key: str) -> None:
        buffer = bytearray(b"abc")
        await cache.set(key, buffer, 60)  # type: ignore[arg-type]
        buffer[0:3] = b"xyz"
        assert await cache.get(key) == b"abc"
        await cache.set(key, memoryview(b"view"), 60)  # type: ignore[arg-type]
        assert await cache.get(key) == b"view"

    @asyncio_test
    async def test_overwrite_replaces_value(self, cache: CacheBackend, key: str) -> None:
        await cache.set(key, b"first", 60)
        await cache.set(key, b"second value", 60)
        assert await cache.get(key) == b"second value"
        await cache.set(key, b"", 60)
        assert await cache.get(key) == b""

    @asyncio_test
    async def test_entries_expire(self, cache: CacheBackend, key: str) -> None:
        await cache.set(key, b"short", self.short_ttl)
        await cache.set(key + ":td", b"short", timedelta(seconds=self.short_ttl))
        await cache.set(key + ":long", b"long", 60)
        assert await cache.get(key) == b"short"
        await asyncio.sleep(self.short_ttl + self.timing_tolerance)
        assert await cache.get(key) is None
        assert await cache.get(key + ":td") is None
        assert await cache.delete(key + ":td") is False  # expired: nothing live to delete
        assert await cache.get(key + ":long") == b"long"

    @asyncio_test
    async def test_default_ttl_applies(self, cache_for: Any, key: str) -> None:
        cache = await cache_for(default_ttl=self.short_ttl)
        await cache.set(key, b"default")
        assert await cache.get(key) == b"default"
        await asyncio.sleep(self.short_ttl + self.timing_tolerance)
        assert await cache.get(key) is None

    @asyncio_test
    async def test_overwrite_replaces_ttl(self, cache: CacheBackend, key: str) -> None:
        await cache.set(key, b"a", self.short_ttl)
        await cache.set(key, b"b", 60)
        await cache.set(key + ":shortened", b"a", 60)
        await cache.set(key + ":shortened", b"b", self.short_ttl)
        await asyncio.sleep(self.short_ttl + self.timing_tolerance)
        assert await cache.get(key) == b"b"
        assert await cache.get(key + ":shortened") is None

    @asyncio_test
    async def test_distinct_keys_stay_distinct(self, cache: CacheBackend, key: str) -> None:
        for index, name in enumerate(DISTINCT_CACHE_KEYS):
            await cache.set(f"{key}:{name}", b"%d" % index, 60)
        for index, name in enumerate(DISTINCT_CACHE_KEYS):
            assert await cache.get(f"{key}:{name}") == b"%d" % index, name
        # Keys that are the whole string, without the test's own head, too.
        for name in ("a}b", "#a%7Db"):
            await cache.set(name + key, name.encode(), 60)
        assert await cache.get("a}b" + key) == b"a}b"
        assert await cache.get("#a%7Db" + key) == b"#a%7Db"

    @asyncio_test
    async def test_longest_key_is_accepted(self, cache: CacheBackend, key: str) -> None:
        longest = key + "\u00e9" * ((MAX_CACHE_KEY_BYTES - len(key)) // 2)
        longest += "x" * (MAX_CACHE_KEY_BYTES - len(longest.encode()))
        assert len(longest.encode()) == MAX_CACHE_KEY_BYTES
        await cache.set(longest, b"long key", 60)
        assert await cache.get(longest) == b"long key"
        assert await cache.delete(longest)

    @pytest.mark.parametrize(
        ("bad_key", "message"),
        [
            ("", "non-empty string"),
            (None, "non-empty string"),
            (b"bytes", "non-empty string"),
            ("x" * 1025, "1025 bytes long in UTF-8; at most 1024"),
            ("\u00e9" * 513, "1026 bytes long in UTF-8"),
            ("tab\tkey", r"control or format character U\+0009"),
            ("nul\x00key", r"control or format character U\+0000"),
            ("user\u202e24", r"U\+202E \(RIGHT-TO-LEFT OVERRIDE\)"),
            ("lone\ud800", r"U\+D800"),
        ],
    )
    @asyncio_test
    async def test_invalid_keys_refused(
        self, cache: CacheBackend, bad_key: Any, message: str
    ) -> None:
        with pytest.raises(InvalidCacheKeyError, match=message):
            await cache.get(bad_key)
        with pytest.raises(InvalidCacheKeyError, match=message):
            await cache.set(bad_key, b"x", 60)
        with pytest.raises(InvalidCacheKeyError, match=message):
            await cache.delete(bad_key)

    @pytest.mark.parametrize(
        ("ttl", "message"),
        [
            (0, "positive"),
            (-1, "positive"),
            (float("nan"), "positive"),
            (float("inf"), "positive"),
            (timedelta(0), "positive"),
            (timedelta(seconds=-5), "positive"),
            (True, "got bool"),
            ("60", "got str"),
            (3601, "longer than max_ttl"),
            (timedelta(hours=2), "longer than max_ttl"),
        ],
    )
    @asyncio_test
    async def test_invalid_ttls_refused(
        self, cache_for: Any, key: str, ttl: Any, message: str
    ) -> None:
        cache = await cache_for(max_ttl=3600, default_ttl=60)
        with pytest.raises(InvalidCacheTTLError, match=message):
            await cache.set(key, b"x", ttl)
        assert await cache.get(key) is None
        await cache.set(key, b"x", 3600)  # the bound itself is allowed
        assert await cache.get(key) == b"x"

    @pytest.mark.parametrize("value", ["text", None, 42, [1, 2], {"a": 1}])
    @asyncio_test
    async def test_invalid_values_refused(self, cache: CacheBackend, key: str, value: Any) -> None:
        with pytest.raises(InvalidCacheValueError, match="cache values are bytes"):
            await cache.set(key, value, 60)
        assert await cache.get(key) is None

    @asyncio_test
    async def test_max_value_size_enforced(self, cache_for: Any, key: str) -> None:
        cache = await cache_for(max_value_size=1024)
        await cache.set(key, b"x" * 1024, 60)
        await cache.set(key, b"kept", 60)
        with pytest.raises(CacheValueTooLargeError, match="1025 bytes; max_value_size"):
            await cache.set(key, b"x" * 1025, 60)
        assert await cache.get(key) == b"kept"  # a refused set changes nothing

    @asyncio_test
    async def test_concurrent_sets_and_gets(self, cache: CacheBackend, key: str) -> None:
        names = [f"{key}:{i}" for i in range(200)]
        await asyncio.gather(*(cache.set(n, n.encode() * 10, 60) for n in names))
        got = await asyncio.gather(*(cache.get(n) for n in names))
        assert got == [n.encode() * 10 for n in names]
        # Many writers of one key: the last value is one of theirs, whole.
        values = [b"%d" % i * 100 for i in range(100)]
        await asyncio.gather(*(cache.set(key, v, 60) for v in values))
        assert await cache.get(key) in values
        deleted = await asyncio.gather(*(cache.delete(n) for n in names))
        assert deleted == [True] * len(names)

    @asyncio_test
    async def test_key_prefixes_isolate(self, cache_for: Any, key: str) -> None:
        first = await cache_for(key_prefix=f"p{uuid.uuid4().hex[:8]}")
        second = await cache_for(key_prefix=f"p{uuid.uuid4().hex[:8]}")
        await first.set(key, b"first", 60)
        assert await second.get(key) is None
        await second.set(key, b"second", 60)
        assert await first.get(key) == b"first"
        assert await second.delete(key) is True
        assert await first.get(key) == b"first"

    @asyncio_test
    async def test_instances_share_entries(self, cache_for: Any, key: str) -> None:
        prefix = f"p{uuid.uuid4().hex[:8]}"
        one = await cache_for(key_prefix=prefix)
        _require(one, "distributed")
        other = await cache_for(key_prefix=prefix)
        await one.set(key, b"shared", 60)
        assert await other.get(key) == b"shared"
        assert await other.delete(key) is True
        assert await one.get(key) is None
