"""The promotion gate: a candidate against production on the same eval rows, and the reasons to keep it back.

Paired: both models answer the same rows in the same order, so each row is a win, a loss or a tie, and
the uncertainty of the accuracy and BLEU-4 differences comes from resampling rows (a bootstrap with a
fixed seed). A candidate passes only if the interval's lower bound is not below -max drop: "no worse
than production by more than the allowed drop", shown on these rows, not just a point estimate that
happens to look fine. The report, with both models' per-row results, is stored as the version's
gate.json; `replay` decides again from it and gets the same answer.

The rows are the frozen views' (tuning/split.py: unseen phrasings and questions, at least min_eval_rows).
The taught view (held-out agents' answers) is compared the same way, apart: with at least
min_taught_rows rows its drops are reasons too ("taught view: ..."); with fewer it is reported, not
judged, as a handful of rows cannot tell a drop from noise. Latency is judged on every answer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuning.config import TuneConfig
from tuning.evaluate import Row, corpus_bleu4, percentile

REPORT = "gate.json"  # in the version folder
P99_MIN_ANSWERS = 100  # under this, "p99" is just the slowest answer or two: the gate judges p90 instead


class TooFewRows(Exception):
    """Too few eval rows to tell a drop from noise: the gate will not decide."""


@dataclass(frozen=True)
class Gate:
    """How much worse than production a candidate may be and still be promoted (values: TuneConfig)."""

    max_accuracy_drop: float
    max_bleu_drop: float
    max_p99_s: float
    min_eval_rows: int
    min_taught_rows: int = 20  # absent from reports stored before the taught view: they replay as before
    # the bootstrap: fixed, and stored with each report, so a decision can be made again from it
    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95

    @classmethod
    def from_config(cls, cfg: TuneConfig) -> Gate:
        return cls(cfg.max_accuracy_drop, cfg.max_bleu_drop, cfg.max_p99_s, cfg.min_eval_rows, cfg.min_taught_rows)

    def require_rows(self, rows: int) -> None:
        """Refuse to decide on fewer than `min_eval_rows` rows (checked before training, and again here)."""
        if rows < self.min_eval_rows:
            raise TooFewRows(
                f"{rows} eval rows: the gate needs at least {self.min_eval_rows} (min_eval_rows, --min-eval-rows) "
                "to decide; add data (--data) so more rows are held out (never scoring on training rows)"
            )

    def decide(
        self,
        candidate: list[Row],
        production: list[Row] | None,
        taught: list[Row] | None = None,
        taught_production: list[Row] | None = None,
    ) -> dict[str, Any]:
        """The report: the gate's settings, the latency judged, the paired differences with their
        intervals (`taught`: the taught view's rows, apart), and the `reasons` not to promote (none:
        `passed`). No production version: latency only."""
        self.require_rows(len(candidate))
        latency = self._latency(candidate + (taught or []))
        report: dict[str, Any] = {"gate": asdict(self), "rows": len(candidate), "latency": latency}
        reasons = []
        if latency["seconds"] > self.max_p99_s:
            note = f"{latency['note']}: " if latency["note"] else ""
            reasons.append(
                f"{note}{latency['label'].upper()} latency {latency['seconds']:.3f}s is over {self.max_p99_s}s"
            )
        if production is not None:
            report |= self._compare(candidate, production)
            reasons += self._drops(report, "")
        if taught:
            view: dict[str, Any] = {"rows": len(taught), "judged": False}
            if taught_production is None:
                view["note"] = "no production version to compare with"
            else:
                view |= self._compare(taught, taught_production)
                view["judged"] = len(taught) >= self.min_taught_rows
                if view["judged"]:
                    reasons += self._drops(view, "taught view: ")
                else:
                    view["note"] = f"not judged: {len(taught)} rows, under min_taught_rows ({self.min_taught_rows})"
            report["taught"] = view
        return report | {"reasons": reasons, "passed": not reasons}

    def _drops(self, compared: dict[str, Any], prefix: str) -> list[str]:
        """Why not to promote, from `_compare`'s differences: each whose interval reaches below -max drop."""
        reasons = []
        rows = "{wins} rows won, {losses} lost, {ties} tied; ".format(**compared["accuracy"])
        for key, name, drop, detail in (
            ("accuracy", "accuracy", self.max_accuracy_drop, rows),
            ("bleu4", "BLEU-4", self.max_bleu_drop, ""),
        ):
            low, high = compared[key]["ci"]
            if low < -drop:
                reasons.append(
                    f"{prefix}{name} {compared[key]['difference']:+.3f} vs production ({detail}{self.confidence:.0%} "
                    f"CI {low:+.3f} to {high:+.3f}): the lower bound is under -{drop}"
                )
        return reasons

    def _latency(self, rows: list[Row]) -> dict[str, Any]:
        times = [r.latency_s for r in rows]
        if len(times) >= P99_MIN_ANSWERS:
            return {"label": "p99", "seconds": percentile(times, 0.99), "answers": len(times), "note": None}
        note = f"p99 not measured ({len(times)} answers)"
        return {"label": "p90", "seconds": percentile(times, 0.90), "answers": len(times), "note": note}

    def _compare(self, candidate: list[Row], production: list[Row]) -> dict[str, Any]:
        """Wins, losses and ties on accuracy, and the accuracy and BLEU-4 differences with bootstrap intervals.

        A resample is how often each row is drawn in n draws with replacement. BLEU-4 is recomputed on each
        from the summed n-gram counts of the drawn rows, which is exactly sacrebleu's corpus BLEU on them
        (no per-row approximation); 1,000 resamples of a few hundred rows take well under a second."""
        if len(production) != len(candidate):
            raise ValueError(f"not paired: {len(candidate)} candidate rows, {len(production)} production rows")
        n = len(candidate)
        correct = [np.array([r.correct for r in rows], dtype=float) for rows in (candidate, production)]
        stats = [np.array([r.bleu_stats for r in rows], dtype=np.int64) for rows in (candidate, production)]

        def accuracy(draws: np.ndarray) -> np.ndarray:
            return draws @ (correct[0] - correct[1]) / n

        def bleu4(draws: np.ndarray) -> np.ndarray:
            pairs = zip(draws @ stats[0], draws @ stats[1], strict=True)
            return np.array([corpus_bleu4(a.tolist()) - corpus_bleu4(b.tolist()) for a, b in pairs])

        every_row_once = np.ones((1, n), dtype=np.int64)
        resamples = np.random.default_rng(self.seed).multinomial(n, np.full(n, 1 / n), size=self.resamples)
        tail = (1 - self.confidence) / 2
        report = {}
        for name, difference in (("accuracy", accuracy), ("bleu4", bleu4)):
            low, high = np.quantile(difference(resamples), [tail, 1 - tail])
            report[name] = {"difference": float(difference(every_row_once)[0]), "ci": [float(low), float(high)]}
        wins, losses = int(np.sum(correct[0] > correct[1])), int(np.sum(correct[0] < correct[1]))
        report["accuracy"] |= {"wins": wins, "losses": losses, "ties": n - wins - losses}
        return report


def write_report(
    folder: Path,
    report: dict[str, Any],
    candidate: list[Row],
    production: list[Row] | None,
    taught: list[Row] | None = None,
    taught_production: list[Row] | None = None,
) -> None:
    """gate.json: the report and the per-row results it was decided on."""

    def stored(rows: list[Row] | None) -> list[dict[str, Any]] | None:
        return None if rows is None else [asdict(r) for r in rows]

    (folder / REPORT).write_text(
        json.dumps(
            {
                "report": report,
                "candidate": stored(candidate),
                "production": stored(production),
                "taught": stored(taught),
                "taught_production": stored(taught_production),
            },
            indent=1,
        )
    )


def replay(path: Path) -> dict[str, Any]:
    """The decision again, from a stored gate.json: its settings applied to its per-row results (a report
    stored before the taught view has none: `get` gives None)."""
    stored = json.loads(path.read_text())

    def rows(key: str) -> list[Row] | None:
        if stored.get(key) is None:
            return None
        return [Row(r["correct"], tuple(r["bleu_stats"]), r["latency_s"]) for r in stored[key]]

    gate = Gate(**stored["report"]["gate"])
    return gate.decide(rows("candidate") or [], rows("production"), rows("taught"), rows("taught_production"))
