"""``ktp tenant put|get|delete|list``: the route service's command-line client.

Exit codes: 0 done; 1 the route service refused the request or could not be reached (the message
says which, e.g. ``tenant '123' not found``, ``answered 401``); 2 bad arguments or options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from proxy.config import Option, add_options, resolve
from proxy.errors import ConfigError, RouteError
from proxy.routes.client import DEFAULT_SERVER, RouteServiceClient, wait_seconds
from proxy.routes.records import RouteRecord, check_routes, check_tenant_value, format_rfc3339
from proxy.routes.catchup import now_ms

CLIENT_OPTIONS = (
    Option("server", "route service URL", DEFAULT_SERVER),
    Option(
        "token-file",
        "file holding the route service's bearer token (needed for put and delete, and for get "
        "and list unless the service runs with --public-reads)",
    ),
    Option("cafile", "CA bundle that verifies an https:// route service (default: the system's CAs)"),
    Option("output", "output format", "text", choices=("text", "json")),
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tenant",
        help="create, show, delete and list tenants' routes through the route service",
        description="Client of the route service (ktp routes serve).",
    )
    commands = parser.add_subparsers(dest="tenant_command", metavar="SUBCOMMAND", required=True)
    put = commands.add_parser(
        "put",
        help="create or replace a tenant's routes",
        description="Route TENANT's records for each SERVICE to SANDBOX, from now on.",
    )
    put.add_argument("tenant", metavar="TENANT")
    put.add_argument(
        "--route",
        dest="routes",
        action="append",
        required=True,
        metavar="SERVICE=SANDBOX",
        help="route SERVICE to SANDBOX for this tenant (repeatable)",
    )
    get = commands.add_parser("get", help="show a tenant's routes")
    get.add_argument("tenant", metavar="TENANT")
    delete = commands.add_parser(
        "delete", help="delete a tenant: its later records go back to baseline"
    )
    delete.add_argument("tenant", metavar="TENANT")
    for sub in (put, delete):
        sub.add_argument(
            "--wait",
            action="store_true",
            help="return only once the change is in force (the route service's --route-lead after it is stored)",
        )
    listing = commands.add_parser("list", help="list every tenant's routes")
    for sub in (put, get, delete, listing):
        add_options(sub, CLIENT_OPTIONS)
        sub.set_defaults(handler=run)


def parse_route_args(raw: list[str]) -> dict[str, str]:
    """``["orders-worker=pr-42", ...]`` → ``{"orders-worker": "pr-42"}``, validated."""
    routes: dict[str, str] = {}
    for item in raw:
        service, sep, sandbox = item.partition("=")
        if not sep:
            raise ConfigError(f"--route {item!r}: expected SERVICE=SANDBOX, e.g. orders-worker=pr-42")
        if service.strip() in routes:
            raise ConfigError(f"--route: service {service.strip()!r} given twice")
        routes[service.strip()] = sandbox.strip()
    try:
        return check_routes(routes)
    except RouteError as exc:
        raise ConfigError(f"--route: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from proxy.cli import run_async

    values = resolve(CLIENT_OPTIONS, args)
    token = None
    if values["token_file"]:
        try:
            token = Path(values["token_file"]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {values['token_file']!r}: {exc.strerror}") from exc
    command: str = args.tenant_command
    tenant = None
    if command != "list":
        try:
            tenant = check_tenant_value(args.tenant)
        except RouteError as exc:
            raise ConfigError(str(exc)) from exc
    routes = parse_route_args(args.routes) if command == "put" else {}
    if command in ("put", "delete") and not token:
        raise ConfigError(f"ktp tenant {command} needs --token-file (or KTP_TOKEN_FILE)")
    from proxy.kafka import client_ssl_context

    context = client_ssl_context(values["cafile"], "--cafile") if values["cafile"] else None
    client = RouteServiceClient(values["server"], token=token, ssl_context=context)
    as_json = values["output"] == "json"

    async def main() -> int:
        async with client:
            if command == "put":
                assert tenant is not None
                record = await client.put(tenant, routes)
                if args.wait:
                    await asyncio.sleep(wait_seconds(record.effective_from_ms, record.written_at_ms, now_ms()))
                _print_records([record], as_json, single=True)
            elif command == "get":
                assert tenant is not None
                _print_records([await client.get(tenant)], as_json, single=True)
            elif command == "delete":
                assert tenant is not None
                deletion = await client.delete(tenant)
                if args.wait:
                    await asyncio.sleep(wait_seconds(deletion.effective_from_ms, deletion.written_at_ms, now_ms()))
                if as_json:
                    print(json.dumps({"tenant": tenant, "deleted": True}))
                else:
                    print(f"tenant {tenant} deleted")
            else:
                _print_records(await client.list_tenants(), as_json, single=False)
        return 0

    return run_async(main)


def _print_records(records: list[RouteRecord], as_json: bool, *, single: bool) -> None:
    if as_json:
        bodies = [record.to_api() for record in records]
        print(json.dumps(bodies[0] if single else {"tenants": bodies}, indent=2))
        return
    if not records:
        print("no tenants", file=sys.stderr)
        return
    rows = [
        (
            record.tenant,
            ",".join(f"{service}={sandbox}" for service, sandbox in sorted(record.routes.items())),
            str(record.version),
            format_rfc3339(record.effective_from_ms),
        )
        for record in records
    ]
    header = ("TENANT", "ROUTES", "VERSION", "EFFECTIVE_FROM")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
