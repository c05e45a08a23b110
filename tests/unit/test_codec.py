"""The rule that makes any text storable: lone surrogates, and NUL in messages, become U+FFFD."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from joblot.codec import dumps_storable, storable_text, without_surrogates

any_text = st.text(st.characters(codec=None, categories=None), max_size=200)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(any_text)
def test_any_text_becomes_utf8_and_a_message_has_no_nul(text: str) -> None:
    kept = without_surrogates(text)
    kept.encode("utf-8")  # does not raise
    message = storable_text(text)
    message.encode("utf-8")
    assert "\x00" not in message
    assert storable_text(message) == message  # stable: storing it again changes nothing


@settings(max_examples=300, derandomize=True, deadline=None)
@given(any_text)
def test_text_without_surrogates_or_nul_is_left_alone(text: str) -> None:
    clean = "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF and c != "\x00")
    assert without_surrogates(clean) is clean
    assert storable_text(clean) == clean


def test_lone_surrogates_become_the_replacement_character_and_pairs_their_character() -> None:
    assert without_surrogates("a\ud800b\udc00") == "a\ufffdb\ufffd"
    assert without_surrogates("\ud83d\ude00") == "\U0001f600"
    assert storable_text("x\x00y\udfff") == "x\ufffdy\ufffd"
    assert without_surrogates("x\x00y") == "x\x00y"  # JSON carries NUL as \u0000


def test_json_with_surrogates_is_stored_with_replacements_and_keeps_nul() -> None:
    value = {"k\ud800": ["\udfff", 1, {"n": "\x00"}], "t": ("\ud800",)}
    assert orjson.loads(dumps_storable(value)) == {
        "k\ufffd": ["\ufffd", 1, {"n": "\x00"}],
        "t": ["\ufffd"],
    }
    with pytest.raises(TypeError):
        dumps_storable({"x": object()})
