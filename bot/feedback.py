"""Ratings, corrections and roles. Who is an agent is decided here and nowhere else."""

from __future__ import annotations

from enum import Enum

from bot.store import Store


class Role(str, Enum):
    CUSTOMER = "customer"
    AGENT = "agent"


class NotAllowed(PermissionError):
    pass


class UnknownTurn(LookupError):
    pass


class Feedback:
    def __init__(self, store: Store, agent_ids: frozenset[str]) -> None:
        self.store = store
        self.agent_ids = agent_ids

    def role(self, sender: str, in_agent_chat: bool = False) -> Role:
        """`sender` is `channel:user_id`; members of a channel's agents' chat count as agents."""
        return Role.AGENT if in_agent_chat or sender in self.agent_ids else Role.CUSTOMER

    async def rate(self, turn_id: int, sender: str, rating: int | None, in_agent_chat: bool = False) -> Role:
        """Record (or with None, retract) a rating; an agent's counts for training, a customer's is
        kept as customer feedback. A later rating by the same person replaces the earlier one."""
        if rating not in (1, -1, None):
            raise ValueError("rating must be 1 or -1")
        await self._require_turn(turn_id)
        role = self.role(sender, in_agent_chat)
        await self.store.set_rating(turn_id, sender, role.value, rating)
        await self.store.audit(
            sender, "rating" if rating else "rating_retracted", turn_id=turn_id, rating=rating, role=role.value
        )
        return role

    async def withdraw(self, turn_id: int, sender: str, rating: int) -> None:
        """Retract `sender`'s rating only while it is still `rating`: removing a 👍 reaction must not
        undo a 👎 given since."""
        if any(r["rater"] == sender and r["rating"] == rating for r in await self.store.ratings(turn_id)):
            await self.rate(turn_id, sender, None)

    async def correct(self, turn_id: int, sender: str, text: str, in_agent_chat: bool = False) -> None:
        if self.role(sender, in_agent_chat) is not Role.AGENT:
            await self.store.audit(sender, "correction_refused", turn_id=turn_id)
            raise NotAllowed(f"{sender} is not an agent: only agents can correct answers")
        text = text.strip()
        if not text:
            raise ValueError("the correction is empty")
        await self._require_turn(turn_id)
        await self.store.add_correction(turn_id, sender, text)
        await self.store.audit(sender, "correction", turn_id=turn_id)

    async def _require_turn(self, turn_id: int) -> None:
        if await self.store.turn(turn_id) is None:
            raise UnknownTurn(f"no answer with turn_id {turn_id}")
