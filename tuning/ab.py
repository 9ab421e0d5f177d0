"""`tuning ab-report`: does the candidate an A/B test serves do better than production, by its ratings?

- only answers given since the test started count (`State.ab_started_at`, or `--since`);
- agents' and customers' ratings are reported apart (agents judge answers, customers their experience);
- the unit is the user, which is what the test assigns to a variant (sticky per user): each user's share
  of 👍 among the ratings of the answers they got, so a user with ten ratings weighs as much as one with one;
- the difference candidate − current has a bootstrap interval that resamples users within each variant;
- `Rule` turns the intervals into promote, stop or keep testing, and the report states it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from bot.store import StoredTurn
from tuning.evaluate import percentile

VARIANTS = ("current", "candidate")
ROLES = ("agent", "customer")  # an admin's rating is stored as an agent's
PROMOTE, STOP, KEEP_TESTING = "promote", "stop", "keep testing"


@dataclass(frozen=True)
class Rule:
    """When the report says promote, stop or keep testing."""

    # Users per variant with ratings by a role before that role's interval counts: a bootstrap over a handful
    # of users is far narrower than the truth.
    min_users: int = 30
    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95

    def text(self) -> str:
        interval = f"{self.confidence:.0%} interval of candidate − current (mean per-user 👍 share)"
        return (
            f"each role's {interval} counts once {self.min_users}+ users per variant have that role's ratings: "
            "stop if agents' or customers' interval is below 0; else promote if agents' is above 0; "
            "else keep testing"
        )

    def decide(self, agents: dict[str, Any], customers: dict[str, Any]) -> tuple[str, str]:
        """The outcome and why, from the agents' and customers' differences (see `difference`)."""
        if self._enough(customers) and customers["ci"][1] < 0:
            return STOP, "customers rate the candidate worse"
        if not self._enough(agents):
            return KEEP_TESTING, f"fewer than {self.min_users} users per variant rated by agents"
        agents_low, agents_high = agents["ci"]
        if agents_high < 0:
            return STOP, "agents rate the candidate worse"
        if agents_low > 0:
            return PROMOTE, "agents rate the candidate better"
        return KEEP_TESTING, "agents' interval includes 0"

    def _enough(self, difference: dict[str, Any]) -> bool:
        return min(difference["users"].values()) >= self.min_users

    def difference(self, current: list[float], candidate: list[float]) -> dict[str, Any]:
        """Candidate's mean minus current's, with a bootstrap interval resampling users in each variant."""
        users = {"current": len(current), "candidate": len(candidate)}
        if not current or not candidate:
            return {"candidate_minus_current": None, "ci": None, "users": users}
        rng = np.random.default_rng(self.seed)

        def means(values: list[float]) -> np.ndarray:
            shares = np.array(values)
            return np.array([rng.choice(shares, len(shares)).mean() for _ in range(self.resamples)])

        tail = (1 - self.confidence) / 2
        low, high = np.quantile(means(candidate) - means(current), [tail, 1 - tail])
        point = float(np.mean(candidate) - np.mean(current))
        return {"candidate_minus_current": point, "ci": [float(low), float(high)], "users": users}


def since_time(text: str) -> datetime:
    """An ISO time; without a zone, UTC (as the store writes them)."""
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def ab_report(
    turns: list[StoredTurn], ratings: list[dict[str, Any]], since: datetime, rule: Rule = Rule()
) -> dict[str, Any]:
    """Per variant: its versions, turns, latency and, per rater role, ratings, users and mean per-user 👍
    share; the differences with their intervals, and the rule's decision."""
    tested = {
        t.id: t
        for t in turns
        if t.outcome == "answered" and t.variant in VARIANTS and since_time(t.created_at) >= since
    }
    # variant -> role -> user -> that user's ratings (users per channel: ids are the channel's own)
    votes: dict[str, dict[str, dict[tuple[str, str], list[int]]]] = {
        v: {role: defaultdict(list) for role in ROLES} for v in VARIANTS
    }
    for r in ratings:
        turn = tested.get(r["turn_id"])
        if turn is not None and r["role"] in ROLES:
            votes[turn.variant][r["role"]][turn.channel, turn.user_id].append(r["rating"])
    shares = {
        v: {role: [sum(x > 0 for x in mine) / len(mine) for mine in users.values()] for role, users in roles.items()}
        for v, roles in votes.items()
    }
    variants = {}
    for v in VARIANTS:
        mine = [t for t in tested.values() if t.variant == v]
        latencies = [t.latency_ms / 1000 for t in mine]
        variants[v] = {
            "model_versions": sorted({t.model_version for t in mine}),
            "turns": len(mine),
            "latency_p50_s": percentile(latencies, 0.5) if latencies else None,
            "latency_p99_s": percentile(latencies, 0.99) if latencies else None,
        } | {
            role: {
                "ratings": sum(map(len, votes[v][role].values())),
                "users": len(shares[v][role]),
                "thumbs_up_share": float(np.mean(shares[v][role])) if shares[v][role] else None,
            }
            for role in ROLES
        }
    differences = {role: rule.difference(shares["current"][role], shares["candidate"][role]) for role in ROLES}
    outcome, reason = rule.decide(differences["agent"], differences["customer"])
    return {
        "since": since.isoformat(),
        "variants": variants,
        "difference": differences,
        "decision": {"outcome": outcome, "reason": reason, "rule": rule.text(), **asdict(rule)},
    }
