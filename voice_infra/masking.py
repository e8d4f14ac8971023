"""What may be shown of configuration values: one masking rule for repr, dumps, the CLI,
logs and errors, used by the core and by every plugin.

The rule:

- an option whose name looks secret (:func:`looks_secret`) is shown as :data:`MASK`,
  whatever its value (tables and lists under it included);
- in a URL (:func:`mask_url`), the password of the user information is replaced by
  :data:`MASK` (user information without a password, which may be a token, entirely), and
  so is the value of every query or fragment parameter whose name looks secret
  (``?password=...``, ``&token=...``);
- tables and lists are shown item by item.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from pydantic import GetCoreSchemaHandler, Secret, SecretBytes, SecretStr
from pydantic_core import PydanticCustomError, SchemaSerializer, core_schema

__all__ = [
    "MASK",
    "SecretURL",
    "hide_in_logs",
    "hide_secrets",
    "looks_secret",
    "mask_query",
    "mask_secret",
    "mask_url",
    "redact",
    "reveal_secrets",
    "secret_fragments",
]

MASK = "**********"
# Matched on the lower-cased name with '-' read as '_' (so header-style and query names
# such as 'X-Amz-Security-Token' or 'api-key' match too). 'key_prefix' is not a secret;
# 'signing_key', 'secret_key', 'api_key', 'apikey' and a bare 'key' are.
_SECRET_NAME = re.compile(
    r"secret|passw|passwd|^pass$|pwd|token|credential|private|signature|^sig$|"
    r"authorization|^auth$|apikey|_key$|^key$",
)
_SECRETS = (SecretStr, SecretBytes, Secret)
# Options that hold a URL (url, storage_uri, endpoint_url, presign_base_url...).
_URL_NAME = re.compile(r"(^|_)(url|uri)$")
_MIN_REDACTED = 4


def looks_secret(name: str) -> bool:
    """True for option (or URL query parameter) names that hold secrets: ``secret_key``,
    ``password``, ``token``, ``signing_key``, ``api-key``, ``sig``..."""
    return bool(_SECRET_NAME.search(name.lower().replace("-", "_")))


def _mask_parameters(text: str) -> str:
    """``a=1&password=x`` with the values of secret-named parameters masked, and secret
    entries of ``name:value`` lists inside values (MongoDB's
    ``authMechanismProperties=AWS_SESSION_TOKEN:...``)."""
    if "=" not in text:
        return text
    items = []
    for item in re.split(r"([&;])", text):
        name, equals, value = item.partition("=")
        if equals and looks_secret(unquote(name)):
            item = f"{name}={MASK}"
        elif equals and ":" in value:
            item = f"{name}={_PAIR.sub(_mask_pair, value)}"
        items.append(item)
    return "".join(items)


def mask_query(target: str) -> str:
    """A request target (``/path?query``) as it may be logged: the values of secret-named
    query parameters masked (``X-VI-Signature``, ``X-Amz-Signature``, ``token``...), as
    :func:`mask_url` masks them in a URL. A presigned URL's signature is a bearer
    credential until it expires."""
    path, question_mark, query = target.partition("?")
    return f"{path}{question_mark}{_mask_parameters(query)}"


_PAIR = re.compile(r"(?<![^,])([^:,]+)(:|%3A)([^,]*)", re.I)


def _mask_pair(match: re.Match[str]) -> str:
    name, colon, _ = match.groups()
    return f"{name}{colon}{MASK}" if looks_secret(unquote(name)) else match[0]


def mask_url(url: str | SecretStr) -> str:
    """``url`` as it may be shown: its password (user information without a password
    entirely) and the values of secret-named query and fragment parameters replaced by
    :data:`MASK`. A string without ``://`` is returned as it is.

    A URL whose user information does not parse (a password holding a raw ``/``, ``?`` or
    ``#``, so that the host part ends inside it) is shown with everything between ``://``
    and its last ``@`` masked: so is any URL with an ``@`` after its host part, which
    cannot be told apart from such a password.
    """
    if isinstance(url, SecretStr):
        url = url.get_secret_value()
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # Split as urllib does (the host part ends at the first '/', '?' or '#'), but by hand:
    # urlunsplit would rewrite 'unix:///path' and lower-case the scheme.
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if "@" in tail:
        # 'redis://u:pa/ss@host' splits into host 'u' and port 'pa', 'redis://u:12#pw@host'
        # into host 'u' and port '12', 'redis://to/ken@host' into host 'to', and
        # 'redis://:p@x#y@host' into user information ':p' and host 'x': user information
        # holding a character that ends the host part. An '@' after the host part may
        # also be a path's or a query's, but a password must never show: mask up to the
        # last '@', then the rest.
        return mask_url(f"{scheme}://{MASK}@{rest.rpartition('@')[2]}")
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hosts}" if colon else f"{MASK}@{hosts}"
    tail, hash_mark, fragment = tail.partition("#")
    path, question_mark, query = tail.partition("?")
    return (
        f"{scheme}://{netloc}{path}{question_mark}{_mask_parameters(query)}"
        f"{hash_mark}{_mask_parameters(fragment)}"
    )


def _serialize_url(value: SecretURL, info: core_schema.SerializationInfo) -> str | SecretURL:
    return str(value) if info.mode == "json" else value


class SecretURL(SecretStr):
    """A URL that may carry credentials. Like :class:`~pydantic.SecretStr`, the value is
    read with :meth:`get_secret_value`; ``str``, ``repr`` and JSON dumps show it through
    :func:`mask_url` (``redis://app:**********@cache:6379/0``), so the host stays visible."""

    def _display(self) -> str:
        return mask_url(self.get_secret_value())

    @classmethod
    def _validate(cls, value: Any) -> SecretURL:
        if isinstance(value, cls):
            return value
        if isinstance(value, SecretStr):
            return cls(value.get_secret_value())
        if isinstance(value, str):
            return cls(value)
        raise PydanticCustomError("string_type", "Input should be a valid string")

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(
                _serialize_url, info_arg=True, when_used="unless-none"
            ),
        )

    # How an instance inside an untyped value (``dict[str, Any]``, extra keys) is dumped.
    __pydantic_serializer__ = SchemaSerializer(
        core_schema.any_schema(
            serialization=core_schema.plain_serializer_function_ser_schema(
                _serialize_url, info_arg=True, when_used="always"
            )
        )
    )


def mask_secret(name: str, value: Any) -> Any:
    """``value`` as it may be shown (repr, CLI, logs): the whole value masked when it is a
    secret type or ``name`` looks secret (an empty one shown as ``""``, as pydantic does),
    :func:`mask_url` applied to URLs, containers masked item by item. The one place that
    decides what is shown."""
    if value is None:
        return None
    if isinstance(value, SecretURL):
        return str(value)
    if isinstance(value, _SECRETS):
        value = value.get_secret_value()
    elif not looks_secret(name):
        if isinstance(value, str):
            if _json_with_secrets(name, value):
                return MASK
            if "://" in value:
                return mask_url(value)
            return MASK if _not_a_url(name, value) else value
        if isinstance(value, Mapping):
            return {key: mask_secret(str(key), item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(mask_secret(name, item) for item in value)
        return value
    return MASK if value else ""  # as pydantic shows an empty secret


def _parse_json(text: str) -> Any:
    """``text`` decoded when it is a JSON object or array (a table given by environment
    variable, ``VOICE_INFRA_RATE_LIMIT__STORAGE_OPTIONS='{"password": ...}'``), else None."""
    if text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _not_a_url(name: str, text: str) -> bool:
    """Whether the option ``name`` holds a URL but ``text`` is none (a password pasted
    into ``url``): what part of it is secret cannot be told, so all of it is."""
    return bool(text) and "://" not in text and bool(_URL_NAME.search(name.lower()))


def _json_with_secrets(name: str, text: str) -> bool:
    """Whether ``text`` is JSON holding something the masking rule masks, or looks like
    JSON and does not parse (what in it is secret cannot be told)."""
    if text.lstrip()[:1] not in ("{", "["):
        return False
    parsed = _parse_json(text)
    return parsed is None or mask_secret(name, parsed) != parsed


def hide_secrets(name: str, value: Any) -> Any:
    """``value`` with what :func:`mask_secret` would mask held in secret types, so that
    reprs and dumps (``model_dump``, ``model_dump_json``) of a model holding it never carry
    a secret: values under secret-looking names become :class:`~pydantic.SecretStr` (or
    :class:`~pydantic.Secret` when not a string), URLs with credentials :class:`SecretURL`.
    :func:`reveal_secrets` undoes it."""
    if value is None or isinstance(value, _SECRETS):
        return value
    if looks_secret(name):
        return SecretStr(value) if isinstance(value, str) else Secret(value)
    if isinstance(value, str):
        if _json_with_secrets(name, value) or _not_a_url(name, value):
            return SecretStr(value)
        return SecretURL(value) if "://" in value and mask_url(value) != value else value
    if isinstance(value, Mapping):
        return {key: hide_secrets(str(key), item) for key, item in value.items()}
    if isinstance(value, list | tuple):  # items take the list's name, as in mask_secret
        return type(value)(hide_secrets(name, item) for item in value)
    return value


def reveal_secrets(value: Any) -> Any:
    """The inverse of :func:`hide_secrets`: the plain values, for a backend's settings."""
    if isinstance(value, _SECRETS):
        return value.get_secret_value()
    if isinstance(value, Mapping):
        return {key: reveal_secrets(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(reveal_secrets(item) for item in value)
    return value


def secret_fragments(name: str, value: Any) -> set[str]:
    """The secret texts inside ``value`` (as :func:`mask_secret` decides), raw and
    percent-decoded: what :func:`redact` removes from messages built by other code."""
    found: set[str] = set()
    if value is None:
        return found
    if isinstance(value, SecretURL):
        found |= _url_secrets(value.get_secret_value())
    elif isinstance(value, _SECRETS):
        found |= secret_fragments("password", value.get_secret_value())
    elif looks_secret(name) and not isinstance(value, Mapping | list | tuple):
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        found |= {text, unquote(text)}
    elif isinstance(value, str):
        parsed = _parse_json(value)
        if parsed is not None:
            found |= secret_fragments(name, parsed)
        found |= _url_secrets(value) if "://" in value else set()
        if _not_a_url(name, value):
            found |= {value, unquote(value)}
    elif isinstance(value, Mapping):
        for key, item in value.items():
            found |= secret_fragments(name if looks_secret(name) else str(key), item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            found |= secret_fragments(name, item)
    return {text for text in found if text}


def _url_secrets(url: str) -> set[str]:
    """The parts of ``url`` that :func:`mask_url` masks."""
    shown = mask_url(url)
    if shown == url:
        return set()
    # What mask_url replaced: split both at the masks and take the differing pieces.
    found: set[str] = set()
    pattern = "(.*?)".join(re.escape(piece) for piece in shown.split(MASK))
    match = re.fullmatch(pattern, url, re.S)
    pieces: Iterable[str] = match.groups() if match else [url.partition("://")[2] or url]
    for piece in pieces:
        found |= {piece, unquote(piece)}
        # A password that broke the URL apart: clients and validators may quote the part
        # they took as the port or the path ('u:pa/ss@h' -> 'pa', 'ss@h'), so its parts
        # are secret too; of user information without ':' (a token), all of it.
        secret = piece.partition(":")[2] if ":" in piece else piece
        found |= {part for part in re.split(r"[:/?#@]", secret) if part}
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``secrets`` replaced by :data:`MASK`
    (longest first), for messages that embed text from other libraries. Secrets shorter
    than 4 characters are left alone: replacing them would garble the message and they
    cannot be told from ordinary text anyway."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_REDACTED:
            text = text.replace(secret, MASK)
    return text


# -- log records --------------------------------------------------------------------

_logged_secrets: frozenset[str] = frozenset()
_logs_lock = threading.Lock()
_factory_installed = False


def hide_in_logs(secrets: Iterable[str]) -> None:
    """Redact ``secrets`` (see :func:`redact`) from every log record created from now on in
    this process, whichever logger makes it: libraries log what they send at DEBUG
    (botocore's signed request shows the session token and the access key id). Installed
    as a log record factory wrapping the current one; the registry calls it with the
    secrets of every backend it builds."""
    global _logged_secrets, _factory_installed
    new = {secret for secret in secrets if len(secret) >= _MIN_REDACTED}
    if new <= _logged_secrets:
        return
    with _logs_lock:
        if not _factory_installed:
            logging.setLogRecordFactory(_redacting_factory(logging.getLogRecordFactory()))
            _factory_installed = True
        _logged_secrets = _logged_secrets | new


def _redacting_factory(
    previous: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        secrets = _logged_secrets
        if secrets:
            _redact_record(record, secrets)
        return record

    return make_record


def _redact_record(record: logging.LogRecord, secrets: frozenset[str]) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: the handler reports it as usual
        return
    if any(secret in message for secret in secrets):
        record.msg, record.args = redact(message, secrets), None
    if record.exc_info and record.exc_info[1] is not None:
        # What Formatter.formatException would write; a formatter uses exc_text when set.
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if any(secret in text for secret in secrets):
            record.exc_text = redact(text, secrets)
    if record.stack_info and any(secret in record.stack_info for secret in secrets):
        record.stack_info = redact(record.stack_info, secrets)
