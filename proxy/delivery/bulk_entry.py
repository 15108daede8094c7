"""EntryWriter: bulk entries written as JSON straight from their records.

A bulk entry's metadata is the headers a single delivery of its record would carry
(:func:`proxy.delivery.headers.build_headers`, then the envelope's ``ktp-delivery``). Building
that dict, checking it and encoding it to JSON cost more than everything else a bulk does per
record, so for the usual record the writer goes from the record to the entry's JSON text in one
pass, once per bulk for all its records, with the per-partition part, the baggage header and the
content type written once and reused.

The usual record is one whose headers would all be forwarded as they are: every allowlisted
value a plain JSON string as well as a safe HTTP field value (visible ASCII and space, no ``"``
or ``\\``), a valid ``baggage`` (forwarded byte for byte), a valid content type, no allowlisted
name twice, and trace context in a configured format or none at all. For any other record
:meth:`EntryWriter.entries` gives None and the caller takes the general path (which counts,
logs, re-serializes and escapes); tests/unit/test_bulk_entry.py checks that both paths write the
same entry and keep the same delivery context for any record. Tracing on (a span per entry)
always takes the general path.
"""

from __future__ import annotations

import json
import re
from binascii import b2a_base64
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from proxy.delivery.headers import (
    DEFAULT_CONTENT_TYPE, MAX_HEADER_VALUE, content_type_sent, forwarded_baggage, key_is_plain, never_forwarded,
)
from proxy.delivery.bulk import CLOUDEVENT_CONTENT_TYPE
from proxy.telemetry.tracing import record_carrier

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from proxy.delivery.envelope import DeliveryEnvelope

# A safe HTTP field value (headers.py's _FIELD_VALUE: visible ASCII, inner spaces) that is also a
# JSON string as it is: no '"', no '\\', no tab (a control character in JSON).
_PLAIN_VALUE = re.compile(rb'(?:[\x21\x23-\x5b\x5d-\x7e](?:[\x20\x21\x23-\x5b\x5d-\x7e]*[\x21\x23-\x5b\x5d-\x7e])?)?')
_PLAIN_TEXT = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]*')

# What a record header name is to the writer (cached by name): the lower-case name it is copied
# under, or _SKIP when it is not copied at all.
_SKIP = ""
_BAGGAGE = "baggage"
_CONTENT_TYPE = "content-type"
# Caches keyed by what producers repeat (names, baggage strings, content types) are bounded:
# started over when full, so records with ever new values cannot grow them.
_CACHE_MAX = 1024


class EntryWriter:
    """Writes bulk entries' metadata for one sidecar's forwarding rules; see the module doc.

    ``forwarded``: the record headers copied (``Dispatcher.forwarded_headers``); ``envelope``:
    the bulk's (its contexts get one entry per record, as single deliveries do), or None for no
    ``ktp-delivery``.
    """

    __slots__ = (
        "_bases", "_baggage", "_contexts", "_context_names", "_content_types", "_kinds", "_prefix", "_propagation",
        "_tracing", "forwarded", "tenant_key",
    )

    def __init__(self, *, forwarded: frozenset[str], tenant_key: str, envelope: DeliveryEnvelope | None) -> None:
        self.forwarded = forwarded
        self.tenant_key = tenant_key
        self._kinds: dict[str, str] = {}
        self._bases: dict[tuple[str, int], str] = {}
        # record baggage-string -> '"baggage":"..."' (None: the general path says why it is not sent as is)
        self._baggage: dict[bytes, tuple[str, str] | None] = {}
        # record content-type -> the content type sent (None: the general path)
        self._content_types: dict[bytes, str | None] = {}
        if envelope is None:
            self._contexts = None
            self._prefix = ""
            self._context_names: frozenset[str] = frozenset()
            self._propagation = None
            self._tracing = None
        else:
            self._contexts = envelope.contexts
            self._prefix = envelope.contexts.prefix
            self._context_names = frozenset(envelope.fields)
            self._propagation = envelope.propagation if envelope.propagation.written else None
            self._tracing = envelope.tracing

    def __repr__(self) -> str:
        return f"EntryWriter(forwarded={sorted(self.forwarded)}, tenant_key={self.tenant_key!r})"

    def entries(
        self,
        topic: str,
        partition: int,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        event: Callable[[ConsumerRecord[bytes, bytes], str], str] | None = None,
    ) -> tuple[list[str], list[str | None], list[int]]:
        """For ``records`` (all of ``topic``/``partition``): their entry ids, the entries as JSON
        text (None for a record that needs the general path) and the counters of the delivery
        contexts opened for them (0: none), as three lists in the records' order.

        ``event(record, content type)`` writes an entry's ``event`` as JSON text, its
        ``contentType`` then being the CloudEvents one; None: the raw format (the value in
        base64, ``contentType`` the record's). The counter is the delivery context opened for
        the entry (0: no envelope); the caller closes it with ``DeliveryContexts.close_numbers``.
        One call per bulk, the loop written out: it runs for every record delivered in bulks.
        """
        ids = [str(record.offset) for record in records]
        if self._tracing is not None and self._tracing.enabled:
            return ids, [None] * len(records), [0] * len(records)
        base = self._bases.get((topic, partition))
        if base is None:
            base = self._base(topic, partition)
        kinds = self._kinds
        content_types = self._content_types
        baggages = self._baggage
        context_names = self._context_names
        baggage_in_context = _BAGGAGE in context_names
        propagation = self._propagation
        contexts = self._contexts
        prefix = self._prefix
        plain_value = _PLAIN_VALUE.fullmatch
        bodies: list[str | None] = []
        numbers: list[int] = []
        for record, offset in zip(records, ids):
            content_type = DEFAULT_CONTENT_TYPE
            content_type_seen = False
            baggage_raw: bytes | None = None
            copied = ""
            found: dict[str, str] = {}
            context: tuple[str, ...] = ()
            plain = True
            for name, value in record.headers:
                lowered = kinds.get(name)
                if lowered is None:
                    lowered = self._kind(name)
                if lowered is _SKIP:
                    continue
                if lowered == _BAGGAGE:
                    if value:
                        baggage_raw = value if baggage_raw is None else baggage_raw + b"," + value
                    continue
                if value is None:
                    plain = False
                    break
                if lowered == _CONTENT_TYPE:
                    if content_type_seen:
                        continue  # first occurrence wins
                    content_type_seen = True
                    sent = content_types.get(value, _SKIP)
                    if sent is _SKIP:
                        sent = self._content_type(value)
                    if sent is None:
                        plain = False
                        break
                    content_type = sent
                    continue
                if lowered in found or len(value) > MAX_HEADER_VALUE or plain_value(value) is None:
                    plain = False
                    break
                text = value.decode("ascii")
                found[lowered] = text
                copied += f',"{lowered}":"{text}"'
                if lowered in context_names:
                    context += (lowered, text)
            if baggage_raw is not None and plain:
                sent_baggage = baggages.get(baggage_raw, _SKIP)
                if sent_baggage is _SKIP:
                    sent_baggage = self._forwarded_baggage(baggage_raw)
                if sent_baggage is None:
                    plain = False
                else:
                    copied += sent_baggage[0]
                    if baggage_in_context:
                        context += (_BAGGAGE, sent_baggage[1])
            if (
                not plain
                # No trace context in a configured format: the general path translates another one.
                or propagation is not None
                and propagation.written_fields.isdisjoint(found)
                and propagation.translate(record_carrier(record.headers, propagation.trace_fields))
            ):
                bodies.append(None)
                numbers.append(0)
                continue
            key = record.key
            if key is not None:
                copied = (
                    f',"kafka-key":"{key.decode("ascii") if key_is_plain(key) is not None else quote(key, safe="")}"'
                    + copied
                )
            value = record.value
            if value is None:
                copied += ',"kafka-tombstone":"true"'
            if contexts is None:
                number = 0
            else:
                number = contexts.open_flat(context)
                copied += f',"ktp-delivery":"{prefix}{number}"'
            numbers.append(number)
            if event is None:
                event_json = f'"{b2a_base64(value, newline=False).decode("ascii")}"' if value else '""'
                entry_content_type = content_type
            else:
                event_json = event(record, content_type)
                entry_content_type = CLOUDEVENT_CONTENT_TYPE
            bodies.append(
                f'{{"entryId":"{offset}","event":{event_json},"contentType":"{entry_content_type}",'
                f'"metadata":{{"content-type":"{content_type}",{base}"kafka-offset":"{offset}",'
                f'"kafka-timestamp":"{record.timestamp}"{copied}}}}}'
            )
        return ids, bodies, numbers

    def _base(self, topic: str, partition: int) -> str:
        base = f'"kafka-topic":{json.dumps(topic)},"kafka-partition":"{partition}",'
        if len(self._bases) >= _CACHE_MAX:
            self._bases.clear()
        self._bases[(topic, partition)] = base
        return base

    def _kind(self, name: str) -> str:
        # As headers._copyable: only an ASCII name is lower-cased (no look-alike folds into one).
        lowered = name.lower() if name.isascii() else None
        if lowered is None or never_forwarded(lowered):
            kind = _SKIP
        elif lowered == _CONTENT_TYPE or lowered in self.forwarded:
            kind = lowered
        else:
            kind = _SKIP
        if len(self._kinds) >= _CACHE_MAX:
            self._kinds.clear()
        self._kinds[name] = kind
        return kind

    def _content_type(self, value: bytes) -> str | None:
        sent = content_type_sent(value)
        plain = sent if sent is not None and _PLAIN_TEXT.fullmatch(sent) is not None else None
        if len(self._content_types) >= _CACHE_MAX:
            self._content_types.clear()
        self._content_types[bytes(value)] = plain
        return plain

    def _forwarded_baggage(self, raw: bytes) -> tuple[str, str] | None:
        sent = forwarded_baggage(raw, self.tenant_key)
        header = sent.header
        entry = None
        if header is not None and not sent.invalid and sent.note is None:
            entry = (f',"baggage":{json.dumps(header)}', header)
        if len(self._baggage) >= _CACHE_MAX:
            self._baggage.clear()
        self._baggage[bytes(raw)] = entry
        return entry
