"""The program headers: what the SDK writes is exactly what the server reads back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrt.protocol import headers as h
from agentrt.protocol.engine import ProgramTag

ids = st.text(alphabet="abcdefABCDEF0123456789-._:", min_size=1, max_size=h.MAX_ID_LENGTH)


def test_format_writes_every_header_and_session_id_equals_program_id() -> None:
    out = h.format_headers(
        program_id="p1",
        thread_id="3",
        parent_call_id="c1",
        call_id="c2",
        program_name="research agent",
        interrupt_seconds=1.5,
    )
    assert out == {
        "x-agentrt-program": "p1",
        "x-session-id": "p1",
        "x-agentrt-thread": "3",
        "x-agentrt-parent-call": "c1",
        "x-agentrt-call": "c2",
        "x-agentrt-program-name": "research%20agent",
        "x-agentrt-interrupt": "1.500000",
    }


def test_absent_values_are_left_out() -> None:
    out = h.format_headers(program_id="p", thread_id="0")
    assert set(out) == {h.PROGRAM, h.SESSION, h.THREAD}


@given(
    program_id=ids,
    thread_id=ids,
    parent=st.none() | ids,
    call=st.none() | ids,
    name=st.none() | st.text(min_size=1, max_size=50).filter(lambda s: s.strip() == s and s),
    interrupt=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_parse_reads_back_what_format_wrote(
    program_id: str,
    thread_id: str,
    parent: str | None,
    call: str | None,
    name: str | None,
    interrupt: float,
) -> None:
    written = h.format_headers(
        program_id=program_id,
        thread_id=thread_id,
        parent_call_id=parent,
        call_id=call,
        program_name=name,
        interrupt_seconds=interrupt,
    )
    # Header values must be plain ASCII on the wire.
    assert all(v.isascii() for v in written.values())
    parsed = h.parse_headers(written)
    assert parsed is not None
    assert (parsed.program_id, parsed.thread_id, parsed.parent_call_id, parsed.call_id) == (
        program_id,
        thread_id,
        parent,
        call,
    )
    assert parsed.program_name == name
    assert parsed.interrupt_seconds == pytest.approx(interrupt, abs=1e-6)


@given(
    program_id=ids,
    thread_id=ids,
    parent=st.none() | ids,
    call=ids,
    name=st.none() | st.text(max_size=50),
    interrupt=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_call_headers_from_program_headers_are_what_format_writes(
    program_id: str,
    thread_id: str,
    parent: str | None,
    call: str,
    name: str | None,
    interrupt: float,
) -> None:
    program = h.program_headers(program_id, name)
    kept = dict(program)
    out = h.call_headers(program, thread_id, parent, call, interrupt)
    assert out == h.format_headers(
        program_id=program_id,
        thread_id=thread_id,
        parent_call_id=parent,
        call_id=call,
        program_name=name,
        interrupt_seconds=interrupt,
    )
    assert program == kept  # the program's part is copied, never written to


def test_names_are_matched_case_insensitively_and_asgi_bytes_are_read() -> None:
    assert h.parse_headers({"X-AgentRT-Program": "p", "X-AgentRT-Thread": "2"}) == h.CallHeaders(
        program_id="p", thread_id="2"
    )
    raw = [(b"x-agentrt-program", b"p"), (b"x-agentrt-call", b"c9"), (b"content-type", b"x")]
    assert h.parse_asgi_headers(raw) == h.CallHeaders(program_id="p", call_id="c9")


def test_no_program_headers_means_no_program() -> None:
    assert h.parse_headers({"content-type": "application/json"}) is None


def test_a_bare_session_id_is_taken_as_the_program_id() -> None:
    parsed = h.parse_headers({"x-session-id": "sess-42"})
    assert parsed == h.CallHeaders(program_id="sess-42")


def test_the_program_header_wins_over_the_session_id() -> None:
    parsed = h.parse_headers({"x-session-id": "other", "x-agentrt-program": "p"})
    assert parsed is not None and parsed.program_id == "p"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (h.PROGRAM, "has space"),
        (h.PROGRAM, "x" * (h.MAX_ID_LENGTH + 1)),
        (h.THREAD, "a/b"),
        (h.CALL, "c;drop"),
        (h.PARENT_CALL, "é"),
        (h.INTERRUPT, "soon"),
        (h.INTERRUPT, "-1"),
        (h.INTERRUPT, "nan"),
        (h.INTERRUPT, "inf"),
        (h.PROGRAM_NAME, "%FF%FE"),
    ],
)
def test_malformed_headers_raise_a_header_error_naming_the_header(name: str, value: str) -> None:
    headers = {h.PROGRAM: "p", name: value}
    with pytest.raises(h.HeaderError) as info:
        h.parse_headers(headers)
    assert info.value.header == name
    assert name in str(info.value)


def test_a_program_name_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(h.HeaderError):
        h.parse_headers({h.PROGRAM: "p", h.PROGRAM_NAME: "n" * (h.MAX_NAME_LENGTH + 1)})


@pytest.mark.parametrize(
    ("path", "is_call"),
    [
        ("/chat/completions", True),
        ("/completions", True),
        ("/responses", True),
        ("/v1/chat/completions", True),
        ("/v1/completions/", True),
        ("/v1/models", False),
        ("/v1/responses/resp_1", False),
        ("/v1/programs", False),
        ("/v1/my_completions", False),
        ("/search", False),
    ],
)
def test_llm_call_paths(path: str, is_call: bool) -> None:
    assert h.is_llm_call_path(path) is is_call


def test_parsed_headers_fill_the_engine_program_tag() -> None:
    parsed = h.parse_headers(h.format_headers(program_id="p", thread_id="1", parent_call_id="c"))
    assert parsed is not None
    tag = ProgramTag(
        program_id=parsed.program_id,
        thread_id=parsed.thread_id,
        parent_call_id=parsed.parent_call_id,
    )
    assert tag == ProgramTag(program_id="p", thread_id="1", parent_call_id="c")


@given(seconds=st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_seconds_are_written_with_six_decimals_to_the_nearest_microsecond(seconds: float) -> None:
    written = h.format_seconds(seconds)
    whole, _, micros = written.partition(".")
    assert whole.isdigit() and len(micros) == 6 and micros.isdigit()
    assert abs(float(written) - seconds) <= 0.5e-6 + seconds * 1e-15


def test_seconds_beyond_a_microsecond_double_are_written_as_floats_are() -> None:
    assert h.format_seconds(float("inf")) == "inf"
    assert h.format_seconds(1e20) == f"{1e20:.6f}"
    assert h.format_seconds(0.0) == "0.000000"
    assert h.format_seconds(12.5) == "12.500000"
