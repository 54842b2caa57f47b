"""Processor settings: defaults, settings file, DURABLE_* environment, validation."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from durable_core import ConfigError
from durable_processor.settings import load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the variables they set, not the developer's or CI's."""
    for name in list(os.environ):
        if name.startswith("DURABLE_") or name in {"NATS_URL", "SUBMIT_TEST_COMMAND"}:
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.nats.servers == ("nats://127.0.0.1:4222",)
    assert s.nats.user is None and s.nats.creds_file is None
    assert s.nats.name == "durable-processor"
    assert (s.engine.prefix, s.engine.replicas, s.engine.max_payload) == ("durable", 1, 500_000)
    assert (s.engine.payload_threshold, s.engine.max_object_size) == (262_144, 1024**3)
    assert s.worker.max_concurrent == 100
    assert s.worker.ack_wait == timedelta(seconds=30)
    assert s.worker.heartbeat is None  # 0 in the file: ack_wait / 6
    assert s.worker.heartbeat_interval == 5.0
    assert s.worker.consumer == "processor"
    assert dict(s.worker.services) == {}
    assert s.worker.shutdown_grace == timedelta(seconds=10)
    assert s.submit_test_command is False
    assert s.log_level == "INFO"


def test_durable_max_concurrent_overrides_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_MAX_CONCURRENT", "7")
    assert load_settings().worker.max_concurrent == 7


def test_nats_url_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://n1:4222,nats://n2:4222")
    assert load_settings().nats.servers == ("nats://n1:4222", "nats://n2:4222")


def test_durable_nats_url_wins_over_nats_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://plain:4222")
    monkeypatch.setenv("DURABLE_NATS_URL", "nats://prefixed:4222")
    assert load_settings().nats.servers == ("nats://prefixed:4222",)


def _settings_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    """A DURABLE_SETTINGS_FILE holding ``text``."""
    path = tmp_path / "processor.toml"
    path.write_text(text)
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(path))


def test_settings_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _settings_file(
        monkeypatch,
        tmp_path,
        'nats_url = "nats://from-file:4222"\n'
        "max_concurrent = 3\n"
        "replicas = 3\n"
        'log_level = "debug"\n'
        "[services]\n"
        'OrderService = "orders:50051"\n',
    )
    s = load_settings()
    assert s.nats.servers == ("nats://from-file:4222",)
    assert s.worker.max_concurrent == 3
    assert s.engine.replicas == 3
    assert s.log_level == "DEBUG"
    assert s.worker.services["OrderService"] == "orders:50051"
    assert s.worker.ack_wait == timedelta(seconds=30)  # the rest keeps its defaults


def test_environment_wins_over_the_settings_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _settings_file(monkeypatch, tmp_path, "max_concurrent = 3\n")
    monkeypatch.setenv("DURABLE_MAX_CONCURRENT", "9")
    assert load_settings().worker.max_concurrent == 9


def test_service_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_SERVICES__HelloService", "10.0.0.5:9090")
    services = load_settings().worker.services
    assert services["HelloService"] == "10.0.0.5:9090"  # case kept: lookups are exact


def test_default_service_address_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_DEFAULT_SERVICE_ADDRESS", "svc:9000")
    assert load_settings().worker.services["*"] == "svc:9000"


@pytest.mark.parametrize("value", ["1", "true", "yes", "on"])
def test_submit_test_command_without_prefix(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SUBMIT_TEST_COMMAND", value)
    assert load_settings().submit_test_command is True


def test_heartbeat_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_HEARTBEAT", "2.5")
    assert load_settings().worker.heartbeat == timedelta(seconds=2.5)


def test_overrides_win_and_none_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_MAX_CONCURRENT", "9")
    s = load_settings({"max_concurrent": 4, "consumer": None, "processor_id": "p-1"})
    assert s.worker.max_concurrent == 4
    assert s.worker.consumer == "processor"
    assert s.worker.processor_id == "p-1"


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("DURABLE_MAX_CONCURRENT", "lots", "max_concurrent"),
        ("DURABLE_MAX_CONCURRENT", "0", "max_concurrent"),
        ("DURABLE_ACK_WAIT", "soon", "ack_wait"),
        ("DURABLE_ACK_WAIT", "0.5", "ack_wait"),
        ("DURABLE_REPLICAS", "2", "replicas"),
        ("DURABLE_MAX_PAYLOAD", "10", "max_payload"),
        ("DURABLE_PAYLOAD_THRESHOLD", "10", "payload_threshold"),
        ("DURABLE_MAX_OBJECT_SIZE", "big", "max_object_size"),
        ("DURABLE_MAX_OBJECT_SIZE", "2048", "max_object_size"),
        ("DURABLE_PREFIX", "Bad-Prefix", "prefix"),
        ("DURABLE_LOG_LEVEL", "verbose", "log_level"),
        ("DURABLE_SHUTDOWN_GRACE", "[]", "shutdown_grace"),
        ("NATS_URL", " , ", "NATS URL"),
    ],
)
def test_invalid_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, setting: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=setting):
        load_settings()


def test_load_plugins_chooses_the_installed_plugins_a_processor_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().load_plugins is None  # every installed plugin
    monkeypatch.setenv("DURABLE_LOAD_PLUGINS", "order_processing, hello_workflow")
    assert load_settings().load_plugins == ("hello_workflow", "order_processing")
    monkeypatch.setenv("DURABLE_LOAD_PLUGINS", "none")
    assert load_settings().load_plugins == ()
    assert load_settings({"load_plugins": "*"}).load_plugins is None


# Each of these reads as something else (or fails to read) through dynaconf's TOML parsing of
# environment values; NATS credentials must reach the server exactly as the operator set them.
AWKWARD_SECRETS = ["007", "1e3", "true", '"quoted"', "[1]", "{x=1}", "@json x", "@format {", "@del"]


@pytest.mark.parametrize("secret", AWKWARD_SECRETS)
def test_nats_credentials_are_taken_verbatim(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("DURABLE_NATS_USER", secret)
    monkeypatch.setenv("DURABLE_NATS_PASSWORD", secret)
    monkeypatch.setenv("DURABLE_MAX_CONCURRENT", "7")  # other settings are still TOML values
    s = load_settings()
    assert (s.nats.user, s.nats.password) == (secret, secret)
    assert s.worker.max_concurrent == 7


@pytest.mark.parametrize("secret", AWKWARD_SECRETS)
def test_nats_token_is_taken_verbatim(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("DURABLE_NATS_TOKEN", secret)
    assert load_settings().nats.token == secret


def test_settings_file_credentials_are_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _settings_file(monkeypatch, tmp_path, 'nats_user = "u"\nnats_password = "007"\n')
    s = load_settings()
    assert (s.nats.user, s.nats.password) == ("u", "007")


def test_text_settings_are_taken_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting whose default is text keeps the variable's text: DURABLE_PREFIX=true is the
    engine "true" (not True, refused as a prefix), a consumer 007 is not 7; numbers are still
    numbers."""
    monkeypatch.setenv("DURABLE_PREFIX", "true")
    monkeypatch.setenv("DURABLE_CONSUMER", "007")
    monkeypatch.setenv("DURABLE_PROCESSOR_ID", "42")
    monkeypatch.setenv("DURABLE_MAX_CONCURRENT", "12")
    s = load_settings()
    assert (s.engine.prefix, s.worker.consumer) == ("true", "007")
    assert s.worker.processor_id == "42"
    assert s.worker.max_concurrent == 12
