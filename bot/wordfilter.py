"""Sensitive-word filter: Aho-Corasick (pyahocorasick) over a normalised view of the text.

The view folds width and case (NFKC + casefold) and drops spaces, punctuation and zero-width
characters, so "傻 逼", "ＳＴＵＰＩＤ" and "s.t.u.p.i.d" are caught. Latin-script words must also stand
on word boundaries in the original text: plain substring matching flags "ass" in "password".
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import ahocorasick

MASK_CHAR = "*"


@dataclass(frozen=True)
class Verdict:
    text: str  # the text with masked words replaced by MASK_CHAR
    categories: frozenset[str] = field(default_factory=frozenset)
    blocked: bool = False


def load_lexicon(path: Path) -> list[tuple[str, str]]:
    """`word<TAB>category` per line (category optional, default "default"); `#` starts a comment."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, category = line.partition("\t")
        entries.append((word.strip(), category.strip() or "default"))
    return entries


def load_allowlist(path: Path) -> list[str]:
    return [w for w, _ in load_lexicon(path)]


def _normalise(text: str) -> tuple[str, list[int]]:
    """The compact matching view of `text`, and for each of its characters the index it came from."""
    chars, origin = [], []
    for index, ch in enumerate(text):
        for folded in unicodedata.normalize("NFKC", ch).casefold():
            if folded.isalnum():
                chars.append(folded)
                origin.append(index)
    return "".join(chars), origin


def _is_latin(word: str) -> bool:
    return all(ch.isascii() for ch in word)


class WordFilter:
    def __init__(self, entries: list[tuple[str, str]], allow: list[str], policies: dict[str, str]) -> None:
        self._policies = policies
        self._words = ahocorasick.Automaton()
        for word, category in entries:
            key, _ = _normalise(word)
            if key:
                self._words.add_word(key, (len(key), category, _is_latin(key), len(word.split())))
        self._allow = ahocorasick.Automaton()
        for word in allow:
            key, _ = _normalise(word)
            if key:
                self._allow.add_word(key, len(key))
        for automaton in (self._words, self._allow):
            if len(automaton):
                automaton.make_automaton()

    def policy(self, category: str) -> str:
        return self._policies.get(category, self._policies.get("default", "mask"))

    def check(self, text: str) -> Verdict:
        view, origin = _normalise(text)
        if not view or not len(self._words):
            return Verdict(text)
        allowed = self._allowed_spans(view)
        hits: list[tuple[int, int, str]] = []
        for end, (length, category, latin, word_count) in self._words.iter(view):
            start = end - length + 1
            if any(a <= start and end <= b for a, b in allowed):
                continue
            first, last = origin[start], origin[end]
            if latin and not _stands_alone(text, first, last, word_count):
                continue
            hits.append((first, last, category))
        if not hits:
            return Verdict(text)
        categories = frozenset(c for _, _, c in hits)
        masked = list(text)
        for first, last, _ in hits:
            for i in range(first, last + 1):
                if masked[i].isalnum():
                    masked[i] = MASK_CHAR
        blocked = any(self.policy(c) == "block" for c in categories)
        return Verdict("".join(masked), categories, blocked)

    def _allowed_spans(self, view: str) -> list[tuple[int, int]]:
        if not len(self._allow):
            return []
        return [(end - length + 1, end) for end, length in self._allow.iter(view)]


def _stands_alone(text: str, first: int, last: int, word_count: int) -> bool:
    """A Latin match must start and end on word boundaries, and span as many words as the entry
    ("kill you") or be spelled out letter by letter ("s t u p i d"): "was shipped" is not "ass"."""
    if first > 0 and text[first - 1].isalnum() and text[first - 1].isascii():
        return False
    if last + 1 < len(text) and text[last + 1].isalnum() and text[last + 1].isascii():
        return False
    pieces = text[first : last + 1].split()
    return len(pieces) == word_count or all(len(p) == 1 for p in pieces)
