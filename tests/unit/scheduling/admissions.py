"""Resource models for the scheduling tests: they count slots and KV tokens like an engine would."""

from __future__ import annotations

from agentrt.scheduling import Call


class SlotAdmission:
    """Admits up to ``slots`` calls per decision (a batch-size limit only)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.asked: list[str] = []

    def admit(self, call: Call) -> bool:
        self.asked.append(call.call_id)
        if self.slots <= 0:
            return False
        self.slots -= 1
        return True


class TokenAdmission:
    """Admits calls while their contexts fit in ``capacity`` KV tokens and ``max_batch`` slots."""

    def __init__(self, capacity: int, max_batch: int, context: dict[str, int]) -> None:
        self.free = capacity
        self.slots = max_batch
        self.context = context
        self.admitted: list[str] = []
        self.refused: str | None = None

    def admit(self, call: Call) -> bool:
        need = self.context[call.call_id]
        if self.slots <= 0 or need > self.free:
            self.refused = call.call_id
            return False
        self.free -= need
        self.slots -= 1
        self.admitted.append(call.call_id)
        return True
