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
import operator
import re
from binascii import b2a_base64
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from proxy.delivery.headers import (
    DEFAULT_CONTENT_TYPE, MAX_HEADER_VALUE, content_type_sent, copyable_name, forwarded_baggage, key_is_plain,
)
from proxy.delivery.bulk import CLOUDEVENT_CONTENT_TYPE
from proxy.telemetry.tracing import record_carrier

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from proxy.delivery.envelope import DeliveryEnvelope

# A copied value that is a safe HTTP field value (headers.py's _FIELD_VALUE: visible ASCII and
# spaces, no space at either end, at most MAX_HEADER_VALUE bytes) and a JSON string as it is: no
# '"', no '\\', no tab (a control character in JSON). One regex call: cheaper than any checks
# written out in Python.
_PLAIN_VALUE = re.compile(
    rb'(?:[\x21\x23-\x5b\x5d-\x7e](?:[\x20\x21\x23-\x5b\x5d-\x7e]{0,%d}[\x21\x23-\x5b\x5d-\x7e])?)?' % (MAX_HEADER_VALUE - 2)
).fullmatch
_PLAIN_TEXT = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]*')
_OFFSET = operator.attrgetter("offset")
# A baggage string and a content type cached as needing the general path: true values, so that a
# look-up `cache.get(raw) or compute(raw)` computes only what is not cached yet.
_GENERAL: tuple[str, tuple[str, str]] = ("", ("", ""))
_NOT_PLAIN = "\0"
_NO_FIELDS: frozenset[str] = frozenset()

# What a record header name is to the writer (cached by name): the lower-case name it is copied
# under, or _SKIP when it is not copied at all.
_SKIP = ""
_BAGGAGE = "baggage"
_CONTENT_TYPE = "content-type"
_OTHER_TRACE = "\0trace"  # compared by identity, as _SKIP: never a name we copy
# Caches keyed by what producers repeat (names, baggage strings, content types) are bounded:
# started over when full, so records with ever new values cannot grow them.
_CACHE_MAX = 1024


class EntryWriter:
    """Writes bulk entries' metadata for one sidecar's forwarding rules; see the module doc.

    ``forwarded``: the record headers copied (``RequestHeaders.forwarded``); ``envelope``:
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
        # record baggage-string -> ('"baggage":"..."', ("baggage", the header)) or _GENERAL (the
        # general path says why it is not sent as it is)
        self._baggage: dict[bytes, tuple[str, tuple[str, str]]] = {}
        # record content-type -> the content type sent, or _NOT_PLAIN (the general path)
        self._content_types: dict[bytes, str] = {}
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
        ids = list(map(str, map(_OFFSET, records)))
        if self._tracing is not None and self._tracing.enabled:
            return ids, [None] * len(records), [0] * len(records)
        base = self._bases.get((topic, partition))
        if base is None:
            base = self._base(topic, partition)
        # Locals: the loop below runs for every record delivered in bulks.
        kinds = self._kinds
        content_types = self._content_types
        baggages = self._baggage
        context_names = self._context_names
        baggage_in_context = _BAGGAGE in context_names
        propagation = self._propagation
        written_fields = propagation.written_fields if propagation is not None else _NO_FIELDS
        contexts = self._contexts
        prefix = self._prefix
        plain_value = _PLAIN_VALUE
        plain_key = key_is_plain
        skip, other_trace_kind, baggage_kind, content_type_kind = _SKIP, _OTHER_TRACE, _BAGGAGE, _CONTENT_TYPE
        default_content_type = DEFAULT_CONTENT_TYPE
        # The contexts are registered after the loop, all at once, under the counters reserved here.
        first = next_number = contexts.counter + 1 if contexts is not None else 0
        flats: list[tuple[str, ...]] = []
        bodies: list[str | None] = []
        left = 0
        for record, offset in zip(records, ids):
            content_type = default_content_type  # identity tells "no content-type header yet"
            other_trace = False
            baggage_raw: bytes | None = None
            copied = ""
            # The names copied: the first, then all of them once there are two (a set per
            # record only for records that copy more than one).
            first_name: str | None = None
            names: set[str] | None = None
            context: tuple[str, ...] = ()
            for name, value in record.headers:
                lowered = kinds.get(name)
                if lowered is None:
                    lowered = self._kind(name)
                if lowered is skip:
                    continue
                if lowered is baggage_kind:
                    if value:
                        baggage_raw = value if baggage_raw is None else baggage_raw + b"," + value
                    continue
                if lowered is other_trace_kind:
                    other_trace = True  # trace context the general path may translate
                    continue
                if value is None:
                    break
                if lowered is content_type_kind:
                    if content_type is default_content_type:  # the first occurrence wins
                        content_type = content_types.get(value) or self._content_type(value)
                        if content_type is _NOT_PLAIN:
                            break
                    continue
                if plain_value(value) is None:
                    break
                if first_name is None:
                    first_name = lowered
                elif names is None:
                    if lowered == first_name:
                        break  # twice: the general path keeps the first
                    names = {first_name, lowered}
                elif lowered in names:
                    break
                else:
                    names.add(lowered)
                text = value.decode("ascii")
                copied += f',"{lowered}":"{text}"'
                if lowered in context_names:
                    context = (lowered, text) if not context else (*context, lowered, text)
            else:
                if baggage_raw is not None:
                    sent_baggage = baggages.get(baggage_raw) or self._forwarded_baggage(baggage_raw)
                    if sent_baggage is _GENERAL:
                        bodies.append(None)
                        left += 1
                        continue
                    baggage_json = sent_baggage[0]
                    if baggage_in_context:
                        context += sent_baggage[1]
                else:
                    baggage_json = ""
                if (
                    (other_trace or first_name is not None)
                    and propagation is not None
                    and (
                        first_name is None
                        or first_name not in written_fields and (names is None or written_fields.isdisjoint(names))
                    )
                    # No trace context in a configured format but some in another: the general
                    # path translates it (DeliveryEnvelope.begin).
                    and propagation.translate(record_carrier(record.headers, propagation.trace_fields))
                ):
                    bodies.append(None)
                    left += 1
                    continue
                # Each part is its own placeholder of one f-string below: one string is built
                # per entry, not one per part (allocating and copying dominates here).
                key = record.key
                if key is None:
                    key_json = ""
                elif plain_key(key) is not None:
                    key_json = f',"kafka-key":"{key.decode("ascii")}"'
                else:
                    key_json = f',"kafka-key":"{quote(key, safe="")}"'
                value = record.value
                if event is not None:
                    event_json = event(record, content_type)
                    quote_mark = ""
                    entry_content_type = CLOUDEVENT_CONTENT_TYPE
                else:
                    # The raw format: the value in base64, a JSON string as it is.
                    event_json = b2a_base64(value, newline=False).decode("ascii") if value else ""
                    quote_mark = '"'
                    entry_content_type = content_type
                tombstone = ',"kafka-tombstone":"true"' if value is None else ""
                if contexts is None:
                    delivery = ""
                else:
                    flats.append(context)
                    delivery = f',"ktp-delivery":"{prefix}{next_number}"'
                    next_number += 1
                bodies.append(
                    f'{{"entryId":"{offset}","event":{quote_mark}{event_json}{quote_mark},'
                    f'"contentType":"{entry_content_type}","metadata":{{"content-type":"{content_type}",'
                    f'{base}"kafka-offset":"{offset}","kafka-timestamp":"{record.timestamp}"'
                    f"{key_json}{copied}{baggage_json}{tombstone}{delivery}}}}}"
                )
                continue
            bodies.append(None)  # a header needs the general path
            left += 1
        if contexts is None:
            return ids, bodies, [0] * len(bodies)
        if flats:
            assert contexts.open_many(flats) == first, "delivery contexts opened while entries were written"
        if not left:
            return ids, bodies, list(range(first, next_number))
        numbers = []
        number = first
        for body in bodies:
            if body is None:
                numbers.append(0)
            else:
                numbers.append(number)
                number += 1
        return ids, bodies, numbers

    def _base(self, topic: str, partition: int) -> str:
        base = f'"kafka-topic":{json.dumps(topic)},"kafka-partition":"{partition}",'
        if len(self._bases) >= _CACHE_MAX:
            self._bases.clear()
        self._bases[(topic, partition)] = base
        return base

    def _kind(self, name: str) -> str:
        lowered = copyable_name(name)  # as the general path: ASCII names only, never-forwarded ones not
        if lowered is None:
            kind = _SKIP
        elif lowered == _CONTENT_TYPE:
            kind = _CONTENT_TYPE  # the constant itself: the loop compares kinds by identity
        elif lowered == _BAGGAGE and lowered in self.forwarded:
            kind = _BAGGAGE
        elif lowered in self.forwarded:
            kind = lowered
        else:
            kind = _SKIP
        # A trace header that is not copied is still read for translation (record_carrier
        # lower-cases every name).
        if kind is _SKIP and self._propagation is not None and name.lower() in self._propagation.trace_fields:
            kind = _OTHER_TRACE
        if len(self._kinds) >= _CACHE_MAX:
            self._kinds.clear()
        self._kinds[name] = kind
        return kind

    def _content_type(self, value: bytes) -> str:
        sent = content_type_sent(value)
        plain = sent if sent is not None and _PLAIN_TEXT.fullmatch(sent) is not None else _NOT_PLAIN
        if len(self._content_types) >= _CACHE_MAX:
            self._content_types.clear()
        self._content_types[bytes(value)] = plain
        return plain

    def _forwarded_baggage(self, raw: bytes) -> tuple[str, tuple[str, str]]:
        sent = forwarded_baggage(raw, self.tenant_key)
        header = sent.header
        entry = _GENERAL
        if header is not None and not sent.invalid and sent.note is None:
            entry = (f',"baggage":{json.dumps(header)}', (_BAGGAGE, header))
        if len(self._baggage) >= _CACHE_MAX:
            self._baggage.clear()
        self._baggage[bytes(raw)] = entry
        return entry
