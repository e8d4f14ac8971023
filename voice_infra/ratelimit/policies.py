"""Rate-limit policies: ``limit`` requests per ``window`` seconds, parsed from text
(``"20/minute"``, ``"10 per 30 seconds"``), lists, JSON or dicts, within bounds every
backend can honour."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError

from voice_infra.errors import ConfigError

__all__ = [
    "MAX_POLICY_LIMIT",
    "MAX_POLICY_WINDOW",
    "Policies",
    "RateLimitPolicy",
    "parse_policies",
    "policy_text",
]

_UNITS: dict[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
}
_UNIT_ALIASES: dict[str, str] = {
    "s": "second", "sec": "second", "secs": "second", "second": "second", "seconds": "second",
    "m": "minute", "min": "minute", "mins": "minute", "minute": "minute", "minutes": "minute",
    "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour", "hours": "hour",
    "d": "day", "day": "day", "days": "day",
}  # fmt: skip
# Blanks are spaces and tabs: a line break inside a policy is a mistake (fullmatch, not
# '$', which would also take a trailing newline).
_POLICY_RE = re.compile(
    r"[ \t]*(?P<limit>[0-9]+)[ \t]*(?:/|per)[ \t]*(?P<multiple>[0-9]+)?[ \t]*"
    r"(?P<unit>[a-z]+)[ \t]*",
    re.IGNORECASE | re.ASCII,
)
_POLICY_HELP = (
    "write policies as '<limit>/<unit>' or '<limit> per <n> <unit>', for example "
    "'5/second', '100 per minute' or '10 per 30 seconds' (units: second, minute, hour, day)"
)
# Bounds every backend can honour: limits fit a 32-bit signed integer (Lua, Redis, the
# limits library) and windows stay within a year, so window end times never overflow.
MAX_POLICY_LIMIT = 2**31 - 1
MAX_POLICY_WINDOW = 366 * 24 * 3600


class RateLimitPolicy(BaseModel):
    """``limit`` requests per ``window`` seconds, parsed from text like ``"20/minute"``."""

    model_config = ConfigDict(frozen=True)

    limit: int = Field(gt=0, le=MAX_POLICY_LIMIT)
    window: int = Field(gt=0, le=MAX_POLICY_WINDOW, description="Window length in seconds.")

    @classmethod
    def parse(cls, text: str) -> RateLimitPolicy:
        """Parse ``"5/second"``, ``"5 per second"``, ``"10 per 30 seconds"``."""
        match = _POLICY_RE.fullmatch(text) if isinstance(text, str) else None
        unit = _UNIT_ALIASES.get(match["unit"].lower()) if match else None
        if match is None or unit is None:
            raise ConfigError(f"invalid rate-limit policy {text!r}: {_POLICY_HELP}")
        digits = (match["limit"].lstrip("0"), (match["multiple"] or "").lstrip("0"))
        if max(len(digits[0]), len(digits[1])) > 12:
            # Beyond every bound below; and int() refuses more than 4300 digits.
            raise _out_of_bounds(text)
        limit = int(match["limit"])
        multiple = int(match["multiple"] or 1)
        if limit <= 0 or multiple <= 0:
            raise ConfigError(
                f"invalid rate-limit policy {text!r}: limit and window must be positive"
            )
        window = multiple * _UNITS[unit]
        if limit > MAX_POLICY_LIMIT or window > MAX_POLICY_WINDOW:
            raise _out_of_bounds(text)
        return cls(limit=limit, window=window)

    @property
    def window_ms(self) -> int:
        """The window in milliseconds (what Redis scores and TTLs use)."""
        return self.window * 1000

    def __str__(self) -> str:
        return policy_text(self.limit, self.window)


@lru_cache(maxsize=1024)  # every decision names its policy: format each one once
def policy_text(limit: int, window: int) -> str:
    for unit, seconds in reversed(_UNITS.items()):
        if window % seconds == 0:
            count = window // seconds
            return f"{limit}/{unit}" if count == 1 else f"{limit}/{count} {unit}s"
    raise AssertionError("unreachable: 'second' divides every window")


def _out_of_bounds(text: str) -> ConfigError:
    shown = repr(text) if len(text) <= 60 else f"{text[:40]!r}..."
    return ConfigError(
        f"invalid rate-limit policy {shown}: the limit must be at most {MAX_POLICY_LIMIT} "
        "and the window at most 366 days"
    )


def parse_policies(value: Any) -> tuple[RateLimitPolicy, ...]:
    """Accept one policy string, several separated by ``;`` or ``,``, or a list of them."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)  # a JSON list, as environment variables carry them
        except json.JSONDecodeError:
            raise ConfigError(f"invalid rate-limit policy list {value!r}: {_POLICY_HELP}") from None
    if isinstance(value, str):
        value = [part for part in re.split(r"[;,]", value) if part.strip()]
    if isinstance(value, RateLimitPolicy | dict):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise ConfigError(f"at least one rate-limit policy is required: {_POLICY_HELP}")
    policies: list[RateLimitPolicy] = []
    for item in value:
        if isinstance(item, RateLimitPolicy):
            policies.append(item)
        elif isinstance(item, dict):
            try:
                policies.append(RateLimitPolicy.model_validate(item))
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
                )
                raise ConfigError(f"invalid rate-limit policy {item!r}: {problems}") from exc
        else:
            policies.append(RateLimitPolicy.parse(item))
    # Two identical policies would only double the work: keep the first.
    return tuple(dict.fromkeys(policies))


def _policies_before_validator(value: Any) -> Any:
    try:
        return parse_policies(value)
    except ConfigError as exc:
        # Inside a pydantic model: a ValueError becomes a readable ValidationError line.
        raise ValueError(str(exc)) from None


Policies = Annotated[
    tuple[RateLimitPolicy, ...],
    BeforeValidator(_policies_before_validator),
    PlainSerializer(lambda policies: [str(p) for p in policies], when_used="json"),
]
