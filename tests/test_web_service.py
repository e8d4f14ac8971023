"""``voice-infra serve``'s app over the wire: uvicorn on a free loopback port, httpx as the
client; the same suite on the embedded default (fs + memory) and on S3 (moto's server) +
Redis (a redis-server of the test's own)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from web_server import ServerThread, free_port

from voice_infra import Settings
from voice_infra.web.app import create_app
from voice_infra.web.auth import mint_token
from voice_infra.web.settings import WebSettings, load_secret

AUDIO = b"RIFF" + bytes(range(256)) * 40  # 10 KiB and a bit
MAX_UPLOAD = 64 * 1024


@dataclass
class Service:
    url: str
    backend: str
    web: WebSettings

    def token(self, user: str, ttl: int = 600) -> str:
        return mint_token(load_secret(self.web), user, ttl)

    def client(self, user: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from voice_infra_s3.testing import moto_server

    with moto_server() as endpoint:
        yield endpoint


def _core(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    policies = ["30/second", "1000/minute"]
    if backend == "fs":
        return Settings.from_keywords(
            storage={"backend": "fs", "path": str(tmp_path / "data")},
            rate_limit={"backend": "memory", "policies": policies},
        )
    from voice_infra_redis.testing import RedisServer

    endpoint = request.getfixturevalue("moto_endpoint")
    urllib.request.urlopen(
        urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10
    ).close()
    redis = RedisServer(tmp_path / "redis").start()
    request.addfinalizer(redis.stop)
    return Settings.from_keywords(
        storage={
            "backend": "s3", "endpoint_url": endpoint, "bucket": "voice-web",
            "access_key": "testing", "secret_key": "testing", "region": "us-east-1",
            "create_bucket_if_missing": True, "max_attempts": 1,
        },
        rate_limit={"backend": "redis", "url": redis.url, "policies": policies},
    )  # fmt: skip


# ServerThread runs serve's protocol (httptools behind its head bound) on uvloop, both
# installed by the web extra; "fs-h11" runs the suite on uvicorn's fallbacks too (h11 and
# asyncio's loop), as where those are not installed.
STACKS: dict[str, dict[str, str]] = {
    "fs": {}, "s3": {}, "fs-h11": {"http": "h11", "loop": "asyncio"},
}  # fmt: skip


@pytest.fixture(params=list(STACKS))
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    backend = request.param.split("-")[0]
    web = WebSettings(
        secret_file=tmp_path / "web-secret",
        max_upload_size=MAX_UPLOAD,
        upload_policies=["40/minute"],
        upload_cost_unit=4096,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(web, _core(backend, tmp_path, request), public_base_url=base)
    with ServerThread(app, port=port, **STACKS[request.param]):
        yield Service(base, backend, web)


def upload(client: httpx.Client, data: bytes = AUDIO, **kwargs: Any) -> httpx.Response:
    return client.post(
        "/v1/messages", content=data, headers={"Content-Type": "audio/wav"}, **kwargs
    )


def test_health_and_readiness(service: Service) -> None:
    with service.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"storage": "ok", "rate_limiter": "ok"}
        assert client.get("/metrics").status_code == 200  # prometheus-client is in dev


def test_metrics_endpoint_serves_the_metrics_layer(tmp_path: Path) -> None:
    web = WebSettings(secret_file=tmp_path / "web-secret", max_upload_size=MAX_UPLOAD)
    core = Settings.from_keywords(
        storage={"backend": "fs", "path": str(tmp_path / "data"), "layers": ["metrics"]},
        rate_limit={"backend": "memory", "policies": ["100/minute"], "layers": ["metrics"]},
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with ServerThread(create_app(web, core, public_base_url=base), port=port):
        service = Service(base, "fs", web)
        with service.client("mia") as client:
            assert upload(client).status_code == 201
            scrape = client.get("/metrics")
    assert scrape.status_code == 200
    text = scrape.text
    assert 'voice_infra_operation_duration_seconds_count{backend="fs",kind="storage",' in text
    assert 'operation="upload_file"' in text
    assert 'voice_infra_ratelimit_decisions_total{backend="memory",decision="allowed"' in text
    assert "mia" not in text  # never a user id (or an object key) as a label


def test_no_token_or_a_bad_one_is_401(service: Service) -> None:
    with service.client() as client:
        for headers in ({}, {"Authorization": "Bearer nonsense"},
                        {"Authorization": f"Bearer {service.token('ann')}x"}):  # fmt: skip
            response = client.get("/v1/messages", headers=headers)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == "application/problem+json"
        expired = mint_token(load_secret(service.web), "ann", 1, now=time.time() - 60)
        response = client.get("/v1/messages", headers={"Authorization": f"Bearer {expired}"})
        assert response.status_code == 401


def test_upload_list_stream_range_and_delete(service: Service) -> None:
    with service.client("ann") as ann:
        created = upload(ann)
        assert created.status_code == 201, created.text
        info = created.json()
        assert info["size"] == len(AUDIO) and info["content_type"] == "audio/wav"
        assert created.headers["RateLimit-Policy"] == '"40/minute";q=40;w=60'
        assert created.headers["RateLimit"].startswith('"40/minute";r=37;')  # 3 units of 4 KiB
        listed = ann.get("/v1/messages").json()
        assert [item["id"] for item in listed["items"]] == [info["id"]]
        fetched = ann.get(f"/v1/messages/{info['id']}", follow_redirects=True)
        assert fetched.status_code == 200 and fetched.content == AUDIO
        if service.backend == "fs":
            part = ann.get(f"/v1/messages/{info['id']}", headers={"Range": "bytes=4-9"})
            assert part.status_code == 206
            assert part.content == AUDIO[4:10]
            assert part.headers["Content-Range"] == f"bytes 4-9/{len(AUDIO)}"
            tail = ann.get(f"/v1/messages/{info['id']}", headers={"Range": "bytes=-5"})
            assert tail.status_code == 206 and tail.content == AUDIO[-5:]
            past = ann.get(f"/v1/messages/{info['id']}", headers={"Range": f"bytes={10**6}-"})
            assert past.status_code == 416
        else:
            moved = ann.get(f"/v1/messages/{info['id']}")
            assert moved.status_code == 307
            assert "X-Amz-Signature" in moved.headers["Location"]
        assert ann.delete(f"/v1/messages/{info['id']}").status_code == 204
        assert ann.get(f"/v1/messages/{info['id']}").status_code == 404
        assert ann.delete(f"/v1/messages/{info['id']}").status_code == 404


def test_multipart_upload_and_cursor_pagination(service: Service) -> None:
    with service.client("bob") as bob:
        ids = []
        for index in range(3):
            files = {"file": (f"m{index}.webm", AUDIO[: 100 + index], "audio/webm")}
            created = bob.post("/v1/messages", files=files)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        first = bob.get("/v1/messages", params={"limit": 2}).json()
        assert len(first["items"]) == 2 and first["next_cursor"] == first["items"][-1]["id"]
        rest = bob.get("/v1/messages", params={"limit": 2, "cursor": first["next_cursor"]})
        assert rest.json()["next_cursor"] is None
        seen = [item["id"] for item in first["items"] + rest.json()["items"]]
        assert sorted(seen) == sorted(ids)


def test_users_never_reach_each_others_recordings(service: Service) -> None:
    with service.client("ann") as ann, service.client("eve") as eve:
        message = upload(ann).json()["id"]
        assert eve.get(f"/v1/messages/{message}").status_code == 404
        assert eve.delete(f"/v1/messages/{message}").status_code == 404
        assert eve.post(f"/v1/messages/{message}/url", json={}).status_code == 404
        assert eve.get("/v1/messages").json()["items"] == []
        # Climbing out of one's own prefix is refused the same way.
        for sneaky in (f"../ann/{message}", f"%2E%2E/ann/{message}", f"..%2Fann%2F{message}"):
            assert eve.get(f"/v1/messages/{sneaky}").status_code == 404
        assert ann.get(f"/v1/messages/{message}", follow_redirects=True).content == AUDIO


def test_wrong_type_is_415_and_too_large_is_413(service: Service) -> None:
    with service.client("ann") as ann:
        wrong = ann.post("/v1/messages", content=b"x", headers={"Content-Type": "text/plain"})
        assert wrong.status_code == 415
        files = {"file": ("x.txt", b"hello", "text/plain")}
        assert ann.post("/v1/messages", files=files).status_code == 415

        def chunked() -> Iterator[bytes]:
            for _ in range(MAX_UPLOAD // 4096 + 2):
                yield b"\0" * 4096

        too_big = ann.post("/v1/messages", content=chunked(), headers={"Content-Type": "audio/wav"})
        assert too_big.status_code == 413
        assert ann.get("/v1/messages").json()["items"] == []  # nothing half-stored


def _raw_request(url: str, head: str, body: bytes) -> bytes:
    """Send ``head`` and only ``body`` (less than the length announced); read the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        sock.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_413_comes_before_the_body_is_read(service: Service) -> None:
    token = service.token("ann")
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n"
    )
    answer = _raw_request(service.url, head, b"\0" * 1000)  # 100 MiB announced, 1000 sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # A chunked body is cut off as soon as it passes the limit, with no final chunk sent.
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
        f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % 8192 + b"\0" * 8192 + b"\r\n"
    answer = _raw_request(service.url, head, chunk * (MAX_UPLOAD // 8192 + 1))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_uploads_are_rate_limited_per_user_by_size(service: Service) -> None:
    big = b"\0" * (MAX_UPLOAD - 10)  # 16 units of 4 KiB
    with service.client("carol") as carol, service.client("dave") as dave:
        assert upload(carol, big).status_code == 201
        assert upload(carol, big).status_code == 201
        denied = upload(carol, big)  # 48 > 40
        assert denied.status_code == 429
        assert int(denied.headers["Retry-After"]) >= 1
        assert denied.headers["content-type"] == "application/problem+json"
        assert denied.json()["violated-policies"] == ["40/minute"]
        assert denied.headers["RateLimit"].startswith('"40/minute";r=8;')
        assert upload(dave, big).status_code == 201  # another user's quota


def test_presigned_urls_fetch_range_tamper_expiry_and_method(service: Service) -> None:
    with service.client("ann") as ann:
        info = upload(ann).json()
        url = info["url"]
        with httpx.Client(timeout=20) as anyone:  # no token: the URL is the permission
            fetched = anyone.get(url)
            assert fetched.status_code == 200 and fetched.content == AUDIO
            if service.backend != "fs":
                return  # S3's own URLs: the store serves and checks them
            assert fetched.headers["content-type"] == "audio/wav"
            assert fetched.headers["content-disposition"].startswith("inline; filename=")
            part = anyone.get(url, headers={"Range": "bytes=0-3"})
            assert part.status_code == 206 and part.content == b"RIFF"
            parts = urlsplit(url)
            query = dict(parse_qsl(parts.query))
            for field, value in (("X-VI-Expires", str(int(query["X-VI-Expires"]) + 1)),
                                 ("X-VI-Signature", "0" * 64)):  # fmt: skip
                forged = parts._replace(query=urlencode({**query, field: value})).geturl()
                assert anyone.get(forged).status_code == 403
            assert (
                anyone.put(url, content=b"x", headers={"Content-Type": "audio/wav"}).status_code
                == 403
            )
            short = ann.post(f"/v1/messages/{info['id']}/url", json={"expires_in": 1}).json()
            time.sleep(2.1)
            assert anyone.get(short["url"]).status_code == 403
            put = ann.post(f"/v1/messages/{info['id']}/url", json={"method": "PUT"}).json()
            replaced = anyone.put(
                put["url"], content=b"RIFFnew", headers={"Content-Type": "audio/wav"}
            )
            assert replaced.status_code == 200
            assert anyone.get(url).content == b"RIFFnew"
            assert anyone.get(put["url"]).status_code == 403  # a PUT URL does not read


def test_put_urls_are_charged_to_the_owners_upload_quota(service: Service) -> None:
    """A PUT URL is an upload without a token: minting it costs the largest allowed upload
    (the fixture allows 40 units a minute, the largest upload 16), so the third is 429."""
    with service.client("pia") as pia:
        info = upload(pia).json()  # 10 KiB: 3 units
        answers = [pia.post(f"/v1/messages/{info['id']}/url", json={"method": "PUT"})
                   for _ in range(3)]  # fmt: skip
        get_urls = [pia.post(f"/v1/messages/{info['id']}/url") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["RateLimit"].startswith('"40/minute";r=21;')
    assert {g.status_code for g in get_urls} == {200}  # GET URLs are not uploads


def test_the_url_endpoint_reads_a_small_body_only(service: Service) -> None:
    with service.client("ola") as ola:
        info = upload(ola).json()
        big = ola.post(f"/v1/messages/{info['id']}/url", content=b"{" + b" " * 100_000 + b"}",
                       headers={"Content-Type": "application/json"})  # fmt: skip
    assert big.status_code == 413


def test_the_page_and_its_assets_are_served(service: Service) -> None:
    with service.client() as client:
        page = client.get("/")
        assert page.status_code == 200 and "MediaRecorder" not in page.text
        assert '<script src="/static/app.js">' in page.text
        script = client.get("/static/app.js")
        assert "MediaRecorder" in script.text
        assert client.get("/static/app.css").status_code == 200
        assert "http" not in page.text.replace("http-equiv", "")  # no external assets


def test_serve_and_token_commands(tmp_path: Path) -> None:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    token = subprocess.run(
        [sys.executable, "-m", "voice_infra.cli", "token", "zoe", "--ttl", "5m"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "voice_infra.cli", "serve", "--port", str(port),
         "--log-level", "info"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    signature = ""
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as zoe:
            created = upload(zoe)
            assert created.status_code == 201
            # The embedded default's presigned URL is served right here.
            assert created.json()["url"].startswith(f"{base}/voice-files/")
            assert httpx.get(created.json()["url"]).content == AUDIO
            signature = dict(parse_qsl(urlsplit(created.json()["url"]).query))["X-VI-Signature"]
    finally:
        server.terminate()
        server.wait(20)
        logged = b""
        for stream in (server.stdout, server.stderr):
            if stream:
                logged += stream.read()
                stream.close()
    # The access log (INFO) has the presigned GET, its signature masked: the URL is a
    # bearer credential until it expires.
    assert b"GET /voice-files/" in logged and b"X-VI-Signature=**********" in logged
    assert signature and signature.encode() not in logged


def test_readyz_names_the_failing_check_without_its_message(tmp_path: Path) -> None:
    dead_port = free_port()  # nothing listens there
    web = WebSettings(secret_file=tmp_path / "web-secret", max_upload_size=MAX_UPLOAD)
    core = Settings.from_keywords(
        storage={"backend": "fs", "path": str(tmp_path / "data")},
        rate_limit={"backend": "redis", "url": f"redis://127.0.0.1:{dead_port}/0",
                    "policies": ["5/second"], "fail_mode": "raise",
                    "socket_connect_timeout": 0.2},
    )  # fmt: skip
    port = free_port()
    with (
        ServerThread(create_app(web, core, public_base_url=f"http://127.0.0.1:{port}"), port=port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client,
    ):
        ready = client.get("/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["storage"] == "ok"
    assert checks["rate_limiter"] == "failed (RateLimiterUnavailableError)"
    assert str(dead_port) not in ready.text  # hosts and ports stay in the log


# -- hostile input (outside testing's attacks, each family rather than the one example) -----


def test_one_media_type_only_on_every_upload_path(service: Service) -> None:
    """``audio/webm; a=b, text/html`` is two types, of which a browser would take the
    last: refused (415) on a raw body, a form's file part and a PUT URL alike."""
    with service.client("ann") as ann:
        for listed in (
            "audio/webm; a=b, text/html",
            "audio/wav, text/html",
            "audio/wav,text/html;x",
        ):
            raw = ann.post("/v1/messages", content=AUDIO, headers={"Content-Type": listed})
            assert raw.status_code == 415, (listed, raw.text)
            form = ann.post("/v1/messages", files={"file": ("m.webm", AUDIO, listed)})
            assert form.status_code == 415, (listed, form.text)
        quoted = 'audio/webm; codecs="opus, vorbis"'  # a comma inside quotes is one value
        one = ann.post("/v1/messages", content=AUDIO, headers={"Content-Type": quoted})
        assert one.status_code == 201, one.text
        info = upload(ann).json()
        if service.backend == "fs":
            put = ann.post(f"/v1/messages/{info['id']}/url", json={"method": "PUT"}).json()
            with httpx.Client(timeout=20) as anyone:
                refused = anyone.put(
                    put["url"],
                    content=b"<script>",
                    headers={"Content-Type": "audio/wav, text/html"},
                )
                assert refused.status_code == 415
                assert anyone.get(info["url"]).content == AUDIO  # unchanged
        assert len(ann.get("/v1/messages").json()["items"]) == 2


def test_stored_bytes_are_never_served_as_a_page(tmp_path: Path) -> None:
    """Served objects carry nosniff and a sandboxing CSP; one stored by other means with
    a type that is not an allowed audio type (text/html), or with a list of types (as
    the core accepted before it refused them), is served as a download."""
    import asyncio

    from voice_infra import create_storage
    from voice_infra.storage import UploadBody

    web = WebSettings(secret_file=tmp_path / "web-secret", max_upload_size=MAX_UPLOAD)
    core = Settings.from_keywords(storage={"backend": "fs", "path": str(tmp_path / "data")})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(web, core, public_base_url=base)
    key = app.state.service.user_prefix("ann") + "page.html"

    listed = app.state.service.user_prefix("ann") + "listed.webm"

    async def plant() -> None:
        async with create_storage(core) as storage:
            await storage.upload_file(b"<script>alert(1)</script>", object_key=key,
                                      content_type="text/html")  # fmt: skip
            # Below the core's checks, as an object written before them.
            body = UploadBody(b"<script>alert(2)</script>", chunk_size=1024)
            await storage._write(listed, body, content_type="audio/webm; a=b, text/html",
                                 metadata={})  # fmt: skip

    asyncio.run(plant())
    with ServerThread(app, port=port):
        service = Service(base, "fs", web)
        with service.client("ann") as ann:
            planted = ann.get("/v1/messages/page.html")
            planted_list = ann.get("/v1/messages/listed.webm")
            audio = ann.get(f"/v1/messages/{upload(ann).json()['id']}")
    for page in (planted, planted_list):
        assert page.status_code == 200
        assert page.headers["content-type"] == "application/octet-stream"
        assert page.headers["content-disposition"].startswith("attachment;")
    assert audio.headers["content-type"] == "audio/wav"
    assert audio.headers["content-disposition"].startswith("inline;")
    for served in (planted, planted_list, audio):
        assert served.headers["x-content-type-options"] == "nosniff"
        assert served.headers["content-security-policy"].startswith("sandbox")


def test_range_positions_of_any_length_are_not_an_error(service: Service) -> None:
    huge = "9" * 5000  # past Python's int() digit limit
    with service.client("ann") as ann:
        info = upload(ann).json()
        if service.backend != "fs":
            pytest.skip("S3 serves the bytes itself (a redirect to its own URL)")
        path = f"/v1/messages/{info['id']}"
        for target in (path, info["url"]):
            past = ann.get(target, headers={"Range": f"bytes={huge}-"})
            assert past.status_code == 416
            assert past.headers["content-range"] == f"bytes */{len(AUDIO)}"
            clamped = ann.get(target, headers={"Range": f"bytes=4-{huge}"})
            assert clamped.status_code == 206 and clamped.content == AUDIO[4:]
            suffix = ann.get(target, headers={"Range": f"bytes=-{huge}"})
            assert suffix.status_code == 206 and suffix.content == AUDIO
            zeros = ann.get(target, headers={"Range": f"bytes={'0' * 5000}4-{'0' * 5000}9"})
            assert zeros.status_code == 206 and zeros.content == AUDIO[4:10]


def test_the_url_endpoint_answers_bad_bodies_and_ids_without_leaking_keys(
    service: Service,
) -> None:
    with service.client("ann") as ann:
        info = upload(ann).json()
        deep = ann.post(f"/v1/messages/{info['id']}/url", content=b"[" * 4000,
                        headers={"Content-Type": "application/json"})  # fmt: skip
        assert deep.status_code == 400, deep.text
        assert deep.headers["content-type"] == "application/problem+json"
        zero = ann.post(f"/v1/messages/{info['id']}/url", json={"expires_in": 0})
        assert zero.status_code == 400 and "expires_in" in zero.json()["detail"]
        for method in ("GET", "PUT"):
            for bad in ("..%2Fbob%2Fx.wav", "a%00b", "x" * 2000, "a/%E2%80%AE/b", "a//b"):
                answer = ann.post(f"/v1/messages/{bad}/url", json={"method": method})
                assert answer.status_code == 404, (method, bad, answer.text)
                assert "ann" not in answer.text and "voice" not in answer.text


def test_a_form_file_is_held_to_the_upload_limit(service: Service) -> None:
    """The body may be a little larger than the limit (the form's boundaries), the file
    may not."""
    with service.client("ann") as ann:
        over = b"\0" * (MAX_UPLOAD + 60 * 1024)  # within the form's allowance
        answer = ann.post("/v1/messages", files={"file": ("m.wav", over, "audio/wav")})
        assert answer.status_code == 413, answer.text
        exact = ann.post("/v1/messages", files={"file": ("m.wav", over[:MAX_UPLOAD], "audio/wav")})
        assert exact.status_code == 201, exact.text
        assert [i["size"] for i in ann.get("/v1/messages").json()["items"]] == [MAX_UPLOAD]


def test_every_error_is_a_problem_document(service: Service) -> None:
    """Starlette's own refusals (no route, wrong method, a malformed form) have the shape
    of the service's errors."""
    with service.client("ann") as ann:
        missing = ann.get("/no/such/route")
        assert missing.status_code == 404
        wrong = ann.patch("/v1/messages")
        assert wrong.status_code == 405 and "GET" in wrong.headers["allow"]
        form = ann.post(
            "/v1/messages", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}
        )  # no boundary
        assert form.status_code == 400
        for answer in (missing, wrong, form):
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["status"] == answer.status_code


def test_a_client_leaving_mid_upload_is_not_an_error(service: Service) -> None:
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        head = (
            "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
            f"Authorization: Bearer {service.token('ann')}\r\nContent-Length: 40000\r\n\r\n"
        )
        parts = urlsplit(service.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(head.encode() + b"\0" * 1000)
        time.sleep(0.5)
        with service.client("ann") as ann:
            assert ann.get("/v1/messages").json()["items"] == []  # nothing stored
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    assert [r.getMessage() for r in records] == []


_digits = st.text("0123456789", max_size=30)


@given(
    first=_digits,
    last=_digits,
    size=st.integers(min_value=0, max_value=10**12),
    spelling=st.sampled_from(["bytes={}-{}", "Bytes={}-{}", " bytes={}-{} "]),
)
def test_byte_range_is_exact_for_positions_of_any_length(
    first: str, last: str, size: int, spelling: str
) -> None:
    """``byte_range`` answers as exact arithmetic on the positions would, positions of
    more than 18 digits (cut short to spare int()) included; a 206 is always inside the
    object."""
    from voice_infra.web.app import byte_range

    status, start, end = byte_range(spelling.format(first, last), size)
    if not first and not last:
        expected: tuple[int, int, int] = (200, 0, size - 1)
    elif first:
        a, b = int(first), (int(last) if last else size - 1)
        if last and b < a:
            expected = (200, 0, size - 1)  # an invalid range-spec: ignored
        else:
            expected = (416, 0, -1) if a >= size else (206, a, min(b, size - 1))
    else:
        n = int(last)
        expected = (416, 0, -1) if n == 0 or size == 0 else (206, max(0, size - n), size - 1)
    assert (status, start, end) == expected
    if status == 206:
        assert 0 <= start <= end < size


@given(st.text(max_size=60), st.integers(min_value=0, max_value=10**6))
def test_byte_range_never_fails_on_any_header(header: str, size: int) -> None:
    from voice_infra.web.app import byte_range

    status, start, end = byte_range(header, size)
    assert status in (200, 206, 416)
    if status == 206:
        assert 0 <= start <= end < size


@pytest.mark.parametrize("backend", ["fs", "memory"])
def test_downloads_racing_a_replacement_are_whole_and_of_one_version(
    tmp_path: Path, backend: str
) -> None:
    """Readers of a message that a PUT URL keeps replacing (10 bytes, then 90,000) get
    whole responses whose bytes match their ETag and Content-Length: the info and the
    bytes come from one version (they came from two, and responses ended short)."""
    import hashlib
    import threading

    web = WebSettings(secret_file=tmp_path / "web-secret", max_upload_size=MAX_UPLOAD * 2,
                      upload_policies=["100000/minute"])  # fmt: skip
    storage: dict[str, Any] = {"backend": backend}
    if backend == "fs":
        storage["path"] = str(tmp_path / "data")
    core = Settings.from_keywords(
        storage=storage, rate_limit={"backend": "memory", "policies": ["100000/minute"]}
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    versions = [b"s" * 10, b"L" * 90_000]
    problems: list[str] = []
    with ServerThread(create_app(web, core, public_base_url=base), port=port):
        service = Service(base, backend, web)
        with service.client("ann") as ann:
            created = ann.post("/v1/messages", content=versions[0],
                               headers={"Content-Type": "audio/wav"}).json()  # fmt: skip
            put_url = ann.post(f"/v1/messages/{created['id']}/url",
                               json={"method": "PUT"}).json()["url"]  # fmt: skip
        stop = threading.Event()

        def writer() -> None:
            with httpx.Client(timeout=20) as client:
                turn = 1
                while not stop.is_set():
                    client.put(put_url, content=versions[turn % 2],
                               headers={"Content-Type": "audio/wav"})  # fmt: skip
                    turn += 1

        def reader() -> None:
            with service.client("ann") as client:
                for _ in range(60):
                    try:
                        answer = client.get(f"/v1/messages/{created['id']}")
                    except httpx.HTTPError as exc:  # a response cut short
                        problems.append(f"{type(exc).__name__}: {exc}")
                        continue
                    body = answer.content
                    if answer.status_code != 200 or body not in versions:
                        problems.append(f"{answer.status_code}: {len(body)} bytes")
                    elif answer.headers["etag"] != f'"{hashlib.sha256(body).hexdigest()}"':
                        problems.append("ETag of another version")

        threads = [threading.Thread(target=reader) for _ in range(3)]
        writing = threading.Thread(target=writer)
        writing.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stop.set()
        writing.join(60)
    assert problems == []
