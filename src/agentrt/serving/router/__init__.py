"""The program-aware router (:class:`Router`) and the engines it routes to (:mod:`.backends`)."""

from agentrt.serving.router.router import EngineStatus, Router, RouterConfig, estimate_prompt_tokens

__all__ = ["EngineStatus", "Router", "RouterConfig", "estimate_prompt_tokens"]
