"""What callers name and describe objects with: object keys, listing prefixes, user-id
key segments, content types and user metadata, validated once for every backend."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from urllib.parse import quote

from voice_infra.errors import InvalidMetadataError, InvalidObjectKeyError
from voice_infra.text import refuse_unsafe_characters

__all__ = [
    "ANONYMOUS_SEGMENT",
    "MAX_CONTENT_TYPE_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_OBJECT_KEY_BYTES",
    "extension_for",
    "metadata_size",
    "user_key_segment",
    "validate_content_type",
    "validate_list_prefix",
    "validate_metadata",
    "validate_object_key",
]

MAX_OBJECT_KEY_BYTES = 1024  # S3's limit, applied to every backend
MAX_METADATA_BYTES = 2048  # S3's limit on user metadata (names + values), for every backend

_AUDIO_EXTENSIONS = {
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/ogg": "ogg", "audio/opus": "opus",
    "audio/webm": "webm", "audio/flac": "flac", "audio/x-flac": "flac", "audio/aac": "aac",
    "audio/mp4": "m4a", "audio/x-m4a": "m4a", "audio/amr": "amr", "audio/3gpp": "3gp",
    "application/octet-stream": "bin",
}  # fmt: skip
# Characters a user id keeps in its key segment; the rest are percent-encoded.
_USER_SEGMENT_SAFE = "@._-"
# Printable ASCII a user id keeps in the ``user-id`` metadata value ('%' is encoded).
_METADATA_SAFE = "".join(chr(c) for c in range(32, 127) if chr(c) != "%" and not chr(c).isalnum())
_MAX_USER_SEGMENT = 128
#: The key segment of anonymous uploads (no user id): no id's segment can start with '~'.
ANONYMOUS_SEGMENT = "~anonymous"


def user_key_segment(user_id: str | None) -> str:
    """The key segment of ``user_id``: percent-encoded (RFC 3986, UTF-8) except letters,
    digits and ``@._-``, so distinct ids never share a segment (``a b`` -> ``a%20b``,
    ``a/b`` -> ``a%2Fb``, ``a~b`` -> ``a%7Eb``). Ids whose segment would pass 128
    characters are cut and end with ``~`` and 16 hex digits of their SHA-256; anonymous
    uploads (``None``) get ``~anonymous``. ``~`` is encoded in every id, so neither form
    can be any id's own segment."""
    if user_id is None:
        return ANONYMOUS_SEGMENT
    if str(user_id) == "":
        raise InvalidObjectKeyError("user_id is empty; pass None for anonymous uploads")
    _utf8_length(str(user_id), "user_id")  # a lone surrogate cannot be encoded
    # quote() never encodes '~' (RFC 3986 unreserved): encoded here, since '~' marks the
    # cut and anonymous segments. Without it the id that *is* a cut segment, or the id
    # 'anonymous', would share another user's segment.
    segment = quote(str(user_id), safe=_USER_SEGMENT_SAFE).replace("~", "%7E")
    if segment.strip(".") == "":  # '.' and '..' are not valid key segments
        segment = segment.replace(".", "%2E")
    if len(segment) > _MAX_USER_SEGMENT:
        digest = hashlib.sha256(str(user_id).encode()).hexdigest()[:16]
        segment = f"{segment[: _MAX_USER_SEGMENT - 17]}~{digest}"
    return segment


def validate_object_key(key: object, *, writing: bool = True) -> str:
    """Return ``key`` if every backend can store it, else raise ``InvalidObjectKeyError``.

    Rules: a non-empty string of at most 1024 UTF-8 bytes; no leading or trailing ``/``;
    no empty, ``.`` or ``..`` segments; no control, separator or format characters
    (see :func:`voice_infra.text.first_unsafe_character`). With ``writing=False`` (reads,
    info, deletes) only C0 controls and DEL are refused among the characters, so objects
    stored under keys an earlier, looser rule (or another tool) allowed stay reachable.
    """
    if not isinstance(key, str) or not key:
        raise InvalidObjectKeyError(f"object key must be a non-empty string, got {key!r}")
    size = _utf8_length(key, "object key")
    if size > MAX_OBJECT_KEY_BYTES:
        raise InvalidObjectKeyError(
            f"object key is {size} bytes long; S3 allows at most {MAX_OBJECT_KEY_BYTES}"
        )
    if key.startswith("/"):
        raise InvalidObjectKeyError(f"object key {key!r} must not start with '/'")
    if key.endswith("/"):
        raise InvalidObjectKeyError(f"object key {key!r} must not end with '/'")
    refuse_unsafe_characters(key, "object key", InvalidObjectKeyError, strict=writing)
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidObjectKeyError(
                f"object key {key!r} has an empty, '.' or '..' path segment; "
                "use plain names separated by single '/'"
            )
    return key


def _utf8_length(text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidObjectKeyError(f"{what} {text!r} is not valid Unicode text") from None


def validate_list_prefix(prefix: object) -> str:
    """A listing prefix: any text of at most 1024 UTF-8 bytes without C0 controls or
    DEL (the reading rule of keys). Prefixes such as ``a/.`` (of ``a/.hidden``) are fine;
    one that no valid key can start with (``/x``, ``a/../``) simply lists nothing."""
    if not isinstance(prefix, str):
        raise InvalidObjectKeyError(f"prefix must be a string, got {prefix!r}")
    size = _utf8_length(prefix, "prefix")
    if size > MAX_OBJECT_KEY_BYTES:
        raise InvalidObjectKeyError(
            f"prefix is {size} bytes long; no key is longer than {MAX_OBJECT_KEY_BYTES}"
        )
    refuse_unsafe_characters(prefix, "prefix", InvalidObjectKeyError, strict=False)
    return prefix


# A media type: token "/" token, then optional ";"-parameters in printable ASCII (as HTTP
# clients write them, RFC 9110 or not: `codecs=vp8,opus`, `name=my file.wav`).
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
# fullmatch and [ \t] rather than $ and \s: a trailing or embedded CR/LF must not pass.
_CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}([ \t]*;[\x20-\x7e\t]*)?", re.ASCII)
# What a browser takes for a media type in one comma-separated piece of Content-Type
# (WHATWG MIME Sniffing, "parse a MIME type"): blanks, token "/" token, then blanks or ';'.
_LISTED_TYPE = re.compile(rf"[ \t]*{_TOKEN}/{_TOKEN}[ \t]*(;.*)?", re.ASCII | re.DOTALL)
MAX_CONTENT_TYPE_LENGTH = 255


def _comma_pieces(value: str) -> list[str]:
    """``value`` split at the commas outside double quotes, as a browser splits a
    ``Content-Type`` (WHATWG Fetch, "extract a MIME type": a quoted string runs to its
    closing quote or the end, a backslash escaping the next character)."""
    pieces, start, position, quoted = [], 0, 0, False
    while position < len(value):
        char = value[position]
        if quoted and char == "\\":
            position += 1  # the escaped character
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            pieces.append(value[start:position])
            start = position + 1
        position += 1
    pieces.append(value[start:])
    return pieces


def validate_content_type(content_type: object) -> str:
    """Return ``content_type`` if every backend can store it as the object's media type
    (``type/subtype`` with optional parameters, printable ASCII, at most 255 characters)
    and it is one type, else raise ``InvalidMetadataError``.

    One type: a browser reads ``Content-Type`` as a comma-separated list and takes the
    last piece that is a media type, so ``audio/webm; a=b, text/html`` would be served as
    HTML. A comma is refused when what follows it is a media type (``codecs=vp8,opus``,
    whose ``opus`` is not, stays valid)."""
    if (
        not isinstance(content_type, str)
        or len(content_type) > MAX_CONTENT_TYPE_LENGTH
        or not _CONTENT_TYPE.fullmatch(content_type)
        or any(_LISTED_TYPE.fullmatch(piece) for piece in _comma_pieces(content_type)[1:])
    ):
        raise InvalidMetadataError(
            f"content_type {content_type!r} is not one media type: use 'type/subtype' "
            "with optional '; name=value' parameters in printable ASCII, for example "
            "'audio/wav' or 'audio/ogg; codecs=opus', and no second type after a comma "
            f"(at most {MAX_CONTENT_TYPE_LENGTH} characters)"
        )
    return content_type


def extension_for(content_type: str | None) -> str:
    """File extension for an audio content type (``audio/wav`` -> ``wav``), else ``bin``."""
    if not content_type:
        return "bin"
    base = content_type.split(";", 1)[0].strip().lower()
    return _AUDIO_EXTENSIONS.get(base, "bin")


_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")


def validate_metadata(metadata: Mapping[str, str], user_id: str | None) -> dict[str, str]:
    """User metadata that survives every backend (S3 lower-cases names, ASCII values)."""
    clean: dict[str, str] = {}
    items = dict(metadata)
    if user_id is not None:
        # Percent-encoded so any user id fits S3's ASCII metadata (``unquote`` reverses it).
        recorded = quote(str(user_id), safe=_METADATA_SAFE)
        if items.setdefault("user-id", recorded) != recorded:
            # The object's owner is the key's user segment: metadata saying another
            # user would be a lie that a reader of the metadata could believe.
            raise InvalidMetadataError(
                f"metadata 'user-id' {items['user-id']!r} contradicts user_id "
                f"{user_id!r}: leave 'user-id' out, it is recorded from user_id"
            )
    for name, value in items.items():
        if not isinstance(name, str) or not _METADATA_KEY.match(name):
            raise InvalidMetadataError(
                f"metadata name {name!r} is invalid: use lower-case letters, digits and '-'"
            )
        if not isinstance(value, str) or not value.isascii() or any(ord(c) < 32 for c in value):
            raise InvalidMetadataError(
                f"metadata value for {name!r} must be printable ASCII text, got {value!r}"
            )
        clean[name] = value
    size = metadata_size(clean)
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadataError(
            f"metadata is {size} bytes; S3 allows at most {MAX_METADATA_BYTES} bytes "
            "(2 KiB) of user metadata"
        )
    return clean


def metadata_size(metadata: Mapping[str, str]) -> int:
    """What user metadata counts toward :data:`MAX_METADATA_BYTES`: the UTF-8 bytes of
    its names and values."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
