"""JSON encoding and decoding of what joblot stores: item payloads and result entries, and the
one rule that makes any text a handler reports storable on both backends.

Storable text: every character survives except two that no database text can hold. A lone
surrogate (half of a UTF-16 pair, e.g. from `bytes.decode("utf-8", "surrogateescape")`) cannot
be written as UTF-8, so it becomes U+FFFD everywhere; a pair of them becomes the character it
encodes. U+0000 (NUL) is kept in result entries, where JSON writes it as `\\u0000`, but becomes
U+FFFD in a job's `message`: PostgreSQL's text columns refuse NUL, and SQLite does the same so
that both backends store one message alike.
"""

from __future__ import annotations

from typing import Any

import orjson

REPLACEMENT = "\ufffd"


def dumps(value: Any) -> bytes:
    """`value` as compact JSON bytes, in a right-sized buffer.

    orjson returns bytes backed by a larger allocation; keeping thousands of them (a job's
    payloads, a batch's results) costs a page each. One copy into an exact-size object is
    ten times cheaper than those page faults, and uses a tenth of the memory.
    """
    return memoryview(orjson.dumps(value)).tobytes()


def dumps_storable(value: Any) -> bytes:
    """`value` as JSON like `dumps`, with lone surrogates in its strings (keys included) made
    U+FFFD first if they are what stops it; other unserializable values still raise."""
    try:
        return dumps(value)
    except orjson.JSONEncodeError:
        cleaned = _without_surrogates_deep(value)
        if cleaned is value:
            raise
        return dumps(cleaned)


def decode_item(payload: bytes) -> dict[str, Any]:
    """A stored item payload as the dict a handler gets (non-objects read as `{}`)."""
    item = orjson.loads(payload)
    return item if isinstance(item, dict) else {}


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate made U+FFFD (a surrogate pair joined into its character)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def storable_text(text: str) -> str:
    """`text` as a job's `message` is stored: no lone surrogates and no NUL (both U+FFFD)."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    return without_surrogates(text)


def _without_surrogates_deep(value: Any) -> Any:
    """`value` with every string in it (dict keys too) passed through `without_surrogates`;
    the very same object when nothing needed a change."""
    if isinstance(value, str):
        return without_surrogates(value)
    if isinstance(value, dict):
        pairs = [
            (_without_surrogates_deep(k), _without_surrogates_deep(v)) for k, v in value.items()
        ]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(pairs, value.items(), strict=True)):
            return value
        return dict(pairs)
    if isinstance(value, list | tuple):
        items = [_without_surrogates_deep(v) for v in value]
        if all(v is v0 for v, v0 in zip(items, value, strict=True)):
            return value
        return items
    return value
