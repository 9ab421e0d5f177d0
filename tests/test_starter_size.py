"""The starter is sized by its corpus (tuning/bootstrap.py `size_starter`), trains on batches of like
length (tuning/train.py `epoch_order`), and `tuning eval` generates as long as the references it scores."""

from __future__ import annotations

import random
from pathlib import Path

from bot.models.chat import Chat, with_system
from bot.models.runtime import ChatModel, GenerationSettings
from tests.support import SYSTEM_PROMPT
from tuning.bootstrap import (
    FAQ_TOKENS,
    LEAST_PASSES,
    SERVED_FLOOR,
    STARTER_SHAPE,
    WIDE_SHAPE,
    StarterSize,
    build_tokenizer,
    size_starter,
)
from tuning.config import PRESETS
from tuning.evaluate import evaluate, scoring_length
from tuning.train import epoch_order

WORDS = "order refund parcel invoice account password delivery address payment cancel".split()


def corpus(chats: int, answer_words: int, seed: int = 0) -> list[Chat]:
    rng = random.Random(seed)
    return [
        with_system(
            SYSTEM_PROMPT,
            [
                {"role": "user", "content": f"question {i} about my {rng.choice(WORDS)}"},
                {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(answer_words))},
            ],
        )
        for i in range(chats)
    ]


def sized(chats: list[Chat]) -> StarterSize:
    tokenizer = build_tokenizer([m["content"] for chat in chats for m in chat])
    return size_starter(tokenizer, chats, PRESETS["scratch"])


def test_a_small_faq_is_memorised_by_the_small_shape() -> None:
    size = sized(corpus(300, 12))
    scratch = PRESETS["scratch"]
    assert size.shape == STARTER_SHAPE and size.cfg.max_len == scratch.max_len
    assert size.max_new_tokens == SERVED_FLOOR
    assert size.cfg.steps == -(-int(scratch.epochs * 300) // scratch.batch_size)  # every pass the preset asks
    assert size.corpus["tokens"] * scratch.epochs <= FAQ_TOKENS


def test_a_larger_corpus_of_long_answers_gets_width_context_length_and_a_token_budget() -> None:
    chats = corpus(3000, 150) + corpus(1, 400, seed=1)
    size = sized(chats)
    assert size.shape == WIDE_SHAPE
    assert size.cfg.max_len >= size.corpus["longest_chat_tokens"]  # no answer loses its question
    assert size.max_new_tokens >= 1.25 * size.corpus["answer_tokens_p99"]
    passes = size.cfg.steps * size.cfg.batch_size / len(chats)
    assert LEAST_PASSES <= passes < LEAST_PASSES + 0.1  # a token budget, not 40 passes


def test_batches_of_like_length_cover_every_row_once_per_pass() -> None:
    lengths = [random.Random(i).randint(20, 500) for i in range(1000)]
    grouped = epoch_order(random.Random(0), lengths, PRESETS["scratch"])
    plain = epoch_order(random.Random(0), lengths, PRESETS["monthly"])
    assert sorted(grouped) == sorted(plain) == list(range(1000))

    def padded(order: list[int], batch: int) -> int:
        return sum(max(lengths[i] for i in order[s : s + batch]) * batch for s in range(0, len(order), batch))

    assert padded(grouped, 32) < 0.75 * padded(plain, 32)  # much less padding than random batches


class Counting:
    def count_tokens(self, text: str) -> int:
        return len(text.split())


def test_scoring_length_covers_the_longest_reference() -> None:
    assert scoring_length(Counting(), ["a b c", "word " * 200]) == 250  # type: ignore[arg-type]
    assert scoring_length(Counting(), ["a b c"]) == 19  # type: ignore[arg-type]


def test_eval_generates_past_the_served_length_and_leaves_the_model_as_it_was(starter_dir: Path) -> None:
    model = ChatModel("v0001", starter_dir / "models" / "v0001" / "onnx", GenerationSettings(max_new_tokens=2))
    question = {"role": "user", "content": "How do I get a refund?"}
    served = model.generate(with_system(SYSTEM_PROMPT, [question]))
    long_reference = {"role": "assistant", "content": "word " * 100}
    scored = evaluate(model, [[question, long_reference]], SYSTEM_PROMPT).samples[0]["answer"]
    assert model.count_tokens(served) <= 2 < model.count_tokens(scored)
    assert model.settings.max_new_tokens == 2
