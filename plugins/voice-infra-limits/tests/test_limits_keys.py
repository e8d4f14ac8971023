"""The limits adapter's keys: distinct identities never share a storage key.

``limits`` builds ``<key_prefix>:<mw|fw|swc>/<identity>/<limit>/<window>/second``; the
prefix holds no '/' and everything after the identity is fixed digits and words, so the
key parses back from both ends. The stores then derive keys from it (Redis: ``LIMITS:``
and, for the counter, ``{key}`` and ``{key}/-1``; memory: ``key/<window number>``;
memcached: ``key/expires``). This checks, for all identities, that none of those derived
keys is shared (the collision the Redis backend's '#<sha1>' tag had)."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from voice_infra_limits.backend import LimitsRateLimiter

import voice_infra as vi

POLICIES = ["3/second", "10/minute", "10/60second", "100/hour"]


def _items(strategy: str) -> list[str]:
    limiter = vi.create_rate_limiter(
        vi.Settings(rate_limit={"backend": "limits", "strategy": strategy, "policies": POLICIES})
    )
    assert isinstance(limiter, LimitsRateLimiter)
    return [item.key_for("\0") for item in limiter.items]


TEMPLATES = {s: _items(s) for s in ("moving-window", "fixed-window", "sliding-window-counter")}


def _stored_keys(identity: str) -> set[str]:
    """Every key any store derives for ``identity``, every strategy and policy."""
    keys: set[str] = set()
    for strategy, templates in TEMPLATES.items():
        for template in templates:
            key = template.replace("\0", identity)
            if strategy == "sliding-window-counter":
                keys |= {f"LIMITS:{{{key}}}", f"LIMITS:{{{key}}}/-1"}
                keys |= {f"{key}/{n}" for n in (0, 7, 28976271)}
            else:
                keys |= {f"LIMITS:{key}", key, f"{key}/expires"}
    return keys


_PIECES = [*"{}#%:/-0123456789 ", "/second", "/10/60", "/expires", "/-1", "LIMITS:", "vi:mw/"]
identities = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.characters(exclude_categories=["Cs"])),
    min_size=1,
    max_size=12,
).map("".join)


@st.composite
def identity_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """Two identities, the second often the first extended by a key's tail."""
    first = draw(identities)
    tails = ["/10/60/second", "/3/1/second/7", "/expires", "}/-1", "/10/60/second/0"]
    second = draw(st.one_of(identities, st.sampled_from(tails).map(lambda t: first + t)))
    assume(first != second)
    return first, second


@settings(max_examples=300)
@given(identity_pairs())
def test_distinct_identities_never_share_a_storage_key(pair: tuple[str, str]) -> None:
    first, second = pair
    assert not _stored_keys(first) & _stored_keys(second)
