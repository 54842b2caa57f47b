"""Setting values that used to end in a traceback or be taken for something else: nan, inf and
1e20 seconds, booleans for numbers, a negative shutdown grace, a ``services`` that is not a
table (processor and scheduler), and a GRPC_PORT that is not a number (hello service)."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from durable_core import ConfigError
from durable_processor.settings import load_settings
from durable_scheduler.settings import load_settings as load_scheduler_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the variables they set, not the developer's or CI's."""
    for name in list(os.environ):
        if name.startswith("DURABLE_") or name in {"NATS_URL", "SUBMIT_TEST_COMMAND"}:
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DURABLE_ACK_WAIT", "nan"),
        ("DURABLE_ACK_WAIT", "inf"),
        ("DURABLE_ACK_WAIT", "-inf"),
        ("DURABLE_SHUTDOWN_GRACE", "1e20"),
        ("DURABLE_LEASE_TTL", "1e20"),
        ("DURABLE_HEARTBEAT", "1e20"),
        ("DURABLE_HEARTBEAT", "nan"),
        ("DURABLE_MAX_CONCURRENT", "true"),
        ("DURABLE_MAX_CONCURRENT", "inf"),
        ("DURABLE_REPLICAS", "false"),
        ("DURABLE_SHUTDOWN_GRACE", "-5"),
        ("DURABLE_SHARDS", "2.5"),  # was 2 shards, for good
        ("DURABLE_SHARDS", "1.9"),
        ("DURABLE_MAX_CONCURRENT", "0.5"),
    ],
)
def test_a_bad_processor_number_is_one_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    setting = variable.removeprefix("DURABLE_").lower()
    with pytest.raises(ConfigError, match=f"setting '{setting}'") as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_a_whole_number_written_as_a_float_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_SHARDS", "3.0")
    assert load_settings().engine.shards == 3


def test_a_zero_shutdown_grace_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_SHUTDOWN_GRACE", "0")
    assert load_settings().worker.shutdown_grace == timedelta(0)


def test_services_must_be_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_SERVICES", "abc")
    with pytest.raises(ConfigError, match="setting 'services' must be a table"):
        load_settings()
    monkeypatch.delenv("DURABLE_SERVICES")
    monkeypatch.setenv("DURABLE_SERVICES__HelloService", "h:1")
    assert dict(load_settings().worker.services) == {"HelloService": "h:1"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DURABLE_RETENTION", "nan"),
        ("DURABLE_RETENTION", "1e20"),
        ("DURABLE_ACK_WAIT", "inf"),
        ("DURABLE_SHUTDOWN_GRACE", "1e20"),
        ("DURABLE_PAYLOAD_GRACE", "nan"),
        ("DURABLE_RETENTION_SWEEP", "1e20"),
        ("DURABLE_EXPIRED_NOTE_TTL", "nan"),
        ("DURABLE_STRANDED_SWEEP", "nan"),
        ("DURABLE_STRANDED_AFTER", "1e20"),
        ("DURABLE_SCHEDULE_SWEEP", "inf"),
        ("DURABLE_MAX_CONCURRENT", "true"),
    ],
)
def test_a_bad_scheduler_number_is_one_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    setting = variable.removeprefix("DURABLE_").lower()
    with pytest.raises(ConfigError, match=f"setting '{setting}'"):
        load_scheduler_settings()


@pytest.mark.parametrize("variable", ["GRPC_PORT", "HEALTH_PORT"])
def test_hello_service_refuses_a_port_that_is_not_a_number(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str
) -> None:
    from hello_service.server import main

    monkeypatch.setenv(variable, "abc")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"hello-service: configuration error: {variable} must be a port number (0 to 65535), "
        "got 'abc'\n"
    )
