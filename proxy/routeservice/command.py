"""``ktp routes serve`` command."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.config import add_options, resolve


def register(subparsers: Any) -> None:
    from proxy.routeservice.server import ROUTE_SERVICE_OPTIONS

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "routes",
        help="the route service: tenants and their routes over HTTP, stored in Kafka",
        description="The route service: an HTTP API for tenants' routes, stored in a compacted Kafka topic.",
    )
    commands = parser.add_subparsers(dest="routes_command", metavar="SUBCOMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the route API",
        description=(
            "Serve PUT/GET/DELETE /v1/tenants/{tenant}, GET /v1/tenants and GET /v1/routes (watch). "
            "Stateless: any number of replicas may serve one routes topic."
        ),
    )
    add_options(serve, ROUTE_SERVICE_OPTIONS)
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from proxy.cli import run_async, setup_logging
    from proxy.routeservice.server import ROUTE_SERVICE_OPTIONS, RouteService, RouteServiceConfig

    config = RouteServiceConfig.from_options(resolve(ROUTE_SERVICE_OPTIONS, args))
    setup_logging(config.log_level)

    async def main() -> int:
        return await RouteService(config).serve()

    return run_async(main)
