"""The ``fs`` backend's integrity: crash consistency, whole objects for concurrent readers,
the previous on-disk layout, symbolic links, permissions, and read-only operations that
create nothing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.backends import fs
from voice_infra.backends.fs import FileSystemStorage, FileSystemStorageSettings

# The object file's suffix in the current layout (before it, the bytes lived in ``%obj``).
OBJECT_SUFFIX = getattr(fs, "OBJECT_SUFFIX", "%obj")


def _store(root: Path, **options: Any) -> FileSystemStorage:
    return FileSystemStorage(FileSystemStorageSettings(path=root, **options))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (links not followed) with its size and mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            found[path.relative_to(root).as_posix()] = (info.st_size, info.st_mtime_ns)
    return found


def _legacy_object(
    folder: Path, name: str, data: bytes, *, content_type: str = "audio/wav", **meta: Any
) -> None:
    """An object as the previous layout stored it: ``<name>%obj`` beside ``<name>%meta``."""
    folder.mkdir(parents=True, exist_ok=True)
    encoded = quote(name, safe="")
    (folder / f"{encoded}%obj").write_bytes(data)
    sidecar = {
        "content_type": content_type, "metadata": meta.get("metadata", {}),
        "checksum": hashlib.sha256(data).hexdigest(), "file_size": len(data),
        "upload_time": "2026-01-02T03:04:05+00:00",
    }  # fmt: skip
    (folder / f"{encoded}%meta").write_text(json.dumps(sidecar))


# -- 1. crash consistency and concurrent readers ------------------------------------------

# A zygote: imports voice-infra once, then forks one overwriting worker per line read, so
# each of the many kills costs milliseconds instead of an interpreter start.
_ZYGOTE = textwrap.dedent(
    """
    import asyncio, os, random, sys
    from pathlib import Path
    from voice_infra.backends.fs import FileSystemStorage, FileSystemStorageSettings

    root = Path(sys.argv[1])

    async def overwrite_forever(seed):
        rng = random.Random(seed)
        settings = FileSystemStorageSettings(path=root, fsync=rng.random() < 0.3)
        async with FileSystemStorage(settings) as storage:
            async def writer(task):
                n = 0
                while True:
                    data = rng.randbytes(rng.choice([0, 1, 100, 4096, 65536, 300000]))
                    await storage.upload_file(
                        data, object_key="crash/k.bin", content_type=f"audio/x-{task}",
                        metadata={"n": str(n)},
                    )
                    if n == 0 and task == 0:
                        os.write(1, b"started\\n")
                    n += 1
            await asyncio.gather(writer(0), writer(1))

    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                asyncio.run(overwrite_forever(int(line)))
            finally:
                os._exit(0)
        os.write(1, f"{pid}\\n".encode())
        os.waitpid(pid, 0)
        os.write(1, b"dead\\n")
    """
)


async def _check_whole(storage: FileSystemStorage, key: str) -> bool:
    """True when ``key`` exists; asserts its bytes match its size and checksum."""
    try:
        info = await storage.get_file_info(key)
    except vi.ObjectNotFoundError:
        return False
    data = await storage.download_file(key)
    assert (len(data), hashlib.sha256(data).hexdigest()) == (info.file_size, info.checksum)
    listed = [i async for i in storage.list_files(key)]
    assert [(i.file_size, i.checksum) for i in listed] == [(info.file_size, info.checksum)]
    return True


def test_fs_overwrite_killed_at_random_moments_leaves_a_whole_object(tmp_path: Path) -> None:
    """SIGKILL a process overwriting one key (two tasks, random sizes) at random moments,
    150 times; after every kill the stored bytes match the stored size and checksum."""
    rng = random.Random(20261130)
    zygote = subprocess.Popen(
        [sys.executable, "-c", _ZYGOTE, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )  # fmt: skip
    assert zygote.stdin is not None and zygote.stdout is not None
    present = 0
    try:
        for round_ in range(150):
            zygote.stdin.write(f"{round_}\n")
            zygote.stdin.flush()
            lines = {zygote.stdout.readline().strip() for _ in range(2)}
            assert "started" in lines, lines
            (pid,) = (int(line) for line in lines if line.isdigit())
            time.sleep(rng.uniform(0, 0.03))
            os.kill(pid, 9)
            assert zygote.stdout.readline().strip() == "dead"
            present += asyncio.run(_check_whole(_store(tmp_path), "crash/k.bin"))
    finally:
        zygote.kill()
        zygote.communicate()  # waits and closes the pipes
    assert present == 150  # the first upload of a round always completed before the kill


@pytest.mark.asyncio
async def test_fs_readers_during_overwrites_never_see_mixed_pairs(tmp_path: Path) -> None:
    """While one storage overwrites a key, readers on another instance of the same root
    see, in every info, listing and stream, one upload whole: its size, checksum and
    metadata together."""

    def version(n: int) -> bytes:
        return bytes([n % 251]) * (1000 + (n % 50) * 137)

    def check(info: vi.VoiceFileInfo) -> None:
        expected = version(int(info.metadata["n"]))
        assert (info.file_size, info.checksum) == (
            len(expected),
            hashlib.sha256(expected).hexdigest(),
        ), f"mixed pair: metadata of upload {info.metadata['n']} with other bytes"

    writer, reader = _store(tmp_path, fsync=False), _store(tmp_path)
    async with writer, reader:
        await writer.upload_file(version(0), object_key="k.bin", metadata={"n": "0"})
        done = asyncio.Event()
        reads = 0

        async def overwrite() -> None:
            for n in range(1, 400):
                await writer.upload_file(version(n), object_key="k.bin", metadata={"n": str(n)})
            done.set()

        async def read() -> None:
            nonlocal reads
            while not done.is_set():
                check(await reader.get_file_info("k.bin"))
                async for info in reader.list_files("k"):
                    check(info)
                data = await reader.download_file("k.bin")
                assert data == bytes([data[0]]) * len(data) and len(data) % 137 == 1000 % 137
                reads += 1

        await asyncio.gather(overwrite(), read(), read(), read())
    assert reads > 50


# -- the previous layout -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fs_store_of_the_previous_layout_stays_usable(tmp_path: Path) -> None:
    """Objects the previous layout stored (``%obj`` + ``%meta``) are read, listed,
    range-read, overwritten and deleted; an overwrite or delete leaves none of the old
    files behind."""
    objects = tmp_path / "voice" / "objects"
    _legacy_object(objects / "old", "a.wav", b"RIFF-aaaa", metadata={"user-id": "7"})
    _legacy_object(objects / "old" / "deep", "b.wav", b"RIFF-bbbbbb", content_type="audio/ogg")
    async with _store(tmp_path) as storage:
        listed = {i.object_key: i async for i in storage.list_files("old/")}
        assert sorted(listed) == ["old/a.wav", "old/deep/b.wav"]
        assert (listed["old/a.wav"].file_size, listed["old/a.wav"].metadata) == (
            9,
            {"user-id": "7"},
        )
        assert listed["old/deep/b.wav"].content_type == "audio/ogg"
        assert await storage.download_file("old/a.wav") == b"RIFF-aaaa"
        assert b"".join([c async for c in storage.stream_range("old/a.wav", 5, 6)]) == b"aa"
        info = await storage.get_file_info("old/deep/b.wav")
        assert info.checksum == hashlib.sha256(b"RIFF-bbbbbb").hexdigest()
        assert info.upload_time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

        await storage.upload_file(b"new", object_key="old/a.wav", content_type="audio/flac")
        assert await storage.download_file("old/a.wav") == b"new"
        assert (await storage.get_file_info("old/a.wav")).content_type == "audio/flac"
        assert sorted(p.name for p in (objects / "old").iterdir() if p.is_file()) == [
            f"a.wav{OBJECT_SUFFIX}"
        ]
        assert await storage.delete_file("old/deep/b.wav") is True
        assert not (objects / "old" / "deep").exists()  # both files gone, folder pruned
        assert await storage.delete_file("old/deep/b.wav") is False
        assert [i.object_key async for i in storage.list_files()] == ["old/a.wav"]


# -- 2. symbolic links ---------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the store that nothing may read, write or delete through it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret").write_bytes(b"outside secret")
    _legacy_object(folder, "x", b"outside object")
    return folder


async def _all_refused(storage: FileSystemStorage, key: str) -> None:
    for operation in (
        lambda: storage.download_file(key),
        lambda: storage.get_file_info(key),
        lambda: storage.file_exists(key),
        lambda: storage.delete_file(key),
        lambda: storage.upload_file(b"new", object_key=key),
    ):
        with pytest.raises(vi.StoragePermissionError, match="symbolic link"):
            await operation()


@pytest.mark.asyncio
@pytest.mark.parametrize("suffix", sorted({"%obj", OBJECT_SUFFIX}))
async def test_fs_symlinked_object_file_is_not_followed(
    tmp_path: Path, outside: Path, suffix: str
) -> None:
    root = tmp_path / "root"
    async with _store(root) as storage:
        await storage.upload_file(b"real", object_key="real.wav")
        (root / "voice" / "objects" / f"leak{suffix}").symlink_to(outside / "secret")
        for operation in (
            lambda: storage.download_file("leak"),
            lambda: storage.get_file_info("leak"),
            lambda: storage.file_exists("leak"),
            lambda: anext(storage.stream_range("leak", 0, 3)),
        ):
            with pytest.raises(vi.StoragePermissionError, match="symbolic link"):
                await operation()
        assert [i.object_key async for i in storage.list_files()] == ["real.wav"]
        # Deleting removes the link itself (unlink never follows); the target stays.
        assert await storage.delete_file("leak") is True
        assert not await storage.file_exists("leak")
    assert (outside / "secret").read_bytes() == b"outside secret"


@pytest.mark.asyncio
async def test_fs_symlinked_sidecar_of_an_old_object_is_not_followed(
    tmp_path: Path, outside: Path
) -> None:
    objects = tmp_path / "voice" / "objects"
    objects.mkdir(parents=True)
    (objects / "k%obj").write_bytes(b"data")
    (objects / "k%meta").symlink_to(outside / "x%meta")
    async with _store(tmp_path) as storage:
        with pytest.raises(vi.StoragePermissionError, match="symbolic link"):
            await storage.get_file_info("k")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "planted", ["voice", "voice/objects", "voice/objects/dir"], ids=["bucket", "objects", "folder"]
)
async def test_fs_symlinked_folder_is_not_followed(
    tmp_path: Path, outside: Path, planted: str
) -> None:
    root = tmp_path / "root"
    link = root / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    before = _tree(outside)
    key = {"voice": "x", "voice/objects": "x", "voice/objects/dir": "dir/x"}[planted]
    storage = _store(root)
    if planted == "voice":
        with pytest.raises(vi.StoragePermissionError, match="symbolic link"):
            await storage.open()
    else:
        async with storage:
            await _all_refused(storage, key)
            await _all_refused(storage, key.replace("x", "y"))
            assert [i async for i in storage.list_files()] == []
            assert [i async for i in storage.list_files(key[:-1])] == []
            if planted == "voice/objects":  # presigning makes objects/ for the upload
                with pytest.raises(vi.StoragePermissionError, match="symbolic link"):
                    await storage.generate_presigned_url(key, method="PUT")
    assert _tree(outside) == before


@pytest.mark.asyncio
@pytest.mark.parametrize("planted", ["tmp", "locks"])
async def test_fs_symlinked_staging_or_lock_folder_is_not_followed(
    tmp_path: Path, outside: Path, planted: str
) -> None:
    root = tmp_path / "root"
    async with _store(root) as storage:
        await storage.upload_file(b"first", object_key="k.wav")
    old = time.time() - 7 * 86400
    os.utime(outside / "secret", (old, old))
    link = root / "voice" / planted
    shutil.rmtree(link, ignore_errors=True)
    link.symlink_to(outside, target_is_directory=True)
    before = _tree(outside)
    async with _store(root) as storage:
        if planted == "tmp":
            with pytest.raises(vi.StoragePermissionError, match="symbolic link"):
                await storage.upload_file(b"second", object_key="k.wav")
            with pytest.raises(vi.StoragePermissionError, match="symbolic link"):
                await storage.abort_incomplete_uploads(timedelta(0))
        else:
            await storage.upload_file(b"second", object_key="k.wav")
            assert await storage.delete_file("k.wav")
    assert _tree(outside) == before


@pytest.mark.asyncio
async def test_fs_symlinked_signing_key_is_not_followed(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "voice").mkdir()
    (tmp_path / "voice" / ".signing-key").symlink_to(outside / "secret")
    with pytest.raises(vi.StoragePermissionError, match="symbolic link"):
        async with _store(tmp_path) as storage:
            await storage.generate_presigned_url("k.wav")


@pytest.mark.asyncio
async def test_fs_listing_skips_planted_links_and_goes_on(
    tmp_path: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _store(tmp_path) as storage:
        for key in ("a/1.wav", "b/2.wav"):
            await storage.upload_file(b"x", object_key=key)
        objects = tmp_path / "voice" / "objects"
        (objects / "a" / f"leak{OBJECT_SUFFIX}").symlink_to(outside / "secret")
        (objects / "a" / "leak2%obj").symlink_to(outside / "x%obj")
        (objects / "linked").symlink_to(outside, target_is_directory=True)
        assert [i.object_key async for i in storage.list_files()] == ["a/1.wav", "b/2.wav"]
    assert "symbolic link" in caplog.text


@pytest.mark.asyncio
async def test_fs_planted_fifo_or_damaged_file_does_not_hang_or_stop_a_listing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _store(tmp_path) as storage:
        for key in ("a/1.wav", "a/2.wav"):
            await storage.upload_file(b"xyz", object_key=key)
        objects = tmp_path / "voice" / "objects"
        os.mkfifo(objects / "a" / f"fifo{OBJECT_SUFFIX}")  # opening it must not block
        with pytest.raises(vi.StorageError, match="not a regular file"):
            await asyncio.wait_for(storage.download_file("a/fifo"), 10)
        damaged = objects / "a" / f"2.wav{OBJECT_SUFFIX}"
        damaged.write_bytes(damaged.read_bytes()[:-1])  # the trailer's end cut off
        with pytest.raises(vi.StorageError, match="missing or corrupt"):
            await storage.get_file_info("a/2.wav")
        listed = [i async for i in storage.list_files("a/")]
    assert [i.object_key for i in listed] == ["a/1.wav", "a/2.wav"]
    assert listed[1].content_type == "application/octet-stream"
    assert "metadata of 'a/2.wav'" in caplog.text and "a/fifo" in caplog.text


# -- 2. permissions ------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away, so the modes seen are the ones the backend chose."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def _modes(root: Path) -> dict[str, set[int]]:
    modes: dict[str, set[int]] = {"dirs": set(), "files": set()}
    for path in [root, *root.rglob("*")]:
        kind = "dirs" if path.is_dir() else "files"
        modes[kind].add(stat.S_IMODE(path.lstat().st_mode))
    return modes


@pytest.mark.asyncio
@pytest.mark.usefixtures("open_umask")
async def test_fs_creates_owner_only_files_and_folders_by_default(tmp_path: Path) -> None:
    async with _store(tmp_path / "data") as storage:
        await storage.upload_file(b"x", object_key="a/b/c.wav")
        await storage.generate_presigned_url("a/b/c.wav")
    assert _modes(tmp_path / "data" / "voice") == {"dirs": {0o700}, "files": {0o600}}


@pytest.mark.asyncio
@pytest.mark.parametrize("umask", [0, 0o077])
async def test_fs_configured_modes_apply_exactly(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        settings = vi.Settings(
            storage={"path": str(tmp_path), "file_mode": "0o640", "dir_mode": 0o750}
        )
        async with vi.create_storage(settings) as storage:
            await storage.upload_file(b"x", object_key="a/b.wav")
    finally:
        os.umask(previous)
    modes = _modes(tmp_path / "voice")
    assert modes["dirs"] == {0o750}
    # The signing key stays owner-only whatever file_mode says.
    assert stat.S_IMODE((tmp_path / "voice" / ".signing-key").stat().st_mode) == 0o600
    assert modes["files"] == {0o640, 0o600}


@pytest.mark.parametrize(
    ("value", "expected"), [("0o640", 0o640), ("640", 0o640), ("0640", 0o640), (0o640, 0o640)]
)
def test_fs_modes_are_read_as_octal(value: Any, expected: int) -> None:
    assert FileSystemStorageSettings(file_mode=value).file_mode == expected
    dumped = FileSystemStorageSettings(file_mode=value).model_dump(mode="json")
    assert dumped["file_mode"] == oct(expected)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("file_mode", 640, "write it in octal"),
        ("file_mode", 0o400, "owner read and write"),
        ("file_mode", "rw-r-----", "octal"),
        ("dir_mode", 0o600, "owner read, write and search"),
        ("dir_mode", 0o1777, "between 0o000 and 0o777"),
    ],
)
def test_fs_bad_modes_are_config_errors(option: str, value: Any, message: str) -> None:
    with pytest.raises(vi.ConfigError, match=message):
        vi.create_storage(vi.Settings(storage={option: value}))


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
async def test_fs_signing_key_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    async with _store(tmp_path) as storage:
        await storage.generate_presigned_url("k.wav")
    key_file = tmp_path / "voice" / ".signing-key"
    key_file.chmod(mode)
    with pytest.raises(vi.StoragePermissionError, match=r"chmod 600 .*\.signing-key"):
        async with _store(tmp_path):
            pass


# -- 3. read-only folders ------------------------------------------------------------------

_READ_ONLY_SCENARIOS = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from pathlib import Path
    import voice_infra as vi
    from voice_infra.backends.fs import FileSystemStorage, FileSystemStorageSettings

    base = Path(sys.argv[1])
    results = {}

    def store(name):
        return FileSystemStorage(FileSystemStorageSettings(path=base / name))

    async def scenario(name, prepare, operation):
        async with store(name) as storage:
            await prepare(storage, base / name / "voice")
        try:
            async with store(name) as storage:
                await operation(storage)
            results[name] = ["no error", False, ""]
        except Exception as exc:
            results[name] = [type(exc).__name__, isinstance(exc, vi.StoragePermissionError),
                             str(exc)]

    async def seeded(storage, root, lock):
        await storage.upload_file(b"x", object_key="a/old.wav")
        await storage.generate_presigned_url("a/old.wav")
        os.chmod(root / lock, 0o555)

    async def main():
        await scenario("upload into read-only folder", lambda s, r: seeded(s, r, "objects/a"),
                       lambda s: s.upload_file(b"y", object_key="a/new.wav"))
        await scenario("overwrite in read-only folder", lambda s, r: seeded(s, r, "objects/a"),
                       lambda s: s.upload_file(b"y", object_key="a/old.wav"))
        await scenario("new folder in read-only folder", lambda s, r: seeded(s, r, "objects"),
                       lambda s: s.upload_file(b"y", object_key="b/new.wav"))
        await scenario("delete in read-only folder", lambda s, r: seeded(s, r, "objects/a"),
                       lambda s: s.delete_file("a/old.wav"))
        await scenario("read-only staging folder", lambda s, r: seeded(s, r, "tmp"),
                       lambda s: s.upload_file(b"y", object_key="a/new.wav"))

        async def unreadable(storage, root):
            await seeded(storage, root, ".")
            os.chmod(root, 0o755)
            for path in (root / "objects" / "a").iterdir():
                os.chmod(path, 0)
        await scenario("unreadable object", unreadable, lambda s: s.download_file("a/old.wav"))

        async def read_only_path(storage, root):
            os.chmod(root.parent, 0o555)
        await scenario("read-only path", read_only_path,
                       lambda s: s.upload_file(b"y", object_key="a/new.wav"))
        await scenario("presign on read-only path", read_only_path,
                       lambda s: s.generate_presigned_url("a/new.wav"))
        print(json.dumps(results))

    for name in ("upload into read-only folder", "overwrite in read-only folder",
                 "new folder in read-only folder", "delete in read-only folder",
                 "read-only staging folder", "unreadable object", "read-only path",
                 "presign on read-only path"):
        (base / name).mkdir()
    asyncio.run(main())
    """
)


def test_fs_read_only_folders_give_storage_permission_errors(tmp_path: Path) -> None:
    """Every refusal by the filesystem surfaces as ``StoragePermissionError``. Run in a
    child process; as root, one stripped of the capabilities that ignore permission bits
    (``setpriv``), or the refusals would never happen."""
    command = [sys.executable, "-c", _READ_ONLY_SCENARIOS, str(tmp_path)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permission bits cannot be tested")
        command = [setpriv, "--bounding-set=-all", "--inh-caps=-all", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(tmp_path)], check=False)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    wrong = {name: outcome for name, outcome in results.items() if outcome[1] is not True}
    assert wrong == {}
    assert len(results) == 8


# -- 4. read-only operations create nothing; no lock files ---------------------------------


@pytest.mark.asyncio
async def test_fs_read_only_operations_on_a_missing_root_create_nothing(tmp_path: Path) -> None:
    root = tmp_path / "missing"
    async with _store(tmp_path / "elsewhere") as other:
        forged = await other.generate_presigned_url("a/b.wav")  # signed with another key
    async with _store(root) as storage:
        assert not await storage.file_exists("a/b.wav")
        with pytest.raises(vi.ObjectNotFoundError):
            await storage.get_file_info("a/b.wav")
        with pytest.raises(vi.ObjectNotFoundError):
            await storage.download_file("a/b.wav")
        with pytest.raises(vi.ObjectNotFoundError):
            await anext(storage.stream_range("a/b.wav", 1))
        assert [i async for i in storage.list_files()] == []
        assert [i async for i in storage.list_files("a/")] == []
        assert await storage.delete_file("a/b.wav") is False
        assert await storage.abort_incomplete_uploads(timedelta(0)) == []
        with pytest.raises(vi.InvalidPresignedURLError, match="signature does not match"):
            storage.verify_presigned_url(forged)
    assert not root.exists()


@pytest.mark.asyncio
async def test_fs_verifier_opened_before_the_key_existed_picks_it_up(tmp_path: Path) -> None:
    """An app that only verifies, started on an empty store, accepts the URLs a worker
    presigns once its first upload created the key (and refuses a forged one)."""
    async with _store(tmp_path) as verifier:
        assert not (tmp_path / "voice").exists()
        async with _store(tmp_path) as worker:
            await worker.upload_file(b"RIFF", object_key="a.wav")
            url = await worker.generate_presigned_url("a.wav")
        assert verifier.verify_presigned_url(url) == "a.wav"
        with pytest.raises(vi.InvalidPresignedURLError, match="signature"):
            verifier.verify_presigned_url(url.replace("a.wav", "b.wav"))


@pytest.mark.asyncio
async def test_fs_read_only_operations_create_no_file_in_a_store(tmp_path: Path) -> None:
    async with _store(tmp_path) as storage:
        await storage.upload_file(b"RIFF", object_key="a/b.wav")
    before = _tree(tmp_path)
    async with _store(tmp_path) as storage:
        assert await storage.download_file("a/b.wav") == b"RIFF"
        assert await storage.file_exists("a/b.wav")
        assert not await storage.file_exists("a/c.wav")
        assert [i.object_key async for i in storage.list_files()] == ["a/b.wav"]
        url = await storage.generate_presigned_url("a/b.wav")  # the key exists since the upload
        assert storage.verify_presigned_url(url) == "a/b.wav"
    assert _tree(tmp_path) == before


@pytest.mark.asyncio
async def test_fs_writes_leave_no_lock_files(tmp_path: Path) -> None:
    async with _store(tmp_path, fsync=False) as storage:
        keys = [f"u/{i}.wav" for i in range(100)]
        await asyncio.gather(*(storage.upload_file(b"x", object_key=k) for k in keys))
        await asyncio.gather(*(storage.delete_file(k) for k in keys[1:]))
    assert sorted(_tree(tmp_path)) == [
        "voice", "voice/.signing-key", "voice/objects", "voice/objects/u",
        f"voice/objects/u/0.wav{OBJECT_SUFFIX}", "voice/tmp",
    ]  # fmt: skip


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    return subprocess.run(
        [sys.executable, "-m", "voice_infra.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
    )  # fmt: skip


def test_cli_read_only_commands_create_nothing(tmp_path: Path) -> None:
    for args in (("ls",), ("ls", "-l", "a/"), ("config",), ("download", "a/b.wav", "-")):
        result = _cli(*args, cwd=tmp_path)
        assert result.returncode in (0, 2), result.stderr
    url = _cli("url", "a/b.wav", cwd=tmp_path)
    assert url.returncode == 2 and "not found" in url.stderr
    assert list(tmp_path.iterdir()) == []
    source = tmp_path.parent / f"{tmp_path.name}-source.wav"
    source.write_bytes(b"RIFF")
    assert _cli("upload", str(source), "--key", "a/b.wav", cwd=tmp_path).returncode == 0
    before = _tree(tmp_path)
    for args in (("ls", "-l"), ("url", "a/b.wav"), ("download", "a/b.wav", "-"), ("rm", "z")):
        assert _cli(*args, cwd=tmp_path).returncode in (0, 1)
    assert _tree(tmp_path) == before


# -- properties ----------------------------------------------------------------------------

_trailer_like = st.sampled_from(
    [b"", b"}", b'{"content_type": "x"}', b"VIOBJv1\n", b"\x00" * 16, b"\xff" * 24]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.tuples(st.binary(max_size=3000), _trailer_like).map(lambda parts: b"".join(parts)),
    metadata=st.dictionaries(
        st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        max_size=4,
    ),
    bounds=st.tuples(st.integers(0, 3100), st.one_of(st.none(), st.integers(0, 3100))),
)
def test_fs_any_object_reads_back_whole_in_both_layouts(
    payload: bytes, metadata: dict[str, str], bounds: tuple[int, int | None]
) -> None:
    """Any bytes (including ones that look like the metadata trailer) and metadata round
    trip; ranges are the matching slice; an object of the previous layout with the same
    bytes reads back the same."""
    start, end = bounds
    if end is not None and end < start:
        start, end = end, start
    stop = None if end is None else end + 1

    async def check() -> None:
        with tempfile.TemporaryDirectory() as root:
            _legacy_object(Path(root) / "voice" / "objects", "old", payload, metadata=metadata)
            async with _store(Path(root), fsync=False) as storage:
                info = await storage.upload_file(
                    payload, object_key="new", content_type="audio/ogg; codecs=opus",
                    metadata=metadata,
                )  # fmt: skip
                for key in ("new", "old"):
                    stored = await storage.get_file_info(key)
                    assert (stored.file_size, stored.checksum) == (info.file_size, info.checksum)
                    assert stored.metadata == metadata
                    assert await storage.download_file(key) == payload
                    ranged = b"".join([c async for c in storage.stream_range(key, start, end)])
                    assert ranged == payload[start:stop]
                listed = [(i.object_key, i.file_size) async for i in storage.list_files()]
                assert listed == [("new", len(payload)), ("old", len(payload))]

    asyncio.run(check())


@pytest.mark.asyncio
async def test_fs_uploads_cancelled_at_any_moment_leak_no_descriptor_or_file(
    tmp_path: Path,
) -> None:
    """A cancelled upload (a timeout layer, a client gone) waits for the worker thread it
    started before closing the staged file: no descriptor, no temporary file is left, and
    no thread writes to a closed (maybe reused) descriptor."""
    storage = _store(tmp_path, fsync=False)
    rng = random.Random(7)

    async def chunks() -> Any:
        for _ in range(200):
            yield os.urandom(64 * 1024)
            await asyncio.sleep(0)

    async with storage:
        await storage.upload_file(b"warm", object_key="warm.wav")  # folders, signing key
        before = len(os.listdir("/proc/self/fd"))
        for attempt in range(150):
            task = asyncio.ensure_future(
                storage.upload_file(chunks(), object_key=f"k{attempt % 3}.wav")
            )
            # Mostly within the first milliseconds: while the temporary file is staged.
            await asyncio.sleep(rng.choice((0, 0, 0.0005, 0.001, 0.003)))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        after = len(os.listdir("/proc/self/fd"))
        staging = (
            [p for p in (storage.root / "tmp").iterdir()] if (storage.root / "tmp").exists() else []
        )
        assert staging == []
        assert after <= before
        for key in ("k0.wav", "k1.wav", "k2.wav"):
            if await storage.file_exists(key):
                assert await _check_whole(storage, key)


@pytest.mark.asyncio
@pytest.mark.parametrize("expected", [False, True])
async def test_fs_reads_cancelled_while_opening_leave_no_file_open(
    tmp_path: Path, expected: bool
) -> None:
    """A read cancelled while its worker thread opens the file (a timeout layer, a client
    gone) closes that file once the thread is done: nothing leaks."""
    async with FileSystemStorage(FileSystemStorageSettings(path=tmp_path)) as storage:
        await storage.upload_file(b"x" * 1000, object_key="a/b.bin")
        info = await storage.get_file_info("a/b.bin")

        async def read() -> None:
            chunks = storage.stream_range("a/b.bin", 0, expected=info if expected else None)
            async for _ in chunks:
                pass

        await read()  # the executor's threads exist before counting
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            task = asyncio.ensure_future(read())
            await asyncio.sleep(0)  # the open is under way in a thread
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.2)  # any thread still opening has finished
        assert len(os.listdir("/proc/self/fd")) <= before
