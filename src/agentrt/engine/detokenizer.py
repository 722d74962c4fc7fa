"""Token ids to text, one step at a time, for streaming.

Decoding each new token on its own is wrong (a character can span several
byte-level or byte-fallback tokens, and SentencePiece-style tokenizers decide
leading spaces from context), and re-decoding the whole output each step is
quadratic. :class:`IncrementalDetokenizer` decodes a small window instead:
the text of ``ids[prefix:]`` minus the text of ``ids[prefix:read]``, where
``read`` is where the emitted text ends and ``prefix`` a few tokens before
it for context. A window whose text ends in U+FFFD is an incomplete UTF-8
sequence: it is held back until the next token completes it (or until
:meth:`IncrementalDetokenizer.flush`, which emits it as it is).

Stop strings: text that could be the start of a stop string is held back
too; when one appears, the text before it is emitted, the stop string is
reported, and the detokenizer stops taking tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from agentrt.protocol.engine import InvalidRequest

# How many prompt tokens give the first output token its context (leading space, merges).
CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class DetokenizerDelta(NamedTuple):
    """What one call of :meth:`IncrementalDetokenizer.add` releases.

    ``text`` is safe to send to the client; ``stop`` is the stop string that
    matched (the choice must finish with ``finish_reason="stop"``), or None.
    """

    text: str
    stop: str | None = None


class IncrementalDetokenizer:
    """Streams the text of one choice's output tokens; cheap per token.

    ``tokenizer`` is a transformers tokenizer (anything with
    ``decode(ids, skip_special_tokens=..., clean_up_tokenization_spaces=...)``).
    Tokenization-space clean-up is never applied: it is not local to a
    window, and OpenAI-style servers return the model's text verbatim.
    With ``include_stop_str_in_output`` the matched stop string is part of
    the text (vLLM's flag); by default it is cut, as OpenAI does.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        prompt_token_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        if any(not s for s in stop):
            raise InvalidRequest("stop strings must not be empty", param="stop")
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = tuple(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        # Context tokens from the prompt's tail, then the output tokens.
        self._ids: list[int] = list(prompt_token_ids[-CONTEXT_TOKENS:])
        if self._decode(self._ids).endswith(REPLACEMENT_CHAR):
            self._ids = []  # a prompt cut mid-character is no usable context
        self._prefix = 0  # window start
        self._read = len(self._ids)  # end of the tokens whose text is released
        self._pending = ""  # decoded text held back because it may start a stop string
        self.text = ""  # everything released so far
        self.stop_reason: str | None = None
        self.num_output_tokens = 0

    @property
    def finished(self) -> bool:
        """True once a stop string matched; later tokens are ignored."""
        return self.stop_reason is not None

    def add(self, token_ids: Sequence[int]) -> DetokenizerDelta:
        """Take the newly generated tokens; return the text they release and any stop string hit."""
        if self.finished or not token_ids:
            return DetokenizerDelta("")
        self._ids.extend(token_ids)
        self.num_output_tokens += len(token_ids)
        new_text = self._decode(self._ids[self._prefix :])
        if new_text.endswith(REPLACEMENT_CHAR):
            return DetokenizerDelta("")  # an incomplete UTF-8 sequence: wait for its next bytes
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        self._prefix, self._read = self._read, len(self._ids)
        return self._release(self._pending + new_text[len(prefix_text) :])

    def flush(self) -> DetokenizerDelta:
        """Release everything still held back, as the choice finishes for another reason.

        An incomplete UTF-8 tail comes out as U+FFFD, like a full decode
        gives; a stop string completed by that tail still counts.
        """
        if self.finished:
            return DetokenizerDelta("")
        tail = ""
        if self._read < len(self._ids):
            tail = self._decode(self._ids[self._prefix :])[
                len(self._decode(self._ids[self._prefix : self._read])) :
            ]
            self._prefix = self._read = len(self._ids)
        text, self._pending = self._pending + tail, ""
        hit = find_stop(text, self.stop)
        if hit is not None:
            return self._stop_at(text, *hit)
        self.text += text
        return DetokenizerDelta(text)

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        text: str = self.tokenizer.decode(
            ids,
            skip_special_tokens=self.skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )
        return text

    def _release(self, text: str) -> DetokenizerDelta:
        if not self.stop:
            self.text += text
            return DetokenizerDelta(text)
        hit = find_stop(text, self.stop)
        if hit is not None:
            return self._stop_at(text, *hit)
        keep = partial_stop_suffix_len(text, self.stop)
        out, self._pending = text[: len(text) - keep], text[len(text) - keep :]
        self.text += out
        return DetokenizerDelta(out)

    def _stop_at(self, text: str, start: int, stop: str) -> DetokenizerDelta:
        out = text[: start + len(stop)] if self.include_stop_str_in_output else text[:start]
        self._pending = ""
        self.stop_reason = stop
        self.text += out
        return DetokenizerDelta(out, stop)


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """The earliest stop string in ``text`` (the longest one when several start there)."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(s) > len(best[1]))):
            best = (i, s)
    return best


def partial_stop_suffix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def token_text(tokenizer: Any, token_id: int) -> str:
    """The text of one token on its own, as logprobs report it (special tokens included)."""
    text: str = tokenizer.decode(
        [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    return text
