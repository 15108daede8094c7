"""``ktp demo`` command."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="run the baseline/sandbox scenario on an embedded broker and print who handled what"
    )
    parser.add_argument(
        "--records", type=int, default=20, help="requests per tenant and phase (default 20)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from proxy.cli import run_async, setup_logging
    from proxy.demo.scenario import run_demo

    setup_logging("ERROR")
    # The embedded broker drops a connection during concurrent group joins; aiokafka recovers
    # and logs it at ERROR, which would only distract from the demo's table.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return run_async(lambda: run_demo(records=args.records))
