"""``ktp``: the command line.

Each command lives with its part and registers itself here through a ``register(subparsers)``
function; this module only builds the parser, sets up logging and the event loop, and maps errors
to exit codes (2 for bad configuration, 1 for anything else that stopped the command).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from proxy import __version__
from proxy.errors import ConfigError, KtpError

log = logging.getLogger("proxy")

# (module, help) of every command; imported lazily so `ktp --help` stays fast.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("proxy.sidecar.command", "sidecar"),
    ("proxy.demo.command", "demo"),
    ("proxy.injector.command", "injector"),
    ("proxy.routeservice.command", "routes"),
    ("proxy.routeservice.tenant_command", "tenant"),
)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # aiokafka logs every retried metadata/coordinator hiccup at ERROR/WARNING; keep our own.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main()`` on uvloop when it is installed (it is a dependency on Linux).

    ``main`` is called inside the running loop: aiokafka and asyncio objects are created there.
    """

    async def inside_loop() -> int:
        return await main()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - only on platforms without uvloop
        return asyncio.run(inside_loop())
    return uvloop.run(inside_loop())


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``ktp`` parser; with ``only``, just that command's (a sidecar in every pod need not
    load the route service, the injector and the demo: about a megabyte of memory each time)."""
    parser = argparse.ArgumentParser(
        prog="ktp",
        description="kafka-tenant-proxy: per-tenant routing of Kafka records to baseline and sandbox consumers",
    )
    parser.add_argument("--version", action="version", version=f"ktp {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib

    for module_name, command in COMMANDS:
        if only is None or command == only:
            importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The command is the first word (ktp's own options are --help and --version only).
    named = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(named if named in {command for _, command in COMMANDS} else None)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"ktp {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KtpError as exc:
        print(f"ktp {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
