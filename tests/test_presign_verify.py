"""verify_presigned_url of the memory and fs backends: whatever it is given, it returns the
signed key or raises InvalidPresignedURLError saying what is wrong (issue 8, item 5)."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.storage import SignedURLStorage, URLSigner, validate_object_key

BASE = "https://voice.example:8443/files"
FIELDS = ("X-VI-Method", "X-VI-Expires", "X-VI-Signature")

# The autouse isolation fixture of conftest.py is function-scoped; the storages here are
# module-scoped and never change, so sharing them between examples is safe.
PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module", params=["memory", "fs"])
def storage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SignedURLStorage]:
    """A real, opened memory or fs backend built from settings, as applications build it."""
    options = {"backend": request.param, "presign_base_url": BASE}
    if request.param == "fs":
        options["path"] = str(tmp_path_factory.mktemp("fs"))
    backend = vi.create_storage(vi.Settings(storage=options))
    asyncio.run(backend.open())
    assert isinstance(backend, SignedURLStorage)
    yield backend
    asyncio.run(backend.aclose())


def presign(storage: SignedURLStorage, key: str, method: str = "GET") -> str:
    return asyncio.run(storage.generate_presigned_url(key, 3600, method))  # type: ignore[arg-type]


def refused(storage: SignedURLStorage, url: object, method: object = "GET") -> str:
    """The message of the InvalidPresignedURLError ``url`` raises (anything else fails)."""
    with pytest.raises(vi.InvalidPresignedURLError) as caught:
        storage.verify_presigned_url(url, method)  # type: ignore[arg-type]
    return str(caught.value)


def with_field(url: str, name: str, value: str) -> str:
    """``url`` with the raw text of the query field ``name`` replaced by ``value``."""
    head, query = url.split("?", 1)
    pairs = [part.split("=", 1) for part in query.split("&")]
    return head + "?" + "&".join(f"{n}={value if n == name else v}" for n, v in pairs)


def test_both_backends_share_one_verifier(storage: SignedURLStorage) -> None:
    assert type(storage).verify_presigned_url is SignedURLStorage.verify_presigned_url
    assert type(storage._signer) is URLSigner


# -- the family of malformed URLs, each with a message naming the problem -------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda u: with_field(u, "X-VI-Signature", "%C3%A9"), "64 lower-case hex"),
        (lambda u: with_field(u, "X-VI-Signature", "\u00e9" * 64), "64 lower-case hex"),
        (lambda u: with_field(u, "X-VI-Signature", "g" * 64), "64 lower-case hex"),
        (lambda u: with_field(u, "X-VI-Signature", "%FF"), "not percent-encoded UTF-8"),
        (lambda u: u.replace(u.split("X-VI-Signature=")[1], "").rstrip("="), "64 lower-case"),
        (lambda u: u + "&X-VI-Signature=" + "0" * 64, "repeats X-VI-Signature"),
        (lambda u: u + "&X-VI-Expires=1", "repeats X-VI-Expires"),
        (lambda u: u.replace("X-VI-Method=GET&", ""), "lacks X-VI-Method"),
        (lambda u: u.split("?")[0], "lacks X-VI-Method, X-VI-Expires, X-VI-Signature"),
        (lambda u: with_field(u, "X-VI-Expires", "1e999"), "X-VI-Expires='1e999'"),
        (lambda u: with_field(u, "X-VI-Expires", "\uff19\uff19"), "ASCII digits"),
        (lambda u: with_field(u, "X-VI-Expires", "-5"), "X-VI-Expires='-5'"),
        (lambda u: with_field(u, "X-VI-Expires", "NaN"), "X-VI-Expires='NaN'"),
        (lambda u: with_field(u, "X-VI-Expires", "inf"), "X-VI-Expires='inf'"),
        (lambda u: with_field(u, "X-VI-Expires", "9" * 400), "ASCII digits"),
        (lambda u: with_field(u, "X-VI-Expires", "%2B99"), "X-VI-Expires='\\+99'"),
        (lambda u: with_field(u, "X-VI-Method", "DELETE"), "X-VI-Method='DELETE'"),
        (lambda u: u.replace("/files/", "/other/"), "not issued by this storage"),
        (lambda u: u.replace("/files/", "/files2/"), "not issued by this storage"),
        (lambda u: u.replace("https:", "http:"), "not issued by this storage"),
        (lambda u: u.replace(":8443", ":8444"), "not issued by this storage"),
        (lambda u: u.replace(":8443", ""), "not issued by this storage"),
        (lambda u: u.replace("voice.example", "evil.example"), "not issued by this storage"),
        (lambda u: u.replace("voice.example", "me@voice.example"), "not issued by this storage"),
        (lambda u: u.replace(":8443", ":0"), "not issued by this storage"),
        (lambda u: u.replace(":8443", ":99999"), "not a valid URL"),
        (lambda u: u.replace(":8443", ":https"), "not a valid URL"),
        (lambda u: u.replace("voice.example", "[::1"), "not a valid URL"),
        (lambda u: u + "#fragment", "#fragment"),
        (lambda u: u + "#", "#fragment"),
        (lambda u: u.replace("/k.wav", "/k%FF.wav"), "not percent-encoded UTF-8"),
        (lambda u: u.replace("/k.wav", "/%2E%2E/k.wav"), "no valid object"),
        (lambda u: u.replace("/k.wav", "/a%00.wav"), "no valid object"),
        (lambda u: u.replace("/k.wav", "/a//k.wav"), "no valid object"),
        (lambda u: u.replace("/k.wav", "/"), "no valid object"),
        (lambda u: u.replace("/k.wav", "/\ud800.wav"), "no valid object"),
        (lambda u: u.replace("/k.wav", "/" + "a" * 1025), "no valid object"),
        (lambda u: u.replace("/k.wav", "/k\t.wav"), "U\\+0009"),
        (lambda u: u.replace("/k.wav", "/k\n.wav"), "U\\+000A"),
        (lambda u: u + "&pad=" + "x" * 10_000, "characters long"),
        (lambda u: u.replace("/k.wav", "/other.wav"), "signature does not match"),
        (lambda u: u.encode(), "must be a str, got bytes"),
        (lambda u: None, "must be a str, got NoneType"),
        (lambda u: 42, "must be a str, got int"),
    ],
)
def test_malformed_urls_are_refused_with_a_reason(
    storage: SignedURLStorage, mutate: object, message: str
) -> None:
    url = presign(storage, "k.wav")
    bad = mutate(url)  # type: ignore[operator]
    assert bad != url
    with pytest.raises(vi.InvalidPresignedURLError, match=message):
        storage.verify_presigned_url(bad)


@pytest.mark.parametrize("method", ["DELETE", "", None, 1, b"GET", "G\u0308ET"])
def test_methods_other_than_get_and_put_are_refused(
    storage: SignedURLStorage, method: object
) -> None:
    url = presign(storage, "k.wav")
    assert "method must be 'GET' or 'PUT'" in refused(storage, url, method)


def test_foreign_query_parameters_are_ignored(storage: SignedURLStorage) -> None:
    url = presign(storage, "k.wav")
    assert storage.verify_presigned_url(url + "&utm_source=mail&utm_source=x") == "k.wav"


def test_verifying_before_the_fs_backend_is_open_is_a_storage_error(tmp_path: Path) -> None:
    backend = vi.create_storage(vi.Settings(storage={"backend": "fs", "path": str(tmp_path)}))
    with pytest.raises(vi.StorageError, match="not open yet"):
        backend.verify_presigned_url("http://localhost:8000/voice-files/k.wav")  # type: ignore[attr-defined]


# -- properties -----------------------------------------------------------------------------

# Characters the URL grammar gives meaning to, weighted in so the parser's corners are hit.
_URL_ALPHABET = st.sampled_from("%&=?#/:@[]+;. \t\n\\") | st.characters()
# Values int(), float() or a sloppy parser would take, and other near misses.
_ODD_VALUES = ["1e999", "\uff19\uff19", "-1", "NaN", "inf", "0x10", "1_0", " 5", "%C3%A9", "%FF",
               "GET", "PUT", "get", "0" * 64, "9" * 30, "%2B5", ""]  # fmt: skip
_FIELD_VALUES = (
    st.text(_URL_ALPHABET, max_size=80)
    | st.sampled_from(_ODD_VALUES)
    | st.from_regex(r"[0-9a-fA-F]{60,68}", fullmatch=True)
    | st.integers().map(str)
)
_QUERIES = st.lists(
    st.tuples(st.sampled_from(FIELDS) | st.text(_URL_ALPHABET, max_size=10), _FIELD_VALUES),
    max_size=6,
).map(lambda pairs: "&".join(f"{name}={value}" for name, value in pairs)) | st.text(
    _URL_ALPHABET, max_size=200
)
_METHODS = st.sampled_from(["GET", "PUT", "get", "put"]) | st.text(max_size=5) | st.none()


@PROPERTY
@given(
    url=st.text(_URL_ALPHABET, max_size=300) | st.binary() | st.none() | st.integers(),
    method=_METHODS,
)
def test_any_value_is_refused_with_invalid_presigned_url(
    storage: SignedURLStorage, url: object, method: object
) -> None:
    refused(storage, url, method)


@PROPERTY
@given(
    prefix=st.sampled_from([BASE, BASE.upper(), "https://voice.example:8443", "http://x", ""]),
    path=st.text(_URL_ALPHABET, max_size=120),
    query=_QUERIES,
    method=_METHODS,
)
def test_any_path_and_query_under_the_base_is_refused(
    storage: SignedURLStorage, prefix: str, path: str, query: str, method: object
) -> None:
    refused(storage, f"{prefix}/{path}?{query}", method)


_SEGMENTS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)


def _valid_key(segments: list[str]) -> bool:
    try:
        validate_object_key("/".join(segments))
    except vi.InvalidObjectKeyError:
        return False
    return True


_KEYS = st.lists(_SEGMENTS, min_size=1, max_size=4).filter(_valid_key).map("/".join)


@PROPERTY
@given(key=_KEYS, method=st.sampled_from(["GET", "PUT"]))
def test_signed_urls_verify_for_any_valid_key(
    storage: SignedURLStorage, key: str, method: str
) -> None:
    url = presign(storage, key, method)
    assert storage.verify_presigned_url(url, method) == key  # type: ignore[arg-type]
    other = "PUT" if method == "GET" else "GET"
    assert f"allows {method}, not {other}" in refused(storage, url, other)


@PROPERTY
@given(key=_KEYS, data=st.data())
def test_changing_one_character_of_key_expiry_or_signature_fails(
    storage: SignedURLStorage, key: str, data: st.DataObject
) -> None:
    url = presign(storage, key)
    part = data.draw(st.sampled_from(["key", "X-VI-Expires", "X-VI-Signature"]))
    if part == "key":
        i = data.draw(st.integers(0, len(key) - 1))
        new = data.draw(st.characters(codec="utf-8").filter(lambda c: c != key[i]))
        tampered = key[:i] + new + key[i + 1 :]
        bad = f"{BASE}/{quote(tampered)}?{url.split('?', 1)[1]}"
    else:
        value = url.split(f"{part}=", 1)[1].split("&", 1)[0]
        alphabet = string.digits if part == "X-VI-Expires" else string.hexdigits + "%é"
        i = data.draw(st.integers(0, len(value) - 1))
        new = data.draw(st.sampled_from(alphabet).filter(lambda c: c != value[i]))
        bad = with_field(url, part, value[:i] + new + value[i + 1 :])
    refused(storage, bad)


@PROPERTY
@given(key=_KEYS, data=st.data())
def test_no_single_character_change_of_a_url_grants_another_key(
    storage: SignedURLStorage, key: str, data: st.DataObject
) -> None:
    """Any character of the URL replaced: refused, or (an equivalent spelling such as
    ``%c3`` for ``%C3``) the very same grant; never another key or method."""
    url = presign(storage, key)
    i = data.draw(st.integers(0, len(url) - 1))
    new = data.draw(_URL_ALPHABET.filter(lambda c: c != url[i]))
    bad = url[:i] + new + url[i + 1 :]
    try:
        granted = storage.verify_presigned_url(bad)
    except vi.InvalidPresignedURLError:
        return
    assert granted == key
    refused(storage, bad, "PUT")


@pytest.mark.parametrize(
    "origin", ["https://VOICE.example", "HTTPS://voice.example:443", "https://voice.example:0443"]
)
def test_equivalent_spellings_of_the_base_verify(origin: str) -> None:
    signer = URLSigner(b"k" * 32, "https://voice.example/files")
    url = signer.sign("a/b.wav", expires_in=60, method="GET")
    assert signer.verify(url.replace("https://voice.example", origin)) == "a/b.wav"


@pytest.mark.parametrize(
    "base",
    [
        "https://voice.example/files#x", "https://voice.example/files?a=1", "ftp://h/x",
        # An empty query: every URL would be 'files?/key?X-VI-...', which never verifies.
        "https://voice.example/files?",
        # A port that is no port: a ConfigError naming the option, not a plugin failure.
        "http://h:99999/x", "http://h:-1/x", "http://h:abc/x", "http://:80/x",
    ],
)  # fmt: skip
def test_presign_base_url_refuses_a_query_or_fragment(base: str) -> None:
    with pytest.raises(vi.ConfigError, match=r"presign_base_url.*without a query or fragment"):
        vi.create_storage(vi.Settings.from_keywords(
            storage={"backend": "memory", "presign_base_url": base}
        ))  # fmt: skip
