"""``--bulk-max-records`` and ``--bulk-max-wait``: off by default, flags and ``KTP_*`` alike,
and a size the app's answer could not carry is refused with a message that says the range."""

from __future__ import annotations

import pytest

from proxy.delivery.bulk import DEFAULT_BULK_MAX_WAIT, MAX_BULK_RECORDS
from proxy.errors import ConfigError
from tests.unit.test_sidecar_options import REQUIRED, parse


def test_bulk_is_off_unless_asked() -> None:
    config = parse(REQUIRED)
    assert config.bulk_max_records == 0 and config.bulk_max_wait == DEFAULT_BULK_MAX_WAIT


def test_flags_and_environment_set_it() -> None:
    config = parse([*REQUIRED, "--bulk-max-records", "32", "--bulk-max-wait", "0"])
    assert (config.bulk_max_records, config.bulk_max_wait) == (32, 0.0)
    config = parse(REQUIRED, {"KTP_BULK_MAX_RECORDS": str(MAX_BULK_RECORDS), "KTP_BULK_MAX_WAIT": "0.5"})
    assert (config.bulk_max_records, config.bulk_max_wait) == (MAX_BULK_RECORDS, 0.5)


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--bulk-max-records", str(MAX_BULK_RECORDS + 1), f"0 (off) to {MAX_BULK_RECORDS}"),
        ("--bulk-max-records", "-1", f"0 (off) to {MAX_BULK_RECORDS}"),
        ("--bulk-max-records", "many", "bulk-max-records"),
        ("--bulk-max-wait", "-0.1", ">= 0"),
        ("--bulk-max-wait", "nan", ">= 0"),
    ],
)
def test_bad_values_are_refused_with_the_range(flag: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=flag.lstrip("-")) as raised:
        parse([*REQUIRED, flag, value])
    assert says in str(raised.value)


def test_a_config_built_directly_is_checked_too() -> None:
    from tests.conftest import sidecar_config

    with pytest.raises(ConfigError, match="--bulk-max-records"):
        sidecar_config("b:9092", "t", "http://127.0.0.1:8080/e", "/dev/null", bulk_max_records=MAX_BULK_RECORDS + 1)
    with pytest.raises(ConfigError, match="--bulk-max-wait"):
        sidecar_config("b:9092", "t", "http://127.0.0.1:8080/e", "/dev/null", bulk_max_wait=-1.0)


def test_bulks_need_lanes_of_more_than_one_record() -> None:
    with pytest.raises(ConfigError, match="--ordering partition or key"):
        parse([*REQUIRED, "--bulk-max-records", "8", "--ordering", "none"])
    assert parse([*REQUIRED, "--bulk-max-records", "8", "--ordering", "key"]).ordering == "key"
