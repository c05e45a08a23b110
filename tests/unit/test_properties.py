"""Properties checked by hypothesis: cursors, job ids, result entries and credential parsing
hold for any input, not just the examples written down elsewhere."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from joblot.app import JobType
from joblot.auth import credential, digest
from joblot.batch import to_result
from joblot.errors import InvalidParameter
from joblot.models import (
    TRANSITIONS,
    JobState,
    ResultEntry,
    Status,
    after_claim,
    after_finish,
    after_requeue,
    after_stop,
    failure_entry,
    new_job_id,
    success_entry,
)
from joblot.params import JOB_ID, LIST_KEY, decode_cursor, encode_cursor
from joblot.store.common import finished_prefix, unfinished_list_key

PROPERTY = settings(max_examples=200, derandomize=True, deadline=None)
RESULT_INDEX = re.compile(r"\d{1,12}")  # what /results accepts inside its cursors
MAX_ID_TIME = (2**48 - 1) / 1000  # new_job_id keeps 48 bits of milliseconds
MAX_KEY_TIME = 10**10  # list keys invert microseconds below 10**16

any_char = st.characters(codec=None, categories=None)  # surrogates and NUL included
any_text = st.text(any_char, max_size=300)
times = st.floats(min_value=1, max_value=MAX_KEY_TIME - 1, allow_nan=False)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
item_ids = st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=40)
ENTRY_KEYS = ["index", "success", "id", "action", "error", "details"]


def _item(item_id: Any) -> dict[str, Any]:
    return {} if item_id is None else {"id": item_id}


# -- cursors --------------------------------------------------------------------------------


@st.composite
def list_keys(draw: st.DrawFn) -> str:
    """Listing keys as the stores build them: unfinished, or finished at some later time."""
    created = draw(times)
    key = unfinished_list_key(created, new_job_id(min(created, MAX_ID_TIME)))
    if draw(st.booleans()):
        key = finished_prefix(draw(times)) + key[1:]
    return key


@PROPERTY
@given(list_keys())
def test_every_list_key_round_trips_through_a_cursor(key: str) -> None:
    assert LIST_KEY.fullmatch(key)
    cursor = encode_cursor(key)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor), "cursors are URL-safe as they are"
    assert decode_cursor(cursor, LIST_KEY) == key


@PROPERTY
@given(st.integers(min_value=0, max_value=10**12 - 1))
def test_every_result_index_round_trips_through_a_cursor(index: int) -> None:
    assert decode_cursor(encode_cursor(str(index)), RESULT_INDEX) == str(index)


@PROPERTY
@given(st.one_of(any_text, st.binary(max_size=80).map(lambda b: encode_cursor(b.hex()))))
@example("")
@example("\x00")
@example("' OR 1=1 --")
@example(encode_cursor("' OR 1=1 --"))
@example(encode_cursor("0" * 49 + "' OR 1=1 --"))
@example("A" * 5000)
def test_a_garbage_cursor_is_refused_with_invalid_parameter(cursor: str) -> None:
    for pattern in (LIST_KEY, RESULT_INDEX):
        try:
            value = decode_cursor(cursor, pattern)
        except InvalidParameter:
            continue
        # the rare garbage that decodes to a well-formed key is a key like any other
        assert value is not None and pattern.fullmatch(value) and len(cursor) <= 200


@PROPERTY
@given(any_text.filter(lambda text: not re.fullmatch(r"[A-Za-z0-9_=-]*", text)))
def test_a_cursor_with_characters_this_server_never_emits_decodes_to_no_key(cursor: str) -> None:
    with pytest.raises(InvalidParameter):
        decode_cursor(cursor + "'; DROP TABLE jobs; --", LIST_KEY)


# -- job ids --------------------------------------------------------------------------------


@PROPERTY
@given(st.floats(min_value=0, max_value=MAX_ID_TIME, allow_nan=False))
def test_a_job_id_is_32_lowercase_hex_with_the_uuidv7_version_and_variant(now: float) -> None:
    job_id = new_job_id(now)
    assert JOB_ID.fullmatch(job_id)
    assert job_id[12] == "7" and job_id[16] in "89ab"
    assert int(job_id[:12], 16) == int(now * 1000)


@PROPERTY
@given(
    st.floats(min_value=0, max_value=MAX_ID_TIME, allow_nan=False),
    st.floats(min_value=0, max_value=MAX_ID_TIME, allow_nan=False),
)
def test_job_ids_are_ordered_by_creation_time(a: float, b: float) -> None:
    earlier, later = sorted((a, b))
    first, second = new_job_id(earlier), new_job_id(later)
    if int(earlier * 1000) < int(later * 1000):
        assert first < second
    else:
        assert first[:12] == second[:12], "the same millisecond shares the time prefix"


def test_job_ids_made_in_one_millisecond_are_distinct() -> None:
    ids = {new_job_id(1_700_000_000.0) for _ in range(10_000)}
    assert len(ids) == 10_000


# -- result entries -------------------------------------------------------------------------


returned_dicts = st.dictionaries(
    st.sampled_from(ENTRY_KEYS) | st.text(max_size=20), json_values, max_size=8
)
typed_returned_dicts = st.dictionaries(
    st.sampled_from(ENTRY_KEYS) | st.text(max_size=20), json_values, max_size=8
).map(
    lambda d: {k: v for k, v in d.items() if k not in ("action", "error", "details")}
) | st.fixed_dictionaries(
    {},
    optional={k: st.none() | st.text(max_size=20) for k in ("action", "error", "details")},
)


@PROPERTY
@given(
    st.integers(min_value=0, max_value=10**9),
    item_ids,
    st.none() | st.text(min_size=1, max_size=20),
    returned_dicts,
)
def test_a_success_entry_keeps_index_and_success_whatever_the_handler_returns(
    index: int, item_id: Any, action: str | None, returned: dict[str, Any]
) -> None:
    entry = success_entry(index, _item(item_id), action, returned)
    assert entry["index"] == index and entry["success"] is True
    assert next(iter(entry)) == "index", "index comes first, as in Zendesk's results"
    for key, value in returned.items():
        if key not in ("index", "success", "action", "error", "details"):
            assert entry[key] == value, "the handler's own keys are kept"
    if action is not None:
        assert entry["action"] == action, "the declared action is authoritative"
    for key in ("action", "error", "details"):
        assert isinstance(entry.get(key), str | None), f"{key} is text, as Zendesk's"
    if item_id is not None and "id" not in returned:
        assert entry["id"] == item_id
    assert orjson.loads(orjson.dumps(entry)) == entry


@PROPERTY
@given(
    st.integers(min_value=0, max_value=10**9),
    item_ids,
    st.none() | st.text(min_size=1, max_size=20),
    typed_returned_dicts,
)
def test_a_success_entry_parses_as_a_result_entry(
    index: int, item_id: Any, action: str | None, returned: dict[str, Any]
) -> None:
    parsed = ResultEntry.model_validate(success_entry(index, _item(item_id), action, returned))
    assert parsed.index == index and parsed.success is True


# Written as examples, not a property: a failing hypothesis test makes hypothesis import
# libcst for its patch hint, which (where installed) warns, and warnings are errors here.
@pytest.mark.parametrize(
    ("key", "value"), [("action", 5), ("error", ["x"]), ("details", {"a": 1}), ("action", False)]
)
def test_a_success_entry_parses_whatever_type_the_handler_gives_action_error_details(
    key: str, value: Any
) -> None:
    ResultEntry.model_validate(success_entry(0, {"id": 1}, "update", {key: value}))


@PROPERTY
@given(
    st.integers(min_value=0, max_value=10**9),
    item_ids,
    st.none() | st.text(min_size=1, max_size=20),
    st.text(min_size=1, max_size=40),
    st.text(max_size=200),
)
def test_a_failure_entry_always_parses_as_a_failed_result(
    index: int, item_id: Any, action: str | None, error: str, details: str
) -> None:
    entry = failure_entry(index, _item(item_id), action, error, details)
    parsed = ResultEntry.model_validate(entry)
    assert (parsed.index, parsed.success, parsed.error, parsed.details) == (
        index,
        False,
        error,
        details,
    )
    assert parsed.action == action and entry.get("id") == item_id


class _Unserializable:
    pass


handler_returns = st.recursive(
    json_scalars
    | st.floats()
    | st.text(any_char, max_size=10)
    | st.integers()
    | st.binary(max_size=4)
    | st.builds(_Unserializable),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=8,
)


def _noop(item: dict[str, Any], ctx: object) -> None:
    return None


@PROPERTY
@given(st.integers(min_value=0, max_value=10**9), item_ids, handler_returns)
def test_whatever_a_handler_returns_the_worker_records_an_entry_for_that_item(
    index: int, item_id: Any, returned: Any
) -> None:
    finished = to_result(JobType("t", _noop, action="update"), index, _item(item_id), returned)
    entry = orjson.loads(finished.entry)
    assert finished.index == entry["index"] == index
    assert finished.success is entry["success"]
    if not finished.success:
        assert entry["error"] == "InvalidResult" and entry["details"]


# -- credentials ----------------------------------------------------------------------------


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


headers = st.one_of(
    any_text,
    any_text.map(lambda t: "Bearer " + t),
    any_text.map(lambda t: "basic " + t),
    st.binary(max_size=200).map(_basic),
    st.tuples(any_text, any_text).map(
        lambda p: _basic(f"{p[0]}/token:{p[1]}".encode("utf-8", "surrogatepass"))
    ),
    st.text(any_char, min_size=4000, max_size=5000),
)


@PROPERTY
@given(st.none() | headers)
@example("Bearer")
@example("Basic !!!")
@example("Basic \udcff")
@example("\x00Bearer \x00")
def test_reading_a_credential_never_raises_and_its_digest_never_raises(
    header: str | None,
) -> None:
    token = credential(header)
    assert token is None or (isinstance(token, str) and token)
    if token is not None:
        assert len(digest(token)) == 64


token_text = st.text(
    st.characters(codec="ascii", min_codepoint=0x21, max_codepoint=0x7E), min_size=1
)


@PROPERTY
@given(token_text, st.text(st.characters(exclude_characters=":"), max_size=40))
def test_a_token_comes_back_from_bearer_and_from_zendesk_basic(token: str, email: str) -> None:
    assert credential(f"Bearer {token}") == token
    assert credential(f"bearer   {token}  ") == token
    assert credential(_basic(f"{email}/token:{token}".encode())) == token


# -- lifecycle rules ------------------------------------------------------------------------

events = st.lists(
    st.tuples(st.sampled_from(["claim", "finish", "requeue", "stop", "abort"]), st.integers(0, 5)),
    max_size=40,
)


def _apply(state: JobState, event: str, n: int, claimed: int) -> tuple[JobState, int]:
    """One event a store could apply to a job with `claimed` items out under leases."""
    if event == "claim":
        n = min(n, state.pending)
        return (after_claim(state, n), claimed + n) if n else (state, claimed)
    if event == "finish":
        done = min(n, claimed)
        return after_finish(state, done, done // 2, None, 1.0), claimed - done
    if event == "requeue":
        back = min(n, claimed)
        return after_requeue(state, back), claimed - back
    if state.status.finished:  # stopping a finished job is refused (JobFinished)
        return state, claimed
    return after_stop(state, None if event == "stop" else "Aborted"), claimed


@PROPERTY
@given(st.integers(1, 12), st.none() | st.integers(0, 3), events)
def test_the_rules_only_ever_make_the_moves_the_lifecycle_allows(
    total: int, max_failures: int | None, happenings: list[tuple[str, int]]
) -> None:
    state = JobState(Status.QUEUED, total, 0, 0, total, None, False, max_failures)
    claimed = 0
    for event, n in happenings:
        new, claimed = _apply(state, event, n, claimed)
        assert new.status is state.status or new.status in TRANSITIONS[state.status]
        assert new.progress + new.pending + claimed + new.skipped == total
        state = new
