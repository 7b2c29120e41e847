"""Chat rules: clean text, keyword filter, per-user rate limits. Pure, no I/O."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field

from server.domain.errors import InvalidInput
from server.domain.text import (
    FORMAT_KEPT,
    HANGUL_FILLERS,
    reserved_invisible,
    shows_something,
    tags_in_flags_only,
)

MAX_CHAT_CHARS = 500
MAX_BLOCKED_WORDS = 200
MAX_BLOCKED_WORD_CHARS = 50

# Control and format characters (Cc, Cf) except ordinary spaces; bidi overrides are Cf and are
# the classic way to make a message render as something it is not. The format characters that
# writing needs (the joiners of emoji sequences, Persian and Indic words; direction marks; the
# tags of subdivision flags) are kept, as in titles and names.
# Code points reserved as invisible are dropped too (text.reserved_invisible).
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs"})
_SPACES = re.compile(r"\s+")
# Invisible, so left out when looking for blocked words: "sc\u200dam" is "scam". The format
# characters kept, and the other default-ignorable code points a line may hold, drawn as
# nothing inside a word: variation selectors (which an emoji needs, but no letter), Mongolian
# free variation selectors, Khmer's inherent vowels and the combining grapheme joiner. The
# Hangul fillers are drawn as blank space: words on either side stay apart. The line itself
# keeps them all; only the search reads it so.
_IGNORABLE = [0x034F, 0x17B4, 0x17B5, 0x180F]
_IGNORABLE_RANGES = [(0x180B, 0x180D), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF)]
_INVISIBLE: dict[int, str | None] = {
    **dict.fromkeys(map(ord, FORMAT_KEPT)),
    **dict.fromkeys(_IGNORABLE),
    **dict.fromkeys(code for first, last in _IGNORABLE_RANGES for code in range(first, last + 1)),
    **dict.fromkeys(map(ord, HANGUL_FILLERS), " "),
}


def clean_text(raw: str, max_chars: int = MAX_CHAT_CHARS) -> str:
    """Trim, drop control characters, collapse whitespace; refuse text that shows nothing, or
    overlong text."""
    # Most lines hold nothing to drop (no control, format or separator character but spaces):
    # one look instead of one per character.
    kept = raw
    if not raw.isprintable():
        kept = "".join(
            " " if ch in "\t\n\r" else ch
            for ch in raw
            if ch in "\t\n\r"
            or ch in FORMAT_KEPT
            or (unicodedata.category(ch) not in _CONTROL_CATEGORIES and not reserved_invisible(ch))
        )
        kept = tags_in_flags_only(kept)
    text = _SPACES.sub(" ", kept).strip()
    if not text or not (text.isascii() or shows_something(text)):
        raise InvalidInput("message is empty", code="empty_message")
    if len(text) > max_chars:
        raise InvalidInput(
            f"message is longer than {max_chars} characters", code="message_too_long"
        )
    return text


def _normalise(text: str) -> str:
    """Compatibility-, case- and accent-folded: NFKD, marks dropped where they are no part of
    the spelling (`_drop_marks`), then NFKC and casefold."""
    if text.isascii():
        return text.casefold()  # NFKD and NFKC leave ASCII as it is, and it has no marks
    decomposed = unicodedata.normalize("NFKD", text.translate(_INVISIBLE))
    return unicodedata.normalize("NFKC", _drop_marks(decomposed)).casefold()


# Scripts whose spelling puts no combining mark on a letter (by the start of their letters'
# Unicode names): a mark on one is an accent (Latin, Greek, Cyrillic, Armenian, Georgian), to
# fold so that "cafe" is "café", or an overlay such as strikethrough (also on Han and Hangul),
# put there to get a word past the filter. Elsewhere (Devanagari vowel signs, Thai tone marks,
# Hebrew points, Arabic harakat, kana voicing marks) a mark is part of the spelling: kept.
_MARKLESS_SCRIPTS = ("LATIN ", "GREEK ", "CYRILLIC ", "ARMENIAN ", "GEORGIAN ", "CJK ", "HANGUL ")
# The blocks of combining marks that belong to no script (diacritics, overlays such as
# strikethrough, enclosing marks): dropped after any letter, a kana or Thai one included.
_MARKS_OF_NO_SCRIPT = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF))
_MARK, _DROPS_MARKS, _KEEPS_MARKS, _STRAY_MARK = 0, 1, 2, 3
_KINDS_KEPT = 4096  # characters whose kind is remembered, at most
_kinds: dict[str, int] = {}


def _drop_marks(decomposed: str) -> str:
    """Without the combining marks of no script, and those that follow a letter of
    `_MARKLESS_SCRIPTS` or no letter at all (a space, a digit, punctuation, the start: zalgo
    there must not join two words)."""
    if all(_kind_of(ch) not in (_MARK, _STRAY_MARK) for ch in set(decomposed)):
        return decomposed  # most text: one look at each distinct character
    kept: list[str] = []
    keeping = False  # at the start, marks follow no letter
    for ch in decomposed:
        kind = _kinds.get(ch)  # inline, not _kind_of: a call less a character
        if kind is None:
            kind = _kind(ch)
        if kind == _STRAY_MARK or (kind == _MARK and not keeping):
            continue
        if kind != _MARK:
            keeping = kind == _KEEPS_MARKS
        kept.append(ch)
    return "".join(kept)


def _kind_of(ch: str) -> int:
    kind = _kinds.get(ch)
    return _kind(ch) if kind is None else kind


def _kind(ch: str) -> int:
    if unicodedata.category(ch).startswith("M"):
        code = ord(ch)
        of_no_script = any(low <= code <= high for low, high in _MARKS_OF_NO_SCRIPT)
        kind = _STRAY_MARK if of_no_script else _MARK
    elif ch.isalpha() and not unicodedata.name(ch, "").startswith(_MARKLESS_SCRIPTS):
        kind = _KEEPS_MARKS
    else:
        kind = _DROPS_MARKS
    if len(_kinds) >= _KINDS_KEPT:
        _kinds.clear()
    _kinds[ch] = kind
    return kind


# Scripts written without spaces between words (by the start of their characters' Unicode
# names): there a word cannot be told apart without a dictionary, so a blocked word is found
# anywhere. Korean spaces its words but writes particles onto them, so it is here too.
_UNSPACED_SCRIPTS = (
    "CJK ", "HIRAGANA ", "KATAKANA ", "HANGUL ", "THAI ", "LAO ", "KHMER ", "MYANMAR ", "TIBETAN "
)  # fmt: skip


def find_blocked_word(text: str, blocked_words: list[str]) -> str | None:
    """The first blocked word the text holds as a word of its own, compared case- and
    width-insensitively: "ass" is not found in "glass" (nor "scam" in "scampi"). Accents are
    ignored in Latin, Greek and Cyrillic, and overlays such as strikethrough marks wherever
    they are no part of the spelling, on both sides: "café" blocks "cafe" and "CAFÉ", "scam"
    blocks "scåm" and "s̶c̶a̶m̶" (accent-insensitive, as a moderator wants against evasion,
    at the price of some false positives where an accent tells words apart).

    A `*` at either end of a blocked word of three or more other characters lets it go on
    into a longer word on that side (`*fake*` is found in "superfakes", `fake*` in "fakes").
    In scripts written without spaces (Chinese, Japanese, Thai, ...) a word is found anywhere,
    so there the stars of a word starting in such a script are wildcards whatever its length
    ("骗*" is found in "骗局")."""
    folded = _normalise(text)
    for word in blocked_words:
        pattern = blocked_word_key(word)
        if pattern is not None and _holds(folded, *pattern):
            return word
    return None


# Fewer letters than this besides its stars, a word's stars are its own (a censored spelling
# such as "f***" blocks itself, as it did before stars were wildcards, not every word in f).
MIN_WILDCARD_STEM = 3


@functools.lru_cache(maxsize=4096)
def blocked_word_key(word: str) -> tuple[str, bool, bool] | None:
    """What a blocked word looks for: its normalised text, and whether it may go on into a
    longer word before and after; None when it looks for nothing (refused: it would block
    nothing). Two words of one key block the same lines (rooms keep one)."""
    stem = _normalise(word.strip("*"))
    wildcard = len(stem) >= MIN_WILDCARD_STEM or (
        stem != "" and unicodedata.name(stem[0], "").startswith(_UNSPACED_SCRIPTS)
    )
    needle = stem if wildcard else _normalise(word)
    if not needle.strip("*"):
        return None
    return needle, wildcard and word.startswith("*"), wildcard and word.endswith("*")


def _holds(folded: str, needle: str, open_before: bool, open_after: bool) -> bool:
    at = folded.find(needle)
    while at >= 0:
        end = at + len(needle)
        starts_a_word = open_before or at == 0 or not _goes_on(needle[0], folded[at - 1])
        ends_a_word = open_after or end == len(folded) or not _goes_on(needle[-1], folded[end])
        if starts_a_word and ends_a_word:
            return True
        at = folded.find(needle, at + 1)
    return False


def _goes_on(edge: str, beside: str) -> bool:
    """Whether the text's character `beside` the needle's `edge` makes them one word: letters of
    a script that spaces its words, or a star of the needle's own, such as `f***`'s, beside a
    letter or another star (`f***` is not found in "f***ing" or "f****"). A star the text puts
    beside a letter of the needle hides nothing: "fake*" holds "fake"."""
    if edge == "*":
        return beside == "*" or _in_spaced_word(beside)
    return _in_spaced_word(edge) and _in_spaced_word(beside)


def _in_spaced_word(ch: str) -> bool:
    # Marks too (those `_normalise` keeps): Indic scripts write most vowels as combining marks
    # inside their words.
    in_a_word = ch.isalnum() or unicodedata.category(ch).startswith("M")
    return in_a_word and not unicodedata.name(ch, "").startswith(_UNSPACED_SCRIPTS)


@dataclass(slots=True)
class TokenBucket:
    """`capacity` at once (messages, likes), refilled at `rate` per second. Times are monotonic
    seconds."""

    capacity: float
    rate: float
    tokens: float = field(default=-1.0)
    updated: float = 0.0

    def take(self, now: float, count: int = 1) -> bool:
        if self.tokens < 0:
            self.tokens, self.updated = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= count:
            self.tokens -= count
            return True
        return False


def clean_blocked_words(words: list[str]) -> list[str]:
    """Trimmed, without blanks or repeats, in the order given; refuses lists over the limits.

    Repeats are words that block the same lines, as the chat filter matches (whatever their
    case, width, accents or joiners): the first one given is kept.
    """
    unique: dict[object, str] = {}
    for word in map(str.strip, words):
        if word:
            unique.setdefault(blocked_word_key(word) or word.casefold(), word)
    cleaned = list(unique.values())
    if len(cleaned) > MAX_BLOCKED_WORDS:
        raise InvalidInput(
            f"at most {MAX_BLOCKED_WORDS} blocked words", code="too_many_blocked_words"
        )
    if any(len(w) > MAX_BLOCKED_WORD_CHARS for w in cleaned):
        raise InvalidInput(
            f"a blocked word has at most {MAX_BLOCKED_WORD_CHARS} characters",
            code="blocked_word_too_long",
        )
    return cleaned
