"""Storage: the interface every storage backend implements, and what they share.

One module per concept; everything is importable from here, as before the split:

- :mod:`~voice_infra.storage.keys`: object keys, listing prefixes, user-id key segments,
  content types and user metadata, validated once for every backend;
- :mod:`~voice_infra.storage.body`: upload sources read as a counted, hashed, size-limited
  stream (:class:`UploadBody`);
- :mod:`~voice_infra.storage.base`: :class:`StorageSettings` and :class:`StorageBackend`,
  the interface (a backend implements ``_write``, ``_read``, ``_info``, ``_delete``,
  ``_list`` and, with the ``presign`` capability, ``_presign``);
- :mod:`~voice_infra.storage.signing`: voice-infra's own HMAC-signed presigned URLs
  (:class:`URLSigner`, :class:`SignedURLSettings`, :class:`SignedURLStorage`) for backends
  without a server that signs them.
"""

from __future__ import annotations

from voice_infra.storage.base import (
    DEFAULT_CHUNK_SIZE,
    MAX_PRESIGN_TTL,
    OpenedRange,
    PresignMethod,
    StorageBackend,
    StorageSettings,
    same_version,
    validate_presign_ttl,
)
from voice_infra.storage.body import UploadBody, UploadSource
from voice_infra.storage.keys import (
    MAX_CONTENT_TYPE_LENGTH,
    MAX_METADATA_BYTES,
    MAX_OBJECT_KEY_BYTES,
    extension_for,
    metadata_size,
    user_key_segment,
    validate_content_type,
    validate_list_prefix,
    validate_metadata,
    validate_object_key,
)
from voice_infra.storage.signing import (
    MIN_SIGNING_KEY_BYTES,
    SignedURLSettings,
    SignedURLStorage,
    URLSigner,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CONTENT_TYPE_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_OBJECT_KEY_BYTES",
    "MAX_PRESIGN_TTL",
    "MIN_SIGNING_KEY_BYTES",
    "OpenedRange",
    "PresignMethod",
    "SignedURLSettings",
    "SignedURLStorage",
    "StorageBackend",
    "StorageSettings",
    "URLSigner",
    "UploadBody",
    "UploadSource",
    "extension_for",
    "metadata_size",
    "same_version",
    "user_key_segment",
    "validate_content_type",
    "validate_list_prefix",
    "validate_metadata",
    "validate_object_key",
    "validate_presign_ttl",
]
