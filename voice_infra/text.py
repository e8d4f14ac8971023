"""Which characters identifiers (object keys, rate-limit keys) may hold: one rule for both."""

from __future__ import annotations

import unicodedata

__all__ = ["first_unsafe_character", "refuse_unsafe_characters"]

# Control (Cc: C0, DEL, C1), line/paragraph separators (Zl, Zp), lone surrogates (Cs) and
# format characters (Cf: bidi overrides and isolates, invisible marks such as the soft
# hyphen) can split log lines, reorder what an operator reads ("Trojan Source") or make
# two keys look the same.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Format characters that real text needs: zero-width (non-)joiners (emoji sequences,
# Persian, Indic scripts), the left-to-right / right-to-left marks of bidi text (marks,
# not overrides: they reorder nothing around them), and the tag characters of emoji
# subdivision flags (U+E0020..U+E007F).
_ALLOWED_FORMAT = frozenset({"\u200c", "\u200d", "\u200e", "\u200f"}) | frozenset(
    chr(code) for code in range(0xE0020, 0xE0080)
)


def first_unsafe_character(text: str, *, strict: bool = True) -> str | None:
    """The first character of ``text`` an identifier must not hold, described as
    ``'U+202E (RIGHT-TO-LEFT OVERRIDE)'``; ``None`` when there is none.

    ``strict=False`` refuses only C0 controls and DEL, the rule before 2026-11-29: what
    reads and deletes accept, so objects stored under such keys stay reachable.
    """
    if text.isprintable():
        # No character of a category refused here is printable (Python counts Cc, Cf,
        # Cs, Zl and Zp as unprintable): the common case, without a loop in Python.
        return None
    for char in text:
        if strict:
            if char in _ALLOWED_FORMAT or unicodedata.category(char) not in _UNSAFE_CATEGORIES:
                continue
        elif ord(char) >= 32 and ord(char) != 127:
            continue
        name = unicodedata.name(char, "control character")
        return f"U+{ord(char):04X} ({name})"
    return None


def refuse_unsafe_characters(
    text: str, what: str, error: type[Exception], *, strict: bool = True
) -> None:
    """Raise ``error`` naming ``what`` and the character when ``text`` holds one that
    :func:`first_unsafe_character` refuses."""
    if unsafe := first_unsafe_character(text, strict=strict):
        raise error(
            f"{what} {text!r} contains the control or format character {unsafe}; use printable text"
        )
