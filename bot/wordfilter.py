"""Sensitive-word filter: Aho-Corasick (pyahocorasick) over a normalised view of the text.

The view folds width and case (NFKC + casefold) and drops spaces, punctuation and zero-width
characters, so "傻 逼", "ＳＴＵＰＩＤ" and "s.t.u.p.i.d" are caught. Latin-script words must also stand
on word boundaries in the original text: plain substring matching flags "ass" in "password".

Two more dodges are folded away:

* Look-alike letters: Cyrillic and Greek letters that look like Latin ones (`_CONFUSABLES`) are read
  as those Latin letters, so "ѕtupid" (Cyrillic ѕ) and "stupіd" (Cyrillic і) match "stupid". Only
  inside a word (a run of letters) that also holds real Latin letters, or that is made of look-alikes
  only; real Russian or Greek words ("Где мой заказ") are left as they are. A lone look-alike letter
  ("ѕ t u p i d") is folded only next to a word with real Latin letters: the Russian one-letter words
  "а", "о", "с", "у" must not spell Latin words.
* Inserted digits: a run of at most `_MAX_INSERTED_DIGITS` digits (circled ①, parenthesised ⑴ and
  dotted ⒈ digits fold to plain ones) between two letters is also skipped, in a second pass, so
  "傻1逼" and "傻①逼" match 傻逼. That pass only reports a match that crosses such a run, of an entry
  without digits of its own; a Latin entry must then still stand alone, as a whole word ("s1tupid")
  or spelled out letter by letter ("s1t2u3p4i5d"), so "mp3 player" and "iPhone15 Pro" stay clean,
  and long numbers ("订单123456") are never skipped.

The mask always covers the original characters of a match, inserted digits and look-alikes included.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import ahocorasick

MASK_CHAR = "*"

# Letters that look like a Latin letter, keyed by the original character (before case folding: some
# capitals look Latin while their small letters do not, e.g. Cyrillic В/в, Greek Ν/ν, Υ/υ).
_CONFUSABLES: dict[str, str] = {
    # Cyrillic, both cases
    **dict.fromkeys("Аа", "a"),
    **dict.fromkeys("Ее", "e"),
    **dict.fromkeys("Оо", "o"),
    **dict.fromkeys("Рр", "p"),
    **dict.fromkeys("Сс", "c"),
    **dict.fromkeys("Уу", "y"),
    **dict.fromkeys("Хх", "x"),
    **dict.fromkeys("Іі", "i"),
    **dict.fromkeys("Јј", "j"),
    **dict.fromkeys("Ѕѕ", "s"),
    **dict.fromkeys("Ԁԁ", "d"),
    **dict.fromkeys("Ԛԛ", "q"),
    **dict.fromkeys("Ԝԝ", "w"),
    **dict.fromkeys("Һһ", "h"),
    **dict.fromkeys("Үү", "y"),
    # Cyrillic capitals only (в н к м т are small capitals, not Latin look-alikes)
    "В": "b",
    "Н": "h",
    "К": "k",
    "М": "m",
    "Т": "t",
    # Greek, both cases
    **dict.fromkeys("Οο", "o"),
    **dict.fromkeys("Αα", "a"),
    **dict.fromkeys("Εε", "e"),
    **dict.fromkeys("Ιι", "i"),
    **dict.fromkeys("Κκ", "k"),
    **dict.fromkeys("Ρρ", "p"),
    **dict.fromkeys("Ττ", "t"),
    **dict.fromkeys("Χχ", "x"),
    **dict.fromkeys("Ϲϲ", "c"),
    "ϳ": "j",
    # Greek, where the capital and the small letter look like different Latin letters
    "Ν": "n",
    "ν": "v",
    "Υ": "y",
    "υ": "u",
    # Greek capitals only
    "Β": "b",
    "Ζ": "z",
    "Η": "h",
    "Μ": "m",
}
_MAX_INSERTED_DIGITS = 3
# In the view (letters and digits only): a short digit run with a non-digit on either side.
_INSERTED_DIGITS = re.compile(rf"(?<=\D)\d{{1,{_MAX_INSERTED_DIGITS}}}(?=\D)")
_WORDS = re.compile(r"[^\W\d_]+")  # runs of letters


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


def _fold(ch: str) -> str:
    """One character as it reads in the view: NFKC + casefold, letters and digits only ("" for spaces,
    punctuation, zero-width characters); numeric symbols NFKC leaves alone (❶, ➀) become digits."""
    folded = unicodedata.normalize("NFKC", ch).casefold()
    if len(folded) == 1 and unicodedata.category(folded) == "No":  # not 〇 or Ⅻ (Nl), nor 一 (Lo)
        value = unicodedata.numeric(folded)
        return str(int(value)) if value == int(value) else folded
    return "".join(c for c in folded if c.isalnum())


class _Table(dict[int, "str | None"]):
    """`str.translate` table filled in on first sight, so that a text is folded by one C-level
    `translate`. Bounded: cleared when it holds too many characters."""

    def __init__(self, value: Callable[[str], str | None]) -> None:
        super().__init__()
        self._value = value

    def __missing__(self, code: int) -> str | None:
        if len(self) >= 65536:
            self.clear()
        value = self[code] = self._value(chr(code))
        return value


_FOLD = _Table(lambda ch: _fold(ch) or None)  # each character as it reads in the view
_SIZE = _Table(lambda ch: chr(len(_fold(ch))))  # how many characters of the view it makes, as chr(n)
_LOOKALIKE = re.compile("[" + "".join(_CONFUSABLES) + "]")
_DIGIT = re.compile(r"\d")


def _folded(ch: str) -> str:
    return _FOLD[ord(ch)] or ""


@functools.lru_cache(maxsize=4096)
def _is_latin_letter(ch: str) -> bool:
    """A real Latin letter, whatever its width or accents (not a look-alike from another script)."""
    base = unicodedata.normalize("NFKD", ch)[:1].casefold()
    return ch.isalpha() and ch not in _CONFUSABLES and "a" <= base <= "z"


def _lookalikes_to_fold(text: str) -> frozenset[int]:
    """Indices of the look-alike letters in `text` that are read as Latin letters (see the module doc)."""
    if not _LOOKALIKE.search(text):
        return frozenset()
    runs = [(m.start(), m.group()) for m in _WORDS.finditer(text)]
    latin = [any(_is_latin_letter(ch) for ch in word) for _, word in runs]
    fold: set[int] = set()
    for n, (start, word) in enumerate(runs):
        lookalikes = [start + i for i, ch in enumerate(word) if ch in _CONFUSABLES]
        if not lookalikes:
            continue
        if latin[n] or (
            len(lookalikes) == len(word)
            and (len(word) > 1 or (n > 0 and latin[n - 1]) or (n + 1 < len(runs) and latin[n + 1]))
        ):
            fold.update(lookalikes)
    return frozenset(fold)


def _normalise(text: str) -> tuple[str, frozenset[int]]:
    """The compact matching view of `text`, and the indices of the look-alike letters read as Latin ones."""
    lookalikes = _lookalikes_to_fold(text)
    if not lookalikes:
        return text.translate(_FOLD), lookalikes
    return "".join(_CONFUSABLES[ch] if i in lookalikes else _folded(ch) for i, ch in enumerate(text)), lookalikes


def _view_ends(text: str) -> list[int]:
    """For each character of `text`, the length of the view up to and including it: the character at
    view index v came from text[bisect_right(ends, v)]. (A look-alike read as Latin makes one
    character of the view, as its case fold does.)"""
    return list(accumulate(text.translate(_SIZE).encode("latin-1")))


def _without_inserted_digits(view: str) -> tuple[str, list[int]] | None:
    """`view` without its short digit runs between letters ("傻1逼" -> "傻逼"), and for each character
    kept its index in `view`; None when there is no such run."""
    if not _DIGIT.search(view):
        return None
    runs = [m.span() for m in _INSERTED_DIGITS.finditer(view)]
    if not runs:
        return None
    pieces: list[str] = []
    kept: list[int] = []
    pos = 0
    for start, end in runs:
        pieces.append(view[pos:start])
        kept.extend(range(pos, start))
        pos = end
    pieces.append(view[pos:])
    kept.extend(range(pos, len(view)))
    return "".join(pieces), kept


def _keys(word: str) -> set[str]:
    """The automaton keys of a lexicon entry: its view, and where look-alikes were read as Latin letters
    (a Cyrillic entry made of them only, "хер") its view without that too, for texts where they are not
    ("херня")."""
    return {key for key in (_normalise(word)[0], word.translate(_FOLD)) if key}


def _is_latin(word: str) -> bool:
    return all(ch.isascii() for ch in word)


def _inside(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    return any(a <= start and end <= b for a, b in spans)


class WordFilter:
    def __init__(self, entries: list[tuple[str, str]], allow: list[str], policies: dict[str, str]) -> None:
        self._policies = policies
        self._words = ahocorasick.Automaton()
        for word, category in entries:
            for key in _keys(word):
                has_digits = any(ch.isdigit() for ch in key)
                self._words.add_word(key, (len(key), category, _is_latin(key), len(word.split()), has_digits))
        self._allow = ahocorasick.Automaton()
        for word in allow:
            for key in _keys(word):
                self._allow.add_word(key, len(key))
        for automaton in (self._words, self._allow):
            if len(automaton):
                automaton.make_automaton()

    def policy(self, category: str) -> str:
        return self._policies.get(category, self._policies.get("default", "mask"))

    def agent_answer(self, text: str, what: str) -> str:
        """An agent's text that the next model learns as an answer (a correction, a hand-off reply), filtered
        as the bot's own answers are: masked words masked; ValueError naming the categories of a blocked one."""
        verdict = self.check(text)
        if verdict.blocked:
            raise ValueError(f"the {what} has words the shop blocks ({', '.join(sorted(verdict.categories))})")
        return verdict.text

    def check(self, text: str) -> Verdict:
        view, lookalikes = _normalise(text)
        if not view or not len(self._words):
            return Verdict(text)
        allowed = self._allowed_spans(view)
        # (start, end) in the view, category, Latin entry, its word count, whether it skipped digits
        found: list[tuple[int, int, str, bool, int, bool]] = []
        for end, (length, category, latin, word_count, _) in self._words.iter(view):
            start = end - length + 1
            if not _inside(allowed, start, end):
                found.append((start, end, category, latin, word_count, False))
        squeezed = _without_inserted_digits(view)
        if squeezed is not None:  # second pass: matches across inserted digits ("傻1逼")
            short, kept = squeezed
            allowed_short = self._allowed_spans(short)
            for end, (length, category, latin, word_count, has_digits) in self._words.iter(short):
                start = end - length + 1
                a, b = kept[start], kept[end]
                if has_digits or b - a == end - start:  # crosses no skipped digits: the first pass saw it
                    continue
                if not _inside(allowed_short, start, end) and not _inside(allowed, a, b):
                    found.append((a, b, category, latin, word_count, True))
        if not found:
            return Verdict(text)
        ends = _view_ends(text)
        hits: list[tuple[int, int, str]] = []
        for start, end, category, latin, word_count, skipped in found:
            first, last = bisect_right(ends, start), bisect_right(ends, end)
            if latin and not _stands_alone(text, first, last, word_count, lookalikes, skipped):
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


def _stands_alone(
    text: str, first: int, last: int, word_count: int, lookalikes: Collection[int], digits_inside: bool = False
) -> bool:
    """A Latin match must start and end on word boundaries, and span as many words as the entry
    ("kill you") or be spelled out letter by letter ("s t u p i d"): "was shipped" is not "ass".
    With `digits_inside` (the match skipped inserted digits) digits at its ends belong to it as well:
    "1s2t3u4p5i6d7" stands alone, "b2a3s4s" does not."""
    before, after = first - 1, last + 1
    if digits_inside:
        while before >= 0 and _folded(text[before]).isdigit():
            before -= 1
        while after < len(text) and _folded(text[after]).isdigit():
            after += 1
    if before >= 0 and _is_latin_alnum(text, before, lookalikes):
        return False
    if after < len(text) and _is_latin_alnum(text, after, lookalikes):
        return False
    pieces = text[first : last + 1].split()
    return len(pieces) == word_count or all(len(p) == 1 for p in pieces)


def _is_latin_alnum(text: str, index: int, lookalikes: Collection[int]) -> bool:
    """Whether text[index] continues a Latin word: an ASCII letter or digit (also in full width) or a
    look-alike letter read as Latin."""
    folded = _folded(text[index])
    return index in lookalikes or (bool(folded) and folded.isascii())
