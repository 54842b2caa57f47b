"""deploy/helm/durable: Helm itself (the Helm v4 library in helm-python-sdk) lints the chart and
renders it, with the official NATS chart it vendors, with the default values and with a very
different set; kubernetes-validate checks every rendered object against the strict OpenAPI
schemas of Kubernetes (the oldest release the chart supports and the newest the package knows);
then the project's own rules, each tied to a defect the chart once had (issue 13).

tests/containers/test_helm_pods.py runs the rendered pods in Docker.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import re
import shutil
import tarfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ._tools import REPO

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (make setup does)")
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

CHART = REPO / "deploy" / "helm" / "durable"
MTLS_EXAMPLE = REPO / "deploy" / "helm" / "examples" / "nats-mtls.yaml"
RELEASE, NAMESPACE = "durable", "durable"
# The chart's kubeVersion floor, and the newest release kubernetes-validate has schemas for.
KUBE_VERSIONS = ("1.27", kv.latest_version())
# What Helm may say about this chart (an informational note).
EXPECTED_LINT = {"icon is recommended"}
# The NATS server the engine needs: message schedules with @every and cron.
MINIMUM_NATS = (2, 14)
# What a user must set with the default values: the chart generates no secrets.
LOGIN = {"password": "a-password"}
REQUIRED: dict[str, Any] = {"natsAuth": LOGIN, "inspector": {"auth": {"token": "a-token"}}}

# Everything switched the other way: external NATS with creds and TLS, autoscaling, ingress, an
# external collector over OTLP/HTTP, images from a registry with a processor tag of its own, a
# ServiceMonitor, no Jaeger, no hello service.
CUSTOM: dict[str, Any] = {
    "nats": {"enabled": False},
    "externalNats": {"url": "tls://nats-0.nats.example:4222,tls://nats-1.nats.example:4222"},
    "natsAuth": {
        "create": False,
        "secretName": "nats-login",
        "token": "works-with-your-own-nats",
        "credsSecret": {"name": "nats-creds", "key": "app.creds"},
        "tls": {"enabled": True, "secretName": "nats-client-tls", "clientCertificate": True},
    },
    "image": {"registry": "registry.example.com/durable/", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "settings": {"max_concurrent": 50, "services": {"OrderService": "orders.shop:9090"}},
    "tracing": {
        "otlpEndpoint": "http://otel-collector.observability:4318",
        "protocol": "http/protobuf",
    },
    "metrics": {
        "podAnnotations": False,
        "serviceMonitor": {"enabled": True, "labels": {"team": "x"}},
    },
    "processor": {
        "image": {"repository": "shop/processor", "tag": "1.2.3-shop.4"},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        "env": {"DURABLE_ACK_WAIT": 120},
    },
    "scheduler": {"replicas": 3},
    "inspector": {
        "auth": {"enabled": True, "existingSecret": "inspector-token"},
        "jaegerUrl": "https://jaeger.example.com",
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "host": "durable.example.com",
            "tls": [{"hosts": ["durable.example.com"], "secretName": "durable-tls"}],
        },
    },
    "helloService": {"enabled": False},
    "jaeger": {"enabled": False},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "durable"}],
}


def render(
    values: dict[str, Any] | None = None, chart: Path = CHART, release: str = RELEASE
) -> dict[str, str]:
    with helm.Chart.load(str(chart)) as loaded:
        rendered: dict[str, str] = loaded.render(
            values, name=release, namespace=NAMESPACE, is_install=True
        )
    return rendered


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def kube_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked in test_service_monitor_only_when_asked
        for version in KUBE_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                problems.append(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {e}")
    return problems


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return objects(render(REQUIRED))


@pytest.fixture(scope="module")
def custom_docs() -> list[dict[str, Any]]:
    return objects(render(CUSTOM))


# -- Helm ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [REQUIRED, CUSTOM], ids=["default", "custom"])
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSIONS[-1]}.0")
    assert report["total_charts_linted"] == 1
    assert {m["error"] for m in report["messages"]} <= EXPECTED_LINT, report


def test_values_schema_accepts_the_defaults_and_rejects_nonsense() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.schema is not None
        chart.validate_schema({})
        chart.validate_schema(CUSTOM)
        chart.validate_schema({"tracing": {"protocol": "http/protobuf"}})
        for bad in (
            {"processor": {"replicas": "two"}},
            {"procesor": {"replicas": 2}},
            {"settings": {"replicas": 2}},
            {"externalNats": {"url": "localhost:4222"}},
            {"inspector": {"service": {"type": "Ingress", "port": 80}}},
            {"tracing": {"protocol": "http"}},
            {"tracing": {"protocol": "http/json"}},
            {"processor": {"repository": "durable/processor"}},  # moved to processor.image
            {"processor": {"image": {"repository": ""}}},
            {
                "scheduler": {
                    "topologySpreadConstraints": {"kubernetes.io/hostname": {"maxSkew": 0}}
                }
            },
            {"metrics": {"serviceMonitor": {"enabled": True, "interval": "often"}}},
            {"jaeger": {"image": "jaegertracing/all-in-one:1.62.0"}},  # Jaeger v1: end of life
            {"natsAuth": {"token": "t"}},  # the bundled NATS takes no token
        ):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_external_nats_needs_a_url() -> None:
    with pytest.raises(helm.HelmError, match="set externalNats.url"):
        render({**REQUIRED, "nats": {"enabled": False}})


# -- Kubernetes schemas ----------------------------------------------------------------------------


def test_default_manifests_match_the_kubernetes_schemas(default_docs: list[dict[str, Any]]) -> None:
    assert kube_problems(default_docs) == []


def test_custom_manifests_match_the_kubernetes_schemas(custom_docs: list[dict[str, Any]]) -> None:
    assert kube_problems(custom_docs) == []


# -- what the chart deploys ------------------------------------------------------------------------

WORKLOADS = ("Deployment", "StatefulSet")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = pod_spec(workload)["containers"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def workload_problems(docs: list[dict[str, Any]]) -> Iterator[str]:
    """Probes, resources, security contexts and a PodDisruptionBudget for every workload,
    the NATS StatefulSet included (it once had neither resources nor a security context)."""
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        name = workload["metadata"]["name"]
        pod = pod_spec(workload)
        pod_context = pod.get("securityContext") or {}
        if not pod_context.get("runAsNonRoot"):
            yield f"{name}: pod may run as root"
        if pod_context.get("seccompProfile") != {"type": "RuntimeDefault"}:
            yield f"{name}: no RuntimeDefault seccomp profile"
        if pod.get("automountServiceAccountToken") is not False:
            yield f"{name}: mounts a service account token it does not need"
        for c in containers(workload):
            context = c.get("securityContext") or {}
            if context.get("allowPrivilegeEscalation") is not False:
                yield f"{name}: privilege escalation allowed"
            if context.get("capabilities", {}).get("drop") != ["ALL"]:
                yield f"{name}: capabilities not dropped"
            if not context.get("readOnlyRootFilesystem"):
                yield f"{name}: writable root filesystem"
            resources = c.get("resources") or {}
            if not resources.get("requests"):
                yield f"{name}: no resource requests"
            if not (resources.get("limits") or {}).get("memory"):
                yield f"{name}: no memory limit"
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    yield f"{name}: no {probe}"
        labels = workload["spec"]["selector"]["matchLabels"]
        if name != f"{RELEASE}-jaeger" and not any(
            p["spec"]["selector"]["matchLabels"] == labels for p in pdbs.values()
        ):
            yield f"{name}: no PodDisruptionBudget"


def test_every_workload_is_probed_bounded_and_locked_down(
    default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]]
) -> None:
    assert f"{RELEASE}-nats" in by_kind(default_docs, "StatefulSet")
    assert list(workload_problems(default_docs)) == []
    assert list(workload_problems(custom_docs)) == []


def test_default_release(default_docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(default_docs, "Deployment")
    names = {f"{RELEASE}-{c}" for c in ("processor", "scheduler", "inspector", "hello-service")}
    assert set(deployments) == names | {f"{RELEASE}-jaeger"}
    assert deployments[f"{RELEASE}-scheduler"]["spec"]["replicas"] == 2  # two are safe
    assert by_kind(default_docs, "HorizontalPodAutoscaler") == {}
    assert by_kind(default_docs, "Ingress") == {}

    processor = containers(deployments[f"{RELEASE}-processor"])[0]
    env = env_of(processor)
    # The official NATS chart names its client Service <release>-nats.
    assert f"{RELEASE}-nats" in by_kind(default_docs, "Service")
    assert env["NATS_URL"] == f"nats://{RELEASE}-nats.{NAMESPACE}.svc:4222"
    assert env["DURABLE_NATS_PASSWORD"]["secretKeyRef"]["name"] == f"{RELEASE}-nats-auth"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{RELEASE}-jaeger:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert env["DURABLE_DEFAULT_SERVICE_ADDRESS"] == f"{RELEASE}-hello-service:9090"
    assert processor["image"] == "durable/processor:0.1.0"
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in processor["ports"]

    hello = containers(deployments[f"{RELEASE}-hello-service"])[0]
    assert hello["readinessProbe"]["grpc"] == {"port": 9090}  # Kubernetes' native gRPC probe

    inspector = containers(deployments[f"{RELEASE}-inspector"])[0]
    token = env_of(inspector)["DURABLE_INSPECTOR_TOKEN"]["secretKeyRef"]
    secrets = by_kind(default_docs, "Secret")
    assert token["name"] in secrets and token["key"] in secrets[token["name"]]["data"]
    assert set(secrets[f"{RELEASE}-nats-auth"]["data"]) == {"user", "password"}
    assert f"{RELEASE}-inspector" in by_kind(default_docs, "Service")
    for d in default_docs:
        assert d["metadata"].get("namespace", NAMESPACE) == NAMESPACE, d["metadata"]["name"]


def test_custom_release(custom_docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(custom_docs, "Deployment")
    assert set(deployments) == {f"{RELEASE}-{c}" for c in ("processor", "scheduler", "inspector")}
    assert by_kind(custom_docs, "Secret") == {}  # every secret is the user's
    assert by_kind(custom_docs, "StatefulSet") == {}  # no NATS of ours

    processor_deployment = deployments[f"{RELEASE}-processor"]
    assert "replicas" not in processor_deployment["spec"]  # the HPA owns the count
    (hpa,) = by_kind(custom_docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-processor"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)

    for name in ("processor", "scheduler", "inspector"):
        deployment = deployments[f"{RELEASE}-{name}"]
        container = containers(deployment)[0]
        env = env_of(container)
        assert env["NATS_URL"] == CUSTOM["externalNats"]["url"]
        assert env["DURABLE_NATS_USER"]["secretKeyRef"]["name"] == "nats-login"
        assert env["DURABLE_NATS_TOKEN"]["secretKeyRef"] == {
            "name": "nats-login", "key": "token", "optional": True,
        }  # fmt: skip
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == CUSTOM["tracing"]["otlpEndpoint"]
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        # Every file setting points into a mounted Secret volume.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        for variable, secret in (
            ("DURABLE_NATS_CREDS_FILE", "nats-creds"),
            ("DURABLE_NATS_TLS_CA", "nats-client-tls"),
            ("DURABLE_NATS_TLS_CERT", "nats-client-tls"),
            ("DURABLE_NATS_TLS_KEY", "nats-client-tls"),
        ):
            directory = str(Path(env[variable]).parent)
            assert volumes[mounts[directory]]["secret"]["secretName"] == secret, variable
        assert "DURABLE_DEFAULT_SERVICE_ADDRESS" not in env
    assert env_of(containers(deployments[f"{RELEASE}-processor"])[0])["DURABLE_ACK_WAIT"] == "120"
    inspector_env = env_of(containers(deployments[f"{RELEASE}-inspector"])[0])
    assert inspector_env["DURABLE_INSPECTOR_TOKEN"]["secretKeyRef"]["name"] == "inspector-token"
    assert inspector_env["DURABLE_JAEGER_URL"] == "https://jaeger.example.com"

    (ingress,) = by_kind(custom_docs, "Ingress").values()
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "durable.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == f"{RELEASE}-inspector"


def test_settings_file_is_read_by_the_processor(
    custom_docs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_module = pytest.importorskip("durable_processor.settings")
    data = by_kind(custom_docs, "ConfigMap")[f"{RELEASE}-settings"]["data"]
    text = data["processor.toml"]  # the processor's: the shared settings and its own
    parsed = tomllib.loads(text)
    assert parsed["max_concurrent"] == 50 and parsed["replicas"] == 3
    assert "max_concurrent" not in tomllib.loads(data["settings.toml"])  # the others'
    path = tmp_path / "settings.toml"
    path.write_text(text)
    for name in [n for n in list(__import__("os").environ) if n.startswith("DURABLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(path))
    settings = settings_module.load_settings()
    assert settings.engine.replicas == 3
    assert settings.worker.max_concurrent == 50
    assert settings.worker.ack_wait.total_seconds() == 60  # the chart's (values.yaml says why)
    assert dict(settings.worker.services)["OrderService"] == "orders.shop:9090"
    try:  # the inspector reads the same file
        from durable_inspector.settings import load_settings as load_inspector_settings
    except ImportError:
        return
    # Replicas are the processors' alone (issue 14); the inspector reads the shared keys.
    assert load_inspector_settings().engine.prefix == parsed["prefix"]


def test_notes_tell_how_to_reach_the_inspector_and_jaeger() -> None:
    notes = render(REQUIRED)[f"{CHART.name}/templates/NOTES.txt"]
    assert f"port-forward service/{RELEASE}-inspector 8080:8080" in notes
    assert f"port-forward service/{RELEASE}-jaeger 16686:16686" in notes
    assert f"get secret {RELEASE}-inspector-auth" in notes
    assert f"get secret {RELEASE}-nats-auth" in notes
    custom = render(CUSTOM)[f"{CHART.name}/templates/NOTES.txt"]
    assert "https://durable.example.com/" in custom
    assert "otel-collector.observability:4318" in custom


# -- the vendored NATS chart (issue 13: the 1.x range brought nats-server 2.11) --------------------


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_nats_chart_is_vendored_locked_and_licensed() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (dependency,) = chart["dependencies"]
    assert dependency["name"] == "nats"
    assert dependency["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert dependency["condition"] == "nats.enabled"
    # Only the 2.x line from 2.14.2 on: its charts ship the server of their own version.
    assert dependency["version"] == ">=2.14.2 <3.0.0"

    (archive,) = (CHART / "charts").glob("nats-*.tgz")
    lock = yaml.safe_load((CHART / "Chart.lock").read_text())
    (locked,) = lock["dependencies"]
    assert archive.name == f"nats-{locked['version']}.tgz"
    assert locked["repository"] == dependency["repository"]
    assert _version(locked["version"]) >= (2, 14, 2)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        meta = yaml.safe_load(tar.extractfile("nats/Chart.yaml").read())  # type: ignore[union-attr]
        licence = tar.extractfile("nats/LICENSE").read().decode()  # type: ignore[union-attr]
    assert meta["version"] == locked["version"]
    assert _version(meta["appVersion"]) >= MINIMUM_NATS
    assert "Apache License" in licence and "Version 2.0" in licence
    assert "nats/templates/stateful-set.yaml" in names

    (listed,) = helm.dependency_list(str(CHART))
    assert listed["name"] == "nats" and listed["status"] == "ok"


def _vendor_script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "vendor", REPO / "scripts" / "vendor_nats_chart.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_lock_is_in_sync_as_helm_computes_it(tmp_path: Path) -> None:
    """`helm dependency build` refuses a lock whose digest does not match Chart.yaml. The
    committed digest is the script's; the script's is Helm's own (checked here against a real
    `helm dependency update` from a repository served on 127.0.0.1)."""
    vendor = _vendor_script()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    lock = yaml.safe_load((CHART / "Chart.lock").read_text())
    assert lock["digest"] == vendor.lock_digest(chart["dependencies"], lock["dependencies"])

    repo = tmp_path / "repo"
    repo.mkdir()
    for archive in (CHART / "charts").glob("nats-*.tgz"):
        shutil.copy(archive, repo)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(repo))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        helm.repo_index_generate(str(repo), base_url=url)
        copy_dir = tmp_path / "durable"
        shutil.copytree(CHART, copy_dir)
        shutil.rmtree(copy_dir / "charts")
        (copy_dir / "Chart.lock").unlink()
        meta = yaml.safe_load((copy_dir / "Chart.yaml").read_text())
        meta["dependencies"][0]["repository"] = url
        (copy_dir / "Chart.yaml").write_text(yaml.safe_dump(meta))
        helm.dependency_update(str(copy_dir))
        fresh = yaml.safe_load((copy_dir / "Chart.lock").read_text())
    finally:
        server.shutdown()
    assert fresh["dependencies"] == [{**lock["dependencies"][0], "repository": url}]
    assert fresh["digest"] == vendor.lock_digest(meta["dependencies"], fresh["dependencies"])


def test_rendered_nats_is_new_enough_and_clustered(default_docs: list[dict[str, Any]]) -> None:
    (nats,) = by_kind(default_docs, "StatefulSet").values()
    assert nats["spec"]["replicas"] == 3
    (server,) = containers(nats)  # no config-reloader sidecar (values.yaml says why)
    image = server["image"]
    assert image.startswith("nats:"), image
    assert _version(image.split(":", 1)[1]) >= MINIMUM_NATS, image
    config = by_kind(default_docs, "ConfigMap")[f"{RELEASE}-nats-config"]["data"]["nats.conf"]
    assert '"store_dir": "/data"' in config and '"cluster"' in config


def test_fsync_on_every_write_is_one_documented_value() -> None:
    """The README's power-cut advice for the chart renders into the servers' config."""
    values = {**REQUIRED, "nats": {"config": {"jetstream": {"merge": {"sync_interval": "always"}}}}}
    docs = objects(render(values))
    config = by_kind(docs, "ConfigMap")[f"{RELEASE}-nats-config"]["data"]["nats.conf"]
    assert '"sync_interval": "always"' in config, config
    default = by_kind(objects(render(REQUIRED)), "ConfigMap")[f"{RELEASE}-nats-config"]
    assert "sync_interval" not in default["data"]["nats.conf"]
    assert "nats.config.jetstream.merge.sync_interval" in (REPO / "README.md").read_text()


def test_nats_reads_the_login_the_services_use(default_docs: list[dict[str, Any]]) -> None:
    (nats,) = by_kind(default_docs, "StatefulSet").values()
    nats_env = env_of(containers(nats)[0])
    processor = by_kind(default_docs, "Deployment")[f"{RELEASE}-processor"]
    service_env = env_of(containers(processor)[0])
    config = by_kind(default_docs, "ConfigMap")[f"{RELEASE}-nats-config"]["data"]["nats.conf"]
    for variable, key in (("DURABLE_NATS_USER", "user"), ("DURABLE_NATS_PASSWORD", "password")):
        # The config reads the Secret's value single-quoted (tests/containers/test_nats_login.py
        # logs in with awkward passwords).
        quoted = f"NATS_CONF_{key.upper()}"
        assert f"${quoted}" in config and nats_env[quoted] == f"'$({variable})'"
        assert nats_env[variable]["secretKeyRef"] == {"name": f"{RELEASE}-nats-auth", "key": key}
        assert service_env[variable]["secretKeyRef"]["name"] == f"{RELEASE}-nats-auth"
        assert service_env[variable]["secretKeyRef"]["optional"] is False


# -- the defects of issue 13, each pinned ---------------------------------------------------------


def test_two_releases_share_a_namespace_without_clashing() -> None:
    """The NATS login Secret was always `durable-nats-auth`: a second release overwrote it."""
    first = objects(render(REQUIRED, release="shop"))
    second = objects(render(REQUIRED, release="billing"))
    names = lambda docs: {(d["kind"], d["metadata"]["name"]) for d in docs}  # noqa: E731
    assert names(first) & names(second) == set()
    for docs, release in ((first, "shop"), (second, "billing")):
        (nats,) = by_kind(docs, "StatefulSet").values()
        secret = env_of(containers(nats)[0])["DURABLE_NATS_PASSWORD"]["secretKeyRef"]["name"]
        assert secret == f"{release}-nats-auth" and secret in by_kind(docs, "Secret")


def test_a_secret_name_the_bundled_nats_does_not_read_is_refused() -> None:
    with pytest.raises(helm.HelmError, match=r"bundled NATS reads DURABLE_NATS_USER .*make them"):
        render({**REQUIRED, "natsAuth": {**LOGIN, "secretName": "my-login"}})
    # The NATS chart's own templating of the name, as values.yaml has it.
    name = {"$tplYaml": "my-login"}
    env = {
        v: {"valueFrom": {"secretKeyRef": {"name": name, "key": k}}}
        for v, k in (("DURABLE_NATS_USER", "user"), ("DURABLE_NATS_PASSWORD", "password"))
    }
    values = {**REQUIRED, "natsAuth": {**LOGIN, "secretName": "my-login"}}
    docs = objects(render({**values, "nats": {"container": {"env": env}}}))
    assert "my-login" in by_kind(docs, "Secret")
    (nats,) = by_kind(docs, "StatefulSet").values()
    assert env_of(containers(nats)[0])["DURABLE_NATS_USER"]["secretKeyRef"]["name"] == "my-login"


def test_rendering_twice_gives_the_same_objects() -> None:
    """`lookup` and randAlphaNum made a new password on every `helm template` (Argo CD, Tilt)."""
    assert render(REQUIRED) == render(REQUIRED)


def test_no_secret_is_made_up() -> None:
    with pytest.raises(helm.HelmError, match="natsAuth.password is empty"):
        render()
    with pytest.raises(helm.HelmError, match="inspector.auth.token is empty"):
        render({"natsAuth": {"password": "p"}})
    # With Secrets of your own, nothing is required.
    render({"natsAuth": {"create": False}, "inspector": {"auth": {"existingSecret": "t"}}})
    # Nor anything else that changes between renders.
    changing = re.compile(r"\{\{[^}]*\b(lookup|rand[A-Z]\w*|uuidv4|now|genPrivateKey)\b")
    for template in CHART.glob("templates/*"):
        assert not changing.search(template.read_text()), template.name


def test_a_token_never_goes_silently_unused() -> None:
    """natsAuth.token reached the services, never the bundled NATS (which takes users)."""
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema({"natsAuth": {"token": "t"}})
        chart.validate_schema({"nats": {"enabled": False}, "natsAuth": {"token": "t"}})


def test_liveness_never_asks_nats_and_readiness_does(default_docs: list[dict[str, Any]]) -> None:
    """Liveness was "connected to NATS": a NATS outage restarted every pod."""
    ports = {"processor": "metrics", "scheduler": "metrics", "inspector": "http"}
    deployments = by_kind(default_docs, "Deployment")
    for component, port in ports.items():
        (c,) = containers(deployments[f"{RELEASE}-{component}"])
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/livez", "port": port}, (component, probe)
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}, component


def test_each_component_has_its_own_image_tag() -> None:
    values = {**REQUIRED, "image": {"tag": "2.0.0"}, "processor": {"image": {"tag": "2.0.0-shop"}}}
    deployments = by_kind(objects(render(values)), "Deployment")
    images = {n: containers(d)[0]["image"] for n, d in deployments.items()}
    assert images[f"{RELEASE}-processor"] == "durable/processor:2.0.0-shop"
    assert images[f"{RELEASE}-scheduler"] == "durable/scheduler:2.0.0"
    assert images[f"{RELEASE}-inspector"] == "durable/inspector:2.0.0"
    custom = by_kind(objects(render(CUSTOM)), "Deployment")
    assert containers(custom[f"{RELEASE}-processor"])[0]["image"] == (
        "registry.example.com/durable/shop/processor:1.2.3-shop.4"
    )
    assert containers(custom[f"{RELEASE}-scheduler"])[0]["image"] == (
        "registry.example.com/durable/durable/scheduler:1.2.3"
    )


@pytest.mark.parametrize(("protocol", "port"), [("grpc", 4317), ("http/protobuf", 4318)])
def test_both_otlp_protocols_reach_the_charts_jaeger(protocol: str, port: int) -> None:
    docs = objects(render({**REQUIRED, "tracing": {"protocol": protocol}}))
    for deployment in by_kind(docs, "Deployment").values():
        env = env_of(containers(deployment)[0])
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
            assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == protocol
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{RELEASE}-jaeger:{port}"
    service_ports = {
        p["port"] for p in by_kind(docs, "Service")[f"{RELEASE}-jaeger"]["spec"]["ports"]
    }
    assert port in service_ports


def test_jaeger_is_v2_and_takes_otlp_on_both_ports(default_docs: list[dict[str, Any]]) -> None:
    (jaeger,) = containers(by_kind(default_docs, "Deployment")[f"{RELEASE}-jaeger"])
    assert jaeger["image"] == "jaegertracing/jaeger:2.13.0"
    assert "--set=receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317" in jaeger["args"]
    assert "--set=receivers.otlp.protocols.http.endpoint=0.0.0.0:4318" in jaeger["args"]
    ports = {p["name"]: p["containerPort"] for p in jaeger["ports"]}
    assert ports == {"ui": 16686, "otlp-grpc": 4317, "otlp-http": 4318, "health": 13133}
    assert jaeger["livenessProbe"]["httpGet"] == {"path": "/status", "port": "health"}
    assert "COLLECTOR_OTLP_ENABLED" not in env_of(jaeger)  # a v1 setting


def test_processor_and_scheduler_pods_carry_scrape_annotations(
    default_docs: list[dict[str, Any]],
) -> None:
    deployments = by_kind(default_docs, "Deployment")
    for component, port in (("processor", 9464), ("scheduler", 9465)):
        deployment = deployments[f"{RELEASE}-{component}"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in containers(
            deployment
        )[0]["ports"]
    annotations = deployments[f"{RELEASE}-inspector"]["spec"]["template"]["metadata"]["annotations"]
    assert "prometheus.io/scrape" not in annotations


def test_service_monitor_only_when_asked(
    default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]]
) -> None:
    assert by_kind(default_docs, "ServiceMonitor") == {}
    (monitor,) = by_kind(custom_docs, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["team"] == "x"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    # It selects exactly the processor's and the scheduler's Services, by a port they have.
    selector = monitor["spec"]["selector"]
    (expression,) = selector["matchExpressions"]
    selected = [
        s
        for s in by_kind(custom_docs, "Service").values()
        if selector["matchLabels"].items() <= s["metadata"]["labels"].items()
        and s["metadata"]["labels"]["app.kubernetes.io/component"] in expression["values"]
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == [
        f"{RELEASE}-processor", f"{RELEASE}-scheduler",
    ]  # fmt: skip
    assert all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in selected)


def test_replicas_spread_over_nodes_and_zones(default_docs: list[dict[str, Any]]) -> None:
    """A constraint whose labelSelector misses the pods spreads nothing: each must select them."""
    workloads = {**by_kind(default_docs, "Deployment"), **by_kind(default_docs, "StatefulSet")}
    for name in (f"{RELEASE}-processor", f"{RELEASE}-scheduler", f"{RELEASE}-nats"):
        template = workloads[name]["spec"]["template"]
        constraints = template["spec"]["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in constraints}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name
        for c in constraints:
            assert (
                c["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
            )
            assert c["maxSkew"] == 1
            # Three NATS servers on one node lose the quorum with that node: never two on one
            # node while another has none. Zones stay a preference (nodes may carry no zone
            # label, which DoNotSchedule would make unschedulable), as do stateless replicas.
            hard = name == f"{RELEASE}-nats" and c["topologyKey"] == "kubernetes.io/hostname"
            expected = "DoNotSchedule" if hard else "ScheduleAnyway"
            assert c["whenUnsatisfiable"] == expected, (name, c["topologyKey"])


def test_jetstream_file_store_leaves_room_on_its_volume(default_docs: list[dict[str, Any]]) -> None:
    """max_file_store defaulted to the PVC's size: JetStream filled the disk to the last byte
    (its own metadata, snapshots and the filesystem's overhead need room too)."""
    file_store = yaml.safe_load((CHART / "values.yaml").read_text())["nats"]["config"]["jetstream"][
        "fileStore"
    ]
    units = {"Mi": 2**20, "Gi": 2**30, "Ti": 2**40}

    def size(text: str) -> int:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi|Ti)", str(text)).groups()  # type: ignore[union-attr]
        return int(number) * units[unit]

    ratio = size(file_store["maxSize"]) / size(file_store["pvc"]["size"])
    assert 0.85 <= ratio <= 0.92, ratio
    config = by_kind(default_docs, "ConfigMap")[f"{RELEASE}-nats-config"]["data"]["nats.conf"]
    assert f'"max_file_store": {file_store["maxSize"]},' in config, config
    assert "fileStore.maxSize" in (REPO / "deploy" / "README.md").read_text()


def test_the_processors_grace_period_covers_its_drain_and_no_more() -> None:
    """terminationGracePeriodSeconds was 30 s, unrelated to shutdown_grace and ack_wait: a
    drain (shutdown_grace + up to 25 s) was cut by SIGKILL; a longer period than shutdown_grace
    + ack_wait - heartbeat lets a step stuck in a thread run on after its command went to
    another processor. The chart refuses both, and its defaults fit."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    grace, ack_wait = values["settings"]["shutdown_grace"], values["settings"]["ack_wait"]
    period = values["processor"]["terminationGracePeriodSeconds"]
    assert grace + 25 <= period < grace + ack_wait - ack_wait / 6
    deployment = by_kind(objects(render(REQUIRED)), "Deployment")[f"{RELEASE}-processor"]
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == period

    def processor(period: int, **settings: Any) -> dict[str, Any]:
        return {
            **REQUIRED,
            "settings": settings,
            "processor": {"terminationGracePeriodSeconds": period},
        }

    with pytest.raises(helm.HelmError, match=r"at least settings.shutdown_grace \+ 25 \(35\)"):
        render(processor(30))
    with pytest.raises(helm.HelmError, match=r"below settings.shutdown_grace \+ ack_wait"):
        render(processor(90))
    with pytest.raises(helm.HelmError, match="at least settings.shutdown_grace"):
        render(processor(60, shutdown_grace=40))
    render(processor(70, shutdown_grace=40))
    # The processor's own environment wins over the settings file: the check reads it too.
    with pytest.raises(helm.HelmError, match="below"):
        render({**REQUIRED, "processor": {"env": {"DURABLE_ACK_WAIT": "30"}}})
    render({**REQUIRED, "processor": {"env": {"DURABLE_ACK_WAIT": 120}}})
    # A processor that is not deployed is not checked.
    render({**REQUIRED, "processor": {"enabled": False, "terminationGracePeriodSeconds": 1}})


def _effective(
    docs: list[dict[str, Any]],
    component: str,
    load: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """A component's settings as its container reads them: the settings file its pod mounts at
    DURABLE_SETTINGS_FILE, and the DURABLE_* values of its environment."""
    deployment = by_kind(docs, "Deployment")[f"{RELEASE}-{component}"]
    (container,) = containers(deployment)
    env = env_of(container)
    mount = next(
        m for m in container["volumeMounts"] if m["mountPath"] == env["DURABLE_SETTINGS_FILE"]
    )
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    data = by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]["data"]
    path = tmp_path / f"{component}.toml"
    path.write_text(data[mount["subPath"]])
    for name in [n for n in list(__import__("os").environ) if n.startswith("DURABLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("NATS_URL", raising=False)
    for name, value in env.items():
        if name.startswith("DURABLE_") and isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(path))
    return load()


def test_processor_knobs_reach_the_processor_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every component read one settings.toml with every value of `settings`: the processor's
    ack_wait (30) and max_concurrent (100) replaced the scheduler's own (10, 16), and a
    max_concurrent above 10000 stopped the scheduler (it refuses one)."""
    processor_settings = pytest.importorskip("durable_processor.settings")
    scheduler_settings = pytest.importorskip("durable_scheduler.settings")
    # The scheduler's own defaults, as it reads them without any settings file.
    scheduler_defaults = scheduler_settings.build(
        tomllib.loads(scheduler_settings.DEFAULTS.read_text())
    )
    values = {
        **REQUIRED,
        "settings": {
            "max_concurrent": 20000,
            "ack_wait": 90,
            "shutdown_grace": 15,
            "prefix": "shop",
        },
        "processor": {"terminationGracePeriodSeconds": 60},
    }
    docs = objects(render(values))
    processor = _effective(
        docs, "processor", processor_settings.load_settings, tmp_path, monkeypatch
    )
    assert processor.worker.max_concurrent == 20000
    assert processor.worker.ack_wait.total_seconds() == 90
    assert processor.worker.shutdown_grace.total_seconds() == 15
    assert processor.engine.prefix == "shop" and processor.engine.replicas == 3
    scheduler = _effective(
        docs, "scheduler", scheduler_settings.load_settings, tmp_path, monkeypatch
    )
    assert scheduler.ack_wait == scheduler_defaults.ack_wait
    assert scheduler.max_concurrent == scheduler_defaults.max_concurrent
    assert scheduler.shutdown_grace == scheduler_defaults.shutdown_grace
    assert scheduler.engine.prefix == "shop"  # the shared settings stay shared
    for component in ("scheduler", "inspector", "hello-service"):
        env = env_of(containers(by_kind(docs, "Deployment")[f"{RELEASE}-{component}"])[0])
        for variable in ("DURABLE_ACK_WAIT", "DURABLE_MAX_CONCURRENT", "DURABLE_SHUTDOWN_GRACE"):
            assert variable not in env, (component, variable)


def test_the_inspector_searches_the_processors_traces(default_docs: list[dict[str, Any]]) -> None:
    """The processor's spans went to Jaeger as `processor`; the inspector searched
    `durable-processor` (its default, the processor's name without OTEL_SERVICE_NAME)."""
    deployments = by_kind(default_docs, "Deployment")
    processor = env_of(containers(deployments[f"{RELEASE}-processor"])[0])
    inspector = env_of(containers(deployments[f"{RELEASE}-inspector"])[0])
    assert inspector["DURABLE_JAEGER_SERVICE"] == processor["OTEL_SERVICE_NAME"]


def test_the_documented_mtls_values_verify_client_certificates() -> None:
    """The chart's advice once used keys the NATS chart does not have: no verification."""
    example = yaml.safe_load(MTLS_EXAMPLE.read_text())
    docs = objects(render({**REQUIRED, **example, "natsAuth": {**example["natsAuth"], **LOGIN}}))
    config = by_kind(docs, "ConfigMap")[f"{RELEASE}-nats-config"]["data"]["nats.conf"]
    tls = re.search(r'"tls": (\{[^}]*\})', config)
    assert tls, config
    block = yaml.safe_load(tls.group(1))
    assert block["verify"] is True
    assert block["ca_file"] == "/etc/nats-ca-cert/ca.crt"
    assert block["cert_file"] == "/etc/nats-certs/nats/tls.crt"
    (nats,) = by_kind(docs, "StatefulSet").values()
    secrets = {v["secret"]["secretName"] for v in pod_spec(nats)["volumes"] if "secret" in v}
    assert secrets == {"durable-nats-server-tls"}
    processor = by_kind(docs, "Deployment")[f"{RELEASE}-processor"]
    env = env_of(containers(processor)[0])
    assert env["DURABLE_NATS_TLS_CERT"] == "/etc/durable/nats-tls/tls.crt"


# -- each check fails on a seeded error ------------------------------------------------------------


def test_seeded_errors_are_caught(tmp_path: Path) -> None:
    broken = tmp_path / "durable"
    shutil.copytree(CHART, broken)
    processor = broken / "templates" / "processor.yaml"
    processor.write_text(processor.read_text().replace("containerPort:", "containerPrt:", 1))
    problems = kube_problems(objects(render(REQUIRED, chart=broken)))
    assert problems and all("containerPrt" in p for p in problems)

    processor.write_text(processor.read_text().replace("{{- end }}\n", "", 1))
    report = helm.lint(str(broken), REQUIRED, strict=True)
    assert set(report["errors"]) - EXPECTED_LINT, report
    with pytest.raises(helm.HelmError):
        render(REQUIRED, chart=broken)

    unlocked = {**CUSTOM, "securityContext": {"readOnlyRootFilesystem": False}}
    assert "durable-processor: writable root filesystem" in list(
        workload_problems(objects(render(unlocked)))
    )
    bare = {"merge": {"securityContext": None}, "resources": {"requests": None, "limits": None}}
    bare_nats = {**REQUIRED, "nats": {"container": bare}}
    found = list(workload_problems(objects(render(bare_nats))))
    assert "durable-nats: capabilities not dropped" in found
    assert "durable-nats: no resource requests" in found
