"""The one error tree of voice-infra.

Every error a user can see derives from :class:`VoiceServiceError`. Backends wrap
the exceptions of their client libraries into these classes and keep the
original as ``__cause__`` (``raise StorageUnavailableError(...) from exc``), so
application code needs to know only this module.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voice_infra.models import RateLimitInfo

__all__ = [
    "BackendDependencyError",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "CacheError",
    "CacheUnavailableError",
    "CacheValueTooLargeError",
    "ConfigError",
    "DuplicateBackendError",
    "InvalidByteRangeError",
    "InvalidCacheKeyError",
    "InvalidCacheTTLError",
    "InvalidCacheValueError",
    "InvalidCostError",
    "InvalidMetadataError",
    "InvalidObjectKeyError",
    "InvalidPresignedURLError",
    "InvalidRateLimitKeyError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "ObjectTooLargeError",
    "PluginError",
    "PluginLoadError",
    "RateLimitError",
    "RateLimitExceededError",
    "RateLimiterUnavailableError",
    "StorageError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "VoiceServiceError",
    "translate_errors",
]


class VoiceServiceError(Exception):
    """Root of every error raised by voice-infra and its backends."""


class BackendUnavailableError(VoiceServiceError):
    """A backend server could not be reached or did not answer in time.

    Retryable: the same call may succeed once the server is back.
    """

    retryable = True


# -- configuration and plugins ------------------------------------------------


class ConfigError(VoiceServiceError, ValueError):
    """The configuration is invalid; the message names the section, key and fix.

    When pydantic found the problem, :attr:`errors` lists its findings as ``loc``,
    ``msg`` and ``type`` items. pydantic's ``ValidationError`` is not kept (neither as
    ``__cause__`` nor as ``__context__``): its text shows the rejected values, which may
    be secrets.
    """

    def __init__(self, message: str, *, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        #: pydantic's findings without the rejected values: ``{"loc", "msg", "type"}``.
        self.errors: tuple[dict[str, Any], ...] = tuple(dict(error) for error in errors)


class PluginError(VoiceServiceError):
    """A problem with a plugin or the backends it declares."""


class BackendNotFoundError(PluginError, ConfigError):
    """The configured backend name is not provided by any installed plugin."""


class PluginLoadError(PluginError):
    """A plugin failed to load (import error, or an exception in its hook)."""


class DuplicateBackendError(PluginError):
    """Two plugins declare a backend of the same kind under the same name."""


class BackendDependencyError(PluginError):
    """A backend's plugin is installed but a library it needs is missing."""


# -- storage ------------------------------------------------------------------


class StorageError(VoiceServiceError):
    """Base class of storage errors."""


class ObjectNotFoundError(StorageError, LookupError):
    """The object key does not exist in the storage backend."""


class InvalidObjectKeyError(StorageError, ValueError):
    """The object key is not acceptable (``..`` segments, control characters, length...)."""


class InvalidMetadataError(StorageError, ValueError):
    """User metadata or a content type that not every backend can store (names,
    non-ASCII values, size, a content type that is not ``type/subtype``)."""


class InvalidByteRangeError(StorageError, ValueError):
    """A byte range for ``stream_range`` that is negative, reversed or not whole numbers."""


class ObjectChangedError(StorageError):
    """The object is no longer the version the caller read the info of (``stream_range``
    with ``expected``): it was replaced or deleted since; read its info again."""


class ObjectTooLargeError(StorageError, ValueError):
    """The upload is larger than the configured ``max_file_size``."""


class StoragePermissionError(StorageError, PermissionError):
    """The backend refused the operation (access denied)."""


class StorageUnavailableError(StorageError, BackendUnavailableError):
    """The storage server could not be reached or did not answer in time."""


class InvalidPresignedURLError(StorageError, ValueError):
    """A presigned URL is expired, tampered with, or not for this backend."""


# -- rate limiting ------------------------------------------------------------


class RateLimitError(VoiceServiceError):
    """Base class of rate-limiting errors."""


class RateLimitExceededError(RateLimitError):
    """The request was denied; :attr:`info` carries the full decision."""

    def __init__(self, info: RateLimitInfo, message: str | None = None) -> None:
        self.info = info
        super().__init__(
            message or f"rate limit {info.policy!r} exceeded; retry after {info.retry_after:.3f}s"
        )


class InvalidRateLimitKeyError(RateLimitError, ValueError):
    """The rate-limit key is empty, too long or contains control characters."""


class InvalidCostError(RateLimitError, ValueError):
    """The ``cost`` of a check is not a positive integer within every policy's limit."""


class RateLimiterUnavailableError(RateLimitError, BackendUnavailableError):
    """The rate-limiter backend could not be reached or did not answer in time."""


# -- caching ------------------------------------------------------------------


class CacheError(VoiceServiceError):
    """Base class of cache errors."""


class InvalidCacheKeyError(CacheError, ValueError):
    """The cache key is empty, too long, not a string or contains control characters."""


class InvalidCacheValueError(CacheError, ValueError):
    """The value to cache is not bytes (encode text first) or is too large."""


class CacheValueTooLargeError(InvalidCacheValueError):
    """The value to cache is larger than the configured ``max_value_size``."""


class InvalidCacheTTLError(CacheError, ValueError):
    """The time to live is not a positive number of seconds (or ``timedelta``) within
    the configured ``max_ttl``."""


class CacheUnavailableError(CacheError, BackendUnavailableError):
    """The cache server could not be reached or did not answer in time; a caching layer
    treats it as a miss (``get``) or a skipped write (``set``)."""


# -- for backends ---------------------------------------------------------------

# ``scheme://user:password@`` in a driver's message: the password is never repeated.
_URL_PASSWORD = re.compile(r"(://[^/\s:@]*):[^/\s@]*@")

ErrorMapping = Mapping[
    type[BaseException] | tuple[type[BaseException], ...], type[VoiceServiceError]
]


@contextlib.contextmanager
def translate_errors(mapping: ErrorMapping, context: str) -> Iterator[None]:
    """Turn a driver's exceptions into voice-infra errors, keeping the original as
    ``__cause__``::

        with translate_errors({sqlite3.OperationalError: StorageUnavailableError,
                               sqlite3.Error: StorageError}, f"SQLite database {path}"):
            ...

    The first entry whose exception type matches wins (list the specific ones first);
    the new error says ``"{context}: {type}: {message}"`` with any URL password masked.
    A :class:`VoiceServiceError` raised inside (``self._not_found(key)``) passes
    through unchanged, and so does anything the mapping does not name. Usable around
    ``await`` and inside async generators.
    """
    try:
        yield
    except VoiceServiceError:
        raise
    except Exception as exc:
        for caught, error in mapping.items():
            if isinstance(exc, caught):
                text = _URL_PASSWORD.sub(r"\1:***@", str(exc))
                raise error(f"{context}: {type(exc).__name__}: {text}") from exc
        raise
