"""Incremental detokenization: equals a full decode, holds back partial characters and stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrt.engine.detokenizer import (
    IncrementalDetokenizer,
    find_stop,
    partial_stop_suffix_len,
    token_text,
)
from agentrt.protocol.engine import InvalidRequest


@pytest.fixture(scope="module")
def byte_fallback_tokenizer() -> Any:
    """A Llama-2-style SentencePiece BPE: '▁' for spaces, <0xNN> byte-fallback tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", "▁Hello", "▁world", "H", "e", "l", "o", "w", "r", "d", "▁the", "!", "世"]:
        vocab[piece] = len(vocab)
    model = models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def stream(
    tokenizer: Any, ids: Sequence[int], chunks: Sequence[int] = (), **kw: Any
) -> tuple[list[str], IncrementalDetokenizer]:
    """Feed ``ids`` in chunks of the given sizes (1 by default); return every released piece."""
    detok = IncrementalDetokenizer(tokenizer, **kw)
    pieces, i, sizes = [], 0, list(chunks)
    while i < len(ids):
        n = sizes.pop(0) if sizes else 1
        pieces.append(detok.add(ids[i : i + n]).text)
        i += n
    pieces.append(detok.flush().text)
    return pieces, detok


def full_decode(tokenizer: Any, ids: Sequence[int], skip: bool = True) -> str:
    text: str = tokenizer.decode(
        list(ids), skip_special_tokens=skip, clean_up_tokenization_spaces=False
    )
    return text


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_streamed_text_equals_full_decode_on_random_tokens(
    smollm2_tokenizer: Any, data: st.DataObject
) -> None:
    vocab = len(smollm2_tokenizer)
    ids = data.draw(st.lists(st.integers(0, vocab - 1), max_size=40))
    chunks = data.draw(st.lists(st.integers(1, 4), max_size=40))
    skip = data.draw(st.booleans())
    pieces, detok = stream(smollm2_tokenizer, ids, chunks, skip_special_tokens=skip)
    assert "".join(pieces) == full_decode(smollm2_tokenizer, ids, skip)
    assert detok.text == "".join(pieces)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=30), chunks=st.lists(st.integers(1, 4), max_size=30))
def test_streamed_text_equals_full_decode_with_byte_fallback(
    byte_fallback_tokenizer: Any, text: str, chunks: list[int]
) -> None:
    # Random text, not random ids: the ByteFallback decoder turns a whole run of
    # byte tokens into U+FFFDs when the run is not valid UTF-8 (even its valid
    # bytes), which no streaming decoder can foresee; text makes the runs valid.
    ids = byte_fallback_tokenizer.encode(text, add_special_tokens=False)
    pieces, _ = stream(byte_fallback_tokenizer, ids, chunks)
    assert "".join(pieces) == full_decode(byte_fallback_tokenizer, ids)


@pytest.mark.parametrize(
    "text",
    ["Hello 😀 world 👩‍👩‍👧 done", "中文字符和日本語のテキスト", "naïve café — ½ ∑ 𝔸", "🎉🎉🎉"],
)
def test_multibyte_characters_are_never_split(smollm2_tokenizer: Any, text: str) -> None:
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # some characters span several tokens
    pieces, _ = stream(smollm2_tokenizer, ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_byte_fallback_pieces_are_held_until_complete(byte_fallback_tokenizer: Any) -> None:
    ids = byte_fallback_tokenizer.encode("Hello 世界!", add_special_tokens=False)
    pieces, _ = stream(byte_fallback_tokenizer, ids)
    assert "".join(pieces) == "Hello 世界!"
    assert all("\ufffd" not in p for p in pieces)
    # "界" is three byte tokens: the first two release nothing.
    assert pieces.count("") >= 2


def test_prompt_context_keeps_the_leading_space(byte_fallback_tokenizer: Any) -> None:
    vocab = byte_fallback_tokenizer.get_vocab()
    prompt = [vocab["▁Hello"]]
    output = [vocab["▁world"], vocab["!"]]
    pieces, _ = stream(byte_fallback_tokenizer, output, prompt_token_ids=prompt)
    assert "".join(pieces) == " world!"
    alone, _ = stream(byte_fallback_tokenizer, output)
    assert "".join(alone) == "world!"


def test_incomplete_utf8_at_the_end_is_flushed_as_a_full_decode_gives(
    smollm2_tokenizer: Any,
) -> None:
    ids = smollm2_tokenizer.encode("ok 😀", add_special_tokens=False)[:-1]
    detok = IncrementalDetokenizer(smollm2_tokenizer)
    released = "".join(detok.add([t]).text for t in ids)
    assert "\ufffd" not in released
    assert released + detok.flush().text == full_decode(smollm2_tokenizer, ids)


def test_special_tokens_are_hidden_unless_asked_for(smollm2_tokenizer: Any) -> None:
    ids = [
        *smollm2_tokenizer.encode("Paris.", add_special_tokens=False),
        smollm2_tokenizer.eos_token_id,
    ]
    hidden, _ = stream(smollm2_tokenizer, ids)
    shown, _ = stream(smollm2_tokenizer, ids, skip_special_tokens=False)
    assert "".join(hidden) == "Paris."
    assert "".join(shown) == "Paris.<|im_end|>"


def test_stop_string_split_across_tokens_cuts_the_text(smollm2_tokenizer: Any) -> None:
    text = "Thought: look it up\nObservation: found it"
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(smollm2_tokenizer, stop=["Observation:"])
    released, hit_at = [], None
    for i, t in enumerate(ids):
        delta = detok.add([t])
        released.append(delta.text)
        if delta.stop is not None:
            hit_at = i
            break
    assert detok.stop_reason == "Observation:" and detok.finished
    assert "".join(released) == "Thought: look it up\n"
    # Nothing that could start the stop string was released before the hit.
    assert not any("Obs" in p for p in released)
    assert hit_at is not None and hit_at < len(ids) - 1
    assert detok.add(ids[hit_at + 1 :]).text == ""
    assert detok.flush().text == ""


def test_stop_string_can_be_kept_in_the_output(smollm2_tokenizer: Any) -> None:
    ids = smollm2_tokenizer.encode("a b END c", add_special_tokens=False)
    pieces, detok = stream(smollm2_tokenizer, ids, stop=["END"], include_stop_str_in_output=True)
    assert "".join(pieces) == "a b END"
    assert detok.stop_reason == "END"


def test_held_back_prefix_is_released_when_no_stop_follows(smollm2_tokenizer: Any) -> None:
    text = "I will STAY and STOMP, then ST"
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    pieces, detok = stream(smollm2_tokenizer, ids, stop=["STOP"])
    assert "".join(pieces) == text
    assert detok.stop_reason is None


def test_stop_string_inside_a_multibyte_run(smollm2_tokenizer: Any) -> None:
    ids = smollm2_tokenizer.encode("答案是世界和平的", add_special_tokens=False)
    pieces, detok = stream(smollm2_tokenizer, ids, stop=["和平"])
    assert "".join(pieces) == "答案是世界"
    assert detok.stop_reason == "和平"


def test_earliest_stop_string_wins(smollm2_tokenizer: Any) -> None:
    ids = smollm2_tokenizer.encode("one two three", add_special_tokens=False)
    pieces, detok = stream(smollm2_tokenizer, ids, chunks=[len(ids)], stop=["three", "two"])
    assert "".join(pieces) == "one "
    assert detok.stop_reason == "two"


def test_empty_stop_string_is_rejected(smollm2_tokenizer: Any) -> None:
    with pytest.raises(InvalidRequest) as err:
        IncrementalDetokenizer(smollm2_tokenizer, stop=["", "x"])
    assert err.value.param == "stop"


class CountingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call sees."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.windows: list[int] = []

    def decode(self, ids: Sequence[int], **kw: Any) -> str:
        self.windows.append(len(ids))
        text: str = self.inner.decode(ids, **kw)
        return text


def test_each_step_decodes_a_small_window(smollm2_tokenizer: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog. 😀 世界. " * 20
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    counting = CountingTokenizer(smollm2_tokenizer)
    pieces, _ = stream(counting, ids, prompt_token_ids=list(range(100, 200)))
    assert "".join(pieces) == text
    assert len(ids) > 200
    assert max(counting.windows) <= 10


def test_token_text_shows_special_tokens(smollm2_tokenizer: Any) -> None:
    assert token_text(smollm2_tokenizer, smollm2_tokenizer.eos_token_id) == "<|im_end|>"
    hello = smollm2_tokenizer.encode(" hello", add_special_tokens=False)
    assert token_text(smollm2_tokenizer, hello[0]) == " hello"


def test_stop_helpers() -> None:
    assert find_stop("abcSTOPdef", ["def", "STOP"]) == (3, "STOP")
    assert find_stop("abc", ["x"]) is None
    assert find_stop("xab", ["a", "ab"]) == (1, "ab")
    assert partial_stop_suffix_len("hello ST", ["STOP"]) == 2
    assert partial_stop_suffix_len("hello", ["STOP"]) == 0
    assert partial_stop_suffix_len("xx\n\n", ["\n\n\n", "END"]) == 2
