"""What may be shown of configuration values: one masking rule for repr, CLI, logs, errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import SecretBytes, SecretStr

__all__ = ["MASK", "looks_secret", "mask_secret", "mask_url"]

MASK = "**********"
_SECRET_NAME = re.compile(r"(secret|password|passwd|token|credential|private|_key$|^key$)", re.I)


def looks_secret(name: str) -> bool:
    """True for option names that hold secrets (``secret_key``, ``password``...)."""
    return bool(_SECRET_NAME.search(name))


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for logs and messages."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}{port}"
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mask_secret(name: str, value: Any) -> Any:
    """``value`` as it may be shown (repr, CLI, logs): the whole value masked when it is a
    secret type or ``name`` looks secret, the password masked inside URLs, containers
    masked item by item. The one place that decides what is shown."""
    if value is None:
        return None
    if isinstance(value, SecretStr | SecretBytes) or looks_secret(name):
        return MASK
    if isinstance(value, str):
        return mask_url(value) if "://" in value and "@" in value else value
    if isinstance(value, Mapping):
        return {key: mask_secret(str(key), item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_secret(name, item) for item in value)
    return value
