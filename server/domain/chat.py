"""Chat rules: clean text, keyword filter, per-user rate limits. Pure, no I/O."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from server.domain.errors import InvalidInput, RateLimited

MAX_CHAT_CHARS = 500

# Control and format characters (Cc, Cf) except ordinary spaces; bidi overrides are Cf and are
# the classic way to make a message render as something it is not.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs"})
_SPACES = re.compile(r"\s+")


def clean_text(raw: str, max_chars: int = MAX_CHAT_CHARS) -> str:
    """Trim, drop control characters, collapse whitespace; refuse empty or overlong text."""
    kept = "".join(
        " " if ch in "\t\n\r" else ch
        for ch in raw
        if ch in "\t\n\r" or unicodedata.category(ch) not in _CONTROL_CATEGORIES
    )
    text = _SPACES.sub(" ", kept).strip()
    if not text:
        raise InvalidInput("message is empty", code="empty_message")
    if len(text) > max_chars:
        raise InvalidInput(
            f"message is longer than {max_chars} characters", code="message_too_long"
        )
    return text


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


# Scripts written without spaces between words (by the start of their characters' Unicode
# names): there a word cannot be told apart without a dictionary, so a blocked word is found
# anywhere. Korean spaces its words but writes particles onto them, so it is here too.
_UNSPACED_SCRIPTS = (
    "CJK ", "HIRAGANA ", "KATAKANA ", "HANGUL ", "THAI ", "LAO ", "KHMER ", "MYANMAR ", "TIBETAN "
)  # fmt: skip


def find_blocked_word(text: str, blocked_words: list[str]) -> str | None:
    """The first blocked word the text holds as a word of its own, compared case- and
    width-insensitively: "ass" is not found in "glass" (nor "scam" in "scampi"). A `*` at
    either end of a blocked word of three or more other characters lets it go on into a
    longer word on that side (`*fake*` is found in "superfakes", `fake*` in "fakes"); in
    scripts written without spaces (Chinese, Japanese, Thai, ...) a word is found anywhere."""
    folded = _normalise(text)
    for word in blocked_words:
        if _holds(folded, word):
            return word
    return None


# Fewer letters than this besides its stars, a word's stars are its own (a censored spelling
# such as "f***" blocks itself, as it did before stars were wildcards, not every word in f).
MIN_WILDCARD_STEM = 3


def _holds(folded: str, word: str) -> bool:
    stem = word.strip("*")
    wildcard = len(stem) >= MIN_WILDCARD_STEM
    needle = _normalise(stem if wildcard else word)
    if not needle.strip("*"):
        return False
    open_before, open_after = wildcard and word[0] == "*", wildcard and word[-1] == "*"
    at = folded.find(needle)
    while at >= 0:
        end = at + len(needle)
        starts_a_word = open_before or at == 0 or not _joined(folded[at - 1], needle[0])
        ends_a_word = open_after or end == len(folded) or not _joined(needle[-1], folded[end])
        if starts_a_word and ends_a_word:
            return True
        at = folded.find(needle, at + 1)
    return False


def _joined(left: str, right: str) -> bool:
    """Whether two neighbouring characters belong to one word of a script that spaces its
    words."""
    return _in_spaced_word(left) and _in_spaced_word(right)


def _in_spaced_word(ch: str) -> bool:
    # Marks too: Indic scripts write most vowels as combining marks inside their words.
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


def check_slow_mode(last_sent: float | None, slow_mode_seconds: int, now: float) -> None:
    """Raise when a user speaks again before slow mode allows it."""
    if slow_mode_seconds <= 0 or last_sent is None:
        return
    wait = last_sent + slow_mode_seconds - now
    if wait > 0:
        raise RateLimited(f"slow mode: wait {wait:.0f} s before sending again", code="slow_mode")
