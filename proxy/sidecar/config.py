"""``ktp sidecar`` options and the :class:`SidecarConfig` built from them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.config import (
    Option,
    parse_csv,
    parse_host_port,
    parse_positive_float,
    parse_positive_int,
)
from proxy.delivery.bulk import DEFAULT_BULK_MAX_WAIT, MAX_BULK_RECORDS
from proxy.delivery.headers import check_forward_headers
from proxy.delivery.formats import FORMATS
from proxy.delivery.ordering import ORDERINGS
from proxy.delivery.policy import DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_MAX_ATTEMPTS
from proxy.errors import ConfigError
from proxy.routing.baggage import is_token
from proxy.kafka import KAFKA_OPTIONS, KafkaConnection
from proxy.listener.progress import DEFAULT_STALL_TIMEOUT
from proxy.delivery.contexts import DEFAULT_GRACE as DEFAULT_DELIVERY_CONTEXT_GRACE
from proxy.publish.request import (
    DEFAULT_PUBLISH_MAX_BYTES,
    DEFAULT_PUBLISH_TIMEOUT,
    check_publish_headers,
)
from proxy.routes.table import check_name, check_tenant
from proxy.routing.tenant import DEFAULT_TENANT_KEY

DEFAULT_ROUTES = "kafka:"
DEFAULT_ROUTES_TOPIC = "_ktp_routes"
DEFAULT_GROUPS_TOPIC = "_ktp_sandbox_groups"
DEFAULT_ADMIN_ADDR = "127.0.0.1:14000"
DEFAULT_METRICS_ADDR = "0.0.0.0:14090"
DEFAULT_PUBLISH_ADDR = "127.0.0.1:14001"
DEFAULT_MAX_IN_FLIGHT = 16
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
DEFAULT_DRAIN_TIMEOUT = 10.0
DEFAULT_COMMIT_INTERVAL = 1.0
DEFAULT_APP_TIMEOUT = 10.0
DEFAULT_SESSION_TIMEOUT = 10.0
BASELINE_DEAD_LETTER = "{topic}.dlq"
SANDBOX_DEAD_LETTER = "{topic}.{sandbox}.dlq"
# Kafka's rule for group.instance.id (the same as for topic names); a pod name always passes.
INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,249}")

SIDECAR_OPTIONS = (
    *KAFKA_OPTIONS,
    Option("service", "this pod's service, e.g. orders-worker", required=True),
    Option("sandbox", "this pod's sandbox, e.g. pr-42; absent for a baseline pod"),
    Option("group", "the service's baseline consumer group; sandbox pods use <group>-<sandbox>", required=True),
    Option("topics", "topics to consume, comma-separated", required=True, parse=parse_csv),
    Option("app-url", "where deliveries are POSTed, e.g. http://127.0.0.1:8080/events", required=True),
    Option("app-health-url", "GET that answers 2xx when the app is ready (default: TCP connect to app-url)"),
    Option("app-timeout", "seconds one delivery may take", DEFAULT_APP_TIMEOUT, parse=parse_positive_float),
    Option("app-token-file", "file with a token sent to the app as 'authorization: Bearer <token>'"),
    Option("app-cafile", "CA bundle that verifies an https:// app-url (default: the system's CAs)"),
    Option(
        "forward-headers",
        "record headers copied to the app besides trace context and baggage, comma-separated "
        "(hop-by-hop, framing, host, credentials and kafka-*/ktp-* names are never copied)",
        (),
        parse=lambda raw: tuple(sorted(check_forward_headers(parse_csv(raw)))),
    ),
    Option(
        "routes",
        "route source: kafka: | kafka:<topic> | http://host:port | file:<path>",
        DEFAULT_ROUTES,
    ),
    Option("tenant-key", "baggage key holding the tenant", DEFAULT_TENANT_KEY),
    Option("routes-token-file", "file with the route service's read token, for --routes http(s)://"),
    Option("routes-cafile", "CA bundle that verifies an https:// route service"),
    Option(
        "groups-topic",
        "compacted topic where a sandbox pod registers its consumer group, so the route service "
        "can delete the group once no route references the sandbox",
        DEFAULT_GROUPS_TOPIC,
    ),
    Option("ordering", "delivery order: per partition, per key, or none", "partition", choices=tuple(ORDERINGS)),
    Option("max-in-flight", "deliveries in flight at once", DEFAULT_MAX_IN_FLIGHT, parse=parse_positive_int),
    Option(
        "app-max-concurrency",
        "most requests, and connections, the app is sent at once (Dapr's app-max-concurrency; "
        "default: --max-in-flight). 1 for an app that serves one connection at a time",
        parse=parse_positive_int,
    ),
    Option(
        "bulk-max-records",
        f"bulk delivery: up to this many records of a lane in one POST, in Dapr's bulk-subscribe "
        f"shape (0: off, one record per POST; at most {MAX_BULK_RECORDS})",
        0,
        parse=lambda raw: _bulk_max_records(int(raw)),
    ),
    Option(
        "bulk-max-wait",
        "bulk delivery: seconds a lane waits for --bulk-max-records records before it sends fewer",
        DEFAULT_BULK_MAX_WAIT,
        parse=lambda raw: _non_negative(float(raw)),
    ),
    Option("max-attempts", "attempts before a retriable failure is dead-lettered", DEFAULT_MAX_ATTEMPTS, parse=parse_positive_int),
    Option("backoff-initial", "first retry delay, seconds", DEFAULT_BACKOFF_INITIAL, parse=parse_positive_float),
    Option("backoff-max", "longest retry delay, seconds", DEFAULT_BACKOFF_MAX, parse=parse_positive_float),
    Option(
        "dead-letter-topic",
        "dead-letter topic template ({topic}, {sandbox}) or 'none' to drop after logging "
        f"(default {BASELINE_DEAD_LETTER} for baseline, {SANDBOX_DEAD_LETTER} for sandboxes)",
    ),
    Option("max-record-bytes", "largest value forwarded; larger ones are dead-lettered", DEFAULT_MAX_RECORD_BYTES, parse=parse_positive_int),
    Option("auto-offset-reset", "where a group with no committed offset starts", "latest", choices=("earliest", "latest")),
    Option("publish-addr", "address of the publish API", DEFAULT_PUBLISH_ADDR, parse=parse_host_port),
    Option("admin-addr", "address of the admin server", DEFAULT_ADMIN_ADDR, parse=parse_host_port),
    Option("metrics-addr", "address of the Prometheus metrics server", DEFAULT_METRICS_ADDR, parse=parse_host_port),
    Option("drain-timeout", "seconds to finish in-flight deliveries on shutdown", DEFAULT_DRAIN_TIMEOUT, parse=parse_positive_float),
    Option(
        "session-timeout",
        "consumer group session timeout, seconds (brokers bound it by group.min/max.session.timeout.ms)",
        DEFAULT_SESSION_TIMEOUT,
        parse=parse_positive_float,
    ),
    Option("commit-interval", "seconds between offset commits", DEFAULT_COMMIT_INTERVAL, parse=parse_positive_float),
    Option(
        "instance-id",
        "static group membership (group.instance.id), unique in the group: a restart within the "
        "session timeout keeps the partitions without a rebalance (default: $POD_NAME when set; "
        "'none' for dynamic membership)",
    ),
    Option(
        "stall-timeout",
        "seconds a partition may make no progress while records wait before it is reported "
        "stalled (/readyz detail, ktp_partition_stalled)",
        DEFAULT_STALL_TIMEOUT,
        parse=parse_positive_float,
    ),
    Option(
        "format",
        "how deliveries are sent: raw (the record as it is) or cloudevents (CloudEvents HTTP binary "
        "mode by Knative KafkaSource's mapping; records that are CloudEvents pass through)",
        "raw",
        choices=tuple(FORMATS),
    ),
    Option(
        "publish-headers",
        "request headers the publish endpoint copies into records besides content-type, "
        "kafka-key and trace context, comma-separated",
        (),
        parse=lambda raw: tuple(sorted(check_publish_headers(parse_csv(raw)))),
    ),
    Option("publish-max-bytes", "largest body the publish endpoint takes", DEFAULT_PUBLISH_MAX_BYTES, parse=parse_positive_int),
    Option(
        "publish-timeout",
        "seconds the publish endpoint waits for Kafka's acknowledgement before answering 503",
        DEFAULT_PUBLISH_TIMEOUT,
        parse=parse_positive_float,
    ),
    Option(
        "default-tenant",
        "sandbox pods only: tenant stamped into the baggage of published records that carry none "
        "(batch jobs, crons)",
    ),
    Option(
        "delivery-context-grace",
        "seconds a delivery's context stays usable through ktp-delivery after the delivery is done",
        DEFAULT_DELIVERY_CONTEXT_GRACE,
        parse=parse_positive_float,
    ),
    Option("log-level", "log level", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarConfig:
    """Everything one sidecar needs. Build it with :meth:`from_options` or directly in tests."""

    kafka: KafkaConnection
    service: str
    group: str
    topics: tuple[str, ...]
    app_url: str
    sandbox: str | None = None
    app_health_url: str | None = None
    app_timeout: float = DEFAULT_APP_TIMEOUT
    app_token_file: str | None = None
    app_cafile: str | None = None
    forward_headers: tuple[str, ...] = ()
    routes: str = DEFAULT_ROUTES
    routes_token_file: str | None = None
    routes_cafile: str | None = None
    tenant_key: str = DEFAULT_TENANT_KEY
    groups_topic: str = DEFAULT_GROUPS_TOPIC
    ordering: str = "partition"
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    app_max_concurrency: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    bulk_max_records: int = 0
    bulk_max_wait: float = DEFAULT_BULK_MAX_WAIT
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    dead_letter_topic: str | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    auto_offset_reset: str = "latest"
    publish_addr: tuple[str, int] = ("127.0.0.1", 14001)
    admin_addr: tuple[str, int] = ("127.0.0.1", 14000)
    metrics_addr: tuple[str, int] = ("0.0.0.0", 14090)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    commit_interval: float = DEFAULT_COMMIT_INTERVAL
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    instance_id: str | None = None
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    format: str = "raw"
    publish_headers: tuple[str, ...] = ()
    publish_max_bytes: int = DEFAULT_PUBLISH_MAX_BYTES
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT
    default_tenant: str | None = None
    delivery_context_grace: float = DEFAULT_DELIVERY_CONTEXT_GRACE
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check = _checked
        check("--service", lambda: check_name("service", self.service))
        if self.sandbox is not None:
            check("--sandbox", lambda: check_name("sandbox", self.sandbox or ""))
        if not self.topics:
            raise ConfigError("--topics: give at least one topic")
        url = urlsplit(self.app_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"--app-url {self.app_url!r} must be an http:// or https:// URL")
        if self.ordering not in ORDERINGS:
            raise ConfigError(f"--ordering must be one of {', '.join(ORDERINGS)}")
        template = self.dead_letter_template
        if template is not None:
            if self.sandbox is not None and "{sandbox}" not in template:
                raise ConfigError(
                    f"--dead-letter-topic {template!r}: a sandbox pod's dead-letter topic must "
                    "contain {sandbox}, so a sandbox never writes where baseline reads"
                )
            try:
                template.format(topic="t", sandbox="s")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"--dead-letter-topic {template!r}: only {{topic}} and {{sandbox}} may be used"
                ) from exc
        if self.instance_id is not None and not INSTANCE_ID.fullmatch(self.instance_id):
            raise ConfigError(
                f"--instance-id {self.instance_id!r}: use 1-249 of A-Z a-z 0-9 . _ - (a pod name fits)"
            )
        if self.app_token_file is not None and not Path(self.app_token_file).is_file():
            raise ConfigError(f"--app-token-file {self.app_token_file!r} is not a readable file")
        if self.app_cafile is not None and url.scheme != "https":
            # The operator believes deliveries are encrypted; they would not be.
            raise ConfigError(f"--app-cafile is set but --app-url {self.app_url!r} is not https://")
        if not is_token(self.tenant_key):
            # Keys are not percent-decoded (W3C Baggage): no member could ever be named so.
            raise ConfigError(
                f"--tenant-key {self.tenant_key!r} is not a W3C baggage key: use letters, digits "
                "and !#$%&'*+-.^_`|~ (an RFC 9110 token)"
            )
        check("--forward-headers", lambda: check_forward_headers(self.forward_headers))
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
        check("--bulk-max-records", lambda: _bulk_max_records(self.bulk_max_records))
        check("--bulk-max-wait", lambda: _non_negative(self.bulk_max_wait))
        if self.bulk_max_records and self.ordering == "none":
            # Each record is its own lane there: every bulk would hold one record and wait for more.
            raise ConfigError("--bulk-max-records bundles a lane's records: use --ordering partition or key")
        check("--publish-headers", lambda: check_publish_headers(self.publish_headers))
        if self.default_tenant is not None:
            if self.sandbox is None:
                # Baseline traffic has no tenant by definition; stamping one would send a
                # baseline pod's records to a sandbox.
                raise ConfigError("--default-tenant is for sandbox pods (set --sandbox)")
            check("--default-tenant", lambda: check_tenant(self.default_tenant or ""))

    @property
    def app_concurrency(self) -> int:
        """Deliveries, and connections to the app, at once: ``--max-in-flight`` capped by
        ``--app-max-concurrency``."""
        if self.app_max_concurrency is None:
            return self.max_in_flight
        return min(self.max_in_flight, self.app_max_concurrency)

    @property
    def consumer_group(self) -> str:
        """Baseline pods use the service's group G, sandbox pods ``G-<sandbox>``."""
        return self.group if self.sandbox is None else f"{self.group}-{self.sandbox}"

    @property
    def dead_letter_template(self) -> str | None:
        """Template of the dead-letter topic name, or None when dead letters are dropped."""
        if self.dead_letter_topic == "none":
            return None
        if self.dead_letter_topic:
            return self.dead_letter_topic
        return BASELINE_DEAD_LETTER if self.sandbox is None else SANDBOX_DEAD_LETTER

    def dead_letter_topic_for(self, topic: str) -> str | None:
        template = self.dead_letter_template
        return None if template is None else template.format(topic=topic, sandbox=self.sandbox or "")

    def app_token(self) -> str | None:
        if self.app_token_file is None:
            return None
        return Path(self.app_token_file).read_text(encoding="utf-8").strip() or None

    @classmethod
    def from_options(cls, values: dict[str, Any], environ: Mapping[str, str] | None = None) -> SidecarConfig:
        names = {f.name for f in fields(cls)} - {"kafka", "extra"}
        values = {
            **values,
            "instance_id": static_instance_id(values.get("instance_id"), os.environ if environ is None else environ),
        }
        return cls(kafka=KafkaConnection.from_options(values), **{k: v for k, v in values.items() if k in names})

    def redacted(self) -> dict[str, Any]:
        """The config for ``/config`` (Envoy's ``/config_dump``): paths of secret files are shown,
        the files are never read and no secret value is included."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("kafka", "extra")}
        out["kafka"] = self.kafka.redacted()
        out["app_url"] = redact_url(self.app_url)
        out["routes"] = redact_url(self.routes)
        if self.app_health_url is not None:
            out["app_health_url"] = redact_url(self.app_health_url)
        return out


def redact_url(url: str) -> str:
    """A URL without its password (``http://user:secret@host`` → ``http://user:<redacted>@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:<redacted>@{netloc}").geturl()


def static_instance_id(given: str | None, environ: Mapping[str, str]) -> str | None:
    """``--instance-id``; else the pod's name when the pod spec passes it as ``POD_NAME`` (the
    downward API's ``metadata.name``), which stays the same across container restarts in the
    pod; ``none`` turns static membership off even then."""
    if given == "none":
        return None
    return given or environ.get("POD_NAME") or None


def _bulk_max_records(value: int) -> int:
    if not 0 <= value <= MAX_BULK_RECORDS:
        # The app's answer names every entry and is kept whole only up to a size (bulk.py).
        raise ValueError(f"must be 0 (off) to {MAX_BULK_RECORDS}, got {value}")
    return value


def _non_negative(value: float) -> float:
    if not value >= 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _checked(flag: str, check: Any) -> None:
    try:
        check()
    except Exception as exc:  # RouteError from name checks, reported as a config problem
        raise ConfigError(f"{flag}: {exc}") from exc
