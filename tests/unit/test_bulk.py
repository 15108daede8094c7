"""Bulk delivery's pure part: the request body (Dapr's bulk-subscribe shape, CloudEvents in the
JSON format, checked with the cloudevents SDK) and the app's answer read into per-entry verdicts."""

from __future__ import annotations

import base64
import json
import random

import pytest
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.delivery import bulk
from proxy.delivery.bulk import (
    ENTRY_CONFLICT,
    ENTRY_DROP,
    ENTRY_MALFORMED,
    ENTRY_MISSING,
    ENTRY_OK,
    ENTRY_RETRY,
    ENTRY_UNKNOWN_STATUS,
    EntryOutcome,
    cloud_event,
    encode_body,
    read_answer,
)
from proxy.delivery.cloudevents import KAFKA_EVENT_TYPE, event_source, extension_name

SOURCE = event_source("orders-worker", "orders")
ids = st.lists(st.integers(0, 2**63 - 1).map(bulk.entry_id), min_size=1, max_size=bulk.MAX_BULK_RECORDS, unique=True)
statuses = st.sampled_from(["SUCCESS", "RETRY", "DROP", "success", "Drop", "", "LATER", None, 7])


def model(said: str | int | None) -> bulk.EntryVerdict:
    if not isinstance(said, str):
        return ENTRY_UNKNOWN_STATUS
    return {"SUCCESS": ENTRY_OK, "RETRY": ENTRY_RETRY, "DROP": ENTRY_DROP}.get(said.upper(), ENTRY_UNKNOWN_STATUS)


@given(
    sent=ids,
    plan=st.data(),
    strangers=st.lists(st.text(max_size=8), max_size=5),
    seed=st.integers(),
)
def test_every_entry_sent_gets_the_verdict_its_status_says(
    sent: list[str], plan: st.DataObject, strangers: list[str], seed: int
) -> None:
    # Each entry answered with some status, or left out; some answered twice alike; strangers.
    answered: dict[str, str | int | None] = {}
    items: list[dict[str, object]] = []
    for entry in sent:
        if plan.draw(st.booleans()):
            said = plan.draw(statuses)
            answered[entry] = said
            items.extend([{"entryId": entry, "status": said}] * plan.draw(st.integers(1, 2)))
    unknown = [s for s in strangers if s not in sent]
    items.extend({"entryId": s, "status": "SUCCESS"} for s in unknown)
    items.extend([{"status": "SUCCESS"}, "not an object", {"entryId": 12, "status": "SUCCESS"}])
    random.Random(seed).shuffle(items)
    got = read_answer(json.dumps({"statuses": items}).encode(), set(sent))
    assert got.problem is None and got.conflicts == 0
    assert set(got.verdicts) == set(sent)
    for entry in sent:
        assert got.verdicts[entry] == (model(answered[entry]) if entry in answered else ENTRY_MISSING)
    # The ones without entryId or with a number for it are not entries we sent either.
    assert got.unknown_ids == len(unknown) + 2


@given(sent=ids, first=statuses, second=statuses)
def test_an_entry_answered_twice_differently_is_retried(sent: list[str], first: str, second: str) -> None:
    entry = sent[0]
    body = json.dumps({"statuses": [{"entryId": entry, "status": first}, {"entryId": entry, "status": second}]})
    got = read_answer(body.encode(), set(sent))
    if model(first) == model(second):
        assert got.verdicts[entry] == model(first) and got.conflicts == 0
    else:
        assert got.verdicts[entry] == ENTRY_CONFLICT and got.conflicts == 1
        assert got.verdicts[entry].outcome is EntryOutcome.RETRY


@given(sent=ids, body=st.binary(max_size=200))
def test_any_bytes_give_every_entry_a_verdict_and_never_raise(sent: list[str], body: bytes) -> None:
    got = read_answer(body, set(sent))
    assert set(got.verdicts) == set(sent)


@settings(max_examples=200)
@given(
    sent=ids,
    junk=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=10,
    ),
)
def test_json_that_is_not_an_answer_retries_everything(sent: list[str], junk: object) -> None:
    if isinstance(junk, dict) and isinstance(junk.get("statuses"), list):
        junk = [junk]
    got = read_answer(json.dumps(junk).encode(), set(sent))
    assert got.problem is not None
    assert got.verdicts == dict.fromkeys(sent, ENTRY_MALFORMED)


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    got = read_answer(b"[" * 100_000 + b"]" * 100_000, {"1"})
    assert got.verdicts == {"1": ENTRY_MALFORMED}


@pytest.mark.parametrize("records", [1, 100, bulk.MAX_BULK_RECORDS])
@pytest.mark.parametrize("indent", [None, 4])
def test_the_largest_bulk_answer_fits_what_the_client_keeps(records: int, indent: int | None) -> None:
    # The client keeps bulk.answer_bytes(N) of an answer to bulks of N: enough for N of the
    # longest entry ids (19-digit offsets), written as json.dumps does, compact or pretty.
    longest = [bulk.entry_id(2**63 - 1 - n) for n in range(records)]
    answer = json.dumps({"statuses": [{"entryId": e, "status": "SUCCESS"} for e in longest]}, indent=indent).encode()
    assert len(answer) <= bulk.answer_bytes(records)
    assert read_answer(answer, set(longest)).verdicts == dict.fromkeys(longest, ENTRY_OK)


records = st.lists(
    st.tuples(
        st.integers(0, 2**40),
        st.none() | st.binary(max_size=64),
        st.dictionaries(st.sampled_from(["kafka-offset", "baggage", "traceparent", "content-type"]),
                        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)),
    ),
    min_size=1,
    max_size=bulk.MAX_BULK_RECORDS,
    unique_by=lambda r: r[0],
)


@given(records=records)
def test_the_body_carries_every_entry_in_order_in_ascii_json(
    records: list[tuple[int, bytes | None, dict[str, str]]]
) -> None:
    entries = [
        bulk.entry_json(bulk.entry_id(o), bulk.raw_event_json(v), "application/octet-stream", m) for o, v, m in records
    ]
    body = encode_body("orders", 3, entries)
    assert body.isascii()
    parsed = json.loads(body)
    assert parsed["topic"] == "orders" and parsed["metadata"] == {"kafka-topic": "orders", "kafka-partition": "3"}
    assert [e["entryId"] for e in parsed["entries"]] == [str(o) for o, _, _ in records]
    assert [base64.b64decode(e["event"]) for e in parsed["entries"]] == [v or b"" for _, v, _ in records]
    assert [e["metadata"] for e in parsed["entries"]] == [m for _, _, m in records]
    assert {e["contentType"] for e in parsed["entries"]} == {"application/octet-stream"}


field_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from('\t"\\'), max_size=12)


@settings(max_examples=500)
@given(
    entry_id=st.text(max_size=6) | st.integers(0, 2**63).map(str),
    content_type=field_text | st.text(max_size=8),
    metadata=st.dictionaries(field_text | st.text(max_size=6), field_text | st.text(max_size=6), max_size=8),
    event=st.none() | st.integers() | st.text(max_size=8) | st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
)
def test_hand_written_entry_json_is_what_json_would_write(
    entry_id: str, content_type: str, metadata: dict[str, str], event: object
) -> None:
    # Values with quotes, backslashes, tabs, controls or non-ASCII must take the encoder's path.
    text = bulk.entry_json(entry_id, bulk.event_json(event), content_type, metadata)
    assert text.isascii()
    assert json.loads(text) == {"entryId": entry_id, "event": event, "contentType": content_type, "metadata": metadata}


def read_event(event: dict[str, object]):  # type: ignore[no-untyped-def]
    """The event as the cloudevents SDK reads the JSON format."""
    return JSONFormat().read(None, json.dumps(event).encode())


@given(
    value=st.none() | st.binary(max_size=64),
    key=st.none() | st.binary(max_size=16),
    headers=st.lists(st.tuples(st.text(max_size=12), st.binary(max_size=16)), max_size=6),
    content_type=st.sampled_from([None, "application/json", "text/plain; charset=utf-8", "application/x+json", "image/png"]),
)
def test_a_plain_record_becomes_a_valid_cloudevent_with_its_data(
    value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]], content_type: str | None
) -> None:
    event, left_out = cloud_event(
        source=SOURCE, partition=3, offset=42, timestamp=1_700_000_000_123,
        key=key, value=value, record_headers=headers, content_type=content_type,
    )
    read = read_event(event)
    assert read.get_id() == "partition:3/offset:42" and read.get_type() == KAFKA_EVENT_TYPE
    assert read.get_source() == SOURCE and read.get_subject() == "partition:3#42"
    assert event["time"] == "2023-11-14T22:13:20.123Z"
    if value is None:
        assert "data" not in event and "data_base64" not in event
    elif "data_base64" in event:
        assert base64.b64decode(str(event["data_base64"])) == value
    elif content_type is not None and content_type.startswith("text/"):
        assert event["data"] == value.decode("utf-8")
    else:
        assert event["data"] == json.loads(value)
    seen: set[str] = set()
    undecodable = 1 if key is not None and not _utf8(key) else 0
    for name, header in headers:
        if extension_name(name) not in seen:
            seen.add(extension_name(name))
            undecodable += not _utf8(header)
    assert left_out == undecodable
    if key is not None and _utf8(key):
        assert event["key"] == event["partitionkey"] == key.decode()


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_record_headers_become_extensions_first_occurrence_wins_and_bad_utf8_is_left_out() -> None:
    event, left_out = cloud_event(
        source=SOURCE, partition=0, offset=1, timestamp=-1, key=None, value=b"{}",
        record_headers=[("Trace-Parent", b"00-ab"), ("traceparent", b"second"), ("x-bin", b"\xff")],
        content_type="application/json",
    )
    assert event["kafkaheadertraceparent"] == "00-ab" and "kafkaheaderxbin" not in event
    assert left_out == 1 and "time" not in event and event["data"] == {}
    assert event["datacontenttype"] == "application/json"


def test_a_structured_record_is_its_own_event_unless_it_is_not_a_json_object() -> None:
    own = {"specversion": "1.0", "id": "e-1", "source": "/orders", "type": "order.created", "data": {"n": 1}}
    event, _ = cloud_event(
        source=SOURCE, partition=0, offset=5, timestamp=0, key=None, value=json.dumps(own).encode(),
        record_headers=[], content_type="application/cloudevents+json",
    )
    assert event == own
    broken, _ = cloud_event(
        source=SOURCE, partition=0, offset=5, timestamp=0, key=None, value=b"[1, 2",
        record_headers=[], content_type="application/cloudevents+json",
    )
    assert broken["id"] == "partition:0/offset:5" and base64.b64decode(str(broken["data_base64"])) == b"[1, 2"
    assert "datacontenttype" not in broken
    read_event(broken)


def test_a_kafka_binary_cloudevent_keeps_its_attributes() -> None:
    headers = [
        ("ce_specversion", b"1.0"), ("ce_id", b"o-7"), ("ce_source", b"/shop"), ("ce_type", b"order.paid"),
        ("ce_datacontenttype", b"application/json"), ("ce_tenant", b"123"),
    ]
    event, left_out = cloud_event(
        source=SOURCE, partition=0, offset=5, timestamp=0, key=b"k", value=b'{"paid": true}',
        record_headers=headers, content_type=None,
    )
    assert left_out == 0
    assert event == {
        "specversion": "1.0", "id": "o-7", "source": "/shop", "type": "order.paid",
        "datacontenttype": "application/json", "tenant": "123", "data": {"paid": True},
    }
    assert read_event(event).get_extension("tenant") == "123"
