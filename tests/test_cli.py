"""The real command lines, as a new user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support import ORDER_A, ORDER_Q, free_port


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "TELEGRAM_", "SLACK_"))}
    return env | {"BOT_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"} | extra


def http_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as resp:
        return json.loads(resp.read())


def wait_healthy(port: int, proc: subprocess.Popen, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "bot exited"
        try:
            return http_json(f"http://127.0.0.1:{port}/healthz")
        except OSError:
            time.sleep(0.3)
    raise AssertionError("bot did not become healthy")


def test_bot_run_serves_the_http_api(data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "run"],
        cwd=tmp_path,
        env=env_for(data_dir, BOT_HTTP_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_healthy(port, proc)["model_version"] == "v0001"
        reply = http_json(f"http://127.0.0.1:{port}/chat", {"conversation_id": "c", "user_id": "u", "text": ORDER_Q})
        assert reply["answer"] == ORDER_A
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0  # SIGTERM shuts down cleanly


def test_a_wrong_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env_for(tmp_path, BOT_HTTP_PORT="eighty"),
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("config error: BOT_HTTP_PORT:")


def test_bot_chat_in_the_terminal(data_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "chat"],
        cwd=tmp_path,
        input=f"{ORDER_Q}\n",
        capture_output=True,
        text=True,
        env=env_for(data_dir),
        timeout=120,
    )
    assert result.returncode == 0 and f"bot> {ORDER_A}" in result.stdout


def test_bot_run_workers_serves_one_address_from_several_processes(data_dir: Path, tmp_path: Path, pg_url: str) -> None:
    alone = subprocess.run(
        [sys.executable, "-m", "bot", "run", "--workers", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env_for(data_dir),
        timeout=120,
    )
    assert alone.returncode != 0
    assert alone.stderr.strip().splitlines()[-1] == (
        "config error: --workers: several workers share one database; set BOT_DATABASE_URL"
    )

    port, log = free_port(), tmp_path / "workers.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "run", "--workers", "2"],
            cwd=tmp_path,
            env=env_for(data_dir, BOT_HTTP_PORT=str(port), BOT_DATABASE_URL=pg_url),
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 120
        while log.read_text().count(f"listening on http://127.0.0.1:{port}") < 2:  # both hold the address
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        replies = {
            http_json(f"http://127.0.0.1:{port}/chat", {"conversation_id": f"c{i}", "user_id": "u", "text": ORDER_Q})[
                "answer"
            ]
            for i in range(6)
        }
        assert replies == {ORDER_A}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    assert all(not Path(f"/proc/{worker}").exists() for worker in workers)
