from pathlib import Path

import pytest

from bot.app import DEFAULT_ALLOWLIST, DEFAULT_LEXICON
from bot.wordfilter import WordFilter, load_allowlist, load_lexicon

POLICIES = {"abuse": "mask", "fraud": "block", "violence": "block", "default": "mask"}


@pytest.fixture(scope="module")
def words() -> WordFilter:
    return WordFilter(load_lexicon(DEFAULT_LEXICON), load_allowlist(DEFAULT_ALLOWLIST), POLICIES)


@pytest.mark.parametrize("text", [
    "I forgot my password", "Please check the document I sent", "Where is my passport photo?",
    "The class assistant was shipped yesterday", "Can you assess the damage?", "我想买一个垃圾袋",
])
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
