"""All settings, read in one place: environment variables and `.env` (see `.env.example`)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(SystemExit):
    """Start-up stops with one line naming the bad setting."""


class _Env(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    def check(self) -> None:
        """Rules across fields, run after loading; raise ConfigError naming the setting."""


class BotSettings(_Env):
    model_config = SettingsConfigDict(
        env_prefix="BOT_", env_file=".env", extra="ignore", env_ignore_empty=True, populate_by_name=True
    )

    data_dir: Path = Path("./var")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    # Hub id, local folder or GGUF file; empty means the registry's current version in data_dir.
    model: str = ""
    system_prompt: str = (
        "You are the customer-service assistant of Maple Mall (枫叶商城). "
        "Answer briefly and politely in the customer's language."
    )
    context_tokens: int = Field(1024, ge=64, description="prompt budget: system prompt + history + question")
    max_new_tokens: int = Field(96, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=1.0)
    model_timeout_s: float = Field(20.0, gt=0)
    model_concurrency: int = Field(8, ge=1)  # answers generated at once, decoded together in one batch
    # Answers that may wait for a free model slot (each at most model_timeout_s); more get a "busy" reply.
    model_queue: int = Field(8, ge=0)
    model_threads: int = Field(0, ge=0)  # ONNX Runtime threads per answer; 0 = one per core
    session_idle_minutes: float = Field(30.0, gt=0)
    cache_size: int = Field(4096, ge=0)
    cache_ttl_s: float = Field(3600.0, gt=0)
    # Extra lexicons (comma-separated files, `word<TAB>category` per line); the shipped one is always loaded.
    lexicons: str = ""
    allowlists: str = ""
    # category=policy pairs; policies are "block" (canned reply, no model call) or "mask".
    filter_policy: str = "abuse=mask,fraud=block,violence=block,default=mask"
    max_message_chars: int = Field(4000, ge=1)
    # Comma-separated `channel:user_id` entries of human agents, shared by every channel.
    agent_ids: str = Field("", validation_alias=AliasChoices("AGENT_IDS", "BOT_AGENT_IDS"))
    # The same for admins (they can do everything agents can, and use the admin API).
    admin_ids: str = Field("", validation_alias=AliasChoices("ADMIN_IDS", "BOT_ADMIN_IDS"))
    # Whether members of a channel's agents' room (TELEGRAM_AGENT_CHAT_ID) count as agents for that.
    trust_agent_room: bool = False
    # HTTP API: the service token front ends send for /chat and customer feedback (Authorization: Bearer).
    api_token: str = ""
    # HTTP API: personal tokens, comma-separated `name:role:sha256hex-of-token` (role customer/agent/admin).
    api_keys: str = ""
    log_level: str = "INFO"
    registry_poll_s: float = Field(2.0, gt=0)
    # Abuse limits per user: at most user_rate_limit messages per user_rate_period_s (0: no limit), and a
    # cool-down of blocked_cooldown_s after blocked_cooldown_after messages with blocked words (0: none).
    user_rate_limit: int = Field(20, ge=0)
    user_rate_period_s: float = Field(60.0, gt=0)
    blocked_cooldown_after: int = Field(3, ge=0)
    blocked_cooldown_s: float = Field(300.0, gt=0)
    # Human hand-off (bot/handoff.py): comma-separated phrases that ask for a person (Latin ones match
    # whole words), and the idle minutes after which a handed-off conversation goes back to the bot.
    handoff_words: str = "人工,转人工,人工客服,真人,human,agent,real person"
    handoff_timeout_minutes: float = Field(30.0, gt=0)
    # Scale-out (README "Several workers"). Empty database_url: SQLite in data_dir; postgresql://... shares
    # one database between workers. Empty redis_url: cache, rate buckets and dedupe stay in this process.
    database_url: str = ""
    redis_url: str = ""
    # Model servers: comma-separated `[name=]URL[*weight]` entries and `local` (the in-process model), e.g.
    # `gpu=http://gpu-1:8000/v1*4,local`; empty: the in-process model only.
    model_backends: str = ""
    # This worker's name in leases (inbox events, Telegram polling); empty: host name and process id.
    worker_id: str = ""
    # How long a worker holds an inbox event it is answering; a worker that dies leaves it to another after this.
    inbox_lease_s: float = Field(60.0, gt=0)
    # The longest correction or agent reply kept (training data; a paste of a whole page is a mistake).
    max_correction_chars: int = Field(4000, ge=1)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("api_token")
    @classmethod
    def _long_token(cls, value: str) -> str:
        if value and len(value) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: str) -> str:
        parse_api_keys(value)
        return value

    @field_validator("model_backends")
    @classmethod
    def _check_model_backends(cls, value: str) -> str:
        parse_model_backends(value)
        return value

    @field_validator("filter_policy")
    @classmethod
    def _known_policies(cls, value: str) -> str:
        for pair in filter(None, (p.strip() for p in value.split(","))):
            category, sep, policy = pair.partition("=")
            if not sep or policy not in {"block", "mask"}:
                raise ValueError(f"{pair!r}: expected category=block or category=mask")
        return value

    @property
    def session_idle(self) -> timedelta:
        return timedelta(minutes=self.session_idle_minutes)

    @property
    def handoff_phrases(self) -> list[str]:
        """Phrases that hand a conversation to agents; none when no agent is configured, as nobody could
        answer (AGENT_IDS, ADMIN_IDS, an agent's or admin's BOT_API_KEYS entry, or a trusted agents' room)."""
        has_agents = self.agents or self.admins or self.trust_agent_room or any(k.role != "customer" for k in self.keys)
        return [w.strip() for w in self.handoff_words.split(",") if w.strip()] if has_agents else []

    @property
    def worker(self) -> str:
        """This worker's name in leases. On SQLite there is one worker, so a restart takes back what the
        last run left leased at once; workers sharing PostgreSQL are told apart by host and process."""
        if self.worker_id:
            return self.worker_id
        return f"{socket.gethostname()}:{os.getpid()}" if self.database_url else "local"

    @property
    def agents(self) -> frozenset[str]:
        return frozenset(a.strip() for a in self.agent_ids.split(",") if a.strip())

    @property
    def admins(self) -> frozenset[str]:
        return frozenset(a.strip() for a in self.admin_ids.split(",") if a.strip())

    @property
    def keys(self) -> list[ApiKey]:
        return parse_api_keys(self.api_keys)

    @property
    def auth_configured(self) -> bool:
        """Whether the HTTP API checks tokens; without any, it is open and must stay on loopback."""
        return bool(self.api_token or self.api_keys.strip())

    def secrets(self) -> list[str]:
        """Values the logs must never show."""
        return [self.api_token, self.database_url, self.redis_url]

    def check(self) -> None:
        if self.inbox_lease_s <= self.model_timeout_s:
            raise ConfigError(
                f"config error: BOT_INBOX_LEASE_S: must be longer than BOT_MODEL_TIMEOUT_S ({self.model_timeout_s:g} s), "
                "or another worker would answer an event while its first worker still does"
            )
        if not self.auth_configured and not is_loopback(self.http_host):
            raise ConfigError(
                f"config error: BOT_HTTP_HOST: {self.http_host or '(all interfaces)'} is not a loopback address; "
                "set BOT_API_TOKEN or BOT_API_KEYS first (without a token the HTTP API is open and serves 127.0.0.1 only)"
            )

    @property
    def policies(self) -> dict[str, str]:
        pairs = (p.strip().partition("=") for p in self.filter_policy.split(",") if p.strip())
        return {category: policy for category, _, policy in pairs}

    @staticmethod
    def paths(value: str) -> list[Path]:
        return [Path(p.strip()) for p in value.split(",") if p.strip()]


# The caller name of BOT_API_TOKEN (and of anyone on loopback when no token is configured): a
# customers' front end, never an agent. Not usable as a BOT_API_KEYS name.
SERVICE = "service"
ROLE_NAMES = ("customer", "agent", "admin")
MIN_TOKEN_CHARS = 16
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ApiKey:
    """One personal HTTP token: its owner's name (`http:<name>`), role and the token's SHA-256 (hex)."""

    name: str
    role: str
    sha256: str


def parse_api_keys(value: str) -> list[ApiKey]:
    """`name:role:sha256hex,...` -> keys; a bad entry raises ValueError naming it (never the hash)."""
    keys: list[ApiKey] = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) != 3:
            raise ValueError("expected comma-separated name:role:sha256hex entries")
        name, role, digest = parts
        if not _KEY_NAME.fullmatch(name) or name == SERVICE:
            raise ValueError(f"{name!r}: a name is letters, digits and _ . @ - (and not {SERVICE!r})")
        if role not in ROLE_NAMES:
            raise ValueError(f"{name}: role must be one of {', '.join(ROLE_NAMES)}")
        if not _SHA256_HEX.fullmatch(digest.lower()):
            raise ValueError(f"{name}: the third part must be the token's SHA-256 as 64 hex digits")
        if any(k.name == name for k in keys):
            raise ValueError(f"{name}: listed twice")
        keys.append(ApiKey(name, role, digest.lower()))
    return keys


def token_digest(token: str) -> str:
    """The SHA-256 (hex) of a token, as BOT_API_KEYS lists it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


LOCAL_BACKEND = "local"  # the BOT_MODEL_BACKENDS entry of the in-process model
_BACKEND = re.compile(r"(?:(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})=)?(?P<target>[^*=\s]+)(?:\*(?P<weight>.*))?")


@dataclass(frozen=True)
class BackendSpec:
    """One BOT_MODEL_BACKENDS entry: an OpenAI-compatible server's base URL (ending in /v1), or the
    in-process model (`url` empty)."""

    name: str
    url: str
    weight: float


def parse_model_backends(value: str) -> list[BackendSpec]:
    """`[name=]URL[*weight]` and `local[*weight]` entries, comma-separated -> specs; a bad entry raises
    ValueError naming it. A URL's default name is its host:port."""
    specs: list[BackendSpec] = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        match = _BACKEND.fullmatch(entry)
        target = match["target"] if match else ""
        url = urlsplit(target) if target != LOCAL_BACKEND else None
        if not match or (url and (url.scheme not in ("http", "https") or not url.hostname)):
            raise ValueError(f"{entry!r}: expected [name=]http(s)://host:port/v1[*weight] or local[*weight]")
        try:
            weight = float(match["weight"] or 1)
        except ValueError:
            weight = 0.0
        if not 0 < weight < float("inf"):
            raise ValueError(f"{entry!r}: the weight after * must be a number above 0")
        name = match["name"] or (url.netloc if url else LOCAL_BACKEND)
        if url and name == LOCAL_BACKEND:
            raise ValueError(f"{entry!r}: the name {LOCAL_BACKEND!r} is the in-process model's")
        if any(s.name == name for s in specs):
            raise ValueError(f"{name}: listed twice")
        specs.append(BackendSpec(name, target.rstrip("/") if url else "", weight))
    return specs


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def reaction_ratings(value: str) -> dict[str, int]:
    """`name=1,name=-1,...` -> {name: rating}; the last `=` splits, so Slack's `+1=1` reads right."""
    ratings = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        name, sep, rating = pair.rpartition("=")
        if not sep or not name.strip() or rating.strip() not in {"1", "-1"}:
            raise ValueError(f"{pair!r}: expected name=1 or name=-1")
        ratings[name.strip()] = int(rating)
    return ratings


class ChannelSettings(_Env):
    """What the chat channels share: a token that turns them on, reactions that rate answers."""

    bot_token: str = ""
    reactions: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.bot_token)

    def secrets(self) -> list[str]:
        """Values the logs must never show."""
        return [self.bot_token]

    @field_validator("reactions")
    @classmethod
    def _check_reactions(cls, value: str) -> str:
        reaction_ratings(value)
        return value

    @property
    def reaction_ratings(self) -> dict[str, int]:
        return reaction_ratings(self.reactions)


class TelegramSettings(ChannelSettings):
    model_config = SettingsConfigDict(env_prefix="TELEGRAM_", env_file=".env", extra="ignore", env_ignore_empty=True)

    api_base: str = ""
    webhook_url: str = ""
    webhook_secret: str = ""
    agent_chat_id: int | None = None
    # Reactions that rate an answer, as `emoji=1` / `emoji=-1` pairs, comma-separated; empty keeps the default set.
    reactions: str = ""

    def secrets(self) -> list[str]:
        return [self.bot_token, self.webhook_secret]

    def check(self) -> None:
        if self.enabled and self.webhook_url and not self.webhook_secret:
            raise ConfigError("config error: TELEGRAM_WEBHOOK_SECRET: required when TELEGRAM_WEBHOOK_URL is set")


class SlackSettings(ChannelSettings):
    model_config = SettingsConfigDict(env_prefix="SLACK_", env_file=".env", extra="ignore", env_ignore_empty=True)

    signing_secret: str = ""
    app_token: str = ""
    api_base: str = ""
    agent_channel: str = ""
    # Reactions that rate an answer: `emoji=1` or `emoji=-1` pairs (skin tones are ignored).
    reactions: str = "+1=1,thumbsup=1,white_check_mark=1,heart=1,-1=-1,thumbsdown=-1,x=-1"

    def secrets(self) -> list[str]:
        return [self.bot_token, self.signing_secret, self.app_token]

    def check(self) -> None:
        if self.enabled and not self.app_token and not self.signing_secret:
            raise ConfigError(
                "config error: SLACK_SIGNING_SECRET: required for the Events API (or set SLACK_APP_TOKEN)"
            )


Loaded = TypeVar("Loaded", bound=_Env)


def load(cls: type[Loaded]) -> Loaded:
    """Read one settings class from the environment and `.env`; a bad value stops start-up with one line."""
    try:
        settings = cls()
    except ValidationError as exc:
        err = exc.errors()[0]
        prefix = cls.model_config.get("env_prefix", "")
        name = (prefix + str(err["loc"][0])).upper() if err["loc"] else cls.__name__
        if name in ("BOT_AGENT_IDS", "BOT_ADMIN_IDS"):
            name = name.removeprefix("BOT_")
        raise ConfigError(f"config error: {name}: {err['msg']}") from None
    settings.check()
    return settings


def load_settings() -> BotSettings:
    return load(BotSettings)
