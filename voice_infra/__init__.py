"""voice-infra: pluggable storage, rate-limiter and cache backends for voice services.

::

    import voice_infra as vi

    settings = vi.Settings()
    async with vi.create_storage(settings) as storage:
        info = await storage.upload_file(b"RIFF...", user_id="42", content_type="audio/wav")
    async with vi.create_rate_limiter(settings) as limiter:
        decision = await limiter.check_rate_limit("user:42")
    async with vi.create_cache(settings) as cache:
        await cache.set("tts:hello", b"RIFF...", ttl=600)
"""

from __future__ import annotations

from voice_infra.cache import CacheBackend, CacheSettings
from voice_infra.config import CacheSection, RateLimitSection, Settings, StorageSection
from voice_infra.errors import (
    BackendDependencyError,
    BackendNotFoundError,
    BackendUnavailableError,
    CacheError,
    CacheUnavailableError,
    CacheValueTooLargeError,
    ConfigError,
    DuplicateBackendError,
    InvalidByteRangeError,
    InvalidCacheKeyError,
    InvalidCacheTTLError,
    InvalidCacheValueError,
    InvalidCostError,
    InvalidMetadataError,
    InvalidObjectKeyError,
    InvalidPresignedURLError,
    InvalidRateLimitKeyError,
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PluginError,
    PluginLoadError,
    RateLimitError,
    RateLimiterUnavailableError,
    RateLimitExceededError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
    VoiceServiceError,
    translate_errors,
)
from voice_infra.factory import create_backend, create_cache, create_rate_limiter, create_storage
from voice_infra.hookspecs import hookimpl
from voice_infra.kinds import KindSpec, declare_kind, declared_kinds
from voice_infra.layers import Layer, LayerSettings, LayerSpec, Operation
from voice_infra.masking import SecretURL, mask_secret, mask_url
from voice_infra.models import RateLimitInfo, VoiceFileInfo
from voice_infra.plugins import BackendSpec, PluginFailure, PluginRegistry, get_registry
from voice_infra.ratelimit import (
    FailMode,
    FailModeGuard,
    PolicyState,
    RateLimiter,
    RateLimiterSettings,
    RateLimitPolicy,
    ServerRateLimiterSettings,
    decide,
    parse_policies,
    validate_rate_limit_key,
)
from voice_infra.storage import (
    SignedURLSettings,
    SignedURLStorage,
    StorageBackend,
    StorageSettings,
    UploadBody,
    user_key_segment,
    validate_content_type,
    validate_object_key,
    validate_presign_ttl,
)

__version__ = "0.1.0"

__all__ = [
    "BackendDependencyError",
    "BackendNotFoundError",
    "BackendSpec",
    "BackendUnavailableError",
    "CacheBackend",
    "CacheError",
    "CacheSection",
    "CacheSettings",
    "CacheUnavailableError",
    "CacheValueTooLargeError",
    "ConfigError",
    "DuplicateBackendError",
    "FailMode",
    "FailModeGuard",
    "InvalidByteRangeError",
    "InvalidCacheKeyError",
    "InvalidCacheTTLError",
    "InvalidCacheValueError",
    "InvalidCostError",
    "InvalidMetadataError",
    "InvalidObjectKeyError",
    "InvalidPresignedURLError",
    "InvalidRateLimitKeyError",
    "KindSpec",
    "Layer",
    "LayerSettings",
    "LayerSpec",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "ObjectTooLargeError",
    "Operation",
    "PluginError",
    "PluginFailure",
    "PluginLoadError",
    "PluginRegistry",
    "PolicyState",
    "RateLimitError",
    "RateLimitExceededError",
    "RateLimitInfo",
    "RateLimitPolicy",
    "RateLimitSection",
    "RateLimiter",
    "RateLimiterSettings",
    "RateLimiterUnavailableError",
    "SecretURL",
    "ServerRateLimiterSettings",
    "Settings",
    "SignedURLSettings",
    "SignedURLStorage",
    "StorageBackend",
    "StorageError",
    "StoragePermissionError",
    "StorageSection",
    "StorageSettings",
    "StorageUnavailableError",
    "UploadBody",
    "VoiceFileInfo",
    "VoiceServiceError",
    "__version__",
    "create_backend",
    "create_cache",
    "create_rate_limiter",
    "create_storage",
    "decide",
    "declare_kind",
    "declared_kinds",
    "get_registry",
    "hookimpl",
    "mask_secret",
    "mask_url",
    "parse_policies",
    "translate_errors",
    "user_key_segment",
    "validate_content_type",
    "validate_object_key",
    "validate_presign_ttl",
    "validate_rate_limit_key",
]
