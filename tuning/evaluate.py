"""Evaluate stage: answer every example through the ONNX runtime the bot serves with, and score.

- accuracy: share of answers that match the reference after normalisation, or whose token-level
  F1 with it is at least ACCURACY_F1 (tokens: single CJK characters, Latin words, numbers);
- BLEU-4 (sacrebleu, 0-1 scale; tokenize="zh" when references hold Chinese, "13a" otherwise);
- ROUGE-L F1 over the same tokens; latency p50/p99 of whole answers.

Each row's result is kept too (`Row`): the promotion gate (tuning/gate.py) compares two models row by row.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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


def evaluate(model: ChatModel, chats: list[Chat], system_prompt: str, limit: int | None = None) -> Evaluation:
    """The metrics, some samples and every row's result."""
    chats = chats[:limit] if limit else chats
    if not chats:
        raise ValueError("nothing to evaluate: the data has no examples")
    predictions, references, latencies = [], [], []
    for chat in chats:
        prompt = with_system(system_prompt, chat[:-1])
        began = time.perf_counter()
        predictions.append(model.generate(prompt))
        latencies.append(time.perf_counter() - began)
        references.append(chat[-1]["content"])
    correct = list(map(is_correct, predictions, references))
    stats = bleu_stats(predictions, references)
    metrics = Metrics(
        examples=len(chats),
        accuracy=sum(correct) / len(chats),
        bleu4=corpus_bleu4([sum(column) for column in zip(*stats, strict=True)]),
        rouge_l=statistics.fmean(map(rouge_l, predictions, references)),
        latency_p50_s=percentile(latencies, 0.50),
        latency_p99_s=percentile(latencies, 0.99),
    )
    samples = [
        {"question": c[-2]["content"] if len(c) > 1 else "", "reference": r, "answer": p}
        for c, r, p in list(zip(chats, references, predictions, strict=True))[:5]
    ]
    rows = [Row(*row) for row in zip(correct, stats, latencies, strict=True)]
    return Evaluation(metrics, samples, rows)


def report(version: str, evaluation: Evaluation) -> dict[str, Any]:
    """The JSON `tuning eval` prints and a manifest's `metrics` hold."""
    return {"model_version": version, **asdict(evaluation.metrics), "samples": evaluation.samples}


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a share; honest for the small counts an A/B test starts with."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    spread = z * ((p * (1 - p) / total + z * z / (4 * total * total)) ** 0.5) / (1 + z * z / total)
    return max(0.0, centre - spread), min(1.0, centre + spread)


def ab_report(turns: list[Any], ratings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant (and model version): turns, ratings, 👍 share with its interval, latency."""
    by_turn: dict[int, list[int]] = {}
    for r in ratings:
        by_turn.setdefault(r["turn_id"], []).append(r["rating"])
    report: dict[str, dict[str, Any]] = {}
    for variant in sorted({t.variant for t in turns if t.outcome == "answered"}):  # agents' answers are no variant
        mine = [t for t in turns if t.variant == variant and t.outcome == "answered"]
        votes = [v for t in mine for v in by_turn.get(t.id, [])]
        ups = sum(1 for v in votes if v > 0)
        low, high = wilson_interval(ups, len(votes))
        latencies = [t.latency_ms / 1000 for t in mine]
        report[variant] = {
            "model_versions": sorted({t.model_version for t in mine}),
            "turns": len(mine),
            "ratings": len(votes),
            "thumbs_up": ups,
            "thumbs_up_share": ups / len(votes) if votes else None,
            "thumbs_up_ci95": [low, high],
            "latency_p50_s": percentile(latencies, 0.5) if latencies else None,
            "latency_p99_s": percentile(latencies, 0.99) if latencies else None,
        }
    return report
