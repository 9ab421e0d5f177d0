"""Logging set-up: one format for the whole bot, and secrets (tokens, signing secrets) redacted from
every record, whichever library wrote it."""

from __future__ import annotations

import logging


class RedactSecrets(logging.Filter):
    """Replaces secrets with *** in the message and in the traceback of every record."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            record.msg, record.args = self._redact(message), None
        if record.exc_info and not record.exc_text:  # a token in an exception's text or its locals' repr
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and any(s in record.exc_text for s in self.secrets):
            record.exc_text = self._redact(record.exc_text)
        return True

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def setup_logging(level: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiogram.event logs every handled update at INFO.
    for noisy in ("aiohttp.access", "httpx", "onnxruntime", "aiogram.event"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
