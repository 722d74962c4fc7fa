"""agentrt: serve LLM agent programs, not single requests.

The public SDK surface lives here. Heavy parts (engine, server) are imported
only when used, so ``import agentrt`` works on a client-only install.
"""

from __future__ import annotations

__version__ = "0.1.0"
