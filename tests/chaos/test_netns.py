"""The chaos suite's network: nodes in namespaces reach each other across its bridge, whatever
the iptables FORWARD policy (dockerd sets it to DROP, and `make test` starts dockerd first)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from . import _netns

LISTEN = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); c.sendall(b"across"); c.close()
"""
CONNECT = """
import socket, sys, time
deadline = time.monotonic() + 15
while True:
    try:
        print(socket.create_connection((sys.argv[1], 7777), timeout=2).recv(16).decode()); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.2)
"""


def forward_policy() -> str:
    iptables = shutil.which("iptables")
    if iptables is None:
        return "no iptables"
    cp = subprocess.run([iptables, "-S", "FORWARD"], capture_output=True, text=True, timeout=20)
    return next((line for line in cp.stdout.splitlines() if line.startswith("-P")), cp.stderr)


def test_nodes_in_namespaces_reach_each_other_across_the_bridge() -> None:
    reason = _netns.probe()
    if reason:
        pytest.skip(reason)
    net = _netns.Netns(["a", "b"])
    try:
        net.setup()
        listener = subprocess.Popen(
            ["ip", "netns", "exec", net.netns["a"], sys.executable, "-c", LISTEN, net.address["a"]]
        )
        try:
            cp = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    net.netns["b"],
                    sys.executable,
                    "-c",
                    CONNECT,
                    net.address["a"],
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        finally:
            listener.kill()
            listener.wait(timeout=10)
        policy = forward_policy()
        assert cp.stdout.strip() == "across", f"FORWARD {policy}: {cp.stderr[-500:]}"
    finally:
        net.teardown()
