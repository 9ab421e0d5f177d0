"""`tuning export`: a registered version as a folder a model server (vLLM) serves under the version's
name, merged (`hf`) or as the month's LoRA adapter alone (`lora`). Each is loaded the way such a
server loads it and must answer as the bot's own ONNX build (or the merged weights) does."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.models.chat import with_system
from bot.models.registry import Registry
from bot.models.runtime import ChatModel, GenerationSettings
from tests.support import ORDER_A, ORDER_Q, SYSTEM_PROMPT
from tuning.__main__ import main

ORIGIN = with_system(SYSTEM_PROMPT, [{"role": "user", "content": ORDER_Q}])
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def tuning(data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """`python -m tuning ARGS` on `data_dir`, in this process (no second torch import): exit code, stdout, stderr."""
    for name in [k for k in os.environ if k.startswith("BOT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BOT_DATA_DIR", str(data_dir))

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def greedy_answer(model: Any, tokenizer: Any) -> str:
    prompt = tokenizer.apply_chat_template(ORIGIN, add_generation_prompt=True, return_tensors="pt")
    ids = model.generate(prompt, do_sample=False, max_new_tokens=96)
    return tokenizer.decode(ids[0, prompt.shape[1] :], skip_special_tokens=True).strip()


def test_hf_and_onnx_exports_answer_as_the_served_build(tuning: Cli, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    code, stdout, stderr = tuning("export", "--version", "current", "--format", "hf", "--out", str(out))
    assert code == 0, stderr
    assert json.loads(stdout) == {"hf": str(out), "serve": f"vllm serve {out} --served-model-name v0001"}
    assert (out / "model.safetensors").stat().st_mode & stat.S_IROTH  # for a server running as another user
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # what a server renders chats with
    served = ChatModel("v0001", Registry(data_dir).onnx_dir("v0001"), GenerationSettings()).generate(ORIGIN)
    assert greedy_answer(AutoModelForCausalLM.from_pretrained(out), tokenizer) == served == ORDER_A

    code, stdout, stderr = tuning("export", "--version", "v0001", "--out", str(tmp_path / "onnx"))  # the default
    assert code == 0, stderr
    rebuilt = ChatModel("v0001", Path(json.loads(stdout)["onnx"]), GenerationSettings())
    assert rebuilt.generate(ORIGIN) == served


def test_lora_export_is_the_months_adapter_on_its_base(
    tuning: Cli, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(data_dir.parent)
    monkeypatch.setenv("BOT_DATA_DIR", data_dir.name)  # relative, as with the default ./var
    code, _, stderr = tuning("run", "--force", "--steps", "20")
    assert code in (0, 1), stderr  # promoted or kept as candidate: registered either way
    registry = Registry(data_dir)
    out, base_dir = tmp_path / "lora", registry.hf_dir("v0001")
    code, stdout, stderr = tuning("export", "--version", "v0002", "--format", "lora", "--out", str(out))
    assert code == 0, stderr
    serve = f"vllm serve {base_dir} --enable-lora --lora-modules v0002={out}"
    assert json.loads(stdout) == {"lora": str(out), "base": str(base_dir), "serve": serve}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    prompt = tokenizer.apply_chat_template(ORIGIN, add_generation_prompt=True, return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        before = base(prompt).logits
        adapted = PeftModel.from_pretrained(base, out)
        merged = AutoModelForCausalLM.from_pretrained(registry.hf_dir("v0002"))
        after = merged(prompt).logits
        assert torch.allclose(adapted(prompt).logits, after, atol=1e-4)
    assert not torch.allclose(before, after, atol=1e-2)  # the adapter changes something worth comparing
    assert greedy_answer(adapted, tokenizer) == greedy_answer(merged, tokenizer)


def test_hf_export_needs_a_chat_template(tuning: Cli, data_dir: Path, tmp_path: Path) -> None:
    (Registry(data_dir).hf_dir("v0001") / "chat_template.jinja").unlink()
    code, _, stderr = tuning("export", "--version", "v0001", "--format", "hf", "--out", str(tmp_path / "out"))
    assert code == 2 and "v0001's tokenizer has no chat template" in stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--version", "v0001", "--format", "lora"], "v0001 has no LoRA adapter (it was tuned with method 'full')"),
        (["--version", "v0042", "--format", "hf"], "no registered model version 'v0042'"),
        (["--model", "/no/such/model"], "model folder not found: /no/such/model"),
        (["--model", ".", "--format", "hf"], "--format hf exports a registered version as it is"),
    ],
)
def test_bad_export_input_is_one_line_and_writes_nothing(
    tuning: Cli, tmp_path: Path, args: list[str], message: str
) -> None:
    code, _, stderr = tuning("export", *args, "--out", str(tmp_path / "out"))
    assert code == 2 and stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["var"]  # the data dir alone


def test_export_never_overwrites_nor_leaves_half_a_folder(tuning: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    code, _, stderr = tuning("export", "--version", "v0001", "--format", "hf", "--out", str(out))
    assert code == 2 and "already exists and is not empty" in stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (tmp_path / "no-model").mkdir()
    with pytest.raises(RuntimeError, match="model builder failed"):  # fails once the build has begun
        tuning("export", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "built"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-model", "out", "var"]
