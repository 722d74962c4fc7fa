"""What the simulator runs: programs as DAGs of LLM calls (static descriptions).

A call's token sequence (prompt, then output) is laid out as *segments*:
``(key, tokens)`` pairs. A key names a stretch of tokens that other calls
may share as a prefix (a system prompt, a conversation's history, a node of
a search tree); a key always follows the same keys before it, so "the first
``n`` tokens of key K are cached" is a well-defined prefix-cache state. The
output tokens are the tail of the last segment(s).
"""

from __future__ import annotations

Segment = tuple[str, int]


class CallSpec:
    """One LLM call of a program.

    ``parents``: indices of the calls that must complete first (empty: ready
    when the program starts). ``delay``: tool / interrupt seconds between the
    last parent's completion (or the program's arrival) and the call's issue.
    """

    __slots__ = (
        "decode_tokens",
        "delay",
        "index",
        "parents",
        "prompt_tokens",
        "segments",
        "starts",
        "thread",
    )

    def __init__(
        self,
        index: int,
        segments: tuple[Segment, ...],
        prompt_tokens: int,
        decode_tokens: int,
        parents: tuple[int, ...] = (),
        delay: float = 0.0,
        thread: int = 0,
    ) -> None:
        if prompt_tokens < 1 or decode_tokens < 1:
            raise ValueError("a call needs at least one prompt and one decode token")
        starts = []
        offset = 0
        for _, n in segments:
            starts.append(offset)
            offset += n
        if offset != prompt_tokens + decode_tokens:
            raise ValueError("segments must cover the prompt and the output exactly")
        if parents and max(parents) >= index:
            raise ValueError("parents must come before the call (topological order)")
        self.index = index
        self.segments = segments
        self.starts: tuple[int, ...] = tuple(starts)  # each segment's first token position
        self.prompt_tokens = prompt_tokens
        self.decode_tokens = decode_tokens
        self.parents = parents
        self.delay = delay
        self.thread = thread

    def __repr__(self) -> str:
        return (
            f"CallSpec({self.index}, prompt={self.prompt_tokens}, decode={self.decode_tokens}, "
            f"parents={self.parents}, delay={self.delay:.3g})"
        )


class ProgramSpec:
    """One agent program: its workload kind, arrival time and calls (topologically ordered)."""

    __slots__ = ("arrival", "calls", "kind", "program_id")

    def __init__(
        self, program_id: str, kind: str, calls: list[CallSpec], arrival: float = 0.0
    ) -> None:
        if not calls:
            raise ValueError("a program needs at least one call")
        self.program_id = program_id
        self.kind = kind
        self.calls = calls
        self.arrival = arrival

    @property
    def decode_tokens(self) -> int:
        return sum(c.decode_tokens for c in self.calls)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    def at(self, arrival: float) -> ProgramSpec:
        """The same program arriving at ``arrival`` (calls are shared, not copied)."""
        return ProgramSpec(self.program_id, self.kind, self.calls, arrival)
