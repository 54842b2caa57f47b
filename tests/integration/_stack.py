"""Processes for integration tests: processors, the example gRPC service, the CLI.

Each is a real child process; tests end only the PIDs they started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from durable_core.testing import free_port
from durable_examples.order.v1 import order_pb2, order_pb2_grpc


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A child process whose combined output goes to a log file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and text not in self.log():
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
            return text in self.log()

        wait_for(seen, timeout, f"{self.name} to log {text!r}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class ServiceProc(Proc):
    """The example gRPC services (HelloService and OrderService) in their own process."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        super().__init__(
            f"service-{self.port}",
            ["-m", "hello_service", "--port", str(self.port)],
            env or {},
            log_dir,
        )
        self.wait_log("listening on")
        self.address = f"127.0.0.1:{self.port}"
        self._channel = grpc.insecure_channel(self.address)
        self.orders = order_pb2_grpc.OrderServiceStub(self._channel)

    def counts(self) -> dict[tuple[str, str], int]:
        resp = self.orders.GetCallCounts(order_pb2.GetCallCountsRequest(), timeout=5)
        return {(c.method, c.idempotency_key): c.count for c in resp.counts}

    def method_counts(self, method: str) -> dict[str, int]:
        return {key: n for (m, key), n in self.counts().items() if m == method}

    def set_delay(self, method: str, ms: int) -> None:
        self.orders.SetDelay(order_pb2.SetDelayRequest(method=method, delay_ms=ms), timeout=5)

    def stop(self, timeout: float = 20) -> int:
        self._channel.close()
        return super().stop(timeout)


class Stack:
    """Processes of one test, all sharing one engine prefix on the cluster."""

    def __init__(self, nats_url: str, prefix: str, log_dir: Path, replicas: int = 3) -> None:
        self.nats_url = nats_url
        self.prefix = prefix
        self.replicas = replicas
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.service: ServiceProc | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "NATS_URL": self.nats_url,
            "DURABLE_NATS_URL": self.nats_url,
            "DURABLE_PREFIX": self.prefix,
            "DURABLE_REPLICAS": str(self.replicas),
            "DURABLE_METRICS_PORT": "0",  # many processors per test: no shared metrics port
        }

    def start_service(self, **env: str) -> ServiceProc:
        self.service = ServiceProc(self.log_dir, {k.upper(): v for k, v in env.items()})
        self.procs.append(self.service)
        return self.service

    def start_processor(self, name: str, *args: str, **env: str) -> Proc:
        assert self.service is not None, "start the service first"
        proc = Proc(
            name,
            ["-m", "durable_processor", "--processor-id", name, *args],
            {
                **self.env,
                "DURABLE_DEFAULT_SERVICE_ADDRESS": self.service.address,
                **{k.upper(): v for k, v in env.items()},
            },
            self.log_dir,
        )
        self.procs.append(proc)
        proc.wait_log("consuming")
        return proc

    def cli(
        self,
        *args: str,
        timeout: float = 60,
        stdin: str | None = None,
        unset: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``durable ARGS`` with this stack's environment less the variables in ``unset``."""
        env = {**os.environ, **self.env}
        for name in unset:
            env.pop(name, None)
        return subprocess.run(
            [sys.executable, "-m", "durable_core.cli", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
