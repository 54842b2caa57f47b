"""The defects issue 13 found in the Helm chart and the Tilt setup, as values, templates and pod
specs that put them back (one at a time), and the means to tell they were caught.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import shutil
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._chart import CHART, ImageMap, Obj
from ._kubelet import Namespace, Pod, PodFailedError

# One NATS server per release (JetStream R1): the variants need a NATS each, not a cluster.
SINGLE = {"nats": {"config": {"cluster": {"enabled": False}}}, "settings": {"replicas": 1}}


# The old chart's TLS advice: keys the NATS chart does not have (`ca`), so no verification.
OLD_TLS_ADVICE = {
    "nats": {
        "config": {
            "nats": {
                "tls": {"enabled": True, "secretName": "durable-nats-server-tls", "ca": "ca.crt"}
            }
        }
    }
}


# The old chart's one Secret name for every release, which the NATS subchart read too.
ONE_SECRET_NAME = {
    "natsAuth": {"secretName": "durable-nats-auth"},
    "nats": {
        "container": {
            "env": {
                variable: {
                    "valueFrom": {
                        "secretKeyRef": {"name": {"$tplYaml": "durable-nats-auth"}, "key": key}
                    }
                }
                for variable, key in (
                    ("DURABLE_NATS_USER", "user"),
                    ("DURABLE_NATS_PASSWORD", "password"),
                )
            }
        }
    },
}


# The restart wrapper of the old Tiltfile (restart_process: `entr` over /tmp/.restart-proc,
# a file its image build put there), reduced to what matters: it exits without the file.
OLD_WRAPPER = [
    "sh",
    "-c",
    "test -f /tmp/.restart-proc || { echo 'entr: cannot watch /tmp/.restart-proc' >&2; exit 1; }; "
    "exec python -m durable_processor",
]


@dataclass
class Verdicts:
    """Each seeded defect with the first lines of what the emulation said about it."""

    caught: dict[str, str] = field(default_factory=dict)

    def expect(self, defect: str, action: Callable[[], Any], contains: str) -> None:
        try:
            action()
        except PodFailedError as e:
            lines = str(e).splitlines()
            assert contains in str(e), f"{defect}: failed for another reason:\n{e}"
            said = [line for line in lines if contains in line][:1]
            self.caught[defect] = " | ".join(lines[:1] + said)[:300]
            return
        raise AssertionError(f"{defect}: the emulation did not notice")


def require(condition: Any, message: str) -> None:
    """Fail as the emulation does (PodFailedError) unless ``condition`` holds."""
    if not condition:
        raise PodFailedError(message)


def openssl_pki(directory: Path, server_names: list[str]) -> dict[str, dict[str, str]]:
    """A CA, a server and a client certificate (openssl), as cert-manager lays out Secrets."""

    def run(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30
        )

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=CA", "-days", "1"
    )
    out: dict[str, dict[str, str]] = {}
    for name, usage, names in (
        ("server", "serverAuth", server_names),
        ("client", "clientAuth", ["client"]),
    ):
        sans = ",".join(f"DNS:{n}" for n in names)
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (directory / f"{name}.ext").write_text(f"subjectAltName={sans}\nextendedKeyUsage={usage}\n")
        sign = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1"]
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            *sign,
            "-out",
            f"{name}.crt",
            "-extfile",
            f"{name}.ext",
        )
        out[name] = {
            "tls.crt": (directory / f"{name}.crt").read_text(),
            "tls.key": (directory / f"{name}.key").read_text(),
            "ca.crt": (directory / "ca.crt").read_text(),
        }
    return out


def tls_secret(name: str, files: dict[str, str]) -> Obj:
    """A kubernetes.io/tls Secret, as `kubectl create secret` or cert-manager makes it."""
    data = {k: base64.b64encode(v.encode()).decode() for k, v in files.items()}
    return {"kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": name}, "data": data}


def nats_login(pod: Pod, hostname: str, pki: Path, password: str, *, certificate: bool) -> str:
    """Log in to a NATS pod over TLS (with or without a client certificate): what it said."""
    import nats

    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if certificate:
        context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))

    async def login() -> str:
        try:
            nc = await nats.connect(
                f"tls://{pod.ip}:4222", tls=context, tls_hostname=hostname, user="durable",
                password=password, connect_timeout=3, allow_reconnect=False,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - what the server said is the result
            return f"refused ({type(e).__name__}: {e})"
        await nc.close()
        return "accepted"

    return asyncio.run(login())


def rotating_chart(tmp: Path) -> Path:
    """The chart with the old Secret: a password made up on every render (randAlphaNum then;
    letters only here: nats-server reads the password through an environment variable and
    parses it, and a made-up one with digits once failed to parse, so the release died before
    the defect could be seen. Seen once in CI, 2026-12-06; not reproduced in 9,000 tries)."""
    chart = tmp / "rotating"
    shutil.copytree(CHART, chart)
    template = chart / "templates" / "secret.yaml"
    text = template.read_text().replace('{{- include "durable.checkValues" . }}', "")
    made_up = "{{ randAlpha 32 | b64enc | quote }}"
    template.write_text(text.replace("{{ .Values.natsAuth.password | b64enc | quote }}", made_up))
    return chart


def old_wrapper_image(ns: Namespace, images: ImageMap, dev: str, workdir: Path) -> str:
    """The image the old Tiltfile built: the dev image with the file its restart wrapper watches."""
    ref = f"durable-tilt-restart:{ns.prefix}"
    (workdir / "Dockerfile").write_text(f"FROM {dev}\nRUN touch /tmp/.restart-proc\n")
    ns.cli("build", "-q", "-t", ref, str(workdir), timeout=120)
    images.local.add(ref)
    return ref


def seeded(workload: Obj, change: Callable[[Obj, Obj], None]) -> Obj:
    """A copy of a workload with ``change(pod spec, first container)`` applied."""
    out = copy.deepcopy(workload)
    spec = out["spec"]["template"]["spec"]
    change(spec, spec["containers"][0])
    return out


def run_template(ns: Namespace, workload: Obj, name: str) -> Pod:
    template = workload["spec"]["template"]
    return ns.run_pod(name, template["spec"], template["metadata"]["labels"])


def misname_secret(spec: Obj, container: Obj) -> None:
    for item in container["env"]:
        if item["name"] == "DURABLE_NATS_PASSWORD":
            item["valueFrom"]["secretKeyRef"]["name"] = "durable-nats-auth-x"
