"""The voice-message demo: the main job of ``voice-infra demo``.

Simulated users each send short WAV recordings (made with the standard library);
every send is rate-checked, uploaded, presigned (on backends with the ``presign``
capability), downloaded back and checksum-verified; each user's messages are listed and
deleted, and whatever a failed or interrupted run uploaded is deleted on the way out.
Runs on whatever backends the configuration selects (``fs`` + ``memory`` with none).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import statistics
import struct
import time
import uuid
import wave
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from voice_infra.config import Settings
from voice_infra.errors import ConfigError, VoiceServiceError
from voice_infra.factory import create_rate_limiter, create_storage
from voice_infra.plugins import PluginRegistry
from voice_infra.ratelimit import RateLimiter
from voice_infra.storage import StorageBackend, user_key_segment

__all__ = ["DemoReport", "make_wav", "run_demo"]

T = TypeVar("T")
# Recordings cycle through this many lengths (0.25 s to 0.6 s), so a run's time and
# memory grow linearly with the number of messages, not with its square.
RECORDING_VARIANTS = 8
# Long runs report their progress at least this often (seconds).
PROGRESS_INTERVAL = 1.0


@functools.lru_cache(maxsize=256)
def make_wav(seconds: float = 0.5, frequency: float = 440.0, rate: int = 8000) -> bytes:
    """A mono 16-bit PCM WAV tone, built with the standard library only."""
    frames = int(seconds * rate)
    samples = (int(12_000 * math.sin(2 * math.pi * frequency * i / rate)) for i in range(frames))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(struct.pack(f"<{frames}h", *samples))
    return buffer.getvalue()


@dataclass
class UserTally:
    sent: int = 0
    denied: int = 0
    bytes: int = 0
    verified: int = 0
    listed: int = 0
    deleted: int = 0


def _tallies() -> defaultdict[str, UserTally]:
    return defaultdict(UserTally)


def _latencies() -> defaultdict[str, list[float]]:
    return defaultdict(list)


@dataclass
class DemoReport:
    """What the demo did; ``ok`` is False when any download failed verification."""

    storage_backend: str
    rate_limiter_backend: str
    users: defaultdict[str, UserTally] = field(default_factory=_tallies)
    latencies: defaultdict[str, list[float]] = field(default_factory=_latencies)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every recording came back intact and nothing was left behind."""
        return not self.failures

    def render(self) -> str:
        """The summary tables, as printed by ``voice-infra demo``."""
        lines = [
            f"storage: {self.storage_backend}   rate limiter: {self.rate_limiter_backend}",
            "",
            f"{'user':<10}{'sent':>6}{'denied':>8}{'bytes':>10}{'verified':>10}{'cleaned':>9}",
        ]
        for user, tally in sorted(self.users.items()):
            lines.append(
                f"{user:<10}{tally.sent:>6}{tally.denied:>8}{tally.bytes:>10}"
                f"{tally.verified:>10}{tally.deleted:>9}"
            )
        total = UserTally()
        for tally in self.users.values():
            for name in ("sent", "denied", "bytes", "verified", "deleted"):
                setattr(total, name, getattr(total, name) + getattr(tally, name))
        lines.append(
            f"{'total':<10}{total.sent:>6}{total.denied:>8}{total.bytes:>10}"
            f"{total.verified:>10}{total.deleted:>9}"
        )
        lines += ["", f"{'operation':<14}{'count':>7}{'median ms':>11}{'p95 ms':>9}"]
        for operation, values in self.latencies.items():
            ordered = sorted(values)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            lines.append(
                f"{operation:<14}{len(values):>7}{statistics.median(values) * 1000:>11.2f}"
                f"{p95 * 1000:>9.2f}"
            )
        lines.append("")
        lines.append("result: OK" if self.ok else "result: FAILED\n  " + "\n  ".join(self.failures))
        return "\n".join(lines)


def recording_for(user_index: int, message: int) -> bytes:
    """The WAV that user ``user_index`` sends as message ``message``: one of
    ``RECORDING_VARIANTS`` tones per user, 0.25 s to 0.6 s long."""
    variant = message % RECORDING_VARIANTS
    return make_wav(0.25 + 0.05 * variant, 300.0 + 40 * user_index + 10 * variant)


async def run_demo(
    settings: Settings | None = None,
    *,
    users: int = 3,
    messages: int = 12,
    registry: PluginRegistry | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> DemoReport:
    """Run the voice-message flow; every user sends ``messages`` recordings in a burst.

    ``on_progress`` receives a line at least every ``PROGRESS_INTERVAL`` seconds of a
    long run, and one saying what was cleaned up when a run ends early (an error or
    Ctrl-C)."""
    for name, value in (("users", users), ("messages", messages)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"demo {name} must be a whole number of at least 1, got {value!r}")
    settings = settings if settings is not None else Settings()
    storage = create_storage(settings, registry=registry)
    limiter = create_rate_limiter(settings, registry=registry)
    report = DemoReport(settings.storage.backend, settings.rate_limit.backend)
    run_id = uuid.uuid4().hex[:8]

    async def timed(operation: str, step: Awaitable[T]) -> T:
        started = time.perf_counter()
        result = await step
        report.latencies[operation].append(time.perf_counter() - started)
        return result

    say = on_progress if on_progress is not None else (lambda line: None)
    progress = _ProgressLine(say, users * messages)
    uploaded: set[str] = set()  # keys stored and not yet deleted: cleaned up whatever happens
    async with storage, limiter:
        try:
            await _send_all(
                storage, limiter, report, timed, uploaded, run_id, users, messages, progress
            )
        except BaseException:  # an error, or Ctrl-C (cancellation): say what was undone
            left = len(uploaded)
            deleted = await _clean_up(storage, uploaded, report)
            say(f"demo stopped early: deleted {deleted} of the {left} recording(s) it had stored")
            raise
        await _clean_up(storage, uploaded, report)
    return report


class _ProgressLine:
    """Emits ``demo: N/M messages...`` when ``PROGRESS_INTERVAL`` has passed since the last."""

    def __init__(self, say: Callable[[str], None], total: int) -> None:
        self.say, self.total, self.done = say, total, 0
        self.last = time.monotonic()

    def step(self, report: DemoReport) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            sent = sum(t.sent for t in report.users.values())
            denied = sum(t.denied for t in report.users.values())
            self.say(f"demo: {self.done}/{self.total} messages ({sent} sent, {denied} denied)")


async def _send_all(
    storage: StorageBackend,
    limiter: RateLimiter,
    report: DemoReport,
    timed: Callable[[str, Awaitable[Any]], Awaitable[Any]],
    uploaded: set[str],
    run_id: str,
    users: int,
    messages: int,
    progress: _ProgressLine,
) -> None:
    """Every user's burst: rate check, upload, presign (when the backend can), download
    and verify; then list and delete that user's messages."""
    presign = "presign" in storage.capabilities
    for index in range(users):
        user = f"user{index + 1}"
        tally = report.users[user]
        user_id = f"demo-{run_id}-{user}"
        for message in range(messages):
            progress.step(report)
            recording = recording_for(index, message)
            decision = await timed("rate check", limiter.check_rate_limit(f"demo:{user_id}"))
            if not decision.allowed:
                tally.denied += 1
                continue
            info = await timed("upload", storage.upload_file(
                recording, user_id=user_id, content_type="audio/wav",
                metadata={"demo-message": str(message)},
            ))  # fmt: skip
            uploaded.add(info.object_key)
            tally.sent += 1
            tally.bytes += info.file_size
            if presign:
                await timed("presign", storage.generate_presigned_url(
                    info.object_key, expires_in=600
                ))  # fmt: skip
            data = await timed("download", storage.download_file(info.object_key))
            if (
                hashlib.sha256(data).hexdigest()
                == info.checksum
                == hashlib.sha256(recording).hexdigest()
            ):
                tally.verified += 1
            else:
                report.failures.append(f"{info.object_key}: checksum mismatch")
        prefix = f"{storage.settings.key_prefix}/{user_key_segment(user_id)}/".lstrip("/")
        listed = await timed("list", _collect(storage.list_files(prefix)))
        tally.listed = len(listed)
        if tally.listed != tally.sent:
            report.failures.append(f"{user}: listed {tally.listed}, sent {tally.sent}")
        for item in listed:
            if await timed("delete", storage.delete_file(item.object_key)):
                tally.deleted += 1
            uploaded.discard(item.object_key)
        await limiter.clear_user_limit(f"demo:{user_id}")


async def _clean_up(storage: StorageBackend, uploaded: set[str], report: DemoReport) -> int:
    """Delete what a failed or interrupted run left behind (nothing after a full run);
    returns how many were deleted."""
    deleted = 0
    for key in sorted(uploaded):
        try:
            await storage.delete_file(key)
            deleted += 1
        except VoiceServiceError as exc:
            report.failures.append(f"{key}: left behind, delete failed: {exc}")
    uploaded.clear()
    return deleted


async def _collect(iterator: AsyncIterator[T]) -> list[T]:
    return [item async for item in iterator]
