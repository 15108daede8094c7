"""A publish request turned into a Kafka record: validation and context. Pure logic, no I/O.

``POST /v1/publish/<topic>``; body = the record value; headers:

- ``kafka-key``: the record key, percent-decoded (the inverse of the ``kafka-key`` deliveries
  carry; visible ASCII other than ``%XX`` is taken as it is);
- ``content-type``: copied to the record (it becomes the ``content-type`` of its deliveries);
- ``traceparent``/``tracestate``/``baggage`` and B3 headers: the record's context;
- ``ktp-delivery: <id>``: the context of the delivery the app is handling fills in what the
  request does not carry itself (see :func:`record_context`);
- names on ``--publish-headers``: copied to the record as they are.

Every value that reaches the record must be a valid HTTP field value (visible ASCII, SP, HTAB);
anything else is refused with a 400 that names the header. Topic names follow Kafka's rule, and
internal topics (``__*``, ours ``_ktp*``) cannot be written through this endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from proxy.delivery.headers import MAX_HEADER_VALUE, valid_field_value
from proxy.errors import PublishError
from proxy.delivery.contexts import Context as DeliveryContext
from proxy.routing import baggage
from proxy.telemetry.propagation import BAGGAGE, READ_TRACE_FIELDS, Propagation

DEFAULT_PUBLISH_MAX_BYTES = 1024 * 1024
DEFAULT_PUBLISH_TIMEOUT = 5.0
PATH_PREFIX = "/v1/publish/"
KEY_HEADER = "kafka-key"
DELIVERY_HEADER = "ktp-delivery"
CONTENT_TYPE = "content-type"
# Kafka's rule for topic names.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
RESERVED_TOPIC_PREFIXES = ("__", "_ktp")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;[\x20-\x7e\t]*)?")
_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
CONTEXT_FIELDS = READ_TRACE_FIELDS | {BAGGAGE}
# Request headers that may never be copied to a record by --publish-headers: the ones this
# endpoint interprets itself, HTTP framing and hop-by-hop headers, and credentials.
NOT_PUBLISHABLE = frozenset(
    {
        KEY_HEADER, DELIVERY_HEADER, CONTENT_TYPE, "content-length", "transfer-encoding",
        "connection", "keep-alive", "te", "trailer", "upgrade", "host", "expect",
        "authorization", "proxy-authorization", "cookie",
    }
)


def check_publish_headers(names: Iterable[str]) -> frozenset[str]:
    """Validate ``--publish-headers``: lower-cased RFC 9110 tokens, none that this endpoint
    interprets (context, key, content type), none that frame HTTP or carry credentials."""
    checked: set[str] = set()
    problems: list[str] = []
    for name in names:
        lowered = name.strip().lower()
        if not _TOKEN.fullmatch(lowered):
            problems.append(f"{name[:64]!r} is not an HTTP header name")
        elif lowered in NOT_PUBLISHABLE or lowered in CONTEXT_FIELDS:
            problems.append(f"{lowered!r} is set by the publish endpoint itself or never copied")
        else:
            checked.add(lowered)
    if problems:
        raise ValueError("; ".join(problems))
    return frozenset(checked)


def topic_from_path(path: str) -> str:
    """The topic of ``/v1/publish/<topic>`` (the raw, undecoded path)."""
    if not path.startswith(PATH_PREFIX):
        raise PublishError(404, "not_found", f"no such endpoint {path[:100]!r}; use POST {PATH_PREFIX}<topic>")
    topic = path[len(PATH_PREFIX):]
    if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
        raise PublishError(
            400, "bad_topic",
            f"topic {topic[:100]!r} is not a Kafka topic name: use 1-249 of A-Z a-z 0-9 . _ -",
        )
    if topic.startswith(RESERVED_TOPIC_PREFIXES):
        raise PublishError(
            403, "forbidden_topic",
            f"topic {topic!r} is internal (Kafka's __* or the sidecar's _ktp*) and cannot be "
            "written through the publish endpoint",
        )
    return topic


def header_value(name: str, value: str) -> str:
    """A request header value that may go into a record; refused (400) if it is not a valid
    field value: CR, LF, NUL, other controls and non-ASCII never reach Kafka from here."""
    raw = value.encode("utf-8", "surrogateescape")
    if not valid_field_value(raw):
        raise PublishError(
            400, "bad_header",
            f"header {name!r} is not a valid value: use visible ASCII, space and tab, no "
            f"surrounding spaces, at most {MAX_HEADER_VALUE} bytes (CR, LF and NUL are refused)",
        )
    return value


def decode_key(value: str) -> bytes:
    """``kafka-key`` → key bytes: ``%XX`` decoded, other visible ASCII kept as it is."""
    header_value(KEY_HEADER, value)
    if _PERCENT_ESCAPE.search(value):
        raise PublishError(
            400, "bad_key",
            f"{KEY_HEADER} has a '%' that is not followed by two hex digits: percent-encode the "
            "key bytes (a literal '%' is %25)",
        )
    return unquote_to_bytes(value)


def _merge_baggage(delivered: str | None, requested: str | None) -> str | None:
    """The record's baggage: the delivery's members, with the request's own members over them
    (an app that sets baggage itself means it). Unchanged text when only one side has any.

    Read and written as the W3C specification says (:mod:`proxy.routing.baggage`), so the
    tenant the delivery was routed by stays the tenant of what the app publishes: every member
    keeps its bytes, properties stay properties (OpenTelemetry Python's propagator would fold
    them into the value, turning ``tenant=t1;p=x`` into the tenant ``t1;p=x``)."""
    if not delivered or not requested:
        return requested or delivered
    merged = baggage.merge(_members(delivered), _members(requested))
    return merged.to_header() or None


def _members(header: str) -> baggage.Baggage:
    return baggage.parse(header.encode("utf-8", "surrogateescape"))


def with_default_tenant(baggage_header: str | None, tenant_key: str, tenant: str) -> str | None:
    """Stamp ``tenant_key=tenant`` into baggage that carries no tenant (a sandbox pod's batch
    jobs and crons: flows not scoped to a request). Baggage with a tenant is unchanged."""
    members = _members(baggage_header) if baggage_header else baggage.EMPTY
    if members.get(tenant_key):
        return baggage_header
    return baggage.with_member(members, tenant_key, tenant).to_header()


def record_context(
    requested: Mapping[str, str],
    delivered: DeliveryContext | None,
    propagation: Propagation,
    *,
    tenant_key: str,
    default_tenant: str | None,
) -> dict[str, str]:
    """The context headers of the record, from the request's own and its delivery's.

    The request's trace context wins when it has any (an instrumented app sends its own span,
    a child of the delivery's); else the delivery's is used. Baggage is merged member by member,
    the request's over the delivery's, so the tenant survives an app that sets other baggage.
    Then a default tenant is stamped if none is there, and trace context is added in the
    configured formats when it came only in others.
    """
    from_delivery = dict(delivered or ())
    trace_fields = propagation.trace_fields
    source = requested if any(name in requested for name in trace_fields) else from_delivery
    context = {name: value for name, value in source.items() if name in trace_fields}
    baggage = _merge_baggage(from_delivery.get(BAGGAGE), requested.get(BAGGAGE))
    if default_tenant is not None:
        baggage = with_default_tenant(baggage, tenant_key, default_tenant)
    if baggage:
        context[BAGGAGE] = baggage
    propagation.translate(context)
    return context


@dataclass(frozen=True, slots=True)
class PublishRecord:
    """A validated publish request: what will be written to Kafka."""

    topic: str
    key: bytes | None
    value: bytes
    # Trace context and baggage; replaced by the send span's when tracing is on.
    context: dict[str, str]
    # content-type, then --publish-headers by name.
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    delivery_id: str | None = None

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """The record's headers: context first, then the others."""
        return [
            *((name, value.encode("ascii")) for name, value in self.context.items()),
            *self.headers,
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishRules:
    """How publish requests become records, from the sidecar's options."""

    propagation: Propagation
    tenant_key: str
    default_tenant: str | None = None
    copied_headers: frozenset[str] = frozenset()

    def parse(
        self,
        topic: str,
        headers: Mapping[str, str],
        body: bytes,
        lookup: Callable[[str], DeliveryContext | None],
        header_values: Callable[[str], Sequence[str]] | None = None,
    ) -> PublishRecord:
        """Validate a request for ``topic`` (checked by :func:`topic_from_path`) into a record, or
        raise :class:`PublishError`. ``headers`` has case-insensitive (or lower-case) names;
        ``lookup`` resolves ``ktp-delivery`` ids; ``header_values`` gives every value of a
        repeated header (default: the one value in ``headers``)."""
        key_text = headers.get(KEY_HEADER)
        key = None if key_text is None else decode_key(key_text)
        delivered: DeliveryContext | None = None
        delivery_id = headers.get(DELIVERY_HEADER)
        if delivery_id is not None:
            delivered = lookup(delivery_id)
            if delivered is None:
                raise PublishError(
                    422, "unknown_delivery",
                    f"{DELIVERY_HEADER} {delivery_id[:100]!r} names no delivery in flight or "
                    "recently done; publish while handling the delivery (or within the sidecar's "
                    "--delivery-context-grace), or send the context headers yourself",
                )
        requested = {
            name: header_value(name, value)
            for name in self.propagation.context_fields
            if (value := headers.get(name)) is not None
        }
        context = record_context(
            requested, delivered, self.propagation,
            tenant_key=self.tenant_key, default_tenant=self.default_tenant,
        )
        copied: list[tuple[str, bytes]] = []
        content_type = headers.get(CONTENT_TYPE)
        if content_type is not None:
            header_value(CONTENT_TYPE, content_type)
            if not _MEDIA_TYPE.fullmatch(content_type):
                raise PublishError(400, "bad_header", f"{CONTENT_TYPE} {content_type[:100]!r} is not a media type")
            copied.append((CONTENT_TYPE, content_type.encode("ascii")))
        values = header_values or (lambda name: () if headers.get(name) is None else (headers[name],))
        for name in sorted(self.copied_headers):
            for value in values(name):
                copied.append((name, header_value(name, value).encode("ascii")))
        return PublishRecord(topic, key, body, context, tuple(copied), delivery_id)
