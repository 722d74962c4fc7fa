"""The bounds of every numeric request parameter, in one place.

msgspec checks a body's types at the edge but not its integers' size (it
decodes any JSON integer into a Python int), so each numeric field is
checked here against the range an engine can honour: the server checks a
request before it is queued, and the engine checks again before a call
enters its step loop. A value outside these bounds is a 400 naming the
field, never an exception inside a step shared with other calls.

Bounds an operator tunes (the largest ``max_tokens`` and ``n``, prompts per
request, stop strings) are :class:`~agentrt.serving.config.ServerConfig`
values checked by the server; those must lie inside the bounds here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from agentrt.protocol.engine import SamplingParams

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Token ids are indices into a vocabulary; the engine checks them against its own.
MAX_TOKEN_ID = INT32_MAX
# OpenAI's bound on a logit_bias value: -100 bans a token, +100 all but forces it.
MAX_LOGIT_BIAS = 100.0
# OpenAI's cap on top_logprobs.
MAX_TOP_LOGPROBS = 20
# The most choices one call may ask for, whatever the server allows.
MAX_N = 128
# Stop conditions are checked at every token of the call, inside the step loop all calls share.
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256  # characters
MAX_STOP_TOKEN_IDS = 256


class Bound(NamedTuple):
    """A closed range ``[low, high]``, or ``(low, high]`` when ``low_open``."""

    low: float
    high: float
    low_open: bool = False

    def admits(self, value: float) -> bool:
        """Whether ``value`` lies inside (NaN never does)."""
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}]"


# SamplingParams field -> its bound (top_k also refuses 0; see sampling_violation).
SAMPLING_BOUNDS: dict[str, Bound] = {
    "max_tokens": Bound(1, INT32_MAX),
    "temperature": Bound(0.0, 2.0),
    "top_p": Bound(0.0, 1.0, low_open=True),
    "top_k": Bound(-1, INT32_MAX),
    "min_p": Bound(0.0, 1.0),
    "seed": Bound(INT64_MIN, INT64_MAX),
    "presence_penalty": Bound(-2.0, 2.0),
    "frequency_penalty": Bound(-2.0, 2.0),
    "repetition_penalty": Bound(0.0, 10.0, low_open=True),
    "n": Bound(1, MAX_N),
    "top_logprobs": Bound(0, MAX_TOP_LOGPROBS),
}
TOKEN_ID_BOUND = Bound(0, MAX_TOKEN_ID)
LOGIT_BIAS_BOUND = Bound(-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
# vLLM's per-request priority (lower runs sooner).
PRIORITY_BOUND = Bound(INT64_MIN, INT64_MAX)


class Violation(NamedTuple):
    """The parameter that is out of bounds and a message that says how."""

    param: str
    message: str


def sampling_violation(params: SamplingParams) -> Violation | None:
    """The first parameter of ``params`` outside its bound, or None when all are inside."""
    for name, bound in SAMPLING_BOUNDS.items():
        value = getattr(params, name)
        if value is not None and not bound.admits(value):
            return Violation(name, f"{name} must be in {bound.describe()}, got {_number(value)}")
    if params.top_k == 0:
        return Violation("top_k", "top_k must be -1 (disabled) or >= 1, got 0")
    if len(params.stop) > MAX_STOP_STRINGS:
        return Violation("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(params.stop)}")
    if any(len(s) > MAX_STOP_LENGTH for s in params.stop):
        return Violation("stop", f"a stop string may have at most {MAX_STOP_LENGTH} characters")
    if len(params.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        return Violation(
            "stop_token_ids",
            f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids, got {len(params.stop_token_ids)}",
        )
    if not all(TOKEN_ID_BOUND.admits(t) for t in params.stop_token_ids):
        return Violation("stop_token_ids", f"stop_token_ids must be in {TOKEN_ID_BOUND.describe()}")
    if not all(TOKEN_ID_BOUND.admits(t) for t in params.logit_bias):
        return Violation("logit_bias", f"logit_bias keys must be in {TOKEN_ID_BOUND.describe()}")
    if not all(LOGIT_BIAS_BOUND.admits(v) for v in params.logit_bias.values()):
        return Violation(
            "logit_bias", f"logit_bias values must be in {LOGIT_BIAS_BOUND.describe()}"
        )
    return None


def token_ids_violation(token_ids: list[int], param: str) -> Violation | None:
    """A prompt of token ids with an id no vocabulary can have (checked in C: min and max)."""
    if token_ids and not (
        TOKEN_ID_BOUND.admits(min(token_ids)) and TOKEN_ID_BOUND.admits(max(token_ids))
    ):
        return Violation(param, f"token ids must be in {TOKEN_ID_BOUND.describe()}")
    return None


def priority_violation(priority: int | None) -> Violation | None:
    if priority is not None and not PRIORITY_BOUND.admits(priority):
        return Violation("priority", f"priority must be in {PRIORITY_BOUND.describe()}")
    return None


def _number(value: float) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return f"{value:g}"
    return str(value)
