"""``ktp injector serve``: the sidecar injector webhook."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.config import add_options, resolve
from proxy.injector.config import INJECTOR_OPTIONS, InjectorConfig


def register(subparsers: Any) -> None:
    """Add ``ktp injector serve`` to the CLI."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "injector",
        help="mutating admission webhook that adds the sidecar to annotated pods",
        description="The Kubernetes sidecar injector (see `ktp injector serve --help`).",
    )
    commands = parser.add_subparsers(dest="injector_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve POST /inject over TLS",
        description=(
            "Serve the mutating admission webhook: pods annotated kafka-tenant-proxy.io/inject: "
            '"true" get the ktp-sidecar container, configured from their kafka-tenant-proxy.io/* '
            "annotations and the options below."
        ),
    )
    add_options(serve, INJECTOR_OPTIONS)
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the options and serve until SIGTERM/SIGINT."""
    from proxy.cli import run_async, setup_logging
    from proxy.injector.server import InjectorServer

    config = InjectorConfig.from_options(resolve(INJECTOR_OPTIONS, args))
    setup_logging(config.log_level)
    return run_async(lambda: InjectorServer(config).serve())
