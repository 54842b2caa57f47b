"""SIGTERM stops a scheduler that still waits for the engine's streams (no processor yet)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from durable_core.testing import NatsServer


def test_sigterm_stops_a_scheduler_waiting_for_the_streams() -> None:
    """It installed its handlers only once the streams existed: a signal before that got the
    default action, which for PID 1 in a container is none (killed after the grace period),
    and here a death by signal (-15), as run on the code before."""
    with NatsServer() as server:
        env = {
            **os.environ,
            "DURABLE_PREFIX": "t" + uuid.uuid4().hex[:8],
            "DURABLE_METRICS_PORT": "0",
        }
        env.pop("DURABLE_SETTINGS_FILE", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "durable_scheduler", "--nats-url", server.url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(3)  # connected, waiting for a processor to create the streams
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "stopped while starting" in err
