"""``ktp demo`` command."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="run the baseline/sandbox scenario on an embedded broker and print who handled what"
    )
    parser.add_argument("--records", type=int, default=60, help="records to produce (default 60)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from proxy.cli import run_async, setup_logging
    from proxy.demo.scenario import run_demo

    setup_logging("WARNING")
    return run_async(lambda: run_demo(records=args.records))
