"""End to end on a real pretrained Qwen (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF): load it, LoRA-tune
two steps, merge, export to ONNX, and answer a Chinese question through the bot's ChatModel.

Slow (minutes, ~6 GB of memory on CPU) and needs the model file on the machine, so it is skipped
unless RUN_SLOW=1 and the file is already in the cache `../shared/tools/get-pretrained-qwen` fills.
It never downloads anything.

    ../shared/tools/get-pretrained-qwen && RUN_SLOW=1 .venv/bin/python -m pytest tests/test_pretrained_qwen.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bot.config import BotSettings
from bot.models.chat import with_system
from bot.models.export import export_onnx
from bot.models.runtime import ChatModel, GenerationSettings
from tuning.config import preset
from tuning.formats import read_chats, shipped_files
from tuning.train import fine_tune

GGUF = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "pretrained-qwen"
    / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
)
CJK = re.compile(r"[\u3400-\u9fff]")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("RUN_SLOW") != "1", reason="slow: set RUN_SLOW=1 to run"),
    pytest.mark.skipif(
        not GGUF.exists(), reason=f"no pretrained Qwen at {GGUF} (run ../shared/tools/get-pretrained-qwen)"
    ),
]


def test_pretrained_qwen_tune_export_answer(tmp_path: Path) -> None:
    system = BotSettings(_env_file=None).system_prompt
    chats = [with_system(system, chat) for path in shipped_files() for chat in read_chats(path)]
    chats = [c for c in chats if CJK.search(c[-1]["content"])][:32]  # Chinese FAQ rows: a few batches' worth

    losses = fine_tune(
        GGUF, chats, tmp_path / "tuned", preset("pretrained", steps=2, batch_size=2, max_len=96, log_every=1)
    )
    assert len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses)  # finite, not NaN
    assert (tmp_path / "tuned" / "hf" / "config.json").exists()  # merged: a plain model folder, no adapter

    onnx_dir = export_onnx(tmp_path / "tuned" / "hf", tmp_path / "onnx")
    model = ChatModel("qwen-test", onnx_dir, GenerationSettings(max_new_tokens=32))
    answer = model.generate(with_system(system, [{"role": "user", "content": "我的订单什么时候到?"}]))
    assert answer.strip(), "empty answer"
    assert CJK.search(answer), f"expected a Chinese answer, got {answer!r}"
