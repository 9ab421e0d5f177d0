"""Secrets never reach the logs: not in messages, not in exception tracebacks."""

from __future__ import annotations

import io
import logging

from bot.logs import RedactSecrets

TOKEN = "123456:AAH-secret-bot-token"


def test_tokens_are_redacted_from_messages_and_tracebacks() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactSecrets([TOKEN, "short"]))
    log = logging.getLogger("test-redaction")
    log.addHandler(handler)
    try:
        log.warning("calling https://api.telegram.org/bot%s/getMe", TOKEN)
        try:
            raise ConnectionError(f"cannot reach https://api.telegram.org/bot{TOKEN}/sendMessage")
        except ConnectionError:
            log.exception("request failed")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert TOKEN not in text
    assert "bot***/getMe" in text and "bot***/sendMessage" in text and "Traceback" in text
