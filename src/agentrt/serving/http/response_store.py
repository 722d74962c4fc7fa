"""The stored conversations behind ``previous_response_id``, per tenant, least recently used first out.

A stored response is its whole conversation as chat messages: the
conversation it continued, its own input and its output. A call that names
it sends that conversation, then its new input, so the prompt it renders
starts with exactly the tokens the previous call read and wrote (what the
engine's prefix cache holds). Each tenant keeps at most ``max_per_tenant``
responses; storing one more drops that tenant's least recently used. The
messages are shared between the entries of one chain, never copied, and
never changed once stored.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

Conversation = tuple[dict[str, Any], ...]


class ResponseStore:
    """Response id -> conversation, for each tenant; ``max_per_tenant = 0`` stores nothing."""

    def __init__(self, max_per_tenant: int) -> None:
        self.max_per_tenant = max_per_tenant
        self._tenants: dict[str, OrderedDict[str, Conversation]] = {}

    @property
    def enabled(self) -> bool:
        return self.max_per_tenant > 0

    def get(self, tenant: str, response_id: str) -> Conversation | None:
        entries = self._tenants.get(tenant)
        if entries is None or response_id not in entries:
            return None
        entries.move_to_end(response_id)
        return entries[response_id]

    def put(self, tenant: str, response_id: str, conversation: Conversation) -> None:
        if not self.enabled:
            return
        entries = self._tenants.setdefault(tenant, OrderedDict())
        entries[response_id] = conversation
        entries.move_to_end(response_id)
        while len(entries) > self.max_per_tenant:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._tenants.values())
