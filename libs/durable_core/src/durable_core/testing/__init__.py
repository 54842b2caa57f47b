"""Helpers for tests, ``durable dev`` and benchmarks.

Real NATS servers and clusters; the engine's processes as real children (``ProcessStack``:
the example service, processors, schedulers, the CLI); bounded waits (``assert_eventually``);
and a journal replayer for unit tests of workflows with no NATS at all (``replay_workflow``
with ``call_entry``, ``run_entry``, ``failed_entry`` and ``patch_entry``).
"""

from durable_core.testing._binary import find_nats_server_binary, nats_server_release
from durable_core.testing._cluster import NatsCluster
from durable_core.testing._otlp import OtlpHttpReceiver
from durable_core.testing._probe import docker_available, free_port, free_ports
from durable_core.testing._processes import (
    ChildProcess,
    ProcessStack,
    ServiceProcess,
    stop_all_children,
)
from durable_core.testing._replay import (
    RecordedCall,
    WorkflowRun,
    call_entry,
    failed_entry,
    patch_entry,
    replay_workflow,
    run_entry,
)
from durable_core.testing._servers import NatsServer
from durable_core.testing._wait import assert_eventually, assert_eventually_async

__all__ = [
    "ChildProcess",
    "NatsCluster",
    "NatsServer",
    "OtlpHttpReceiver",
    "ProcessStack",
    "RecordedCall",
    "ServiceProcess",
    "WorkflowRun",
    "assert_eventually",
    "assert_eventually_async",
    "call_entry",
    "docker_available",
    "failed_entry",
    "find_nats_server_binary",
    "free_port",
    "free_ports",
    "nats_server_release",
    "patch_entry",
    "replay_workflow",
    "run_entry",
    "stop_all_children",
]
