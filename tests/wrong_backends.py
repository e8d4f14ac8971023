"""Deliberately wrong storage backends, each passing the contract suite as it stood
before issue 9: the new contract tests must catch every one of them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from voice_infra import VoiceFileInfo
from voice_infra.backends.memory import MemoryStorage, MemoryStorageSettings


class DeclaredMemoryStorage(MemoryStorage):
    """The memory backend, built directly, with its capabilities declared on the class."""

    capabilities = frozenset({"presign", "versioned_read"})


class LikePrefixStorage(DeclaredMemoryStorage):
    """Filters a listing as SQL ``key LIKE prefix || '%'`` does: ``_`` and ``%`` are
    wildcards and ASCII letters match either case."""

    async def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        wildcards = {"%": ".*", "_": "."}
        pattern = "".join(wildcards.get(c, re.escape(c)) for c in prefix) + ".*"
        like = re.compile(pattern, re.ASCII | re.IGNORECASE | re.DOTALL)
        for key in sorted(k for k in self._objects if like.fullmatch(k)):
            yield self._objects[key][1]


class Utf16OrderStorage(DeclaredMemoryStorage):
    """Filters exactly but lists in UTF-16 code-unit order (Java's, JavaScript's), where
    U+1F600 sorts before U+E000."""

    async def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        keys = [k for k in self._objects if k.startswith(prefix)]
        for key in sorted(keys, key=lambda k: k.encode("utf-16-be")):
            yield self._objects[key][1]


class NoChecksumStorage(DeclaredMemoryStorage):
    """Keeps no checksum: ``get_file_info`` reports ``checksum=None`` (``upload_file``'s
    own result is built by the core and stays right)."""

    async def _info(self, key: str) -> VoiceFileInfo:
        return (await super()._info(key)).model_copy(update={"checksum": None})


class UndeclaredMemoryStorage(MemoryStorage):
    """Presigns, but is built directly and its class declares no capabilities."""

    # As a third party's class that never says which features it has (MemoryStorage itself
    # declares its own).
    _declared_capabilities = None


def build(cls: type[MemoryStorage]) -> MemoryStorage:
    """``cls`` built directly, without the registry."""
    return cls(MemoryStorageSettings())
