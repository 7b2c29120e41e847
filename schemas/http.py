"""HTTP wire models: strict request bodies and the public JSON of products and rooms.

Requests are parsed from JSON in strict mode with extra="forbid": a float where a decimal string
belongs, a number sent as a string, or an unknown field is refused rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from schemas.image_urls import ImageUrl
from server.domain.chat import MAX_BLOCKED_WORD_CHARS, MAX_BLOCKED_WORDS, blocked_word_key
from server.domain.errors import InvalidInput
from server.domain.identity import MAX_USER_ID
from server.domain.money import Money
from server.domain.orders import countries
from server.domain.products import (
    MAX_DESCRIPTION_CHARS,
    MAX_OTHER_PRICES,
    MAX_SKU_CHARS,
    MAX_WEIGHT_GRAMS,
    Product,
)
from server.domain.rooms import MAX_SLOW_MODE_SECONDS, Room, RoomStatus
from server.domain.text import describe, hidden_character, refused_coming_in, shows_something
from server.domain.times import iso_z

# Limits of the HTTP models alone; those the services check too are the domain's (slow mode,
# blocked words).
MAX_TITLE_CHARS = 200
MAX_IMAGES = 10
MAX_STOCK = 1_000_000_000  # keeps stock far inside MongoDB's int64
MAX_ID_CHARS = 64

# A plain non-negative decimal: no exponent, sign, NaN or thousands separator.
AMOUNT_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,6})?$"  # [0-9]: \d takes any script's digits


def _visible(*, multiline: bool) -> AfterValidator:
    """Refuses text with a control or hidden character (server.domain.text)."""

    def check(text: str) -> str:
        hidden = hidden_character(text, multiline=multiline) or refused_coming_in(text)
        if hidden is not None:
            raise ValueError(f"contains a control or hidden character ({describe(hidden)})")
        return text

    return AfterValidator(check)


def _blocks_something(word: str) -> str:
    # Stars are wildcards, and joiners are looked through (server.domain.chat): a word of
    # nothing else would block nothing.
    if blocked_word_key(word) is None:
        raise ValueError("is only stars, which stand for the letters of a longer word")
    return word


def _not_blank(text: str) -> str:
    if not shows_something(text):
        raise ValueError("shows nothing: it needs a letter, digit, punctuation mark or symbol")
    return text


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TITLE_CHARS),
    _visible(multiline=False),
    AfterValidator(_not_blank),
]
# A word hidden characters were put in would never match a chat line, which cannot hold them.
# Its length and the number of words are the room service's to check (once repeats are merged),
# which refuses them with codes of their own; the API document shows the bounds all the same.
BlockedWord = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_BLOCKED_WORD_CHARS}),
    _visible(multiline=False),
    AfterValidator(_not_blank),
    AfterValidator(_blocks_something),
]
ResourceId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
# A user as a token names them (server/auth.py holds its subject to the same rules): anything
# else, muted or banned, would be an entry no connection can ever match.
UserId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_USER_ID), _visible(multiline=False)
]


def _printable(text: str) -> str:
    # No format character at all, not even those writing needs (joiners, marks, tags).
    if not text.isprintable():
        raise ValueError("holds a character that is not printable (a control or hidden one)")
    return text


# A client's own name for a frame it sent, that the room is shown (a chat line's client_id).
ShownRef = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    AfterValidator(_printable),
    AfterValidator(_not_blank),
]
Description = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=MAX_DESCRIPTION_CHARS),
    _visible(multiline=True),
]
# Letters, digits and the separators sellers use; no spaces, so labels and feeds stay parseable.
Sku = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=MAX_SKU_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
    ),
]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
# Written as sellers find it in tariff books ("6117.10" or "611710"); stored as digits only.
HsCode = Annotated[str, StringConstraints(max_length=16)]
# As tariff books print it: the 4-digit heading, the 2-digit subheading, then a country's own
# digits, a dot allowed only between those parts ("6117.10", "6117.10.0010", "6117100010").
_PRINTED_HS_CODE = re.compile(r"[0-9]{4}\.?[0-9]{2}(\.?[0-9]{1,4}){0,2}")


# RFC 3339's date-time, as the API document declares it: pydantic alone also takes a count of
# seconds ("1700000000") or a space for the "T". Up to nanoseconds, as Go and .NET write them
# (fromisoformat keeps the microseconds).
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: object) -> object:
    """Parsed here: strict mode takes a string for a datetime only as the JSON it parses."""
    if not isinstance(value, str):
        return value  # refused by the type itself
    if _RFC3339.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 date-time, such as 2026-12-01T18:00:00Z")
    return datetime.fromisoformat(value.upper())


def _in_utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is in year 10000 in UTC
        raise ValueError("is out of range once in UTC") from None


Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_in_utc)]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    # The code a refusal carries when all its errors are in these fields (dotted paths, each
    # naming a field and what is in it), as the service's own check of the field would say:
    # one fault, one code, whichever check finds it. Other refusals are `invalid_input`.
    field_codes: ClassVar[Mapping[str, str]] = {}


Faults = list[ErrorDetails]


def faults_of(exc: ValidationError) -> Faults:
    """A validation's faults, each only where, what and why: the rejected input is never
    echoed back, and leaving it out is most of what reading them costs (a body of 5,000
    unknown fields is 5,000 faults)."""
    return exc.errors(include_url=False, include_input=False, include_context=False)


def field_of(fault: ErrorDetails) -> str:
    """The fault's place as a dotted path: `shipping_address.country`."""
    return ".".join(str(part) for part in fault["loc"])


def code_of_fields(fields: Iterable[str], field_codes: Mapping[str, str]) -> str | None:
    """The code of `field_codes` that every one of the refused `fields` (dotted paths) falls
    under, if there is one."""
    common = None
    for field in fields:
        code = _code_of(field, field_codes)
        if code is None or code != (common or code):
            return None  # a fault no code covers, or faults of two codes: no one code says it
        common = code
    return common


def _code_of(field: str, field_codes: Mapping[str, str]) -> str | None:
    """The code of the first entry that is the field or holds it (`price` holds `price.amount`)."""
    for path, code in field_codes.items():
        if field == path or field.startswith(path + "."):
            return code
    return None


class MoneyIn(RequestModel):
    amount: Annotated[str, StringConstraints(pattern=AMOUNT_PATTERN)]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]

    @model_validator(mode="after")
    def _is_valid_money(self) -> Self:
        # Unknown currencies and too many decimals for the currency are reported on this field.
        try:
            self.to_money()
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return self

    def to_money(self) -> Money:
        return Money.parse(self.amount, self.currency)


def _positive(price: MoneyIn) -> MoneyIn:
    if price.to_money().amount <= 0:
        raise ValueError("price must be greater than zero")
    return price


PositiveMoneyIn = Annotated[MoneyIn, AfterValidator(_positive)]


class StockIn(RequestModel):
    field_codes = {"stock": "invalid_stock"}
    stock: int = Field(ge=0, le=MAX_STOCK)


class ProductIn(RequestModel):
    # The codes an offer's price and an address's country answer with.
    field_codes = {
        "stock": "invalid_stock",
        "price": "invalid_price",
        "other_prices": "invalid_price",
        "origin_country": "invalid_country",
    }
    title: Title
    images: list[ImageUrl] = Field(default_factory=list, max_length=MAX_IMAGES)
    price: MoneyIn
    stock: int = Field(ge=0, le=MAX_STOCK)
    description: Description = ""
    sku: Sku | None = None
    origin_country: CountryCode | None = None
    hs_code: HsCode | None = None
    weight_grams: int | None = Field(default=None, gt=0, le=MAX_WEIGHT_GRAMS)
    # Declared after `price`, so its validator can compare with the main currency.
    other_prices: list[PositiveMoneyIn] = Field(default_factory=list, max_length=MAX_OTHER_PRICES)

    @field_validator("price")
    @classmethod
    def _positive_price(cls, price: MoneyIn) -> MoneyIn:
        return _positive(price)

    @field_validator("origin_country")
    @classmethod
    def _known_country(cls, code: str | None) -> str | None:
        if code is not None and code not in countries():
            raise ValueError(f"{code} is not an ISO 3166-1 alpha-2 country code")
        return code

    @field_validator("hs_code")
    @classmethod
    def _hs_digits(cls, code: str | None) -> str | None:
        if code is None:
            return None
        if _PRINTED_HS_CODE.fullmatch(code) is None:
            raise PydanticCustomError(
                "string_pattern_mismatch",
                "hs_code is digits, with dots only after the 4-digit heading and the 2-digit "
                "subheading: 6117.10 or 6117.10.0010",
            )
        digits = code.replace(".", "")
        if not 6 <= len(digits) <= 10:
            raise ValueError("hs_code must have 6 to 10 digits")
        # 77 is kept for future use; 98 and 99 are the national tariffs' own chapters.
        if digits[:2] in ("00", "77"):
            raise ValueError(f"hs_code chapter {digits[:2]} does not exist")
        return digits

    @field_validator("other_prices")
    @classmethod
    def _other_prices(cls, prices: list[MoneyIn], info: ValidationInfo) -> list[MoneyIn]:
        main = info.data.get("price")  # absent when the main price itself was refused
        seen: set[str] = set()
        for price in prices:
            if isinstance(main, MoneyIn) and price.currency == main.currency:
                raise ValueError(f"{price.currency} is already the main price's currency")
            if price.currency in seen:
                raise ValueError(f"{price.currency} is priced twice")
            seen.add(price.currency)
        return prices

    def other_money(self) -> list[Money]:
        return [price.to_money() for price in self.other_prices]


_WORDS: dict[str, Any] = {"maxItems": MAX_BLOCKED_WORDS}
# Repeats are merged before the count is checked, so a list may hold more entries than that;
# not without bound: each entry refused is an error to list (60 KB of them took 50 ms).
MAX_BLOCKED_WORD_ENTRIES = 5 * MAX_BLOCKED_WORDS


def _not_too_many_words(words: object) -> object:
    # Refused before its entries are read, with the code the room service refuses 201 with.
    if isinstance(words, list) and len(words) > MAX_BLOCKED_WORD_ENTRIES:
        raise InvalidInput(
            f"at most {MAX_BLOCKED_WORDS} blocked words", code="too_many_blocked_words"
        )
    return words


BlockedWords = Annotated[
    list[BlockedWord], BeforeValidator(_not_too_many_words), Field(json_schema_extra=_WORDS)
]


class RoomIn(RequestModel):
    title: Title
    scheduled_at: Moment | None = None
    blocked_words: BlockedWords | None = None


class ShowcaseIn(RequestModel):
    product_id: ResourceId


class NoFieldsIn(RequestModel):
    """The body of a request that takes none, if one is sent: `{}`."""


class SlowModeIn(RequestModel):
    field_codes = {"seconds": "invalid_slow_mode"}
    seconds: int = Field(ge=0, le=MAX_SLOW_MODE_SECONDS)


class BlockedWordsIn(RequestModel):
    words: BlockedWords


def _decimal_digits(value: object) -> object:
    """A query's number from its ASCII digits alone: a lax int takes "1_0", " 5" and "1.0".
    However many digits, so that a number too large is told its range, not its spelling; read
    from 18 at most (a longer one is out of every range, and int() of 5,000 digits refuses)."""
    if not isinstance(value, str):
        return value
    if re.fullmatch(r"[0-9]+", value) is None:
        raise ValueError("must be a whole number written in digits")
    digits = value.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18


class ListQuery(BaseModel):
    """Query strings are text: numbers are read from their digits, and parameters a list does
    not know (cache busters) are ignored."""

    model_config = ConfigDict(extra="ignore")


QueryInt = Annotated[int, BeforeValidator(_decimal_digits)]


class RoomListQuery(ListQuery):
    status: RoomStatus | None = None
    limit: QueryInt = Field(default=20, ge=1, le=100)
    # Checked by the service, so that any bad cursor answers `invalid_cursor`.
    cursor: str | None = None


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, to the millisecond MongoDB keeps."""
    return None if moment is None else iso_z(moment)


def product_summary(product: Product) -> dict[str, Any]:
    """What a viewer sees of a pinned product (the `showcase.pinned` payload and room JSON).

    It reaches every viewer of a room, so it stays small: of the trade fields only what a shopper
    abroad decides by (where it ships from, a price in their currency), and only when set.
    """
    summary: dict[str, Any] = {
        "id": product.id,
        "title": product.title,
        "images": list(product.images),
        "price": product.price.to_wire(),
        "stock": product.stock,
    }
    if product.origin_country is not None:
        summary["origin_country"] = product.origin_country
    if product.other_prices:
        summary["other_prices"] = [price.to_wire() for price in product.other_prices]
    return summary


def product_to_wire(product: Product) -> dict[str, Any]:
    """The whole product (GET /products/{id}); unset trade fields are null, never missing."""
    return {**sold_product_to_wire(product), "stock": product.stock}


def sold_product_to_wire(product: Product) -> dict[str, Any]:
    """A product as an order keeps it: what was sold. Not the seller's stock: no part of the
    goods, read at another moment by each process, and not the buyer's business."""
    return {
        "id": product.id,
        "title": product.title,
        "images": list(product.images),
        "price": product.price.to_wire(),
        "owner_id": product.owner_id,
        "created_at": iso_utc(product.created_at),
        "description": product.description,
        "sku": product.sku,
        "origin_country": product.origin_country,
        "hs_code": product.hs_code,
        "weight_grams": product.weight_grams,
        "other_prices": [price.to_wire() for price in product.other_prices],
    }


def room_to_wire(room: Room, pinned: Product | None, *, show_settings: bool) -> dict[str, Any]:
    """The public room; blocked words stay hidden from viewers so they cannot be worked around."""
    wire: dict[str, Any] = {
        "id": room.id,
        "host_id": room.host_id,
        "title": room.title,
        "status": room.status.value,
        "created_at": iso_utc(room.created_at),
        "scheduled_at": iso_utc(room.scheduled_at),
        "started_at": iso_utc(room.started_at),
        "ended_at": iso_utc(room.ended_at),
        "pinned_product": product_summary(pinned) if pinned is not None else None,
        "slow_mode_seconds": room.slow_mode_seconds,
    }
    if show_settings:
        wire["blocked_words"] = list(room.blocked_words)
    return wire
