"""ASGI rate limiting: :class:`RateLimitMiddleware` for every request of an app, and
:class:`RateLimit`, a FastAPI-style dependency for per-route policies and costs.

Responses carry the fields of draft-ietf-httpapi-ratelimit-headers-11 as Structured
Fields: every policy of the limiter in ``RateLimit-Policy``
(``"5/second";q=5;w=1, "100/minute";q=100;w=60``) and the deciding one's state in
``RateLimit`` (``"5/second";r=0;t=1``). A denied request gets ``429`` with ``Retry-After``
and an RFC 9457 ``application/problem+json`` body naming the violated policy; a decision
made without the backend (fail-open or fail-closed) is marked by
``Voice-Infra-RateLimit-Degraded``.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voice_infra.errors import RateLimitExceededError
from voice_infra.models import RateLimitInfo
from voice_infra.ratelimit import RateLimitPolicy
from voice_infra.text import first_unsafe_character

__all__ = [
    "DEGRADED_HEADER",
    "PROBLEM_TYPE",
    "SHADOW_HEADER",
    "Identity",
    "Limiter",
    "RateLimit",
    "RateLimitMiddleware",
    "RateLimitedError",
    "authenticated_user",
    "client_address",
    "first_of",
    "header_value",
    "policy_header",
    "problem_body",
    "rate_limit_headers",
    "rate_limited_handler",
]

logger = logging.getLogger(__name__)

#: The problem type of draft-ietf-httpapi-ratelimit-headers-11 for an exceeded quota.
PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
DEGRADED_HEADER = "Voice-Infra-RateLimit-Degraded"
SHADOW_HEADER = "Voice-Infra-RateLimit-Shadow"

#: Finds who a request is from: an identity string such as ``user:42`` or
#: ``ip:127.0.0.1``, or ``None`` to let the next resolver (or the fallback) decide.
Identity = Callable[[Scope], "str | None"]


# -- header fields ----------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # policy names: a handful per limiter, on every response
def _sf_string(text: str) -> str:
    """``text`` as a Structured Field sf-string (RFC 9651 3.3.3)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_header(policies: Sequence[RateLimitPolicy]) -> str:
    """``RateLimit-Policy`` for ``policies``: ``"5/second";q=5;w=1, "100/minute";q=100;w=60``."""
    return ", ".join(f"{_sf_string(str(p))};q={p.limit};w={p.window}" for p in policies)


def rate_limit_headers(
    info: RateLimitInfo, policies: Sequence[RateLimitPolicy], *, now: float | None = None
) -> list[tuple[str, str]]:
    """The response fields for the decision ``info`` of a limiter with ``policies``."""
    return _fields(info, policy_header(policies), now)


def _fields(info: RateLimitInfo, policy_field: str, now: float | None) -> list[tuple[str, str]]:
    """:func:`rate_limit_headers` with ``RateLimit-Policy`` given (the middleware keeps
    it formatted per limiter)."""
    now = time.time() if now is None else now
    reset = max(0, math.ceil(info.reset_at.timestamp() - now - 1e-6))
    headers = [
        ("RateLimit-Policy", policy_field),
        ("RateLimit", f"{_sf_string(info.policy)};r={info.remaining};t={reset}"),
    ]
    if not info.allowed:
        headers.append(("Retry-After", str(max(1, math.ceil(info.retry_after)))))
    if info.degraded:
        headers.append((DEGRADED_HEADER, "fail-open" if info.allowed else "fail-closed"))
    if _shadow_denied(info):
        headers.append((SHADOW_HEADER, "denied"))
    return headers


def _shadow_denied(info: RateLimitInfo) -> bool:
    # The shadow layer (voice_infra.layers) allows a request its limiter would deny and
    # says so in ``shadow_denied``; decisions of other limiters have no such attribute.
    return bool(getattr(info, "shadow_denied", False))


def problem_body(info: RateLimitInfo, instance: str | None = None) -> dict[str, Any]:
    """The RFC 9457 problem for a denied request."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE,
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": f"rate limit {info.policy!r} exceeded; retry after "
        f"{max(1, math.ceil(info.retry_after))} s",
        "violated-policies": [info.policy],
    }
    if instance:
        body["instance"] = instance
    return body


def _problem_bytes(info: RateLimitInfo, instance: str | None) -> bytes:
    return json.dumps(problem_body(info, instance)).encode()


# -- identity -----------------------------------------------------------------------------


def _clean(prefix: str, value: str) -> str:
    """``prefix:value`` as a valid rate-limit key; a value too long, holding characters
    a key may not, or looking like a replaced one (``sha256-...``) is replaced by its
    SHA-256: one key per value, and no value can pose as another's digest."""
    if (
        not value
        or len(value) > 256
        or value.startswith("sha256-")
        or first_unsafe_character(value) is not None
    ):
        value = "sha256-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}:{value}"


def client_address(trusted_proxies: Iterable[str] = ()) -> Identity:
    """The client's IP address (``ip:ADDRESS``).

    ``X-Forwarded-For`` is believed only when the peer is one of ``trusted_proxies``
    (addresses or networks): the list is read from the right, skipping trusted proxies,
    and the first other address is the client. Anything that is not an IP address there
    stops the walk at the last trusted hop.
    """
    networks = [ipaddress.ip_network(item, strict=False) for item in trusted_proxies]

    def trusted(forms: tuple[_Address, _Address]) -> bool:
        # An IPv4-mapped peer matches an IPv4 network and an IPv6 one (::ffff:0:0/96).
        return any(form in network for form in forms for network in networks)

    def resolve(scope: Scope) -> str | None:
        client = scope.get("client")
        peer = client[0] if client else None
        if peer is None:
            return None
        forms = _ip_forms(peer)
        if networks and forms is not None and trusted(forms):
            hops: list[str] = []
            for name, value in scope.get("headers", ()):
                if name == b"x-forwarded-for":
                    hops.extend(part.strip() for part in value.decode("latin-1").split(","))
            for hop in reversed(hops):
                hop_forms = _ip_forms(hop)
                if hop_forms is None:
                    break
                peer, forms = hop, hop_forms
                if not trusted(forms):
                    break
        return _clean("ip", peer if forms is None else str(forms[1]))

    return resolve


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_forms(address: str) -> tuple[_Address, _Address] | None:
    """``address`` as an IP address, and the form that names the client: an IPv4-mapped
    IPv6 address (``::ffff:10.0.0.5``, as a dual-stack socket reports IPv4 peers) as its
    IPv4 address, any other as itself; None when not an address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip, mapped or ip


def header_value(name: str) -> Identity:
    """The value of the request header ``name`` (an API key...), as ``header:VALUE``."""
    wanted = name.lower().encode("latin-1")

    def resolve(scope: Scope) -> str | None:
        for key, value in scope.get("headers", ()):
            if key == wanted and value:
                return _clean("header", value.decode("latin-1"))
        return None

    return resolve


def authenticated_user() -> Identity:
    """The authenticated user of Starlette's ``AuthenticationMiddleware`` (``scope["user"]``,
    placed before this middleware), as ``user:ID``; ``None`` when not authenticated."""

    def resolve(scope: Scope) -> str | None:
        user = scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            return None
        try:
            name = str(user.identity)
        except NotImplementedError:  # Starlette's SimpleUser has only a display name
            name = str(user.display_name)
        return _clean("user", name)

    return resolve


def first_of(*resolvers: Identity) -> Identity:
    """The first identity any of ``resolvers`` finds."""

    def resolve(scope: Scope) -> str | None:
        for resolver in resolvers:
            found = resolver(scope)
            if found is not None:
                return found
        return None

    return resolve


# -- the middleware -------------------------------------------------------------------------


class Limiter(Protocol):
    """What the middleware needs of a limiter: a :class:`~voice_infra.RateLimiter`, or a
    layer wrapping one (the shadow layer), has it."""

    @property
    def policies(self) -> tuple[RateLimitPolicy, ...]:
        """Every policy the limiter checks (listed in ``RateLimit-Policy``)."""
        ...

    async def check_rate_limit(self, key: str, cost: int = 1) -> RateLimitInfo:
        """Decide for ``key`` and record ``cost`` when allowed."""
        ...


LimiterSource = Limiter | Callable[[], Limiter]


def _resolve(source: LimiterSource) -> Limiter:
    if hasattr(source, "check_rate_limit"):
        return cast(Limiter, source)
    return source()  # not a limiter: its factory


class RateLimitMiddleware:
    """Pure ASGI middleware that checks every HTTP request and WebSocket connection.

    ``limiter`` is a :class:`~voice_infra.RateLimiter` or a layer wrapping one (or a
    callable returning it, for apps that build it later); ``identity`` finds the subject
    (default: the authenticated user, else the client address); ``exempt`` lists paths
    never limited (a trailing ``*`` matches a prefix); ``cost`` gives a request's cost
    from its scope (default 1). A WebSocket connection is checked when it connects:
    denied, it is refused with a 429 response where the server supports it, else closed
    with code 1008 before accepting.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: LimiterSource,
        *,
        identity: Identity | None = None,
        exempt: Iterable[str] = (),
        cost: Callable[[Scope], int] | None = None,
        key_prefix: str = "",
    ) -> None:
        self.app = app
        self._limiter = limiter
        self.identity = identity or first_of(authenticated_user(), client_address())
        exempt = list(exempt)
        self.exempt_exact = frozenset(p for p in exempt if not p.endswith("*"))
        self.exempt_prefixes = tuple(p[:-1] for p in exempt if p.endswith("*"))
        self.cost = cost
        self.key_prefix = key_prefix
        self._policy_cache: tuple[tuple[RateLimitPolicy, ...], str] | None = None

    @property
    def limiter(self) -> Limiter:
        """The limiter in use."""
        return _resolve(self._limiter)

    def is_exempt(self, path: str) -> bool:
        """Whether ``path`` is never limited."""
        return path in self.exempt_exact or (
            bool(self.exempt_prefixes) and path.startswith(self.exempt_prefixes)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or self.is_exempt(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        key = self.key_prefix + (self.identity(scope) or "anonymous")
        cost = self.cost(scope) if self.cost is not None else 1
        info = await limiter.check_rate_limit(key, cost)
        headers = self._headers(info, limiter.policies)
        if not info.allowed:
            # %r: the key and the path come from the request (no CR/LF into the log).
            logger.info("rate limit %s exceeded by %r on %r", info.policy, key, scope["path"])
            if kind == "http":
                await _send_problem(send, info, headers, scope.get("path"))
            else:
                await self._refuse_websocket(scope, receive, send, info, headers)
            return
        if _shadow_denied(info):
            logger.warning("shadow: %r would be denied by %s on %r", key, info.policy,
                           scope["path"])  # fmt: skip
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        encoded = _encoded(headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", ())}
                if b"ratelimit" not in present:  # a route's own decision (RateLimit) wins
                    message = {**message, "headers": [*message.get("headers", ()), *encoded]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _headers(
        self, info: RateLimitInfo, policies: tuple[RateLimitPolicy, ...]
    ) -> list[tuple[str, str]]:
        cache = self._policy_cache
        if cache is None or cache[0] is not policies:
            cache = self._policy_cache = (policies, policy_header(policies))
        return _fields(info, cache[1], None)

    async def _refuse_websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        info: RateLimitInfo,
        headers: list[tuple[str, str]],
    ) -> None:
        message = await receive()  # websocket.connect
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            body = _problem_bytes(info, scope.get("path"))
            await send({
                "type": "websocket.http.response.start", "status": 429,
                "headers": _raw_headers(headers, body),
            })  # fmt: skip
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})


def _encoded(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """``headers`` as ASGI wants them: lower-case names and values, in bytes."""
    names = _RAW_NAMES
    return [
        (names.get(name) or name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in headers
    ]


_RAW_NAMES = {
    name: name.lower().encode("latin-1")
    for name in ("RateLimit-Policy", "RateLimit", "Retry-After", DEGRADED_HEADER, SHADOW_HEADER)
}


def _raw_headers(headers: list[tuple[str, str]], body: bytes) -> list[tuple[bytes, bytes]]:
    raw = _encoded(headers)
    raw.append((b"content-type", b"application/problem+json"))
    raw.append((b"content-length", str(len(body)).encode()))
    return raw


async def _send_problem(
    send: Send, info: RateLimitInfo, headers: list[tuple[str, str]], instance: str | None
) -> None:
    body = _problem_bytes(info, instance)
    await send({"type": "http.response.start", "status": 429,
                "headers": _raw_headers(headers, body)})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


# -- the per-route dependency -------------------------------------------------------------


class RateLimitedError(RateLimitExceededError):
    """A route's :class:`RateLimit` denied the request; answer it with
    :func:`rate_limited_handler` (``app.add_exception_handler(RateLimitedError, ...)``)."""

    def __init__(self, info: RateLimitInfo, policies: Sequence[RateLimitPolicy]) -> None:
        super().__init__(info)
        self.policies = tuple(policies)


async def rate_limited_handler(request: Request, exc: Exception) -> Response:
    """The 429 problem response for a :class:`RateLimitedError`."""
    assert isinstance(exc, RateLimitedError)
    return Response(
        _problem_bytes(exc.info, request.url.path),
        status_code=429,
        headers=dict(rate_limit_headers(exc.info, exc.policies)),
        media_type="application/problem+json",
    )


Cost = int | Callable[[Request], "int | Awaitable[int]"]


class RateLimit:
    """A per-route rate limit, usable as a FastAPI dependency::

        uploads = RateLimit(upload_limiter, cost=lambda request: ...)

        @app.post("/upload")
        async def upload(info: RateLimitInfo = Depends(uploads)): ...

    or called from a Starlette endpoint (``info = await uploads.check(request)``, then
    ``uploads.apply(info, response)``). A route gets its own policies by its own limiter
    (``create_rate_limiter`` with other ``policies``), its own key space by ``key_prefix``;
    ``cost`` is an int or a function of the request (sync or async), for example the
    upload's size in units. Denied, :class:`RateLimitedError` is raised.
    """

    def __init__(
        self,
        limiter: LimiterSource,
        *,
        cost: Cost = 1,
        identity: Identity | None = None,
        key_prefix: str = "route:",
    ) -> None:
        self._limiter = limiter
        self.cost = cost
        self.identity = identity or first_of(authenticated_user(), client_address())
        self.key_prefix = key_prefix

    @property
    def limiter(self) -> Limiter:
        """The limiter in use."""
        return _resolve(self._limiter)

    async def check(self, request: Request, cost: int | None = None) -> RateLimitInfo:
        """Decide for ``request`` (``cost`` overrides the configured one)."""
        if cost is None:
            if isinstance(self.cost, int):
                cost = self.cost
            else:
                result = self.cost(request)
                cost = result if isinstance(result, int) else await result
        limiter = self.limiter
        key = self.key_prefix + (self.identity(request.scope) or "anonymous")
        info = await limiter.check_rate_limit(key, cost)
        if not info.allowed:
            raise RateLimitedError(info, limiter.policies)
        return info

    def apply(self, info: RateLimitInfo, response: Response) -> None:
        """Put the decision's fields on ``response``."""
        for name, value in rate_limit_headers(info, self.limiter.policies):
            response.headers[name] = value

    async def __call__(self, request: Request, response: Response) -> RateLimitInfo:
        """The FastAPI dependency: check, and put the fields on the route's response."""
        info = await self.check(request)
        self.apply(info, response)
        return info
