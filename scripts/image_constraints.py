"""Write image-constraints.txt: the exact version of every runtime dependency of the package
(and of theirs), as installed in the running environment, for the Dockerfile's
``pip install --constraint``. Run with the project's virtualenv: ``make image-constraints``."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "image-constraints.txt"
HEADER = """\
# Exact versions of every runtime dependency of the image (and of theirs), used by the
# Dockerfile as pip --constraint: two builds of one commit get the same libraries. pyproject.toml
# keeps version ranges for people installing the package. Regenerate with `make
# image-constraints` after changing a dependency (tests/k8s/test_dockerfile.py checks it).
"""


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(distribution: str = "kafka-tenant-proxy") -> dict[str, str]:
    """``{name: installed version}`` of the runtime requirements of ``distribution``, without
    extras, followed transitively, for this interpreter's platform."""
    environment = {**default_environment(), "extra": ""}
    found: dict[str, str] = {}
    pending = [Requirement(r) for r in importlib.metadata.requires(distribution) or []]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = normalize(requirement.name)
        if name in found:
            continue
        found[name] = importlib.metadata.version(requirement.name)
        pending += [Requirement(r) for r in importlib.metadata.requires(requirement.name) or []]
    return found


def render(pins: dict[str, str]) -> str:
    """The file's text."""
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main() -> int:
    OUTPUT.write_text(render(closure()))
    print(f"wrote {OUTPUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
