"""Evaluate stage: answer every example through the ONNX runtime the bot serves with, and score.

- accuracy: share of answers that match the reference after normalisation, or whose token-level
  F1 with it is at least ACCURACY_F1 (tokens: single CJK characters, Latin words, numbers);
- BLEU-4 (sacrebleu, 0-1 scale; tokenize="zh" when references hold Chinese, "13a" otherwise);
- ROUGE-L F1 over the same tokens; latency p50/p99 of whole answers.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import sacrebleu

from bot.cache import normalise_question
from bot.models.chat import Chat, with_system
from bot.models.runtime import ChatModel
from tuning.gate import Metrics

ACCURACY_F1 = 0.8
TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)
CJK = re.compile(r"[\u3400-\u9fff]")


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


def bleu4(predictions: list[str], references: list[str]) -> float:
    tokenize = "zh" if any(CJK.search(r) for r in references) else "13a"
    return min(
        1.0, sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score / 100
    )  # float noise can pass 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def evaluate(
    model: ChatModel, chats: list[Chat], system_prompt: str, limit: int | None = None
) -> tuple[Metrics, list[dict[str, str]]]:
    """The metrics, and the first five answers beside their references."""
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
    metrics = Metrics(
        examples=len(chats),
        accuracy=sum(map(is_correct, predictions, references)) / len(chats),
        bleu4=bleu4(predictions, references),
        rouge_l=statistics.fmean(map(rouge_l, predictions, references)),
        latency_p50_s=percentile(latencies, 0.50),
        latency_p99_s=percentile(latencies, 0.99),
    )
    samples = [
        {"question": c[-2]["content"] if len(c) > 1 else "", "reference": r, "answer": p}
        for c, r, p in list(zip(chats, references, predictions, strict=True))[:5]
    ]
    return metrics, samples


def report(version: str, metrics: Metrics, samples: list[dict[str, str]]) -> dict[str, Any]:
    """The JSON `tuning eval` prints and a manifest's `metrics` hold."""
    return {"model_version": version, **asdict(metrics), "samples": samples}


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
