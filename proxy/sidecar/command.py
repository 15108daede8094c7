"""``ktp sidecar`` command."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.config import add_options, resolve
from proxy.sidecar.config import SIDECAR_OPTIONS, SidecarConfig


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sidecar",
        help="consume topics, decide per record by tenant, deliver to the app over HTTP",
        description="Run the tenant-aware consumer sidecar next to one app container.",
    )
    add_options(parser, SIDECAR_OPTIONS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from proxy.cli import run_async, setup_logging
    from proxy.sidecar.runtime import Sidecar
    from proxy.telemetry.setup import configure_tracing

    config = SidecarConfig.from_options(resolve(SIDECAR_OPTIONS, args))
    setup_logging(config.log_level)
    # Before the sidecar is built: it decides once whether tracing is on.
    provider = configure_tracing()
    try:
        return run_async(lambda: Sidecar(config).serve())
    finally:
        if provider is not None and hasattr(provider, "shutdown"):
            provider.shutdown()  # flush the spans still batched
