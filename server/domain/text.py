"""Text that other people read (titles, descriptions): characters that hide or disguise what
it says are refused on the way in."""

from __future__ import annotations

import unicodedata

# Bidi embeddings, overrides and isolates make text render as something it is not
# ("\u202egpj.exe" shows as "exe.jpg"); zero-width spaces and the byte order mark hide inside
# words to slip past filters. Joiners (ZWJ, ZWNJ), direction marks and emoji tag characters
# stay: emoji sequences and text in many scripts need them.
_DISGUISING = frozenset("\u200b\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff")
_LINE_BREAKS = frozenset("\t\n\r")
# Controls, lone surrogates, and line or paragraph separators where one line is expected.
_REFUSED_ALWAYS = frozenset({"Cc", "Cs"})
_REFUSED_IN_ONE_LINE = frozenset({"Cc", "Cs", "Zl", "Zp"})


def hidden_character(text: str, *, multiline: bool = False) -> str | None:
    """The first control, lone surrogate or disguising character in `text`, if any. Tabs and
    line breaks are allowed where `multiline`."""
    if text.isprintable():
        return None  # False for every C* and Z* character but the space: the usual text
    refused = _REFUSED_ALWAYS if multiline else _REFUSED_IN_ONE_LINE
    for ch in text:
        if multiline and ch in _LINE_BREAKS:
            continue
        if ch in _DISGUISING or unicodedata.category(ch) in refused:
            return ch
    return None


def describe(ch: str) -> str:
    """How an error names a character that cannot be shown as itself: U+202E."""
    return f"U+{ord(ch):04X}"
