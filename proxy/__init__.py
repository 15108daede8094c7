"""kafka-tenant-proxy: a tenant-aware Kafka consumer sidecar.

Layout (see DESIGN.md for the vocabulary):

- ``listener/``  the Kafka listener (our downstream): consumer, rebalances, commit watermarks
- ``routing/``   tenant extraction, the route table, route sources and the route filter
- ``delivery/``  what happens to a record that is delivered: lanes, retries, dead letters
- ``upstream/``  the HTTP client that talks to the app (our upstream) and its health check
- ``admin/``     admin and metrics servers
- ``sidecar/``   ``ktp sidecar``: options and the runtime that wires the parts together
- ``testing/``   the embedded broker used by the demo, the tests and the benchmarks
- ``demo/``      ``ktp demo``
"""

__version__ = "0.1.0"
