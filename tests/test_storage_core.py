"""Storage behaviour owned by the core and by the built-in backends."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import pytest
import pytest_asyncio

import voice_infra as vi
from voice_infra.backends.fs import FileSystemStorage
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
    outside = [p for p in tmp_path.rglob("*") if not str(p).startswith(str(root))]
    assert outside == [root] or outside == []


@pytest.mark.asyncio
async def test_fs_odd_but_valid_keys_stay_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with vi.create_storage(vi.Settings(storage={"backend": "fs", "path": str(root)})) as st:
        for key in ["a\\..\\b", "...", "%2e%2e/x", "a%obj", "a%obj/b"]:
            await st.upload_file(key.encode(), object_key=key)
            assert await st.download_file(key) == key.encode()
    assert all(str(p).startswith(str(root)) for p in tmp_path.rglob("*"))


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


@pytest.mark.asyncio
async def test_fs_delete_prunes_empty_directories(tmp_path: Path) -> None:
    async with vi.create_storage(
        vi.Settings(storage={"backend": "fs", "path": str(tmp_path)})
    ) as st:
        await st.upload_file(b"x", object_key="a/b/c/d.wav")
        assert await st.delete_file("a/b/c/d.wav")
        assert list((st.root / "objects").iterdir()) == []


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
    assert storage.generate_object_key(None, None).split("/")[1] == "anonymous"
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
        (storage.root / "objects" / "broken%obj").mkdir()  # a directory where a file belongs
        with pytest.raises(vi.StorageError, match="broken") as caught:
            await storage.download_file("broken")
        assert isinstance(caught.value.__cause__, IsADirectoryError)


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
