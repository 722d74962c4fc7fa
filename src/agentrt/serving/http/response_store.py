"""The stored conversations behind ``previous_response_id``, per tenant, least recently used first out.

A stored response is its whole conversation as chat messages: the
conversation it continued, its own input and its output. A call that names
it sends that conversation, then its new input, so the prompt it renders
starts with exactly the tokens the previous call read and wrote (what the
engine's prefix cache holds). Each tenant keeps at most ``max_per_tenant``
responses and ``max_bytes_per_tenant`` bytes of them (each response counted
as its whole conversation, JSON-encoded); storing one more drops that
tenant's least recently used until both hold. The messages are shared
between the entries of one chain, never copied, and never changed once
stored.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

Conversation = tuple[dict[str, Any], ...]

_encoder = msgspec.json.Encoder()


class _Tenant:
    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[Conversation, int]] = OrderedDict()
        self.bytes = 0


class ResponseStore:
    """Response id -> conversation, for each tenant; ``max_per_tenant = 0`` stores nothing."""

    def __init__(self, max_per_tenant: int, max_bytes_per_tenant: int) -> None:
        self.max_per_tenant = max_per_tenant
        self.max_bytes_per_tenant = max_bytes_per_tenant
        self._tenants: dict[str, _Tenant] = {}

    @property
    def enabled(self) -> bool:
        return self.max_per_tenant > 0

    def get(self, tenant: str, response_id: str) -> Conversation | None:
        entries = self._tenants.get(tenant)
        if entries is None or response_id not in entries.entries:
            return None
        entries.entries.move_to_end(response_id)
        return entries.entries[response_id][0]

    def put(self, tenant: str, response_id: str, conversation: Conversation) -> bool:
        """Keep ``conversation``; False when the store is off or it alone is past the byte budget."""
        if not self.enabled:
            return False
        size = len(_encoder.encode(conversation))
        if size > self.max_bytes_per_tenant:
            return False
        kept = self._tenants.setdefault(tenant, _Tenant())
        self._drop(kept, response_id)
        kept.entries[response_id] = (conversation, size)
        kept.bytes += size
        while len(kept.entries) > self.max_per_tenant or kept.bytes > self.max_bytes_per_tenant:
            self._drop(kept, next(iter(kept.entries)))
        return True

    def __len__(self) -> int:
        return sum(len(kept.entries) for kept in self._tenants.values())

    @staticmethod
    def _drop(kept: _Tenant, response_id: str) -> None:
        entry = kept.entries.pop(response_id, None)
        if entry is not None:
            kept.bytes -= entry[1]
