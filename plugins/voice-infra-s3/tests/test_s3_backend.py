"""S3 backend behaviour beyond the shared contract, against moto's server over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import inspect
import io
import random
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiobotocore.session import AioSession
from aiohttp import web
from conftest import ACCESS_KEY, BUCKET, SECRET_KEY, reset_moto, s3_storage_options
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.errors import (
    ConfigError,
    InvalidMetadataError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
)
from voice_infra.storage import StorageBackend

MIB = 1024 * 1024
asyncio_test = pytest.mark.asyncio


@pytest_asyncio.fixture
async def raw_s3(s3_server: str) -> AsyncIterator[Any]:
    """A plain aiobotocore client on the same moto, to look behind the backend's back."""
    session = AioSession()
    async with session.create_client(
        "s3", endpoint_url=s3_server, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    ) as client:  # fmt: skip
        yield client


async def incomplete_uploads(raw_s3: Any) -> list[dict[str, Any]]:
    page = await raw_s3.list_multipart_uploads(Bucket=BUCKET)
    return list(page.get("Uploads", []))


async def pattern_stream(total: int, chunk: int = MIB) -> AsyncIterator[bytes]:
    """``total`` bytes of a repeating pattern, of unknown length to the backend."""
    block = bytes(range(256)) * (chunk // 256)
    sent = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        sent += len(piece)
        yield piece


def pattern_bytes(total: int) -> bytes:
    return (bytes(range(256)) * (total // 256 + 1))[:total]


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


# -- presigned URLs ------------------------------------------------------------------------


@asyncio_test
async def test_presigned_get_is_fetched_with_plain_http(
    make_s3_storage: Callable[..., Any],
) -> None:
    data = b"RIFF" + bytes(range(256)) * 64
    async with make_s3_storage() as storage:
        await storage.upload_file(data, object_key="calls/ü 1.wav", content_type="audio/wav")
        url = await storage.generate_presigned_url("calls/ü 1.wav", expires_in=600)
    query = query_of(url)
    assert query["X-Amz-Expires"] == "600"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert SECRET_KEY not in url
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert await response.read() == data
        assert response.headers["Content-Type"] == "audio/wav"


@asyncio_test
async def test_presigned_put_accepts_an_upload(make_s3_storage: Callable[..., Any]) -> None:
    async with make_s3_storage(presign_ttl=120) as storage:
        url = await storage.generate_presigned_url("uploads/from-browser.ogg", method="PUT")
        assert query_of(url)["X-Amz-Expires"] == "120"  # the presign_ttl default
        async with (
            aiohttp.ClientSession() as http,
            http.put(url, data=b"OggS-browser", headers={"Content-Type": "audio/ogg"}) as response,
        ):
            assert response.status == 200, await response.text()
        assert await storage.download_file("uploads/from-browser.ogg") == b"OggS-browser"
        info = await storage.get_file_info("uploads/from-browser.ogg")
        assert (info.file_size, info.content_type, info.checksum) == (12, "audio/ogg", None)


class TcpForwarder:
    """A second loopback port forwarded to the S3 server (a stand-in for a public
    hostname in front of MinIO); counts the connections it carried."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpForwarder:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        tasks = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        self._pipes.update(tasks)
        await asyncio.gather(*tasks)
        self._pipes.difference_update(tasks)

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()


@asyncio_test
async def test_public_endpoint_url_signs_for_the_public_host(
    s3_server: str, make_s3_storage: Callable[..., Any]
) -> None:
    internal_port = urlsplit(s3_server).port
    assert internal_port is not None
    async with TcpForwarder(internal_port) as public:
        public_url = f"http://localhost:{public.port}"
        async with make_s3_storage(public_endpoint_url=public_url) as storage:
            await storage.upload_file(b"public bytes", object_key="p/a.wav")
            get_url = await storage.generate_presigned_url("p/a.wav", expires_in=900)
            put_url = await storage.generate_presigned_url("p/b.wav", method="PUT")
            # Uploads use the internal endpoint and presigning needs no network.
            assert public.connections == 0
            assert urlsplit(get_url).netloc == f"localhost:{public.port}"
            assert urlsplit(put_url).netloc == f"localhost:{public.port}"
            assert query_of(get_url)["X-Amz-Expires"] == "900"
            assert query_of(get_url)["X-Amz-SignedHeaders"] == "host"
            async with aiohttp.ClientSession() as http:
                async with http.get(get_url) as response:
                    assert response.status == 200
                    assert await response.read() == b"public bytes"
                async with http.put(put_url, data=b"via public host") as response:
                    assert response.status == 200
            assert public.connections >= 1
            assert await storage.download_file("p/b.wav") == b"via public host"
            # The internal client is untouched by the public one.
            internal = await make_s3_storage().__aenter__()
            try:
                url = await internal.generate_presigned_url("p/a.wav")
                assert urlsplit(url).netloc == urlsplit(s3_server).netloc
            finally:
                await internal.aclose()


# -- multipart uploads -------------------------------------------------------------------------


def _multipart_options() -> dict[str, Any]:
    return {"multipart_threshold": "5MiB", "multipart_part_size": "5MiB", "upload_concurrency": 2}


@asyncio_test
async def test_multipart_upload_of_unknown_length(
    make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    total = 12 * MIB + 123
    async with make_s3_storage(**_multipart_options()) as storage:
        info = await storage.upload_file(
            pattern_stream(total, 1_000_003), object_key="big/stream.wav",
            content_type="audio/wav", metadata={"lang": "de"},
        )  # fmt: skip
        expected = pattern_bytes(total)
        assert info.file_size == total
        assert info.checksum == hashlib.sha256(expected).hexdigest()
        assert await storage.download_file("big/stream.wav") == expected
        stored = await storage.get_file_info("big/stream.wav")
        assert (stored.content_type, stored.metadata) == ("audio/wav", {"lang": "de"})
        assert stored.checksum == info.checksum  # tagged after completion
    head = await raw_s3.head_object(Bucket=BUCKET, Key="big/stream.wav")
    assert head["ETag"].strip('"').endswith("-3")  # 5 MiB + 5 MiB + the rest
    assert await incomplete_uploads(raw_s3) == []


@asyncio_test
async def test_multipart_upload_of_known_length(
    make_s3_storage: Callable[..., Any], raw_s3: Any, tmp_path: Any
) -> None:
    data = pattern_bytes(11 * MIB)
    path = tmp_path / "long.wav"
    path.write_bytes(data)
    async with make_s3_storage(**_multipart_options()) as storage:
        await storage.upload_file(path, object_key="big/file.wav")
        await storage.upload_file(data, object_key="big/bytes.wav")
        for key in ("big/file.wav", "big/bytes.wav"):
            assert await storage.download_file(key) == data
            head = await raw_s3.head_object(Bucket=BUCKET, Key=key)
            assert head["ETag"].strip('"').endswith("-3")


@asyncio_test
async def test_body_ending_below_threshold_is_one_put(
    make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    total = 5 * MIB  # exactly the threshold: not larger, so one PUT
    async with make_s3_storage(**_multipart_options()) as storage:
        info = await storage.upload_file(pattern_stream(total), object_key="edge.bin")
        stored = await storage.get_file_info("edge.bin")
        assert stored.checksum == info.checksum
    head = await raw_s3.head_object(Bucket=BUCKET, Key="edge.bin")
    assert "-" not in head["ETag"]


@asyncio_test
async def test_multipart_failing_source_leaves_nothing(
    make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        async for chunk in pattern_stream(13 * MIB):
            yield chunk
        raise OSError("microphone unplugged")

    async with make_s3_storage(**_multipart_options()) as storage:
        with pytest.raises(OSError, match="microphone unplugged"):
            await storage.upload_file(failing(), object_key="broken/big.wav")
        assert not await storage.file_exists("broken/big.wav")
    assert await incomplete_uploads(raw_s3) == []


Intercept = Callable[[web.Request, bytes], "web.Response | Awaitable[web.Response | None] | None"]


async def _s3_proxy(target: str, intercept: Intercept) -> web.AppRunner:
    """A reverse proxy to the S3 server on a free loopback port. ``intercept`` sees each
    request with its body first: it may answer it itself (a fault) or return None to let
    it through, either at once or from an awaitable (a delay)."""
    session = aiohttp.ClientSession(auto_decompress=False)

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = intercept(request, body)
        if inspect.isawaitable(answer):
            answer = await answer
        if answer is not None:
            return answer
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with session.request(
            request.method, f"{target}{request.rel_url}", headers=headers, data=io.BytesIO(body)
        ) as upstream:
            content = await upstream.read()
            skip = {"transfer-encoding", "content-length", "content-encoding", "connection"}
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in skip}
            return web.Response(status=upstream.status, body=content, headers=kept)

    app = web.Application(client_max_size=64 * MIB)
    app.router.add_route("*", "/{tail:.*}", handler)
    app.on_cleanup.append(lambda _app: session.close())
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _proxy_url(runner: web.AppRunner) -> str:
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


@asyncio_test
async def test_an_abort_answered_with_a_5xx_is_tried_again(
    s3_server: str, make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    aborts: list[int] = []

    def first_abort_fails(request: web.Request, body: bytes) -> web.Response | None:
        # As a server does when a part still arriving races the abort.
        if request.method == "DELETE" and "uploadId" in request.query:
            aborts.append(500 if not aborts else 0)  # 0: forwarded
            if aborts == [500]:
                error = "<?xml version='1.0'?><Error><Code>InternalError</Code></Error>"
                return web.Response(status=500, text=error, content_type="application/xml")
        return None

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in pattern_stream(11 * MIB):
            yield chunk
        raise OSError("microphone unplugged")

    runner = await _s3_proxy(s3_server, first_abort_fails)
    try:
        storage = make_s3_storage(endpoint_url=_proxy_url(runner), **_multipart_options())
        async with storage:
            with pytest.raises(OSError, match="microphone unplugged"):
                await storage.upload_file(failing(), object_key="retry/abort.wav")
    finally:
        await runner.cleanup()
    assert aborts == [500, 0]  # the first abort failed, the second went through
    assert await incomplete_uploads(raw_s3) == []


@asyncio_test
async def test_abort_tries_stay_within_the_bound_of_one_call(
    s3_server: str, make_s3_storage: Callable[..., Any]
) -> None:
    """A server answering every abort with a 5xx, slowly: the tries are repeated, but
    all of them together end within the failure bound of one call (docs/s3.md)."""
    delay, aborts = 1.8, []

    async def slow_500() -> web.Response:
        await asyncio.sleep(delay)  # below read_timeout: each try gets its answer
        error = "<?xml version='1.0'?><Error><Code>InternalError</Code></Error>"
        return web.Response(status=500, text=error, content_type="application/xml")

    def slow_failing_abort(request: web.Request, body: bytes) -> Awaitable[web.Response] | None:
        if request.method == "DELETE" and "uploadId" in request.query:
            aborts.append(time.monotonic())
            return slow_500()
        return None

    failed_at: list[float] = []

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in pattern_stream(11 * MIB):
            yield chunk
        failed_at.append(time.monotonic())
        raise OSError("microphone unplugged")

    runner = await _s3_proxy(s3_server, slow_failing_abort)
    try:
        storage = make_s3_storage(
            endpoint_url=_proxy_url(runner), connect_timeout=1, read_timeout=2, max_attempts=1,
            **_multipart_options(),
        )  # fmt: skip
        async with storage:
            with pytest.raises(OSError, match="microphone unplugged"):
                await storage.upload_file(failing(), object_key="retry/slow.wav")
            elapsed = time.monotonic() - failed_at[0]
    finally:
        await runner.cleanup()
    bound = 1 * (1 + 2)  # max_attempts x (connect_timeout + read_timeout), no backoff
    assert len(aborts) >= 2, "an abort answered with a 5xx was not tried again"
    assert elapsed < bound + 0.5, (elapsed, bound, len(aborts))


@pytest.mark.parametrize("size", [0, 10 * 1024, 3 * MIB])
@asyncio_test
async def test_a_put_is_signed_with_the_checksum_it_carries(
    s3_server: str, make_s3_storage: Callable[..., Any], size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin signs a single PUT with the SHA-256 it computed for the checksum
    instead of letting botocore hash the body again: the known-digest signer is chosen
    for the PUT, and the signed payload hash on the wire is the SHA-256 of the bytes
    that arrive, and the stored checksum."""
    from voice_infra_s3 import backend

    chosen: list[str | None] = []
    choose = backend._known_digest_signer

    def recording_choice(**kwargs: Any) -> str | None:
        chosen.append(choose(**kwargs))
        return chosen[-1]

    monkeypatch.setattr(backend, "_known_digest_signer", recording_choice)  # our own handler
    seen: list[tuple[str, str]] = []

    def record(request: web.Request, body: bytes) -> None:
        if request.method == "PUT" and "uploadId" not in request.query:
            seen.append((request.headers["X-Amz-Content-SHA256"], hashlib.sha256(body).hexdigest()))
        return None

    data = pattern_bytes(size)
    runner = await _s3_proxy(s3_server, record)
    try:
        async with make_s3_storage(endpoint_url=_proxy_url(runner)) as storage:
            info = await storage.upload_file(data, object_key="signed/put.bin")
            assert await storage.download_file("signed/put.bin") == data
            assert (await storage.get_file_info("signed/put.bin")).checksum == info.checksum
    finally:
        await runner.cleanup()
    assert seen == [(info.checksum, info.checksum)]
    assert info.checksum == hashlib.sha256(data).hexdigest()
    assert chosen == [backend.KNOWN_DIGEST_SIGNER]


def test_only_plain_sigv4_puts_use_the_known_digest_signer() -> None:
    from voice_infra_s3.backend import KNOWN_DIGEST_SIGNER, _known_digest_signer

    assert _known_digest_signer("s3", "s3v4", {}) == KNOWN_DIGEST_SIGNER
    assert _known_digest_signer("s3", "s3v4", {"auth_type": "v4"}) == KNOWN_DIGEST_SIGNER
    assert _known_digest_signer("s3", "s3v4", {"auth_type": "s3v4"}) == KNOWN_DIGEST_SIGNER
    for signing_name, version, context in [
        ("s3", "s3v4-query", {}),  # presigning
        ("s3", "s3v4", {"auth_type": "v4-s3express"}),
        ("s3", "s3v4", {"auth_type": "v4a"}),
        ("s3", "s3v4", {"auth_type": "v4", "unsigned_payload": True}),
        ("s3", "s3v4", {"auth_type": "none"}),
        ("s3-outposts", "s3v4", {}),
    ]:
        assert _known_digest_signer(signing_name, version, context) is None


@asyncio_test
async def test_multipart_cancelled_leaves_nothing(
    make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    parts_sent = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in pattern_stream(12 * MIB):
            yield chunk
        parts_sent.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b"never"

    async with make_s3_storage(**_multipart_options()) as storage:
        task = asyncio.create_task(storage.upload_file(stalls(), object_key="cancel/big.wav"))
        await asyncio.wait_for(parts_sent.wait(), 30)
        for _ in range(100):  # wait until the parts are on the server
            uploads = await incomplete_uploads(raw_s3)
            if uploads:
                parts = await raw_s3.list_parts(
                    Bucket=BUCKET, Key="cancel/big.wav", UploadId=uploads[0]["UploadId"]
                )
                if len(parts.get("Parts", [])) == 2:
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the multipart upload did not start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await storage.file_exists("cancel/big.wav")
    assert await incomplete_uploads(raw_s3) == []


@asyncio_test
async def test_cancelled_while_parts_in_flight(
    make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    async with make_s3_storage(**_multipart_options()) as storage:
        for delay in (0.0, 0.02, 0.05, 0.1, 0.15, 0.3):
            task = asyncio.create_task(
                storage.upload_file(pattern_stream(30 * MIB), object_key="cancel/inflight.wav")
            )
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert await incomplete_uploads(raw_s3) == []
            # Cancelled before completion: nothing; during the (shielded) completion:
            # the whole object. Never a partial one.
            if await storage.file_exists("cancel/inflight.wav"):
                data = await storage.download_file("cancel/inflight.wav")
                assert data == pattern_bytes(30 * MIB)
                await storage.delete_file("cancel/inflight.wav")


@asyncio_test
async def test_cancelled_while_the_upload_is_being_created(
    s3_server: str, make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    """Cancelled while CreateMultipartUpload is on its way: the server creates the
    upload all the same, so the backend waits for the answer and aborts it."""
    create_sent = asyncio.Event()

    async def forward_late() -> None:
        create_sent.set()
        await asyncio.sleep(0.3)  # the caller is cancelled meanwhile

    def slow_create(request: web.Request, body: bytes) -> Awaitable[None] | None:
        if request.method == "POST" and "uploads" in request.query:
            return forward_late()
        return None

    runner = await _s3_proxy(s3_server, slow_create)
    try:
        storage = make_s3_storage(endpoint_url=_proxy_url(runner), **_multipart_options())
        async with storage:
            task = asyncio.create_task(
                storage.upload_file(pattern_stream(11 * MIB), object_key="cancel/create.wav")
            )
            await asyncio.wait_for(create_sent.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.6)  # the delayed create has reached the server by now
            assert await incomplete_uploads(raw_s3) == []
            assert not await storage.file_exists("cancel/create.wav")
    finally:
        await runner.cleanup()


@asyncio_test
async def test_abort_incomplete_uploads(make_s3_storage: Callable[..., Any], raw_s3: Any) -> None:
    for key in ("left/1.wav", "left/2.wav"):
        await raw_s3.create_multipart_upload(Bucket=BUCKET, Key=key)
    initiated = {u["Initiated"] for u in await incomplete_uploads(raw_s3)}
    assert len(initiated) == 1  # moto reports one fixed start time (in 2010) for all
    age = datetime.now(UTC) - initiated.pop()
    async with make_s3_storage() as storage:
        # Younger than the cutoff: kept.
        assert await storage.abort_incomplete_uploads(age + timedelta(days=1)) == []
        assert len(await incomplete_uploads(raw_s3)) == 2
        aborted = await storage.abort_incomplete_uploads(timedelta(hours=24))
        assert sorted(aborted) == ["left/1.wav", "left/2.wav"]
        assert await incomplete_uploads(raw_s3) == []
        assert await storage.abort_incomplete_uploads(timedelta(0)) == []


# -- listing, metadata, streaming ------------------------------------------------------------


@asyncio_test
async def test_list_follows_continuation_tokens(make_s3_storage: Callable[..., Any]) -> None:
    keys = [f"rec/{i:02d}.ogg" for i in range(7)]
    async with make_s3_storage(list_page_size=2) as storage:
        for index, key in enumerate(keys):
            await storage.upload_file(
                b"x" * index, object_key=key, content_type="audio/ogg",
                metadata={"index": str(index)},
            )  # fmt: skip
        pages: list[str] = []
        storage._client.meta.events.register(  # type: ignore[attr-defined]
            "before-call.s3.ListObjectsV2", lambda **kw: pages.append("page")
        )
        listed = [info async for info in storage.list_files("rec/")]
        assert len(pages) == 4
        assert [info.object_key for info in listed] == keys
        assert [info.file_size for info in listed] == list(range(7))
        assert all(info.content_type == "audio/ogg" for info in listed)
        assert [info.metadata for info in listed] == [{"index": str(i)} for i in range(7)]


@asyncio_test
async def test_metadata_and_content_type_round_trip(make_s3_storage: Callable[..., Any]) -> None:
    metadata = {"user-id": "u-7", "duration-ms": "1200", "codec": "opus"}
    async with make_s3_storage() as storage:
        uploaded = await storage.upload_file(
            b"OggS", object_key="m/x.opus", content_type="audio/ogg; codecs=opus", metadata=metadata
        )
        info = await storage.get_file_info("m/x.opus")
        assert info.content_type == "audio/ogg; codecs=opus"
        assert info.metadata == metadata
        assert info.checksum == uploaded.checksum == hashlib.sha256(b"OggS").hexdigest()
        # Metadata filling S3's 2 KiB leaves no room for the checksum: it is a tag.
        big = {"blob": "v" * 2040}
        await storage.upload_file(b"y", object_key="m/big", metadata=big)
        info = await storage.get_file_info("m/big")
        assert (info.metadata, info.checksum) == (big, hashlib.sha256(b"y").hexdigest())


@asyncio_test
async def test_stream_uses_full_chunks(make_s3_storage: Callable[..., Any]) -> None:
    data = pattern_bytes(3 * MIB + 17)
    async with make_s3_storage(chunk_size="256KiB") as storage:
        await storage.upload_file(data, object_key="s/long.bin")
        chunks = [chunk async for chunk in storage.stream_file("s/long.bin")]
        assert b"".join(chunks) == data
        assert [len(c) for c in chunks[:-1]] == [256 * 1024] * (len(chunks) - 1)
        assert len(chunks[-1]) == 17


@asyncio_test
async def test_early_stop_releases_the_connection(make_s3_storage: Callable[..., Any]) -> None:
    data = pattern_bytes(2 * MIB)
    async with make_s3_storage(max_pool_connections=1, chunk_size="64KiB") as storage:
        await storage.upload_file(data, object_key="s/early.bin")
        for _ in range(15):  # with one pooled connection, a leak would block the next call
            stream = storage.stream_file("s/early.bin")
            assert len(await anext(stream)) == 64 * 1024
            await stream.aclose()
        assert await asyncio.wait_for(storage.download_file("s/early.bin"), 10) == data


@asyncio_test
async def test_hundred_concurrent_uploads_and_downloads(
    make_s3_storage: Callable[..., Any],
) -> None:
    payloads = {f"many/{i:03d}.bin": pattern_bytes(1000 + i * 997) + bytes([i]) for i in range(100)}
    async with make_s3_storage() as storage:
        client = storage._client  # type: ignore[attr-defined]
        infos = await asyncio.gather(
            *(storage.upload_file(data, object_key=key) for key, data in payloads.items())
        )
        assert [i.checksum for i in infos] == [
            hashlib.sha256(d).hexdigest() for d in payloads.values()
        ]
        downloaded = await asyncio.gather(*(storage.download_file(key) for key in payloads))
        assert downloaded == list(payloads.values())
        # Mixed: overwrite half while downloading the other half.
        keys = list(payloads)
        results = await asyncio.gather(
            *(storage.upload_file(b"new", object_key=k) for k in keys[:50]),
            *(storage.download_file(k) for k in keys[50:]),
        )
        assert results[50:] == [payloads[k] for k in keys[50:]]
        assert storage._client is client  # type: ignore[attr-defined]  # one client throughout


# -- lifecycle ---------------------------------------------------------------------------------


@asyncio_test
async def test_one_client_opened_once_and_closed(make_s3_storage: Callable[..., Any]) -> None:
    storage = make_s3_storage()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await asyncio.gather(*(storage.file_exists(f"k{i}") for i in range(10)))  # first use
        client = storage._client
        assert client is not None
        await storage.upload_file(b"a", object_key="a")
        assert storage._client is client
        await storage.aclose()
        assert storage._client is None
        async with storage:  # may be opened again
            assert await storage.download_file("a") == b"a"
            assert storage._client is not client
        del client
        gc.collect()
    assert not [w for w in caught if "nclosed" in str(w.message)], caught


# -- configuration -----------------------------------------------------------------------------


@asyncio_test
async def test_missing_bucket_is_a_config_error(make_s3_storage: Callable[..., Any]) -> None:
    storage = make_s3_storage(bucket="no-such-voice-bucket")
    with pytest.raises(ConfigError, match="no-such-voice-bucket") as caught:
        await storage.__aenter__()
    assert "create_bucket_if_missing" in str(caught.value)
    assert isinstance(caught.value, StorageError)
    assert storage._client is None  # type: ignore[attr-defined]
    await storage.aclose()


@asyncio_test
async def test_bucket_deleted_later_is_a_config_error(
    make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    async with make_s3_storage() as storage:
        await raw_s3.delete_bucket(Bucket=BUCKET)
        with pytest.raises(ConfigError, match=BUCKET):
            await storage.upload_file(b"x", object_key="x")


@asyncio_test
async def test_create_bucket_if_missing(
    s3_server: str, make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    reset_moto(s3_server, bucket=None)
    async with make_s3_storage(bucket="fresh-bucket", create_bucket_if_missing=True) as storage:
        await storage.upload_file(b"x", object_key="k")
    await raw_s3.head_bucket(Bucket="fresh-bucket")
    async with make_s3_storage(bucket="fresh-bucket", create_bucket_if_missing=True) as storage:
        assert await storage.download_file("k") == b"x"  # existing bucket: left alone


async def _fake_s3(status: int, code: str) -> web.AppRunner:
    """An HTTP server answering every request with an S3 error document."""

    async def handler(request: web.Request) -> web.Response:
        body = (
            f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>fake {code}</Message></Error>"
        )
        return web.Response(status=status, text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (403, "AccessDenied", StoragePermissionError),
        (503, "SlowDown", StorageUnavailableError),
        (500, "InternalError", StorageUnavailableError),
        (400, "InvalidArgument", StorageError),
    ],
)
@asyncio_test
async def test_http_errors_are_mapped(
    s3_options: dict[str, Any], status: int, code: str, error: type[Exception]
) -> None:
    runner = await _fake_s3(status, code)
    try:
        port = runner.addresses[0][1]
        options = {**s3_options, "endpoint_url": f"http://127.0.0.1:{port}"}
        storage = vi.create_storage(vi.Settings(storage=options))
        with pytest.raises(error) as caught:
            await storage.__aenter__()  # HEAD bucket: status only
        assert caught.value.__cause__ is not None
        storage._check_bucket = _noop  # type: ignore[attr-defined]
        async with storage:
            with pytest.raises(error, match=code) as caught:
                await storage.download_file("k")  # GET: with the error document
            assert not isinstance(caught.value, ObjectNotFoundError)
    finally:
        await runner.cleanup()


async def _noop() -> None:
    return None


def test_backend_class_and_names(s3_options: dict[str, Any]) -> None:
    storage: StorageBackend = vi.create_storage(vi.Settings(storage=s3_options))
    assert type(storage).__name__ == "S3Storage"
    assert storage.backend_name == "s3"
    assert storage.bucket_name == BUCKET
    assert storage.capabilities == {
        "presign",
        "multipart",
        "range_read",
        "persistent",
        "versioned_read",
    }
    alias = vi.create_storage(vi.Settings(storage={**s3_options, "backend": "minio"}))
    assert type(alias) is type(storage)


# -- checksums of every upload -------------------------------------------------------------


async def _tags(raw_s3: Any, key: str) -> dict[str, str]:
    response = await raw_s3.get_object_tagging(Bucket=BUCKET, Key=key)
    return {tag["Key"]: tag["Value"] for tag in response["TagSet"]}


@pytest.mark.parametrize("source_kind", ["bytes", "path", "async iterable"])
@asyncio_test
async def test_a_multipart_upload_reports_its_sha256(
    make_s3_storage: Callable[..., Any], raw_s3: Any, tmp_path: Any, source_kind: str
) -> None:
    data = pattern_bytes(11 * MIB + 5)
    source: Any = {
        "bytes": data,
        "path": tmp_path / "long.wav",
        "async iterable": pattern_stream(len(data), 777_777),
    }[source_kind]
    if source_kind == "path":
        source.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    async with make_s3_storage(**_multipart_options()) as storage:
        uploaded = await storage.upload_file(source, object_key="mp/a.wav", metadata={"n": "1"})
        stored = await storage.get_file_info("mp/a.wav")
        [listed] = [info async for info in storage.list_files("mp/")]
    assert uploaded.checksum == stored.checksum == listed.checksum == expected
    assert stored.metadata == listed.metadata == {"n": "1"}  # the checksum is not metadata
    head = await raw_s3.head_object(Bucket=BUCKET, Key="mp/a.wav")
    assert head["ETag"].strip('"').endswith("-3")  # really uploaded in parts
    assert await _tags(raw_s3, "mp/a.wav") == {
        "vi-sha256": expected, "vi-etag": head["ETag"].strip('"'),
    }  # fmt: skip


@asyncio_test
async def test_a_checksum_tag_written_for_another_object_is_ignored(
    make_s3_storage: Callable[..., Any], raw_s3: Any
) -> None:
    """Between CompleteMultipartUpload and the tag, another writer may replace the
    object: the tag names the ETag it was written for, so it never vouches for
    other bytes."""
    async with make_s3_storage(**_multipart_options()) as storage:
        await storage.upload_file(pattern_bytes(6 * MIB), object_key="mp/raced.wav")
        head = await raw_s3.head_object(Bucket=BUCKET, Key="mp/raced.wav")
        tags = await _tags(raw_s3, "mp/raced.wav")
        # Another writer's multipart object under the same key, then the late tag.
        created = await raw_s3.create_multipart_upload(Bucket=BUCKET, Key="mp/raced.wav")
        part = await raw_s3.upload_part(
            Bucket=BUCKET, Key="mp/raced.wav", UploadId=created["UploadId"], PartNumber=1,
            Body=b"other writer",
        )  # fmt: skip
        await raw_s3.complete_multipart_upload(
            Bucket=BUCKET, Key="mp/raced.wav", UploadId=created["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )  # fmt: skip
        await raw_s3.put_object_tagging(
            Bucket=BUCKET, Key="mp/raced.wav",
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )  # fmt: skip
        assert (await raw_s3.head_object(Bucket=BUCKET, Key="mp/raced.wav"))["ETag"] != head["ETag"]
        assert (await storage.get_file_info("mp/raced.wav")).checksum is None


@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (501, "NotImplemented")])
@asyncio_test
async def test_without_tagging_a_multipart_upload_still_succeeds(
    s3_server: str, make_s3_storage: Callable[..., Any], caplog: pytest.LogCaptureFixture,
    status: int, code: str,
) -> None:  # fmt: skip
    """A server that refuses object tags (no s3:PutObjectTagging / GetObjectTagging, or
    not implemented): the upload is stored and returns its checksum, a warning says the
    stored object will report none, and reading its info still works."""

    def no_tagging(request: web.Request, body: bytes) -> web.Response | None:
        if "tagging" in request.query:
            error = f"<?xml version='1.0'?><Error><Code>{code}</Code></Error>"
            return web.Response(status=status, text=error, content_type="application/xml")
        return None

    data = pattern_bytes(6 * MIB)
    runner = await _s3_proxy(s3_server, no_tagging)
    try:
        storage = make_s3_storage(endpoint_url=_proxy_url(runner), **_multipart_options())
        async with storage:
            with caplog.at_level("WARNING", logger="voice_infra_s3.backend"):
                uploaded = await storage.upload_file(data, object_key="mp/untagged.wav")
            assert uploaded.checksum == hashlib.sha256(data).hexdigest()
            assert "s3:PutObjectTagging" in caplog.text and code in caplog.text
            stored = await storage.get_file_info("mp/untagged.wav")
            assert (stored.object_key, stored.checksum) == ("mp/untagged.wav", None)
            assert await storage.download_file("mp/untagged.wav") == data
    finally:
        await runner.cleanup()


@asyncio_test
async def test_the_checksum_metadata_name_is_reserved(
    make_s3_storage: Callable[..., Any],
) -> None:
    async with make_s3_storage() as storage:
        with pytest.raises(InvalidMetadataError, match=r"'vi-sha256' is reserved"):
            await storage.upload_file(b"x", object_key="r/x", metadata={"vi-sha256": "0" * 64})
        assert not await storage.file_exists("r/x")


async def _chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.one_of(
        st.integers(0, 4096),
        st.integers(5 * MIB - 2, 5 * MIB + 2),  # around the multipart threshold
        st.integers(10 * MIB - 1, 10 * MIB + 1),  # around a part boundary
    ),
    source_kind=st.sampled_from(["bytes", "path", "async iterable"]),
    chunk=st.integers(1024, 3 * MIB),
    metadata_bytes=st.one_of(st.just(0), st.integers(1960, 2044)),  # room for the checksum or not
    seed=st.integers(0, 2**32 - 1),
)
@example(size=5 * MIB + 1, source_kind="async iterable", chunk=MIB, metadata_bytes=2044, seed=1)
@example(size=10 * MIB + 1, source_kind="path", chunk=MIB, metadata_bytes=0, seed=2)
@example(size=100, source_kind="bytes", chunk=MIB, metadata_bytes=1976, seed=3)  # no room
def test_every_upload_reports_its_sha256(
    s3_server: str, tmp_path: Any, size: int, source_kind: str, chunk: int,
    metadata_bytes: int, seed: int,
) -> None:  # fmt: skip
    """Whatever the size, source and metadata: single PUT or multipart, with or without
    room in the metadata, upload_file, get_file_info and list_files report the same
    SHA-256, that of the bytes."""
    data = random.Random(seed).randbytes(size)
    metadata = {"pad": "p" * (metadata_bytes - 3)} if metadata_bytes else {}
    path = tmp_path / f"{seed}.bin"

    async def run() -> tuple[str | None, str | None, str | None]:
        source: Any = data
        if source_kind == "path":
            path.write_bytes(data)
            source = path
        elif source_kind == "async iterable":
            source = _chunks_of(data, chunk)
        options = {**s3_storage_options(s3_server), **_multipart_options()}
        async with vi.create_storage(vi.Settings(storage=options)) as storage:
            uploaded = await storage.upload_file(source, object_key="p/x.bin", metadata=metadata)
            stored = await storage.get_file_info("p/x.bin")
            [listed] = [info async for info in storage.list_files("p/")]
            assert stored.metadata == listed.metadata == metadata
            return uploaded.checksum, stored.checksum, listed.checksum

    reset_moto(s3_server)
    expected = hashlib.sha256(data).hexdigest()
    assert asyncio.run(run()) == (expected, expected, expected)


@asyncio_test
async def test_a_replacement_between_head_and_get_is_an_object_change(
    make_s3_storage: Callable[..., Any],
) -> None:
    """stream_range(expected=...) on S3 is a HEAD, then a GET with If-Match on the HEAD's
    ETag: an upload landing between the two fails the GET's precondition on the server
    (412), which is ObjectChangedError, never the new version's bytes."""
    from voice_infra.errors import ObjectChangedError
    from voice_infra.layers import unwrap

    async with make_s3_storage(max_pool_connections=2) as storage:
        await storage.upload_file(b"first", object_key="v/k.bin")
        info = await storage.get_file_info("v/k.bin")
        backend = unwrap(storage)
        read_head = backend._info_from_head
        replaced = 0

        async def head_then_replace(key: str, response: Any) -> Any:
            nonlocal replaced
            described = await read_head(key, response)
            if not replaced:  # another writer lands right after the HEAD
                replaced += 1
                await storage.upload_file(b"second!", object_key="v/k.bin")
            return described

        backend._info_from_head = head_then_replace
        received: list[bytes] = []
        with pytest.raises(ObjectChangedError, match="replaced while being opened"):
            async for chunk in storage.stream_range("v/k.bin", 0, expected=info):
                received.append(chunk)
        assert received == [] and replaced == 1
        backend._info_from_head = read_head
        fresh = await storage.get_file_info("v/k.bin")
        chunks = [c async for c in storage.stream_range("v/k.bin", 0, expected=fresh)]
        assert b"".join(chunks) == b"second!"
        # The failed GET did not keep a pooled connection: two more reads go through.
        for _ in range(2):
            assert await asyncio.wait_for(storage.download_file("v/k.bin"), 10) == b"second!"
