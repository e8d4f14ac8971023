"""Storage behaviour owned by the core and by the built-in backends."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.backends.fs import FileSystemStorage, FileSystemStorageSettings
from voice_infra.storage import URLSigner, user_key_segment, validate_object_key


@pytest_asyncio.fixture(params=["memory", "fs"])
async def signed_storage(request: pytest.FixtureRequest, tmp_path: Path):
    options = {"backend": request.param, "presign_base_url": "https://voice.example/files"}
    if request.param == "fs":
        options["path"] = str(tmp_path)
    async with vi.create_storage(vi.Settings(storage=options)) as storage:
        await storage.upload_file(b"RIFF", object_key="voice/u/1.wav")
        yield storage


@pytest.mark.asyncio
async def test_presigned_url_verifies(signed_storage) -> None:
    url = await signed_storage.generate_presigned_url("voice/u/1.wav", expires_in=60)
    assert url.startswith("https://voice.example/files/voice/u/1.wav?")
    assert signed_storage.verify_presigned_url(url) == "voice/u/1.wav"
    put = await signed_storage.generate_presigned_url("voice/u/2.wav", 60, "PUT")
    assert signed_storage.verify_presigned_url(put, "PUT") == "voice/u/2.wav"


@pytest.mark.asyncio
async def test_presigned_url_rejects_tampering(signed_storage) -> None:
    url = await signed_storage.generate_presigned_url("voice/u/1.wav", expires_in=60)
    parts = urlsplit(url)
    other_key = urlunsplit(parts._replace(path=parts.path.replace("1.wav", "2.wav")))
    with pytest.raises(vi.InvalidPresignedURLError, match="signature"):
        signed_storage.verify_presigned_url(other_key)
    query = parse_qs(parts.query)
    longer = url.replace(query["X-VI-Expires"][0], str(int(query["X-VI-Expires"][0]) + 3600))
    with pytest.raises(vi.InvalidPresignedURLError, match="signature"):
        signed_storage.verify_presigned_url(longer)
    with pytest.raises(vi.InvalidPresignedURLError, match="allows GET, not PUT"):
        signed_storage.verify_presigned_url(url, "PUT")
    with pytest.raises(vi.InvalidPresignedURLError, match="not issued by this storage"):
        signed_storage.verify_presigned_url(url.replace("voice.example", "evil.example"))


@pytest.mark.asyncio
async def test_presigned_url_expires() -> None:
    signer = URLSigner(b"k" * 32, "http://localhost/files")
    url = signer.sign("a/b.wav", expires_in=10, method="GET", now=1000.0)
    assert signer.verify(url, now=1009.0) == "a/b.wav"
    with pytest.raises(vi.InvalidPresignedURLError, match="expired"):
        signer.verify(url, now=1010.0)


@pytest.mark.asyncio
async def test_signed_urls_from_another_instance_are_rejected() -> None:
    one = vi.create_storage(vi.Settings(storage={"backend": "memory"}))
    two = vi.create_storage(vi.Settings(storage={"backend": "memory"}))
    url = await one.generate_presigned_url("k.wav")
    with pytest.raises(vi.InvalidPresignedURLError):
        two.verify_presigned_url(url)


@pytest.mark.asyncio
async def test_default_ttl_is_the_presign_ttl_setting() -> None:
    storage = vi.create_storage(vi.Settings(storage={"backend": "memory", "presign_ttl": 90}))
    before = int(time.time())
    url = await storage.generate_presigned_url("k.wav")
    expires = int(parse_qs(urlsplit(url).query)["X-VI-Expires"][0])
    assert before + 90 <= expires <= before + 92


@pytest.mark.asyncio
async def test_fs_signing_key_persists_across_instances(tmp_path: Path) -> None:
    settings = vi.Settings(storage={"backend": "fs", "path": str(tmp_path)})
    async with vi.create_storage(settings) as first:
        url = await first.generate_presigned_url("k.wav")
    async with vi.create_storage(settings) as second:
        assert second.verify_presigned_url(url) == "k.wav"
    key_file = tmp_path / "voice" / ".signing-key"
    assert key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.asyncio
async def test_max_file_size(tmp_path: Path) -> None:
    for backend in ("memory", "fs"):
        options = {"backend": backend, "max_file_size": "1KiB", "path": str(tmp_path)}
        if backend == "memory":
            del options["path"]
        async with vi.create_storage(vi.Settings(storage=options)) as storage:
            with pytest.raises(vi.ObjectTooLargeError, match="max_file_size"):
                await storage.upload_file(b"x" * 1025, object_key="big")

            async def stream() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield b"x" * 512

            with pytest.raises(vi.ObjectTooLargeError, match="nothing was stored"):
                await storage.upload_file(stream(), object_key="big")
            assert not await storage.file_exists("big")
            assert (await storage.upload_file(b"x" * 1024, object_key="ok")).file_size == 1024


@pytest.mark.asyncio
async def test_bad_sizes_in_config_are_config_errors() -> None:
    with pytest.raises(vi.ConfigError, match="max_file_size"):
        vi.create_storage(vi.Settings(storage={"backend": "memory", "max_file_size": "lots"}))
    with pytest.raises(vi.ConfigError, match="chunk_size must be at least 1KiB"):
        vi.create_storage(vi.Settings(storage={"backend": "memory", "chunk_size": 10}))


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "a/../../b", "/etc/passwd", "a/./b", "..", "a\\..\\b/../c"]
)
@pytest.mark.asyncio
async def test_fs_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    async with vi.create_storage(vi.Settings(storage={"backend": "fs", "path": str(root)})) as st:
        with pytest.raises(vi.InvalidObjectKeyError):
            await st.upload_file(b"x", object_key=key)
    outside = [p for p in tmp_path.rglob("*") if not p.resolve().is_relative_to(root.resolve())]
    assert outside == []


@pytest.mark.asyncio
async def test_fs_odd_but_valid_keys_stay_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with vi.create_storage(vi.Settings(storage={"backend": "fs", "path": str(root)})) as st:
        keys = ["a\\..\\b", "...", "%2e%2e/x", "a%obj", "a%obj/b", "~/x", "$HOME/x", ".a/b"]
        for key in keys:
            await st.upload_file(key.encode(), object_key=key)
            assert await st.download_file(key) == key.encode()
        assert sorted([info.object_key async for info in st.list_files()]) == sorted(keys)
    assert all(p.resolve().is_relative_to(root.resolve()) for p in tmp_path.rglob("*"))


@pytest.mark.asyncio
async def test_fs_cancelled_upload_leaves_no_partial_file(tmp_path: Path) -> None:
    storage = vi.create_storage(vi.Settings(storage={"backend": "fs", "path": str(tmp_path)}))
    assert isinstance(storage, FileSystemStorage)
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"a" * 100_000
        started.set()
        await asyncio.sleep(30)
        yield b"never"

    async with storage:
        task = asyncio.create_task(storage.upload_file(slow(), object_key="voice/partial.wav"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await storage.file_exists("voice/partial.wav")
    assert list((storage.root / "tmp").iterdir()) == []
    assert [p for p in (storage.root / "objects").rglob("*") if p.is_file()] == []


class _SlowPublishStorage(FileSystemStorage):
    """fs storage whose publishing thread waits for a signal, to cancel mid-publish."""

    publishing = threading.Event()
    release = threading.Event()

    def _publish(self, *args: Any) -> None:
        self.publishing.set()
        self.release.wait(10)
        super()._publish(*args)


@pytest.mark.asyncio
async def test_fs_cancelled_during_publish_waits_and_stores_the_whole_object(
    tmp_path: Path,
) -> None:
    settings = FileSystemStorageSettings(path=tmp_path)
    async with FileSystemStorage(settings) as plain:
        await plain.upload_file(b"old" * 1000, object_key="k.wav", content_type="audio/wav")
    storage = _SlowPublishStorage(settings)
    async with storage:
        task = asyncio.create_task(
            storage.upload_file(b"new" * 2000, object_key="k.wav", content_type="audio/ogg")
        )
        await asyncio.to_thread(storage.publishing.wait, 10)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the publish in flight
        storage.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        info = await storage.get_file_info("k.wav")
        assert await storage.download_file("k.wav") == b"new" * 2000
        assert (info.file_size, info.content_type) == (6000, "audio/ogg")
    assert list((storage.root / "tmp").iterdir()) == []


@pytest.mark.asyncio
async def test_fs_corrupt_metadata_is_a_storage_error(tmp_path: Path) -> None:
    settings = vi.Settings(storage={"backend": "fs", "path": str(tmp_path)})
    async with vi.create_storage(settings) as storage:
        assert isinstance(storage, FileSystemStorage)
        await storage.upload_file(b"x", object_key="a/b.wav")
        # The object file's metadata trailer damaged (a renamed field), then cut off.
        object_file = storage.root / "objects" / "a" / "b.wav%blob"
        object_file.write_bytes(object_file.read_bytes().replace(b'"metadata"', b'"metadatx"'))
        with pytest.raises(vi.StorageError, match=r"corrupt.*delete the object") as caught:
            await storage.get_file_info("a/b.wav")
        assert not isinstance(caught.value, vi.ObjectNotFoundError)
        assert caught.value.__cause__ is not None
        object_file.write_bytes(b"x")
        with pytest.raises(vi.StorageError, match="missing or corrupt"):
            await storage.download_file("a/b.wav")
        assert await storage.delete_file("a/b.wav")
        assert not await storage.file_exists("a/b.wav")
        # An object of the previous layout whose sidecar is corrupt, then missing.
        meta_path = storage.root / "objects" / "a" / "c.wav%meta"
        (storage.root / "objects" / "a").mkdir(exist_ok=True)
        (storage.root / "objects" / "a" / "c.wav%obj").write_bytes(b"x")
        meta_path.write_text("{not json")
        with pytest.raises(vi.StorageError, match=r"corrupt.*delete the object") as caught:
            await storage.get_file_info("a/c.wav")
        assert not isinstance(caught.value, vi.ObjectNotFoundError)
        meta_path.unlink()
        with pytest.raises(vi.StorageError, match="missing or corrupt"):
            await storage.get_file_info("a/c.wav")
        assert await storage.delete_file("a/c.wav")
        assert not await storage.file_exists("a/c.wav")


@pytest.mark.asyncio
async def test_fs_listing_goes_on_past_a_corrupt_sidecar(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = vi.Settings(storage={"backend": "fs", "path": str(tmp_path)})
    async with vi.create_storage(settings) as storage:
        assert isinstance(storage, FileSystemStorage)
        for name in ("a/1.wav", "a/3.wav"):
            await storage.upload_file(b"xyz", object_key=name, content_type="audio/wav")
        # An object of the previous layout (bytes beside a JSON sidecar), sidecar corrupt.
        (storage.root / "objects" / "a" / "2.wav%obj").write_bytes(b"xyz")
        (storage.root / "objects" / "a" / "2.wav%meta").write_text("{not json")
        listed = {info.object_key: info async for info in storage.list_files("a/")}
    assert sorted(listed) == ["a/1.wav", "a/2.wav", "a/3.wav"]
    assert listed["a/1.wav"].content_type == "audio/wav"
    assert (listed["a/2.wav"].content_type, listed["a/2.wav"].file_size) == (
        "application/octet-stream",
        3,
    )
    assert "metadata of 'a/2.wav'" in caplog.text


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["memory", "fs"])
@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "audio",
        "audio/wav\r\nX-Injected: 1",
        "audio/wav\n",
        "audio/wav\r\n;x=1",
        "audio/wav\x0b;x",
        "audio/wav; a=\u2028",
        "audio/wäv",
        "a/" + "b" * 300,
        42,
        # More than one type: browsers take the last of a comma-separated list.
        "audio/webm; a=b, text/html",
        "audio/wav, text/html",
        "audio/wav,text/html;x",
        'audio/wav; a="x", text/html',
    ],
)
async def test_invalid_content_type_is_refused_before_anything_is_written(
    tmp_path: Path, backend: str, content_type: Any
) -> None:
    options = {"backend": backend, "path": str(tmp_path)} if backend == "fs" else {}
    async with vi.create_storage(vi.Settings(storage={"backend": backend, **options})) as st:
        with pytest.raises(vi.InvalidMetadataError, match=r"content_type .* is not one media"):
            await st.upload_file(b"RIFF", object_key="k.wav", content_type=content_type)
        assert not await st.file_exists("k.wav")
        assert [info async for info in st.list_files()] == []


@pytest.mark.parametrize(
    "content_type",
    [
        "audio/wav",
        "audio/ogg; codecs=opus",
        "audio/webm;codecs=opus",
        'audio/webm; codecs="vp8, opus"',
        "audio/wav ; a=b ;",
        "application/vnd.api+json",
        # Not RFC 9110, but what clients send (Chrome's MediaRecorder, mail agents):
        # what follows a comma is not a type, so it is one type.
        "video/webm;codecs=vp8,opus",
        "audio/wav; name=my file.wav",
        'audio/wav; a=", text/html',  # an open quote runs to the end: one piece
    ],
)
def test_media_types_with_parameters_are_valid_content_types(content_type: str) -> None:
    from voice_infra.storage import validate_content_type

    assert validate_content_type(content_type) == content_type


_TCHARS = "abcxyzAZ09!#$%&'*+.^_`|~-"
_token = st.text(_TCHARS, min_size=1, max_size=8)
_quoted = st.text(st.sampled_from(list(' \t,;=/abc"\\')), max_size=8).map(
    lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
_parameter = st.tuples(st.sampled_from(["", " ", "\t "]), _token, st.one_of(_token, _quoted)).map(
    lambda p: f"{p[0]}{p[1]}={p[2]}"
)


@given(
    base=st.tuples(_token, _token),
    parameters=st.lists(st.tuples(st.sampled_from([";", " ;", "; "]), _parameter), max_size=4),
)
def test_every_rfc9110_media_type_is_a_valid_content_type(
    base: tuple[str, str], parameters: list[tuple[str, str]]
) -> None:
    from voice_infra.storage import validate_content_type

    text = f"{base[0]}/{base[1]}" + "".join(sep + param for sep, param in parameters)
    if len(text) <= 255:
        assert validate_content_type(text) == text


_HTTP_BLANKS = " \t\n\r"
_TOKEN_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _browser_pieces(value: str) -> list[str]:
    """WHATWG Fetch's "get, decode, and split" of a header value, step by step."""
    pieces, position, temporary = [], 0, ""
    while True:
        while position < len(value) and value[position] not in '",':
            temporary += value[position]
            position += 1
        if position < len(value) and value[position] == '"':
            begin = position  # collect an HTTP quoted string, the quotes kept
            position += 1
            while True:
                while position < len(value) and value[position] not in '"\\':
                    position += 1
                if position >= len(value):
                    break
                quote_or_backslash = value[position]
                position += 1
                if quote_or_backslash == "\\":
                    if position >= len(value):
                        break
                    position += 1
                else:
                    break
            temporary += value[begin:position]
            if position < len(value):
                continue
        pieces.append(temporary.strip(" \t"))
        temporary = ""
        if position >= len(value):
            return pieces
        position += 1  # the comma


def _browser_parses(piece: str) -> bool:
    """WHATWG MIME Sniffing's "parse a MIME type" succeeds on ``piece``."""
    piece = piece.strip(_HTTP_BLANKS)
    kind, slash, rest = piece.partition("/")
    subtype = rest.partition(";")[0].rstrip(_HTTP_BLANKS)
    return bool(
        slash and kind and subtype and set(kind) <= _TOKEN_CHARS and set(subtype) <= _TOKEN_CHARS
    )


@given(st.text(st.sampled_from(list('audio/wav; =,"\\\tx*')), max_size=60))
def test_a_content_type_is_valid_when_a_browser_reads_one_type_in_it(text: str) -> None:
    """Valid exactly when a browser, splitting the value at its commas as WHATWG Fetch
    does, finds a media type in the first piece only (the grammar aside); and the check
    stays fast on any mix of blanks, ';', '=', quotes and commas (hypothesis' deadline)."""
    from voice_infra.storage import validate_content_type

    value = "audio/wav" + text
    pieces = _browser_pieces(value)
    one_type = not any(_browser_parses(piece) for piece in pieces[1:])
    grammar = not text or (text.lstrip(" \t").startswith(";") and text.isascii())
    try:
        validate_content_type(value)
    except vi.InvalidMetadataError:
        assert not (one_type and grammar)
    else:
        assert one_type


def test_fs_signing_key_is_created_once_under_concurrency(tmp_path: Path) -> None:
    settings = FileSystemStorageSettings(path=tmp_path)
    stores = [FileSystemStorage(settings) for _ in range(16)]
    stores[0]._prepare()  # directories exist; the key file does not yet
    (stores[0].root / ".signing-key").unlink(missing_ok=True)
    barrier = threading.Barrier(len(stores))

    def race(store: FileSystemStorage) -> bytes:
        barrier.wait()
        return store._prepare()

    with ThreadPoolExecutor(len(stores)) as pool:
        keys = set(pool.map(race, stores))
    assert len(keys) == 1 and len(keys.pop()) == 64
    assert list((stores[0].root / "tmp").iterdir()) == []


@pytest.mark.asyncio
async def test_fs_short_signing_key_file_is_refused(tmp_path: Path) -> None:
    settings = vi.Settings(storage={"backend": "fs", "path": str(tmp_path)})
    (tmp_path / "voice").mkdir()
    (tmp_path / "voice" / ".signing-key").write_bytes(b"")  # e.g. a crash of an old version
    with pytest.raises(vi.StorageError, match=r"signing key file .* holds 0 bytes"):
        async with vi.create_storage(settings):
            pass


@pytest.mark.parametrize("key", ["", "short", "x" * 31])
def test_short_configured_signing_key_is_a_config_error(key: str) -> None:
    with pytest.raises(vi.ConfigError, match="signing_key must be at least 32 bytes"):
        vi.create_storage(vi.Settings(storage={"backend": "memory", "signing_key": key}))


@pytest.mark.parametrize("backend", ["memory", "fs"])
@pytest.mark.asyncio
async def test_unreadable_upload_source_is_a_storage_error(tmp_path: Path, backend: str) -> None:
    options = {"backend": backend} | ({"path": str(tmp_path / "data")} if backend == "fs" else {})
    async with vi.create_storage(vi.Settings(storage=options)) as storage:
        with pytest.raises(vi.StorageError, match="does not exist"):
            await storage.upload_file(tmp_path / "missing.wav", object_key="a.wav")
        (tmp_path / "folder").mkdir()
        with pytest.raises(vi.StorageError, match=r"'.*folder' cannot be read") as caught:
            await storage.upload_file(tmp_path / "folder", object_key="a.wav")
        assert isinstance(caught.value.__cause__, IsADirectoryError)
        assert not await storage.file_exists("a.wav")


@pytest.mark.asyncio
async def test_fs_stream_stopped_early_closes_its_file_at_once(tmp_path: Path) -> None:
    settings = vi.Settings(storage={"backend": "fs", "path": str(tmp_path), "chunk_size": "1KiB"})
    async with vi.create_storage(settings) as storage:
        await storage.upload_file(b"x" * 10_000, object_key="a.bin")
        data_file = next((tmp_path / "voice" / "objects").glob("a.bin%blob"))

        def open_on_data_file() -> int:
            fds = Path("/proc/self/fd").iterdir()
            return sum(1 for fd in fds if fd.resolve(strict=False) == data_file)

        stream = storage.stream_file("a.bin")
        assert await anext(stream) == b"x" * 1024
        assert open_on_data_file() == 1
        await stream.aclose()
        assert open_on_data_file() == 0


@pytest.mark.asyncio
async def test_fs_abort_incomplete_uploads_removes_only_stale_temporaries(tmp_path: Path) -> None:
    settings = vi.Settings(storage={"backend": "fs", "path": str(tmp_path)})
    async with vi.create_storage(settings) as storage:
        await storage.upload_file(b"kept", object_key="a.wav")
        tmp = tmp_path / "voice" / "tmp"
        (tmp / "stale").write_bytes(b"left by a killed process")
        old = time.time() - 7200
        os.utime(tmp / "stale", (old, old))
        (tmp / "fresh").write_bytes(b"an upload in progress elsewhere")
        assert await storage.abort_incomplete_uploads(timedelta(hours=1)) == ["tmp/stale"]
        assert sorted(p.name for p in tmp.iterdir()) == ["fresh"]
        assert await storage.download_file("a.wav") == b"kept"


@pytest.mark.asyncio
async def test_fs_delete_prunes_empty_directories(tmp_path: Path) -> None:
    async with vi.create_storage(
        vi.Settings(storage={"backend": "fs", "path": str(tmp_path)})
    ) as st:
        await st.upload_file(b"x", object_key="a/b/c/d.wav")
        assert await st.delete_file("a/b/c/d.wav")
        assert list((st.root / "objects").iterdir()) == []


@pytest.mark.asyncio
async def test_fs_concurrent_writers_and_deleters_of_one_key_never_mix_objects(
    tmp_path: Path,
) -> None:
    """Each round races uploads (distinct bytes and content type per writer) and deletes of
    one key, plus a neighbour key in the same folder whose delete prunes the folder. After
    the round the key is either absent or one writer's object whole: its data, size,
    checksum and content type all from the same upload."""
    settings = FileSystemStorageSettings(path=tmp_path, fsync=False)
    writers = 6
    async with FileSystemStorage(settings) as storage:

        async def write(i: int) -> None:
            body = bytes([65 + i]) * (1000 * (i + 1))
            await storage.upload_file(body, object_key="race/k.wav", content_type=f"audio/x-{i}")

        async def churn_neighbour() -> None:
            await storage.upload_file(b"n", object_key="race/neighbour.wav")
            await storage.delete_file("race/neighbour.wav")

        for _round in range(40):
            await asyncio.gather(
                *(write(i) for i in range(writers)),
                storage.delete_file("race/k.wav"),
                storage.delete_file("race/k.wav"),
                churn_neighbour(),
            )
            if not await storage.file_exists("race/k.wav"):
                continue
            data = await storage.download_file("race/k.wav")
            info = await storage.get_file_info("race/k.wav")
            writer = data[0] - 65
            assert data == bytes([65 + writer]) * (1000 * (writer + 1))
            assert info.file_size == len(data)
            assert info.content_type == f"audio/x-{writer}"
            assert info.checksum == hashlib.sha256(data).hexdigest()
        assert list((storage.root / "tmp").iterdir()) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("fsync", [False, True])
async def test_fs_uploads_never_fail_while_neighbours_are_deleted(
    tmp_path: Path, fsync: bool
) -> None:
    """Deleting the last object of a folder prunes it; uploads into the same folder at
    that moment (other keys, other lock stripes) must make it again, not fail."""
    settings = FileSystemStorageSettings(path=tmp_path, fsync=fsync)
    keys = [f"race/deep/{name}.wav" for name in "abcd"]
    async with FileSystemStorage(settings) as storage:
        for _round in range(400):
            await asyncio.gather(
                *(storage.upload_file(b"x" * 100, object_key=key) for key in keys[:2]),
                *(storage.delete_file(key) for key in keys[2:]),
            )
            await asyncio.gather(
                *(storage.delete_file(key) for key in keys[:2]),
                *(storage.upload_file(b"y" * 100, object_key=key) for key in keys[2:]),
            )
        for key in keys[2:]:
            assert await storage.download_file(key) == b"y" * 100
        assert list((storage.root / "tmp").iterdir()) == []


def test_fs_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Upload and download 256 MiB through fs; peak RSS grows by far less than that."""
    code = f"""
import asyncio, resource, voice_infra as vi
async def main():
    async def source():
        chunk = b"v" * (1 << 20)
        for _ in range(256):
            yield chunk
    settings = vi.Settings(storage={{"backend": "fs", "path": {str(tmp_path)!r}, "fsync": False}})
    async with vi.create_storage(settings) as storage:
        await storage.upload_file(b"warm-up", object_key="warm")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        info = await storage.upload_file(source(), object_key="big.bin")
        total = 0
        async for chunk in storage.stream_file("big.bin"):
            total += len(chunk)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(info.file_size, total, (peak - base) // 1024)
asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    size, total, growth_mib = map(int, result.stdout.split())
    assert size == total == 256 * 1024 * 1024
    assert growth_mib < 64, f"peak RSS grew by {growth_mib} MiB"


def test_validate_object_key_accepts_s3_style_keys() -> None:
    assert validate_object_key("voice/42/2026/01/02/x.wav") == "voice/42/2026/01/02/x.wav"
    assert validate_object_key("é" * 512)  # exactly 1024 bytes
    with pytest.raises(vi.InvalidObjectKeyError, match="1024"):
        validate_object_key("é" * 512 + "x")


def test_generated_key_encodes_user_ids() -> None:
    storage = vi.create_storage(vi.Settings(storage={"backend": "memory", "key_prefix": "rec"}))
    key = storage.generate_object_key("../evil user/", "audio/mpeg")
    assert key.split("/")[:2] == ["rec", "..%2Fevil%20user%2F"]
    assert key.endswith(".mp3")
    assert storage.generate_object_key(None, None).split("/")[1] == "~anonymous"
    assert storage.generate_object_key("u", "text/plain").endswith(".bin")
    assert storage.generate_object_key("ann@example.com").split("/")[1] == "ann@example.com"


@pytest.mark.parametrize(
    "ids",
    [("a b", "a/b", "a_b", "a%20b"), (".", "..", "%2E"), ("é", "%C3%A9"), ("x" * 200, "x" * 201)],
)
def test_distinct_user_ids_get_distinct_key_segments(ids: tuple[str, ...]) -> None:
    segments = {user_key_segment(user_id) for user_id in ids}
    assert len(segments) == len(ids)
    for user_id in ids:
        segment = user_key_segment(user_id)
        assert validate_object_key(f"p/{segment}/x") and len(segment) <= 128
        if len(segment) < 128:
            assert unquote(segment) == user_id  # reversible unless cut


def test_an_id_spelled_like_another_ids_segment_gets_its_own() -> None:
    """The id that *is* a long id's cut segment, or the anonymous segment, or 'anonymous',
    must not share that segment ('~' marks both, and quote() never encodes it)."""
    long_id = "v" * 200
    cut = user_key_segment(long_id)
    assert "~" in cut
    assert user_key_segment(cut) != cut
    assert user_key_segment(None) == "~anonymous"
    assert len({user_key_segment(None), user_key_segment("anonymous"),
                user_key_segment("~anonymous")}) == 3  # fmt: skip


@given(st.lists(st.one_of(st.none(), st.text(min_size=1, max_size=300)), min_size=2,
                max_size=6, unique=True))  # fmt: skip
def test_user_key_segments_are_injective(ids: list[str | None]) -> None:
    segments = [user_key_segment(user_id) for user_id in ids]
    assert len(set(segments)) == len(ids)


def test_empty_user_id_is_refused() -> None:
    with pytest.raises(vi.InvalidObjectKeyError, match="user_id is empty"):
        user_key_segment("")


@pytest.mark.asyncio
async def test_any_user_id_is_stored_as_ascii_metadata() -> None:
    async with vi.create_storage(vi.Settings(storage={"backend": "memory"})) as storage:
        for user_id in ("Zoë 42", "日本", "50%/x\ty"):
            info = await storage.upload_file(b"x", user_id=user_id)
            stored = (await storage.get_file_info(info.object_key)).metadata["user-id"]
            assert stored.isascii() and unquote(stored) == user_id
        info = await storage.upload_file(b"x", user_id="plain id@host")
        assert info.metadata["user-id"] == "plain id@host"  # printable ASCII kept as is


@pytest.mark.asyncio
async def test_fs_os_errors_are_wrapped(tmp_path: Path) -> None:
    storage = vi.create_storage(vi.Settings(storage={"backend": "fs", "path": str(tmp_path)}))
    assert isinstance(storage, FileSystemStorage)
    async with storage:
        (storage.root / "objects" / "broken%obj").mkdir(parents=True)  # a folder, not a file
        with pytest.raises(vi.StorageError, match="broken") as caught:
            await storage.download_file("broken")
        assert isinstance(caught.value.__cause__, IsADirectoryError)


@pytest.mark.asyncio
async def test_fs_unreadable_signing_key_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "voice" / ".signing-key").mkdir(parents=True)  # a directory, not a key
    storage = vi.create_storage(vi.Settings(storage={"backend": "fs", "path": str(tmp_path)}))
    with pytest.raises(vi.StorageError, match="cannot prepare storage directory") as caught:
        await storage.__aenter__()
    assert isinstance(caught.value.__cause__, IsADirectoryError)


@pytest.mark.asyncio
async def test_fs_write_into_a_removed_directory_is_not_object_not_found(tmp_path: Path) -> None:
    storage = vi.create_storage(vi.Settings(storage={"backend": "fs", "path": str(tmp_path)}))
    assert isinstance(storage, FileSystemStorage)
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"RIFF"
        started.set()
        await asyncio.sleep(0.1)
        yield b"more"

    async with storage:
        upload = asyncio.create_task(storage.upload_file(slow(), object_key="k.wav"))
        await started.wait()
        shutil.rmtree(storage.root / "tmp")  # removed by someone during the upload
        with pytest.raises(vi.StorageError, match=r"cannot write 'k\.wav'") as caught:
            await upload
        assert not isinstance(caught.value, vi.ObjectNotFoundError)
        assert isinstance(caught.value.__cause__, FileNotFoundError)
        assert await storage.abort_incomplete_uploads(timedelta(0)) == []
        # Folders are made as writes need them: the next upload works.
        await storage.upload_file(b"RIFF", object_key="k.wav")
        assert await storage.download_file("k.wav") == b"RIFF"


@pytest.mark.asyncio
async def test_first_use_opens_once_under_concurrency() -> None:
    from voice_infra.backends.memory import MemoryStorage, MemoryStorageSettings

    class CountingStorage(MemoryStorage):
        opens = 0

        async def open(self) -> None:
            CountingStorage.opens += 1
            await asyncio.sleep(0.01)  # a slow connect lets the other tasks pile up
            await super().open()

    storage = CountingStorage(MemoryStorageSettings())
    await asyncio.gather(*(storage.upload_file(b"x", object_key=f"k{i}") for i in range(20)))
    assert CountingStorage.opens == 1
    await storage.aclose()
    assert await storage.file_exists("k1")  # reopens on use after aclose
    assert CountingStorage.opens == 2


@pytest.mark.asyncio
async def test_presign_takes_the_key_as_key_or_object_key(signed_storage) -> None:
    by_position = await signed_storage.generate_presigned_url("voice/u/1.wav", 60)
    by_name = await signed_storage.generate_presigned_url(key="voice/u/1.wav", expires_in=60)
    by_object_key = await signed_storage.generate_presigned_url(
        object_key="voice/u/1.wav", expires_in=60
    )
    for url in (by_position, by_name, by_object_key):
        assert signed_storage.verify_presigned_url(url) == "voice/u/1.wav"
    with pytest.raises(vi.InvalidObjectKeyError, match="takes the object key once"):
        await signed_storage.generate_presigned_url("a.wav", object_key="b.wav")
    with pytest.raises(vi.InvalidObjectKeyError, match="takes the object key once"):
        await signed_storage.generate_presigned_url()


@pytest.mark.parametrize(
    "key",
    [
        "emoji/👨\u200d👩\u200d👧.wav",
        "fa/\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.wav",
        "ü/ñ/日本.wav",
    ],
)
def test_joiners_and_letters_of_any_script_are_valid_in_keys(key: str) -> None:
    assert validate_object_key(key) == key
    from voice_infra.ratelimit import validate_rate_limit_key

    assert validate_rate_limit_key(key) == key


@pytest.mark.asyncio
async def test_fs_objects_under_keys_now_refused_for_writing_stay_reachable(
    tmp_path: Path,
) -> None:
    """An object an earlier version stored under a key with a bidi override (allowed
    then, refused for new objects now) can still be listed, read and deleted."""
    from urllib.parse import quote

    key = "old/na\u202eme.wav"
    async with FileSystemStorage(FileSystemStorageSettings(path=tmp_path)) as storage:
        await storage.upload_file(b"RIFF-old", object_key="old/seed.wav", content_type="audio/wav")
        seed = (await storage.get_file_info("old/seed.wav")).model_dump(mode="json")
        folder = storage.root / "objects" / "old"
        # As the earlier version stored it: bytes beside a JSON sidecar.
        (folder / (quote("na\u202eme.wav", safe="") + "%obj")).write_bytes(b"RIFF-old")
        (folder / (quote("na\u202eme.wav", safe="") + "%meta")).write_text(json.dumps(seed))
        assert key in [info.object_key async for info in storage.list_files("old/")]
        assert await storage.download_file(key) == b"RIFF-old"
        assert (await storage.get_file_info(key)).content_type == "audio/wav"
        assert b"".join([c async for c in storage.stream_range(key, 5)]) == b"old"
        assert await storage.delete_file(key) is True
        with pytest.raises(vi.InvalidObjectKeyError, match="U\\+202E"):
            await storage.upload_file(b"new", object_key=key)


# -- the character rule's fast path ------------------------------------------------------


def _unsafe_by_category(text: str, strict: bool) -> bool:
    """The rule of voice_infra.text, character by character (the reference)."""
    import unicodedata

    from voice_infra.text import _ALLOWED_FORMAT, _UNSAFE_CATEGORIES

    for char in text:
        if strict:
            if char not in _ALLOWED_FORMAT and unicodedata.category(char) in _UNSAFE_CATEGORIES:
                return True
        elif ord(char) < 32 or ord(char) == 127:
            return True
    return False


def test_printable_fast_path_refuses_exactly_what_the_categories_refuse() -> None:
    """``str.isprintable`` answers first; every text it passes holds nothing the rule
    refuses (all code points, strict and reading rule)."""
    from voice_infra.text import first_unsafe_character

    for code in range(0x110000):
        char = chr(code)
        for strict in (True, False):
            expected = _unsafe_by_category(char, strict)
            assert (first_unsafe_character(char, strict=strict) is not None) is expected, (
                hex(code), strict,
            )  # fmt: skip
            assert (first_unsafe_character("ab/" + char + "c", strict=strict) is not None) is (
                expected
            )


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["memory", "fs"])
async def test_metadata_cannot_name_another_owner(tmp_path: Path, backend: str) -> None:
    """``user-id`` is recorded from ``user_id``: metadata naming someone else is refused
    (it was kept, over the real owner), the same value is fine."""
    options = {"backend": backend, "path": str(tmp_path)} if backend == "fs" else {}
    async with vi.create_storage(vi.Settings(storage={"backend": backend, **options})) as st:
        with pytest.raises(vi.InvalidMetadataError, match="contradicts user_id"):
            await st.upload_file(b"RIFF", user_id="alice", metadata={"user-id": "bob"})
        assert [info async for info in st.list_files()] == []
        info = await st.upload_file(b"RIFF", user_id="alice", metadata={"user-id": "alice"})
        assert info.metadata["user-id"] == "alice"
