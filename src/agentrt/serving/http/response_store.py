"""The stored responses behind ``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}``,
per tenant, least recently used first out.

A stored response is its whole conversation as chat messages (the
conversation it continued, its own input and its output) and the response
object as it was answered, JSON-encoded. A call that names it sends that
conversation, then its new input, so the prompt it renders starts with
exactly the tokens the previous call read and wrote (what the engine's
prefix cache holds); a retrieval returns the response object. Each tenant
keeps at most ``max_per_tenant`` responses and ``max_bytes_per_tenant``
bytes of them (each response counted as its conversation, JSON-encoded,
plus its response object); storing one more drops that tenant's least
recently used until both hold. The messages are shared between the entries
of one chain, never copied, and never changed once stored.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import msgspec

Conversation = tuple[dict[str, Any], ...]

_encoder = msgspec.json.Encoder()


class _Entry(NamedTuple):
    conversation: Conversation
    response: bytes  # the response object, JSON
    size: int


class _Tenant:
    def __init__(self) -> None:
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0


class ResponseStore:
    """Response id -> conversation and response object, for each tenant; ``max_per_tenant = 0``
    stores nothing."""

    def __init__(self, max_per_tenant: int, max_bytes_per_tenant: int) -> None:
        self.max_per_tenant = max_per_tenant
        self.max_bytes_per_tenant = max_bytes_per_tenant
        self._tenants: dict[str, _Tenant] = {}

    @property
    def enabled(self) -> bool:
        return self.max_per_tenant > 0

    def get(self, tenant: str, response_id: str) -> Conversation | None:
        """The conversation of a stored response (now its tenant's most recently used)."""
        entry = self._use(tenant, response_id)
        return None if entry is None else entry.conversation

    def response(self, tenant: str, response_id: str) -> bytes | None:
        """The stored response object as JSON (now its tenant's most recently used)."""
        entry = self._use(tenant, response_id)
        return None if entry is None else entry.response

    def put(
        self, tenant: str, response_id: str, conversation: Conversation, response: bytes
    ) -> bool:
        """Keep a response; False when the store is off or it alone is past the byte budget."""
        if not self.enabled:
            return False
        size = len(_encoder.encode(conversation)) + len(response)
        if size > self.max_bytes_per_tenant:
            return False
        kept = self._tenants.setdefault(tenant, _Tenant())
        self._drop(kept, response_id)
        kept.entries[response_id] = _Entry(conversation, response, size)
        kept.bytes += size
        while len(kept.entries) > self.max_per_tenant or kept.bytes > self.max_bytes_per_tenant:
            self._drop(kept, next(iter(kept.entries)))
        return True

    def delete(self, tenant: str, response_id: str) -> bool:
        """Forget a stored response; False when the tenant has none by that id."""
        kept = self._tenants.get(tenant)
        if kept is None or not self._drop(kept, response_id):
            return False
        if not kept.entries:
            del self._tenants[tenant]
        return True

    def __len__(self) -> int:
        return sum(len(kept.entries) for kept in self._tenants.values())

    def _use(self, tenant: str, response_id: str) -> _Entry | None:
        kept = self._tenants.get(tenant)
        if kept is None or response_id not in kept.entries:
            return None
        kept.entries.move_to_end(response_id)
        return kept.entries[response_id]

    @staticmethod
    def _drop(kept: _Tenant, response_id: str) -> bool:
        entry = kept.entries.pop(response_id, None)
        if entry is None:
            return False
        kept.bytes -= entry.size
        return True
