"""The promotion gate: a candidate's metrics against production's, and the reasons to keep it back."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.config import TuneConfig


@dataclass(frozen=True)
class Metrics:
    """One model's scores on an eval set (see tuning/evaluate.py for how each is computed)."""

    examples: int
    accuracy: float
    bleu4: float
    rouge_l: float
    latency_p50_s: float
    latency_p99_s: float


@dataclass(frozen=True)
class Gate:
    """How much worse than production a candidate may be and still be promoted (values: TuneConfig)."""

    max_accuracy_drop: float
    max_bleu_drop: float
    max_p99_s: float

    @classmethod
    def from_config(cls, cfg: TuneConfig) -> Gate:
        return cls(cfg.max_accuracy_drop, cfg.max_bleu_drop, cfg.max_p99_s)

    def verdict(self, candidate: Metrics, current: Metrics | None) -> list[str]:
        """Why `candidate` may not replace `current` (production, None when there is none); empty: it may."""
        reasons = []
        if candidate.latency_p99_s > self.max_p99_s:
            reasons.append(f"P99 latency {candidate.latency_p99_s:.3f}s is over {self.max_p99_s}s")
        if current is not None:
            if candidate.accuracy < current.accuracy - self.max_accuracy_drop:
                reasons.append(
                    f"accuracy {candidate.accuracy:.3f} < production {current.accuracy:.3f} - {self.max_accuracy_drop}"
                )
            if candidate.bleu4 < current.bleu4 - self.max_bleu_drop:
                reasons.append(f"BLEU-4 {candidate.bleu4:.3f} < production {current.bleu4:.3f} - {self.max_bleu_drop}")
        return reasons
