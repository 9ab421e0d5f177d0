"""Ratings, corrections and roles. Who is a customer, an agent or an admin is decided here and
nowhere else (`Roles`), for every channel:

- `AGENT_IDS` and `ADMIN_IDS` (`telegram:<id>`, `slack:<id>`, `http:<name>`);
- the role of each HTTP personal token in `BOT_API_KEYS` (its owner is `http:<name>`);
- roles an admin grants at run time, kept in the store's `roles` table (granting `customer` revokes);
- with `BOT_TRUST_AGENT_ROOM` on, the members of a channel's agents' room count as agents there.

A subject's role is the highest of these. Admins can do everything agents can. The HTTP service
token (`BOT_API_TOKEN`, caller `http:service`) speaks for customers and is never more than one.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from prometheus_client import Counter

from bot.config import SERVICE, ApiKey, BotSettings, token_digest
from bot.store import Store, StoredTurn


class Role(str, Enum):
    CUSTOMER = "customer"
    AGENT = "agent"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def includes(self, other: Role) -> bool:
        """Whether this role may do what `other` may (an admin may do what an agent may)."""
        return self.rank >= other.rank


# Ratings given (0: retracted), by rater role and by the version and A/B variant of the rated answer.
RATINGS = Counter("bot_ratings", "Ratings of answers", ["role", "rating", "model_version", "variant"])
_RANKS = {Role.CUSTOMER: 0, Role.AGENT: 1, Role.ADMIN: 2}
SERVICE_SENDER = f"http:{SERVICE}"
# Who a role can be granted to: one user of one channel.
SUBJECT = re.compile(r"(telegram|slack|http):[^\s,:]{1,200}")


class NotAllowed(PermissionError):
    pass


class UnknownTurn(LookupError):
    pass


@dataclass(frozen=True)
class Caller:
    """Who sent an HTTP request: the owner of its token (`http:<name>`) and their role now."""

    name: str
    role: Role

    @property
    def sender(self) -> str:
        return f"http:{self.name}"


class Roles:
    def __init__(
        self,
        store: Store,
        agent_ids: frozenset[str] = frozenset(),
        admin_ids: frozenset[str] = frozenset(),
        api_keys: list[ApiKey] | None = None,
        api_token: str = "",
        trust_agent_room: bool = False,
        open_without_token: bool = False,
    ) -> None:
        """`open_without_token`: no token is configured, so the (loopback-only) HTTP API lets a request
        without one in as the service caller; only `from_settings` decides that, so Roles built any
        other way turn away every request that has no token."""
        self.store = store
        self.agent_ids = agent_ids
        self.admin_ids = admin_ids
        self.keys = list(api_keys or [])
        self.trust_agent_room = trust_agent_room
        self._service_digest = token_digest(api_token) if api_token else ""
        self.open = open_without_token and not self._service_digest and not self.keys

    @classmethod
    def from_settings(cls, store: Store, settings: BotSettings) -> Roles:
        return cls(
            store,
            settings.agents,
            settings.admins,
            settings.keys,
            settings.api_token,
            settings.trust_agent_room,
            open_without_token=not settings.auth_configured,
        )

    # --- who is calling the HTTP API -----------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Caller | None:
        """The caller a bearer token belongs to, None for an unknown token (or none where one is needed).
        The presented token is hashed and compared with every known hash in constant time."""
        if token is None:
            return Caller(SERVICE, Role.CUSTOMER) if self.open else None
        digest = token_digest(token)
        found: str | None = None
        if self._service_digest and hmac.compare_digest(digest, self._service_digest):
            found = SERVICE
        for key in self.keys:  # no early exit: every key is compared
            if hmac.compare_digest(digest, key.sha256):
                found = key.name
        if found is None:
            return None
        return Caller(found, await self.role_of(f"http:{found}"))

    # --- roles -------------------------------------------------------------------------------------------

    def configured_role(self, sender: str) -> Role:
        """The role settings give `sender` (AGENT_IDS, ADMIN_IDS, BOT_API_KEYS)."""
        role = Role.ADMIN if sender in self.admin_ids else Role.AGENT if sender in self.agent_ids else Role.CUSTOMER
        for key in self.keys:
            if sender == f"http:{key.name}" and not role.includes(Role(key.role)):
                role = Role(key.role)
        return role

    async def role_of(self, sender: str, in_agent_chat: bool = False) -> Role:
        """`sender` is `channel:user_id`; the highest of its configured and granted roles. Being in a
        channel's agents' room makes an agent only with BOT_TRUST_AGENT_ROOM."""
        if sender == SERVICE_SENDER:
            return Role.CUSTOMER
        role = self.configured_role(sender)
        granted = await self.store.granted_role(sender)
        if granted is not None and not role.includes(Role(granted)):
            role = Role(granted)
        if in_agent_chat and self.trust_agent_room and not role.includes(Role.AGENT):
            role = Role.AGENT
        return role

    async def require(
        self, sender: str, needed: Role, action: str, doing: str = "", in_agent_chat: bool = False, **detail: Any
    ) -> Role:
        """`sender`'s role if it includes `needed`; otherwise the refusal is audited (`<action>_refused`)
        and NotAllowed raised, saying what only `needed` may do (`doing`, by default the action)."""
        role = await self.role_of(sender, in_agent_chat)
        if not role.includes(needed):
            await self.store.audit(sender, f"{action}_refused", role=role.value, outcome="refused", **detail)
            doing = doing or action.replace("_", " ")
            raise NotAllowed(f"{sender} is not an {needed.value}: only {needed.value}s can {doing}")
        return role

    async def change(self, actor: str, subject: str, role: str) -> Role:
        """An admin's `role` for `subject` (`customer` revokes), from the admin API or a chat command; the
        subject's role now. NotAllowed for non-admins (audited), ValueError for an unknown role or subject."""
        await self.require(actor, Role.ADMIN, "grant_role", "change roles", target=subject, wanted=role)
        try:
            wanted = Role(role)
        except ValueError:
            raise ValueError(f"role: must be one of {', '.join(r.value for r in Role)}") from None
        return await self.grant(subject, wanted, actor)

    async def grant(self, subject: str, role: Role, actor: str) -> Role:
        """Give `subject` a role at run time (`customer` revokes the granted one); audited. The role
        `subject` has afterwards: a configured role stays until the settings change."""
        if not SUBJECT.fullmatch(subject):
            raise ValueError(f"subject: expected telegram:<id>, slack:<id> or http:<name>, got {subject!r}")
        if subject == SERVICE_SENDER:
            raise ValueError(f"subject: {SERVICE_SENDER} is the service token and stays a customer")
        if role is Role.CUSTOMER:
            revoked = await self.store.revoke_role(subject)
            await self.store.audit(actor, "role_revoked", target=subject, revoked=revoked)
        else:
            await self.store.grant_role(subject, role.value, actor)
            await self.store.audit(actor, "role_granted", target=subject, granted=role.value)
        return await self.role_of(subject)

    async def listing(self) -> list[dict[str, Any]]:
        """Every configured or granted role: the subject, the role, where it comes from, its role now."""
        rows: list[dict[str, Any]] = []
        sources = [
            *((s, Role.ADMIN.value, "ADMIN_IDS") for s in sorted(self.admin_ids)),
            *((s, Role.AGENT.value, "AGENT_IDS") for s in sorted(self.agent_ids)),
            *((f"http:{k.name}", k.role, "BOT_API_KEYS") for k in self.keys),
        ]
        rows += [{"subject": s, "role": role, "source": source} for s, role, source in sources]
        rows += [{**granted, "source": "granted"} for granted in await self.store.granted_roles()]
        for row in rows:
            row["effective"] = (await self.role_of(row["subject"])).value
        return rows


class Feedback:
    def __init__(self, store: Store, roles: Roles) -> None:
        self.store = store
        self.roles = roles

    @classmethod
    def from_settings(cls, store: Store, settings: BotSettings) -> Feedback:
        return cls(store, Roles.from_settings(store, settings))

    async def role(self, sender: str, in_agent_chat: bool = False) -> Role:
        """`sender`'s role (see Roles.role_of)."""
        return await self.roles.role_of(sender, in_agent_chat)

    async def rate(self, turn_id: int, sender: str, rating: int | None, in_agent_chat: bool = False) -> Role:
        """Record (or with None, retract) a rating; an agent's counts for training, a customer's is
        kept as customer feedback. A later rating by the same person replaces the earlier one."""
        if rating not in (1, -1, None):
            raise ValueError("rating must be 1 or -1")
        turn = await self._require_turn(turn_id)
        role = await self.role(sender, in_agent_chat)
        # An admin's rating counts as an agent's: what trains the model is "agent" or "customer".
        counted = Role.AGENT if role.includes(Role.AGENT) else Role.CUSTOMER
        await self.store.set_rating(turn_id, sender, counted.value, rating)
        RATINGS.labels(counted.value, str(rating or 0), turn.model_version, turn.variant).inc()
        await self.store.audit(
            sender,
            "rating" if rating else "rating_retracted",
            role=counted.value,
            target=f"turn:{turn_id}",
            turn_id=turn_id,
            rating=rating,
        )
        return counted

    async def withdraw(self, turn_id: int, sender: str, rating: int) -> None:
        """Retract `sender`'s rating only while it is still `rating`: removing a 👍 reaction must not
        undo a 👎 given since."""
        if any(r["rater"] == sender and r["rating"] == rating for r in await self.store.ratings(turn_id)):
            await self.rate(turn_id, sender, None)

    async def correct(self, turn_id: int, sender: str, text: str, in_agent_chat: bool = False) -> None:
        target = f"turn:{turn_id}"
        role = await self.roles.require(
            sender, Role.AGENT, "correction", "correct answers", in_agent_chat, target=target, turn_id=turn_id
        )
        text = text.strip()
        if not text:
            raise ValueError("the correction is empty")
        await self._require_turn(turn_id)
        await self.store.add_correction(turn_id, sender, text)
        await self.store.audit(sender, "correction", role=role.value, target=target, turn_id=turn_id)

    async def _require_turn(self, turn_id: int) -> StoredTurn:
        turn = await self.store.turn(turn_id)
        if turn is None:
            raise UnknownTurn(f"no answer with turn_id {turn_id}")
        return turn
