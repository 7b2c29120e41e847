"""The keyword filter: which chat lines a room's blocked words refuse."""

from __future__ import annotations

import pytest

from server.domain.chat import clean_text, find_blocked_word
from server.domain.errors import InvalidInput


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
        # Overlays of no script (strikethrough) are dropped in every script
        ("\u3070\u0336\u304b", "\u3070\u304b", True),  # on kana (ばか)
        ("ของปล\u0336อม", "ปลอม", True),  # on Thai
        ("मूर\u0336्ख", "मूर्ख", True),  # on Devanagari
        ("तुम सा\u0336ला हो", "साला", True),
        ("free shipping today", "f***", False),  # a censored spelling is not a wildcard...
        ("what the f***", "f***", True),  # ...it blocks itself
        ("f***ing", "f***", False),  # and only itself: its stars are part of the word
        ("f****", "f***", False),
        ("f***!", "f***", True),
        ("a fake* deal", "fake", True),  # a star typed after a word hides nothing
        ("सालाना ऑफर", "साला", False),  # Devanagari vowel signs are marks inside a word
        ("कमाल है", "कम", False),
        ("तुम साला हो", "साला", True),
        # Accents and overlays are folded away in Latin, Greek and Cyrillic (and Han, Hangul)
        ("what an ass\u0336", "ass", True),  # a combining overlay after the word
        ("scam\u0335 link", "scam", True),
        ("a\u0336s\u0336s\u0336", "ass", True),  # strikethrough text
        ("cafe scam", "café", True),
        ("CAFÉ scam", "cafe", True),
        ("café scam", "cafe", True),
        ("café scam", "cafe\u0301", True),  # a blocked word typed decomposed
        ("total scåm", "scam", True),
        ("ΑΠΆΤΗ", "απατη", True),  # Greek tonos
        ("это обмА\u0301н", "обман", True),  # Cyrillic stress mark
        ("骗\u0336子", "骗子", True),  # an overlay inside a Chinese word
        ("my \u0301ass", "ass", True),  # a mark on a space does not join the words
        ("\u0301\u0336ass", "ass", True),  # nor one at the start
        ("5\u0301ass", "ass", False),  # a digit stays part of the word
        ("gla\u0336ss", "ass", False),
        ("がっかり", "かっか", False),  # a kana voicing mark is kept: が is not か
        ("शाला", "साला", False),  # Devanagari signs are kept
        # In scripts written without spaces a star is ignored, whatever the stem's length
        ("这是骗子", "骗子*", True),
        ("骗局", "骗*", True),
        ("大骗局", "*骗*", True),
        ("ของปลอมเยอะ", "ปล*", True),
        ("骗子", "骗子*", True),
        # Joiners, direction marks and soft hyphens are kept in chat, but looked through
        ("a sc\u200dam", "scam", True),
        ("sc\u00adam!", "scam", True),
        ("\u200fscam\u200e", "scam", True),
        ("a scam", "sc\u200cam", True),  # in a blocked word too
        # Other characters drawn as nothing inside a word: variation and free variation
        # selectors, Khmer's inherent vowels, the grapheme joiner
        ("sc\u034fam", "scam", True),
        ("\u0e42\u0e01\ufe00\u0e07", "\u0e42\u0e01\u0e07", True),  # Thai โกง
        ("\u0e42\u0e01\u180b\u0e07", "\u0e42\u0e01\u0e07", True),
        ("\u0e42\u0e01\U000e0100\u0e07", "\u0e42\u0e01\u0e07", True),
        ("\u0927\u094b\ufe0f\u0916\u093e", "\u0927\u094b\u0916\u093e", True),  # धोखा
        ("\u0927\u094b\u17b4\u0916\u093e", "\u0927\u094b\u0916\u093e", True),
        ("a \u2764\ufe0f scam", "scam", True),  # an emoji's selector is kept in the line
        # Hangul fillers are drawn as blank space: they part words, as a space does
        ("buy\u3164scam\u3164now", "scam", True),
        ("buy\uffa0scam\u1160", "scam", True),
        ("\u115fscam", "scam", True),
        ("sc\u3164am", "scam", False),  # shows as "sc am"
    ],
)
def test_blocked_words_are_found_as_words(text: str, blocked: str, found: bool) -> None:
    assert (find_blocked_word(text, [blocked]) == blocked) is found


def test_the_first_blocked_word_found_is_named() -> None:
    assert find_blocked_word("a scam and spam", ["spam", "scam"]) == "spam"
    assert find_blocked_word("all fine", ["spam", "scam"]) is None


@pytest.mark.parametrize(
    "hidden", ["\ufff0", "\ufff8", "\u2065", "\U000e0000", "\U000e0002", "\U000e0080", "\U000e01f0"]
)
def test_code_points_reserved_as_invisible_are_dropped_and_hide_no_blocked_word(
    hidden: str,
) -> None:
    """Unassigned, but reserved for characters drawn as nothing: "sc\ufff0am" shows as "scam"."""
    line = clean_text(f"what a sc{hidden}am")
    assert line == "what a scam"
    assert find_blocked_word(line, ["scam"]) == "scam"


def test_other_unassigned_code_points_pass_as_characters_newer_than_this_unicode() -> None:
    # U+1FAE8 (shaking face), U+1FA77 (pink heart), Unicode 15: unassigned to a Python of an
    # older Unicode. Alone too: a line of them shows something.
    assert clean_text("so cheap \U0001fae8") == "so cheap \U0001fae8"
    assert clean_text("\U0001fa77\U0001fa77") == "\U0001fa77\U0001fa77"


@pytest.mark.parametrize(
    "nothing",
    [
        "\ufff0",  # reserved as invisible
        "\uffff",  # noncharacters
        "\ufdd0",
        "\U0010fffe",
        "\u0ece",  # a mark of Unicode 15 (Lao), and Egyptian format controls
        "\U0001343a",
        "\U00050000",  # where nothing is planned: a box at best
    ],
)
def test_a_line_of_what_no_unicode_draws_shows_nothing(nothing: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        clean_text(f" {nothing} ")
    assert refused.value.code == "empty_message"
