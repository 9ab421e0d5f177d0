"""Batched decoding (bot/models/batching.py) on the real starter build: answers decoded together are
exactly the answers decoded alone, whoever joins or leaves the batch meanwhile; an INT4 build runs
many rows at once through its int8 twin."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from prometheus_client import REGISTRY

from bot.models import batching
from bot.models.batching import Decoder, Request, Search
from bot.models.chat import with_system
from bot.models.export import INT8_FILE, ONNX_FILE, builds, export_onnx
from bot.models.runtime import ChatModel, GenerationSettings
from tests.support import ORDER_A, ORDER_Q, SYSTEM_PROMPT

QUESTIONS = [
    ORDER_Q,
    "How do I get a refund?",
    "可以开发票吗",
    "Where is my package?",
    "退货运费谁出?",
    "How do I change my address? I moved last week and the order is not shipped yet.",
    "你们的客服电话是多少?",
    "I want a refund for order 123456",
    "怎么注册会员",
    "Can I pay with a credit card?",
]


def chat(question: str) -> list[dict[str, str]]:
    return with_system(SYSTEM_PROMPT, [{"role": "user", "content": question}])


@pytest.fixture(scope="module")
def model(starter_dir: Path) -> ChatModel:
    return ChatModel("v0001", starter_dir / "models" / "v0001" / "onnx", GenerationSettings(max_new_tokens=48))


def batches_of(size: int) -> float:
    """How many model runs so far advanced more than `size` answers at once."""
    count = REGISTRY.get_sample_value("bot_model_batch_size_count") or 0.0
    at_most = REGISTRY.get_sample_value("bot_model_batch_size_bucket", {"le": f"{float(size)}"}) or 0.0
    return count - at_most


def test_answers_decoded_together_equal_answers_decoded_alone(model: ChatModel) -> None:
    alone = [model.generate(chat(q)) for q in QUESTIONS]
    assert alone[0] == ORDER_A and len(set(alone)) > 5  # different answers, so mix-ups would show
    before = batches_of(4)
    arrived = threading.Event()
    # The first answer holds the batch at its first token until every other answer has asked, so they
    # join it at once; the last ones join later, as places free up (8 at most).
    first = Request(model.prompt_ids(chat(QUESTIONS[0])), 48, Search(), on_token=lambda _: arrived.wait(10))
    model.decoder.submit(first)
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        futures = [pool.submit(model.generate, chat(q)) for q in QUESTIONS[1:]]
        time.sleep(0.2)
        arrived.set()
        together = [f.result() for f in futures]
    first.done.wait()
    assert [model.tokenizer.decode(first.tokens, skip_special_tokens=True).strip(), *together] == alone
    assert batches_of(4) > before  # they really were decoded together, more than four at a time


def test_the_shared_system_prompt_is_read_once_and_gives_the_same_answer(model: ChatModel) -> None:
    ids = model.prompt_ids(chat(QUESTIONS[5]))
    shared = model._shared_start(chat(QUESTIONS[5]), ids)
    assert 0 < shared < len(ids)
    answers = []
    for prefix in (0, shared):
        request = Request(ids, 48, Search(), prefix=prefix)
        model.decoder.submit(request)
        request.done.wait()
        answers.append(model.tokenizer.decode(request.tokens, skip_special_tokens=True).strip())
    assert answers[0] == answers[1] == model.generate(chat(QUESTIONS[5]))


def test_a_cancelled_or_late_answer_leaves_the_batch_and_the_others_go_on(model: ChatModel) -> None:
    alone = [model.generate(chat(q)) for q in QUESTIONS[:4]]
    seen: list[str] = []

    def stop_after_first_words(text: str) -> bool:
        seen.append(text)
        return False

    release = threading.Event()
    held = Request(model.prompt_ids(chat(QUESTIONS[0])), 48, Search(), on_token=lambda _: release.wait(10))
    model.decoder.submit(held)  # holds the batch at its first token
    with ThreadPoolExecutor(6) as pool:
        others = [pool.submit(model.generate, chat(q)) for q in QUESTIONS[1:4]]
        cancelled = pool.submit(model.generate, chat(QUESTIONS[5]), None, stop_after_first_words)
        late = pool.submit(model.generate, chat(QUESTIONS[6]), 0.1)
        assert late.result() == ""  # its deadline passed while the batch was held: it never starts
        release.set()
        assert [f.result() for f in others] == alone[1:]
        full = model.generate(chat(QUESTIONS[5]))
        assert len(seen) == 1 and full.startswith(cancelled.result()) and 0 < len(cancelled.result()) < len(full)
    held.done.wait()
    assert model.tokenizer.decode(held.tokens, skip_special_tokens=True).strip() == alone[0]


def test_a_failing_answer_fails_alone(model: ChatModel) -> None:
    vocabulary = len(model.tokenizer)
    broken = Request([vocabulary + 10], 8, Search())  # a token id the model has no embedding for
    with ThreadPoolExecutor(3) as pool:
        good = [pool.submit(model.generate, chat(q)) for q in QUESTIONS[:2]]
        model.decoder.submit(broken)
        broken.done.wait()
        assert broken.error is not None
        assert [f.result() for f in good] == [model.generate(chat(q)) for q in QUESTIONS[:2]]


def test_an_idle_model_holds_no_thread(model: ChatModel) -> None:
    model.generate(chat(ORDER_Q))
    time.sleep(0.05)
    assert not any(t.name.startswith("decoder-") for t in threading.enumerate())


def test_the_build_scores_only_the_last_position_and_a_prompt_read_at_once_equals_one_read_token_by_token(
    model: ChatModel,
) -> None:
    decoder, ids = model.decoder, model.prompt_ids(chat(QUESTIONS[5]))
    nothing = [np.zeros((1, decoder.kv_heads, 0, decoder.head_size), dtype=np.float32)] * len(decoder.past_names)
    at_once, _ = decoder._run(ids, nothing)
    assert at_once.shape == (1, 1, decoder.vocab)
    cache = nothing
    for token in ids:
        logits, cache = decoder._run([token], cache)
    np.testing.assert_allclose(logits, at_once, atol=1e-4)


def test_an_int4_build_runs_many_rows_through_its_int8_twin(
    model: ChatModel, starter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = export_onnx(starter_dir / "models" / "v0001" / "hf", tmp_path / "onnx", "int4")
    assert builds(built) == ["int4", "int8"]
    graph = onnx.load(str(built / INT8_FILE), load_external_data=False).graph
    assert {n.op_type for n in graph.node if "MatMul" in n.op_type} == {"DynamicQuantizeMatMul"}
    # What the twin shares with the INT4 build is read from that build's file: here the fp32 embedding,
    # which the starter ties to its LM head.
    files = {t.name: e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert files["lm_head.MatMul.weight"] == ONNX_FILE + ".data"
    assert set(files.values()) == {ONNX_FILE + ".data", INT8_FILE + ".data"}

    decoder, prompt = Decoder(built, 2, 8), model.prompt_ids(chat(ORDER_Q))
    assert decoder.session_for(1) is decoder.session and decoder.session_for(batching.INT8_FROM_ROWS) is decoder.int8
    # Every run through the twin: identical rows then compute exactly what one row alone does (rows moving
    # as others leave are checked on the fp32 build, above: here every row holds the same cache).
    monkeypatch.setattr(batching, "INT8_FROM_ROWS", 1)
    decoder.eos = set()  # each answer runs to its length (the quantised starter ends early)
    alone = Request(prompt, 24, Search())
    decoder.submit(alone)
    assert alone.done.wait(60) and alone.error is None and len(alone.tokens) == 24
    together = [Request(prompt, n, Search()) for n in (4, 8, 24, 12)]
    while decoder._running:  # the loop thread ends once idle
        time.sleep(0.01)
    for request in together[:-1]:  # queued before the loop starts, so all four share the first step
        decoder._waiting.put(request)
    decoder.submit(together[-1])
    for request in together:
        assert request.done.wait(60) and request.error is None
        assert request.tokens == alone.tokens[: request.max_new_tokens]
