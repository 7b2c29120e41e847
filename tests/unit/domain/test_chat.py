"""The keyword filter: which chat lines a room's blocked words refuse."""

from __future__ import annotations

import pytest

from server.domain.chat import find_blocked_word


@pytest.mark.parametrize(
    ("text", "blocked", "found"),
    [
        ("what a scam", "scam", True),
        ("SCAM!", "scam", True),
        ("\uff33\uff23\uff21\uff2d here", "scam", True),  # full-width letters
        ("scam-free, promise", "scam", True),  # a hyphen ends a word
        ("I love this glass bottle", "ass", False),  # the Scunthorpe problem
        ("scampi tonight", "scam", False),
        ("two fakes", "fake", False),
        ("two fakes", "fake*", True),  # a star lets the word go on
        ("superfakes", "*fake*", True),
        ("superfake", "fake*", False),
        ("fake news", "fake news", True),  # a phrase
        ("not fake newsworthy", "fake news", False),
        ("café scam", "café", True),
        ("cafés", "café", False),
        ("假货太多了", "假货", True),  # Chinese has no spaces: found anywhere
        ("これは偽物です", "偽物", True),
        ("ของปลอมเยอะ", "ปลอม", True),  # Thai
        ("이거 사기야", "사기", True),  # Korean: a particle written onto the word
        ("5 scam5", "scam", False),  # digits are part of a word
        ("anything", "*", False),  # nothing but stars blocks nothing
        ("free shipping today", "f***", False),  # a censored spelling is not a wildcard...
        ("what the f***", "f***", True),  # ...it blocks itself
        ("सालाना ऑफर", "साला", False),  # Devanagari vowel signs are marks inside a word
        ("कमाल है", "कम", False),
        ("तुम साला हो", "साला", True),
    ],
)
def test_blocked_words_are_found_as_words(text: str, blocked: str, found: bool) -> None:
    assert (find_blocked_word(text, [blocked]) == blocked) is found


def test_the_first_blocked_word_found_is_named() -> None:
    assert find_blocked_word("a scam and spam", ["spam", "scam"]) == "spam"
    assert find_blocked_word("all fine", ["spam", "scam"]) is None
