"""Evaluate stage: answer every example through the ONNX runtime the bot serves with, and score.

- accuracy: share of answers that match the reference after normalisation, or whose token-level
  F1 with it is at least ACCURACY_F1 (tokens: single CJK characters, Latin words, numbers);
- BLEU-4 (sacrebleu, 0-1 scale; tokenize="zh" when references hold Chinese, "13a" otherwise);
- ROUGE-L F1 over the same tokens; latency p50/p99 of whole answers.

Each row's result is kept too (`Row`): the promotion gate (tuning/gate.py) compares two models row by row.
An eval set has views (tuning/split.py: unseen phrasings, unseen questions): each is scored on its own,
and the combined scores are those of all their rows together.
"""

from __future__ import annotations

import copy
import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from sacrebleu.metrics import BLEU

from bot.cache import normalise_question
from bot.models.chat import Chat, with_system
from bot.models.runtime import ChatModel

ACCURACY_F1 = 0.8
TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)
CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class Metrics:
    """One model's scores on an eval set (how each is computed: this module's docstring)."""

    examples: int
    accuracy: float
    bleu4: float
    rouge_l: float
    latency_p50_s: float
    latency_p99_s: float


@dataclass(frozen=True)
class Row:
    """One eval row's answer, scored."""

    correct: bool
    # sacrebleu's counts for this row (hypothesis length, reference length, n-gram matches and totals for
    # n = 1..4): summed over any set of rows they give that set's corpus BLEU-4 exactly (`corpus_bleu4`).
    bleu_stats: tuple[int, ...]
    latency_s: float


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` measured of one model on one eval set."""

    metrics: Metrics
    samples: list[dict[str, str]]  # the first five answers beside their references
    rows: list[Row]  # one per eval row, in the order of the chats


def tokens(text: str) -> list[str]:
    return TOKEN.findall(normalise_question(text))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = Counter(tokens(prediction)), Counter(tokens(reference))
    overlap = sum((pred & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(pred.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def is_correct(prediction: str, reference: str) -> bool:
    return (
        normalise_question(prediction) == normalise_question(reference)
        or token_f1(prediction, reference) >= ACCURACY_F1
    )


def rouge_l(prediction: str, reference: str) -> float:
    a, b = tokens(prediction), tokens(reference)
    if not a or not b:
        return 0.0
    row = [0] * (len(b) + 1)
    for x in a:  # longest common subsequence, one row at a time
        previous = 0
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], previous + 1 if x == y else max(row[j], row[j - 1])
    lcs = row[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def bleu_stats(predictions: list[str], references: list[str]) -> list[tuple[int, ...]]:
    """Each row's BLEU counts (see `Row.bleu_stats`), tokenised alike for the whole set."""
    # effective_order only changes sentence scores (and keeps sacrebleu from warning), not the counts
    bleu = BLEU(tokenize="zh" if any(CJK.search(r) for r in references) else "13a", effective_order=True)
    scores = (bleu.sentence_score(p, [r]) for p, r in zip(predictions, references, strict=True))
    return [(s.sys_len, s.ref_len, *s.counts, *s.totals) for s in scores]


def corpus_bleu4(stats: Sequence[int]) -> float:
    """Corpus BLEU-4 (0-1) from summed `bleu_stats`: what sacrebleu.corpus_bleu gives for those rows."""
    sys_len, ref_len, counts, totals = stats[0], stats[1], stats[2:6], stats[6:10]
    score = BLEU.compute_bleu(list(counts), list(totals), sys_len, ref_len, smooth_method="exp").score
    return min(1.0, score / 100)  # float noise can pass 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def scoring_length(model: ChatModel, references: list[str]) -> int:
    """Tokens generated per answer when scoring: the longest reference (in the model's tokens) plus a
    quarter and 16, so an answer as long as its reference is never cut and the score is of the answer,
    not of the serving cap (BOT_MAX_NEW_TOKENS). The model's context still bounds each answer."""
    longest = max(model.count_tokens(reference) for reference in references)
    return longest + max(16, longest // 4)


def _scoring_model(model: ChatModel, references: list[str]) -> ChatModel:
    """`model` generating up to `scoring_length`: the same weights and decoder, so the caller's model
    keeps the length it serves with. A wrapper that is not a ChatModel (bench/quality_bench.py's
    Recording) generates as it was built to."""
    if not isinstance(model, ChatModel):
        return model
    scorer = copy.copy(model)
    scorer.settings = replace(model.settings, max_new_tokens=scoring_length(model, references))
    return scorer


def evaluate(model: ChatModel, chats: list[Chat], system_prompt: str, limit: int | None = None) -> Evaluation:
    """The metrics, some samples and every row's result. Answers are generated up to `scoring_length`
    of these references, whatever length `model` serves with."""
    chats = chats[:limit] if limit else chats
    if not chats:
        raise ValueError("nothing to evaluate: the data has no examples")
    references = [chat[-1]["content"] for chat in chats]
    scorer = _scoring_model(model, references)
    predictions, latencies = [], []
    for chat in chats:
        prompt = with_system(system_prompt, chat[:-1])
        began = time.perf_counter()
        predictions.append(scorer.generate(prompt))
        latencies.append(time.perf_counter() - began)
    correct = list(map(is_correct, predictions, references))
    rows = [Row(*row) for row in zip(correct, bleu_stats(predictions, references), latencies, strict=True)]
    samples = [
        {"question": c[-2]["content"] if len(c) > 1 else "", "reference": r, "answer": p}
        for c, r, p in list(zip(chats, references, predictions, strict=True))[:5]
    ]
    return Evaluation(_metrics(rows, statistics.fmean(map(rouge_l, predictions, references))), samples, rows)


def _metrics(rows: list[Row], rouge_l: float) -> Metrics:
    """The scores of these rows (ROUGE-L, which rows do not keep, given as their mean)."""
    latencies = [row.latency_s for row in rows]
    return Metrics(
        examples=len(rows),
        accuracy=sum(row.correct for row in rows) / len(rows),
        bleu4=corpus_bleu4([sum(column) for column in zip(*(row.bleu_stats for row in rows), strict=True)]),
        rouge_l=rouge_l,
        latency_p50_s=percentile(latencies, 0.50),
        latency_p99_s=percentile(latencies, 0.99),
    )


def evaluate_views(
    model: ChatModel, views: dict[str, list[Chat]], system_prompt: str
) -> tuple[Evaluation, dict[str, Evaluation]]:
    """Each view's evaluation and the combined one (its rows: the views' rows, in the order given)."""
    by_view = {name: evaluate(model, chats, system_prompt) for name, chats in views.items() if chats}
    if not by_view:
        raise ValueError("nothing to evaluate: the data has no examples")
    return combine(list(by_view.values())), by_view


def combine(parts: list[Evaluation]) -> Evaluation:
    """One evaluation of all the parts' rows (each row scored as in its part)."""
    rows = [row for part in parts for row in part.rows]
    metrics = _metrics(rows, sum(part.metrics.rouge_l * part.metrics.examples for part in parts) / len(rows))
    return Evaluation(metrics, [sample for part in parts for sample in part.samples][:5], rows)


def report(version: str, evaluation: Evaluation, views: dict[str, Evaluation] | None = None) -> dict[str, Any]:
    """The JSON `tuning eval` prints and a manifest's `metrics` hold: the combined scores, and each view's."""
    by_view = {name: asdict(part.metrics) for name, part in (views or {}).items()}
    return {"model_version": version, **asdict(evaluation.metrics), "views": by_view, "samples": evaluation.samples}
