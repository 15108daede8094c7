"""kafka-tenant-proxy: a tenant-aware Kafka consumer sidecar.

Layout (docs/design.md has the vocabulary and the parts):

- ``listener/``     the Kafka listener (our downstream): consumer, rebalances, partition state
                    and commit watermarks, where a new sandbox group starts
- ``routes/``       routes as both sides see them: wire records, the route table, the routes
                    topic and the route service's client
- ``routing/``      tenant extraction, route sources and the route filter
- ``delivery/``     what happens to a record that is delivered: ordering, formats, retries,
                    dead letters, delivery contexts
- ``upstream/``     the HTTP client that talks to the app (our upstream) and its health check
- ``publish/``      the publish API: the app produces through the sidecar, with a delivery's context
- ``telemetry/``    propagators, spans and the OpenTelemetry SDK set-up
- ``admin/``        admin and metrics servers
- ``sidecar/``      ``ktp sidecar``: options and the runtime that wires the parts together
- ``routeservice/`` ``ktp routes serve`` and ``ktp tenant``: the route API, sandbox group
                    clean-up
- ``injector/``     ``ktp injector serve``: the Kubernetes webhook that adds the sidecar to pods
- ``testing/``      the embedded broker and test apps used by the demo, the tests and the benchmarks
- ``demo/``         ``ktp demo``

Modules beside them: ``cli`` (the ``ktp`` command), ``config`` (options as flags, environment
and YAML), ``errors`` (the error tree), ``kafka`` (connection settings), ``metrics`` (every
metric), ``backoff`` (the one retry helper), ``compat`` (every private API of a dependency we
use), ``http1`` and ``httpserver`` (HTTP/1.1 rules and the sidecar's small server).
"""

__version__ = "0.1.0"
