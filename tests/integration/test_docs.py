"""The README and docs/ say what the code does: every command in them is accepted by the real
parsers, boolean options are written with their value, and the README's metric table is exactly
what a real sidecar's /metrics exposes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import aiohttp
import pytest

from proxy.cli import build_parser
from proxy.config import parse_bool, resolve
from proxy.injector.config import INJECTOR_OPTIONS
from proxy.routeservice.server import ROUTE_SERVICE_OPTIONS
from proxy.routeservice.tenant_command import CLIENT_OPTIONS, parse_route_args
from proxy.sidecar.config import SIDECAR_OPTIONS, SidecarConfig
from proxy.sidecar.runtime import Sidecar
from proxy.testing import app as testing_app
from proxy.testing import broker as testing_broker
from proxy.testing.app import RecordingApp
from tests.conftest import sidecar_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEPARATORS = {"&&", "||", ";", "|", "&"}
TESTING_TOOLS = {"proxy.testing.broker": testing_broker.build_parser, "proxy.testing.app": testing_app.build_parser}


def shell_blocks(path: Path) -> list[str]:
    return re.findall(r"```(?:sh|bash|shell)\n(.*?)```", path.read_text(), flags=re.S)


def commands(block: str) -> list[list[str]]:
    """Each simple command of a shell block, as words (continuation lines joined, comments off)."""
    found: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for word in lexer:
            if word in SEPARATORS or word in ("do", "then", "until", "while", "done"):
                if current:
                    found.append(current)
                current = []
            else:
                current.append(word)
        if current:
            found.append(current)
    return found


def documented_commands() -> list[tuple[str, list[str]]]:
    return [(path.name, words) for path in DOCS for block in shell_blocks(path) for words in commands(block)]


def test_the_docs_have_commands_to_check() -> None:
    ktp = [words for _, words in documented_commands() if words[0] == "ktp"]
    assert len(ktp) >= 10, ktp  # the extraction itself works


@pytest.mark.parametrize(
    ("doc", "words"),
    [case for case in documented_commands() if case[1][0] in ("ktp", "python") or "..." in case[1]],
    ids=lambda value: " ".join(value)[:90] if isinstance(value, list) else value,
)
def test_every_documented_command_is_accepted_as_written(doc: str, words: list[str]) -> None:
    assert "..." not in words, f"{doc}: a placeholder, not a command: {' '.join(words)}"
    if words[0] == "python":
        assert words[1] == "-m" and words[2] in TESTING_TOOLS, words
        TESTING_TOOLS[words[2]]().parse_args(words[3:])
        return
    argv = words[1:]
    named = next(word for word in argv if not word.startswith("-"))
    try:
        args = build_parser(named).parse_args(argv)
    except SystemExit:
        pytest.fail(f"{doc}: `{' '.join(words)}` is refused by ktp's parser")
    # The sidecar's options are checked together as its start would (names, URLs, values).
    if args.command == "sidecar":
        SidecarConfig.from_options(resolve(SIDECAR_OPTIONS, args, environ={}), {})
    if args.command == "tenant" and args.tenant_command == "put":
        parse_route_args(args.routes)


async def test_the_documented_tenant_commands_run_against_a_real_route_service(
    bootstrap_servers: str, unique: str, tmp_path: Path
) -> None:
    """Every ``ktp tenant`` command of the docs, in their order, run as written against a real
    route service: only the server URL and the token file's path are this test's."""
    import asyncio
    import os
    import sys

    from proxy.kafka import KafkaConnection
    from proxy.routeservice.server import RouteService, RouteServiceConfig

    token = tmp_path / "token"
    token.write_text("docs-token\n")
    config = RouteServiceConfig(
        kafka=KafkaConnection(bootstrap_servers=bootstrap_servers), listen=("127.0.0.1", 0),
        routes_topic=f"_ktp_routes-{unique}", groups_topic=f"_ktp_groups-{unique}",
        token_file=str(token), drain_timeout=1.0,
    )
    tenant_commands = [words for _, words in documented_commands() if words[:2] == ["ktp", "tenant"]]
    assert len(tenant_commands) >= 4
    async with RouteService(config) as service:
        for words in tenant_commands:
            argv = list(words[1:])
            for flag, value in (("--server", service.url), ("--token-file", str(token))):
                if flag in argv:
                    argv[argv.index(flag) + 1] = value
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", *argv, env=dict(os.environ),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, f"`{' '.join(words)}` failed: {err.decode()}"


def boolean_flags() -> set[str]:
    options = (*SIDECAR_OPTIONS, *ROUTE_SERVICE_OPTIONS, *INJECTOR_OPTIONS, *CLIENT_OPTIONS)
    return {f"--{option.name}" for option in options if option.parse is parse_bool}


def test_boolean_options_are_written_with_their_value() -> None:
    flags = boolean_flags()
    assert "--public-reads" in flags
    for path in DOCS:
        for span in re.findall(r"`([^`\n]+)`", path.read_text()):
            words = span.split()
            for i, word in enumerate(words):
                if word in flags:
                    value = words[i + 1] if i + 1 < len(words) else ""
                    assert value.lower() in ("true", "false", "true|false"), f"{path.name}: `{span}`: {word} takes true or false"


def readme_metrics() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(ktp_[a-z_]+)` \|", section, flags=re.M))


async def test_the_readme_lists_every_metric_a_sidecar_exposes(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    async with RecordingApp() as app, Sidecar(sidecar_config(bootstrap_servers, topic, app.url, str(routes))) as sidecar:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{sidecar.metrics_server.port}/metrics") as response:
                scrape = await response.text()
    exposed = {
        name
        for name in re.findall(r"^# TYPE (\S+) ", scrape, flags=re.M)
        if not name.endswith("_created")  # prometheus_client's creation-time series of a family
    }
    listed = readme_metrics()
    assert exposed - listed == set(), f"exposed but not in the README's Metrics table: {sorted(exposed - listed)}"
    assert listed - exposed == set(), f"in the README but not exposed: {sorted(listed - exposed)}"
