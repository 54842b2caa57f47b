"""deploy/helm/durable: Helm itself (the Helm v4 library in helm-python-sdk) lints the chart and
renders it with the default values and with a very different set; kubernetes-validate checks
every rendered object against the strict OpenAPI schemas of Kubernetes (the oldest release the
chart supports and the newest the package knows); then the project's own rules.

The official NATS chart is vendored (charts/nats-2.14.2.tgz and Chart.lock, made by
scripts/vendor_nats_chart.py): rendering includes its objects, offline.
"""

from __future__ import annotations

import copy
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
RELEASE, NAMESPACE = "durable", "durable"
# The chart's kubeVersion floor, and the newest release kubernetes-validate has schemas for.
KUBE_VERSIONS = ("1.27", kv.latest_version())
# What Helm may say about this chart (an informational note).
EXPECTED_LINT = {"icon is recommended"}
# The NATS server the engine needs: message schedules with @every and cron.
MINIMUM_NATS = (2, 14)

# Everything switched the other way: external NATS with creds and TLS, autoscaling, ingress, an
# external collector, images from a registry, no Jaeger, no hello service.
CUSTOM: dict[str, Any] = {
    "nats": {"enabled": False},
    "externalNats": {"url": "tls://nats-0.nats.example:4222,tls://nats-1.nats.example:4222"},
    "natsAuth": {
        "create": False,
        "secretName": "nats-login",
        "credsSecret": {"name": "nats-creds", "key": "app.creds"},
        "tls": {"enabled": True, "secretName": "nats-client-tls", "clientCertificate": True},
    },
    "image": {"registry": "registry.example.com/durable/", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "settings": {"max_concurrent": 50, "services": {"OrderService": "orders.shop:9090"}},
    "tracing": {"otlpEndpoint": "http://otel-collector.observability:4317"},
    "processor": {
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


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> dict[str, str]:
    with helm.Chart.load(str(chart)) as loaded:
        rendered: dict[str, str] = loaded.render(
            values, name=RELEASE, namespace=NAMESPACE, is_install=True
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
        for version in KUBE_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                problems.append(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {e}")
    return problems


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return objects(render())


@pytest.fixture(scope="module")
def custom_docs() -> list[dict[str, Any]]:
    return objects(render(CUSTOM))


# -- Helm ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, CUSTOM], ids=["default", "custom"])
def test_helm_lint_is_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSIONS[-1]}.0")
    assert report["total_charts_linted"] == 1
    assert {m["error"] for m in report["messages"]} <= EXPECTED_LINT, report


def test_values_schema_accepts_the_defaults_and_rejects_nonsense() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.schema is not None
        chart.validate_schema({})
        chart.validate_schema(CUSTOM)
        for bad in (
            {"processor": {"replicas": "two"}},
            {"procesor": {"replicas": 2}},
            {"settings": {"replicas": 2}},
            {"externalNats": {"url": "localhost:4222"}},
            {"inspector": {"service": {"type": "Ingress", "port": 80}}},
        ):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_external_nats_needs_a_url() -> None:
    with pytest.raises(helm.HelmError, match="set externalNats.url"):
        render({"nats": {"enabled": False}})


# -- Kubernetes schemas ----------------------------------------------------------------------------


def test_default_manifests_match_the_kubernetes_schemas(default_docs: list[dict[str, Any]]) -> None:
    assert kube_problems(default_docs) == []


def test_custom_manifests_match_the_kubernetes_schemas(custom_docs: list[dict[str, Any]]) -> None:
    assert kube_problems(custom_docs) == []


# -- what the chart deploys ------------------------------------------------------------------------


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def workload_problems(docs: list[dict[str, Any]]) -> Iterator[str]:
    """Probes, resources, security contexts and a PodDisruptionBudget for every workload."""
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for name, deployment in by_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        if not pod["securityContext"].get("runAsNonRoot"):
            yield f"{name}: pod may run as root"
        if pod.get("automountServiceAccountToken") is not False:
            yield f"{name}: mounts a service account token it does not need"
        for c in containers(deployment):
            context = c.get("securityContext", {})
            if context.get("allowPrivilegeEscalation") is not False:
                yield f"{name}: privilege escalation allowed"
            if context.get("capabilities", {}).get("drop") != ["ALL"]:
                yield f"{name}: capabilities not dropped"
            if not context.get("readOnlyRootFilesystem"):
                yield f"{name}: writable root filesystem"
            if not c.get("resources", {}).get("requests"):
                yield f"{name}: no resource requests"
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    yield f"{name}: no {probe}"
        labels = deployment["spec"]["selector"]["matchLabels"]
        if name != f"{RELEASE}-jaeger" and not any(
            p["spec"]["selector"]["matchLabels"] == labels for p in pdbs.values()
        ):
            yield f"{name}: no PodDisruptionBudget"


def test_every_workload_is_probed_bounded_and_locked_down(
    default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]]
) -> None:
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
    assert env["NATS_URL"] == f"nats://{RELEASE}-nats.{NAMESPACE}.svc:4222"
    assert env["DURABLE_NATS_PASSWORD"]["secretKeyRef"]["name"] == "durable-nats-auth"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{RELEASE}-jaeger:4317"
    assert env["DURABLE_DEFAULT_SERVICE_ADDRESS"] == f"{RELEASE}-hello-service:9090"
    assert processor["image"] == "durable/processor:0.1.0"
    assert processor["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in processor["ports"]

    hello = containers(deployments[f"{RELEASE}-hello-service"])[0]
    assert hello["readinessProbe"]["grpc"] == {"port": 9090}  # Kubernetes' native gRPC probe

    inspector = containers(deployments[f"{RELEASE}-inspector"])[0]
    token = env_of(inspector)["DURABLE_INSPECTOR_TOKEN"]["secretKeyRef"]
    secrets = by_kind(default_docs, "Secret")
    assert token["name"] in secrets and token["key"] in secrets[token["name"]]["data"]
    assert set(secrets["durable-nats-auth"]["data"]) == {"user", "password"}
    assert f"{RELEASE}-inspector" in by_kind(default_docs, "Service")
    for d in default_docs:
        assert d["metadata"].get("namespace", NAMESPACE) == NAMESPACE, d["metadata"]["name"]


def test_custom_release(custom_docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(custom_docs, "Deployment")
    assert set(deployments) == {f"{RELEASE}-{c}" for c in ("processor", "scheduler", "inspector")}
    assert by_kind(custom_docs, "Secret") == {}  # every secret is the user's

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
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == CUSTOM["tracing"]["otlpEndpoint"]
        assert container["image"] == f"registry.example.com/durable/durable/{name}:1.2.3"
        # Every file setting points into a mounted Secret volume.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
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
    text = by_kind(custom_docs, "ConfigMap")[f"{RELEASE}-settings"]["data"]["settings.toml"]
    parsed = tomllib.loads(text)
    assert parsed["max_concurrent"] == 50 and parsed["replicas"] == 3
    path = tmp_path / "settings.toml"
    path.write_text(text)
    for name in [n for n in list(__import__("os").environ) if n.startswith("DURABLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(path))
    settings = settings_module.load_settings()
    assert settings.engine.replicas == 3
    assert settings.worker.max_concurrent == 50
    assert settings.worker.ack_wait.total_seconds() == 300
    assert dict(settings.worker.services)["OrderService"] == "orders.shop:9090"
    try:  # the inspector reads the same file
        from durable_inspector.settings import load_settings as load_inspector_settings
    except ImportError:
        return
    assert load_inspector_settings().engine.replicas == 3


def test_notes_tell_how_to_reach_the_inspector_and_jaeger() -> None:
    notes = render()[f"{CHART.name}/templates/NOTES.txt"]
    assert f"port-forward service/{RELEASE}-inspector 8080:8080" in notes
    assert f"port-forward service/{RELEASE}-jaeger 16686:16686" in notes
    assert "get secret durable-inspector-auth" in notes
    custom = render(CUSTOM)[f"{CHART.name}/templates/NOTES.txt"]
    assert "https://durable.example.com/" in custom
    assert "otel-collector.observability:4317" in custom


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
    path = REPO / "scripts" / "vendor_nats_chart.py"
    spec = importlib.util.spec_from_file_location("vendor", path)
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
    image = containers(nats)[0]["image"]
    assert image.startswith("nats:"), image
    assert _version(image.split(":", 1)[1]) >= MINIMUM_NATS, image
    config = by_kind(default_docs, "ConfigMap")[f"{RELEASE}-nats-config"]["data"]["nats.conf"]
    assert '"store_dir": "/data"' in config and '"cluster"' in config


# -- each check fails on a seeded error ------------------------------------------------------------


def test_seeded_errors_are_caught(tmp_path: Path) -> None:
    broken = tmp_path / "durable"
    shutil.copytree(CHART, broken)
    processor = broken / "templates" / "processor.yaml"
    processor.write_text(processor.read_text().replace("containerPort:", "containerPrt:", 1))
    problems = kube_problems(objects(render(chart=broken)))
    assert problems and all("containerPrt" in p for p in problems)

    processor.write_text(processor.read_text().replace("{{- end }}\n", "", 1))
    report = helm.lint(str(broken), strict=True)
    assert set(report["errors"]) - EXPECTED_LINT, report
    with pytest.raises(helm.HelmError):
        render(chart=broken)

    unlocked = copy.deepcopy(CUSTOM)
    unlocked["securityContext"] = {"readOnlyRootFilesystem": False}
    assert "durable-processor: writable root filesystem" in list(
        workload_problems(objects(render(unlocked)))
    )
