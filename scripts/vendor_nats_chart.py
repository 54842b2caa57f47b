#!/usr/bin/env python3
"""Vendor the official NATS Helm chart into deploy/helm/durable/charts/ and write Chart.lock.

The durable chart depends on the NATS chart (Chart.yaml). Its package is committed, so that
``helm template``, ``helm lint``, Argo CD and Tilt render the chart offline and always with the
same NATS chart, one whose server supports what the engine needs (message schedules with
``@every`` and cron: nats-server 2.14 or later).

The package is made from the chart's source at a release tag of github.com/nats-io/k8s (Apache
2.0), with the repository's LICENSE put inside it (the chart folder has none of its own), by
Helm's own packager; Chart.lock records the version with the digest Helm computes from
Chart.yaml's dependencies and the lock's, so ``helm dependency build`` sees it in sync.

Usage::

    python scripts/vendor_nats_chart.py                               # 2.14.2 from GitHub
    python scripts/vendor_nats_chart.py --source /path/to/k8s/clone   # from a local clone
    python scripts/vendor_nats_chart.py --version 2.15.0              # another release

The version must satisfy the dependency's range in Chart.yaml; other nats-*.tgz are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "durable"
UPSTREAM = "https://github.com/nats-io/k8s"
CHART_PATH = "helm/charts/nats"


def git(*args: str, cwd: Path | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True).stdout


def source_tree(source: str, tag: str, tmp: Path) -> Path:
    """A git directory holding ``tag``: ``source`` itself if local, else a shallow clone."""
    if Path(source).exists():
        return Path(source)
    clone = tmp / "k8s.git"
    git("clone", "--bare", "--depth", "1", "--branch", tag, source, str(clone))
    return clone


def export_chart(repo: Path, tag: str, into: Path) -> Path:
    """The chart folder at ``tag``, with the repository's LICENSE added, under ``into``."""
    archive = git("archive", "--format=tar", tag, CHART_PATH, "LICENSE", cwd=repo)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    chart = into / CHART_PATH
    (into / "LICENSE").rename(chart / "LICENSE")
    return chart


def _go_json(value: Any) -> str:
    """``value`` as Go's encoding/json writes it: compact, with <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _dependency(d: dict[str, Any]) -> dict[str, Any]:
    """A dependency in the field order and with the omitempty rules of Helm's chart.Dependency."""
    out: dict[str, Any] = {"name": d["name"]}
    if d.get("version"):
        out["version"] = d["version"]
    out["repository"] = d.get("repository", "")
    for key in ("condition", "tags", "enabled", "import-values", "alias"):
        if d.get(key):
            out[key] = d[key]
    return out


def lock_digest(requested: list[dict[str, Any]], locked: list[dict[str, Any]]) -> str:
    """Helm's resolver.HashReq: sha256 of the JSON of [Chart.yaml's dependencies, the lock's]."""
    data = _go_json([[_dependency(d) for d in requested], [_dependency(d) for d in locked]])
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def write_lock(chart_dir: Path, version: str) -> dict[str, Any]:
    requested = yaml.safe_load((chart_dir / "Chart.yaml").read_text())["dependencies"]
    (nats,) = [d for d in requested if d["name"] == "nats"]
    locked = [{"name": "nats", "repository": nats["repository"], "version": version}]
    lock = {
        "dependencies": locked,
        "digest": lock_digest(requested, locked),
        "generated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    (chart_dir / "Chart.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    return lock


def main(argv: list[str] | None = None) -> int:
    import helm_python as helm  # helm-python-sdk: `make setup` installs it

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=UPSTREAM, help="nats-io/k8s: a git URL or a local clone")
    p.add_argument("--version", default="2.14.2", help="the NATS chart release (tag nats-<v>)")
    args = p.parse_args(argv)
    charts = CHART / "charts"
    with tempfile.TemporaryDirectory() as tmp:
        repo = source_tree(args.source, f"nats-{args.version}", Path(tmp))
        chart = export_chart(repo, f"nats-{args.version}", Path(tmp) / "export")
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        if meta["version"] != args.version:
            raise SystemExit(f"tag nats-{args.version} holds chart version {meta['version']}")
        charts.mkdir(exist_ok=True)
        for old in charts.glob("nats-*.tgz"):
            old.unlink()
        archive = Path(helm.package(str(chart), destination=str(charts)))
    lock = write_lock(CHART, args.version)
    (listed,) = [d for d in helm.dependency_list(str(CHART)) if d["name"] == "nats"]
    if listed["status"] != "ok":
        raise SystemExit(f"helm sees the vendored NATS chart as {listed['status']!r}")
    print(f"{archive.relative_to(REPO)} (nats-server {meta['appVersion']})")
    print(f"Chart.lock: {lock['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
