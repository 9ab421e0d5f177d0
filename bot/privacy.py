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
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and luhn.is_valid(digits)


def _mask_phones(text: str, region: str) -> str:
    matches = list(phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID))
    for match in reversed(matches):  # from the end, so earlier offsets stay valid
        text = text[: match.start] + "[PHONE]" + text[match.end :]
    return text
