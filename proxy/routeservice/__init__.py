"""The route service (``ktp routes serve``) and its client (``ktp tenant ...``).

- :mod:`~proxy.routeservice.store`   the routes topic and the cache rebuilt from it
- :mod:`~proxy.routeservice.api`     request parsing and validation (pure)
- :mod:`~proxy.routeservice.server`  the aiohttp server and its lifecycle
- :mod:`~proxy.routeservice.client`  the HTTP client used by ``ktp tenant`` and the ``http://``
  route source
"""
