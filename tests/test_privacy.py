import pytest

from bot.privacy import mask_personal_data


@pytest.mark.parametrize("text, expected", [
    ("我的手机号是13812345678", "我的手机号是[PHONE]"),
    ("call me at +1 415-555-2671 please", "call me at [PHONE] please"),
    ("电话 +86 138 1234 5678 谢谢", "电话 [PHONE] 谢谢"),
    ("mail a.b@example.com now", "mail [EMAIL] now"),
    ("身份证11010519491231002X", "身份证[ID]"),
    ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
    ("IBAN DE89 3704 0044 0532 0130 00", "IBAN [IBAN]"),
])
def test_personal_data_is_masked(text: str, expected: str) -> None:
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text", [
    "order A10023 total 1299", "订单号 202411290001 到了吗", "card 4111 1111 1111 1112 fails luhn",
    "身份证110105194912310021 bad checksum", "cancel purchase 113542617735902",
])
def test_order_numbers_and_invalid_numbers_stay(text: str) -> None:
    assert mask_personal_data(text) == text
