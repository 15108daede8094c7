"""The route service (``ktp routes serve``) and its client (``ktp tenant ...``).

- :mod:`~proxy.routeservice.store`   the routes topic and the cache rebuilt from it
- :mod:`~proxy.routeservice.api`     request parsing and validation (pure)
- :mod:`~proxy.routeservice.server`  the aiohttp server and its lifecycle

Its client and the route wire types live in :mod:`proxy.routes`, shared with the sidecar.
"""
