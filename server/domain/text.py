"""Text that other people read (titles, descriptions): characters that hide or disguise what
it says are refused on the way in."""

from __future__ import annotations

import re
import unicodedata

# Format characters (Cf) are invisible. Bidi embeddings, overrides and isolates make text render
# as something it is not ("\u202egpj.exe" shows as "exe.jpg"); zero-width spaces, word joiners
# and invisible operators hide inside words to slip past filters. These stay, since real text
# needs them: the soft hyphen, the zero-width joiners (emoji sequences, Indic and Arabic
# scripts), the direction marks (mixed right-to-left text) and the tag characters of
# subdivision flags.
FORMAT_KEPT = frozenset("\u00ad\u200c\u200d\u200e\u200f\u061c") | frozenset(
    chr(code) for code in range(0xE0020, 0xE0080)
)
_LINE_BREAKS = frozenset("\t\n\r")
# Controls, format characters, lone surrogates; and line or paragraph separators where one
# line is expected.
_REFUSED_ALWAYS = frozenset({"Cc", "Cf", "Cs"})
_REFUSED_IN_ONE_LINE = _REFUSED_ALWAYS | {"Zl", "Zp"}


# Tag characters spell a subdivision flag after the black flag (England, Scotland, Wales: a
# few tag letters or digits, then the cancel tag). Anywhere else they carry text nobody sees
# and machines read (bots, summaries).
_FIRST_TAG = "\U000e0020"
_FLAG_SEQUENCE = re.compile("\U0001f3f4[\U000e0030-\U000e0039\U000e0061-\U000e007a]{1,7}\U000e007f")
_TAG = re.compile("[\U000e0020-\U000e007f]")


def hidden_character(text: str, *, multiline: bool = False) -> str | None:
    """The first control, invisible format character (but those kept) or lone surrogate in
    `text`, if any. Tabs and line breaks are allowed where `multiline`. What is read back
    from the stores is held to this; what comes in, to `refused_coming_in` too."""
    if text.isprintable():
        return None  # False for every C* and Z* character but the space: the usual text
    refused = _REFUSED_ALWAYS if multiline else _REFUSED_IN_ONE_LINE
    for ch in text:
        if multiline and ch in _LINE_BREAKS:
            continue
        if _hidden(ch, refused):
            return ch
    return None


# Code points Unicode reserves as default-ignorable (DerivedCoreProperties.txt, stable by
# policy) and has yet to assign: renderers draw them as nothing, so they hide inside words
# ("sc\ufff0am" shows as "scam"). Any other unassigned code point may be a character newer
# than this Python's Unicode (the year's new emoji): it passes.
_RESERVED_INVISIBLE = re.compile(
    "[\u2065\ufff0-\ufff8\U000e0000\U000e0002-\U000e001f\U000e0080-\U000e00ff\U000e01f0-\U000e0fff]"
)


def reserved_invisible(ch: str) -> bool:
    """Whether `ch` is a default-ignorable code point Unicode has yet to assign."""
    return _RESERVED_INVISIBLE.match(ch) is not None


def refused_coming_in(text: str) -> str | None:
    """The first character of `text` refused in what comes in, though text stored before the
    rule is still read back: a tag character that spells no subdivision flag, or a reserved
    invisible code point (`reserved_invisible`)."""
    if text.isprintable():
        return None
    if (reserved := _RESERVED_INVISIBLE.search(text)) is not None:
        return reserved.group()
    if max(text) < _FIRST_TAG:
        return None
    stray = _TAG.search(_FLAG_SEQUENCE.sub("", text))
    return None if stray is None else stray.group()


def tags_in_flags_only(text: str) -> str:
    """`text` without the tag characters that spell no flag."""
    kept, start = [], 0
    for flag in _FLAG_SEQUENCE.finditer(text):
        kept += [_TAG.sub("", text[start : flag.start()]), flag.group()]
        start = flag.end()
    kept.append(_TAG.sub("", text[start:]))
    return "".join(kept)


def _hidden(ch: str, refused: frozenset[str]) -> bool:
    return ch not in FORMAT_KEPT and unicodedata.category(ch) in refused


# An error's message may name what a client sent (an id in a path): no more of it than this.
MAX_SHOWN_CHARS = 300


def shown(text: str) -> str:
    """`text` fit to show back to whoever sent part of it, on one line: each control or hidden
    character written as its code point (U+202E), and cut at MAX_SHOWN_CHARS."""
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS] + "\u2026"
    if text.isprintable():
        return text
    return "".join(
        describe(ch) if _hidden(ch, _REFUSED_IN_ONE_LINE) or reserved_invisible(ch) else ch
        for ch in text
    )


# Letters that render as blank space (the Hangul fillers, the braille blank): a title of them
# alone looks empty.
HANGUL_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")
_BLANK_LETTERS = HANGUL_FILLERS | {"\u2800"}


def shows_something(text: str) -> bool:
    """Whether `text` has a character that renders as a mark: a letter, digit, punctuation or
    symbol, not a blank one. Joiners, marks and spaces alone show nothing. A code point this
    Python's Unicode has not assigned shows where Unicode puts its new emoji (an emoji newer
    than this Python); anywhere else it may be a mark, a format character or nothing yet."""
    return any(_shows(ch) for ch in text)


# The blocks of pictographs and emoji (U+1F000 Mahjong Tiles to U+1FBFF Symbols for Legacy
# Computing), where each year's new emoji are put.
_EMOJI_BLOCKS = range(0x1F000, 0x1FC00)


def _shows(ch: str) -> bool:
    category = unicodedata.category(ch)
    if category == "Cn":
        return ord(ch) in _EMOJI_BLOCKS
    return category[0] in "LNPS" and ch not in _BLANK_LETTERS


def describe(ch: str) -> str:
    """How an error names a character that cannot be shown as itself: U+202E."""
    return f"U+{ord(ch):04X}"
