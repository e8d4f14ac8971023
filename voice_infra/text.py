"""Which characters identifiers (object keys, rate-limit keys) may hold: one rule for both."""

from __future__ import annotations

import unicodedata

__all__ = ["first_unsafe_character"]

# Control (Cc: C0, DEL, C1), line/paragraph separators (Zl, Zp), lone surrogates (Cs) and
# format characters (Cf: bidi overrides, invisible marks) can split log lines, reorder
# what an operator reads ("Trojan Source") or make two keys look the same.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Zero-width (non-)joiners are format characters that real text needs: emoji sequences
# and several scripts (Persian, Indic) are written with them.
_ALLOWED_FORMAT = frozenset({"\u200c", "\u200d"})


def first_unsafe_character(text: str) -> str | None:
    """The first character of ``text`` an identifier must not hold, described as
    ``'U+202E (RIGHT-TO-LEFT OVERRIDE)'``; ``None`` when there is none."""
    for char in text:
        if char in _ALLOWED_FORMAT or unicodedata.category(char) not in _UNSAFE_CATEGORIES:
            continue
        name = unicodedata.name(char, "control character")
        return f"U+{ord(char):04X} ({name})"
    return None
