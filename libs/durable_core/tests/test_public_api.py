"""The public API is what ``__all__`` lists; it changes only on purpose (httpx pins it too)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import durable_core
import durable_core.idempotency
import durable_core.testing
from durable_core import errors

PUBLIC_API = [
    "AlreadyResolvedError",
    "Awakeable",
    "AwakeableRejectedError",
    "Blob",
    "ChildWorkflowError",
    "Client",
    "ConfigError",
    "ConflictError",
    "Context",
    "DurableError",
    "EngineConfig",
    "EngineNotFoundError",
    "ExecutionSummary",
    "ExecutionTimeoutError",
    "ExpiredError",
    "Failure",
    "IllegalTransitionError",
    "Interceptor",
    "InvalidInputError",
    "InvocationCancelledError",
    "InvocationFinishedError",
    "InvocationResult",
    "InvocationTimeoutError",
    "MethodRef",
    "NatsConfig",
    "NatsUnavailableError",
    "NonDeterminismError",
    "NotFoundError",
    "PLUGIN_GROUP",
    "PayloadTooLargeError",
    "PayloadUnavailableError",
    "PluginSet",
    "RetryPolicy",
    "RetryableError",
    "ServiceRef",
    "Status",
    "StepFailedError",
    "StepInput",
    "StepRecord",
    "StepTimeoutError",
    "SuspendExecution",
    "TerminalError",
    "UnknownWorkflowError",
    "UnsupportedServerError",
    "Worker",
    "WorkerConfig",
    "WorkflowFailedError",
    "WorkflowInput",
    "WorkflowRegistry",
    "check_invocation_id",
    "grpc_service",
    "hookimpl",
    "hookspec",
    "load_plugins",
]

REPLAY_HELPERS = [
    "RecordedCall",
    "WorkflowRun",
    "call_entry",
    "failed_entry",
    "patch_entry",
    "replay_workflow",
    "run_entry",
]

IDEMPOTENCY_API = [
    "ANSWER_METADATA",
    "CallRecord",
    "FENCE_METADATA",
    "IDEMPOTENCY_KEY_METADATA",
    "IdempotencyStore",
    "call_identity",
]


def test_idempotency_api_is_pinned() -> None:
    assert sorted(durable_core.idempotency.__all__) == IDEMPOTENCY_API
    for name in IDEMPOTENCY_API:
        assert getattr(durable_core.idempotency, name) is not None


def test_the_metadata_the_engine_sends_is_what_the_store_reads() -> None:
    from durable_core.engine import _context

    assert _context.IDEMPOTENCY_KEY_HEADER == durable_core.idempotency.IDEMPOTENCY_KEY_METADATA
    assert _context.FENCE_HEADER == durable_core.idempotency.FENCE_METADATA


def test_all_is_pinned() -> None:
    assert sorted(durable_core.__all__) == PUBLIC_API
    assert len(set(durable_core.__all__)) == len(durable_core.__all__)


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(durable_core, name) is not None


def test_every_public_name_bound_in_the_package_is_listed() -> None:
    bound = {
        name
        for name, value in vars(durable_core).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert bound == set(durable_core.__all__)


def test_version_is_a_string() -> None:
    assert isinstance(durable_core.__version__, str) and durable_core.__version__


def test_errors_form_one_tree() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert getattr(durable_core, name) is cls
        if name in ("SuspendExecution", "InvocationCancelledError"):
            # control flow: a workflow's `except Exception` must not swallow it
            assert not issubclass(cls, Exception)
            assert issubclass(cls, BaseException)
        else:
            assert issubclass(cls, durable_core.DurableError)
    assert issubclass(durable_core.StepFailedError, durable_core.TerminalError)


def test_hook_markers_use_the_durable_project_name() -> None:
    assert durable_core.hookimpl.project_name == "durable"
    assert durable_core.hookspec.project_name == "durable"


@pytest.mark.parametrize("name", REPLAY_HELPERS)
def test_testing_exports_the_replay_helpers(name: str) -> None:
    assert name in durable_core.testing.__all__
    assert getattr(durable_core.testing, name) is not None


def test_every_testing_name_resolves() -> None:
    for name in durable_core.testing.__all__:
        assert getattr(durable_core.testing, name) is not None


def test_importing_testing_starts_nothing() -> None:
    # A fresh interpreter, so earlier tests' threads and processes don't count.
    code = (
        "import glob, threading, durable_core.testing\n"
        "children = ''.join(open(p).read() for p in glob.glob('/proc/self/task/*/children'))\n"
        "print(threading.active_count(), repr(children.strip()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out[0] == "1"  # no thread started
    if sys.platform == "linux":
        assert out[1] == "''"  # no child process started
