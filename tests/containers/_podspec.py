"""What parts of a pod spec mean, without running anything: Kubernetes quantities, $(VAR)
expansion, and the admission checks of a namespace with the "restricted" Pod Security Standard and
a ResourceQuota on requests and memory limits (plus the scheduler's view of spread constraints).
"""

from __future__ import annotations

import re
from typing import Any

Obj = dict[str, Any]

# Pod Security Standards, "restricted": the volume types it allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity ("64Mi", "100m", "1Gi", "2") as a number (bytes, or cores)."""
    units = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
        "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 10**-3,
    }  # fmt: skip
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    if not match or (match.group(2) and match.group(2) not in units):
        raise ValueError(f"not a quantity: {text!r}")
    return float(match.group(1)) * units.get(match.group(2), 1)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes, others stay."""

    def one(m: re.Match[str]) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def admission_problems(pod: Obj, labels: dict[str, str]) -> list[str]:
    """Why a restricted namespace with a requests/limits quota, or the scheduler, would refuse."""
    problems = []
    context = pod.get("securityContext") or {}
    for c in pod["containers"]:
        own = c.get("securityContext") or {}
        name = c["name"]
        if not own.get("runAsNonRoot", context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true (restricted)")
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false (restricted)")
        capabilities = own.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL (restricted)")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities (restricted)")
        if own.get("privileged"):
            problems.append(f"{name}: privileged (restricted)")
        seccomp = (own.get("seccompProfile") or context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: no RuntimeDefault seccomp profile (restricted)")
        resources = c.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for what, present in (
            ("requests.cpu", "cpu" in requests),
            ("requests.memory", "memory" in requests),
            ("limits.memory", "memory" in limits),
        ):
            if not present:
                problems.append(f"{name}: no {what} (the namespace's ResourceQuota needs it)")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)} (restricted)")
    for constraint in pod.get("topologySpreadConstraints") or []:
        wanted = (constraint.get("labelSelector") or {}).get("matchLabels") or {}
        if not wanted or not wanted.items() <= labels.items():
            problems.append(
                f"topology spread on {constraint['topologyKey']} selects none of its own pods"
            )
    return problems
