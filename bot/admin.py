"""Operations on the running bot: which model version serves (promote, rollback, A/B test), the audit
log and run-time roles. One implementation for both doors: the HTTP admin API (adapters/http.py,
admin tokens only, actor `http:<name>`) and the `tuning` CLI's promote/rollback/ab (actor
`cli:<OS user>`). Every operation is audited with its actor; a refused one too.

The running bot follows the registry (BOT_REGISTRY_POLL_S), so a promotion made here, in the CLI or
by `tuning run` is served the same way.
"""

from __future__ import annotations

import json
from typing import Any

from bot.feedback import Caller, Feedback, Role
from bot.models.registry import Registry, RegistryError, State
from bot.store import Store

MAX_AUDIT_ROWS = 1000


class UnknownVersion(RegistryError, LookupError):
    """No such registered model version (HTTP 404)."""


class InvalidOperation(RegistryError, ValueError):
    """The operation makes no sense now or with these values (HTTP 422)."""


def _registered(registry: Registry, version: str) -> str:
    """`version` if it is a registered version's name (never a path), else UnknownVersion."""
    if version not in registry.versions():
        have = ", ".join(registry.versions()) or "none"
        raise UnknownVersion(f"no registered model version {version!r} (have: {have})")
    return version


async def promote(registry: Registry, store: Store, actor: str, version: str) -> State:
    """Make `version` the production version (the one before goes to the rollback history)."""
    before = registry.state().current
    state = registry.promote(_registered(registry, version))
    await store.audit(actor, "promote", target=f"model:{version}", version=version, previous=before)
    return state


async def rollback(registry: Registry, store: Store, actor: str) -> State:
    """Go back to the previous production version."""
    before = registry.state().current
    try:
        state = registry.rollback()
    except RegistryError as exc:
        raise InvalidOperation(str(exc)) from None
    await store.audit(actor, "rollback", target=f"model:{state.current}", version=state.current, previous=before)
    return state


async def ab_test(registry: Registry, store: Store, actor: str, version: str, share: float) -> State:
    """Serve `version` to `share` (0-1) of the users as the A/B candidate; share 0 ends the test."""
    if not 0.0 <= share <= 1.0:
        raise InvalidOperation(f"share: must be between 0 and 1, got {share}")
    _registered(registry, version)
    state = registry.set_candidate(version if share > 0 else None, share)
    await store.audit(actor, "ab_test", target=f"model:{version}", version=version, share=share)
    return state


def state_view(state: State) -> dict[str, Any]:
    return {
        "current": state.current,
        "candidate": state.candidate,
        "ab_share": state.ab_share,
        "history": state.history,
    }


class Admin:
    """What the HTTP channel needs beyond its ChannelService: who a bearer token belongs to, and the
    admin operations. Every operation checks that the caller is an admin (refusals are audited)."""

    def __init__(self, registry: Registry, store: Store, feedback: Feedback) -> None:
        self.registry = registry
        self.store = store
        self.roles = feedback.roles

    async def authenticate(self, token: str | None) -> Caller | None:
        """The caller of a bearer token (None: unknown, or missing while tokens are configured)."""
        return await self.roles.authenticate(token)

    async def require_admin(self, caller: Caller, action: str, **detail: Any) -> None:
        await self.roles.require(caller.sender, Role.ADMIN, action, **detail)

    async def promote(self, caller: Caller, version: str) -> dict[str, Any]:
        await self.require_admin(caller, "promote", version=version)
        return state_view(await promote(self.registry, self.store, caller.sender, version))

    async def rollback(self, caller: Caller) -> dict[str, Any]:
        await self.require_admin(caller, "rollback")
        return state_view(await rollback(self.registry, self.store, caller.sender))

    async def ab_test(self, caller: Caller, version: str, share: float) -> dict[str, Any]:
        await self.require_admin(caller, "ab_test", version=version, share=share)
        return state_view(await ab_test(self.registry, self.store, caller.sender, version, share))

    async def audit_log(
        self, caller: Caller, limit: int, actor: str | None = None, action: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest `limit` audit rows (oldest of them first), `detail` parsed."""
        await self.require_admin(caller, "read_audit")
        if not 1 <= limit <= MAX_AUDIT_ROWS:
            raise InvalidOperation(f"limit: must be between 1 and {MAX_AUDIT_ROWS}")
        rows = await self.store.audit_events(actor=actor, action=action, limit=limit)
        for row in rows:
            try:
                row["detail"] = json.loads(row["detail"])
            except (TypeError, ValueError):
                pass  # shown as stored
        return rows

    async def roles_list(self, caller: Caller) -> list[dict[str, Any]]:
        await self.require_admin(caller, "read_roles")
        return await self.roles.listing()

    async def grant(self, caller: Caller, subject: str, role: str) -> dict[str, Any]:
        """Grant `role` to `subject` (`customer` revokes the granted role); the subject's role now."""
        now = await self.roles.change(caller.sender, subject, role)
        return {"subject": subject, "role": now.value}
