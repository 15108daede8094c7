"""Command options: one declaration gives a flag, a ``KTP_*`` environment variable and a YAML key.

Precedence, highest first: command-line flag, environment variable, ``--config`` YAML file,
default. Every command (``ktp sidecar``, ``ktp routes serve``, ``ktp injector serve`` …)
declares its options as a tuple of :class:`Option` and gets a plain ``dict`` of parsed values,
which it turns into its own keyword-only config object.

Secrets are never taken as flag values: a secret is read from a file named by an option
(``--sasl-password-file``), or, for options declared ``env_only``, from the environment alone
(``KTP_SASL_PASSWORD``, set from a Kubernetes Secret). Such an option has no flag and no YAML key:
``--sasl-password x`` is refused without echoing ``x``, so a password never shows in ``ps``
output, shell history, a ConfigMap or an error message.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.errors import ConfigError

ENV_PREFIX = "KTP_"


@dataclass(frozen=True, slots=True)
class Option:
    """One option of a command.

    ``name`` is the flag without dashes (``bootstrap-servers``); the environment variable is
    ``KTP_BOOTSTRAP_SERVERS`` and the YAML key is either spelling (``bootstrap-servers`` or
    ``bootstrap_servers``).
    """

    name: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    required: bool = False
    choices: Sequence[str] | None = None
    #: A secret taken from ``KTP_*`` only: never a flag value (``ps``), never a YAML key.
    env_only: bool = False

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def parse_csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def parse_positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def parse_host_port(raw: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → ``(host, port)``."""
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {raw!r}")
    host = host.strip("[]")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {raw!r}")
    return host, number


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add ``--config`` and one flag per option. Flags default to ``None`` so that we can tell
    "not given" from "given", and fall back to env, YAML and default in :func:`resolve`."""
    parser.add_argument(
        "--config", default=None, metavar="FILE", help="YAML file setting any option below (env: KTP_CONFIG)"
    )
    for option in options:
        if option.env_only:
            parser.add_argument(
                f"--{option.name}", dest=f"_refused_{option.dest}", action=_RefuseSecretFlag,
                nargs="?", help=argparse.SUPPRESS, env=option.env,
            )
            continue
        extra = f" (env: {option.env}"
        extra += f"; default: {option.default!r})" if option.default is not None else ")"
        parser.add_argument(
            f"--{option.name}",
            dest=option.dest,
            default=None,
            choices=option.choices,
            help=option.help + extra,
        )


class _RefuseSecretFlag(argparse.Action):
    """Fails the parse when an ``env_only`` secret is given as a flag, naming the flag but never
    its value (argparse's own "unrecognized arguments" error would print the value)."""

    def __init__(self, *args: Any, env: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env = env

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        parser.error(
            f"{option_string} is not accepted on the command line (it would show in ps and shell "
            f"history): set {self.env} from a secret, or use the matching -file option"
        )


def _load_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --config file {path!r}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config file {path!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--config file {path!r} must be a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def resolve(
    options: Sequence[Option],
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Merge flags, environment and YAML into ``{dest: value}``, parsed and validated.

    Raises :class:`ConfigError` naming every problem at once, so a user fixes them in one go.
    """
    env = os.environ if environ is None else environ
    config_path = getattr(args, "config", None) or env.get(ENV_PREFIX + "CONFIG")
    from_yaml = _load_yaml(config_path) if config_path else {}
    known = {option.dest for option in options}
    problems = [
        f"--config: unknown option {key!r}" for key in sorted(from_yaml) if key not in known
    ]
    values: dict[str, Any] = {}
    for option in options:
        if option.env_only:
            if option.dest in from_yaml:
                problems.append(
                    f"{config_path}: {option.name} is a secret and is not read from --config "
                    f"files (often ConfigMaps): set {option.env} from a secret instead"
                )
            values[option.dest] = env.get(option.env) or None
            continue
        raw: Any = getattr(args, option.dest, None)
        source = f"--{option.name}"
        if raw is None and option.env in env:
            raw, source = env[option.env], option.env
        if raw is None and option.dest in from_yaml:
            raw, source = from_yaml[option.dest], f"{config_path}: {option.name}"
            if isinstance(raw, list):
                raw = ",".join(str(item) for item in raw)
            elif isinstance(raw, bool):
                raw = "true" if raw else "false"
            elif raw is not None:
                raw = str(raw)
        if raw is None:
            if option.required:
                problems.append(f"--{option.name} is required (or set {option.env})")
            # Defaults are written as a user would type them ("127.0.0.1:14000"): parse them too.
            default = option.default
            values[option.dest] = option.parse(default) if isinstance(default, str) else default
            continue
        if option.choices is not None and raw not in option.choices:
            problems.append(f"{source}: {raw!r} is not one of {', '.join(option.choices)}")
            continue
        try:
            values[option.dest] = option.parse(raw)
        except (ValueError, TypeError) as exc:
            problems.append(f"{source}: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))
    return values
