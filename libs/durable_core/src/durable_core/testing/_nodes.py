"""The members of a :class:`~durable_core.testing.NatsCluster`: the protocol every backend's node
follows, and the Docker backend's node (a ``nats`` container). The process backend's node is
:class:`~durable_core.testing.NatsServer` itself. No NATS client library here.
"""

from __future__ import annotations

import contextlib
import importlib
from datetime import timedelta
from typing import Any, Protocol

from durable_core.testing._probe import healthy, poll

# Inside each container: fixed ports (one network namespace per node) and paths.
_CLIENT_PORT, _HTTP_PORT, _ROUTE_PORT = 4222, 8222, 6222
_CONFIG_IN_CONTAINER = "/durable-nats.conf"


class ClusterNode(Protocol):
    """One member of a :class:`NatsCluster`, whichever the backend.

    ``start`` restarts a stopped or killed node on the same store and ports; ``kill`` crashes it
    (SIGKILL / ``docker kill``); ``pause`` freezes it (SIGSTOP / ``docker pause``).
    """

    @property
    def name(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def client_port(self) -> int: ...
    @property
    def http_port(self) -> int: ...
    @property
    def url(self) -> str: ...
    @property
    def monitor_url(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    def start(self, *, wait: bool = True) -> object: ...
    def wait_ready(
        self, *, timeout: timedelta | None = None, js_enabled_only: bool = True
    ) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class _DockerNode:
    """A node in a ``nats`` container; the container (and so its store) lives until removed."""

    def __init__(
        self, *, name: str, image: str, config: str, client_port: int, http_port: int
    ) -> None:
        self.name = name
        self.client_port = client_port  # host ports, bound explicitly so restarts keep them
        self.http_port = http_port
        self.startup_timeout = timedelta(seconds=60)
        self.network: Any = None  # testcontainers Network, set by the cluster before start
        self._image = image
        self._config = config
        self._host = "localhost"
        self._container: Any = None  # testcontainers DockerContainer

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        return f"nats://{self._host}:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self._host}:{self.http_port}"

    def _status(self) -> str:
        if self._container is None:
            return "absent"
        wrapped = self._container.get_wrapped_container()
        try:
            wrapped.reload()
        except Exception:  # noqa: BLE001 - a vanished container is not running
            return "absent"
        return str(wrapped.status)

    @property
    def pid(self) -> int | None:
        if not self.running:
            return None
        pid = self._container.get_wrapped_container().attrs.get("State", {}).get("Pid")
        return int(pid) if pid else None

    @property
    def running(self) -> bool:
        return self._status() in ("running", "paused")

    @property
    def paused(self) -> bool:
        return self._status() == "paused"

    def start(self, *, wait: bool = True) -> _DockerNode:
        if self._container is None:
            tc = importlib.import_module("testcontainers.core.container")
            container = (
                tc.DockerContainer(self._image)
                .with_network(self.network)
                .with_network_aliases(self.name)
                .with_bind_ports(_CLIENT_PORT, self.client_port)
                .with_bind_ports(_HTTP_PORT, self.http_port)
                .with_copy_into_container(self._config.encode(), _CONFIG_IN_CONTAINER)
                .with_command(["-c", _CONFIG_IN_CONTAINER])
            )
            self._container = container.start()
            self._host = str(container.get_container_host_ip())
            self.client_port = int(container.get_exposed_port(_CLIENT_PORT))
            self.http_port = int(container.get_exposed_port(_HTTP_PORT))
        elif not self.running:
            self._container.get_wrapped_container().start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, *, timeout: timedelta | None = None, js_enabled_only: bool = True) -> None:
        def probe() -> bool | None:
            if not self.running:
                raise RuntimeError(f"container {self.name!r} is not running:\n{self._logs()}")
            return True if healthy(self.monitor_url, js_enabled_only=js_enabled_only) else None

        poll(
            probe,
            (self.startup_timeout if timeout is None else timeout).total_seconds(),
            lambda: f"container {self.name!r} not healthy:\n{self._logs()}",
        )

    def _logs(self) -> str:
        try:
            out, err = self._container.get_logs()
        except Exception:  # noqa: BLE001 - best effort, for an error message
            return "(no logs)"
        return "\n".join((out + err).decode("utf-8", errors="replace").splitlines()[-40:])

    def stop(self) -> None:
        if self.paused:
            self.resume()  # let it see the SIGTERM
        if self.running:
            self._container.get_wrapped_container().stop(timeout=10)

    def kill(self) -> None:
        if self.running:
            self._container.get_wrapped_container().kill()

    def pause(self) -> None:
        self._container.get_wrapped_container().pause()

    def resume(self) -> None:
        self._container.get_wrapped_container().unpause()

    def isolate(self) -> None:
        """Disconnect the container from the cluster's network: no peer or client reaches it."""
        self._docker_network().disconnect(self._container.get_wrapped_container().id, force=True)

    def rejoin(self) -> None:
        """Connect an isolated container again, under its name (its published ports return)."""
        cid = self._container.get_wrapped_container().id
        self._docker_network().connect(cid, aliases=[self.name])

    def _docker_network(self) -> Any:
        client = importlib.import_module("docker").from_env()
        return client.networks.get(self.network.id)

    def remove(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()  # testcontainers' stop() removes the container
            self._container = None
