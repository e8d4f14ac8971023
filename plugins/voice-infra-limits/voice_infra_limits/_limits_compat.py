"""How the adapter learns which storages ``limits`` offers, through public names only.

``limits.storage.storage_from_string`` picks a storage class from a registry filled by a
metaclass, ``limits._storage_scheme.SCHEMES``: a private module. The same mapping is
public: every storage class ``limits.aio.storage`` exports declares the URI schemes it
serves in its documented ``STORAGE_SCHEME`` attribute. :func:`async_storage_classes`
builds the mapping from those; ``tests/test_limits_compat.py`` checks that it matches
the classes ``storage_from_string`` builds, so a ``limits`` release that changes either
fails that test clearly.

Imports ``limits`` when called, not at import: plugin discovery must not pay for it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from limits.aio.storage import Storage

__all__ = ["async_storage_classes"]


@functools.cache
def async_storage_classes() -> dict[str, type[Storage]]:
    """``{"async+redis": RedisStorage, "async+memory": MemoryStorage, ...}``: every async
    storage scheme ``limits`` serves, with the class that serves it."""
    import limits.aio.storage as storages

    classes: dict[str, type[Storage]] = {}
    for name in storages.__all__:
        cls = getattr(storages, name)
        schemes = getattr(cls, "STORAGE_SCHEME", None)
        if not isinstance(cls, type) or not schemes:
            continue  # base classes and mixins serve no scheme
        for scheme in [schemes] if isinstance(schemes, str) else schemes:
            classes[scheme] = cls
    return classes
