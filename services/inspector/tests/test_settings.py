"""Inspector settings: defaults, settings file, DURABLE_* environment, validation; the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from durable_core import ConfigError
from durable_inspector.main import main
from durable_inspector.settings import load_settings


def test_defaults() -> None:
    s = load_settings()
    assert s.nats.servers == ("nats://127.0.0.1:4222",)
    assert s.nats.name == "durable-inspector"
    assert s.nats.user is None and s.nats.tls_ca is None
    assert s.engine.prefix == "durable"
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.token is None
    assert s.jaeger_url == "http://127.0.0.1:16686"
    assert s.load_plugins is True and s.log_level == "INFO"
    assert s.reconcile_interval == 300


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://a:1,nats://b:2")
    monkeypatch.setenv("DURABLE_PREFIX", "shop")
    monkeypatch.setenv("DURABLE_INSPECTOR_HOST", "0.0.0.0")
    monkeypatch.setenv("DURABLE_INSPECTOR_PORT", "9000")
    monkeypatch.setenv("DURABLE_INSPECTOR_TOKEN", "s3cret")
    monkeypatch.setenv("DURABLE_JAEGER_URL", "https://jaeger.example:443/")
    monkeypatch.setenv("DURABLE_NATS_USER", "u")
    monkeypatch.setenv("DURABLE_NATS_PASSWORD", "p")
    monkeypatch.setenv("DURABLE_NATS_TLS_CA", "/ca.pem")
    s = load_settings()
    assert s.nats.servers == ("nats://a:1", "nats://b:2")
    assert (s.nats.user, s.nats.password, s.nats.tls_ca) == ("u", "p", "/ca.pem")
    assert s.engine.prefix == "shop"
    assert (s.host, s.port, s.token) == ("0.0.0.0", 9000, "s3cret")
    assert s.jaeger_url == "https://jaeger.example:443"
    monkeypatch.setenv("DURABLE_NATS_URL", "nats://c:3")
    assert load_settings().nats.servers == ("nats://c:3",)  # the prefixed name wins


def test_allowed_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().allowed_hosts == ()
    monkeypatch.setenv("DURABLE_INSPECTOR_ALLOWED_HOSTS", "inspector, inspector.example.com")
    assert load_settings().allowed_hosts == ("inspector", "inspector.example.com")
    monkeypatch.setenv("DURABLE_INSPECTOR_ALLOWED_HOSTS", "http://inspector/")
    with pytest.raises(ConfigError, match="inspector_allowed_hosts"):
        load_settings()


@pytest.mark.parametrize("secret", ["12345", "0x1F", "false", "'quoted'", "@int x", "@get key"])
def test_token_is_taken_verbatim(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    """An access token that looks like a TOML value (or a dynaconf @-command) is kept as typed."""
    monkeypatch.setenv("DURABLE_INSPECTOR_TOKEN", secret)
    assert load_settings().token == secret


def test_settings_file_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "inspector.toml"
    f.write_text('inspector_port = 7000\ninspector_token = "from-file"\n')
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(f))
    s = load_settings({"inspector_port": 7100, "inspector_host": None})
    assert (s.port, s.token, s.host) == (7100, "from-file", "127.0.0.1")


@pytest.mark.parametrize(
    ("name", "value", "mentions"),
    [
        ("DURABLE_INSPECTOR_PORT", "http", "inspector_port"),
        ("DURABLE_INSPECTOR_PORT", "70000", "inspector_port"),
        ("DURABLE_JAEGER_URL", "jaeger:16686", "jaeger_url"),
        ("DURABLE_LOG_LEVEL", "LOUD", "log_level"),
        ("DURABLE_PREFIX", "Bad-Prefix", "prefix"),
        ("DURABLE_INSPECTOR_RECONCILE_INTERVAL", "1", "inspector_reconcile_interval"),
        ("DURABLE_INSPECTOR_RECONCILE_INTERVAL", "often", "inspector_reconcile_interval"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, mentions: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=mentions):
        load_settings()


def test_cli_reports_bad_settings_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DURABLE_INSPECTOR_PORT", "nope")
    assert main([]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_cli_exits_3_when_nats_is_unreachable() -> None:
    from durable_core.testing import free_port

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_inspector",
            "--nats-url",
            f"nats://127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert "cannot reach NATS" in proc.stderr
