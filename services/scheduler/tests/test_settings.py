"""Scheduler settings: defaults, settings file, DURABLE_* environment, validation."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from durable_core import ConfigError
from durable_scheduler.settings import load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the variables they set, not the developer's or CI's."""
    for name in list(os.environ):
        if name.startswith("DURABLE_") or name == "NATS_URL":
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.nats.servers == ("nats://127.0.0.1:4222",)
    assert s.nats.user is None and s.nats.tls_ca is None
    assert s.nats.name == "durable-scheduler"
    assert s.engine.prefix == "durable"
    assert s.engine.payload_grace == timedelta(hours=1)
    assert s.consumer == "scheduler"
    assert s.ack_wait == timedelta(seconds=10)
    assert s.max_concurrent == 16
    assert s.shutdown_grace == timedelta(seconds=10)
    assert (s.metrics_host, s.metrics_port) == ("127.0.0.1", 9465)
    assert s.log_level == "INFO"
    assert s.schedule_sweep == timedelta(seconds=30)


def test_the_schedule_sweep_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_SCHEDULE_SWEEP", "0")
    assert load_settings().schedule_sweep == timedelta(0)
    monkeypatch.setenv("DURABLE_SCHEDULE_SWEEP", "2.5")
    assert load_settings().schedule_sweep == timedelta(seconds=2.5)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://plain:4222")
    monkeypatch.setenv("DURABLE_PREFIX", "shop")
    monkeypatch.setenv("DURABLE_REPLICAS", "2")  # a processor setting: not the scheduler's
    monkeypatch.setenv("DURABLE_ACK_WAIT", "2.5")
    monkeypatch.setenv("DURABLE_METRICS_HOST", "0.0.0.0")
    monkeypatch.setenv("DURABLE_METRICS_PORT", "0")
    monkeypatch.setenv("DURABLE_NATS_USER", "sched")
    monkeypatch.setenv("DURABLE_NATS_PASSWORD", "secret")
    monkeypatch.setenv("DURABLE_NATS_TLS_CA", "/etc/ca.pem")
    s = load_settings()
    assert s.nats.servers == ("nats://plain:4222",)
    assert s.engine.prefix == "shop"
    assert s.ack_wait == timedelta(seconds=2.5)
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 0)
    assert (s.nats.user, s.nats.password, s.nats.tls_ca) == ("sched", "secret", "/etc/ca.pem")


def test_durable_nats_url_wins_and_flags_win_over_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://plain:4222")
    monkeypatch.setenv("DURABLE_NATS_URL", "nats://prefixed:4222")
    assert load_settings().nats.servers == ("nats://prefixed:4222",)
    assert load_settings({"nats_url": "nats://flag:4222"}).nats.servers == ("nats://flag:4222",)


def test_settings_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "scheduler.toml"
    path.write_text('nats_url = "nats://from-file:4222"\nmax_concurrent = 3\n')
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(path))
    s = load_settings()
    assert s.nats.servers == ("nats://from-file:4222",)
    assert s.max_concurrent == 3


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("DURABLE_ACK_WAIT", "0.5", "ack_wait"),
        ("DURABLE_ACK_WAIT", "soon", "ack_wait"),
        ("DURABLE_MAX_CONCURRENT", "0", "max_concurrent"),
        ("DURABLE_METRICS_PORT", "70000", "metrics_port"),
        ("DURABLE_SHUTDOWN_GRACE", "-1", "shutdown_grace"),
        ("DURABLE_LOG_LEVEL", "LOUD", "log_level"),
        ("DURABLE_PREFIX", "Bad-Prefix", "prefix"),
        ("DURABLE_SCHEDULE_SWEEP", "0.05", "schedule_sweep"),
        ("DURABLE_SCHEDULE_SWEEP", "-1", "schedule_sweep"),
        ("DURABLE_SCHEDULE_SWEEP", "often", "schedule_sweep"),
    ],
)
def test_invalid_settings_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, match: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=match):
        load_settings()


def test_main_reports_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from durable_scheduler.main import main

    monkeypatch.setenv("DURABLE_MAX_CONCURRENT", "0")
    assert main([]) == 2
    assert "configuration error" in capsys.readouterr().err
