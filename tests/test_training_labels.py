"""What the loss falls on: exactly the approved answers and the token that ends each, token by token."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from bot.store import Store
from tests.test_pretrained_qwen import GGUF
from tuning import dataset
from tuning.formats import as_context, is_target
from tuning.train import END_OF_TURN, IGNORE, encode

CHAT = [
    {"role": "system", "content": "You are the shop's assistant."},
    {"role": "user", "content": "我的订单什么时候到?"},
    as_context({"role": "assistant", "content": "不知道"}),  # 👎 by an agent: context, never learnt
    {"role": "user", "content": "那怎么查物流?"},
    {"role": "assistant", "content": "您可通过订单号在'我的订单'页面查询物流信息"},  # the approved answer
]


@pytest.fixture(scope="module", params=["starter", "qwen2.5"])
def tokenizer(request: pytest.FixtureRequest, starter_dir: Path) -> object:
    """The starter's tokenizer and chat template, and (slow: RUN_SLOW=1 and the GGUF on the machine) the real
    Qwen2.5 one, whose template adds a default system prompt and tool handling around the same turns."""
    if request.param == "starter":
        return AutoTokenizer.from_pretrained(starter_dir / "models" / "v0001" / "hf")
    if os.environ.get("RUN_SLOW") != "1" or not GGUF.exists():
        pytest.skip(f"slow: set RUN_SLOW=1, with the pretrained Qwen at {GGUF} (../shared/tools/get-pretrained-qwen)")
    return AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)


def test_labels_are_exactly_the_approved_answer_and_its_end_of_turn_token(tokenizer: object) -> None:
    ids, labels = encode(tokenizer, CHAT, max_len=4096)
    assert len(ids) == len(labels)
    learnt = [token for token in labels if token != IGNORE]
    expected = tokenizer(CHAT[-1]["content"] + END_OF_TURN, add_special_tokens=False)["input_ids"]
    assert learnt == expected
    # The learnt tokens are one run at the end of the chat, where the answer is, matching the input ids.
    first = labels.index(learnt[0])
    assert labels[first : first + len(learnt)] == ids[first : first + len(learnt)] == learnt
    # The whole chat is still there, rendered by the template: the context answer is seen, not learnt.
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(CHAT, tokenize=False)


def test_without_the_mark_every_answer_is_learnt(tokenizer: object) -> None:
    plain = [*CHAT[:2], {"role": "assistant", "content": "不知道"}, *CHAT[3:]]
    _, labels = encode(tokenizer, plain, max_len=4096)
    learnt = [token for token in labels if token != IGNORE]
    both = [
        *tokenizer("不知道" + END_OF_TURN, add_special_tokens=False)["input_ids"],
        *tokenizer(CHAT[-1]["content"] + END_OF_TURN, add_special_tokens=False)["input_ids"],
    ]
    assert learnt == both


async def test_in_a_rated_chat_only_approved_earlier_answers_are_learnt(tmp_path: Path) -> None:
    """Three answers in one session: 👎 by an agent, corrected, then 👍. The row of the last one keeps the
    first as context only and learns the correction; the 👎 answer is a negative, never a target."""
    store = await Store.open(tmp_path / "bot.sqlite3")
    try:
        ids = []
        for n, (question, answer) in enumerate([("q1", "bad answer"), ("q2", "so-so answer"), ("q3", "good answer")]):
            ids.append(
                await store.add_turn(
                    channel="telegram",
                    conversation_id="c1",
                    session=1,
                    user_id="u1",
                    message_id=f"m{n}",
                    user_text=question,
                    answer=answer,
                    model_version="v0001",
                    latency_ms=1.0,
                )
            )
        await store.set_rating(ids[0], "telegram:42", "agent", -1)
        await store.add_correction(ids[1], "telegram:42", "corrected answer")
        await store.set_rating(ids[2], "telegram:42", "agent", 1)
        await store.set_rating(ids[2], "telegram:7", "customer", -1)  # customers never decide what is learnt
        rows, _ = await dataset.rated_chats(store)
    finally:
        await store.close()
    last = next(r for r in rows if r["messages"][-1]["content"] == "good answer")
    assert [(m["content"], is_target(m)) for m in last["messages"] if m["role"] == "assistant"] == [
        ("bad answer", False),
        ("corrected answer", True),
        ("good answer", True),
    ]
    assert [r["label"] for r in rows] == ["bad", "corrected", "good"]
