"""Security by configuration: a 3-node cluster that demands TLS (with client certificates) and a
user/password, and the processor, the client and the CLI configured for it.

The certificates are made here: a throwaway CA, a server certificate for 127.0.0.1/localhost and
a client certificate. Routes between the nodes stay plain; only client connections are secured.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from durable_core import Client, EngineConfig, NatsConfig
from durable_core.errors import NatsUnavailableError
from durable_core.testing import NatsCluster, ProcessStack, assert_eventually_async

pytestmark = pytest.mark.integration

USER = "durable"
PASSWORD = "s3cret-Pa55"  # a throwaway test credential
GREETING = "Hello, {}! Welcome to Durable Execution on NATS JetStream."
EXIT_NATS = 3


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate (SAN 127.0.0.1, localhost) and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "durable test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(name: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
        cert_path.write_bytes(
            builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return cert_path, key_path

    server_cert, server_key = leaf("server", server=True)
    client_cert, client_key = leaf("client", server=False)
    return Pki(ca_path, server_cert, server_key, client_cert, client_key)


def secured_config(pki: Pki) -> str:
    """What each node adds to its config: TLS with client certificates, and one user."""
    return "\n".join(
        [
            "tls {",
            f'  cert_file: "{pki.server_cert}"',
            f'  key_file: "{pki.server_key}"',
            f'  ca_file: "{pki.ca}"',
            "  verify: true",
            "  timeout: 2",
            "}",
            "authorization {",
            f'  users: [ {{ user: "{USER}", password: "{PASSWORD}" }} ]',
            "}",
        ]
    )


def client_env(pki: Pki, *, password: str = PASSWORD) -> dict[str, str]:
    """The settings every service and the CLI read (see the deployment's Secrets)."""
    return {
        "DURABLE_NATS_USER": USER,
        "DURABLE_NATS_PASSWORD": password,
        "DURABLE_NATS_TLS_CA": str(pki.ca),
        "DURABLE_NATS_TLS_CERT": str(pki.client_cert),
        "DURABLE_NATS_TLS_KEY": str(pki.client_key),
    }


class SecuredStack(ProcessStack):
    """A ProcessStack whose processors and CLI runs carry the TLS and credential settings."""

    def __init__(self, *args: object, security: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.security = security

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.security}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured_cluster(pki: Pki) -> Iterator[NatsCluster]:
    cluster = NatsCluster(extra_config=secured_config(pki))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def nats_config(cluster: NatsCluster, pki: Pki, *, password: str = PASSWORD) -> NatsConfig:
    return NatsConfig(
        servers=tuple(cluster.urls),
        user=USER,
        password=password,
        tls_ca=str(pki.ca),
        tls_cert=str(pki.client_cert),
        tls_key=str(pki.client_key),
        name="durable-security-test",
    )


async def test_hello_workflow_runs_over_tls_with_a_password(
    secured_cluster: NatsCluster, pki: Pki, tmp_path: Path
) -> None:
    prefix = "s" + uuid.uuid4().hex[:10]
    stack = SecuredStack(secured_cluster.url, prefix, tmp_path, security=client_env(pki))
    try:
        stack.start_service()
        stack.start_processor("p-secure")
        engine = EngineConfig(prefix=prefix, replicas=3)
        async with await Client.connect(nats_config(secured_cluster, pki), engine=engine) as client:
            result = await client.invoke("hello_workflow", {"name": "Ada"}, timeout=60)
        assert result.status == "completed"
        assert result.output == {"message": GREETING.format("Ada")}

        cli = stack.cli("invoke", "hello_workflow", "--args", '{"name": "Grace"}', "--json")
        assert cli.returncode == 0, cli.stderr
        assert GREETING.format("Grace") in cli.stdout
    finally:
        stack.stop()


async def test_a_wrong_password_is_refused_with_a_clear_error(
    secured_cluster: NatsCluster, pki: Pki
) -> None:
    config = nats_config(secured_cluster, pki, password="wrong")
    with pytest.raises(NatsUnavailableError) as refused:
        await Client.connect(config, engine=EngineConfig(prefix="swrong", replicas=3))
    message = str(refused.value)
    assert "authorization failed" in message
    assert secured_cluster.urls[0] in message


def test_the_cli_exits_3_on_a_wrong_password(
    secured_cluster: NatsCluster, pki: Pki, tmp_path: Path
) -> None:
    stack = SecuredStack(
        secured_cluster.url, "swrongcli", tmp_path, security=client_env(pki, password="wrong")
    )
    cli = stack.cli("invoke", "hello_workflow", "--args", '{"name": "Eve"}', timeout=30)
    assert cli.returncode == EXIT_NATS, cli.stderr
    assert "authorization failed" in cli.stderr
    assert secured_cluster.urls[0] in cli.stderr
    assert "Traceback" not in cli.stderr


def test_a_client_without_tls_settings_cannot_connect(
    secured_cluster: NatsCluster, pki: Pki, tmp_path: Path
) -> None:
    security = client_env(pki)
    for name in ("DURABLE_NATS_TLS_CA", "DURABLE_NATS_TLS_CERT", "DURABLE_NATS_TLS_KEY"):
        del security[name]
    stack = SecuredStack(secured_cluster.url, "snotls", tmp_path, security=security)
    cli = stack.cli("status", "nothing-here", timeout=30)
    assert cli.returncode == EXIT_NATS, cli.stderr
    assert secured_cluster.urls[0] in cli.stderr
    assert "certificate verify failed" in cli.stderr.lower()  # the server's CA is not trusted


REBIND = "rebind.evil.test:8080"


@pytest.mark.usefixtures("streams")
async def test_without_a_token_the_inspector_refuses_a_rebound_host(stack: ProcessStack) -> None:
    """DNS rebinding: a page on rebind.evil.test whose name the attacker then points at
    127.0.0.1 is same-origin with the inspector (its Origin matches the Host), so the
    cross-site check let it list and cancel executions when no token was set."""
    inspector = stack.start(
        "inspector",
        ["-m", "durable_inspector", "--port", "0"],
        {"DURABLE_INSPECTOR_ALLOWED_HOSTS": "inspector.internal"},
        ready="inspector listening on",
        timeout=30,
    )
    match = re.search(r"inspector listening on (http://\S+)", inspector.log())
    assert match, inspector.log()
    url = match.group(1)
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:

        async def ready() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await assert_eventually_async(ready, 30, "the inspector ready")
        evil = {"Host": REBIND, "Origin": f"http://{REBIND}"}
        for method, path in [("GET", "/api/executions"), ("POST", "/api/executions/x/cancel")]:
            resp = await http.request(method, path, headers=evil)
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"] == "forbidden"
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"inspector.internal:{port}"):
            same = {"Host": host, "Origin": f"http://{host}"}
            assert (await http.get("/api/executions", headers=same)).status_code == 200
            resp = await http.post("/api/executions/x/cancel", headers=same)
            assert resp.status_code == 404 and resp.json()["error"] == "not_found", resp.text
