"""Personal-data masking benchmark: throughput on 1,000 generated customer messages, and precision / recall per
kind of personal data on those messages and on the labelled table of tests/test_privacy.py. Prints markdown.

    .venv/bin/python bench/privacy_bench.py [--messages 1000] [--reps 5] [--seed 7]

The messages mix Chinese and English chat with phone numbers, e-mails, ID numbers, cards and IBANs (written
plainly, with spaces or dashes, or in full-width digits) and with order numbers, prices, dates and tracking
numbers that must stay. Random 16-digit order numbers pass Luhn one time in ten and are then masked as cards:
that is counted as a false positive.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import the project from the checkout

import phonenumbers  # noqa: E402
from stdnum import iban, luhn  # noqa: E402
from stdnum.cn import ric  # noqa: E402

from bot.privacy import mask_personal_data  # noqa: E402
from tests.test_privacy import MASKED, UNCHANGED  # noqa: E402

KINDS = ("EMAIL", "ID", "CARD", "IBAN", "PHONE")
PLACEHOLDER = re.compile(r"\[(EMAIL|ID|CARD|IBAN|PHONE)\]")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _styled(rng: random.Random, number: str, sizes: tuple[int, ...]) -> str:
    """Plain, grouped with spaces or dashes, or in full-width digits."""
    style = rng.random()
    if style < 0.5:
        return number
    if style < 0.85:
        sep = rng.choice(" -")
        parts, pos = [], 0
        for size in sizes:
            parts.append(number[pos : pos + size])
            pos += size
        return sep.join(p for p in parts if p)
    return "".join(chr(ord(c) + 0xFEE0) for c in number)


def phone(rng: random.Random) -> str:
    while True:
        if rng.random() < 0.7:
            number = "1" + rng.choice("3589") + _digits(rng, 9)
            if phonenumbers.is_valid_number(phonenumbers.parse(number, "CN")):
                return _styled(rng, number, (3, 4, 4))
        else:
            number = rng.choice(("415", "212", "646")) + _digits(rng, 7)
            if phonenumbers.is_valid_number(phonenumbers.parse(number, "US")):
                return f"({number[:3]}) {number[3:6]}-{number[6:]}"


def email(rng: random.Random) -> str:
    name = rng.choice(("zhang.san", "li_si", "wang.wu+shop", "john.doe", "amy2024"))
    return f"{name}@{rng.choice(('qq.com', '163.com', 'example.com', 'mail.example.co.uk'))}"


def cn_id(rng: random.Random) -> str:
    region = rng.choice(("110101", "310104", "440305", "510107", "330106"))
    birth = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = region + birth + _digits(rng, 3)
    return _styled(rng, body + ric.calc_check_digit(body + "0"), (6, 8, 4))


def card(rng: random.Random) -> str:
    prefix = rng.choice(("4", "51", "62", "6228", "9558", "6013", "3528"))
    length = rng.choice((16, 16, 16, 19))
    payload = prefix + _digits(rng, length - len(prefix) - 1)
    number = payload + luhn.calc_check_digit(payload)
    return _styled(rng, number, (4, 4, 4, 4, 3))


def iban_number(rng: random.Random) -> str:
    country, bban = rng.choice((("DE", _digits(rng, 18)), ("GB", "WEST" + _digits(rng, 14))))
    number = country + iban.calc_check_digits(country + "00" + bban) + bban
    number = " ".join(number[i : i + 4] for i in range(0, len(number), 4)) if rng.random() < 0.5 else number
    return number.lower() if rng.random() < 0.3 else number


def order(rng: random.Random) -> str:
    return "2024" + _digits(rng, rng.choice((8, 11, 12)))


TEMPLATES: list[tuple[str, dict[str, Callable[[random.Random], str]]]] = [
    ("我的手机号是{phone}，请尽快联系我", {"phone": phone}),
    ("call me at {phone} after 6pm", {"phone": phone}),
    ("邮箱{email}，订单号{order}", {"email": email, "order": order}),
    ("please send the invoice to {email} thanks", {"email": email}),
    ("身份证号{id}，实名认证一直失败", {"id": cn_id}),
    ("退款到卡号{card}，金额¥1,299.00", {"card": card}),
    ("refund to card {card} please, order {order}", {"card": card, "order": order}),
    ("IBAN {iban} for the refund of $12.50", {"iban": iban_number}),
    ("账号{iban}请查收", {"iban": iban_number}),
    ("订单{order}什么时候发货？2024年5月17日下的单", {"order": order}),
    ("order {order} was supposed to arrive 2024-05-17 at 12:30", {"order": order}),
    ("快递单号SF{tracking}，一直没更新", {"tracking": lambda rng: _digits(rng, 12)}),
    ("数量 3 件，单价 $12.50，一共 ¥1,299.00", {}),
    ("你们周末几点开门？", {}),
    ("I want to change the delivery address, it is too slow", {}),
    ("联系人张三 {phone}，身份证{id}，卡{card}", {"phone": phone, "id": cn_id, "card": card}),
]
LABEL = {"phone": "[PHONE]", "email": "[EMAIL]", "id": "[ID]", "card": "[CARD]", "iban": "[IBAN]"}


def messages(count: int, seed: int) -> list[tuple[str, str]]:
    """(message, expected masked message) pairs."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        template, fields = rng.choice(TEMPLATES)
        values = {name: make(rng) for name, make in fields.items()}
        expected = {name: LABEL.get(name, value) for name, value in values.items()}
        out.append((template.format(**values), template.format(**expected)))
    return out


def score(cases: list[tuple[str, str]]) -> tuple[dict[str, Counter[str]], int]:
    """Per kind: true positives, false positives, false negatives (placeholder counts); and exact matches."""
    tally: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    exact = 0
    for text, expected in cases:
        got = mask_personal_data(text)
        exact += got == expected
        want, have = Counter(PLACEHOLDER.findall(expected)), Counter(PLACEHOLDER.findall(got))
        for kind in KINDS:
            tally[kind]["tp"] += min(want[kind], have[kind])
            tally[kind]["fp"] += max(have[kind] - want[kind], 0)
            tally[kind]["fn"] += max(want[kind] - have[kind], 0)
    return tally, exact


def table(title: str, cases: list[tuple[str, str]]) -> None:
    tally, exact = score(cases)
    print(f"\n### {title}: {len(cases)} messages, {exact} masked exactly as labelled\n")
    print("| kind | TP | FP | FN | precision | recall |\n|---|---|---|---|---|---|")
    total: Counter[str] = Counter()
    for kind in (*KINDS, "all"):
        c = total if kind == "all" else tally[kind]
        if kind != "all":
            total.update(c)
        precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan")
        recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan")
        print(f"| {kind} | {c['tp']} | {c['fp']} | {c['fn']} | {precision:.3f} | {recall:.3f} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    mix = messages(args.messages, args.seed)
    texts = [text for text, _ in mix]
    for text in texts[:50]:  # warm up: phonenumbers loads its metadata, stdnum its databases
        mask_personal_data(text)
    rates = []
    for _ in range(args.reps):
        start = time.perf_counter()
        for text in texts:
            mask_personal_data(text)
        rates.append(len(texts) / (time.perf_counter() - start))
    print("## mask_personal_data\n")
    print(
        f"Throughput on {len(texts)} messages (mean {statistics.mean(map(len, texts)):.0f} characters), "
        f"{args.reps} passes: median {statistics.median(rates):,.0f} messages/s "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f})."
    )
    table("Generated mix", mix)
    labelled = [(text, expected) for _, text, expected in MASKED] + [(text, text) for _, text in UNCHANGED]
    table("Labelled table (tests/test_privacy.py)", labelled)


if __name__ == "__main__":
    main(sys.argv[1:])
