"""The ASGI rate-limit middleware and the per-route dependency, over the wire: apps served
by uvicorn on a free loopback port, asked with httpx (and a WebSocket client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from web_server import ServerThread, free_port

from voice_infra import RateLimitInfo, Settings, create_rate_limiter
from voice_infra.ratelimit import RateLimiter
from voice_infra.web.middleware import (
    PROBLEM_TYPE,
    RateLimit,
    RateLimitedError,
    RateLimitMiddleware,
    client_address,
    header_value,
    policy_header,
    rate_limited_handler,
)

POLICIES = ["5/second", "100/minute"]


def memory_limiter(policies: list[str] = POLICIES) -> RateLimiter:
    return create_rate_limiter(
        Settings.from_keywords(rate_limit={"backend": "memory", "policies": policies})
    )


class Calls:
    def __init__(self) -> None:
        self.count = 0


def make_app(limiter: RateLimiter, calls: Calls, **options: Any) -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        calls.count += 1
        return PlainTextResponse("hello")

    async def echo(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text(await socket.receive_text())
        await socket.close()

    app = Starlette(
        routes=[Route("/hello", hello), Route("/healthz", hello), WebSocketRoute("/ws", echo)]
    )
    app.add_middleware(RateLimitMiddleware, limiter=limiter, **options)  # type: ignore[arg-type]
    return app


@pytest.fixture
def served() -> Iterator[tuple[str, Calls]]:
    calls = Calls()
    with ServerThread(make_app(memory_limiter(), calls, exempt=["/healthz"])) as server:
        yield server.url, calls


def test_allowed_requests_carry_every_policy_and_the_deciding_state(
    served: tuple[str, Calls],
) -> None:
    url, _ = served
    with httpx.Client(base_url=url) as client:
        response = client.get("/hello")
    assert response.status_code == 200
    assert response.headers["RateLimit-Policy"] == '"5/second";q=5;w=1, "100/minute";q=100;w=60'
    assert response.headers["RateLimit"] in ('"5/second";r=4;t=1', '"5/second";r=4;t=0')
    assert "Retry-After" not in response.headers
    # The obsolete draft-06 trio is not sent.
    assert "RateLimit-Limit" not in response.headers


def test_denied_request_gets_429_retry_after_and_a_problem_body(
    served: tuple[str, Calls],
) -> None:
    url, calls = served
    with httpx.Client(base_url=url) as client:
        answers = [client.get("/hello") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    denied = answers[-1]
    assert calls.count == 5  # the app never saw the denied request
    assert int(denied.headers["Retry-After"]) >= 1
    assert denied.headers["RateLimit"].startswith('"5/second";r=0;t=')
    assert denied.headers["content-type"] == "application/problem+json"
    problem = denied.json()
    assert problem["type"] == PROBLEM_TYPE
    assert problem["status"] == 429
    assert problem["violated-policies"] == ["5/second"]
    assert problem["instance"] == "/hello"
    assert "5/second" in problem["detail"]


def test_exempt_paths_are_neither_limited_nor_annotated(served: tuple[str, Calls]) -> None:
    url, _ = served
    with httpx.Client(base_url=url) as client:
        answers = [client.get("/healthz") for _ in range(8)]
    assert {a.status_code for a in answers} == {200}
    assert "RateLimit" not in answers[-1].headers


def test_websocket_connections_are_checked_when_they_connect(served: tuple[str, Calls]) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url, _ = served
    ws_url = url.replace("http://", "ws://") + "/ws"
    for _ in range(5):
        with connect(ws_url) as socket:
            socket.send("ping")
            assert socket.recv() == "ping"
    with pytest.raises(InvalidStatus) as denied:
        connect(ws_url)
    response = denied.value.response
    assert response.status_code in (429, 403)
    if response.status_code == 429:
        assert int(response.headers["Retry-After"]) >= 1
        assert json.loads(response.body)["violated-policies"] == ["5/second"]


def test_forwarded_for_counts_only_from_trusted_proxies() -> None:
    calls = Calls()
    # One request per second per client: the second request of a client is denied.
    untrusted = make_app(memory_limiter(["1/second"]), calls)
    trusted = make_app(
        memory_limiter(["1/second"]), calls, identity=client_address(["127.0.0.0/8"])
    )
    with ServerThread(untrusted) as server, httpx.Client(base_url=server.url) as client:
        first = client.get("/hello", headers={"X-Forwarded-For": "203.0.113.1"})
        second = client.get("/hello", headers={"X-Forwarded-For": "203.0.113.2"})
        assert (first.status_code, second.status_code) == (200, 429)  # both are 127.0.0.1
    with ServerThread(trusted) as server, httpx.Client(base_url=server.url) as client:
        first = client.get("/hello", headers={"X-Forwarded-For": "203.0.113.1"})
        second = client.get("/hello", headers={"X-Forwarded-For": "203.0.113.2"})
        again = client.get("/hello", headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.1"})
        assert (first.status_code, second.status_code, again.status_code) == (200, 200, 429)


def _scope(peer: str, forwarded: list[str]) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", value.encode("latin-1")) for value in forwarded]
    return {"type": "http", "client": (peer, 1234), "headers": headers}


def _as_ipv4(ip: Any) -> Any:
    """An IPv4-mapped IPv6 address as its IPv4 address (one client, one identity)."""
    return getattr(ip, "ipv4_mapped", None) or ip


@given(st.ip_addresses(), st.lists(st.text(max_size=40), max_size=3))
def test_without_trusted_proxies_the_peer_is_the_client(peer: Any, forwarded: list[str]) -> None:
    scope = _scope(str(peer), [f.encode("latin-1", "ignore").decode("latin-1") for f in forwarded])
    assert client_address()(scope) == f"ip:{_as_ipv4(peer)}"


@given(st.ip_addresses(v=4))
def test_an_ipv4_mapped_peer_is_its_ipv4_address(peer: Any) -> None:
    """A dual-stack socket reports an IPv4 client as ``::ffff:a.b.c.d``: the same client,
    the same key, and a trusted IPv4 proxy network matches it."""
    mapped = f"::ffff:{peer}"
    assert client_address()(_scope(mapped, [])) == f"ip:{peer}"
    for network in (f"{peer}/32", f"::ffff:{peer}/128", "::ffff:0:0/96", "::/0"):
        resolve = client_address([network])
        assert resolve(_scope(mapped, ["203.0.113.9"])) == "ip:203.0.113.9", network
        assert resolve(_scope(mapped, [f"::ffff:{peer}"])) == f"ip:{peer}", network


@given(st.ip_addresses(v=4), st.lists(st.ip_addresses(v=4), min_size=1, max_size=4))
def test_a_trusted_proxy_names_the_nearest_untrusted_hop(peer: Any, hops: list[Any]) -> None:
    # Only the peer is trusted: the client is the last hop it reports, whatever came before.
    resolve = client_address([str(peer)])
    scope = _scope(str(peer), [", ".join(str(h) for h in hops)])
    expected = hops[-1]
    if expected == peer:  # a trusted address is skipped: the walk goes on
        untrusted = [h for h in reversed(hops) if h != peer]
        expected = untrusted[0] if untrusted else hops[0]
    assert resolve(scope) == f"ip:{expected}"


@given(st.text(min_size=0, max_size=600))
def test_any_header_value_gives_a_valid_rate_limit_key(value: str) -> None:
    from voice_infra.ratelimit import validate_rate_limit_key

    raw = value.encode("utf-8", "surrogatepass")
    found = header_value("X-Api-Key")({"headers": [(b"x-api-key", raw)]})
    if raw:
        assert found is not None
        validate_rate_limit_key(found)
    else:
        assert found is None


def test_policy_header_is_a_structured_field_list() -> None:
    limiter = memory_limiter(["10 per 30 seconds", "1000/day"])
    assert policy_header(limiter.policies) == (
        '"10/30 seconds";q=10;w=30, "1000/day";q=1000;w=86400'
    )


def test_fail_open_decisions_say_so() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    limiter = create_rate_limiter(
        Settings.from_keywords(rate_limit={
            "backend": "redis", "url": dead, "policies": ["5/second"], "fail_mode": "open",
            "socket_connect_timeout": 0.5, "warning_interval": 3600,
        })
    )  # fmt: skip
    with ServerThread(make_app(limiter, Calls())) as server:
        response = httpx.get(f"{server.url}/hello")
    assert response.status_code == 200
    assert response.headers["Voice-Infra-RateLimit-Degraded"] == "fail-open"


def test_shadow_decisions_pass_and_are_marked() -> None:
    calls = Calls()
    shadow = create_rate_limiter(  # the shadow layer of voice_infra.layers
        Settings.from_keywords(rate_limit={
            "backend": "memory", "policies": ["2/second"], "layers": ["shadow"],
        })
    )  # fmt: skip
    app = make_app(shadow, calls)
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as client:
        answers = [client.get("/hello") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert "Voice-Infra-RateLimit-Shadow" not in answers[1].headers
    assert answers[2].headers["Voice-Infra-RateLimit-Shadow"] == "denied"
    assert calls.count == 3


def test_route_dependency_charges_the_body_size_in_starlette() -> None:
    uploads = RateLimit(memory_limiter(["10/minute"]), key_prefix="upload:")

    async def upload(request: Request) -> JSONResponse:
        size = int(request.headers.get("content-length", "0"))
        info = await uploads.check(request, cost=max(1, size // 1000))
        response = JSONResponse({"size": size})
        uploads.apply(info, response)
        return response

    app = Starlette(
        routes=[Route("/upload", upload, methods=["POST"])],
        exception_handlers={RateLimitedError: rate_limited_handler},
    )
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as client:
        first = client.post("/upload", content=b"x" * 6000)  # cost 6
        second = client.post("/upload", content=b"x" * 5000)  # cost 5: 11 > 10
        small = client.post("/upload", content=b"x" * 4000)  # cost 4: fits
    assert first.status_code == 200
    assert first.headers["RateLimit"].startswith('"10/minute";r=4;')
    assert second.status_code == 429
    assert second.json()["violated-policies"] == ["10/minute"]
    assert second.headers["content-type"] == "application/problem+json"
    assert small.status_code == 200


def test_route_dependency_with_fastapi_depends() -> None:
    fastapi = pytest.importorskip("fastapi")
    limit = RateLimit(memory_limiter(["2/minute"]))
    app = fastapi.FastAPI()
    app.add_exception_handler(RateLimitedError, rate_limited_handler)

    @app.get("/item")
    async def item(info: RateLimitInfo = fastapi.Depends(limit)) -> dict[str, int]:  # noqa: B008
        return {"remaining": info.remaining}

    with ServerThread(app) as server, httpx.Client(base_url=server.url) as client:
        answers = [client.get("/item") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].json() == {"remaining": 1}
    assert answers[0].headers["RateLimit-Policy"] == '"2/minute";q=2;w=60'
    assert answers[2].json()["violated-policies"] == ["2/minute"]


@given(st.text(min_size=0, max_size=300), st.text(min_size=0, max_size=300))
def test_distinct_header_values_never_share_a_key(first: str, second: str) -> None:
    """Including a value written as the digest another one is replaced by: a client
    cannot spend the quota of a long (hashed) API key by sending its ``sha256-...``."""
    resolve = header_value("X-Api-Key")

    def key(value: str) -> str | None:
        return resolve({"headers": [(b"x-api-key", value.encode("utf-8", "surrogatepass"))]})

    if first != second and first and second:
        assert key(first) != key(second)
    long_key = "k" * 300
    assert key(key(long_key).removeprefix("header:")) != key(long_key)  # type: ignore[union-attr]
