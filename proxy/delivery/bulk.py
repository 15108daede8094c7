"""Bulk delivery in Dapr's bulk-subscribe shape: the request body and the app's answer. Pure
logic, no I/O (the lane that sends bulks is :mod:`proxy.delivery.bulk_lane`).

With ``--bulk-max-records N`` a lane sends up to N of its records in one POST::

    {"topic": "orders", "metadata": {"kafka-topic": "orders", "kafka-partition": "3"},
     "entries": [{"entryId": "1042", "event": ..., "contentType": "...",
                  "metadata": {"kafka-offset": "1042", "baggage": "tenant=123", ...}}, ...]}

- ``entryId`` is the record's offset in decimal: unique within a bulk (a lane holds records of
  one partition), the same on every retry and after a restart, so an app may deduplicate by it.
- ``metadata`` holds the headers a single delivery of the record would carry (``kafka-*``,
  ``content-type``, ``traceparent``, ``baggage``, ``ktp-delivery`` ...), checked the same way.
- ``event``: with the raw format, the value in base64 and ``contentType`` the record's content
  type (Dapr's ``rawPayload``); with ``--format cloudevents``, the CloudEvent as a JSON object
  and ``contentType`` ``application/cloudevents+json`` (:func:`cloud_event`).

The app answers ``{"statuses": [{"entryId": "1042", "status": "SUCCESS"}, ...]}``;
:func:`read_answer` turns that into one outcome per entry sent. As in Dapr: ``SUCCESS`` is
done, ``DROP`` is done without delivery, ``RETRY``, an empty or unknown status and an entry the
answer leaves out are retried; entry ids that were not sent are ignored (and counted); an answer
that is not a JSON object with a ``statuses`` list retries every entry.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import operator
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.delivery import cloudevents

# --bulk-max-records at most (Dapr's default maxMessagesCount is 100). The app's answer names
# every entry: the client keeps ANSWER_BYTES_PER_ENTRY per entry of an answer to a bulk (an
# entry's status pretty-printed with a 19-digit offset takes about 90), see answer_bytes().
MAX_BULK_RECORDS = 1000
ANSWER_BYTES_PER_ENTRY = 128
DEFAULT_BULK_MAX_WAIT = 0.01
BULK_CONTENT_TYPE = "application/json"
CLOUDEVENT_CONTENT_TYPE = "application/cloudevents+json"

SUCCESS = "SUCCESS"
RETRY = "RETRY"
DROP = "DROP"


class EntryOutcome(enum.Enum):
    """What one entry's status in the app's answer means for its record."""

    DONE = "done"
    RETRY = "retry"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class EntryVerdict:
    """An entry's outcome and the reason recorded with it (attempt metric, dead-letter header)."""

    outcome: EntryOutcome
    reason: str


ENTRY_OK = EntryVerdict(EntryOutcome.DONE, "ok")
ENTRY_DROP = EntryVerdict(EntryOutcome.DROP, "app_drop")
ENTRY_RETRY = EntryVerdict(EntryOutcome.RETRY, "app_retry")
ENTRY_MISSING = EntryVerdict(EntryOutcome.RETRY, "bulk_missing_entry")
ENTRY_UNKNOWN_STATUS = EntryVerdict(EntryOutcome.RETRY, "bulk_unknown_status")
ENTRY_CONFLICT = EntryVerdict(EntryOutcome.RETRY, "bulk_conflicting_status")
ENTRY_MALFORMED = EntryVerdict(EntryOutcome.RETRY, "bulk_malformed_answer")

_STATUSES = {SUCCESS: ENTRY_OK, DROP: ENTRY_DROP, RETRY: ENTRY_RETRY}
_STATUS = operator.itemgetter("status")
_ENTRY_ID = operator.itemgetter("entryId")
_ALL_SUCCESS = {SUCCESS}


@dataclass(frozen=True, slots=True)
class BulkAnswer:
    """The app's answer to one bulk, read: a verdict for every entry id sent, the number of
    entry ids in the answer that were not sent, and what was wrong with an unreadable answer."""

    verdicts: Mapping[str, EntryVerdict]
    unknown_ids: int = 0
    problem: str | None = None
    conflicts: int = 0
    #: Every entry sent is ``SUCCESS`` (nearly every answer: the lane's fast path).
    all_ok: bool = False


def answer_bytes(max_records: int) -> int:
    """How much of an answer the client must keep for bulks of ``max_records`` entries."""
    return 4096 + ANSWER_BYTES_PER_ENTRY * max_records


def entry_id(offset: int) -> str:
    """An entry's id: its record's offset (see the module doc)."""
    return str(offset)


def read_answer(body: bytes, sent: Collection[str]) -> BulkAnswer:
    """Read a 2xx answer to a bulk of the entry ids ``sent`` (see the module doc).

    Never raises: whatever the app sent, every id in ``sent`` gets a verdict. A status is read
    case-insensitively, as single deliveries read Dapr's ``{"status": ...}``. An id the answer
    gives twice with different statuses is retried (the app's answer is not one answer).
    """
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return _all(sent, ENTRY_MALFORMED, f"the answer is not JSON ({str(exc)[:80]})")
    if not isinstance(parsed, dict):
        return _all(sent, ENTRY_MALFORMED, 'the answer is not a JSON object {"statuses": [...]}')
    statuses = parsed.get("statuses")
    if not isinstance(statuses, list):
        return _all(sent, ENTRY_MALFORMED, 'the answer has no "statuses" list')
    if len(statuses) == len(sent):
        # Nearly every answer: each entry sent once, SUCCESS as Dapr spells it. Checked by two
        # C-level passes (no Python code per entry); anything else (an item that is not an
        # object, a status or id missing or unhashable) is read one item at a time below.
        try:
            if set(map(_STATUS, statuses)) == _ALL_SUCCESS and set(map(_ENTRY_ID, statuses)) == (
                sent if isinstance(sent, (set, frozenset)) else set(sent)
            ):
                return BulkAnswer(dict.fromkeys(sent, ENTRY_OK), all_ok=True)
        except (TypeError, KeyError):
            pass
    verdicts: dict[str, EntryVerdict] = {}
    unknown = 0
    conflicts = 0
    for item in statuses:
        if not isinstance(item, dict):
            continue  # its entry, if any, is missing from the answer: retried
        entry = item.get("entryId")
        if not isinstance(entry, str) or entry not in sent:
            unknown += 1
            continue
        status = item.get("status")
        verdict = _STATUSES.get(status.upper(), ENTRY_UNKNOWN_STATUS) if isinstance(status, str) else ENTRY_UNKNOWN_STATUS
        before = verdicts.get(entry)
        if before is not None and before != verdict:
            if before is not ENTRY_CONFLICT:
                conflicts += 1
            verdict = ENTRY_CONFLICT
        verdicts[entry] = verdict
    if len(verdicts) < len(sent):
        for entry in sent:
            if entry not in verdicts:
                verdicts[entry] = ENTRY_MISSING
    return BulkAnswer(verdicts, unknown, None, conflicts, all(v is ENTRY_OK for v in verdicts.values()))


def _all(sent: Collection[str], verdict: EntryVerdict, problem: str) -> BulkAnswer:
    return BulkAnswer(dict.fromkeys(sent, verdict), 0, problem)


# -- the request ----------------------------------------------------------------------------------


def raw_event(value: bytes | None) -> str:
    """``event`` of an entry in the raw format: the value in base64 (Dapr's rawPayload); a
    tombstone is the empty string, told apart by ``kafka-tombstone`` in the metadata."""
    return base64.b64encode(value).decode("ascii") if value else ""


def entry_json(entry_id: str, event_json: str, content_type: str, metadata: Mapping[str, str]) -> str:
    """One entry of a bulk request as JSON text (ASCII), built once and sent on every attempt.

    ``event_json`` is the event already as JSON text. Metadata values are checked HTTP field
    values (visible ASCII, space, tab) and names are tokens, so they are nearly always JSON
    strings as they are: written by hand and checked (no backslash, control or non-ASCII
    character, and exactly the quotes we put in), else encoded by ``json``.
    """
    if metadata:
        pairs = '","'.join(map('":"'.join, metadata.items()))
        plain = f'{entry_id}{content_type}{pairs}'
        # Printable ASCII (no control or non-ASCII character), no backslash, only our quotes.
        if (
            plain.isascii()
            and plain.isprintable()
            and "\\" not in plain
            and plain.count('"') == 4 * len(metadata) - 2
        ):
            return (
                f'{{"entryId":"{entry_id}","event":{event_json},"contentType":"{content_type}",'
                f'"metadata":{{"{pairs}"}}}}'
            )
    return (
        f'{{"entryId":{json.dumps(entry_id)},"event":{event_json},"contentType":{json.dumps(content_type)},'
        f'"metadata":{json.dumps(dict(metadata), separators=(",", ":"))}}}'
    )


def raw_event_json(value: bytes | None) -> str:
    """:func:`raw_event` as JSON text (base64 needs no escaping)."""
    return f'"{binascii.b2a_base64(value, newline=False).decode("ascii")}"' if value else '""'


def event_json(event: Any) -> str:
    """A JSON event (a CloudEvent) as ASCII JSON text."""
    return json.dumps(event, separators=(",", ":"))


def encode_body(topic: str, partition: int, entries: Sequence[str]) -> bytes:
    """The bulk request body, from entries made by :func:`entry_json`."""
    name = json.dumps(topic)
    head = f'{{"topic":{name},"metadata":{{"kafka-topic":{name},"kafka-partition":"{partition}"}},"entries":['
    if not entries:
        return f"{head}]}}".encode("ascii")
    # The head and the tail go onto the first and last entries, so the whole body (tens of KB)
    # is copied twice (join, encode), not three times.
    parts = list(entries)
    parts[0] = head + parts[0]
    parts[-1] += "]}"
    return ",".join(parts).encode("ascii")


def _json_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _text_type(content_type: str | None) -> bool:
    return content_type is not None and content_type.lower().startswith("text/")


def _put_data(event: dict[str, Any], value: bytes | None, content_type: str | None) -> None:
    """``data`` or ``data_base64`` by the CloudEvents JSON format: JSON content as JSON, text
    as a string, anything else (or content that is not what its type says) in base64."""
    if value is None:
        return
    if _json_type(content_type):
        try:
            event["data"] = json.loads(value)
            return
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
    elif _text_type(content_type):
        try:
            event["data"] = value.decode("utf-8")
            return
        except UnicodeDecodeError:
            pass
    event["data_base64"] = base64.b64encode(value).decode("ascii")


def _utf8(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def cloud_event(
    *,
    source: str,
    partition: int,
    offset: int,
    timestamp: int,
    key: bytes | None,
    value: bytes | None,
    record_headers: Sequence[tuple[str, bytes]],
    content_type: str | None,
) -> tuple[dict[str, Any], int]:
    """A record as a CloudEvent in the JSON format, and how many attributes were left out (a
    value that is not UTF-8 cannot be a CloudEvents string).

    The same three kinds as for single deliveries (:mod:`proxy.delivery.cloudevents`): a
    structured-mode record whose value is a JSON object is that event; a Kafka binary-mode
    CloudEvent keeps its ``ce_*`` attributes; any other record is wrapped as Knative wraps a
    plain Kafka record. ``content_type`` is the record's own valid content type, if it had one.
    A structured-mode record whose value is not a JSON object cannot be put in the JSON body as
    it is: it is wrapped like a plain record (its bytes in ``data_base64``).
    """
    if cloudevents.is_structured(content_type) and value is not None:
        try:
            parsed = json.loads(value)
        except (ValueError, UnicodeDecodeError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            return parsed, 0
    existing = None if cloudevents.is_structured(content_type) else cloudevents.kafka_binary_attributes(record_headers)
    if existing is not None:
        event: dict[str, Any] = dict(existing)
        _put_data(event, value, existing.get("datacontenttype") or content_type)
        return event, 0
    left_out = 0
    event = {
        "specversion": cloudevents.SPECVERSION,
        "id": f"partition:{partition}/offset:{offset}",
        "source": source,
        "type": cloudevents.KAFKA_EVENT_TYPE,
        "subject": f"partition:{partition}#{offset}",
    }
    time = cloudevents.event_time(timestamp)
    if time is not None:
        event["time"] = time
    if content_type is not None and not cloudevents.is_structured(content_type):
        event["datacontenttype"] = content_type
    if key is not None:
        key_text = _utf8(key)
        if key_text is None:
            left_out += 1
        else:
            event["key"] = key_text
            event["partitionkey"] = key_text
    seen: set[str] = set()
    for name, header in record_headers:
        attribute = cloudevents.extension_name(name)
        if attribute in seen or attribute in event:
            continue  # first occurrence wins; never over a context attribute
        seen.add(attribute)
        text = _utf8(header)
        if text is None:
            left_out += 1
        else:
            event[attribute] = text
    _put_data(event, value, content_type)
    return event, left_out
