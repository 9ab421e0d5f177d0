"""Personal-data masking: candidates found by pattern, confirmed by checksum libraries.

Checksums (python-stdnum, phonenumbers) keep order numbers and amounts from being masked by mistake.
"""
from __future__ import annotations

import re

import phonenumbers
from stdnum import iban, luhn
from stdnum.cn import ric

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
CN_ID = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# Visa, Mastercard, Amex, JCB, Diners, UnionPay, Discover.
CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[47]|35|30|36|38|62|6011|65")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# Regions tried for numbers written without a country code: mainland China, US.
PHONE_REGIONS = ("CN", "US")


def mask_personal_data(text: str) -> str:
    """Replace e-mails, Chinese ID numbers, card numbers, IBANs and phone numbers with placeholders."""
    text = EMAIL.sub("[EMAIL]", text)
    text = CN_ID.sub(lambda m: "[ID]" if ric.is_valid(m.group()) else m.group(), text)
    text = IBAN.sub(lambda m: "[IBAN]" if iban.is_valid(m.group()) else m.group(), text)
    text = CARD.sub(lambda m: "[CARD]" if _is_card(m.group()) else m.group(), text)
    for region in PHONE_REGIONS:
        text = _mask_phones(text, region)
    return text


def _is_card(candidate: str) -> bool:
    """A card network's prefix and a valid Luhn check digit: one long order number in ten passes Luhn alone."""
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and bool(CARD_PREFIX.match(digits)) and luhn.is_valid(digits)


def _could_be_phone(raw: str) -> bool:
    """Long digit runs without an international prefix are order or tracking numbers, not phones
    (a Chinese mobile with +86 is 13 digits)."""
    digits = re.sub(r"\D", "", raw)
    return len(digits) <= 13 or raw.lstrip().startswith(("+", "00"))


def _mask_phones(text: str, region: str) -> str:
    matches = [m for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID)
               if _could_be_phone(m.raw_string)]
    for match in reversed(matches):  # from the end, so earlier offsets stay valid
        text = text[: match.start] + "[PHONE]" + text[match.end :]
    return text
