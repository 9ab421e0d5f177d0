"""The promotion gate on hand-made eval rows: paired wins and losses, bootstrap intervals, the latency
percentile it may judge, its refusal to decide on too few rows, and decisions that replay exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu

from bot.models.registry import Registry
from tests.test_tuning import tuning_cli
from tuning.evaluate import Row, bleu_stats, corpus_bleu4, is_correct
from tuning.gate import Gate, TooFewRows, replay, write_report

GATE = Gate(max_accuracy_drop=0.02, max_bleu_drop=0.02, max_p99_s=1.5, min_eval_rows=30)
REFERENCES = [f"订单{i}号已发货,物流单号会以短信发给您,也可在'我的订单'查看" for i in range(40)]
WRONG = "请联系人工客服处理您的问题"


def scored(predictions: list[str], latencies: list[float] | None = None) -> list[Row]:
    """Rows as tuning/evaluate.py scores them, answering REFERENCES (over again, past 40) with `predictions`."""
    latencies = latencies or [0.1] * len(predictions)
    references = [REFERENCES[i % len(REFERENCES)] for i in range(len(predictions))]
    stats = bleu_stats(predictions, references)
    return [Row(is_correct(p, r), s, t) for p, r, s, t in zip(predictions, references, stats, latencies, strict=True)]


def test_row_counts_give_sacrebleus_corpus_bleu_on_any_subset() -> None:
    predictions = ["订单0号已发货", WRONG, *REFERENCES[2:5], "物流单号会以短信发给您"]
    rows = scored(predictions)
    for picked in ([0, 1, 2, 3, 4, 5], [0, 0, 1, 5], [5]):  # a resample may draw a row twice
        summed = [sum(column) for column in zip(*(rows[i].bleu_stats for i in picked), strict=True)]
        expected = sacrebleu.corpus_bleu(
            [predictions[i] for i in picked], [[REFERENCES[i] for i in picked]], tokenize="zh"
        )
        assert corpus_bleu4(summed) == pytest.approx(expected.score / 100)


def test_a_candidate_worse_on_enough_rows_is_refused_with_its_interval() -> None:
    production = scored(REFERENCES)
    candidate = scored([WRONG if i % 7 == 0 else r for i, r in enumerate(REFERENCES)])  # 6 of 40 rows lost
    report = GATE.decide(candidate, production)
    accuracy = report["accuracy"]
    assert (accuracy["wins"], accuracy["losses"], accuracy["ties"]) == (0, 6, 34)
    assert accuracy["difference"] == pytest.approx(-0.15)
    low, high = accuracy["ci"]
    assert low < -0.02 and high < 0 and report["bleu4"]["ci"][0] < -0.02
    assert not report["passed"]
    assert report["reasons"][0] == (
        f"accuracy -0.150 vs production (0 rows won, 6 lost, 34 tied; 95% CI {low:+.3f} to {high:+.3f}): "
        "the lower bound is under -0.02"
    )
    assert report["reasons"][1].startswith("BLEU-4 -")


def test_wins_and_losses_that_cancel_out_on_few_rows_are_no_proof_of_no_drop() -> None:
    """The point estimates are production's (a plain comparison would promote), the interval is wide."""
    production = scored([WRONG if i < 3 else r for i, r in enumerate(REFERENCES)])
    candidate = scored([WRONG if 3 <= i < 6 else r for i, r in enumerate(REFERENCES)])
    report = GATE.decide(candidate, production)
    assert report["accuracy"]["difference"] == 0 and abs(report["bleu4"]["difference"]) < 0.02
    assert (report["accuracy"]["wins"], report["accuracy"]["losses"]) == (3, 3)
    assert report["accuracy"]["ci"][0] < -0.02 < 0.02 < report["accuracy"]["ci"][1]
    assert not report["passed"] and report["reasons"][0].startswith("accuracy +0.000 vs production (3 rows won, 3 lost")


def test_a_candidate_with_the_same_answers_passes() -> None:
    production = scored([WRONG if i % 5 == 0 else r for i, r in enumerate(REFERENCES)])
    candidate = scored([WRONG if i % 5 == 0 else r for i, r in enumerate(REFERENCES)], [0.2] * 40)
    report = GATE.decide(candidate, production)
    assert report["passed"] and report["reasons"] == []
    assert report["accuracy"] == {"difference": 0.0, "ci": [0.0, 0.0], "wins": 0, "losses": 0, "ties": 40}
    assert report["bleu4"] == {"difference": 0.0, "ci": [0.0, 0.0]}


def test_without_a_production_version_only_latency_is_judged() -> None:
    report = GATE.decide(scored([WRONG] * 40), None)
    assert report["passed"] and "accuracy" not in report and "bleu4" not in report


def test_too_few_rows_are_refused() -> None:
    rows = scored(REFERENCES[:29])
    with pytest.raises(TooFewRows, match=r"^29 eval rows: the gate needs at least 30 \(min_eval_rows"):
        GATE.decide(rows, rows)
    with pytest.raises(ValueError, match="not paired: 40 candidate rows, 39 production rows"):
        GATE.decide(scored(REFERENCES), scored(REFERENCES[:39]))


def test_under_100_answers_p99_is_not_measured_and_p90_is_judged() -> None:
    slow_tail = [0.1] * 36 + [9.0] * 4  # p99 would be 9 s; p90 is 0.1 s
    report = GATE.decide(scored(REFERENCES, slow_tail), None)
    assert report["latency"] == {"label": "p90", "seconds": 0.1, "answers": 40, "note": "p99 not measured (40 answers)"}
    assert report["passed"]
    slower = GATE.decide(scored(REFERENCES, [0.1] * 34 + [9.0] * 6), None)  # now p90 is over the limit too
    assert slower["reasons"] == ["p99 not measured (40 answers): P90 latency 9.000s is over 1.5s"]

    measured = GATE.decide(scored((REFERENCES * 3)[:100], [0.1] * 98 + [9.0] * 2), None)
    assert measured["latency"] == {"label": "p99", "seconds": 9.0, "answers": 100, "note": None}
    assert measured["reasons"] == ["P99 latency 9.000s is over 1.5s"]


def test_the_same_rows_give_the_same_decision_and_the_stored_report_replays_it(tmp_path: Path) -> None:
    production = scored([WRONG if i % 9 == 0 else r for i, r in enumerate(REFERENCES)])
    candidate = scored([r[: 8 + i % 19] for i, r in enumerate(REFERENCES)])  # partial answers: BLEU varies by row
    report = GATE.decide(candidate, production)
    assert GATE.decide(candidate, production) == report  # seeded: unseeded intervals would differ run to run
    assert report["gate"] | {"resamples": 1000, "seed": 0} == report["gate"]
    write_report(tmp_path, report, candidate, production)
    assert replay(tmp_path / "gate.json") == json.loads(json.dumps(report))


def test_a_run_with_too_few_eval_rows_refuses_before_training(data_dir: Path) -> None:
    result = tuning_cli(data_dir, "run", "--force", "--min-eval-rows", "1000")
    assert result.returncode == 3, result.stderr
    assert "error: 92 eval rows: the gate needs at least 1000 (min_eval_rows" in result.stderr
    assert Registry(data_dir).versions() == ["v0001"] and not list(Registry(data_dir).root.glob("*.partial"))


def test_the_taught_view_is_judged_apart_once_it_has_enough_rows(tmp_path: Path) -> None:
    frozen = scored(REFERENCES)
    taught_production = scored(REFERENCES[:20])
    taught_worse = scored([WRONG if i % 4 == 0 else r for i, r in enumerate(REFERENCES[:20])])  # 5 of 20 lost
    report = GATE.decide(frozen, frozen, taught_worse, taught_production)
    assert report["rows"] == 40 and report["latency"]["answers"] == 60
    assert report["taught"]["rows"] == 20 and report["taught"]["judged"]
    assert (report["taught"]["accuracy"]["wins"], report["taught"]["accuracy"]["losses"]) == (0, 5)
    assert report["reasons"][0].startswith("taught view: accuracy -0.250 vs production (0 rows won, 5 lost")
    assert not report["passed"]
    # Under min_taught_rows: reported with its differences, not judged.
    few = GATE.decide(frozen, frozen, taught_worse[:10], taught_production[:10])
    assert few["passed"] and not few["taught"]["judged"] and few["taught"]["accuracy"]["losses"] == 3
    assert few["taught"]["note"] == "not judged: 10 rows, under min_taught_rows (20)"
    # Stored with its rows, it replays.
    write_report(tmp_path, report, frozen, frozen, taught_worse, taught_production)
    assert replay(tmp_path / "gate.json") == json.loads(json.dumps(report))


def test_a_report_stored_before_the_taught_view_replays(tmp_path: Path) -> None:
    production = scored([WRONG if i % 9 == 0 else r for i, r in enumerate(REFERENCES)])
    candidate = scored([r[: 8 + i % 19] for i, r in enumerate(REFERENCES)])
    report = GATE.decide(candidate, production)
    write_report(tmp_path, report, candidate, production)
    stored = json.loads((tmp_path / "gate.json").read_text())
    del stored["taught"], stored["taught_production"], stored["report"]["gate"]["min_taught_rows"]
    (tmp_path / "gate.json").write_text(json.dumps(stored))  # as the earlier gate.json files are
    assert replay(tmp_path / "gate.json")["reasons"] == report["reasons"]
    assert "taught" not in replay(tmp_path / "gate.json")
