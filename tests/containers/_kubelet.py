"""Pods of rendered Kubernetes manifests, run in Docker the way a kubelet would run them.

There is no Kubernetes where these tests run (no kubelet, kind or k3s), but there is Docker.
`Namespace` takes the objects a chart renders and runs each workload's pods as containers,
following the pod spec: the image, command and args (with `$(VAR)` expansion), env and envFrom
resolved from the namespace's ConfigMaps and Secrets (a missing one stops the pod, as
CreateContainerConfigError does), the user, group and fsGroup, a read-only root filesystem,
dropped capabilities, no privilege escalation, the memory and CPU limits, emptyDir volumes as
empty tmpfs mounts, ConfigMap and Secret volumes as read-only files owned by the fsGroup, and a
StatefulSet's volume claims as empty volumes owned by the fsGroup. Every pod joins one Docker
network with the DNS names Kubernetes would give it: each Service that selects it
(`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`) and, for a StatefulSet, its own
`pod.headless-service...` names.

Before a pod starts, the admission checks a namespace labelled `pod-security.kubernetes.io/
enforce=restricted` with a ResourceQuota on requests and memory limits would make (the pod is
refused otherwise), and the scheduler's: a topology spread constraint must select its own pods.

Probes run from the test against the container's address, with kubelet's rules: a startup probe
(or, without one, the liveness probe) that fails `failureThreshold` times, `periodSeconds`
apart after `initialDelaySeconds`, gets the container killed; so does a container that exits.
The probes are polled more often than their period, which only finds success sooner; failures
are counted at the probe's own cadence.

Not emulated (and refused where it would matter): a Service port that differs from its target
port, projected or hostPath volumes, sidecars sharing an emptyDir, lifecycle hooks, restarts.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._podspec import admission_problems, expand, quantity

Obj = dict[str, Any]
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


class PodFailedError(AssertionError):
    """A pod Kubernetes would not run, or would restart (the message says why, with logs)."""


@dataclass
class Pod:
    """One pod: its name, spec, labels, and a Docker container per container of the spec."""

    name: str
    spec: Obj
    labels: dict[str, str]
    containers: dict[str, str] = field(default_factory=dict)  # spec name -> Docker name
    ip: str = ""
    started: float = 0.0

    def container(self, name: str = "") -> Obj:
        specs = {c["name"]: c for c in self.spec["containers"]}
        return specs[name] if name else self.spec["containers"][0]

    def port(self, container: Obj, port: int | str) -> int:
        """A probe's port: a number, or the name of one of the container's ports."""
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in container.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise PodFailedError(f"{self.name}: no port named {port!r}")


@dataclass
class Namespace:
    """A namespace of a pretend cluster: the objects applied to it, and pods in Docker.

    Args:
        docker: the docker CLI.
        network: the Docker network every pod joins (made by `create`).
        name: the namespace (as in the DNS names).
        workdir: where ConfigMap and Secret volumes are written for bind mounts.
        image: maps an image reference of a pod spec to one present here.
    """

    docker: str
    network: str
    name: str
    workdir: Path
    image: Callable[[str], str]
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    prefix: str = field(default_factory=lambda: f"pods-{secrets.token_hex(3)}")

    # -- Docker ----------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60, check: bool = True, stdin: bytes | None = None
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        cp = subprocess.run(
            [self.docker, *args], capture_output=True, timeout=timeout, check=False, input=stdin
        )
        result = subprocess.CompletedProcess(
            cp.args, cp.returncode, cp.stdout.decode(errors="replace"),
            cp.stderr.decode(errors="replace"),
        )  # fmt: skip
        if check and cp.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])}: {result.stderr.strip()[-600:]}")
        return result

    def create(self) -> None:
        self.cli("network", "create", "--label", f"durable-test={self.prefix}", self.network)

    def remove(self) -> list[str]:
        """Remove every container and the network; return what could not be removed."""
        left = []
        for pod in self.pods:
            for container in pod.containers.values():
                cp = self.cli("rm", "-f", "-v", container, check=False)
                if cp.returncode != 0 and "No such container" not in cp.stderr:
                    left.append(container)
        self.pods.clear()
        if self.cli("network", "rm", self.network, check=False).returncode != 0:
            left.append(self.network)
        return left

    # -- objects ---------------------------------------------------------------------------------

    def apply(self, docs: Iterable[Obj], release: str) -> None:
        """Apply a release's objects, refusing another release's (Helm's ownership check)."""
        for doc in docs:
            key = (doc["kind"], doc["metadata"]["name"])
            owner = self.owners.get(key)
            if owner is not None and owner != release:
                raise PodFailedError(
                    f'{key[0]} "{key[1]}" exists and belongs to release {owner!r}: '
                    f"installing {release!r} fails"
                )
            self.objects[key] = doc
            self.owners[key] = release

    def get(self, kind: str, name: str) -> Obj | None:
        return self.objects.get((kind, name))

    def _data(self, kind: str, name: str, key: str | None, optional: bool) -> dict[str, str] | None:
        obj = self.get(kind, name)
        if obj is None:
            if optional:
                return None
            raise PodFailedError(f'CreateContainerConfigError: {kind.lower()} "{name}" not found')
        data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
        if key is not None and key not in data:
            if optional:
                return None
            raise PodFailedError(f'CreateContainerConfigError: key "{key}" not in {kind} "{name}"')
        return data

    def container_env(self, pod: Pod, container: Obj) -> dict[str, str]:
        """A container's environment as kubelet builds it: envFrom, then env in order
        (Secrets, ConfigMaps, fieldRefs, and $(VAR) of the variables before)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if ref in source:
                    r = source[ref]
                    data = self._data(kind, r["name"], None, bool(r.get("optional")))
                    env.update({prefix + k: v for k, v in (data or {}).items()})
        fields = {
            "metadata.name": pod.name,
            "metadata.namespace": self.name,
            "spec.nodeName": "docker",
            "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
        }
        for item in container.get("env") or []:
            if "value" in item or "valueFrom" not in item:
                env[item["name"]] = expand(str(item.get("value", "")), env)
                continue
            source = item["valueFrom"]
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
                if label:
                    env[item["name"]] = pod.labels.get(label.group(1), "")
                elif path in fields:
                    env[item["name"]] = fields[path]
                else:
                    raise NotImplementedError(f"fieldRef {path} is not emulated")
                continue
            for kind, ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if ref in source:
                    r = source[ref]
                    data = self._data(kind, r["name"], r["key"], bool(r.get("optional")))
                    if data is not None:
                        env[item["name"]] = data[r["key"]]
                    break
            else:
                raise NotImplementedError(f"env {item['name']}: {sorted(source)} is not emulated")
        return env

    # -- volumes ---------------------------------------------------------------------------------

    def _files(self, pod: Pod, volume: Obj, group: int | None) -> Path:
        """A ConfigMap or Secret volume as files, owned root:fsGroup like kubelet makes them."""
        kind, ref = ("ConfigMap", volume["configMap"]) if "configMap" in volume else (
            "Secret", volume["secret"]
        )  # fmt: skip
        name = ref.get("name") or ref.get("secretName")
        data = self._data(kind, name, None, bool(ref.get("optional"))) or {}
        mode = int(ref.get("defaultMode", 0o644))
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        directory = self.workdir / pod.name / volume["name"]
        directory.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item["key"] not in data:
                raise PodFailedError(f'{pod.name}: key "{item["key"]}" not in {kind} "{name}"')
            target = directory / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
            file_mode = int(item.get("mode", mode))
            if group is not None:
                file_mode |= 0o040  # kubelet lets the fsGroup read it
                try:
                    os.chown(target, 0, group)
                except PermissionError:  # not root: let everyone read it instead
                    file_mode |= 0o004
            target.chmod(file_mode)
        return directory

    def _mounts(self, pod: Pod, container: Obj, claims: frozenset[str] | set[str]) -> list[str]:
        context = pod.spec.get("securityContext") or {}
        group = context.get("fsGroup")
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        args: list[str] = []
        for mount in container.get("volumeMounts") or []:
            path, name = mount["mountPath"], mount["name"]
            if name in claims:  # a volume claim: an empty volume the fsGroup may write
                options = f"mode={'2770' if group is not None else '0755'}"
                if group is not None:
                    options += f",uid=0,gid={group}"
                args += ["--tmpfs", f"{path}:{options}"]
                continue
            volume = volumes.get(name)
            if volume is None:
                raise PodFailedError(f"{pod.name}: volumeMount {name} names no volume")
            if "emptyDir" in volume:
                if len(pod.spec["containers"]) > 1 and any(
                    m["name"] == name
                    for c in pod.spec["containers"]
                    if c is not container
                    for m in c.get("volumeMounts") or []
                ):
                    raise NotImplementedError(f"emptyDir {name} shared between containers")
                options = "mode=1777"  # kubelet makes emptyDirs world-writable
                limit = (volume["emptyDir"] or {}).get("sizeLimit")
                if limit:
                    options += f",size={int(quantity(limit))}"
                args += ["--tmpfs", f"{path}:{options}"]
            elif "configMap" in volume or "secret" in volume:
                source = self._files(pod, volume, group)
                if mount.get("subPath"):
                    source = source / mount["subPath"]
                args += ["-v", f"{source}:{path}:ro"]
            else:
                raise NotImplementedError(f"volume {name}: {sorted(volume)} is not emulated")
        return args

    # -- pods ------------------------------------------------------------------------------------

    def _aliases(self, pod: Pod, headless: str | None) -> list[str]:
        names: list[str] = []
        for (kind, service), doc in self.objects.items():
            selector = doc.get("spec", {}).get("selector") if kind == "Service" else None
            if not selector or not selector.items() <= pod.labels.items():
                continue
            for port in doc["spec"].get("ports") or []:
                target = port.get("targetPort", port["port"])
                if port["port"] not in self._ports(pod, target):
                    raise NotImplementedError(
                        f"Service {service} port {port['port']} -> {target}: port mapping"
                    )
            names.append(service)
        if headless:
            names.append(f"{pod.name}.{headless}")
        suffixes = ("", f".{self.name}", f".{self.name}.svc", f".{self.name}.svc.cluster.local")
        return [n + s for n in names for s in suffixes]

    @staticmethod
    def _ports(pod: Pod, target: int | str) -> set[int]:
        found = set()
        for container in pod.spec["containers"]:
            try:
                found.add(pod.port(container, target))
            except PodFailedError:
                continue
        return found

    def workload(self, name: str) -> Obj:
        for kind in WORKLOAD_KINDS:
            found = self.get(kind, name)
            if found is not None:
                return found
        raise KeyError(f"no workload {name}")

    def start(self, name: str, replicas: int | None = None) -> list[Pod]:
        """Start the pods of a workload (replicas: how many; default the spec's)."""
        workload = self.workload(name)
        spec = workload["spec"]
        count = spec.get("replicas", 1) if replicas is None else replicas
        template = spec["template"]
        labels = dict(template["metadata"].get("labels") or {})
        pods = []
        for i in range(count):
            if workload["kind"] == "StatefulSet":
                pod_name = f"{name}-{i}"
                pod_labels = {**labels, "statefulset.kubernetes.io/pod-name": pod_name}
                claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates") or []}
                headless = spec.get("serviceName")
            else:
                pod_name = f"{name}-{secrets.token_hex(3)}"
                pod_labels, claims, headless = labels, set(), None
            pods.append(self.run_pod(pod_name, template["spec"], pod_labels, claims, headless))
        return pods

    def run_pod(
        self,
        name: str,
        spec: Obj,
        labels: dict[str, str],
        claims: frozenset[str] | set[str] = frozenset(),
        headless: str | None = None,
    ) -> Pod:
        """Admit and start one pod; raise PodFailedError where Kubernetes would not run it."""
        problems = admission_problems(spec, labels)
        if problems:
            raise PodFailedError(f"pod {name} refused:\n  " + "\n  ".join(problems))
        pod = Pod(name=name, spec=spec, labels=labels)
        context = spec.get("securityContext") or {}
        first = ""
        planned = []
        for container in spec["containers"]:  # every container's config first, as kubelet does
            env = self.container_env(pod, container)
            planned.append((container, env, self._mounts(pod, container, claims)))
        self.pods.append(pod)
        for container, env, mounts in planned:
            own = container.get("securityContext") or {}
            docker_name = f"{self.prefix}-{name}-{container['name']}"[:120]
            args = ["run", "-d", "--name", docker_name, "--label", f"durable-test={self.prefix}"]
            if not first:
                args += ["--network", self.network, "--hostname", name[:63]]
                for alias in self._aliases(pod, headless):
                    args += ["--network-alias", alias]
            else:
                args += ["--network", f"container:{first}"]
            user, group = own.get("runAsUser", context.get("runAsUser")), own.get(
                "runAsGroup", context.get("runAsGroup")
            )  # fmt: skip
            if user is None:
                user = self._image_user(container["image"])
                if not str(user).isdigit() or int(user) == 0:
                    raise PodFailedError(
                        f"CreateContainerConfigError: {name}/{container['name']} runs as "
                        f"{user!r}: runAsNonRoot needs a numeric non-root user"
                    )
            args += ["--user", f"{user}:{group}" if group is not None else str(user)]
            for extra in [context.get("fsGroup"), *(context.get("supplementalGroups") or [])]:
                if extra is not None:
                    args += ["--group-add", str(extra)]
            if own.get("readOnlyRootFilesystem"):
                args.append("--read-only")
            capabilities = own.get("capabilities") or {}
            args += [f"--cap-drop={c}" for c in capabilities.get("drop") or []]
            args += [f"--cap-add={c}" for c in capabilities.get("add") or []]
            if own.get("allowPrivilegeEscalation") is False:
                args += ["--security-opt", "no-new-privileges"]
            limits = (container.get("resources") or {}).get("limits") or {}
            if "memory" in limits:
                args += ["--memory", str(int(quantity(limits["memory"])))]
            if "cpu" in limits:
                args += ["--cpus", f"{quantity(limits['cpu']):.3f}"]
            for key, value in env.items():
                args += ["-e", f"{key}={value}"]
            args += mounts
            if container.get("workingDir"):
                args += ["--workdir", container["workingDir"]]
            command = [expand(c, env) for c in container.get("command") or []]
            rest = [expand(a, env) for a in container.get("args") or []]
            if command:
                args += ["--entrypoint", command[0]]
                rest = command[1:] + rest
            args += [self.image(container["image"]), *rest]
            pod.containers[container["name"]] = docker_name  # removed even if the start fails
            self.cli(*args)
            first = first or docker_name
        pod.started = time.monotonic()
        address = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        pod.ip = self.cli("inspect", "-f", address, first).stdout.strip()
        return pod

    def _image_user(self, image: str) -> str:
        user = self.cli("image", "inspect", "-f", "{{.Config.User}}", self.image(image)).stdout
        return user.strip().split(":")[0] or "0"

    def stop(self, pod: Pod, grace: int = 1) -> None:
        for container in pod.containers.values():
            self.cli("stop", "-t", str(grace), container, timeout=grace + 30)

    def running(self, pod: Pod) -> tuple[bool, str]:
        """Is every container running; if not, why (its exit code and last log lines)."""
        for spec_name, container in pod.containers.items():
            state = json.loads(self.cli("inspect", "-f", "{{json .State}}", container).stdout)
            if not state.get("Running"):
                return False, (
                    f"{pod.name}/{spec_name} exited ({state.get('ExitCode')}):\n"
                    + self.logs(pod, spec_name, 25)
                )
        return True, ""

    def logs(self, pod: Pod, container: str = "", tail: int = 40) -> str:
        name = pod.containers[container] if container else next(iter(pod.containers.values()))
        cp = self.cli("logs", "--tail", str(tail), name, check=False)
        return (cp.stdout + cp.stderr)[-4000:]

    def run_once(self, image: str, args: list[str], env: dict[str, str], timeout: float = 60
                 ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """A throwaway container on the network (a client, like `kubectl run --rm`)."""
        name = f"{self.prefix}-run-{secrets.token_hex(3)}"
        cmd = ["run", "--rm", "--name", name, "--network", self.network, "--user", "10001:10001"]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        try:
            return self.cli(*cmd, image, *args, timeout=timeout, check=False)
        finally:
            self.cli("rm", "-f", name, check=False)

    # -- probes ----------------------------------------------------------------------------------

    def probe(self, pod: Pod, container: Obj, probe: Obj) -> tuple[bool, str]:
        """One probe, as kubelet runs it: (passed, what it saw)."""
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = pod.port(container, get["port"])
                cls = http.client.HTTPSConnection if get.get("scheme") == "HTTPS" else (
                    http.client.HTTPConnection
                )  # fmt: skip
                conn = cls(get.get("host") or pod.ip, port, timeout=timeout)
                try:
                    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                    conn.request("GET", get.get("path", "/"), headers=headers)
                    status = conn.getresponse().status
                finally:
                    conn.close()
                return 200 <= status < 400, f"HTTP {status}"
            if "grpc" in probe:
                port = int(probe["grpc"]["port"])
                with grpc.insecure_channel(f"{pod.ip}:{port}") as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                        timeout=timeout,
                    )
                ok = reply.status == health_pb2.HealthCheckResponse.SERVING
                return ok, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            if "tcpSocket" in probe:
                port = pod.port(container, probe["tcpSocket"]["port"])
                with socket.create_connection((pod.ip, port), timeout=timeout):
                    return True, "connected"
            if "exec" in probe:
                name = pod.containers[container["name"]]
                cp = self.cli(
                    "exec", name, *probe["exec"]["command"], timeout=timeout + 5, check=False
                )
                return cp.returncode == 0, f"exit {cp.returncode}"
        except (OSError, grpc.RpcError, http.client.HTTPException) as e:
            return False, f"{type(e).__name__}: {e}"
        raise NotImplementedError(f"probe {sorted(probe)}")

    def wait_ready(self, pods: list[Pod], cap: float = 90) -> dict[str, float]:
        """Wait until every container of every pod is ready, by kubelet's rules; return the
        seconds each pod took. PodFailedError: a container exited, or a startup or liveness probe
        failed often enough that kubelet would kill it, or `cap` seconds passed."""
        state: dict[tuple[str, str], dict[str, Any]] = {}
        for pod in pods:
            for c in pod.spec["containers"]:
                state[(pod.name, c["name"])] = {"started": "startupProbe" not in c, "ready": False}
        by_name = {p.name: p for p in pods}
        deadline = time.monotonic() + cap
        took: dict[str, float] = {}
        while True:
            for (pod_name, c_name), s in state.items():
                if s["ready"]:
                    continue
                pod = by_name[pod_name]
                alive, why = self.running(pod)
                if not alive:
                    raise PodFailedError(why)
                container = pod.container(c_name)
                if not s["started"]:
                    s["started"] = self._counted(pod, container, "startupProbe", s)
                    if not s["started"]:
                        continue
                if "livenessProbe" in container:
                    self._counted(pod, container, "livenessProbe", s)
                probe = container.get("readinessProbe")
                s["ready"] = probe is None or self.probe(pod, container, probe)[0]
            for pod in pods:
                if pod.name not in took and all(
                    s["ready"] for (p, _), s in state.items() if p == pod.name
                ):
                    took[pod.name] = round(time.monotonic() - pod.started, 1)
            if len(took) == len(pods):
                return took
            if time.monotonic() > deadline:
                waiting = sorted({p for (p, _), s in state.items() if not s["ready"]})
                logs = "\n".join(f"--- {p}\n{self.logs(by_name[p])}" for p in waiting)
                raise PodFailedError(f"not ready within {cap:.0f}s: {waiting}\n{logs}")
            time.sleep(0.25)

    def _counted(self, pod: Pod, container: Obj, kind: str, s: dict[str, Any]) -> bool:
        """Run a startup or liveness probe; count its failures at its own cadence, and raise
        when kubelet would kill the container."""
        probe = container[kind]
        ok, seen = self.probe(pod, container, probe)
        if ok:
            s[kind] = 0
            return True
        now = time.monotonic() - pod.started
        last = s.get(f"{kind}-at", -1e9)
        if now >= probe.get("initialDelaySeconds", 0) and now - last >= probe.get(
            "periodSeconds", 10
        ):
            s[f"{kind}-at"] = now
            s[kind] = s.get(kind, 0) + 1
            if s[kind] >= probe.get("failureThreshold", 3):
                raise PodFailedError(
                    f"{pod.name}/{container['name']}: {kind} failed {s[kind]} times ({seen}): "
                    f"kubelet kills the container\n{self.logs(pod, container['name'])}"
                )
        return False

    def liveness_restarts(self, pod: Pod, container: str = "") -> tuple[bool, str]:
        """Would kubelet restart the container now? Its liveness probe, failureThreshold times.

        The probes come a quarter second apart rather than periodSeconds: for a state that
        lasts (NATS stopped, say) the verdict is the same, sooner."""
        spec = pod.container(container)
        probe = spec["livenessProbe"]
        seen = []
        for _ in range(int(probe.get("failureThreshold", 3))):
            ok, what = self.probe(pod, spec, probe)
            seen.append(what)
            if ok:
                return False, ", ".join(seen)
            time.sleep(0.25)
        return True, ", ".join(seen)


def run_parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run blocking calls in threads; return their results, re-raising the first error."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def one(i: int, call: Callable[[], Any]) -> None:
        try:
            results[i] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
