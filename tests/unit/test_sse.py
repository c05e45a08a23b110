"""The client's event-stream parser reads streams as the WHATWG EventSource does."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from joblot.sse import EventStreamParser, ServerSentEvent

STREAM = (
    b"retry: 1000\n\n"
    b": keep-alive\n\n"
    b'id: 3\nevent: job_status\ndata: {"a":\ndata:  1}\n\n'
    b"data: unnamed\n\n"
)


def _all(chunks: list[bytes], last_id: str | None = None) -> list[ServerSentEvent]:
    parser = EventStreamParser(last_id)
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_events_comments_retry_and_multi_line_data() -> None:
    parser = EventStreamParser()
    events = parser.feed(STREAM)
    assert events == [
        ServerSentEvent(event="job_status", data='{"a":\n 1}', id="3"),
        ServerSentEvent(event="message", data="unnamed", id="3"),  # the id carries over
    ]
    assert (parser.retry_ms, parser.comments, parser.last_id) == (1000, 1, "3")


def test_crlf_and_lone_cr_end_lines_too() -> None:
    for end in (b"\r\n", b"\r"):
        text = STREAM.replace(b"\n", end)
        assert _all([text]) == _all([STREAM]), end


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), unique=True))
def test_chunk_boundaries_change_nothing(cuts: list[int]) -> None:
    for text in (STREAM, STREAM.replace(b"\n", b"\r\n"), STREAM.replace(b"\n", b"\r")):
        edges = [0, *sorted(cuts), len(text)]
        chunks = [text[a:b] for a, b in pairwise(edges)]
        assert _all(chunks) == _all([text])


def test_a_character_cut_between_chunks_and_unicode_line_separators_stay_in_the_data() -> None:
    data = 'data: {"m": "caf\u00e9 \u2028 \u2029 \x85 \x1c"}\n\n'.encode()
    cut = data.index("\u00e9".encode()) + 1  # inside the two bytes of é
    assert _all([data[:cut], data[cut:]]) == [
        ServerSentEvent(event="message", data='{"m": "caf\u00e9 \u2028 \u2029 \x85 \x1c"}', id=None)
    ]


def test_a_byte_order_mark_is_skipped_only_at_the_start() -> None:
    assert _all([b"\xef\xbb", b"\xbfdata: x\n\n"]) == [ServerSentEvent("message", "x", None)]
    assert _all([b"data: x\n\n\xef\xbb\xbfdata: y\n\n"])[1:] == []  # a field named "\ufeffdata"


def test_fields_without_data_or_a_blank_line_dispatch_nothing() -> None:
    parser = EventStreamParser("7")
    assert parser.feed(b"event: job_status\nid: 9\n\n") == []
    assert parser.last_id == "9", "an id without data still moves the last event id"
    assert parser.feed(b"data: cut off before its blank line\n") == []


def test_fields_are_read_as_the_specification_says() -> None:
    parser = EventStreamParser()
    events = parser.feed(
        b"retry: soon\nid: a\x00b\ndata\ndata:no space\nunknown: x\nevent:named\n\n"
    )
    assert events == [ServerSentEvent(event="named", data="\nno space", id=None)]
    assert parser.retry_ms is None, "a retry that is not all digits is ignored"
