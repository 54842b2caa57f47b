"""The system under test: the example service, 3 processors and 2 scheduler replicas (or none).

Every one is a real child process (``ChildProcess`` from ``durable_core.testing``) with its own
log file per incarnation; the nemesis kills, pauses and restarts them by name. Only PIDs started
here are ever signalled.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from pathlib import Path

from durable_core.testing import ChildProcess, NatsCluster, ServiceProcess, free_port
from order_processing.testing import OrderServiceControl

PROCESSORS = ("p1", "p2", "p3")
SCHEDULERS = ("s1", "s2")
ORDER_METHODS = ("Validate", "Charge", "Ship")


class System:
    """Processes of one chaos run, on one engine prefix of ``cluster``.

    Args:
        cluster: the NATS cluster.
        prefix: the engine prefix.
        log_dir: where each process logs (``<name>.<incarnation>.log``).
        record_file: the OrderService's record of every call (survives its restarts).
        service_delay_ms: how long each OrderService method sleeps, so calls are in flight.
        ack_wait: the processors' ack wait in seconds (redeliveries come this fast).
        schedulers: the scheduler replicas to run (none: nothing re-drives a dead processor's
            commands, JetStream's ack_wait alone redelivers them).
        scheduler_env: more settings for the scheduler replicas (retention, ...).
        plugins: the plugins each processor loads (``DURABLE_LOAD_PLUGINS``), by name; a processor
            not named loads every installed one (a mixed fleet, issue 16).
        shards: the engine's shards.
        idempotency_store: the OrderService answers each key once from records in the
            cluster (``durable_core.idempotency``) rather than its memory.
    """

    def __init__(
        self,
        cluster: NatsCluster,
        prefix: str,
        log_dir: Path,
        record_file: Path,
        *,
        service_delay_ms: int = 200,
        ack_wait: int = 5,
        schedulers: tuple[str, ...] = SCHEDULERS,
        scheduler_env: dict[str, str] | None = None,
        plugins: Mapping[str, str] | None = None,
        shards: int = 1,
        idempotency_store: bool = False,
    ) -> None:
        self.cluster = cluster
        self.idempotency_store = idempotency_store
        self.prefix = prefix
        self.log_dir = log_dir
        self.record_file = record_file
        self.service_delay_ms = service_delay_ms
        self.ack_wait = ack_wait
        self.schedulers = schedulers
        self.scheduler_env = dict(scheduler_env or {})
        self.plugins = dict(plugins or {})
        self.shards = shards
        self.service_port = free_port()
        self.procs: dict[str, ChildProcess] = {}
        self._incarnation: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def service_address(self) -> str:
        return f"127.0.0.1:{self.service_port}"

    @property
    def env(self) -> dict[str, str]:
        url = self.cluster.url
        return {
            "NATS_URL": url,
            "DURABLE_NATS_URL": url,
            "DURABLE_PREFIX": self.prefix,
            "DURABLE_REPLICAS": "3",
            "DURABLE_SHARDS": str(self.shards),
            "DURABLE_METRICS_PORT": "0",
            "DURABLE_LOG_LEVEL": "INFO",
        }

    # -- starting -------------------------------------------------------------------------

    def _incarnation_name(self, name: str) -> str:
        with self._lock:
            n = self._incarnation.get(name, 0) + 1
            self._incarnation[name] = n
        return f"{name}.{n}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> ChildProcess:
        proc = ChildProcess(self._incarnation_name(name), args, env, self.log_dir)
        self.procs[name] = proc
        return proc

    def spawn_service(self) -> ServiceProcess:
        env = {"ORDER_SERVICE_RECORD_FILE": str(self.record_file)}
        if self.idempotency_store:
            env |= {"IDEMPOTENCY_STORE_URL": self.cluster.url, "DURABLE_PREFIX": self.prefix}
        proc = ServiceProcess(
            self.log_dir,
            env,
            port=self.service_port,
            name=self._incarnation_name("service"),
        )
        self.procs["service"] = proc
        return proc

    def ready_service(self, proc: ServiceProcess, timeout: float = 30) -> None:
        proc.wait_ready(timeout)
        orders = OrderServiceControl(proc.channel)
        for method in ORDER_METHODS:
            orders.set_delay(method, self.service_delay_ms)

    def spawn_processor(self, name: str) -> ChildProcess:
        return self._spawn(
            name,
            ["-m", "durable_processor", "--processor-id", name],
            {
                **self.env,
                "DURABLE_ACK_WAIT": str(self.ack_wait),
                "DURABLE_DEFAULT_SERVICE_ADDRESS": self.service_address,
                **({"DURABLE_LOAD_PLUGINS": self.plugins[name]} if name in self.plugins else {}),
            },
        )

    def spawn_scheduler(self, name: str) -> ChildProcess:
        # A tick held by a replica that died goes to the other one after 3 s.
        return self._spawn(
            name,
            ["-m", "durable_scheduler"],
            {**self.env, "DURABLE_ACK_WAIT": "3", **self.scheduler_env},
        )

    @staticmethod
    def ready_processor(proc: ChildProcess, timeout: float = 60) -> None:
        proc.wait_log("consuming", timeout)

    @staticmethod
    def ready_scheduler(proc: ChildProcess, timeout: float = 60) -> None:
        proc.wait_log("consuming ticks", timeout)

    def start(self) -> None:
        """Start everything, in parallel (each Python process takes a second or two)."""
        service = self.spawn_service()
        processors = [self.spawn_processor(n) for n in PROCESSORS]
        schedulers = [self.spawn_scheduler(n) for n in self.schedulers]
        self.ready_service(service)
        for proc in processors:
            self.ready_processor(proc)
        for proc in schedulers:
            self.ready_scheduler(proc)

    # -- faults ---------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL the current incarnation of ``name`` (and close its log)."""
        proc = self.procs[name]
        proc.kill()
        proc.stop()

    def pause(self, name: str) -> None:
        """SIGSTOP the current incarnation of ``name`` (it keeps its sockets, says nothing)."""
        self.procs[name].proc.send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        proc = self.procs[name].proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)

    def pids(self) -> dict[str, int]:
        """The PID of each process now running, by name."""
        return {name: p.pid for name, p in self.procs.items() if p.proc.poll() is None}

    def restart(self, name: str) -> ChildProcess:
        proc: ChildProcess
        if name == "service":
            service = self.spawn_service()
            self.ready_service(service)
            proc = service
        elif name in PROCESSORS:
            proc = self.spawn_processor(name)
            self.ready_processor(proc)
        elif name in SCHEDULERS:
            proc = self.spawn_scheduler(name)
            self.ready_scheduler(proc)
        else:
            raise KeyError(name)
        return proc

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            self.resume(name)  # a paused process cannot handle SIGTERM
            proc.stop(timeout=15)

    def exited(self) -> list[str]:
        """Processes that died without being killed by the nemesis."""
        return [
            f"{name} (exit {proc.proc.returncode}, log {proc.log_path})"
            for name, proc in self.procs.items()
            if proc.proc.poll() is not None
        ]
