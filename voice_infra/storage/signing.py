"""voice-infra's own presigned URLs, for backends without a server that signs them
(memory, fs): HMAC-SHA256 signing and verification (:class:`URLSigner`), the settings
that configure them and the :class:`SignedURLStorage` base class."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import Field, SecretStr, field_validator

from voice_infra.errors import InvalidObjectKeyError, InvalidPresignedURLError, StorageError
from voice_infra.storage.base import PresignMethod, StorageBackend, StorageSettings
from voice_infra.storage.keys import MAX_OBJECT_KEY_BYTES, validate_object_key
from voice_infra.text import first_unsafe_character

__all__ = ["MIN_SIGNING_KEY_BYTES", "SignedURLSettings", "SignedURLStorage", "URLSigner"]

MIN_SIGNING_KEY_BYTES = 32  # HMAC-SHA256: shorter keys are guessable

# Query fields of voice-infra's presigned URLs; each must appear exactly once.
_PRESIGN_FIELDS = ("X-VI-Method", "X-VI-Expires", "X-VI-Signature")
# Canonical decimal seconds since the epoch: no sign, no leading zero, ASCII digits only
# (int() would also take '+5', ' 5', '5_0' and full-width digits), at most 12 digits.
_EXPIRES = re.compile(r"[1-9][0-9]{0,11}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")  # lower-case hex SHA-256, as sign() writes it
# Room for the query and an application's own parameters beyond base URL and key.
_PRESIGN_QUERY_ALLOWANCE = 2048


class URLSigner:
    """HMAC-SHA256 presigned URLs for backends without a server-side signer."""

    def __init__(self, secret: bytes, base_url: str) -> None:
        self._secret = secret
        self._base_url = base_url.rstrip("/")
        base = urlsplit(self._base_url)
        self._origin = _origin(base)
        self._path_prefix = base.path + "/"
        # Every key percent-encoded (3 characters a byte) fits, with the query.
        self._max_url_length = (
            len(self._base_url) + 1 + 3 * MAX_OBJECT_KEY_BYTES + _PRESIGN_QUERY_ALLOWANCE
        )

    def _signature(self, method: str, key: str, expires: int) -> str:
        message = f"{method}\n{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, key: str, *, expires_in: int, method: str, now: float | None = None) -> str:
        """A URL under the base URL granting ``method`` on ``key`` for ``expires_in`` s."""
        expires = int((time.time() if now is None else now) + expires_in)
        query = urlencode(
            {"X-VI-Method": method, "X-VI-Expires": expires,
             "X-VI-Signature": self._signature(method, key, expires)}
        )  # fmt: skip
        return f"{self._base_url}/{quote(key)}?{query}"

    def verify(self, url: object, *, method: object = "GET", now: float | None = None) -> str:
        """Return the object key ``url`` grants ``method`` on, or raise
        :class:`InvalidPresignedURLError` saying what is wrong: never another exception,
        whatever ``url`` and ``method`` are (applications answer it with 403)."""
        wanted = _presign_method(method)
        key, fields = self._parse(url)
        signed_method = fields["X-VI-Method"]
        if signed_method not in ("GET", "PUT"):
            raise InvalidPresignedURLError(
                f"presigned URL has X-VI-Method={signed_method!r}; it must be GET or PUT"
            )
        if not _EXPIRES.fullmatch(fields["X-VI-Expires"]):
            raise InvalidPresignedURLError(
                f"presigned URL has X-VI-Expires={fields['X-VI-Expires']!r}; it must be whole "
                "seconds since the epoch in ASCII digits"
            )
        expires = int(fields["X-VI-Expires"])
        signature = fields["X-VI-Signature"]
        if not _SIGNATURE.fullmatch(signature):
            raise InvalidPresignedURLError(
                "presigned URL signature is not 64 lower-case hex digits (tampered?)"
            )
        # Both sides ASCII bytes: compare_digest refuses non-ASCII str with TypeError.
        expected = self._signature(signed_method, key, expires).encode("ascii")
        if not hmac.compare_digest(expected, signature.encode("ascii")):
            raise InvalidPresignedURLError("presigned URL signature does not match (tampered?)")
        if signed_method != wanted:
            raise InvalidPresignedURLError(f"presigned URL allows {signed_method}, not {wanted}")
        if (time.time() if now is None else now) >= expires:
            raise InvalidPresignedURLError("presigned URL has expired")
        return key

    def _parse(self, url: object) -> tuple[str, dict[str, str]]:
        """The object key and the signature fields of ``url``, checked for shape only."""
        if not isinstance(url, str):
            raise InvalidPresignedURLError(
                f"presigned URL must be a str, got {type(url).__name__}; decode bytes first"
            )
        if len(url) > self._max_url_length:
            raise InvalidPresignedURLError(
                f"presigned URL is {len(url)} characters long; none issued here is longer "
                f"than {self._max_url_length}"
            )
        # urlsplit silently drops tabs and newlines: refuse them (and other controls)
        # rather than verify a URL other than the one given.
        if unsafe := first_unsafe_character(url, strict=False):
            raise InvalidPresignedURLError(f"presigned URL contains {unsafe}")
        try:
            parts = urlsplit(url)
            origin = _origin(parts)
        except ValueError as exc:  # bad IPv6 brackets, port out of range, ...
            raise InvalidPresignedURLError(f"presigned URL is not a valid URL: {exc}") from None
        if origin != self._origin or not parts.path.startswith(self._path_prefix):
            raise InvalidPresignedURLError(
                f"presigned URL was not issued by this storage: it must start with "
                f"{self._base_url}/"
            )
        if "#" in url:
            raise InvalidPresignedURLError("presigned URL must not have a #fragment")
        try:
            key = unquote(parts.path[len(self._path_prefix) :], errors="strict")
        except UnicodeDecodeError:
            raise InvalidPresignedURLError(
                "presigned URL path is not percent-encoded UTF-8"
            ) from None
        try:
            # The reading rule: the signature proves the stricter one held for a PUT.
            validate_object_key(key, writing=False)
        except InvalidObjectKeyError as exc:
            raise InvalidPresignedURLError(f"presigned URL names no valid object: {exc}") from None
        return key, _presign_fields(parts.query)


def _origin(parts: SplitResult) -> tuple[str, str | None, int | None, str | None]:
    """Scheme, host, port (defaults filled in) and user info: equal for equivalent URLs.
    Raises ``ValueError`` for a port that is not a number from 0 to 65535."""
    scheme = parts.scheme.lower()
    port = parts.port
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else None
    return scheme, parts.hostname, port, userinfo


def _presign_method(method: object) -> str:
    if isinstance(method, str) and method.upper() in ("GET", "PUT"):
        return method.upper()
    raise InvalidPresignedURLError(f"method must be 'GET' or 'PUT', got {method!r}")


def _presign_fields(query: str) -> dict[str, str]:
    """The three signature fields of ``query``, each present exactly once; other
    parameters (an application's own) are ignored, as the signature does not cover them."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidPresignedURLError("presigned URL query is not percent-encoded UTF-8") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in _PRESIGN_FIELDS:
            if name in fields:
                raise InvalidPresignedURLError(f"presigned URL repeats {name}")
            fields[name] = value
    if missing := [name for name in _PRESIGN_FIELDS if name not in fields]:
        raise InvalidPresignedURLError(
            f"presigned URL lacks {', '.join(missing)}; pass the URL exactly as issued"
        )
    return fields


class SignedURLSettings(StorageSettings):
    """Settings of backends whose presigned URLs are HMAC-signed by voice-infra itself."""

    signing_key: SecretStr | None = Field(
        default=None, description="HMAC key for presigned URLs; random when not set."
    )
    presign_base_url: str = Field(
        default="http://localhost:8000/voice-files",
        description="Where the application serves presigned URLs (it verifies them with "
        "verify_presigned_url).",
    )

    @field_validator("signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(
                f"signing_key must be at least {MIN_SIGNING_KEY_BYTES} bytes; generate one with "
                "python -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return value

    @field_validator("presign_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018  # raises on a port that is not a number 0-65535
            port_valid = True
        except ValueError:
            port_valid = False
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or not port_valid
            or "?" in value  # even an empty query: the signed query would follow it
            or "#" in value  # a fragment would swallow the signed path and query
        ):
            raise ValueError(
                "presign_base_url must be an http(s) URL with a host (and a port of 0 to "
                "65535, if any) and without a query or fragment, for example "
                "'https://voice.example.com/files'"
            )
        return value.rstrip("/")


class SignedURLStorage(StorageBackend):
    """Presigning for backends without a server of their own: HMAC-signed URLs.

    The application serving ``presign_base_url`` calls :meth:`verify_presigned_url` to
    learn which object a request may read (GET) or write (PUT).
    """

    settings: SignedURLSettings

    def _make_signer(self, secret: bytes) -> None:
        self._signer = URLSigner(secret, self.settings.presign_base_url)

    async def _presign(self, key: str, expires_in: int, method: PresignMethod) -> str:
        return self._signer.sign(key, expires_in=expires_in, method=method)

    def verify_presigned_url(self, url: str, method: PresignMethod = "GET") -> str:
        """The object key ``url`` grants ``method`` on; raises
        :class:`InvalidPresignedURLError` (and nothing else) when ``url`` is expired,
        tampered with, foreign or malformed, or ``method`` is not GET or PUT."""
        signer: URLSigner | None = getattr(self, "_signer", None)
        if signer is None:  # fs reads its signing key when opened
            raise StorageError(
                f"{self.backend_name or type(self).__name__} storage is not open yet: "
                "open it (async with, or any awaited call) before verifying presigned URLs"
            )
        return signer.verify(url, method=method)
