import logging
from pathlib import Path

import pytest
from stdnum import iban, luhn
from stdnum.cn import ric

from bot.__main__ import start
from bot.privacy import mask_personal_data
from tests.support import get, make_settings, post


@pytest.mark.parametrize(
    "text, expected",
    [
        ("我的手机号是13812345678", "我的手机号是[PHONE]"),
        ("call me at +1 415-555-2671 please", "call me at [PHONE] please"),
        ("电话 +86 138 1234 5678 谢谢", "电话 [PHONE] 谢谢"),
        ("mail a.b@example.com now", "mail [EMAIL] now"),
        ("身份证11010519491231002X", "身份证[ID]"),
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("IBAN DE89 3704 0044 0532 0130 00", "IBAN [IBAN]"),
    ],
)
def test_personal_data_is_masked(text: str, expected: str) -> None:
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order A10023 total 1299",
        "订单号 202411290001 到了吗",
        "card 4111 1111 1111 1112 fails luhn",
        "身份证110105194912310021 bad checksum",
        "cancel purchase 113542617735902",
    ],
)
def test_order_numbers_and_invalid_numbers_stay(text: str) -> None:
    assert mask_personal_data(text) == text


# --- Labelled table: every variant the masker must catch, and text that must come back byte for byte. ---
# Checksummed test numbers are computed here, so that the table does not depend on the code under test.


def _luhn(payload: str) -> str:
    """The payload with its Luhn check digit appended."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch) * (2 if i % 2 == 0 else 1)  # doubled from the digit left of the check digit
        total += d - 9 if d > 9 else d
    return payload + str(-total % 10)


def _ric(body17: str) -> str:
    """An 18-digit Chinese ID number from its first 17 digits (region, birth date, sequence)."""
    return body17 + ric.calc_check_digit(body17 + "0")  # stdnum's function skips the last character


def _fw(text: str) -> str:
    """Full-width form of the ASCII characters in `text` (space: the ideographic space)."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _spaced(number: str, sizes: tuple[int, ...], sep: str = " ") -> str:
    parts, pos = [], 0
    for size in sizes:
        parts.append(number[pos : pos + size])
        pos += size
    return sep.join(parts)


ID18 = _ric("11010119900307773")  # Beijing Dongcheng, born 1990-03-07
ID18_NEW_DISTRICT = _ric("51010719700127201")  # Chengdu Wuhou (created 1990), holder born 1970
ID18_BAD_DATE = _ric("11010119901307775")  # right check digit, month 13 (and not Luhn-valid)
ID18_BAD_REGION = _ric("99010119900307773")  # right check digit, no province 99 (and not Luhn-valid)
ID18_X = "11010519491231002X"  # the stdnum documentation example, check digit X
ID15 = "110105491231002"  # first generation: Beijing Chaoyang, born (19)49-12-31, no check digit
UNIONPAY = "6212345678901232"  # UnionPay test number
ICBC19 = _luhn("955880123456789012")  # 19-digit domestic debit card, prefix 9558
BOC16 = _luhn("601382001234567")  # prefix 60 (not in any international network's list)
AMEX = "378282246310005"  # Amex test number, 15 digits
TRACKING_YT = "YT" + _luhn("241234567890123")  # Luhn-valid digits glued to a courier prefix
TIMESTAMP_MS = _luhn("171593700012")  # 13-digit epoch milliseconds, Luhn-valid
TIMESTAMP_14 = _luhn("2024051712300")  # yyyymmddhhmmss, Luhn-valid
ORDER_15_LUHN = _luhn("20240517000123")  # 15-digit order number, Luhn-valid

MASKED = [
    # e-mail: ASCII only, stops at CJK text and punctuation
    ("email-cjk-neighbours", "邮箱a.b@example.com订单号123456", "邮箱[EMAIL]订单号123456"),
    ("email-plus-subdomain", "email: John.Doe+shop@mail.example.co.uk, thanks", "email: [EMAIL], thanks"),
    ("email-cn-punctuation", "联系我：zhang_san@qq.com。", "联系我：[EMAIL]。"),
    ("email-full-width", "邮箱" + _fw("test@example.com") + "谢谢", "邮箱[EMAIL]谢谢"),
    ("email-digits-not-phone", "发到 13812345678@163.com 就行", "发到 [EMAIL] 就行"),
    # Chinese ID numbers: 18 digits (checksum), 15 digits (birth date, region), separators, full width
    ("id18-cn", f"身份证{ID18}", "身份证[ID]"),
    ("id18-en-comma", f"My ID is {ID18}, thanks", "My ID is [ID], thanks"),
    ("id18-spaces", f"ID: {_spaced(ID18, (6, 8, 4))}.", "ID: [ID]."),
    ("id18-dashes", f"身份证号{_spaced(ID18, (6, 8, 4), '-')}谢谢", "身份证号[ID]谢谢"),
    ("id18-full-width", f"身份证{_fw(ID18)}", "身份证[ID]"),
    ("id18-district-newer-than-holder", f"身份证号码：{ID18_NEW_DISTRICT}", "身份证号码：[ID]"),
    ("id18-lowercase-x", f"id {ID18_X.lower()} ok", "id [ID] ok"),
    ("id15-old", f"旧身份证号 {ID15}", "旧身份证号 [ID]"),
    ("id15-spaces", f"old id {_spaced(ID15, (6, 6, 3))}", "old id [ID]"),
    # cards: any prefix from 16 digits, Luhn, spaces / dashes / dots / full width
    ("card-visa-spaces", "card 4111 1111 1111 1111 ok", "card [CARD] ok"),
    ("card-unionpay-cn", f"银联卡{_spaced(UNIONPAY, (4, 4, 4, 4))}", "银联卡[CARD]"),
    ("card-dashes", "pay with 4111-1111-1111-1111 please", "pay with [CARD] please"),
    ("card-dots", "卡号4111.1111.1111.1111。", "卡号[CARD]。"),
    ("card-full-width-digits", f"卡号{_fw(UNIONPAY)}", "卡号[CARD]"),
    ("card-full-width-separators", f"卡号：{_fw(_spaced(UNIONPAY, (4, 4, 4, 4)))}。", "卡号：[CARD]。"),
    ("card-full-width-dashes", _fw(_spaced("4111111111111111", (4, 4, 4, 4), "-")), "[CARD]"),
    ("card-19-digit-domestic", f"工行卡 {_spaced(ICBC19, (4, 4, 4, 4, 3))}", "工行卡 [CARD]"),
    ("card-prefix-60", f"中行卡号{BOC16}", "中行卡号[CARD]"),
    ("card-amex-15", f"amex {_spaced(AMEX, (4, 6, 5))}", "amex [CARD]"),
    ("card-after-phone", "电话13812345678 卡号4111111111111111", "电话[PHONE] 卡号[CARD]"),
    # IBANs: any case, spaces or none, glued to text
    ("iban-upper-spaces", "IBAN DE89 3704 0044 0532 0130 00", "IBAN [IBAN]"),
    ("iban-lower-text-after", "iban de89 3704 0044 0532 0130 00 thanks", "iban [IBAN] thanks"),
    ("iban-colon-glued", "IBAN:DE89370400440532013000", "IBAN:[IBAN]"),
    ("iban-cjk-glued", "账号DE89370400440532013000请查收", "账号[IBAN]请查收"),
    ("iban-gb-letters", "GB82 WEST 1234 5698 7654 32", "[IBAN]"),
    ("iban-gb-lower-glued", "转账到gb82west12345698765432。", "转账到[IBAN]。"),
    # phones: CN and US, with or without country code, full width
    ("phone-cn-mobile", "我的手机号是13812345678", "我的手机号是[PHONE]"),
    ("phone-cn-dashes", "手机：138-1234-5678", "手机：[PHONE]"),
    ("phone-cn-full-width", f"手机{_fw('13812345678')}", "手机[PHONE]"),
    ("phone-cn-plus86", "电话 +86 138 1234 5678 谢谢", "电话 [PHONE] 谢谢"),
    ("phone-cn-0086", "0086 138 1234 5678", "[PHONE]"),
    ("phone-us-parens", "call (415) 555-2671 tomorrow", "call [PHONE] tomorrow"),
    # several kinds in one message
    (
        "mixed",
        f"我是张三，手机13812345678，邮箱zs@example.cn，身份证{ID18}，卡号{UNIONPAY}。",
        "我是张三，手机[PHONE]，邮箱[EMAIL]，身份证[ID]，卡号[CARD]。",
    ),
]

UNCHANGED = [
    ("order-15", "订单号202405170001234什么时候发货"),
    ("order-15-en", "order 202405170001234 shipped yesterday"),
    ("order-15-luhn-valid", f"订单号 {ORDER_15_LUHN} 到了吗"),
    ("order-two", "订单 202405170001234 和 202405170001235 一起发"),
    ("prices-cn", "价格¥1,299.00，运费$12.50"),
    ("prices-en", "total $1,299.00 incl. $12.50 shipping"),
    ("date-iso-time", "delivery on 2024-05-17 at 12:30"),
    ("date-cn", "2024年5月17日下午12:30送达"),
    ("two-dates", "2024-05-17 2024-05-18"),
    ("time-range", "营业时间 09:00-21:30"),
    ("tracking-sf", "快递单号SF1234567890123"),
    ("tracking-ups", "tracking 1Z999AA10123456784"),
    ("tracking-luhn-glued", f"运单号{TRACKING_YT}"),
    ("card-luhn-invalid", "卡号 6212 3456 7890 1233"),
    ("card-luhn-invalid-glued", "card 4111111111111112"),
    ("timestamp-ms-luhn", f"ts={TIMESTAMP_MS}"),
    ("timestamp-14-luhn", f"created {TIMESTAMP_14}"),
    ("iban-bad-checksum", "IBAN DE88 3704 0044 0532 0130 00"),
    ("id-bad-checksum", "身份证11010519491231002Y"),
    ("id-bad-date", f"身份证{ID18_BAD_DATE}"),
    ("id-bad-region", f"ID {ID18_BAD_REGION}"),
    ("quantities-cn", "数量 3 件，共 2 箱，每箱 12 个"),
    ("quantities-en", "qty 2 x 12 pcs, 500 g each"),
    ("version-room", "app version 1.2.3, room 1203"),
    ("not-an-email", "用户名 @zhangsan 或 a@b"),
    ("hotline", "客服热线95588"),
]


@pytest.mark.parametrize("text, expected", [case[1:] for case in MASKED], ids=[case[0] for case in MASKED])
def test_labelled_personal_data_is_masked(text: str, expected: str) -> None:
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text", [case[1] for case in UNCHANGED], ids=[case[0] for case in UNCHANGED])
def test_labelled_harmless_text_is_byte_identical(text: str) -> None:
    assert mask_personal_data(text).encode() == text.encode()


def test_test_numbers_are_valid() -> None:
    """The generated numbers are what the table says they are."""
    assert ric.is_valid(ID18) and ric.is_valid(ID18_X)
    for number in (ID18_NEW_DISTRICT, ID18_BAD_DATE, ID18_BAD_REGION):  # right check digit, not a card
        assert number[-1] == ric.calc_check_digit(number) and not luhn.is_valid(number)
    for card in (UNIONPAY, ICBC19, BOC16, AMEX, "4111111111111111", TIMESTAMP_MS, TIMESTAMP_14, ORDER_15_LUHN):
        assert luhn.is_valid(card), card
    assert not luhn.is_valid("6212345678901233") and not luhn.is_valid("202405170001234")
    assert iban.is_valid("DE89370400440532013000") and not iban.is_valid("DE88370400440532013000")


def test_masking_is_idempotent_and_keeps_surroundings() -> None:
    text = "　您好！手机１３８１２３４５６７８，IBAN de89 3704 0044 0532 0130 00。"
    once = mask_personal_data(text)
    assert once == "　您好！手机[PHONE]，IBAN [IBAN]。"
    assert mask_personal_data(once) == once


# --- end to end: nothing raw on disk or in the logs ------------------------------------------------------

RAW = ("13812345678", "11010519491231002X", "4111111111111111", "zhang.san@example.com")


async def test_no_raw_personal_data_on_disk_or_in_the_logs_after_any_chat(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A customer's chat, an agent's correction and an agent's hand-off reply, all with personal data,
    through the real HTTP server: none of it is left in any file under BOT_DATA_DIR or in the logs."""
    caplog.set_level(logging.DEBUG)
    raw = "手机13812345678,身份证11010519491231002X,卡号4111111111111111,邮箱zhang.san@example.com"
    server = await start(make_settings(data_dir), {})
    try:
        chat = {"conversation_id": "c1", "user_id": "u1", "text": f"订单什么时候到?{raw}"}
        status, reply = await post(server, "/chat", chat)
        assert status == 200
        fix = {"turn_id": reply["turn_id"], "rating": -1, "correction": f"请核对{raw}"}
        assert (await post(server, "/feedback", fix, who="alice"))[0] == 200
        assert (await post(server, "/chat", chat | {"text": f"转人工 {raw}"}))[0] == 200
        target = {"channel": "http", "conversation_id": "service/c1", "text": f"已登记 {raw}"}
        assert (await post(server, "/admin/reply", target, who="alice"))[0] == 200
        status, history = await get(server, "/chat/history?conversation_id=c1")
        assert status == 200 and "[PHONE]" in history["turns"][-1]["answer"]
    finally:
        await server.stop()
    files = [path for path in data_dir.rglob("*") if path.is_file() and not path.is_relative_to(data_dir / "models")]
    assert files, "the store was written"
    for path in files:
        content = path.read_bytes()
        for value in RAW:
            assert value.encode() not in content, (value, path)
    for value in RAW:
        assert value not in caplog.text
