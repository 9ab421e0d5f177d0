"""Personal-data masking: candidates found by pattern, confirmed by checksum libraries.

Checksums (python-stdnum, phonenumbers) keep order numbers, amounts and dates from being masked by mistake.

Matching runs on a normalised copy of the message in which every full-width form (digits, letters, ``＠``,
``－``, ``．``, the ideographic space) and a few look-alike dashes and spaces are mapped one character to one
character onto ASCII, so offsets in the copy are offsets in the original: the placeholders replace the
original text, which is otherwise returned byte for byte.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Iterator

import phonenumbers
from stdnum import iban, luhn, numdb
from stdnum.cn import ric
from stdnum.exceptions import InvalidComponent

# One character to one character, so that offsets stay valid: full-width ASCII forms (U+FF01-U+FF5E),
# the ideographic and no-break spaces, hyphen and dash look-alikes.
_NORMALISE: dict[int, int] = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_NORMALISE.update(dict.fromkeys((0x3000, 0x00A0, 0x2007, 0x2009, 0x202F), ord(" ")))
_NORMALISE.update(dict.fromkeys((0x2010, 0x2011, 0x2012, 0x2013, 0x2212), ord("-")))

# ASCII only (re.ASCII: \d is 0-9), so that an address stops at the first CJK character; the TLD is letters.
EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}", re.ASCII
)
# Country code, check digits, then the BBAN; the end is found by trying shorter lengths (text may follow).
IBAN_START = re.compile(r"[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]){11,30}", re.ASCII)
# A run of digit groups joined by single separators; an ID may end in X. Tested as ID numbers and cards.
DIGIT_RUN = re.compile(r"(?<!\d)\d+(?:[ .-]\d+)*[Xx]?", re.ASCII)
DIGIT_GROUP = re.compile(r"\d+[Xx]?", re.ASCII)
ANY_DIGIT = re.compile(r"\d", re.ASCII)  # on the normalised copy: ASCII digits only
# 13-15 digit cards exist only on these networks (Visa 13, Diners 14, Amex and old JCB 15); below 16
# digits the prefix is required because timestamps (13, 14 digits) and order numbers (15) pass Luhn one
# time in ten. From 16 digits every Luhn-valid number is taken as a card: domestic prefixes vary.
SHORT_CARD_PREFIXES = {13: ("4",), 14: ("30", "36", "38", "39"), 15: ("34", "37", "1800", "2131")}
# Regions tried for numbers written without a country code: mainland China, US.
PHONE_REGIONS = ("CN", "US")
PHONE_MIN_DIGITS = 7  # the shortest national number in PHONE_REGIONS (a CN fixed line without area code)

_REGIONS = numdb.get("cn/loc")  # the region codes of Chinese ID numbers, as stdnum.cn.ric reads them

_Span = tuple[int, int, str]  # start, end, placeholder
PLACEHOLDERS = ("[EMAIL]", "[ID]", "[CARD]", "[IBAN]", "[PHONE]")


def mask_personal_data(text: str) -> str:
    """Replace e-mails, Chinese ID numbers, card numbers, IBANs and phone numbers with placeholders."""
    norm = text.translate(_NORMALISE)
    if "@" in norm:
        text, norm = _replace(text, norm, ((m.start(), m.end(), "[EMAIL]") for m in EMAIL.finditer(norm)))
    digits = len(ANY_DIGIT.findall(norm))  # on the normalised copy: full-width digits count
    if digits < 2:  # every IBAN has its two check digits; an ID, a card or a phone number many more
        return text
    text, norm = _replace(text, norm, _iban_spans(norm))
    if digits >= 13:
        text, norm = _replace(text, norm, _id_and_card_spans(norm))
    if digits < PHONE_MIN_DIGITS:
        return text
    return _mask_phones(text, norm)


def _replace(text: str, norm: str, spans: Iterable[_Span]) -> tuple[str, str]:
    """Put the placeholders in place of the spans (sorted, disjoint) in both the text and its normalised copy."""
    text_parts: list[str] = []
    norm_parts: list[str] = []
    pos = 0
    for start, end, label in spans:
        text_parts += (text[pos:start], label)
        norm_parts += (norm[pos:start], label)
        pos = end
    if not pos:
        return text, norm
    text_parts.append(text[pos:])
    norm_parts.append(norm[pos:])
    return "".join(text_parts), "".join(norm_parts)


def _iban_spans(norm: str) -> Iterator[_Span]:
    pos = 0
    while match := IBAN_START.search(norm, pos):
        end = _iban_end(match.group())
        if end:
            yield match.start(), match.start() + end, "[IBAN]"
            pos = match.start() + end
        else:
            pos = match.start() + 1  # a failed candidate may hide a real one that starts inside it


def _iban_end(candidate: str) -> int:
    """Length of the longest prefix of the candidate that is a valid IBAN, or 0.

    The ISO 7064 mod 97 check (BBAN, then country code and check digits, letters as 10-35 == 1) is carried along
    the candidate, so stdnum validates (country, length, format) only the prefixes that pass it."""
    alnum = [(i, int(ch, 36)) for i, ch in enumerate(candidate) if ch.isalnum()]
    head = int("".join(str(value) for _, value in alnum[:4]))  # two letters: 4 digits, check digits: 2 digits
    remainder, ends = 0, []
    for count, (i, value) in enumerate(alnum[4:], start=5):
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
        if count >= 15 and (remainder * 1_000_000 + head) % 97 == 1:  # the shortest IBANs have 15 characters
            ends.append(i + 1)
    return next((end for end in reversed(ends) if iban.is_valid(candidate[:end])), 0)


def _id_and_card_spans(norm: str) -> Iterator[_Span]:
    """Within each run of digit groups, the longest runs of whole groups that are an ID number or a card."""
    for run in DIGIT_RUN.finditer(norm):
        groups = [(g.start(), g.end()) for g in DIGIT_GROUP.finditer(norm, run.start(), run.end())]
        # A run glued to letters (tracking numbers such as SF1234..., YT1234...) can hold an ID number, not a card.
        glued_left = run.start() > 0 and norm[run.start() - 1].isascii() and norm[run.start() - 1].isalpha()
        glued_right = run.end() < len(norm) and norm[run.end()].isascii() and norm[run.end()].isalpha()
        first = 0
        while first < len(groups):
            found = _longest_match(norm, groups, first, glued_left and first == 0, glued_right)
            if found is None:
                first += 1
                continue
            last, label = found
            yield groups[first][0], groups[last][1], label
            first = last + 1


def _longest_match(
    norm: str, groups: list[tuple[int, int]], first: int, glued_left: bool, glued_right: bool
) -> tuple[int, str] | None:
    """The last group of the longest window of whole groups from `first` that is an ID number or a card."""
    start = groups[first][0]
    if start > 0 and norm[start - 1] == "+":  # +44 7911 123456...: an international phone number
        return None
    # The windows worth trying: at most 19 characters, one separator throughout (2024-05-17 2024-05-18 is two
    # numbers), every group but the last of 3 or more characters (2024-05-17 is a date).
    size, stop, separator = 0, first, norm[groups[first][1] : groups[first][1] + 1]
    while stop < len(groups):
        a, b = groups[stop]
        if size + b - a > 19:
            break
        size += b - a
        stop += 1
        if b - a < 3 or stop == len(groups) or norm[b] != separator:
            break
    for last in range(stop - 1, first - 1, -1):
        number = "".join(norm[a:b] for a, b in groups[first : last + 1])
        if len(number) < 13:
            return None
        if _is_id(number):
            return last, "[ID]"
        if glued_left or (glued_right and last == len(groups) - 1):
            continue
        if _is_card(number, last > first and groups[last][1] - groups[last][0] < 3):
            return last, "[CARD]"
    return None


def _is_id(number: str) -> bool:
    """18 digits: check digit, birth date and province code. 15 digits (first generation, no check digit):
    birth date 19YYMMDD and a known county code.

    Not `ric.is_valid`: it also requires the county to have existed in the birth year, but the code is the
    place of registration when the card was issued, so it rejects real numbers (someone born in 1970 with
    510107, a district created in 1990)."""
    if len(number) == 15 and number.isdigit():
        number, need = number[:6] + "19" + number[6:] + "0", "county"
    elif len(number) == 18 and number[:17].isdigit():
        number = number.upper()
        if number[-1] != ric.calc_check_digit(number):
            return False
        need = "province"
    else:
        return False
    try:
        if not 1880 <= ric.get_birth_date(number).year <= datetime.date.today().year:
            return False
    except InvalidComponent:
        return False
    return any(need in props for _, props in _REGIONS.info(number[:6]))


def _is_card(number: str, short_last_group: bool) -> bool:
    """A valid Luhn check digit on 13-19 digits, written in groups of at least 3 digits; under 16 digits, a
    network that issues such short numbers."""
    if short_last_group or not number.isdigit() or not 13 <= len(number) <= 19 or not luhn.is_valid(number):
        return False
    prefixes = SHORT_CARD_PREFIXES.get(len(number))
    return prefixes is None or number.startswith(prefixes)


def _could_be_phone(raw: str) -> bool:
    """Long digit runs without an international prefix are order or tracking numbers, not phones
    (a Chinese mobile with +86 is 13 digits)."""
    digits = re.sub(r"\D", "", raw)
    return len(digits) <= 13 or raw.lstrip().startswith(("+", "00"))


def _mask_phones(text: str, norm: str) -> str:
    for region in PHONE_REGIONS:
        matches = [
            (m.start, m.end, "[PHONE]")
            for m in phonenumbers.PhoneNumberMatcher(norm, region, leniency=phonenumbers.Leniency.VALID)
            if _could_be_phone(m.raw_string)
        ]
        text, norm = _replace(text, norm, matches)
    return text
