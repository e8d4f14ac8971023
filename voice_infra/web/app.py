"""The voice-message service of ``voice-infra serve``: :func:`create_app` builds a Starlette
app on the configured storage and rate limiter (see docs/web.md for the endpoints)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from importlib import resources
from typing import Any, Literal, cast
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from voice_infra.config import Settings
from voice_infra.errors import (
    BackendUnavailableError,
    InvalidMetadataError,
    InvalidObjectKeyError,
    InvalidPresignedURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    VoiceServiceError,
)
from voice_infra.factory import create_backend
from voice_infra.kinds import RATE_LIMITER, STORAGE
from voice_infra.layers import unwrap
from voice_infra.models import VoiceFileInfo
from voice_infra.ratelimit import MAX_LOGGED_COST, RateLimiter
from voice_infra.storage import (
    SignedURLStorage,
    StorageBackend,
    user_key_segment,
    validate_content_type,
    validate_object_key,
    validate_presign_ttl,
)
from voice_infra.web.auth import BearerTokenBackend
from voice_infra.web.middleware import (
    Identity,
    RateLimit,
    RateLimitedError,
    RateLimitMiddleware,
    authenticated_user,
    client_address,
    first_of,
    header_value,
    rate_limited_handler,
)
from voice_infra.web.settings import WebSettings, load_secret

__all__ = ["byte_range", "create_app"]

logger = logging.getLogger(__name__)

READY_TIMEOUT = 5.0
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the one file
MAX_PAGE = 1000
# The page and its files: never framed by another site, never sniffed as another type.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}


class _Problem(Exception):
    """An RFC 9457 problem answer."""

    def __init__(
        self, status: int, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers or {}


class _TooLarge(Exception):
    """The body passed the size limit while being read."""


def _problem_response(request: Request, problem: _Problem) -> Response:
    body = {
        "type": "about:blank",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
    }
    return Response(
        json.dumps(body),
        status_code=problem.status,
        headers=problem.headers,
        media_type="application/problem+json",
    )


def _not_found() -> _Problem:
    # The same answer for "absent" and "someone else's": keys do not leak.
    return _Problem(404, "Not Found", "no such message")


def _too_large(limit: int) -> _Problem:
    return _Problem(413, "Content Too Large", f"the upload is larger than {limit} bytes")


# -- the app ------------------------------------------------------------------------------


class _Service:
    """The backends and settings the routes share."""

    def __init__(self, web: WebSettings, core: Settings, public_base_url: str) -> None:
        self.web = web
        # Built as create_backend builds them: the sections' layers (metrics...) apply.
        storage = cast(StorageBackend, create_backend(STORAGE, core))
        if (
            isinstance(unwrap(storage), SignedURLStorage)
            and "presign_base_url" not in core.section(STORAGE).options()
        ):
            # The URLs of fs and memory point at this service unless configured otherwise.
            base_url = public_base_url.rstrip("/") + web.files_path
            storage = cast(
                StorageBackend,
                create_backend(STORAGE, core, overrides={"presign_base_url": base_url}),
            )
        self.storage = storage
        self.limiter = cast(RateLimiter, create_backend(RATE_LIMITER, core))
        self.upload_limiter = cast(
            RateLimiter,
            create_backend(RATE_LIMITER, core, overrides={"policies": list(web.upload_policies)}),
        )
        # The (layered) storage when its URLs are ours to verify: a layered backend reaches
        # its inner backend's verify_presigned_url.
        self.signed: Any = storage if isinstance(unwrap(storage), SignedURLStorage) else None
        base = getattr(storage.settings, "presign_base_url", None)
        self.files_path = urlsplit(base).path.rstrip("/") if base else web.files_path
        self.files_origin = "{0.scheme}://{0.netloc}".format(urlsplit(base)) if base else ""
        self.max_upload = int(web.max_upload_size)
        self.allowed_types = frozenset(web.allowed_content_types)

    def user_prefix(self, user_id: str) -> str:
        parts = [self.storage.settings.key_prefix, user_key_segment(user_id)]
        return "/".join(part for part in parts if part) + "/"

    def key_for(self, user_id: str, message_id: str) -> str:
        if not message_id or message_id.startswith("/"):
            raise _not_found()
        return self.user_prefix(user_id) + message_id

    def upload_cost(self, length: int | None) -> int:
        """Units of ``upload_cost_unit`` for a body of ``length`` bytes (unknown: charged as
        the largest allowed upload), at most the smallest upload policy's limit (and at
        most ``MAX_LOGGED_COST`` with an algorithm that logs every unit)."""
        size = self.max_upload if length is None else min(length, self.max_upload)
        units = max(1, math.ceil(size / int(self.web.upload_cost_unit)))
        ceiling = min(p.limit for p in self.upload_limiter.policies)
        if self.upload_limiter.settings.logs_every_unit() is not None:
            ceiling = min(ceiling, MAX_LOGGED_COST)
        return min(units, ceiling)

    def check_type(self, content_type: str | None) -> str:
        """``content_type`` when it is one allowed audio type (415 otherwise): parameters
        are kept, but only as RFC 9110 allows them (no second type after a comma)."""
        base = (content_type or "").split(";", 1)[0].strip().lower()
        if base not in self.allowed_types:
            raise _Problem(
                415,
                "Unsupported Media Type",
                f"content type {content_type!r} is not accepted; send one of "
                + ", ".join(sorted(self.allowed_types)),
            )
        try:
            return validate_content_type(content_type)
        except InvalidMetadataError as exc:
            raise _Problem(415, "Unsupported Media Type", str(exc)) from None

    def served_type(self, content_type: str) -> str:
        """The type an object is served as: its own when it is one allowed audio type,
        else ``application/octet-stream`` (an object stored by other means, or before the
        core refused lists of types, must not render as a page on this origin)."""
        base = content_type.split(";", 1)[0].strip().lower()
        try:
            validate_content_type(content_type)
        except InvalidMetadataError:
            return "application/octet-stream"
        return content_type if base in self.allowed_types else "application/octet-stream"


def _identity(web: WebSettings) -> Identity:
    client = client_address(web.trusted_proxies)
    if web.identity == "client":
        return client
    if web.identity == "header":
        return first_of(header_value(web.identity_header), client)
    return first_of(authenticated_user(), client)


def create_app(
    web: WebSettings | None = None,
    core: Settings | None = None,
    *,
    public_base_url: str | None = None,
) -> Starlette:
    """The service on the backends ``core`` selects (default: ``Settings()``), with the
    options ``web`` (default: ``WebSettings()``). ``public_base_url`` is where clients
    reach it (default ``[web] public_base_url``, else ``http://127.0.0.1:8000``).

    Builds the backends (no I/O) and reads the token secret (created on first run); the
    backends connect when the app starts (ASGI lifespan) and close when it stops.
    """
    web = web if web is not None else WebSettings()
    core = core if core is not None else Settings()
    base = public_base_url or web.public_base_url or "http://127.0.0.1:8000"
    service = _Service(web, core, base)
    secret = load_secret(web)
    static = {path: (_static_file(name), media) for path, (name, media) in _STATIC.items()}
    upload_limit = RateLimit(
        lambda: service.upload_limiter, identity=authenticated_user(), key_prefix="upload:"
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with service.storage, service.limiter, service.upload_limiter:
            yield

    def require_user(request: Request) -> str:
        if not request.user.is_authenticated:
            raise _Problem(
                401,
                "Unauthorized",
                "send 'Authorization: Bearer <token>' (voice-infra token USER mints one)",
                {"WWW-Authenticate": 'Bearer realm="voice-infra"'},
            )
        return str(request.user.identity)

    def describe(user_id: str, info: VoiceFileInfo, url: str, ttl: int) -> dict[str, Any]:
        return {
            "id": info.object_key[len(service.user_prefix(user_id)) :],
            "size": info.file_size,
            "content_type": info.content_type,
            "upload_time": info.upload_time.isoformat(),
            "checksum": info.checksum,
            "url": url,
            "url_expires_in": ttl,
        }

    async def presign(key: str, method: str = "GET", ttl: int | None = None) -> tuple[str, int]:
        expires = service.storage.settings.presign_ttl if ttl is None else ttl
        url = await service.storage.generate_presigned_url(key, expires, method)  # type: ignore[arg-type]
        return url, expires

    # -- endpoints ------------------------------------------------------------------------

    async def page(request: Request) -> Response:
        content, media = static[request.url.path]
        return Response(content, media_type=media, headers=PAGE_HEADERS)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, str] = {}

        async def run(name: str, step: Awaitable[Any]) -> None:
            try:
                result = await asyncio.wait_for(step, READY_TIMEOUT)
            except Exception as exc:  # any failure means not ready; say which
                # The error's class only: its text may hold paths or hosts, and the probe
                # answers anyone who reaches it. The log has the whole error.
                logger.warning("readyz: %s check failed: %s: %s", name, type(exc).__name__, exc)
                checks[name] = f"failed ({type(exc).__name__})"
                return
            degraded = getattr(result, "degraded", False)
            checks[name] = "answered without the backend (degraded)" if degraded else "ok"

        await run("storage", service.storage.file_exists("voice-infra-readyz/probe"))
        await run("rate_limiter", service.limiter.get_rate_limit_info("voice-infra:readyz"))
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def metrics(request: Request) -> Response:
        try:
            import prometheus_client  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise _Problem(
                404,
                "Not Found",
                "metrics need prometheus-client and the metrics layer "
                "(pip install prometheus-client)",
            ) from None
        return Response(
            prometheus_client.generate_latest(prometheus_client.REGISTRY),
            media_type=prometheus_client.CONTENT_TYPE_LATEST,
        )

    async def create_message(request: Request) -> Response:
        user_id = require_user(request)
        length = _content_length(request)
        content_type = request.headers.get("content-type", "")
        multipart = content_type.lower().startswith("multipart/form-data")
        allowance = service.max_upload + (MULTIPART_OVERHEAD if multipart else 0)
        if not multipart:
            content_type = service.check_type(content_type)
        if length is not None and length > allowance:
            raise _too_large(service.max_upload)  # before reading any of the body
        info = await upload_limit.check(request, cost=service.upload_cost(length))
        limited = Request(request.scope, _limited_receive(request.receive, allowance))
        try:
            if multipart:
                stored = await _store_form(limited, service, user_id)
            else:
                stored = await service.storage.upload_file(
                    _chunks(limited), user_id=user_id, content_type=content_type
                )
        except (_TooLarge, ObjectTooLargeError):
            raise _too_large(service.max_upload) from None
        url, ttl = await presign(stored.object_key)
        body = describe(user_id, stored, url, ttl)
        response = JSONResponse(body, status_code=201)
        response.headers["Location"] = f"/v1/messages/{quote(body['id'])}"
        upload_limit.apply(info, response)
        return response

    async def list_messages(request: Request) -> Response:
        user_id = require_user(request)
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise _Problem(400, "Bad Request", f"limit must be 1 to {MAX_PAGE}")
        cursor = request.query_params.get("cursor", "")
        prefix = service.user_prefix(user_id)
        items: list[dict[str, Any]] = []
        next_cursor = None
        async for info in service.storage.list_files(prefix):
            message_id = info.object_key[len(prefix) :]
            if cursor and message_id <= cursor:
                continue
            if len(items) == limit:
                next_cursor = items[-1]["id"]
                break
            url, ttl = await presign(info.object_key)
            items.append(describe(user_id, info, url, ttl))
        return JSONResponse({"items": items, "next_cursor": next_cursor})

    async def get_message(request: Request) -> Response:
        user_id = require_user(request)
        key = service.key_for(user_id, request.path_params["id"])
        if service.signed is None:  # S3: the client fetches from the store itself
            await service.storage.get_file_info(key)  # 404 for what is not there
            url, _ = await presign(key)
            return RedirectResponse(url, status_code=307)
        return await _serve(request, service, service.storage, key)

    async def delete_message(request: Request) -> Response:
        user_id = require_user(request)
        key = service.key_for(user_id, request.path_params["id"])
        if not await service.storage.delete_file(key):
            raise _not_found()
        return Response(status_code=204)

    async def message_url(request: Request) -> Response:
        user_id = require_user(request)
        key = service.key_for(user_id, request.path_params["id"])
        limited = Request(request.scope, _limited_receive(request.receive, URL_REQUEST_LIMIT))
        try:
            options = await limited.json() if await limited.body() else {}
        except _TooLarge:
            raise _Problem(413, "Content Too Large", "send a small JSON object") from None
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            options = None
        if not isinstance(options, dict):
            raise _Problem(400, "Bad Request", 'send a JSON object: {"method": "GET"}')
        method = str(options.get("method", "GET")).upper()
        ttl = options.get("expires_in")
        if method not in ("GET", "PUT") or not (ttl is None or type(ttl) is int):
            raise _Problem(
                400, "Bad Request", "method must be GET or PUT and expires_in whole seconds"
            )
        if ttl is not None:
            try:
                validate_presign_ttl(ttl)
            except InvalidPresignedURLError as exc:
                raise _Problem(400, "Bad Request", str(exc)) from None
        quota = None
        if method == "GET":
            await service.storage.get_file_info(key)  # 404 for what is not there
        else:
            # 404 for a key no upload can have, before the quota is charged.
            validate_object_key(key, writing=True)
            # A PUT URL is an upload its holder makes without a token: it is charged to
            # the owner's upload quota now, as the largest allowed upload (its size is
            # unknown). Repeated PUTs of one URL replace the same object.
            quota = await upload_limit.check(request, cost=service.upload_cost(None))
        url, expires = await presign(key, method, ttl)
        response = JSONResponse({"url": url, "method": method, "expires_in": expires})
        if quota is not None:
            upload_limit.apply(quota, response)
        return response

    async def presigned(request: Request) -> Response:
        signed = service.signed
        if signed is None:
            raise _not_found()
        method: Literal["GET", "PUT"] = "PUT" if request.method == "PUT" else "GET"
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        url = service.files_origin + raw_path.decode("latin-1")
        if query:
            url += "?" + query.decode("latin-1")
        try:
            key = signed.verify_presigned_url(url, method)
        except InvalidPresignedURLError as exc:
            raise _Problem(403, "Forbidden", str(exc)) from None
        if method == "GET":
            return await _serve(request, service, signed, key)
        content_type = service.check_type(request.headers.get("content-type"))
        length = _content_length(request)
        if length is not None and length > service.max_upload:
            raise _too_large(service.max_upload)
        limited = Request(request.scope, _limited_receive(request.receive, service.max_upload))
        try:
            stored = await signed.upload_file(
                _chunks(limited), object_key=key, content_type=content_type
            )
        except (_TooLarge, ObjectTooLargeError):
            raise _too_large(service.max_upload) from None
        return JSONResponse({"size": stored.file_size, "checksum": stored.checksum})

    # -- errors -----------------------------------------------------------------------------

    async def on_problem(request: Request, exc: Exception) -> Response:
        return _problem_response(request, cast(_Problem, exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own refusals (no route, wrong method, a malformed form) in the
        # same problem+json shape as every other error of the service.
        error = cast(HTTPException, exc)
        try:
            title = HTTPStatus(error.status_code).phrase
        except ValueError:  # a status code without a registered phrase
            title = "Error"
        problem = _Problem(error.status_code, title, error.detail, dict(error.headers or {}))
        return _problem_response(request, problem)

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ObjectNotFoundError | InvalidObjectKeyError):
            return _problem_response(request, _not_found())
        if isinstance(exc, InvalidMetadataError):
            return _problem_response(request, _Problem(415, "Unsupported Media Type", str(exc)))
        if isinstance(exc, BackendUnavailableError):
            logger.warning("backend unavailable: %s", exc)
            problem = _Problem(503, "Service Unavailable", "a backend is unavailable; retry")
            return _problem_response(request, problem)
        if isinstance(exc, ValueError):  # bad input: keys, ranges, metadata...
            return _problem_response(request, _Problem(400, "Bad Request", str(exc)))
        logger.error("request failed: %s: %s", type(exc).__name__, exc)
        problem = _Problem(500, "Internal Server Error", "the request failed; see the logs")
        return _problem_response(request, problem)

    routes = [
        Route(path, page, methods=["GET"]) for path in static
    ] + [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        # One route per path, so that a 405's Allow lists every method of the path.
        Route("/v1/messages", by_method(GET=list_messages, POST=_reads_body(create_message))),
        Route("/v1/messages/{id:path}/url", _reads_body(message_url), methods=["POST"]),
        Route("/v1/messages/{id:path}", by_method(GET=get_message, DELETE=delete_message)),
        Route(service.files_path + "/{key:path}", _reads_body(presigned), methods=["GET", "PUT"]),
    ]  # fmt: skip
    middleware = [Middleware(AuthenticationMiddleware, backend=BearerTokenBackend(secret))]
    if web.rate_limit:
        middleware.append(
            Middleware(
                RateLimitMiddleware,
                limiter=service.limiter,
                identity=_identity(web),
                exempt=web.exempt_paths,
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            _Problem: on_problem,
            HTTPException: on_http_error,
            RateLimitedError: rate_limited_handler,
            VoiceServiceError: on_error,
        },
    )
    app.state.service = service
    return app


# -- helpers ----------------------------------------------------------------------------------


def _reads_body(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint``, for which a client that goes away while sending the body is not an
    error: nothing was stored (uploads publish only when complete) and nobody is left to
    answer (one INFO line, no traceback)."""

    @functools.wraps(endpoint)
    async def reading(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ClientDisconnect:
            logger.info("client disconnected during %s %s", request.method, request.url.path)
            return Response(status_code=400)

    return reading


def by_method(**endpoints: Callable[[Request], Awaitable[Response]]) -> type[HTTPEndpoint]:
    """One endpoint class for several methods of one path (``GET=..., POST=...``)."""
    handlers = {name.lower(): staticmethod(function) for name, function in endpoints.items()}
    return type("Endpoint", (HTTPEndpoint,), handlers)


def _static_file(name: str) -> bytes:
    return resources.files("voice_infra.web").joinpath("static", name).read_bytes()


def _content_length(request: Request) -> int | None:
    text = request.headers.get("content-length")
    if text is None:
        return None
    if not text.isdigit():
        raise _Problem(400, "Bad Request", "Content-Length must be a whole number")
    return int(text)


# The largest body POST /v1/messages/{id}/url reads (a small JSON object).
URL_REQUEST_LIMIT = 4096


def _limited_receive(receive: Receive, limit: int) -> Callable[[], Awaitable[Message]]:
    """``receive`` that raises :class:`_TooLarge` once more than ``limit`` body bytes came:
    the limit holds for chunked bodies too, and nothing past it is read."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return limited


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def _store_form(request: Request, service: _Service, user_id: str) -> VoiceFileInfo:
    """The one audio file of a multipart form (field ``file``)."""
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _Problem(400, "Bad Request", "send the recording in the form field 'file'")
        content_type = service.check_type(upload.content_type)

        async def parts() -> AsyncIterator[bytes]:
            # The body's bound allows for the form's boundaries and headers; the file
            # itself gets the service's limit.
            size = 0
            while chunk := await upload.read(256 * 1024):
                size += len(chunk)
                if size > service.max_upload:
                    raise _TooLarge
                yield chunk

        return await service.storage.upload_file(
            parts(), user_id=user_id, content_type=content_type
        )


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII | re.IGNORECASE)
# Past any object's size: a position with more digits says no more (and int() of
# thousands of digits is refused by Python, or slow).
_BEYOND = 10**18


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else _BEYOND


def byte_range(header: str | None, size: int) -> tuple[int, int, int]:
    """``(status, first, last)`` for the ``Range`` header ``header`` on an object of
    ``size`` bytes (``last`` inclusive): 200 and the whole object without a header or for
    one this service does not serve by parts (several ranges, another unit, bad syntax),
    206 and the one range asked for (clamped to the object), or 416 when it cannot be
    satisfied (it starts at or past the end, or is an empty suffix). A range that ends
    before it starts is invalid and ignored (200). Positions of any length are fine: a
    huge one is past the end."""
    whole = (200, 0, size - 1)
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or not (match[1] or match[2]):
        return whole
    if match[1]:
        first = _position(match[1])
        last = _position(match[2]) if match[2] else size - 1
        if match[2] and last < first:  # an invalid range-spec (RFC 9110 14.1.1): ignored
            return whole
        if first >= size:
            return (416, 0, -1)
        return (206, first, min(last, size - 1))
    suffix = _position(match[2])  # the last N bytes
    if suffix == 0 or size == 0:
        return (416, 0, -1)
    return (206, max(0, size - suffix), size - 1)


# Reads of an object that is replaced between its info and its first byte, before a 503.
SERVE_ATTEMPTS = 3


async def _serve(
    request: Request, service: _Service, storage: StorageBackend, key: str
) -> Response:
    """The object, whole (200) or the one range asked for (206), with its type, a file
    name and ``Accept-Ranges``; 416 for a range past the end.

    The bytes are those of the version whose size, ``ETag`` and ``Content-Range`` the
    answer states (``stream_range(expected=...)``, checked before the head is sent): an
    upload replacing the object meanwhile makes this read again, not a response that
    mixes two versions or ends short. The bytes are the user's own upload: they are
    served so that a browser never runs them as a page of this origin (``nosniff``, a
    sandboxing CSP, a type other than audio as a download)."""
    for _attempt in range(SERVE_ATTEMPTS):
        info = await storage.get_file_info(key)
        media_type = service.served_type(info.content_type)
        status, start, end, headers = _serving_head(request, key, info, media_type)
        if status == 416:
            return Response(status_code=416, headers=headers)
        if info.file_size == 0:
            return Response(b"", status_code=200, headers=headers, media_type=media_type)
        body = storage.stream_range(key, start, end, expected=info)
        try:
            first = await anext(body)
        except ObjectChangedError:
            await body.aclose()
            continue
        return _ObjectResponse(first, body, status_code=status, headers=headers,
                               media_type=media_type)  # fmt: skip
    raise _Problem(503, "Service Unavailable", "the message kept changing while being read; "
                   "retry", {"Retry-After": "1"})  # fmt: skip


def _serving_head(
    request: Request, key: str, info: VoiceFileInfo, media_type: str
) -> tuple[int, int, int, dict[str, str]]:
    """``(status, first, last, headers)`` of :func:`_serve`'s answer for ``info``, served
    as ``media_type`` (inline when that is the object's own type, else as a download)."""
    size = info.file_size
    name = key.rsplit("/", 1)[-1]
    disposition = "inline" if media_type == info.content_type else "attachment"
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'{disposition}; filename="{_ascii_name(name)}"; '
        f"filename*=UTF-8''{quote(name, safe='')}",
        "Cache-Control": "private, max-age=0",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }
    if info.checksum:
        headers["ETag"] = f'"{info.checksum}"'
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted and (if_range is None or if_range == headers.get("ETag")):
        status, start, end = byte_range(wanted, size)
    else:
        status, start, end = 200, 0, size - 1
    if status == 416:
        headers["Content-Range"] = f"bytes */{size}"
    elif status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if status != 416:
        headers["Content-Length"] = str(max(0, end - start + 1))
    return status, start, end, headers


class _ObjectResponse(StreamingResponse):
    """An object's bytes: ``first`` (read before the head, to check the version), then
    ``rest``; the storage stream (an open file, an S3 connection) is closed when the
    response ends, however it ends (Starlette leaves a body iterator to the garbage
    collector when the client goes away or the task is cancelled)."""

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None], **options: Any) -> None:
        self.rest = rest
        super().__init__(_prepend(first, rest), **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await cast(AsyncGenerator[bytes, None], self.body_iterator).aclose()
            await self.rest.aclose()  # the wrapper may never have started


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """``first``, then the chunks of ``rest``."""
    yield first
    async for chunk in rest:
        yield chunk


def _ascii_name(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
