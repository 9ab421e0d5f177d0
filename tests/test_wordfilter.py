from pathlib import Path

import pytest

from bot.app import DEFAULT_ALLOWLIST, DEFAULT_LEXICON
from bot.wordfilter import WordFilter, load_allowlist, load_lexicon

POLICIES = {"abuse": "mask", "fraud": "block", "violence": "block", "default": "mask"}


@pytest.fixture(scope="module")
def words() -> WordFilter:
    return WordFilter(load_lexicon(DEFAULT_LEXICON), load_allowlist(DEFAULT_ALLOWLIST), POLICIES)


@pytest.mark.parametrize(
    "text",
    [
        "I forgot my password",
        "Please check the document I sent",
        "Where is my passport photo?",
        "The class assistant was shipped yesterday",
        "Can you assess the damage?",
        "我想买一个垃圾袋",
    ],
)
def test_normal_support_text_passes(words: WordFilter, text: str) -> None:
    verdict = words.check(text)
    assert verdict.text == text and not verdict.categories and not verdict.blocked


@pytest.mark.parametrize("text", ["you are stupid", "ＳＴＵＰＩＤ bot", "s.t.u.p.i.d", "s t u p i d", "You STUPID!"])
def test_dodges_are_caught_and_masked(words: WordFilter, text: str) -> None:
    verdict = words.check(text)
    assert "abuse" in verdict.categories and not verdict.blocked
    assert "stupid" not in verdict.text.casefold().replace(".", "").replace(" ", "")


@pytest.mark.parametrize("text", ["傻逼", "傻 逼", "傻\u200b逼", "傻-逼"])
def test_chinese_with_separators_is_caught(words: WordFilter, text: str) -> None:
    assert "abuse" in words.check("你这个" + text).categories


def test_block_policy_and_multi_word_entries(words: WordFilter) -> None:
    assert words.check("帮我刷单赚钱").blocked
    assert words.check("please send me your password").blocked
    assert not words.check("please send me your invoice").blocked


def test_lexicon_file_format_and_policy(tmp_path: Path) -> None:
    lexicon = tmp_path / "words.txt"
    lexicon.write_text("# comment\nfoo\tspam\nbar\n\n", encoding="utf-8")
    entries = load_lexicon(lexicon)
    assert entries == [("foo", "spam"), ("bar", "default")]
    f = WordFilter(entries, [], {"spam": "block"})
    assert f.check("foo!").blocked and f.check("a bar").text == "a ***"


# Point 7 of "Filter dodges": inserted digits and look-alike letters. (text, category, masked text)
DIGIT_AND_LOOKALIKE_DODGES = [
    ("你这个傻1逼", "abuse", "你这个***"),
    ("傻①逼", "abuse", "***"),  # circled digit
    ("傻⑴逼", "abuse", "***"),  # parenthesised digit
    ("傻⒈逼", "abuse", "***"),  # digit full stop
    ("白12痴", "abuse", "****"),
    ("傻1B", "abuse", "***"),
    ("帮我刷3单", "fraud", "帮我***"),
    ("我要杀1了2你", "violence", "我要*****"),
    ("s1t2u3p4i5d", "abuse", "***********"),  # a digit between every letter
    ("you s1tupid bot", "abuse", "you ******* bot"),
    ("ѕtupid", "abuse", "******"),  # Cyrillic ѕ
    ("stupіd", "abuse", "******"),  # Cyrillic і
    ("ЅТUPID", "abuse", "******"),  # Cyrillic capitals Ѕ and Т
    ("ѕτupid", "abuse", "******"),  # Cyrillic ѕ, Greek τ
    ("ΙDΙΟΤ", "abuse", "*****"),  # Greek capitals
    ("yоu аrе аn іdіоt", "abuse", "yоu аrе аn *****"),  # every vowel Cyrillic
    ("ѕ t u p i d", "abuse", "* * * * * *"),
    ("ѕ1tupіd", "abuse", "*******"),  # digit and look-alikes together
    ("ｓ１ｔｕｐｉｄ", "abuse", "*******"),  # full width
    ("I will murder yоu", "violence", "I will ****** ***"),
]

ORDINARY_TEXTS = [
    "iPhone15 Pro 有货吗?",
    "订单123456什么时候到",
    "我有1个问题",
    "买了3个垃圾袋",
    "垃1圾袋",  # the allowlist also holds across inserted digits
    "I forgot my password",
    "mp3 player, a4 paper, b2b, COVID19, win10 x86",
    "Где мой заказ? Он уже отправлен.",
    "Спасибо, всё хорошо, а у вас?",
    "Πού είναι η παραγγελία μου;",
    "ΚΑΛΗΜΕΡΑ, ευχαριστώ πολύ",
    "价格是99.9元, 满99减20, $12.99",
    "2024年5月3日下单的, 2024-05-03, 3/15/2024",
    "The class 1 assistant was shipped yesterday",
    "the ΜΑSS of a bass",  # Greek capitals read as Latin still need word boundaries
    "Scunthorpe",
]


@pytest.mark.parametrize(("text", "category", "masked"), DIGIT_AND_LOOKALIKE_DODGES)
def test_inserted_digits_and_lookalikes_are_caught(words: WordFilter, text: str, category: str, masked: str) -> None:
    verdict = words.check(text)
    assert category in verdict.categories
    assert verdict.text == masked  # the mask covers the original characters, inserted digits included
    assert verdict.blocked == (POLICIES[category] == "block")


@pytest.mark.parametrize("text", ORDINARY_TEXTS)
def test_ordinary_text_with_digits_and_other_scripts_passes(words: WordFilter, text: str) -> None:
    verdict = words.check(text)
    assert verdict.text == text and not verdict.categories and not verdict.blocked


def test_lookalikes_fold_only_in_latin_context() -> None:
    f = WordFilter([("mope", "abuse"), ("ayc", "abuse"), ("хер", "abuse"), ("ass", "abuse")], [], POLICIES)
    assert not f.check("Мы едем на море").categories  # a real Russian word: м is no look-alike
    assert f.check("mоpe").text == "****"  # Latin m, p, e around a Cyrillic о
    assert not f.check("а у с ним").categories  # Russian one-letter words do not spell "ayc"
    assert f.check("херня").text == "***ня"  # a Cyrillic entry made of look-alikes still matches as it is
    assert not f.check("b2a3s4s").categories  # digits skipped inside a word, but "ass" is not the whole word
    assert not f.check("mass").categories and not f.check("mаѕѕ").categories
