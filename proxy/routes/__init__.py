"""Routes as both sides see them: what the sidecar reads and what the route service writes.

- :mod:`.records`  the route record on the wire (routes topic and HTTP API), validation (pure)
- :mod:`.table`    routes in memory: a tenant's history and the decision at a record's time
- :mod:`.topic`    the routes topic: creating it and :class:`~proxy.routes.topic.RoutesTopicReader`
- :mod:`.client`   the route service's HTTP client (``ktp tenant`` and the ``http://`` route source)
- :mod:`.catchup`  coalesced "bring the table up to date" calls and the wall clock they use

Nothing here imports the sidecar's routing or the route service, so both depend on it.
"""
