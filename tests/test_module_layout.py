"""The core's modules by concept (issue 10): ``voice_infra.storage`` and
``voice_infra.ratelimit`` are packages of one module per concept, every name they
exported before stays importable from them, and shared mechanisms live once."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.backends import memory
from voice_infra.base import BackendSettings
from voice_infra.ratelimit import algorithms
from voice_infra.storage import MAX_METADATA_BYTES, metadata_size, validate_metadata

ROOT = Path(__file__).resolve().parents[1]

# What the single-file modules exported before the split: users import these.
BEFORE_THE_SPLIT = {
    "voice_infra.storage": [
        "DEFAULT_CHUNK_SIZE", "MAX_CONTENT_TYPE_LENGTH", "MAX_OBJECT_KEY_BYTES",
        "MAX_PRESIGN_TTL", "MIN_SIGNING_KEY_BYTES", "PresignMethod", "SignedURLSettings",
        "SignedURLStorage", "StorageBackend", "StorageSettings", "URLSigner", "UploadBody",
        "UploadSource", "extension_for", "user_key_segment", "validate_content_type",
        "validate_list_prefix", "validate_object_key", "validate_presign_ttl",
    ],
    "voice_infra.ratelimit": [
        "MAX_KEY_LENGTH", "MAX_POLICY_LIMIT", "MAX_POLICY_WINDOW", "Algorithm", "FailMode",
        "FailModeGuard", "Policies", "PolicyState", "RateLimitPolicy", "RateLimiter",
        "RateLimiterSettings", "ServerRateLimiterSettings", "StateTuple", "decide",
        "decide_tuples", "degraded_decision", "parse_policies",
        "sliding_window_counter_state", "validate_rate_limit_key",
    ],
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(BEFORE_THE_SPLIT))
def test_every_name_stays_importable_from_the_package_that_defines_it_in_a_submodule(
    package: str,
) -> None:
    module = importlib.import_module(package)
    assert hasattr(module, "__path__"), f"{package} is a package of modules by concept"
    for name in BEFORE_THE_SPLIT[package]:
        value = getattr(module, name)
        assert name in module.__all__
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith(f"{package}."), (name, value.__module__)


def test_the_memory_limiter_runs_the_core_algorithms() -> None:
    """The sliding log's maths lives beside the counter's, not in the memory backend."""
    assert memory.SlidingLog is algorithms.SlidingLog
    assert memory.WindowCounter is algorithms.WindowCounter
    assert memory.sliding_window_counter_state is algorithms.sliding_window_counter_state
    assert not hasattr(memory, "_Log") and not hasattr(memory, "_Counter")


@pytest.mark.parametrize("script", ["sliding_log.lua", "sliding_window_counter.lua"])
def test_the_lua_scripts_cite_the_core_algorithms_as_their_reference(script: str) -> None:
    path = ROOT / "plugins/voice-infra-redis/voice_infra_redis" / script
    header = path.read_text().split("\nlocal ", 1)[0]
    assert "Reference: voice_infra/ratelimit/algorithms.py" in header
    assert (ROOT / "voice_infra/ratelimit/algorithms.py").is_file()


def test_settings_turn_capabilities_off_without_overriding_the_backend() -> None:
    """One mechanism: the settings model says what its options turn off."""
    from voice_infra_limits.backend import LimitsRateLimiter
    from voice_infra_redis.backend import RedisRateLimiter

    class NoPresignSettings(memory.MemoryStorageSettings):
        def capabilities_turned_off(self) -> frozenset[str]:
            return frozenset({"presign"})

    class Store(memory.MemoryStorage):
        capabilities = frozenset({"presign", "persistent"})

    assert Store(memory.MemoryStorageSettings()).capabilities == {"presign", "persistent"}
    assert Store(NoPresignSettings()).capabilities == {"persistent"}
    assert isinstance(vi.RateLimiterSettings(), BackendSettings)
    for backend in (memory.MemoryRateLimiter, RedisRateLimiter, LimitsRateLimiter):
        assert "adjust_capabilities" not in vars(backend), backend


@given(
    st.dictionaries(
        st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=400),
        max_size=12,
    )
)
def test_metadata_fits_exactly_when_its_size_is_within_the_one_limit(
    metadata: dict[str, str],
) -> None:
    if metadata_size(metadata) <= MAX_METADATA_BYTES:
        assert validate_metadata(metadata, None) == metadata
    else:
        with pytest.raises(vi.InvalidMetadataError, match=f"at most {MAX_METADATA_BYTES}"):
            validate_metadata(metadata, None)
